//! SM4 rounds with the x86 AES instruction: the only `unsafe` of the project.
//!
//! The SM4 S-box and AES's share their core, inversion in GF(2^8), in two representations of
//! the field. With a field isomorphism folded into affine maps on both sides,
//! `S_SM4(x) = POST(AESENCLAST(PRE(x), 0))`: `PRE` and `POST` are affine maps on bytes, done
//! with `PSHUFB` on the two nibbles (a register permutation, not a memory lookup), and the
//! `ShiftRows` of `AESENCLAST` is undone by permuting its input first. The constants were
//! derived (and checked for all 256 inputs) offline; the tests check the whole cipher against
//! the portable constant-time kernel and the standard's vectors. Four blocks go through each
//! round in registers; no instruction's timing depends on the key or the data.
//!
//! Where the CPU has GFNI (and AVX-512VL for its rotations), the same construction takes two
//! instructions: `GF2P8AFFINEQB` applies `PRE` as an 8x8 bit matrix, and `GF2P8AFFINEINVQB`
//! inverts in AES's field and applies `POST` after AES's affine map in one (the matrices are
//! those maps composed, derived offline from the tables below and checked for all 256 inputs by
//! a test). That shortens a round's critical path by more than half, which is what the chained
//! modes (CBC encryption, CCM's CBC-MAC) wait on.
//!
//! Used only where the CPU has AES-NI and SSSE3 ([`available`]); elsewhere the bit-plane kernel
//! of `sm4_ct` runs.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// The affine map before AESENCLAST (isomorphism into AES's field after SM4's input affine map,
/// and AES's constant cancelled), by low and high nibble; the constant is in the low table.
#[cfg(target_arch = "x86_64")]
const PRE_LO: [u8; 16] =
    [0x3e, 0xb2, 0x0e, 0x82, 0xbb, 0x37, 0x8b, 0x07, 0xa1, 0x2d, 0x91, 0x1d, 0x24, 0xa8, 0x14, 0x98];
#[cfg(target_arch = "x86_64")]
const PRE_HI: [u8; 16] =
    [0x00, 0xdc, 0x2e, 0xf2, 0xc5, 0x19, 0xeb, 0x37, 0x08, 0xd4, 0x26, 0xfa, 0xcd, 0x11, 0xe3, 0x3f];
/// The affine map after it (AES's affine map undone, back to SM4's field, SM4's output map).
#[cfg(target_arch = "x86_64")]
const POST_LO: [u8; 16] =
    [0x6c, 0xd4, 0xa6, 0x1e, 0x52, 0xea, 0x98, 0x20, 0x0b, 0xb3, 0xc1, 0x79, 0x35, 0x8d, 0xff, 0x47];
#[cfg(target_arch = "x86_64")]
const POST_HI: [u8; 16] =
    [0x00, 0xe0, 0x50, 0xb0, 0x9d, 0x7d, 0xcd, 0x2d, 0xc0, 0x20, 0x90, 0x70, 0x5d, 0xbd, 0x0d, 0xed];
/// InvShiftRows as a byte permutation: AESENCLAST's ShiftRows then puts every byte back.
#[cfg(target_arch = "x86_64")]
const INV_SHIFT_ROWS: [u8; 16] = [0, 13, 10, 7, 4, 1, 14, 11, 8, 5, 2, 15, 12, 9, 6, 3];

/// `PRE` as a GFNI matrix (row of output bit i in byte 7 - i) and its constant.
#[cfg(target_arch = "x86_64")]
const GFNI_PRE: (i64, i32) = (0x4c28_7db9_1a22_505d, 0x3e);
/// AES's affine map then `POST`, as a GFNI matrix applied after inversion, and its constant.
#[cfg(target_arch = "x86_64")]
const GFNI_POST: (i64, i32) = (0xf3ab_34a9_74a6_b589_u64 as i64, 0xd3);

