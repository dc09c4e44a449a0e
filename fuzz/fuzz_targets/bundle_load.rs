//! Fuzz target: loading a bundle (parse + validate) and describing it, as
//! `drift inspect` does; no GPU.
//!
//! Each input is tried twice: as the file it is, and "resealed" with correct
//! CRC-32s in the preamble, so that mutations of the header reach the
//! decoder and `validate` instead of stopping at the checksum.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    load(data.to_vec());
    if let Some(resealed) = reseal(data) {
        load(resealed);
    }
});

fn load(bytes: Vec<u8>) {
    if let Ok(model) = drift_runtime::Model::from_bytes(bytes) {
        let _ = drift_compiler::inspect::describe(model.bundle());
    }
}

/// The input with the header, weights and preamble checksums recomputed
/// over whatever the lengths in the preamble cover (clamped to the input).
/// Offsets as docs/bundle.md gives them for format version 2.
fn reseal(data: &[u8]) -> Option<Vec<u8>> {
    let mut b = data.to_vec();
    if b.len() < 64 {
        return None;
    }
    let u64_at = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    let header_end = 64usize.saturating_add(usize::try_from(u64_at(&b, 32)).ok()?).min(b.len());
    let weights_start = header_end.next_multiple_of(256).min(b.len());
    let weights_end = weights_start.saturating_add(usize::try_from(u64_at(&b, 40)).ok()?).min(b.len());
    let header_crc = crc32fast::hash(&b[64..header_end]);
    let weights_crc = crc32fast::hash(&b[weights_start..weights_end]);
    b[48..52].copy_from_slice(&header_crc.to_le_bytes());
    b[52..56].copy_from_slice(&weights_crc.to_le_bytes());
    let preamble_crc = crc32fast::hash(&b[..60]);
    b[60..64].copy_from_slice(&preamble_crc.to_le_bytes());
    Some(b)
}
