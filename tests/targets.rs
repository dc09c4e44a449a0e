//! Device targets on lavapipe: every fixture compiled with the kernel sets of
//! the GPU targets (tiled products, GEMV, implicit padding, split
//! reductions) and with f16 activations, compared with onnxruntime's
//! outputs. Cooperative-matrix kernels need a GPU that has them (lavapipe
//! has none), so f16 runs here use targets without them; the benchmark
//! (tests/bench) checks those against PyTorch on the GPU.

use drift_compiler::Options;
use drift_ops::Target;
use drift_runtime::bundle::Need;
use drift_runtime::{Gpu, HostTensor, Model, Session};
use std::path::{Path, PathBuf};

/// Normwise relative error allowed with f16 activations. Measured per
/// fixture (docs/benchmarks.md): at most 4.7e-4 against float32.
const F16_REL_L2: f64 = 2e-3;

struct Fixture {
    name: String,
    model: PathBuf,
    inputs: Vec<(String, HostTensor)>,
    expected: Vec<(String, HostTensor)>,
}

fn npy_dir(dir: &Path) -> Vec<(String, HostTensor)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "npy"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| {
            let name = p.file_stem().expect("stem").to_string_lossy().into_owned();
            (name, drift_compiler::npy::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        })
        .collect()
}

