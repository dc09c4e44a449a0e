//! Normalization and softmax-like ops: Softmax, LogSoftmax, Hardmax (both
//! the opset < 13 "flatten to 2-D at axis" form and the single-axis form),
//! LayerNormalization, RMSNormalization, BatchNormalization (inference, and
//! training mode with running statistics), InstanceNormalization,
//! GroupNormalization, LpNormalization, MeanVarianceNormalization and LRN.
//!
//! Everything that needs statistics of a row (a softmax axis, a layer, an
//! instance, a group, a channel) runs as one row kernel from the reduce
//! family: lanes of a workgroup segment accumulate partial sums, combine
//! them through shared memory, then write the row. Statistics are two-pass
//! (mean, then the mean of squared deviations) for accuracy in f32.
//! Inference BatchNormalization and LRN are plain per-element kernels.

use crate::families::elementwise::broadcast_indices;
use crate::families::reduce::{NEG_INF, Rows, row_kernel};
use crate::wgsl::{f32_lit, kernel_1d};
use crate::{
    Attrs, DType, Error, Input, KernelArg, LowerCtx, Lowering, Op, Result, Tensor, TensorRef, TypeInfo, arg, bail,
    norm_axis, numel, ty,
};

/// Rejects non-float data: these ops are defined on floats only.
fn need_float(t: &TypeInfo) -> Result<()> {
    if t.dtype.is_float() { Ok(()) } else { Err(Error::unsupported(format!("{} input", t.dtype))) }
}

/// Mean and (population) variance of a row, two-pass.
fn row_stats(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    (mean, var)
}

/// WGSL computing the row's `mean` and `variance`, two-pass.
const STATS_WGSL: &str = "    var s1 = 0.0;
    for (var j = lane; j < n_el; j = j + LANES) { s1 = s1 + ld_x(base + elem_off(j)); }
    let mean = seg_sum_f32(s1, lid) / f32(ROW_LEN);
    var s2 = 0.0;
    for (var j = lane; j < n_el; j = j + LANES) {
        let d = ld_x(base + elem_off(j)) - mean;
        s2 = s2 + d * d;
    }
    let variance = seg_sum_f32(s2, lid) / f32(ROW_LEN);
";

/// WGSL writing `expr` (which sees `i`, `j`, `row`, `mean`, ...) to every
/// element of the row.
fn write_row(expr: &str) -> String {
    format!(
        "    for (var j = lane; j < n_el; j = j + LANES) {{
        let i = base + elem_off(j);
        st_y(i, {expr});
    }}
"
    )
}

/// WGSL index into a tensor of `in_shape` broadcast (right-aligned) to
/// `x_shape`, for linear index `var` of `x_shape`.
fn bcast_wgsl(var: &str, x_shape: &[usize], in_shape: &[usize]) -> String {
    let n = numel(in_shape);
    if n == 1 {
        return "0u".to_string();
    }
    let lead = in_shape.iter().take_while(|&&d| d == 1).count();
    let core = &in_shape[lead..];
    if x_shape.ends_with(core) {
        return format!("({var} % {n}u)");
    }
    let xs = crate::wgsl::strides(x_shape);
    let is = crate::wgsl::strides(in_shape);
    let off = x_shape.len() - in_shape.len();
    let terms: Vec<String> = in_shape
        .iter()
        .enumerate()
        .filter(|&(_, &d)| d != 1)
        .map(|(d, &n)| format!("(({var} / {}u) % {n}u) * {}u", xs[d + off], is[d]))
        .collect();
    terms.join(" + ")
}

/// Checks that `p` broadcasts to `x` without growing it.
fn check_bcast(p: &TypeInfo, x: &TypeInfo, what: &str) -> Result<()> {
    let ok = p.rank() <= x.rank() && p.shape.iter().rev().zip(x.shape.iter().rev()).all(|(&a, &b)| a == 1 || a == b);
    if ok { Ok(()) } else { bail!("{what} of shape {:?} does not broadcast to {:?}", p.shape, x.shape) }
}

// ---------------------------------------------------------------- softmax

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SoftmaxKind {
    Softmax,
    LogSoftmax,
    Hardmax,
}

/// Softmax, LogSoftmax and Hardmax. Before opset 13 the input is seen as a
/// 2-D matrix split at `axis`; from 13 the op runs along the single axis.
#[derive(Debug)]
pub struct SoftmaxOp {
    pub kind: SoftmaxKind,
    pub axis: i64,
    pub flatten: bool,
}

impl SoftmaxOp {
    fn rows(&self, shape: &[usize]) -> Result<Rows> {
        let axis = norm_axis(self.axis, shape.len())?;
        Ok(if self.flatten {
            Rows::contiguous(shape[..axis].iter().product(), shape[axis..].iter().product())
        } else {
            Rows::over_axes(shape, &[axis])
        })
    }

