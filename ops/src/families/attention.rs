//! Attention (opsets 23-25): scaled dot-product attention with multi-head,
//! grouped-query and multi-query head layouts, boolean or additive masks,
//! causal and sliding-window masking, soft capping, an internal KV cache
//! (past / present key and value) and an external one (`nonpad_kv_seqlen`).
//! The family's other ops (RotaryEmbedding, SwiGLU, TensorScatter,
//! CausalConvWithState, LinearAttention) live in `transformer.rs`; `build`
//! here is the family's single entry point.
//!
//! GPU plan, for a query row (batch b, query head h, query position i):
//! 1. `attn_scores`: one thread per (row, key j) writes the biased logit
//!    `softcap(q·k * scale) + bias` into a scratch matrix, or -inf where any
//!    mask removes the key (and fills modes 0-2 of the optional QK output);
//! 2. `attn_softmax`: a row kernel turns each row into probabilities in
//!    place; a row whose keys are all masked becomes zeros, not NaN, as the
//!    spec asks (and mode 3 of the QK output is written here);
//! 3. `attn_values`: one thread per output element sums probabilities times
//!    values.
//!
//! Present key/value (past concatenated with new) get copy kernels of their
//! own; the score and value kernels read past and new entries directly, so
//! they never depend on those optional outputs.
//!
//! Precision: everything is computed in f32, except that bfloat16 attention
//! rounds to bfloat16 after every step where the ONNX reference does (its
//! bf16 arithmetic runs op by op in bf16); with bf16's 8-bit mantissa, plain
//! f32 results land a rounding step away from the expected values. float16
//! results of the f32 computation are within tolerance, so they are not
//! emulated.

use crate::families::reduce::{NEG_INF, Rows, row_kernel};
use crate::families::transformer;
use crate::wgsl::{f32_lit, kernel_1d};
use crate::{
    Attrs, DType, Error, Input, KernelArg, LowerCtx, Lowering, Op, Phys, Result, TempSpec, Tensor, TensorRef, TypeInfo,
    arg, bail, ty, unsupported,
};

/// Builds an op of this family.
pub fn build(op_type: &str, a: &Attrs, opset: i64) -> Result<Box<dyn Op>> {
    match op_type {
        "Attention" => Ok(Box::new(Attention::from_attrs(a)?)),
        _ => transformer::build(op_type, a, opset),
    }
}

/// Input slots of Attention.
const Q: usize = 0;
const K: usize = 1;
const V: usize = 2;
const MASK: usize = 3;
const PAST_K: usize = 4;
const PAST_V: usize = 5;
const NONPAD: usize = 6;

/// Rejects non-float data: these ops are defined on floats only.
pub(crate) fn need_float(t: &TypeInfo, what: &str) -> Result<()> {
    if t.dtype.is_float() { Ok(()) } else { unsupported!("{what} of type {}", t.dtype) }
}

/// Whether the node has output `i` (the compiler passes an empty shape for
/// an omitted optional output) with elements to write.
pub(crate) fn has_output(cx: &LowerCtx, i: usize) -> bool {
    cx.outputs.get(i).is_some_and(|t| t.numel() > 0)
}

/// Numerically safe tanh for WGSL: `tanh` of large arguments may overflow
/// to NaN in some drivers, this form never does.
const TANH_WGSL: &str = "fn safe_tanh(x: f32) -> f32 {
    let t = exp(-2.0 * abs(x));
    return sign(x) * (1.0 - t) / (1.0 + t);
}
";

/// Rounding of intermediate results to a narrow float type, where it is
/// emulated (bfloat16; see the module header); identity otherwise.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Round {
    bf16: bool,
}

impl Round {
    fn of(dt: DType) -> Round {
        Round { bf16: dt == DType::BF16 }
    }

    fn host(self, x: f64) -> f64 {
        if self.bf16 { half::bf16::from_f64(x).to_f64() } else { x }
    }

    /// WGSL function `name(x: f32) -> f32` doing the rounding (to nearest
    /// even, on the bits).
    fn wgsl(self, name: &str) -> String {
        let body = if self.bf16 {
            "bitcast<f32>((bitcast<u32>(x) + 0x7fffu + ((bitcast<u32>(x) >> 16u) & 1u)) & 0xffff0000u)"
        } else {
            "x"
        };
        format!("fn {name}(x: f32) -> f32 {{ return {body}; }}\n")
    }
}

// ---------------------------------------------------------------- layout

/// Element strides of a (batch, head, sequence, feature) view of a tensor
/// that is stored either as (B, H, S, D) or packed as (B, S, H * D).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Layout {
    sb: usize,
    sh: usize,
    ss: usize,
}

impl Layout {
    pub(crate) fn new(packed: bool, heads: usize, seq: usize, dim: usize) -> Layout {
        if packed {
            Layout { sb: seq * heads * dim, sh: dim, ss: heads * dim }
        } else {
            Layout { sb: heads * seq * dim, sh: seq * dim, ss: dim }
        }
    }

    pub(crate) fn at(&self, b: usize, h: usize, s: usize, d: usize) -> usize {
        b * self.sb + h * self.sh + s * self.ss + d
    }

    /// The same index as a WGSL u32 expression over variables.
    pub(crate) fn wgsl(&self, b: &str, h: &str, s: &str, d: &str) -> String {
        format!("{b} * {}u + {h} * {}u + {s} * {}u + {d}", self.sb, self.sh, self.ss)
    }
}

// ---------------------------------------------------------------- geometry

/// An attention mask as the kernels see it: its shape right-aligned to
/// (batch, query head, query, key) with leading ones, and whether it is a
/// boolean (keep / drop) or an additive float mask.
#[derive(Clone, Debug, PartialEq)]
struct MaskGeom {
    dims: [usize; 4],
    boolean: bool,
}

