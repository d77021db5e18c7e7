//! SQLite's hot paths, on rusqlite: the group-commit writer and point reads.
//!
//! sqlx runs each SQLite connection on a worker thread of its own, so every statement is a round
//! trip between threads; for a read by id, or for the five statements of a write, the hand-offs
//! cost more than the work. So:
//!
//! - Reads by id run on the calling thread, through a read-only connection that thread keeps:
//!   a B-tree lookup on a warm page cache, a few microseconds. WAL readers never wait for the
//!   writer. Only short, bounded queries belong here; anything that scans goes through the pool.
//! - All writes go through one writer thread that owns the only write connection (SQLite allows
//!   one writer at a time anyway) and commits in groups: it takes every job waiting in its
//!   queue (a job is one write, or all the writes of a transaction Bundle), runs them all in
//!   one transaction, commits once — one fsync — and only then answers each caller. A lone job
//!   goes straight through; under load one fsync serves many. A job that fails takes the
//!   transaction down with it, and the others run again without it (see [`write_group`]).
//! - The writer only writes: bodies come serialized, and the write-ahead log is copied back
//!   into the database (checkpointed) by a thread of its own.
//! - The audit trail is appended by the same writer: a write's records commit with it, and
//!   the records of reads come in batches from the audit journal (see [`super::journal`]).

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use fhir_models::ResourceType;
use rusqlite::{Connection, OpenFlags, OptionalExtension as _, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use super::journal::Moved;
use super::{
    Cell, Current, FhirError, INSERT_CURRENT, INSERT_VERSION, Kind, Micros, Precondition,
    PreparedOp, READ_SQL, SELECT_CURRENT, UPDATE_CURRENT, Version, WriteFailed, Written,
    plan_write,
};

/// The writer's page cache, in KiB as `PRAGMA cache_size` takes it when negative: the pages
/// it keeps between commits. Kept small, because some commits walk all of it: when a B-tree
/// page splits, SQLite may swap two new pages' numbers through the number of the locking page
/// (1 GiB into the file), and in a database smaller than that, the commit then drops the
/// pages "beyond the end" by visiting every page in the cache. With 64 MiB this took a quarter
/// of the writer's time under audited reads. Dirty pages are not bound by it (no spilling).
const WRITER_CACHE_KIB: i64 = -8 * 1024;

/// Most jobs committed together.
const MAX_GROUP: usize = 256;
/// A group stops taking jobs once it holds this many writes, so one commit stays short.
const MAX_GROUP_WRITES: usize = 4096;

/// Writes waiting for the writer thread, to be stored together or not at all, with the audit
/// records that go with them (stored if the writes are; a job may be audit records alone).
pub(super) struct WriteJob {
    pub ops: Vec<PreparedOp>,
    pub audit: Vec<crate::audit::AuditRecord>,
    /// The journal segment `audit` comes from, named as moved in the same transaction.
    pub journal: Option<Moved>,
    pub reply: oneshot::Sender<Result<Vec<Written>, WriteFailed>>,
}

impl WriteJob {
    /// Writes, and their records.
    pub(super) fn writes(
        ops: Vec<PreparedOp>,
        audit: Vec<crate::audit::AuditRecord>,
        reply: oneshot::Sender<Result<Vec<Written>, WriteFailed>>,
    ) -> Self {
        Self {
            ops,
            audit,
            journal: None,
            reply,
        }
    }

    /// The records of a journal segment, on their way into the trail.
    pub(super) fn moving(
        audit: Vec<crate::audit::AuditRecord>,
        moved: Moved,
        reply: oneshot::Sender<Result<Vec<Written>, WriteFailed>>,
    ) -> Self {
        Self {
            ops: Vec::new(),
            audit,
            journal: Some(moved),
            reply,
        }
    }
}

/// Opens the write connection and starts the writer thread; it stops when every sender is gone.
pub(super) fn spawn_writer(path: &Path) -> anyhow::Result<mpsc::Sender<WriteJob>> {
    let mut connection = Connection::open(path)?;
    // With WAL, FULL syncs the log at every commit: a 2xx means the write is on disk.
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "FULL")?;
    connection.pragma_update(None, "foreign_keys", "ON")?;
    connection.busy_timeout(Duration::from_secs(10))?;
    tune(&connection)?;
    // A group of transaction Bundles dirties thousands of pages of the indexes; spilled to the
    // log before the commit, they would be read back: they stay in memory until it.
    connection.pragma_update(None, "cache_size", WRITER_CACHE_KIB)?;
    connection.pragma_update(None, "cache_spill", false)?;
    // The checkpointer thread copies the log back instead; left to the commit that crosses
    // the threshold, it took an eighth of the writer's time.
    connection.pragma_update(None, "wal_autocheckpoint", 0)?;
    let checkpoints = spawn_checkpointer(path)?;
    let (sender, mut queue) = mpsc::channel::<WriteJob>(4 * MAX_GROUP);
    std::thread::Builder::new()
        .name("sqlite-writer".to_owned())
        .spawn(move || {
            let mut group = Vec::with_capacity(MAX_GROUP);
            while let Some(job) = queue.blocking_recv() {
                let mut writes = job.ops.len();
                group.push(job);
                while group.len() < MAX_GROUP && writes < MAX_GROUP_WRITES {
                    match queue.try_recv() {
                        Ok(job) => {
                            writes += job.ops.len();
                            group.push(job);
                        }
                        Err(_) => break,
                    }
                }
                match write_group(&mut connection, &group) {
                    Ok(results) => {
                        for (job, result) in group.drain(..).zip(results) {
                            // The caller may have gone away; its write stands all the same.
                            let _ = job.reply.send(result);
                        }
                    }
                    Err(error) => {
                        let error = format!("{error:#}");
                        for job in group.drain(..) {
                            let _ = job.reply.send(Err(WriteFailed {
                                op: None,
                                error: FhirError::Internal(anyhow::anyhow!(
                                    "group commit failed: {error}"
                                )),
                            }));
                        }
                    }
                }
                checkpoints.committed(&connection);
            }
        })?;
    Ok(sender)
}

