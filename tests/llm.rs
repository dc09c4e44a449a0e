//! The tiny Llama fixture (`fixtures/llama_tiny`, made by `fixtures/llama.py`)
//! and the tiny GPT-2 and Qwen2 ones (`fixtures/gpt2_tiny` from
//! `fixtures/gpt2.py`: learned positions, LayerNorm, a fused Q/K/V projection
//! split in three, tanh GELU, a tied LM head; `fixtures/qwen_tiny`: Llama's
//! layout with q/k/v biases) against onnxruntime: prefill, decode and a chunk on top of the cache, in
//! f32, with drift's own weight-only quantization (`--quantize`) against a
//! reference that dequantized the same weights in numpy, and as published
//! int4 models ship it (MatMulNBits, run natively by onnxruntime).
//!
//! Every variant prints its logits' error against the f32 reference, the
//! cost of its weight format.

use drift_compiler::Options;
use drift_compiler::quantize::Quantize;
use drift_runtime::{Feed, Gpu, HostTensor, Model, Session};
use drift_tests::{Outcome, compare};
use std::path::{Path, PathBuf};

/// The bar: logits within 1e-3 relative of onnxruntime.
const RTOL: f64 = 1e-3;
const ATOL: f64 = 1e-5;
const STEPS: [&str; 3] = ["prefill", "decode", "chunk"];

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").join("fixtures/llama_tiny")
}

fn read_dir(dir: &Path) -> Vec<(String, HostTensor)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "npy"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| {
            let name = p.file_stem().expect("npy stem").to_string_lossy().into_owned();
            (name, drift_compiler::npy::read(p).unwrap_or_else(|e| panic!("{e}")))
        })
        .collect()
}

/// One weight format of the fixture: the model, the compile option and the
/// folder of its onnxruntime references.
struct Variant {
    name: &'static str,
    model: &'static str,
    quantize: Option<Quantize>,
    refs: &'static str,
}

const fn variant(name: &'static str, bits: u32, group: usize) -> Variant {
    Variant { name, model: "model.onnx", quantize: Some(Quantize { bits, group }), refs: name }
}

fn variants() -> Vec<Variant> {
    vec![
        Variant { name: "f32", model: "model.onnx", quantize: None, refs: "steps" },
        variant("int8_g32", 8, 32),
        variant("int4_g32", 4, 32),
        variant("int4_g64", 4, 64),
        variant("f16", 16, 0),
        Variant { name: "MatMulNBits int4", model: "model_nbits.onnx", quantize: None, refs: "nbits" },
    ]
}

fn compile_static(v: &Variant, inputs: &[(String, HostTensor)]) -> Model {
    let mut opts = Options { quantize: v.quantize, ..Options::default() };
    for (name, t) in inputs {
        opts.input_shapes.insert(name.clone(), t.shape.clone());
    }
    let compiled = drift_compiler::compile_file(&fixture_dir().join(v.model), &opts)
        .unwrap_or_else(|e| panic!("{}: compile: {e}", v.name));
    Model::from_bytes(compiled.to_bytes()).unwrap_or_else(|e| panic!("{}: load: {e}", v.name))
}

fn max_abs_diff(a: &HostTensor, b: &HostTensor) -> f64 {
    a.to_f64_vec().iter().zip(b.to_f64_vec()).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

fn output<'a>(outs: &'a [(String, HostTensor)], name: &str) -> &'a HostTensor {
    &outs.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no output '{name}'")).1
}

