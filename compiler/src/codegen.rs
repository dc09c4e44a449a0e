//! Kernel text → validated shader modules. Wraps an op's WGSL body in the
//! prelude (parameter block, buffer bindings, typed accessors), validates it
//! with naga once, and writes WGSL, SPIR-V and MSL.
//!
//! Passthrough loads skip all driver-side checks, so everything is baked in
//! here: dense bindings 0..n-1 in group 0, no `arrayLength`, no override
//! constants, no reliance on zero-initialized workgroup memory.

use drift_ops::Phys;
use naga::back::{msl, spv};
use naga::valid::{Capabilities, ValidationFlags, Validator};

/// Where a kernel argument lives and how the kernel may touch it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ArgBinding {
    pub name: String,
    pub phys: Phys,
    /// Index of the storage binding (1-based: binding 0 is the parameters).
    pub binding: u32,
    pub writable: bool,
    /// Set when the tensor is larger than one binding: it spans consecutive
    /// windows of its buffer, bound at these bindings (the first is
    /// `binding`). Element indices are then relative to the first window.
    pub windows: Option<Windows>,
}

/// The windows one argument spans.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Windows {
    pub bindings: Vec<u32>,
    /// log2 of the window size in 32-bit words.
    pub shift: u32,
}

/// A storage binding of the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StorageBinding {
    pub read_write: bool,
}

/// The prelude for `args` over `storage` bindings (binding k+1 = storage[k]).
pub fn prelude(args: &[ArgBinding], storage: &[StorageBinding]) -> String {
    let vecs = args.len().div_ceil(4).max(1);
    let mut s = format!("struct Params {{ o: array<vec4<u32>, {vecs}> }}\n");
    s += "@group(0) @binding(0) var<uniform> p: Params;\n";
    for (k, b) in storage.iter().enumerate() {
        let access = if b.read_write { "read_write" } else { "read" };
        s += &format!("@group(0) @binding({}) var<storage, {access}> b{}: array<u32>;\n", k + 1, k + 1);
    }
    for (k, a) in args.iter().enumerate() {
        let off = format!("p.o[{}].{}", k / 4, ["x", "y", "z", "w"][k % 4]);
        if let Some(w) = &a.windows {
            s += &windowed_accessors(a, w, &off);
            continue;
        }
        let (t, b) = (a.phys.wgsl(), a.binding);
        let load =
            if a.phys == Phys::U32 { format!("b{b}[{off} + i]") } else { format!("bitcast<{t}>(b{b}[{off} + i])") };
        s += &format!("fn ld_{}(i: u32) -> {t} {{ return {load}; }}\n", a.name);
        if a.writable {
            let store = if a.phys == Phys::U32 { "v".to_string() } else { "bitcast<u32>(v)".to_string() };
            s += &format!("fn st_{}(i: u32, v: {t}) {{ b{b}[{off} + i] = {store}; }}\n", a.name);
        }
    }
    s
}

/// Accessors of an argument spanning several windows: the element's word
/// index picks the window (a switch over the bindings) and the word in it.
/// Only tensors larger than one binding pay for this.
fn windowed_accessors(a: &ArgBinding, w: &Windows, off: &str) -> String {
    let t = a.phys.wgsl();
    let mask = (1u64 << w.shift) - 1;
    let cases = |stmt: &dyn Fn(u32) -> String| {
        let mut s = String::new();
        for (k, b) in w.bindings.iter().enumerate() {
            let label = if k + 1 == w.bindings.len() { "default".to_string() } else { format!("case {k}u") };
            s += &format!(" {label}: {{ {} }}", stmt(*b));
        }
        s
    };
    let locate = format!("let g = {off} + i; let r = g & {mask}u;");
    let load = cases(&|b| format!("v = b{b}[r];"));
    let value = if a.phys == Phys::U32 { "v".to_string() } else { format!("bitcast<{t}>(v)") };
    let mut s = format!(
        "fn ld_{}(i: u32) -> {t} {{ {locate} var v: u32; switch (g >> {}u) {{{load} }} return {value}; }}\n",
        a.name, w.shift
    );
    if a.writable {
        let word = if a.phys == Phys::U32 { "v".to_string() } else { "bitcast<u32>(v)".to_string() };
        let store = cases(&|b| format!("b{b}[r] = u;"));
        s += &format!(
            "fn st_{}(i: u32, v: {t}) {{ {locate} let u = {word}; switch (g >> {}u) {{{store} }} }}\n",
            a.name, w.shift
        );
    }
    s
}

/// One kernel in every language.
#[derive(Clone, Debug)]
pub struct Shaders {
    pub wgsl: String,
    pub spirv: Vec<u32>,
    pub msl: String,
    pub msl_entry_point: String,
}

/// Validates `source` and writes it as WGSL, SPIR-V and MSL.
pub fn compile_wgsl(source: &str) -> Result<Shaders, String> {
    let module = naga::front::wgsl::parse_str(source).map_err(|e| e.emit_to_string(source))?;
    let info = Validator::new(ValidationFlags::all(), Capabilities::empty())
        .validate(&module)
        .map_err(|e| e.emit_to_string(source))?;
    let wgsl = naga::back::wgsl::write_string(&module, &info, naga::back::wgsl::WriterFlags::empty())
        .map_err(|e| format!("WGSL writer: {e}"))?;
    let spv_options = spv::Options {
        lang_version: (1, 3),
        // Kernels never read workgroup memory before writing it, and guard
        // their own indices; the driver gets the SPIR-V as is.
        zero_initialize_workgroup_memory: spv::ZeroInitializeWorkgroupMemoryMode::None,
        force_loop_bounding: false,
        ..spv::Options::default()
    };
    let spirv = spv::write_vec(&module, &info, &spv_options, None).map_err(|e| format!("SPIR-V writer: {e}"))?;
    let msl_options = msl::Options {
        lang_version: (2, 1),
        // Slots follow binding order, which is how wgpu's Metal backend
        // assigns buffer indices for a single bind group.
        fake_missing_bindings: true,
        zero_initialize_workgroup_memory: false,
        force_loop_bounding: false,
        ..msl::Options::default()
    };
    let pipeline = msl::PipelineOptions {
        entry_point: Some((naga::ShaderStage::Compute, "main".to_string())),
        ..msl::PipelineOptions::default()
    };
    let (msl, tinfo) =
        msl::write_string(&module, &info, &msl_options, &pipeline).map_err(|e| format!("MSL writer: {e}"))?;
    let msl_entry_point =
        tinfo.entry_point_names.first().cloned().and_then(|r| r.ok()).unwrap_or_else(|| "main_".into());
    Ok(Shaders { wgsl, spirv, msl, msl_entry_point })
}
