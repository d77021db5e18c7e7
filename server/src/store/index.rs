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

/// Replaces the rows of resource `rid` on PostgreSQL in one statement: a data-modifying CTE
/// per table, the inserts as `UNNEST` of one array per column. The deletes and inserts share
/// one snapshot, so a delete never sees the rows inserted beside it.
pub(super) async fn replace_postgres(
    connection: &mut PgConnection,
    rid: i64,
    rt: &str,
    rows: &IndexRows,
    existed: bool,
) -> Result<(), sqlx::Error> {
    if !existed && rows.is_empty() {
        return Ok(());
    }
    let mut parts: Vec<String> = Vec::new();
    if existed {
        for (i, table) in TABLES.iter().enumerate() {
            parts.push(format!("d{i} AS (DELETE FROM {table} WHERE rid = $1)"));
        }
    }
    // Placeholders are numbered in order of binding.
    let mut next = 3;
    let mut unnest = |table: &str, columns: &str, types: &[&str]| {
        let arrays = types
            .iter()
            .map(|ty| {
                let p = format!("${next}::{ty}[]");
                next += 1;
                p
            })
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "i_{table} AS (INSERT INTO {table} (rid, resource_type, {columns}) \
             SELECT $1, $2, * FROM UNNEST({arrays}))"
        )
    };
    let text = |values: Vec<Option<&str>>| {
        values
            .into_iter()
            .map(|v| v.map(str::to_owned))
            .collect::<Vec<_>>()
    };
    let mut query_parts = Vec::new();
    if !rows.tokens.is_empty() {
        query_parts.push(unnest(
            "search_token",
            "param, system, code, text",
            &["text"; 4],
        ));
    }
    if !rows.strings.is_empty() {
        query_parts.push(unnest(
            "search_string",
            "param, normalized, exact",
            &["text"; 3],
        ));
    }
    if !rows.dates.is_empty() {
        query_parts.push(unnest(
            "search_date",
            "param, low, high",
            &["text", "int8", "int8"],
        ));
    }
    if !rows.references.is_empty() {
        query_parts.push(unnest(
            "search_reference",
            "param, target_type, target_id, url",
            &["text"; 4],
        ));
    }
    if !rows.numbers.is_empty() {
        query_parts.push(unnest(
            "search_number",
            "param, low, high",
            &["text", "float8", "float8"],
        ));
    }
    if !rows.quantities.is_empty() {
        query_parts.push(unnest(
            "search_quantity",
            "param, low, high, system, code",
            &["text", "float8", "float8", "text", "text"],
        ));
    }
    if !rows.uris.is_empty() {
        query_parts.push(unnest("search_uri", "param, uri", &["text", "text"]));
    }
    if !rows.positions.is_empty() {
        query_parts.push(unnest(
            "search_position",
            "param, latitude, longitude",
            &["text", "float8", "float8"],
        ));
    }
    parts.extend(query_parts);
    let sql = format!("WITH {} SELECT 1", parts.join(", "));
    let mut query = sqlx::query(&sql).bind(rid).bind(rt);
    if !rows.tokens.is_empty() {
        let r = &rows.tokens;
        query = query
            .bind(r.iter().map(|t| t.param.clone()).collect::<Vec<_>>())
            .bind(text(r.iter().map(|t| t.system.as_deref()).collect()))
            .bind(text(r.iter().map(|t| t.code.as_deref()).collect()))
            .bind(text(r.iter().map(|t| t.text.as_deref()).collect()));
    }
    if !rows.strings.is_empty() {
        let r = &rows.strings;
        query = query
            .bind(r.iter().map(|s| s.param.clone()).collect::<Vec<_>>())
            .bind(r.iter().map(|s| s.normalized.clone()).collect::<Vec<_>>())
            .bind(r.iter().map(|s| s.exact.clone()).collect::<Vec<_>>());
    }
    if !rows.dates.is_empty() {
        let r = &rows.dates;
        query = query
            .bind(r.iter().map(|d| d.param.clone()).collect::<Vec<_>>())
            .bind(r.iter().map(|d| d.low).collect::<Vec<_>>())
            .bind(r.iter().map(|d| d.high).collect::<Vec<_>>());
    }
    if !rows.references.is_empty() {
        let r = &rows.references;
        query = query
            .bind(r.iter().map(|x| x.param.clone()).collect::<Vec<_>>())
            .bind(text(r.iter().map(|x| x.target_type.as_deref()).collect()))
            .bind(text(r.iter().map(|x| x.target_id.as_deref()).collect()))
            .bind(text(r.iter().map(|x| x.url.as_deref()).collect()));
    }
    if !rows.numbers.is_empty() {
        let r = &rows.numbers;
        query = query
            .bind(r.iter().map(|n| n.param.clone()).collect::<Vec<_>>())
            .bind(r.iter().map(|n| n.low).collect::<Vec<_>>())
            .bind(r.iter().map(|n| n.high).collect::<Vec<_>>());
    }
    if !rows.quantities.is_empty() {
        let r = &rows.quantities;
        query = query
            .bind(r.iter().map(|n| n.param.clone()).collect::<Vec<_>>())
            .bind(r.iter().map(|n| n.low).collect::<Vec<_>>())
            .bind(r.iter().map(|n| n.high).collect::<Vec<_>>())
            .bind(text(r.iter().map(|n| n.system.as_deref()).collect()))
            .bind(text(r.iter().map(|n| n.code.as_deref()).collect()));
    }
    if !rows.uris.is_empty() {
        let r = &rows.uris;
        query = query
            .bind(r.iter().map(|u| u.param.clone()).collect::<Vec<_>>())
            .bind(r.iter().map(|u| u.uri.clone()).collect::<Vec<_>>());
    }
    if !rows.positions.is_empty() {
        let r = &rows.positions;
        query = query
            .bind(r.iter().map(|p| p.param.clone()).collect::<Vec<_>>())
            .bind(r.iter().map(|p| p.latitude).collect::<Vec<_>>())
            .bind(r.iter().map(|p| p.longitude).collect::<Vec<_>>());
    }
    query.execute(connection).await?;
    Ok(())
}
