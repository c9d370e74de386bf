//! Dual certificates and the key management centre from the command line: `claimlink ca
//! sign-dual` on an OpenSSL-made SM2 CSR gives a signing and an encryption certificate (OpenSSL
//! reads their key usages) and the encryption key enveloped to the CSR's key, which OpenSSL
//! alone opens (`pkeyutl -decrypt`, then `enc -d -sm4-ecb -nopad`), as does Python `gmssl`; recovery of the archived
//! key is refused with one approval, with two from the same operator and with a forged one,
//! and done with two operators' approvals, each step in the KM's audit log.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use claimlink_testkit::{openssl, run_ok};

const PASS: &str = "correct horse battery staple";

/// Opens an SM2EnvelopedKey with Python alone: asn1crypto reads the GM/T 0009 structure,
/// gmssl SM2-decrypts the SM4 key (C1C3C2) and SM4-ECB-decrypts the scalar, checked against
/// the public key the envelope carries. argv: signing key (hex scalar), envelope path.
const GMSSL_OPEN: &str = r#"
import sys
from asn1crypto import core
from gmssl import sm2, sm4
class Cipher(core.Sequence):
    _fields = [('x', core.Integer), ('y', core.Integer), ('hash', core.OctetString), ('ct', core.OctetString)]
class Envelope(core.Sequence):
    _fields = [('alg', core.Any), ('key', Cipher), ('pub', core.BitString), ('priv', core.BitString)]
env = Envelope.load(open(sys.argv[2], 'rb').read())
c = env['key']
raw = c['x'].native.to_bytes(32, 'big') + c['y'].native.to_bytes(32, 'big') + c['hash'].native + c['ct'].native
sym = sm2.CryptSM2(private_key=sys.argv[1], public_key='', mode=1).decrypt(raw)
assert sym is not None and len(sym) == 16, 'SM2 decryption failed'
d = sm4.CryptSM4(sm4.SM4_DECRYPT, padding_mode=2)
d.set_key(sym, sm4.SM4_DECRYPT)
scalar = d.crypt_ecb(env['priv'].contents[1:])
pub = env['pub'].contents[1:]
s = sm2.CryptSM2(private_key=scalar.hex(), public_key='')
assert s._kg(int(scalar.hex(), 16), s.ecc_table['g']) == pub[-64:].hex(), 'scalar does not match the public key'
print(scalar.hex())
"#;

