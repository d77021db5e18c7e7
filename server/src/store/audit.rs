//! Appending audit records durably, in groups: every record waiting when a group starts goes
//! into one transaction that reads the end of the chain, chains and inserts the records, moves
//! the end, and commits (one fsync); then each caller hears that its records are on disk.
//!
//! On SQLite the records of a write commit in the write's own transaction, through the store's
//! writer (see [`super::sqlite`]); the others are appended to the audit journal, from which
//! the writer moves them into the trail in batches (see [`super::journal`]). On PostgreSQL a
//! task of its own appends them on a pooled connection, with the chain's end locked
//! (`FOR UPDATE`) so that several servers append one chain.

use anyhow::Context as _;
use rusqlite::Connection;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

use super::journal::Journal;
use crate::audit::{AuditRecord, chain_hash};

/// Most records appended in one transaction.
const MAX_GROUP_RECORDS: usize = 4096;

struct Job {
    records: Vec<AuditRecord>,
    done: oneshot::Sender<Result<(), String>>,
}

/// Appends audit records; cheap to clone.
#[derive(Clone)]
pub struct Auditor {
    queue: Queue,
}

#[derive(Clone)]
enum Queue {
    /// The SQLite store's audit journal.
    Journal(Journal),
    /// The PostgreSQL appender task.
    Postgres(mpsc::Sender<Job>),
}

impl Auditor {
    /// An auditor appending to the SQLite store's journal.
    pub(super) fn journal(journal: Journal) -> Self {
        Self {
            queue: Queue::Journal(journal),
        }
    }

    /// An auditor appending to PostgreSQL through `pool`, on a task of its own.
    pub(super) fn postgres(pool: PgPool) -> Self {
        let (queue, mut jobs) = mpsc::channel::<Job>(1024);
        tokio::spawn(async move {
            let mut group = Vec::new();
            while let Some(job) = jobs.recv().await {
                group.push(job);
                gather(&mut group, &mut jobs);
                let result = append_postgres(&pool, &group)
                    .await
                    .map_err(|e| format!("{e:#}"));
                for job in group.drain(..) {
                    let _ = job.done.send(result.clone());
                }
            }
        });
        Self {
            queue: Queue::Postgres(queue),
        }
    }

    /// Appends `records` and returns once they are durable.
    pub async fn append(&self, records: Vec<AuditRecord>) -> anyhow::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        match &self.queue {
            Queue::Journal(journal) => journal.append(records).await,
            Queue::Postgres(queue) => {
                let (done, durable) = oneshot::channel();
                queue
                    .send(Job { records, done })
                    .await
                    .map_err(|_| anyhow::anyhow!("the audit writer has stopped"))?;
                durable
                    .await
                    .map_err(|_| anyhow::anyhow!("the audit writer dropped a record"))?
                    .map_err(|e| anyhow::anyhow!("cannot append to the audit trail: {e}"))
            }
        }
    }

    /// Returns once every record appended before the call can be read from `audit_events`:
    /// on SQLite, once the journal has moved them there; on PostgreSQL they are there already.
    pub async fn settle(&self) -> anyhow::Result<()> {
        match &self.queue {
            Queue::Journal(journal) => journal.settle().await,
            Queue::Postgres(_) => Ok(()),
        }
    }
}

/// Takes every job already waiting, up to a group's size.
fn gather(group: &mut Vec<Job>, jobs: &mut mpsc::Receiver<Job>) {
    let mut records: usize = group.iter().map(|job| job.records.len()).sum();
    while records < MAX_GROUP_RECORDS {
        match jobs.try_recv() {
            Ok(job) => {
                records += job.records.len();
                group.push(job);
            }
            Err(_) => break,
        }
    }
}

const INSERT: &str = "INSERT INTO audit_events (chain_pos, recorded, type_code, subtype, action, \
    outcome, patient, agent, user_name, client_id, address, entity, entities, query, purpose, \
    detail, prev_hash, hash) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)";

