//! Running whole suites (folders of cases), keeping the committed lists of
//! expected passes, and writing `docs/conformance.md`.

use crate::{Case, Outcome, load_onnx_case, run_case};
use drift_runtime::Gpu;
use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

/// The folders of the onnx wheel's test data, as `gen_onnx_tests.py` writes them.
pub const ONNX_SUITES: &[&str] = &["node", "light", "simple", "pytorch-converted", "pytorch-operator"];

/// One case's result.
#[derive(Debug, Clone)]
pub struct Result {
    pub name: String,
    /// The ONNX op the case tests (its single node, or the first node).
    pub op: String,
    pub outcome: Outcome,
    /// Inputs fixed at compile time to the test's values (shape-deciding).
    pub fixed_inputs: Vec<String>,
}

/// Repository root (the workspace folder).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// Where the generated ONNX test data lives.
pub fn onnx_data_root() -> PathBuf {
    std::env::var_os("DRIFT_ONNX_TESTS").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target/onnx-tests"))
}

/// Case folders of a suite, sorted.
pub fn case_dirs(suite_dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut dirs: Vec<PathBuf> =
        std::fs::read_dir(suite_dir)?.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()).collect();
    dirs.sort();
    Ok(dirs)
}

/// Runs every case of an ONNX suite folder whose name contains `filter`.
pub fn run_onnx_suite(gpu: &Gpu, suite_dir: &Path, filter: &str, mut progress: impl FnMut(&Result)) -> Vec<Result> {
    let dirs = case_dirs(suite_dir).unwrap_or_default();
    let mut results = vec![];
    for dir in dirs.iter().filter(|d| d.to_string_lossy().contains(filter)) {
        let name = dir.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let op = main_op(&dir.join("model.onnx"));
        let (outcome, fixed_inputs) = match load_onnx_case(dir) {
            Ok(case) => guarded_run(gpu, &case),
            Err(e) => (Outcome::Data(e), vec![]),
        };
        let r = Result { name, op, outcome, fixed_inputs };
        progress(&r);
        results.push(r);
    }
    results
}

/// Runs a case, turning a panic into a failure so one bug cannot hide the
/// rest of the suite (a panic is still a defect: it shows as "PANIC").
pub fn guarded_run(gpu: &Gpu, case: &Case) -> (Outcome, Vec<String>) {
    match catch_unwind(AssertUnwindSafe(|| run_case(gpu, case))) {
        Ok(o) => o,
        Err(p) => {
            let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
            (Outcome::Run(format!("PANIC: {}", msg.unwrap_or_default())), vec![])
        }
    }
}

/// The op type a test is about: its only node, or the first node.
fn main_op(model: &Path) -> String {
    use onnx_protobuf::{Message, ModelProto};
    let Ok(bytes) = std::fs::read(model) else { return "?".into() };
    let Ok(m) = ModelProto::parse_from_bytes(&bytes) else { return "?".into() };
    let name = model.parent().and_then(|p| p.file_name()).map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let nodes = m.graph.as_ref().map(|g| g.node.clone()).unwrap_or_default();
    if name.contains("_expanded") {
        // Expanded tests spell one op out as several; name them after it.
        return nodes.first().map(|n| format!("{} (expanded)", op_from_name(&name, &n.op_type))).unwrap_or_default();
    }
    nodes.first().map(|n| n.op_type.clone()).unwrap_or_else(|| "?".into())
}

fn op_from_name(test: &str, fallback: &str) -> String {
    let base = test.trim_start_matches("test_").split("_expanded").next().unwrap_or(fallback);
    base.split('_').next().unwrap_or(fallback).to_string()
}

/// The committed list of expected passes of a suite.
pub fn pass_list_path(suite: &str) -> PathBuf {
    repo_root().join("tests/conformance").join(format!("{suite}.pass"))
}

