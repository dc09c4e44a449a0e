//! The transformer family's smaller building blocks: RotaryEmbedding,
//! SwiGLU, TensorScatter (KV-cache writes), CausalConvWithState (the
//! stateful depthwise convolution of Mamba / Gated DeltaNet) and
//! LinearAttention (recurrent linear attention with the linear, gated,
//! delta and gated-delta update rules). Attention itself is in
//! `attention.rs`, which builds these through [`build`].
//!
//! All of them are one kernel per output (one thread per element), except
//! LinearAttention, whose recurrence runs one thread per column of a
//! key/value head's state, stepping through time.

use crate::families::attention::{Layout, has_output, need_float};
use crate::wgsl::{f32_lit, kernel_1d};
use crate::{
    Attrs, DType, Error, Input, KernelArg, LowerCtx, Lowering, Op, Result, Tensor, TensorRef, TypeInfo, arg, bail,
    norm_axis, ty,
};

/// Builds RotaryEmbedding, SwiGLU, TensorScatter, CausalConvWithState or
/// LinearAttention.
pub fn build(op_type: &str, a: &Attrs, _opset: i64) -> Result<Box<dyn Op>> {
    match op_type {
        "RotaryEmbedding" => Ok(Box::new(Rotary {
            interleaved: a.int("interleaved", 0)? != 0,
            rotary_dim: non_negative(a, "rotary_embedding_dim")?,
            num_heads: non_negative(a, "num_heads")?,
        })),
        "SwiGLU" => Ok(Box::new(SwiGlu { alpha: a.float("alpha", 1.0)? })),
        "TensorScatter" => {
            let circular = match a.str("mode", "linear")? {
                "linear" => false,
                "circular" => true,
                m => bail!("attribute 'mode' must be 'linear' or 'circular', got '{m}'"),
            };
            Ok(Box::new(TensorScatter { axis: a.int("axis", -2)?, circular }))
        }
        "CausalConvWithState" => {
            let silu = match a.str("activation", "none")? {
                "none" => false,
                "silu" | "swish" => true,
                m => bail!("attribute 'activation' must be 'none', 'silu' or 'swish', got '{m}'"),
            };
            Ok(Box::new(CausalConv { silu }))
        }
        "LinearAttention" => Ok(Box::new(LinearAttention::from_attrs(a)?)),
        _ => Err(Error::unsupported(op_type.to_string())),
    }
}

/// An optional non-negative int attribute, 0 when absent.
fn non_negative(a: &Attrs, name: &str) -> Result<usize> {
    let v = a.int(name, 0)?;
    if v < 0 {
        bail!("attribute '{name}' must not be negative, got {v}");
    }
    Ok(v as usize)
}

/// Reads optional input `i` in a CPU reference.
fn opt<'a>(inputs: &[Option<&'a Tensor>], i: usize) -> Option<&'a Tensor> {
    inputs.get(i).copied().flatten()
}

/// Reads optional input `i`'s type in a shape rule.
fn opt_ty<'a>(inputs: &[Option<Input<'a>>], i: usize) -> Option<&'a TypeInfo> {
    inputs.get(i).copied().flatten().map(|i| i.ty)
}

fn tensor_ty(t: &Tensor) -> TypeInfo {
    TypeInfo::new(t.dtype, t.shape.clone())
}

