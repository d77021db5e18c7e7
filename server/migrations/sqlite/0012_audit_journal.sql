-- The audit journal (SQLite only): the records of reads are appended to files beside the
-- database and moved into audit_events in batches. Each journal slot's last segment moved is
-- named here in the transaction that moves it, so that a segment left behind by a crash is
-- never moved twice. PostgreSQL appends every record straight to audit_events and has no
-- journal.
CREATE TABLE audit_journal (
    slot  INTEGER PRIMARY KEY,
    moved INTEGER NOT NULL
);
