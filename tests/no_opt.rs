//! The conformance gate with the optimizer off (`drift compile --no-opt`):
//! the listed passes of every suite and all fixtures must pass without the
//! graph optimizer too (see `drift_tests::gate`).

fn main() {
    drift_tests::gate::run(false, drift_tests::suite::ONNX_SUITES, false);
}