/// WGSL for the logistic sigmoid of `x`.
fn sigmoid_wgsl(x: &str) -> String {
    format!("(1.0 / (1.0 + exp(-({x}))))")
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

// ---------------------------------------------------------------- RotaryEmbedding

/// RotaryEmbedding: rotates the first `rotary_dim` features of every head,
/// as halves or as interleaved pairs, by angles from cos/sin caches.
#[derive(Debug)]
pub struct Rotary {
    interleaved: bool,
    /// 0: the whole head.
    rotary_dim: usize,
    /// Heads of a packed 3-D input; 0 for 4-D input.
    num_heads: usize,
}

/// Sizes of a RotaryEmbedding node.
struct RotaryGeom {
    batch: usize,
    heads: usize,
    seq: usize,
    head: usize,
    /// Rotated features per head (even).
    rot: usize,
    packed: bool,
    /// Caches indexed by position ids (`[max_pos, rot / 2]`), else by
    /// (batch, position) (`[batch, seq, rot / 2]`).
    by_position: bool,
    /// Position ids given per batch (else one row for all).
    ids_per_batch: bool,
    /// Rows of the caches when indexed by position id.
    max_pos: usize,
}

impl Rotary {
    fn geom(&self, x: &TypeInfo, cos: &TypeInfo, sin: &TypeInfo, ids: Option<&TypeInfo>) -> Result<RotaryGeom> {
        need_float(x, "input")?;
        let (batch, heads, seq, head, packed) = match x.shape[..] {
            [b, h, s, d] => (b, h, s, d, false),
            [b, s, hidden] => {
                if self.num_heads == 0 || hidden % self.num_heads != 0 {
                    bail!("3-D input of hidden size {hidden} needs num_heads dividing it, got {}", self.num_heads);
                }
                (b, self.num_heads, s, hidden / self.num_heads, true)
            }
            _ => bail!("input must be 3-D or 4-D, got {:?}", x.shape),
        };
        let rot = if self.rotary_dim == 0 { head } else { self.rotary_dim };
        if rot > head || rot % 2 != 0 {
            bail!("rotary_embedding_dim {rot} must be even and at most the head size {head}");
        }
        if cos.shape != sin.shape {
            bail!("cos_cache {:?} and sin_cache {:?} differ", cos.shape, sin.shape);
        }
        let half = rot / 2;
        let (by_position, ids_per_batch, max_pos) = match ids {
            Some(p) => {
                if p.shape.len() != 2 || p.shape[1] != seq || (p.shape[0] != batch && p.shape[0] != 1) {
                    bail!("position_ids must be [{batch}, {seq}], got {:?}", p.shape);
                }
                if cos.rank() != 2 || cos.shape[1] != half {
                    bail!("with position_ids the caches must be [max_position, {half}], got {:?}", cos.shape);
                }
                (true, p.shape[0] == batch && batch > 1, cos.shape[0])
            }
            None => {
                if cos.shape != [batch, seq, half] {
                    bail!("without position_ids the caches must be [{batch}, {seq}, {half}], got {:?}", cos.shape);
                }
                (false, false, 0)
            }
        };
        Ok(RotaryGeom { batch, heads, seq, head, rot, packed, by_position, ids_per_batch, max_pos })
    }

    /// For feature `d` of a head: (cache column, index of x1, index of x2,
    /// whether this is the second component) relative to the head's start.
    fn pair(&self, g: &RotaryGeom, d: usize) -> (usize, usize, usize, bool) {
        let half = g.rot / 2;
        if self.interleaved {
            (d / 2, d & !1, d | 1, d % 2 == 1)
        } else {
            let k = d % half;
            (k, k, k + half, d >= half)
        }
    }
}

impl Op for Rotary {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let x = ty(inputs, 0)?;
        self.geom(x, ty(inputs, 1)?, ty(inputs, 2)?, opt_ty(inputs, 3))?;
        Ok(vec![x.clone()])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let (x, cos, sin) = (arg(inputs, 0)?, arg(inputs, 1)?, arg(inputs, 2)?);
        let ids = opt(inputs, 3);
        let g = self.geom(&tensor_ty(x), &tensor_ty(cos), &tensor_ty(sin), ids.map(tensor_ty).as_ref())?;
        let (xv, cv, sv) = (x.to_f64(), cos.to_f64(), sin.to_f64());
        let idv = ids.map(|t| t.to_i64());
        let lay = Layout::new(g.packed, g.heads, g.seq, g.head);
        let mut y = xv.clone();
        for b in 0..g.batch {
            for s in 0..g.seq {
                let row = match &idv {
                    Some(p) => {
                        let pos = p[if g.ids_per_batch { b * g.seq + s } else { s }];
                        if pos < 0 || pos as usize >= g.max_pos {
                            bail!("position id {pos} is outside the caches' {} rows", g.max_pos);
                        }
                        pos as usize
                    }
                    None => b * g.seq + s,
                };
                for h in 0..g.heads {
                    let base = lay.at(b, h, s, 0);
                    for d in 0..g.rot {
                        let (k, i1, i2, second) = self.pair(&g, d);
                        let (c, sn) = (cv[row * g.rot / 2 + k], sv[row * g.rot / 2 + k]);
                        let (x1, x2) = (xv[base + i1], xv[base + i2]);
                        y[base + d] = if second { sn * x1 + c * x2 } else { c * x1 - sn * x2 };
                    }
                }
            }
        }
        Ok(vec![Tensor::from_f64(x.dtype, x.shape.clone(), y)])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let x = cx.input(0)?;
        let ids = if cx.has_input(3) { Some(cx.input(3)?) } else { None };
        let g = self.geom(x, cx.input(1)?, cx.input(2)?, ids)?;
        let half = g.rot / 2;
        let (d, sq, h, hd) = (g.head, g.seq, g.heads, g.head * g.heads);
        // Coordinates of element i in either layout.
        let coords = if g.packed {
            format!("    let d = i % {d}u;\n    let s = (i / {hd}u) % {sq}u;\n    let b = i / {}u;\n", hd * sq)
        } else {
            format!("    let d = i % {d}u;\n    let s = (i / {d}u) % {sq}u;\n    let b = i / {}u;\n", d * sq * h)
        };
        let row = if g.by_position {
            let id = if g.ids_per_batch { format!("b * {sq}u + s") } else { "s".to_string() };
            // Out-of-range ids are clamped: a kernel must never read outside a tensor.
            format!("u32(clamp(ld_ids({id}), 0, {}))", g.max_pos.saturating_sub(1))
        } else {
            format!("b * {sq}u + s")
        };
        // WGSL twins of `pair`: cache column, x1 and x2 offsets, second half.
        let [k, i1, i2, second] = if self.interleaved {
            ["d / 2u", "d & ~1u", "d | 1u", "(d & 1u) == 1u"].map(String::from)
        } else {
            [format!("d % {half}u"), format!("d % {half}u"), format!("d % {half}u + {half}u"), format!("d >= {half}u")]
        };
        let body = format!(
            "{coords}    if (d >= {rot}u) {{ st_y(i, ld_x(i)); return; }}
    let base = i - d;
    let row = {row};
    let k = {k};
    let c = ld_cos(row * {half}u + k);
    let sn = ld_sin(row * {half}u + k);
    let x1 = ld_x(base + {i1});
    let x2 = ld_x(base + {i2});
    st_y(i, select(c * x1 - sn * x2, sn * x1 + c * x2, {second}));",
            rot = g.rot
        );
        let mut args = vec![
            KernelArg::new("x", TensorRef::Input(0)),
            KernelArg::new("cos", TensorRef::Input(1)),
            KernelArg::new("sin", TensorRef::Input(2)),
            KernelArg::new("y", TensorRef::Output(0)),
        ];
        if g.by_position {
            args.push(KernelArg::new("ids", TensorRef::Input(3)));
        }
        Ok(Lowering::one(kernel_1d("rotary_embedding", args, x.numel(), "", &body)))
    }
}

