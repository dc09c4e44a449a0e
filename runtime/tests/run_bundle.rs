//! End-to-end tests of the runtime on a hand-built bundle.
//!
//! The bundle computes `sum = a + b + w` (w a constant from the weights
//! section, through an intermediate `tmp`) and `idx2 = idx * 2` on int64
//! data, with three kernels following the compiler's conventions. Its
//! SPIR-V comes from naga, as the compiler's does. The same bytes then serve
//! the error tests: each corrupts one thing and checks that the message
//! names it.

use std::sync::OnceLock;

use drift_runtime::bundle::{
    BindingKind, Buffer, BufferKind, Bundle, Dispatch, FixedInput, IoTensor, Kernel, PARAMS_ALIGN, PhysType,
};
use drift_runtime::format::frame;
use drift_runtime::{DType, Gpu, GpuOptions, HostTensor, Model, Session, ShaderPath, Trust, write_bundle};

const N: usize = 100;

/// The arena: a, b, tmp, sum (N f32 each), idx, idx2 (3 words each).
const A: u32 = 0;
const B: u32 = N as u32;
const TMP: u32 = 2 * N as u32;
const SUM: u32 = 3 * N as u32;
const IDX: u32 = 4 * N as u32;
const IDX2: u32 = IDX + 3;
const ARENA_WORDS: u32 = IDX2 + 3;
/// Where the constant starts in the weights section (after 16 junk bytes).
const W_OFFSET: u64 = 16;

/// Element offsets arrive in `p.o[0]`: x, y = sources, z = destination,
/// w = element count.
const HEADER: &str = "
struct Params { o: array<vec4<u32>, 1> }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> arena: array<u32>;
";

const ADD_ARENA: &str = "
@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let o = p.o[0];
    let i = gid.x;
    if (i >= o.w) { return; }
    arena[o.z + i] = bitcast<u32>(bitcast<f32>(arena[o.x + i]) + bitcast<f32>(arena[o.y + i]));
}";

const ADD_WEIGHTS: &str = "
@group(0) @binding(2) var<storage, read> w: array<u32>;
@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let o = p.o[0];
    let i = gid.x;
    if (i >= o.w) { return; }
    arena[o.z + i] = bitcast<u32>(bitcast<f32>(arena[o.x + i]) + bitcast<f32>(w[o.y + i]));
}";

const DOUBLE_I32: &str = "
@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let o = p.o[0];
    let i = gid.x;
    if (i >= o.w) { return; }
    arena[o.z + i] = bitcast<u32>(bitcast<i32>(arena[o.x + i]) * 2);
}";

/// The constant added by the second kernel.
fn weight(i: usize) -> f32 {
    0.25 * i as f32 - 7.0
}

/// SPIR-V bytes of a WGSL kernel, made the way the compiler makes them.
fn spirv(wgsl: &str) -> Vec<u8> {
    let module = naga::front::wgsl::parse_str(wgsl).expect("test kernel parses");
    let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), Default::default())
        .validate(&module)
        .expect("test kernel validates");
    let pipeline =
        naga::back::spv::PipelineOptions { shader_stage: naga::ShaderStage::Compute, entry_point: "main".into() };
    let words = naga::back::spv::write_vec(&module, &info, &Default::default(), Some(&pipeline))
        .expect("test kernel writes as SPIR-V");
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn kernel(name: &str, body: &str, bindings: &[BindingKind]) -> Kernel {
    let wgsl = format!("{HEADER}{body}");
    Kernel {
        name: name.into(),
        entry_point: "main".into(),
        workgroup_size: vec![64, 1, 1],
        bindings: bindings.iter().map(|&b| b as i32).collect(),
        params_size: 16,
        spirv: spirv(&wgsl),
        wgsl,
        msl: String::new(),
        msl_entry_point: String::new(),
    }
}

fn dispatch(kernel: u32, buffers: Vec<u32>, block: u32, n: u32, label: &str) -> Dispatch {
    Dispatch {
        kernel,
        buffers,
        params_offset: block * PARAMS_ALIGN,
        workgroups: vec![n.div_ceil(64), 1, 1],
        label: label.into(),
        ..Default::default()
    }
}

