//! Checking a decoded bundle before anything touches the GPU.
//!
//! [`validate`] checks every index, size, offset, count and enum of the
//! header against the things it names, so the session can index without
//! further checks. Each failure is an [`Error::Bundle`] naming the field,
//! e.g. `dispatches[3].buffers[1]`. It runs in time linear in the header's
//! size (names are compared through hash sets, bindings through a sorted
//! list), so a crafted header cannot stall the load either.

use std::collections::HashSet;

use crate::bundle::{
    BindingKind, BufferKind, Bundle, COMPILER_VERSION_LEN, Dispatch, Extent, IoTensor, Kernel, Need, PARAMS_ALIGN,
    PhysType, WINDOW_ALIGN,
};
use crate::dtype::DType;
use crate::error::{Error, Result, bundle_err, fmt_shape};

/// WebGPU's limit on workgroups per dimension of one dispatch.
pub const MAX_WORKGROUPS_PER_DIM: u32 = 65535;
/// Most bindings a kernel may declare (params included); every GPU's
/// `max_storage_buffers_per_shader_stage` is far lower, and the session
/// checks the real limit.
pub const MAX_BINDINGS: usize = 256;
/// Largest params block a kernel may read: WebGPU's guaranteed
/// `max_uniform_buffer_binding_size`.
pub const MAX_PARAMS_SIZE: u32 = 64 << 10;
/// Longest entry point name: passthrough hands it to the driver as a C string.
const MAX_ENTRY_POINT_LEN: usize = 255;

/// Checks every index, size and enum in `bundle` so that the session can use
/// them without further checks. [`crate::format::parse`] has already checked
/// the framing and that the weights section holds `weights_size` bytes.
pub fn validate(bundle: &Bundle) -> Result<()> {
    validate_compiler_version(&bundle.compiler_version)?;
    validate_program(bundle)?;
    for (i, v) in bundle.variants.iter().enumerate() {
        validate_variant(bundle, v).map_err(|e| match e {
            Error::Bundle { field, problem } => bundle_err(format!("variants[{i}].{field}"), problem),
            e => e,
        })?;
    }
    Ok(())
}

/// A variant is a whole program over the same weights section with the
/// same inputs and outputs as the top level (their places may differ).
fn validate_variant(top: &Bundle, v: &Bundle) -> Result<()> {
    if !v.variants.is_empty() {
        return Err(bundle_err("variants", "is not empty (variants do not nest)"));
    }
    if v.weights_size != top.weights_size {
        return Err(bundle_err(
            "weights_size",
            format!("= {} differs from the top level's {}", v.weights_size, top.weights_size),
        ));
    }
    let same = |a: &[IoTensor], b: &[IoTensor]| {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.name == y.name && x.dtype == y.dtype && x.shape == y.shape)
    };
    if !same(&v.inputs, &top.inputs) || !same(&v.outputs, &top.outputs) || v.fixed_inputs != top.fixed_inputs {
        return Err(bundle_err("inputs", "and outputs differ from the top level's"));
    }
    validate_program(v)
}

fn validate_needs(bundle: &Bundle) -> Result<()> {
    match bundle.needs.iter().find(|&&n| Need::try_from(n).is_err()) {
        Some(n) => Err(bundle_err("needs", format!("has {n}, which is not a known device feature"))),
        None => Ok(()),
    }
}

/// One program (the top level or a variant): everything but the
/// compiler version and the variants.
fn validate_program(bundle: &Bundle) -> Result<()> {
    for i in 0..bundle.buffers.len() {
        validate_buffer(bundle, i)?;
    }
    for (i, kernel) in bundle.kernels.iter().enumerate() {
        validate_kernel(i, kernel)?;
    }
    for (i, dispatch) in bundle.dispatches.iter().enumerate() {
        validate_dispatch(bundle, i, dispatch)?;
    }
    validate_io(bundle, "inputs", &bundle.inputs)?;
    validate_io(bundle, "outputs", &bundle.outputs)?;
    validate_fixed_inputs(bundle)?;
    crate::dims::validate(bundle)?;
    validate_needs(bundle)
}

