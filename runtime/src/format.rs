//! Reading and writing the bundle file framing.
//!
//! [`frame`] checks the preamble, the section lengths, the padding and the
//! CRC-32 of every section, and [`parse`] then decodes the header, so that
//! every byte of the file has been checked before [`validate`] looks at the
//! fields. Neither panics on any input, and neither allocates more than a
//! bounded multiple of the input's size: every length read from the file is
//! checked against the file before use, and the number of entries of every
//! repeated field of the header is counted before decoding
//! ([`check_entry_counts`]). [`write_bundle`] is the inverse of [`parse`];
//! the compiler and the tests share it.

use std::io::Write;
use std::ops::Range;

use prost::Message;

use crate::bundle::{Bundle, COMPILER_VERSION_LEN, FILE_HEADER_LEN, FORMAT_VERSION, MAGIC, WEIGHTS_ALIGN};
use crate::error::{Error, Result, bundle_err};

pub use crate::validate::validate;

/// The decoded preamble (the fixed 64 bytes before the header).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preamble {
    pub version: u32,
    pub flags: u32,
    /// The compiler that wrote the bundle, e.g. "0.1.0".
    pub compiler_version: String,
    pub header_len: u64,
    pub weights_len: u64,
    pub header_crc: u32,
    pub weights_crc: u32,
}

/// Where the sections of a checked bundle file lie.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub preamble: Preamble,
    /// The prost-encoded `Bundle`.
    pub header: Range<usize>,
    /// The weights section; `header.end..weights.start` is zero padding.
    pub weights: Range<usize>,
}

/// Byte offsets inside the preamble.
const VERSION_AT: usize = 8;
const FLAGS_AT: usize = 12;
const COMPILER_AT: usize = 16;
const HEADER_LEN_AT: usize = 32;
const WEIGHTS_LEN_AT: usize = 40;
const HEADER_CRC_AT: usize = 48;
const WEIGHTS_CRC_AT: usize = 52;
const RESERVED_AT: usize = 56;
const PREAMBLE_CRC_AT: usize = 60;

/// Splits file bytes into the decoded header and the weights section's
/// range in `bytes`, after [`frame`] checked the framing and checksums.
/// Does not [`validate`] the bundle.
pub fn parse(bytes: &[u8]) -> Result<(Bundle, Range<usize>)> {
    let frame = frame(bytes)?;
    let header = &bytes[frame.header.clone()];
    check_entry_counts(header)?;
    let bundle = Bundle::decode(header)?;
    if bundle.compiler_version != frame.preamble.compiler_version {
        return Err(bundle_err(
            "compiler_version",
            format!(
                "= {:?} differs from the preamble's {:?}",
                bundle.compiler_version, frame.preamble.compiler_version
            ),
        ));
    }
    if bundle.weights_size != frame.preamble.weights_len {
        return Err(bundle_err(
            "weights_size",
            format!(
                "= {} differs from the preamble's weights length {}",
                bundle.weights_size, frame.preamble.weights_len
            ),
        ));
    }
    Ok((bundle, frame.weights))
}

/// Checks the preamble, the section lengths against the file, the padding
/// and the three CRC-32s, in the order a damaged or foreign file is best
/// explained: magic, version, length, preamble checksum, fields, sections.
pub fn frame(bytes: &[u8]) -> Result<Frame> {
    let magic_len = MAGIC.len().min(bytes.len());
    if bytes[..magic_len] != MAGIC[..magic_len] {
        return Err(Error::BadMagic);
    }
    // The version first: a bundle of another version may frame differently.
    let Some(version) = read_u32(bytes, VERSION_AT) else {
        return Err(Error::TooShort(bytes.len()));
    };
    if version != FORMAT_VERSION {
        return Err(Error::UnsupportedVersion { version, writer: foreign_writer(bytes, version) });
    }
    let Some(fixed) = bytes.get(..FILE_HEADER_LEN) else {
        return Err(Error::TooShort(bytes.len()));
    };
    let stored = read_u32(fixed, PREAMBLE_CRC_AT).unwrap_or_default();
    check_crc("preamble", stored, &fixed[..PREAMBLE_CRC_AT])?;
    let preamble = decode_preamble(fixed)?;
    let (header, weights) = sections(&preamble, bytes.len() as u64)?;
    if let Some(at) = bytes[header.end..weights.start].iter().position(|&b| b != 0) {
        return Err(bundle_err("padding", format!("byte at file offset {} is not zero", header.end + at)));
    }
    check_crc("header", preamble.header_crc, &bytes[header.clone()])?;
    check_crc("weights", preamble.weights_crc, &bytes[weights.clone()])?;
    Ok(Frame { preamble, header, weights })
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at + 4)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Who wrote a bundle of another version, where the file says so: offsets
/// 16..32 hold the compiler version from format 2 on.
fn foreign_writer(bytes: &[u8], version: u32) -> Option<String> {
    let field = bytes.get(COMPILER_AT..COMPILER_AT + COMPILER_VERSION_LEN)?;
    (version > 2).then(|| compiler_version(field).ok()).flatten()
}

