//! Sibling products merged into one, before ops are built (and before
//! `--quantize` packs weights): `MatMul(x, W1) .. MatMul(x, Wn)` with the
//! same `x` and constant float matrices `Wi` of the same height become
//! `Y = MatMul(x, [W1 .. Wn])` followed by one `Slice` of `Y`'s last axis per
//! original output.
//!
//! A decoder's Q, K and V projections, and its gate and up projections,
//! read one normalized activation each: merged, a decode step runs one
//! GEMV instead of three (two), and each dependent dispatch costs several
//! microseconds on desktop GPUs. The slices cost nothing where the dynamic
//! lowering computes them inside their readers, which is why only graphs
//! with bounded dynamic dims take this pass (a static graph would give each
//! slice a copy kernel).

use crate::ir::{Graph, Node, NodeId, Value, ValueId};
use drift_ops::{DType, Data, Tensor, TypeInfo};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Slice takes starts, ends and axes as inputs from opset 10.
const MIN_OPSET: i64 = 10;

/// Merges every group of sibling MatMuls (see the module docs); returns
/// how many groups were merged.
pub fn merge_sibling_matmuls(g: &mut Graph) -> usize {
    let groups = sibling_groups(g);
    let mut merged = 0;
    for ids in groups.into_values().filter(|ids| ids.len() > 1) {
        merge_group(g, &ids);
        merged += 1;
    }
    merged
}

/// MatMuls with a constant float32 matrix B, keyed by (x, B's height).
fn sibling_groups(g: &Graph) -> BTreeMap<(ValueId, usize), Vec<NodeId>> {
    let mut groups: BTreeMap<(ValueId, usize), Vec<NodeId>> = BTreeMap::new();
    for (id, n) in g.live_nodes() {
        if n.op_type != "MatMul" || !n.domain.is_empty() || n.opset < MIN_OPSET {
            continue;
        }
        let (Some(Some(x)), Some(Some(w))) = (n.inputs.first(), n.inputs.get(1)) else { continue };
        let Some(t) = g.values[*w].constant.as_deref() else { continue };
        let float32 = t.dtype == DType::F32 && matches!(t.data, Data::F32(_));
        if t.rank() == 2 && float32 && g.values[*x].constant.is_none() && n.outputs.first().is_some_and(|o| o.is_some())
        {
            groups.entry((*x, t.shape[0])).or_default().push(id);
        }
    }
    groups
}

/// B's columns side by side: `[K, N1 + .. + Nn]`.
fn concat_columns(parts: &[Arc<Tensor>]) -> Tensor {
    let k = parts[0].shape[0];
    let width: usize = parts.iter().map(|t| t.shape[1]).sum();
    let mut out = Vec::with_capacity(k * width);
    for r in 0..k {
        for t in parts {
            let Data::F32(v) = &t.data else { unreachable!("sibling_groups keeps f32 data") };
            let n = t.shape[1];
            out.extend_from_slice(&v[r * n..(r + 1) * n]);
        }
    }
    Tensor::from_f32(vec![k, width], out)
}

fn constant(g: &mut Graph, name: String, t: Tensor) -> ValueId {
    let ty = Some(TypeInfo::new(t.dtype, t.shape.clone()));
    g.add_value(Value { name, declared: None, ty, constant: Some(Arc::new(t)) })
}

fn merge_group(g: &mut Graph, ids: &[NodeId]) {
    let first = &g.nodes[ids[0]];
    let (name, opset, x) = (first.name.clone(), first.opset, first.inputs[0]);
    let weights: Vec<Arc<Tensor>> = ids
        .iter()
        .map(|&id| g.values[g.nodes[id].inputs[1].expect("grouped")].constant.clone().expect("grouped"))
        .collect();
    let w = constant(g, format!("{name}.merged_weight"), concat_columns(&weights));
    let y = g.add_value(Value { name: format!("{name}.merged"), ..Value::default() });
    g.nodes.push(Node {
        name: format!("{name}.merged"),
        op_type: "MatMul".into(),
        opset,
        inputs: vec![x, Some(w)],
        outputs: vec![Some(y)],
        ..Node::default()
    });
    let mut start = 0i64;
    for (&id, t) in ids.iter().zip(&weights) {
        let end = start + t.shape[1] as i64;
        let node_name = g.nodes[id].name.clone();
        let out = g.nodes[id].outputs[0];
        let starts = constant(g, format!("{node_name}.starts"), Tensor::i64_vec(vec![start]));
        let ends = constant(g, format!("{node_name}.ends"), Tensor::i64_vec(vec![end]));
        let axes = constant(g, format!("{node_name}.axes"), Tensor::i64_vec(vec![-1]));
        g.nodes[id].dead = true;
        g.nodes.push(Node {
            name: node_name,
            op_type: "Slice".into(),
            opset,
            inputs: vec![Some(y), Some(starts), Some(ends), Some(axes)],
            outputs: vec![out],
            ..Node::default()
        });
        start = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(g: &mut Graph, name: &str, constant: Option<Tensor>) -> ValueId {
        g.add_value(Value { name: name.into(), constant: constant.map(Arc::new), ..Value::default() })
    }

    fn matmul(g: &mut Graph, name: &str, x: ValueId, w: ValueId) -> ValueId {
        let y = value(g, &format!("{name}_y"), None);
        g.nodes.push(Node {
            name: name.into(),
            op_type: "MatMul".into(),
            opset: 17,
            inputs: vec![Some(x), Some(w)],
            outputs: vec![Some(y)],
            ..Node::default()
        });
        y
    }

    #[test]
    fn siblings_become_one_product_and_slices() {
        let mut g = Graph::default();
        let x = value(&mut g, "x", None);
        let wq = value(&mut g, "wq", Some(Tensor::from_f32(vec![2, 3], vec![1., 2., 3., 4., 5., 6.])));
        let wk = value(&mut g, "wk", Some(Tensor::from_f32(vec![2, 1], vec![7., 8.])));
        let other = value(&mut g, "w3", Some(Tensor::from_f32(vec![3, 1], vec![1., 1., 1.])));
        let q = matmul(&mut g, "q", x, wq);
        let k = matmul(&mut g, "k", x, wk);
        matmul(&mut g, "lonely", x, other);
        assert_eq!(merge_sibling_matmuls(&mut g), 1);
        let live: Vec<&Node> = g.live_nodes().map(|(_, n)| n).collect();
        let merged = live.iter().find(|n| n.name == "q.merged").expect("merged product");
        let w = g.values[merged.inputs[1].unwrap()].constant.as_deref().unwrap();
        assert_eq!(w.shape, [2, 4]);
        assert_eq!(w.to_f64(), [1., 2., 3., 7., 4., 5., 6., 8.]);
        let slice_of = |v: ValueId| live.iter().find(|n| n.outputs == [Some(v)]).unwrap();
        for (v, start, end) in [(q, 0, 3), (k, 3, 4)] {
            let s = slice_of(v);
            assert_eq!(s.op_type, "Slice");
            let c = |i: usize| g.values[s.inputs[i].unwrap()].constant.as_deref().unwrap().to_i64();
            assert_eq!((c(1), c(2), c(3)), (vec![start], vec![end], vec![-1]));
        }
        assert!(live.iter().any(|n| n.name == "lonely" && n.op_type == "MatMul"));
    }
}
