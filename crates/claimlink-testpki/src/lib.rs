//! Certificate authorities and device certificates for tests, issued by `claimlink-pki` with
//! the profiles production uses: a root, an issuing CA under it, and leaves.

#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: fail loudly

use std::time::{Duration, SystemTime};

use claimlink_pki::profile::YEAR;
use claimlink_pki::{Certificate, Issuer, KeyAlgorithm, PrivateKey, Profile, Signer, Subject, issue, name};

fn rng() -> rand_core::UnwrapErr<getrandom::SysRng> {
    rand_core::UnwrapErr(getrandom::SysRng)
}

/// A CA that can issue: its certificate, key, and the root above it (if any).
pub struct TestCa {
    /// The CA certificate.
    pub certificate: Certificate,
    /// Its key.
    pub key: PrivateKey,
    /// The root that issued it (`None` for a root).
    pub root: Option<Certificate>,
}

/// A leaf with its key.
pub struct TestLeaf {
    /// The certificate.
    pub certificate: Certificate,
    /// Its key.
    pub key: PrivateKey,
}

impl TestLeaf {
    /// The key as PKCS#8 PEM.
    pub fn key_pem(&self) -> String {
        claimlink_pki::pem::private_key_to_pem(&self.key).unwrap().to_string()
    }
}

impl TestCa {
    /// A self-signed root CA with subject `dn`.
    pub fn root(alg: KeyAlgorithm, dn: &str) -> Self {
        let key = PrivateKey::generate(alg, &mut rng()).unwrap();
        let subject = Subject::new(name::parse(dn).unwrap(), key.public_key(), SystemTime::now(), YEAR * 10);
        let certificate =
            issue(&Issuer { certificate: None, signer: &key }, &Profile::RootCa, &subject, &mut rng())
                .unwrap();
        Self { certificate, key, root: None }
    }

    /// An issuing CA under a new root: the usual manufacturer setup.
    pub fn issuing(alg: KeyAlgorithm, dn: &str) -> Self {
        let root = Self::root(alg, &format!("{dn} Root"));
        let key = PrivateKey::generate(alg, &mut rng()).unwrap();
        let subject = Subject::new(name::parse(dn).unwrap(), key.public_key(), SystemTime::now(), YEAR * 5);
        let certificate = issue(
            &Issuer { certificate: Some(&root.certificate), signer: &root.key },
            &Profile::IssuingCa { path_len: Some(0) },
            &subject,
            &mut rng(),
        )
        .unwrap();
        Self { certificate, key, root: Some(root.certificate) }
    }

    /// A leaf of `profile` for subject `dn`, valid from now for `validity`.
    pub fn leaf_with(
        &self,
        profile: &Profile,
        dn: &str,
        not_before: SystemTime,
        validity: Duration,
    ) -> TestLeaf {
        let key = PrivateKey::generate(self.key.algorithm(), &mut rng()).unwrap();
        let subject = Subject::new(name::parse(dn).unwrap(), key.public_key(), not_before, validity);
        let certificate = issue(
            &Issuer { certificate: Some(&self.certificate), signer: &self.key },
            profile,
            &subject,
            &mut rng(),
        )
        .unwrap();
        TestLeaf { certificate, key }
    }

    /// A device (client) certificate for subject `dn`, valid for a year.
    pub fn device(&self, dn: &str) -> TestLeaf {
        self.leaf_with(&Profile::DeviceBirth, dn, SystemTime::now(), YEAR)
    }

    /// A TLS server certificate for `dns` names.
    pub fn server(&self, dns: &[&str]) -> TestLeaf {
        let profile = Profile::TlsServer {
            dns: dns.iter().map(|d| (*d).to_owned()).collect(),
            ips: vec!["127.0.0.1".parse().unwrap()],
        };
        self.leaf_with(&profile, &format!("CN={}", dns.first().unwrap_or(&"server")), SystemTime::now(), YEAR)
    }

    /// The encryption certificate of a dual pair (TLCP's second certificate) for subject `dn`,
    /// its subjectAltName the `dns` names (none for a client's), valid for a year.
    pub fn encryption(&self, dns: &[&str], dn: &str) -> TestLeaf {
        let profile = Profile::Encryption { dns: dns.iter().map(|d| (*d).to_owned()).collect(), ips: vec![] };
        self.leaf_with(&profile, dn, SystemTime::now(), YEAR)
    }

    /// The certificate and the root above it, PEM, leaf first (what a TLS peer sends).
    pub fn chain_pem(&self) -> String {
        let mut pem = self.certificate.to_pem();
        if let Some(r) = &self.root {
            pem.push_str(&r.to_pem());
        }
        pem
    }
}
