-- Revocation at the account endpoint (issue 13): CRLs applied for an account's registered CAs
-- (the registered CA itself or an issuing CA under it), per issuer key identifier the newest
-- full CRL and the deltas on it, re-applied whenever the account's view is read.
CREATE TABLE ca_crls (
    account_id TEXT NOT NULL REFERENCES accounts(id),
    issuer_key_id TEXT NOT NULL,
    crl_number BIGINT NOT NULL,
    is_delta BIGINT NOT NULL,
    issuer_pem TEXT NOT NULL,
    crl_pem TEXT NOT NULL,
    applied_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, issuer_key_id, crl_number)
);
