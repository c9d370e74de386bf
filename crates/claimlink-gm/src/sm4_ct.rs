//! SM4 without secret-dependent memory accesses or branches: the S-box is computed, not looked
//! up, on bit planes of up to 64 bytes at once (16 blocks' four S-box inputs per round).
//!
//! The SM4 S-box is an affine map around inversion in GF(2^8) modulo
//! x^8+x^7+x^6+x^5+x^4+x^2+1: `S(x) = A * inv(A * x + 0xD3) + 0xD3`, where row `i` of `A` is
//! `0xD3` rotated right by `i` (checked against the standard's table for all 256 inputs in the
//! tests). Here each of the 8 bits of 64 bytes is one `u64` plane, multiplication in GF(2^8) is
//! 64 ANDs and a reduction of XORs on planes, and inversion is `x^254` by a fixed addition chain.
//! Every operation runs the same way whatever the key and the data; the number of blocks
//! processed together is the only thing that varies, and it is public.
//!
//! The block cipher implements the `cipher` traits with 16 blocks in parallel, so the generic
//! GCM, CCM, CTR and CBC (decryption) of RustCrypto run 16 blocks per S-box pass.

use cipher::{
    AlgorithmName, Block, BlockCipherDecBackend, BlockCipherDecClosure, BlockCipherDecrypt,
    BlockCipherEncBackend, BlockCipherEncClosure, BlockCipherEncrypt, BlockSizeUser, InOut, InOutBuf, Key,
    KeyInit, KeySizeUser, ParBlocks, ParBlocksSizeUser,
    consts::{U16, U16 as Par16},
};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Blocks per S-box pass.
pub const PARALLEL_BLOCKS: usize = 16;

const FK: [u32; 4] = [0xa3b1_bac6, 0x56aa_3350, 0x677d_9197, 0xb270_22dc];

/// CK_i bytes are (4i + j) * 7 mod 256 (GB/T 32907 7.3).
const CK: [u32; 32] = {
    let mut ck = [0u32; 32];
    let mut i = 0;
    while i < 32 {
        let mut w = 0u32;
        let mut j = 0;
        while j < 4 {
            w = (w << 8) | (((4 * i + j) * 7) % 256) as u32;
            j += 1;
        }
        ck[i] = w;
        i += 1;
    }
    ck
};

type Planes = [u64; 8];

/// Bit `k` of byte `j` of `bytes` becomes bit `j` of plane `k`, for the first `groups` groups
/// of 8 bytes (the rest of the planes stay zero; how many are used is public).
fn to_planes(bytes: &[u8; 64], groups: usize) -> Planes {
    let mut p = [0u64; 8];
    for (g, chunk) in bytes.chunks_exact(8).take(groups).enumerate() {
        // An 8x8 bit matrix (row = byte) transposed in three swap steps.
        let mut x = u64::from_le_bytes([
            chunk[0], chunk[1], chunk[2], chunk[3], chunk[4], chunk[5], chunk[6], chunk[7],
        ]);
        let t = (x ^ (x >> 7)) & 0x00aa_00aa_00aa_00aa;
        x ^= t ^ (t << 7);
        let t = (x ^ (x >> 14)) & 0x0000_cccc_0000_cccc;
        x ^= t ^ (t << 14);
        let t = (x ^ (x >> 28)) & 0x0000_0000_f0f0_f0f0;
        x ^= t ^ (t << 28);
        // Now byte k of x holds bit k of the group's 8 bytes.
        for (k, plane) in p.iter_mut().enumerate() {
            *plane |= ((x >> (8 * k)) & 0xff) << (8 * g);
        }
    }
    p
}

