//! The `drift` command line: compile, run, inspect.

mod bench;

use clap::{Parser, Subcommand};
use drift_compiler::{Options, WeightFormat, npy};
use drift_runtime::{DType, Gpu, HostTensor, Model, Session, ShaderPath, Trust};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "drift", version, about = "Ahead-of-time compiler from ONNX models to GPU bundles")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compile an ONNX model into a bundle.
    Compile {
        model: PathBuf,
        /// Output bundle (default: the model's name with .drift).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Fix a symbolic dimension, e.g. --dim batch=1, or bound it, e.g.
        /// --dim seq=1..2048: kernels then read it at run time (repeatable).
        #[arg(long = "dim", value_name = "NAME=VALUE")]
        dims: Vec<String>,
        /// Give an input's whole shape, e.g. --input-shape x=1,3,224,224.
        #[arg(long = "input-shape", value_name = "NAME=D0,D1,..")]
        input_shapes: Vec<String>,
        /// Fix an input's value at compile time, e.g. --const-input axes=axes.npy
        /// (for inputs that decide shapes: Reshape's shape, Reduce's axes, ...).
        /// The bundle checks that runs pass the same value.
        #[arg(long = "const-input", value_name = "NAME=FILE.npy")]
        const_inputs: Vec<String>,
        /// How float weights are stored: f32, or f16 (half the size; kernels
        /// still compute in f32; small or out-of-range constants stay f32).
        #[arg(long, value_name = "f32|f16", default_value = "f32", value_parser = parse_weights)]
        weights: WeightFormat,
        /// Device targets to put kernel sets for into the bundle, e.g.
        /// --target generic,nvidia (of: generic, nvidia, amd, intel, apple,
        /// adreno, mali). The runtime picks the set matching the GPU.
        #[arg(long, value_delimiter = ',', default_value = "generic")]
        target: Vec<String>,
        /// f32, or f16: activations stored as f16 (reductions and products
        /// accumulate in f32).
        #[arg(long, default_value = "f32")]
        precision: String,
        /// Largest buffer one binding may hold, in MiB (default: 128 for
        /// generic, the target's own limit for the others).
        #[arg(long = "max-binding-mib")]
        max_binding_mib: Option<u64>,
        /// Compile without the graph optimizer (no folding of BatchNorm, no fusion, ...).
        #[arg(long)]
        no_opt: bool,
        /// Override the product kernels' heuristics, for calibration sweeps:
        /// fill=N, slices=N, split=N, tile=BMxBNxBKxTMxTN,
        /// coop=BMxBNxBKxWMxWN, grouped=direct|product,
        /// split-meet=kernel|pass (comma-separated).
        #[arg(long, value_name = "KEY=VALUE,..", default_value = "")]
        tune: String,
        /// Print dispatches, kernels, estimated bytes per run and FLOPs, before and after optimization.
        #[arg(long)]
        stats: bool,
        /// With --stats: print them as JSON.
        #[arg(long, requires = "stats")]
        json: bool,
        /// Weight-only quantization of constant MatMul weights: int8, int4
        /// (per-group scales) or f16. Dequantization is fused into the matmuls.
        #[arg(long, value_name = "int8|int4|f16")]
        quantize: Option<String>,
        /// Weights per scale for --quantize int8/int4 (along K).
        #[arg(long, default_value_t = 32, value_name = "32|64|128")]
        group_size: usize,
        /// Append GPU token sampling to the model's `logits` (input
        /// `sampling`, output `next_token`), as `drift generate` needs.
        #[arg(long)]
        sampler: bool,
    },
    /// Generate tokens with an LLM bundle (compiled with --dim ranges and --sampler).
    Generate {
        bundle: PathBuf,
        /// Prompt token ids, e.g. --tokens 1,2,3.
        #[arg(long, value_delimiter = ',')]
        tokens: Vec<i64>,
        /// Prompt text (needs --tokenizer).
        #[arg(long)]
        prompt: Option<String>,
        /// A Hugging Face tokenizer.json for text in and out.
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        #[arg(long, default_value_t = 16)]
        max_new_tokens: usize,
        /// 0 (the default) samples greedily.
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        #[arg(long, default_value_t = 40)]
        top_k: u32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Stop after this token id.
        #[arg(long)]
        stop: Option<i64>,
        /// Decode steps per host synchronization: the GPU feeds each sampled
        /// token to the next step itself; 1 waits for every token.
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
        sync_every: u32,
        /// Vouch for the bundle, as `run --trusted`: passthrough shaders.
        #[arg(long)]
        trusted: bool,
    },
    /// Run a bundle on the GPU.
    Run {
        bundle: PathBuf,
        /// An input as NAME=FILE.npy (repeatable).
        #[arg(long = "input", value_name = "NAME=FILE.npy")]
        inputs: Vec<String>,
        /// Fill inputs that were not given with random values.
        #[arg(long)]
        random_inputs: bool,
        /// Write each output as <name>.npy into this folder.
        #[arg(long)]
        output_dir: Option<PathBuf>,
        /// Vouch for the bundle (e.g. you compiled it): its kernels may use the
        /// GPU's SPIR-V/MSL passthrough path, which skips shader validation and
        /// bounds checks. Without it kernels run from WGSL, validated by naga
        /// and bounds-checked (docs/security.md).
        #[arg(long)]
        trusted: bool,
    },
    /// Describe a bundle: inputs, outputs, kernels, dispatches, memory.
    Inspect {
        bundle: PathBuf,
        /// Print JSON (memory.arena_bytes, memory.lower_bound_bytes, ...).
        #[arg(long)]
        json: bool,
        /// Also list every dispatch of the top-level kernel set: node,
        /// kernel, workgroups, recorded bytes and FLOPs.
        #[arg(long)]
        dispatches: bool,
    },
    /// Time a bundle on the GPU: median and p90 latency, CPU cost per
    /// dispatch, and with --profile the GPU time of every kernel.
    Bench {
        /// One or more bundles, benched one after the other on one GPU
        /// (inputs given by --input apply to each).
        #[arg(required = true)]
        bundles: Vec<PathBuf>,
        /// Timed runs (after warm-up).
        #[arg(long, default_value_t = 100)]
        iters: usize,
        /// Untimed runs first.
        #[arg(long, default_value_t = 10)]
        warmup: usize,
        /// Warm up for at least this long (GPUs raise their clocks under
        /// load).
        #[arg(long, default_value_t = 300.0, value_name = "MS")]
        warmup_ms: f64,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// Per-kernel GPU time from timestamps, with GB/s and GFLOP/s.
        #[arg(long)]
        profile: bool,
        /// An input as NAME=FILE.npy (repeatable); others get random values.
        #[arg(long = "input", value_name = "NAME=FILE.npy")]
        inputs: Vec<String>,
        /// Vouch for the bundle, as `run --trusted`: passthrough shaders.
        #[arg(long)]
        trusted: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Compile {
            model,
            output,
            dims,
            input_shapes,
            const_inputs,
            weights,
            target,
            precision,
            max_binding_mib,
            no_opt,
            tune,
            stats,
            json,
            quantize,
            group_size,
            sampler,
        } => {
            let report = match (stats, json) {
                (false, _) => Report::None,
                (true, false) => Report::Text,
                (true, true) => Report::Json,
            };
            let choice = TargetChoice { targets: target, precision, max_binding_mib, no_opt, tune, report };
            let quantize = quantize.map(|q| (q, group_size));
            compile(&model, output, &dims, &input_shapes, &const_inputs, &choice, weights, quantize, sampler)
        }
        Command::Generate {
            bundle,
            tokens,
            prompt,
            tokenizer,
            max_new_tokens,
            temperature,
            top_k,
            seed,
            stop,
            sync_every,
            trusted,
        } => {
            let sync_every = sync_every as usize;
            let settings =
                drift_compiler::generate::Settings { max_new_tokens, temperature, top_k, seed, stop, sync_every };
            let trust = if trusted { Trust::Trusted } else { Trust::Untrusted };
            generate(&bundle, tokens, prompt, tokenizer.as_deref(), &settings, trust)
        }
        Command::Run { bundle, inputs, random_inputs, output_dir, trusted } => {
            let trust = if trusted { Trust::Trusted } else { Trust::Untrusted };
            run(&bundle, &inputs, random_inputs, output_dir.as_deref(), trust)
        }
        Command::Inspect { bundle, json, dispatches } => inspect(&bundle, json, dispatches),
        Command::Bench { bundles, iters, warmup, warmup_ms, json, profile, inputs, trusted } => {
            let args = bench::BenchArgs { iters, warmup, warmup_ms, json, profile };
            let trust = if trusted { Trust::Trusted } else { Trust::Untrusted };
            bench_bundles(&bundles, &inputs, trust, &args)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What `compile --stats` prints.
#[derive(Clone, Copy, PartialEq)]
enum Report {
    None,
    Text,
    Json,
}

/// `--target`, `--precision`, `--max-binding-mib`, `--no-opt`, `--tune` and `--stats`.
struct TargetChoice {
    targets: Vec<String>,
    precision: String,
    max_binding_mib: Option<u64>,
    no_opt: bool,
    tune: String,
    report: Report,
}

impl TargetChoice {
    fn apply(&self, opts: &mut Options) -> Result<(), String> {
        for name in &self.targets {
            let t = drift_ops::Target::named(name).ok_or_else(|| {
                let all: Vec<&str> = drift_ops::Target::ALL.iter().map(|t| t.name).collect();
                format!("--target {name}: unknown target (targets: {})", all.join(", "))
            })?;
            if !opts.targets.contains(&t) {
                opts.targets.push(t);
            }
        }
        opts.f16 = match self.precision.as_str() {
            "f32" => false,
            "f16" => true,
            other => return Err(format!("--precision {other}: expected f32 or f16")),
        };
        if let Some(mib) = self.max_binding_mib {
            if mib == 0 || mib > 4096 {
                return Err(format!("--max-binding-mib {mib}: expected 1..=4096"));
            }
            opts.limits.max_binding_bytes = (mib << 20).min(u64::from(u32::MAX) - 3);
        }
        opts.tuning = drift_ops::Tuning::parse(&self.tune).map_err(|e| format!("--tune {e}"))?;
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
fn compile(
    model: &Path,
    output: Option<PathBuf>,
    dims: &[String],
    shapes: &[String],
    const_inputs: &[String],
    choice: &TargetChoice,
    weights: WeightFormat,
    quantize: Option<(String, usize)>,
    sampler: bool,
) -> Result<(), String> {
    let mut opts = Options { weights, sampler, no_opt: choice.no_opt, ..Options::default() };
    choice.apply(&mut opts)?;
    if let Some((kind, group)) = quantize {
        opts.quantize = Some(drift_compiler::quantize::Quantize::parse(&kind, group)?);
    }
    for d in dims {
        let (k, v) = split_kv(d, "--dim")?;
        let num =
            |x: &str| x.trim().parse::<usize>().map_err(|_| format!("--dim {d}: '{x}' is not a non-negative integer"));
        match v.split_once("..") {
            Some((lo, hi)) => {
                opts.dim_ranges.insert(k.to_string(), (num(lo)?, num(hi)?));
            }
            None => {
                opts.dims.insert(k.to_string(), num(v)?);
            }
        }
    }
    for s in shapes {
        let (k, v) = split_kv(s, "--input-shape")?;
        let shape = v
            .split(',')
            .filter(|x| !x.is_empty())
            .map(|x| x.trim().parse().map_err(|_| format!("--input-shape {s}: '{x}' is not a dimension")))
            .collect::<Result<Vec<usize>, String>>()?;
        opts.input_shapes.insert(k.to_string(), shape);
    }
    for spec in const_inputs {
        let (name, file) = split_kv(spec, "--const-input")?;
        let host = npy::read(Path::new(file)).map_err(|e| format!("--const-input '{name}': {e}"))?;
        let value = drift_compiler::host_to_tensor(&host).map_err(|e| format!("--const-input '{name}': {e}"))?;
        opts.input_shapes.insert(name.to_string(), value.shape.clone());
        opts.const_inputs.insert(name.to_string(), value);
    }
    let report = choice.report;
    let before = if report == Report::None {
        None
    } else {
        let plain = Options { no_opt: true, ..opts.clone() };
        Some(drift_compiler::compile_file(model, &plain).map_err(|e| e.to_string())?.stats)
    };
    let start = std::time::Instant::now();
    let compiled = drift_compiler::compile_file(model, &opts).map_err(|e| e.to_string())?;
    let out = output.unwrap_or_else(|| model.with_extension("drift"));
    let bytes = compiled.to_bytes();
    std::fs::write(&out, &bytes).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    let b = &compiled.program.bundle;
    let targets: Vec<&str> =
        [b.target.as_str()].into_iter().chain(b.variants.iter().map(|v| v.target.as_str())).collect();
    println!(
        "compiled {} -> {} ({} bytes, {} kernels, {} dispatches; targets {}) in {:.2} s",
        model.display(),
        out.display(),
        bytes.len(),
        b.kernels.len(),
        b.dispatches.len(),
        targets.join(", "),
        start.elapsed().as_secs_f64()
    );
    if let Some(before) = before {
        print_stats(&before, &compiled.stats, report);
    }
    Ok(())
}

fn print_stats(before: &drift_compiler::stats::Stats, after: &drift_compiler::stats::Stats, report: Report) {
    let change = |a: u64, b: u64| if a == 0 { 0.0 } else { 100.0 * (b as f64 - a as f64) / a as f64 };
    if report == Report::Json {
        let j = serde_json::json!({
            "before": before,
            "after": after,
            "bytes_change_percent": change(before.bytes, after.bytes),
            "dispatches_change_percent": change(before.dispatches as u64, after.dispatches as u64),
        });
        println!("{}", serde_json::to_string_pretty(&j).expect("stats serialize"));
        return;
    }
    println!("before optimization: {}", before.text());
    println!("after optimization:  {}", after.text());
    let ops: Vec<String> = after.ops.iter().map(|(k, n)| format!("{k} x{n}")).collect();
    println!("nodes after: {}", ops.join(", "));
    println!(
        "change: dispatches {:+.1}%, bytes {:+.1}%, flops {:+.1}%",
        change(before.dispatches as u64, after.dispatches as u64),
        change(before.bytes, after.bytes),
        change(before.flops, after.flops)
    );
}

fn parse_weights(s: &str) -> Result<WeightFormat, String> {
    match s {
        "f32" => Ok(WeightFormat::F32),
        "f16" => Ok(WeightFormat::F16),
        _ => Err(format!("'{s}' is not a weight format (f32, f16)")),
    }
}

fn split_kv<'a>(s: &'a str, flag: &str) -> Result<(&'a str, &'a str), String> {
    s.split_once('=').ok_or_else(|| format!("{flag} {s}: expected NAME=VALUE"))
}

fn run(bundle: &Path, inputs: &[String], random: bool, output_dir: Option<&Path>, trust: Trust) -> Result<(), String> {
    let model = load(bundle)?.with_trust(trust);
    let given = read_inputs(&model, inputs, random)?;
    let gpu = Gpu::new().map_err(|e| e.to_string())?;
    let mut info = gpu.info();
    let mut session = Session::new(&gpu, &model).map_err(|e| e.to_string())?;
    info.shader_path = session.shader_path();
    if trust == Trust::Untrusted && gpu.shader_path() != ShaderPath::Wgsl {
        eprintln!("note: untrusted bundle: kernels run from WGSL with bounds checks (--trusted uses passthrough)");
    }
    let args: Vec<(&str, &HostTensor)> = given.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let start = std::time::Instant::now();
    let outputs = session.run(&args).map_err(|e| e.to_string())?;
    let elapsed = start.elapsed();
    println!(
        "ran {} on {info} (target {}) in {:.2} ms",
        bundle.display(),
        session.target(),
        elapsed.as_secs_f64() * 1e3
    );
    if let Some(dir) = output_dir {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    for (name, t) in &outputs {
        println!("{}", summary(name, t));
        if let Some(dir) = output_dir {
            let file = dir.join(format!("{}.npy", sanitize(name)));
            npy::write(&file, t)?;
        }
    }
    Ok(())
}

/// The `--input NAME=FILE.npy` tensors, converted to the model's dtypes;
/// with `random`, inputs not given get random values.
fn read_inputs(model: &Model, inputs: &[String], random: bool) -> Result<BTreeMap<String, HostTensor>, String> {
    let mut given: BTreeMap<String, HostTensor> = BTreeMap::new();
    for spec in inputs {
        let (name, file) = split_kv(spec, "--input")?;
        let t = npy::read(Path::new(file)).map_err(|e| format!("input '{name}': {e}"))?;
        let info = model.inputs().iter().find(|i| i.name == name);
        // .npy files often hold float64 or int32 where the model wants
        // float32 or int64: convert numerically, say so.
        let t = match info {
            Some(i) if i.dtype != t.dtype => {
                eprintln!("note: input '{name}': converting {} to {}", t.dtype.name(), i.dtype.name());
                convert(&t, i.dtype)?
            }
            _ => t,
        };
        if given.insert(name.to_string(), t).is_some() {
            return Err(format!("input '{name}' is given more than once"));
        }
    }
    if random {
        for (k, info) in model.inputs().iter().enumerate() {
            if !given.contains_key(&info.name) {
                given.insert(info.name.clone(), random_tensor(info.dtype, &info.shape, k as u64)?);
            }
        }
    }
    Ok(given)
}

fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' { c } else { '_' }).collect()
}

/// One line per output: shape, type, range, mean, and the top entry of
/// small float vectors (class scores).
fn summary(name: &str, t: &HostTensor) -> String {
    let v = t.to_f64_vec();
    let mut s = format!("  {name}: {} {:?}", t.dtype.name(), t.shape);
    if v.is_empty() {
        return s + " (empty)";
    }
    let min = v.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    s += &format!(" min {min:.6} max {max:.6} mean {mean:.6}");
    let argmax = v.iter().enumerate().fold(0, |best, (i, &x)| if x > v[best] { i } else { best });
    s += &format!(" argmax {argmax}");
    let head: Vec<String> = v.iter().take(6).map(|x| format!("{x:.5}")).collect();
    s + &format!(" first [{}{}]", head.join(", "), if v.len() > 6 { ", .." } else { "" })
}

fn convert(t: &HostTensor, to: DType) -> Result<HostTensor, String> {
    let v = t.to_f64_vec();
    let ops_from = drift_ops::DType::from_onnx(DType::F64.onnx()).map_err(|e| e.to_string())?;
    let ops_to = drift_ops::DType::from_onnx(to.onnx()).map_err(|e| e.to_string())?;
    let tensor = drift_ops::Tensor::from_f64(ops_from, t.shape.clone(), v).cast(ops_to);
    HostTensor::new(to, t.shape.clone(), tensor.to_raw()).map_err(|e| e.to_string())
}

/// Deterministic pseudo-random values: floats in [-1, 1), integers in 0..10,
/// bools alternating — enough to smoke-test a model.
fn random_tensor(dtype: DType, shape: &[usize], seed: u64) -> Result<HostTensor, String> {
    let n: usize = shape.iter().product();
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ seed.wrapping_mul(0x2545_F491_4F6C_DD1D);
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let vals: Vec<f64> = (0..n)
        .map(|_| {
            let r = next();
            if dtype == DType::Bool {
                (r & 1) as f64
            } else if matches!(dtype, DType::F32 | DType::F64 | DType::F16 | DType::BF16) {
                (r >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
            } else {
                (r % 10) as f64
            }
        })
        .collect();
    convert(
        &HostTensor::new(DType::F64, shape.to_vec(), vals.iter().flat_map(|x| x.to_le_bytes()).collect())
            .map_err(|e| e.to_string())?,
        dtype,
    )
}

fn generate(
    bundle: &Path,
    mut tokens: Vec<i64>,
    prompt: Option<String>,
    tokenizer: Option<&Path>,
    settings: &drift_compiler::generate::Settings,
    trust: Trust,
) -> Result<(), String> {
    let tok = match tokenizer {
        Some(p) => Some(tokenizers::Tokenizer::from_file(p).map_err(|e| format!("tokenizer {}: {e}", p.display()))?),
        None => None,
    };
    if let Some(text) = &prompt {
        let tok = tok.as_ref().ok_or("--prompt needs --tokenizer")?;
        let enc = tok.encode(text.as_str(), true).map_err(|e| format!("tokenizer: {e}"))?;
        tokens = enc.get_ids().iter().map(|&t| t as i64).collect();
    }
    if tokens.is_empty() {
        return Err("give the prompt with --tokens 1,2,3 or --prompt TEXT --tokenizer tokenizer.json".into());
    }
    let model = load(bundle)?.with_trust(trust);
    let gpu = Gpu::new().map_err(|e| e.to_string())?;
    let mut session = Session::new(&gpu, &model).map_err(|e| e.to_string())?;
    let r = drift_compiler::generate::generate(&mut session, &tokens, settings)?;
    let ids: Vec<String> = r.tokens.iter().map(|t| t.to_string()).collect();
    println!("{}", ids.join(","));
    if let Some(tok) = &tok {
        let ids: Vec<u32> = r.tokens.iter().map(|&t| t as u32).collect();
        println!("{}", tok.decode(&ids, true).map_err(|e| format!("tokenizer: {e}"))?);
    }
    let prefill_ms = r.prefill.as_secs_f64() * 1e3;
    eprintln!(
        "prefill {} tokens in {prefill_ms:.2} ms; decode {} tokens at {:.1} tokens/s on {}",
        tokens.len(),
        r.decode_steps,
        r.decode_tokens_per_s(),
        gpu.info()
    );
    Ok(())
}

/// `drift bench`: every bundle on one GPU. Failures are reported as they
/// come (a JSON line with "error" under --json) and fail the command at the
/// end, so one bad bundle of a sweep does not hide the others.
fn bench_bundles(bundles: &[PathBuf], inputs: &[String], trust: Trust, args: &bench::BenchArgs) -> Result<(), String> {
    let gpu = drift_runtime::Gpu::new().map_err(|e| e.to_string())?;
    let mut failed = 0;
    for bundle in bundles {
        let result = load(bundle).map(|m| m.with_trust(trust)).and_then(|model| {
            let given = read_inputs(&model, inputs, true)?;
            let list: Vec<(&str, &HostTensor)> = given.iter().map(|(k, v)| (k.as_str(), v)).collect();
            bench::bench(&gpu, &model, &list, args)
        });
        if let Err(e) = result {
            failed += 1;
            let e = format!("{}: {e}", bundle.display());
            if args.json {
                println!("{}", serde_json::json!({ "bundle": bundle.display().to_string(), "error": e }));
            }
            eprintln!("error: {e}");
        }
    }
    match failed {
        0 => Ok(()),
        n => Err(format!("{n} of {} bundles failed", bundles.len())),
    }
}

fn inspect(path: &Path, json: bool, dispatches: bool) -> Result<(), String> {
    let model = load(path)?;
    if json {
        print!("{}", drift_compiler::inspect::to_json(model.bundle()));
    } else {
        print!("{}", drift_compiler::inspect::describe(model.bundle()));
    }
    if dispatches {
        print!("{}", drift_compiler::inspect::dispatch_list(model.bundle()));
    }
    Ok(())
}

/// Loads a bundle; every error names the file.
fn load(path: &Path) -> Result<Model, String> {
    Model::load(path).map_err(|e| match e {
        // Already says "cannot read bundle '<path>'".
        drift_runtime::Error::Io { .. } => e.to_string(),
        _ => format!("{}: {e}", path.display()),
    })
}