/// One transaction for the whole group. A job that fails (a precondition, a conflict) rolls
/// the transaction back, and the group runs again without it, until every job left succeeds:
/// failures are rare, and a savepoint for each job, which would let one roll back alone,
/// copies every page it changes to a journal first — a quarter of the writer's time.
fn write_group(
    connection: &mut Connection,
    group: &[WriteJob],
) -> anyhow::Result<Vec<Result<Vec<Written>, WriteFailed>>> {
    let mut failed: Vec<Option<WriteFailed>> = group.iter().map(|_| None).collect();
    loop {
        let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut done = Vec::with_capacity(group.len());
        let mut failure = None;
        for (j, job) in group.iter().enumerate() {
            if failed[j].is_some() {
                continue;
            }
            match write_job(&tx, job) {
                Ok(written) => done.push(written),
                Err(error) => {
                    failure = Some((j, error));
                    break;
                }
            }
        }
        if let Some((j, error)) = failure {
            // Dropping the transaction rolls it back.
            drop(tx);
            failed[j] = Some(error);
            continue;
        }
        // The audit records of the jobs that stand, chained in the same transaction: a write
        // and its record are on disk together or not at all.
        let records = group
            .iter()
            .zip(&failed)
            .filter(|(_, failed)| failed.is_none())
            .flat_map(|(job, _)| &job.audit);
        super::audit::append_sqlite(&tx, records)?;
        for moved in group.iter().filter_map(|job| job.journal) {
            super::journal::mark_moved(&tx, moved)?;
        }
        tx.commit()?;
        let mut done = done.into_iter();
        return Ok(failed
            .into_iter()
            .map(|failure| match failure {
                Some(failure) => Err(failure),
                None => Ok(done.next().unwrap_or_default()),
            })
            .collect());
    }
}

/// Every write of one job, or the first that fails.
fn write_job(connection: &Connection, job: &WriteJob) -> Result<Vec<Written>, WriteFailed> {
    job.ops
        .iter()
        .enumerate()
        .map(|(i, op)| {
            write_one(connection, op).map_err(|error| WriteFailed { op: Some(i), error })
        })
        .collect()
}