fn io(name: &str, dtype: DType, shape: &[u64], word: u32) -> IoTensor {
    IoTensor {
        name: name.into(),
        dtype: dtype.onnx(),
        shape: shape.to_vec(),
        buffer: 0,
        offset: u64::from(word) * 4,
        phys: dtype.phys() as i32,
        extent: None,
        dims: vec![],
    }
}

/// The test bundle and its weights section.
fn test_bundle() -> (Bundle, Vec<u8>) {
    use BindingKind::*;
    let kernels = vec![
        kernel("add_arena", ADD_ARENA, &[Params, StorageReadWrite]),
        kernel("add_weights", ADD_WEIGHTS, &[Params, StorageReadWrite, StorageRead]),
        kernel("double_i32", DOUBLE_I32, &[Params, StorageReadWrite]),
    ];
    let n = N as u32;
    let blocks = [[A, B, TMP, n], [TMP, 0, SUM, n], [IDX, 0, IDX2, 3]];
    let mut params = vec![0u8; blocks.len() * PARAMS_ALIGN as usize];
    for (block, words) in blocks.iter().enumerate() {
        for (k, w) in words.iter().enumerate() {
            let at = block * PARAMS_ALIGN as usize + 4 * k;
            params[at..at + 4].copy_from_slice(&w.to_le_bytes());
        }
    }
    let mut weights = vec![0xAB; W_OFFSET as usize];
    weights.extend((0..N).flat_map(|i| weight(i).to_le_bytes()));
    let bundle = Bundle {
        compiler_version: "test".into(),
        model_name: "add".into(),
        inputs: vec![
            io("a", DType::F32, &[4, 25], A),
            io("b", DType::F32, &[4, 25], B),
            io("idx", DType::I64, &[3], IDX),
        ],
        outputs: vec![
            io("sum", DType::F32, &[4, 25], SUM),
            io("tmp", DType::F32, &[4, 25], TMP),
            io("idx2", DType::I64, &[3], IDX2),
        ],
        buffers: vec![
            Buffer { kind: BufferKind::Arena as i32, size: u64::from(ARENA_WORDS) * 4, weights_offset: 0 },
            Buffer { kind: BufferKind::Weights as i32, size: N as u64 * 4, weights_offset: W_OFFSET },
        ],
        kernels,
        dispatches: vec![
            dispatch(0, vec![0], 0, n, "tmp = a + b"),
            dispatch(1, vec![0, 1], 1, n, "sum = tmp + w"),
            dispatch(2, vec![0], 2, 3, "idx2 = idx * 2"),
        ],
        params,
        weights_size: weights.len() as u64,
        fixed_inputs: vec![FixedInput {
            name: "axes".into(),
            dtype: DType::I64.onnx(),
            shape: vec![2],
            value: [0i64, -1].iter().flat_map(|v| v.to_le_bytes()).collect(),
        }],
        ..Default::default()
    };
    (bundle, weights)
}

fn test_bytes() -> Vec<u8> {
    let (bundle, weights) = test_bundle();
    write_bundle(&bundle, &weights)
}

/// One GPU per shader path, shared by the tests (opening one is slow).
fn gpu(force_wgsl: bool) -> &'static Gpu {
    static PASSTHROUGH: OnceLock<Gpu> = OnceLock::new();
    static WGSL: OnceLock<Gpu> = OnceLock::new();
    let cell = if force_wgsl { &WGSL } else { &PASSTHROUGH };
    cell.get_or_init(|| {
        let options = GpuOptions { backend: None, force_wgsl };
        Gpu::with_options(&options).expect("a GPU (lavapipe in CI) is available")
    })
}

