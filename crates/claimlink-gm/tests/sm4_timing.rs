//! A dudect-style statistical timing test (Reparaz, Balasch, Verbauwhede 2017): SM4 encryption
//! is timed for two classes of inputs - a fixed block and random blocks, interleaved at random -
//! and Welch's t-test compares the two distributions after cropping the slow tail that
//! interrupts and frequency changes add. A leak that depends on the data shows as a large |t|;
//! the harness is first shown to find one in a function that leaks on purpose.
//!
//! This is a test of behaviour, not of speed: it measures no absolute time and passes on a
//! slow or busy machine as long as both classes take the same time.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::hint::black_box;

use cipher::{BlockCipherEncrypt, KeyInit};
use rand_core::Rng;

use claimlink_testkit::dudect::{LEAK, max_t};

const SAMPLES: usize = 20_000;

/// Times `f` on the fixed input (class 0) and on random inputs (class 1), interleaved in a
/// random order; the largest |t| over three crops.
fn fixed_vs_random(f: impl FnMut(&[u8; 16])) -> f64 {
    let mut rng = rand_core::UnwrapErr(getrandom::SysRng);
    let total = 2 * SAMPLES;
    let mut inputs = vec![[0u8; 16]; total];
    let mut classes = vec![0u8; total];
    rng.fill_bytes(&mut classes);
    for (input, class) in inputs.iter_mut().zip(classes.iter_mut()) {
        *class &= 1;
        if *class == 1 {
            rng.fill_bytes(input);
        }
    }
    max_t(&inputs, &classes, f)
}

#[test]
fn the_harness_finds_a_leak_that_is_there() {
    // An early-exit comparison against the fixed block: zeros take the long path.
    let t = fixed_vs_random(|x| {
        for &byte in x {
            if black_box(byte) != 0 {
                return;
            }
            for _ in 0..20 {
                black_box(byte);
            }
        }
    });
    assert!(t > LEAK, "the deliberately leaky function was not detected (|t| = {t:.1})");
}

/// Every kernel (GFNI and AES-NI where the CPU has them, and the portable bit-plane one), encryption and
/// the key schedule, measured one after the other in one test so that switching the kernel
/// cannot overlap a measurement.
#[test]
fn sm4_encryption_and_key_schedule_do_not_depend_on_the_data() {
    use std::sync::atomic::Ordering;
    let mut key = [0u8; 16];
    rand_core::UnwrapErr(getrandom::SysRng).fill_bytes(&mut key);
    for (aesni, portable) in [(false, false), (true, false), (false, true)] {
        claimlink_gm::sm4_ct::FORCE_AESNI.store(aesni, Ordering::Relaxed);
        claimlink_gm::sm4_ct::FORCE_PORTABLE.store(portable, Ordering::Relaxed);
        let kernel = match (aesni, portable) {
            (false, false) => "default (GFNI where present)",
            (true, false) => "AES-NI",
            _ => "portable",
        };
        let cipher = claimlink_gm::sm4_ct::Sm4Ct::new(&key.into());
        let t = fixed_vs_random(|x| {
            let mut block = (*x).into();
            cipher.encrypt_block(&mut block);
            black_box(block);
        });
        assert!(t < LEAK, "{kernel} kernel: SM4 timing depends on the plaintext (|t| = {t:.1})");
        let t = fixed_vs_random(|x| {
            black_box(claimlink_gm::sm4_ct::Sm4Ct::new(&(*x).into()));
        });
        assert!(t < LEAK, "{kernel} kernel: the key schedule's timing depends on the key (|t| = {t:.1})");
    }
    claimlink_gm::sm4_ct::FORCE_PORTABLE.store(false, Ordering::Relaxed);
    claimlink_gm::sm4_ct::FORCE_AESNI.store(false, Ordering::Relaxed);
}