fn write_one(connection: &Connection, op: &PreparedOp) -> Result<Written, FhirError> {
    let (rt, id) = (op.rt, op.id.as_str());
    let internal = |e: rusqlite::Error| FhirError::Internal(e.into());
    // A create needs no look: its first version collides with any version the id already has.
    let current = if op.precondition == Precondition::Absent {
        None
    } else {
        connection
            .prepare_cached(SELECT_CURRENT)
            .and_then(|mut statement| {
                statement
                    .query_row((rt.as_str(), id), |row| {
                        Ok(Current {
                            rid: row.get(0)?,
                            version_id: row.get(1)?,
                            last_updated: row.get(2)?,
                            deleted: row.get(3)?,
                        })
                    })
                    .optional()
            })
            .map_err(internal)?
    };
    let Some(planned) = plan_write(op, current)? else {
        return Ok(Written::NothingToDelete);
    };
    let seq: i64 = connection
        .prepare_cached(INSERT_VERSION)
        .and_then(|mut statement| {
            statement.query_row(
                (
                    rt.as_str(),
                    id,
                    planned.version_id,
                    planned.last_updated.0,
                    planned.method.as_str(),
                    planned.body.as_deref(),
                ),
                |row| row.get(0),
            )
        })
        .map_err(|e| match op.precondition {
            Precondition::Absent if is_constraint(&e) => {
                FhirError::Conflict(format!("{rt}/{id} already exists"))
            }
            _ => conflict_on_constraint(e, rt, id),
        })?;
    let deleted = planned.body.is_none();
    let rid = match current {
        Some(current) => connection
            .prepare_cached(UPDATE_CURRENT)
            .and_then(|mut statement| {
                statement.execute((
                    planned.version_id,
                    planned.last_updated.0,
                    deleted,
                    seq,
                    planned.method.as_str(),
                    planned.body.as_deref(),
                    rt.as_str(),
                    id,
                ))
            })
            .map(|_| current.rid),
        None => connection
            .prepare_cached(INSERT_CURRENT)
            .and_then(|mut statement| {
                statement.query_row(
                    (
                        rt.as_str(),
                        id,
                        planned.version_id,
                        planned.last_updated.0,
                        deleted,
                        seq,
                        planned.method.as_str(),
                        planned.body.as_deref(),
                    ),
                    |row| row.get(0),
                )
            }),
    }
    .map_err(|e| conflict_on_constraint(e, rt, id))?;
    if current.is_none() {
        super::index::fill_in_sqlite(connection, rid, rt.as_str(), id).map_err(internal)?;
    }
    super::index::replace_sqlite(connection, rid, rt.as_str(), op.index(), current.is_some())
        .map_err(internal)?;
    Ok(planned.into_written(rt, id, seq))
}

/// How long the checkpointer waits after a checkpoint before it takes the next: the log a
/// busy writer fills meanwhile is copied back in one go.
const CHECKPOINT_PAUSE: Duration = Duration::from_millis(200);

/// How long the log may grow, in pages, before the writer checkpoints it too.
const RESTART_LOG_PAGES: i64 = 8192;

/// The checkpointer: its queue, and whether the writer should checkpoint as well.
struct Checkpointer {
    commits: std::sync::mpsc::SyncSender<()>,
    restart_due: Arc<AtomicBool>,
}

impl Checkpointer {
    /// After a commit on `connection` (the writer's): tells the checkpointer, and when the log
    /// has grown long checkpoints it from the writer itself, so that the writer's next
    /// transaction starts the log over from its beginning. The log only starts over when a
    /// transaction begins just after a checkpoint has copied all of it, which with a busy
    /// writer only the writer's own checkpoint achieves; the checkpointer has copied all but
    /// the last few commits by then, so that checkpoint is short.
    fn committed(&self, connection: &Connection) {
        if self.restart_due.swap(false, Ordering::Relaxed)
            && let Err(error) =
                connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
        {
            tracing::warn!(%error, "SQLite checkpoint failed; the next commit retries it");
        }
        // When the channel is full a checkpoint is due already.
        let _ = self.commits.try_send(());
    }
}

