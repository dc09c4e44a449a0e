//! Bad inputs to the `drift` command line: broken or unsupported models,
//! wrong run-time inputs and damaged bundles. Every case must end with a
//! non-zero exit, no panic, and a message on stderr that names the file,
//! node, tensor or input at fault. One happy path checks the CLI end to end.
//!
//! The tests run the `drift` binary of this workspace, built with the same
//! profile as this test (it is built here when missing).

use onnx_protobuf::tensor_shape_proto::{Dimension, dimension};
use onnx_protobuf::{
    GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto,
    ValueInfoProto, type_proto,
};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

// ---------------------------------------------------------------- harness

/// The workspace root (this crate lives in `<root>/tests`).
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent")
}

fn fixture(rel: &str) -> PathBuf {
    root().join("fixtures").join(rel)
}

/// `target/<profile>/drift`, next to this test's `deps/` folder. Cargo does
/// not build another package's binary for a test, so this runs `cargo build`
/// with the test's profile first: a no-op when the binary is fresh, and it
/// keeps a stale binary from being tested. Set `DRIFT_TEST_NO_BUILD` to use
/// whatever binary is there.
fn drift_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe.parent().and_then(Path::parent).expect("test executable lies in target/<profile>/deps");
        let bin = profile_dir.join(format!("drift{}", std::env::consts::EXE_SUFFIX));
        if std::env::var_os("DRIFT_TEST_NO_BUILD").is_none() || !bin.exists() {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.current_dir(root()).args(["build", "--quiet", "-p", "drift-compiler", "--bin", "drift"]);
            if !cfg!(debug_assertions) {
                cmd.arg("--release");
            }
            let status = cmd.status().expect("cargo runs");
            assert!(status.success(), "cargo build -p drift-compiler failed");
        }
        assert!(bin.exists(), "{} is missing after the build", bin.display());
        bin
    })
}

/// Runs `drift` with `args`.
fn drift<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new(drift_bin()).args(args).output().expect("drift starts")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts a clean failure (exit status 1, no panic) whose stderr holds
/// every string of `needles`; returns stderr.
#[track_caller]
fn assert_fails(out: &Output, needles: &[&str]) -> String {
    let err = stderr(out);
    assert!(
        !out.status.success(),
        "drift succeeded where it should fail\nstdout:\n{}\nstderr:\n{err}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "drift did not exit with status 1 (killed by a signal or aborted?)\nstderr:\n{err}"
    );
    assert!(!err.contains("panicked"), "drift panicked:\n{err}");
    for needle in needles {
        assert!(err.contains(needle), "stderr lacks '{needle}':\n{err}");
    }
    err
}

/// Asserts success; returns stdout.
#[track_caller]
fn assert_succeeds(out: &Output) -> String {
    assert!(
        out.status.success(),
        "drift failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        stderr(out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A fresh folder under the system temp dir, removed on drop unless the
/// test failed (so its files can be looked at).
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("drift-bad-inputs-{}-{n}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, bytes).expect("write temp file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Compiles `model` into `dir`/`name`, which must succeed.
fn compile_ok(model: &Path, dir: &TempDir, name: &str) -> PathBuf {
    let bundle = dir.path(name);
    let out = drift(["compile".as_ref(), model.as_os_str(), "-o".as_ref(), bundle.as_os_str()]);
    assert_succeeds(&out);
    bundle
}

/// `drift compile <model> -o <dir>/out.drift <extra...>`.
fn compile(model: &Path, dir: &TempDir, extra: &[&str]) -> Output {
    let bundle = dir.path("out.drift");
    let mut args: Vec<&OsStr> = vec!["compile".as_ref(), model.as_os_str(), "-o".as_ref(), bundle.as_os_str()];
    args.extend(extra.iter().map(|s| OsStr::new(*s)));
    drift(args)
}

// ------------------------------------------------------- building models

const FLOAT: i32 = 1;
const INT64: i32 = 7;

enum D {
    N(i64),
    P(&'static str),
}

fn value_info(name: &str, elem_type: i32, dims: &[D]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                D::N(n) => dimension::Value::DimValue(*n),
                D::P(p) => dimension::Value::DimParam(p.to_string()),
            }),
            ..Default::default()
        })
        .collect();
    let tensor = type_proto::Tensor {
        elem_type,
        shape: Some(TensorShapeProto { dim, ..Default::default() }).into(),
        ..Default::default()
    };
    ValueInfoProto {
        name: name.into(),
        type_: Some(TypeProto { value: Some(type_proto::Value::TensorType(tensor)), ..Default::default() }).into(),
        ..Default::default()
    }
}

/// An output whose type the compiler infers.
fn output(name: &str) -> ValueInfoProto {
    ValueInfoProto { name: name.into(), ..Default::default() }
}

