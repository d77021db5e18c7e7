//! Versioned resource storage on SQLite or PostgreSQL.
//!
//! One schema, two backends (see `migrations/`). Every write is one transaction that appends a
//! row to `resource_versions` (the history) and moves the `resources` row (the current version)
//! forward. The `resources` row carries its version's body too, so that a read or a search
//! result costs one row, not the row and then its version. A delete is a version without a
//! body.
//!
//! The SQL is the same for both backends (sqlx's SQLite driver understands `$n` placeholders), so
//! each operation is written once and [`with_reader!`] compiles it for each concrete connection
//! type; where the dialects differ the code says so.
//!
//! SQLite allows one writer at a time: every write goes to one writer thread, which commits
//! them in groups, so writers queue in the process instead of spinning on `SQLITE_BUSY`. Reads
//! by id run on the calling thread and searches on reader threads, each with a read-only
//! connection of its own, and the rest through a pool (see `sqlite.rs`); the audit records of
//! reads wait in the audit journal on their way to the trail (see `journal.rs`).
//!
//! On PostgreSQL, writes, the audit trail and the locks of conditional writes use sqlx's pool,
//! and reads and searches connections of their own that cost no round trip but their
//! statement's (see `pg_readers.rs`). A few of those plan every statement once for all values
//! ([`Planning::Generic`]), for the statements that would otherwise be planned on every call
//! to the same plan.

mod audit;
mod conditions;
mod index;
mod journal;
mod pg_readers;
mod sqlite;

use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use fhir_models::ResourceType;
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{PgConnection, QueryBuilder, Row};
use tokio::sync::{mpsc, oneshot};

use crate::error::FhirError;
use crate::search::index::IndexRows;

pub use audit::Auditor;
pub use conditions::{ConditionGuard, condition_key};
pub use journal::{BrokenEntry, JournalVerdict};

/// A point in time as stored: microseconds since the Unix epoch, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Micros(pub i64);

impl Micros {
    pub fn now() -> Self {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Self(i64::try_from(since_epoch.as_micros()).unwrap_or(i64::MAX))
    }

    pub fn to_offset_date_time(self) -> time::OffsetDateTime {
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1000)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
    }

    /// The FHIR `instant` form, e.g. `2024-05-01T10:11:12.123456Z`.
    pub fn to_instant(self) -> String {
        let t = self.to_offset_date_time();
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.microsecond()
        )
    }

    /// The HTTP-date form used by `Last-Modified`.
    pub fn to_http_date(self) -> String {
        let secs = u64::try_from(self.0.div_euclid(1_000_000)).unwrap_or(0);
        httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs))
    }
}

/// The interaction that produced a version, as a history entry's `request.method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMethod {
    Post,
    Put,
    Patch,
    Delete,
}

impl WriteMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Patch => "PATCH",
            Self::Delete => "DELETE",
        }
    }
}

impl FromStr for WriteMethod {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "POST" => Self::Post,
            "PUT" => Self::Put,
            "PATCH" => Self::Patch,
            "DELETE" => Self::Delete,
            other => anyhow::bail!("unknown write method {other:?} in resource_versions"),
        })
    }
}

/// One stored version of a resource.
#[derive(Debug, Clone)]
pub struct Version {
    pub seq: i64,
    pub resource_type: ResourceType,
    pub id: String,
    pub version_id: i64,
    pub last_updated: Micros,
    pub method: WriteMethod,
    /// The resource as JSON, with `id` and `meta` filled in; `None` for a delete.
    pub body: Option<Vec<u8>>,
}

impl Version {
    pub fn is_deleted(&self) -> bool {
        self.body.is_none()
    }

    pub fn etag(&self) -> String {
        format!("W/\"{}\"", self.version_id)
    }
}

/// What must hold before a write goes ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// Write whatever is there.
    None,
    /// The current version must be this one (`If-Match`).
    IfMatch(i64),
    /// The id must be unused (create with a server-assigned id).
    Absent,
}

/// What a write does to the resource.
#[derive(Debug)]
pub enum Change {
    /// Store `body` as the next version, with its search index rows; the store fills in
    /// `meta.versionId` and `meta.lastUpdated`.
    Put {
        body: Value,
        method: WriteMethod,
        index: Box<IndexRows>,
    },
    Delete,
}

/// The result of a write.
#[derive(Debug)]
pub enum Written {
    /// A new version was stored. `created` is true when no live version existed before.
    Version { version: Version, created: bool },
    /// A delete of a resource that does not exist or is already deleted: nothing to do.
    NothingToDelete,
}

impl Written {
    /// The version a `Change::Put` stored, and whether it created the resource.
    pub fn into_version(self) -> Result<(Version, bool), FhirError> {
        match self {
            Self::Version { version, created } => Ok((version, created)),
            Self::NothingToDelete => Err(FhirError::Internal(anyhow::anyhow!(
                "a write that stores a body reported nothing to delete"
            ))),
        }
    }
}

/// One write of [`Store::write_all`]: the next version of `rt/id`, if `precondition` holds.
#[derive(Debug)]
pub struct WriteOp {
    pub rt: ResourceType,
    pub id: String,
    pub precondition: Precondition,
    pub change: Change,
}

/// Why [`Store::write_all`] stored nothing.
#[derive(Debug)]
pub struct WriteFailed {
    /// The position of the op that failed; `None` when the transaction as a whole failed.
    pub op: Option<usize>,
    pub error: FhirError,
}

impl WriteFailed {
    fn whole(error: impl Into<FhirError>) -> Self {
        Self {
            op: None,
            error: error.into(),
        }
    }

    fn internal(message: &'static str) -> Self {
        Self::whole(FhirError::Internal(anyhow::anyhow!(message)))
    }
}

/// A value bound to or read from a query of [`Store::query`].
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// The kind of a column [`Store::query`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Int,
    Real,
    Text,
    Blob,
}

/// Which history to list.
#[derive(Debug, Clone)]
pub enum HistoryScope {
    System,
    Type(ResourceType),
    Instance(ResourceType, String),
}

/// One page of history, newest first.
#[derive(Debug, Clone)]
pub struct HistoryQuery {
    pub scope: HistoryScope,
    /// Only versions at or after this time (`_since`).
    pub since: Option<Micros>,
    /// Only versions older than this sequence number (the paging cursor).
    pub before_seq: Option<i64>,
    pub count: u32,
}

