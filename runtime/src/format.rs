//! Reading, checking and writing the bundle file framing.
//!
//! [`parse`] turns file bytes into a [`Bundle`] plus the byte range of the
//! weights section, and [`validate`] checks every cross reference inside it,
//! so the GPU code after it can index without checks. Neither panics or
//! allocates more than the input's size on any input: every length read from
//! the file is checked against the file before use. [`write_bundle`] is the
//! inverse of [`parse`]; the compiler and the tests share it.

use std::io::Write;
use std::ops::Range;

use prost::Message;

use crate::bundle::{
    BindingKind, BufferKind, Bundle, Dispatch, Extent, FILE_HEADER_LEN, FORMAT_VERSION, IoTensor, Kernel, MAGIC,
    PARAMS_ALIGN, PhysType, WEIGHTS_ALIGN, WINDOW_ALIGN,
};
use crate::dtype::DType;
use crate::error::{Error, Result, bundle_err, fmt_shape};

/// WebGPU's limit on workgroups per dimension of one dispatch.
pub const MAX_WORKGROUPS_PER_DIM: u32 = 65535;

/// Splits file bytes into the decoded header and the weights section's range
/// in `bytes`. Does not [`validate`] the bundle.
pub fn parse(bytes: &[u8]) -> Result<(Bundle, Range<usize>)> {
    let file_len = bytes.len() as u64;
    let magic_len = MAGIC.len().min(bytes.len());
    if bytes[..magic_len] != MAGIC[..magic_len] {
        return Err(Error::BadMagic);
    }
    let Some(fixed) = bytes.get(..FILE_HEADER_LEN) else {
        return Err(Error::TooShort(bytes.len()));
    };
    let version = u32::from_le_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]);
    if version != FORMAT_VERSION {
        return Err(Error::UnsupportedVersion(version));
    }
    let flags = u32::from_le_bytes([fixed[12], fixed[13], fixed[14], fixed[15]]);
    if flags != 0 {
        return Err(Error::UnsupportedFlags(flags));
    }
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&fixed[16..24]);
    let header_len = u64::from_le_bytes(len_bytes);

    let header_end = (FILE_HEADER_LEN as u64).saturating_add(header_len);
    if header_end > file_len {
        return Err(Error::Truncated { expected: header_end, actual: file_len });
    }
    // header_end <= bytes.len(), so it fits usize.
    let bundle = Bundle::decode(&bytes[FILE_HEADER_LEN..header_end as usize])?;

    let weights = weights_range(header_end, bundle.weights_size, file_len)?;
    Ok((bundle, weights))
}

/// The weights section: after the header, padded to WEIGHTS_ALIGN, exactly
/// `weights_size` bytes, and the file ends there.
fn weights_range(header_end: u64, weights_size: u64, file_len: u64) -> Result<Range<usize>> {
    let start = header_end.next_multiple_of(WEIGHTS_ALIGN);
    if weights_size == 0 && file_len <= start {
        // The writer always pads, but an empty section needs no padding.
        return Ok(0..0);
    }
    let end = start.saturating_add(weights_size);
    if end > file_len {
        return Err(Error::Truncated { expected: end, actual: file_len });
    }
    if end < file_len {
        return Err(bundle_err(
            "weights_size",
            format!("= {weights_size} leaves {} bytes unused at the end of the file", file_len - end),
        ));
    }
    // end <= file_len, so both fit usize.
    Ok(start as usize..end as usize)
}

