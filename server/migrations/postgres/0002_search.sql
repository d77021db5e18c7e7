-- A stable integer key for each resource (`rid`), which search index rows refer to.
ALTER TABLE resources ADD COLUMN rid BIGINT GENERATED ALWAYS AS IDENTITY;
ALTER TABLE resources ADD CONSTRAINT resources_rid_unique UNIQUE (rid);
CREATE INDEX resources_type_rid ON resources (resource_type, rid);
CREATE INDEX resources_type_last_updated ON resources (resource_type, last_updated);

-- Value columns compare byte by byte (COLLATE "C"), as on SQLite, so a prefix search is an
-- index range scan.
-- Search index rows of the current version of each live resource, one table per kind of
-- value (see server/src/search/index.rs). `param` is the search parameter's code; rows are
-- replaced in the transaction that writes the resource. Each table has an index for finding
-- resources by value within a (type, parameter) and one for finding a resource's rows.
CREATE TABLE search_token (
    rid           BIGINT  NOT NULL,
    resource_type TEXT    NOT NULL,
    param         TEXT    NOT NULL,
    system        TEXT    COLLATE "C",
    code          TEXT    COLLATE "C",
    text          TEXT    COLLATE "C" -- normalised display or text, for :text
);
CREATE INDEX search_token_code ON search_token (resource_type, param, code, system);
CREATE INDEX search_token_rid ON search_token (rid, param);

CREATE TABLE search_string (
    rid           BIGINT  NOT NULL,
    resource_type TEXT    NOT NULL,
    param         TEXT    NOT NULL,
    normalized    TEXT    COLLATE "C" NOT NULL, -- lower case, accents removed
    exact         TEXT    COLLATE "C" NOT NULL
);
CREATE INDEX search_string_value ON search_string (resource_type, param, normalized);
CREATE INDEX search_string_rid ON search_string (rid, param);

CREATE TABLE search_date (
    rid           BIGINT  NOT NULL,
    resource_type TEXT    NOT NULL,
    param         TEXT    NOT NULL,
    low           BIGINT  NOT NULL, -- microseconds since the epoch, first instant covered
    high          BIGINT  NOT NULL  -- last instant covered
);
CREATE INDEX search_date_low ON search_date (resource_type, param, low, high);
CREATE INDEX search_date_high ON search_date (resource_type, param, high);
CREATE INDEX search_date_rid ON search_date (rid, param);

CREATE TABLE search_reference (
    rid           BIGINT  NOT NULL,
    resource_type TEXT    NOT NULL,
    param         TEXT    NOT NULL,
    target_type   TEXT,
    target_id     TEXT,
    url           TEXT    COLLATE "C" -- a reference to another server, or one that is not Type/id
);
CREATE INDEX search_reference_target ON search_reference (target_id, target_type, resource_type, param);
CREATE INDEX search_reference_rid ON search_reference (rid, param);

CREATE TABLE search_number (
    rid           BIGINT  NOT NULL,
    resource_type TEXT    NOT NULL,
    param         TEXT    NOT NULL,
    low           DOUBLE PRECISION NOT NULL,
    high          DOUBLE PRECISION NOT NULL
);
CREATE INDEX search_number_value ON search_number (resource_type, param, low);
CREATE INDEX search_number_rid ON search_number (rid, param);

CREATE TABLE search_quantity (
    rid           BIGINT  NOT NULL,
    resource_type TEXT    NOT NULL,
    param         TEXT    NOT NULL,
    low           DOUBLE PRECISION NOT NULL,
    high          DOUBLE PRECISION NOT NULL,
    system        TEXT    COLLATE "C",
    code          TEXT    COLLATE "C"
);
CREATE INDEX search_quantity_value ON search_quantity (resource_type, param, code, low);
CREATE INDEX search_quantity_rid ON search_quantity (rid, param);

CREATE TABLE search_uri (
    rid           BIGINT  NOT NULL,
    resource_type TEXT    NOT NULL,
    param         TEXT    NOT NULL,
    uri           TEXT    COLLATE "C" NOT NULL
);
CREATE INDEX search_uri_value ON search_uri (resource_type, param, uri);
CREATE INDEX search_uri_rid ON search_uri (rid, param);

CREATE TABLE search_position (
    rid           BIGINT  NOT NULL,
    resource_type TEXT    NOT NULL,
    param         TEXT    NOT NULL,
    latitude      DOUBLE PRECISION NOT NULL,
    longitude     DOUBLE PRECISION NOT NULL
);
CREATE INDEX search_position_value ON search_position (resource_type, param, latitude);
CREATE INDEX search_position_rid ON search_position (rid, param);