/// The compiler version field: printable ASCII, then NUL padding.
fn compiler_version(field: &[u8]) -> std::result::Result<String, String> {
    let len = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    let (text, pad) = field.split_at(len);
    if text.is_empty() || !text.iter().all(|b| b.is_ascii_graphic()) || pad.iter().any(|&b| b != 0) {
        return Err(format!("= {:?} is not printable ASCII followed by NUL padding", String::from_utf8_lossy(field)));
    }
    Ok(String::from_utf8_lossy(text).into_owned())
}

fn decode_preamble(fixed: &[u8]) -> Result<Preamble> {
    let flags = read_u32(fixed, FLAGS_AT).unwrap_or_default();
    if flags != 0 {
        return Err(Error::UnsupportedFlags(flags));
    }
    let reserved = read_u32(fixed, RESERVED_AT).unwrap_or_default();
    if reserved != 0 {
        return Err(bundle_err("preamble.reserved", format!("= {reserved:#x} is not zero")));
    }
    let field = &fixed[COMPILER_AT..COMPILER_AT + COMPILER_VERSION_LEN];
    let compiler_version =
        compiler_version(field).map_err(|problem| bundle_err("preamble.compiler_version", problem))?;
    Ok(Preamble {
        version: FORMAT_VERSION,
        flags,
        compiler_version,
        header_len: read_u64(fixed, HEADER_LEN_AT),
        weights_len: read_u64(fixed, WEIGHTS_LEN_AT),
        header_crc: read_u32(fixed, HEADER_CRC_AT).unwrap_or_default(),
        weights_crc: read_u32(fixed, WEIGHTS_CRC_AT).unwrap_or_default(),
    })
}

/// The header right after the preamble; the weights after it, padded to
/// WEIGHTS_ALIGN; the file ends exactly at the end of the weights.
fn sections(p: &Preamble, file_len: u64) -> Result<(Range<usize>, Range<usize>)> {
    let header_end = (FILE_HEADER_LEN as u64).saturating_add(p.header_len);
    if header_end > file_len {
        return Err(Error::Truncated { section: "header", expected: header_end, actual: file_len });
    }
    let start = header_end.next_multiple_of(WEIGHTS_ALIGN);
    let end = start.saturating_add(p.weights_len);
    if end > file_len {
        return Err(Error::Truncated { section: "weights", expected: end, actual: file_len });
    }
    if end < file_len {
        return Err(bundle_err(
            "preamble.weights_len",
            format!("= {} leaves {} bytes unused at the end of the file", p.weights_len, file_len - end),
        ));
    }
    // end == file_len, so every offset fits usize.
    Ok((FILE_HEADER_LEN..header_end as usize, start as usize..end as usize))
}

fn check_crc(section: &'static str, stored: u32, bytes: &[u8]) -> Result<()> {
    let computed = crc32fast::hash(bytes);
    if stored != computed {
        return Err(Error::Checksum { section, stored, computed });
    }
    Ok(())
}

/// Most entries a repeated field of `Bundle` may have, by tag. prost
/// decodes an empty entry (2 bytes on the wire) into a struct of up to
/// ~200 bytes, so without these caps a crafted header could make the
/// decoder allocate ~100 times its size. Real bundles stay far below.
/// Each variant (tag 40, a whole `Bundle`) has the same caps.
const MAX_ENTRIES: [(u32, &str, usize); 7] = [
    (3, "inputs", 1 << 16),
    (4, "outputs", 1 << 16),
    (5, "buffers", 1 << 16),
    (6, "kernels", 1 << 16),
    (7, "dispatches", 1 << 20),
    (20, "fixed_inputs", 1 << 16),
    (VARIANTS_TAG, "variants", 64),
];
const VARIANTS_TAG: u32 = 40;

