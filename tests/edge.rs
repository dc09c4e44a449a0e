//! Focused edge cases per op family (`tests/edge/<family>/<case>/`, written by
//! `tests/edge/generate.py` with onnxruntime's outputs): broadcasting between
//! unequal ranks, negative axes, empty tensors, rank-0 scalars, clamped and
//! reversed ranges. Unlike the ONNX suites there is no pass list: every case
//! must pass on the GPU at its own tolerance.

use drift_runtime::Gpu;
use drift_tests::suite;

fn main() {
    let gpu = Gpu::new().unwrap_or_else(|e| {
        eprintln!("error: no GPU: {e} (CI uses lavapipe: apt install mesa-vulkan-drivers)");
        std::process::exit(1)
    });
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-')).unwrap_or_default();
    let root = suite::repo_root().join("tests/edge");
    let families = suite::case_dirs(&root).unwrap_or_default();
    let mut failures = vec![];
    let mut total = 0;
    for family in &families {
        let name = family.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let results = suite::run_onnx_suite(&gpu, family, &filter, |_| {});
        let failed: Vec<_> = results.iter().filter(|r| !r.outcome.passed()).collect();
        println!("{name:<12} {}/{} pass", results.len() - failed.len(), results.len());
        for r in failed {
            failures.push(format!("{name}/{}: [{}] {}", r.name, r.outcome.class(), r.outcome.message()));
        }
        total += results.len();
    }
    if total == 0 {
        eprintln!("error: no edge cases found under {} (filter '{filter}')", root.display());
        std::process::exit(1);
    }
    for f in &failures {
        println!("FAIL {f}");
    }
    println!("edge cases: {} passed, {} failed", total - failures.len(), failures.len());
    if !failures.is_empty() {
        std::process::exit(1);
    }
}
