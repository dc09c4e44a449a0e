//! Signal processing: DFT (forward, inverse, one-sided, real or complex
//! input, dft_length), STFT, the Hann / Hamming / Blackman windows and
//! MelWeightMatrix.
//!
//! Complex values are a trailing axis of 2 (real, imaginary); real signals
//! have a trailing axis of 1. Transforms are direct sums, one thread per
//! output bin: the sizes these ops see in models are frame lengths of a few
//! hundred at most, where an O(n) sum per bin is cheap and exact enough.
//! Twiddle angles are reduced as `(k * t) mod n` in integers and then to
//! the first quadrant, so large indices keep full precision and quarter
//! and half turns are exact.
//!
//! An inverse one-sided DFT (irfft) takes the first n/2 + 1 bins of a
//! Hermitian spectrum and returns a real signal: bins other than DC and
//! Nyquist count twice, and their imaginary parts enter with sin.
//!
//! Operands that decide shapes (dft_length, DFT's axis input, STFT's
//! frame_step and frame_length, window sizes, MelWeightMatrix's bin counts)
//! must be compile-time constants; signals, windows, sample rates and band
//! edges are run-time data.

use crate::families::movement::{kernel, map_coords};
use crate::wgsl::{f32_lit, unravel};
use crate::{
    Attrs, DType, Error, Input, KernelArg, LowerCtx, Lowering, Op, Result, Tensor, TensorRef, TypeInfo, arg, bail,
    need_value, norm_axis, numel, ty, unsupported,
};
use std::f64::consts::PI;

/// Builds an op of this family.
pub fn build(op_type: &str, a: &Attrs, opset: i64) -> Result<Box<dyn Op>> {
    let out_dtype = || -> Result<DType> { DType::from_onnx(a.int("output_datatype", 1)? as i32) };
    Ok(match op_type {
        "DFT" => Box::new(Dft {
            inverse: a.int("inverse", 0)? != 0,
            onesided: a.int("onesided", 0)? != 0,
            attr_axis: if opset < 20 { Some(a.int("axis", 1)?) } else { None },
        }),
        "STFT" => Box::new(Stft { onesided: a.int("onesided", 1)? != 0 }),
        "HannWindow" | "HammingWindow" | "BlackmanWindow" => {
            let kind = match op_type {
                "HannWindow" => WindowKind::Hann,
                "HammingWindow" => WindowKind::Hamming,
                _ => WindowKind::Blackman,
            };
            Box::new(Window { kind, periodic: a.int("periodic", 1)? != 0, dtype: out_dtype()? })
        }
        "MelWeightMatrix" => Box::new(MelWeightMatrix { dtype: out_dtype()? }),
        _ => return Err(Error::unsupported(op_type)),
    })
}

/// Reads a constant scalar (or one-element) integer operand.
fn scalar_int(t: &Tensor, what: &str) -> Result<i64> {
    match t.to_i64().as_slice() {
        [v] => Ok(*v),
        v => bail!("{what} must be a scalar, got {} values", v.len()),
    }
}

/// A positive constant size operand.
fn positive(t: &Tensor, what: &str) -> Result<usize> {
    let v = scalar_int(t, what)?;
    if v < 1 {
        bail!("{what} must be positive, got {v}");
    }
    Ok(v as usize)
}

fn need_float(t: &TypeInfo, what: &str) -> Result<()> {
    if t.dtype.is_float() { Ok(()) } else { Err(Error::unsupported(format!("{} {what}", t.dtype))) }
}

/// (cos, sin) of 2π·m/n for m in 0..n, reduced to the first quadrant by
/// symmetry so that the quarter and half turns come out exact: a real
/// signal's DC and Nyquist bins then have an imaginary part of exactly 0.
fn twiddle(m: usize, n: usize) -> (f64, f64) {
    // Angle π·u/n with u = 2m in [0, 2n).
    let mut u = 2 * m;
    let sin_sign = if u > n {
        u = 2 * n - u;
        -1.0
    } else {
        1.0
    };
    let cos_sign = if 2 * u > n {
        u = n - u;
        -1.0
    } else {
        1.0
    };
    let (c, s) =
        if 2 * u == n { (0.0, 1.0) } else { ((PI * u as f64 / n as f64).cos(), (PI * u as f64 / n as f64).sin()) };
    (cos_sign * c, sin_sign * s)
}

