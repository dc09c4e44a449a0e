//! Shared machinery of drift's end-to-end tests: load an ONNX test case
//! (model + `.pb` or `.npy` data), compile it, run it on the GPU, and
//! compare with the expected outputs the way numpy's `isclose` does.

pub mod fixtures;
pub mod gate;
pub mod memory;
pub mod suite;

use drift_compiler::Options;
use drift_runtime::{DType, Gpu, HostTensor, Model, Session};
use onnx_protobuf::{Message, TensorProto};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One test: a model, its inputs and expected outputs, tolerances.
pub struct Case {
    pub name: String,
    pub dir: PathBuf,
    pub model: PathBuf,
    pub inputs: Vec<(String, HostTensor)>,
    pub expected: Vec<(String, HostTensor)>,
    pub rtol: f64,
    pub atol: f64,
}

/// How a case ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Pass,
    /// Compile-time rejection (unsupported op, invalid model...).
    Compile(String),
    /// Load or run failure.
    Run(String),
    /// Numbers or shapes differ.
    Mismatch(String),
    /// The test data could not be read (sequence types...).
    Data(String),
}

impl Outcome {
    pub fn passed(&self) -> bool {
        *self == Outcome::Pass
    }
    pub fn class(&self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Compile(_) => "compile",
            Outcome::Run(_) => "run",
            Outcome::Mismatch(_) => "mismatch",
            Outcome::Data(_) => "data",
        }
    }
    pub fn message(&self) -> &str {
        match self {
            Outcome::Pass => "",
            Outcome::Compile(m) | Outcome::Run(m) | Outcome::Mismatch(m) | Outcome::Data(m) => m,
        }
    }
}

/// Reads a classic ONNX test folder: `model.onnx`, `meta.json` (optional
/// tolerances) and `test_data_set_0/{input,output}_N.pb`.
pub fn load_onnx_case(dir: &Path) -> Result<Case, String> {
    let name = dir.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let (rtol, atol) = read_tolerances(&dir.join("meta.json"));
    let data = dir.join("test_data_set_0");
    let inputs = read_pb_set(&data, "input")?;
    let expected = read_pb_set(&data, "output")?;
    Ok(Case { name, dir: dir.to_path_buf(), model: dir.join("model.onnx"), inputs, expected, rtol, atol })
}

fn read_tolerances(meta: &Path) -> (f64, f64) {
    let default = (1e-3, 1e-7);
    let Ok(text) = std::fs::read_to_string(meta) else { return default };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else { return default };
    (v["rtol"].as_f64().unwrap_or(default.0), v["atol"].as_f64().unwrap_or(default.1))
}

fn read_pb_set(dir: &Path, prefix: &str) -> Result<Vec<(String, HostTensor)>, String> {
    let mut out = vec![];
    for i in 0.. {
        let path = dir.join(format!("{prefix}_{i}.pb"));
        if !path.exists() {
            break;
        }
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let proto = TensorProto::parse_from_bytes(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        if proto.data_type == 0 {
            return Err(format!("{}: not a tensor (sequence or optional data)", path.display()));
        }
        let t =
            drift_compiler::import::tensor_from_proto(&proto, dir).map_err(|e| format!("{}: {e}", path.display()))?;
        out.push((proto.name.clone(), to_host(&t)?));
    }
    Ok(out)
}

/// Tolerance against onnxruntime's float32 outputs for the fixtures.
pub const FIXTURE_RTOL: f64 = 1e-3;
pub const FIXTURE_ATOL: f64 = 1e-5;

/// Reads a fixture folder: `model.onnx`, `inputs/*.npy` and the outputs
/// onnxruntime computed, `outputs/*.npy`.
pub fn load_fixture(dir: &Path) -> Result<Case, String> {
    Ok(Case {
        name: dir.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
        dir: dir.to_path_buf(),
        model: dir.join("model.onnx"),
        inputs: read_npy_dir(&dir.join("inputs"))?,
        expected: read_npy_dir(&dir.join("outputs"))?,
        rtol: FIXTURE_RTOL,
        atol: FIXTURE_ATOL,
    })
}

fn read_npy_dir(dir: &Path) -> Result<Vec<(String, HostTensor)>, String> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "npy"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| {
            let name = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            drift_compiler::npy::read(p).map(|t| (name, t))
        })
        .collect()
}

/// An ops tensor as the runtime's host tensor.
pub fn to_host(t: &drift_ops::Tensor) -> Result<HostTensor, String> {
    let dtype = DType::from_onnx(t.dtype.onnx()).ok_or_else(|| format!("dtype {} unsupported", t.dtype))?;
    HostTensor::new(dtype, t.shape.clone(), t.to_raw()).map_err(|e| e.to_string())
}