fn fixtures() -> Vec<Fixture> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
    let mut out = vec![];
    for entry in std::fs::read_dir(&root).expect("fixtures/") {
        let dir = entry.expect("entry").path();
        if !dir.join("model.onnx").exists() {
            continue;
        }
        out.push(Fixture {
            name: dir.file_name().expect("name").to_string_lossy().into_owned(),
            model: dir.join("model.onnx"),
            inputs: npy_dir(&dir.join("inputs")),
            expected: npy_dir(&dir.join("outputs")),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    assert!(out.len() >= 6, "fixtures missing under {}", root.display());
    out
}

/// Compiles `f` for `targets` (the last is the top level unless generic is
/// among them), runs the program `DRIFT_TARGET`-free selection would run on
/// lavapipe (the top level) twice, checks that the second run gives the
/// same bits (split reductions meeting in-kernel reset their counters and
/// add parts in a fixed order), returns its outputs.
fn run(gpu: &Gpu, f: &Fixture, targets: &[&str], f16: bool) -> Vec<(String, HostTensor)> {
    let targets: Vec<Target> = targets.iter().map(|t| Target::named(t).expect("target")).collect();
    run_tuned(gpu, f, &targets, f16)
}

fn run_tuned(gpu: &Gpu, f: &Fixture, targets: &[Target], f16: bool) -> Vec<(String, HostTensor)> {
    let mut opts = Options { f16, ..Options::default() };
    opts.targets = targets.to_vec();
    let targets: Vec<&str> = targets.iter().map(|t| t.name).collect();
    for (name, t) in &f.inputs {
        opts.input_shapes.insert(name.clone(), t.shape.clone());
    }
    let compiled = drift_compiler::compile_file(&f.model, &opts).unwrap_or_else(|e| panic!("{}: {e}", f.name));
    // Compiled by this process: trusted, as the conformance suite does.
    let model = Model::from_bytes(compiled.to_bytes()).unwrap_or_else(|e| panic!("{}: {e}", f.name));
    let model = model.with_trust(drift_runtime::Trust::Trusted);
    let mut session = Session::new(gpu, &model).unwrap_or_else(|e| panic!("{} {targets:?}: {e}", f.name));
    let inputs: Vec<(&str, &HostTensor)> = f.inputs.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let first = session.run(&inputs).unwrap_or_else(|e| panic!("{} {targets:?}: {e}", f.name));
    let again = session.run(&inputs).unwrap_or_else(|e| panic!("{} {targets:?}: {e}", f.name));
    assert_eq!(first, again, "{} {targets:?}: a second run differs", f.name);
    first
}

fn rel_l2(got: &HostTensor, want: &HostTensor) -> f64 {
    let (g, w) = (got.to_f64_vec(), want.to_f64_vec());
    let num: f64 = g.iter().zip(&w).map(|(a, b)| (a - b) * (a - b)).sum();
    let den: f64 = w.iter().map(|b| b * b).sum();
    (num / den.max(1e-300)).sqrt()
}

#[test]
fn gpu_targets_match_onnxruntime() {
    let gpu = Gpu::new().expect("a GPU (lavapipe in CI)");
    for f in fixtures() {
        for target in ["nvidia", "amd", "adreno"] {
            let got = run(&gpu, &f, &[target], false);
            let outcome = drift_tests::compare(&got, &f.expected, 1e-3, 1e-5);
            assert!(outcome.passed(), "{} on target {target}: {}", f.name, outcome.message());
        }
    }
}

/// The product heuristics' alternatives, forced: every split product split
/// 8 ways, meeting in the product kernel or in a second pass; grouped
/// convolutions on the product kernels instead of the direct one.
#[test]
fn forced_product_choices_match_onnxruntime() {
    let gpu = Gpu::new().expect("a GPU (lavapipe in CI)");
    let nvidia = Target::named("nvidia").expect("nvidia");
    for tune in ["split=8", "split=8,split-meet=pass", "grouped=product", "tile=64x32x16x4x2,split=3"] {
        let tuning = drift_ops::Tuning::parse(tune).expect("tuning");
        for f in fixtures() {
            let got = run_tuned(&gpu, &f, &[Target { tuning, ..nvidia }], false);
            let outcome = drift_tests::compare(&got, &f.expected, 1e-3, 1e-5);
            assert!(outcome.passed(), "{} with --tune {tune}: {}", f.name, outcome.message());
        }
    }
}

#[test]
fn f16_activations_stay_close_to_f32() {
    let gpu = Gpu::new().expect("a GPU (lavapipe in CI)");
    if !gpu.has(Need::F16) {
        panic!("the test GPU lacks f16 (lavapipe has it)");
    }
    for f in fixtures() {
        for target in ["generic", "intel"] {
            let got = run(&gpu, &f, &[target], true);
            for (name, want) in &f.expected {
                let (_, g) = got.iter().find(|(n, _)| n == name).expect("output");
                assert_eq!(g.shape, want.shape);
                let err = rel_l2(g, want);
                println!("{} {target} f16 {name}: rel L2 {err:.2e}", f.name);
                assert!(err <= F16_REL_L2, "{} {target} f16 output {name}: rel L2 error {err:.2e}", f.name);
            }
        }
    }
}

#[test]
fn bundles_carry_one_kernel_set_per_target() {
    let f = fixtures().into_iter().find(|f| f.name == "products").expect("products fixture");
    let compile = |targets: &[&str], f16: bool| {
        let mut opts = Options { f16, ..Options::default() };
        opts.targets = targets.iter().map(|t| Target::named(t).expect("target")).collect();
        let bytes = drift_compiler::compile_file(&f.model, &opts).expect("compiles").to_bytes();
        Model::from_bytes(bytes).expect("loads").with_trust(drift_runtime::Trust::Trusted)
    };
    let one = compile(&["generic"], false);
    let all = compile(&["generic", "nvidia", "amd", "intel", "apple", "adreno", "mali"], true);
    assert_eq!(all.bundle().variants.len(), 6);
    // Weights are shared: seven sets cost kernels, not weights.
    assert_eq!(all.weights().len(), one.weights().len());
    let pick = |vendor: u32, coop: bool| {
        let p = all.program_for(vendor, |n| n == Need::F16 || (coop && n == Need::CooperativeMatrix)).expect("pick");
        drift_runtime::model::target_name(p).to_string()
    };
    assert_eq!(pick(0x10de, true), "nvidia");
    // Without cooperative matrices the NVIDIA set (which uses them) does not fit.
    assert_eq!(pick(0x10de, false), "generic");
    assert_eq!(pick(0x1002, true), "amd");
    assert_eq!(pick(0x5143, false), "adreno");
    assert_eq!(pick(0x1234, true), "generic");
    // Untrusted, a model runs only WGSL: only sets whose kernels all have it qualify.
    let untrusted = all.with_trust(drift_runtime::Trust::Untrusted);
    let p = untrusted.program_for(0x10de, |_| true).expect("pick");
    assert!(
        p.kernels.iter().all(|k| !k.wgsl.is_empty()),
        "untrusted picked '{}'",
        drift_runtime::model::target_name(p)
    );
    let all = untrusted.with_trust(drift_runtime::Trust::Trusted);
    let text = drift_compiler::inspect::describe(all.bundle());
    assert!(text.contains("nvidia   vendors [0x10de] needs [F16, CooperativeMatrix] "), "{text}");
}
