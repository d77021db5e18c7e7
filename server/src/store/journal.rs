//! The audit journal (SQLite): where the records of reads, searches and authentication events
//! become durable before their responses leave, for the price of a `write` and a shared
//! `fdatasync`, not of a SQLite commit.
//!
//! A read writes nothing but its audit record, and every record must be on disk before the
//! response leaves. Committed to SQLite one group at a time, those records kept the writer
//! busy with B-tree inserts, log frames and a commit for every handful of reads. So they are
//! appended to a file instead, by a thread of its own, in groups (all that wait when a group
//! starts, one `fdatasync` for them), and each caller hears once its records are on disk. Every
//! [`MOVE_AFTER`], or sooner when many have gathered, the file is closed as a *segment* and the
//! store's writer moves its records into `audit_events` in one transaction, where they are
//! chained like every other record; then the segment is deleted. Writes do not come here:
//! their records commit with them.
//!
//! So the chain's order is the order records reach the database, and a read's record may be
//! chained after a write that came later (`recorded` keeps when each happened). A record waits
//! in the journal for a fraction of a second; [`Journal::settle`] waits until everything
//! appended before it is in `audit_events`, and every search of the trail calls it first.
//!
//! - The journal lives beside the database, in `{database}-audit/`. Each server process holds
//!   a *slot* for as long as it runs: a lock file `{slot}.lock` it keeps locked, and segments
//!   `{slot}.{segment}.log`. Several processes may share one database file; each appends to
//!   its own slot.
//! - A slot whose lock is free was left behind by a process that died. Whoever opens the
//!   database next moves its segments into the trail ([`Journal::open`]); the number of the
//!   last segment moved is committed with the move (`audit_journal`), so a segment is never
//!   moved twice, even when a crash comes between the commit and the deletion of its file.
//!   Lock files are kept: deleting one while another process opens it would let two
//!   processes hold the same slot.
//! - Each entry is `length, hash, record`: the hash is the SHA-256 of the entry before it
//!   (zeros for a segment's first) and of the record. An entry cut short at a segment's end is
//!   one whose caller never heard back (a crash during its `write`), and is dropped; an entry
//!   that does not match its hash with more entries after it means the file was changed:
//!   `telemed audit verify` names it ([`verify`]), and the segment is kept as
//!   `{slot}.{segment}.broken` instead of being deleted once what matched has been moved.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc as channel;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, oneshot};

use super::Micros;
use super::sqlite::WriteJob;
use crate::audit::{AuditRecord, known_code};

/// How long a segment takes records before it is closed and moved into `audit_events`: the
/// longest a record waits outside the chain, unless a search of the trail settles it sooner.
const MOVE_AFTER: Duration = Duration::from_millis(200);

/// A segment is closed and moved once it holds this many records, whatever its age: one
/// transaction of the writer moves them.
const MOVE_RECORDS: usize = 4096;

/// Most records appended with one `fdatasync`.
const MAX_GROUP_RECORDS: usize = 4096;

/// The longest [`Journal::settle`] waits: moves that keep failing must not hold a search
/// of the trail for ever.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How often the journal's thread looks whether the writer has moved a segment.
const MOVE_POLL: Duration = Duration::from_millis(1);

/// The size of an entry's head: the record's length (4 bytes) and the entry's hash.
const HEAD: usize = 4 + 32;

/// A journal slot: the number in its file names.
pub(super) type Slot = u32;

/// A closed segment handed to the writer: the slot and segment number that `audit_journal`
/// then names as moved, in the same transaction as the records.
#[derive(Debug, Clone, Copy)]
pub(super) struct Moved {
    pub slot: Slot,
    pub segment: u64,
}

enum Message {
    Append(Vec<AuditRecord>, oneshot::Sender<Result<(), String>>),
    Settle(oneshot::Sender<()>),
}

/// This process's audit journal; cheap to clone. Its thread stops once every clone is gone
/// and what it held has been moved.
#[derive(Clone)]
pub(super) struct Journal {
    messages: channel::Sender<Message>,
}