// ---------------------------------------------------------------- SwiGLU

/// SwiGLU: `A * sigmoid(alpha * A) * B` for equal shapes.
#[derive(Debug)]
pub struct SwiGlu {
    alpha: f32,
}

impl Op for SwiGlu {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let (a, b) = (ty(inputs, 0)?, ty(inputs, 1)?);
        need_float(a, "A")?;
        if a != b {
            bail!("A {:?} {} and B {:?} {} must have the same shape and type", a.shape, a.dtype, b.shape, b.dtype);
        }
        Ok(vec![a.clone()])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let (a, b) = (arg(inputs, 0)?, arg(inputs, 1)?);
        let alpha = self.alpha as f64;
        let y = a.to_f64().iter().zip(b.to_f64()).map(|(&x, v)| x * sigmoid(alpha * x) * v).collect();
        Ok(vec![Tensor::from_f64(a.dtype, a.shape.clone(), y)])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let n = cx.input(0)?.numel();
        let body = format!(
            "    let a = ld_a(i);\n    st_y(i, a * {} * ld_b(i));",
            sigmoid_wgsl(&format!("{} * a", f32_lit(self.alpha)))
        );
        let args = vec![
            KernelArg::new("a", TensorRef::Input(0)),
            KernelArg::new("b", TensorRef::Input(1)),
            KernelArg::new("y", TensorRef::Output(0)),
        ];
        Ok(Lowering::one(kernel_1d("swiglu", args, n, "", &body)))
    }
}

// ---------------------------------------------------------------- TensorScatter

/// TensorScatter: the cache with `update` written along `axis` from each
/// batch entry's write index (wrapping around in circular mode).
#[derive(Debug)]
pub struct TensorScatter {
    axis: i64,
    circular: bool,
}

/// Sizes of a TensorScatter: cache and update lengths along the axis,
/// elements after the axis and per batch entry.
struct ScatterGeom {
    max_len: usize,
    len: usize,
    inner: usize,
    per_batch: usize,
}

impl TensorScatter {
    fn geom(&self, past: &TypeInfo, update: &TypeInfo, idx: Option<&TypeInfo>) -> Result<ScatterGeom> {
        let axis = norm_axis(self.axis, past.rank())?;
        if axis == 0 {
            bail!("axis must not be the batch axis 0");
        }
        let fits = past.rank() == update.rank()
            && past
                .shape
                .iter()
                .zip(&update.shape)
                .enumerate()
                .all(|(d, (&p, &u))| if d == axis { u <= p } else { u == p });
        if !fits || past.dtype != update.dtype {
            bail!("update {:?} does not fit past_cache {:?} along axis {axis}", update.shape, past.shape);
        }
        if let Some(w) = idx
            && w.shape != [past.shape[0]]
        {
            bail!("write_indices must have shape [{}], got {:?}", past.shape[0], w.shape);
        }
        Ok(ScatterGeom {
            max_len: past.shape[axis],
            len: update.shape[axis],
            inner: past.shape[axis + 1..].iter().product(),
            per_batch: past.shape[1..].iter().product(),
        })
    }
}

impl Op for TensorScatter {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let past = ty(inputs, 0)?;
        self.geom(past, ty(inputs, 1)?, opt_ty(inputs, 2))?;
        Ok(vec![past.clone()])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let (past, update) = (arg(inputs, 0)?, arg(inputs, 1)?);
        let idx = opt(inputs, 2);
        let g = self.geom(&tensor_ty(past), &tensor_ty(update), idx.map(tensor_ty).as_ref())?;
        let w = idx.map_or(vec![0; past.shape[0]], |t| t.to_i64());
        let (mut out, uv) = (past.to_f64(), update.to_f64());
        for (u, &val) in uv.iter().enumerate() {
            let (inner, s, outer) = (u % g.inner, (u / g.inner) % g.len, u / (g.inner * g.len));
            let b = outer * g.max_len * g.inner / g.per_batch;
            let mut c = w[b] + s as i64;
            if self.circular {
                c = c.rem_euclid(g.max_len as i64);
            }
            if c < 0 || c as usize >= g.max_len {
                bail!("write index {} + {s} is outside the cache length {}", w[b], g.max_len);
            }
            out[(outer * g.max_len + c as usize) * g.inner + inner] = val;
        }
        Ok(vec![Tensor::from_f64(past.dtype, past.shape.clone(), out)])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let past = cx.input(0)?;
        let idx = if cx.has_input(2) { Some(cx.input(2)?) } else { None };
        let g = self.geom(past, cx.input(1)?, idx)?;
        let (m, len, inner) = (g.max_len, g.len, g.inner);
        let w = if idx.is_some() { format!("ld_w(i / {}u)", g.per_batch) } else { "0".to_string() };
        // Each cache slot finds which update step (if any) lands on it.
        let step = if self.circular { format!("((c - {w}) % {m} + {m}) % {m}") } else { format!("c - {w}") };
        let body = format!(
            "    let inner = i % {inner}u;
    let c = i32((i / {inner}u) % {m}u);
    let outer = i / {mi}u;
    let s = {step};
    if (s >= 0 && s < {len}) {{
        st_y(i, ld_u((outer * {len}u + u32(s)) * {inner}u + inner));
    }} else {{
        st_y(i, ld_x(i));
    }}",
            mi = m * inner
        );
        let mut args = vec![
            KernelArg::new("x", TensorRef::Input(0)),
            KernelArg::new("u", TensorRef::Input(1)),
            KernelArg::new("y", TensorRef::Output(0)),
        ];
        if idx.is_some() {
            args.push(KernelArg::new("w", TensorRef::Input(2)));
        }
        Ok(Lowering::one(kernel_1d("tensor_scatter", args, past.numel(), "", &body)))
    }
}

