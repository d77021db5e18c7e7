-- The current version's request method and body, beside its row. A search then reads each
-- resource it returns once (whether it is live, and its body) rather than its row and then its
-- version, and a read by id reads one row. `resource_versions` still holds every version, the
-- current one included, for history and vread.
ALTER TABLE resources ADD COLUMN method TEXT, ADD COLUMN body BYTEA;
UPDATE resources r SET method = v.method, body = v.body FROM resource_versions v WHERE v.seq = r.seq;
ALTER TABLE resources ALTER COLUMN method SET NOT NULL;
