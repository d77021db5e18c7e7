//! Writing search index rows (see [`crate::search::index`]) in the transaction of the write
//! that produced them, on each backend. A resource's rows are replaced whole: every write
//! deletes the rows of the version it replaces and inserts the new version's.

use rusqlite::Connection;
use sqlx::PgConnection;

use crate::search::index::IndexRows;

/// The index tables, each with the columns after `rid, resource_type` in insert order.
pub(super) const TABLES: [&str; 8] = [
    "search_token",
    "search_string",
    "search_date",
    "search_reference",
    "search_number",
    "search_quantity",
    "search_uri",
    "search_position",
];

/// Replaces the rows of resource `rid` on SQLite. `existed`: whether it may have rows already.
pub(super) fn replace_sqlite(
    connection: &Connection,
    rid: i64,
    rt: &str,
    rows: &IndexRows,
    existed: bool,
) -> rusqlite::Result<()> {
    if existed {
        for table in TABLES {
            connection
                .prepare_cached(&format!("DELETE FROM {table} WHERE rid = ?1"))?
                .execute([rid])?;
        }
    }
    if !rows.tokens.is_empty() {
        let mut insert = connection.prepare_cached(
            "INSERT INTO search_token (rid, resource_type, param, system, code, text) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for row in &rows.tokens {
            insert.execute((rid, rt, &row.param, &row.system, &row.code, &row.text))?;
        }
    }
    if !rows.strings.is_empty() {
        let mut insert = connection.prepare_cached(
            "INSERT INTO search_string (rid, resource_type, param, normalized, exact) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for row in &rows.strings {
            insert.execute((rid, rt, &row.param, &row.normalized, &row.exact))?;
        }
    }
    if !rows.dates.is_empty() {
        let mut insert = connection.prepare_cached(
            "INSERT INTO search_date (rid, resource_type, param, low, high) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for row in &rows.dates {
            insert.execute((rid, rt, &row.param, row.low, row.high))?;
        }
    }
    if !rows.references.is_empty() {
        let mut insert = connection.prepare_cached(
            "INSERT INTO search_reference (rid, resource_type, param, target_type, target_id, url) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for row in &rows.references {
            insert.execute((
                rid,
                rt,
                &row.param,
                &row.target_type,
                &row.target_id,
                &row.url,
            ))?;
        }
    }
    if !rows.numbers.is_empty() {
        let mut insert = connection.prepare_cached(
            "INSERT INTO search_number (rid, resource_type, param, low, high) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for row in &rows.numbers {
            insert.execute((rid, rt, &row.param, row.low, row.high))?;
        }
    }
    if !rows.quantities.is_empty() {
        let mut insert = connection.prepare_cached(
            "INSERT INTO search_quantity (rid, resource_type, param, low, high, system, code) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for row in &rows.quantities {
            insert.execute((
                rid,
                rt,
                &row.param,
                row.low,
                row.high,
                &row.system,
                &row.code,
            ))?;
        }
    }
    if !rows.uris.is_empty() {
        let mut insert = connection.prepare_cached(
            "INSERT INTO search_uri (rid, resource_type, param, uri) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for row in &rows.uris {
            insert.execute((rid, rt, &row.param, &row.uri))?;
        }
    }
    if !rows.positions.is_empty() {
        let mut insert = connection.prepare_cached(
            "INSERT INTO search_position (rid, resource_type, param, latitude, longitude) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for row in &rows.positions {
            insert.execute((rid, rt, &row.param, row.latitude, row.longitude))?;
        }
    }
    Ok(())
}

/// The index rows of one resource, for [`replace_postgres`].
pub(super) struct Indexed<'a> {
    pub rid: i64,
    pub rt: &'a str,
    pub rows: &'a IndexRows,
    /// Whether it may have rows already, to be deleted first.
    pub existed: bool,
}

