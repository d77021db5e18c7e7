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
        // With the rid of the resource referred to, if it exists (SQLite has one writer at a
        // time, so a target created later finds this row in `fill_in_sqlite`).
        let mut insert = connection.prepare_cached(
            "INSERT INTO search_reference \
             (rid, resource_type, param, target_type, target_id, url, target_rid) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, \
             (SELECT t.rid FROM resources t WHERE t.resource_type = ?4 AND t.id = ?5))",
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

/// Gives the rows that refer to `rt/id`, written before it existed, its `rid`: to be called
/// when a resource gets its rid, in the transaction that creates it.
pub(super) fn fill_in_sqlite(
    connection: &Connection,
    rid: i64,
    rt: &str,
    id: &str,
) -> rusqlite::Result<()> {
    connection
        .prepare_cached(
            "UPDATE search_reference SET target_rid = ?1 \
             WHERE target_type = ?2 AND target_id = ?3 \
             AND target_rid IS NULL AND target_id IS NOT NULL",
        )?
        .execute((rid, rt, id))?;
    Ok(())
}

/// The index rows of one resource, for [`replace_postgres`].
pub(super) struct Indexed<'a> {
    pub rid: i64,
    pub rt: &'a str,
    pub id: &'a str,
    pub rows: &'a IndexRows,
    /// Whether it may have rows already, to be deleted first. One that did not is new: the
    /// rows that refer to it, written before it existed, are given its rid.
    pub existed: bool,
}

/// The lock on a resource's type and id that orders its creation with the writes of rows
/// referring to it on PostgreSQL, for a key written as `{rt} || '/' || {id}`: a transaction
/// creating the resource takes it exclusively before it fills in the rows that wait for it, and
/// one that wrote rows referring to a resource not found takes it shared before looking again.
/// So whichever of the two commits last sees the other's work: no row is left without the rid
/// of a resource that exists. Held until the transaction ends.
pub(super) fn postgres_lock_key(rt: &str, id: &str) -> String {
    format!("hashtextextended({rt} || '/' || {id}, 0)")
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
    // A resource that existed has rows to delete, and a new one may have rows waiting for it:
    // every resource here gives the statement work.
    if resources.is_empty() {
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
    // `$n::type[], …`: the arrays of one table's rows, a rid and a type and then `types`.
    let mut arrays = |types: &[&str]| {
        ["int8", "text"]
            .iter()
            .chain(types)
            .map(|ty| {
                let p = format!("${next}::{ty}[]");
                next += 1;
                p
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let insert = |table: &str, columns: &str, arrays: String| {
        format!(
            "i_{table} AS (INSERT INTO {table} (rid, resource_type, {columns}) \
             SELECT * FROM UNNEST({arrays}))"
        )
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
        parts.push(insert(
            "search_token",
            "param, system, code, text",
            arrays(&["text"; 4]),
        ));
    }
    if !strings.is_empty() {
        parts.push(insert(
            "search_string",
            "param, normalized, exact",
            arrays(&["text"; 3]),
        ));
    }
    if !dates.is_empty() {
        parts.push(insert(
            "search_date",
            "param, low, high",
            arrays(&["text", "int8", "int8"]),
        ));
    }
    if !references.is_empty() {
        // With the rid of the resource referred to, when it is there to be seen; the rows
        // it is not are counted, to be looked at again under a lock (see `postgres_lock_key`).
        let references = arrays(&["text"; 4]);
        parts.push(format!(
            "i_search_reference AS (INSERT INTO search_reference \
             (rid, resource_type, param, target_type, target_id, url, target_rid) \
             SELECT u.*, t.rid FROM UNNEST({references}) \
             AS u (rid, resource_type, param, target_type, target_id, url) \
             LEFT JOIN resources t ON t.resource_type = u.target_type COLLATE \"C\" \
             AND t.id = u.target_id COLLATE \"C\" \
             RETURNING target_rid, target_id, target_type)"
        ));
    }
    if !numbers.is_empty() {
        parts.push(insert(
            "search_number",
            "param, low, high",
            arrays(&["text", "float8", "float8"]),
        ));
    }
    if !quantities.is_empty() {
        parts.push(insert(
            "search_quantity",
            "param, low, high, system, code",
            arrays(&["text", "float8", "float8", "text", "text"]),
        ));
    }
    if !uris.is_empty() {
        parts.push(insert(
            "search_uri",
            "param, uri",
            arrays(&["text", "text"]),
        ));
    }
    if !positions.is_empty() {
        parts.push(insert(
            "search_position",
            "param, latitude, longitude",
            arrays(&["text", "float8", "float8"]),
        ));
    }
    let created: Vec<&Indexed<'_>> = resources.iter().filter(|r| !r.existed).collect();
    if !created.is_empty() {
        // The rows that were waiting for the resources created here. The lock each creation
        // took (see `postgres_lock_key`) was taken by an earlier statement, so this one sees
        // every such row committed before it.
        parts.push(format!(
            "f AS (UPDATE search_reference x SET target_rid = n.rid \
             FROM UNNEST(${}::text[], ${}::text[], ${}::int8[]) AS n (resource_type, id, rid) \
             WHERE x.target_type = n.resource_type COLLATE \"C\" \
             AND x.target_id = n.id COLLATE \"C\" \
             AND x.target_rid IS NULL AND x.target_id IS NOT NULL)",
            next,
            next + 1,
            next + 2
        ));
    }
    let unresolved = if references.is_empty() {
        "0::int8"
    } else {
        "(SELECT COUNT(*) FROM i_search_reference \
         WHERE target_rid IS NULL AND target_id IS NOT NULL AND target_type IS NOT NULL)"
    };
    let sql = format!("WITH {} SELECT {unresolved}", parts.join(", "));
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
    if !created.is_empty() {
        query = query
            .bind(created.iter().map(|r| r.rt).collect::<Vec<_>>())
            .bind(created.iter().map(|r| r.id).collect::<Vec<_>>())
            .bind(created.iter().map(|r| r.rid).collect::<Vec<_>>());
    }
    let unresolved: i64 = sqlx::Row::try_get(&query.fetch_one(&mut *connection).await?, 0)?;
    if unresolved > 0 {
        resolve_postgres(connection, resources).await?;
    }
    Ok(())
}

/// Gives the reference rows of `resources` that found no resource where they lead the rid of
/// that resource, if one has been created since: under the lock of each such target (see
/// [`postgres_lock_key`]), in a statement that starts once every lock is held.
async fn resolve_postgres(
    connection: &mut PgConnection,
    resources: &[Indexed<'_>],
) -> Result<(), sqlx::Error> {
    let rids: Vec<i64> = resources.iter().map(|r| r.rid).collect();
    // In one order, so that two writers waiting for the same targets cannot deadlock.
    sqlx::query(&format!(
        "SELECT COUNT(pg_advisory_xact_lock_shared(k)) FROM (SELECT DISTINCT {} AS k \
         FROM search_reference WHERE rid = ANY($1::int8[]) AND target_rid IS NULL \
         AND target_id IS NOT NULL AND target_type IS NOT NULL ORDER BY k) AS keys",
        postgres_lock_key("target_type", "target_id")
    ))
    .bind(&rids)
    .execute(&mut *connection)
    .await?;
    sqlx::query(
        "UPDATE search_reference x SET target_rid = t.rid FROM resources t \
         WHERE x.rid = ANY($1::int8[]) AND x.target_rid IS NULL \
         AND t.resource_type = x.target_type AND t.id = x.target_id",
    )
    .bind(&rids)
    .execute(&mut *connection)
    .await?;
    Ok(())
}
