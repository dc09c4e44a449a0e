//! Kernel text → validated shader modules. Wraps an op's WGSL body in the
//! prelude (parameter block, buffer bindings, typed accessors), validates it
//! with naga once, and writes WGSL, SPIR-V and MSL.
//!
//! Passthrough loads skip all driver-side checks, so everything is baked in
//! here: dense bindings 0..n-1 in group 0, no `arrayLength`, no override
//! constants, no reliance on zero-initialized workgroup memory.

use drift_ops::{Phys, Storage};
use naga::back::{msl, spv};
use naga::valid::{Capabilities, ValidationFlags, Validator};

/// Where a kernel argument lives and how the kernel may touch it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ArgBinding {
    pub name: String,
    pub phys: Phys,
    /// How the elements sit in the buffer; the argument's params offset
    /// counts elements of this storage.
    pub storage: Storage,
    /// Index of the storage binding (1-based: binding 0 is the parameters).
    pub binding: u32,
    pub writable: bool,
    /// Set when the tensor is larger than one binding: it spans consecutive
    /// windows of its buffer, bound at these bindings (the first is
    /// `binding`). Element indices are then relative to the first window.
    pub windows: Option<Windows>,
    /// Counters touched only atomically (`KernelArg::atomic`), through a
    /// binding of their buffer as `array<atomic<u32>>`.
    pub atomic: bool,
    /// How `ld4_<name>` reads four words (`KernelArg::wide`), if at all.
    pub quads: Quads,
}

/// How a wide argument's `ld4_<name>(i)` reads words `4i .. 4i + 3`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Quads {
    /// Not a wide argument: no `ld4_`.
    No,
    /// One load from this binding of the buffer as `array<vec4<u32>>`, or
    /// `array<vec4<f16>>` in the f16 activation arena (the tensor starts on
    /// a whole quad).
    Bound(u32),
    /// Four `ld_` loads (an unaligned, windowed or f16-weight tensor).
    Words,
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
    /// The buffer holds f16 activations (`--precision f16`): bound as
    /// `array<f16>`, its accessors convert to and from f32, so kernel
    /// bodies compute in f32 whatever the storage.
    pub half: bool,
    /// Bound as `array<atomic<u32>>` for atomic counters.
    pub atomic: bool,
    /// Bound as `array<vec4<u32>>` (`vec4<f16>` with `half`) for four
    /// elements a load.
    pub quads: bool,
}

/// The prelude for `args` over `storage` bindings (binding k+1 = storage[k]).
pub fn prelude(args: &[ArgBinding], storage: &[StorageBinding]) -> String {
    let vecs = args.len().div_ceil(4).max(1);
    let mut s = String::new();
    if storage.iter().any(|b| b.half) {
        s += "enable f16;\n";
    }
    s += &format!("struct Params {{ o: array<vec4<u32>, {vecs}> }}\n");
    s += "@group(0) @binding(0) var<uniform> p: Params;\n";
    for (k, b) in storage.iter().enumerate() {
        let access = if b.read_write { "read_write" } else { "read" };
        let elem = match b {
            StorageBinding { atomic: true, .. } => "atomic<u32>",
            StorageBinding { quads: true, half: true, .. } => "vec4<f16>",
            StorageBinding { quads: true, .. } => "vec4<u32>",
            StorageBinding { half: true, .. } => "f16",
            _ => "u32",
        };
        s += &format!("@group(0) @binding({}) var<storage, {access}> b{}: array<{elem}>;\n", k + 1, k + 1);
    }
    for (k, a) in args.iter().enumerate() {
        let off = format!("p.o[{}].{}", k / 4, ["x", "y", "z", "w"][k % 4]);
        let half = storage.get(a.binding as usize - 1).is_some_and(|s| s.half);
        s += &match &a.windows {
            _ if a.atomic => atomic_accessors(a, &off),
            Some(w) => windowed_accessors(a, w, &off),
            None => accessors(a, &off, half),
        };
        let quads_half = match a.quads {
            Quads::Bound(b) => storage.get(b as usize - 1).is_some_and(|s| s.half),
            _ => false,
        };
        s += &quad_accessor(a, &off, quads_half);
    }
    s
}

