//! Packed-weight matmuls, before ops are built:
//!
//! - `repack_matmul_nbits`: onnxruntime's MatMulNBits → drift's QMatMul. B's
//!   bytes become u32 words as they are (same bit layout), zero points are
//!   regrouped into whole words per row; scales stay f32.
//! - `quantize_matmuls` (`drift compile --quantize int8|int4|f16`): every
//!   MatMul whose B is a constant float matrix becomes a QMatMul over
//!   weight-only quantized words (symmetric per group of K, f16 scales;
//!   `drift_ops::families::nbits::quantize_rows`) or f16 values.
//!
//! Either way the weights stay packed in the bundle and on the GPU, and the
//! QMatMul kernels dequantize in their inner loop.

use crate::error::{Error, Result};
use crate::ir::{Graph, NodeId, ValueId};
use drift_ops::families::nbits::{self, MatMulNBits, WeightFormat, ZeroPoints};
use drift_ops::{DType, Tensor};
use std::sync::Arc;

/// The weight format `--quantize` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quantize {
    /// 4 or 8 (integer codes, f16 scales per group), or 16 (f16 weights).
    pub bits: u32,
    pub group: usize,
}

impl Quantize {
    /// Parses `int4`, `int8` or `f16` with a group size.
    pub fn parse(kind: &str, group: usize) -> std::result::Result<Quantize, String> {
        let bits = match kind {
            "int4" => 4,
            "int8" => 8,
            "f16" => 16,
            _ => return Err(format!("--quantize {kind}: expected int4, int8 or f16")),
        };
        if bits < 16 && (group < 8 || !group.is_multiple_of(8)) {
            return Err(format!("--group-size {group}: expected a multiple of 8 (32, 64 or 128)"));
        }
        Ok(Quantize { bits, group })
    }
}

/// Rewrites every MatMulNBits node into a QMatMul over repacked constants.
pub fn repack_matmul_nbits(g: &mut Graph) -> Result<()> {
    let ids: Vec<NodeId> = g
        .live_nodes()
        .filter(|(_, n)| n.op_type == "MatMulNBits" && n.domain == "com.microsoft")
        .map(|(id, _)| id)
        .collect();
    for id in ids {
        repack_one(g, id)?;
    }
    Ok(())
}

fn node_err(g: &Graph, id: NodeId, msg: String) -> Error {
    Error::Node { node: g.nodes[id].name.clone(), op_type: g.nodes[id].op_type.clone(), msg }
}

/// The constant value of input `i` of node `id`, if it is one.
fn constant_input(g: &Graph, id: NodeId, i: usize) -> Option<Arc<Tensor>> {
    let v = g.nodes[id].inputs.get(i).copied().flatten()?;
    g.values[v].constant.clone()
}

