//! Running a parsed search against the store: one page of matches, its includes, the total
//! when asked, and the cursors of the pages before and after.

use std::collections::HashSet;
use std::str::FromStr;

use fhir_models::ResourceType;

use super::query::{Cursor, Include, SearchQuery, Total};
use super::sql::{self, ROW_COLUMNS, Sql};
use crate::error::FhirError;
use crate::store::{Cell, Kind, Micros, Store, Version};

/// Most `(type, id)` pairs fetched by one include query.
const INCLUDE_BATCH: usize = 500;

/// A resource a search found.
#[derive(Debug, Clone)]
pub struct Found {
    pub rid: i64,
    pub version: Version,
}

#[derive(Debug, Default)]
pub struct Page {
    pub matches: Vec<Found>,
    pub included: Vec<Found>,
    pub total: Option<i64>,
    /// The `_cursor` of the next page, if there is one.
    pub next: Option<String>,
    /// The `_cursor` of the page before, if there is one.
    pub previous: Option<String>,
}

/// How many resources match, without fetching any.
pub async fn count(store: &Store, query: &SearchQuery) -> Result<i64, FhirError> {
    let sql = sql::count(query);
    let rows = store.query(&sql.text, &sql.binds, &[Kind::Int]).await?;
    match rows.first().and_then(|row| row.first()) {
        Some(Cell::Int(n)) => Ok(*n),
        _ => Ok(0),
    }
}