/// WGSL of `twiddle`.
const TWIDDLE_WGSL: &str = "
fn twiddle(m: u32, n: u32) -> vec2<f32> {
    var u = 2u * m;
    var ss = 1.0;
    if (u > n) { u = 2u * n - u; ss = -1.0; }
    var cs = 1.0;
    if (2u * u > n) { u = n - u; cs = -1.0; }
    if (2u * u == n) { return vec2<f32>(0.0, ss); }
    let a = 3.14159265358979 * f32(u) / f32(n);
    return vec2<f32>(cs * cos(a), ss * sin(a));
}
";

/// WGSL (cos, sin) of 2π·((a·b) mod n)/n.
fn twiddle_wgsl(a: &str, b: &str, n: usize) -> String {
    format!("twiddle(({a} * {b}) % {n}u, {n}u)")
}

// ---------------------------------------------------------------- DFT

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DftKind {
    Forward,
    Inverse,
    /// Inverse of a one-sided spectrum: a real signal.
    InverseReal,
}

/// DFT along one axis. Before opset 20 the axis is an attribute; from 20
/// it is input 2 (default -2).
#[derive(Debug)]
pub struct Dft {
    inverse: bool,
    onesided: bool,
    attr_axis: Option<i64>,
}

/// A DFT resolved against its input shape.
#[derive(Debug)]
struct DftPlan {
    kind: DftKind,
    outer: usize,
    len_in: usize,
    inner: usize,
    c_in: usize,
    /// Transform length.
    n: usize,
    /// Output bins (or samples) along the axis.
    n_out: usize,
    out_shape: Vec<usize>,
}

impl DftPlan {
    fn c_out(&self) -> usize {
        if self.kind == DftKind::InverseReal { 1 } else { 2 }
    }

    /// Input terms summed per output: the signal (or spectrum) entries that
    /// exist within the transform length.
    fn terms(&self) -> usize {
        match self.kind {
            DftKind::InverseReal => self.len_in.min(self.n / 2 + 1),
            _ => self.len_in.min(self.n),
        }
    }

    /// irfft weight of bin `t`: DC and Nyquist once, others twice.
    fn real_weight(&self, t: usize) -> f64 {
        if t == 0 || 2 * t == self.n { 1.0 } else { 2.0 }
    }
}

impl Dft {
    fn plan(&self, x: &[usize], dft_length: Option<&Tensor>, axis_input: Option<&Tensor>) -> Result<DftPlan> {
        let rank = x.len();
        if rank < 2 || !(x[rank - 1] == 1 || x[rank - 1] == 2) {
            bail!("input of shape {x:?} must end in 1 (real) or 2 (complex)");
        }
        let axis = match (self.attr_axis, axis_input) {
            (Some(a), _) => a,
            (None, Some(t)) => scalar_int(t, "axis")?,
            (None, None) => -2,
        };
        let axis = norm_axis(axis, rank)?;
        if axis == rank - 1 {
            bail!("axis {axis} is the complex axis");
        }
        let len_in = x[axis];
        let kind = match (self.inverse, self.onesided) {
            (false, _) => DftKind::Forward,
            (true, false) => DftKind::Inverse,
            (true, true) => DftKind::InverseReal,
        };
        let n = match dft_length {
            Some(t) => positive(t, "dft_length")?,
            None if kind == DftKind::InverseReal => 2 * len_in.saturating_sub(1),
            None => len_in,
        };
        if n == 0 {
            bail!("transform length is zero for input {x:?}");
        }
        let n_out = if kind == DftKind::Forward && self.onesided { n / 2 + 1 } else { n };
        let mut out_shape = x.to_vec();
        out_shape[axis] = n_out;
        let mut plan = DftPlan {
            kind,
            outer: x[..axis].iter().product(),
            len_in,
            inner: x[axis + 1..rank - 1].iter().product(),
            c_in: x[rank - 1],
            n,
            n_out,
            out_shape,
        };
        plan.out_shape[rank - 1] = plan.c_out();
        Ok(plan)
    }
}