impl MaskGeom {
    /// Linear index of the mask element for (b, h, i, j), `j` inside the
    /// mask's key length.
    fn at(&self, b: usize, h: usize, i: usize, j: usize) -> usize {
        let [d0, d1, d2, d3] = self.dims;
        let pick = |n: usize, v: usize| if n == 1 { 0 } else { v };
        ((pick(d0, b) * d1 + pick(d1, h)) * d2 + pick(d2, i)) * d3 + j
    }

    fn wgsl(&self) -> String {
        let [d0, d1, d2, d3] = self.dims;
        let pick = |n: usize, v: &str| if n == 1 { "0u".to_string() } else { v.to_string() };
        format!("(({} * {d1}u + {}) * {d2}u + {}) * {d3}u + j", pick(d0, "b"), pick(d1, "h"), pick(d2, "qi"))
    }
}

/// Every size an Attention node works with, checked once.
#[derive(Clone, Debug, PartialEq)]
struct Geom {
    batch: usize,
    q_heads: usize,
    kv_heads: usize,
    q_len: usize,
    /// New keys / values in K and V.
    kv_len: usize,
    /// Cached keys / values in past_key / past_value.
    past: usize,
    dk: usize,
    dv: usize,
    /// Inputs packed as (B, S, H * D) rather than (B, H, S, D).
    packed: bool,
    mask: Option<MaskGeom>,
    nonpad: bool,
}

impl Geom {
    /// Keys attended: past plus new.
    fn total(&self) -> usize {
        self.past + self.kv_len
    }

    fn group(&self) -> usize {
        self.q_heads / self.kv_heads
    }

    fn q_layout(&self) -> Layout {
        Layout::new(self.packed, self.q_heads, self.q_len, self.dk)
    }

    fn k_layout(&self) -> Layout {
        Layout::new(self.packed, self.kv_heads, self.kv_len, self.dk)
    }

    fn v_layout(&self) -> Layout {
        Layout::new(self.packed, self.kv_heads, self.kv_len, self.dv)
    }

    fn y_layout(&self) -> Layout {
        Layout::new(self.packed, self.q_heads, self.q_len, self.dv)
    }

    fn y_shape(&self) -> Vec<usize> {
        if self.packed {
            vec![self.batch, self.q_len, self.q_heads * self.dv]
        } else {
            vec![self.batch, self.q_heads, self.q_len, self.dv]
        }
    }

    fn present_shape(&self, d: usize) -> Vec<usize> {
        vec![self.batch, self.kv_heads, self.total(), d]
    }

    fn scores_shape(&self) -> Vec<usize> {
        vec![self.batch, self.q_heads, self.q_len, self.total()]
    }
}

// ---------------------------------------------------------------- op

/// The Attention operator.
#[derive(Debug)]
pub struct Attention {
    q_num_heads: Option<usize>,
    kv_num_heads: Option<usize>,
    scale: Option<f32>,
    is_causal: bool,
    softcap: f32,
    /// What output 3 holds: 0 raw scaled QK, 1 after softcap, 2 after the
    /// bias, 3 the probabilities.
    qk_mode: i64,
    /// Sliding window bounds (opset 25); -1 is unbounded.
    left_window: i64,
    right_window: i64,
    /// Type the softmax runs in (default: Q's).
    softmax_dtype: Option<DType>,
}

impl Attention {
    fn from_attrs(a: &Attrs) -> Result<Attention> {
        let heads = |name: &str| -> Result<Option<usize>> {
            match a.int_opt(name)? {
                None => Ok(None),
                Some(n) if n > 0 => Ok(Some(n as usize)),
                Some(n) => bail!("attribute '{name}' must be positive, got {n}"),
            }
        };
        let qk_mode = a.int("qk_matmul_output_mode", 0)?;
        if !(0..=3).contains(&qk_mode) {
            bail!("attribute 'qk_matmul_output_mode' must be 0..3, got {qk_mode}");
        }
        let (left_window, right_window) = (a.int("left_window_size", -1)?, a.int("right_window_size", -1)?);
        if left_window < -1 || right_window < -1 {
            bail!("window sizes must be -1 or nonnegative, got left {left_window}, right {right_window}");
        }
        let softmax_dtype = match a.int_opt("softmax_precision")? {
            None => None,
            Some(c @ (1 | 10 | 11 | 16)) => Some(DType::from_onnx(c as i32)?),
            Some(c) => bail!("attribute 'softmax_precision' must be 1, 10, 11 or 16, got {c}"),
        };
        Ok(Attention {
            softmax_dtype,
            q_num_heads: heads("q_num_heads")?,
            kv_num_heads: heads("kv_num_heads")?,
            scale: a.float_opt("scale")?,
            is_causal: a.int("is_causal", 0)? != 0,
            softcap: a.float("softcap", 0.0)?,
            qk_mode,
            left_window,
            right_window,
        })
    }

