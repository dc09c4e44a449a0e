//! What `drift inspect` prints about a bundle: one [`Summary`], shown as
//! text ([`describe`]) or as JSON ([`to_json`], `drift inspect --json`).

use drift_runtime::bundle::{BufferKind, Bundle, IoTensor, Need};
use drift_runtime::model::target_name;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;

/// Everything `drift inspect` reports.
#[derive(Serialize)]
pub struct Summary {
    pub model: String,
    pub compiler: String,
    pub inputs: Vec<Io>,
    pub outputs: Vec<Io>,
    pub memory: Memory,
    /// Shader languages every kernel carries.
    pub shaders: Vec<&'static str>,
    /// Distinct kernels (after deduplication by text).
    pub kernels: usize,
    pub dispatches: usize,
    /// Per kernel name: how many variants and how many dispatches use them.
    pub kernel_usage: Vec<KernelUsage>,
    /// The kernel sets (`drift compile --target`): the top level first (the
    /// fallback), then the variants the runtime picks by GPU vendor.
    pub kernel_sets: Vec<KernelSet>,
    /// Programs of bounded dynamic dims (decode, prefill), if any: the
    /// dispatches each run of the stage records.
    pub stages: Vec<StageInfo>,
}

#[derive(Serialize)]
pub struct StageInfo {
    pub name: String,
    pub dispatches: usize,
    pub kernel_usage: Vec<KernelUsage>,
}

/// One device target's program in the bundle.
#[derive(Serialize)]
pub struct KernelSet {
    pub target: String,
    pub vendors: Vec<u32>,
    pub needs: Vec<String>,
    pub kernels: usize,
    pub dispatches: usize,
    pub arena_bytes: u64,
    /// Sums of the dispatches' recorded work.
    pub flops: u64,
    pub bytes: u64,
    pub kernel_usage: Vec<KernelUsage>,
}

fn kernel_set(b: &Bundle) -> KernelSet {
    let needs = b.needs.iter().map(|&n| Need::try_from(n).map(|n| format!("{n:?}")).unwrap_or_else(|_| n.to_string()));
    KernelSet {
        target: target_name(b).to_string(),
        vendors: b.vendors.clone(),
        needs: needs.collect(),
        kernels: b.kernels.len(),
        dispatches: b.dispatches.len(),
        arena_bytes: b.buffers.iter().filter(|x| x.kind == BufferKind::Arena as i32).map(|x| x.size).sum(),
        flops: b.dispatches.iter().map(|d| d.flops).sum(),
        bytes: b.dispatches.iter().map(|d| d.bytes).sum(),
        kernel_usage: kernel_usage(b),
    }
}

#[derive(Serialize)]
pub struct Io {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    pub buffer: u32,
    pub offset: u64,
}

/// Memory figures, in bytes. `lower_bound_bytes` and `naive_bytes` come
/// from the planner (absent in bundles that do not record them).
#[derive(Serialize)]
pub struct Memory {
    pub arena_bytes: u64,
    pub lower_bound_bytes: Option<u64>,
    pub naive_bytes: Option<u64>,
    pub weights_bytes: u64,
    pub params_bytes: u64,
    pub strategy: Option<String>,
    pub in_place: Option<u32>,
    pub buffers: Vec<BufferInfo>,
}

#[derive(Serialize)]
pub struct BufferInfo {
    pub kind: &'static str,
    pub size: u64,
}

#[derive(Serialize)]
pub struct KernelUsage {
    pub name: String,
    pub variants: usize,
    pub dispatches: usize,
}