/// Starts the thread that checkpoints the write-ahead log whenever it hears of a commit (at
/// most every [`CHECKPOINT_PAUSE`]), on a connection of its own. A passive checkpoint never
/// waits for the writer or the readers; what it cannot copy yet, the next one does. Past
/// [`RESTART_LOG_PAGES`] it asks the writer to checkpoint too (see
/// [`Checkpointer::committed`]). The thread stops when the writer does.
fn spawn_checkpointer(path: &Path) -> anyhow::Result<Checkpointer> {
    let connection = Connection::open(path)?;
    connection.pragma_update(None, "synchronous", "FULL")?;
    connection.busy_timeout(Duration::from_secs(10))?;
    tune(&connection)?;
    let (sender, commits) = std::sync::mpsc::sync_channel::<()>(1);
    let restart_due = Arc::new(AtomicBool::new(false));
    let due = restart_due.clone();
    std::thread::Builder::new()
        .name("sqlite-checkpoint".to_owned())
        .spawn(move || {
            while commits.recv().is_ok() {
                match connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                    row.get::<_, i64>(1)
                }) {
                    Ok(log_pages) => due.store(log_pages >= RESTART_LOG_PAGES, Ordering::Relaxed),
                    Err(error) => {
                        tracing::warn!(%error, "SQLite checkpoint failed; the next commit retries it");
                    }
                }
                std::thread::sleep(CHECKPOINT_PAUSE);
            }
        })?;
    Ok(Checkpointer {
        commits: sender,
        restart_due,
    })
}

/// Replaces the index rows of a batch of resources in one transaction, on a connection of
/// its own (`telemed reindex` runs beside or instead of a server; SQLite serialises writers).
pub(super) fn reindex(
    path: &Path,
    work: &[(i64, ResourceType, String, crate::search::index::IndexRows)],
) -> anyhow::Result<()> {
    let mut connection = Connection::open(path)?;
    connection.busy_timeout(Duration::from_secs(30))?;
    connection.pragma_update(None, "synchronous", "FULL")?;
    tune(&connection)?;
    let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for (rid, rt, _, rows) in work {
        super::index::replace_sqlite(&tx, *rid, rt.as_str(), rows, true)?;
    }
    tx.commit()?;
    Ok(())
}

fn is_constraint(error: &rusqlite::Error) -> bool {
    error.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation)
}

fn conflict_on_constraint(error: rusqlite::Error, rt: ResourceType, id: &str) -> FhirError {
    if is_constraint(&error) {
        FhirError::Conflict(format!(
            "{rt}/{id} was changed by another request at the same time; retry"
        ))
    } else {
        FhirError::Internal(error.into())
    }
}

/// A query for the reader threads.
type ReadJob = Box<dyn FnOnce() + Send>;

/// The threads that run searches, a fixed few, each on its read-only connection (see
/// [`with_reader`]). A search may scan, so it cannot run on the async runtime's threads; on
/// tokio's blocking pool, under load, each of dozens of threads opened a connection and mapped
/// the database anew, and threads came and went, each time faulting the map in again: a fifth
/// of a busy server's time went to page faults and context switches. With 2 cores, a few
/// threads do as much work as dozens. They stop when the store is dropped.
pub(super) struct Readers {
    jobs: std::sync::mpsc::Sender<ReadJob>,
}

impl Readers {
    pub(super) fn spawn(threads: usize) -> anyhow::Result<Self> {
        let (jobs, queue) = std::sync::mpsc::channel::<ReadJob>();
        let queue = Arc::new(std::sync::Mutex::new(queue));
        for i in 0..threads {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("sqlite-reader-{i}"))
                .spawn(move || {
                    loop {
                        // The lock is held only while waiting: the job runs without it.
                        let job = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        match job {
                            // A job that panics drops its reply, which its caller reports; the
                            // thread carries on.
                            Ok(job) => {
                                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                            }
                            Err(_) => return,
                        }
                    }
                })?;
        }
        Ok(Self { jobs })
    }

    /// Runs `f` on a reader thread.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, FhirError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                // The caller may have gone away.
                let _ = reply.send(f());
            }))
            .map_err(|_| FhirError::Internal(anyhow::anyhow!("the SQLite readers have stopped")))?;
        answer
            .await
            .map_err(|_| FhirError::Internal(anyhow::anyhow!("a SQLite reader dropped a query")))
    }
}

thread_local! {
    /// This thread's read-only connections, one per database file it has read.
    static READERS: RefCell<HashMap<Arc<Path>, Connection>> = RefCell::new(HashMap::new());
}