    /// Checks the input types and derives every size.
    fn geom(&self, t: &[Option<&TypeInfo>]) -> Result<Geom> {
        let get = |i: usize| t.get(i).copied().flatten();
        let req = |i: usize, what: &str| get(i).ok_or_else(|| Error::msg(format!("input {i} ({what}) is required")));
        let (q, k, v) = (req(Q, "Q")?, req(K, "K")?, req(V, "V")?);
        for (x, what) in [(q, "Q"), (k, "K"), (v, "V")] {
            need_float(x, what)?;
        }
        if q.rank() != k.rank() || q.rank() != v.rank() {
            bail!("Q, K and V must have the same rank, got {:?}, {:?}, {:?}", q.shape, k.shape, v.shape);
        }
        let (batch, packed) = (q.shape.first().copied().unwrap_or(0), q.rank() == 3);
        let (q_heads, kv_heads, q_len, kv_len, dk, dv) = match q.rank() {
            3 => {
                let (Some(hq), Some(hkv)) = (self.q_num_heads, self.kv_num_heads) else {
                    bail!("3-D inputs need attributes q_num_heads and kv_num_heads");
                };
                let split = |x: &TypeInfo, h: usize, what: &str| -> Result<usize> {
                    if !x.shape[2].is_multiple_of(h) {
                        bail!("{what} hidden size {} is not divisible by {h} heads", x.shape[2]);
                    }
                    Ok(x.shape[2] / h)
                };
                let (dq, dk, dv) = (split(q, hq, "Q")?, split(k, hkv, "K")?, split(v, hkv, "V")?);
                if dq != dk {
                    bail!("Q head size {dq} differs from K head size {dk}");
                }
                (hq, hkv, q.shape[1], k.shape[1], dk, dv)
            }
            4 => {
                if k.shape[1] != v.shape[1] {
                    bail!("K has {} heads but V has {}", k.shape[1], v.shape[1]);
                }
                if q.shape[3] != k.shape[3] {
                    bail!("Q head size {} differs from K head size {}", q.shape[3], k.shape[3]);
                }
                (q.shape[1], k.shape[1], q.shape[2], k.shape[2], k.shape[3], v.shape[3])
            }
            r => bail!("Q, K and V must be 3-D or 4-D, got rank {r}"),
        };
        if k.shape[0] != batch || v.shape[0] != batch {
            bail!("Q, K and V disagree on the batch size: {:?}, {:?}, {:?}", q.shape, k.shape, v.shape);
        }
        let seq_axis = if packed { 1 } else { 2 };
        if v.shape[seq_axis] != kv_len {
            bail!("K and V disagree on the sequence length: {:?} vs {:?}", k.shape, v.shape);
        }
        if kv_heads == 0 || q_heads % kv_heads != 0 {
            bail!("query heads ({q_heads}) must be a multiple of key/value heads ({kv_heads})");
        }
        let past = match (get(PAST_K), get(PAST_V)) {
            (None, None) => 0,
            (Some(pk), Some(pv)) => {
                let p = pk.shape.get(2).copied().unwrap_or(0);
                if pk.shape != [batch, kv_heads, p, dk] || pv.shape != [batch, kv_heads, p, dv] {
                    bail!(
                        "past_key {:?} / past_value {:?} must be [{batch}, {kv_heads}, P, {dk}] / [.., {dv}]",
                        pk.shape,
                        pv.shape
                    );
                }
                p
            }
            _ => bail!("past_key and past_value must be given together"),
        };
        let nonpad = match get(NONPAD) {
            None => false,
            Some(_) if past > 0 || get(PAST_K).is_some() => bail!("nonpad_kv_seqlen cannot be used with past_key"),
            Some(n) if n.shape == [batch] => true,
            Some(n) => bail!("nonpad_kv_seqlen must have shape [{batch}], got {:?}", n.shape),
        };
        let total = past + kv_len;
        let mask = match get(MASK) {
            None => None,
            Some(m) => {
                let boolean = m.dtype == DType::Bool;
                if !boolean && !m.dtype.is_float() {
                    unsupported!("attn_mask of type {}", m.dtype);
                }
                if m.rank() == 0 || m.rank() > 4 {
                    bail!("attn_mask must have rank 1 to 4, got {:?}", m.shape);
                }
                let mut dims = [1; 4];
                dims[4 - m.rank()..].copy_from_slice(&m.shape);
                let want = [batch, q_heads, q_len];
                if dims[3] > total || dims[..3].iter().zip(want).any(|(&d, w)| d != 1 && d != w) {
                    bail!("attn_mask {:?} does not fit scores [{batch}, {q_heads}, {q_len}, {total}]", m.shape);
                }
                Some(MaskGeom { dims, boolean })
            }
        };
        Ok(Geom { batch, q_heads, kv_heads, q_len, kv_len, past, dk, dv, packed, mask, nonpad })
    }

    /// The square root of the scale, applied to Q and K each (to keep the
    /// product in range), rounded to Q's type as the reference does.
    fn sqrt_scale(&self, g: &Geom, qt: DType) -> f64 {
        let scale = self.scale.map_or(1.0 / (g.dk as f64).sqrt(), |s| s as f64);
        Tensor::scalar_f64(qt, scale.sqrt()).to_f64()[0]
    }

    fn windowed(&self) -> bool {
        self.left_window >= 0 || self.right_window >= 0
    }

    /// Whether key `j` is visible to query `i` under the causal and window
    /// rules, `offset` being the count of keys before the query block.
    fn visible(&self, i: i64, j: i64, offset: i64) -> bool {
        let diff = i + offset - j;
        !(self.is_causal && diff < 0
            || self.left_window >= 0 && diff > self.left_window
            || self.right_window >= 0 && -diff > self.right_window)
    }
}

/// Host values of an Attention node's inputs, for the CPU reference.
struct Host {
    q: Vec<f64>,
    k: Vec<f64>,
    v: Vec<f64>,
    mask: Option<Vec<f64>>,
    past_k: Option<Vec<f64>>,
    past_v: Option<Vec<f64>>,
    nonpad: Option<Vec<i64>>,
}

