//! Developer tool: compile every fixture and every `light/` model of the onnx
//! wheel and print the memory planner's figures as the markdown table of
//! `docs/memory.md`.
//!
//! `DRIFT_ONNX_TESTS=/path/to/onnx-tests cargo run --release -p drift-tests --bin memory [-- --check]`
//!
//! With `--check` it exits non-zero when a planned arena exceeds 1.05 × its
//! lower bound (the planner's bar) or a model fails to compile.

use drift_tests::memory;

fn main() {
    let check = std::env::args().any(|a| a == "--check");
    let models = memory::models();
    if !models.iter().any(|(name, _, _)| name.starts_with("light/")) {
        eprintln!("warning: no light/ models found (set DRIFT_ONNX_TESTS)");
    }
    let mut failed = false;
    println!("{}", memory::TABLE_HEADER);
    for (name, model, opts) in &models {
        match memory::measure(name, model, opts) {
            Ok(row) => {
                println!("{}", row.markdown());
                failed |= !row.meets_bar();
            }
            Err(e) => {
                eprintln!("error: {e}");
                failed = true;
            }
        }
    }
    if check && failed {
        std::process::exit(1);
    }
}