impl Op for Dft {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let x = ty(inputs, 0)?;
        need_float(x, "input")?;
        let len =
            if inputs.get(1).copied().flatten().is_some() { Some(need_value(inputs, 1, "dft_length")?) } else { None };
        let axis = if self.attr_axis.is_none() && inputs.get(2).copied().flatten().is_some() {
            Some(need_value(inputs, 2, "axis")?)
        } else {
            None
        };
        Ok(vec![TypeInfo::new(x.dtype, self.plan(&x.shape, len, axis)?.out_shape)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let x = arg(inputs, 0)?;
        let opt = |i: usize| inputs.get(i).copied().flatten();
        let p = self.plan(&x.shape, opt(1), if self.attr_axis.is_none() { opt(2) } else { None })?;
        let xv = x.to_f64();
        let at = |o: usize, t: usize, i: usize| -> (f64, f64) {
            let e = ((o * p.len_in + t) * p.inner + i) * p.c_in;
            (xv[e], if p.c_in == 2 { xv[e + 1] } else { 0.0 })
        };
        let mut y = Vec::with_capacity(numel(&p.out_shape));
        for o in 0..p.outer {
            for k in 0..p.n_out {
                for i in 0..p.inner {
                    let (mut re, mut im) = (0.0, 0.0);
                    for t in 0..p.terms() {
                        let (a, b) = at(o, t, i);
                        let (cs, sn) = twiddle((k * t) % p.n, p.n);
                        match p.kind {
                            DftKind::Forward => {
                                re += a * cs + b * sn;
                                im += b * cs - a * sn;
                            }
                            DftKind::Inverse => {
                                re += a * cs - b * sn;
                                im += b * cs + a * sn;
                            }
                            DftKind::InverseReal => re += p.real_weight(t) * (a * cs - b * sn),
                        }
                    }
                    let scale = if p.kind == DftKind::Forward { 1.0 } else { 1.0 / p.n as f64 };
                    y.push(re * scale);
                    if p.c_out() == 2 {
                        y.push(im * scale);
                    }
                }
            }
        }
        Ok(vec![Tensor::from_f64(x.dtype, p.out_shape, y)])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let x = cx.input(0)?;
        let len = if cx.has_input(1) { Some(cx.const_input(1, "dft_length")?) } else { None };
        let axis = if self.attr_axis.is_none() && cx.has_input(2) { Some(cx.const_input(2, "axis")?) } else { None };
        let p = self.plan(&x.shape, len, axis)?;
        let imag = if p.c_in == 2 { "ld_x(e + 1u)" } else { "0.0" };
        let tw = twiddle_wgsl("k", "t", p.n);
        let (acc, write) = match p.kind {
            DftKind::Forward => (
                "re = re + a * cs + b * sn;\n        im = im + b * cs - a * sn;",
                "st_y(i * 2u, re);\n    st_y(i * 2u + 1u, im);".to_string(),
            ),
            DftKind::Inverse => (
                "re = re + a * cs - b * sn;\n        im = im + b * cs + a * sn;",
                format!("st_y(i * 2u, re / {n});\n    st_y(i * 2u + 1u, im / {n});", n = f32_lit(p.n as f32)),
            ),
            DftKind::InverseReal => (
                "re = re + select(2.0, 1.0, t == 0u || 2u * t == N) * (a * cs - b * sn);",
                format!("st_y(i, re / {});", f32_lit(p.n as f32)),
            ),
        };
        let acc = acc.replace('N', &format!("{}u", p.n));
        let body = unravel("c", "i", &[p.outer, p.n_out, p.inner])
            + &format!(
                "    let k = c1;
    var re = 0.0;
    var im = 0.0;
    for (var t = 0u; t < {terms}u; t = t + 1u) {{
        let e = ((c0 * {len}u + t) * {inner}u + c2) * {cin}u;
        let a = ld_x(e);
        let b = {imag};
        let tw = {tw};
        let cs = tw.x;
        let sn = tw.y;
        {acc}
    }}
    {write}",
                terms = p.terms(),
                len = p.len_in,
                inner = p.inner,
                cin = p.c_in,
            );
        let n = p.outer * p.n_out * p.inner;
        Ok(Lowering::one(kernel("dft", crate::families::movement::xy_args(), n, TWIDDLE_WGSL, &body)))
    }
}

// ---------------------------------------------------------------- STFT

/// STFT of a (batch x length x 1|2) signal: frames of `frame_length` every
/// `frame_step` samples, times an optional window, each transformed.
#[derive(Debug)]
pub struct Stft {
    onesided: bool,
}

/// An STFT resolved against its inputs.
struct StftPlan {
    batch: usize,
    len: usize,
    c_in: usize,
    step: usize,
    frame: usize,
    frames: usize,
    bins: usize,
}

impl Stft {
    fn plan(
        &self,
        x: &[usize],
        step: &Tensor,
        window: Option<&[usize]>,
        frame_len: Option<&Tensor>,
    ) -> Result<StftPlan> {
        if x.len() != 3 || !(x[2] == 1 || x[2] == 2) {
            bail!("signal of shape {x:?} must be batch x length x 1|2");
        }
        if self.onesided && x[2] == 2 {
            bail!("onesided STFT needs a real signal");
        }
        let step = positive(step, "frame_step")?;
        let frame = match (frame_len, window) {
            (Some(t), w) => {
                let f = positive(t, "frame_length")?;
                if let Some(w) = w
                    && w != [f]
                {
                    bail!("window of shape {w:?} does not match frame_length {f}");
                }
                f
            }
            (None, Some(w)) if w.len() == 1 => w[0],
            (None, Some(w)) => bail!("window must be 1-D, got {w:?}"),
            (None, None) => x[1],
        };
        if frame == 0 || frame > x[1] {
            bail!("frame length {frame} does not fit a signal of {} samples", x[1]);
        }
        let frames = (x[1] - frame) / step + 1;
        let bins = if self.onesided { frame / 2 + 1 } else { frame };
        Ok(StftPlan { batch: x[0], len: x[1], c_in: x[2], step, frame, frames, bins })
    }
}

impl Op for Stft {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let x = ty(inputs, 0)?;
        need_float(x, "signal")?;
        let window = inputs.get(2).copied().flatten().map(|w| w.ty.shape.as_slice());
        let fl = if inputs.get(3).copied().flatten().is_some() {
            Some(need_value(inputs, 3, "frame_length")?)
        } else {
            None
        };
        let p = self.plan(&x.shape, need_value(inputs, 1, "frame_step")?, window, fl)?;
        Ok(vec![TypeInfo::new(x.dtype, vec![p.batch, p.frames, p.bins, 2])])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let x = arg(inputs, 0)?;
        let window = inputs.get(2).copied().flatten();
        let p =
            self.plan(&x.shape, arg(inputs, 1)?, window.map(|w| w.shape.as_slice()), inputs.get(3).copied().flatten())?;
        let (xv, wv) = (x.to_f64(), window.map(|w| w.to_f64()));
        let out = vec![p.batch, p.frames, p.bins];
        let y: Vec<f64> = map_coords(&out, |c| {
            let (mut re, mut im) = (0.0, 0.0);
            for t in 0..p.frame {
                let e = (c[0] * p.len + c[1] * p.step + t) * p.c_in;
                let w = wv.as_ref().map_or(1.0, |w| w[t]);
                let (a, b) = (xv[e] * w, if p.c_in == 2 { xv[e + 1] * w } else { 0.0 });
                let (cs, sn) = twiddle((c[2] * t) % p.frame, p.frame);
                re += a * cs + b * sn;
                im += b * cs - a * sn;
            }
            [re, im]
        })
        .concat();
        Ok(vec![Tensor::from_f64(x.dtype, vec![p.batch, p.frames, p.bins, 2], y)])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let x = cx.input(0)?;
        let window = if cx.has_input(2) { Some(cx.input(2)?.shape.as_slice()) } else { None };
        let fl = if cx.has_input(3) { Some(cx.const_input(3, "frame_length")?) } else { None };
        let p = self.plan(&x.shape, cx.const_input(1, "frame_step")?, window, fl)?;
        let mut args = vec![KernelArg::new("x", TensorRef::Input(0)), KernelArg::new("y", TensorRef::Output(0))];
        let w = if window.is_some() {
            args.push(KernelArg::new("win", TensorRef::Input(2)));
            "ld_win(t)"
        } else {
            "1.0"
        };
        let imag = if p.c_in == 2 { "ld_x(e + 1u) * w" } else { "0.0" };
        let body = unravel("c", "i", &[p.batch, p.frames, p.bins])
            + &format!(
                "    var re = 0.0;
    var im = 0.0;
    for (var t = 0u; t < {frame}u; t = t + 1u) {{
        let e = (c0 * {len}u + c1 * {step}u + t) * {cin}u;
        let w = {w};
        let a = ld_x(e) * w;
        let b = {imag};
        let tw = {tw};
        let cs = tw.x;
        let sn = tw.y;
        re = re + a * cs + b * sn;
        im = im + b * cs - a * sn;
    }}
    st_y(i * 2u, re);
    st_y(i * 2u + 1u, im);",
                frame = p.frame,
                len = p.len,
                step = p.step,
                cin = p.c_in,
                tw = twiddle_wgsl("c2", "t", p.frame),
            );
        Ok(Lowering::one(kernel("stft", args, p.batch * p.frames * p.bins, TWIDDLE_WGSL, &body)))
    }
}