enum Backend {
    Sqlite {
        /// The database file, for the per-thread readers of [`sqlite::read`].
        path: Arc<Path>,
        read: SqlitePool,
        /// The threads that run searches (see [`sqlite::Readers`]).
        readers: sqlite::Readers,
        /// The queue of the group-commit writer (see [`sqlite::spawn_writer`]).
        writer: mpsc::Sender<sqlite::WriteJob>,
        /// Where the records of reads are appended (see [`journal`]).
        journal: journal::Journal,
    },
    Postgres {
        /// The pool writes, the audit trail and the condition locks take connections from.
        pool: PgPool,
        /// The connections reads and searches run on (see [`pg_readers`]).
        readers: Box<pg_readers::PgReaders>,
        /// The connections of the statements planned once for all values
        /// ([`Planning::Generic`]), when the read connections are enough to spare some.
        generic: Option<Box<pg_readers::PgReaders>>,
    },
}

/// How PostgreSQL plans a statement (its `plan_cache_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Planning {
    /// The database's own setting: by default a plan for each call's values, until a generic
    /// plan looks no dearer.
    Default,
    /// One generic plan for all values (`force_generic_plan`): for a statement whose plan does
    /// not depend on its values, but whose generic plan PostgreSQL costs far above what it is,
    /// so that it would plan the statement anew on every call.
    Generic,
}

/// How many of `max_connections` reads and searches get, and how many of those plan
/// generically: half the connections, at least one, and half of those once there are four.
/// The walks that plan generically (`_has`, chains) are under a third of the searches but about
/// half of PostgreSQL's time in the search bench's mix; with a quarter of the connections they
/// overflowed to the others, where PostgreSQL planned them anew on each call.
fn read_connections(max_connections: u32) -> (u32, u32) {
    let reads = (max_connections / 2).max(1);
    let generic = if reads >= 4 { reads / 2 } else { 0 };
    (reads - generic, generic)
}

/// The connection options of [`Planning::Generic`]: the settings travel in the startup
/// message, so they cost no statement. Without JIT compilation: a generic plan's cost is a
/// guess far above what the statement costs (that is why it is forced), and past
/// `jit_above_cost` PostgreSQL would compile it on every call, ten milliseconds and more for a
/// statement that takes one.
fn generic_planning(options: &PgConnectOptions) -> PgConnectOptions {
    options
        .clone()
        .options([("plan_cache_mode", "force_generic_plan"), ("jit", "off")])
}

/// The resource store.
pub struct Store {
    backend: Backend,
    /// The conditions of the conditional writes under way (see [`conditions`]).
    conditions: Arc<conditions::ConditionLocks>,
}

/// Runs `$body` with `$connection` bound to a read connection of the backend's concrete type,
/// so a query is written once and compiled for each backend. The body passes it on as
/// `&mut *$connection`; it is given back once the body has run, and closed if the body returns
/// early with an error.
macro_rules! with_reader {
    ($store:expr, |$connection:ident| $body:expr) => {
        match &$store.backend {
            Backend::Sqlite { read, .. } => {
                let mut pooled = read.acquire().await?;
                let $connection = &mut *pooled;
                $body
            }
            Backend::Postgres { readers, .. } => {
                let mut reader = readers.get().await?;
                let $connection = reader.connection();
                let out = $body;
                reader.release();
                out
            }
        }
    };
}

/// sqlx's migrator for the FHIR tables. The authorization server's migrations (from 1001, in
/// `smart-auth`) share the `_sqlx_migrations` table, so theirs are not missing ones of ours.
fn shared_migrator(mut migrator: sqlx::migrate::Migrator) -> sqlx::migrate::Migrator {
    migrator.set_ignore_missing(true);
    migrator
}