/// Whether this CPU runs the GFNI kernel (checked once); tests can turn it off.
pub(crate) fn gfni_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            is_x86_feature_detected!("gfni")
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512vl")
        }) && !FORCE_AESNI.load(std::sync::atomic::Ordering::Relaxed)
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Tests (and benchmarks) of the AES-NI kernel on a machine with GFNI set this.
#[doc(hidden)]
pub static FORCE_AESNI: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this CPU runs the AES-NI kernel (checked once).
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE.get_or_init(|| is_x86_feature_detected!("aes") && is_x86_feature_detected!("ssse3"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// 32 rounds over four blocks (big-endian words), round keys forward or reversed; the output
/// words are in SM4's final order. Callers check [`available`] first.
pub(crate) fn rounds4(rk: &[u32; 32], blocks: &mut [[u32; 4]; 4], reverse: bool) {
    #[cfg(target_arch = "x86_64")]
    {
        if gfni_available() {
            // SAFETY: the CPU supports `gfni`, `avx512f` and `avx512vl` (checked at run time by
            // gfni_available), the only requirement `rounds4_gfni`'s target_feature adds; it
            // reads and writes only through the references it is given.
            unsafe { rounds4_gfni(rk, blocks, reverse) };
            return;
        }
        assert!(available(), "the AES-NI kernel needs AES-NI and SSSE3");
        // SAFETY: the CPU supports the `aes` and `ssse3` target features (checked just above at
        // run time), which is the only requirement `rounds4_ni`'s target_feature adds; it reads
        // and writes only through the references it is given.
        unsafe { rounds4_ni(rk, blocks, reverse) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (rk, blocks, reverse);
        unreachable!("available() is false off x86_64")
    }
}

#[cfg(target_arch = "x86_64")]
macro_rules! rotl {
    ($v:expr, $n:literal) => {
        _mm_or_si128(_mm_slli_epi32::<$n>($v), _mm_srli_epi32::<{ 32 - $n }>($v))
    };
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "aes,ssse3,sse2")]
fn table(t: &[u8; 16]) -> __m128i {
    // SAFETY: an unaligned 16-byte load from a 16-byte array.
    unsafe { _mm_loadu_si128(t.as_ptr().cast()) }
}

/// The SM4 S-box on the 16 bytes of `x`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "aes,ssse3,sse2")]
fn sbox(x: __m128i, pre: [__m128i; 2], post: [__m128i; 2], isr: __m128i) -> __m128i {
    let nibble = _mm_set1_epi8(0x0f);
    let affine = |v: __m128i, t: [__m128i; 2]| {
        let lo = _mm_and_si128(v, nibble);
        let hi = _mm_and_si128(_mm_srli_epi16::<4>(v), nibble);
        _mm_xor_si128(_mm_shuffle_epi8(t[0], lo), _mm_shuffle_epi8(t[1], hi))
    };
    let y = _mm_shuffle_epi8(affine(x, pre), isr);
    affine(_mm_aesenclast_si128(y, _mm_setzero_si128()), post)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "aes,ssse3,sse2")]
fn rounds4_ni(rk: &[u32; 32], blocks: &mut [[u32; 4]; 4], reverse: bool) {
    let pre = [table(&PRE_LO), table(&PRE_HI)];
    let post = [table(&POST_LO), table(&POST_HI)];
    let isr = table(&INV_SHIFT_ROWS);
    // x[i] holds word i of the four blocks, one per 32-bit lane.
    let word = |i: usize| {
        _mm_set_epi32(blocks[3][i] as i32, blocks[2][i] as i32, blocks[1][i] as i32, blocks[0][i] as i32)
    };
    let mut x = [word(0), word(1), word(2), word(3)];
    for r in 0..32 {
        let k = if reverse { rk[31 - r] } else { rk[r] };
        let t = _mm_xor_si128(_mm_xor_si128(x[1], x[2]), _mm_xor_si128(x[3], _mm_set1_epi32(k as i32)));
        let s = sbox(t, pre, post, isr);
        let l = _mm_xor_si128(
            _mm_xor_si128(s, rotl!(s, 2)),
            _mm_xor_si128(_mm_xor_si128(rotl!(s, 10), rotl!(s, 18)), rotl!(s, 24)),
        );
        x = [x[1], x[2], x[3], _mm_xor_si128(x[0], l)];
    }
    let mut lanes = [[0u32; 4]; 4];
    for (i, v) in x.iter().enumerate() {
        // SAFETY: an unaligned 16-byte store into a [u32; 4].
        unsafe { _mm_storeu_si128(lanes[i].as_mut_ptr().cast(), *v) };
    }
    for (b, block) in blocks.iter_mut().enumerate() {
        *block = [lanes[3][b], lanes[2][b], lanes[1][b], lanes[0][b]];
    }
}

/// The SM4 S-box on the 16 bytes of `x`, with GFNI.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "gfni,avx512f,avx512vl,sse2")]
fn sbox_gfni(x: __m128i) -> __m128i {
    let pre = _mm_set1_epi64x(GFNI_PRE.0);
    let post = _mm_set1_epi64x(GFNI_POST.0);
    let y = _mm_gf2p8affine_epi64_epi8::<{ GFNI_PRE.1 }>(x, pre);
    _mm_gf2p8affineinv_epi64_epi8::<{ GFNI_POST.1 }>(y, post)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "gfni,avx512f,avx512vl,sse2")]
