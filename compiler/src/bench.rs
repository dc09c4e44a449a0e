//! `drift bench`: latency of a bundle on this machine's GPU, and with
//! `--profile` where the GPU time goes.
//!
//! Latency is host wall time of one `Session::replay` (record, submit, wait
//! for the GPU) on inputs uploaded once, after warm-up runs: what a caller
//! replaying pre-recorded work waits for, comparable to timing a CUDA-graph
//! replay with a synchronize. The CPU part of that (recording and submitting)
//! is reported per dispatch. The profile times every dispatch with GPU
//! timestamps and relates the bytes and operations the compiler recorded for
//! it to that time.

use drift_runtime::{Gpu, HostTensor, Model, Session};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Instant;

/// What `drift bench` was asked.
pub struct BenchArgs {
    pub iters: usize,
    pub warmup: usize,
    /// Least time spent warming up, in milliseconds.
    pub warmup_ms: f64,
    pub json: bool,
    pub profile: bool,
}

/// Quantile `q` (0..=1) of sorted values, nearest rank.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

/// One dispatch's profile line.
struct Line {
    label: String,
    kernel: String,
    ns: f64,
    bytes: u64,
    flops: u64,
}

/// Runs the benchmark of one bundle on `gpu` and prints a report (text, or
/// JSON on one line, so several bundles benched in one go give JSON lines).
pub fn bench(gpu: &Gpu, model: &Model, inputs: &[(&str, &HostTensor)], args: &BenchArgs) -> Result<(), String> {
    let mut info = gpu.info();
    let mut session = Session::new(gpu, model).map_err(|e| e.to_string())?;
    // The path this session took (passthrough only for a trusted model).
    info.shader_path = session.shader_path();
    let start = Instant::now();
    session.run(inputs).map_err(|e| e.to_string())?;
    let first_ms = start.elapsed().as_secs_f64() * 1e3;
    // Warm up by count and by time: a GPU idle a moment ago runs at a
    // fraction of its clock for the first few hundred milliseconds of load
    // (an H100 ran short bursts 3x slower), so every bundle gets the same
    // steady state.
    let warm = Instant::now();
    let mut runs = 0;
    while runs < args.warmup || warm.elapsed().as_secs_f64() * 1e3 < args.warmup_ms {
        session.replay().map_err(|e| e.to_string())?;
        runs += 1;
    }
    let (mut wall, mut cpu) = (vec![], vec![]);
    for _ in 0..args.iters.max(1) {
        let t = Instant::now();
        let c = session.replay().map_err(|e| e.to_string())?;
        wall.push(t.elapsed().as_secs_f64() * 1e3);
        cpu.push(c.as_secs_f64() * 1e6);
    }
    let (wall, cpu) = (sorted(wall), sorted(cpu));
    let dispatches = session.dispatches();
    let median = quantile(&wall, 0.5);
    let p90 = quantile(&wall, 0.9);
    let cpu_us = quantile(&cpu, 0.5);
    let per_dispatch_us = cpu_us / dispatches.max(1) as f64;
    let profile = if args.profile { Some(profile(&mut session, model, gpu)?) } else { None };
    let gpu_ms = profile.as_ref().map(|p| p.iter().map(|l| l.ns).sum::<f64>() / 1e6);

    if args.json {
        let mut report = json!({
            "model": model.bundle().model_name,
            "gpu": info.adapter,
            "backend": info.backend,
            "driver": info.driver,
            "shader_path": info.shader_path.name(),
            "target": session.target(),
            "iters": wall.len(),
            "median_ms": median,
            "p90_ms": p90,
            "min_ms": wall.first(),
            "first_run_ms": first_ms,
            "dispatches": dispatches,
            "record_submit_us": cpu_us,
            "record_submit_us_per_dispatch": per_dispatch_us,
        });
        if let (Some(lines), Some(gpu_ms)) = (&profile, gpu_ms) {
            report["gpu_ms"] = json!(gpu_ms);
            report["kernels"] = json!(
                lines
                    .iter()
                    .map(|l| json!({"label": l.label, "kernel": l.kernel, "us": l.ns / 1e3, "bytes": l.bytes, "flops": l.flops}))
                    .collect::<Vec<_>>()
            );
        }
        println!("{report}");
        return Ok(());
    }
    println!("{} on {info}, kernels for target '{}'", model.bundle().model_name, session.target());
    println!(
        "latency over {} runs: median {median:.3} ms, p90 {p90:.3} ms, min {:.3} ms (first run with upload and readback {first_ms:.2} ms)",
        wall.len(),
        wall[0]
    );
    println!(
        "record + submit: {cpu_us:.1} us for {dispatches} dispatches = {per_dispatch_us:.2} us per dispatch (one pass, one submit)"
    );
    if let (Some(lines), Some(gpu_ms)) = (profile, gpu_ms) {
        print_profile(lines, gpu_ms);
    }
    Ok(())
}