/// Runs the model with inputs derived from `seed` and checks every output.
fn run_and_check(session: &mut Session, seed: f32) {
    let a: Vec<f32> = (0..N).map(|i| seed * i as f32).collect();
    let b: Vec<f32> = (0..N).map(|i| 1.0 / (i as f32 + seed)).collect();
    let idx = [-5, 0, i64::from(i32::MAX / 2)];
    let (a_t, b_t) = (HostTensor::from_f32(vec![4, 25], &a), HostTensor::from_f32(vec![4, 25], &b));
    let idx_t = HostTensor::from_i64(vec![3], &idx);
    let out = session.run(&[("idx", &idx_t), ("b", &b_t), ("a", &a_t)]).expect("run succeeds");
    // A fixed input may be passed, with its compile-time value.
    let axes = HostTensor::from_i64(vec![2], &[0, -1]);
    session.run(&[("idx", &idx_t), ("b", &b_t), ("a", &a_t), ("axes", &axes)]).expect("fixed input matches");

    let names: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["sum", "tmp", "idx2"], "outputs come in bundle order");
    let (sum, tmp, idx2) = (&out[0].1, &out[1].1, &out[2].1);
    assert_eq!((sum.dtype, sum.shape.as_slice()), (DType::F32, &[4, 25][..]));
    for i in 0..N {
        let t = a[i] + b[i];
        assert_eq!(tmp.to_f32_vec()[i], t, "tmp[{i}]");
        assert_eq!(sum.to_f32_vec()[i], t + weight(i), "sum[{i}]");
    }
    let doubled: Vec<i64> = idx.iter().map(|v| v * 2).collect();
    assert_eq!(idx2, &HostTensor::from_i64(vec![3], &doubled));
}

#[test]
fn runs_on_the_passthrough_path_from_a_mapped_file() {
    let gpu = gpu(false);
    let info = gpu.info();
    eprintln!("running on {info}");
    // Vulkan (lavapipe here) must take the SPIR-V passthrough path.
    if info.backend == "vulkan" {
        assert_eq!(info.shader_path, ShaderPath::SpirvPassthrough, "{info}");
    }
    let path = std::env::temp_dir().join(format!("drift-runtime-test-{}.drift", std::process::id()));
    std::fs::write(&path, test_bytes()).expect("temp file writes");
    let model = Model::load_trusted(&path);
    std::fs::remove_file(&path).expect("temp file removes");
    let model = model.expect("bundle loads");
    assert_eq!(model.trust(), Trust::Trusted);
    assert_eq!(model.inputs()[2].dtype, DType::I64);
    assert_eq!(model.outputs()[0].shape, [4, 25]);
    let mut session = Session::new(gpu, &model).expect("session builds");
    assert_eq!(session.shader_path(), gpu.shader_path(), "a trusted model takes the GPU's preferred path");
    // Twice: a second run must reuse everything and see new inputs.
    run_and_check(&mut session, 1.5);
    run_and_check(&mut session, -3.0);
}

#[test]
fn runs_on_the_wgsl_path() {
    let gpu = gpu(true);
    assert_eq!(gpu.info().shader_path, ShaderPath::Wgsl);
    let model = Model::from_bytes(test_bytes()).expect("bundle loads");
    let mut session = Session::new(gpu, &model).expect("session builds");
    run_and_check(&mut session, 0.5);
}

/// `load`'s error message for `bytes`.
fn load_error(bytes: Vec<u8>) -> String {
    match Model::from_bytes(bytes) {
        Ok(_) => panic!("bundle should have been rejected"),
        Err(e) => e.to_string(),
    }
}

/// The error message for the test bundle after `change`.
fn invalid(change: impl FnOnce(&mut Bundle)) -> String {
    let (mut bundle, weights) = test_bundle();
    change(&mut bundle);
    load_error(write_bundle(&bundle, &weights))
}

/// Rewrites the preamble's CRC after a test changed a preamble field, so
/// that the field's own check is what fails.
fn reseal_preamble(bytes: &mut [u8]) {
    let crc = crc32fast::hash(&bytes[..60]);
    bytes[60..64].copy_from_slice(&crc.to_le_bytes());
}

/// `bytes` with the u64 at `at` set to `value` and the preamble resealed.
fn with_u64(mut bytes: Vec<u8>, at: usize, value: u64) -> Vec<u8> {
    bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
    reseal_preamble(&mut bytes);
    bytes
}