// ---------------------------------------------------------------- windows

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WindowKind {
    Hann,
    Hamming,
    Blackman,
}

/// Hann, Hamming and Blackman windows of a constant size.
#[derive(Debug)]
pub struct Window {
    kind: WindowKind,
    periodic: bool,
    dtype: DType,
}

impl Window {
    /// The cosine-sum coefficients (a0, a1, a2): w = a0 - a1·cos θ + a2·cos 2θ.
    fn coeffs(&self) -> (f64, f64, f64) {
        match self.kind {
            WindowKind::Hann => (0.5, 0.5, 0.0),
            WindowKind::Hamming => (25.0 / 46.0, 21.0 / 46.0, 0.0),
            WindowKind::Blackman => (0.42, 0.5, 0.08),
        }
    }

    /// The period N of θ = 2πn/N.
    fn period(&self, size: usize) -> usize {
        if self.periodic { size } else { size - 1 }
    }
}

impl Op for Window {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let size = positive(need_value(inputs, 0, "size")?, "size")?;
        Ok(vec![TypeInfo::new(self.dtype, vec![size])])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let size = positive(arg(inputs, 0)?, "size")?;
        let (a0, a1, a2) = self.coeffs();
        let n = self.period(size) as f64;
        let y = (0..size)
            .map(|i| {
                let th = 2.0 * PI * i as f64 / n;
                a0 - a1 * th.cos() + a2 * (2.0 * th).cos()
            })
            .collect();
        Ok(vec![Tensor::from_f64(self.dtype, vec![size], y)])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let size = positive(cx.const_input(0, "size")?, "size")?;
        let (a0, a1, a2) = self.coeffs();
        let n = self.period(size);
        let step = f32_lit((2.0 * PI / n as f64) as f32);
        let expr = format!(
            "{} - {} * cos(th) + {} * cos(2.0 * th)",
            f32_lit(a0 as f32),
            f32_lit(a1 as f32),
            f32_lit(a2 as f32)
        );
        let store = match self.dtype.phys() {
            crate::Phys::F32 => "v".to_string(),
            p => format!("{}(v)", p.wgsl()),
        };
        let body = format!("    let th = {step} * f32(i);\n    let v = {expr};\n    st_y(i, {store});");
        let args = vec![KernelArg::new("y", TensorRef::Output(0))];
        Ok(Lowering::one(kernel("window", args, size, "", &body)))
    }
}

