//! The conformance gate, shared by the `conformance` test (optimizer on)
//! and the `no_opt` test (optimizer off): every ONNX test suite of the onnx
//! wheel plus the repository's fixtures, compiled and run on the GPU.
//!
//! A case listed in `tests/conformance/<suite>.pass` must pass; a failure
//! there fails the test. New passes are reported so the list can be
//! extended with `DRIFT_BLESS=1` (on the optimizer-on gate), which also
//! regenerates docs/conformance.md. Fixtures must all pass.

use crate::Outcome;
use crate::suite::{self, Result as CaseResult};
use drift_runtime::Gpu;
use std::collections::BTreeSet;

/// Runs `suites` and the fixtures, compiled with or without the optimizer;
/// exits non-zero on a regression. `bless` rewrites the pass lists and the
/// report.
pub fn run(optimize: bool, suites: &[&str], bless: bool) {
    crate::set_optimize(optimize);
    let mode = if optimize { "" } else { " (no optimizer)" };
    let gpu = Gpu::new()
        .unwrap_or_else(|e| fail(&format!("no GPU: {e} (CI uses lavapipe: apt install mesa-vulkan-drivers)")));
    let root = suite::onnx_data_root();
    if !root.join("node").is_dir() {
        fail(&format!("{} is missing: run python3 scripts/gen_onnx_tests.py --out target/onnx-tests", root.display()));
    }
    let mut all: Vec<(String, Vec<CaseResult>)> = vec![];
    let mut regressions = vec![];
    let mut total_pass = 0;
    for &name in suites {
        let start = std::time::Instant::now();
        let results = suite::run_onnx_suite(&gpu, &root.join(name), "", |_| {});
        let pass = results.iter().filter(|r| r.outcome.passed()).count();
        total_pass += pass;
        println!("{name}{mode}: {pass}/{} pass in {:.1} s", results.len(), start.elapsed().as_secs_f64());
        check_against_list(name, &results, &mut regressions);
        all.push((name.to_string(), results));
    }
    let fixtures = run_fixtures(&gpu);
    let fixture_fail: Vec<&CaseResult> = fixtures.iter().filter(|r| !r.outcome.passed()).collect();
    println!("fixtures{mode}: {}/{} pass", fixtures.len() - fixture_fail.len(), fixtures.len());
    for r in &fixture_fail {
        regressions.push(format!("fixture {}: {}", r.name, r.outcome.message()));
    }
    total_pass += fixtures.len() - fixture_fail.len();
    all.push(("fixtures".into(), fixtures));
    if bless {
        for (name, results) in &all {
            suite::write_pass_list(name, results).unwrap_or_else(|e| fail(&e.to_string()));
        }
        suite::write_report(&all, &gpu.info().to_string()).unwrap_or_else(|e| fail(&e.to_string()));
        println!("blessed: pass lists and docs/conformance.md rewritten");
    }
    for r in &regressions {
        println!("REGRESSION{mode} {r}");
    }
    println!("conformance{mode}: {total_pass} passed, {} failed", regressions.len());
    if !regressions.is_empty() && !bless {
        std::process::exit(1);
    }
}

pub fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(1)
}

/// Expected passes that failed become regressions; new passes are listed.
fn check_against_list(suite_name: &str, results: &[CaseResult], regressions: &mut Vec<String>) {
    let expected: BTreeSet<String> = suite::read_pass_list(suite_name).into_iter().collect();
    let mut new = vec![];
    for r in results {
        match (expected.contains(&r.name), r.outcome.passed()) {
            (true, false) => regressions.push(format!(
                "{suite_name}/{}: [{}] {}",
                r.name,
                r.outcome.class(),
                r.outcome.message().lines().last().unwrap_or("")
            )),
            (false, true) => new.push(r.name.clone()),
            _ => {}
        }
    }
    let seen: BTreeSet<&str> = results.iter().map(|r| r.name.as_str()).collect();
    for missing in expected.iter().filter(|n| !seen.contains(n.as_str())) {
        regressions.push(format!("{suite_name}/{missing}: case not found in the test data"));
    }
    if !new.is_empty() {
        let shown: Vec<&str> = new.iter().take(20).map(String::as_str).collect();
        let more = if new.len() > shown.len() { ", ..." } else { "" };
        println!("  {} new pass(es) in {suite_name} (add with DRIFT_BLESS=1): {}{more}", new.len(), shown.join(", "));
    }
}

/// Each `fixtures/<name>/` holds model.onnx, inputs/*.npy and the outputs
/// onnxruntime computed, outputs/*.npy.
fn run_fixtures(gpu: &Gpu) -> Vec<CaseResult> {
    let dir = suite::repo_root().join("fixtures");
    let mut results = vec![];
    for case_dir in suite::case_dirs(&dir).unwrap_or_default() {
        if !case_dir.join("model.onnx").exists() {
            continue;
        }
        let name = case_dir.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let (outcome, fixed_inputs) = match crate::load_fixture(&case_dir) {
            Ok(case) => suite::guarded_run(gpu, &case),
            Err(e) => (Outcome::Data(e), vec![]),
        };
        results.push(CaseResult { name, op: "fixture".into(), outcome, fixed_inputs });
    }
    if results.is_empty() {
        fail("no fixtures found under fixtures/");
    }
    results
}
