//! Developer tool: compile every fixture and every `light/` model of the onnx
//! wheel and print the memory planner's figures as the markdown table of
//! `docs/memory.md`.
//!
//! `DRIFT_ONNX_TESTS=/path/to/onnx-tests cargo run --release -p drift-tests --bin memory [-- --check]`
//!
//! With `--check` it exits non-zero when a planned arena exceeds 1.05 × its
//! lower bound (the planner's bar) or a model fails to compile.

use drift_compiler::Options;
use drift_runtime::bundle::{BufferKind, Bundle};
use drift_tests::suite;
use std::path::{Path, PathBuf};

/// The planner's bar: planned arena ≤ BAR × lower bound.
const BAR: f64 = 1.05;

fn main() {
    let check = std::env::args().any(|a| a == "--check");
    let mut models: Vec<(String, PathBuf, Options)> = vec![];
    for dir in suite::case_dirs(&suite::repo_root().join("fixtures")).unwrap_or_default() {
        let name = file_name(&dir);
        models.push((format!("fixtures/{name}"), dir.join("model.onnx"), Options::default()));
    }
    let light = suite::onnx_data_root().join("light");
    let light_dirs = suite::case_dirs(&light).unwrap_or_default();
    if light_dirs.is_empty() {
        eprintln!("warning: no light/ models under {} (set DRIFT_ONNX_TESTS)", light.display());
    }
    for dir in light_dirs {
        models.push((format!("light/{}", file_name(&dir)), dir.join("model.onnx"), shapes_of_test_data(&dir)));
    }
    let mut failed = false;
    println!(
        "| model | tensors | in place | naive | lower bound | planned | planned / lower bound | saved vs naive | strategy |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---|");
    for (name, model, opts) in &models {
        match drift_compiler::compile_file(model, opts) {
            Ok(c) => failed |= !row(name, &c.program.bundle),
            Err(e) => {
                eprintln!("error: {name}: {e}");
                failed = true;
            }
        }
    }
    if check && failed {
        std::process::exit(1);
    }
}

/// Prints one table row; false when the plan misses the bar.
fn row(name: &str, b: &Bundle) -> bool {
    let arena: u64 = b.buffers.iter().filter(|x| x.kind == BufferKind::Arena as i32).map(|x| x.size).sum();
    let m = b.memory.clone().unwrap_or_default();
    let ratio = arena as f64 / m.lower_bound_bytes.max(1) as f64;
    let saved = 100.0 * (1.0 - arena as f64 / m.naive_bytes.max(1) as f64);
    println!(
        "| {name} | {} | {} | {} | {} | {} | {ratio:.3} | {saved:.1}% | {} |",
        m.tensors,
        m.in_place,
        mib(m.naive_bytes),
        mib(m.lower_bound_bytes),
        mib(arena),
        m.strategy
    );
    ratio <= BAR
}

fn mib(bytes: u64) -> String {
    if bytes >= 1 << 20 { format!("{:.2} MiB", bytes as f64 / (1 << 20) as f64) } else { format!("{bytes} B") }
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Input shapes from the case's test data, as the conformance run uses them.
fn shapes_of_test_data(dir: &Path) -> Options {
    let mut opts = Options::default();
    if let Ok(case) = drift_tests::load_onnx_case(dir) {
        for (name, t) in case.inputs.iter().filter(|(n, _)| !n.is_empty()) {
            opts.input_shapes.insert(name.clone(), t.shape.clone());
        }
    }
    opts
}