    fn row(&self, v: &[f64]) -> Vec<f64> {
        let m = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        match self.kind {
            SoftmaxKind::Softmax => {
                let s: f64 = v.iter().map(|x| (x - m).exp()).sum();
                v.iter().map(|x| (x - m).exp() / s).collect()
            }
            SoftmaxKind::LogSoftmax => {
                let s: f64 = v.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
                v.iter().map(|x| x - m - s).collect()
            }
            SoftmaxKind::Hardmax => {
                let first = v.iter().position(|&x| x == m);
                (0..v.len()).map(|j| (Some(j) == first) as i64 as f64).collect()
            }
        }
    }
}

impl Op for SoftmaxOp {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let x = ty(inputs, 0)?;
        need_float(x)?;
        self.rows(&x.shape)?;
        Ok(vec![x.clone()])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let x = arg(inputs, 0)?;
        Ok(vec![map_rows(x, &self.rows(&x.shape)?, |row| self.row(row))])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let x = cx.input(0)?;
        need_float(x)?;
        let rows = self.rows(&x.shape)?;
        let body = match self.kind {
            SoftmaxKind::Hardmax => {
                "    var best = 0.0;
    var bi = 0xffffffffu;
    for (var j = lane; j < n_el; j = j + LANES) {
        let v = ld_x(base + elem_off(j));
        if (bi == 0xffffffffu || v > best) {
            best = v;
            bi = j;
        }
    }
    bi = seg_argmax_first_f32(best, bi, lid);
"
                .to_string()
                    + &write_row("select(0.0, 1.0, j == bi)")
            }
            kind => {
                let expr = if kind == SoftmaxKind::Softmax { "exp(ld_x(i) - m) / s" } else { "ld_x(i) - m - log(s)" };
                format!(
                    "    var m = {NEG_INF};
    for (var j = lane; j < n_el; j = j + LANES) {{ m = max(m, ld_x(base + elem_off(j))); }}
    m = seg_max_f32(m, lid);
    var s = 0.0;
    for (var j = lane; j < n_el; j = j + LANES) {{ s = s + exp(ld_x(base + elem_off(j)) - m); }}
    s = seg_sum_f32(s, lid);
"
                ) + &write_row(expr)
            }
        };
        let args =
            vec![KernelArg::new("x", TensorRef::Input(0)), KernelArg::new("y", TensorRef::Output(0)).stored_once()];
        let name = format!("{:?}", self.kind).to_lowercase();
        Ok(Lowering::one(row_kernel(&name, args, &rows, "", &body)))
    }
}

// ---------------------------------------------------------------- layer / RMS norm

/// LayerNormalization (with optional Mean and InvStdDev outputs) and
/// RMSNormalization, over the axes from `axis` to the last.
#[derive(Debug)]
pub struct LayerNorm {
    pub axis: i64,
    pub epsilon: f32,
    pub rms: bool,
    /// Element type of Mean / InvStdDev (stash_type 1 = float32).
    pub stash_f32: bool,
}

impl LayerNorm {
    fn split(&self, shape: &[usize]) -> Result<(usize, usize, usize)> {
        let axis = norm_axis(self.axis, shape.len())?;
        Ok((axis, shape[..axis].iter().product(), shape[axis..].iter().product()))
    }
}