// ---------------------------------------------------------------- MelWeightMatrix

/// MelWeightMatrix: triangular mel filters over the one-sided spectrum
/// bins of a DFT, (dft_length / 2 + 1) x num_mel_bins.
#[derive(Debug)]
pub struct MelWeightMatrix {
    dtype: DType,
}

impl MelWeightMatrix {
    fn shape(mels: &Tensor, dft_length: &Tensor) -> Result<(usize, usize)> {
        Ok((positive(dft_length, "dft_length")? / 2 + 1, positive(mels, "num_mel_bins")?))
    }
}

/// Spectrum bin of mel band edge `k` (0..=mels+1), as the reference computes
/// it: edges evenly spaced in mel, mapped back to Hz and floored to a bin.
fn mel_edge(k: usize, mels: usize, dft_length: usize, rate: f64, lo_hz: f64, hi_hz: f64) -> i64 {
    let to_mel = |hz: f64| 2595.0 * (hz / 700.0).ln_1p() / 10f64.ln();
    let (lo, hi) = (to_mel(lo_hz), to_mel(hi_hz));
    let mel = k as f64 * (hi - lo) / (mels + 2) as f64 + lo;
    let hz = 700.0 * (mel / 2595.0 * 10f64.ln()).exp_m1();
    (((dft_length + 1) as f64 * hz) / rate).floor() as i64
}

