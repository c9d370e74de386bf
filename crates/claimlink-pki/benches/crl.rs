//! CRLs at scale: build (sign) and read a CRL of 100,000 and 1,000,000 revoked entries, SM2 and
//! P-256, with time and peak memory, beside `openssl ca -gencrl` on the same revocations (its
//! `index.txt`, P-256 key), in one run; then the revoked set: how long it takes to build and how
//! fast a lookup is.
//!
//!     cargo bench -p claimlink-pki --bench crl
//!
//! Peak memory is the process's high-water mark (`VmHWM`) above what it held before, reset
//! between rows through `/proc/self/clear_refs`; OpenSSL's is its `ru_maxrss`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: fail loudly

use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use claimlink_pki::crl::{self, Crl, CrlParams, Reason, Revocation, RevokedSerials, Serial};
use claimlink_pki::profile::YEAR;
use claimlink_pki::{Issuer, KeyAlgorithm, PrivateKey, Profile, Signer, Subject, issue, name};
use rand_core::Rng;

fn rng() -> rand_core::UnwrapErr<getrandom::SysRng> {
    rand_core::UnwrapErr(getrandom::SysRng)
}

fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Resets the high-water mark to the current RSS; returns the current RSS.
fn reset_peak() -> u64 {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    status_kib("VmRSS:")
}

fn revocations(n: usize) -> Vec<Revocation> {
    let mut r = rng();
    let at = SystemTime::now() - Duration::from_secs(3600);
    (0..n)
        .map(|_| {
            let mut serial = [0u8; 16];
            r.fill_bytes(&mut serial);
            serial[0] &= 0x7f;
            serial[0] |= 0x01;
            Revocation {
                serial: Serial::from_magnitude(&serial).unwrap(),
                revoked_at: at,
                reason: Some(Reason::KeyCompromise),
            }
        })
        .collect()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    println!(
        "| entries | signer | build + sign | peak memory | CRL size | read (parse, check every entry) | revoked set | lookup |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|");
    let mut peer_rows = Vec::new();
    for n in [100_000usize, 1_000_000] {
        let entries = revocations(n);
        for alg in [KeyAlgorithm::Sm2, KeyAlgorithm::P256] {
            let key = PrivateKey::generate(alg, &mut rng()).unwrap();
            let subject =
                Subject::new(name::parse("CN=Bench CA").unwrap(), key.public_key(), SystemTime::now(), YEAR);
            let ca =
                issue(&Issuer { certificate: None, signer: &key }, &Profile::RootCa, &subject, &mut rng())
                    .unwrap();
            let now = SystemTime::now();
            let params = CrlParams {
                this_update: now,
                next_update: now + Duration::from_secs(86_400),
                number: 1,
                delta_base: None,
            };
            let before = reset_peak();
            let t = Instant::now();
            let der = crl::build(&ca, &key, &params, entries.iter().copied()).unwrap();
            let build = t.elapsed();
            let peak = status_kib("VmHWM:").saturating_sub(before);
            let size = der.len();
            let t = Instant::now();
            let parsed = Crl::from_der(der, crl::DEFAULT_MAX_CRL_LEN).unwrap();
            parsed.verify_signature(&ca).unwrap();
            let read = t.elapsed();
            let t = Instant::now();
            let set = RevokedSerials::from_crl(&parsed).unwrap();
            let index = t.elapsed();
            let probes: Vec<Serial> = entries.iter().step_by(7).take(100_000).map(|r| r.serial).collect();
            let t = Instant::now();
            let hits = probes.iter().filter(|s| set.contains(s)).count();
            let lookup = t.elapsed().as_nanos() as f64 / probes.len() as f64;
            assert_eq!(hits, probes.len());
            println!(
                "| {n} | {alg} | {:.2} s | {} MiB | {:.1} MB | {:.2} s | {:.2} s | {lookup:.0} ns |",
                build.as_secs_f64(),
                peak / 1024,
                size as f64 / 1e6,
                read.as_secs_f64(),
                index.as_secs_f64(),
            );
            if alg == KeyAlgorithm::P256 {
                std::fs::write(
                    dir.path().join("ca.key"),
                    claimlink_pki::pem::private_key_to_pem(&key).unwrap().as_bytes(),
                )
                .unwrap();
                std::fs::write(dir.path().join("ca.pem"), ca.to_pem()).unwrap();
                peer_rows.push((n, openssl_gencrl(dir.path(), &entries)));
            }
        }
    }
    println!();
    println!("| entries | `openssl ca -gencrl` (P-256, same revocations) | peak memory |");
    println!("|---:|---:|---:|");
    for (n, peer) in peer_rows {
        match peer {
            Some((secs, kib)) => println!("| {n} | {secs:.2} s | {} MiB |", kib / 1024),
            None => println!("| {n} | openssl missing | |"),
        }
    }
}

/// `openssl ca -gencrl` over an `index.txt` holding `entries`: (seconds, peak KiB).
fn openssl_gencrl(dir: &std::path::Path, entries: &[Revocation]) -> Option<(f64, u64)> {
    use std::fmt::Write;
    let mut index = String::with_capacity(entries.len() * 80);
    for r in entries {
        let _ = writeln!(
            index,
            "R\t491231000000Z\t260101000000Z,keyCompromise\t{}\tunknown\t/CN=x",
            r.serial.to_hex()
        );
    }
    std::fs::write(dir.join("index.txt"), index).ok()?;
    std::fs::write(dir.join("crlnumber"), "01\n").ok()?;
    std::fs::write(
        dir.join("ca.cnf"),
        "[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\ncrlnumber = crlnumber\ndefault_md = sha256\n\
         default_crl_days = 1\ncertificate = ca.pem\nprivate_key = ca.key\ncrl_extensions = ext\n\
         [ext]\nauthorityKeyIdentifier = keyid\n",
    )
    .ok()?;
    let script = "import resource, subprocess, sys, time\n\
                  t = time.time()\n\
                  subprocess.run(['openssl', 'ca', '-config', 'ca.cnf', '-gencrl', '-out', 'crl.pem'], check=True, capture_output=True)\n\
                  print(time.time() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)";
    let out = Command::new("python3").current_dir(dir).args(["-c", script]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut f = text.split_whitespace();
    Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
}