fn claimlink(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_claimlink"))
        .current_dir(dir)
        .env_remove("CLAIMLINK_CA_PASSPHRASE")
        .args(args)
        .output()
        .unwrap()
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let o = claimlink(dir, args);
    assert!(o.status.success(), "claimlink {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn openssl_in(dir: &Path, args: &[&str]) -> String {
    run_ok(Command::new("openssl").current_dir(dir).args(args))
}

/// OpenSSL opens an SM2EnvelopedKey with `key` (PEM path): the 32-byte private scalar.
fn openssl_open(dir: &Path, envelope: &Path, key: &str) -> Vec<u8> {
    claimlink_testkit::openssl_open_envelope(dir, &std::fs::read(envelope).unwrap(), key)
}

fn public_of(cert: &Path) -> Vec<u8> {
    let c = claimlink_pki::Certificate::from_pem(&std::fs::read(cert).unwrap()).unwrap();
    match c.public_key().unwrap() {
        claimlink_pki::PublicKey::Sm2(k) => k.to_sec1_uncompressed(),
        other => panic!("not SM2: {}", other.kind()),
    }
}

#[test]
fn dual_certificates_with_an_enveloped_key_openssl_opens_and_recovery_by_two_operators() {
    if openssl("ca_dual").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("pass"), format!("{PASS}\n")).unwrap();
    ok(
        d,
        &[
            "ca",
            "init",
            "--algorithm",
            "sm2",
            "--subject",
            "CN=Dual CA,O=claimlink,C=CN",
            "--out",
            "ca",
            "--passphrase-file",
            "pass",
        ],
    );
    openssl_in(d, &["genpkey", "-algorithm", "SM2", "-out", "sign.key"]);
    openssl_in(
        d,
        &[
            "req",
            "-new",
            "-subj",
            "/CN=tlcp.example/O=claimlink",
            "-key",
            "sign.key",
            "-out",
            "sign.csr",
            "-sm3",
            "-sigopt",
            "distid:1234567812345678",
        ],
    );
    let said = ok(
        d,
        &[
            "ca",
            "sign-dual",
            "--ca",
            "ca",
            "--passphrase-file",
            "pass",
            "--csr",
            "sign.csr",
            "--server",
            "--dns",
            "tlcp.example",
            "--out",
            "dual",
        ],
    );
    assert!(said.contains("encryption certificate"), "{said}");

    // OpenSSL reads both: same subject; the signing one signs, the encryption one never does.
    let text = |c: &str| openssl_in(d, &["x509", "-noout", "-text", "-in", c]);
    let (sign, enc) = (text("dual/sign.pem"), text("dual/enc.pem"));
    assert!(sign.contains("Digital Signature") && sign.contains("TLS Web Server Authentication"), "{sign}");
    assert!(enc.contains("Key Encipherment, Data Encipherment, Key Agreement"), "{enc}");
    assert!(!enc.contains("Digital Signature"), "{enc}");
    assert!(enc.contains("DNS:tlcp.example"), "{enc}");
    let subject = |c: &str| openssl_in(d, &["x509", "-noout", "-subject", "-in", c]);
    assert_eq!(subject("dual/sign.pem"), subject("dual/enc.pem"));
    for c in ["dual/sign.pem", "dual/enc.pem"] {
        let v = openssl_in(
            d,
            &[
                "verify",
                "-vfyopt",
                "distid:1234567812345678",
                "-partial_chain",
                "-CAfile",
                "ca/issuing-ca.pem",
                c,
            ],
        );
        assert!(v.contains(": OK"), "{v}");
    }

    // The enveloped key: OpenSSL alone opens it with the CSR's key, and it is the encryption
    // certificate's private key.
    let scalar = openssl_open(d, &d.join("dual/enc-key.env"), "sign.key");
    let key = claimlink_gm::Sm2PrivateKey::from_bytes(&scalar).unwrap();
    assert_eq!(key.public_key().to_sec1_uncompressed(), public_of(&d.join("dual/enc.pem")));
    // Python's gmssl opens it too, the envelope read by asn1crypto (nothing of ours parses it).
    if let Some(python) = claimlink_testkit::python_with("ca_dual", "gmssl") {
        let sign_key =
            claimlink_pki::pem::private_key_from_pem(&std::fs::read(d.join("sign.key")).unwrap(), None)
                .unwrap();
        let claimlink_pki::PrivateKey::Sm2 { key: sign_key, .. } = sign_key else { panic!("not SM2") };
        let o = Command::new(python)
            .args(["-c", GMSSL_OPEN, &hex::encode(*sign_key.to_bytes())])
            .arg(d.join("dual/enc-key.env"))
            .output()
            .unwrap();
        assert!(o.status.success(), "gmssl: {}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), hex::encode(&scalar), "gmssl's scalar");
    }
    // The KM archived it, sealed to its own key; nothing in the archive opens with the
    // subscriber's key.
    let archived: Vec<PathBuf> =
        std::fs::read_dir(d.join("ca/km/archive")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(archived.len(), 1);
    let archived_parts = claimlink_gm::envelope::parts(&std::fs::read(&archived[0]).unwrap()).unwrap();
    std::fs::write(d.join("archived-sym.der"), &archived_parts.sym_encrypted_key).unwrap();
    let o = Command::new("openssl")
        .current_dir(d)
        .args(["pkeyutl", "-decrypt", "-inkey", "sign.key", "-in", "archived-sym.der"])
        .output()
        .unwrap();
    assert!(!o.status.success(), "the subscriber's key opened the KM's archive");

    // Key recovery: two KM operators (P-256 keys of their own).
    for op in ["alice", "bob", "mallory"] {
        openssl_in(
            d,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                &format!("{op}.key"),
            ],
        );
        openssl_in(d, &["pkey", "-in", &format!("{op}.key"), "-pubout", "-out", &format!("{op}.pub")]);
    }
    for op in ["alice", "bob"] {
        ok(
            d,
            &["ca", "km", "add-operator", "--ca", "ca", "--name", op, "--public-key", &format!("{op}.pub")],
        );
    }
    let approve = |op: &str, key: &str, out: &str| {
        ok(
            d,
            &[
                "ca",
                "km",
                "approve",
                "--cert",
                "dual/enc.pem",
                "--to",
                "dual/sign.pem",
                "--operator",
                op,
                "--key",
                key,
                "--out",
                out,
            ],
        );
    };
    approve("alice", "alice.key", "a1.json");
    approve("alice", "alice.key", "a2.json");
    approve("bob", "mallory.key", "forged.json"); // bob's name, mallory's key
    approve("mallory", "mallory.key", "m.json"); // not an operator
    let recover = |approvals: &[&str]| {
        let mut args = vec![
            "ca",
            "km",
            "recover",
            "--ca",
            "ca",
            "--passphrase-file",
            "pass",
            "--cert",
            "dual/enc.pem",
            "--to",
            "dual/sign.pem",
            "--out",
            "recovered.env",
        ];
        for a in approvals {
            args.extend(["--approval", a]);
        }
        claimlink(d, &args)
    };
    for refused in
        [&["a1.json"][..], &["a1.json", "a2.json"], &["a1.json", "forged.json"], &["a1.json", "m.json"]]
    {
        let o = recover(refused);
        assert!(!o.status.success(), "recovery with {refused:?} succeeded");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("2 distinct KM operators"),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(!d.join("recovered.env").exists());
    }
    approve("bob", "bob.key", "b.json");
    let o = recover(&["a1.json", "b.json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let recovered = openssl_open(d, &d.join("recovered.env"), "sign.key");
    assert_eq!(recovered, scalar, "the recovered key is the archived one");
    let log = std::fs::read_to_string(d.join("ca/km/audit.log")).unwrap();
    for needle in
        ["issued-dual", "operator-added\talice", "approval-refused", "recovery-refused", "recovered\t"]
    {
        assert!(log.contains(needle), "{needle} missing from the KM audit log:\n{log}");
    }
    assert!(!log.contains(&hex::encode(&scalar)), "the audit log holds key material");
}