/// Whether cases compile with the graph optimizer (the default) or without
/// it (`drift compile --no-opt`); the conformance gate runs both.
static OPTIMIZE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Chooses, for the cases run after this call, whether they are compiled
/// with the optimizer.
pub fn set_optimize(on: bool) {
    OPTIMIZE.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Compiles a case for the shapes of its inputs, runs it and compares.
///
/// When the compiler needs the value of a shape-deciding operand that comes
/// from graph inputs (Reshape's shape, Reduce's axes, Resize's scales, ...),
/// those inputs are fixed at compile time to the test's values, as a user
/// does with `drift compile --const-input`; the test still passes them at
/// run time and the runtime checks that they match. Returns the outcome and
/// the names of the inputs fixed that way.
pub fn run_case(gpu: &Gpu, case: &Case) -> (Outcome, Vec<String>) {
    run_case_with(gpu, case, &Options::default())
}

/// [`run_case`] from `base` options (e.g. smaller [`drift_compiler::Limits`]);
/// the case's input shapes are added to them.
pub fn run_case_with(gpu: &Gpu, case: &Case, base: &Options) -> (Outcome, Vec<String>) {
    let graph = match drift_compiler::import::import_file(&case.model) {
        Ok(g) => g,
        Err(e) => return (Outcome::Compile(e.to_string()), vec![]),
    };
    // Old test data leaves tensor names empty: those match inputs by position.
    let graph_inputs: Vec<String> = graph.inputs.iter().map(|&v| graph.values[v].name.clone()).collect();
    let named: Vec<(&str, &HostTensor)> = case
        .inputs
        .iter()
        .enumerate()
        .map(|(k, (n, t))| (if n.is_empty() { graph_inputs.get(k).map_or("", |s| s.as_str()) } else { n.as_str() }, t))
        .collect();
    let mut opts = Options { no_opt: !OPTIMIZE.load(std::sync::atomic::Ordering::Relaxed), ..base.clone() };
    for (name, t) in &named {
        opts.input_shapes.insert(name.to_string(), t.shape.clone());
    }
    let mut graph = Some(graph);
    let compiled = loop {
        // The passes consume the graph; a retry imports the model again.
        let g = match graph.take().map_or_else(|| drift_compiler::import::import_file(&case.model), Ok) {
            Ok(g) => g,
            Err(e) => return (Outcome::Compile(e.to_string()), vec![]),
        };
        match drift_compiler::compile_graph(g, &opts) {
            Ok(c) => break c,
            Err(drift_compiler::Error::NeedsValue { from_inputs, .. }) if fixable(&from_inputs, &named, &opts) => {
                for name in &from_inputs {
                    let (_, host) = named.iter().find(|(n, _)| n == name).expect("fixable() found it");
                    match drift_compiler::host_to_tensor(host) {
                        Ok(t) => opts.const_inputs.insert(name.clone(), t),
                        Err(e) => return (Outcome::Data(format!("input '{name}': {e}")), vec![]),
                    };
                }
            }
            Err(e) => return (Outcome::Compile(e.to_string()), fixed_names(&opts)),
        }
    };
    let fixed = fixed_names(&opts);
    // Compiled by this process a moment ago: trusted, so the suite runs the
    // passthrough kernels that a deployment of trusted bundles runs.
    let model = match Model::from_bytes(compiled.to_bytes()) {
        Ok(m) => m.with_trust(drift_runtime::Trust::Trusted),
        Err(e) => return (Outcome::Run(format!("load: {e}")), fixed),
    };
    let mut session = match Session::new(gpu, &model) {
        Ok(s) => s,
        Err(e) => return (Outcome::Run(format!("session: {e}")), fixed),
    };
    let outputs = match session.run(&named) {
        Ok(o) => o,
        Err(e) => return (Outcome::Run(e.to_string()), fixed),
    };
    (compare(&outputs, &case.expected, case.rtol, case.atol), fixed)
}

/// Whether fixing `names` can make progress: all are test inputs, none fixed yet.
fn fixable(names: &[String], named: &[(&str, &HostTensor)], opts: &Options) -> bool {
    !names.is_empty() && names.iter().all(|n| named.iter().any(|(m, _)| m == n) && !opts.const_inputs.contains_key(n))
}

fn fixed_names(opts: &Options) -> Vec<String> {
    opts.const_inputs.keys().cloned().collect()
}

/// Compares outputs in order (names may differ in old test data).
pub fn compare(got: &[(String, HostTensor)], want: &[(String, HostTensor)], rtol: f64, atol: f64) -> Outcome {
    if got.len() < want.len() {
        return Outcome::Mismatch(format!("{} outputs, expected {}", got.len(), want.len()));
    }
    let by_name: BTreeMap<&str, &HostTensor> = got.iter().map(|(n, t)| (n.as_str(), t)).collect();
    for (i, (name, w)) in want.iter().enumerate() {
        let g = by_name.get(name.as_str()).copied().unwrap_or(&got[i].1);
        if g.shape != w.shape {
            return Outcome::Mismatch(format!("output {i} '{name}': shape {:?}, expected {:?}", g.shape, w.shape));
        }
        if g.dtype != w.dtype {
            return Outcome::Mismatch(format!(
                "output {i} '{name}': dtype {}, expected {}",
                g.dtype.name(),
                w.dtype.name()
            ));
        }
        let (gv, wv) = (g.to_f64_vec(), w.to_f64_vec());
        let mut bad = 0;
        let mut first = None;
        for (k, (&a, &b)) in gv.iter().zip(&wv).enumerate() {
            if !close(a, b, rtol, atol) {
                bad += 1;
                first.get_or_insert((k, a, b));
            }
        }
        if let Some((k, a, b)) = first {
            return Outcome::Mismatch(format!(
                "output {i} '{name}': {bad} of {} elements differ; first at {k}: got {a}, expected {b}",
                wv.len()
            ));
        }
    }
    Outcome::Pass
}

/// numpy.isclose with equal_nan.
pub fn close(a: f64, b: f64, rtol: f64, atol: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    if a.is_infinite() || b.is_infinite() {
        return a == b;
    }
    (a - b).abs() <= atol + rtol * b.abs()
}
