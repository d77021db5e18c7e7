-- A stable integer key for each resource (`rid`), which search index rows refer to: rebuild
-- `resources` as a rowid table keyed by it, keeping (resource_type, id) unique.
CREATE TABLE resources_keyed (
    rid           INTEGER PRIMARY KEY,
    resource_type TEXT    NOT NULL,
    id            TEXT    NOT NULL,
    version_id    INTEGER NOT NULL,
    last_updated  INTEGER NOT NULL,
    deleted       BOOLEAN NOT NULL,
    seq           INTEGER NOT NULL REFERENCES resource_versions (seq),
    CONSTRAINT resources_type_id UNIQUE (resource_type, id)
);
INSERT INTO resources_keyed (resource_type, id, version_id, last_updated, deleted, seq)
    SELECT resource_type, id, version_id, last_updated, deleted, seq FROM resources ORDER BY seq;
DROP TABLE resources;
ALTER TABLE resources_keyed RENAME TO resources;
CREATE INDEX resources_type_rid ON resources (resource_type, rid);
CREATE INDEX resources_type_last_updated ON resources (resource_type, last_updated);

-- Search index rows of the current version of each live resource, one table per kind of
-- value (see server/src/search/index.rs). `param` is the search parameter's code; rows are
-- replaced in the transaction that writes the resource. Each table has an index for finding
-- resources by value within a (type, parameter) and one for finding a resource's rows.
CREATE TABLE search_token (
    rid           INTEGER NOT NULL,
    resource_type TEXT    NOT NULL,
    param         TEXT    NOT NULL,
    system        TEXT,
    code          TEXT,
    text          TEXT    -- normalised display or text, for :text
);
CREATE INDEX search_token_code ON search_token (resource_type, param, code, system);
CREATE INDEX search_token_rid ON search_token (rid, param);

CREATE TABLE search_string (
    rid           INTEGER NOT NULL,
    resource_type TEXT    NOT NULL,
    param         TEXT    NOT NULL,
    normalized    TEXT    NOT NULL, -- lower case, accents removed
    exact         TEXT    NOT NULL
);
CREATE INDEX search_string_value ON search_string (resource_type, param, normalized);
CREATE INDEX search_string_rid ON search_string (rid, param);

CREATE TABLE search_date (
    rid           INTEGER NOT NULL,
    resource_type TEXT    NOT NULL,
    param         TEXT    NOT NULL,
    low           INTEGER NOT NULL, -- microseconds since the epoch, first instant covered
    high          INTEGER NOT NULL  -- last instant covered
);
CREATE INDEX search_date_low ON search_date (resource_type, param, low, high);
CREATE INDEX search_date_high ON search_date (resource_type, param, high);
CREATE INDEX search_date_rid ON search_date (rid, param);

CREATE TABLE search_reference (
    rid           INTEGER NOT NULL,
    resource_type TEXT    NOT NULL,
    param         TEXT    NOT NULL,
    target_type   TEXT,
    target_id     TEXT,
    url           TEXT    -- a reference to another server, or one that is not Type/id
);
CREATE INDEX search_reference_target ON search_reference (target_id, target_type, resource_type, param);
CREATE INDEX search_reference_rid ON search_reference (rid, param);

CREATE TABLE search_number (
    rid           INTEGER NOT NULL,
    resource_type TEXT    NOT NULL,
    param         TEXT    NOT NULL,
    low           REAL    NOT NULL,
    high          REAL    NOT NULL
);
CREATE INDEX search_number_value ON search_number (resource_type, param, low);
CREATE INDEX search_number_rid ON search_number (rid, param);

CREATE TABLE search_quantity (
    rid           INTEGER NOT NULL,
    resource_type TEXT    NOT NULL,
    param         TEXT    NOT NULL,
    low           REAL    NOT NULL,
    high          REAL    NOT NULL,
    system        TEXT,
    code          TEXT
);
CREATE INDEX search_quantity_value ON search_quantity (resource_type, param, code, low);
CREATE INDEX search_quantity_rid ON search_quantity (rid, param);

CREATE TABLE search_uri (
    rid           INTEGER NOT NULL,
    resource_type TEXT    NOT NULL,
    param         TEXT    NOT NULL,
    uri           TEXT    NOT NULL
);
CREATE INDEX search_uri_value ON search_uri (resource_type, param, uri);
CREATE INDEX search_uri_rid ON search_uri (rid, param);

CREATE TABLE search_position (
    rid           INTEGER NOT NULL,
    resource_type TEXT    NOT NULL,
    param         TEXT    NOT NULL,
    latitude      REAL    NOT NULL,
    longitude     REAL    NOT NULL
);
CREATE INDEX search_position_value ON search_position (resource_type, param, latitude);
CREATE INDEX search_position_rid ON search_position (rid, param);
