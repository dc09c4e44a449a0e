//! Report: accuracy and bundle size of `--weights f16` against f32 on every
//! fixture, both measured against onnxruntime's outputs. Prints the
//! markdown table of docs/bundle.md ("f16 weights").
//!
//! `cargo run --release -p drift-tests --bin f16_weights [ONNX_TEST_DIR...]`
//!
//! Extra arguments are ONNX test case folders (model.onnx and
//! test_data_set_0/), e.g. `$DRIFT_ONNX_TESTS/light/light_squeezenet`, measured
//! against their expected outputs the same way.

use drift_compiler::WeightFormat;
use drift_runtime::Gpu;
use drift_tests::fixtures::{Measure, fixture_dirs, measure, measure_model};

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
        row(&run(WeightFormat::F32), &run(WeightFormat::F16));
    }
    for arg in std::env::args().skip(1) {
        let case = drift_tests::load_onnx_case(std::path::Path::new(&arg)).unwrap_or_else(|e| panic!("{arg}: {e}"));
        let run = |w| {
            measure_model(&gpu, &case.name, &case.model, &case.inputs, &case.expected, w)
                .unwrap_or_else(|e| panic!("{arg}: {e}"))
        };
        row(&run(WeightFormat::F32), &run(WeightFormat::F16));
    }
}

fn row(a: &Measure, b: &Measure) {
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
