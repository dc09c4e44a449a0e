//! What the optimizer must achieve, checked on compile alone (no GPU):
//! ResNet-50 of the onnx wheel runs in at most (Conv nodes + 5) dispatches,
//! the BERT encoder fixture in at most 10 dispatches per layer, and both
//! move at least 40% fewer estimated bytes per run than without the
//! optimizer.

use drift_compiler::{Options, compile_file, stats::Stats};
use std::path::{Path, PathBuf};

fn stats(model: &Path, no_opt: bool) -> Stats {
    let opts = Options { no_opt, ..Options::default() };
    compile_file(model, &opts).unwrap_or_else(|e| panic!("{}: {e}", model.display())).stats
}

fn check_bytes(name: &str, before: &Stats, after: &Stats) {
    let cut = 1.0 - after.bytes as f64 / before.bytes as f64;
    println!(
        "{name}: dispatches {} -> {}, bytes {} -> {} (-{:.1}%)",
        before.dispatches,
        after.dispatches,
        before.bytes,
        after.bytes,
        100.0 * cut
    );
    assert!(cut >= 0.4, "{name}: estimated bytes only {:.1}% lower", 100.0 * cut);
}

#[test]
fn bert_encoder_fixture() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/bert_encoder/model.onnx");
    let (before, after) = (stats(&model, true), stats(&model, false));
    // Outside the 2 layers: the embeddings' gather, their LayerNorm, the mask.
    let per_layer = (after.dispatches - 3) as f64 / 2.0;
    assert!(per_layer <= 10.0, "{per_layer} dispatches per encoder layer");
    assert_eq!(after.ops.get("Attention"), Some(&2), "attention recognized in both layers: {:?}", after.ops);
    check_bytes("bert_encoder", &before, &after);
}

#[test]
fn resnet50() {
    let root = std::env::var_os("DRIFT_ONNX_TESTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/onnx-tests"));
    let model = root.join("light/test_resnet50/model.onnx");
    assert!(model.exists(), "{} is missing (set DRIFT_ONNX_TESTS)", model.display());
    let (before, after) = (stats(&model, true), stats(&model, false));
    let convs = before.ops.get("Conv").copied().unwrap_or(0);
    assert_eq!(convs, 53);
    assert!(after.dispatches <= convs + 5, "{} dispatches for {convs} Conv nodes", after.dispatches);
    check_bytes("resnet50", &before, &after);
}