/// Chains and inserts `records` inside the SQLite writer's transaction `connection`, and
/// moves the end of the chain.
pub(super) fn append_sqlite<'a>(
    connection: &Connection,
    records: impl IntoIterator<Item = &'a AuditRecord>,
) -> rusqlite::Result<()> {
    let mut records = records.into_iter().peekable();
    if records.peek().is_none() {
        return Ok(());
    }
    let (mut pos, mut last): (i64, Vec<u8>) = connection
        .prepare_cached("SELECT last_pos, last_hash FROM audit_chain WHERE id = 1")?
        .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))?;
    {
        let mut insert = connection.prepare_cached(INSERT)?;
        for record in records {
            pos += 1;
            let hash = chain_hash(&last, pos, record);
            let mut params: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(18);
            params.push(&pos);
            params.push(&record.recorded.0);
            let texts = record.texts();
            for text in &texts {
                params.push(text);
            }
            params.push(&last);
            let hash_bytes = hash.as_slice();
            params.push(&hash_bytes);
            insert.execute(params.as_slice())?;
            last = hash.to_vec();
        }
    }
    connection
        .prepare_cached("UPDATE audit_chain SET last_pos = ?1, last_hash = ?2 WHERE id = 1")?
        .execute(rusqlite::params![pos, last])?;
    Ok(())
}

async fn append_postgres(pool: &PgPool, group: &[Job]) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    let (mut pos, mut last): (i64, Vec<u8>) =
        sqlx::query_as("SELECT last_pos, last_hash FROM audit_chain WHERE id = 1 FOR UPDATE")
            .fetch_one(&mut *tx)
            .await?;
    let records: Vec<&AuditRecord> = group.iter().flat_map(|job| &job.records).collect();
    let mut columns = Columns::with_capacity(records.len());
    for record in records {
        pos += 1;
        let hash = chain_hash(&last, pos, record);
        columns.push(pos, record, &last, &hash);
        last = hash.to_vec();
    }
    // One statement for the whole group: a column of values per parameter.
    let mut query = sqlx::query(
        "INSERT INTO audit_events (chain_pos, recorded, type_code, subtype, action, outcome, \
         patient, agent, user_name, client_id, address, entity, entities, query, purpose, \
         detail, prev_hash, hash) \
         SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], \
         $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], \
         $13::text[], $14::text[], $15::text[], $16::text[], $17::bytea[], $18::bytea[])",
    )
    .bind(&columns.pos)
    .bind(&columns.recorded);
    for texts in &columns.texts {
        query = query.bind(texts);
    }
    query
        .bind(&columns.prev_hash)
        .bind(&columns.hash)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE audit_chain SET last_pos = $1, last_hash = $2 WHERE id = 1")
        .bind(pos)
        .bind(&last)
        .execute(&mut *tx)
        .await?;
    tx.commit().await.context("cannot commit audit records")?;
    Ok(())
}

/// A group of records as one array per column, for `UNNEST`.
#[derive(Default)]
struct Columns {
    pos: Vec<i64>,
    recorded: Vec<i64>,
    /// The text columns, in [`AuditRecord::texts`] order.
    texts: [Vec<Option<String>>; 14],
    prev_hash: Vec<Vec<u8>>,
    hash: Vec<Vec<u8>>,
}

impl Columns {
    fn with_capacity(n: usize) -> Self {
        Self {
            pos: Vec::with_capacity(n),
            recorded: Vec::with_capacity(n),
            ..Self::default()
        }
    }

    fn push(&mut self, pos: i64, record: &AuditRecord, prev: &[u8], hash: &[u8]) {
        self.pos.push(pos);
        self.recorded.push(record.recorded.0);
        for (column, text) in self.texts.iter_mut().zip(record.texts()) {
            column.push(text.map(str::to_owned));
        }
        self.prev_hash.push(prev.to_vec());
        self.hash.push(hash.to_vec());
    }
}