pub fn summarize(b: &Bundle) -> Summary {
    let io = |t: &IoTensor| Io {
        name: t.name.clone(),
        dtype: drift_ops::onnx_type_name(t.dtype).to_string(),
        shape: t.shape.clone(),
        buffer: t.buffer,
        offset: t.offset,
    };
    // Sizes are validated per buffer, not their sum: add without overflow.
    let sum_of = |kind: BufferKind| {
        b.buffers.iter().filter(|x| x.kind == kind as i32).fold(0u64, |n, x| n.saturating_add(x.size))
    };
    let stats = b.memory.as_ref();
    let memory = Memory {
        arena_bytes: sum_of(BufferKind::Arena),
        lower_bound_bytes: stats.map(|m| m.lower_bound_bytes),
        naive_bytes: stats.map(|m| m.naive_bytes),
        weights_bytes: sum_of(BufferKind::Weights),
        params_bytes: b.params.len() as u64,
        strategy: stats.map(|m| m.strategy.clone()),
        in_place: stats.map(|m| m.in_place),
        buffers: b
            .buffers
            .iter()
            .map(|x| BufferInfo {
                kind: if x.kind == BufferKind::Arena as i32 { "arena" } else { "weights" },
                size: x.size,
            })
            .collect(),
    };
    let mut shaders = vec![];
    if b.kernels.iter().all(|k| !k.spirv.is_empty()) {
        shaders.push("SPIR-V");
    }
    if b.kernels.iter().all(|k| !k.msl.is_empty()) {
        shaders.push("MSL");
    }
    if b.kernels.iter().all(|k| !k.wgsl.is_empty()) {
        shaders.push("WGSL");
    }
    Summary {
        model: b.model_name.clone(),
        compiler: b.compiler_version.clone(),
        inputs: b.inputs.iter().map(io).collect(),
        outputs: b.outputs.iter().map(io).collect(),
        memory,
        shaders,
        kernels: b.kernels.len(),
        dispatches: b.dispatches.len(),
        kernel_usage: kernel_usage(b),
        kernel_sets: [b].into_iter().chain(&b.variants).map(kernel_set).collect(),
        stages: b
            .stages
            .iter()
            .map(|st| {
                let (first, count) = (st.first_dispatch as usize, st.dispatch_count as usize);
                let range = first.min(b.dispatches.len())..first.saturating_add(count).min(b.dispatches.len());
                StageInfo {
                    name: st.name.clone(),
                    dispatches: range.len(),
                    kernel_usage: usage_of(b, &b.dispatches[range]).into_iter().filter(|u| u.dispatches > 0).collect(),
                }
            })
            .collect(),
    }
}

fn kernel_usage(b: &Bundle) -> Vec<KernelUsage> {
    usage_of(b, &b.dispatches)
}

/// Per kernel name: variants in the bundle and uses among `dispatches`.
fn usage_of(b: &Bundle, dispatches: &[drift_runtime::bundle::Dispatch]) -> Vec<KernelUsage> {
    let mut used = vec![0usize; b.kernels.len()];
    for d in dispatches {
        if let Some(u) = used.get_mut(d.kernel as usize) {
            *u += 1;
        }
    }
    let mut per_name: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for (k, kern) in b.kernels.iter().enumerate() {
        let e = per_name.entry(kern.name.as_str()).or_default();
        e.0 += 1;
        e.1 += used[k];
    }
    per_name
        .into_iter()
        .map(|(name, (variants, dispatches))| KernelUsage { name: name.to_string(), variants, dispatches })
        .collect()
}

/// `drift inspect --json`.
pub fn to_json(b: &Bundle) -> String {
    serde_json::to_string_pretty(&summarize(b)).expect("a summary always serializes") + "\n"
}

