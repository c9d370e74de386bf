-- The CA system service (`claimlink ca serve`, issue 13): its administrators and their roles,
-- certificate applications and their review, the certificates issued through it, revocation
-- requests, the review policy, and the audit log as a hash chain.
CREATE TABLE ca_admins (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_by TEXT NOT NULL,
    created BIGINT NOT NULL,
    disabled BIGINT NOT NULL
);

CREATE TABLE ca_applications (
    id TEXT PRIMARY KEY,
    profile TEXT NOT NULL,
    subject TEXT NOT NULL,
    csr_pem TEXT NOT NULL,
    names TEXT NOT NULL,
    days BIGINT NOT NULL,
    renewal_of TEXT,
    token_hash TEXT NOT NULL,
    status TEXT NOT NULL,
    reviewer TEXT,
    reason TEXT,
    serial TEXT,
    certificate_pem TEXT,
    enc_certificate_pem TEXT,
    enc_key_envelope TEXT,
    created BIGINT NOT NULL,
    decided BIGINT
);
CREATE INDEX ca_applications_by_status ON ca_applications (status, created);

CREATE TABLE ca_issued (
    serial TEXT PRIMARY KEY,
    application_id TEXT NOT NULL,
    profile TEXT NOT NULL,
    subject TEXT NOT NULL,
    not_after BIGINT NOT NULL,
    certificate_pem TEXT NOT NULL
);

CREATE TABLE ca_revocation_requests (
    id TEXT PRIMARY KEY,
    serial TEXT NOT NULL,
    reason TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    status TEXT NOT NULL,
    reviewer TEXT,
    created BIGINT NOT NULL,
    decided BIGINT
);
CREATE INDEX ca_revocation_requests_by_status ON ca_revocation_requests (status, created);

CREATE TABLE ca_review_policy (
    id BIGINT PRIMARY KEY,
    document TEXT NOT NULL,
    updated_by TEXT NOT NULL,
    updated BIGINT NOT NULL
);

-- seq is given by the writer (the previous row's plus one), so two writers racing for the
-- same place collide on the key and one of them fails instead of forking the chain.
CREATE TABLE ca_audit (
    seq BIGINT PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    role TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    result TEXT NOT NULL,
    detail TEXT NOT NULL,
    scope TEXT NOT NULL,
    prev TEXT NOT NULL,
    hash TEXT NOT NULL
);