/// Counts the top-level fields of an encoded `Bundle` (and of each of its
/// variants) without decoding it, and fails on a repeated field with more
/// entries than [`MAX_ENTRIES`] allows. Malformed wire data is left for the
/// decoder to report.
pub fn check_entry_counts(header: &[u8]) -> Result<()> {
    count_entries(header, None)
}

/// [`check_entry_counts`] of the top level (`variant` None) or of one variant.
fn count_entries(mut header: &[u8], variant: Option<usize>) -> Result<()> {
    let mut counts = [0usize; MAX_ENTRIES.len()];
    while !header.is_empty() {
        let Some(key) = read_varint(&mut header) else { return Ok(()) };
        let skip = match key & 7 {
            0 => read_varint(&mut header).map(|_| 0),
            1 => Some(8),
            2 => read_varint(&mut header),
            5 => Some(4),
            _ => None,
        };
        let Some(skip) = skip.and_then(|n| usize::try_from(n).ok()).filter(|&n| n <= header.len()) else {
            return Ok(());
        };
        let (field, rest) = header.split_at(skip);
        header = rest;
        let Some(i) = MAX_ENTRIES.iter().position(|&(tag, _, _)| u64::from(tag) == key >> 3) else { continue };
        counts[i] += 1;
        let (tag, name, max) = MAX_ENTRIES[i];
        if counts[i] > max {
            let field = variant.map_or(name.to_string(), |v| format!("variants[{v}].{name}"));
            return Err(bundle_err(field, format!("has more than {max} entries")));
        }
        if tag == VARIANTS_TAG && variant.is_none() && key & 7 == 2 {
            count_entries(field, Some(counts[i] - 1))?;
        }
    }
    Ok(())
}

/// A protobuf base-128 varint, advancing `buf`; `None` when malformed.
fn read_varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (i, &byte) in buf.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            *buf = &buf[i + 1..];
            return Some(value);
        }
    }
    None
}

/// Writes `bundle` framed as a bundle file, with `weights` as its weights
/// section; `weights_size` in the written header is `weights.len()`, and
/// the preamble's compiler version is `bundle.compiler_version` (cut to 16
/// bytes; [`validate`] rejects a bundle where the two differ).
pub fn write_bundle_to(out: &mut impl Write, bundle: &Bundle, weights: &[u8]) -> std::io::Result<()> {
    let mut header = bundle.clone();
    header.weights_size = weights.len() as u64;
    let header = header.encode_to_vec();
    let mut preamble = [0u8; FILE_HEADER_LEN];
    preamble[..VERSION_AT].copy_from_slice(MAGIC);
    preamble[VERSION_AT..FLAGS_AT].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    let version = bundle.compiler_version.as_bytes();
    let n = version.len().min(COMPILER_VERSION_LEN);
    preamble[COMPILER_AT..COMPILER_AT + n].copy_from_slice(&version[..n]);
    preamble[HEADER_LEN_AT..WEIGHTS_LEN_AT].copy_from_slice(&(header.len() as u64).to_le_bytes());
    preamble[WEIGHTS_LEN_AT..HEADER_CRC_AT].copy_from_slice(&(weights.len() as u64).to_le_bytes());
    preamble[HEADER_CRC_AT..WEIGHTS_CRC_AT].copy_from_slice(&crc32fast::hash(&header).to_le_bytes());
    preamble[WEIGHTS_CRC_AT..RESERVED_AT].copy_from_slice(&crc32fast::hash(weights).to_le_bytes());
    let crc = crc32fast::hash(&preamble[..PREAMBLE_CRC_AT]);
    preamble[PREAMBLE_CRC_AT..].copy_from_slice(&crc.to_le_bytes());
    out.write_all(&preamble)?;
    out.write_all(&header)?;
    let end = (FILE_HEADER_LEN + header.len()) as u64;
    let pad = end.next_multiple_of(WEIGHTS_ALIGN) - end;
    out.write_all(&vec![0u8; pad as usize])?;
    out.write_all(weights)
}

/// [`write_bundle_to`] into a new vector.
pub fn write_bundle(bundle: &Bundle, weights: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    write_bundle_to(&mut out, bundle, weights).expect("writing to a Vec cannot fail");
    out
}
