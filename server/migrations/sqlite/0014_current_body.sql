-- The current version's request method and body, beside its row. A search then reads each
-- resource it returns once (whether it is live, and its body) rather than its row and then its
-- version, and a read by id reads one row. `resource_versions` still holds every version, the
-- current one included, for history and vread. (SQLite cannot add a NOT NULL column without a
-- default; every write sets `method`.)
ALTER TABLE resources ADD COLUMN method TEXT;
ALTER TABLE resources ADD COLUMN body BLOB;
UPDATE resources SET
    method = (SELECT v.method FROM resource_versions v WHERE v.seq = resources.seq),
    body = (SELECT v.body FROM resource_versions v WHERE v.seq = resources.seq);
