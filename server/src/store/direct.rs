//! Point reads on SQLite without leaving the calling thread.
//!
//! sqlx runs each SQLite connection on a worker thread of its own, so every query is a round
//! trip between threads; for a read by id that hand-off costs more than the read. Here each
//! thread that reads keeps its own read-only connection to the database and runs the query
//! itself: a B-tree lookup on a warm page cache, a few microseconds. WAL readers never wait for
//! the writer. Only short, bounded queries belong here; anything that scans goes through the
//! pool.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use fhir_models::ResourceType;
use rusqlite::{Connection, OpenFlags, OptionalExtension as _};

use super::{Micros, READ_SQL, Version};

thread_local! {
    /// This thread's read-only connections, one per database file it has read.
    static READERS: RefCell<HashMap<Arc<Path>, Connection>> = RefCell::new(HashMap::new());
}

fn open(path: &Path) -> rusqlite::Result<Connection> {
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    connection.busy_timeout(Duration::from_secs(10))?;
    Ok(connection)
}

/// The current version of `rt/id`, as [`super::Store::read`].
pub(super) fn read(path: &Arc<Path>, rt: ResourceType, id: &str) -> anyhow::Result<Option<Version>> {
    READERS.with(|readers| {
        let mut readers = readers.borrow_mut();
        let connection = match readers.get(path) {
            Some(connection) => connection,
            None => {
                let connection = open(path).context("cannot open the SQLite database")?;
                readers.entry(path.clone()).or_insert(connection)
            }
        };
        let mut statement = connection.prepare_cached(READ_SQL)?;
        let row = statement
            .query_row((rt.as_str(), id), |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, i64>(3)?,
                    row.get::<_, i64>(4)?,
                    row.get::<_, String>(5)?,
                    row.get::<_, Option<Vec<u8>>>(6)?,
                ))
            })
            .optional()?;
        let Some((seq, id, version_id, last_updated, method, body)) = row else {
            return Ok(None);
        };
        Ok(Some(Version {
            seq,
            resource_type: rt,
            id,
            version_id,
            last_updated: Micros(last_updated),
            method: method.parse()?,
            body,
        }))
    })
}
