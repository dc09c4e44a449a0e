//! The memory planner's figures over the fixtures and the `light/` models of
//! the onnx wheel: what `docs/memory.md` tabulates (`--bin memory`) and what
//! the `memory` test holds to the bar.

use crate::suite;
use drift_compiler::Options;
use drift_runtime::bundle::{BufferKind, Bundle};
use std::path::{Path, PathBuf};

/// The planner's bar: planned arena ≤ BAR × lower bound.
pub const BAR: f64 = 1.05;

/// One model's plan.
pub struct Row {
    pub name: String,
    pub tensors: u32,
    pub in_place: u32,
    pub naive: u64,
    pub lower_bound: u64,
    pub planned: u64,
    pub strategy: String,
}

impl Row {
    pub fn ratio(&self) -> f64 {
        self.planned as f64 / self.lower_bound.max(1) as f64
    }

    pub fn meets_bar(&self) -> bool {
        self.ratio() <= BAR
    }

    /// The row of the markdown table.
    pub fn markdown(&self) -> String {
        let saved = 100.0 * (1.0 - self.planned as f64 / self.naive.max(1) as f64);
        format!(
            "| {} | {} | {} | {} | {} | {} | {:.3} | {saved:.1}% | {} |",
            self.name,
            self.tensors,
            self.in_place,
            mib(self.naive),
            mib(self.lower_bound),
            mib(self.planned),
            self.ratio(),
            self.strategy
        )
    }
}

pub const TABLE_HEADER: &str = "| model | tensors | in place | naive | lower bound | planned | planned / lower bound | saved vs naive | strategy |\n|---|---:|---:|---:|---:|---:|---:|---:|---|";

fn mib(bytes: u64) -> String {
    if bytes >= 1 << 20 { format!("{:.2} MiB", bytes as f64 / (1 << 20) as f64) } else { format!("{bytes} B") }
}

/// The models: every fixture, then every `light/` model (with the input
/// shapes of its test data, as the conformance run compiles it).
pub fn models() -> Vec<(String, PathBuf, Options)> {
    let mut models = vec![];
    for dir in suite::case_dirs(&suite::repo_root().join("fixtures")).unwrap_or_default() {
        if dir.join("model.onnx").exists() {
            models.push((format!("fixtures/{}", file_name(&dir)), dir.join("model.onnx"), shapes_of_inputs(&dir)));
        }
    }
    for dir in suite::case_dirs(&suite::onnx_data_root().join("light")).unwrap_or_default() {
        models.push((format!("light/{}", file_name(&dir)), dir.join("model.onnx"), shapes_of_test_data(&dir)));
    }
    models
}

/// Compiles one model and reads its plan from the bundle.
pub fn measure(name: &str, model: &Path, opts: &Options) -> Result<Row, String> {
    let compiled = drift_compiler::compile_file(model, opts).map_err(|e| format!("{name}: {e}"))?;
    Ok(row(name, &compiled.program.bundle))
}

fn row(name: &str, b: &Bundle) -> Row {
    // Activations only: the state buffers hold a carried KV cache, which the
    // lower bound does not count either.
    let planned = b
        .buffers
        .iter()
        .enumerate()
        .filter(|(i, x)| x.kind == BufferKind::Arena as i32 && !b.state_buffers.contains(&(*i as u32)))
        .map(|(_, x)| x.size)
        .sum();
    let m = b.memory.clone().unwrap_or_default();
    Row {
        name: name.to_string(),
        tensors: m.tensors,
        in_place: m.in_place,
        naive: m.naive_bytes,
        lower_bound: m.lower_bound_bytes,
        planned,
        strategy: m.strategy,
    }
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

/// How a fixture compiles: with the dims of its `dims.txt` (one `NAME=VALUE`
/// or `NAME=MIN..MAX` a line, as `drift compile --dim` takes them; the
/// LLM fixture's bounded dims), else at the shapes of its `inputs/*.npy`.
fn shapes_of_inputs(dir: &Path) -> Options {
    let mut opts = Options::default();
    if let Ok(text) = std::fs::read_to_string(dir.join("dims.txt")) {
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let Some((name, v)) = line.split_once('=') else { continue };
            let num = |x: &str| x.trim().parse::<usize>().unwrap_or(0);
            match v.split_once("..") {
                Some((lo, hi)) => opts.dim_ranges.insert(name.trim().into(), (num(lo), num(hi))),
                None => opts.dims.insert(name.trim().into(), num(v)).map(|x| (x, x)),
            };
        }
        return opts;
    }
    for entry in std::fs::read_dir(dir.join("inputs")).into_iter().flatten().flatten() {
        let path = entry.path();
        if let (Some(stem), Ok(t)) = (path.file_stem(), drift_compiler::npy::read(&path)) {
            opts.input_shapes.insert(stem.to_string_lossy().into_owned(), t.shape.clone());
        }
    }
    opts
}

fn shapes_of_test_data(dir: &Path) -> Options {
    let mut opts = Options::default();
    if let Ok(case) = crate::load_onnx_case(dir) {
        for (name, t) in case.inputs.iter().filter(|(n, _)| !n.is_empty()) {
            opts.input_shapes.insert(name.clone(), t.shape.clone());
        }
    }
    opts
}