fn node(name: &str, op_type: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        name: name.into(),
        op_type: op_type.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn tensor(name: &str, data_type: i32, dims: &[i64]) -> TensorProto {
    TensorProto { name: name.into(), data_type, dims: dims.to_vec(), ..Default::default() }
}

/// A serialized opset-17 model.
fn model_bytes(
    nodes: Vec<NodeProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    initializers: Vec<TensorProto>,
) -> Vec<u8> {
    let graph = GraphProto {
        name: "bad".into(),
        node: nodes,
        input: inputs,
        output: outputs,
        initializer: initializers,
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

// ------------------------------------------------------------- .npy files

/// A version 1.0 `.npy` file as numpy (and `drift_compiler::npy::write`)
/// lays it out: magic, version, header length, a dict header padded with
/// spaces and a newline to a multiple of 64, then the raw data.
fn npy_bytes(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(data);
    out
}

fn npy_f32(shape: &[usize], values: &[f32]) -> Vec<u8> {
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    npy_bytes("<f4", shape, &data)
}

// ------------------------------------------------------------ happy path

#[test]
fn mlp_compiles_runs_and_matches_the_reference() {
    let dir = TempDir::new("happy");
    let bundle = compile_ok(&fixture("mlp/model.onnx"), &dir, "mlp.drift");
    let out_dir = dir.path("out");
    let input = format!("x={}", fixture("mlp/inputs/x.npy").display());
    let out = drift([
        "run".as_ref(),
        bundle.as_os_str(),
        "--input".as_ref(),
        OsStr::new(&input),
        "--output-dir".as_ref(),
        out_dir.as_os_str(),
    ]);
    assert_succeeds(&out);

    let got = drift_compiler::npy::read(&out_dir.join("y.npy")).expect("y.npy is written");
    let want = drift_compiler::npy::read(&fixture("mlp/outputs/y.npy")).expect("reference");
    assert_eq!(got.dtype, want.dtype);
    assert_eq!(got.shape, want.shape);
    let (got, want) = (got.to_f64_vec(), want.to_f64_vec());
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!((g - w).abs() <= 1e-5 + 1e-3 * w.abs(), "y[{i}] = {g}, reference {w}");
    }

    let text = assert_succeeds(&drift(["inspect".as_ref(), bundle.as_os_str()]));
    for needle in ["dispatches", "kernels", "SPIR-V", "lower bound", "naive"] {
        assert!(text.contains(needle), "inspect output lacks '{needle}':\n{text}");
    }

    let json = assert_succeeds(&drift(["inspect".as_ref(), bundle.as_os_str(), "--json".as_ref()]));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}:\n{json}"));
    let bytes = |key: &str| v["memory"][key].as_u64().unwrap_or_else(|| panic!("memory.{key} missing:\n{json}"));
    let (arena, lower, naive) = (bytes("arena_bytes"), bytes("lower_bound_bytes"), bytes("naive_bytes"));
    // The MLP's weights: 64·128 + 128 + 128·64 + 64 + 64·10 + 10 floats.
    assert!(bytes("weights_bytes") >= 4 * (64 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10), "{json}");
    assert!(lower <= arena && arena as f64 <= 1.05 * lower as f64 && arena < naive, "{json}");
    assert!(
        v["dispatches"].as_u64().is_some_and(|d| d >= 3) && v["kernels"].as_u64().is_some_and(|k| k >= 1),
        "{json}"
    );
}

/// Untrusted (the default) runs WGSL; --trusted takes the passthrough path
/// where the GPU has one (lavapipe: Vulkan SPIR-V).
#[test]
fn run_is_untrusted_unless_told_otherwise() {
    let dir = TempDir::new("trust");
    let bundle = compile_ok(&fixture("mlp/model.onnx"), &dir, "mlp.drift");
    let input = format!("x={}", fixture("mlp/inputs/x.npy").display());
    let run = |extra: &[&str]| {
        let mut args: Vec<&OsStr> = vec!["run".as_ref(), bundle.as_os_str(), "--input".as_ref(), OsStr::new(&input)];
        args.extend(extra.iter().map(OsStr::new));
        drift(args)
    };
    let out = run(&[]);
    let text = assert_succeeds(&out);
    assert!(text.contains("shaders: wgsl"), "{text}");
    let trusted = assert_succeeds(&run(&["--trusted"]));
    if stderr(&out).contains("untrusted bundle") {
        // The GPU has a passthrough path, and only --trusted takes it.
        assert!(trusted.contains("passthrough"), "{trusted}");
    }
}

#[test]
fn f16_weights_compile_run_and_stay_close() {
    let dir = TempDir::new("f16");
    let model = fixture("mlp/model.onnx");
    let f32 = compile_ok(&model, &dir, "f32.drift");
    let out = drift([
        "compile".as_ref(),
        model.as_os_str(),
        "-o".as_ref(),
        dir.path("f16.drift").as_os_str(),
        "--weights".as_ref(),
        "f16".as_ref(),
    ]);
    assert_succeeds(&out);
    let (a, b) =
        (std::fs::metadata(&f32).expect("f32").len(), std::fs::metadata(dir.path("f16.drift")).expect("f16").len());
    assert!(b < a, "f16 bundle {b} bytes, f32 {a}");
    let out_dir = dir.path("out");
    let input = format!("x={}", fixture("mlp/inputs/x.npy").display());
    let f16 = dir.path("f16.drift");
    assert_succeeds(&drift([
        "run".as_ref(),
        f16.as_os_str(),
        "--input".as_ref(),
        OsStr::new(&input),
        "--output-dir".as_ref(),
        out_dir.as_os_str(),
    ]));
    let got = drift_compiler::npy::read(&out_dir.join("y.npy")).expect("y.npy").to_f64_vec();
    let want = drift_compiler::npy::read(&fixture("mlp/outputs/y.npy")).expect("reference").to_f64_vec();
    // 8 f16 unit roundoffs of the output scale, as tests/f16_weights.rs explains.
    let scale = want.iter().fold(0f64, |m, w| m.max(w.abs()));
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!((g - w).abs() <= 8.0 / 2048.0 * scale, "y[{i}] = {g}, reference {w}");
    }
    let bad = drift([
        "compile".as_ref(),
        model.as_os_str(),
        "-o".as_ref(),
        dir.path("x.drift").as_os_str(),
        "--weights".as_ref(),
        "f8".as_ref(),
    ]);
    let err = stderr(&bad);
    assert!(!bad.status.success() && err.contains("'f8' is not a weight format"), "{err}");
}