/// Options that create a file only the server's user can read or write: the database and the
/// audit journal hold patients' data and who looked at it.
fn private_file() -> std::fs::OpenOptions {
    let mut options = std::fs::OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

/// Creates `dir`, and any parents it lacks, for the server's user only.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Removes the SQLite database file `path` and the files the server keeps beside it: its log,
/// its shared memory and its audit journal. For a throwaway database (tests, benchmarks) that
/// nothing has open; whatever is missing is skipped.
pub fn remove_sqlite_database(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
    let _ = std::fs::remove_dir_all(journal::directory(path));
}

/// The columns of a version, in `resource_versions` and, for the current one, in `resources`:
/// a macro, so that constant statements can be spelled with it by `concat!`.
macro_rules! version_columns {
    () => {
        "seq, resource_type, id, version_id, last_updated, method, body"
    };
}

/// The current version of one resource.
const READ_SQL: &str = concat!(
    "SELECT ",
    version_columns!(),
    " FROM resources WHERE resource_type = $1 AND id = $2"
);

/// [`version_columns!`], for statements built at run time.
pub(crate) const VERSION_COLUMNS: &str = version_columns!();

impl Store {
    /// Opens the database named by `url` (`sqlite://…` or `postgres://…`) and brings its schema
    /// up to date.
    pub async fn open(url: &str, max_connections: u32) -> anyhow::Result<Self> {
        let backend = if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let options = PgConnectOptions::from_str(url).context("DATABASE_URL is not valid")?;
            // Reads get half the connections and everything else the other half, each at
            // least one.
            let (reads, generic) = read_connections(max_connections);
            let pool = PgPoolOptions::new()
                .max_connections(max_connections.saturating_sub(reads + generic).max(1))
                .connect_with(options.clone())
                .await
                .context("cannot connect to PostgreSQL")?;
            shared_migrator(sqlx::migrate!("migrations/postgres"))
                .run(&pool)
                .await
                .context("cannot migrate the PostgreSQL database")?;
            Backend::Postgres {
                pool,
                generic: (generic > 0).then(|| {
                    Box::new(pg_readers::PgReaders::new(
                        generic_planning(&options),
                        generic,
                    ))
                }),
                readers: Box::new(pg_readers::PgReaders::new(options, reads)),
            }
        } else if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .context("DATABASE_URL is not valid")?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // With WAL, FULL syncs the log at every commit: a 2xx means the write is on disk.
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true);
            let path = options.get_filename();
            if let Some(dir) = path.parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            // A new database is readable by the server's user only (its log and shared memory
            // take the same permissions); an existing one keeps those its operator gave it.
            match private_file().write(true).create_new(true).open(path) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot create {}", path.display()));
                }
            }
            let migrator = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(options.clone())
                .await
                .context("cannot open the SQLite database")?;
            shared_migrator(sqlx::migrate!("migrations/sqlite"))
                .run(&migrator)
                .await
                .context("cannot migrate the SQLite database")?;
            migrator.close().await;
            // Each SQLite connection has its own worker thread; more of them than cores only
            // adds context switches.
            let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
            let readers = max_connections.min(u32::try_from(cores * 2).unwrap_or(u32::MAX));
            let read = SqlitePoolOptions::new()
                .max_connections(readers.max(1))
                .connect_with(options.clone().read_only(true))
                .await
                .context("cannot open the SQLite database for reading")?;
            let writer = sqlite::spawn_writer(options.get_filename())
                .context("cannot open the SQLite database for writing")?;
            let readers = sqlite::Readers::spawn(usize::try_from(readers).unwrap_or(1).max(1))
                .context("cannot start the SQLite readers")?;
            let journal = journal::Journal::open(options.get_filename(), writer.clone())
                .await
                .context("cannot open the audit journal")?;
            Backend::Sqlite {
                path: Arc::from(options.get_filename()),
                read,
                readers,
                writer,
                journal,
            }
        } else {
            anyhow::bail!("DATABASE_URL must start with sqlite:// or postgres://");
        };
        let conditions = conditions::ConditionLocks::new(match &backend {
            Backend::Postgres { pool, .. } => {
                Some((pool.clone(), pool.options().get_max_connections()))
            }
            Backend::Sqlite { .. } => None,
        });
        Ok(Self {
            backend,
            conditions: Arc::new(conditions),
        })
    }

    /// Holds the conditions `keys` (from [`condition_key`]) until the guard is dropped,
    /// against the other conditional writes of this server, and on PostgreSQL of every server
    /// of the database: a conditional write takes them before its search and keeps them until
    /// its write has committed.
    pub async fn lock_conditions(&self, keys: Vec<i64>) -> Result<ConditionGuard, FhirError> {
        self.conditions.lock(keys).await
    }

    /// An appender of audit records to this database (see [`crate::audit`]).
    pub fn auditor(&self) -> Auditor {
        match &self.backend {
            Backend::Sqlite { journal, .. } => Auditor::journal(journal.clone()),
            Backend::Postgres { pool, .. } => Auditor::postgres(pool.clone()),
        }
    }

    /// Whether the database is PostgreSQL, whose plans weigh work differently from SQLite's: a
    /// query there costs a round trip and a plan, and each row it visits more than SQLite's.
    pub fn is_postgres(&self) -> bool {
        matches!(self.backend, Backend::Postgres { .. })
    }

    /// What the audit journal holds (see [`journal::verify`]); nothing on PostgreSQL, which
    /// has none.
    pub fn verify_journal(&self) -> anyhow::Result<JournalVerdict> {
        match &self.backend {
            Backend::Sqlite { path, .. } => journal::verify(path),
            Backend::Postgres { .. } => Ok(JournalVerdict::default()),
        }
    }

    /// Moves every audit record appended so far into the trail, then closes every connection,
    /// waiting for the ones in use.
    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite { read, journal, .. } => {
                if let Err(error) = journal.settle().await {
                    tracing::warn!(%error, "the audit journal is left for the next start to move");
                }
                read.close().await;
            }
            Backend::Postgres {
                pool,
                readers,
                generic,
            } => {
                readers.close().await;
                if let Some(generic) = generic {
                    generic.close().await;
                }
                pool.close().await;
            }
        }
    }

    /// The current version of a resource (a deleted one included), if it ever existed.
    pub async fn read(&self, rt: ResourceType, id: &str) -> Result<Option<Version>, FhirError> {
        if let Backend::Sqlite { path, .. } = &self.backend {
            return sqlite::read(path, rt, id).map_err(FhirError::Internal);
        }
        let sql = READ_SQL;
        let row = with_reader!(self, |connection| {
            match sqlx::query(sql)
                .bind(rt.as_str())
                .bind(id)
                .fetch_optional(&mut *connection)
                .await?
            {
                Some(row) => Some(version_from_row(&row)?),
                None => None,
            }
        });
        Ok(row)
    }

    /// One version of a resource.
    pub async fn vread(
        &self,
        rt: ResourceType,
        id: &str,
        version_id: i64,
    ) -> Result<Option<Version>, FhirError> {
        let sql = format!(
            "SELECT {VERSION_COLUMNS} FROM resource_versions \
             WHERE resource_type = $1 AND id = $2 AND version_id = $3"
        );
        let row = with_reader!(self, |connection| {
            match sqlx::query(&sql)
                .bind(rt.as_str())
                .bind(id)
                .bind(version_id)
                .fetch_optional(&mut *connection)
                .await?
            {
                Some(row) => Some(version_from_row(&row)?),
                None => None,
            }
        });
        Ok(row)
    }

    /// Writes the next version of `rt/id` in one transaction, if `precondition` holds.
    pub async fn write(
        &self,
        rt: ResourceType,
        id: &str,
        precondition: Precondition,
        change: Change,
    ) -> Result<Written, FhirError> {
        let op = WriteOp {
            rt,
            id: id.to_owned(),
            precondition,
            change,
        };
        let mut written = self
            .write_all(vec![op])
            .await
            .map_err(|failed| failed.error)?;
        written.pop().ok_or_else(|| {
            FhirError::Internal(anyhow::anyhow!("a write of one resource reported none"))
        })
    }

    /// Writes every op, in order, in one transaction: all of them, or none. A failure names
    /// the op that failed, when one did.
    pub async fn write_all(&self, ops: Vec<WriteOp>) -> Result<Vec<Written>, WriteFailed> {
        let ops = prepare_all(ops)?;
        match &self.backend {
            Backend::Sqlite { writer, .. } => {
                // The request's audit record commits with its write (see crate::audit).
                let audit = crate::audit::records_for_write();
                let recorded = !audit.is_empty();
                let (reply, answer) = oneshot::channel();
                writer
                    .send(sqlite::WriteJob::writes(ops, audit, reply))
                    .await
                    .map_err(|_| WriteFailed::internal("the SQLite writer has stopped"))?;
                let written = answer
                    .await
                    .map_err(|_| WriteFailed::internal("the SQLite writer dropped a write"))??;
                if recorded {
                    crate::audit::mark_recorded();
                }
                Ok(written)
            }
            Backend::Postgres { pool, .. } => {
                let mut tx = pool.begin().await.map_err(WriteFailed::whole)?;
                let written = write_postgres_all(&mut tx, &ops).await?;
                tx.commit().await.map_err(WriteFailed::whole)?;
                Ok(written)
            }
        }
    }

    /// Runs a read-only query written for both backends (`$n` placeholders numbered in order
    /// of appearance) and reads its columns as `columns` says.
    pub async fn query(
        &self,
        sql: &str,
        binds: &[Cell],
        columns: &[Kind],
    ) -> Result<Vec<Vec<Cell>>, FhirError> {
        self.query_planned(sql, binds, columns, Planning::Default)
            .await
    }

    /// [`Store::query`], planned by PostgreSQL as `planning` says (SQLite plans every
    /// statement once, for all values, anyway).
    pub async fn query_planned(
        &self,
        sql: &str,
        binds: &[Cell],
        columns: &[Kind],
        planning: Planning,
    ) -> Result<Vec<Vec<Cell>>, FhirError> {
        match &self.backend {
            Backend::Sqlite { path, readers, .. } => {
                let (path, sql, binds, columns) = (
                    path.clone(),
                    sql.to_owned(),
                    binds.to_vec(),
                    columns.to_vec(),
                );
                readers
                    .run(move || sqlite::query(&path, &sql, &binds, &columns))
                    .await?
                    .map_err(FhirError::Internal)
            }
            Backend::Postgres {
                readers, generic, ..
            } => {
                // A statement for a generic plan does not wait for one of the few connections
                // that plan so while another is free: planned for its values, it costs a little
                // more, but only its own planning.
                let mut reader = match (planning, generic) {
                    (Planning::Generic, Some(generic)) => generic.get_or(readers).await?,
                    _ => readers.get().await?,
                };
                let mut query = sqlx::query(sql);
                for bind in binds {
                    query = match bind {
                        Cell::Null => query.bind(None::<String>),
                        Cell::Int(v) => query.bind(*v),
                        Cell::Real(v) => query.bind(*v),
                        Cell::Text(v) => query.bind(v.as_str()),
                        Cell::Blob(v) => query.bind(v.as_slice()),
                    };
                }
                let rows = query.fetch_all(reader.connection()).await?;
                reader.release();
                rows.iter()
                    .map(|row| {
                        columns
                            .iter()
                            .enumerate()
                            .map(|(i, kind)| {
                                Ok(match kind {
                                    Kind::Int => row.try_get::<Option<i64>, _>(i)?.map(Cell::Int),
                                    Kind::Real => row.try_get::<Option<f64>, _>(i)?.map(Cell::Real),
                                    Kind::Text => {
                                        row.try_get::<Option<String>, _>(i)?.map(Cell::Text)
                                    }
                                    Kind::Blob => {
                                        row.try_get::<Option<Vec<u8>>, _>(i)?.map(Cell::Blob)
                                    }
                                }
                                .unwrap_or(Cell::Null))
                            })
                            .collect::<Result<Vec<_>, FhirError>>()
                    })
                    .collect()
            }
        }
    }

    /// Rebuilds the search index rows of every live resource, `batch` resources per
    /// transaction, with `extract` giving each resource's rows; `progress` hears the running
    /// count after each batch. Returns how many resources were indexed.
    pub async fn reindex(
        &self,
        batch: u32,
        extract: impl Fn(ResourceType, &Value) -> IndexRows,
        mut progress: impl FnMut(u64),
    ) -> anyhow::Result<u64> {
        const PAGE: &str = "SELECT rid, resource_type, id, body FROM resources \
            WHERE NOT deleted AND rid > $1 ORDER BY rid LIMIT $2";
        let mut after = 0i64;
        let mut done = 0u64;
        loop {
            let rows = self
                .query(
                    PAGE,
                    &[Cell::Int(after), Cell::Int(i64::from(batch))],
                    &[Kind::Int, Kind::Text, Kind::Text, Kind::Blob],
                )
                .await
                .map_err(|e| anyhow::anyhow!("cannot read resources to reindex: {e:?}"))?;
            if rows.is_empty() {
                return Ok(done);
            }
            let mut work = Vec::with_capacity(rows.len());
            for row in rows {
                let [
                    Cell::Int(rid),
                    Cell::Text(rt),
                    Cell::Text(id),
                    Cell::Blob(body),
                ] = <[Cell; 4]>::try_from(row).map_err(|_| anyhow::anyhow!("unexpected row"))?
                else {
                    anyhow::bail!("unexpected row while reindexing");
                };
                let rt: ResourceType = rt
                    .parse()
                    .map_err(|_| anyhow::anyhow!("unknown resource type {rt:?} in storage"))?;
                let value: Value = serde_json::from_slice(&body)
                    .with_context(|| format!("stored {rt} (rid {rid}) is not JSON"))?;
                work.push((rid, rt, id, extract(rt, &value)));
                after = rid;
            }
            let indexed = u64::try_from(work.len()).unwrap_or(u64::MAX);
            match &self.backend {
                Backend::Sqlite { path, .. } => {
                    let path = path.clone();
                    tokio::task::spawn_blocking(move || sqlite::reindex(&path, &work)).await??;
                }
                Backend::Postgres { pool, .. } => {
                    let mut tx = pool.begin().await?;
                    let resources: Vec<index::Indexed<'_>> = work
                        .iter()
                        .map(|(rid, rt, id, rows)| index::Indexed {
                            rid: *rid,
                            rt: rt.as_str(),
                            id,
                            rows,
                            existed: true,
                        })
                        .collect();
                    index::replace_postgres(&mut tx, &resources).await?;
                    tx.commit().await?;
                }
            }
            done += indexed;
            progress(done);
        }
    }

    /// A page of history, newest first (at most `count + 1` versions, so the caller can tell
    /// whether there is a next page), and the number of versions in the whole scope.
    pub async fn history(&self, query: &HistoryQuery) -> Result<(Vec<Version>, i64), FhirError> {
        let result = with_reader!(self, |connection| {
            let mut page = QueryBuilder::new(format!(
                "SELECT {VERSION_COLUMNS} FROM resource_versions WHERE 1 = 1"
            ));
            push_history_filters(&mut page, query);
            if let Some(before) = query.before_seq {
                page.push(" AND seq < ").push_bind(before);
            }
            page.push(" ORDER BY seq DESC LIMIT ")
                .push_bind(i64::from(query.count) + 1);
            let rows = page.build().fetch_all(&mut *connection).await?;
            let versions = rows
                .iter()
                .map(version_from_row)
                .collect::<Result<Vec<_>, _>>()?;

            let mut count = QueryBuilder::new("SELECT COUNT(*) FROM resource_versions WHERE 1 = 1");
            push_history_filters(&mut count, query);
            let total: i64 = count
                .build()
                .fetch_one(&mut *connection)
                .await?
                .try_get(0)?;
            (versions, total)
        });
        Ok(result)
    }
}

