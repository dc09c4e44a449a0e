//! Recurrent layers: RNN, LSTM and GRU, every direction (forward, reverse,
//! bidirectional), both layouts, custom activations with their alpha and
//! beta, clip, LSTM peepholes and input_forget, GRU linear_before_reset,
//! initial states and per-batch sequence_lens.
//!
//! GPU form: time steps depend on each other, so each direction runs as
//! one kernel of a single workgroup that loops over the steps. Its threads
//! share the (batch x hidden) units of a step; the hidden state lives in a
//! ping-pong scratch pair (read slot `s % 2`, write the other) so no thread
//! overwrites a value another still reads, and `storageBarrier()` closes
//! every step. GRU without linear_before_reset needs `r ⊙ h` of every unit
//! before any candidate state, so it runs that as a first phase per step.
//! The cell state of LSTM is owned by one thread throughout and needs no
//! barrier. Weights are read straight from their tensors each step: hidden
//! sizes of these layers are small and the loop is latency-bound anyway.
//!
//! Batches shorter than the sequence (sequence_lens) keep their state past
//! their end and write zeros to Y there; reverse directions start at the
//! batch's own last step. The CPU reference follows the same definition.

use crate::wgsl::f32_lit;
use crate::{
    Attrs, DType, Error, Input, Kernel, KernelArg, LowerCtx, Lowering, Op, Result, TempSpec, Tensor, TensorRef,
    TypeInfo, arg, bail, ty, unsupported,
};

/// Builds an op of this family.
pub fn build(op_type: &str, a: &Attrs, _opset: i64) -> Result<Box<dyn Op>> {
    let cell = match op_type {
        "RNN" => Cell::Rnn,
        "LSTM" => Cell::Lstm { input_forget: a.int("input_forget", 0)? != 0 },
        "GRU" => Cell::Gru { linear_before_reset: a.int("linear_before_reset", 0)? != 0 },
        _ => return Err(Error::unsupported(op_type)),
    };
    let dirs: Vec<bool> = match a.str("direction", "forward")? {
        "forward" => vec![false],
        "reverse" => vec![true],
        "bidirectional" => vec![false, true],
        d => bail!("unknown direction '{d}'"),
    };
    let per_dir = cell.n_acts();
    let names: Vec<String> = match a.0.get("activations") {
        Some(crate::Attr::Strs(v)) => v.clone(),
        Some(_) => bail!("attribute 'activations' should be a list of strings"),
        None => cell.default_acts().iter().map(|s| s.to_string()).cycle().take(per_dir * dirs.len()).collect(),
    };
    if names.len() != per_dir * dirs.len() {
        bail!(
            "activations has {} entries, expected {} for {} direction(s)",
            names.len(),
            per_dir * dirs.len(),
            dirs.len()
        );
    }
    let acts = Act::parse_list(
        &names,
        a.floats_opt("activation_alpha")?.unwrap_or(&[]),
        a.floats_opt("activation_beta")?.unwrap_or(&[]),
    )?;
    Ok(Box::new(Recurrent {
        cell,
        reverse: dirs,
        acts,
        clip: a.float_opt("clip")?,
        hidden_size: a.int_opt("hidden_size")?,
        batch_major: a.int("layout", 0)? != 0,
    }))
}

/// Which recurrence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cell {
    Rnn,
    Lstm { input_forget: bool },
    Gru { linear_before_reset: bool },
}

impl Cell {
    fn gates(self) -> usize {
        match self {
            Cell::Rnn => 1,
            Cell::Lstm { .. } => 4,
            Cell::Gru { .. } => 3,
        }
    }
    fn n_acts(self) -> usize {
        match self {
            Cell::Rnn => 1,
            Cell::Lstm { .. } => 3,
            Cell::Gru { .. } => 2,
        }
    }
    fn default_acts(self) -> &'static [&'static str] {
        match self {
            Cell::Rnn => &["Tanh"],
            Cell::Lstm { .. } => &["Sigmoid", "Tanh", "Tanh"],
            Cell::Gru { .. } => &["Sigmoid", "Tanh"],
        }
    }
}

/// An activation function with its parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Act {
    Relu,
    Tanh,
    Sigmoid,
    Affine(f32, f32),
    LeakyRelu(f32),
    ThresholdedRelu(f32),
    ScaledTanh(f32, f32),
    HardSigmoid(f32, f32),
    Elu(f32),
    Softsign,
    Softplus,
}

