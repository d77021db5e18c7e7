-- The authorization server's tables. Their migrations are numbered from 1001 so that they never
-- collide with the FHIR server's, which share the `_sqlx_migrations` table. Times are Unix
-- seconds. Secrets (passwords, client secrets, codes, refresh tokens, launch ids) are stored as
-- hashes or digests only.

-- The keys that sign access and id tokens. One is active (retired_at IS NULL); retired keys
-- stay to verify tokens signed before the rotation until those expire.
CREATE TABLE auth_signing_keys (
    kid             TEXT    PRIMARY KEY,
    private_key_pem TEXT    NOT NULL,
    created_at      BIGINT  NOT NULL,
    retired_at      BIGINT
);

-- Registered clients (SMART apps, EHRs, backend services).
CREATE TABLE auth_clients (
    client_id     TEXT    PRIMARY KEY,
    name          TEXT    NOT NULL,
    kind          TEXT    NOT NULL, -- public, confidential-symmetric or confidential-asymmetric
    secret_hash   TEXT,             -- Argon2id, for confidential-symmetric clients
    jwks          TEXT,             -- inline JWKS, for confidential-asymmetric clients
    jwks_url      TEXT,             -- or where to fetch it
    redirect_uris TEXT    NOT NULL, -- JSON array, matched exactly
    scope         TEXT    NOT NULL, -- the most this client may be granted
    launch_url    TEXT,             -- where an EHR launch sends the browser
    origins       TEXT    NOT NULL, -- JSON array of origins allowed by CORS
    created_at    BIGINT  NOT NULL
);

-- People who log in.
CREATE TABLE auth_users (
    username       TEXT    PRIMARY KEY,
    password_hash  TEXT    NOT NULL, -- Argon2id
    fhir_user      TEXT,             -- Practitioner/1, Patient/2, RelatedPerson/3, Person/4
    totp_secret    TEXT,             -- base32; NULL: no second factor
    totp_last_step BIGINT,           -- the last time step used, so a code works once
    upstream_sub   TEXT    UNIQUE,   -- the subject at the upstream OpenID provider
    created_at     BIGINT  NOT NULL
);

-- Authorization requests between /authorize and the redirect back to the app (login, second
-- factor, patient choice, consent).
CREATE TABLE auth_requests (
    digest     TEXT    PRIMARY KEY,
    client_id  TEXT    NOT NULL,
    request    TEXT    NOT NULL, -- JSON: what the app asked for and what has been decided
    expires_at BIGINT  NOT NULL
);

-- Authorization codes: used once, within a minute; kept until they expire, so that a code
-- presented again revokes the grant it became (RFC 6749 §4.1.2).
CREATE TABLE auth_codes (
    digest     TEXT    PRIMARY KEY,
    client_id  TEXT    NOT NULL,
    grant_json TEXT    NOT NULL, -- JSON: redirect_uri, code_challenge and the grant to make
    expires_at BIGINT  NOT NULL,
    used_at    BIGINT,           -- when it was redeemed: a second try revokes what it became
    sid        TEXT              -- the grant it became
);

-- A grant: what one authorization (or one client_credentials request) allowed. Access tokens
-- carry its id (`sid`), so revoking the grant revokes every token issued under it.
CREATE TABLE auth_grants (
    sid        TEXT    PRIMARY KEY,
    client_id  TEXT    NOT NULL,
    username   TEXT,
    scope      TEXT    NOT NULL,
    context    TEXT    NOT NULL, -- JSON: patient, encounter, fhirContext, fhirUser, banner, style
    created_at BIGINT  NOT NULL,
    revoked_at BIGINT
);

-- Refresh tokens, rotated on use: using one a second time revokes its grant.
CREATE TABLE auth_refresh_tokens (
    digest     TEXT    PRIMARY KEY,
    sid        TEXT    NOT NULL REFERENCES auth_grants (sid),
    scope      TEXT    NOT NULL,
    expires_at BIGINT  NOT NULL,
    used_at    BIGINT
);
CREATE INDEX auth_refresh_tokens_sid ON auth_refresh_tokens (sid);

-- Access tokens revoked before they expire (by jti), and revoked grants (by sid): what the
-- resource server refuses although the signature is good.
CREATE TABLE auth_revocations (
    token_id   TEXT    PRIMARY KEY, -- a jti or a sid
    expires_at BIGINT  NOT NULL
);

-- The jti of every client assertion until it expires, so none is accepted twice.
CREATE TABLE auth_assertion_jtis (
    client_id  TEXT    NOT NULL,
    jti        TEXT    NOT NULL,
    expires_at BIGINT  NOT NULL,
    PRIMARY KEY (client_id, jti)
);

-- EHR launch contexts, named by an opaque `launch` value.
CREATE TABLE auth_launches (
    digest     TEXT    PRIMARY KEY,
    context    TEXT    NOT NULL, -- JSON: patient, encounter, fhirContext, banner, style
    created_by TEXT    NOT NULL,
    expires_at BIGINT  NOT NULL
);