impl Journal {
    /// Opens a journal for the database file `database`, whose records `writer` moves into
    /// the trail: moves whatever the journals of dead processes left, takes a free slot (the
    /// first of those, or a new one) and starts the thread that appends to it.
    pub(super) async fn open(
        database: &Path,
        writer: mpsc::Sender<WriteJob>,
    ) -> anyhow::Result<Self> {
        let dir = directory(database);
        super::private_dir(&dir)
            .with_context(|| format!("cannot create the audit journal {}", dir.display()))?;
        let moved = moved_segments(database)?;
        let mut own: Option<(Slot, File, u64)> = None;
        for slot in slots(&dir)? {
            let lock = open_lock(&dir, slot)?;
            match lock.try_lock() {
                Ok(()) => {}
                // A live process holds it.
                Err(fs::TryLockError::WouldBlock) => continue,
                Err(fs::TryLockError::Error(error)) => {
                    return Err(error).context("cannot lock the audit journal");
                }
            }
            let last = recover(&dir, slot, moved(slot), &writer).await?;
            if own.is_none() {
                own = Some((slot, lock, last));
            }
        }
        let (slot, lock, last) = match own {
            Some(own) => own,
            None => new_slot(&dir, &moved)?,
        };
        let (messages, queue) = channel::channel();
        let appender = Appender {
            dir,
            slot,
            _lock: lock,
            writer,
            segment: last + 1,
            file: None,
            len: 0,
            prev: [0; 32],
            records: Vec::new(),
            opened: None,
            closed: VecDeque::new(),
            moving: None,
            retry_at: None,
            moved: last,
            settles: Vec::new(),
        };
        std::thread::Builder::new()
            .name("audit-journal".to_owned())
            .spawn(move || appender.run(&queue))
            .context("cannot start the audit journal")?;
        Ok(Self { messages })
    }

    /// Appends `records` and returns once they are on disk.
    pub(super) async fn append(&self, records: Vec<AuditRecord>) -> anyhow::Result<()> {
        let (done, durable) = oneshot::channel();
        self.messages
            .send(Message::Append(records, done))
            .map_err(|_| anyhow::anyhow!("the audit journal has stopped"))?;
        durable
            .await
            .map_err(|_| anyhow::anyhow!("the audit journal dropped a record"))?
            .map_err(|e| anyhow::anyhow!("cannot append to the audit journal: {e}"))
    }

    /// Returns once every record appended before the call is in `audit_events`, or fails
    /// after [`SETTLE_TIMEOUT`] (the writer cannot commit).
    pub(super) async fn settle(&self) -> anyhow::Result<()> {
        let (done, settled) = oneshot::channel();
        self.messages
            .send(Message::Settle(done))
            .map_err(|_| anyhow::anyhow!("the audit journal has stopped"))?;
        tokio::time::timeout(SETTLE_TIMEOUT, settled)
            .await
            .map_err(|_| anyhow::anyhow!("the audit journal cannot move its records"))?
            .map_err(|_| anyhow::anyhow!("the audit journal stopped before its records were moved"))
    }
}

/// The journal's directory, beside the database file.
pub(super) fn directory(database: &Path) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push("-audit");
    PathBuf::from(name)
}

fn lock_path(dir: &Path, slot: Slot) -> PathBuf {
    dir.join(format!("{slot}.lock"))
}

fn segment_path(dir: &Path, slot: Slot, segment: u64) -> PathBuf {
    dir.join(format!("{slot}.{segment}.log"))
}

fn broken_path(dir: &Path, slot: Slot, segment: u64) -> PathBuf {
    dir.join(format!("{slot}.{segment}.broken"))
}

fn open_lock(dir: &Path, slot: Slot) -> anyhow::Result<File> {
    let path = lock_path(dir, slot);
    super::private_file()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))
}

/// The slots that have a lock file, in order.
fn slots(dir: &Path) -> anyhow::Result<Vec<Slot>> {
    let mut slots: Vec<Slot> = list(dir)?
        .filter_map(|name| name.strip_suffix(".lock")?.parse().ok())
        .collect();
    slots.sort_unstable();
    Ok(slots)
}

/// The names of the files in `dir`.
fn list(dir: &Path) -> anyhow::Result<impl Iterator<Item = String>> {
    let entries = fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    Ok(entries.filter_map(|entry| entry.ok()?.file_name().into_string().ok()))
}

/// The segments of `slot` still in `dir` (not the broken ones), in order.
fn segments(dir: &Path, slot: Slot) -> anyhow::Result<Vec<u64>> {
    let prefix = format!("{slot}.");
    let mut segments: Vec<u64> = list(dir)?
        .filter_map(|name| {
            name.strip_prefix(&prefix)?
                .strip_suffix(".log")?
                .parse()
                .ok()
        })
        .collect();
    segments.sort_unstable();
    Ok(segments)
}