impl Act {
    /// Parses activation names; each one that takes alpha (beta) consumes
    /// the next entry of `alphas` (`betas`), or uses its default.
    fn parse_list(names: &[String], alphas: &[f32], betas: &[f32]) -> Result<Vec<Act>> {
        let (mut ai, mut bi) = (alphas.iter(), betas.iter());
        let mut alpha = |d: f32| ai.next().copied().unwrap_or(d);
        names
            .iter()
            .map(|n| {
                let mut beta = |d: f32| bi.next().copied().unwrap_or(d);
                Ok(match n.to_ascii_lowercase().as_str() {
                    "relu" => Act::Relu,
                    "tanh" => Act::Tanh,
                    "sigmoid" => Act::Sigmoid,
                    "affine" => Act::Affine(alpha(1.0), beta(0.0)),
                    "leakyrelu" => Act::LeakyRelu(alpha(0.01)),
                    "thresholdedrelu" => Act::ThresholdedRelu(alpha(1.0)),
                    "scaledtanh" => Act::ScaledTanh(alpha(1.0), beta(1.0)),
                    "hardsigmoid" => Act::HardSigmoid(alpha(0.2), beta(0.5)),
                    "elu" => Act::Elu(alpha(1.0)),
                    "softsign" => Act::Softsign,
                    "softplus" => Act::Softplus,
                    other => unsupported!("activation '{other}'"),
                })
            })
            .collect()
    }

    fn apply(self, x: f64) -> f64 {
        match self {
            Act::Relu => x.max(0.0),
            Act::Tanh => x.tanh(),
            Act::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            Act::Affine(a, b) => a as f64 * x + b as f64,
            Act::LeakyRelu(a) => {
                if x >= 0.0 {
                    x
                } else {
                    a as f64 * x
                }
            }
            Act::ThresholdedRelu(a) => {
                if x > a as f64 {
                    x
                } else {
                    0.0
                }
            }
            Act::ScaledTanh(a, b) => a as f64 * (b as f64 * x).tanh(),
            Act::HardSigmoid(a, b) => (a as f64 * x + b as f64).clamp(0.0, 1.0),
            Act::Elu(a) => {
                if x >= 0.0 {
                    x
                } else {
                    a as f64 * (x.exp() - 1.0)
                }
            }
            Act::Softsign => x / (1.0 + x.abs()),
            Act::Softplus => (1.0 + x.exp()).ln(),
        }
    }

    /// WGSL expression of the activation of `x`. Tanh goes through
    /// `rnn_tanh`, which stays finite for large inputs.
    fn wgsl(self, x: &str) -> String {
        match self {
            Act::Relu => format!("max({x}, 0.0)"),
            Act::Tanh => format!("rnn_tanh({x})"),
            Act::Sigmoid => format!("(1.0 / (1.0 + exp(-({x}))))"),
            Act::Affine(a, b) => format!("({} * {x} + {})", f32_lit(a), f32_lit(b)),
            Act::LeakyRelu(a) => format!("select({} * {x}, {x}, {x} >= 0.0)", f32_lit(a)),
            Act::ThresholdedRelu(a) => format!("select(0.0, {x}, {x} > {})", f32_lit(a)),
            Act::ScaledTanh(a, b) => format!("({} * rnn_tanh({} * {x}))", f32_lit(a), f32_lit(b)),
            Act::HardSigmoid(a, b) => format!("clamp({} * {x} + {}, 0.0, 1.0)", f32_lit(a), f32_lit(b)),
            Act::Elu(a) => format!("select({} * (exp({x}) - 1.0), {x}, {x} >= 0.0)", f32_lit(a)),
            Act::Softsign => format!("({x} / (1.0 + abs({x})))"),
            Act::Softplus => format!("log(1.0 + exp({x}))"),
        }
    }
}

/// RNN, LSTM or GRU with parsed attributes.
#[derive(Debug)]
pub struct Recurrent {
    cell: Cell,
    /// One entry per direction: whether it runs backwards in time.
    reverse: Vec<bool>,
    /// `cell.n_acts()` activations per direction, direction-major.
    acts: Vec<Act>,
    clip: Option<f32>,
    hidden_size: Option<i64>,
    /// layout = 1: X is batch x seq x input, outputs batch-major too.
    batch_major: bool,
}

/// Sizes of one problem.
#[derive(Clone, Copy, Debug)]
struct Dims {
    seq: usize,
    batch: usize,
    input: usize,
    hidden: usize,
    dirs: usize,
}

/// Input positions.
const X: usize = 0;
const W: usize = 1;
const R: usize = 2;
const B: usize = 3;
const SEQ_LENS: usize = 4;
const INIT_H: usize = 5;
const INIT_C: usize = 6;
const P: usize = 7;

