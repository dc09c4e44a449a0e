//! Developer tool: run one ONNX test suite (or part of it) and print each
//! case's outcome.
//!
//! `cargo run --release -p drift-tests --bin conformance -- [SUITE] [FILTER] [-v] [--no-opt]`
//! SUITE is node (default), light, simple, pytorch-converted or pytorch-operator;
//! `--no-opt` compiles without the graph optimizer.

use drift_runtime::Gpu;
use drift_tests::suite;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let verbose = args.iter().any(|a| a == "-v");
    drift_tests::set_optimize(!args.iter().any(|a| a == "--no-opt"));
    let pos: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let suite_name = pos.first().map(|s| s.as_str()).unwrap_or("node");
    let filter = pos.get(1).map(|s| s.as_str()).unwrap_or("");
    let gpu = match Gpu::new() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let dir = suite::onnx_data_root().join(suite_name);
    let results = suite::run_onnx_suite(&gpu, &dir, filter, |r| {
        if r.outcome.passed() {
            if verbose {
                println!("PASS {}", r.name);
            }
        } else {
            let msg = r.outcome.message().replace('\n', " | ");
            let msg: String = msg.chars().take(if verbose { 2000 } else { 200 }).collect();
            println!("FAIL {} [{}] {}", r.name, r.outcome.class(), msg);
        }
    });
    let pass = results.iter().filter(|r| r.outcome.passed()).count();
    println!("{suite_name}: {pass} passed, {} failed", results.len() - pass);
}