/// `ld4_<name>(i) -> vec4<u32>`, the 32-bit patterns of elements 4i to
/// 4i + 3 of a wide argument (nothing for others). A bound quad view is
/// indexed in quads (the element offset `off` is a multiple of four
/// there); `half` when it views f16 activations, widened to f32 as `ld_`
/// does.
fn quad_accessor(a: &ArgBinding, off: &str, half: bool) -> String {
    let name = &a.name;
    match a.quads {
        Quads::No => String::new(),
        Quads::Bound(b) if half => format!(
            "fn ld4_{name}(i: u32) -> vec4<u32> {{ return bitcast<vec4<u32>>(vec4<f32>(b{b}[({off} >> 2u) + i])); }}\n"
        ),
        Quads::Bound(b) => format!("fn ld4_{name}(i: u32) -> vec4<u32> {{ return b{b}[({off} >> 2u) + i]; }}\n"),
        Quads::Words => drift_ops::wgsl::quads_from_loads(name),
    }
}

/// The `dims` uniform that kernels of dynamic shapes read: the run's value
/// of each symbol (`dims.s0`, ...), at the binding after the storage ones.
pub fn dims_decl(binding: u32) -> String {
    let fields: Vec<String> = (0..drift_ops::dims::MAX_SYMS).map(|k| format!("s{k}: u32")).collect();
    format!("struct Dims {{ {} }}\n@group(0) @binding({binding}) var<uniform> dims: Dims;\n", fields.join(", "))
}

/// `ld_<name>` and, for writable word storage, `st_<name>` of one argument
/// whose element offset is the WGSL expression `off`; `half` when its
/// binding is an `array<f16>` (f16 activations).
fn accessors(a: &ArgBinding, off: &str, half: bool) -> String {
    let (t, b, name) = (a.phys.wgsl(), a.binding, &a.name);
    if half {
        let mut s = format!("fn ld_{name}(i: u32) -> f32 {{ return f32(b{b}[{off} + i]); }}\n");
        if a.writable {
            s += &format!("fn st_{name}(i: u32, v: f32) {{ b{b}[{off} + i] = f16(v); }}\n");
        }
        return s;
    }
    match a.storage {
        Storage::Word => {
            let load = match a.phys {
                Phys::U32 => format!("b{b}[{off} + i]"),
                _ => format!("bitcast<{t}>(b{b}[{off} + i])"),
            };
            let mut s = format!("fn ld_{name}(i: u32) -> {t} {{ return {load}; }}\n");
            if a.writable {
                let store = if a.phys == Phys::U32 { "v" } else { "bitcast<u32>(v)" };
                s += &format!("fn st_{name}(i: u32, v: {t}) {{ b{b}[{off} + i] = {store}; }}\n");
            }
            s
        }
        // Halves, two per word, element 2k in the low half. Read-only: a
        // store of one half would race with the thread storing the other,
        // so no st_ is generated and a kernel writing one fails to validate.
        Storage::F16 => format!(
            "fn ld_{name}(i: u32) -> f32 {{ let e = {off} + i; let h = unpack2x16float(b{b}[e >> 1u]); \
             return select(h.x, h.y, (e & 1u) != 0u); }}\n"
        ),
    }
}

