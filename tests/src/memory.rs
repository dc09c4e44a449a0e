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
            models.push((format!("fixtures/{}", file_name(&dir)), dir.join("model.onnx"), Options::default()));
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
    let planned = b.buffers.iter().filter(|x| x.kind == BufferKind::Arena as i32).map(|x| x.size).sum();
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

fn shapes_of_test_data(dir: &Path) -> Options {
    let mut opts = Options::default();
    if let Ok(case) = crate::load_onnx_case(dir) {
        for (name, t) in case.inputs.iter().filter(|(n, _)| !n.is_empty()) {
            opts.input_shapes.insert(name.clone(), t.shape.clone());
        }
    }
    opts
}