#[test]
fn rejects_bad_framing() {
    let mut bytes = test_bytes();
    bytes[0] = b'X';
    assert_eq!(load_error(bytes), "not a drift bundle (bad magic)");
    assert_eq!(load_error(b"GIF89a".to_vec()), "not a drift bundle (bad magic)");

    // Newer: the message names the compiler that wrote it (offsets 16..32
    // keep their meaning across versions) and what this runtime reads.
    let mut bytes = test_bytes();
    bytes[8..12].copy_from_slice(&7u32.to_le_bytes());
    let msg = load_error(bytes);
    assert!(msg.starts_with("bundle format version 7 is newer than this runtime supports"), "{msg}");
    assert!(msg.contains("reads format version 2 only"), "{msg}");
    assert!(msg.contains("written by drift-compiler test"), "{msg}");
    // Older: version 1 had a 24-byte preamble and no checksums.
    let mut bytes = test_bytes();
    bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
    let msg = load_error(bytes);
    assert!(msg.starts_with("bundle format version 1 is older than this runtime supports"), "{msg}");
    assert!(msg.contains("recompile the model"), "{msg}");

    // Oversized lengths, with a valid preamble checksum: never allocated.
    let msg = load_error(with_u64(test_bytes(), 32, u64::MAX));
    assert!(msg.starts_with("truncated bundle: the header section ends at byte 18446744073709551615"), "{msg}");
    let msg = load_error(with_u64(test_bytes(), 40, 1 << 60));
    assert!(msg.starts_with("truncated bundle: the weights section ends at byte"), "{msg}");
    let msg = load_error(with_u64(test_bytes(), 32, 1 << 40));
    assert!(msg.starts_with("truncated bundle: the header section ends at byte 1099511627840"), "{msg}");

    let mut bytes = test_bytes();
    bytes.push(0);
    assert!(load_error(bytes).contains("preamble.weights_len"));
}

#[test]
fn checksums_cover_every_section() {
    let bytes = test_bytes();
    let f = frame(&bytes).expect("the test bundle frames");
    let flip = |at: usize| {
        let mut b = bytes.clone();
        b[at] ^= 0x10;
        load_error(b)
    };
    assert!(flip(20).starts_with("bundle preamble checksum mismatch"), "{}", flip(20));
    assert!(flip(f.header.start + 5).starts_with("bundle header checksum mismatch"));
    assert!(flip(f.weights.end - 1).starts_with("bundle weights checksum mismatch"));
    assert!(flip(f.header.end).starts_with("bundle field padding byte at file offset"));
    // A preamble field changed and resealed is checked on its own.
    let mut b = bytes.clone();
    b[16..32].copy_from_slice(b"0.1.0\0\0\0\0\0\0\0\0\0\x01\0");
    reseal_preamble(&mut b);
    assert!(load_error(b).starts_with("bundle field preamble.compiler_version"));
    let mut b = bytes.clone();
    b[16..21].copy_from_slice(b"9.9.9");
    reseal_preamble(&mut b);
    assert!(load_error(b).starts_with("bundle field compiler_version = \"test\" differs from the preamble's"));
}

/// Every single-bit flip anywhere in the file is rejected: CRC-32 detects
/// all single-bit errors, and the magic and version have their own checks.
#[test]
fn every_bit_flip_is_rejected() {
    let bytes = test_bytes();
    for at in 0..bytes.len() {
        for bit in 0..8 {
            let mut b = bytes.clone();
            b[at] ^= 1 << bit;
            let msg = load_error(b);
            assert!(!msg.is_empty(), "byte {at} bit {bit}");
        }
    }
}

#[test]
fn load_reports_file_problems() {
    let missing = std::env::temp_dir().join("drift-runtime-test-missing.drift");
    let err = Model::load(&missing).err().expect("missing file fails");
    assert!(err.to_string().starts_with("cannot read bundle '"), "{err}");
    assert!(err.to_string().contains("drift-runtime-test-missing.drift"), "{err}");

    let empty = std::env::temp_dir().join(format!("drift-runtime-empty-{}.drift", std::process::id()));
    std::fs::write(&empty, b"").expect("temp file writes");
    let err = Model::load(&empty).err().map(|e| e.to_string());
    std::fs::remove_file(&empty).expect("temp file removes");
    assert_eq!(err.as_deref(), Some("truncated bundle: file has 0 bytes, shorter than the fixed file header"));
}

/// Cut at every length, which includes every section boundary (inside the
/// magic, at the version, the preamble's end, the header's end, inside the
/// padding, at the weights' start and one byte before the end): the
/// message says truncated and names the section that is cut.
#[test]
fn rejects_every_truncation() {
    let bytes = test_bytes();
    let f = frame(&bytes).expect("the test bundle frames");
    for len in 0..bytes.len() {
        let msg = load_error(bytes[..len].to_vec());
        assert!(msg.starts_with("truncated bundle: "), "at {len} bytes: {msg}");
        let section = match len {
            _ if len < 64 => "shorter than the fixed file header",
            _ if len < f.header.end => "the header section",
            _ => "the weights section",
        };
        assert!(msg.contains(section), "at {len} bytes: {msg}");
        if len >= 64 {
            assert!(msg.ends_with(&format!("file has {len}")), "at {len} bytes: {msg}");
        }
    }
}

