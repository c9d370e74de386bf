-- Staging: the OEMs that may claim (each with one claim-thing certificate and the endpoints it
-- registered), the devices staging has been told about (manifest) or has seen, every claim
-- attempt, the staging administrators' tokens, and the registration portal's end users.
CREATE TABLE staging_oems (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    claim_certificate_id TEXT UNIQUE,
    claim_certificate_pem TEXT,
    created BIGINT NOT NULL
);
CREATE TABLE staging_oem_endpoints (
    oem_id TEXT NOT NULL REFERENCES staging_oems (id),
    endpoint TEXT NOT NULL,
    PRIMARY KEY (oem_id, endpoint)
);
CREATE TABLE staging_devices (
    thing_name TEXT PRIMARY KEY,
    certificate_id TEXT,
    claim_code_verifier TEXT,
    first_seen BIGINT,
    last_seen BIGINT,
    owner_oem TEXT REFERENCES staging_oems (id),
    endpoint TEXT,
    claim_id BIGINT,
    delivered_at BIGINT,
    failed_codes BIGINT NOT NULL DEFAULT 0,
    locked_until BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX staging_devices_by_owner ON staging_devices (owner_oem, thing_name);
CREATE TABLE staging_claims (
    id {ID},
    oem_id TEXT NOT NULL,
    thing_name TEXT NOT NULL,
    endpoint TEXT,
    via TEXT NOT NULL,
    result TEXT NOT NULL,
    reason TEXT NOT NULL,
    at BIGINT NOT NULL,
    delivered_at BIGINT,
    released_at BIGINT
);
CREATE INDEX staging_claims_by_thing ON staging_claims (thing_name, id);
CREATE INDEX staging_claims_by_oem ON staging_claims (oem_id, id);
CREATE TABLE staging_admin_tokens (
    token_hash TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created BIGINT NOT NULL
);
CREATE TABLE portal_users (
    id {ID},
    oem_id TEXT NOT NULL,
    email TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created BIGINT NOT NULL,
    UNIQUE (oem_id, email)
);
CREATE TABLE portal_sessions (
    token_hash TEXT PRIMARY KEY,
    user_id BIGINT NOT NULL,
    expires BIGINT NOT NULL
);
CREATE TABLE portal_devices (
    user_id BIGINT NOT NULL,
    thing_name TEXT NOT NULL,
    added BIGINT NOT NULL,
    PRIMARY KEY (user_id, thing_name)
);
CREATE INDEX portal_devices_by_thing ON portal_devices (thing_name);