impl Attention {
    /// Key (or value) `d` of kv head `h`, position `j` counting the past.
    fn kv_at(g: &Geom, past: &Option<Vec<f64>>, new: &[f64], lay: Layout, dim: usize, at: [usize; 4]) -> f64 {
        let [b, h, j, d] = at;
        match past {
            Some(p) if j < g.past => p[((b * g.kv_heads + h) * g.past + j) * dim + d],
            _ => new[lay.at(b, h, j - g.past, d)],
        }
    }

    /// The additive bias of score (b, h, i, j): 0 or the float mask value,
    /// -inf where a mask, the causal rule, the window or padding drops it.
    fn bias(&self, g: &Geom, x: &Host, b: usize, h: usize, i: usize, j: usize) -> f64 {
        let mut bias = 0.0;
        if let (Some(m), Some(mv)) = (&g.mask, &x.mask) {
            if j >= m.dims[3] {
                return f64::NEG_INFINITY;
            }
            let val = mv[m.at(b, h, i, j)];
            if m.boolean && val == 0.0 {
                return f64::NEG_INFINITY;
            }
            if !m.boolean {
                bias = val;
            }
        }
        let offset = match &x.nonpad {
            Some(n) => n[b] - g.q_len as i64,
            None => g.past as i64,
        };
        if !self.visible(i as i64, j as i64, offset) {
            return f64::NEG_INFINITY;
        }
        if x.nonpad.as_ref().is_some_and(|n| j as i64 >= n[b]) {
            return f64::NEG_INFINITY;
        }
        bias
    }

    fn softcap(&self, s: f64, r: Round) -> f64 {
        if self.softcap > 0.0 {
            let c = self.softcap as f64;
            r.host(r.host(r.host(s / c).tanh()) * c)
        } else {
            s
        }
    }

    /// Rounding of the softmax steps and of Q's type.
    fn roundings(&self, qt: DType) -> (Round, Round) {
        (Round::of(self.softmax_dtype.unwrap_or(qt)), Round::of(qt))
    }
}

impl Op for Attention {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let types: Vec<Option<&TypeInfo>> = inputs.iter().map(|i| i.map(|i| i.ty)).collect();
        let g = self.geom(&types)?;
        let (qt, kt, vt) = (ty(inputs, Q)?.dtype, ty(inputs, K)?.dtype, ty(inputs, V)?.dtype);
        Ok(vec![
            TypeInfo::new(qt, g.y_shape()),
            TypeInfo::new(kt, g.present_shape(g.dk)),
            TypeInfo::new(vt, g.present_shape(g.dv)),
            TypeInfo::new(qt, g.scores_shape()),
        ])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let owned: Vec<Option<TypeInfo>> =
            inputs.iter().map(|t| t.map(|t| TypeInfo::new(t.dtype, t.shape.clone()))).collect();
        let g = self.geom(&owned.iter().map(|t| t.as_ref()).collect::<Vec<_>>())?;
        let opt = |i: usize| inputs.get(i).copied().flatten();
        let x = Host {
            q: arg(inputs, Q)?.to_f64(),
            k: arg(inputs, K)?.to_f64(),
            v: arg(inputs, V)?.to_f64(),
            mask: opt(MASK).map(|t| t.to_f64()),
            past_k: opt(PAST_K).map(|t| t.to_f64()),
            past_v: opt(PAST_V).map(|t| t.to_f64()),
            nonpad: opt(NONPAD).map(|t| t.to_i64()),
        };
        let qt = arg(inputs, Q)?.dtype;
        let (l, ss) = (g.total(), self.sqrt_scale(&g, qt));
        let (sm, qr) = self.roundings(qt);
        let (ql, kl, vl, yl) = (g.q_layout(), g.k_layout(), g.v_layout(), g.y_layout());
        let mut y = vec![0.0; g.batch * g.q_heads * g.q_len * g.dv];
        let mut qk = vec![0.0; g.batch * g.q_heads * g.q_len * l];
        for b in 0..g.batch {
            for h in 0..g.q_heads {
                let hk = h / g.group();
                for i in 0..g.q_len {
                    let row = ((b * g.q_heads + h) * g.q_len + i) * l;
                    let mut s = vec![f64::NEG_INFINITY; l];
                    for (j, sj) in s.iter_mut().enumerate() {
                        let dot: f64 = (0..g.dk)
                            .map(|d| {
                                let k = Self::kv_at(&g, &x.past_k, &x.k, kl, g.dk, [b, hk, j, d]);
                                qr.host(x.q[ql.at(b, h, i, d)] * ss) * qr.host(k * ss)
                            })
                            .sum();
                        let raw = qr.host(dot);
                        let capped = self.softcap(raw, qr);
                        let bias = self.bias(&g, &x, b, h, i, j);
                        *sj = if bias == f64::NEG_INFINITY { bias } else { qr.host(capped + bias) };
                        qk[row + j] = match self.qk_mode {
                            0 => raw,
                            1 => capped,
                            _ => *sj,
                        };
                    }
                    let p: Vec<f64> = masked_softmax(&s, sm).into_iter().map(|p| qr.host(p)).collect();
                    if self.qk_mode == 3 {
                        qk[row..row + l].copy_from_slice(&p);
                    }
                    for dv in 0..g.dv {
                        y[yl.at(b, h, i, dv)] = qr.host(
                            (0..l).map(|j| p[j] * Self::kv_at(&g, &x.past_v, &x.v, vl, g.dv, [b, hk, j, dv])).sum(),
                        );
                    }
                }
            }
        }
        let present = |past: &Option<Vec<f64>>, new: &[f64], lay: Layout, dim: usize, dt: DType| {
            let mut out = Vec::with_capacity(g.batch * g.kv_heads * l * dim);
            for b in 0..g.batch {
                for h in 0..g.kv_heads {
                    for j in 0..l {
                        out.extend((0..dim).map(|d| Self::kv_at(&g, past, new, lay, dim, [b, h, j, d])));
                    }
                }
            }
            Tensor::from_f64(dt, g.present_shape(dim), out)
        };
        Ok(vec![
            Tensor::from_f64(qt, g.y_shape(), y),
            present(&x.past_k, &x.k, kl, g.dk, arg(inputs, K)?.dtype),
            present(&x.past_v, &x.v, vl, g.dv, arg(inputs, V)?.dtype),
            Tensor::from_f64(qt, g.scores_shape(), qk),
        ])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let types: Vec<Option<&TypeInfo>> = cx.inputs.iter().map(|i| i.map(|i| i.ty)).collect();
        let g = self.geom(&types)?;
        let (sm, qr) = self.roundings(cx.input(Q)?.dtype);
        let helpers = format!("{}{}", kv_helpers(&g), qr.wgsl("rnd"));
        let mut kernels = vec![];
        for (out, name, d) in [(1, "k", g.dk), (2, "v", g.dv)] {
            if has_output(cx, out) {
                kernels.push(self.present_kernel(&g, out, name, d));
            }
        }
        let want_qk = has_output(cx, 3);
        let scores = g.batch * g.q_heads * g.q_len * g.total();
        // Without extra outputs or emulated rounding, one kernel does it all.
        if kernels.is_empty() && !want_qk && !sm.bf16 && !qr.bf16 {
            let fused = self.fused_kernel(&g, cx.input(Q)?.dtype, &helpers);
            return Ok(Lowering::Kernels {
                temps: vec![TempSpec { elems: scores, phys: Phys::F32 }],
                kernels: vec![fused],
            });
        }
        kernels.push(self.scores_kernel(&g, cx.input(Q)?.dtype, want_qk, &helpers));
        kernels.push(self.softmax_kernel(&g, sm, qr, want_qk));
        kernels.push(self.values_kernel(&g, &helpers));
        Ok(Lowering::Kernels { temps: vec![TempSpec { elems: scores, phys: Phys::F32 }], kernels })
    }
}