/// Replaces the rows of `resources` on PostgreSQL in one statement, however many there are:
/// a data-modifying CTE per table, the deletes by an array of rids, the inserts as `UNNEST` of
/// one array per column. The deletes and inserts share one snapshot, so a delete never sees the
/// rows inserted beside it.
pub(super) async fn replace_postgres(
    connection: &mut PgConnection,
    resources: &[Indexed<'_>],
) -> Result<(), sqlx::Error> {
    let deleted: Vec<i64> = resources
        .iter()
        .filter(|r| r.existed)
        .map(|r| r.rid)
        .collect();
    if deleted.is_empty() && resources.iter().all(|r| r.rows.is_empty()) {
        return Ok(());
    }
    let mut parts: Vec<String> = Vec::new();
    // Placeholders are numbered in order of binding.
    let mut next = 1;
    if !deleted.is_empty() {
        next += 1;
        for (i, table) in TABLES.iter().enumerate() {
            parts.push(format!(
                "d{i} AS (DELETE FROM {table} WHERE rid = ANY($1::int8[]))"
            ));
        }
    }
    let mut unnest = |table: &str, columns: &str, types: &[&str]| {
        let arrays = ["int8", "text"]
            .iter()
            .chain(types)
            .map(|ty| {
                let p = format!("${next}::{ty}[]");
                next += 1;
                p
            })
            .collect::<Vec<_>>()
            .join(", ");
        parts.push(format!(
            "i_{table} AS (INSERT INTO {table} (rid, resource_type, {columns}) \
             SELECT * FROM UNNEST({arrays}))"
        ));
    };
    // Each table's rows, with the rid and type of the resource they belong to.
    fn rows_of<'a, T>(
        resources: &'a [Indexed<'_>],
        rows: impl Fn(&'a IndexRows) -> &'a [T],
    ) -> Vec<(i64, &'a str, &'a T)> {
        resources
            .iter()
            .flat_map(|r| rows(r.rows).iter().map(move |row| (r.rid, r.rt, row)))
            .collect()
    }
    let tokens = rows_of(resources, |r| &r.tokens);
    let strings = rows_of(resources, |r| &r.strings);
    let dates = rows_of(resources, |r| &r.dates);
    let references = rows_of(resources, |r| &r.references);
    let numbers = rows_of(resources, |r| &r.numbers);
    let quantities = rows_of(resources, |r| &r.quantities);
    let uris = rows_of(resources, |r| &r.uris);
    let positions = rows_of(resources, |r| &r.positions);
    if !tokens.is_empty() {
        unnest("search_token", "param, system, code, text", &["text"; 4]);
    }
    if !strings.is_empty() {
        unnest("search_string", "param, normalized, exact", &["text"; 3]);
    }
    if !dates.is_empty() {
        unnest("search_date", "param, low, high", &["text", "int8", "int8"]);
    }
    if !references.is_empty() {
        unnest(
            "search_reference",
            "param, target_type, target_id, url",
            &["text"; 4],
        );
    }
    if !numbers.is_empty() {
        unnest(
            "search_number",
            "param, low, high",
            &["text", "float8", "float8"],
        );
    }
    if !quantities.is_empty() {
        unnest(
            "search_quantity",
            "param, low, high, system, code",
            &["text", "float8", "float8", "text", "text"],
        );
    }
    if !uris.is_empty() {
        unnest("search_uri", "param, uri", &["text", "text"]);
    }
    if !positions.is_empty() {
        unnest(
            "search_position",
            "param, latitude, longitude",
            &["text", "float8", "float8"],
        );
    }
    let sql = format!("WITH {} SELECT 1", parts.join(", "));
    let mut query = sqlx::query(&sql);
    if !deleted.is_empty() {
        query = query.bind(deleted);
    }
    fn keys<T>(rows: &[(i64, &str, T)]) -> (Vec<i64>, Vec<String>) {
        rows.iter()
            .map(|(rid, rt, _)| (*rid, (*rt).to_owned()))
            .unzip()
    }
    let text = |values: Vec<Option<&str>>| {
        values
            .into_iter()
            .map(|v| v.map(str::to_owned))
            .collect::<Vec<_>>()
    };
    if !tokens.is_empty() {
        let (rids, rts) = keys(&tokens);
        query = query
            .bind(rids)
            .bind(rts)
            .bind(
                tokens
                    .iter()
                    .map(|(_, _, t)| t.param.clone())
                    .collect::<Vec<_>>(),
            )
            .bind(text(
                tokens.iter().map(|(_, _, t)| t.system.as_deref()).collect(),
            ))
            .bind(text(
                tokens.iter().map(|(_, _, t)| t.code.as_deref()).collect(),
            ))
            .bind(text(
                tokens.iter().map(|(_, _, t)| t.text.as_deref()).collect(),
            ));
    }
    if !strings.is_empty() {
        let (rids, rts) = keys(&strings);
        query = query
            .bind(rids)
            .bind(rts)
            .bind(
                strings
                    .iter()
                    .map(|(_, _, s)| s.param.clone())
                    .collect::<Vec<_>>(),
            )
            .bind(
                strings
                    .iter()
                    .map(|(_, _, s)| s.normalized.clone())
                    .collect::<Vec<_>>(),
            )
            .bind(
                strings
                    .iter()
                    .map(|(_, _, s)| s.exact.clone())
                    .collect::<Vec<_>>(),
            );
    }
    if !dates.is_empty() {
        let (rids, rts) = keys(&dates);
        query = query
            .bind(rids)
            .bind(rts)
            .bind(
                dates
                    .iter()
                    .map(|(_, _, d)| d.param.clone())
                    .collect::<Vec<_>>(),
            )
            .bind(dates.iter().map(|(_, _, d)| d.low).collect::<Vec<_>>())
            .bind(dates.iter().map(|(_, _, d)| d.high).collect::<Vec<_>>());
    }
    if !references.is_empty() {
        let (rids, rts) = keys(&references);
        query = query
            .bind(rids)
            .bind(rts)
            .bind(
                references
                    .iter()
                    .map(|(_, _, x)| x.param.clone())
                    .collect::<Vec<_>>(),
            )
            .bind(text(
                references
                    .iter()
                    .map(|(_, _, x)| x.target_type.as_deref())
                    .collect(),
            ))
            .bind(text(
                references
                    .iter()
                    .map(|(_, _, x)| x.target_id.as_deref())
                    .collect(),
            ))
            .bind(text(
                references
                    .iter()
                    .map(|(_, _, x)| x.url.as_deref())
                    .collect(),
            ));
    }
    if !numbers.is_empty() {
        let (rids, rts) = keys(&numbers);
        query = query
            .bind(rids)
            .bind(rts)
            .bind(
                numbers
                    .iter()
                    .map(|(_, _, n)| n.param.clone())
                    .collect::<Vec<_>>(),
            )
            .bind(numbers.iter().map(|(_, _, n)| n.low).collect::<Vec<_>>())
            .bind(numbers.iter().map(|(_, _, n)| n.high).collect::<Vec<_>>());
    }
    if !quantities.is_empty() {
        let (rids, rts) = keys(&quantities);
        query = query
            .bind(rids)
            .bind(rts)
            .bind(
                quantities
                    .iter()
                    .map(|(_, _, n)| n.param.clone())
                    .collect::<Vec<_>>(),
            )
            .bind(quantities.iter().map(|(_, _, n)| n.low).collect::<Vec<_>>())
            .bind(
                quantities
                    .iter()
                    .map(|(_, _, n)| n.high)
                    .collect::<Vec<_>>(),
            )
            .bind(text(
                quantities
                    .iter()
                    .map(|(_, _, n)| n.system.as_deref())
                    .collect(),
            ))
            .bind(text(
                quantities
                    .iter()
                    .map(|(_, _, n)| n.code.as_deref())
                    .collect(),
            ));
    }
    if !uris.is_empty() {
        let (rids, rts) = keys(&uris);
        query = query
            .bind(rids)
            .bind(rts)
            .bind(
                uris.iter()
                    .map(|(_, _, u)| u.param.clone())
                    .collect::<Vec<_>>(),
            )
            .bind(
                uris.iter()
                    .map(|(_, _, u)| u.uri.clone())
                    .collect::<Vec<_>>(),
            );
    }
    if !positions.is_empty() {
        let (rids, rts) = keys(&positions);
        query = query
            .bind(rids)
            .bind(rts)
            .bind(
                positions
                    .iter()
                    .map(|(_, _, p)| p.param.clone())
                    .collect::<Vec<_>>(),
            )
            .bind(
                positions
                    .iter()
                    .map(|(_, _, p)| p.latitude)
                    .collect::<Vec<_>>(),
            )
            .bind(
                positions
                    .iter()
                    .map(|(_, _, p)| p.longitude)
                    .collect::<Vec<_>>(),
            );
    }
    query.execute(connection).await?;
    Ok(())
}
