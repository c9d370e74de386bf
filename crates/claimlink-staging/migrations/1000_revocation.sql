-- Revocation at the handshake (issue 13): the CRLs of manufacturer CAs staging has applied, so
-- that a restart keeps refusing what they revoke. Per issuer (the key identifier of its public
-- key), the newest full CRL and the deltas applied on top of it, in CRL-number order.
CREATE TABLE staging_crls (
    issuer_key_id TEXT NOT NULL,
    crl_number BIGINT NOT NULL,
    is_delta BIGINT NOT NULL,
    issuer_pem TEXT NOT NULL,
    crl_pem TEXT NOT NULL,
    applied_at BIGINT NOT NULL,
    PRIMARY KEY (issuer_key_id, crl_number)
);