/// The inverse of [`to_planes`].
fn from_planes(p: &Planes, groups: usize) -> [u8; 64] {
    let mut out = [0u8; 64];
    for (g, chunk) in out.chunks_exact_mut(8).take(groups).enumerate() {
        let mut x = 0u64;
        for (k, plane) in p.iter().enumerate() {
            x |= ((plane >> (8 * g)) & 0xff) << (8 * k);
        }
        // The transpose is its own inverse.
        let t = (x ^ (x >> 7)) & 0x00aa_00aa_00aa_00aa;
        x ^= t ^ (t << 7);
        let t = (x ^ (x >> 14)) & 0x0000_cccc_0000_cccc;
        x ^= t ^ (t << 14);
        let t = (x ^ (x >> 28)) & 0x0000_0000_f0f0_f0f0;
        x ^= t ^ (t << 28);
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    out
}

/// Reduces a product of degree up to 14 modulo x^8+x^7+x^6+x^5+x^4+x^2+1
/// (x^8 = x^7 + x^6 + x^5 + x^4 + x^2 + 1).
fn reduce(mut t: [u64; 15]) -> Planes {
    for n in (8..15).rev() {
        let v = t[n];
        let base = n - 8;
        t[base + 7] ^= v;
        t[base + 6] ^= v;
        t[base + 5] ^= v;
        t[base + 4] ^= v;
        t[base + 2] ^= v;
        t[base] ^= v;
    }
    [t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]]
}

/// Product in GF(2^8), on planes.
fn mul(a: &Planes, b: &Planes) -> Planes {
    let mut t = [0u64; 15];
    for i in 0..8 {
        for j in 0..8 {
            t[i + j] ^= a[i] & b[j];
        }
    }
    reduce(t)
}

/// Square in GF(2^8): linear (the coefficients spread to even degrees), XORs only.
fn square(a: &Planes) -> Planes {
    let mut t = [0u64; 15];
    for i in 0..8 {
        t[2 * i] = a[i];
    }
    reduce(t)
}

/// `x^254` (the inverse, and 0 for 0): x^2, x^3, x^6, x^12, x^15, x^30, x^60, x^120, x^240,
/// x^252, x^254 - four multiplications and seven squarings.
fn inv(x: &Planes) -> Planes {
    let x2 = square(x);
    let x3 = mul(&x2, x);
    let x6 = square(&x3);
    let x12 = square(&x6);
    let x15 = mul(&x12, &x3);
    let x30 = square(&x15);
    let x60 = square(&x30);
    let x120 = square(&x60);
    let x240 = square(&x120);
    let x252 = mul(&x240, &x12);
    mul(&x252, &x2)
}

/// `A * x + 0xD3`: output bit k is the parity of `x & rotr(0xD3, 7 - k)`, then the constant.
fn affine(x: &Planes) -> Planes {
    let mut out = [0u64; 8];
    for (k, o) in out.iter_mut().enumerate() {
        let row = 0xd3u8.rotate_right(7 - k as u32);
        let mut acc = 0u64;
        for (m, plane) in x.iter().enumerate() {
            // The matrix is public: which planes are summed does not depend on secrets.
            if (row >> m) & 1 == 1 {
                acc ^= plane;
            }
        }
        *o = if (0xd3 >> k) & 1 == 1 { !acc } else { acc };
    }
    out
}

/// The S-box on the first `len` of 64 bytes at once (the others come out unspecified).
pub(crate) fn sbox64(bytes: &mut [u8; 64], len: usize) {
    let groups = len.div_ceil(8);
    let p = to_planes(bytes, groups);
    *bytes = from_planes(&affine(&inv(&affine(&p))), groups);
}

/// tau (the S-box on each byte) of up to 16 words at once.
fn tau_words(words: &mut [u32]) {
    debug_assert!(words.len() <= 16);
    let mut bytes = [0u8; 64];
    for (i, w) in words.iter().enumerate() {
        bytes[4 * i..4 * i + 4].copy_from_slice(&w.to_be_bytes());
    }
    sbox64(&mut bytes, 4 * words.len());
    for (i, w) in words.iter_mut().enumerate() {
        *w = u32::from_be_bytes([bytes[4 * i], bytes[4 * i + 1], bytes[4 * i + 2], bytes[4 * i + 3]]);
    }
}

