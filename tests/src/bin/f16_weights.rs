//! Report: accuracy and bundle size of `--weights f16` against f32 on every
//! fixture, both measured against onnxruntime's outputs. Prints the
//! markdown table of docs/bundle.md ("f16 weights").
//!
//! `cargo run --release -p drift-tests --bin f16_weights`

use drift_compiler::WeightFormat;
use drift_runtime::Gpu;
use drift_tests::fixtures::{fixture_dirs, measure};

fn main() {
    let gpu = Gpu::new().unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(1)
    });
    println!("GPU: {}\n", gpu.info());
    println!(
        "| fixture | weights f32 → f16 (bytes) | bundle f32 → f16 (bytes) | max abs err f32 | max abs err f16 | f16 err / max abs ref | max rel err f32 | max rel err f16 |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for dir in fixture_dirs() {
        let run = |w| measure(&gpu, &dir, w).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let (a, b) = (run(WeightFormat::F32), run(WeightFormat::F16));
        println!(
            "| {} | {} → {} ({:.0}%) | {} → {} ({:.0}%) | {:.2e} | {:.2e} | {:.2e} | {:.2e} | {:.2e} |",
            a.name,
            a.weights_bytes,
            b.weights_bytes,
            100.0 * (1.0 - b.weights_bytes as f64 / a.weights_bytes.max(1) as f64),
            a.bundle_bytes,
            b.bundle_bytes,
            100.0 * (1.0 - b.bundle_bytes as f64 / a.bundle_bytes as f64),
            a.max_abs,
            b.max_abs,
            b.max_abs / b.max_ref,
            a.max_rel,
            b.max_rel,
        );
    }
}