/// A slot after every existing one, locked, and the last segment the database names as moved
/// from it (none, unless its lock file was deleted).
fn new_slot(dir: &Path, moved: impl Fn(Slot) -> u64) -> anyhow::Result<(Slot, File, u64)> {
    let mut slot = slots(dir)?.last().map_or(0, |last| last + 1);
    loop {
        let lock = open_lock(dir, slot)?;
        match lock.try_lock() {
            Ok(()) => return Ok((slot, lock, moved(slot))),
            // Another process took it meanwhile.
            Err(fs::TryLockError::WouldBlock) => slot += 1,
            Err(fs::TryLockError::Error(error)) => {
                return Err(error).context("cannot lock the audit journal");
            }
        }
    }
}

/// The last segment moved of each slot, as the database has it.
fn moved_segments(database: &Path) -> anyhow::Result<impl Fn(Slot) -> u64> {
    let connection = rusqlite::Connection::open_with_flags(
        database,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    let rows: Vec<(Slot, u64)> = connection
        .prepare("SELECT slot, moved FROM audit_journal")?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(move |slot| {
        rows.iter()
            .find(|(s, _)| *s == slot)
            .map_or(0, |(_, moved)| *moved)
    })
}

/// Moves the segments a dead process left in `slot` after `moved` into the trail, in order,
/// and deletes them; returns the number of the last segment the slot has used.
async fn recover(
    dir: &Path,
    slot: Slot,
    moved: u64,
    writer: &mpsc::Sender<WriteJob>,
) -> anyhow::Result<u64> {
    let mut last = moved;
    for segment in segments(dir, slot)? {
        last = last.max(segment);
        let path = segment_path(dir, slot, segment);
        if segment > moved {
            let read = read_segment(&path)?;
            if !read.records.is_empty() {
                move_records(writer, read.records, Moved { slot, segment })
                    .await
                    .with_context(|| {
                        format!("cannot move {} into the audit trail", path.display())
                    })?;
            }
            if let Some(broken) = read.broken {
                tracing::error!(
                    segment = %path.display(),
                    entry = broken.entry,
                    why = broken.why,
                    "an audit journal segment was changed; it is kept as .broken"
                );
                fs::rename(&path, broken_path(dir, slot, segment))?;
                continue;
            }
        }
        fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
    }
    Ok(last)
}

/// Hands `records` to the writer and waits for their commit.
async fn move_records(
    writer: &mpsc::Sender<WriteJob>,
    records: Vec<AuditRecord>,
    moved: Moved,
) -> anyhow::Result<()> {
    let (reply, answer) = oneshot::channel();
    writer
        .send(WriteJob::moving(records, moved, reply))
        .await
        .map_err(|_| anyhow::anyhow!("the SQLite writer has stopped"))?;
    answer
        .await
        .map_err(|_| anyhow::anyhow!("the SQLite writer dropped the records"))?
        .map(drop)
        .map_err(|failed| anyhow::anyhow!("{:?}", failed.error))
}

/// How the writer answers a move.
type WriterAnswer = oneshot::Receiver<Result<Vec<super::Written>, super::WriteFailed>>;

/// The thread that appends: its segment, and the closed segments on their way to the trail.
struct Appender {
    dir: PathBuf,
    slot: Slot,
    /// Held locked for as long as the thread runs.
    _lock: File,
    writer: mpsc::Sender<WriteJob>,
    /// The open segment: its number, its file once it has a record, how long the file is and
    /// the hash of its last entry.
    segment: u64,
    file: Option<File>,
    len: u64,
    prev: [u8; 32],
    /// The records in the open segment, and when its first came.
    records: Vec<AuditRecord>,
    opened: Option<Instant>,
    /// Closed segments waiting to be moved, oldest first, with their records (none when they
    /// must be read back from the file, after a move failed).
    closed: VecDeque<(u64, Option<Vec<AuditRecord>>)>,
    /// The segment the writer is moving.
    moving: Option<(u64, WriterAnswer)>,
    /// After a move failed, when to try again.
    retry_at: Option<Instant>,
    /// Every segment up to this one is in the trail.
    moved: u64,
    /// Callers of [`Journal::settle`], with the segment they wait for.
    settles: Vec<(u64, oneshot::Sender<()>)>,
}

impl Appender {
    fn run(mut self, queue: &channel::Receiver<Message>) {
        loop {
            let first = match self.wait() {
                None => match queue.recv() {
                    Ok(message) => Some(message),
                    Err(_) => break,
                },
                Some(wait) => match queue.recv_timeout(wait) {
                    Ok(message) => Some(message),
                    Err(channel::RecvTimeoutError::Timeout) => None,
                    Err(channel::RecvTimeoutError::Disconnected) => break,
                },
            };
            if let Some(first) = first {
                let mut messages = vec![first];
                let mut records = 0;
                while records < MAX_GROUP_RECORDS {
                    match queue.try_recv() {
                        Ok(message) => {
                            if let Message::Append(more, _) = &message {
                                records += more.len();
                            }
                            messages.push(message);
                        }
                        Err(_) => break,
                    }
                }
                self.handle(messages);
            }
            self.tick();
        }
        self.finish();
    }

    /// How long to wait for the next message before there is something else to do.
    fn wait(&self) -> Option<Duration> {
        if self.moving.is_some() {
            return Some(MOVE_POLL);
        }
        let due = [
            self.retry_at.filter(|_| !self.closed.is_empty()),
            self.opened.map(|opened| opened + MOVE_AFTER),
        ];
        due.into_iter()
            .flatten()
            .min()
            .map(|at| at.saturating_duration_since(Instant::now()))
    }

    fn handle(&mut self, messages: Vec<Message>) {
        let mut appends = Vec::new();
        let mut settles = Vec::new();
        for message in messages {
            match message {
                Message::Append(records, done) => appends.push((records, done)),
                Message::Settle(done) => settles.push(done),
            }
        }
        if !appends.is_empty() {
            match self.write(appends.iter().flat_map(|(records, _)| records)) {
                Ok(()) => {
                    for (records, done) in appends {
                        self.records.extend(records);
                        // The caller may have gone away; its record stands all the same.
                        let _ = done.send(Ok(()));
                    }
                }
                Err(error) => {
                    let error = format!("{error:#}");
                    tracing::error!(%error, "cannot append to the audit journal");
                    for (_, done) in appends {
                        let _ = done.send(Err(error.clone()));
                    }
                    // Whatever the failed write left at the end is cut, and the segment is
                    // closed: the next append starts a new file.
                    if let Some(file) = &self.file {
                        let _ = file.set_len(self.len);
                    }
                    self.close();
                }
            }
        }
        if !settles.is_empty() && !self.records.is_empty() {
            self.close();
        }
        for done in settles {
            self.settles.push((self.segment - 1, done));
        }
    }

    /// Appends `records` to the open segment, creating its file for the first, and syncs it.
    fn write<'a>(&mut self, records: impl Iterator<Item = &'a AuditRecord>) -> anyhow::Result<()> {
        let file = match &mut self.file {
            Some(file) => file,
            None => {
                let path = segment_path(&self.dir, self.slot, self.segment);
                let file = super::private_file()
                    .create_new(true)
                    .append(true)
                    .open(&path)
                    .with_context(|| format!("cannot create {}", path.display()))?;
                // The new file's name must survive a crash as surely as its records.
                File::open(&self.dir)
                    .and_then(|dir| dir.sync_all())
                    .with_context(|| format!("cannot sync {}", self.dir.display()))?;
                self.len = 0;
                self.prev = [0; 32];
                self.opened = Some(Instant::now());
                self.file.insert(file)
            }
        };
        let mut bytes = Vec::with_capacity(512);
        let mut prev = self.prev;
        for record in records {
            prev = encode(record, &prev, &mut bytes);
        }
        file.write_all(&bytes)?;
        file.sync_data()?;
        self.len += bytes.len() as u64;
        self.prev = prev;
        Ok(())
    }

    /// Closes the open segment; the next record starts the next one.
    fn close(&mut self) {
        let Some(_) = self.file.take() else {
            return;
        };
        let records = std::mem::take(&mut self.records);
        if records.is_empty() {
            // Its only write failed.
            let _ = fs::remove_file(segment_path(&self.dir, self.slot, self.segment));
        } else {
            self.closed.push_back((self.segment, Some(records)));
        }
        self.segment += 1;
        self.opened = None;
    }

    /// Closes the open segment when it is due, hears how the move under way went, starts the
    /// next one, and answers the settles that are done.
    fn tick(&mut self) {
        if self.records.len() >= MOVE_RECORDS
            || self
                .opened
                .is_some_and(|opened| opened.elapsed() >= MOVE_AFTER)
        {
            self.close();
        }
        if let Some((segment, answer)) = &mut self.moving {
            let segment = *segment;
            match answer.try_recv() {
                Err(oneshot::error::TryRecvError::Empty) => {}
                Ok(Ok(_)) => {
                    self.moving = None;
                    self.segment_moved(segment);
                }
                Ok(Err(failed)) => self.move_failed(segment, &format!("{:?}", failed.error)),
                Err(oneshot::error::TryRecvError::Closed) => {
                    self.move_failed(segment, "the SQLite writer dropped the records");
                }
            }
        }
        if self.moving.is_none() && self.retry_at.is_none_or(|at| at <= Instant::now()) {
            self.start_move();
        }
        // With nothing closed or moving, every segment before the open one is in the trail.
        let done = if self.moving.is_none() && self.closed.is_empty() {
            self.segment - 1
        } else {
            self.moved
        };
        let (done_now, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.settles)
            .into_iter()
            .partition(|(segment, _)| *segment <= done);
        self.settles = waiting;
        for (_, settle) in done_now {
            let _ = settle.send(());
        }
    }

    fn move_failed(&mut self, segment: u64, error: &str) {
        tracing::error!(
            error,
            "cannot move audit journal records into the trail; retrying"
        );
        self.moving = None;
        self.closed.push_front((segment, None));
        self.retry_at = Some(Instant::now() + MOVE_AFTER);
    }

    /// Hands the oldest closed segment to the writer.
    fn start_move(&mut self) {
        let Some((segment, records)) = self.closed.pop_front() else {
            return;
        };
        self.retry_at = None;
        let records = match records {
            Some(records) => records,
            None => match read_segment(&segment_path(&self.dir, self.slot, segment)) {
                Ok(read) => read.records,
                Err(error) => {
                    self.move_failed(segment, &format!("{error:#}"));
                    return;
                }
            },
        };
        let (reply, answer) = oneshot::channel();
        let moved = Moved {
            slot: self.slot,
            segment,
        };
        match self
            .writer
            .blocking_send(WriteJob::moving(records, moved, reply))
        {
            Ok(()) => self.moving = Some((segment, answer)),
            Err(_) => self.move_failed(segment, "the SQLite writer has stopped"),
        }
    }

    /// When the last clone of the journal is gone: moves everything, unless the writer fails,
    /// in which case the segments wait for the next process to take the slot.
    fn finish(mut self) {
        self.close();
        loop {
            self.tick();
            let Some((segment, answer)) = self.moving.take() else {
                return;
            };
            match answer.blocking_recv() {
                Ok(Ok(_)) => self.segment_moved(segment),
                _ => return,
            }
        }
    }

    /// The writer has committed `segment`'s records: its file goes.
    fn segment_moved(&mut self, segment: u64) {
        self.moved = segment;
        let path = segment_path(&self.dir, self.slot, segment);
        if let Err(error) = fs::remove_file(&path) {
            // Named as moved in the database, it is deleted by the next process to take the
            // slot.
            tracing::warn!(%error, segment = %path.display(), "cannot remove a moved audit journal segment");
        }
    }
}

