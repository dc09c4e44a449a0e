//! Human-readable description of a bundle for `drift inspect`.

use drift_runtime::bundle::{BufferKind, Bundle, IoTensor, Need};
use drift_runtime::model::target_name;
use std::collections::BTreeMap;
use std::fmt::Write;

pub fn describe(b: &Bundle) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "model      {}", b.model_name);
    let _ = writeln!(s, "compiler   drift {}", b.compiler_version);
    for (title, list) in [("inputs", &b.inputs), ("outputs", &b.outputs)] {
        let _ = writeln!(s, "{title}:");
        for t in list {
            let _ = writeln!(s, "  {}", io_line(t));
        }
    }
    let sets: Vec<&Bundle> = [b].into_iter().chain(&b.variants).collect();
    let _ = writeln!(
        s,
        "kernel sets ({}; the first is the fallback, the runtime takes the first other one made for the GPU):",
        sets.len()
    );
    for set in &sets {
        let _ = writeln!(s, "  {}", set_line(set));
    }
    for set in sets {
        let _ = writeln!(s, "[{}]", target_name(set));
        program(&mut s, set);
    }
    s
}

/// One kernel set: target, vendors, needs and size.
fn set_line(b: &Bundle) -> String {
    let vendors: Vec<String> = b.vendors.iter().map(|v| format!("{v:#06x}")).collect();
    let needs: Vec<String> = b
        .needs
        .iter()
        .map(|&n| Need::try_from(n).map(|n| format!("{n:?}")).unwrap_or_else(|_| n.to_string()))
        .collect();
    format!(
        "{:<8} vendors [{}] needs [{}] {} kernels, {} dispatches",
        target_name(b),
        vendors.join(", "),
        needs.join(", "),
        b.kernels.len(),
        b.dispatches.len()
    )
}

/// Memory, shaders and kernels of one program.
fn program(s: &mut String, b: &Bundle) {
    let arena: u64 = b.buffers.iter().filter(|x| x.kind == BufferKind::Arena as i32).map(|x| x.size).sum();
    let weights: u64 = b.buffers.iter().filter(|x| x.kind == BufferKind::Weights as i32).map(|x| x.size).sum();
    let _ = writeln!(s, "memory:");
    let _ = writeln!(s, "  arena      {:>12} bytes", arena);
    let n_weights = b.buffers.iter().filter(|x| x.kind == BufferKind::Weights as i32).count();
    let _ = writeln!(s, "  weights    {:>12} bytes in {} buffer(s)", weights, n_weights);
    let _ = writeln!(s, "  params     {:>12} bytes", b.params.len());
    for (i, buf) in b.buffers.iter().enumerate() {
        let kind = if buf.kind == BufferKind::Arena as i32 { "arena" } else { "weights" };
        let _ = writeln!(s, "  buffer {i}: {kind} {} bytes", buf.size);
    }
    let mut langs = vec![];
    if b.kernels.iter().all(|k| !k.spirv.is_empty()) {
        langs.push("SPIR-V");
    }
    if b.kernels.iter().all(|k| !k.msl.is_empty()) {
        langs.push("MSL");
    }
    if b.kernels.iter().all(|k| !k.wgsl.is_empty()) {
        langs.push("WGSL");
    }
    let _ = writeln!(s, "shaders    {}", langs.join(", "));
    let _ = writeln!(s, "kernels    {}", b.kernels.len());
    let _ = writeln!(s, "dispatches {}", b.dispatches.len());
    let mut per_kernel: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut used = vec![0usize; b.kernels.len()];
    for d in &b.dispatches {
        if let Some(u) = used.get_mut(d.kernel as usize) {
            *u += 1;
        }
    }
    for (k, kern) in b.kernels.iter().enumerate() {
        let e = per_kernel.entry(kern.name.as_str()).or_default();
        e.0 += 1;
        e.1 += used[k];
    }
    let _ = writeln!(s, "  {:<24} {:>8} {:>10}", "kernel", "variants", "dispatches");
    for (name, (variants, n)) in per_kernel {
        let _ = writeln!(s, "  {name:<24} {variants:>8} {n:>10}");
    }
    let flops: u64 = b.dispatches.iter().map(|d| d.flops).sum();
    let bytes: u64 = b.dispatches.iter().map(|d| d.bytes).sum();
    let _ = writeln!(s, "work       {:.3} GFLOP, {:.1} MB moved (at least)", flops as f64 / 1e9, bytes as f64 / 1e6);
}

fn io_line(t: &IoTensor) -> String {
    format!("{} {} {:?} (buffer {} offset {})", t.name, drift_ops::onnx_type_name(t.dtype), t.shape, t.buffer, t.offset)
}