fn l(b: u32) -> u32 {
    b ^ b.rotate_left(2) ^ b.rotate_left(10) ^ b.rotate_left(18) ^ b.rotate_left(24)
}

fn l_prime(b: u32) -> u32 {
    b ^ b.rotate_left(13) ^ b.rotate_left(23)
}

/// 32 rounds over up to 16 blocks (as big-endian words), round keys in the order given: four
/// at a time with AES-NI where the CPU has it, else on bit planes.
fn rounds(rk: &[u32; 32], blocks: &mut [[u32; 4]], reverse: bool) {
    if crate::sm4_ni::available() && !FORCE_PORTABLE.load(std::sync::atomic::Ordering::Relaxed) {
        for chunk in blocks.chunks_mut(4) {
            let mut four = [[0u32; 4]; 4];
            four[..chunk.len()].copy_from_slice(chunk);
            crate::sm4_ni::rounds4(rk, &mut four, reverse);
            chunk.copy_from_slice(&four[..chunk.len()]);
        }
        return;
    }
    rounds_portable(rk, blocks, reverse)
}

#[doc(hidden)]
pub use crate::sm4_ni::FORCE_AESNI;

/// Tests (and benchmarks) of the portable kernel on a machine with AES-NI set this.
#[doc(hidden)]
pub static FORCE_PORTABLE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn rounds_portable(rk: &[u32; 32], blocks: &mut [[u32; 4]], reverse: bool) {
    let n = blocks.len();
    debug_assert!(n <= PARALLEL_BLOCKS);
    let mut t = [0u32; PARALLEL_BLOCKS];
    for r in 0..32 {
        let k = if reverse { rk[31 - r] } else { rk[r] };
        for (b, x) in blocks.iter().enumerate() {
            t[b] = x[1] ^ x[2] ^ x[3] ^ k;
        }
        tau_words(&mut t[..n]);
        for (b, x) in blocks.iter_mut().enumerate() {
            let next = x[0] ^ l(t[b]);
            *x = [x[1], x[2], x[3], next];
        }
    }
    for x in blocks.iter_mut() {
        x.reverse();
    }
}

/// SM4 (GB/T 32907-2016) in constant time. The round keys are zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Sm4Ct {
    rk: [u32; 32],
}

impl std::fmt::Debug for Sm4Ct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sm4Ct { .. }")
    }
}

impl KeySizeUser for Sm4Ct {
    type KeySize = U16;
}

impl KeyInit for Sm4Ct {
    fn new(key: &Key<Self>) -> Self {
        let mut k = [0u32; 4];
        for (i, w) in k.iter_mut().enumerate() {
            *w = u32::from_be_bytes([key[4 * i], key[4 * i + 1], key[4 * i + 2], key[4 * i + 3]]) ^ FK[i];
        }
        let mut rk = [0u32; 32];
        for (i, ck) in CK.iter().enumerate() {
            let mut t = [k[1] ^ k[2] ^ k[3] ^ ck];
            tau_words(&mut t);
            let next = k[0] ^ l_prime(t[0]);
            k = [k[1], k[2], k[3], next];
            rk[i] = next;
        }
        k.zeroize();
        Self { rk }
    }
}

impl AlgorithmName for Sm4Ct {
    fn write_alg_name(f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SM4")
    }
}

impl BlockSizeUser for Sm4Ct {
    type BlockSize = U16;
}

impl ParBlocksSizeUser for Sm4Ct {
    type ParBlocksSize = Par16;
}

fn load(b: &Block<Sm4Ct>) -> [u32; 4] {
    let w = |i: usize| u32::from_be_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]);
    [w(0), w(1), w(2), w(3)]
}

fn store(x: &[u32; 4], out: &mut Block<Sm4Ct>) {
    for (i, w) in x.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&w.to_be_bytes());
    }
}

