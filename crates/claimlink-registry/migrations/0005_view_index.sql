-- The account endpoint keeps in memory the certificates registered without a CA (they are
-- admitted by their id at the handshake). Reading them, and noticing whether they changed,
-- must not read every device certificate with its PEM.
CREATE INDEX certificates_without_ca ON certificates (account_id, id, updated) WHERE ca_id IS NULL AND status <> 'REVOKED';
