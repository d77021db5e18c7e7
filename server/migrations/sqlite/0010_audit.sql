-- The audit trail: one row per AuditEvent, appended and never changed, each carrying the
-- SHA-256 of the one before it (`prev_hash`) and its own (`hash`, over `prev_hash` and every
-- column of the row), in `chain_pos` order. The AuditEvent resource is made from the columns
-- when it is read. Indexed for searches by date, patient and agent only: every index is paid
-- for by every request. `telemed audit verify` recomputes the chain.
-- Numbered 0010 so that search and storage migrations can take 0006–0009.
CREATE TABLE audit_events (
    chain_pos  INTEGER PRIMARY KEY, -- its place in the chain, from 1; the AuditEvent's id
    recorded   INTEGER NOT NULL, -- microseconds since the Unix epoch, UTC
    type_code  TEXT    NOT NULL, -- rest, or the DICOM code of an authentication event
    subtype    TEXT    NOT NULL, -- read, search-type, create, …, login, token, revoke, …
    action     TEXT    NOT NULL, -- C, R, U, D or E
    outcome    TEXT    NOT NULL, -- 0 (success), 4, 8 or 12
    patient    TEXT,             -- the Patient (id) the event concerns, if one
    agent      TEXT,             -- who: a fhirUser reference, a username, or client/{id}
    user_name  TEXT,             -- the username, for an authentication event
    client_id  TEXT,
    address    TEXT,             -- where the request came from
    entity     TEXT,             -- the resource the request named (Type/id), if one
    entities   TEXT,             -- the versions it read or wrote, space-separated
    query      TEXT,             -- a search's query string
    purpose    TEXT,             -- the reason given to break the glass
    detail     TEXT,             -- why an authentication event failed
    prev_hash  BLOB    NOT NULL,
    hash       BLOB    NOT NULL
);
CREATE INDEX audit_events_recorded ON audit_events (recorded);
CREATE INDEX audit_events_patient ON audit_events (patient, recorded);
CREATE INDEX audit_events_agent ON audit_events (agent, recorded);

-- The end of the chain, locked by whoever appends.
CREATE TABLE audit_chain (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    last_pos  INTEGER NOT NULL,
    last_hash BLOB    NOT NULL
);
INSERT INTO audit_chain (id, last_pos, last_hash) VALUES (1, 0, zeroblob(32));