/// Writes `bundle` framed as a bundle file, with `weights` as its weights
/// section; `weights_size` in the written header is `weights.len()`.
pub fn write_bundle_to(out: &mut impl Write, bundle: &Bundle, weights: &[u8]) -> std::io::Result<()> {
    let mut header = bundle.clone();
    header.weights_size = weights.len() as u64;
    let header = header.encode_to_vec();
    out.write_all(MAGIC)?;
    out.write_all(&FORMAT_VERSION.to_le_bytes())?;
    out.write_all(&0u32.to_le_bytes())?;
    out.write_all(&(header.len() as u64).to_le_bytes())?;
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

/// Checks every index, size and enum in `bundle` so that the session can use
/// them without further checks. [`parse`] has already checked that the
/// weights section holds `weights_size` bytes.
pub fn validate(bundle: &Bundle) -> Result<()> {
    for (i, buf) in bundle.buffers.iter().enumerate() {
        let field = |f: &str| format!("buffers[{i}].{f}");
        let kind = buffer_kind(bundle, i)?;
        if buf.size == 0 || !buf.size.is_multiple_of(4) {
            return Err(bundle_err(field("size"), format!("= {} is not a positive multiple of 4", buf.size)));
        }
        let end = buf.weights_offset.saturating_add(buf.size);
        if kind == BufferKind::Weights && end > bundle.weights_size {
            return Err(bundle_err(
                field("weights_offset"),
                format!(
                    "= {} plus size {} runs past the weights section ({} bytes)",
                    buf.weights_offset, buf.size, bundle.weights_size
                ),
            ));
        }
    }
    for (i, kernel) in bundle.kernels.iter().enumerate() {
        validate_kernel(i, kernel)?;
    }
    for (i, dispatch) in bundle.dispatches.iter().enumerate() {
        validate_dispatch(bundle, i, dispatch)?;
    }
    validate_io(bundle, "inputs", &bundle.inputs)?;
    validate_io(bundle, "outputs", &bundle.outputs)?;
    validate_fixed_inputs(bundle)
}

/// A data-dependent extent: outputs only, a real axis, a u32 inside an
/// Arena buffer.
fn validate_extent(bundle: &Bundle, field: &str, list: &str, t: &IoTensor, e: &Extent) -> Result<()> {
    if list != "outputs" {
        return Err(bundle_err(field.to_string(), "is only allowed on outputs".to_string()));
    }
    if e.axis as usize >= t.shape.len() {
        return Err(bundle_err(
            format!("{field}.axis"),
            format!("= {} is out of range for rank {}", e.axis, t.shape.len()),
        ));
    }
    let Some(buffer) = bundle.buffers.get(e.buffer as usize) else {
        return Err(bundle_err(format!("{field}.buffer"), format!("= {} is out of range", e.buffer)));
    };
    if buffer_kind(bundle, e.buffer as usize)? != BufferKind::Arena {
        return Err(bundle_err(format!("{field}.buffer"), format!("= {} is not an Arena buffer", e.buffer)));
    }
    if !e.offset.is_multiple_of(4) || e.offset.saturating_add(4) > buffer.size {
        return Err(bundle_err(
            format!("{field}.offset"),
            format!("= {} is unaligned or runs past buffers[{}] ({} bytes)", e.offset, e.buffer, buffer.size),
        ));
    }
    Ok(())
}

/// Fixed inputs: unique names, known dtypes, values of the declared size.
fn validate_fixed_inputs(bundle: &Bundle) -> Result<()> {
    for (i, t) in bundle.fixed_inputs.iter().enumerate() {
        let field = |f: &str| format!("fixed_inputs[{i}].{f}");
        let clash = bundle.inputs.iter().any(|o| o.name == t.name);
        if t.name.is_empty() || clash || bundle.fixed_inputs[..i].iter().any(|o| o.name == t.name) {
            return Err(bundle_err(field("name"), format!("= '{}' is empty or repeated", t.name)));
        }
        let Some(dtype) = DType::from_onnx(t.dtype) else {
            return Err(bundle_err(field("dtype"), format!("= {} is not a supported ONNX type", t.dtype)));
        };
        let Some(shape) = t.shape.iter().map(|&d| usize::try_from(d).ok()).collect::<Option<Vec<usize>>>() else {
            return Err(bundle_err(field("shape"), format!("= {} does not fit this machine", fmt_shape(&t.shape))));
        };
        // The same length rule as inputs given at run time.
        if let Err(e) = crate::tensor::HostTensor::new(dtype, shape, t.value.clone()) {
            return Err(bundle_err(field("value"), e.to_string()));
        }
    }
    Ok(())
}

/// The kind of `buffers[i]`, which must exist.
fn buffer_kind(bundle: &Bundle, i: usize) -> Result<BufferKind> {
    let kind = bundle.buffers[i].kind;
    BufferKind::try_from(kind)
        .map_err(|_| bundle_err(format!("buffers[{i}].kind"), format!("= {kind} is not a buffer kind")))
}

/// The binding kinds of a kernel, decoded.
pub(crate) fn binding_kinds(kernel: &Kernel) -> impl Iterator<Item = Option<BindingKind>> + '_ {
    kernel.bindings.iter().map(|&b| BindingKind::try_from(b).ok())
}

