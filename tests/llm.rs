//! The tiny Llama fixture (`fixtures/llama_tiny`, made by `fixtures/llama.py`)
//! against onnxruntime: prefill, decode and a chunk on top of the cache, in
//! f32, with drift's own weight-only quantization (`--quantize`) against a
//! reference that dequantized the same weights in numpy, and as published
//! int4 models ship it (MatMulNBits, run natively by onnxruntime).
//!
//! Every variant prints its logits' error against the f32 reference, the
//! cost of its weight format.

use drift_compiler::Options;
use drift_compiler::quantize::Quantize;
use drift_runtime::{Gpu, HostTensor, Model, Session};
use drift_tests::{Outcome, compare};
use std::path::{Path, PathBuf};

/// The bar: logits within 1e-3 relative of onnxruntime.
const RTOL: f64 = 1e-3;
const ATOL: f64 = 1e-5;
const STEPS: [&str; 3] = ["prefill", "decode", "chunk"];

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").join("fixtures/llama_tiny")
}

fn read_dir(dir: &Path) -> Vec<(String, HostTensor)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "npy"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| {
            let name = p.file_stem().expect("npy stem").to_string_lossy().into_owned();
            (name, drift_compiler::npy::read(p).unwrap_or_else(|e| panic!("{e}")))
        })
        .collect()
}

/// One weight format of the fixture: the model, the compile option and the
/// folder of its onnxruntime references.
struct Variant {
    name: &'static str,
    model: &'static str,
    quantize: Option<Quantize>,
    refs: &'static str,
}

const fn variant(name: &'static str, bits: u32, group: usize) -> Variant {
    Variant { name, model: "model.onnx", quantize: Some(Quantize { bits, group }), refs: name }
}

fn variants() -> Vec<Variant> {
    vec![
        Variant { name: "f32", model: "model.onnx", quantize: None, refs: "steps" },
        variant("int8_g32", 8, 32),
        variant("int4_g32", 4, 32),
        variant("int4_g64", 4, 64),
        variant("f16", 16, 0),
        Variant { name: "MatMulNBits int4", model: "model_nbits.onnx", quantize: None, refs: "nbits" },
    ]
}

fn compile_static(v: &Variant, inputs: &[(String, HostTensor)]) -> Model {
    let mut opts = Options { quantize: v.quantize, ..Options::default() };
    for (name, t) in inputs {
        opts.input_shapes.insert(name.clone(), t.shape.clone());
    }
    let compiled = drift_compiler::compile_file(&fixture_dir().join(v.model), &opts)
        .unwrap_or_else(|e| panic!("{}: compile: {e}", v.name));
    Model::from_bytes(compiled.to_bytes()).unwrap_or_else(|e| panic!("{}: load: {e}", v.name))
}

fn max_abs_diff(a: &HostTensor, b: &HostTensor) -> f64 {
    a.to_f64_vec().iter().zip(b.to_f64_vec()).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

fn output<'a>(outs: &'a [(String, HostTensor)], name: &str) -> &'a HostTensor {
    &outs.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no output '{name}'")).1
}

/// Each step compiled for its own shapes (static dims), every output checked.
#[test]
fn static_steps_match_onnxruntime_in_every_weight_format() {
    let gpu = Gpu::new().expect("a GPU (lavapipe in CI)");
    let dir = fixture_dir();
    let mut failures = vec![];
    for v in variants() {
        let mut worst_vs_f32 = 0f64;
        for step in STEPS {
            // Each variant's later steps read its own earlier presents.
            let inputs = read_dir(&dir.join(v.refs).join(step).join("inputs"));
            let want = read_dir(&dir.join(v.refs).join(step).join("outputs"));
            let f32_ref = read_dir(&dir.join("steps").join(step).join("outputs"));
            let model = compile_static(&v, &inputs);
            let mut session = Session::new(&gpu, &model).expect("session");
            let args: Vec<(&str, &HostTensor)> = inputs.iter().map(|(n, t)| (n.as_str(), t)).collect();
            let got = session.run(&args).expect("run");
            if let Outcome::Mismatch(m) = compare(&got, &want, RTOL, ATOL) {
                failures.push(format!("{} {step}: {m}", v.name));
            }
            worst_vs_f32 = worst_vs_f32.max(max_abs_diff(output(&got, "logits"), output(&f32_ref, "logits")));
        }
        println!("{:>18}: max |logits - f32 onnxruntime logits| = {worst_vs_f32:.3e}", v.name);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