/// The current row of a resource, as a write finds it.
#[derive(Debug, Clone, Copy)]
struct Current {
    rid: i64,
    version_id: i64,
    last_updated: i64,
    deleted: bool,
}

/// A resource body serialized before its write, with `id` and `meta` in place: only its
/// version id and last-updated instant, which the write decides, are left to fill in. So the
/// work of serializing happens on the request's own task, not on SQLite's one writer thread,
/// and a write tried again (see [`sqlite`]) does not serialize again.
#[derive(Debug)]
struct PreparedBody {
    /// The JSON, with the two values empty.
    bytes: Vec<u8>,
    /// Where in `bytes` the contents of `meta.versionId` and of `meta.lastUpdated` go, between
    /// their quotes.
    version_at: usize,
    updated_at: usize,
}

impl PreparedBody {
    /// Serializes `body` as `serde_json::to_vec` would once [`set_meta`] had set its `id`, version
    /// id and last-updated instant, leaving the last two to [`Self::finish`].
    fn new(mut body: Value, id: &str) -> Result<Self, FhirError> {
        set_meta(&mut body, id, "", "");
        let internal = |e: serde_json::Error| FhirError::Internal(e.into());
        let Value::Object(object) = &body else {
            return Err(FhirError::Internal(anyhow::anyhow!(
                "a resource to store is not a JSON object"
            )));
        };
        let mut bytes = Vec::with_capacity(1024);
        let (mut version_at, mut updated_at) = (None, None);
        bytes.push(b'{');
        for (i, (key, value)) in object.iter().enumerate() {
            if i > 0 {
                bytes.push(b',');
            }
            serde_json::to_writer(&mut bytes, key).map_err(internal)?;
            bytes.push(b':');
            match value {
                Value::Object(meta) if key == "meta" => {
                    bytes.push(b'{');
                    for (j, (key, value)) in meta.iter().enumerate() {
                        if j > 0 {
                            bytes.push(b',');
                        }
                        serde_json::to_writer(&mut bytes, key).map_err(internal)?;
                        bytes.push(b':');
                        match key.as_str() {
                            "versionId" => {
                                bytes.push(b'"');
                                version_at = Some(bytes.len());
                                bytes.push(b'"');
                            }
                            "lastUpdated" => {
                                bytes.push(b'"');
                                updated_at = Some(bytes.len());
                                bytes.push(b'"');
                            }
                            _ => serde_json::to_writer(&mut bytes, value).map_err(internal)?,
                        }
                    }
                    bytes.push(b'}');
                }
                _ => serde_json::to_writer(&mut bytes, value).map_err(internal)?,
            }
        }
        bytes.push(b'}');
        let (Some(version_at), Some(updated_at)) = (version_at, updated_at) else {
            return Err(FhirError::Internal(anyhow::anyhow!(
                "a resource to store has no meta to fill in"
            )));
        };
        Ok(Self {
            bytes,
            version_at,
            updated_at,
        })
    }