// ------------------------------------------------------- unreadable models

#[test]
fn a_text_file_is_not_an_onnx_model() {
    let dir = TempDir::new("text");
    let model = dir.write("notes.onnx", b"these are not the weights you are looking for\n");
    let out = compile(&model, &dir, &[]);
    assert_fails(&out, &["not a valid ONNX model", "notes.onnx"]);
}

#[test]
fn a_missing_or_empty_model_file_is_reported() {
    let dir = TempDir::new("missing-model");
    let out = compile(&dir.path("nowhere.onnx"), &dir, &[]);
    assert_fails(&out, &["cannot read", "nowhere.onnx"]);
    let empty = dir.write("empty.onnx", b"");
    let out = compile(&empty, &dir, &[]);
    assert_fails(&out, &["not a valid ONNX model", "empty.onnx"]);
}

#[test]
fn a_truncated_protobuf_is_not_an_onnx_model() {
    let dir = TempDir::new("truncated-onnx");
    let bytes = std::fs::read(fixture("mlp/model.onnx")).expect("fixture");
    let model = dir.write("half.onnx", &bytes[..bytes.len() / 2]);
    let out = compile(&model, &dir, &[]);
    assert_fails(&out, &["not a valid ONNX model", "half.onnx"]);
}

#[test]
fn missing_external_data_names_the_file() {
    let dir = TempDir::new("external");
    std::fs::copy(fixture("mlp_external/model.onnx"), dir.path("model.onnx")).expect("copy model");
    let out = compile(&dir.path("model.onnx"), &dir, &[]);
    assert_fails(&out, &["external data", "weights.bin"]);

    // Too short a file is as bad as none.
    dir.write("weights.bin", &[0; 16]);
    let out = compile(&dir.path("model.onnx"), &dir, &[]);
    assert_fails(&out, &["external data", "weights.bin", "past its end"]);
}

// ------------------------------------------------------ unsupported models

#[test]
fn unsupported_ops_are_all_listed_at_once() {
    let dir = TempDir::new("unsupported");
    let bytes = model_bytes(
        vec![
            node("mystery", "FooBar", &["x"], &["a"]),
            node("decode", "ImageDecoder", &["a"], &["b"]),
            node("act", "Relu", &["b"], &["y"]),
        ],
        vec![value_info("x", FLOAT, &[D::N(4)])],
        vec![output("y")],
        vec![],
    );
    let model = dir.write("unsupported.onnx", &bytes);
    let err = assert_fails(
        &compile(&model, &dir, &[]),
        &["unsupported", "mystery", "FooBar", "decode", "ImageDecoder", "opset 17"],
    );
    // One message, and the supported node is not blamed.
    let errors = err.lines().filter(|l| l.starts_with("error:")).count();
    assert_eq!(errors, 1, "{err}");
    assert!(!err.contains("'act'"), "{err}");
}

#[test]
fn unbound_symbolic_dims_ask_for_dim() {
    let dir = TempDir::new("symbolic");
    let bytes = model_bytes(
        vec![node("act", "Relu", &["x"], &["y"])],
        vec![value_info("x", FLOAT, &[D::P("batch"), D::N(8)])],
        vec![output("y")],
        vec![],
    );
    let model = dir.write("symbolic.onnx", &bytes);
    assert_fails(&compile(&model, &dir, &[]), &["--dim", "'batch'", "x[0]"]);
    assert_fails(
        &compile(&model, &dir, &["--dim", "batch=two"]),
        &["--dim", "batch=two", "not a non-negative integer"],
    );
    assert_fails(&compile(&model, &dir, &["--dim", "batch"]), &["--dim", "NAME=VALUE"]);
    // Bound, it compiles.
    assert_succeeds(&compile(&model, &dir, &["--dim", "batch=2"]));
    assert!(dir.path("out.drift").exists());
    // A dim so large no GPU tensor can hold it is refused, not allocated.
    assert_fails(&compile(&model, &dir, &["--dim", "batch=99999999999"]), &["'x'", "elements"]);
}

// ------------------------------------------------------- broken graphs

