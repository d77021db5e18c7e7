-- Every version of every resource. A delete is a version with no body.
CREATE TABLE resource_versions (
    seq           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    resource_type TEXT   NOT NULL,
    id            TEXT   NOT NULL,
    version_id    BIGINT NOT NULL,
    last_updated  BIGINT NOT NULL, -- microseconds since the Unix epoch, UTC
    method        TEXT   NOT NULL, -- POST, PUT, PATCH or DELETE: the history entry's request
    body          BYTEA,           -- the resource as JSON; NULL for a delete
    CONSTRAINT resource_versions_version_unique UNIQUE (resource_type, id, version_id)
);

CREATE INDEX resource_versions_type_seq ON resource_versions (resource_type, seq);
CREATE INDEX resource_versions_last_updated ON resource_versions (last_updated);

-- The current version of each resource: what read, search and If-Match look at.
CREATE TABLE resources (
    resource_type TEXT    NOT NULL,
    id            TEXT    NOT NULL,
    version_id    BIGINT  NOT NULL,
    last_updated  BIGINT  NOT NULL,
    deleted       BOOLEAN NOT NULL,
    seq           BIGINT  NOT NULL REFERENCES resource_versions (seq),
    PRIMARY KEY (resource_type, id)
);