impl Op for LayerNorm {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let x = ty(inputs, 0)?;
        need_float(x)?;
        check_bcast(ty(inputs, 1)?, x, "scale")?;
        if let Some(b) = inputs.get(2).copied().flatten() {
            check_bcast(b.ty, x, "bias")?;
        }
        let (axis, _, _) = self.split(&x.shape)?;
        if self.rms {
            return Ok(vec![x.clone()]);
        }
        let mut st = x.shape.clone();
        st[axis..].iter_mut().for_each(|d| *d = 1);
        let sdt = if self.stash_f32 { DType::F32 } else { x.dtype };
        Ok(vec![x.clone(), TypeInfo::new(sdt, st.clone()), TypeInfo::new(sdt, st)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let x = arg(inputs, 0)?;
        let (axis, rows, len) = self.split(&x.shape)?;
        let v = x.to_f64();
        let n = v.len();
        let scale = arg(inputs, 1)?;
        let (sv, si) = (scale.to_f64(), broadcast_indices(&x.shape, &scale.shape, n));
        let bias = if self.rms { None } else { inputs.get(2).copied().flatten() };
        let bv = bias.map(|b| (b.to_f64(), broadcast_indices(&x.shape, &b.shape, n)));
        let (mut y, mut means, mut invs) = (vec![0.0; n], vec![], vec![]);
        for r in 0..rows {
            let row = &v[r * len..(r + 1) * len];
            let (mean, inv) = if self.rms {
                (0.0, 1.0 / (row.iter().map(|x| x * x).sum::<f64>() / len as f64 + self.epsilon as f64).sqrt())
            } else {
                let (m, var) = row_stats(row);
                (m, 1.0 / (var + self.epsilon as f64).sqrt())
            };
            for i in r * len..(r + 1) * len {
                let b = bv.as_ref().map_or(0.0, |(bv, bi)| bv[bi[i]]);
                y[i] = (v[i] - mean) * inv * sv[si[i]] + b;
            }
            means.push(mean);
            invs.push(inv);
        }
        let y = Tensor::from_f64(x.dtype, x.shape.clone(), y);
        if self.rms {
            return Ok(vec![y]);
        }
        let mut st = x.shape.clone();
        st[axis..].iter_mut().for_each(|d| *d = 1);
        let sdt = if self.stash_f32 { DType::F32 } else { x.dtype };
        Ok(vec![y, Tensor::from_f64(sdt, st.clone(), means), Tensor::from_f64(sdt, st, invs)])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let x = cx.input(0)?;
        need_float(x)?;
        let (_, rows, len) = self.split(&x.shape)?;
        let eps = f32_lit(self.epsilon);
        let mut args = vec![
            KernelArg::new("x", TensorRef::Input(0)),
            KernelArg::new("scale", TensorRef::Input(1)),
            KernelArg::new("y", TensorRef::Output(0)).stored_once(),
        ];
        let mut expr = format!("(ld_x(i) - mean) * inv * ld_scale({})", bcast_wgsl("i", &x.shape, &cx.input(1)?.shape));
        let mut body = if self.rms {
            format!(
                "    var s2 = 0.0;
    for (var j = lane; j < n_el; j = j + LANES) {{
        let v = ld_x(base + elem_off(j));
        s2 = s2 + v * v;
    }}
    let mean = 0.0;
    let inv = 1.0 / sqrt(seg_sum_f32(s2, lid) / f32(ROW_LEN) + {eps});
"
            )
        } else {
            format!("{STATS_WGSL}    let inv = 1.0 / sqrt(variance + {eps});\n")
        };
        if !self.rms && cx.has_input(2) {
            args.push(KernelArg::new("bias", TensorRef::Input(2)));
            expr += &format!(" + ld_bias({})", bcast_wgsl("i", &x.shape, &cx.input(2)?.shape));
        }
        body += &write_row(&expr);
        if !self.rms && cx.outputs.len() > 1 {
            args.push(KernelArg::new("mean", TensorRef::Output(1)));
            body += "    if (valid && lane == 0u) { st_mean(row, mean); }\n";
        }
        if !self.rms && cx.outputs.len() > 2 {
            args.push(KernelArg::new("inv", TensorRef::Output(2)));
            body += "    if (valid && lane == 0u) { st_inv(row, inv); }\n";
        }
        let name = if self.rms { "rms_norm" } else { "layer_norm" };
        Ok(Lowering::one(row_kernel(name, args, &Rows::contiguous(rows, len), "", &body)))
    }
}

// ---------------------------------------------------------------- batch norm

/// BatchNormalization. Inference uses the given statistics (a per-element
/// kernel); training mode (opset ≥ 14) normalizes with the batch statistics
/// and also outputs the updated running mean and variance.
#[derive(Debug)]
pub struct BatchNorm {
    pub epsilon: f32,
    pub momentum: f32,
    pub training: bool,
    /// Opset < 9 `spatial = 0`: statistics per activation (C x D1 x ...).
    pub per_activation: bool,
}

impl BatchNorm {
    /// (channels, elements per channel per image), and the number of
    /// parameter values.
    fn dims(&self, shape: &[usize]) -> Result<(usize, usize, usize)> {
        if shape.len() < 2 {
            bail!("input must have rank ≥ 2 (N x C x ...), got {:?}", shape);
        }
        let c = shape[1];
        let inner: usize = shape[2..].iter().product();
        Ok((c, inner, if self.per_activation { c * inner } else { c }))
    }
}

impl Op for BatchNorm {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let x = ty(inputs, 0)?;
        need_float(x)?;
        let (c, _, np) = self.dims(&x.shape)?;
        for (i, what) in [(1, "scale"), (2, "bias"), (3, "mean"), (4, "var")] {
            if ty(inputs, i)?.numel() != np {
                bail!("{what} must have {np} elements");
            }
        }
        if self.training {
            let stat = TypeInfo::new(x.dtype, vec![c]);
            return Ok(vec![x.clone(), stat.clone(), stat]);
        }
        Ok(vec![x.clone()])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let x = arg(inputs, 0)?;
        let (c, inner, np) = self.dims(&x.shape)?;
        let v = x.to_f64();
        let p: Vec<Vec<f64>> = (1..5).map(|i| arg(inputs, i).map(|t| t.to_f64())).collect::<Result<_>>()?;
        let eps = self.epsilon as f64;
        let mut y = vec![0.0; v.len()];
        if !self.training {
            let pinner = if self.per_activation { 1 } else { inner };
            for (i, yv) in y.iter_mut().enumerate() {
                let k = (i / pinner) % np;
                *yv = (v[i] - p[2][k]) / (p[3][k] + eps).sqrt() * p[0][k] + p[1][k];
            }
            return Ok(vec![Tensor::from_f64(x.dtype, x.shape.clone(), y)]);
        }
        let rows = Rows::over_axes(&x.shape, &(0..x.rank()).filter(|&d| d != 1).collect::<Vec<_>>());
        let mom = self.momentum as f64;
        let (mut rm, mut rv) = (vec![], vec![]);
        for (ch, ((sc, bi), (m0, v0))) in p[0].iter().zip(&p[1]).zip(p[2].iter().zip(&p[3])).enumerate().take(c) {
            let idx: Vec<usize> = (0..rows.len).map(|j| rows.index(ch, j)).collect();
            let (mean, var) = row_stats(&idx.iter().map(|&i| v[i]).collect::<Vec<_>>());
            for &i in &idx {
                y[i] = (v[i] - mean) / (var + eps).sqrt() * sc + bi;
            }
            rm.push(m0 * mom + mean * (1.0 - mom));
            rv.push(v0 * mom + var * (1.0 - mom));
        }
        Ok(vec![
            Tensor::from_f64(x.dtype, x.shape.clone(), y),
            Tensor::from_f64(x.dtype, vec![c], rm),
            Tensor::from_f64(x.dtype, vec![c], rv),
        ])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let x = cx.input(0)?;
        need_float(x)?;
        let (_, inner, np) = self.dims(&x.shape)?;
        let eps = f32_lit(self.epsilon);
        let mut args = vec![KernelArg::new("x", TensorRef::Input(0))];
        for (i, n) in ["scale", "bias", "mean", "var"].iter().enumerate() {
            args.push(KernelArg::new(n, TensorRef::Input(i + 1)));
        }
        args.push(KernelArg::new("y", TensorRef::Output(0)).stored_once());
        if !self.training {
            let pinner = if self.per_activation { 1 } else { inner };
            let body = format!(
                "    let k = (i / {pinner}u) % {np}u;
    let a = ld_scale(k) / sqrt(ld_var(k) + {eps});
    st_y(i, (ld_x(i) - ld_mean(k)) * a + ld_bias(k));"
            );
            return Ok(Lowering::one(kernel_1d("batch_norm", args, x.numel(), "", &body)));
        }
        if self.per_activation {
            return Err(Error::unsupported("training mode with spatial = 0"));
        }
        let rows = Rows::over_axes(&x.shape, &(0..x.rank()).filter(|&d| d != 1).collect::<Vec<_>>());
        let mom = f32_lit(self.momentum);
        let mut body = format!("{STATS_WGSL}    let inv = 1.0 / sqrt(variance + {eps});\n")
            + &write_row("(ld_x(i) - mean) * inv * ld_scale(row) + ld_bias(row)");
        if cx.outputs.len() > 1 {
            args.push(KernelArg::new("rmean", TensorRef::Output(1)));
            body += &format!(
                "    if (valid && lane == 0u) {{ st_rmean(row, ld_mean(row) * {mom} + mean * (1.0 - {mom})); }}\n"
            );
        }
        if cx.outputs.len() > 2 {
            args.push(KernelArg::new("rvar", TensorRef::Output(2)));
            body += &format!(
                "    if (valid && lane == 0u) {{ st_rvar(row, ld_var(row) * {mom} + variance * (1.0 - {mom})); }}\n"
            );
        }
        Ok(Lowering::one(row_kernel("batch_norm_train", args, &rows, "", &body)))
    }
}