#[test]
fn a_cycle_names_a_node_on_it() {
    let dir = TempDir::new("cycle");
    let bytes = model_bytes(
        vec![
            node("ping", "Relu", &["pong_out"], &["ping_out"]),
            node("pong", "Relu", &["ping_out"], &["pong_out"]),
            node("sum", "Add", &["x", "ping_out"], &["y"]),
        ],
        vec![value_info("x", FLOAT, &[D::N(4)])],
        vec![output("y")],
        vec![],
    );
    let model = dir.write("cycle.onnx", &bytes);
    let err = assert_fails(&compile(&model, &dir, &[]), &["cycle"]);
    assert!(err.contains("'ping'") || err.contains("'pong'"), "the cycle error names neither node: {err}");
}

#[test]
fn a_node_feeding_itself_is_a_cycle() {
    let dir = TempDir::new("self-cycle");
    let bytes = model_bytes(
        vec![node("ouroboros", "Relu", &["tail"], &["tail"]), node("sum", "Add", &["x", "tail"], &["y"])],
        vec![value_info("x", FLOAT, &[D::N(4)])],
        vec![output("y")],
        vec![],
    );
    let model = dir.write("self.onnx", &bytes);
    assert_fails(&compile(&model, &dir, &[]), &["'ouroboros'", "cycle"]);
}

#[test]
fn duplicate_names_are_rejected() {
    let dir = TempDir::new("duplicates");
    let x = || value_info("x", FLOAT, &[D::N(4)]);
    let w = |v: f32| {
        let mut t = tensor("w", FLOAT, &[4]);
        t.float_data = vec![v; 4];
        t
    };
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        (
            "inputs",
            model_bytes(vec![node("adder", "Add", &["x", "x"], &["y"])], vec![x(), x()], vec![output("y")], vec![]),
            &["tensor 'x'", "declared twice as a graph input"],
        ),
        (
            "initializers",
            model_bytes(
                vec![node("adder", "Add", &["x", "w"], &["y"])],
                vec![x()],
                vec![output("y")],
                vec![w(1.0), w(2.0)],
            ),
            &["tensor 'w'", "defined twice as an initializer"],
        ),
        (
            "outputs",
            model_bytes(vec![node("act", "Relu", &["x"], &["y"])], vec![x()], vec![output("y"), output("y")], vec![]),
            &["tensor 'y'", "listed twice as a graph output"],
        ),
        (
            "overwritten-initializer",
            model_bytes(
                vec![node("act", "Relu", &["x"], &["w"]), node("adder", "Add", &["x", "w"], &["y"])],
                vec![x()],
                vec![output("y")],
                vec![w(1.0)],
            ),
            &["tensor 'w'", "an initializer and also the output of node 'act'"],
        ),
        (
            "overwritten-input",
            model_bytes(vec![node("act", "Relu", &["x"], &["x"])], vec![x()], vec![output("x")], vec![]),
            &["tensor 'x'", "a graph input and also the output of node 'act'"],
        ),
    ];
    for (name, bytes, needles) in cases {
        let model = dir.write(&format!("{name}.onnx"), &bytes);
        assert_fails(&compile(&model, &dir, &[]), needles);
    }
}

/// 10^12 elements fit a u64 but no GPU tensor (at most 2^32 - 1 elements):
/// declared, as an initializer without data, and computed by Expand and
/// ConstantOfShape. Each is refused before anything is allocated.
#[test]
fn tera_element_tensors_fail_without_allocating() {
    let dir = TempDir::new("tera");
    let tera = [D::N(1_000_000), D::N(1_000_000)];
    let mut shape = tensor("shape", INT64, &[2]);
    shape.int64_data = vec![1_000_000; 2];
    let cases: Vec<(&str, Vec<u8>, Vec<&str>)> = vec![
        (
            "input",
            model_bytes(
                vec![node("act", "Relu", &["x"], &["y"])],
                vec![value_info("x", FLOAT, &tera)],
                vec![output("y")],
                vec![],
            ),
            vec!["'x'", "1000000000000 elements"],
        ),
        (
            "initializer",
            model_bytes(
                vec![node("adder", "Add", &["x", "w"], &["y"])],
                vec![value_info("x", FLOAT, &[D::N(1)])],
                vec![output("y")],
                vec![tensor("w", FLOAT, &[1_000_000, 1_000_000])],
            ),
            vec!["'w'"],
        ),
        (
            "expand",
            model_bytes(
                vec![node("grow", "Expand", &["x", "shape"], &["y"])],
                vec![value_info("x", FLOAT, &[D::N(1)])],
                vec![output("y")],
                vec![shape.clone()],
            ),
            vec!["'grow'", "Expand", "1000000000000 elements"],
        ),
        (
            "fill",
            model_bytes(
                vec![node("fill", "ConstantOfShape", &["shape"], &["y"])],
                vec![],
                vec![output("y")],
                vec![shape],
            ),
            vec!["'fill'", "ConstantOfShape", "1000000000000 elements"],
        ),
    ];
    for (name, bytes, needles) in cases {
        let model = dir.write(&format!("{name}.onnx"), &bytes);
        assert_fails(&compile(&model, &dir, &[]), &needles);
    }
}