/// Appends the entry of `record` after the entry whose hash is `prev`; returns its hash.
fn encode(record: &AuditRecord, prev: &[u8; 32], out: &mut Vec<u8>) -> [u8; 32] {
    let start = out.len();
    out.extend_from_slice(&[0; HEAD]);
    out.extend_from_slice(&record.recorded.0.to_le_bytes());
    for text in record.texts() {
        match text {
            None => out.extend_from_slice(&u32::MAX.to_le_bytes()),
            Some(text) => {
                out.extend_from_slice(&u32::try_from(text.len()).unwrap_or(0).to_le_bytes());
                out.extend_from_slice(text.as_bytes());
            }
        }
    }
    let hash = entry_hash(prev, &out[start + HEAD..]);
    let len = u32::try_from(out.len() - start - HEAD).unwrap_or(u32::MAX);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + HEAD].copy_from_slice(&hash);
    hash
}

fn entry_hash(prev: &[u8; 32], record: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(prev);
    hash.update(record);
    hash.finalize().into()
}

/// A record from its bytes in an entry.
fn decode(mut bytes: &[u8]) -> Option<AuditRecord> {
    let mut take = |n: usize| {
        let (head, rest) = bytes.split_at_checked(n)?;
        bytes = rest;
        Some(head)
    };
    let recorded = i64::from_le_bytes(take(8)?.try_into().ok()?);
    let mut texts: Vec<Option<String>> = Vec::with_capacity(14);
    for _ in 0..14 {
        let len = u32::from_le_bytes(take(4)?.try_into().ok()?);
        texts.push(if len == u32::MAX {
            None
        } else {
            Some(String::from_utf8(take(usize::try_from(len).ok()?)?.to_vec()).ok()?)
        });
    }
    if !bytes.is_empty() {
        return None;
    }
    let mut texts = texts.into_iter();
    let mut next = || texts.next().flatten();
    Some(AuditRecord {
        recorded: Micros(recorded),
        type_code: next().unwrap_or_default(),
        subtype: next().unwrap_or_default(),
        action: known_code(next()),
        outcome: known_code(next()),
        patient: next(),
        agent: next(),
        user_name: next(),
        client_id: next(),
        address: next(),
        entity: next(),
        entities: next(),
        query: next(),
        purpose: next(),
        detail: next(),
    })
}