/// Filter `i`'s weight at spectrum bin `j` for band edges (lo, center, hi).
fn mel_weight(j: i64, lo: i64, c: i64, hi: i64) -> f64 {
    if j == c {
        1.0
    } else if lo < c && (lo..c).contains(&j) {
        (j - lo) as f64 / (c - lo) as f64
    } else if c < j && j < hi {
        (hi - j) as f64 / (hi - c) as f64
    } else {
        0.0
    }
}

const MEL_HELPERS: &str = "
fn mel_edge(k: u32) -> i32 {
    let lo = 2595.0 * log(1.0 + LO_HZ / 700.0) / log(10.0);
    let hi = 2595.0 * log(1.0 + HI_HZ / 700.0) / log(10.0);
    let mel = f32(k) * (hi - lo) / f32(MELS + 2u) + lo;
    let hz = 700.0 * (exp(mel / 2595.0 * log(10.0)) - 1.0);
    return i32(floor(f32(DFT_LEN + 1u) * hz / RATE));
}
";

impl Op for MelWeightMatrix {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let (bins, mels) = Self::shape(need_value(inputs, 0, "num_mel_bins")?, need_value(inputs, 1, "dft_length")?)?;
        for i in 2..5 {
            ty(inputs, i)?;
        }
        Ok(vec![TypeInfo::new(self.dtype, vec![bins, mels])])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let (mels_t, len_t) = (arg(inputs, 0)?, arg(inputs, 1)?);
        let (bins, mels) = Self::shape(mels_t, len_t)?;
        let dft_length = positive(len_t, "dft_length")?;
        let scalar = |i: usize| -> Result<f64> { Ok(arg(inputs, i)?.to_f64().first().copied().unwrap_or(0.0)) };
        let (rate, lo, hi) = (scalar(2)?, scalar(3)?, scalar(4)?);
        let edges: Vec<i64> = (0..mels + 2).map(|k| mel_edge(k, mels, dft_length, rate, lo, hi)).collect();
        let y = map_coords(&[bins, mels], |c| mel_weight(c[0] as i64, edges[c[1]], edges[c[1] + 1], edges[c[1] + 2]));
        Ok(vec![Tensor::from_f64(self.dtype, vec![bins, mels], y)])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let (mels_t, len_t) = (cx.const_input(0, "num_mel_bins")?, cx.const_input(1, "dft_length")?);
        let (bins, mels) = Self::shape(mels_t, len_t)?;
        let dft_length = positive(len_t, "dft_length")?;
        let as_f32 = |i: usize, name: &str| -> Result<String> {
            let t = cx.input(i)?;
            if t.numel() != 1 {
                bail!("{name} must be a scalar");
            }
            Ok(match t.dtype.phys() {
                crate::Phys::F32 => format!("ld_{name}(0u)"),
                _ => format!("f32(ld_{name}(0u))"),
            })
        };
        let helpers = MEL_HELPERS
            .replace("LO_HZ", &as_f32(3, "lo")?)
            .replace("HI_HZ", &as_f32(4, "hi")?)
            .replace("RATE", &as_f32(2, "rate")?)
            .replace("MELS", &mels.to_string())
            .replace("DFT_LEN", &dft_length.to_string());
        let store = match self.dtype.phys() {
            crate::Phys::F32 => "v".to_string(),
            p => format!("{}(v)", p.wgsl()),
        };
        if self.dtype == DType::Bool {
            unsupported!("bool output_datatype");
        }
        let body = unravel("c", "i", &[bins, mels])
            + &format!(
                "    let j = i32(c0);
    let lo = mel_edge(c1);
    let ce = mel_edge(c1 + 1u);
    let hi = mel_edge(c1 + 2u);
    var v = 0.0;
    if (j == ce) {{ v = 1.0; }}
    else if (lo < ce && j >= lo && j < ce) {{ v = f32(j - lo) / f32(ce - lo); }}
    else if (ce < j && j < hi) {{ v = f32(hi - j) / f32(hi - ce); }}
    st_y(i, {store});"
            );
        let args = vec![
            KernelArg::new("rate", TensorRef::Input(2)),
            KernelArg::new("lo", TensorRef::Input(3)),
            KernelArg::new("hi", TensorRef::Input(4)),
            KernelArg::new("y", TensorRef::Output(0)),
        ];
        Ok(Lowering::one(kernel("mel_weight_matrix", args, bins * mels, &helpers, &body)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Attr;
    use crate::testing::*;

    fn int(v: i64) -> Tensor {
        Tensor::from_i64(DType::I64, vec![], vec![v])
    }

    fn run(op: &str, a: Attrs, opset: i64, inputs: &[Option<&Tensor>]) -> Tensor {
        build(op, &a, opset).unwrap().eval(inputs).unwrap().remove(0)
    }

    fn assert_close(got: &Tensor, want: &[f64]) {
        let got = got.to_f64();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= 1e-6 + 1e-5 * w.abs(), "got {got:?}, want {want:?}");
        }
    }