// ---------------------------------------------------------------- instance / group norm

/// InstanceNormalization (`groups = None`: one row per image and channel)
/// and GroupNormalization (one row per image and group of channels).
/// Scale and bias are per channel, or per group (GroupNormalization-18).
#[derive(Debug)]
pub struct GroupNorm {
    pub groups: Option<usize>,
    pub epsilon: f32,
}

impl GroupNorm {
    /// (batch, channels, groups, spatial size).
    fn dims(&self, shape: &[usize]) -> Result<(usize, usize, usize, usize)> {
        if shape.len() < 2 {
            bail!("input must have rank ≥ 2 (N x C x ...), got {:?}", shape);
        }
        let (n, c) = (shape[0], shape[1]);
        let g = self.groups.unwrap_or(c);
        if g == 0 || c % g != 0 {
            bail!("{c} channels cannot be split into {g} groups");
        }
        Ok((n, c, g, shape[2..].iter().product()))
    }
}

impl Op for GroupNorm {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let x = ty(inputs, 0)?;
        need_float(x)?;
        let (_, c, g, _) = self.dims(&x.shape)?;
        for i in [1, 2] {
            let k = ty(inputs, i)?.numel();
            if k != c && k != g {
                bail!("scale and bias must have {c} (or {g}) elements, found {k}");
            }
        }
        Ok(vec![x.clone()])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let x = arg(inputs, 0)?;
        let (n, c, g, sp) = self.dims(&x.shape)?;
        let (s, b) = (arg(inputs, 1)?.to_f64(), arg(inputs, 2)?.to_f64());
        let v = x.to_f64();
        let len = c / g * sp;
        let mut y = vec![0.0; v.len()];
        for r in 0..n * g {
            let (mean, var) = row_stats(&v[r * len..(r + 1) * len]);
            let inv = 1.0 / (var + self.epsilon as f64).sqrt();
            for j in 0..len {
                let ch = (r % g) * (c / g) + j / sp.max(1);
                let (sc, bi) =
                    (if s.len() == c { s[ch] } else { s[r % g] }, if b.len() == c { b[ch] } else { b[r % g] });
                y[r * len + j] = (v[r * len + j] - mean) * inv * sc + bi;
            }
        }
        Ok(vec![Tensor::from_f64(x.dtype, x.shape.clone(), y)])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let x = cx.input(0)?;
        need_float(x)?;
        let (n, c, g, sp) = self.dims(&x.shape)?;
        let len = c / g * sp;
        let ch = format!("(row % {g}u) * {}u + j / {}u", c / g, sp.max(1));
        let grp = format!("row % {g}u");
        let sidx = if cx.input(1)?.numel() == c { &ch } else { &grp };
        let bidx = if cx.input(2)?.numel() == c { &ch } else { &grp };
        let eps = f32_lit(self.epsilon);
        let body = format!("{STATS_WGSL}    let inv = 1.0 / sqrt(variance + {eps});\n")
            + &write_row(&format!("(ld_x(i) - mean) * inv * ld_scale({sidx}) + ld_bias({bidx})"));
        let args = vec![
            KernelArg::new("x", TensorRef::Input(0)),
            KernelArg::new("scale", TensorRef::Input(1)),
            KernelArg::new("bias", TensorRef::Input(2)),
            KernelArg::new("y", TensorRef::Output(0)).stored_once(),
        ];
        let name = if self.groups.is_some() { "group_norm" } else { "instance_norm" };
        Ok(Lowering::one(row_kernel(name, args, &Rows::contiguous(n * g, len), "", &body)))
    }
}