/// The softmax of one row of biased scores, rounding each step with `r`
/// (and summing in order, as the reference does in a narrow type); a row
/// without any finite score (all keys masked) gives zeros.
fn masked_softmax(s: &[f64], r: Round) -> Vec<f64> {
    let x: Vec<f64> = s.iter().map(|&v| r.host(v)).collect();
    let m = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return vec![0.0; s.len()];
    }
    let e: Vec<f64> = x.iter().map(|v| r.host(r.host(v - m).exp())).collect();
    let sum = e.iter().fold(0.0, |acc, v| r.host(acc + v));
    e.iter().map(|v| r.host(v / sum)).collect()
}

/// WGSL `k_at(b, h, j, d)` / `v_at(..)`: key or value `d` of kv head `h` at
/// position `j`, reading past_key / past_value for the first `past`
/// positions and K / V after them.
fn kv_helpers(g: &Geom) -> String {
    let mut out = String::new();
    for (name, lay, dim) in [("k", g.k_layout(), g.dk), ("v", g.v_layout(), g.dv)] {
        let new = lay.wgsl("b", "h", &format!("(j - {}u)", g.past), "d");
        let past = if g.past > 0 {
            format!(
                "    if (j < {p}u) {{ return ld_p{name}(((b * {hkv}u + h) * {p}u + j) * {dim}u + d); }}\n",
                p = g.past,
                hkv = g.kv_heads
            )
        } else {
            String::new()
        };
        out += &format!(
            "fn {name}_at(b: u32, h: u32, j: u32, d: u32) -> f32 {{\n{past}    return ld_{name}({new});\n}}\n"
        );
    }
    out
}

impl Attention {
    /// Arguments every kernel reading keys or values needs.
    fn kv_args(g: &Geom) -> Vec<KernelArg> {
        let mut args = vec![KernelArg::new("k", TensorRef::Input(K)), KernelArg::new("v", TensorRef::Input(V))];
        if g.past > 0 {
            args.push(KernelArg::new("pk", TensorRef::Input(PAST_K)));
            args.push(KernelArg::new("pv", TensorRef::Input(PAST_V)));
        }
        args
    }

    /// Present key or value: the past followed by the new entries, always
    /// as (B, H_kv, P + S, D).
    fn present_kernel(&self, g: &Geom, out: usize, name: &str, dim: usize) -> crate::Kernel {
        let mut args = Self::kv_args(g);
        args.push(KernelArg::new("y", TensorRef::Output(out)));
        let l = g.total();
        let body = format!(
            "    let d = i % {dim}u;
    let j = (i / {dim}u) % {l}u;
    let h = (i / {hl}u) % {hkv}u;
    let b = i / {hhl}u;
    st_y(i, {name}_at(b, h, j, d));",
            hl = dim * l,
            hkv = g.kv_heads,
            hhl = dim * l * g.kv_heads
        );
        kernel_1d(&format!("attn_present_{name}"), args, g.batch * g.kv_heads * l * dim, &kv_helpers(g), &body)
    }

    /// One thread per (b, h, i, j): the biased score, or -inf where masked.
    fn scores_kernel(&self, g: &Geom, qt: DType, want_qk: bool, helpers: &str) -> crate::Kernel {
        let l = g.total();
        let (mut code, mut args) = self.score_code(g, qt);
        code += "    st_s(i, sv);\n";
        // Mode 0 is the scaled product before the soft cap, as the spec says
        // (the reference implementation caps it too).
        if want_qk && self.qk_mode < 3 {
            args.push(KernelArg::new("qk", TensorRef::Output(3)));
            code += &format!("    st_qk(i, {});\n", ["raw", "capped", "sv"][self.qk_mode as usize]);
        }
        let helpers = if self.softcap > 0.0 { format!("{helpers}{TANH_WGSL}") } else { helpers.to_string() };
        kernel_1d("attn_scores", args, g.batch * g.q_heads * g.q_len * l, &helpers, &code)
    }

