//! Tensors larger than one binding, end to end on the GPU.
//!
//! lavapipe (CI's GPU) binds at most 128 MiB of a buffer at once but allows
//! 2 GiB buffers; the compiler then binds the arena in 128 MiB windows and a
//! larger tensor is reached through several bindings (see `docs/memory.md`).
//! Each model here is built in code, fed inputs with a closed form, and its
//! outputs are checked against values computed here on the CPU, not by drift.
//!
//! The last two replay the fixtures with 4 KiB bindings and the edge cases
//! with 256-byte bindings, so their larger tensors and weights span windows:
//! the kernels of every op family then go through the windowed accessors,
//! checked against onnxruntime's outputs.

use drift_compiler::{Limits, Options};
use drift_runtime::{DType, Gpu, HostTensor, Model, Session};
use drift_tests::suite;
use onnx_protobuf::{
    AttributeProto, GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto,
    TypeProto, ValueInfoProto, attribute_proto, tensor_shape_proto, type_proto,
};
use std::path::Path;
use std::sync::{Mutex, OnceLock};

/// One GPU for all tests, used by one test at a time: each holds a few
/// hundred MiB of host memory (lavapipe's buffers live there too).
fn gpu() -> std::sync::MutexGuard<'static, Gpu> {
    static GPU: OnceLock<Mutex<Gpu>> = OnceLock::new();
    let gpu = GPU.get_or_init(|| Mutex::new(Gpu::new().expect("a GPU (CI uses lavapipe: mesa-vulkan-drivers)")));
    gpu.lock().unwrap_or_else(|e| e.into_inner())
}

const MIB: usize = 1 << 20;

// ------------------------------------------------------------ model building

fn value_info(name: &str, dims: &[usize]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|&d| tensor_shape_proto::Dimension {
            value: Some(tensor_shape_proto::dimension::Value::DimValue(d as i64)),
            ..Default::default()
        })
        .collect();
    let tensor = type_proto::Tensor {
        elem_type: TensorProto_FLOAT,
        shape: Some(TensorShapeProto { dim, ..Default::default() }).into(),
        ..Default::default()
    };
    ValueInfoProto {
        name: name.into(),
        type_: Some(TypeProto { value: Some(type_proto::Value::TensorType(tensor)), ..Default::default() }).into(),
        ..Default::default()
    }
}

#[allow(non_upper_case_globals)]
const TensorProto_FLOAT: i32 = 1;

fn node(op_type: &str, inputs: &[&str], output: &str, attrs: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        name: format!("{op_type}_{output}"),
        op_type: op_type.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        attribute: attrs,
        ..Default::default()
    }
}

fn int_attr(name: &str, v: i64) -> AttributeProto {
    AttributeProto { name: name.into(), i: v, type_: attribute_proto::AttributeType::INT.into(), ..Default::default() }
}

fn constant(name: &str, dims: &[usize], values: Vec<f32>) -> TensorProto {
    TensorProto {
        name: name.into(),
        data_type: TensorProto_FLOAT,
        dims: dims.iter().map(|&d| d as i64).collect(),
        float_data: values,
        ..Default::default()
    }
}

struct Graph {
    nodes: Vec<NodeProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    constants: Vec<TensorProto>,
}

fn model_bytes(g: Graph) -> Vec<u8> {
    let graph = GraphProto {
        name: "large".into(),
        node: g.nodes,
        input: g.inputs,
        output: g.outputs,
        initializer: g.constants,
        ..Default::default()
    };
    let model = ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 17, ..Default::default() }],
        graph: Some(graph).into(),
        ..Default::default()
    };
    model.write_to_bytes().expect("model serializes")
}

// ---------------------------------------------------------------- running

/// Compiles with the default limits (128 MiB bindings), checks that the
/// arena needed windows, runs, and returns the outputs.
fn compile_and_run(g: Graph, inputs: &[(&str, &HostTensor)]) -> Vec<(String, HostTensor)> {
    let bytes = model_bytes(g);
    let graph = drift_compiler::import::import_bytes(&bytes, Path::new("large.onnx"), Path::new(".")).expect("import");
    let opts = Options::default();
    let compiled = drift_compiler::compile_graph(graph, &opts).expect("compile");
    let bundle = &compiled.program.bundle;
    let arena = bundle.buffers[0].size;
    assert!(arena > opts.limits.max_binding_bytes, "the arena ({arena} bytes) should need several bindings");
    assert!(bundle.dispatches.iter().any(|d| d.windows.len() > 1), "some dispatch should bind several windows");
    let model = Model::from_bytes(compiled.to_bytes()).expect("load");
    let gpu = gpu();
    let mut session = Session::new(&gpu, &model).expect("session");
    session.run(inputs).expect("run")
}

fn f32_tensor(shape: &[usize], values: Vec<f32>) -> HostTensor {
    let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    HostTensor::new(DType::F32, shape.to_vec(), data).expect("a valid tensor")
}

