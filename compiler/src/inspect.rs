//! Human-readable description of a bundle for `drift inspect`.

use drift_runtime::bundle::{BufferKind, Bundle, IoTensor};
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
    // Sizes are validated per buffer, not their sum: add without overflow.
    let total = |kind: BufferKind| {
        b.buffers.iter().filter(|x| x.kind == kind as i32).fold(0u64, |n, x| n.saturating_add(x.size))
    };
    let (arena, weights) = (total(BufferKind::Arena), total(BufferKind::Weights));
    let _ = writeln!(s, "memory:");
    let _ = writeln!(s, "  arena      {:>12} bytes", arena);
    let weight_buffers = b.buffers.iter().filter(|x| x.kind == BufferKind::Weights as i32).count();
    let _ = writeln!(s, "  weights    {:>12} bytes in {} buffer(s)", weights, weight_buffers);
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
    s
}

fn io_line(t: &IoTensor) -> String {
    format!("{} {} {:?} (buffer {} offset {})", t.name, drift_ops::onnx_type_name(t.dtype), t.shape, t.buffer, t.offset)
}