/// `atomic_add_<name>(i, v) -> u32` (the old value) and
/// `atomic_store_<name>(i, v)` of a counters argument. Counters are a few
/// words and never span windows (the planner keeps a tensor that fits one
/// window inside it).
fn atomic_accessors(a: &ArgBinding, off: &str) -> String {
    let (b, name) = (a.binding, &a.name);
    format!(
        "fn atomic_add_{name}(i: u32, v: u32) -> u32 {{ return atomicAdd(&b{b}[{off} + i], v); }}\n\
         fn atomic_store_{name}(i: u32, v: u32) {{ atomicStore(&b{b}[{off} + i], v); }}\n"
    )
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
    // F16: `e` counts halves, the window and the word in it follow from e / 2.
    let f16 = a.storage == Storage::F16;
    let locate = match f16 {
        true => format!("let e = {off} + i; let g = e >> 1u; let r = g & {mask}u;"),
        false => format!("let g = {off} + i; let r = g & {mask}u;"),
    };
    let load = cases(&|b| format!("v = b{b}[r];"));
    let value = match (f16, a.phys) {
        (true, _) => "select(unpack2x16float(v).x, unpack2x16float(v).y, (e & 1u) != 0u)".to_string(),
        (false, Phys::U32) => "v".to_string(),
        (false, _) => format!("bitcast<{t}>(v)"),
    };
    let mut s = format!(
        "fn ld_{}(i: u32) -> {t} {{ {locate} var v: u32; switch (g >> {}u) {{{load} }} return {value}; }}\n",
        a.name, w.shift
    );
    if a.writable && !f16 {
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

/// WGSL requires `enable` directives before everything else, but kernel
/// bodies (which follow the prelude) may need some: moves them to the top,
/// once each.
pub fn hoist_enables(source: &str) -> String {
    let mut enables: Vec<&str> = vec![];
    let mut rest = String::with_capacity(source.len());
    for line in source.lines() {
        if line.starts_with("enable ") {
            if !enables.contains(&line) {
                enables.push(line);
            }
        } else {
            rest += line;
            rest += "\n";
        }
    }
    if enables.is_empty() {
        return source.to_string();
    }
    enables.join("\n") + "\n" + &rest
}

/// The validator capabilities a kernel's `enable` directives ask for.
fn capabilities(source: &str) -> Capabilities {
    // unpack2x16float (f16 weights and scales): every backend drift targets
    // has it; only GLES lacks it.
    let mut caps = Capabilities::SHADER_FLOAT16_IN_FLOAT32;
    if source.contains("enable f16;") {
        caps |= Capabilities::SHADER_FLOAT16;
    }
    if source.contains("enable wgpu_cooperative_matrix;") {
        caps |= Capabilities::COOPERATIVE_MATRIX;
    }
    caps
}

/// Validates `source` and writes it as WGSL, SPIR-V and MSL. Kernels using
/// cooperative matrices get no MSL (Metal has only 8x8 simdgroup matrices)
/// and, where naga cannot write them back, no WGSL: SPIR-V is their form.
pub fn compile_wgsl(source: &str) -> Result<Shaders, String> {
    let source = &hoist_enables(source);
    let module = naga::front::wgsl::parse_str(source).map_err(|e| e.emit_to_string(source))?;
    // unpack2x16float (f16 weights) is core on Vulkan, Metal and DX12.
    let caps = capabilities(source) | Capabilities::SHADER_FLOAT16_IN_FLOAT32;
    let info = Validator::new(ValidationFlags::all(), caps).validate(&module).map_err(|e| e.emit_to_string(source))?;
    let optional = caps.contains(Capabilities::COOPERATIVE_MATRIX);
    let wgsl = match naga::back::wgsl::write_string(&module, &info, naga::back::wgsl::WriterFlags::empty()) {
        Ok(w) => w,
        Err(_) if optional => String::new(),
        Err(e) => return Err(format!("WGSL writer: {e}")),
    };
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
    let (msl, msl_entry_point) = match msl::write_string(&module, &info, &msl_options, &pipeline) {
        Ok((msl, tinfo)) => {
            let entry = tinfo.entry_point_names.first().cloned().and_then(|r| r.ok()).unwrap_or_else(|| "main_".into());
            (msl, entry)
        }
        Err(_) if optional => (String::new(), String::new()),
        Err(e) => return Err(format!("MSL writer: {e}")),
    };
    Ok(Shaders { wgsl, spirv, msl, msl_entry_point })
}
