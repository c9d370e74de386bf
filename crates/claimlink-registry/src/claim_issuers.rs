//! Claim issuers an account trusts (staging's keys) and the claims its certificates were admitted under.

use crate::db::*;
use crate::*;

impl Tx {
    /// Trusts a claim issuer's public key (SPKI PEM, checked by the caller) under `name`; a
    /// second call with the same name replaces the key.
    pub async fn put_claim_issuer(
        &mut self,
        account_id: &AccountId,
        name: &str,
        public_key_pem: &str,
    ) -> Result<()> {
        if name.is_empty()
            || name.len() > 128
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(RegistryError::invalid("claim issuer name", name, "1 to 128 of A-Z a-z 0-9 - _ ."));
        }
        if public_key_pem.len() > 16 * 1024 {
            return Err(RegistryError::limit("bytes of a claim issuer key's PEM", 16 * 1024));
        }
        self.run(
            "INSERT INTO claim_issuers (account_id, name, public_key_pem, created) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (account_id, name) DO UPDATE SET public_key_pem = $3, created = $4",
            args![account_id, name, public_key_pem, now_ms()],
        )
        .await?;
        Ok(())
    }

    /// The claim issuers an account trusts: (name, public key PEM).
    pub async fn claim_issuers(&mut self, account_id: &AccountId) -> Result<Vec<(String, String)>> {
        self.all(
            "SELECT name, public_key_pem FROM claim_issuers WHERE account_id = $1 ORDER BY name",
            args![account_id],
        )
        .await
    }

    /// The claim a certificate was last admitted under, and when that claim ended.
    pub async fn claim_admission(
        &mut self,
        account_id: &AccountId,
        certificate_id: &CertificateId,
    ) -> Result<Option<(i64, Option<i64>)>> {
        self.optional("SELECT claim_id, released_at FROM claim_admissions WHERE account_id = $1 AND certificate_id = $2", args![account_id, certificate_id]).await
    }

    /// Admits a certificate under claim `claim_id` (a newer claim than any before: the caller
    /// checks), replacing an older admission.
    pub async fn admit_claim(
        &mut self,
        account_id: &AccountId,
        certificate_id: &CertificateId,
        claim_id: i64,
    ) -> Result<()> {
        self.run("INSERT INTO claim_admissions (account_id, certificate_id, claim_id, admitted_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (account_id, certificate_id) DO UPDATE SET claim_id = $3, admitted_at = $4, released_at = NULL \
             WHERE claim_admissions.claim_id < $3", args![account_id, certificate_id, claim_id, now_ms()]).await?;
        Ok(())
    }

    /// Ends claim `claim_id` for a certificate (a release notice): its tickets for that claim,
    /// or any older one, admit it no more. Returns whether anything changed.
    pub async fn release_claim(
        &mut self,
        account_id: &AccountId,
        certificate_id: &CertificateId,
        claim_id: i64,
    ) -> Result<bool> {
        let now = now_ms();
        let rows = self.run("INSERT INTO claim_admissions (account_id, certificate_id, claim_id, admitted_at, released_at) \
             VALUES ($1, $2, $3, $4, $4) \
             ON CONFLICT (account_id, certificate_id) DO UPDATE SET claim_id = $3, released_at = $4 \
             WHERE claim_admissions.claim_id <= $3 AND claim_admissions.released_at IS NULL", args![account_id, certificate_id, claim_id, now]).await?;
        Ok(rows > 0)
    }
}

impl Tx {
    /// Records a CRL applied for one of an account's CAs: a full CRL replaces that issuer's
    /// earlier ones, a delta joins them.
    pub async fn save_ca_crl(
        &mut self,
        account_id: &AccountId,
        issuer_key_id: &str,
        number: i64,
        delta: bool,
        issuer_pem: &str,
        crl_pem: &str,
    ) -> Result<()> {
        if !delta {
            self.run(
                "DELETE FROM ca_crls WHERE account_id = $1 AND issuer_key_id = $2",
                args![account_id, issuer_key_id],
            )
            .await?;
        }
        self.run(
            "INSERT INTO ca_crls (account_id, issuer_key_id, crl_number, is_delta, issuer_pem, crl_pem, applied_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            args![account_id, issuer_key_id, number, i64::from(delta), issuer_pem, crl_pem, now_ms()],
        )
        .await?;
        Ok(())
    }

    /// The CRLs applied for an account, per issuer in CRL-number order: (issuer PEM, CRL PEM).
    pub async fn ca_crls(&mut self, account_id: &AccountId) -> Result<Vec<(String, String)>> {
        self.all(
            "SELECT issuer_pem, crl_pem FROM ca_crls WHERE account_id = $1 ORDER BY issuer_key_id, crl_number",
            args![account_id],
        )
        .await
    }
}
