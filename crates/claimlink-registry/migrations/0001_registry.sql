-- The registry schema. {ID} is the auto-increment key type of the backend.
CREATE TABLE accounts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    endpoint TEXT NOT NULL UNIQUE,
    region TEXT NOT NULL,
    registration_code TEXT NOT NULL,
    created BIGINT NOT NULL
);

CREATE TABLE api_tokens (
    token_hash TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    name TEXT NOT NULL,
    created BIGINT NOT NULL
);

CREATE TABLE thing_types (
    account_id TEXT NOT NULL REFERENCES accounts(id),
    name TEXT NOT NULL,
    description TEXT,
    searchable_attributes TEXT NOT NULL,
    deprecated BIGINT NOT NULL DEFAULT 0,
    created BIGINT NOT NULL,
    PRIMARY KEY (account_id, name)
);

CREATE TABLE things (
    account_id TEXT NOT NULL REFERENCES accounts(id),
    name TEXT NOT NULL,
    thing_type TEXT,
    attributes TEXT NOT NULL,
    version BIGINT NOT NULL,
    created BIGINT NOT NULL,
    updated BIGINT NOT NULL,
    PRIMARY KEY (account_id, name)
);

CREATE TABLE thing_groups (
    account_id TEXT NOT NULL REFERENCES accounts(id),
    name TEXT NOT NULL,
    parent TEXT,
    attributes TEXT NOT NULL,
    created BIGINT NOT NULL,
    PRIMARY KEY (account_id, name)
);

CREATE TABLE thing_group_members (
    account_id TEXT NOT NULL,
    group_name TEXT NOT NULL,
    thing_name TEXT NOT NULL,
    PRIMARY KEY (account_id, group_name, thing_name)
);
CREATE INDEX thing_group_members_by_thing ON thing_group_members (account_id, thing_name);

CREATE TABLE ca_certificates (
    account_id TEXT NOT NULL REFERENCES accounts(id),
    id TEXT NOT NULL,
    region TEXT NOT NULL,
    pem TEXT NOT NULL,
    mode TEXT NOT NULL,
    status TEXT NOT NULL,
    auto_registration BIGINT NOT NULL,
    template_name TEXT,
    created BIGINT NOT NULL,
    updated BIGINT NOT NULL,
    PRIMARY KEY (account_id, id)
);
-- DEFAULT mode: one account per region may register a given CA.
CREATE UNIQUE INDEX ca_default_once_per_region ON ca_certificates (id, region) WHERE mode = 'DEFAULT';

CREATE TABLE certificates (
    account_id TEXT NOT NULL REFERENCES accounts(id),
    id TEXT NOT NULL,
    pem TEXT NOT NULL,
    status TEXT NOT NULL,
    ca_id TEXT,
    created BIGINT NOT NULL,
    updated BIGINT NOT NULL,
    PRIMARY KEY (account_id, id)
);

CREATE TABLE thing_principals (
    account_id TEXT NOT NULL,
    thing_name TEXT NOT NULL,
    certificate_id TEXT NOT NULL,
    PRIMARY KEY (account_id, thing_name, certificate_id)
);
CREATE INDEX thing_principals_by_certificate ON thing_principals (account_id, certificate_id);

CREATE TABLE policies (
    account_id TEXT NOT NULL REFERENCES accounts(id),
    name TEXT NOT NULL,
    default_version BIGINT NOT NULL,
    created BIGINT NOT NULL,
    updated BIGINT NOT NULL,
    PRIMARY KEY (account_id, name)
);

CREATE TABLE policy_versions (
    account_id TEXT NOT NULL,
    policy_name TEXT NOT NULL,
    version BIGINT NOT NULL,
    document TEXT NOT NULL,
    created BIGINT NOT NULL,
    PRIMARY KEY (account_id, policy_name, version)
);

-- target_type: 'cert' (target = certificate id) or 'thinggroup' (target = group name).
CREATE TABLE policy_attachments (
    account_id TEXT NOT NULL,
    policy_name TEXT NOT NULL,
    target_type TEXT NOT NULL,
    target TEXT NOT NULL,
    PRIMARY KEY (account_id, policy_name, target_type, target)
);
CREATE INDEX policy_attachments_by_target ON policy_attachments (account_id, target_type, target);

CREATE TABLE provisioning_templates (
    account_id TEXT NOT NULL REFERENCES accounts(id),
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    enabled BIGINT NOT NULL,
    description TEXT,
    created BIGINT NOT NULL,
    updated BIGINT NOT NULL,
    PRIMARY KEY (account_id, name)
);

CREATE TABLE provisioning_failures (
    id {ID},
    account_id TEXT NOT NULL,
    certificate_id TEXT NOT NULL,
    ca_id TEXT,
    template_name TEXT,
    reason TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX provisioning_failures_by_certificate ON provisioning_failures (account_id, certificate_id);

CREATE TABLE audit (
    id {ID},
    account_id TEXT,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    result TEXT NOT NULL,
    detail TEXT,
    at BIGINT NOT NULL
);
CREATE INDEX audit_by_account ON audit (account_id, at);