impl Recurrent {
    fn dims(&self, shape_of: impl Fn(usize) -> Option<Vec<usize>>) -> Result<Dims> {
        let x = shape_of(X).ok_or_else(|| Error::msg("input X is required"))?;
        let w = shape_of(W).ok_or_else(|| Error::msg("input W is required"))?;
        let r = shape_of(R).ok_or_else(|| Error::msg("input R is required"))?;
        if x.len() != 3 {
            bail!("X must have rank 3, got {x:?}");
        }
        let (seq, batch) = if self.batch_major { (x[1], x[0]) } else { (x[0], x[1]) };
        let dirs = self.reverse.len();
        let g = self.cell.gates();
        let hidden = match self.hidden_size {
            Some(h) if h > 0 => h as usize,
            Some(h) => bail!("hidden_size must be positive, got {h}"),
            None => r.get(2).copied().ok_or_else(|| Error::msg("R must have rank 3"))?,
        };
        let d = Dims { seq, batch, input: x[2], hidden, dirs };
        let want = |i: usize, name: &str, shape: Vec<usize>| -> Result<()> {
            match shape_of(i) {
                Some(s) if s != shape => bail!("{name} has shape {s:?}, expected {shape:?}"),
                _ => Ok(()),
            }
        };
        if w != [dirs, g * hidden, d.input] {
            bail!("W has shape {w:?}, expected {:?}", [dirs, g * hidden, d.input]);
        }
        want(R, "R", vec![dirs, g * hidden, hidden])?;
        want(B, "B", vec![dirs, 2 * g * hidden])?;
        want(SEQ_LENS, "sequence_lens", vec![batch])?;
        let state = if self.batch_major { vec![batch, dirs, hidden] } else { vec![dirs, batch, hidden] };
        want(INIT_H, "initial_h", state.clone())?;
        if matches!(self.cell, Cell::Lstm { .. }) {
            want(INIT_C, "initial_c", state)?;
            want(P, "P", vec![dirs, 3 * hidden])?;
        }
        Ok(d)
    }

    fn out_types(&self, d: Dims, dt: DType) -> Vec<TypeInfo> {
        let (y, state) = if self.batch_major {
            (vec![d.batch, d.seq, d.dirs, d.hidden], vec![d.batch, d.dirs, d.hidden])
        } else {
            (vec![d.seq, d.dirs, d.batch, d.hidden], vec![d.dirs, d.batch, d.hidden])
        };
        let mut out = vec![TypeInfo::new(dt, y), TypeInfo::new(dt, state.clone())];
        if matches!(self.cell, Cell::Lstm { .. }) {
            out.push(TypeInfo::new(dt, state));
        }
        out
    }

    /// Element index of X at (t, b, 0).
    fn x_row(&self, d: Dims, t: usize, b: usize) -> usize {
        (if self.batch_major { b * d.seq + t } else { t * d.batch + b }) * d.input
    }

    /// Element index of Y at (t, dir, b, 0).
    fn y_row(&self, d: Dims, t: usize, dir: usize, b: usize) -> usize {
        (if self.batch_major { (b * d.seq + t) * d.dirs + dir } else { (t * d.dirs + dir) * d.batch + b }) * d.hidden
    }

    /// Element index of a state tensor (Y_h, Y_c, initial_h/c) at (dir, b, 0).
    fn state_row(&self, d: Dims, dir: usize, b: usize) -> usize {
        (if self.batch_major { b * d.dirs + dir } else { dir * d.batch + b }) * d.hidden
    }

    fn clip(&self, v: f64) -> f64 {
        match self.clip {
            Some(c) => v.clamp(-(c as f64), c as f64),
            None => v,
        }
    }
}