#[test]
fn negative_dims_are_rejected() {
    let dir = TempDir::new("negative");
    let bytes = model_bytes(
        vec![node("act", "Relu", &["x"], &["y"])],
        vec![value_info("x", FLOAT, &[D::N(-5), D::N(4)])],
        vec![output("y")],
        vec![],
    );
    let model = dir.write("declared.onnx", &bytes);
    assert_fails(&compile(&model, &dir, &[]), &["tensor 'x'", "negative dimension -5 at axis 0"]);

    let mut shape = tensor("shape", INT64, &[2]);
    shape.int64_data = vec![-3, 2];
    let bytes = model_bytes(
        vec![node("reshaper", "Reshape", &["x", "shape"], &["y"])],
        vec![value_info("x", FLOAT, &[D::N(6)])],
        vec![output("y")],
        vec![shape],
    );
    let model = dir.write("reshape.onnx", &bytes);
    assert_fails(&compile(&model, &dir, &[]), &["'reshaper'", "Reshape", "-3"]);
    // A target whose element count overflows (found by the onnx_compile fuzzer).
    let mut shape = tensor("shape", INT64, &[2]);
    shape.int64_data = vec![(1 << 40) + 3, 3 << 32];
    let bytes = model_bytes(
        vec![node("reshaper", "Reshape", &["x", "shape"], &["y"])],
        vec![value_info("x", FLOAT, &[D::N(2), D::N(6)])],
        vec![output("y")],
        vec![shape],
    );
    let model = dir.write("overflow.onnx", &bytes);
    assert_fails(&compile(&model, &dir, &[]), &["'reshaper'", "cannot reshape [2, 6] (12 elements)"]);
}

#[test]
fn an_input_without_a_type_is_named() {
    let dir = TempDir::new("untyped");
    let bytes = model_bytes(
        vec![node("act", "Relu", &["x"], &["y"])],
        vec![ValueInfoProto { name: "x".into(), ..Default::default() }],
        vec![output("y")],
        vec![],
    );
    let model = dir.write("untyped.onnx", &bytes);
    assert_fails(&compile(&model, &dir, &[]), &["tensor 'x'", "no tensor type"]);
}

#[test]
fn an_input_nobody_produces_names_node_and_tensor() {
    let dir = TempDir::new("dangling");
    let bytes = model_bytes(
        vec![node("adder", "Add", &["x", "ghost"], &["y"])],
        vec![value_info("x", FLOAT, &[D::N(4)])],
        vec![output("y")],
        vec![],
    );
    let model = dir.write("dangling.onnx", &bytes);
    assert_fails(&compile(&model, &dir, &[]), &["'adder'", "'ghost'"]);

    // A graph output nothing computes.
    let bytes = model_bytes(
        vec![node("act", "Relu", &["x"], &["y"])],
        vec![value_info("x", FLOAT, &[D::N(4)])],
        vec![output("y"), output("phantom")],
        vec![],
    );
    let model = dir.write("phantom.onnx", &bytes);
    assert_fails(&compile(&model, &dir, &[]), &["'phantom'", "never computed"]);

    // Two producers of one tensor.
    let bytes = model_bytes(
        vec![node("first", "Relu", &["x"], &["y"]), node("second", "Neg", &["x"], &["y"])],
        vec![value_info("x", FLOAT, &[D::N(4)])],
        vec![output("y")],
        vec![],
    );
    let model = dir.write("twice.onnx", &bytes);
    assert_fails(&compile(&model, &dir, &[]), &["'y'", "'first'", "'second'"]);
}

// ------------------------------------------------------- absurd tensors

#[test]
fn absurd_initializers_fail_without_allocating() {
    let dir = TempDir::new("absurd");
    let add = |w: TensorProto| {
        model_bytes(
            vec![node("adder", "Add", &["x", "w"], &["y"])],
            vec![value_info("x", FLOAT, &[D::N(1)])],
            vec![output("y")],
            vec![w],
        )
    };
    // 10^18 elements declared, no data: an allocation would abort.
    let model = dir.write("huge.onnx", &add(tensor("w", FLOAT, &[1_000_000; 3])));
    assert_fails(&compile(&model, &dir, &[]), &["'w'", "1000000000000000000"]);

    let model = dir.write("negative.onnx", &add(tensor("w", FLOAT, &[-1, 4])));
    assert_fails(&compile(&model, &dir, &[]), &["'w'", "negative dimension -1"]);

    let model = dir.write("overflow.onnx", &add(tensor("w", FLOAT, &[1 << 40, 1 << 40])));
    assert_fails(&compile(&model, &dir, &[]), &["'w'", "overflows"]);

    // Data that does not match the shape.
    let mut w = tensor("w", FLOAT, &[2, 3]);
    w.raw_data = vec![0; 20];
    let model = dir.write("short.onnx", &add(w));
    assert_fails(&compile(&model, &dir, &[]), &["'w'", "20 bytes"]);
}

