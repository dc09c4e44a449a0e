//! Cost statistics of a compiled graph (`drift compile --stats`): dispatch
//! and kernel counts, estimated bytes read and written per run, FLOPs.
//!
//! Bytes are estimated per kernel as the sizes of the tensors it touches
//! (each read or written once; caches and re-reads are not modelled), so
//! removing an intermediate tensor from between two kernels shows up as
//! both its write and its read disappearing.

use crate::ir::{Graph, NodeId};
use drift_ops::{Input, LowerCtx, Lowering, TensorRef, TypeInfo};
use serde::Serialize;

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Stats {
    pub dispatches: usize,
    /// Distinct kernels (identical kernel text is one kernel).
    pub kernels: usize,
    pub bytes: u64,
    pub flops: u64,
    /// Live graph nodes, fused ones counted once.
    pub nodes: usize,
    /// Nodes per op type ("Conv+Add+Relu" for fused kernels).
    pub ops: std::collections::BTreeMap<String, usize>,
}

/// Statistics of the live nodes in `order`, with the bundle's kernel count.
pub fn of(g: &Graph, order: &[NodeId], bundle: &drift_runtime::bundle::Bundle) -> Stats {
    let mut s = Stats { dispatches: bundle.dispatches.len(), kernels: bundle.kernels.len(), ..Stats::default() };
    for &id in order.iter().filter(|&&id| !g.nodes[id].dead) {
        s.nodes += 1;
        *s.ops.entry(g.nodes[id].op_type.clone()).or_default() += 1;
        s.bytes += node_bytes(g, id);
        s.flops += node_flops(g, id);
    }
    s
}

fn bytes_of(t: &TypeInfo) -> u64 {
    t.numel() as u64 * 4
}

/// Bytes the kernels of node `id` read and write.
fn node_bytes(g: &Graph, id: NodeId) -> u64 {
    let n = &g.nodes[id];
    let Some(op) = n.op.as_deref() else { return 0 };
    // Nodes with only empty outputs run no kernel (`program::build`).
    if n.outputs.iter().flatten().all(|&v| g.ty(v).numel() == 0) {
        return 0;
    }
    let inputs: Vec<Option<Input>> =
        n.inputs.iter().map(|v| v.map(|v| Input { ty: g.ty(v), value: g.values[v].constant.as_deref() })).collect();
    let outputs: Vec<TypeInfo> = n
        .outputs
        .iter()
        .map(|v| v.map(|v| g.ty(v).clone()).unwrap_or_else(|| TypeInfo::new(drift_ops::DType::F32, vec![0])))
        .collect();
    let cx = LowerCtx { inputs, outputs, target: Default::default() };
    let Ok(Lowering::Kernels { temps, kernels }) = op.lower(&cx) else { return 0 };
    let size = |t: &TensorRef| -> u64 {
        match *t {
            TensorRef::Input(i) => cx.inputs.get(i).copied().flatten().map_or(0, |x| bytes_of(x.ty)),
            TensorRef::Output(i) => cx.outputs.get(i).map_or(0, bytes_of),
            TensorRef::Temp(i) => temps.get(i).map_or(0, |t| t.elems as u64 * 4),
        }
    };
    kernels
        .iter()
        .map(|k| {
            let mut seen: Vec<TensorRef> = vec![];
            k.args
                .iter()
                .filter(|a| {
                    let new = !seen.contains(&a.tensor);
                    seen.push(a.tensor);
                    new
                })
                .map(|a| size(&a.tensor))
                .sum::<u64>()
        })
        .sum()
}

/// Multiply-adds count twice; everything else one operation per element.
fn node_flops(g: &Graph, id: NodeId) -> u64 {
    let n = &g.nodes[id];
    let ty = |k: usize| n.inputs.get(k).copied().flatten().map(|v| g.ty(v));
    let out = n.outputs.first().copied().flatten().map_or(0, |v| g.ty(v).numel() as u64);
    let parts: Vec<&str> = n.op_type.trim_start_matches("Pad>").split('+').collect();
    let main = match parts[0] {
        "MatMul" | "Gemm" | "MatMulInteger" => {
            let a = ty(0).map_or(0, |t| {
                let trans_a = n.attrs.int("transA", 0).unwrap_or(0) != 0 && t.rank() == 2;
                if trans_a { t.shape[0] } else { t.shape.last().copied().unwrap_or(1) }
            });
            let m = n.outputs.first().copied().flatten().map_or(0, |v| g.ty(v).numel() as u64);
            2 * m * a as u64
        }
        "Conv" | "ConvInteger" => ty(1).map_or(0, |w| 2 * out * (w.numel() / w.shape[0].max(1)) as u64),
        "ConvTranspose" => {
            let x = ty(0).map_or(0, |t| t.numel() as u64);
            ty(1).map_or(0, |w| 2 * x * (w.numel() / w.shape[0].max(1)) as u64)
        }
        "Attention" => match (ty(0), ty(1)) {
            // Q·K and P·V: two multiply-adds per query element and key.
            (Some(q), Some(k)) => 4 * q.numel() as u64 * if k.rank() == 4 { k.shape[2] } else { k.shape[1] } as u64,
            _ => 0,
        },
        _ => n.inputs.iter().flatten().map(|&v| g.ty(v).numel() as u64).max().unwrap_or(0).max(out),
    };
    main + out * parts.iter().skip(1).filter(|&&p| p != "Pad").count() as u64
}

impl Stats {
    pub fn text(&self) -> String {
        format!(
            "dispatches {}, kernels {}, nodes {}, bytes {} ({:.1} MiB), flops {} ({:.2} GFLOP)",
            self.dispatches,
            self.kernels,
            self.nodes,
            self.bytes,
            self.bytes as f64 / (1 << 20) as f64,
            self.flops,
            self.flops as f64 / 1e9
        )
    }
}