/// `drift inspect`.
pub fn describe(b: &Bundle) -> String {
    let sum = summarize(b);
    let mut s = String::new();
    let _ = writeln!(s, "model      {}", sum.model);
    let _ = writeln!(s, "compiler   drift {}", sum.compiler);
    for (title, list) in [("inputs", &sum.inputs), ("outputs", &sum.outputs)] {
        let _ = writeln!(s, "{title}:");
        for t in list {
            let _ = writeln!(s, "  {} {} {:?} (buffer {} offset {})", t.name, t.dtype, t.shape, t.buffer, t.offset);
        }
    }
    let m = &sum.memory;
    let known = |v: Option<u64>| v.map_or("unknown".to_string(), |v| v.to_string());
    let _ = writeln!(s, "memory:");
    let _ = writeln!(s, "  arena        {:>12} bytes", m.arena_bytes);
    let _ = writeln!(s, "  lower bound  {:>12} bytes (most bytes live at once)", known(m.lower_bound_bytes));
    let _ = writeln!(s, "  naive        {:>12} bytes (every tensor on its own)", known(m.naive_bytes));
    let _ = writeln!(s, "  weights      {:>12} bytes", m.weights_bytes);
    let _ = writeln!(s, "  params       {:>12} bytes", m.params_bytes);
    if let (Some(strategy), Some(in_place)) = (&m.strategy, m.in_place) {
        let _ = writeln!(s, "  plan         {strategy}, {in_place} tensor(s) written in place");
    }
    for (i, buf) in m.buffers.iter().enumerate() {
        let _ = writeln!(s, "  buffer {i}: {} {} bytes", buf.kind, buf.size);
    }
    let _ = writeln!(s, "shaders    {}", sum.shaders.join(", "));
    let _ = writeln!(s, "kernels    {}", sum.kernels);
    let _ = writeln!(s, "dispatches {}", sum.dispatches);
    let _ = writeln!(s, "  {:<24} {:>8} {:>10}", "kernel", "variants", "dispatches");
    for k in &sum.kernel_usage {
        let _ = writeln!(s, "  {:<24} {:>8} {:>10}", k.name, k.variants, k.dispatches);
    }
    let _ = writeln!(
        s,
        "kernel sets ({}; the first, described above, is the fallback; the runtime takes the first other one made for the GPU):",
        sum.kernel_sets.len()
    );
    for k in &sum.kernel_sets {
        let vendors: Vec<String> = k.vendors.iter().map(|v| format!("{v:#06x}")).collect();
        let _ = writeln!(
            s,
            "  {:<8} vendors [{}] needs [{}] {} kernels, {} dispatches, arena {} bytes, {:.3} GFLOP, {:.1} MB moved",
            k.target,
            vendors.join(", "),
            k.needs.join(", "),
            k.kernels,
            k.dispatches,
            k.arena_bytes,
            k.flops as f64 / 1e9,
            k.bytes as f64 / 1e6
        );
    }
    for st in &sum.stages {
        let uses: Vec<String> = st.kernel_usage.iter().map(|u| format!("{} {}", u.name, u.dispatches)).collect();
        let _ = writeln!(s, "stage {:<8} {:>5} dispatches: {}", st.name, st.dispatches, uses.join(", "));
    }
    for k in sum.kernel_sets.iter().skip(1) {
        let _ = writeln!(s, "[{}] {:<15} {:>8} {:>10}", k.target, "kernel", "variants", "dispatches");
        for u in &k.kernel_usage {
            let _ = writeln!(s, "  {:<24} {:>8} {:>10}", u.name, u.variants, u.dispatches);
        }
    }
    s
}

/// `drift inspect --dispatches`: one line per dispatch of the top-level
/// kernel set, in order, with each stage's first dispatch marked.
pub fn dispatch_list(b: &Bundle) -> String {
    let mut s = String::from("dispatches (node, kernel, workgroups, bytes, flops):\n");
    for (i, d) in b.dispatches.iter().enumerate() {
        for st in b.stages.iter().filter(|st| st.first_dispatch as usize == i) {
            let _ = writeln!(s, "stage {}:", st.name);
        }
        let kernel = b.kernels.get(d.kernel as usize).map_or("?", |k| k.name.as_str());
        let groups = if d.groups.is_empty() { format!("{:?}", d.workgroups) } else { "dynamic".to_string() };
        let _ = writeln!(s, "  {i:>5} {:<48} {kernel:<22} {groups:<16} {:>10} {:>12}", d.label, d.bytes, d.flops);
    }
    s
}