impl Op for Recurrent {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let x = ty(inputs, X)?;
        if !x.dtype.is_float() {
            unsupported!("{} input", x.dtype);
        }
        let d = self.dims(|i| inputs.get(i).copied().flatten().map(|t| t.ty.shape.clone()))?;
        Ok(self.out_types(d, x.dtype))
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let x = arg(inputs, X)?;
        let d = self.dims(|i| inputs.get(i).copied().flatten().map(|t| t.shape.clone()))?;
        let opt = |i: usize| inputs.get(i).copied().flatten().map(|t| t.to_f64());
        let (xv, wv, rv) = (x.to_f64(), arg(inputs, W)?.to_f64(), arg(inputs, R)?.to_f64());
        let (bv, hv0, cv0, pv) = (opt(B), opt(INIT_H), opt(INIT_C), opt(P));
        let lens: Vec<usize> = match inputs.get(SEQ_LENS).copied().flatten() {
            Some(t) => t.to_i64().iter().map(|&l| l.clamp(0, d.seq as i64) as usize).collect(),
            None => vec![d.seq; d.batch],
        };
        let (g, hs) = (self.cell.gates(), d.hidden);
        let types = self.out_types(d, x.dtype);
        let mut y = vec![0.0; types[0].numel()];
        let mut yh = vec![0.0; types[1].numel()];
        let mut yc = vec![0.0; types[1].numel()];
        for (dir, &rev) in self.reverse.iter().enumerate() {
            let acts = &self.acts[dir * self.cell.n_acts()..][..self.cell.n_acts()];
            let w = &wv[dir * g * hs * d.input..][..g * hs * d.input];
            let r = &rv[dir * g * hs * hs..][..g * hs * hs];
            let bias = |k: usize| bv.as_ref().map_or(0.0, |b| b[dir * 2 * g * hs + k]);
            let peep = |k: usize| pv.as_ref().map_or(0.0, |p| p[dir * 3 * hs + k]);
            for (b, &len) in lens.iter().enumerate() {
                let sr = self.state_row(d, dir, b);
                let mut h: Vec<f64> = (0..hs).map(|j| hv0.as_ref().map_or(0.0, |v| v[sr + j])).collect();
                let mut c: Vec<f64> = (0..hs).map(|j| cv0.as_ref().map_or(0.0, |v| v[sr + j])).collect();
                for s in 0..len {
                    let t = if rev { len - 1 - s } else { s };
                    let xr = &xv[self.x_row(d, t, b)..][..d.input];
                    // x·W[row] + Wb[row] (+ h·R[row] + Rb[row] when `with_r`).
                    let pre = |row: usize, hv: &[f64], with_r: bool| -> f64 {
                        let xw: f64 = xr.iter().zip(&w[row * d.input..]).map(|(a, b)| a * b).sum();
                        let hr: f64 = hv.iter().zip(&r[row * hs..]).map(|(a, b)| a * b).sum();
                        xw + bias(row) + if with_r { hr + bias(g * hs + row) } else { 0.0 }
                    };
                    let new_h: Vec<f64> = match self.cell {
                        Cell::Rnn => (0..hs).map(|j| acts[0].apply(self.clip(pre(j, &h, true)))).collect(),
                        Cell::Lstm { input_forget } => (0..hs)
                            .map(|j| {
                                let i = acts[0].apply(self.clip(pre(j, &h, true) + peep(j) * c[j]));
                                let f = if input_forget {
                                    1.0 - i
                                } else {
                                    acts[0].apply(self.clip(pre(2 * hs + j, &h, true) + peep(2 * hs + j) * c[j]))
                                };
                                let cand = acts[1].apply(self.clip(pre(3 * hs + j, &h, true)));
                                c[j] = f * c[j] + i * cand;
                                let o = acts[0].apply(self.clip(pre(hs + j, &h, true) + peep(hs + j) * c[j]));
                                o * acts[2].apply(c[j])
                            })
                            .collect(),
                        Cell::Gru { linear_before_reset } => {
                            let rg: Vec<f64> =
                                (0..hs).map(|k| acts[0].apply(self.clip(pre(hs + k, &h, true)))).collect();
                            let rh: Vec<f64> = (0..hs).map(|k| rg[k] * h[k]).collect();
                            (0..hs)
                                .map(|j| {
                                    let z = acts[0].apply(self.clip(pre(j, &h, true)));
                                    let row = 2 * hs + j;
                                    let cand_pre = if linear_before_reset {
                                        let hr: f64 = h.iter().zip(&r[row * hs..]).map(|(a, b)| a * b).sum();
                                        pre(row, &h, false) + rg[j] * (hr + bias(g * hs + row))
                                    } else {
                                        pre(row, &rh, true)
                                    };
                                    let cand = acts[1].apply(self.clip(cand_pre));
                                    (1.0 - z) * cand + z * h[j]
                                })
                                .collect()
                        }
                    };
                    h = new_h;
                    y[self.y_row(d, t, dir, b)..][..hs].copy_from_slice(&h);
                }
                yh[sr..sr + hs].copy_from_slice(&h);
                yc[sr..sr + hs].copy_from_slice(&c);
            }
        }
        let mk = |t: &TypeInfo, v: Vec<f64>| Tensor::from_f64(t.dtype, t.shape.clone(), v);
        let mut out = vec![mk(&types[0], y), mk(&types[1], yh)];
        if matches!(self.cell, Cell::Lstm { .. }) {
            out.push(mk(&types[2], yc));
        }
        Ok(out)
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let d = self.dims(|i| cx.inputs.get(i).copied().flatten().map(|t| t.ty.shape.clone()))?;
        let bh = d.batch * d.hidden;
        let temps = vec![
            TempSpec { elems: 2 * d.dirs * bh, phys: crate::Phys::F32 },
            TempSpec { elems: d.dirs * bh, phys: crate::Phys::F32 },
        ];
        let kernels = (0..d.dirs).map(|dir| self.direction_kernel(cx, d, dir)).collect();
        Ok(Lowering::Kernels { temps, kernels })
    }
}

/// WGSL helpers of the recurrent kernels.
const HELPERS: &str = "
fn rnn_tanh(x: f32) -> f32 {
    let e = exp(-2.0 * abs(x));
    return sign(x) * (1.0 - e) / (1.0 + e);
}
";

