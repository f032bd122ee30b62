//! Keyed BLAKE3 vs HMAC-SHA256 for blob ids, side by side in one run
//! (DESIGN.md §2: "choose by benchmark"). Run with `cargo bench --bench ids`.

use std::hint::black_box;
use std::time::Instant;

const CHUNK: usize = 1 << 20;
const TOTAL: usize = 512 << 20;

fn main() {
    let data: Vec<u8> = (0..CHUNK as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let key = [7u8; 32];
    let hmac_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);

    // Interleave rounds so frequency scaling and noise hit both alike.
    let (mut blake, mut hmac) = (0f64, 0f64);
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..TOTAL / CHUNK {
            black_box(blake3::keyed_hash(&key, black_box(&data)));
        }
        blake += t.elapsed().as_secs_f64();
        let t = Instant::now();
        for _ in 0..TOTAL / CHUNK {
            black_box(ring::hmac::sign(&hmac_key, black_box(&data)));
        }
        hmac += t.elapsed().as_secs_f64();
    }
    let mib = 3.0 * (TOTAL >> 20) as f64;
    println!("| blob id function | MiB/s |\n|---|---|");
    println!("| keyed BLAKE3 | {:.0} |", mib / blake);
    println!("| HMAC-SHA256 (ring) | {:.0} |", mib / hmac);
    println!(
        "keyed BLAKE3 is {:.2}x the speed of HMAC-SHA256 (1 MiB chunks, one core)",
        hmac / blake
    );
}