/// The same text as the preamble's field: printable ASCII, 1 to 16 bytes.
fn validate_compiler_version(v: &str) -> Result<()> {
    if v.is_empty() || v.len() > COMPILER_VERSION_LEN || !v.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bundle_err(
            "compiler_version",
            format!("= {v:?} is not 1 to {COMPILER_VERSION_LEN} printable ASCII characters"),
        ));
    }
    Ok(())
}

fn validate_buffer(bundle: &Bundle, i: usize) -> Result<()> {
    let buf = &bundle.buffers[i];
    let field = |f: &str| format!("buffers[{i}].{f}");
    let kind = buffer_kind(bundle, i)?;
    if buf.size == 0 || !buf.size.is_multiple_of(4) {
        return Err(bundle_err(field("size"), format!("= {} is not a positive multiple of 4", buf.size)));
    }
    match kind {
        BufferKind::Arena if buf.weights_offset != 0 => {
            Err(bundle_err(field("weights_offset"), format!("= {} is set on an Arena buffer", buf.weights_offset)))
        }
        BufferKind::Weights if buf.weights_offset.saturating_add(buf.size) > bundle.weights_size => Err(bundle_err(
            field("weights_offset"),
            format!(
                "= {} plus size {} runs past the weights section ({} bytes)",
                buf.weights_offset, buf.size, bundle.weights_size
            ),
        )),
        _ => Ok(()),
    }
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

/// Fixed inputs: unique names (also among the inputs), known dtypes,
/// values of the declared size.
fn validate_fixed_inputs(bundle: &Bundle) -> Result<()> {
    let mut names: HashSet<&str> = bundle.inputs.iter().map(|t| t.name.as_str()).collect();
    for (i, t) in bundle.fixed_inputs.iter().enumerate() {
        let field = |f: &str| format!("fixed_inputs[{i}].{f}");
        if t.name.is_empty() || !names.insert(&t.name) {
            return Err(bundle_err(field("name"), format!("= '{}' is empty or repeated", t.name)));
        }
        let Some(dtype) = DType::from_onnx(t.dtype) else {
            return Err(bundle_err(field("dtype"), format!("= {} is not a supported ONNX type", t.dtype)));
        };
        let Some(shape) = t.shape.iter().map(|&d| usize::try_from(d).ok()).collect::<Option<Vec<usize>>>() else {
            return Err(bundle_err(field("shape"), format!("= {} does not fit this machine", fmt_shape(&t.shape))));
        };
        // The same length rule as inputs given at run time; checked without
        // building the tensor, so an absurd shape allocates nothing.
        let expected = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).map(|n| dtype.byte_len(n));
        if expected != Some(t.value.len()) {
            let need = expected.map_or("more than this machine can address".to_string(), |n| n.to_string());
            return Err(bundle_err(
                field("value"),
                format!("has {} bytes, its dtype and shape {} need {need}", t.value.len(), fmt_shape(&t.shape)),
            ));
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

/// An entry point the driver can take: an identifier, so no NUL (wgpu
/// turns it into a C string and would panic on one).
fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    first_ok && name.len() <= MAX_ENTRY_POINT_LEN && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn validate_kernel(i: usize, kernel: &Kernel) -> Result<()> {
    let field = |f: &str| format!("kernels[{i}].{f}");
    if !is_identifier(&kernel.entry_point) {
        return Err(bundle_err(field("entry_point"), format!("= {:?} is not an identifier", kernel.entry_point)));
    }
    if !kernel.msl_entry_point.is_empty() && !is_identifier(&kernel.msl_entry_point) {
        return Err(bundle_err(
            field("msl_entry_point"),
            format!("= {:?} is not an identifier", kernel.msl_entry_point),
        ));
    }
    if kernel.workgroup_size.len() != 3 || kernel.workgroup_size.contains(&0) {
        return Err(bundle_err(
            field("workgroup_size"),
            format!("= {} is not three sizes of at least 1", fmt_shape(&kernel.workgroup_size)),
        ));
    }
    if kernel.params_size > MAX_PARAMS_SIZE {
        return Err(bundle_err(
            field("params_size"),
            format!("= {} is more than {MAX_PARAMS_SIZE} bytes", kernel.params_size),
        ));
    }
    validate_shaders(i, kernel)?;
    validate_bindings(i, kernel)
}

fn validate_shaders(i: usize, kernel: &Kernel) -> Result<()> {
    let field = |f: &str| format!("kernels[{i}].{f}");
    if kernel.spirv.is_empty() && kernel.wgsl.is_empty() {
        return Err(bundle_err(field("spirv"), "and wgsl are both empty"));
    }
    if !kernel.spirv.len().is_multiple_of(4) {
        return Err(bundle_err(field("spirv"), format!("has {} bytes, not whole 32-bit words", kernel.spirv.len())));
    }
    if !kernel.spirv.is_empty() {
        check_spirv_framing(&kernel.spirv).map_err(|problem| bundle_err(field("spirv"), problem))?;
    }
    Ok(())
}

/// Binding 0 is the params block and only binding 0 is; at most
/// [`MAX_BINDINGS`].
fn validate_bindings(i: usize, kernel: &Kernel) -> Result<()> {
    if kernel.bindings.is_empty() || kernel.bindings.len() > MAX_BINDINGS {
        return Err(bundle_err(
            format!("kernels[{i}].bindings"),
            format!("has {} entries, not 1 to {MAX_BINDINGS} (binding 0 must be Params)", kernel.bindings.len()),
        ));
    }
    for (b, kind) in binding_kinds(kernel).enumerate() {
        let ok = match kind {
            Some(BindingKind::Params) => b == 0,
            Some(BindingKind::Dims) => b != 0 && b + 1 == kernel.bindings.len(),
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
    let storage = binding_kinds(kernel)
        .filter(|k| matches!(k, Some(BindingKind::StorageRead | BindingKind::StorageReadWrite)))
        .count();
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
    validate_dispatch_buffers(bundle, i, dispatch, kernel)?;
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

/// Each bound buffer exists, Weights are never bound read-write, and no
/// buffer is bound both read-only and read-write (WebGPU tracks usage per
/// buffer, so the two bindings would conflict).
fn validate_dispatch_buffers(bundle: &Bundle, i: usize, dispatch: &Dispatch, kernel: &Kernel) -> Result<()> {
    let mut uses: Vec<(u32, bool, usize)> = Vec::with_capacity(dispatch.buffers.len());
    for (j, (&buffer, kind)) in dispatch.buffers.iter().zip(binding_kinds(kernel).skip(1)).enumerate() {
        let f = format!("dispatches[{i}].buffers[{j}]");
        if buffer as usize >= bundle.buffers.len() {
            return Err(bundle_err(f, format!("= {buffer} is out of range ({} buffers)", bundle.buffers.len())));
        }
        let writes = kind == Some(BindingKind::StorageReadWrite);
        if writes && buffer_kind(bundle, buffer as usize)? == BufferKind::Weights {
            return Err(bundle_err(f, format!("= {buffer} binds a Weights buffer read-write")));
        }
        uses.push((buffer, writes, j));
    }
    uses.sort_unstable();
    if let Some(w) = uses.windows(2).find(|w| w[0].0 == w[1].0 && w[0].1 != w[1].1) {
        let (buffer, j) = (w[0].0, w[0].2.min(w[1].2));
        return Err(bundle_err(
            format!("dispatches[{i}].buffers[{j}]"),
            format!("= {buffer} is bound both read-only and read-write"),
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
    let mut names = HashSet::with_capacity(tensors.len());
    for (i, t) in tensors.iter().enumerate() {
        let field = |f: &str| format!("{list}[{i}].{f}");
        if t.name.is_empty() || !names.insert(t.name.as_str()) {
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