    // Expected outputs: onnx.reference.ReferenceEvaluator on the same inputs.
    const DFT_FWD: [f64; 20] = [
        -2.230769157409668,
        0.0,
        -0.692307710647583,
        -0.09858246892690659,
        -0.692307710647583,
        -1.476357340812683,
        -0.692307710647583,
        1.476357340812683,
        -0.692307710647583,
        0.09858246892690659,
        0.6923077702522278,
        0.0,
        0.307692289352417,
        0.6279601454734802,
        0.30769237875938416,
        1.6013263463974,
        0.30769237875938416,
        -1.6013263463974,
        0.307692289352417,
        -0.6279601454734802,
    ];
    const DFT_RFFT_LEN6: [f64; 16] = [
        -2.230769157409668,
        0.0,
        -0.42307692766189575,
        0.06661728024482727,
        -0.038461506366729736,
        -0.19985204935073853,
        -2.846153974533081,
        -2.0816681711721685e-17,
        0.6923077702522278,
        0.0,
        -0.11538463830947876,
        0.5995560884475708,
        -0.34615379571914673,
        0.3330867290496826,
        2.538461685180664,
        0.0,
    ];
    const DFT_INV_AXIS1: [f64; 16] = [
        -0.38461539149284363,
        0.192307710647583,
        -0.23076921701431274,
        -0.1538461446762085,
        -0.5,
        -0.3076923191547394,
        -0.5,
        0.19230769574642181,
        -0.15384617447853088,
        0.3461538553237915,
        -0.15384617447853088,
        -0.1538461446762085,
        0.19230769574642181,
        2.9802322387695312e-08,
        0.19230769574642181,
        0.5,
    ];
    const DFT_IRFFT: [f64; 18] = [
        1.9868215517249155e-08,
        0.15384617447853088,
        -0.025641005486249924,
        -0.3521038889884949,
        0.1364232748746872,
        0.3809334933757782,
        -0.44411560893058777,
        0.1332346647977829,
        -0.2000986635684967,
        -0.07692308723926544,
        -0.07692309468984604,
        0.25641024112701416,
        0.44411560893058777,
        -0.1332346796989441,
        -0.4665679931640625,
        -0.2632807493209839,
        -0.7518078684806824,
        -0.329651415348053,
    ];
    const STFT: [f64; 18] = [
        1.2544379234313965,
        0.0,
        0.11834319680929184,
        0.2130177617073059,
        -0.6627219915390015,
        0.0,
        -0.6863905191421509,
        0.0,
        -0.0710059255361557,
        0.09467454999685287,
        -0.23668637871742249,
        0.0,
        -1.3964498043060303,
        0.0,
        0.04733728617429733,
        -0.023668646812438965,
        1.4201183319091797,
        0.0,
    ];
    const HANN: [f64; 5] = [0.0, 0.34549152851104736, 0.9045085310935974, 0.9045084714889526, 0.3454914391040802];
    const HAMMING_SYM: [f64; 5] = [0.08695652335882187, 0.5434783101081848, 1.0, 0.54347825050354, 0.08695652335882187];
    const BLACKMAN: [f64; 6] =
        [0.0, 0.12999999523162842, 0.6299999952316284, 1.0, 0.6299999952316284, 0.12999999523162842];
    const MEL: [f64; 68] = [
        0.0,
        0.0,
        0.0,
        0.0,
        0.5,
        0.0,
        0.0,
        0.0,
        1.0,
        0.0,
        0.0,
        0.0,
        0.5,
        0.5,
        0.0,
        0.0,
        0.0,
        1.0,
        0.0,
        0.0,
        0.0,
        0.5,
        0.5,
        0.0,
        0.0,
        0.0,
        1.0,
        0.0,
        0.0,
        0.0,
        0.6666666865348816,
        0.3333333432674408,
        0.0,
        0.0,
        0.3333333432674408,
        0.6666666865348816,
        0.0,
        0.0,
        0.0,
        1.0,
        0.0,
        0.0,
        0.0,
        0.5,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
    ];

