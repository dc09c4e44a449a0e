//! `drift compile --weights f16`: every fixture, compiled with f16 weights,
//! still matches onnxruntime's float32 outputs, and its weights shrink.
//!
//! Tolerance, from f16's precision: rounding a weight to the nearest f16
//! changes it by at most u = 2^-11 (≈ 4.9e-4) of its value. Kernels compute
//! in f32, so a dot product of such weights with activations moves by at
//! most u·Σ|w·x|, which for these normalized nets is on the scale of the
//! layer's outputs. First-order errors of consecutive layers add; the
//! deepest fixture (transformer_block) chains 6 layers with weights
//! (LayerNorm, Q/K/V and output projections, LayerNorm, two FFN layers), and
//! the bound allows 8: |drift − onnxruntime| ≤ 8u·max|ref|.
//! (Measured on lavapipe: at most 0.63u; see docs/bundle.md.) A wrong half
//! or a wrong offset in the f16 accessors gives errors on the scale of the
//! outputs themselves, far beyond this bound.

use drift_compiler::WeightFormat;
use drift_runtime::Gpu;
use drift_tests::fixtures::{fixture_dirs, measure};

/// f16's unit roundoff: half the distance from 1 to the next f16.
const F16_UNIT_ROUNDOFF: f64 = 1.0 / 2048.0;
/// Layers with weights one after another that the bound allows for (the
/// fixtures have at most 6).
const WEIGHT_LAYERS: f64 = 8.0;

#[test]
fn f16_weights_match_onnxruntime_within_f16_precision() {
    let gpu = Gpu::new().expect("a GPU (lavapipe in CI) is available");
    let dirs = fixture_dirs();
    assert!(dirs.len() >= 5, "fixtures are missing: {dirs:?}");
    for dir in dirs {
        let f32 = measure(&gpu, &dir, WeightFormat::F32).expect("f32 fixture runs");
        let f16 = measure(&gpu, &dir, WeightFormat::F16).expect("f16 fixture runs");
        let bound = WEIGHT_LAYERS * F16_UNIT_ROUNDOFF * f16.max_ref;
        assert!(
            f16.max_abs <= bound,
            "{}: max |drift - onnxruntime| = {:e} with f16 weights, bound {bound:e} (8u of max |ref| {:e})",
            f16.name,
            f16.max_abs,
            f16.max_ref
        );
        assert!(
            f16.weights_bytes < f32.weights_bytes,
            "{}: f16 weights take {} bytes, f32 {}",
            f16.name,
            f16.weights_bytes,
            f32.weights_bytes
        );
        assert!(f16.bundle_bytes < f32.bundle_bytes, "{}: the bundle did not shrink", f16.name);
    }
}