/// Each step compiled for its own shapes (static dims), every output checked.
#[test]
fn static_steps_match_onnxruntime_in_every_weight_format() {
    let gpu = Gpu::new().expect("a GPU (lavapipe in CI)");
    let dir = fixture_dir();
    let mut failures = vec![];
    for v in variants() {
        let mut worst_vs_f32 = 0f64;
        for step in STEPS {
            // Each variant's later steps read its own earlier presents.
            let inputs = read_dir(&dir.join(v.refs).join(step).join("inputs"));
            let want = read_dir(&dir.join(v.refs).join(step).join("outputs"));
            let f32_ref = read_dir(&dir.join("steps").join(step).join("outputs"));
            let model = compile_static(&v, &inputs);
            let mut session = Session::new(&gpu, &model).expect("session");
            let args: Vec<(&str, &HostTensor)> = inputs.iter().map(|(n, t)| (n.as_str(), t)).collect();
            let got = session.run(&args).expect("run");
            if let Outcome::Mismatch(m) = compare(&got, &want, RTOL, ATOL) {
                failures.push(format!("{} {step}: {m}", v.name));
            }
            worst_vs_f32 = worst_vs_f32.max(max_abs_diff(output(&got, "logits"), output(&f32_ref, "logits")));
        }
        println!("{:>18}: max |logits - f32 onnxruntime logits| = {worst_vs_f32:.3e}", v.name);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Bounds of the dynamic bundle: prompt up to 32 tokens, cache up to 64.
const SEQ: (usize, usize) = (1, 32);
const PAST: (usize, usize) = (0, 64);

fn compile_dynamic(v: &Variant) -> Model {
    let mut opts = Options { quantize: v.quantize, ..Options::default() };
    opts.dims.insert("batch_size".into(), 1);
    opts.dim_ranges.insert("seq".into(), SEQ);
    opts.dim_ranges.insert("past".into(), PAST);
    let compiled = drift_compiler::compile_file(&fixture_dir().join(v.model), &opts)
        .unwrap_or_else(|e| panic!("{}: compile: {e}", v.name));
    Model::from_bytes(compiled.to_bytes()).unwrap_or_else(|e| panic!("{}: load: {e}", v.name))
}

/// One bundle (`--dim seq=1..32 --dim past=0..64`) with a decode and a
/// prefill stage runs all three steps from host inputs.
#[test]
fn one_dynamic_bundle_runs_prefill_decode_and_chunk() {
    let gpu = Gpu::new().expect("a GPU (lavapipe in CI)");
    let dir = fixture_dir();
    let mut failures = vec![];
    for v in variants() {
        let model = compile_dynamic(&v);
        assert_eq!(model.bundle().stages.len(), 2, "{}: a decode and a prefill stage", v.name);
        let mut session = Session::new(&gpu, &model).expect("session");
        for step in STEPS {
            let inputs = read_dir(&dir.join(v.refs).join(step).join("inputs"));
            let want = read_dir(&dir.join(v.refs).join(step).join("outputs"));
            let args: Vec<(&str, &HostTensor)> = inputs.iter().map(|(n, t)| (n.as_str(), t)).collect();
            let got = session.run(&args).unwrap_or_else(|e| panic!("{} {step}: {e}", v.name));
            if let Outcome::Mismatch(m) = compare(&got, &want, RTOL, ATOL) {
                failures.push(format!("{} {step}: {m}", v.name));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Prefill, then decode and chunk with the KV cache carried on the GPU:
/// only the first run uploads a (empty) cache, only logits are read back
/// until the end. Once run by run, once with decode and chunk as two steps
/// of one synchronization (`Session::run_steps`).
#[test]
fn kv_cache_is_carried_on_the_gpu_between_steps() {
    let gpu = Gpu::new().expect("a GPU (lavapipe in CI)");
    let dir = fixture_dir();
    for v in [variants().remove(0), variants().remove(2)] {
        let model = compile_dynamic(&v);
        for chained in [false, true] {
            let mut session = Session::new(&gpu, &model).expect("session");
            let pairs: Vec<String> = session.state_pairs().iter().map(|(i, _)| i.to_string()).collect();
            assert_eq!(pairs.len(), 4, "{}: 2 layers × key/value", v.name);
            let steps: Vec<_> = STEPS
                .iter()
                .map(|step| {
                    let at = dir.join(v.refs).join(step);
                    (read_dir(&at.join("inputs")), read_dir(&at.join("outputs")))
                })
                .collect();
            let feeds = |k: usize| -> Vec<(&str, Feed)> {
                let carried = |n: &str| k > 0 && pairs.iter().any(|i| i == n);
                steps[k]
                    .0
                    .iter()
                    .map(|(n, t)| (n.as_str(), if carried(n) { Feed::Carried } else { Feed::Host(t) }))
                    .collect()
            };
            // Logits from every step, every output from the last.
            let fetch = |k: usize| -> Vec<&str> {
                let last = k + 1 == STEPS.len();
                steps[k].1.iter().map(|(n, _)| n.as_str()).filter(|n| last || *n == "logits").collect()
            };
            let mut got = vec![];
            if chained {
                got.push(session.run_with(&feeds(0), Some(&fetch(0))).expect("prefill"));
                // run_steps fetches one list for all steps: the last step's.
                let outs = session.run_steps(&[feeds(1), feeds(2)], &fetch(2)).expect("decode + chunk");
                got.extend(outs);
            } else {
                for (k, step) in STEPS.iter().enumerate() {
                    let run = session.run_with(&feeds(k), Some(&fetch(k)));
                    got.push(run.unwrap_or_else(|e| panic!("{} {step}: {e}", v.name)));
                }
            }
            for (k, got) in got.iter().enumerate() {
                let want: Vec<(String, HostTensor)> =
                    steps[k].1.iter().filter(|(n, _)| got.iter().any(|(g, _)| g == n)).cloned().collect();
                assert_eq!(want.len(), got.len(), "{} {}: every fetched output has a reference", v.name, STEPS[k]);
                if let Outcome::Mismatch(m) = compare(got, &want, RTOL, ATOL) {
                    panic!("{} {} (carried cache, chained {chained}): {m}", v.name, STEPS[k]);
                }
            }
        }
    }
}

/// Shapes outside the compiled bounds are a clear error naming the dim.
#[test]
fn runs_outside_the_bounds_are_errors() {
    let gpu = Gpu::new().expect("a GPU (lavapipe in CI)");
    let model = compile_dynamic(&variants().remove(0));
    let mut session = Session::new(&gpu, &model).expect("session");
    let long = SEQ.1 + 1;
    let ids = HostTensor::new(drift_runtime::DType::I64, vec![1, long], vec![0; long * 8]).unwrap();
    let mask = HostTensor::new(drift_runtime::DType::I64, vec![1, long], vec![0; long * 8]).unwrap();
    let past = HostTensor::new(drift_runtime::DType::F32, vec![1, 2, 0, 16], vec![]).unwrap();
    let mut args: Vec<(&str, &HostTensor)> =
        vec![("input_ids", &ids), ("attention_mask", &mask), ("position_ids", &ids)];
    let names: Vec<String> =
        (0..2).flat_map(|i| ["key", "value"].map(|k| format!("past_key_values.{i}.{k}"))).collect();
    args.extend(names.iter().map(|n| (n.as_str(), &past)));
    let e = session.run(&args).expect_err("seq past its bound").to_string();
    assert!(e.contains("sequence_length") && e.contains(&long.to_string()) && e.contains("1..32"), "{e}");
    // A mask whose length disagrees with seq + past names the input.
    let short = HostTensor::new(drift_runtime::DType::I64, vec![1, 3], vec![0; 24]).unwrap();
    let ids4 = HostTensor::new(drift_runtime::DType::I64, vec![1, 4], vec![0; 32]).unwrap();
    args[0] = ("input_ids", &ids4);
    args[1] = ("attention_mask", &short);
    args[2] = ("position_ids", &ids4);
    let e = session.run(&args).expect_err("mask too short").to_string();
    assert!(e.contains("attention_mask"), "{e}");
}

/// An op without a symbolic shape rule is a compile error naming the node.
#[test]
fn ops_without_symbolic_rules_are_named() {
    let mut opts = Options::default();
    opts.dim_ranges.insert("seq".into(), (1, 8));
    let e = drift_compiler::compile_file(&fixture_dir().join("cumsum_dynamic.onnx"), &opts)
        .err()
        .expect("CumSum has no symbolic rule")
        .to_string();
    assert!(e.contains("running_sum") && e.contains("CumSum") && e.contains("symbolic"), "{e}");
    assert!(e.contains("[1, sequence_length]"), "names the dynamic input's shape: {e}");
}

fn compile_with_sampler() -> Model {
    compile_bounded(&fixture_dir(), true)
}

/// The fixture in `dir` with the tests' bounds, with or without a sampler.
fn compile_bounded(dir: &Path, sampler: bool) -> Model {
    let mut opts = Options { sampler, ..Options::default() };
    opts.dims.insert("batch_size".into(), 1);
    opts.dim_ranges.insert("seq".into(), SEQ);
    opts.dim_ranges.insert("past".into(), PAST);
    let compiled = drift_compiler::compile_file(&dir.join("model.onnx"), &opts).expect("compile");
    Model::from_bytes(compiled.to_bytes()).expect("load")
}

/// The other decoder fixtures: GPT-2 (`fixtures/gpt2.py`), Qwen2 (Llama's
/// layout with q/k/v biases) and Llama through ONNX's own RotaryEmbedding
/// and Attention ops (both from `fixtures/llama.py`).
fn family_dirs() -> Vec<PathBuf> {
    let root = fixture_dir().parent().expect("fixtures").to_path_buf();
    ["gpt2_tiny", "qwen_tiny", "llama_ops23_tiny"].iter().map(|n| root.join(n)).collect()
}

/// Single Attention and RotaryEmbedding nodes (opset 23: grouped heads,
/// packed heads, past and present, causal, boolean and float masks, a
/// scale; rotation in halves, in interleaved pairs, partial) compiled with
/// the bounds of their `dims.txt` match onnxruntime at several lengths
/// (`fixtures/dynamic_ops.py`).
#[test]
fn onnx_llm_ops_with_symbolic_dims_match_onnxruntime() {
    let gpu = Gpu::new().expect("a GPU (lavapipe in CI)");
    let root = fixture_dir().parent().expect("fixtures").join("dynamic_ops");
    let mut cases: Vec<PathBuf> =
        std::fs::read_dir(&root).expect("dynamic_ops").map(|e| e.expect("entry").path()).collect();
    cases.sort();
    assert!(cases.len() >= 5, "{} cases", cases.len());
    for case in cases {
        let name = family(&case);
        let mut opts = Options::default();
        for line in std::fs::read_to_string(case.join("dims.txt")).expect("dims.txt").lines() {
            let (dim, range) = line.split_once('=').expect("NAME=MIN..MAX");
            let (lo, hi) = range.split_once("..").expect("a range");
            opts.dim_ranges.insert(dim.into(), (lo.parse().expect("min"), hi.parse().expect("max")));
        }
        let compiled = drift_compiler::compile_file(&case.join("model.onnx"), &opts)
            .unwrap_or_else(|e| panic!("{name}: compile: {e}"));
        let model = Model::from_bytes(compiled.to_bytes()).expect("load");
        let mut session = Session::new(&gpu, &model).expect("session");
        let mut runs: Vec<PathBuf> =
            std::fs::read_dir(case.join("runs")).expect("runs").map(|e| e.expect("entry").path()).collect();
        runs.sort();
        for run in runs {
            let inputs = read_dir(&run.join("inputs"));
            let want = read_dir(&run.join("outputs"));
            let args: Vec<(&str, &HostTensor)> = inputs.iter().map(|(n, t)| (n.as_str(), t)).collect();
            let got = session.run(&args).unwrap_or_else(|e| panic!("{name} run {}: {e}", run.display()));
            if let Outcome::Mismatch(m) = compare(&got, &want, RTOL, ATOL) {
                panic!("{name} run {}: {m}", run.display());
            }
        }
    }
}

fn family(dir: &Path) -> String {
    dir.file_name().expect("name").to_string_lossy().into_owned()
}

/// The tokens onnxruntime generates greedily after the fixture's prompt,
/// and that prompt.
fn greedy_reference(dir: &Path) -> (Vec<i64>, Vec<i64>) {
    let want: Vec<i64> = std::fs::read_to_string(dir.join("greedy.txt"))
        .expect("greedy.txt")
        .trim()
        .split(',')
        .map(|t| t.parse().expect("token id"))
        .collect();
    let prompt =
        read_dir(&dir.join("steps/prefill/inputs")).into_iter().find(|(n, _)| n == "input_ids").expect("ids").1;
    (want, prompt.to_f64_vec().into_iter().map(|x| x as i64).collect())
}

/// Greedy sampling of `n` tokens, `sync_every` decode steps per host
/// synchronization.
fn greedy_settings(n: usize, stop: Option<i64>, sync_every: usize) -> drift_compiler::generate::Settings {
    drift_compiler::generate::Settings { max_new_tokens: n, temperature: 0.0, top_k: 1, seed: 0, stop, sync_every }
}

/// GPT-2's and Qwen2's op patterns as one bounded bundle each: prefill,
/// decode and chunk with the cache carried on the GPU match onnxruntime's
/// logits and presents.
#[test]
fn other_families_steps_match_onnxruntime() {
    let gpu = Gpu::new().expect("a GPU (lavapipe in CI)");
    for dir in family_dirs() {
        let name = family(&dir);
        let model = compile_bounded(&dir, false);
        assert_eq!(model.bundle().stages.len(), 2, "{name}: a decode and a prefill stage");
        let mut session = Session::new(&gpu, &model).expect("session");
        let pairs: Vec<String> = session.state_pairs().iter().map(|(i, _)| i.to_string()).collect();
        assert_eq!(pairs.len(), 4, "{name}: 2 layers × key/value");
        for (k, step) in STEPS.iter().enumerate() {
            let inputs = read_dir(&dir.join("steps").join(step).join("inputs"));
            let want = read_dir(&dir.join("steps").join(step).join("outputs"));
            let feeds: Vec<(&str, Feed)> = inputs
                .iter()
                .map(|(n, t)| (n.as_str(), if k > 0 && pairs.contains(n) { Feed::Carried } else { Feed::Host(t) }))
                .collect();
            let got = session.run_with(&feeds, None).unwrap_or_else(|e| panic!("{name} {step}: {e}"));
            if let Outcome::Mismatch(m) = compare(&got, &want, RTOL, ATOL) {
                panic!("{name} {step}: {m}");
            }
        }
    }
}

/// `drift generate` on the GPT-2 and Qwen2 fixtures reproduces
/// onnxruntime's greedy continuations.
#[test]
fn other_families_generate_onnxruntime_greedy_tokens() {
    let gpu = Gpu::new().expect("a GPU (lavapipe in CI)");
    for dir in family_dirs() {
        let mut session = Session::new(&gpu, &compile_bounded(&dir, true)).expect("session");
        let (want, prompt) = greedy_reference(&dir);
        let settings = greedy_settings(want.len(), None, 3);
        let report = drift_compiler::generate::generate(&mut session, &prompt, &settings).expect("generate");
        assert_eq!(report.tokens, want, "{}", family(&dir));
    }
}

/// `drift generate`'s loop (prefill, then decode steps with the cache
/// carried and only the sampled token read back) reproduces onnxruntime's
/// greedy continuation.
#[test]
fn greedy_generation_matches_onnxruntime() {
    let gpu = Gpu::new().expect("a GPU (lavapipe in CI)");
    let model = compile_with_sampler();
    let mut session = Session::new(&gpu, &model).expect("session");
    let (want, prompt) = greedy_reference(&fixture_dir());
    // One host synchronization per token, chains that do not divide the
    // decode steps, and one chain for all of them.
    for sync_every in [1, 3, want.len()] {
        let settings = greedy_settings(want.len(), None, sync_every);
        let report = drift_compiler::generate::generate(&mut session, &prompt, &settings).expect("generate");
        assert_eq!(report.tokens, want, "sync every {sync_every} steps");
        assert_eq!(report.decode_steps, want.len() - 1);
    }
}

/// A stop token ends generation at the end of its chain, the tokens after
/// it dropped; the first chain step's token id comes from the host.
#[test]
fn a_stop_token_ends_generation() {
    let gpu = Gpu::new().expect("a GPU (lavapipe in CI)");
    let model = compile_with_sampler();
    let mut session = Session::new(&gpu, &model).expect("session");
    let (want, prompt) = greedy_reference(&fixture_dir());
    // The third greedy token as the stop token (its first occurrence).
    let stop = want[2];
    let end = want.iter().position(|&t| t == stop).expect("present") + 1;
    let settings = greedy_settings(want.len(), Some(stop), 4);
    let report = drift_compiler::generate::generate(&mut session, &prompt, &settings).expect("generate");
    assert_eq!(report.tokens, want[..end]);
}

/// Feeding an output to an input is for the steps of one `run_steps`: the
/// first step and a plain run have no previous step, and the dtypes must
/// agree; each is an error naming the input.
#[test]
fn chained_inputs_are_checked() {
    let gpu = Gpu::new().expect("a GPU (lavapipe in CI)");
    let model = compile_with_sampler();
    let mut session = Session::new(&gpu, &model).expect("session");
    let inputs = read_dir(&fixture_dir().join("steps/prefill/inputs"));
    let params = HostTensor::from_f32(vec![4], &[0.0, 1.0, 0.5, 0.0]);
    let mut feeds: Vec<(&str, Feed)> = inputs.iter().map(|(n, t)| (n.as_str(), Feed::Host(t))).collect();
    feeds.push(("sampling", Feed::Host(&params)));
    let with_ids = |ids: Feed<'static>| {
        let mut f = feeds.clone();
        f.iter_mut().find(|(n, _)| *n == "input_ids").expect("input_ids").1 = ids;
        f
    };
    let e = session.run_with(&with_ids(Feed::Output("next_token")), None).expect_err("plain run").to_string();
    assert!(e.contains("input_ids") && e.contains("run_steps"), "{e}");
    let e = session.run_steps(&[with_ids(Feed::Output("next_token"))], &[]).expect_err("first step").to_string();
    assert!(e.contains("input_ids") && e.contains("first step") && e.contains("next_token"), "{e}");
    let e = session.run_steps(&[feeds.clone(), with_ids(Feed::Output("logits"))], &[]).expect_err("dtype").to_string();
    assert!(e.contains("input_ids") && e.contains("int64") && e.contains("float32"), "{e}");
    let e = session.run_steps(&[feeds.clone(), with_ids(Feed::Output("nope"))], &[]).expect_err("unknown").to_string();
    assert!(e.contains("nope") && e.contains("next_token"), "{e}");
}

/// Temperature + top-k sampling on the GPU picks what the CPU rule picks
/// from the same logits and the same uniform number.
#[test]
fn top_k_sampling_matches_the_cpu_rule() {
    use drift_ops::families::sampling::{Params, sample_row};
    let gpu = Gpu::new().expect("a GPU (lavapipe in CI)");
    let model = compile_with_sampler();
    let mut session = Session::new(&gpu, &model).expect("session");
    let inputs = read_dir(&fixture_dir().join("steps/prefill/inputs"));
    for (k, (temperature, top_k)) in [(0.7f32, 5u32), (1.0, 40), (2.0, 256), (0.5, 2)].into_iter().enumerate() {
        for u in [0.03f32, 0.41, 0.77, 0.985] {
            let p = Params { temperature, top_k, uniform: u };
            let params = HostTensor::from_f32(vec![4], &p.to_vec());
            let mut args: Vec<(&str, &HostTensor)> = inputs.iter().map(|(n, t)| (n.as_str(), t)).collect();
            args.push(("sampling", &params));
            let out = session.run(&args).expect("run");
            let logits = output(&out, "logits").to_f32_vec();
            let vocab = 256;
            let last: Vec<f32> = logits[logits.len() - vocab..].to_vec();
            let got = output(&out, "next_token").to_f64_vec()[0] as usize;
            assert_eq!(got, sample_row(&last, p), "case {k}, u {u}");
        }
    }
}
