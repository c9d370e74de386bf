//! The SM2 key exchange (GB/T 32918.3) against an independent implementation: BouncyCastle's
//! `SM2KeyExchange` (Debian `libbcprov-java`, driven by `tests/java/SmKex.java`), both roles,
//! on sm2p256v1 with fresh keys each run: the same key of several lengths, and each side's
//! confirmation value accepted by the other.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::Path;
use std::process::Command;

use claimlink_gm::sm2::kex::{Ephemeral, Party, Peer, Role, agree};
use claimlink_gm::{DistId, Sm2PrivateKey};

const BCPROV: &str = "/usr/share/java/bcprov.jar";

fn rng() -> rand_core::UnwrapErr<getrandom::SysRng> {
    rand_core::UnwrapErr(getrandom::SysRng)
}

/// Compiles the Java peer into `dir`; `None` (skipped, or a failure under CI) without Java or
/// BouncyCastle.
fn java_peer(dir: &Path) -> Option<()> {
    claimlink_testkit::tool("bouncycastle_kex", "javac", "-version", "default-jdk-headless")?;
    if !Path::new(BCPROV).exists() {
        return claimlink_testkit::missing(
            "bouncycastle_kex",
            "BouncyCastle",
            "apt-get install libbcprov-java",
        );
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/java/SmKex.java");
    claimlink_testkit::run_ok(Command::new("javac").args(["-cp", BCPROV, "-d"]).arg(dir).arg(src));
    Some(())
}

fn java(dir: &Path, args: &[String]) -> Vec<String> {
    let cp = format!("{BCPROV}:{}", dir.display());
    let out = claimlink_testkit::run_ok(Command::new("java").args(["-cp", &cp, "SmKex"]).args(args));
    out.lines().map(str::to_owned).collect()
}

fn scalar(k: &Sm2PrivateKey) -> String {
    hex::encode(*k.to_bytes())
}

#[test]
fn our_sm2_key_exchange_agrees_with_bouncycastle_both_ways() {
    let dir = tempfile_dir();
    if java_peer(&dir).is_none() {
        return;
    }
    let (id_a, id_b) =
        (DistId::new("ALICE123@YAHOO.COM").unwrap(), DistId::new("BILL456@YAHOO.COM").unwrap());
    for klen in [16usize, 48] {
        let (da, db) = (Sm2PrivateKey::generate(&mut rng()), Sm2PrivateKey::generate(&mut rng()));
        // Ephemeral keys as private keys too, so that Java can be given their scalars.
        let (ra_key, rb_key) = (Sm2PrivateKey::generate(&mut rng()), Sm2PrivateKey::generate(&mut rng()));
        let (ra, rb) = (Ephemeral::from_private(&ra_key), Ephemeral::from_private(&rb_key));
        let hexpt = |k: &claimlink_gm::Sm2PublicKey| hex::encode(k.to_sec1_uncompressed());
        let (pa, pb) = (da.public_key(), db.public_key());

        // We initiate, BouncyCastle responds.
        let ours = agree(
            Role::Initiator,
            &Party { key: &da, id: &id_a, ephemeral: &ra },
            &Peer { key: &pb, id: &id_b, ephemeral: rb.public() },
            klen,
        )
        .unwrap();
        let theirs = java(
            &dir,
            &[
                "responder".into(),
                (klen * 8).to_string(),
                scalar(&db),
                scalar(&rb_key),
                id_b.as_str().into(),
                hexpt(&pa),
                hexpt(ra.public()),
                id_a.as_str().into(),
            ],
        );
        assert_eq!(theirs[0], hex::encode(&*ours.key), "the key, {klen} bytes");
        assert_eq!(
            theirs[1],
            hex::encode(ours.confirmation_expected),
            "BouncyCastle's S_B is the one we expect"
        );
        assert_eq!(
            theirs[2],
            hex::encode(ours.confirmation_to_send),
            "our S_A is the one BouncyCastle expects"
        );

        // BouncyCastle initiates (checking the S_B we send), we respond.
        let ours = agree(
            Role::Responder,
            &Party { key: &db, id: &id_b, ephemeral: &rb },
            &Peer { key: &pa, id: &id_a, ephemeral: ra.public() },
            klen,
        )
        .unwrap();
        let theirs = java(
            &dir,
            &[
                "initiator".into(),
                (klen * 8).to_string(),
                scalar(&da),
                scalar(&ra_key),
                id_a.as_str().into(),
                hexpt(&pb),
                hexpt(rb.public()),
                id_b.as_str().into(),
                hex::encode(ours.confirmation_to_send),
            ],
        );
        assert_eq!(theirs[0], hex::encode(&*ours.key));
        assert_eq!(
            theirs[1],
            hex::encode(ours.confirmation_expected),
            "BouncyCastle's S_A is the one we expect"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("claimlink-kex-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