// ---------------------------------------------------------------- CausalConvWithState

/// CausalConvWithState: a depthwise 1-D convolution over the past state
/// followed by the input, with an optional fused SiLU; the new state is the
/// last `k - 1` positions of that sequence.
#[derive(Debug)]
pub struct CausalConv {
    silu: bool,
}

/// (batch, channels, length, kernel size) of a CausalConvWithState.
fn conv_geom(inputs: &[Option<&TypeInfo>]) -> Result<(usize, usize, usize, usize)> {
    let get = |i: usize, what: &str| {
        inputs.get(i).copied().flatten().ok_or_else(|| Error::msg(format!("input {i} ({what}) is required")))
    };
    let (x, w) = (get(0, "input")?, get(1, "weight")?);
    need_float(x, "input")?;
    let [b, c, l] = x.shape[..] else { bail!("input must be (batch, channels, length), got {:?}", x.shape) };
    let k = match w.shape[..] {
        [wc, 1, k] if wc == c && k > 0 => k,
        _ => bail!("weight must be [{c}, 1, k], got {:?}", w.shape),
    };
    if let Some(bias) = inputs.get(2).copied().flatten()
        && bias.shape != [c]
    {
        bail!("bias must be [{c}], got {:?}", bias.shape);
    }
    if let Some(p) = inputs.get(3).copied().flatten()
        && p.shape != [b, c, k - 1]
    {
        bail!("past_state must be [{b}, {c}, {}], got {:?}", k - 1, p.shape);
    }
    Ok((b, c, l, k))
}

impl Op for CausalConv {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let types: Vec<Option<&TypeInfo>> = inputs.iter().map(|i| i.map(|i| i.ty)).collect();
        let (b, c, _, k) = conv_geom(&types)?;
        let x = ty(inputs, 0)?;
        Ok(vec![x.clone(), TypeInfo::new(x.dtype, vec![b, c, k - 1])])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let types: Vec<Option<TypeInfo>> = inputs.iter().map(|t| t.map(tensor_ty)).collect();
        let (b, c, l, k) = conv_geom(&types.iter().map(|t| t.as_ref()).collect::<Vec<_>>())?;
        let x = arg(inputs, 0)?;
        let (xv, wv) = (x.to_f64(), arg(inputs, 1)?.to_f64());
        let bias = opt(inputs, 2).map(|t| t.to_f64());
        let past = opt(inputs, 3).map(|t| t.to_f64());
        let (mut y, mut state) = (Vec::with_capacity(b * c * l), Vec::with_capacity(b * c * (k - 1)));
        for r in 0..b * c {
            // The row's past state followed by its input.
            let mut padded = past.as_ref().map_or(vec![0.0; k - 1], |p| p[r * (k - 1)..(r + 1) * (k - 1)].to_vec());
            padded.extend_from_slice(&xv[r * l..(r + 1) * l]);
            let ch = r % c;
            for t in 0..l {
                let acc = bias.as_ref().map_or(0.0, |bv| bv[ch])
                    + (0..k).map(|j| wv[ch * k + j] * padded[t + j]).sum::<f64>();
                y.push(if self.silu { acc * sigmoid(acc) } else { acc });
            }
            state.extend_from_slice(&padded[l..]);
        }
        Ok(vec![Tensor::from_f64(x.dtype, x.shape.clone(), y), Tensor::from_f64(x.dtype, vec![b, c, k - 1], state)])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let types: Vec<Option<&TypeInfo>> = cx.inputs.iter().map(|i| i.map(|i| i.ty)).collect();
        let (b, c, l, k) = conv_geom(&types)?;
        let has_past = cx.has_input(3);
        let past = if has_past { format!("ld_p(row * {}u + t)", k - 1) } else { "0.0".to_string() };
        // Position t of the row's past-then-input sequence.
        let helpers = format!(
            "fn padded(row: u32, t: u32) -> f32 {{
    if (t < {km1}u) {{ return {past}; }}
    return ld_x(row * {l}u + t - {km1}u);
}}
",
            km1 = k - 1
        );
        let mut args = vec![KernelArg::new("x", TensorRef::Input(0)), KernelArg::new("w", TensorRef::Input(1))];
        if has_past {
            args.push(KernelArg::new("p", TensorRef::Input(3)));
        }
        let bias = if cx.has_input(2) {
            args.push(KernelArg::new("bias", TensorRef::Input(2)));
            "ld_bias(ch)"
        } else {
            "0.0"
        };
        let act = if self.silu { format!("acc * {}", sigmoid_wgsl("acc")) } else { "acc".to_string() };
        let body = format!(
            "    let t = i % {l}u;
    let row = i / {l}u;
    let ch = row % {c}u;
    var acc = {bias};
    for (var j = 0u; j < {k}u; j = j + 1u) {{ acc = acc + ld_w(ch * {k}u + j) * padded(row, t + j); }}
    st_y(i, {act});"
        );
        let mut y_args = args.clone();
        y_args.push(KernelArg::new("y", TensorRef::Output(0)));
        let mut kernels = vec![kernel_1d("causal_conv", y_args, b * c * l, &helpers, &body)];
        if has_output(cx, 1) {
            args.retain(|a| a.name != "w" && a.name != "bias");
            args.push(KernelArg::new("state", TensorRef::Output(1)));
            let body =
                format!("    let row = i / {km1}u;\n    st_state(i, padded(row, {l}u + i % {km1}u));", km1 = k - 1);
            kernels.push(kernel_1d("causal_conv_state", args, b * c * (k - 1), &helpers, &body));
        }
        Ok(Lowering::Kernels { temps: vec![], kernels })
    }
}