// ---------------------------------------------------------------- Lp / MVN

/// LpNormalization (p = 1 or 2 along one axis; a zero norm gives 0) and
/// MeanVarianceNormalization over a set of axes.
#[derive(Debug)]
pub enum AxisNorm {
    Lp { axis: i64, p: i64 },
    Mvn { axes: Vec<i64> },
}

impl AxisNorm {
    fn rows(&self, shape: &[usize]) -> Result<Rows> {
        let axes = match self {
            AxisNorm::Lp { axis, .. } => vec![norm_axis(*axis, shape.len())?],
            AxisNorm::Mvn { axes } => axes.iter().map(|&a| norm_axis(a, shape.len())).collect::<Result<_>>()?,
        };
        Ok(Rows::over_axes(shape, &axes))
    }

    fn row(&self, v: &[f64]) -> Vec<f64> {
        match self {
            AxisNorm::Lp { p, .. } => {
                let norm = if *p == 1 {
                    v.iter().map(|x| x.abs()).sum::<f64>()
                } else {
                    v.iter().map(|x| x * x).sum::<f64>().sqrt()
                };
                v.iter().map(|x| if norm == 0.0 { 0.0 } else { x / norm }).collect()
            }
            AxisNorm::Mvn { .. } => {
                let (mean, var) = row_stats(v);
                v.iter().map(|x| (x - mean) / (var.sqrt() + 1e-9)).collect()
            }
        }
    }
}

