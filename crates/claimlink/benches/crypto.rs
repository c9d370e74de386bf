//! Crypto throughput, ours beside OpenSSL's in the same run.
//!
//! `cargo bench -p claimlink --bench crypto` prints a Markdown table for BENCHMARKS.md. Each of
//! our figures is the median of 5 one-second samples on one core; the OpenSSL figures come from
//! `openssl speed` (one core, 16 KiB buffers for the bulk algorithms). SM4-GCM is absent from
//! OpenSSL 3.0's `speed`, so its peer is Python `cryptography` (its bundled OpenSSL), if present.
//! The last rows measure the issuance ceiling: one key generation plus one certificate-sized
//! signature per device, on every core.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)] // a bench binary

use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant};

use claimlink_gm::{DistId, Sm2PrivateKey, Sm3, Sm4Key, sm3::Digest};
use claimlink_pki::{KeyAlgorithm, PrivateKey, PublicKey, Signer};

const BUF: usize = 16 * 1024;
const SAMPLE: Duration = Duration::from_millis(1000);

fn rng() -> rand_core::UnwrapErr<getrandom::SysRng> {
    rand_core::UnwrapErr(getrandom::SysRng)
}

/// Operations per second: median of 5 samples of `f` run repeatedly for SAMPLE.
fn rate(mut f: impl FnMut()) -> f64 {
    let mut samples: Vec<f64> = (0..5)
        .map(|_| {
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed() < SAMPLE {
                for _ in 0..16 {
                    f();
                }
                n += 16;
            }
            n as f64 / start.elapsed().as_secs_f64()
        })
        .collect();
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[2]
}

fn mbs(ops: f64) -> f64 {
    ops * BUF as f64 / 1e6
}

fn openssl_speed(args: &[&str]) -> Option<String> {
    speed_of("openssl", args)
}