// ---------------------------------------------------------------- LinearAttention

/// Which recurrence LinearAttention runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rule {
    Linear,
    Gated,
    Delta,
    GatedDelta,
}

impl Rule {
    fn gated(self) -> bool {
        matches!(self, Rule::Gated | Rule::GatedDelta)
    }
    fn delta(self) -> bool {
        matches!(self, Rule::Delta | Rule::GatedDelta)
    }
}

/// LinearAttention: per key/value head a (d_k x d_v) state updated token by
/// token (optionally decayed and delta-corrected) and read by its group of
/// query heads.
#[derive(Debug)]
pub struct LinearAttention {
    q_heads: usize,
    kv_heads: usize,
    /// 0: 1 / sqrt(d_k).
    scale: f32,
    rule: Rule,
}

/// Sizes of a LinearAttention node.
struct LinGeom {
    batch: usize,
    steps: usize,
    dk: usize,
    dv: usize,
    /// Decay per key feature (else one per head).
    decay_per_dim: bool,
    /// Beta per head (else one for all heads).
    beta_per_head: bool,
    state_dtype: DType,
}

const LQ: usize = 0;
const LK: usize = 1;
const LV: usize = 2;
const LPAST: usize = 3;
const LDECAY: usize = 4;
const LBETA: usize = 5;

impl LinearAttention {
    fn from_attrs(a: &Attrs) -> Result<LinearAttention> {
        let rule = match a.str("update_rule", "gated_delta")? {
            "linear" => Rule::Linear,
            "gated" => Rule::Gated,
            "delta" => Rule::Delta,
            "gated_delta" => Rule::GatedDelta,
            r => bail!("attribute 'update_rule' must be linear, gated, delta or gated_delta, got '{r}'"),
        };
        // The registry probes ops without attributes: report support, fail on use.
        let heads = |name: &str| -> Result<usize> {
            match a.int_opt(name)? {
                Some(n) if n > 0 => Ok(n as usize),
                None if a.0.is_empty() => Ok(1),
                v => bail!("attribute '{name}' is required and must be positive, got {v:?}"),
            }
        };
        let (q_heads, kv_heads) = (heads("q_num_heads")?, heads("kv_num_heads")?);
        if q_heads % kv_heads != 0 {
            bail!("q_num_heads ({q_heads}) must be a multiple of kv_num_heads ({kv_heads})");
        }
        Ok(LinearAttention { q_heads, kv_heads, scale: a.float("scale", 0.0)?, rule })
    }