    #[test]
    fn dft_forward_and_onesided_with_length() {
        let x = pattern(vec![2, 5, 1], 0);
        let y = run("DFT", Attrs::default(), 20, &[Some(&x), None, Some(&int(1))]);
        assert_eq!(y.shape, vec![2, 5, 2]);
        assert_close(&y, &DFT_FWD);
        // Opset 17 takes the axis as an attribute; dft_length 6 zero-pads.
        let a = attrs(vec![("axis", Attr::Int(1)), ("onesided", Attr::Int(1))]);
        let y = run("DFT", a, 17, &[Some(&x), Some(&int(6))]);
        assert_eq!(y.shape, vec![2, 4, 2]);
        assert_close(&y, &DFT_RFFT_LEN6);
    }

    #[test]
    fn dft_inverse_complex_and_real() {
        let x = pattern(vec![1, 4, 2, 2], 1);
        let inv = attrs(vec![("inverse", Attr::Int(1))]);
        let y = run("DFT", inv, 20, &[Some(&x), None, Some(&int(1))]);
        assert_close(&y, &DFT_INV_AXIS1);
        // irfft: 4 one-sided bins give 6 real samples.
        let x = pattern(vec![1, 4, 3, 2], 2);
        let a = attrs(vec![("inverse", Attr::Int(1)), ("onesided", Attr::Int(1))]);
        let y = run("DFT", a, 20, &[Some(&x), None, Some(&int(1))]);
        assert_eq!(y.shape, vec![1, 6, 3, 1]);
        assert_close(&y, &DFT_IRFFT);
    }

    #[test]
    fn stft_with_window() {
        let (sig, win) = (pattern(vec![1, 12, 1], 3), pattern(vec![4], 4));
        let y = run("STFT", Attrs::default(), 17, &[Some(&sig), Some(&int(3)), Some(&win)]);
        assert_eq!(y.shape, vec![1, 3, 3, 2]);
        assert_close(&y, &STFT);
    }

    #[test]
    fn windows() {
        let size = |n: i64| Tensor::from_i64(DType::I32, vec![], vec![n]);
        assert_close(&run("HannWindow", Attrs::default(), 17, &[Some(&size(5))]), &HANN);
        let sym = attrs(vec![("periodic", Attr::Int(0))]);
        assert_close(&run("HammingWindow", sym, 17, &[Some(&size(5))]), &HAMMING_SYM);
        assert_close(&run("BlackmanWindow", Attrs::default(), 17, &[Some(&size(6))]), &BLACKMAN);
    }

    #[test]
    fn mel_weight_matrix() {
        let i32s = |v: i64| Tensor::from_i64(DType::I32, vec![], vec![v]);
        let f = |v: f32| Tensor::from_f32(vec![], vec![v]);
        let (mels, len, rate, lo, hi) = (i32s(4), i32s(32), i32s(1000), f(10.0), f(450.0));
        let y =
            run("MelWeightMatrix", Attrs::default(), 17, &[Some(&mels), Some(&len), Some(&rate), Some(&lo), Some(&hi)]);
        assert_eq!(y.shape, vec![17, 4]);
        assert_close(&y, &MEL);
    }
}
