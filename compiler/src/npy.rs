//! `.npy` files ⇄ runtime host tensors, for the CLI's `--input` and
//! `--output-dir`.

use drift_runtime::{DType, HostTensor};
use npyz::{DType as NpyType, TypeChar};
use std::path::Path;

/// Reads an `.npy` file (little-endian numeric or bool arrays).
pub fn read(path: &Path) -> Result<HostTensor, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if header_shape_overflows(&bytes) {
        return Err(format!("{}: the shape in its header has more elements than 64 bits can count", path.display()));
    }
    let npy = npyz::NpyFile::new(&bytes[..]).map_err(|e| format!("{} is not a .npy file: {e}", path.display()))?;
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    if npy.order() == npyz::Order::Fortran && shape.len() > 1 {
        return Err(format!(
            "{}: Fortran-ordered arrays are not supported; save with np.ascontiguousarray",
            path.display()
        ));
    }
    let NpyType::Plain(ts) = npy.dtype() else {
        return Err(format!("{}: structured arrays are not supported", path.display()));
    };
    let dtype = match (ts.type_char(), ts.size_field()) {
        (TypeChar::Float, 4) => DType::F32,
        (TypeChar::Float, 8) => DType::F64,
        (TypeChar::Float, 2) => DType::F16,
        (TypeChar::Int, 1) => DType::I8,
        (TypeChar::Int, 2) => DType::I16,
        (TypeChar::Int, 4) => DType::I32,
        (TypeChar::Int, 8) => DType::I64,
        (TypeChar::Uint, 1) => DType::U8,
        (TypeChar::Uint, 2) => DType::U16,
        (TypeChar::Uint, 4) => DType::U32,
        (TypeChar::Uint, 8) => DType::U64,
        (TypeChar::Bool, 1) => DType::Bool,
        _ => return Err(format!("{}: element type {ts} is not supported", path.display())),
    };
    if ts.endianness() == npyz::Endianness::Big && ts.size_field() > 1 {
        return Err(format!("{}: big-endian arrays are not supported", path.display()));
    }
    // npyz checked the magic, the version and the header; the data follows it.
    let header_end =
        npy_header_end(&bytes).ok_or_else(|| format!("{} is not a .npy file: bad header", path.display()))?;
    let data = &bytes[header_end..];
    let expected = shape
        .iter()
        .try_fold(dtype.size_bytes(), |n, &d| n.checked_mul(d))
        .ok_or_else(|| format!("{}: shape {shape:?} is too large", path.display()))?;
    if data.len() != expected {
        return Err(format!(
            "{}: holds {} data bytes, but its shape {shape:?} of {} needs {expected}{}",
            path.display(),
            data.len(),
            dtype.name(),
            if data.len() < expected { " (truncated file?)" } else { "" }
        ));
    }
    HostTensor::new(dtype, shape, data.to_vec()).map_err(|e| format!("{}: {e}", path.display()))
}

/// Whether the header's `'shape': (d0, d1, ..)` multiplies past u64, which
/// npyz does not check (it panics in debug builds, wraps in release).
/// Headers this cannot find a shape in are left to npyz to judge.
fn header_shape_overflows(bytes: &[u8]) -> bool {
    let Some(end) = npy_header_end(bytes) else { return false };
    let header = String::from_utf8_lossy(&bytes[..end]);
    let Some(at) = header.find("'shape'") else { return false };
    let rest = &header[at..];
    let (Some(open), Some(close)) = (rest.find('('), rest.find(')')) else { return false };
    if close < open {
        return false;
    }
    let mut dims = rest[open + 1..close].split(',').filter_map(|d| d.trim().parse::<u64>().ok());
    dims.try_fold(1u64, |n, d| n.checked_mul(d)).is_none()
}

/// Where the data starts: after the magic (6 bytes), the version (2), the
/// header length (2 bytes in version 1, 4 in versions 2 and 3) and the header.
fn npy_header_end(bytes: &[u8]) -> Option<usize> {
    let len_size = if *bytes.get(6)? == 1 { 2 } else { 4 };
    let len = bytes.get(8..8 + len_size)?.iter().rev().fold(0usize, |n, &b| n << 8 | b as usize);
    let end = (8 + len_size).checked_add(len)?;
    (end <= bytes.len()).then_some(end)
}

/// Writes a tensor as `.npy`.
pub fn write(path: &Path, t: &HostTensor) -> Result<(), String> {
    let descr = match t.dtype {
        DType::F32 => "<f4",
        DType::F64 => "<f8",
        DType::F16 => "<f2",
        // numpy has no bfloat16, float8 or float4: written as float32.
        DType::BF16
        | DType::F8E4M3FN
        | DType::F8E4M3FNUZ
        | DType::F8E5M2
        | DType::F8E5M2FNUZ
        | DType::F4E2M1
        | DType::F8E8M0 => return write(path, &to_f32(t)),
        // nor 4- or 2-bit integers: written one byte per element.
        DType::I4 | DType::I2 | DType::U4 | DType::U2 => return write(path, &to_bytes(t)),
        DType::I8 => "|i1",
        DType::I16 => "<i2",
        DType::I32 => "<i4",
        DType::I64 => "<i8",
        DType::U8 => "|u1",
        DType::U16 => "<u2",
        DType::U32 => "<u4",
        DType::U64 => "<u8",
        DType::Bool => "|b1",
    };
    let shape: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
    let shape = if shape.len() == 1 { format!("({},)", shape[0]) } else { format!("({})", shape.join(", ")) };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(&t.data);
    std::fs::write(path, out).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn to_f32(t: &HostTensor) -> HostTensor {
    HostTensor::from_f32(t.shape.clone(), &t.to_f32_vec())
}

/// A 2- or 4-bit integer tensor widened to int8 or uint8.
fn to_bytes(t: &HostTensor) -> HostTensor {
    let dtype = if matches!(t.dtype, DType::I4 | DType::I2) { DType::I8 } else { DType::U8 };
    let data = t.to_f64_vec().iter().map(|&v| v as i64 as u8).collect();
    HostTensor { dtype, shape: t.shape.clone(), data }
}