    fn geom(&self, t: &[Option<&TypeInfo>]) -> Result<LinGeom> {
        let get = |i: usize| t.get(i).copied().flatten();
        let req = |i: usize, what: &str| get(i).ok_or_else(|| Error::msg(format!("input {i} ({what}) is required")));
        let (q, k, v) = (req(LQ, "query")?, req(LK, "key")?, req(LV, "value")?);
        need_float(q, "query")?;
        let (&[b, t, hq], &[_, _, _], &[_, _, hv]) = (&q.shape[..], &k.shape[..], &v.shape[..]) else {
            bail!("query, key and value must be (B, T, H * D), got {:?}, {:?}, {:?}", q.shape, k.shape, v.shape);
        };
        if hq % self.q_heads != 0 || hv % self.kv_heads != 0 {
            bail!("query {hq} / value {hv} hidden sizes do not split into {} / {} heads", self.q_heads, self.kv_heads);
        }
        let (dk, dv) = (hq / self.q_heads, hv / self.kv_heads);
        if k.shape != [b, t, self.kv_heads * dk] || v.shape[..2] != [b, t] {
            bail!("key {:?} / value {:?} do not match query {:?}", k.shape, v.shape, q.shape);
        }
        let state_dtype = match get(LPAST) {
            Some(p) if p.shape == [b, self.kv_heads, dk, dv] => p.dtype,
            Some(p) => bail!("past_state must be [{b}, {}, {dk}, {dv}], got {:?}", self.kv_heads, p.shape),
            None => q.dtype,
        };
        let decay_per_dim = match (self.rule.gated(), get(LDECAY)) {
            (true, Some(d)) if d.shape == [b, t, self.kv_heads] => false,
            (true, Some(d)) if d.shape == [b, t, self.kv_heads * dk] => true,
            (true, Some(d)) => {
                bail!("decay must be [{b}, {t}, {}] or [.., {}], got {:?}", self.kv_heads, self.kv_heads * dk, d.shape)
            }
            (true, None) => bail!("update rule {:?} needs the decay input", self.rule),
            (false, Some(_)) => bail!("update rule {:?} takes no decay input", self.rule),
            (false, None) => false,
        };
        let beta_per_head = match (self.rule.delta(), get(LBETA)) {
            (true, Some(d)) if d.shape == [b, t, self.kv_heads] => true,
            (true, Some(d)) if d.shape == [b, t, 1] => false,
            (true, Some(d)) => bail!("beta must be [{b}, {t}, {}] or [.., 1], got {:?}", self.kv_heads, d.shape),
            (true, None) => bail!("update rule {:?} needs the beta input", self.rule),
            (false, Some(_)) => bail!("update rule {:?} takes no beta input", self.rule),
            (false, None) => false,
        };
        Ok(LinGeom { batch: b, steps: t, dk, dv, decay_per_dim, beta_per_head, state_dtype })
    }

    fn scale(&self, g: &LinGeom) -> f32 {
        if self.scale == 0.0 { 1.0 / (g.dk as f32).sqrt() } else { self.scale }
    }
}