/// Repeated fields are counted before decoding: 70,000 empty entries (2
/// bytes each on the wire, ~100 bytes each decoded) are refused.
#[test]
fn too_many_entries_are_refused_before_decoding() {
    let (mut bundle, weights) = test_bundle();
    bundle.inputs = vec![IoTensor::default(); 70_000];
    assert_eq!(load_error(write_bundle(&bundle, &weights)), "bundle field inputs has more than 65536 entries");
    let (mut bundle, weights) = test_bundle();
    bundle.dispatches = vec![Dispatch::default(); (1 << 20) + 1];
    assert_eq!(load_error(write_bundle(&bundle, &weights)), "bundle field dispatches has more than 1048576 entries");
    // Variants (kernel sets) are counted too, and so are their own fields.
    let (mut bundle, weights) = test_bundle();
    bundle.variants = vec![Bundle::default(); 65];
    assert_eq!(load_error(write_bundle(&bundle, &weights)), "bundle field variants has more than 64 entries");
    let (mut bundle, weights) = test_bundle();
    let variant = Bundle { kernels: vec![Kernel::default(); 70_000], ..Bundle::default() };
    bundle.variants = vec![Bundle::default(), variant];
    assert_eq!(
        load_error(write_bundle(&bundle, &weights)),
        "bundle field variants[1].kernels has more than 65536 entries"
    );
}