fn repack_one(g: &mut Graph, id: NodeId) -> Result<()> {
    let node = &g.nodes[id];
    // Validates the attributes; the numbers are read again below.
    drift_ops::build_op(&node.op_type, &node.domain, node.opset, &node.attrs, 1)
        .map_err(|e| node_err(g, id, e.to_string()))?;
    let attr = |name: &str| node.attrs.int(name, 0).unwrap_or(0) as usize;
    let nb = MatMulNBits {
        k: attr("K"),
        n: attr("N"),
        bits: node.attrs.int("bits", 4).unwrap_or(4) as u32,
        block: attr("block_size"),
    };
    let need = |i: usize, what: &str| {
        constant_input(g, id, i).ok_or_else(|| node_err(g, id, format!("{what} (input {i}) must be an initializer")))
    };
    let b = need(1, "B")?;
    let scales = need(2, "scales")?;
    let has = |i: usize| g.nodes[id].inputs.get(i).copied().flatten().is_some();
    if has(4) {
        return Err(Error::Unsupported(vec![crate::error::UnsupportedNode {
            node: g.nodes[id].name.clone(),
            op_type: "MatMulNBits".into(),
            domain: "com.microsoft".into(),
            opset: g.nodes[id].opset,
            reason: "g_idx (act-order) is not supported".into(),
        }]));
    }
    let blob = nb.block * nb.bits as usize / 8;
    if b.dtype != DType::U8 || b.shape != [nb.n, nb.blocks(), blob] {
        return Err(node_err(
            g,
            id,
            format!("B must be uint8 [{}, {}, {blob}], got {} {:?}", nb.n, nb.blocks(), b.dtype, b.shape),
        ));
    }
    if scales.len() != nb.n * nb.blocks() || !scales.dtype.is_float() {
        return Err(node_err(
            g,
            id,
            format!("scales must be {} floats, got {} {:?}", nb.n * nb.blocks(), scales.dtype, scales.shape),
        ));
    }
    let zp = if has(3) { Some(need(3, "zero_points")?) } else { None };
    let zero_points = match &zp {
        None => ZeroPoints::Default,
        Some(z) if z.dtype == DType::U8 => ZeroPoints::Packed,
        Some(z) if z.dtype.is_float() => ZeroPoints::Float,
        Some(z) => return Err(node_err(g, id, format!("zero_points must be uint8 or float, got {}", z.dtype))),
    };
    let fmt = nb.format(zero_points);
    let name = g.nodes[id].name.clone();
    let bytes: Vec<u8> = b.to_i64().into_iter().map(|x| x as u8).collect();
    let words: Vec<u32> = bytes.chunks(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let w = words_value(g, &format!("{name}.w"), vec![fmt.n, fmt.row_words()], &words);
    let s = float_value(g, &format!("{name}.scales"), scales.to_f64());
    let z = match (zero_points, &zp) {
        (ZeroPoints::Packed, Some(z)) => {
            let row_bytes = (nb.blocks() * nb.bits as usize).div_ceil(8);
            let zb: Vec<u8> = z.to_i64().into_iter().map(|x| x as u8).collect();
            if zb.len() != nb.n * row_bytes {
                return Err(node_err(
                    g,
                    id,
                    format!("zero_points must hold {} bytes, got {}", nb.n * row_bytes, zb.len()),
                ));
            }
            let mut zw = vec![0u32; nb.n * fmt.zp_row_words()];
            for r in 0..nb.n {
                for (j, &byte) in zb[r * row_bytes..(r + 1) * row_bytes].iter().enumerate() {
                    zw[r * fmt.zp_row_words() + j / 4] |= (byte as u32) << (8 * (j % 4));
                }
            }
            Some(words_value(g, &format!("{name}.zero_points"), vec![zw.len()], &zw))
        }
        (ZeroPoints::Float, Some(z)) => Some(float_value(g, &format!("{name}.zero_points"), z.to_f64())),
        _ => None,
    };
    let node = &mut g.nodes[id];
    let a = node.inputs[0];
    let bias = node.inputs.get(5).copied().flatten();
    node.inputs = vec![a, Some(w), Some(s), z, bias];
    become_qmatmul(node, &fmt);
    Ok(())
}

/// Quantizes the constant weight of every MatMul whose B is a float matrix.
/// Returns how many were quantized.
pub fn quantize_matmuls(g: &mut Graph, q: Quantize) -> Result<usize> {
    let ids: Vec<NodeId> = g
        .live_nodes()
        .filter(|(_, n)| n.op_type == "MatMul" && n.domain.is_empty())
        .map(|(id, _)| id)
        .filter(|&id| constant_input(g, id, 1).is_some_and(|b| b.rank() == 2 && b.dtype.is_float()))
        .collect();
    for &id in &ids {
        let b = constant_input(g, id, 1).expect("filtered above");
        let (k, n) = (b.shape[0], b.shape[1]);
        // Rows of the transpose: output feature n's K weights.
        let v = b.to_f64();
        let mut rows = vec![0f32; n * k];
        for kk in 0..k {
            for nn in 0..n {
                rows[nn * k + kk] = v[kk * n + nn] as f32;
            }
        }
        let name = g.nodes[id].name.clone();
        let (fmt, inputs) = if q.bits == 16 {
            let fmt = WeightFormat { k, n, bits: 16, group: k, f16_scales: false, zero_points: ZeroPoints::Default };
            let mut words = Vec::with_capacity(n * fmt.row_words());
            for r in 0..n {
                words.extend(nbits::pack_f16(&rows[r * k..(r + 1) * k]));
            }
            (fmt, vec![Some(words_value(g, &format!("{name}.w"), vec![n, fmt.row_words()], &words)), None])
        } else {
            let (fmt, words, scales) = nbits::quantize_rows(&rows, n, k, q.bits, q.group);
            let w = words_value(g, &format!("{name}.w"), vec![n, fmt.row_words()], &words);
            let s = words_value(g, &format!("{name}.scales"), vec![scales.len()], &scales);
            (fmt, vec![Some(w), Some(s)])
        };
        let old_b = g.nodes[id].inputs[1];
        let node = &mut g.nodes[id];
        let a = node.inputs[0];
        node.inputs = [vec![a], inputs].concat();
        become_qmatmul(node, &fmt);
        if let Some(b) = old_b {
            drop_if_unused(g, b);
        }
    }
    Ok(ids.len())
}

fn become_qmatmul(node: &mut crate::ir::Node, fmt: &WeightFormat) {
    node.op_type = "QMatMul".into();
    node.domain = "ai.drift".into();
    node.opset = 1;
    node.attrs = fmt.attrs();
}

/// Frees a constant no node reads any more (a big f32 weight once quantized).
fn drop_if_unused(g: &mut Graph, v: ValueId) {
    let used = g.live_nodes().any(|(_, n)| n.inputs.contains(&Some(v))) || g.outputs.contains(&v);
    if !used {
        g.values[v].constant = None;
    }
}

fn words_value(g: &mut Graph, name: &str, shape: Vec<usize>, words: &[u32]) -> ValueId {
    let t = Tensor::from_i64(DType::U32, shape, words.iter().map(|&w| w as i64).collect());
    g.add_constant(name.to_string(), t)
}

fn float_value(g: &mut Graph, name: &str, v: Vec<f64>) -> ValueId {
    let n = v.len();
    g.add_constant(name.to_string(), Tensor::from_f64(DType::F32, vec![n], v))
}