/// What a segment holds: its records up to the first entry that does not hold, and why that
/// one does not when more entries follow it (a cut-short last entry is a crash, not a break).
struct Segment {
    records: Vec<AuditRecord>,
    broken: Option<BrokenEntry>,
}

/// An entry of a segment that does not match its hash, or cannot be read, with entries after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenEntry {
    /// Its place in the segment, from 1.
    pub entry: usize,
    pub why: &'static str,
}

fn read_segment(path: &Path) -> anyhow::Result<Segment> {
    let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut records = Vec::new();
    let mut prev = [0u8; 32];
    let mut at = 0;
    while at < bytes.len() {
        let entry = records.len() + 1;
        let Some(head) = bytes.get(at..at + HEAD) else {
            break;
        };
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let Some(record) = bytes.get(at + HEAD..at + HEAD + len) else {
            break;
        };
        let last = at + HEAD + len == bytes.len();
        let broken = |why| BrokenEntry { entry, why };
        if head[4..] != entry_hash(&prev, record) {
            let broken =
                (!last).then(|| broken("it does not match its hash (the entry was changed)"));
            return Ok(Segment { records, broken });
        }
        let Some(decoded) = decode(record) else {
            return Ok(Segment {
                records,
                broken: Some(broken("it is not a record")),
            });
        };
        records.push(decoded);
        prev.copy_from_slice(&head[4..]);
        at += HEAD + len;
    }
    Ok(Segment {
        records,
        broken: None,
    })
}

