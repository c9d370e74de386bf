-- Claim-bound admission (issue 10): an account trusts claim issuers (staging's public keys,
-- like CAs); a CA registered with require_claim admits a certificate only with a claim ticket
-- one of them signed; claim_admissions remembers the claim each certificate was admitted
-- under, and when that claim ended (a release notice).
CREATE TABLE claim_issuers (
    account_id TEXT NOT NULL REFERENCES accounts(id),
    name TEXT NOT NULL,
    public_key_pem TEXT NOT NULL,
    created BIGINT NOT NULL,
    PRIMARY KEY (account_id, name)
);
ALTER TABLE ca_certificates ADD COLUMN require_claim BIGINT NOT NULL DEFAULT 0;
CREATE TABLE claim_admissions (
    account_id TEXT NOT NULL,
    certificate_id TEXT NOT NULL,
    claim_id BIGINT NOT NULL,
    admitted_at BIGINT NOT NULL,
    released_at BIGINT,
    PRIMARY KEY (account_id, certificate_id)
);