    /// WGSL computing `sv`, the biased score (or -inf where masked) of
    /// linear index `i` over (b, h, i, j), and the arguments it reads
    /// (plus the scratch scores `s`).
    fn score_code(&self, g: &Geom, qt: DType) -> (String, Vec<KernelArg>) {
        let l = g.total();
        let mut args = Self::kv_args(g);
        args.push(KernelArg::new("q", TensorRef::Input(Q)));
        args.push(KernelArg::new("s", TensorRef::Temp(0)));
        let mut code = format!(
            "    let j = i % {l}u;
    let qi = (i / {l}u) % {sq}u;
    let h = (i / {lsq}u) % {hq}u;
    let b = i / {lsqhq}u;
    let hk = h / {group}u;
    let q0 = {qidx};
    var dot = 0.0;
    for (var d = 0u; d < {dk}u; d = d + 1u) {{ dot = dot + rnd(ld_q(q0 + d) * {ss}) * rnd(k_at(b, hk, j, d) * {ss}); }}
    let raw = rnd(dot);
    let capped = {capped};
    var bias = 0.0;
    var masked = false;
",
            sq = g.q_len,
            lsq = l * g.q_len,
            hq = g.q_heads,
            lsqhq = l * g.q_len * g.q_heads,
            group = g.group(),
            qidx = g.q_layout().wgsl("b", "h", "qi", "0u"),
            dk = g.dk,
            ss = f32_lit(self.sqrt_scale(g, qt) as f32),
            capped = if self.softcap > 0.0 {
                let c = f32_lit(self.softcap);
                format!("rnd(rnd(safe_tanh(rnd(raw / {c}))) * {c})")
            } else {
                "raw".to_string()
            },
        );
        if let Some(m) = &g.mask {
            args.push(KernelArg::new("mask", TensorRef::Input(MASK)));
            let val = format!("ld_mask({})", m.wgsl());
            let apply = if m.boolean { format!("masked = {val} == 0u;") } else { format!("bias = {val};") };
            code += &format!("    if (j >= {len}u) {{ masked = true; }} else {{ {apply} }}\n", len = m.dims[3]);
        }
        if g.nonpad {
            args.push(KernelArg::new("nonpad", TensorRef::Input(NONPAD)));
            code += &format!("    let valid = ld_nonpad(b);\n    let off = valid - {};\n", g.q_len);
            code += "    if (i32(j) >= valid) { masked = true; }\n";
        } else {
            code += &format!("    let off = {};\n", g.past);
        }
        if self.is_causal || self.windowed() {
            code += "    let diff = i32(qi) + off - i32(j);\n";
        }
        if self.is_causal {
            code += "    if (diff < 0) { masked = true; }\n";
        }
        if self.left_window >= 0 {
            code += &format!("    if (diff > {}) {{ masked = true; }}\n", self.left_window);
        }
        if self.right_window >= 0 {
            code += &format!("    if (-diff > {}) {{ masked = true; }}\n", self.right_window);
        }
        code += &format!("    let sv = select(rnd(capped + bias), {NEG_INF}, masked);\n");
        (code, args)
    }

    /// Scores, softmax and values in one row kernel (one row per query):
    /// the row's lanes write its scores to the scratch, turn them into
    /// exponentials, and after a storage barrier sum exponentials times
    /// values per output feature, dividing by the row's sum at the end.
    fn fused_kernel(&self, g: &Geom, qt: DType, helpers: &str) -> crate::Kernel {
        let (score, mut args) = self.score_code(g, qt);
        args.push(KernelArg::new("y", TensorRef::Output(0)).stored_once());
        let mut helpers = format!("{helpers}fn attn_score(i: u32) -> f32 {{\n{score}    return sv;\n}}\n");
        if self.softcap > 0.0 {
            helpers += TANH_WGSL;
        }
        let body = format!(
            "    var m = {NEG_INF};
    for (var j = lane; j < n_el; j = j + LANES) {{
        let sv = attn_score(base + j);
        st_s(base + j, sv);
        m = max(m, sv);
    }}
    m = seg_max_f32(m, lid);
    // A row with every key masked has no distribution: it becomes zeros.
    let dead = m == {NEG_INF};
    var sum = 0.0;
    for (var j = lane; j < n_el; j = j + LANES) {{
        let p = select(exp(ld_s(base + j) - m), 0.0, dead);
        st_s(base + j, p);
        sum = sum + p;
    }}
    sum = seg_sum_f32(sum, lid);
    storageBarrier();
    let qi = row % {sq}u;
    let h = (row / {sq}u) % {hq}u;
    let b = row / {sqhq}u;
    let hk = h / {group}u;
    let n_dv = select(0u, {dv}u, valid);
    for (var dv = lane; dv < n_dv; dv = dv + LANES) {{
        var acc = 0.0;
        for (var j = 0u; j < {l}u; j = j + 1u) {{ acc = acc + ld_s(base + j) * v_at(b, hk, j, dv); }}
        st_y({yidx}, select(acc / sum, 0.0, dead));
    }}
",
            sq = g.q_len,
            hq = g.q_heads,
            sqhq = g.q_len * g.q_heads,
            group = g.group(),
            dv = g.dv,
            l = g.total(),
            yidx = g.y_layout().wgsl("b", "h", "qi", "dv"),
        );
        let rows = Rows::contiguous(g.batch * g.q_heads * g.q_len, g.total());
        row_kernel("attn_fused", args, &rows, &helpers, &body)
    }

