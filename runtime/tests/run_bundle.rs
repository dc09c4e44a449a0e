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
use drift_runtime::{DType, Gpu, GpuOptions, HostTensor, Model, Session, ShaderPath, write_bundle};

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
        windows: vec![],
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
        memory: None,
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
    let model = Model::load(&path);
    std::fs::remove_file(&path).expect("temp file removes");
    let model = model.expect("bundle loads");
    assert_eq!(model.inputs()[2].dtype, DType::I64);
    assert_eq!(model.outputs()[0].shape, [4, 25]);
    let mut session = Session::new(gpu, &model).expect("session builds");
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

#[test]
fn rejects_bad_framing() {
    let mut bytes = test_bytes();
    bytes[0] = b'X';
    assert_eq!(load_error(bytes), "not a drift bundle (bad magic)");
    assert_eq!(load_error(b"GIF89a".to_vec()), "not a drift bundle (bad magic)");

    let mut bytes = test_bytes();
    bytes[8..12].copy_from_slice(&7u32.to_le_bytes());
    assert_eq!(load_error(bytes), "bundle format version 7 is not supported (this runtime reads 1)");

    let mut bytes = test_bytes();
    bytes[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(load_error(bytes).starts_with("truncated bundle: header says 18446744073709551615 bytes"));

    let mut bytes = test_bytes();
    bytes.push(0);
    assert!(load_error(bytes).contains("weights_size"));
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

#[test]
fn rejects_every_truncation() {
    let bytes = test_bytes();
    let full = bytes.len();
    for len in 0..full {
        let msg = load_error(bytes[..len].to_vec());
        assert!(msg.starts_with("truncated bundle: "), "at {len} bytes: {msg}");
        if len >= 24 {
            assert!(msg.ends_with(&format!("file has {len}")), "at {len} bytes: {msg}");
        }
    }
}

#[test]
fn rejects_inconsistent_fields() {
    type Change = Box<dyn FnOnce(&mut Bundle)>;
    let cases: Vec<(&str, Change)> = vec![
        ("dispatches[1].kernel = 17 is out of range (3 kernels)", Box::new(|b| b.dispatches[1].kernel = 17)),
        ("fixed_inputs[0].name = 'a' is empty or repeated", Box::new(|b| b.fixed_inputs[0].name = "a".into())),
        ("fixed_inputs[0].dtype = 99 is not a supported ONNX type", Box::new(|b| b.fixed_inputs[0].dtype = 99)),
        (
            "fixed_inputs[0].value tensor: data has 16 bytes, its dtype and shape need 24",
            Box::new(|b| b.fixed_inputs[0].shape = vec![3]),
        ),
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