impl Op for AxisNorm {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let x = ty(inputs, 0)?;
        need_float(x)?;
        self.rows(&x.shape)?;
        Ok(vec![x.clone()])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let x = arg(inputs, 0)?;
        Ok(vec![map_rows(x, &self.rows(&x.shape)?, |row| self.row(row))])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let x = cx.input(0)?;
        need_float(x)?;
        let rows = self.rows(&x.shape)?;
        let (name, body) = match self {
            AxisNorm::Lp { p, .. } => {
                let map = if *p == 1 { "abs(v)" } else { "v * v" };
                let fin = if *p == 1 { "s" } else { "sqrt(s)" };
                let body = format!(
                    "    var s = 0.0;
    for (var j = lane; j < n_el; j = j + LANES) {{
        let v = ld_x(base + elem_off(j));
        s = s + {map};
    }}
    s = seg_sum_f32(s, lid);
    let norm = {fin};
"
                ) + &write_row("select(ld_x(i) / norm, 0.0, norm == 0.0)");
                ("lp_norm", body)
            }
            AxisNorm::Mvn { .. } => {
                ("mvn", STATS_WGSL.to_string() + &write_row("(ld_x(i) - mean) / (sqrt(variance) + 1e-9)"))
            }
        };
        let args =
            vec![KernelArg::new("x", TensorRef::Input(0)), KernelArg::new("y", TensorRef::Output(0)).stored_once()];
        Ok(Lowering::one(row_kernel(name, args, &rows, "", &body)))
    }
}

// ---------------------------------------------------------------- LRN

/// Local response normalization across channels (dim 1).
#[derive(Debug)]
pub struct Lrn {
    pub size: i64,
    pub alpha: f32,
    pub beta: f32,
    pub bias: f32,
}

impl Lrn {
    /// (channels, spatial size, channels before, channels after).
    fn dims(&self, shape: &[usize]) -> Result<(usize, usize, usize, usize)> {
        if shape.len() < 2 || self.size < 1 {
            bail!("LRN needs rank ≥ 2 and size ≥ 1");
        }
        let s = self.size as usize;
        Ok((shape[1], shape[2..].iter().product(), (s - 1) / 2, s / 2))
    }
}

impl Op for Lrn {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let x = ty(inputs, 0)?;
        need_float(x)?;
        self.dims(&x.shape)?;
        Ok(vec![x.clone()])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let x = arg(inputs, 0)?;
        let (c, sp, before, after) = self.dims(&x.shape)?;
        let v = x.to_f64();
        let k = self.alpha as f64 / self.size as f64;
        let y = (0..v.len())
            .map(|i| {
                let ch = (i / sp) % c;
                let lo = ch.saturating_sub(before);
                let hi = (ch + after).min(c - 1);
                let sq: f64 = (lo..=hi).map(|q| v[i - ch * sp + q * sp].powi(2)).sum();
                v[i] / (self.bias as f64 + k * sq).powf(self.beta as f64)
            })
            .collect();
        Ok(vec![Tensor::from_f64(x.dtype, x.shape.clone(), y)])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let x = cx.input(0)?;
        need_float(x)?;
        let (c, sp, before, after) = self.dims(&x.shape)?;
        let k = f32_lit(self.alpha / self.size as f32);
        let body = format!(
            "    let ch = (i / {sp}u) % {c}u;
    let lo = max(i32(ch) - {before}, 0);
    let hi = min(ch + {after}u, {cm1}u);
    let b0 = i - ch * {sp}u;
    var sq = 0.0;
    for (var q = u32(lo); q <= hi; q = q + 1u) {{
        let v = ld_x(b0 + q * {sp}u);
        sq = sq + v * v;
    }}
    st_y(i, ld_x(i) / pow({bias} + {k} * sq, {beta}));",
            cm1 = c.saturating_sub(1),
            bias = f32_lit(self.bias),
            beta = f32_lit(self.beta),
        );
        let args =
            vec![KernelArg::new("x", TensorRef::Input(0)), KernelArg::new("y", TensorRef::Output(0)).stored_once()];
        Ok(Lowering::one(kernel_1d("lrn", args, x.numel(), "", &body)))
    }
}

