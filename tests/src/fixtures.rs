//! The repository's fixtures (`fixtures/<name>/`: model.onnx, inputs/*.npy
//! and onnxruntime's outputs/*.npy), compiled with a chosen weight format
//! and measured against onnxruntime: how far the outputs are and how large
//! the bundle is. Shared by the f16-weights test and its report program.

use crate::suite;
use drift_compiler::{Options, WeightFormat};
use drift_runtime::{HostTensor, Model, Session, Trust};
use std::path::{Path, PathBuf};

/// Every fixture folder with a model, sorted.
pub fn fixture_dirs() -> Vec<PathBuf> {
    let dir = suite::repo_root().join("fixtures");
    suite::case_dirs(&dir).unwrap_or_default().into_iter().filter(|d| d.join("model.onnx").exists()).collect()
}

/// The `.npy` files of `dir` as (file stem, tensor), sorted by name.
pub fn read_npy_dir(dir: &Path) -> Result<Vec<(String, HostTensor)>, String> {
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

/// One fixture compiled with one weight format and run once.
#[derive(Clone, Debug)]
pub struct Measure {
    pub name: String,
    pub bundle_bytes: usize,
    pub weights_bytes: u64,
    /// Largest |drift - onnxruntime| over all output elements.
    pub max_abs: f64,
    /// Largest |onnxruntime| over all output elements (the outputs' scale).
    pub max_ref: f64,
    /// Largest |drift - onnxruntime| / |onnxruntime| over elements with
    /// |onnxruntime| >= 1e-3 · max_ref (smaller ones say nothing relative).
    pub max_rel: f64,
}

/// Compiles the fixture in `dir` with `weights`, runs it (trusted: this
/// process compiled it) on `gpu` and compares with onnxruntime's outputs.
pub fn measure(gpu: &drift_runtime::Gpu, dir: &Path, weights: WeightFormat) -> Result<Measure, String> {
    let name = dir.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let inputs = read_npy_dir(&dir.join("inputs"))?;
    let expected = read_npy_dir(&dir.join("outputs"))?;
    measure_model(gpu, &name, &dir.join("model.onnx"), &inputs, &expected, weights)
}

/// [`measure`] for any model with its inputs and expected outputs (e.g. an
/// ONNX test case of the `light` suite).
pub fn measure_model(
    gpu: &drift_runtime::Gpu,
    name: &str,
    model: &Path,
    inputs: &[(String, HostTensor)],
    expected: &[(String, HostTensor)],
    weights: WeightFormat,
) -> Result<Measure, String> {
    let name = name.to_string();
    let mut opts = Options { weights, ..Options::default() };
    for (n, t) in inputs {
        opts.input_shapes.insert(n.clone(), t.shape.clone());
    }
    let compiled = drift_compiler::compile_file(model, &opts).map_err(|e| e.to_string())?;
    let bytes = compiled.to_bytes();
    let bundle_bytes = bytes.len();
    let weights_bytes = compiled.program.bundle.weights_size;
    let model = Model::from_bytes(bytes).map_err(|e| e.to_string())?.with_trust(Trust::Trusted);
    let mut session = Session::new(gpu, &model).map_err(|e| e.to_string())?;
    let args: Vec<(&str, &HostTensor)> = inputs.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let outputs = session.run(&args).map_err(|e| e.to_string())?;
    let (mut max_abs, mut max_ref, mut pairs) = (0f64, 0f64, vec![]);
    for (k, (out_name, want)) in expected.iter().enumerate() {
        // Old ONNX test data leave names empty: those match by position.
        let got = outputs.iter().find(|(n, _)| n == out_name).or(outputs.get(k));
        let got = got.ok_or(format!("{name}: no output '{out_name}'"))?;
        if got.1.shape != want.shape {
            return Err(format!("{name}: output '{out_name}' has shape {:?}, expected {:?}", got.1.shape, want.shape));
        }
        for (g, w) in got.1.to_f64_vec().into_iter().zip(want.to_f64_vec()) {
            max_abs = max_abs.max((g - w).abs());
            max_ref = max_ref.max(w.abs());
            pairs.push((g, w));
        }
    }
    let floor = 1e-3 * max_ref;
    let max_rel =
        pairs.iter().filter(|(_, w)| w.abs() >= floor).map(|(g, w)| (g - w).abs() / w.abs()).fold(0.0, f64::max);
    Ok(Measure { name, bundle_bytes, weights_bytes, max_abs, max_ref, max_rel })
}