/// What [`verify`] found in a database's journal.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JournalVerdict {
    /// Records waiting in segments to be moved into the trail.
    pub waiting: u64,
    /// The first segment found changed (its file name) and its entry that does not hold.
    pub broken: Option<(String, BrokenEntry)>,
}

/// Reads every segment of the journal of the database file `database`, those of running
/// servers included (whose last entry may be half-written, and is then not counted). A
/// segment kept as `.broken` is reported, but its records are not counted as waiting: those
/// before the break were moved into the trail when it was found.
pub(super) fn verify(database: &Path) -> anyhow::Result<JournalVerdict> {
    let dir = directory(database);
    let mut verdict = JournalVerdict::default();
    if !dir.exists() {
        return Ok(verdict);
    }
    // (slot, segment, kept as broken), in order.
    let mut files: Vec<(Slot, u64, bool)> = list(&dir)?
        .filter_map(|name| {
            let (slot, rest) = name.split_once('.')?;
            let (segment, kind) = rest.split_once('.')?;
            let broken = match kind {
                "log" => false,
                "broken" => true,
                _ => return None,
            };
            Some((slot.parse().ok()?, segment.parse().ok()?, broken))
        })
        .collect();
    files.sort_unstable();
    for (slot, segment, kept_broken) in files {
        let path = if kept_broken {
            broken_path(&dir, slot, segment)
        } else {
            segment_path(&dir, slot, segment)
        };
        let read = match read_segment(&path) {
            Ok(read) => read,
            // Moved and deleted since it was listed.
            Err(_) if !path.exists() => continue,
            Err(error) => return Err(error),
        };
        if !kept_broken {
            verdict.waiting += read.records.len() as u64;
        }
        if let Some(broken) = read.broken
            && verdict.broken.is_none()
        {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            verdict.broken = Some((name.unwrap_or_default(), broken));
        }
    }
    Ok(verdict)
}

