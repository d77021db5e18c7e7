-- The audit trail: one row per AuditEvent, appended and never changed, each carrying the
-- SHA-256 of the one before it (`prev_hash`) and its own (`hash`, over `prev_hash` and every
-- column of the row), in `chain_pos` order. The AuditEvent resource is made from the columns
-- when it is read. Indexed for searches by date, patient and agent only: every index is paid
-- for by every request. `telemed audit verify` recomputes the chain.
-- Numbered 0010 so that search and storage migrations can take 0006–0009.
CREATE TABLE audit_events (
    chain_pos  BIGINT   PRIMARY KEY, -- its place in the chain, from 1; the AuditEvent's id
    recorded   BIGINT   NOT NULL, -- microseconds since the Unix epoch, UTC
    type_code  TEXT     COLLATE "C" NOT NULL,
    subtype    TEXT     COLLATE "C" NOT NULL,
    action     TEXT     COLLATE "C" NOT NULL,
    outcome    TEXT     COLLATE "C" NOT NULL,
    patient    TEXT     COLLATE "C",
    agent      TEXT     COLLATE "C",
    user_name  TEXT,
    client_id  TEXT     COLLATE "C",
    address    TEXT,
    entity     TEXT     COLLATE "C",
    entities   TEXT,
    query      TEXT,
    purpose    TEXT,
    detail     TEXT,
    prev_hash  BYTEA    NOT NULL,
    hash       BYTEA    NOT NULL
);
CREATE INDEX audit_events_recorded ON audit_events (recorded);
CREATE INDEX audit_events_patient ON audit_events (patient, recorded);
CREATE INDEX audit_events_agent ON audit_events (agent, recorded);

-- The end of the chain, locked by whoever appends.
CREATE TABLE audit_chain (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    last_pos  BIGINT NOT NULL,
    last_hash BYTEA  NOT NULL
);
INSERT INTO audit_chain (id, last_pos, last_hash) VALUES (1, 0, decode(repeat('00', 32), 'hex'));
