//! The memory planner's bar: on every fixture and every `light/` model of the
//! onnx wheel, the planned arena is at most 1.05 × the lower bound (the most
//! bytes live at once). Compiles only; no GPU. `docs/memory.md` has the table
//! (`cargo run --release -p drift-tests --bin memory`).

use drift_tests::memory;

#[test]
fn every_plan_is_within_5_percent_of_the_lower_bound() {
    let models = memory::models();
    let light = models.iter().filter(|(name, _, _)| name.starts_with("light/")).count();
    assert!(models.len() >= 5, "expected the fixtures, found {} models", models.len());
    assert!(light >= 9, "expected the 9 light/ models under DRIFT_ONNX_TESTS, found {light}");
    let mut misses = vec![];
    for (name, model, opts) in &models {
        match memory::measure(name, model, opts) {
            Ok(row) if row.meets_bar() && row.lower_bound > 0 => {}
            Ok(row) => misses.push(row.markdown()),
            Err(e) => misses.push(e),
        }
    }
    assert!(misses.is_empty(), "plans past {} × the lower bound:\n{}", memory::BAR, misses.join("\n"));
}