impl Op for LinearAttention {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let types: Vec<Option<&TypeInfo>> = inputs.iter().map(|i| i.map(|i| i.ty)).collect();
        let g = self.geom(&types)?;
        let q = ty(inputs, LQ)?;
        Ok(vec![
            TypeInfo::new(q.dtype, vec![g.batch, g.steps, self.q_heads * g.dv]),
            TypeInfo::new(g.state_dtype, vec![g.batch, self.kv_heads, g.dk, g.dv]),
        ])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let types: Vec<Option<TypeInfo>> = inputs.iter().map(|t| t.map(tensor_ty)).collect();
        let g = self.geom(&types.iter().map(|t| t.as_ref()).collect::<Vec<_>>())?;
        let (hq, hkv, dk, dv, steps) = (self.q_heads, self.kv_heads, g.dk, g.dv, g.steps);
        let (q, k, v) = (arg(inputs, LQ)?.to_f64(), arg(inputs, LK)?.to_f64(), arg(inputs, LV)?.to_f64());
        let decay = opt(inputs, LDECAY).map(|t| t.to_f64());
        let beta = opt(inputs, LBETA).map(|t| t.to_f64());
        let mut state = opt(inputs, LPAST).map_or(vec![0.0; g.batch * hkv * dk * dv], |t| t.to_f64());
        let scale = self.scale(&g) as f64;
        let mut out = vec![0.0; g.batch * steps * hq * dv];
        for b in 0..g.batch {
            for h in 0..hkv {
                let st = &mut state[(b * hkv + h) * dk * dv..(b * hkv + h + 1) * dk * dv];
                for t in 0..steps {
                    let bt = b * steps + t;
                    let kt = &k[(bt * hkv + h) * dk..(bt * hkv + h + 1) * dk];
                    let mut vt = v[(bt * hkv + h) * dv..(bt * hkv + h + 1) * dv].to_vec();
                    if let Some(dec) = &decay {
                        for d in 0..dk {
                            let gate = if g.decay_per_dim { dec[(bt * hkv + h) * dk + d] } else { dec[bt * hkv + h] };
                            st[d * dv..(d + 1) * dv].iter_mut().for_each(|s| *s *= gate.exp());
                        }
                    }
                    if let Some(bet) = &beta {
                        let bval = if g.beta_per_head { bet[bt * hkv + h] } else { bet[bt] };
                        for (m, vm) in vt.iter_mut().enumerate() {
                            let retrieved: f64 = (0..dk).map(|d| st[d * dv + m] * kt[d]).sum();
                            *vm = bval * (*vm - retrieved);
                        }
                    }
                    for d in 0..dk {
                        for m in 0..dv {
                            st[d * dv + m] += kt[d] * vt[m];
                        }
                    }
                    for qh in h * (hq / hkv)..(h + 1) * (hq / hkv) {
                        let qt = &q[(bt * hq + qh) * dk..(bt * hq + qh + 1) * dk];
                        for m in 0..dv {
                            out[(bt * hq + qh) * dv + m] = scale * (0..dk).map(|d| qt[d] * st[d * dv + m]).sum::<f64>();
                        }
                    }
                }
            }
        }
        let qt = arg(inputs, LQ)?.dtype;
        Ok(vec![
            Tensor::from_f64(qt, vec![g.batch, steps, hq * dv], out),
            Tensor::from_f64(g.state_dtype, vec![g.batch, hkv, dk, dv], state),
        ])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let types: Vec<Option<&TypeInfo>> = cx.inputs.iter().map(|i| i.map(|i| i.ty)).collect();
        let g = self.geom(&types)?;
        let (hq, hkv, dk, dv, steps) = (self.q_heads, self.kv_heads, g.dk, g.dv, g.steps);
        let mut args = vec![
            KernelArg::new("q", TensorRef::Input(LQ)),
            KernelArg::new("k", TensorRef::Input(LK)),
            KernelArg::new("v", TensorRef::Input(LV)),
            KernelArg::new("y", TensorRef::Output(0)),
        ];
        let init = if cx.has_input(LPAST) {
            args.push(KernelArg::new("past", TensorRef::Input(LPAST)));
            format!("ld_past(sbase + d * {dv}u)")
        } else {
            "0.0".to_string()
        };
        let mut step = String::new();
        if self.rule.gated() {
            args.push(KernelArg::new("decay", TensorRef::Input(LDECAY)));
            let at =
                if g.decay_per_dim { format!("(bt * {hkv}u + h) * {dk}u + d") } else { format!("bt * {hkv}u + h") };
            step += &format!(
                "        for (var d = 0u; d < {dk}u; d = d + 1u) {{ st[d] = st[d] * exp(ld_decay({at})); }}\n"
            );
        }
        if self.rule.delta() {
            args.push(KernelArg::new("beta", TensorRef::Input(LBETA)));
            let at = if g.beta_per_head { format!("bt * {hkv}u + h") } else { "bt".to_string() };
            step += &format!(
                "        var r = 0.0;
        for (var d = 0u; d < {dk}u; d = d + 1u) {{ r = r + st[d] * ld_k(kb + d); }}
        vt = ld_beta({at}) * (vt - r);
"
            );
        }
        let mut tail = String::new();
        if has_output(cx, 1) {
            args.push(KernelArg::new("state", TensorRef::Output(1)));
            tail = format!("    for (var d = 0u; d < {dk}u; d = d + 1u) {{ st_state(sbase + d * {dv}u, st[d]); }}\n");
        }
        // One thread per state column m of one (batch, kv head): the column
        // evolves independently of the others under every update rule.
        let body = format!(
            "    let m = i % {dv}u;
    let h = (i / {dv}u) % {hkv}u;
    let b = i / {hdv}u;
    let sbase = (b * {hkv}u + h) * {dkdv}u + m;
    var st: array<f32, {dk}>;
    for (var d = 0u; d < {dk}u; d = d + 1u) {{ st[d] = {init}; }}
    for (var t = 0u; t < {steps}u; t = t + 1u) {{
        let bt = b * {steps}u + t;
        let kb = (bt * {hkv}u + h) * {dk}u;
        var vt = ld_v((bt * {hkv}u + h) * {dv}u + m);
{step}        for (var d = 0u; d < {dk}u; d = d + 1u) {{ st[d] = st[d] + ld_k(kb + d) * vt; }}
        for (var qh = h * {group}u; qh < (h + 1u) * {group}u; qh = qh + 1u) {{
            let qb = (bt * {hq}u + qh) * {dk}u;
            var o = 0.0;
            for (var d = 0u; d < {dk}u; d = d + 1u) {{ o = o + ld_q(qb + d) * st[d]; }}
            st_y((bt * {hq}u + qh) * {dv}u + m, {scale} * o);
        }}
    }}
{tail}",
            hdv = hkv * dv,
            dkdv = dk * dv,
            group = hq / hkv,
            scale = f32_lit(self.scale(&g)),
        );
        Ok(Lowering::one(kernel_1d("linear_attention", args, g.batch * hkv * dv, "", &body)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Attr;
    use crate::families::attention::tests::{close, seq};
    use crate::testing::attrs;

    fn eval(op: &str, opset: i64, a: &[(&str, Attr)], ins: &[Option<Tensor>]) -> Vec<Tensor> {
        let op = build(op, &attrs(a), opset).unwrap();
        op.eval(&ins.iter().map(|t| t.as_ref()).collect::<Vec<_>>()).unwrap()
    }

    fn plus(t: Tensor, c: f32) -> Tensor {
        Tensor::from_f64(t.dtype, t.shape.clone(), t.to_f64().iter().map(|v| v + c as f64).collect())
    }

    // Expected values below come from onnx.reference.ReferenceEvaluator
    // (onnx 1.23.2) on the same inputs.

    #[test]
    fn rotary_interleaved_partial_with_position_ids() {
        let a = [("interleaved", Attr::Int(1)), ("rotary_embedding_dim", Attr::Int(2))];
        let ids = Tensor::from_i64(DType::I64, vec![1, 3], vec![4, 0, 2]);
        let y = eval(
            "RotaryEmbedding",
            23,
            &a,
            &[Some(seq(&[1, 2, 3, 4], 1)), Some(seq(&[5, 1], 2)), Some(seq(&[5, 1], 3)), Some(ids)],
        );
        close(
            &y[0],
            &[
                -0.24, -0.07, -0.1, -0.5, -0.1, 0.02, 0.5, 0.1, -0.04, -0.03, 0.0, -0.4, 0.13, 0.09, -0.5, 0.2, 0.16,
                -0.11, 0.1, -0.3, 0.0, 0.04, -0.4, 0.3,
            ],
        );
    }

    #[test]
    fn rotary_packed_halves_without_position_ids() {
        let y = eval(
            "RotaryEmbedding",
            23,
            &[("num_heads", Attr::Int(1))],
            &[Some(seq(&[2, 2, 4], 4)), Some(seq(&[2, 2, 2], 5)), Some(seq(&[2, 2, 2], 6))],
        );
        close(
            &y[0],
            &[-0.02, 0.14, -0.01, 0.23, 0.27, -0.01, 0.11, -0.04, 0.12, -0.05, -0.15, -0.14, 0.08, 0.35, 0.09, 0.15],
        );
    }

    #[test]
    fn swiglu_with_alpha() {
        let y = eval("SwiGLU", 28, &[("alpha", Attr::Float(1.5))], &[Some(seq(&[2, 3], 7)), Some(seq(&[2, 3], 8))]);
        close(&y[0], &[0.034466553, 0.00851115, -0.16979468, 0.010748598, 0.023361646, 0.12913126]);
    }

    #[test]
    fn tensor_scatter_circular_and_linear() {
        let a = [("mode", Attr::Str("circular".into())), ("axis", Attr::Int(1))];
        let ins = [Some(seq(&[2, 3, 2], 9)), Some(plus(seq(&[2, 2, 2], 10), 3.0)), Some(Tensor::i64_vec(vec![2, 0]))];
        let y = eval("TensorScatter", 24, &a, &ins);
        close(&y[0], &[2.7, 3.4, -0.4, 0.3, 3.5, 3.1, 3.0, 2.6, 3.3, 2.9, -0.3, 0.4]);
        let ins = [Some(seq(&[2, 4], 11)), Some(plus(seq(&[2, 1], 12), 3.0)), Some(Tensor::i64_vec(vec![3, 1]))];
        let y = eval("TensorScatter", 24, &[("axis", Attr::Int(-1))], &ins);
        close(&y[0], &[-0.5, 0.2, -0.2, 2.6, 0.1, 3.3, 0.4, 0.0]);
        // Linear writes past the end are a model error.
        let ins = [Some(seq(&[1, 2], 0)), Some(seq(&[1, 1], 0)), Some(Tensor::i64_vec(vec![2]))];
        let op = build("TensorScatter", &attrs(&[("axis", Attr::Int(1))]), 24).unwrap();
        assert!(op.eval(&ins.iter().map(|t| t.as_ref()).collect::<Vec<_>>()).is_err());
    }

    #[test]
    fn causal_conv_with_state() {
        let (x, w) = (seq(&[1, 2, 3], 13), seq(&[2, 1, 3], 14));
        let ins = [Some(x.clone()), Some(w.clone()), Some(seq(&[2], 15)), Some(seq(&[1, 2, 2], 16))];
        let y = eval("CausalConvWithState", 27, &[("activation", Attr::Str("silu".into()))], &ins);
        close(&y[0], &[-0.13801941, -0.06078094, 0.08638638, -0.21893163, -0.21893163, -0.11319456]);
        close(&y[1], &[0.4, 0.0, 0.3, -0.1]);
        let y = eval("CausalConvWithState", 27, &[], &[Some(x), Some(w)]);
        close(&y[0], &[-0.03, -0.11, 0.26, 0.0, -0.16, 0.24]);
        close(&y[1], &[0.4, 0.0, 0.3, -0.1]);
    }

    #[test]
    fn linear_attention_gated_delta_gqa() {
        let a = [("q_num_heads", Attr::Int(2)), ("kv_num_heads", Attr::Int(1))];
        let ins = [
            Some(seq(&[1, 2, 4], 17)),
            Some(seq(&[1, 2, 2], 18)),
            Some(seq(&[1, 2, 2], 19)),
            None,
            Some(seq(&[1, 2, 2], 20)),
            Some(plus(seq(&[1, 2, 1], 21), 0.5)),
        ];
        let y = eval("LinearAttention", 27, &a, &ins);
        close(
            &y[0],
            &[
                0.016970564,
                -0.0056568547,
                0.016970564,
                -0.0056568547,
                0.00837209,
                -0.005194861,
                0.047513664,
                -0.017252104,
            ],
        );
        close(&y[1], &[-0.11338393, 0.047794648, -0.11171216, 0.039237387]);
    }

    #[test]
    fn linear_attention_gated_per_head_with_past() {
        let a = [
            ("q_num_heads", Attr::Int(1)),
            ("kv_num_heads", Attr::Int(1)),
            ("update_rule", Attr::Str("gated".into())),
            ("scale", Attr::Float(0.5)),
        ];
        let k = seq(&[1, 2, 2], 18);
        let ins = [
            Some(k.clone()),
            Some(k),
            Some(seq(&[1, 2, 2], 19)),
            Some(seq(&[1, 1, 2, 2], 22)),
            Some(seq(&[1, 2, 1], 23)),
        ];
        let y = eval("LinearAttention", 27, &a, &ins);
        close(&y[0], &[-0.008109601, -0.024109606, -0.17095475, 0.088463366]);
        close(&y[1], &[-0.6214272, 0.2539703, -0.311959, 0.49941587]);
        // The gated rule needs its decay input.
        let op = build("LinearAttention", &attrs(&a), 27).unwrap();
        let t = TypeInfo::new(DType::F32, vec![1, 2, 2]);
        let inp = Some(Input { ty: &t, value: None });
        assert!(op.infer(&[inp, inp, inp]).is_err());
    }
}