/// Builds a normalization op.
pub fn build(op_type: &str, a: &Attrs, opset: i64) -> Result<Box<dyn Op>> {
    let softmax = |kind| -> Result<Box<dyn Op>> {
        let flatten = opset < 13;
        Ok(Box::new(SoftmaxOp { kind, axis: a.int("axis", if flatten { 1 } else { -1 })?, flatten }))
    };
    match op_type {
        "Softmax" => softmax(SoftmaxKind::Softmax),
        "LogSoftmax" => softmax(SoftmaxKind::LogSoftmax),
        "Hardmax" => softmax(SoftmaxKind::Hardmax),
        "LayerNormalization" | "RMSNormalization" => Ok(Box::new(LayerNorm {
            axis: a.int("axis", -1)?,
            epsilon: a.float("epsilon", 1e-5)?,
            rms: op_type == "RMSNormalization",
            stash_f32: a.int("stash_type", 1)? == 1,
        })),
        "BatchNormalization" => {
            let training = opset >= 14 && a.int("training_mode", 0)? != 0;
            Ok(Box::new(BatchNorm {
                epsilon: a.float("epsilon", 1e-5)?,
                momentum: a.float("momentum", 0.9)?,
                training,
                per_activation: opset < 9 && a.int("spatial", 1)? == 0,
            }))
        }
        "InstanceNormalization" => Ok(Box::new(GroupNorm { groups: None, epsilon: a.float("epsilon", 1e-5)? })),
        "GroupNormalization" => {
            let g = a.int_opt("num_groups")?.ok_or_else(|| Error::msg("attribute 'num_groups' is required"));
            // Built without attributes (registry probe): report support, fail on use.
            let g = if a.0.is_empty() { 1 } else { g? };
            if g < 1 {
                bail!("num_groups must be positive, got {g}");
            }
            Ok(Box::new(GroupNorm { groups: Some(g as usize), epsilon: a.float("epsilon", 1e-5)? }))
        }
        "LpNormalization" => {
            let p = a.int("p", 2)?;
            if p != 1 && p != 2 {
                return Err(Error::unsupported(format!("LpNormalization with p = {p}")));
            }
            Ok(Box::new(AxisNorm::Lp { axis: a.int("axis", -1)?, p }))
        }
        "MeanVarianceNormalization" => {
            let axes = a.ints_opt("axes")?.map_or(vec![0, 2, 3], |v| v.to_vec());
            Ok(Box::new(AxisNorm::Mvn { axes }))
        }
        "LRN" => Ok(Box::new(Lrn {
            size: a.int("size", 1)?,
            alpha: a.float("alpha", 1e-4)?,
            beta: a.float("beta", 0.75)?,
            bias: a.float("bias", 1.0)?,
        })),
        _ => Err(Error::unsupported(op_type.to_string())),
    }
}