    /// The body of version `version_id`, last updated at `last_updated`.
    fn finish(&self, version_id: i64, last_updated: Micros) -> Vec<u8> {
        let version = version_id.to_string();
        let updated = last_updated.to_instant();
        let mut slots = [
            (self.version_at, version.as_bytes()),
            (self.updated_at, updated.as_bytes()),
        ];
        slots.sort_by_key(|(at, _)| *at);
        let mut out = Vec::with_capacity(self.bytes.len() + version.len() + updated.len());
        let mut from = 0;
        for (at, text) in slots {
            out.extend_from_slice(&self.bytes[from..at]);
            out.extend_from_slice(text);
            from = at;
        }
        out.extend_from_slice(&self.bytes[from..]);
        out
    }
}

/// A [`Change`] ready to be written: the body serialized.
#[derive(Debug)]
enum PreparedChange {
    Put {
        body: PreparedBody,
        method: WriteMethod,
        index: Box<IndexRows>,
    },
    Delete,
}

/// A [`WriteOp`] ready to be written.
#[derive(Debug)]
struct PreparedOp {
    rt: ResourceType,
    id: String,
    precondition: Precondition,
    change: PreparedChange,
}

impl PreparedOp {
    fn new(op: WriteOp) -> Result<Self, FhirError> {
        let change = match op.change {
            Change::Put {
                body,
                method,
                index,
            } => PreparedChange::Put {
                body: PreparedBody::new(body, &op.id)?,
                method,
                index,
            },
            Change::Delete => PreparedChange::Delete,
        };
        Ok(Self {
            rt: op.rt,
            id: op.id,
            precondition: op.precondition,
            change,
        })
    }

    /// The search index rows the write stores: none for a delete.
    fn index(&self) -> &IndexRows {
        static NONE: LazyLock<IndexRows> = LazyLock::new(IndexRows::default);
        match &self.change {
            PreparedChange::Put { index, .. } => index,
            PreparedChange::Delete => &NONE,
        }
    }
}

