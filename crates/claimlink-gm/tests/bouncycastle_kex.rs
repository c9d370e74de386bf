//! The SM2 key exchange (GB/T 32918.3) against an independent implementation: BouncyCastle's
//! `SM2KeyExchange` (Debian `libbcprov-java`, driven by `tests/java/SmKex.java`), both roles,
//! on sm2p256v1 with fresh keys each run: the same key of several lengths, and each side's
//! confirmation value accepted by the other.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::Path;
use std::process::Command;

use claimlink_gm::sm2::kex::{Agreed, Ephemeral, Party, Peer, Role, agree};
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

/// One side: its long-term key and ID, and an ephemeral key made from a private key so that
/// Java can be given its scalar.
struct User {
    d: Sm2PrivateKey,
    r_key: Sm2PrivateKey,
    r: Ephemeral,
    id: DistId,
}

fn user(id: &str) -> User {
    let r_key = Sm2PrivateKey::generate(&mut rng());
    User {
        d: Sm2PrivateKey::generate(&mut rng()),
        r: Ephemeral::from_private(&r_key),
        r_key,
        id: DistId::new(id).unwrap(),
    }
}

/// Our side of the exchange, as `me` against `peer`.
fn ours(role: Role, me: &User, peer: &User, klen: usize) -> Agreed {
    let peer_key = peer.d.public_key();
    agree(
        role,
        &Party { key: &me.d, id: &me.id, ephemeral: &me.r },
        &Peer { key: &peer_key, id: &peer.id, ephemeral: peer.r.public() },
        klen,
    )
    .unwrap()
}

/// BouncyCastle's side, as `me` against `peer` (an initiator checks the responder's `tag`).
fn theirs(dir: &Path, role: &str, me: &User, peer: &User, klen: usize, tag: Option<[u8; 32]>) -> Vec<String> {
    let point = |k: &claimlink_gm::Sm2PublicKey| hex::encode(k.to_sec1_uncompressed());
    let mut args = vec![
        role.to_owned(),
        (klen * 8).to_string(),
        hex::encode(*me.d.to_bytes()),
        hex::encode(*me.r_key.to_bytes()),
        me.id.as_str().into(),
        point(&peer.d.public_key()),
        point(peer.r.public()),
        peer.id.as_str().into(),
    ];
    args.extend(tag.map(hex::encode));
    java(dir, &args)
}

#[test]
fn our_sm2_key_exchange_agrees_with_bouncycastle_both_ways() {
    let dir = tempfile_dir();
    if java_peer(&dir).is_none() {
        return;
    }
    for klen in [16usize, 48] {
        let (a, b) = (user("ALICE123@YAHOO.COM"), user("BILL456@YAHOO.COM"));

        // We initiate, BouncyCastle responds.
        let us = ours(Role::Initiator, &a, &b, klen);
        let them = theirs(&dir, "responder", &b, &a, klen, None);
        assert_eq!(them[0], hex::encode(&*us.key), "the key, {klen} bytes");
        assert_eq!(them[1], hex::encode(us.confirmation_expected), "BouncyCastle's S_B is the one we expect");
        assert_eq!(them[2], hex::encode(us.confirmation_to_send), "our S_A is the one BouncyCastle expects");

        // BouncyCastle initiates (checking the S_B we send), we respond.
        let us = ours(Role::Responder, &b, &a, klen);
        let them = theirs(&dir, "initiator", &a, &b, klen, Some(us.confirmation_to_send));
        assert_eq!(them[0], hex::encode(&*us.key));
        assert_eq!(them[1], hex::encode(us.confirmation_expected), "BouncyCastle's S_A is the one we expect");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("claimlink-kex-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