pub fn read_pass_list(suite: &str) -> Vec<String> {
    std::fs::read_to_string(pass_list_path(suite))
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

pub fn write_pass_list(suite: &str, results: &[Result]) -> std::io::Result<()> {
    let mut text = format!(
        "# Cases of the '{suite}' suite that must pass. Regenerate: DRIFT_BLESS=1 cargo test -p drift-tests --release --test conformance\n"
    );
    for r in results.iter().filter(|r| r.outcome.passed()) {
        text += &r.name;
        text.push('\n');
    }
    std::fs::create_dir_all(pass_list_path(suite).parent().expect("has parent"))?;
    std::fs::write(pass_list_path(suite), text)
}

/// Writes docs/conformance.md from the results of every suite.
pub fn write_report(suites: &[(String, Vec<Result>)], gpu: &str) -> std::io::Result<()> {
    let mut s = String::from("# Conformance\n\n");
    s += "Generated by `DRIFT_BLESS=1 cargo test -p drift-tests --release --test conformance` ";
    s += "(do not edit by hand). Each case is compiled by drift, run on the GPU and compared with the ";
    s += "expected outputs at the case's own tolerance (default rtol 1e-3, atol 1e-7, as numpy.isclose).\n\n";
    s += &format!("GPU: {gpu}\n\n");
    s += "| suite | passing | total | passing with fixed inputs |\n|---|---:|---:|---:|\n";
    for (name, rs) in suites {
        let pass = rs.iter().filter(|r| r.outcome.passed());
        let fixed = pass.clone().filter(|r| !r.fixed_inputs.is_empty()).count();
        s += &format!("| {name} | {} | {} | {fixed} |\n", pass.count(), rs.len());
    }
    s += "\n\"Passing with fixed inputs\" counts passes (included in \"passing\") where a graph input decides a ";
    s += "shape (Reshape's shape, Reduce's axes, Resize's scales, Pad's pads, TopK's k, ...). drift plans every ";
    s += "shape ahead of time, so the harness does what a user does with `drift compile --const-input NAME=FILE.npy`: ";
    s += "it fixes those inputs to the test's values at compile time. The bundle records the values; the test still ";
    s += "passes the input at run time, and the runtime rejects any other value with an error naming the input.\n\n";
    s += "Outputs whose length depends on the data (NonZero, Compress, Unique, NonMaxSuppression) are planned at ";
    s += "their upper bound; the kernels leave the actual length in a u32 that the runtime reads back with the output ";
    s += "(the bundle's `IoTensor.extent`), so no host step interrupts the dispatch list. Such values can only be ";
    s += "graph outputs: a node reading one is a compile error naming it.\n";
    s += "\n## Why cases fail\n\n| reason | cases |\n|---|---:|\n";
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for r in suites.iter().flat_map(|(_, rs)| rs).filter(|r| !r.outcome.passed()) {
        *reasons.entry(failure_reason(&r.outcome)).or_default() += 1;
    }
    for (reason, n) in reasons {
        s += &format!("| {reason} | {n} |\n");
    }
    s += "\n## Data types on the GPU\n\nEvery element is stored as 32 bits. Floats are f32: float32, and float16, ";
    s += "bfloat16, the float8 types (e4m3fn, e4m3fnuz, e5m2, e5m2fnuz), float4e2m1 and float8e8m0, which all widen ";
    s += "exactly. Cast, CastLike, QuantizeLinear and DequantizeLinear round in the kernel to a narrower output type ";
    s += "with integer code that is bit-exact on every GPU (round to nearest even, Cast's `saturate` and ";
    s += "`round_mode`, NaN and infinity per format); other kernels compute in f32 and outputs are rounded to their ";
    s += "type (nearest even, saturating for float8) when the runtime reads them back. float64 is stored as f32: ";
    s += "precision drops to float32's (the tests' tolerances accept or reject that case by case), and a finite ";
    s += "value beyond float32's range is an error at compile or run time, never a silent infinity. int2/int4/int8/";
    s += "int16/int32 are i32 and uint2/uint4/uint8/uint16/uint32 and bool u32; the 2- and 4-bit types are packed on ";
    s += "the host (ONNX's layout) and unpacked to one word per element at the boundary. int64/uint64 are 32-bit ";
    s += "integers with a range check: constants are checked at compile time and inputs at run time, and a value that ";
    s += "does not fit is an error, never a silent wrap. BitCast is exact up to 32 bits; 64-bit BitCast is ";
    s += "unsupported. Strings and complex numbers are not supported.\n\n";
    for (name, rs) in suites {
        s += &format!(
            "## {name}: per op\n\n| op | tests | passing | failures (class: first message) |\n|---|---:|---:|---|\n"
        );
        let mut per_op: BTreeMap<&str, Vec<&Result>> = BTreeMap::new();
        for r in rs {
            per_op.entry(r.op.as_str()).or_default().push(r);
        }
        for (op, list) in per_op {
            let pass = list.iter().filter(|r| r.outcome.passed()).count();
            let fail = list.iter().find(|r| !r.outcome.passed()).map(|r| {
                let m: String = r.outcome.message().lines().last().unwrap_or("").chars().take(110).collect();
                format!("{}: {}", r.outcome.class(), m.replace('|', "/"))
            });
            s += &format!("| {op} | {} | {pass} | {} |\n", list.len(), fail.unwrap_or_default());
        }
        s += "\n";
    }
    std::fs::write(repo_root().join("docs/conformance.md"), s)
}

/// A failure's class in words, for the report's summary table.
fn failure_reason(o: &Outcome) -> &'static str {
    let m = o.message();
    match o {
        Outcome::Data(_) if m.contains("string") => "string tensors (not supported on the GPU)",
        Outcome::Data(_) if m.contains("sequence") || m.contains("has 0 values") || m.contains("overflows") => {
            "sequence/optional values (not supported)"
        }
        Outcome::Data(_) => "element type without a GPU form yet (float8, int4, uint4, float4, ...)",
        Outcome::Compile(_) if m.contains("must be known at compile time") => {
            "a shape-deciding value is computed from run-time data (data-dependent shape)"
        }
        Outcome::Compile(_) if m.contains("no implementation") || m.contains("domain") => "operator not implemented",
        Outcome::Compile(_) if m.contains("unsupported") => "operator form or data type not implemented",
        Outcome::Compile(_) => "other compile error",
        Outcome::Run(_) if m.contains("does not fit float32") => {
            "float64 value beyond float32's range: rejected (no float64 on the GPU)"
        }
        Outcome::Run(_) => "run-time error",
        Outcome::Mismatch(_) => "numbers differ",
        Outcome::Pass => "pass",
    }
}