#[test]
fn absurd_computed_and_declared_shapes_fail_without_allocating() {
    let dir = TempDir::new("absurd-shapes");
    // ConstantOfShape of a constant 10^18-element shape: folding it on the
    // CPU would try to allocate exabytes.
    let mut shape = tensor("shape", INT64, &[3]);
    shape.int64_data = vec![1_000_000; 3];
    let bytes = model_bytes(
        vec![node("filler", "ConstantOfShape", &["shape"], &["y"])],
        vec![],
        vec![output("y")],
        vec![shape],
    );
    let model = dir.write("fill.onnx", &bytes);
    assert_fails(&compile(&model, &dir, &[]), &["'filler'", "ConstantOfShape", "elements"]);

    // A graph input declared with dimensions whose product overflows.
    let bytes = model_bytes(
        vec![node("act", "Relu", &["x"], &["y"])],
        vec![value_info("x", FLOAT, &[D::N(1 << 40), D::N(1 << 40)])],
        vec![output("y")],
        vec![],
    );
    let model = dir.write("wide.onnx", &bytes);
    assert_fails(&compile(&model, &dir, &[]), &["'x'", "elements"]);
}

// ------------------------------------------------------- run-time inputs

/// Compiles fixtures/mlp (input `x`: float32 [4, 64]).
fn mlp_bundle(dir: &TempDir) -> PathBuf {
    compile_ok(&fixture("mlp/model.onnx"), dir, "mlp.drift")
}

fn run_with(bundle: &Path, inputs: &[String]) -> Output {
    let mut args: Vec<&OsStr> = vec!["run".as_ref(), bundle.as_os_str()];
    for i in inputs {
        args.push("--input".as_ref());
        args.push(i.as_ref());
    }
    drift(args)
}

fn input_arg(name: &str, file: &Path) -> String {
    format!("{name}={}", file.display())
}

#[test]
fn wrong_run_inputs_name_the_input() {
    let dir = TempDir::new("run-inputs");
    let bundle = mlp_bundle(&dir);
    let good = fixture("mlp/inputs/x.npy");

    // An input the model does not have: the message lists the real ones.
    let out = run_with(&bundle, &[input_arg("z", &good)]);
    assert_fails(&out, &["unknown input 'z'", "inputs: x"]);

    // No input at all.
    assert_fails(&run_with(&bundle, &[]), &["missing input 'x'"]);

    // The same input twice.
    let out = run_with(&bundle, &[input_arg("x", &good), input_arg("x", &good)]);
    assert_fails(&out, &["input 'x'", "more than once"]);

    // A wrong shape.
    let file = dir.write("short.npy", &npy_f32(&[2, 64], &[0.5; 128]));
    let out = run_with(&bundle, &[input_arg("x", &file)]);
    assert_fails(&out, &["input 'x'", "expected shape [4,64]", "got [2,64]"]);

    // A wrong rank.
    let file = dir.write("flat.npy", &npy_f32(&[256], &[0.5; 256]));
    let out = run_with(&bundle, &[input_arg("x", &file)]);
    assert_fails(&out, &["input 'x'", "expected shape [4,64]", "got [256]"]);

    // An element type drift cannot read (complex64).
    let file = dir.write("complex.npy", &npy_bytes("<c8", &[4, 64], &[0; 2048]));
    let out = run_with(&bundle, &[input_arg("x", &file)]);
    assert_fails(&out, &["input 'x'", "complex.npy", "not supported"]);

    // A file that does not exist, and one that is not .npy.
    let out = run_with(&bundle, &[input_arg("x", &dir.path("absent.npy"))]);
    assert_fails(&out, &["input 'x'", "absent.npy"]);
    let file = dir.write("text.npy", b"1 2 3 4\n");
    let out = run_with(&bundle, &[input_arg("x", &file)]);
    assert_fails(&out, &["input 'x'", "text.npy", "not a .npy file"]);

    // Malformed --input.
    let out = run_with(&bundle, &["x".to_string()]);
    assert_fails(&out, &["--input x", "NAME=VALUE"]);
}

#[test]
fn damaged_npy_files_are_rejected() {
    let dir = TempDir::new("npy");
    let bundle = mlp_bundle(&dir);
    let full = npy_f32(&[4, 64], &[0.25; 256]);

    // Header intact, data cut short.
    let file = dir.write("cut.npy", &full[..full.len() - 100]);
    let out = run_with(&bundle, &[input_arg("x", &file)]);
    assert_fails(&out, &["input 'x'", "cut.npy", "924 data bytes", "needs 1024"]);

    // Extra bytes after the data (which used to shift the data silently).
    let mut long = full.clone();
    long.extend([1, 2, 3, 4]);
    let file = dir.write("long.npy", &long);
    let out = run_with(&bundle, &[input_arg("x", &file)]);
    assert_fails(&out, &["input 'x'", "long.npy", "1028 data bytes"]);

    // Cut inside the header.
    let file = dir.write("header.npy", &full[..40]);
    let out = run_with(&bundle, &[input_arg("x", &file)]);
    assert_fails(&out, &["input 'x'", "header.npy"]);

    // A shape whose byte size overflows.
    let file = dir.write("vast.npy", &npy_bytes("<f4", &[1 << 40, 1 << 40], &[0; 16]));
    let out = run_with(&bundle, &[input_arg("x", &file)]);
    assert_fails(&out, &["input 'x'", "vast.npy"]);

    // The intact file still runs.
    let file = dir.write("ok.npy", &full);
    assert_succeeds(&run_with(&bundle, &[input_arg("x", &file)]));
}