#[test]
fn rejects_inconsistent_fields() {
    type Change = Box<dyn FnOnce(&mut Bundle)>;
    let cases: Vec<(&str, Change)> = vec![
        ("dispatches[1].kernel = 17 is out of range (3 kernels)", Box::new(|b| b.dispatches[1].kernel = 17)),
        ("fixed_inputs[0].name = 'a' is empty or repeated", Box::new(|b| b.fixed_inputs[0].name = "a".into())),
        ("fixed_inputs[0].dtype = 99 is not a supported ONNX type", Box::new(|b| b.fixed_inputs[0].dtype = 99)),
        (
            "fixed_inputs[0].value has 16 bytes, its dtype and shape [3] need 24",
            Box::new(|b| b.fixed_inputs[0].shape = vec![3]),
        ),
        (
            "fixed_inputs[0].value has 16 bytes, its dtype and shape [4294967296,4294967296,4294967296] need more",
            Box::new(|b| b.fixed_inputs[0].shape = vec![1 << 32; 3]),
        ),
        ("preamble.compiler_version = \"\\0", Box::new(|b| b.compiler_version.clear())),
        (
            "compiler_version = \"0.1.0-with-a-long-tag\" differs from the preamble's \"0.1.0-with-a-lon\"",
            Box::new(|b| b.compiler_version = "0.1.0-with-a-long-tag".into()),
        ),
        (
            "kernels[0].entry_point = \"ma\\0in\" is not an identifier",
            Box::new(|b| b.kernels[0].entry_point = "ma\0in".into()),
        ),
        ("kernels[0].entry_point = \"\" is not an identifier", Box::new(|b| b.kernels[0].entry_point.clear())),
        (
            "kernels[1].msl_entry_point = \"1st\" is not an identifier",
            Box::new(|b| b.kernels[1].msl_entry_point = "1st".into()),
        ),
        ("kernels[2].params_size = 65540 is more than 65536 bytes", Box::new(|b| b.kernels[2].params_size = 65540)),
        (
            "kernels[0].bindings has 257 entries, not 1 to 256",
            Box::new(|b| b.kernels[0].bindings.resize(257, BindingKind::StorageRead as i32)),
        ),
        ("kernels[0].bindings has 0 entries", Box::new(|b| b.kernels[0].bindings.clear())),
        ("buffers[0].weights_offset = 8 is set on an Arena buffer", Box::new(|b| b.buffers[0].weights_offset = 8)),
        ("buffers[1].kind = 7 is not a buffer kind", Box::new(|b| b.buffers[1].kind = 7)),
        (
            "outputs[0].extent.axis = 2 is out of range for rank 2",
            Box::new(|b| b.outputs[0].extent = Some(extent(2, 0, 0))),
        ),
        (
            "outputs[0].extent.buffer = 1 is not an Arena buffer",
            Box::new(|b| b.outputs[0].extent = Some(extent(0, 1, 0))),
        ),
        ("outputs[0].extent.offset = 6 is unaligned", Box::new(|b| b.outputs[0].extent = Some(extent(0, 0, 6)))),
        ("inputs[0].extent is only allowed on outputs", Box::new(|b| b.inputs[0].extent = Some(extent(0, 0, 0)))),
        ("dispatches[0].buffers[0] = 5 is out of range (2 buffers)", Box::new(|b| b.dispatches[0].buffers[0] = 5)),
        (
            "dispatches[0].buffers has 2 entries but kernels[0] 'add_arena' has 1 storage bindings",
            Box::new(|b| b.dispatches[0].buffers.push(1)),
        ),
        (
            "dispatches[0].buffers[0] = 1 binds a Weights buffer read-write",
            Box::new(|b| b.dispatches[0].buffers[0] = 1),
        ),
        (
            "dispatches[1].buffers[0] = 0 is bound both read-only and read-write",
            Box::new(|b| b.dispatches[1].buffers[1] = 0),
        ),
        (
            "dispatches[2].params_offset = 100 is not a multiple of 256",
            Box::new(|b| b.dispatches[2].params_offset = 100),
        ),
        (
            "dispatches[2].params_offset = 768 plus params_size 16 runs past params (768 bytes)",
            Box::new(|b| b.dispatches[2].params_offset = 768),
        ),
        ("dispatches[0].workgroups = [2,0,1]", Box::new(|b| b.dispatches[0].workgroups[1] = 0)),
        ("dispatches[0].workgroups = [70000,1,1]", Box::new(|b| b.dispatches[0].workgroups[0] = 70000)),
        ("kernels[1].bindings[0] = 2 is not allowed", Box::new(|b| b.kernels[1].bindings.swap(0, 1))),
        (
            "kernels[0].workgroup_size = [64,1]",
            Box::new(|b| {
                b.kernels[0].workgroup_size.pop();
            }),
        ),
        (
            "kernels[2].spirv and wgsl are both empty",
            Box::new(|b| {
                b.kernels[2].spirv.clear();
                b.kernels[2].wgsl.clear();
            }),
        ),
        ("buffers[0].size = 6 is not a positive multiple of 4", Box::new(|b| b.buffers[0].size = 6)),
        (
            "buffers[1].weights_offset = 32 plus size 400 runs past the weights section (416 bytes)",
            Box::new(|b| b.buffers[1].weights_offset = 32),
        ),
        (
            "inputs[0].offset = 0 with 10000 bytes is unaligned or runs past buffers[0] (1624 bytes)",
            Box::new(|b| b.inputs[0].shape = vec![100, 25]),
        ),
        (
            "inputs[1].offset = 2000 with 400 bytes is unaligned or runs past buffers[0]",
            Box::new(|b| b.inputs[1].offset = 2000),
        ),
        ("inputs[2].buffer = 1 is not an Arena buffer", Box::new(|b| b.inputs[2].buffer = 1)),
        ("outputs[1].name = 'sum' is empty or repeated", Box::new(|b| b.outputs[1].name = "sum".into())),
        ("outputs[0].dtype = 8 is not a supported ONNX type", Box::new(|b| b.outputs[0].dtype = 8)),
        (
            "outputs[2].phys = 0 does not match dtype int64 (needs I32)",
            Box::new(|b| b.outputs[2].phys = PhysType::F32 as i32),
        ),
        (
            "outputs[0].shape = [4294967296,4294967296] has too many elements",
            Box::new(|b| b.outputs[0].shape = vec![1 << 32, 1 << 32]),
        ),
    ];
    for (expected, change) in cases {
        let msg = invalid(change);
        assert!(msg.starts_with(&format!("bundle field {expected}")), "expected '{expected}', got '{msg}'");
    }
}