fn speed_of(exe: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(exe).arg("speed").args(["-seconds", "3"]).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Tongsuo's CLI: `$CLAIMLINK_TONGSUO`, or the one `.ci/tongsuo.sh` builds.
fn tongsuo() -> Option<String> {
    std::env::var("CLAIMLINK_TONGSUO").ok().or_else(|| {
        let home = std::env::var("HOME").ok()?;
        let dir = std::fs::read_dir(format!("{home}/.cache/claimlink")).ok()?;
        dir.filter_map(Result::ok)
            .map(|d| d.path().join("bin/tongsuo"))
            .find(|p| p.exists())
            .map(|p| p.to_string_lossy().into_owned())
    })
}

/// `tongsuo speed -evp ALG -bytes 16384`: MB/s.
fn tongsuo_bulk(alg: &str) -> Option<f64> {
    let text = speed_of(&tongsuo()?, &["-bytes", &BUF.to_string(), "-evp", alg])?;
    let line = text.lines().last()?;
    let k = line.split_whitespace().last()?.trim_end_matches('k').parse::<f64>().ok()?;
    Some(k * 1000.0 / 1e6)
}

/// `openssl speed -evp ALG -bytes 16384`: MB/s.
fn openssl_bulk(alg: &str) -> Option<f64> {
    let text = openssl_speed(&["-bytes", &BUF.to_string(), "-evp", alg])?;
    let line = text.lines().last()?;
    let k = line.split_whitespace().last()?.trim_end_matches('k').parse::<f64>().ok()?;
    Some(k * 1000.0 / 1e6)
}

/// `openssl speed sm2|ecdsap256`: (sign/s, verify/s).
fn openssl_sig(alg: &str) -> Option<(f64, f64)> {
    let text = openssl_speed(&[alg])?;
    let f: Vec<f64> =
        text.lines().last()?.split_whitespace().rev().take(2).filter_map(|v| v.parse().ok()).collect();
    (f.len() == 2).then(|| (f[1], f[0]))
}

fn python_sm4_gcm() -> Option<f64> {
    let script = r#"
import time
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
key, buf, iv = bytes(16), bytes(16384), bytes(12)
best = []
for _ in range(5):
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 1.0:
        e = Cipher(algorithms.SM4(key), modes.GCM(iv)).encryptor()
        e.update(buf); e.finalize(); n += 1
    best.append(n * 16384 / (time.perf_counter() - t0) / 1e6)
print(sorted(best)[2])
"#;
    let root = claimlink_testkit::workspace_root();
    for py in [root.join(".venv/bin/python").to_string_lossy().into_owned(), "python3".into()] {
        if let Ok(out) = Command::new(&py).args(["-c", script]).output()
            && let Ok(v) = String::from_utf8_lossy(&out.stdout).trim().parse()
        {
            return Some(v);
        }
    }
    None
}

fn fmt(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{v:.0}"))
}

fn row(name: &str, unit: &str, ours: f64, peer: Option<f64>, peer_name: &str) {
    let ratio = peer.map_or_else(|| "-".into(), |p| format!("{:.2}", ours / p));
    println!("| {name} | {unit} | {ours:.0} | {} | {peer_name} | {ratio} |", fmt(peer));
}

fn ceiling(alg: KeyAlgorithm, threads: usize) -> f64 {
    let tbs = vec![0x5au8; 480]; // about the size of a birth certificate's TBS
    let ca = PrivateKey::generate(alg, &mut rng()).unwrap();
    let total: f64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (ca, tbs) = (&ca, &tbs);
                s.spawn(move || {
                    let mut r = rng();
                    rate(|| {
                        let k = PrivateKey::generate(alg, &mut r).unwrap();
                        black_box(k.public_key());
                        black_box(ca.sign(tbs).unwrap());
                    })
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    total
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` probes with --list
    }
    let buf = vec![0xa5u8; BUF];
    let key = Sm4Key::new([7; 16]);
    println!("| algorithm | unit | claimlink | peer | peer is | claimlink / peer |");
    println!("|---|---|---:|---:|---|---:|");

    let ours = mbs(rate(|| {
        black_box(Sm3::digest(black_box(&buf)));
    }));
    row("SM3", "MB/s", ours, openssl_bulk("sm3"), "openssl speed -evp sm3");
    let ours = mbs(rate(|| {
        black_box(key.cbc_encrypt(&[1; 16], black_box(&buf)).unwrap());
    }));
    row("SM4-CBC encrypt", "MB/s", ours, openssl_bulk("sm4-cbc"), "openssl speed -evp sm4-cbc");
    let mut work = buf.clone();
    let ours = mbs(rate(|| {
        key.ctr_apply(&[1; 16], black_box(&mut work)).unwrap();
    }));
    row("SM4-CTR", "MB/s", ours, openssl_bulk("sm4-ctr"), "openssl speed -evp sm4-ctr");
    let ours = mbs(rate(|| {
        black_box(key.gcm_seal(&[1; 12], b"", black_box(&buf)).unwrap());
    }));
    row("SM4-GCM seal", "MB/s", ours, python_sm4_gcm(), "Python cryptography (OpenSSL 4)");
    row("SM4-GCM seal", "MB/s", ours, tongsuo_bulk("sm4-gcm"), "tongsuo speed -evp sm4-gcm");
    // The same seal on the `sm4` crate's table S-box (not constant-time), through the same GCM.
    let table =
        <aes_gcm::AesGcm<sm4::Sm4, aes_gcm::aead::consts::U12> as aes_gcm::KeyInit>::new(&[7u8; 16].into());
    let table_rate = mbs(rate(|| {
        black_box(aes_gcm::aead::Aead::encrypt(&table, &[1u8; 12].into(), black_box(&buf[..])).unwrap());
    }));
    row("SM4-GCM seal", "MB/s", ours, Some(table_rate), "the sm4 crate's table S-box, same GCM");
    claimlink_gm::sm4_ct::FORCE_PORTABLE.store(true, std::sync::atomic::Ordering::Relaxed);
    let portable = mbs(rate(|| {
        black_box(key.gcm_seal(&[1; 12], b"", black_box(&buf)).unwrap());
    }));
    claimlink_gm::sm4_ct::FORCE_PORTABLE.store(false, std::sync::atomic::Ordering::Relaxed);
    row(
        "SM4-GCM seal, portable kernel (no AES-NI)",
        "MB/s",
        portable,
        Some(table_rate),
        "the sm4 crate's table S-box",
    );
    let ccm = claimlink_gm::sm4::Sm4Aead::new(claimlink_gm::sm4::AeadMode::Ccm, &key);
    let mut work = buf.clone();
    let ours = mbs(rate(|| {
        black_box(ccm.seal_in_place(&[1; 12], b"", black_box(&mut work)).unwrap());
    }));
    row("SM4-CCM seal", "MB/s", ours, tongsuo_bulk("sm4-ccm"), "tongsuo speed -evp sm4-ccm");
    let cbc = mbs(rate(|| {
        black_box(key.cbc_encrypt(&[1; 16], black_box(&buf)).unwrap());
    }));
    row("SM4-CBC encrypt", "MB/s", cbc, tongsuo_bulk("sm4-cbc"), "tongsuo speed -evp sm4-cbc");
    // The same three on the AES-NI kernel, where the CPU also has GFNI (which the rows above
    // ran on): the chained modes wait on one block's latency, which GFNI halves.
    claimlink_gm::sm4_ct::FORCE_AESNI.store(true, std::sync::atomic::Ordering::Relaxed);
    let aesni = |f: &mut dyn FnMut()| mbs(rate(f));
    let cbc_ni = aesni(&mut || {
        black_box(key.cbc_encrypt(&[1; 16], black_box(&buf)).unwrap());
    });
    let ccm_ni = aesni(&mut || {
        black_box(ccm.seal_in_place(&[1; 12], b"", black_box(&mut work)).unwrap());
    });
    let gcm_ni = aesni(&mut || {
        black_box(key.gcm_seal(&[1; 12], b"", black_box(&buf)).unwrap());
    });
    claimlink_gm::sm4_ct::FORCE_AESNI.store(false, std::sync::atomic::Ordering::Relaxed);
    row("SM4-CBC encrypt", "MB/s", cbc, Some(cbc_ni), "ours on the AES-NI kernel");
    row("SM4-CCM seal", "MB/s", ours, Some(ccm_ni), "ours on the AES-NI kernel");
    let gcm = mbs(rate(|| {
        black_box(key.gcm_seal(&[1; 12], b"", black_box(&buf)).unwrap());
    }));
    row("SM4-GCM seal", "MB/s", gcm, Some(gcm_ni), "ours on the AES-NI kernel");

    let sm2 = Sm2PrivateKey::generate(&mut rng());
    let signer = sm2.signing_key(&DistId::GMT_0009_DEFAULT);
    let verifier = signer.verifying_key();
    let msg = [0x42u8; 32];
    let sig = signer.sign(&msg).unwrap();
    let (peer_sign, peer_verify) = openssl_sig("sm2").unzip();
    let sign_rate = rate(|| drop(black_box(signer.sign(&msg))));
    row("SM2 sign", "ops/s", sign_rate, peer_sign, "openssl speed sm2");
    let tongsuo_sm2 = tongsuo().and_then(|t| {
        let text = speed_of(&t, &["sm2"])?;
        let f: Vec<f64> =
            text.lines().last()?.split_whitespace().rev().take(2).filter_map(|v| v.parse().ok()).collect();
        (f.len() == 2).then(|| (f[1], f[0]))
    });
    row("SM2 sign", "ops/s", sign_rate, tongsuo_sm2.map(|v| v.0), "tongsuo speed sm2");
    row(
        "SM2 verify",
        "ops/s",
        rate(|| drop(black_box(verifier.verify(&msg, &sig)))),
        peer_verify,
        "openssl speed sm2",
    );
    row(
        "SM2 verify",
        "ops/s",
        rate(|| drop(black_box(verifier.verify(&msg, &sig)))),
        tongsuo_sm2.map(|v| v.1),
        "tongsuo speed sm2",
    );
    // The `sm2` crate's own verifier (constant-time ladder, no basepoint table) on the same input.
    let upstream = {
        use sm2::dsa::signature::Verifier;
        let key = sm2::dsa::VerifyingKey::from_sec1_bytes(
            DistId::GMT_0009_DEFAULT.as_str(),
            &sm2.public_key().to_sec1_uncompressed(),
        )
        .unwrap();
        let sig = sm2::dsa::Signature::from_slice(&sig.to_bytes()).unwrap();
        rate(|| drop(black_box(key.verify(&msg, &sig))))
    };
    row(
        "SM2 verify",
        "ops/s",
        rate(|| drop(black_box(verifier.verify(&msg, &sig)))),
        Some(upstream),
        "the sm2 crate's verifier",
    );

    let p256 = PrivateKey::generate(KeyAlgorithm::P256, &mut rng()).unwrap();
    let psig = p256.sign(&msg).unwrap();
    let ppub: PublicKey = p256.public_key();
    let (peer_sign, peer_verify) = openssl_sig("ecdsap256").unzip();
    row(
        "P-256 sign",
        "ops/s",
        rate(|| drop(black_box(p256.sign(&msg)))),
        peer_sign,
        "openssl speed ecdsap256",
    );
    row(
        "P-256 verify",
        "ops/s",
        rate(|| {
            drop(black_box(ppub.verify(
                KeyAlgorithm::P256.signature_algorithm(),
                &DistId::GMT_0009_DEFAULT,
                &msg,
                &psig,
            )))
        }),
        peer_verify,
        "openssl speed ecdsap256",
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for alg in [KeyAlgorithm::Sm2, KeyAlgorithm::P256] {
        let one = ceiling(alg, 1);
        let all = ceiling(alg, cores);
        println!("| {alg} device ceiling (keygen + sign), 1 core | devices/s | {one:.0} | | | |");
        println!("| {alg} device ceiling (keygen + sign), {cores} cores | devices/s | {all:.0} | | | |");
    }
}