fn rounds4_gfni(rk: &[u32; 32], blocks: &mut [[u32; 4]; 4], reverse: bool) {
    let word = |i: usize| {
        _mm_set_epi32(blocks[3][i] as i32, blocks[2][i] as i32, blocks[1][i] as i32, blocks[0][i] as i32)
    };
    let mut x = [word(0), word(1), word(2), word(3)];
    for r in 0..32 {
        let k = if reverse { rk[31 - r] } else { rk[r] };
        let t = _mm_xor_si128(_mm_xor_si128(x[1], x[2]), _mm_xor_si128(x[3], _mm_set1_epi32(k as i32)));
        let s = sbox_gfni(t);
        // L(s) = s ^ (s <<< 2) ^ (s <<< 10) ^ (s <<< 18) ^ (s <<< 24), as a three-way XOR tree.
        let a = _mm_ternarylogic_epi32::<0x96>(s, _mm_rol_epi32::<2>(s), _mm_rol_epi32::<10>(s));
        let b = _mm_ternarylogic_epi32::<0x96>(_mm_rol_epi32::<18>(s), _mm_rol_epi32::<24>(s), x[0]);
        x = [x[1], x[2], x[3], _mm_xor_si128(a, b)];
    }
    let mut lanes = [[0u32; 4]; 4];
    for (i, v) in x.iter().enumerate() {
        // SAFETY: an unaligned 16-byte store into a [u32; 4].
        unsafe { _mm_storeu_si128(lanes[i].as_mut_ptr().cast(), *v) };
    }
    for (b, block) in blocks.iter_mut().enumerate() {
        *block = [lanes[3][b], lanes[2][b], lanes[1][b], lanes[0][b]];
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    #[test]
    fn the_gfni_sbox_is_sm4s_for_every_byte() {
        if !super::gfni_available() {
            eprintln!("SKIPPED the_gfni_sbox_is_sm4s_for_every_byte: no GFNI on this CPU");
            return;
        }
        let mut bytes = [0u8; 256];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = i as u8;
        }
        for chunk in bytes.chunks_exact_mut(16) {
            // SAFETY: GFNI, AVX-512F and AVX-512VL are present (checked above); unaligned
            // 16-byte load and store on a 16-byte slice.
            unsafe {
                use std::arch::x86_64::*;
                let v = _mm_loadu_si128(chunk.as_ptr().cast());
                let s = super::sbox_gfni(v);
                _mm_storeu_si128(chunk.as_mut_ptr().cast(), s);
            }
        }
        // The portable kernel's S-box (checked against the standard's table there).
        let mut want = [0u8; 256];
        for (i, b) in want.iter_mut().enumerate() {
            *b = i as u8;
        }
        for chunk in want.chunks_exact_mut(64) {
            let chunk: &mut [u8; 64] = chunk.try_into().unwrap_or_else(|_| unreachable!("64 bytes"));
            crate::sm4_ct::sbox64(chunk, 64);
        }
        assert_eq!(bytes, want);
    }
}