fn extent(axis: u32, buffer: u32, offset: u64) -> drift_runtime::bundle::Extent {
    drift_runtime::bundle::Extent { axis, buffer, offset }
}

/// The message of `session.run(inputs)`'s error.
fn run_error(inputs: &[(&str, &HostTensor)]) -> String {
    let model = Model::from_bytes(test_bytes()).expect("bundle loads");
    let mut session = Session::new(gpu(false), &model).expect("session builds");
    match session.run(inputs) {
        Ok(_) => panic!("run should have failed"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn rejects_bad_inputs() {
    let x = HostTensor::from_f32(vec![4, 25], &[1.0; N]);
    let idx = HostTensor::from_i64(vec![3], &[1, 2, 3]);
    assert_eq!(run_error(&[("a", &x), ("b", &x), ("foo", &x)]), "unknown input 'foo' (inputs: a, b, idx)");
    assert_eq!(run_error(&[("a", &x), ("idx", &idx)]), "missing input 'b'");
    assert_eq!(run_error(&[("a", &x), ("a", &x)]), "input 'a' is given more than once");
    let small = HostTensor::from_f32(vec![2, 2], &[0.0; 4]);
    assert_eq!(run_error(&[("a", &x), ("b", &small), ("idx", &idx)]), "input 'b': expected shape [4,25], got [2,2]");
    let ints = HostTensor::from_i64(vec![4, 25], &[0; N]);
    assert_eq!(run_error(&[("a", &ints), ("b", &x), ("idx", &idx)]), "input 'a': expected dtype float32, got int64");
    let ragged = HostTensor { data: vec![0; 7], ..x.clone() };
    assert_eq!(
        run_error(&[("a", &ragged), ("b", &x), ("idx", &idx)]),
        "input 'a': data has 7 bytes, its dtype and shape need 400"
    );
    let axes = HostTensor::from_i64(vec![2], &[0, 1]);
    assert_eq!(
        run_error(&[("a", &x), ("b", &x), ("idx", &idx), ("axes", &axes)]),
        "input 'axes' was fixed at compile time to int64 [2] [0.0, -1.0], but int64 [2] [0.0, 1.0] was given; \
         recompile with that value"
    );
    let big = HostTensor::from_i64(vec![3], &[1, 3_000_000_000, 2]);
    assert_eq!(
        run_error(&[("a", &x), ("b", &x), ("idx", &big)]),
        "value 3000000000 of input 'idx' does not fit int32 on the GPU"
    );
}

#[test]
fn bad_shader_names_the_kernel() {
    let (mut bundle, weights) = test_bundle();
    bundle.kernels[1].wgsl = "fn main( {".into();
    let model = Model::from_bytes(write_bundle(&bundle, &weights)).expect("framing is valid");
    let err = Session::new(gpu(true), &model).err().expect("the shader does not compile");
    assert!(err.to_string().starts_with("kernels[1] 'add_weights' failed to build"), "{err}");
    // The device stays usable after the failure.
    let mut session = Session::new(gpu(true), &Model::from_bytes(test_bytes()).expect("loads")).expect("builds");
    run_and_check(&mut session, 2.0);
}

#[test]
fn empty_outputs_need_no_readback() {
    let (mut bundle, weights) = test_bundle();
    bundle.outputs = vec![io("nothing", DType::F16, &[0, 5], SUM)];
    let model = Model::from_bytes(write_bundle(&bundle, &weights)).expect("bundle loads");
    let mut session = Session::new(gpu(false), &model).expect("session builds");
    let x = HostTensor::from_f32(vec![4, 25], &[1.0; N]);
    let idx = HostTensor::from_i64(vec![3], &[1, 2, 3]);
    let out = session.run(&[("a", &x), ("b", &x), ("idx", &idx)]).expect("run succeeds");
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].1.shape.as_slice(), out[0].1.data.len()), (&[0, 5][..], 0));
}

#[test]
fn oversized_buffers_are_refused_before_allocation() {
    let (mut bundle, weights) = test_bundle();
    bundle.buffers[0].size = 1 << 40;
    let model = Model::from_bytes(write_bundle(&bundle, &weights)).expect("bundle loads");
    let err = Session::new(gpu(false), &model).err().expect("1 TiB does not fit");
    assert!(err.to_string().starts_with("this GPU cannot run the bundle: buffers[0] has 1099511627776 bytes"), "{err}");
}

