//! The conformance gate with the optimizer on (the default): every ONNX
//! test suite plus the fixtures; see `drift_tests::gate`. `DRIFT_BLESS=1`
//! rewrites the pass lists and docs/conformance.md.

fn main() {
    let bless = std::env::var_os("DRIFT_BLESS").is_some();
    drift_tests::gate::run(true, drift_tests::suite::ONNX_SUITES, bless);
}