/// One page of `query`.
pub async fn page(store: &Store, query: &SearchQuery) -> Result<Page, FhirError> {
    let cursor_keys = match &query.cursor {
        Some(cursor) if !query.sort.is_empty() => {
            let (sql, kinds) = sql::sort_keys_of(query, cursor.rid);
            let mut rows = store.query(&sql.text, &sql.binds, &kinds).await?;
            if rows.is_empty() {
                return Err(FhirError::BadRequest(vec![
                    crate::error::Issue::error(
                        "invalid",
                        "search parameter _cursor: is not a cursor this server gave",
                    )
                    .at("_cursor"),
                ]));
            }
            rows.swap_remove(0)
        }
        _ => Vec::new(),
    };
    let (sql, key_kinds) = sql::page(query, &cursor_keys);
    let mut columns = ROW_COLUMNS.to_vec();
    columns.extend(&key_kinds);
    let rows = store.query(&sql.text, &sql.binds, &columns).await?;
    let mut matches = rows
        .into_iter()
        .map(found_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let limit = query.count as usize;
    let more = matches.len() > limit;
    matches.truncate(limit);
    let backwards = query.cursor.as_ref().is_some_and(|c| c.backwards);
    let (next, previous) = if backwards {
        matches.reverse();
        (
            matches.last().map(|f| cursor(false, f)),
            more.then(|| matches.first().map(|f| cursor(true, f)))
                .flatten(),
        )
    } else {
        (
            more.then(|| matches.last().map(|f| cursor(false, f)))
                .flatten(),
            query
                .cursor
                .as_ref()
                .and_then(|_| matches.first().map(|f| cursor(true, f))),
        )
    };
    let total = match query.total {
        Total::Accurate => Some(count(store, query).await?),
        Total::Cheap if query.cursor.is_none() && !more => {
            Some(i64::try_from(matches.len()).unwrap_or(i64::MAX))
        }
        _ => None,
    };
    let included = includes(store, query, &matches).await?;
    Ok(Page {
        matches,
        included,
        total,
        next,
        previous,
    })
}

fn cursor(backwards: bool, found: &Found) -> String {
    Cursor {
        backwards,
        rid: found.rid,
    }
    .encode()
}

fn found_from_row(row: Vec<Cell>) -> Result<Found, FhirError> {
    let mut cells = row.into_iter();
    let mut next = || cells.next().unwrap_or(Cell::Null);
    let int = |cell: Cell| match cell {
        Cell::Int(v) => Ok(v),
        other => Err(FhirError::Internal(anyhow::anyhow!(
            "expected an integer, got {other:?}"
        ))),
    };
    let text = |cell: Cell| match cell {
        Cell::Text(v) => Ok(v),
        other => Err(FhirError::Internal(anyhow::anyhow!(
            "expected text, got {other:?}"
        ))),
    };
    let rid = int(next())?;
    let seq = int(next())?;
    let resource_type = text(next())?;
    let id = text(next())?;
    let version_id = int(next())?;
    let last_updated = int(next())?;
    let method = text(next())?;
    let body = match next() {
        Cell::Blob(b) => Some(b),
        Cell::Text(t) => Some(t.into_bytes()),
        _ => None,
    };
    Ok(Found {
        rid,
        version: Version {
            seq,
            resource_type: ResourceType::from_str(&resource_type).map_err(|_| {
                FhirError::Internal(anyhow::anyhow!("unknown resource type in storage"))
            })?,
            id,
            version_id,
            last_updated: Micros(last_updated),
            method: method.parse()?,
            body,
        },
    })
}

async fn fetch(store: &Store, sql: Sql) -> Result<Vec<Found>, FhirError> {
    let rows = store.query(&sql.text, &sql.binds, &ROW_COLUMNS).await?;
    rows.into_iter().map(found_from_row).collect()
}

/// `_include` and `_revinclude` of a page, then their `:iterate` forms once over everything
/// found so far. A resource appears once, as a match if it is one.
async fn includes(
    store: &Store,
    query: &SearchQuery,
    matches: &[Found],
) -> Result<Vec<Found>, FhirError> {
    if matches.is_empty() || (query.includes.is_empty() && query.revincludes.is_empty()) {
        return Ok(Vec::new());
    }
    let mut seen: HashSet<i64> = matches.iter().map(|f| f.rid).collect();
    let mut included = Vec::new();
    for iterate in [false, true] {
        let sources: Vec<Found> = if iterate {
            matches.iter().chain(&included).cloned().collect()
        } else {
            matches.to_vec()
        };
        let mut found = Vec::new();
        for include in query.includes.iter().filter(|i| i.iterate == iterate) {
            found.extend(forward(store, include, &sources).await?);
        }
        for include in query.revincludes.iter().filter(|i| i.iterate == iterate) {
            found.extend(reverse(store, include, &sources).await?);
        }
        for f in found {
            if seen.insert(f.rid) {
                included.push(f);
            }
        }
    }
    Ok(included)
}

async fn forward(
    store: &Store,
    include: &Include,
    sources: &[Found],
) -> Result<Vec<Found>, FhirError> {
    let rids: Vec<i64> = sources
        .iter()
        .filter(|f| include.source.is_none_or(|s| s == f.version.resource_type))
        .map(|f| f.rid)
        .collect();
    if rids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = sql::include_targets(&rids, include.param.map(|p| p.code), include.target);
    let rows = store
        .query(&sql.text, &sql.binds, &[Kind::Text, Kind::Text])
        .await?;
    let targets: Vec<(String, String)> = rows
        .into_iter()
        .filter_map(|row| match <[Cell; 2]>::try_from(row) {
            Ok([Cell::Text(rt), Cell::Text(id)]) => Some((rt, id)),
            _ => None,
        })
        .collect();
    let mut out = Vec::new();
    for batch in targets.chunks(INCLUDE_BATCH) {
        out.extend(fetch(store, sql::resources_by_id(batch)).await?);
    }
    Ok(out)
}

async fn reverse(
    store: &Store,
    include: &Include,
    sources: &[Found],
) -> Result<Vec<Found>, FhirError> {
    let targets: Vec<(ResourceType, String)> = sources
        .iter()
        .filter(|f| include.target.is_none_or(|t| t == f.version.resource_type))
        .map(|f| (f.version.resource_type, f.version.id.clone()))
        .collect();
    let mut out = Vec::new();
    for batch in targets.chunks(INCLUDE_BATCH) {
        let sql = sql::referring(batch, include.source, include.param.map(|p| p.code));
        out.extend(fetch(store, sql).await?);
    }
    Ok(out)
}