fn f32_values(t: &HostTensor) -> Vec<f32> {
    assert_eq!(t.dtype, DType::F32);
    t.data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

/// A value per index that differs between nearby indices and between
/// windows (a window is 2^25 elements), in [-0.5, 0.5).
fn pattern(i: usize) -> f32 {
    ((i * 7919 + 13) % 10007) as f32 / 10007.0 - 0.5
}

/// Checks `got` against `want` element by element, naming the first miss.
fn assert_close(what: &str, got: &[f32], want: impl Fn(usize) -> f64, rtol: f64, atol: f64) {
    for (i, &g) in got.iter().enumerate() {
        let w = want(i);
        assert!(((g as f64) - w).abs() <= atol + rtol * w.abs(), "{what}[{i}] = {g}, expected {w}");
    }
}

// ------------------------------------------------------------------ tests

/// y = Relu(x + 0.5) · 2 over a 150 MiB vector: the chain runs in place
/// over two windows of the arena.
#[test]
fn elementwise_chain_over_150_mib() {
    let n = 150 * MIB / 4;
    let g = Graph {
        nodes: vec![
            node("Add", &["x", "half"], "a", vec![]),
            node("Relu", &["a"], "r", vec![]),
            node("Mul", &["r", "two"], "y", vec![]),
        ],
        inputs: vec![value_info("x", &[n])],
        outputs: vec![value_info("y", &[n])],
        constants: vec![constant("half", &[1], vec![0.5]), constant("two", &[1], vec![2.0])],
    };
    let x = f32_tensor(&[n], (0..n).map(pattern).collect());
    let out = compile_and_run(g, &[("x", &x)]);
    let y = f32_values(&out[0].1);
    assert_eq!(y.len(), n);
    // Exact: the GPU rounds each f32 operation as the CPU does.
    assert_close("y", &y, |i| f64::from((pattern(i) + 0.5).max(0.0) * 2.0), 0.0, 0.0);
}

/// An arena past the largest buffer is a compile error that says so.
#[test]
fn an_arena_past_the_largest_buffer_is_a_clear_error() {
    let n = 150 * MIB / 4;
    let g = Graph {
        nodes: vec![node("Relu", &["x"], "y", vec![])],
        inputs: vec![value_info("x", &[n])],
        outputs: vec![value_info("y", &[n])],
        constants: vec![],
    };
    let bytes = model_bytes(g);
    let graph = drift_compiler::import::import_bytes(&bytes, Path::new("large.onnx"), Path::new(".")).expect("import");
    let opts =
        Options { limits: Limits { max_buffer_bytes: 100 * MIB as u64, ..Limits::default() }, ..Options::default() };
    let err = drift_compiler::compile_graph(graph, &opts).err().expect("the arena cannot fit").to_string();
    assert!(err.contains("arena of 157286400 bytes") && err.contains("104857600"), "{err}");
}

/// Concat along axis 1 of two 80 MiB matrices into a 160 MiB one: every
/// output row interleaves both inputs, across window boundaries.
#[test]
fn concat_into_160_mib() {
    let (rows, cols) = (40 * 1024, 512);
    let g = Graph {
        nodes: vec![node("Concat", &["a", "b"], "y", vec![int_attr("axis", 1)])],
        inputs: vec![value_info("a", &[rows, cols]), value_info("b", &[rows, cols])],
        outputs: vec![value_info("y", &[rows, 2 * cols])],
        constants: vec![],
    };
    let a = f32_tensor(&[rows, cols], (0..rows * cols).map(pattern).collect());
    let b = f32_tensor(&[rows, cols], (0..rows * cols).map(|i| pattern(i + 12345) + 10.0).collect());
    let out = compile_and_run(g, &[("a", &a), ("b", &b)]);
    let y = f32_values(&out[0].1);
    assert_eq!(y.len(), rows * 2 * cols);
    let want = |i: usize| {
        let (r, c) = (i / (2 * cols), i % (2 * cols));
        f64::from(if c < cols { pattern(r * cols + c) } else { pattern(r * cols + c - cols + 12345) + 10.0 })
    };
    assert_close("y", &y, want, 0.0, 0.0);
}

/// MatMul of a 150 MiB activation [614400, 64] by a constant [64, 8].
#[test]
fn matmul_reading_150_mib() {
    let (m, k, n) = (150 * MIB / 4 / 64, 64, 8);
    let w = |kk: usize, j: usize| ((kk * 3 + j * 5) % 11) as f32 / 11.0 - 0.5;
    let g = Graph {
        nodes: vec![node("MatMul", &["a", "w"], "y", vec![])],
        inputs: vec![value_info("a", &[m, k])],
        outputs: vec![value_info("y", &[m, n])],
        constants: vec![constant("w", &[k, n], (0..k * n).map(|i| w(i / n, i % n)).collect())],
    };
    let a = f32_tensor(&[m, k], (0..m * k).map(pattern).collect());
    let out = compile_and_run(g, &[("a", &a)]);
    let y = f32_values(&out[0].1);
    assert_eq!(y.len(), m * n);
    let want = |i: usize| {
        let (row, j) = (i / n, i % n);
        (0..k).map(|kk| f64::from(pattern(row * k + kk)) * f64::from(w(kk, j))).sum::<f64>()
    };
    assert_close("y", &y, want, 1e-4, 1e-5);
}

/// ReduceSum over the rows of a 160 MiB matrix.
#[test]
fn reduce_sum_over_160_mib() {
    let (rows, cols) = (40 * 1024, 1024);
    let g = Graph {
        nodes: vec![node("ReduceSum", &["x", "axes"], "y", vec![int_attr("keepdims", 0)])],
        inputs: vec![value_info("x", &[rows, cols])],
        outputs: vec![value_info("y", &[rows])],
        constants: vec![TensorProto {
            name: "axes".into(),
            data_type: 7, // int64
            dims: vec![1],
            int64_data: vec![1],
            ..Default::default()
        }],
    };
    let x = f32_tensor(&[rows, cols], (0..rows * cols).map(pattern).collect());
    let out = compile_and_run(g, &[("x", &x)]);
    let y = f32_values(&out[0].1);
    assert_eq!(y.len(), rows);
    let want = |r: usize| (0..cols).map(|c| f64::from(pattern(r * cols + c))).sum::<f64>();
    assert_close("y", &y, want, 1e-4, 1e-4);
}

/// Runs `cases` compiled for bindings of `bytes`; returns the failures and
/// how many cases bound some tensor through several windows. A case with
/// an input larger than all the bindings a kernel may have must be refused
/// by the session with the binding-limit error instead.
fn run_with_bindings(cases: &[drift_tests::Case], bytes: u64) -> (Vec<String>, usize) {
    let opts = Options { limits: Limits { max_binding_bytes: bytes, ..Limits::default() }, ..Options::default() };
    let gpu = gpu();
    let mut failures = vec![];
    let mut windowed = 0;
    let most_bindings = u64::from(gpu.device().limits().max_storage_buffers_per_shader_stage);
    for case in cases {
        let (outcome, _) = drift_tests::run_case_with(&gpu, case, &opts);
        // An input larger than every binding a kernel may have together
        // cannot be windowed: the right outcome is the session's refusal.
        let unbindable = case.inputs.iter().any(|(_, t)| t.data.len() as u64 > most_bindings * bytes);
        let refused = outcome.message().contains("storage bindings, the GPU allows");
        if unbindable != refused || (!unbindable && !outcome.passed()) {
            failures.push(format!("{}: [{}] {}", case.name, outcome.class(), outcome.message()));
        }
        windowed += usize::from(spans_windows(case, &opts));
    }
    (failures, windowed)
}

/// Whether some dispatch binds one buffer through several windows.
fn spans_windows(case: &drift_tests::Case, opts: &Options) -> bool {
    let mut opts = opts.clone();
    for (name, t) in &case.inputs {
        opts.input_shapes.insert(name.clone(), t.shape.clone());
    }
    let Ok(compiled) = drift_compiler::compile_file(&case.model, &opts) else { return false };
    compiled
        .program
        .bundle
        .dispatches
        .iter()
        .any(|d| (1..d.buffers.len()).any(|j| d.buffers[j..].contains(&d.buffers[j - 1])))
}

/// The fixtures with 4 KiB bindings: their activations and several weights
/// span windows, through convolutions, pooling, matmuls, normalizations.
#[test]
fn fixtures_with_4_kib_bindings() {
    let dirs = suite::case_dirs(&suite::repo_root().join("fixtures")).unwrap_or_default();
    let cases: Vec<_> = dirs
        .iter()
        .filter(|d| d.join("model.onnx").exists())
        .map(|d| drift_tests::load_fixture(d).expect("fixture data"))
        .collect();
    let (failures, windowed) = run_with_bindings(&cases, 4096);
    assert!(failures.is_empty(), "{} fixture(s) fail with 4 KiB bindings:\n{}", failures.len(), failures.join("\n"));
    assert!(windowed >= 3, "only {windowed} fixtures span windows");
}

/// The edge cases of every op family with 256-byte bindings (64 elements):
/// the larger ones (about a fifth) span windows.
#[test]
fn edge_cases_with_256_byte_bindings() {
    let mut cases = vec![];
    for family in suite::case_dirs(&suite::repo_root().join("tests/edge")).unwrap_or_default() {
        for dir in suite::case_dirs(&family).unwrap_or_default() {
            cases.push(drift_tests::load_onnx_case(&dir).expect("edge case data"));
        }
    }
    assert!(cases.len() > 100, "expected the edge cases, found {}", cases.len());
    let (failures, windowed) = run_with_bindings(&cases, 256);
    assert!(
        failures.is_empty(),
        "{} edge case(s) fail with 256-byte bindings:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(windowed >= 30, "only {windowed} of {} edge cases span windows", cases.len());
}