fn validate_kernel(i: usize, kernel: &Kernel) -> Result<()> {
    let field = |f: &str| format!("kernels[{i}].{f}");
    if kernel.entry_point.is_empty() {
        return Err(bundle_err(field("entry_point"), "is empty"));
    }
    if kernel.workgroup_size.len() != 3 || kernel.workgroup_size.contains(&0) {
        return Err(bundle_err(
            field("workgroup_size"),
            format!("= {} is not three sizes of at least 1", fmt_shape(&kernel.workgroup_size)),
        ));
    }
    if kernel.spirv.is_empty() && kernel.wgsl.is_empty() {
        return Err(bundle_err(field("spirv"), "and wgsl are both empty"));
    }
    if !kernel.spirv.len().is_multiple_of(4) {
        return Err(bundle_err(field("spirv"), format!("has {} bytes, not whole 32-bit words", kernel.spirv.len())));
    }
    if !kernel.spirv.is_empty() {
        check_spirv_framing(&kernel.spirv).map_err(|problem| bundle_err(field("spirv"), problem))?;
    }
    for (b, kind) in binding_kinds(kernel).enumerate() {
        // Binding 0 is the params block and only binding 0 is.
        let ok = match kind {
            Some(BindingKind::Params) => b == 0,
            Some(_) => b != 0,
            None => false,
        };
        if !ok {
            return Err(bundle_err(
                format!("kernels[{i}].bindings[{b}]"),
                format!("= {} is not allowed (binding 0 must be Params, the rest storage)", kernel.bindings[b]),
            ));
        }
    }
    if kernel.bindings.is_empty() {
        return Err(bundle_err(field("bindings"), "is empty (binding 0 must be Params)"));
    }
    Ok(())
}

/// The SPIR-V magic number, as the first little-endian word of a module.
const SPIRV_MAGIC: u32 = 0x0723_0203;

/// Checks the framing of a SPIR-V module (whole words, checked by the
/// caller): the magic number, the 5-word header, and instruction word
/// counts that end exactly at the end. Drivers given passthrough SPIR-V
/// trust it, and some crash on a damaged module instead of rejecting it;
/// this catches truncation and most damage to the structure, not to operands.
fn check_spirv_framing(bytes: &[u8]) -> std::result::Result<(), String> {
    let word = |i: usize| {
        let b = &bytes[4 * i..4 * i + 4];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    };
    let n = bytes.len() / 4;
    if n < 5 || word(0) != SPIRV_MAGIC {
        return Err("is not a SPIR-V module (no magic number and header)".to_string());
    }
    let (mut i, mut last_opcode) = (5, 0);
    while i < n {
        let count = (word(i) >> 16) as usize;
        if count == 0 || i + count > n {
            return Err(format!(
                "is damaged: the instruction at word {i} has word count {count}, {} words remain",
                n - i
            ));
        }
        last_opcode = word(i) & 0xFFFF;
        i += count;
    }
    // A module cut at an instruction boundary still frames; its last
    // function is then unfinished.
    const OP_FUNCTION_END: u32 = 56;
    if last_opcode != OP_FUNCTION_END {
        return Err("is damaged: it does not end with a complete function (truncated?)".to_string());
    }
    Ok(())
}

fn validate_dispatch(bundle: &Bundle, i: usize, dispatch: &Dispatch) -> Result<()> {
    let field = |f: &str| format!("dispatches[{i}].{f}");
    let Some(kernel) = bundle.kernels.get(dispatch.kernel as usize) else {
        return Err(bundle_err(
            field("kernel"),
            format!("= {} is out of range ({} kernels)", dispatch.kernel, bundle.kernels.len()),
        ));
    };
    let storage = kernel.bindings.len() - 1;
    if dispatch.buffers.len() != storage {
        return Err(bundle_err(
            field("buffers"),
            format!(
                "has {} entries but kernels[{}] '{}' has {storage} storage bindings",
                dispatch.buffers.len(),
                dispatch.kernel,
                kernel.name
            ),
        ));
    }
    for (j, (&buffer, kind)) in dispatch.buffers.iter().zip(binding_kinds(kernel).skip(1)).enumerate() {
        let f = format!("dispatches[{i}].buffers[{j}]");
        if buffer as usize >= bundle.buffers.len() {
            return Err(bundle_err(f, format!("= {buffer} is out of range ({} buffers)", bundle.buffers.len())));
        }
        let writes = kind == Some(BindingKind::StorageReadWrite);
        if writes && buffer_kind(bundle, buffer as usize)? == BufferKind::Weights {
            return Err(bundle_err(f, format!("= {buffer} binds a Weights buffer read-write")));
        }
        // WebGPU tracks usage per buffer: read-only and read-write bindings
        // of one buffer in one dispatch conflict.
        let clash = dispatch.buffers.iter().zip(binding_kinds(kernel).skip(1)).any(|(&other, other_kind)| {
            other == buffer && (other_kind == Some(BindingKind::StorageReadWrite)) != writes
        });
        if clash {
            return Err(bundle_err(f, format!("= {buffer} is bound both read-only and read-write")));
        }
    }
    validate_windows(bundle, i, dispatch)?;
    if !dispatch.params_offset.is_multiple_of(PARAMS_ALIGN) {
        return Err(bundle_err(
            field("params_offset"),
            format!("= {} is not a multiple of {PARAMS_ALIGN}", dispatch.params_offset),
        ));
    }
    let params_end = u64::from(dispatch.params_offset) + u64::from(kernel.params_size);
    if params_end > bundle.params.len() as u64 {
        return Err(bundle_err(
            field("params_offset"),
            format!(
                "= {} plus params_size {} runs past params ({} bytes)",
                dispatch.params_offset,
                kernel.params_size,
                bundle.params.len()
            ),
        ));
    }
    let wg = &dispatch.workgroups;
    if wg.len() != 3 || wg.iter().any(|&n| n == 0 || n > MAX_WORKGROUPS_PER_DIM) {
        return Err(bundle_err(
            field("workgroups"),
            format!("= {} is not three counts in 1..={MAX_WORKGROUPS_PER_DIM}", fmt_shape(wg)),
        ));
    }
    Ok(())
}