impl Recurrent {
    /// Whether output `i` exists (omitted outputs reach lowering as empty).
    fn has_output(cx: &LowerCtx, i: usize) -> bool {
        cx.outputs.len() > i && cx.output(i).numel() > 0
    }

    /// WGSL clipping a gate pre-activation.
    fn clip_wgsl(&self, v: &str) -> String {
        match self.clip {
            Some(c) => format!("clamp({v}, {}, {})", f32_lit(-c), f32_lit(c)),
            None => v.to_string(),
        }
    }

    /// The kernel running direction `dir` over all time steps.
    fn direction_kernel(&self, cx: &LowerCtx, d: Dims, dir: usize) -> Kernel {
        let (hs, bh, g) = (d.hidden, d.batch * d.hidden, self.cell.gates());
        let wg = bh.next_power_of_two().clamp(32, 256) as u32;
        let acts = &self.acts[dir * self.cell.n_acts()..][..self.cell.n_acts()];
        let mut args = vec![
            KernelArg::new("x", TensorRef::Input(X)),
            KernelArg::new("w", TensorRef::Input(W)),
            KernelArg::new("r", TensorRef::Input(R)),
            KernelArg::new("hs", TensorRef::Temp(0)),
            KernelArg::new("aux", TensorRef::Temp(1)),
        ];
        let has = |i: usize| cx.has_input(i);
        let mut add = |name: &str, t: TensorRef| args.push(KernelArg::new(name, t));
        if has(B) {
            add("b", TensorRef::Input(B));
        }
        if has(SEQ_LENS) {
            add("sl", TensorRef::Input(SEQ_LENS));
        }
        if has(INIT_H) {
            add("h0", TensorRef::Input(INIT_H));
        }
        let lstm = matches!(self.cell, Cell::Lstm { .. });
        if lstm && has(INIT_C) {
            add("c0", TensorRef::Input(INIT_C));
        }
        if lstm && has(P) {
            add("p", TensorRef::Input(P));
        }
        let outs: Vec<bool> = (0..3).map(|i| Self::has_output(cx, i)).collect();
        for (i, name) in ["y", "yh", "yc"].iter().enumerate() {
            if outs[i] && (i < 2 || lstm) {
                add(name, TensorRef::Output(i));
            }
        }
        let bias = |k: &str| if has(B) { format!("ld_b({}u + {k})", dir * 2 * g * hs) } else { "0.0".into() };
        let peep =
            |k: usize| if lstm && has(P) { format!("ld_p({}u + j)", dir * 3 * hs + k * hs) } else { "0.0".into() };
        // Row-major element offsets of this direction's weights.
        let (w0, r0) = (dir * g * hs * d.input, dir * g * hs * hs);
        let x_row = if self.batch_major {
            format!("(bb * {}u + t) * {}u", d.seq, d.input)
        } else {
            format!("(t * {}u + bb) * {}u", d.batch, d.input)
        };
        let y_row = if self.batch_major {
            format!("((bb * {}u + t) * {}u + {dir}u) * {hs}u", d.seq, d.dirs)
        } else {
            format!("((t * {}u + {dir}u) * {}u + bb) * {hs}u", d.dirs, d.batch)
        };
        let st_row = if self.batch_major {
            format!("(bb * {}u + {dir}u) * {hs}u", d.dirs)
        } else {
            format!("({dir}u * {}u + bb) * {hs}u", d.batch)
        };
        let len = if has(SEQ_LENS) {
            let raw = if cx.input(SEQ_LENS).map(|t| t.dtype.is_signed_int()).unwrap_or(true) {
                "ld_sl(bb)"
            } else {
                "i32(ld_sl(bb))"
            };
            format!("u32(clamp({raw}, 0, {}))", d.seq)
        } else {
            format!("{}u", d.seq)
        };
        let time = if self.reverse[dir] { "len - 1u - s" } else { "s" };
        // Per-unit preamble: batch, unit, length and time of step s.
        let unit = format!(
            "let bb = e / {hs}u;
            let j = e % {hs}u;
            let len = {len};
            let t = select(s, {time}, s < len);"
        );
        // Slots of the hidden-state ping-pong and this direction's aux part.
        let hbase = dir * 2 * bh;
        let aux = dir * bh;
        // Pre-activation of weight row `row` against the hidden vector at
        // `hsrc`, read by `func` (`gate` from the state, `gate_aux` from aux).
        let gate_from = |func: &str, row: &str, hsrc: &str| -> String {
            format!(
                "{func}({row}, xr, {hsrc}, {w0}u, {r0}u) + {} + {}",
                bias(row),
                bias(&format!("{}u + {row}", g * hs))
            )
        };
        let gate = |row: &str, hsrc: &str| gate_from("gate", row, hsrc);
        let step = match self.cell {
            Cell::Rnn => format!("let hn = {};", acts[0].wgsl(&self.clip_wgsl(&gate("j", "hcur")))),
            Cell::Lstm { input_forget } => {
                let f = if input_forget {
                    "1.0 - ig".to_string()
                } else {
                    acts[0].wgsl(&self.clip_wgsl(&format!(
                        "{} + {} * c",
                        gate(&format!("{}u + j", 2 * hs), "hcur"),
                        peep(2)
                    )))
                };
                format!(
                    "let c = ld_aux({aux}u + e);
            let ig = {};
            let fg = {f};
            let cand = {};
            let cn = fg * c + ig * cand;
            st_aux({aux}u + e, cn);
            let og = {};
            let hn = og * {};",
                    acts[0].wgsl(&self.clip_wgsl(&format!("{} + {} * c", gate("j", "hcur"), peep(0)))),
                    acts[1].wgsl(&self.clip_wgsl(&gate(&format!("{}u + j", 3 * hs), "hcur"))),
                    acts[0].wgsl(&self.clip_wgsl(&format!(
                        "{} + {} * cn",
                        gate(&format!("{hs}u + j"), "hcur"),
                        peep(1)
                    ))),
                    acts[2].wgsl("cn"),
                )
            }
            Cell::Gru { linear_before_reset } => {
                let row = format!("{}u + j", 2 * hs);
                let cand_pre = if linear_before_reset {
                    format!(
                        "gate({row}, xr, hcur, {w0}u, {r0}u) - hdot({row}, hcur, {r0}u) + {} + rg * (hdot({row}, hcur, {r0}u) + {})",
                        bias(&row),
                        bias(&format!("{}u + {row}", g * hs))
                    )
                } else {
                    gate_from("gate_aux", &row, "rhv")
                };
                format!(
                    "let z = {};
            let rg = {};
            let cand = {};
            let hn = (1.0 - z) * cand + z * ld_hs(hcur + j);",
                    acts[0].wgsl(&self.clip_wgsl(&gate("j", "hcur"))),
                    acts[0].wgsl(&self.clip_wgsl(&gate(&format!("{hs}u + j"), "hcur"))),
                    acts[1].wgsl(&self.clip_wgsl(&cand_pre)),
                )
            }
        };
        // GRU's first phase: r ⊙ h of every unit into aux.
        let phase1 = match self.cell {
            Cell::Gru { linear_before_reset: false } => format!(
                "for (var e = lid; e < {bh}u; e = e + {wg}u) {{
            {unit}
            if (s < len) {{
                let xr = {x_row};
                let hcur = {hbase}u + (s % 2u) * {bh}u + bb * {hs}u;
                let rg = {};
                st_aux({aux}u + e, rg * ld_hs(hcur + j));
            }}
        }}
        storageBarrier();",
                acts[0].wgsl(&self.clip_wgsl(&gate(&format!("{hs}u + j"), "hcur")))
            ),
            _ => String::new(),
        };
        let init_h = if has(INIT_H) { format!("ld_h0({st_row} + j)") } else { "0.0".into() };
        let init_c = if lstm && has(INIT_C) { format!("ld_c0({st_row} + j)") } else { "0.0".into() };
        let y_store = if outs[0] { format!("st_y({y_row} + j, hn);") } else { String::new() };
        let y_zero = if outs[0] { format!("st_y({y_row} + j, 0.0);") } else { String::new() };
        let mut finish = String::new();
        if outs[1] {
            finish += &format!("st_yh({st_row} + j, ld_hs({hbase}u + {}u + e));\n        ", (d.seq % 2) * bh);
        }
        if lstm && outs[2] {
            finish += &format!("st_yc({st_row} + j, ld_aux({aux}u + e));");
        }
        let body = format!(
            "{HELPERS}
// x·W[row] + h·R[row] for X row `xr` and a hidden vector at `hb` in hs
// (`gate`) or in aux (`gate_aux`).
fn gate(row: u32, xr: u32, hb: u32, w0: u32, r0: u32) -> f32 {{
    var acc = 0.0;
    for (var k = 0u; k < {inp}u; k = k + 1u) {{ acc = acc + ld_x(xr + k) * ld_w(w0 + row * {inp}u + k); }}
    return acc + hdot(row, hb, r0);
}}
fn hdot(row: u32, hb: u32, r0: u32) -> f32 {{
    var acc = 0.0;
    for (var k = 0u; k < {hs}u; k = k + 1u) {{ acc = acc + ld_hs(hb + k) * ld_r(r0 + row * {hs}u + k); }}
    return acc;
}}
fn gate_aux(row: u32, xr: u32, ab: u32, w0: u32, r0: u32) -> f32 {{
    var acc = 0.0;
    for (var k = 0u; k < {inp}u; k = k + 1u) {{ acc = acc + ld_x(xr + k) * ld_w(w0 + row * {inp}u + k); }}
    for (var k = 0u; k < {hs}u; k = k + 1u) {{ acc = acc + ld_aux(ab + k) * ld_r(r0 + row * {hs}u + k); }}
    return acc;
}}
@compute @workgroup_size({wg})
fn main(@builtin(local_invocation_id) lid3: vec3<u32>) {{
    let lid = lid3.x;
    for (var e = lid; e < {bh}u; e = e + {wg}u) {{
        let bb = e / {hs}u;
        let j = e % {hs}u;
        st_hs({hbase}u + e, {init_h});
        st_aux({aux}u + e, {init_c});
    }}
    storageBarrier();
    for (var s = 0u; s < {seq}u; s = s + 1u) {{
        {phase1}
        for (var e = lid; e < {bh}u; e = e + {wg}u) {{
            {unit}
            let hcur = {hbase}u + (s % 2u) * {bh}u + bb * {hs}u;
            let hnext = {hbase}u + ((s + 1u) % 2u) * {bh}u + e;
            if (s < len) {{
                let xr = {x_row};
                let rhv = {aux}u + bb * {hs}u;
                {step}
                st_hs(hnext, hn);
                {y_store}
            }} else {{
                st_hs(hnext, ld_hs(hcur + j));
                {y_zero}
            }}
        }}
        storageBarrier();
    }}
    for (var e = lid; e < {bh}u; e = e + {wg}u) {{
        let bb = e / {hs}u;
        let j = e % {hs}u;
        {finish}
    }}
}}
",
            inp = d.input,
            seq = d.seq,
        );
        Kernel {
            name: format!("{}_dir{dir}", self.kernel_name()),
            args,
            body,
            workgroup_size: [wg, 1, 1],
            workgroups: [1, 1, 1],
            flops: 0,
        }
    }

    fn kernel_name(&self) -> &'static str {
        match self.cell {
            Cell::Rnn => "rnn",
            Cell::Lstm { .. } => "lstm",
            Cell::Gru { .. } => "gru",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Attr;
    use crate::testing::*;

    fn assert_close(got: &[f64], want: &[f64]) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= 1e-5 + 1e-5 * w.abs(), "got {got:?}, want {want:?}");
        }
    }

    // Expected outputs: onnxruntime (CPU) on the same inputs (T=3, B=2, I=2,
    // H=2; sequence_lens [3, 2]).
    const GRU_LBR_Y: [f64; 24] = [
        -0.3383581042289734,
        0.45380908250808716,
        -0.2423790693283081,
        0.4669538736343384,
        -0.12279152125120163,
        -0.7211800217628479,
        0.00029331445693969727,
        -0.7119516730308533,
        -0.16127686202526093,
        0.2031961977481842,
        -0.05477023869752884,
        0.13706034421920776,
        -0.08412505686283112,
        -0.648986279964447,
        0.04850649833679199,
        -0.6866620779037476,
        0.12891395390033722,
        -0.04924575984477997,
        0.0,
        0.0,
        -0.06505615264177322,
        -0.65798020362854,
        0.0,
        0.0,
    ];
    const GRU_LBR_YH: [f64; 8] = [
        0.12891395390033722,
        -0.04924575984477997,
        -0.05477023869752884,
        0.13706034421920776,
        -0.12279152125120163,
        -0.7211800217628479,
        0.00029331445693969727,
        -0.7119516730308533,
    ];
    const GRU_Y: [f64; 12] = [
        0.12598666548728943,
        0.06644219160079956,
        0.17163705825805664,
        -0.00528908334672451,
        0.26992881298065186,
        -0.059245765209198,
        0.35917964577674866,
        -0.1615476906299591,
        0.464707612991333,
        -0.25805145502090454,
        0.5679110884666443,
        -0.36598697304725647,
    ];
    const LSTM_Y: [f64; 12] = [
        0.037316881120204926,
        -0.44604218006134033,
        -0.014779851771891117,
        -0.5471974611282349,
        -0.18679127097129822,
        -0.29154279828071594,
        -0.2722421884536743,
        -0.4944726526737213,
        -0.3281271159648895,
        -0.0432831346988678,
        0.0,
        0.0,
    ];
    const LSTM_YC: [f64; 4] = [0.06502458453178406, -0.7691963911056519, -0.027053654193878174, -1.0796496868133545];
    const RNN_Y: [f64; 12] = [
        0.6591716408729553,
        0.6165680885314941,
        0.6307692527770996,
        0.6023669242858887,
        0.5366045236587524,
        0.5812835693359375,
        0.5124624967575073,
        0.5693764686584473,
        0.5011847019195557,
        0.5669807195663452,
        0.4764225482940674,
        0.5547559261322021,
    ];

    fn run(op: &str, a: Attrs, inputs: &[Option<&Tensor>]) -> Vec<Tensor> {
        build(op, &a, 22).unwrap().eval(inputs).unwrap()
    }

    #[test]
    fn gru_bidirectional_linear_before_reset_with_lengths() {
        let (x, w, r, b) =
            (pattern(vec![3, 2, 2], 0), pattern(vec![2, 6, 2], 1), pattern(vec![2, 6, 2], 2), pattern(vec![2, 12], 3));
        let sl = Tensor::from_i64(DType::I32, vec![2], vec![3, 2]);
        let h0 = pattern(vec![2, 2, 2], 4);
        let a = attrs(vec![
            ("hidden_size", Attr::Int(2)),
            ("direction", Attr::Str("bidirectional".into())),
            ("linear_before_reset", Attr::Int(1)),
        ]);
        let out = run("GRU", a, &[Some(&x), Some(&w), Some(&r), Some(&b), Some(&sl), Some(&h0)]);
        assert_eq!(out[0].shape, vec![3, 2, 2, 2]);
        assert_close(&out[0].to_f64(), &GRU_LBR_Y);
        assert_close(&out[1].to_f64(), &GRU_LBR_YH);
    }

    #[test]
    fn gru_default_reset() {
        let (x, w, r, b) =
            (pattern(vec![3, 2, 2], 0), pattern(vec![1, 6, 2], 1), pattern(vec![1, 6, 2], 2), pattern(vec![1, 12], 3));
        let out = run("GRU", attrs(vec![("hidden_size", Attr::Int(2))]), &[Some(&x), Some(&w), Some(&r), Some(&b)]);
        assert_close(&out[0].to_f64(), &GRU_Y);
    }

    #[test]
    fn lstm_reverse_clip_peepholes_lengths() {
        let (x, w, r, b) =
            (pattern(vec![3, 2, 2], 0), pattern(vec![1, 8, 2], 1), pattern(vec![1, 8, 2], 2), pattern(vec![1, 16], 3));
        let sl = Tensor::from_i64(DType::I32, vec![2], vec![3, 2]);
        let (h0, c0, p) = (pattern(vec![1, 2, 2], 4), pattern(vec![1, 2, 2], 5), pattern(vec![1, 6], 6));
        let a = attrs(vec![
            ("hidden_size", Attr::Int(2)),
            ("direction", Attr::Str("reverse".into())),
            ("clip", Attr::Float(0.8)),
        ]);
        let inputs = [Some(&x), Some(&w), Some(&r), Some(&b), Some(&sl), Some(&h0), Some(&c0), Some(&p)];
        let out = run("LSTM", a, &inputs);
        assert_close(&out[0].to_f64(), &LSTM_Y);
        assert_close(&out[2].to_f64(), &LSTM_YC);
    }

    #[test]
    fn rnn_hard_sigmoid_with_alpha_beta() {
        let (x, w, r) = (pattern(vec![3, 2, 2], 0), pattern(vec![1, 2, 2], 1), pattern(vec![1, 2, 2], 2));
        let a = attrs(vec![
            ("hidden_size", Attr::Int(2)),
            ("activations", Attr::Strs(vec!["HardSigmoid".into()])),
            ("activation_alpha", Attr::Floats(vec![0.3])),
            ("activation_beta", Attr::Floats(vec![0.4])),
        ]);
        let out = run("RNN", a, &[Some(&x), Some(&w), Some(&r)]);
        assert_close(&out[0].to_f64(), &RNN_Y);
    }

    #[test]
    fn layout_one_transposes_batch_and_time() {
        // The same GRU in batch-major layout gives Y transposed (T,D,B,H) -> (B,T,D,H).
        let x = pattern(vec![3, 2, 2], 0);
        let xb: Vec<f64> = (0..12).map(|k| x.to_f64()[((k / 2) % 3 * 2 + k / 6) * 2 + k % 2]).collect();
        let xb = Tensor::from_f64(DType::F32, vec![2, 3, 2], xb);
        let (w, r, b) = (pattern(vec![1, 6, 2], 1), pattern(vec![1, 6, 2], 2), pattern(vec![1, 12], 3));
        let a = attrs(vec![("hidden_size", Attr::Int(2)), ("layout", Attr::Int(1))]);
        let out = run("GRU", a, &[Some(&xb), Some(&w), Some(&r), Some(&b)]);
        assert_eq!(out[0].shape, vec![2, 3, 1, 2]);
        let want: Vec<f64> = (0..12).map(|k| GRU_Y[((k / 2) % 3 * 2 + k / 6) * 2 + k % 2]).collect();
        assert_close(&out[0].to_f64(), &want);
    }
}
