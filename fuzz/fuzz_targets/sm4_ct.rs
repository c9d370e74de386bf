//! The constant-time SM4 against the `sm4` crate's table implementation: any key, any number
//! of blocks (so every parallel width and tail is reached), both directions.
#![no_main]

use cipher::{BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 16 {
        return;
    }
    let (key, rest) = data.split_at(16);
    let blocks = rest.len() / 16;
    let ours = claimlink_gm::sm4_ct::Sm4Ct::new_from_slice(key).unwrap();
    let table = sm4::Sm4::new_from_slice(key).unwrap();
    let mut a: Vec<cipher::Block<sm4::Sm4>> =
        rest[..blocks * 16].chunks(16).map(|c| cipher::Block::<sm4::Sm4>::try_from(c).unwrap()).collect();
    let mut b = a.clone();
    ours.encrypt_blocks(&mut a);
    table.encrypt_blocks(&mut b);
    assert_eq!(a, b);
    ours.decrypt_blocks(&mut a);
    assert_eq!(a.concat(), &rest[..blocks * 16]);
});