// -------------------------------------------------------- damaged bundles

/// Both `drift inspect` and `drift run` reject `bundle` with every string
/// of `needles` in the message.
#[track_caller]
fn assert_bad_bundle(bundle: &Path, needles: &[&str]) {
    let name = bundle.file_name().expect("file name").to_string_lossy();
    let mut needles = needles.to_vec();
    needles.push(&name);
    assert_fails(&drift(["inspect".as_ref(), bundle.as_os_str()]), &needles);
    let input = input_arg("x", &fixture("mlp/inputs/x.npy"));
    assert_fails(&run_with(bundle, &[input]), &needles);
}

#[test]
fn damaged_bundles_are_rejected_by_run_and_inspect() {
    let dir = TempDir::new("bundles");
    let bundle = mlp_bundle(&dir);
    let bytes = std::fs::read(&bundle).expect("bundle");
    let header_len = u64::from_le_bytes(bytes[32..40].try_into().expect("8 bytes"));

    // Wrong magic: an ONNX model, and a bundle with its magic overwritten.
    let onnx = dir.write("model.drift", &std::fs::read(fixture("mlp/model.onnx")).expect("fixture"));
    assert_bad_bundle(&onnx, &["not a drift bundle"]);
    let mut b = bytes.clone();
    b[..8].copy_from_slice(b"NOTDRIFT");
    assert_bad_bundle(&dir.write("magic.drift", &b), &["not a drift bundle"]);

    // Truncated: in the middle, inside the fixed header, empty.
    assert_bad_bundle(&dir.write("half.drift", &bytes[..bytes.len() / 2]), &["truncated bundle"]);
    assert_bad_bundle(&dir.write("ten.drift", &bytes[..10]), &["truncated bundle"]);
    assert_bad_bundle(&dir.write("empty.drift", b""), &["truncated bundle"]);
    // Cut at the end of the weights.
    assert_bad_bundle(&dir.write("short.drift", &bytes[..bytes.len() - 4]), &["truncated bundle"]);
    // Trailing garbage.
    let mut b = bytes.clone();
    b.extend([0xAB; 16]);
    assert_bad_bundle(&dir.write("long.drift", &b), &["preamble.weights_len", "unused"]);

    // Flipped bytes in the preamble: the version has its own message, any
    // other byte breaks the preamble's checksum; resealed, the field's own
    // check speaks.
    let flip = |at: usize, mask: u8| {
        let mut b = bytes.clone();
        b[at] ^= mask;
        b
    };
    assert_bad_bundle(&dir.write("version.drift", &flip(8, 0xFF)), &["version", "reads format version 2 only"]);
    assert_bad_bundle(&dir.write("length.drift", &flip(34, 0xFF)), &["preamble checksum mismatch"]);
    assert_bad_bundle(&dir.write("flags.drift", &resealed(flip(13, 0x01))), &["flags"]);
    assert_bad_bundle(&dir.write("writer.drift", &resealed(flip(17, 0x80))), &["preamble.compiler_version"]);
    // Flipped bytes in the header and in the weights.
    assert_bad_bundle(&dir.write("header.drift", &flip(100, 0x04)), &["header checksum mismatch"]);
    assert_bad_bundle(&dir.write("weights.drift", &flip(bytes.len() - 3, 0x04)), &["weights checksum mismatch"]);
    // A nonsense header length that still fits the file moves the weights.
    let b = with_u64(bytes.clone(), 32, header_len - 7);
    assert_bad_bundle(&dir.write("shifted.drift", &b), &["bundle"]);

    // A missing file.
    let absent = dir.path("absent.drift");
    assert_fails(&drift(["inspect".as_ref(), absent.as_os_str()]), &["cannot read bundle", "absent.drift"]);
}

#[test]
fn damaged_shader_code_is_caught_at_load() {
    // Drivers trust passthrough SPIR-V; lavapipe loses the device on a
    // damaged module. The runtime checks the module's framing first.
    let dir = TempDir::new("spirv");
    let bundle = mlp_bundle(&dir);
    let bytes = std::fs::read(&bundle).expect("bundle");
    let (header, weights) = drift_runtime::parse(&bytes).expect("bundle parses");
    let weights = &bytes[weights];
    let damaged = |name: &str, change: &dyn Fn(&mut Vec<u8>)| {
        let mut h = header.clone();
        change(&mut h.kernels[0].spirv);
        dir.write(name, &drift_runtime::write_bundle(&h, weights))
    };
    let magic = damaged("spirv-magic.drift", &|s| s[0] ^= 0xFF);
    assert_bad_bundle(&magic, &["kernels[0].spirv", "not a SPIR-V module"]);
    let cut = damaged("spirv-cut.drift", &|s| s.truncate(s.len() / 8 * 4));
    assert_bad_bundle(&cut, &["kernels[0].spirv", "damaged"]);
    let count = damaged("spirv-count.drift", &|s| s[22..24].copy_from_slice(&[0xFF, 0xFF]));
    assert_bad_bundle(&count, &["kernels[0].spirv", "damaged"]);
}