#[test]
fn random_corruption_never_panics() {
    let bytes = test_bytes();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        // xorshift64: deterministic, no dependency.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..3000 {
        let mut corrupt = bytes.clone();
        for _ in 0..(next() % 4 + 1) {
            let at = (next() % corrupt.len() as u64) as usize;
            corrupt[at] = next() as u8;
        }
        // Errors are fine; panics are not. Loading must not touch the GPU.
        let _ = Model::from_bytes(corrupt);
    }
}

// ------------------------------------------------------------------ trust

#[test]
fn untrusted_models_run_their_wgsl_even_where_passthrough_exists() {
    let gpu = gpu(false);
    let model = Model::from_bytes(test_bytes()).expect("bundle loads");
    assert_eq!(model.trust(), Trust::Untrusted, "untrusted is the default");
    let mut session = Session::new(gpu, &model).expect("session builds");
    assert_eq!(session.shader_path(), ShaderPath::Wgsl);
    run_and_check(&mut session, 0.75);
}

#[test]
fn untrusted_models_need_wgsl() {
    let (mut bundle, weights) = test_bundle();
    bundle.kernels[2].wgsl.clear();
    let model = Model::from_bytes(write_bundle(&bundle, &weights)).expect("valid: the SPIR-V is there");
    let err = Session::new(gpu(false), &model).err().expect("an untrusted bundle needs WGSL").to_string();
    assert!(err.starts_with("bundle field kernels[2].wgsl is empty"), "{err}");
    // Trusted, on a GPU with passthrough, the SPIR-V serves.
    if gpu(false).shader_path() == ShaderPath::SpirvPassthrough {
        let mut session = Session::new(gpu(false), &model.with_trust(Trust::Trusted)).expect("session builds");
        assert_eq!(session.shader_path(), ShaderPath::SpirvPassthrough);
        run_and_check(&mut session, 1.0);
    }
}

/// A kernel that writes and reads millions of words past the end of its
/// 16-word buffer. Through the untrusted (WGSL) path wgpu's bounds checks
/// keep both inside the binding: the write is clamped to the last word or
/// dropped, the read clamped or zero, and the buffer next to it untouched.
/// (The same SPIR-V through passthrough would write wherever it points,
/// which is why passthrough needs a trusted bundle; it is not run here.)
const ESCAPE: &str = "
@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x != 0u) { return; }
    let o = p.o[0];
    arena[o.x + 1000000u] = 42u;
    arena[o.x] = arena[o.x + 2000000u] + 7u;
}";

fn escape_bundle() -> Bundle {
    let words = |n: u64| Buffer { kind: BufferKind::Arena as i32, size: n * 4, weights_offset: 0 };
    let out = |name: &str, buffer| IoTensor { buffer, ..io(name, DType::U32, &[16], 0) };
    Bundle {
        compiler_version: "test".into(),
        model_name: "escape".into(),
        outputs: vec![out("target", 0), out("neighbour", 1)],
        buffers: vec![words(16), words(16)],
        kernels: vec![kernel("escape", ESCAPE, &[BindingKind::Params, BindingKind::StorageReadWrite])],
        dispatches: vec![dispatch(0, vec![0], 0, 1, "escape")],
        params: vec![0; PARAMS_ALIGN as usize],
        ..Default::default()
    }
}

#[test]
fn untrusted_kernels_cannot_leave_their_buffers() {
    let model = Model::from_bytes(write_bundle(&escape_bundle(), &[])).expect("bundle loads");
    let mut session = Session::new(gpu(false), &model).expect("session builds");
    assert_eq!(session.shader_path(), ShaderPath::Wgsl);
    let out = session.run(&[]).expect("run succeeds");
    let words = |t: &HostTensor| -> Vec<u32> {
        t.data.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    };
    let (target, neighbour) = (words(&out[0].1), words(&out[1].1));
    assert_eq!(neighbour, [0; 16], "the other buffer is untouched");
    assert!([0, 42].contains(&target[15]), "the far write was clamped to the last word or dropped: {target:?}");
    assert!([7, 49].contains(&target[0]), "the far read was clamped or zero: {target:?}");
    assert_eq!(target[1..15], [0; 14], "nothing else was written: {target:?}");
}
