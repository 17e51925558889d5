//! The local ceiling: how fast one core seals 1,200-octet packets with AES-128-GCM (ring),
//! the cipher every server of the benchmark uses.

use std::time::{Duration, Instant};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};

/// Gbit/s of payload sealed on the calling thread over `for_how_long`.
pub fn aes128gcm_gbps(for_how_long: Duration) -> f64 {
    let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &[7u8; 16]).expect("16-octet key"));
    let mut packet = vec![0u8; 1200];
    let start = Instant::now();
    let mut n: u64 = 0;
    while start.elapsed() < for_how_long {
        for _ in 0..256 {
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&n.to_be_bytes());
            let tag = key
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::empty(),
                    &mut packet,
                )
                .expect("seal");
            let _ = std::hint::black_box(tag);
            n += 1;
        }
    }
    n as f64 * 1200.0 * 8.0 / start.elapsed().as_secs_f64() / 1e9
}