/// Prepares every op, or names the first that cannot be.
fn prepare_all(ops: Vec<WriteOp>) -> Result<Vec<PreparedOp>, WriteFailed> {
    ops.into_iter()
        .enumerate()
        .map(|(i, op)| PreparedOp::new(op).map_err(|error| WriteFailed { op: Some(i), error }))
        .collect()
}

/// What a write will store, decided from the current row. Shared by both backends, so the
/// rules (preconditions, version numbers, time never going back) are written once.
struct Planned {
    version_id: i64,
    last_updated: Micros,
    method: WriteMethod,
    body: Option<Vec<u8>>,
    /// Whether a live version existed before.
    was_live: bool,
}

/// `None`: a delete with nothing to delete.
fn plan_write(op: &PreparedOp, current: Option<Current>) -> Result<Option<Planned>, FhirError> {
    let (rt, id) = (op.rt, &op.id);
    let live = current.filter(|c| !c.deleted);
    match (op.precondition, current, live) {
        (Precondition::Absent, Some(_), _) => {
            return Err(FhirError::Conflict(format!("{rt}/{id} already exists")));
        }
        (Precondition::IfMatch(expected), _, Some(live)) if expected != live.version_id => {
            return Err(FhirError::PreconditionFailed(format!(
                "If-Match names version {expected} but the current version is {}",
                live.version_id
            )));
        }
        (Precondition::IfMatch(expected), _, None) => {
            return Err(FhirError::PreconditionFailed(format!(
                "If-Match names version {expected} but {rt}/{id} has no current version"
            )));
        }
        _ => {}
    }
    if matches!(op.change, PreparedChange::Delete) && live.is_none() {
        return Ok(None);
    }
    let version_id = current.map_or(1, |c| c.version_id + 1);
    // Versions of one resource never go back in time, even if the clock does.
    let last_updated = Micros(
        Micros::now()
            .0
            .max(current.map_or(i64::MIN, |c| c.last_updated + 1)),
    );
    let (method, body) = match &op.change {
        PreparedChange::Put { body, method, .. } => {
            (*method, Some(body.finish(version_id, last_updated)))
        }
        PreparedChange::Delete => (WriteMethod::Delete, None),
    };
    Ok(Some(Planned {
        version_id,
        last_updated,
        method,
        body,
        was_live: live.is_some(),
    }))
}

impl Planned {
    fn into_written(self, rt: ResourceType, id: &str, seq: i64) -> Written {
        Written::Version {
            version: Version {
                seq,
                resource_type: rt,
                id: id.to_owned(),
                version_id: self.version_id,
                last_updated: self.last_updated,
                method: self.method,
                body: self.body,
            },
            created: !self.was_live,
        }
    }
}

// The statements of a write, shared by both backends. Placeholders are numbered in the order
// they appear: SQLite (through rusqlite) binds `$n` by position of first appearance, not by n.
const SELECT_CURRENT: &str = "SELECT rid, version_id, last_updated, deleted FROM resources \
    WHERE resource_type = $1 AND id = $2";
const INSERT_VERSION: &str = "INSERT INTO resource_versions \
    (resource_type, id, version_id, last_updated, method, body) \
    VALUES ($1, $2, $3, $4, $5, $6) RETURNING seq";
const UPDATE_CURRENT: &str = "UPDATE resources SET version_id = $1, last_updated = $2, \
    deleted = $3, seq = $4, method = $5, body = $6 WHERE resource_type = $7 AND id = $8";
const INSERT_CURRENT: &str = "INSERT INTO resources \
    (resource_type, id, version_id, last_updated, deleted, seq, method, body) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING rid";

/// Every op on PostgreSQL, inside the caller's transaction. The creates of a transaction
/// Bundle (new ids, nothing to look up first) are written together, a few statements for all
/// of them rather than two round trips each; the other ops, and the creates again should that
/// fail (to name the one at fault), one by one.
async fn write_postgres_all(
    conn: &mut PgConnection,
    ops: &[PreparedOp],
) -> Result<Vec<Written>, WriteFailed> {
    let creates: Vec<usize> = (0..ops.len())
        .filter(|&i| {
            ops[i].precondition == Precondition::Absent
                && matches!(ops[i].change, PreparedChange::Put { .. })
        })
        .collect();
    let mut written: Vec<Option<Written>> = ops.iter().map(|_| None).collect();
    if creates.len() > 1 {
        // A savepoint, so that a failure leaves the transaction usable for the retry.
        let mut savepoint = sqlx::Connection::begin(&mut *conn)
            .await
            .map_err(WriteFailed::whole)?;
        match create_postgres(&mut savepoint, ops, &creates).await {
            Ok(created) => {
                savepoint.commit().await.map_err(WriteFailed::whole)?;
                for (i, one) in creates.iter().zip(created) {
                    written[*i] = Some(one);
                }
            }
            Err(_) => savepoint.rollback().await.map_err(WriteFailed::whole)?,
        }
    }
    for (i, op) in ops.iter().enumerate() {
        if written[i].is_none() {
            let one = write_postgres(conn, op)
                .await
                .map_err(|error| WriteFailed { op: Some(i), error })?;
            written[i] = Some(one);
        }
    }
    Ok(written.into_iter().flatten().collect())
}

/// The versions and current rows of the creates of [`create_postgres`], each taking its lock
/// (see `index::postgres_lock_key`) for its index rows to see every row that waits for it. The
/// locks are taken in one order, so that two such transactions cannot deadlock; the final
/// `WHERE` reads the `locked` query because PostgreSQL runs a plain `SELECT` in `WITH` only
/// when something reads it.
static CREATE_ALL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH input AS (\
           SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::text[], $5::bytea[]) \
           WITH ORDINALITY AS u (resource_type, id, last_updated, method, body, n)), \
         version AS (\
           INSERT INTO resource_versions \
           (resource_type, id, version_id, last_updated, method, body) \
           SELECT resource_type, id, 1, last_updated, method, body FROM input ORDER BY n \
           RETURNING seq, resource_type, id), \
         current AS (\
           INSERT INTO resources \
           (resource_type, id, version_id, last_updated, deleted, seq, method, body) \
           SELECT i.resource_type, i.id, 1, i.last_updated, FALSE, v.seq, i.method, i.body \
           FROM input i \
           JOIN version v ON v.resource_type = i.resource_type AND v.id = i.id ORDER BY i.n \
           RETURNING seq, rid), \
         locked AS (\
           SELECT COUNT(pg_advisory_xact_lock(k)) AS n FROM (\
             SELECT {key} AS k FROM input ORDER BY k) AS keys) \
         SELECT i.n, c.seq, c.rid FROM current c JOIN version v ON v.seq = c.seq \
         JOIN input i ON i.resource_type = v.resource_type AND i.id = v.id \
         WHERE (SELECT n FROM locked) >= 0",
        key = index::postgres_lock_key("resource_type", "id")
    )
});