impl Sm4Ct {
    fn crypt_block(&self, mut block: InOut<'_, '_, Block<Self>>, reverse: bool) {
        let mut x = [load(block.get_in())];
        rounds(&self.rk, &mut x, reverse);
        store(&x[0], block.get_out());
    }

    fn crypt_par(&self, mut blocks: InOut<'_, '_, ParBlocks<Self>>, reverse: bool) {
        let mut x = [[0u32; 4]; PARALLEL_BLOCKS];
        for (i, b) in blocks.get_in().iter().enumerate() {
            x[i] = load(b);
        }
        rounds(&self.rk, &mut x, reverse);
        for (i, b) in blocks.get_out().iter_mut().enumerate() {
            store(&x[i], b);
        }
    }

    fn crypt_tail(&self, mut blocks: InOutBuf<'_, '_, Block<Self>>, reverse: bool) {
        let n = blocks.len();
        let mut x = [[0u32; 4]; PARALLEL_BLOCKS];
        for (i, b) in blocks.get_in().iter().enumerate() {
            x[i] = load(b);
        }
        rounds(&self.rk, &mut x[..n], reverse);
        for (i, b) in blocks.get_out().iter_mut().enumerate() {
            store(&x[i], b);
        }
    }
}

impl BlockCipherEncrypt for Sm4Ct {
    fn encrypt_with_backend(&self, f: impl BlockCipherEncClosure<BlockSize = Self::BlockSize>) {
        f.call(&Enc(self))
    }
}

impl BlockCipherDecrypt for Sm4Ct {
    fn decrypt_with_backend(&self, f: impl BlockCipherDecClosure<BlockSize = Self::BlockSize>) {
        f.call(&Dec(self))
    }
}

struct Enc<'a>(&'a Sm4Ct);
struct Dec<'a>(&'a Sm4Ct);

impl BlockSizeUser for Enc<'_> {
    type BlockSize = U16;
}
impl ParBlocksSizeUser for Enc<'_> {
    type ParBlocksSize = Par16;
}
impl BlockSizeUser for Dec<'_> {
    type BlockSize = U16;
}
impl ParBlocksSizeUser for Dec<'_> {
    type ParBlocksSize = Par16;
}

impl BlockCipherEncBackend for Enc<'_> {
    fn encrypt_block(&self, block: InOut<'_, '_, Block<Self>>) {
        self.0.crypt_block(block, false)
    }
    fn encrypt_par_blocks(&self, blocks: InOut<'_, '_, ParBlocks<Self>>) {
        self.0.crypt_par(blocks, false)
    }
    fn encrypt_tail_blocks(&self, blocks: InOutBuf<'_, '_, Block<Self>>) {
        self.0.crypt_tail(blocks, false)
    }
}