/// How a read-only connection reads the database file.
#[derive(Clone, Copy)]
enum Reading {
    /// Through the memory map ([`MMAP_SIZE`]): for searches, which visit many pages.
    Mapped,
    /// With `pread` into the connection's own cache: for point reads, which visit a handful.
    /// After every commit a reader drops its cache and, when mapped, unmaps the whole file, so
    /// its next read maps it again and faults in each page it touches; while the audit trail
    /// commits hundreds of times a second, that cost a mapped point read more than the read.
    Unmapped,
}

fn open(path: &Path, reading: Reading) -> rusqlite::Result<Connection> {
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    connection.busy_timeout(Duration::from_secs(10))?;
    if let Reading::Mapped = reading {
        tune(&connection)?;
    }
    connection.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(connection)
}

/// How much of the database file a connection maps into memory (SQLite caps it at its
/// compile-time maximum). Mapped, a page is read from the operating system's cache without a
/// system call, and every connection shares those pages instead of caching its own copies:
/// a search that visits a few thousand index and table pages at random takes half the time.
const MMAP_SIZE: i64 = 1 << 40;

/// The memory map, for every connection but the point readers ([`Reading::Unmapped`]).
///
/// Readers also sort in memory (`temp_store`); writers must not. A write inside a savepoint —
/// each job of a group is one — keeps a statement journal for as long as the savepoint lasts,
/// and an in-memory journal is a list that every statement's end walks from its start: a
/// transaction Bundle of a few hundred resources spent a quarter of its time there. On disk
/// (SQLite keeps it in memory until it grows past 64 KiB) it is truncated in one step.
fn tune(connection: &Connection) -> rusqlite::Result<()> {
    connection.pragma_update(None, "mmap_size", MMAP_SIZE)?;
    Ok(())
}

/// Runs `f` with this thread's read-only connection to `path`, opening it the first time to
/// read as `reading` says (a thread does one kind of reading: the runtime's threads point
/// reads, the reader threads searches).
fn with_reader<T>(
    path: &Arc<Path>,
    reading: Reading,
    f: impl FnOnce(&Connection) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    READERS.with(|readers| {
        let mut readers = readers.borrow_mut();
        let connection = match readers.get(path) {
            Some(connection) => connection,
            None => {
                let connection = open(path, reading).context("cannot open the SQLite database")?;
                readers.entry(path.clone()).or_insert(connection)
            }
        };
        f(connection)
    })
}

/// The current version of `rt/id`, as [`super::Store::read`], on the calling thread.
pub(super) fn read(
    path: &Arc<Path>,
    rt: ResourceType,
    id: &str,
) -> anyhow::Result<Option<Version>> {
    with_reader(path, Reading::Unmapped, |connection| {
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

impl rusqlite::ToSql for Cell {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Self::Null => ValueRef::Null,
            Self::Int(v) => ValueRef::Integer(*v),
            Self::Real(v) => ValueRef::Real(*v),
            Self::Text(v) => ValueRef::Text(v.as_bytes()),
            Self::Blob(v) => ValueRef::Blob(v),
        }))
    }
}

/// Runs a read-only query on this thread's connection, as [`super::Store::query`].
pub(super) fn query(
    path: &Arc<Path>,
    sql: &str,
    binds: &[Cell],
    columns: &[Kind],
) -> anyhow::Result<Vec<Vec<Cell>>> {
    with_reader(path, Reading::Mapped, |connection| {
        let mut statement = connection.prepare_cached(sql)?;
        let mut rows = statement.query(rusqlite::params_from_iter(binds))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let mut cells = Vec::with_capacity(columns.len());
            for (i, kind) in columns.iter().enumerate() {
                use rusqlite::types::ValueRef;
                let cell = match (row.get_ref(i)?, kind) {
                    (ValueRef::Null, _) => Cell::Null,
                    (ValueRef::Integer(v), Kind::Real) => Cell::Real(v as f64),
                    (ValueRef::Integer(v), _) => Cell::Int(v),
                    (ValueRef::Real(v), _) => Cell::Real(v),
                    (ValueRef::Text(v), Kind::Blob) | (ValueRef::Blob(v), _) => {
                        Cell::Blob(v.to_vec())
                    }
                    (ValueRef::Text(v), _) => Cell::Text(String::from_utf8_lossy(v).into_owned()),
                };
                cells.push(cell);
            }
            out.push(cells);
        }
        Ok(out)
    })
}