/// The creates `creates` of `ops` on PostgreSQL: their versions and current rows in one
/// statement, their index rows in another.
async fn create_postgres(
    conn: &mut PgConnection,
    ops: &[PreparedOp],
    creates: &[usize],
) -> Result<Vec<Written>, FhirError> {
    let mut planned = Vec::with_capacity(creates.len());
    for &i in creates {
        let op = &ops[i];
        planned.push(plan_write(op, None)?.ok_or_else(|| {
            FhirError::Internal(anyhow::anyhow!("a create planned nothing to write"))
        })?);
    }
    let rows = sqlx::query(&CREATE_ALL)
        .bind(
            creates
                .iter()
                .map(|&i| ops[i].rt.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            creates
                .iter()
                .map(|&i| ops[i].id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(planned.iter().map(|p| p.last_updated.0).collect::<Vec<_>>())
        .bind(
            planned
                .iter()
                .map(|p| p.method.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            planned
                .iter()
                .map(|p| p.body.as_deref().unwrap_or_default())
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut *conn)
        .await?;
    // `n` counts from 1, in the order of `creates`.
    let mut keys = vec![None; creates.len()];
    for row in rows {
        let n: i64 = row.try_get(0)?;
        let slot = usize::try_from(n - 1)
            .ok()
            .and_then(|n| keys.get_mut(n))
            .ok_or_else(|| FhirError::Internal(anyhow::anyhow!("a create out of range")))?;
        *slot = Some((row.try_get::<i64, _>(1)?, row.try_get::<i64, _>(2)?));
    }
    let keys: Vec<(i64, i64)> = keys
        .into_iter()
        .collect::<Option<_>>()
        .ok_or_else(|| FhirError::Internal(anyhow::anyhow!("a create stored nothing")))?;
    let indexed: Vec<index::Indexed<'_>> = creates
        .iter()
        .zip(&keys)
        .map(|(&i, &(_, rid))| index::Indexed {
            rid,
            rt: ops[i].rt.as_str(),
            id: &ops[i].id,
            rows: ops[i].index(),
            existed: false,
        })
        .collect();
    index::replace_postgres(conn, &indexed).await?;
    Ok(planned
        .into_iter()
        .zip(creates.iter().zip(keys))
        .map(|(planned, (&i, (seq, _)))| planned.into_written(ops[i].rt, &ops[i].id, seq))
        .collect())
}

/// The version and the current row of a write on PostgreSQL, from `FROM version` on.
fn write_current(from: &str) -> String {
    format!(
        "WITH version AS (\
           INSERT INTO resource_versions \
           (resource_type, id, version_id, last_updated, method, body) \
           VALUES ($1, $2, $3, $4, $5, $6) RETURNING seq) \
         INSERT INTO resources \
         (resource_type, id, version_id, last_updated, deleted, seq, method, body) \
         SELECT $1, $2, $3, $4, $7, seq, $5, $6 FROM {from} \
         ON CONFLICT (resource_type, id) DO UPDATE SET version_id = EXCLUDED.version_id, \
           last_updated = EXCLUDED.last_updated, deleted = EXCLUDED.deleted, seq = EXCLUDED.seq, \
           method = EXCLUDED.method, body = EXCLUDED.body \
         RETURNING seq, rid"
    )
}

/// [`write_current`] of a resource that exists.
static WRITE_CURRENT: LazyLock<String> = LazyLock::new(|| write_current("version"));

/// [`write_current`] of a resource new to the database, with its lock.
static CREATE_CURRENT: LazyLock<String> = LazyLock::new(|| {
    write_current(&format!(
        "version, (SELECT pg_advisory_xact_lock({})) AS locked",
        index::postgres_lock_key("$1::text", "$2::text")
    ))
});

/// A write on PostgreSQL, inside the caller's transaction.
async fn write_postgres(conn: &mut PgConnection, op: &PreparedOp) -> Result<Written, FhirError> {
    let (rt, id, precondition) = (op.rt, op.id.as_str(), op.precondition);
    // Lock the current row so concurrent writers of one resource queue behind each other. A
    // create needs no look: its first version collides with any version the id already has.
    let current = if precondition == Precondition::Absent {
        None
    } else {
        sqlx::query(&format!("{SELECT_CURRENT} FOR UPDATE"))
            .bind(rt.as_str())
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?
            .map(|row| -> Result<Current, sqlx::Error> {
                Ok(Current {
                    rid: row.try_get(0)?,
                    version_id: row.try_get(1)?,
                    last_updated: row.try_get(2)?,
                    deleted: row.try_get(3)?,
                })
            })
            .transpose()?
    };
    let Some(planned) = plan_write(op, current)? else {
        return Ok(Written::NothingToDelete);
    };
    // One round trip for the version and the current row, one for the index rows. A resource
    // new to the database takes its lock (see `index::postgres_lock_key`) as it is written.
    let sql = if current.is_some() {
        &*WRITE_CURRENT
    } else {
        &*CREATE_CURRENT
    };
    let row = sqlx::query(sql)
        .bind(rt.as_str())
        .bind(id)
        .bind(planned.version_id)
        .bind(planned.last_updated.0)
        .bind(planned.method.as_str())
        .bind(planned.body.as_deref())
        .bind(planned.body.is_none())
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| match precondition {
            Precondition::Absent if is_unique_violation(&e) => {
                FhirError::Conflict(format!("{rt}/{id} already exists"))
            }
            _ => conflict_on_unique(e, rt, id),
        })?;
    let seq: i64 = row.try_get(0)?;
    let rid: i64 = row.try_get(1)?;
    let indexed = index::Indexed {
        rid,
        rt: rt.as_str(),
        id,
        rows: op.index(),
        existed: current.is_some(),
    };
    index::replace_postgres(conn, &[indexed]).await?;
    Ok(planned.into_written(rt, id, seq))
}

fn push_history_filters<'a, DB>(builder: &mut QueryBuilder<'a, DB>, query: &'a HistoryQuery)
where
    DB: sqlx::Database,
    &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    match &query.scope {
        HistoryScope::System => {}
        HistoryScope::Type(rt) => {
            builder.push(" AND resource_type = ").push_bind(rt.as_str());
        }
        HistoryScope::Instance(rt, id) => {
            builder.push(" AND resource_type = ").push_bind(rt.as_str());
            builder.push(" AND id = ").push_bind(id.as_str());
        }
    }
    if let Some(since) = query.since {
        builder.push(" AND last_updated >= ").push_bind(since.0);
    }
}

fn version_from_row<R: Row>(row: &R) -> Result<Version, FhirError>
where
    usize: sqlx::ColumnIndex<R>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<Vec<u8>>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let resource_type: String = row.try_get(1)?;
    let method: String = row.try_get(5)?;
    Ok(Version {
        seq: row.try_get(0)?,
        resource_type: resource_type
            .parse()
            .map_err(|_| anyhow::anyhow!("unknown resource type {resource_type:?} in storage"))?,
        id: row.try_get(2)?,
        version_id: row.try_get(3)?,
        last_updated: Micros(row.try_get(4)?),
        method: method.parse()?,
        body: row.try_get(6)?,
    })
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// A unique violation means another writer stored the same version first.
fn conflict_on_unique(error: sqlx::Error, rt: ResourceType, id: &str) -> FhirError {
    if is_unique_violation(&error) {
        FhirError::Conflict(format!(
            "{rt}/{id} was changed by another request at the same time; retry"
        ))
    } else {
        error.into()
    }
}

/// Sets `id`, `meta.versionId` and `meta.lastUpdated`, which belong to the server.
fn set_meta(body: &mut Value, id: &str, version_id: &str, last_updated: &str) {
    let Some(object) = body.as_object_mut() else {
        return;
    };
    // `id` goes right after `resourceType`, where FHIR's own serialisers put it.
    let id = Value::String(id.to_owned());
    match object.get_mut("id") {
        Some(existing) => *existing = id,
        None => {
            let at = object
                .keys()
                .position(|k| k == "resourceType")
                .map_or(0, |i| i + 1);
            object.shift_insert(at, "id".to_owned(), id);
        }
    }
    if !object.get("meta").is_some_and(Value::is_object) {
        let at = object.keys().position(|k| k == "id").map_or(0, |i| i + 1);
        object.shift_insert(at, "meta".to_owned(), Value::Object(serde_json::Map::new()));
    }
    if let Some(meta) = object.get_mut("meta").and_then(Value::as_object_mut) {
        meta.insert("versionId".to_owned(), Value::String(version_id.to_owned()));
        meta.insert(
            "lastUpdated".to_owned(),
            Value::String(last_updated.to_owned()),
        );
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr as _;

    use serde_json::json;
    use sqlx::Connection as _;
    use sqlx::postgres::{PgConnectOptions, PgConnection};

    use super::{Micros, PreparedBody, generic_planning, read_connections, set_meta};

    /// What the body of a version was before it was prepared: `set_meta`, then serialized.
    fn serialized(mut body: serde_json::Value, version_id: i64, at: Micros) -> Vec<u8> {
        set_meta(&mut body, "x1", &version_id.to_string(), &at.to_instant());
        serde_json::to_vec(&body).expect("JSON")
    }

    #[test]
    fn a_prepared_body_is_byte_for_byte_the_body_serialized_with_its_meta() {
        let at = Micros(1_714_557_072_123_456);
        let bodies = [
            json!({"resourceType": "Patient", "active": true}),
            json!({"resourceType": "Patient", "id": "old", "meta": {"profile": ["p"]},
                   "name": [{"family": "Ölçer \"Q\"\n"}], "x": 1.50}),
            // A client's own version and time, in its order, are overwritten in place.
            json!({"resourceType": "Patient", "meta": {"lastUpdated": "2020-01-01T00:00:00Z",
                   "tag": [{"code": "t"}], "versionId": "7"}}),
            // `meta` that is not an object is replaced; a contained resource's is left alone.
            json!({"resourceType": "Observation", "meta": "no",
                   "contained": [{"resourceType": "Patient", "meta": {"versionId": "9"}}]}),
        ];
        for body in bodies {
            let prepared = PreparedBody::new(body.clone(), "x1").expect("prepared");
            for version_id in [1, 12, 1234] {
                assert_eq!(
                    String::from_utf8(prepared.finish(version_id, at)).expect("UTF-8"),
                    String::from_utf8(serialized(body.clone(), version_id, at)).expect("UTF-8"),
                );
            }
        }
    }

    #[test]
    fn half_the_read_connections_plan_generically_when_there_are_four() {
        // (read connections planned per call, planned generically); writes get the rest.
        assert_eq!(read_connections(1), (1, 0));
        assert_eq!(read_connections(2), (1, 0));
        assert_eq!(read_connections(7), (3, 0));
        assert_eq!(read_connections(8), (2, 2));
        assert_eq!(read_connections(16), (4, 4));
        assert_eq!(read_connections(64), (16, 16));
    }

    /// On the run's PostgreSQL database, when it has one (CI runs the suite on each backend).
    #[tokio::test]
    async fn a_generic_connection_plans_generically_without_jit_a_plain_one_as_set() {
        let Ok(url) = std::env::var("TELEMED_TEST_DATABASE_URL") else {
            return;
        };
        let options = PgConnectOptions::from_str(&url).expect("a PostgreSQL URL");
        let mode = async |options: &PgConnectOptions| {
            let mut connection = PgConnection::connect_with(options).await.expect("connect");
            let settings: (String, String) =
                sqlx::query_as("SELECT current_setting('plan_cache_mode'), current_setting('jit')")
                    .fetch_one(&mut connection)
                    .await
                    .expect("query");
            settings
        };
        assert_eq!(
            mode(&generic_planning(&options)).await,
            ("force_generic_plan".to_owned(), "off".to_owned())
        );
        assert_ne!(mode(&options).await.0, "force_generic_plan");
    }
}