impl BlockCipherDecBackend for Dec<'_> {
    fn decrypt_block(&self, block: InOut<'_, '_, Block<Self>>) {
        self.0.crypt_block(block, true)
    }
    fn decrypt_par_blocks(&self, blocks: InOut<'_, '_, ParBlocks<Self>>) {
        self.0.crypt_par(blocks, true)
    }
    fn decrypt_tail_blocks(&self, blocks: InOutBuf<'_, '_, Block<Self>>) {
        self.0.crypt_tail(blocks, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_computed_sbox_is_the_standard_table_for_every_input() {
        // Differential against the table implementation: S-box via single-byte blocks is not
        // reachable there, so compare the whole cipher below and the S-box against the
        // standard's first row here.
        let mut bytes = [0u8; 64];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = i as u8;
        }
        sbox64(&mut bytes, 64);
        // GB/T 32907 Table: S-box row 0 and the start of row 1.
        let row0 = [
            0xd6, 0x90, 0xe9, 0xfe, 0xcc, 0xe1, 0x3d, 0xb7, 0x16, 0xb6, 0x14, 0xc2, 0x28, 0xfb, 0x2c, 0x05,
            0x2b, 0x67, 0x9a, 0x76, 0x2a, 0xbe, 0x04, 0xc3, 0xaa, 0x44, 0x13, 0x26, 0x49, 0x86, 0x06, 0x99,
        ];
        assert_eq!(&bytes[..32], &row0);
        for start in [64u16, 128, 192] {
            let mut b = [0u8; 64];
            for (i, x) in b.iter_mut().enumerate() {
                *x = (start + i as u16) as u8;
            }
            let plain = b;
            sbox64(&mut b, 64);
            // A permutation: no two inputs of the block collide.
            let mut seen = std::collections::HashSet::new();
            assert!(b.iter().all(|x| seen.insert(*x)), "{plain:?}");
        }
    }

    #[test]
    fn planes_round_trip() {
        let mut bytes = [0u8; 64];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37).wrapping_add(11);
        }
        assert_eq!(from_planes(&to_planes(&bytes, 8), 8), bytes);
        let p = to_planes(&bytes, 8);
        for (j, byte) in bytes.iter().enumerate() {
            for (k, plane) in p.iter().enumerate() {
                assert_eq!((plane >> j) & 1, u64::from((byte >> k) & 1));
            }
        }
    }

    #[test]
    fn the_gfni_and_aes_ni_kernels_are_the_portable_kernel() {
        use rand_core::Rng as _;
        if !crate::sm4_ni::available() {
            eprintln!("SKIPPED the_gfni_and_aes_ni_kernels_are_the_portable_kernel: no AES-NI on this CPU");
            return;
        }
        let mut rng = rand_core::UnwrapErr(getrandom::SysRng);
        // The GFNI kernel where the CPU has it, then the AES-NI one forced.
        for force_aesni in [false, true] {
            FORCE_AESNI.store(force_aesni, std::sync::atomic::Ordering::Relaxed);
            for _ in 0..200 {
                let mut rk = [0u32; 32];
                rk.iter_mut().for_each(|k| *k = rng.next_u32());
                let mut a = [[0u32; 4]; 4];
                a.iter_mut().flatten().for_each(|w| *w = rng.next_u32());
                let mut b = a;
                crate::sm4_ni::rounds4(&rk, &mut a, false);
                rounds_portable(&rk, &mut b, false);
                assert_eq!(a, b, "force_aesni={force_aesni}");
                crate::sm4_ni::rounds4(&rk, &mut a, true);
                rounds_portable(&rk, &mut b, true);
                assert_eq!(a, b, "force_aesni={force_aesni}");
            }
        }
        FORCE_AESNI.store(false, std::sync::atomic::Ordering::Relaxed);
    }

    #[test]
    fn the_standards_vectors() {
        let key: [u8; 16] = hex::decode("0123456789abcdeffedcba9876543210").unwrap().try_into().unwrap();
        let c = Sm4Ct::new(&key.into());
        let mut block = key.into();
        c.encrypt_block(&mut block);
        assert_eq!(hex::encode(block), "681edf34d206965e86b3e94f536e4246");
        c.decrypt_block(&mut block);
        assert_eq!(block.as_slice(), &key);
    }

    #[test]
    fn differential_against_the_sm4_crate_one_and_many_blocks() {
        use rand_core::Rng as _;
        let mut rng = rand_core::UnwrapErr(getrandom::SysRng);
        for _ in 0..50 {
            let mut key = [0u8; 16];
            rng.fill_bytes(&mut key);
            let ours = Sm4Ct::new(&key.into());
            let table = sm4::Sm4::new(&key.into());
            let n = (rng.next_u32() % 40) as usize + 1;
            let mut data = vec![0u8; 16 * n];
            rng.fill_bytes(&mut data);
            let mut a: Vec<Block<Sm4Ct>> =
                data.chunks(16).map(|c| Block::<Sm4Ct>::try_from(c).unwrap()).collect();
            let mut b = a.clone();
            ours.encrypt_blocks(&mut a);
            table.encrypt_blocks(&mut b);
            assert_eq!(a, b, "{n} blocks");
            ours.decrypt_blocks(&mut a);
            assert_eq!(a.concat(), data);
        }
    }
}