/// Names `moved` as moved, in the writer's transaction `connection` that moves its records.
pub(super) fn mark_moved(connection: &rusqlite::Connection, moved: Moved) -> rusqlite::Result<()> {
    connection
        .prepare_cached(
            "INSERT INTO audit_journal (slot, moved) VALUES (?1, ?2) \
             ON CONFLICT (slot) DO UPDATE SET moved = excluded.moved",
        )?
        .execute(rusqlite::params![moved.slot, moved.segment])
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(query: &str) -> AuditRecord {
        AuditRecord {
            recorded: Micros(1_700_000_000_000_000),
            type_code: "rest".to_owned(),
            subtype: "search-type".to_owned(),
            action: "E",
            outcome: "0",
            patient: Some("p1".to_owned()),
            agent: Some("Practitioner/1".to_owned()),
            user_name: None,
            client_id: Some("app".to_owned()),
            address: Some("127.0.0.1".to_owned()),
            entity: None,
            entities: Some(String::new()),
            query: Some(query.to_owned()),
            purpose: None,
            detail: None,
        }
    }

    fn entries(queries: &[&str]) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut prev = [0; 32];
        for query in queries {
            prev = encode(&record(query), &prev, &mut bytes);
        }
        bytes
    }

    /// A new directory of its own under the system's temporary one.
    fn scratch() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "telemed-journal-test-{}",
            uuid::Uuid::new_v4().simple()
        ));
        fs::create_dir_all(&dir).expect("a directory");
        dir
    }

    fn read(bytes: &[u8]) -> Segment {
        let dir = scratch();
        let path = dir.join("0.1.log");
        fs::write(&path, bytes).expect("written");
        let segment = read_segment(&path).expect("read");
        let _ = fs::remove_dir_all(dir);
        segment
    }

    #[test]
    fn a_segment_reads_back_the_records_appended() {
        let segment = read(&entries(&["name=a", "name=b", "name=c"]));
        assert_eq!(
            segment.records,
            vec![record("name=a"), record("name=b"), record("name=c")]
        );
        assert_eq!(segment.broken, None);
    }

    #[test]
    fn an_entry_cut_short_at_the_end_is_dropped_without_a_break() {
        let bytes = entries(&["name=a", "name=b"]);
        for cut in 1..bytes.len() / 2 {
            let segment = read(&bytes[..bytes.len() - cut]);
            assert_eq!(segment.records, vec![record("name=a")], "cut {cut}");
            assert_eq!(segment.broken, None, "cut {cut}");
        }
    }

    #[test]
    fn a_changed_entry_with_entries_after_it_is_a_break() {
        let segment = read(&changed(entries(&["name=a", "name=b", "name=c"]), "name=b"));
        assert_eq!(segment.records, vec![record("name=a")]);
        assert_eq!(segment.broken.map(|b| b.entry), Some(2));
    }

    /// `entries` with one byte of the record of `query` changed.
    fn changed(mut bytes: Vec<u8>, query: &str) -> Vec<u8> {
        let at = bytes
            .windows(query.len())
            .position(|w| w == query.as_bytes())
            .expect("the record");
        bytes[at + query.len() - 1] ^= 1;
        bytes
    }

    #[test]
    fn verify_counts_the_waiting_records_and_names_a_changed_segment() {
        let dir = scratch();
        let database = dir.join("telemed.db");
        let journal = directory(&database);
        fs::create_dir_all(&journal).expect("the journal");
        open_lock(&journal, 0).expect("a slot");
        fs::write(segment_path(&journal, 0, 1), entries(&["name=a", "name=b"])).expect("written");
        assert_eq!(
            verify(&database).expect("verified"),
            JournalVerdict {
                waiting: 2,
                broken: None
            }
        );

        let bytes = changed(entries(&["name=c", "name=d", "name=e"]), "name=d");
        fs::write(segment_path(&journal, 0, 2), bytes).expect("written");
        let verdict = verify(&database).expect("verified");
        // Kept as `.broken` once found, its good entries are in the trail: still named, no
        // longer waiting.
        fs::rename(segment_path(&journal, 0, 2), broken_path(&journal, 0, 2)).expect("renamed");
        let kept = verify(&database).expect("verified");
        let _ = fs::remove_dir_all(dir);
        assert_eq!(kept.waiting, 2);
        assert_eq!(
            kept.broken.map(|(name, broken)| (name, broken.entry)),
            Some(("0.2.broken".to_owned(), 2))
        );
        assert_eq!(verdict.waiting, 3);
        assert_eq!(
            verdict.broken,
            Some((
                "0.2.log".to_owned(),
                BrokenEntry {
                    entry: 2,
                    why: "it does not match its hash (the entry was changed)"
                }
            ))
        );
    }

    /// The query strings of the trail, in chain order.
    async fn chained_queries(store: &crate::store::Store) -> Vec<String> {
        store
            .query(
                "SELECT query FROM audit_events ORDER BY chain_pos",
                &[],
                &[super::super::Kind::Text],
            )
            .await
            .expect("the trail")
            .into_iter()
            .map(|row| match row.into_iter().next() {
                Some(super::super::Cell::Text(query)) => query,
                other => panic!("not a query: {other:?}"),
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_process_journal_joins_the_trail_once_when_the_database_opens() {
        let dir = scratch();
        let database = dir.join("telemed.db");
        let url = format!("sqlite://{}", database.display());
        let running = crate::store::Store::open(&url, 2).await.expect("opened");
        // A process that held slot 7 died after its segment 3 had been moved, but before the
        // file was deleted; its segment 4 had not been moved, and the last entry of segment 5
        // was being written.
        let journal = directory(&database);
        open_lock(&journal, 7).expect("a slot");
        fs::write(segment_path(&journal, 7, 3), entries(&["name=moved"])).expect("written");
        fs::write(segment_path(&journal, 7, 4), entries(&["name=a", "name=b"])).expect("written");
        let torn = entries(&["name=c", "name=torn"]);
        fs::write(segment_path(&journal, 7, 5), &torn[..torn.len() - 3]).expect("written");
        rusqlite::Connection::open(&database)
            .and_then(|db| db.execute("INSERT INTO audit_journal (slot, moved) VALUES (7, 3)", []))
            .expect("segment 3 named as moved");

        let reopened = crate::store::Store::open(&url, 2).await.expect("reopened");
        let queries = chained_queries(&reopened).await;
        let left = segments(&journal, 7).expect("listed");
        let verdict = crate::audit::verify(&reopened).await.expect("verified");
        // The one that opened the database took the dead slot, and carries on after it.
        reopened
            .auditor()
            .append(vec![record("name=after")])
            .await
            .expect("appended");
        reopened.close().await;
        let moved_after = chained_queries(&running).await;
        let slot_7 = running
            .query(
                "SELECT moved FROM audit_journal WHERE slot = 7",
                &[],
                &[super::super::Kind::Int],
            )
            .await
            .expect("the slots");
        running.close().await;
        let _ = fs::remove_dir_all(dir);

        assert_eq!(queries, ["name=a", "name=b", "name=c"]);
        assert_eq!(left, Vec::<u64>::new());
        assert_eq!(
            verdict,
            crate::audit::Verified::Intact {
                chained: 3,
                waiting: 0
            }
        );
        assert_eq!(slot_7, [[super::super::Cell::Int(6)]]);
        assert_eq!(moved_after, ["name=a", "name=b", "name=c", "name=after"]);
    }

    #[cfg(unix)]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_database_and_its_journal_are_for_the_server_user_only() {
        use std::os::unix::fs::PermissionsExt as _;
        // As `ls -l` would say it, in octal.
        let mode = |path: &Path| {
            fs::metadata(path)
                .map(|m| format!("{:o}", m.permissions().mode() & 0o777))
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        };
        let dir = scratch();
        let database = dir.join("telemed.db");
        let store = crate::store::Store::open(&format!("sqlite://{}", database.display()), 2)
            .await
            .expect("opened");
        let database_modes = [mode(&database), mode(&dir.join("telemed.db-wal"))];
        store.close().await;
        // A journal whose writer never moves anything: its segment stays to be looked at.
        let (writer, _jobs) = mpsc::channel(1);
        let journal = Journal::open(&database, writer).await.expect("opened");
        journal
            .append(vec![record("name=private")])
            .await
            .expect("appended");
        let audit = directory(&database);
        let mut files: Vec<String> = list(&audit).expect("listed").collect();
        files.sort();
        let file_modes: Vec<String> = files.iter().map(|f| mode(&audit.join(f))).collect();
        let audit_mode = mode(&audit);
        let _ = fs::remove_dir_all(dir);

        assert_eq!(database_modes, ["600", "600"]);
        assert_eq!(audit_mode, "700");
        // A lock file and a segment at least: the store's slot, and the journal's.
        assert!(files.iter().any(|f| f.ends_with(".lock")), "{files:?}");
        assert!(files.iter().any(|f| f.ends_with(".log")), "{files:?}");
        assert!(
            file_modes.iter().all(|m| m == "600"),
            "{files:?}: {file_modes:?}"
        );
    }
}