/// Rewrites the preamble's CRC-32 (bytes 60..64 over 0..60), so that a test
/// can change a preamble field and reach that field's own check.
fn resealed(mut bytes: Vec<u8>) -> Vec<u8> {
    let crc = crc32fast::hash(&bytes[..60]);
    bytes[60..64].copy_from_slice(&crc.to_le_bytes());
    bytes
}

/// `bytes` with the u64 at `at` set to `value`, resealed.
fn with_u64(mut bytes: Vec<u8>, at: usize, value: u64) -> Vec<u8> {
    bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
    resealed(bytes)
}

/// Every single-byte flip in the first 4 KiB of a bundle, and every 61st
/// byte after that, is rejected with a message (the checksums cover every
/// byte): never a panic in process, as `drift inspect` loads and describes,
/// and never a crash of the binary for a sample of them.
#[test]
fn every_byte_flip_is_rejected() {
    let dir = TempDir::new("flips");
    let bundle = mlp_bundle(&dir);
    let bytes = std::fs::read(&bundle).expect("bundle");
    let positions: Vec<usize> = (0..bytes.len().min(4096)).chain((4096..bytes.len()).step_by(61)).collect();
    for &at in &positions {
        for mask in [0xFF, 0x01] {
            let mut b = bytes.clone();
            b[at] ^= mask;
            let result = std::panic::catch_unwind(|| {
                drift_runtime::Model::from_bytes(b)
                    .map(|m| drift_compiler::inspect::describe(m.bundle()))
                    .map_err(|e| e.to_string())
            });
            match result {
                Ok(Ok(_)) => panic!("a bundle with byte {at} ^= {mask:#x} loaded"),
                Ok(Err(msg)) => assert!(!msg.is_empty(), "empty error for a flip at {at}"),
                Err(_) => panic!("loading a bundle with byte {at} ^= {mask:#x} panicked"),
            }
        }
    }
    // The binary, on a sample of flips.
    for at in (8..bytes.len().min(2048)).step_by(97) {
        let mut b = bytes.clone();
        b[at] ^= 0xFF;
        let file = dir.write("flip.drift", &b);
        assert_fails(&drift(["inspect".as_ref(), file.as_os_str()]), &["flip.drift"]);
    }
}

/// A compiled bundle cut at every section boundary (and one byte either
/// side): the message says truncated and names the section that is cut.
#[test]
fn truncation_at_every_section_boundary_names_the_section() {
    let dir = TempDir::new("cuts");
    let bundle = mlp_bundle(&dir);
    let bytes = std::fs::read(&bundle).expect("bundle");
    let frame = drift_runtime::format::frame(&bytes).expect("the bundle frames");
    let (header, weights) = (frame.header, frame.weights);
    let boundaries = [0, 8, 12, 16, 32, 40, 48, 60, 64, header.end, weights.start, weights.end];
    let mut cuts: Vec<usize> = boundaries.iter().flat_map(|&b| [b.saturating_sub(1), b, b + 1]).collect();
    cuts.retain(|&c| c < bytes.len());
    cuts.sort_unstable();
    cuts.dedup();
    for cut in cuts {
        let section = match cut {
            _ if cut < 64 => "shorter than the fixed file header",
            _ if cut < header.end => "the header section",
            _ => "the weights section",
        };
        let file = dir.write(&format!("cut-{cut}.drift"), &bytes[..cut]);
        assert_fails(&drift(["inspect".as_ref(), file.as_os_str()]), &["truncated bundle", section]);
    }
}

/// Lengths that claim far more than the file holds, with a valid preamble
/// checksum, and headers with absurd entry counts: refused before anything
/// is allocated for them.
#[test]
fn oversized_lengths_and_counts_are_refused() {
    let dir = TempDir::new("oversized");
    let bundle = mlp_bundle(&dir);
    let bytes = std::fs::read(&bundle).expect("bundle");
    let huge = dir.write("header-len.drift", &with_u64(bytes.clone(), 32, 1 << 62));
    assert_bad_bundle(&huge, &["truncated bundle", "the header section ends at byte 4611686018427387968"]);
    let huge = dir.write("weights-len.drift", &with_u64(bytes.clone(), 40, u64::MAX));
    assert_bad_bundle(&huge, &["truncated bundle", "the weights section"]);

    let (mut header, weights) = drift_runtime::parse(&bytes).expect("bundle parses");
    let weights = &bytes[weights];
    header.kernels = vec![Default::default(); 100_000];
    let many = dir.write("kernels.drift", &drift_runtime::write_bundle(&header, weights));
    assert_bad_bundle(&many, &["bundle field kernels has more than 65536 entries"]);
    // A tensor of 10^12 elements in a 1 KiB arena.
    let (mut header, _) = drift_runtime::parse(&bytes).expect("bundle parses");
    header.outputs[0].shape = vec![1_000_000, 1_000_000];
    let wide = dir.write("wide.drift", &drift_runtime::write_bundle(&header, weights));
    assert_bad_bundle(&wide, &["bundle field outputs[0].offset", "4000000000000 bytes", "runs past buffers[0]"]);
}