/// Median GPU time of every dispatch over a few profiled replays.
fn profile(session: &mut Session, model: &Model, gpu: &Gpu) -> Result<Vec<Line>, String> {
    const RUNS: usize = 7;
    let mut samples: Vec<Vec<f64>> = vec![];
    for _ in 0..RUNS {
        samples.push(session.profile().map_err(|e| e.to_string())?);
    }
    let program = model.program_for(gpu.vendor(), |n| gpu.has(n)).map_err(|e| e.to_string())?;
    // Bundles with stages (decode, prefill) time the last run's stage only.
    let range = session.stage_dispatches();
    Ok(program.dispatches[range]
        .iter()
        .enumerate()
        .map(|(i, d)| Line {
            label: d.label.clone(),
            kernel: program.kernels[d.kernel as usize].name.clone(),
            ns: quantile(&sorted(samples.iter().map(|s| s[i]).collect()), 0.5),
            bytes: d.bytes,
            flops: d.flops,
        })
        .collect())
}

fn rate(amount: u64, ns: f64) -> f64 {
    if ns > 0.0 { amount as f64 / ns } else { 0.0 }
}

/// The profile as text: kernels by name (summed), then the slowest
/// dispatches, each with GB/s, GFLOP/s and share of the GPU time.
fn print_profile(lines: Vec<Line>, gpu_ms: f64) {
    let total_ns = gpu_ms * 1e6;
    println!("GPU time (sum of dispatches, timestamps): {gpu_ms:.3} ms");
    let mut by_kernel: BTreeMap<&str, (usize, f64, u64, u64)> = BTreeMap::new();
    for l in &lines {
        let e = by_kernel.entry(&l.kernel).or_default();
        e.0 += 1;
        e.1 += l.ns;
        e.2 += l.bytes;
        e.3 += l.flops;
    }
    let mut kernels: Vec<_> = by_kernel.into_iter().collect();
    kernels.sort_by(|a, b| b.1.1.total_cmp(&a.1.1));
    println!("{:<28} {:>6} {:>10} {:>7} {:>9} {:>10}", "kernel", "count", "us", "share", "GB/s", "GFLOP/s");
    for (name, (n, ns, bytes, flops)) in &kernels {
        println!(
            "{name:<28} {n:>6} {:>10.1} {:>6.1}% {:>9.1} {:>10.1}",
            ns / 1e3,
            100.0 * ns / total_ns,
            rate(*bytes, *ns),
            rate(*flops, *ns)
        );
    }
    let mut slow: Vec<&Line> = lines.iter().collect();
    slow.sort_by(|a, b| b.ns.total_cmp(&a.ns));
    println!("\nslowest dispatches:");
    println!("{:<40} {:<20} {:>9} {:>7} {:>9} {:>10}", "node", "kernel", "us", "share", "GB/s", "GFLOP/s");
    for l in slow.iter().take(25) {
        let label: String = l.label.chars().take(40).collect();
        println!(
            "{label:<40} {:<20} {:>9.1} {:>6.1}% {:>9.1} {:>10.1}",
            l.kernel,
            l.ns / 1e3,
            100.0 * l.ns / total_ns,
            rate(l.bytes, l.ns),
            rate(l.flops, l.ns)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        let v = sorted(vec![5.0, 1.0, 3.0, 2.0, 4.0]);
        assert_eq!(quantile(&v, 0.5), 3.0);
        assert_eq!(quantile(&v, 0.9), 5.0);
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert!(quantile(&[], 0.5).is_nan());
    }
}