    /// The scores rows become probabilities in place (`sm` rounding the
    /// softmax steps, `qr` the result); mode 3 of the QK output is written
    /// here too.
    fn softmax_kernel(&self, g: &Geom, sm: Round, qr: Round, want_qk: bool) -> crate::Kernel {
        let mut args = vec![KernelArg::new("s", TensorRef::Temp(0))];
        let mut store_p = "st_s(i, p);".to_string();
        // In a narrow softmax type the reference sums in order, rounding
        // every partial sum: lane 0 does that alone, the others add zeros.
        let sum = if sm.bf16 {
            "    if (lane == 0u) {
        for (var j = 0u; j < n_el; j = j + 1u) { sum = rnd_sm(sum + rnd_sm(exp(rnd_sm(x_at(base + elem_off(j)) - m)))); }
    }
"
        } else {
            "    for (var j = lane; j < n_el; j = j + LANES) { sum = sum + exp(x_at(base + elem_off(j)) - m); }\n"
        };
        if want_qk && self.qk_mode == 3 {
            args.push(KernelArg::new("qk", TensorRef::Output(3)));
            store_p += " st_qk(i, p);";
        }
        let body = format!(
            "    var m = {NEG_INF};
    for (var j = lane; j < n_el; j = j + LANES) {{ m = max(m, x_at(base + elem_off(j))); }}
    m = seg_max_f32(m, lid);
    var sum = 0.0;
{sum}    sum = seg_sum_f32(sum, lid);
    // A row with every key masked has no distribution: it becomes zeros.
    let dead = m == {NEG_INF};
    for (var j = lane; j < n_el; j = j + LANES) {{
        let i = base + elem_off(j);
        let p = rnd(select(rnd_sm(rnd_sm(exp(rnd_sm(x_at(i) - m))) / sum), 0.0, dead));
        {store_p}
    }}
"
        );
        let sm_helpers =
            format!("{}{}fn x_at(i: u32) -> f32 {{ return rnd_sm(ld_s(i)); }}\n", qr.wgsl("rnd"), sm.wgsl("rnd_sm"));
        let rows = Rows::contiguous(g.batch * g.q_heads * g.q_len, g.total());
        row_kernel("attn_softmax", args, &rows, &sm_helpers, &body)
    }

    /// One thread per output element: probabilities times values.
    fn values_kernel(&self, g: &Geom, helpers: &str) -> crate::Kernel {
        let l = g.total();
        let mut args = Self::kv_args(g);
        args.push(KernelArg::new("s", TensorRef::Temp(0)));
        args.push(KernelArg::new("y", TensorRef::Output(0)));
        let body = format!(
            "    let dv = i % {dv}u;
    let row = i / {dv}u;
    let qi = row % {sq}u;
    let h = (row / {sq}u) % {hq}u;
    let b = row / {sqhq}u;
    let hk = h / {group}u;
    var acc = 0.0;
    for (var j = 0u; j < {l}u; j = j + 1u) {{ acc = acc + ld_s(row * {l}u + j) * v_at(b, hk, j, dv); }}
    st_y({yidx}, rnd(acc));",
            dv = g.dv,
            sq = g.q_len,
            hq = g.q_heads,
            sqhq = g.q_len * g.q_heads,
            group = g.group(),
            yidx = g.y_layout().wgsl("b", "h", "qi", "dv"),
        );
        kernel_1d("attn_values", args, g.batch * g.q_heads * g.q_len * g.dv, helpers, &body)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::Attr;
    use crate::testing::*;

    /// The test inputs the reference values were computed from (numpy):
    /// `((i * 7 + seed) % 11) / 10 - 0.5` over the flattened tensor.
    pub(crate) fn seq(shape: &[usize], seed: usize) -> Tensor {
        let n: usize = shape.iter().product();
        Tensor::from_f32(shape.to_vec(), (0..n).map(|i| ((i * 7 + seed) % 11) as f32 / 10.0 - 0.5).collect())
    }

    pub(crate) fn close(got: &Tensor, want: &[f64]) {
        let got = got.to_f64();
        assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
        for (a, b) in got.iter().zip(want) {
            let ok = a == b || (a - b).abs() <= 1e-5 + 1e-5 * b.abs();
            assert!(ok, "{got:?} vs {want:?}");
        }
    }

    fn eval(a: &[(&str, Attr)], ins: &[Option<Tensor>]) -> Vec<Tensor> {
        let op = build("Attention", &attrs(a), 24).unwrap();
        op.eval(&ins.iter().map(|t| t.as_ref()).collect::<Vec<_>>()).unwrap()
    }

    const NEG: f64 = f64::NEG_INFINITY;

    // Expected values below come from onnx.reference.ReferenceEvaluator
    // (onnx 1.23.2) on the same inputs.

    #[test]
    fn packed_gqa_short_float_mask_softcap_mode2() {
        let mask = Tensor::from_f32(vec![2, 2], vec![0.0, -1.0, 0.5, f32::NEG_INFINITY]);
        let a = [
            ("q_num_heads", Attr::Int(2)),
            ("kv_num_heads", Attr::Int(1)),
            ("softcap", Attr::Float(0.5)),
            ("qk_matmul_output_mode", Attr::Int(2)),
        ];
        let out = eval(&a, &[Some(seq(&[1, 2, 4], 1)), Some(seq(&[1, 3, 2], 2)), Some(seq(&[1, 3, 4], 3)), Some(mask)]);
        assert_eq!(out[0].shape, vec![1, 2, 8]);
        close(
            &out[0],
            &[
                -0.06612251,
                0.38843542,
                -0.011564572,
                -0.16612253,
                -0.0067597427,
                0.33896646,
                -0.06103355,
                -0.10675975,
                -0.2,
                0.5,
                0.1,
                -0.3,
                -0.2,
                0.5,
                0.1,
                -0.3,
            ],
        );
        assert_eq!(out[3].shape, vec![1, 2, 2, 3]);
        close(
            &out[3],
            &[0.16347586, -1.0840476, NEG, 0.4022786, NEG, NEG, -0.117944464, -0.862233, NEG, 0.42283967, NEG, NEG],
        );
    }

    #[test]
    fn past_causal_bool_mask_fully_masked_row_mode3() {
        let mask = Tensor::from_i64(DType::Bool, vec![2, 3], vec![0, 0, 0, 1, 1, 0]);
        let a = [("is_causal", Attr::Int(1)), ("qk_matmul_output_mode", Attr::Int(3)), ("scale", Attr::Float(2.0))];
        let ins = [
            Some(seq(&[1, 2, 2, 2], 4)),
            Some(seq(&[1, 1, 2, 2], 5)),
            Some(seq(&[1, 1, 2, 3], 6)),
            Some(mask),
            Some(seq(&[1, 1, 1, 2], 7)),
            Some(seq(&[1, 1, 1, 3], 8)),
        ];
        let out = eval(&a, &ins);
        close(&out[0], &[0.0, 0.0, 0.0, 0.2, -0.2, -0.05, 0.0, 0.0, 0.0, 0.20199974, -0.19800028, -0.0589988]);
        close(&out[1], &[0.2, -0.2, 0.0, -0.4, 0.3, -0.1]);
        close(&out[2], &[0.3, -0.1, -0.5, 0.1, -0.3, 0.4, 0.0, -0.4, 0.3]);
        close(&out[3], &[0.0, 0.0, 0.0, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.5099987, 0.49000135, 0.0]);
    }

    #[test]
    fn external_cache_negative_causal_offset() {
        let nonpad = Tensor::i64_vec(vec![1, 3]);
        let ins =
            [Some(seq(&[2, 1, 2, 2], 9)), Some(seq(&[2, 1, 3, 2], 10)), Some(seq(&[2, 1, 3, 2], 11)), None, None, None];
        let mut ins = ins.to_vec();
        ins.push(Some(nonpad));
        let out = eval(&[("is_causal", Attr::Int(1))], &ins);
        // Batch 0: one valid key, two queries: offset -1 leaves query 0 no key.
        close(&out[0], &[0.0, 0.0, -0.5, 0.2, 0.009897483, 0.14628844, -0.01031259, -0.063125007]);
    }

    #[test]
    fn bidirectional_window() {
        let a = [("left_window_size", Attr::Int(1)), ("right_window_size", Attr::Int(1))];
        let out = eval(&a, &[Some(seq(&[1, 1, 4, 2], 12)), Some(seq(&[1, 1, 4, 2], 13)), Some(seq(&[1, 1, 4, 1], 14))]);
        close(&out[0], &[0.10569127, 0.16378982, 0.12017797, -0.07398528]);
    }

    #[test]
    fn bfloat16_rounds_like_the_reference() {
        let bf = |t: Tensor| t.cast(DType::BF16);
        let out = eval(
            &[],
            &[Some(bf(seq(&[1, 1, 2, 4], 15))), Some(bf(seq(&[1, 1, 3, 4], 16))), Some(bf(seq(&[1, 1, 3, 2], 17)))],
        );
        assert_eq!(out[0].dtype, DType::BF16);
        close(&out[0], &[0.010559082, -0.0035247803, 0.040527344, 0.0035247803]);
    }

    #[test]
    fn shapes_and_kernels() {
        let op =
            build("Attention", &attrs(&[("q_num_heads", Attr::Int(4)), ("kv_num_heads", Attr::Int(2))]), 23).unwrap();
        let t = |s: &[usize]| TypeInfo::new(DType::F32, s.to_vec());
        let (q, k, v, pk, pv) = (t(&[2, 3, 32]), t(&[2, 5, 16]), t(&[2, 5, 12]), t(&[2, 2, 4, 8]), t(&[2, 2, 4, 6]));
        let inp = |x| Some(Input { ty: x, value: None });
        let ins = vec![inp(&q), inp(&k), inp(&v), None, inp(&pk), inp(&pv)];
        let outs = op.infer(&ins).unwrap();
        let shapes: Vec<_> = outs.iter().map(|o| o.shape.clone()).collect();
        assert_eq!(shapes, vec![vec![2, 3, 24], vec![2, 2, 9, 8], vec![2, 2, 9, 6], vec![2, 4, 3, 9]]);
        // Only Y requested: no present copies, no QK output: one fused kernel.
        let cx = LowerCtx { inputs: ins.clone(), outputs: vec![outs[0].clone()], target: Default::default() };
        let Lowering::Kernels { temps, kernels } = op.lower(&cx).unwrap() else { panic!("expected kernels") };
        let names: Vec<_> = kernels.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["attn_fused"]);
        assert_eq!(temps[0].elems, 2 * 4 * 3 * 9);
        let cx = LowerCtx { inputs: ins, outputs: outs, target: Default::default() };
        let Lowering::Kernels { kernels, .. } = op.lower(&cx).unwrap() else { panic!("expected kernels") };
        assert_eq!(kernels.len(), 5);
        // Mismatched heads are a model error.
        let bad = t(&[2, 3, 30]);
        assert!(op.infer(&[inp(&bad), inp(&k), inp(&v)]).is_err());
    }
}