/// CPU reference helper: applies `f` to every row of `x` (a row being the
/// elements `rows` groups together) and scatters the results back.
fn map_rows(x: &Tensor, rows: &Rows, f: impl Fn(&[f64]) -> Vec<f64>) -> Tensor {
    let v = x.to_f64();
    let mut out = vec![0.0; v.len()];
    for r in 0..rows.rows {
        let idx: Vec<usize> = (0..rows.len).map(|j| rows.index(r, j)).collect();
        let y = f(&idx.iter().map(|&i| v[i]).collect::<Vec<_>>());
        idx.iter().zip(y).for_each(|(&i, y)| out[i] = y);
    }
    Tensor::from_f64(x.dtype, x.shape.clone(), out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Attr;
    use crate::testing::*;

    fn eval(op: &str, opset: i64, a: &[(&str, Attr)], ins: &[Option<Tensor>]) -> Vec<Tensor> {
        let op = build(op, &attrs(a), opset).unwrap();
        op.eval(&ins.iter().map(|t| t.as_ref()).collect::<Vec<_>>()).unwrap()
    }

    fn close(a: &[f64], b: &[f64]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-5 + 1e-5 * y.abs(), "{a:?} vs {b:?}");
        }
    }

    fn t(shape: Vec<usize>, v: &[f32]) -> Option<Tensor> {
        Some(Tensor::from_f32(shape, v.to_vec()))
    }

    #[test]
    fn softmax_single_axis_and_flattened() {
        // numpy: softmax([[1, 2], [3, 5]], axis=0) -> e^-2/(1+e^-2), e^-3/(1+e^-3)
        let x = t(vec![2, 2], &[1.0, 2.0, 3.0, 5.0]);
        let y = eval("Softmax", 13, &[("axis", Attr::Int(0))], std::slice::from_ref(&x));
        close(&y[0].to_f64(), &[0.11920292, 0.04742587, 0.88079708, 0.95257413]);
        // opset 11, axis 0: the whole tensor is one row.
        let y = eval("Softmax", 11, &[("axis", Attr::Int(0))], std::slice::from_ref(&x));
        close(&y[0].to_f64(), &[0.01521943, 0.0413707, 0.11245721, 0.83095266]);
        let y = eval("LogSoftmax", 13, &[], std::slice::from_ref(&x));
        close(&y[0].to_f64(), &[-1.31326169, -0.31326169, -2.12692801, -0.12692801]);
        let y = eval("Hardmax", 13, &[("axis", Attr::Int(0))], &[t(vec![2, 2], &[3.0, 2.0, 3.0, 5.0])]);
        assert_eq!(y[0].to_f64(), vec![1.0, 0.0, 0.0, 1.0]);
    }

    #[test]
    fn layer_norm_with_stats() {
        let x = t(vec![2, 2], &[1.0, 3.0, 2.0, 2.0]);
        let y = eval(
            "LayerNormalization",
            17,
            &[("epsilon", Attr::Float(0.0))],
            &[x, t(vec![2], &[2.0, 1.0]), t(vec![2], &[0.5, 0.0])],
        );
        // row 0: mean 2, var 1 -> (-1, 1) * (2, 1) + (0.5, 0); row 1: var 0 -> inf * 0 = nan guarded by eps=0
        close(&y[0].to_f64()[..2], &[-1.5, 1.0]);
        assert_eq!(y[1].shape, vec![2, 1]);
        assert_eq!(y[1].to_f64(), vec![2.0, 2.0]);
        assert_eq!(y[2].to_f64()[0], 1.0);
        let y = eval(
            "RMSNormalization",
            23,
            &[("epsilon", Attr::Float(0.0))],
            &[t(vec![1, 2], &[3.0, 4.0]), t(vec![2], &[1.0, 2.0])],
        );
        // rms = sqrt(12.5)
        close(&y[0].to_f64(), &[3.0 / 12.5f64.sqrt(), 8.0 / 12.5f64.sqrt()]);
    }

    #[test]
    fn batch_norm_inference_and_training() {
        let x = t(vec![2, 1, 2], &[1.0, 2.0, 3.0, 6.0]);
        let p = |v: f32| t(vec![1], &[v]);
        let y = eval(
            "BatchNormalization",
            15,
            &[("epsilon", Attr::Float(0.0))],
            &[x.clone(), p(1.0), p(1.0), p(1.0), p(4.0)],
        );
        close(&y[0].to_f64(), &[1.0, 1.5, 2.0, 3.5]);
        let y = eval(
            "BatchNormalization",
            15,
            &[("epsilon", Attr::Float(0.0)), ("training_mode", Attr::Int(1))],
            &[x, p(1.0), p(0.0), p(0.0), p(1.0)],
        );
        // batch mean 3, var 3.5
        let s = 3.5f64.sqrt();
        close(&y[0].to_f64(), &[-2.0 / s, -1.0 / s, 0.0, 3.0 / s]);
        close(&y[1].to_f64(), &[0.3]);
        close(&y[2].to_f64(), &[0.9 + 0.35]);
    }

    #[test]
    fn instance_and_group_norm() {
        let x = t(vec![1, 2, 2], &[1.0, 3.0, 5.0, 5.0]);
        let y = eval("InstanceNormalization", 6, &[], &[x.clone(), t(vec![2], &[1.0, 1.0]), t(vec![2], &[0.0, 7.0])]);
        let d = 1.0 / (1.0f64 + 1e-5).sqrt();
        close(&y[0].to_f64(), &[-d, d, 7.0, 7.0]);
        // One group over all 4 values: mean 3.5, var 2.75.
        let y = eval(
            "GroupNormalization",
            21,
            &[("num_groups", Attr::Int(1)), ("epsilon", Attr::Float(0.0))],
            &[x, t(vec![2], &[1.0, 2.0]), t(vec![2], &[0.0, 1.0])],
        );
        let s = 2.75f64.sqrt();
        close(&y[0].to_f64(), &[-2.5 / s, -0.5 / s, 2.0 * 1.5 / s + 1.0, 2.0 * 1.5 / s + 1.0]);
    }

    #[test]
    fn lp_mvn_lrn() {
        let x = t(vec![2, 2], &[3.0, 4.0, 0.0, 0.0]);
        let y = eval("LpNormalization", 1, &[], std::slice::from_ref(&x));
        assert_eq!(y[0].to_f64(), [0.6f32, 0.8, 0.0, 0.0].iter().map(|&v| v as f64).collect::<Vec<_>>());
        let y = eval("LpNormalization", 1, &[("p", Attr::Int(1)), ("axis", Attr::Int(0))], &[x]);
        close(&y[0].to_f64(), &[1.0, 1.0, 0.0, 0.0]);
        let y = eval("MeanVarianceNormalization", 13, &[("axes", Attr::Ints(vec![1]))], &[t(vec![1, 2], &[1.0, 3.0])]);
        close(&y[0].to_f64(), &[-1.0, 1.0]);
        // size 3 over 2 channels, alpha 3, beta 1, bias 1: y = x / (1 + (1 + 4))
        let y = eval(
            "LRN",
            1,
            &[("size", Attr::Int(3)), ("alpha", Attr::Float(3.0)), ("beta", Attr::Float(1.0))],
            &[t(vec![1, 2, 1], &[1.0, 2.0])],
        );
        close(&y[0].to_f64(), &[1.0 / 6.0, 2.0 / 6.0]);
    }
}