/// Windows, when present: one per storage binding, aligned, inside the buffer.
fn validate_windows(bundle: &Bundle, i: usize, dispatch: &Dispatch) -> Result<()> {
    if dispatch.windows.is_empty() {
        return Ok(());
    }
    if dispatch.windows.len() != dispatch.buffers.len() {
        return Err(bundle_err(
            format!("dispatches[{i}].windows"),
            format!("has {} entries for {} storage bindings", dispatch.windows.len(), dispatch.buffers.len()),
        ));
    }
    for (j, (w, &buffer)) in dispatch.windows.iter().zip(&dispatch.buffers).enumerate() {
        let size = bundle.buffers[buffer as usize].size;
        let fits = w.size > 0 && w.size.is_multiple_of(4) && w.offset.saturating_add(w.size) <= size;
        if !fits || !w.offset.is_multiple_of(WINDOW_ALIGN) {
            return Err(bundle_err(
                format!("dispatches[{i}].windows[{j}]"),
                format!("= {}+{} is empty, unaligned or runs past buffers[{buffer}] ({size} bytes)", w.offset, w.size),
            ));
        }
    }
    Ok(())
}

fn validate_io(bundle: &Bundle, list: &str, tensors: &[IoTensor]) -> Result<()> {
    for (i, t) in tensors.iter().enumerate() {
        let field = |f: &str| format!("{list}[{i}].{f}");
        if t.name.is_empty() || tensors[..i].iter().any(|o| o.name == t.name) {
            return Err(bundle_err(field("name"), format!("= '{}' is empty or repeated", t.name)));
        }
        let Some(dtype) = DType::from_onnx(t.dtype) else {
            return Err(bundle_err(field("dtype"), format!("= {} is not a supported ONNX type", t.dtype)));
        };
        if PhysType::try_from(t.phys) != Ok(dtype.phys()) {
            return Err(bundle_err(
                field("phys"),
                format!("= {} does not match dtype {dtype} (needs {:?})", t.phys, dtype.phys()),
            ));
        }
        let Some(buffer) = bundle.buffers.get(t.buffer as usize) else {
            return Err(bundle_err(
                field("buffer"),
                format!("= {} is out of range ({} buffers)", t.buffer, bundle.buffers.len()),
            ));
        };
        // Inputs are written by the runtime: never into the weights.
        if list == "inputs" && buffer_kind(bundle, t.buffer as usize)? != BufferKind::Arena {
            return Err(bundle_err(field("buffer"), format!("= {} is not an Arena buffer", t.buffer)));
        }
        if let Some(e) = &t.extent {
            validate_extent(bundle, &field("extent"), list, t, e)?;
        }
        let Some(size) = io_size(t) else {
            return Err(bundle_err(field("shape"), format!("= {} has too many elements", fmt_shape(&t.shape))));
        };
        if !t.offset.is_multiple_of(4) || t.offset.saturating_add(size) > buffer.size {
            return Err(bundle_err(
                field("offset"),
                format!(
                    "= {} with {size} bytes is unaligned or runs past buffers[{}] ({} bytes)",
                    t.offset, t.buffer, buffer.size
                ),
            ));
        }
    }
    Ok(())
}

/// Bytes of an IO tensor's physical copy (4 per element), or `None` on
/// overflow of u64 or usize.
pub(crate) fn io_size(t: &IoTensor) -> Option<u64> {
    let elems = t.shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d))?;
    let bytes = elems.checked_mul(4)?;
    usize::try_from(bytes).ok().map(|_| bytes)
}
