//! Resize (opsets 10, 11, 13, 18, 19) and the deprecated Upsample (scales as
//! attribute or input): nearest (every nearest_mode), n-D linear and cubic
//! (cubic_coeff_a, exclude_outside, antialias), every
//! coordinate_transformation_mode including tf_crop_and_resize with roi and
//! extrapolation_value, scales or sizes, axes and keep_aspect_ratio_policy.
//!
//! Design: resizing is separable, and with static shapes each axis's
//! mapping (output coordinate → a fixed number of input taps with weights)
//! is known at compile time. It is computed once on the CPU in f64,
//! mirroring onnx's reference step for step, so that rounding decisions of
//! nearest modes (which f32 arithmetic on the GPU could flip) are exact.
//! The kernel reads those per-axis tables as WGSL constant arrays and sums
//! the product of the axes' weights over the taps (a single gather when
//! every axis has one unit-weight tap, which also serves integer tensors).
//! Axes the reference leaves alone (scale 1, same size, trivial roi) cost
//! nothing.

use crate::wgsl::{f32_lit, kernel_1d, strides, unravel};
use crate::{
    Attrs, Error, Input, KernelArg, LowerCtx, Lowering, Op, Phys, Result, TempSpec, Tensor, TensorRef, TypeInfo, arg,
    bail, norm_axis, ty,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Nearest,
    Linear,
    Cubic,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coord {
    HalfPixel,
    HalfPixelSymmetric,
    PytorchHalfPixel,
    AlignCorners,
    Asymmetric,
    TfHalfPixelForNn,
    TfCropAndResize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nearest {
    RoundPreferFloor,
    RoundPreferCeil,
    Floor,
    Ceil,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    Stretch,
    NotLarger,
    NotSmaller,
}

/// Where the op finds its scales / sizes / roi.
#[derive(Clone, Debug, PartialEq)]
pub enum Operands {
    /// Resize-10 and Upsample-9: X, scales.
    Scales,
    /// Resize-11+: X, roi, scales, sizes.
    Full,
    /// Upsample-7: scales attribute.
    Attr(Vec<f32>),
}

#[derive(Debug)]
pub struct Resize {
    pub mode: Mode,
    pub coord: Coord,
    pub nearest: Nearest,
    pub cubic_a: f64,
    pub exclude_outside: bool,
    pub extrapolation: f32,
    pub antialias: bool,
    pub axes: Option<Vec<i64>>,
    pub policy: Policy,
    pub operands: Operands,
}

/// One axis's mapping: output coordinate `o` reads input indices
/// `idx[o * taps + t]` (clamped) with weights `w[o * taps + t]`; `extrap[o]`
/// marks coordinates outside a tf_crop_and_resize roi.
#[derive(Clone, Debug, PartialEq)]
struct AxisMap {
    taps: usize,
    idx: Vec<usize>,
    w: Vec<f64>,
    extrap: Vec<bool>,
}

impl AxisMap {
    /// Whether every coordinate reads one input with weight 1.
    fn is_gather(&self) -> bool {
        self.taps == 1 && self.w.iter().all(|&w| w == 1.0)
    }

    /// Shrinks a nearest-mode map (one-hot weights) to one tap.
    fn compact(self) -> AxisMap {
        if self.taps == 1 {
            return self;
        }
        let outs = self.extrap.len();
        let mut idx = Vec::with_capacity(outs);
        for o in 0..outs {
            let row = &self.w[o * self.taps..(o + 1) * self.taps];
            let ones: Vec<usize> = (0..self.taps).filter(|&t| row[t] == 1.0).collect();
            if ones.len() != 1 || row.iter().any(|&w| w != 0.0 && w != 1.0) {
                return self;
            }
            idx.push(self.idx[o * self.taps + ones[0]]);
        }
        AxisMap { taps: 1, w: vec![1.0; outs], idx, extrap: self.extrap }
    }
}

/// The whole resize: output shape and a map per axis (None: identity).
#[derive(Debug)]
struct Plan {
    out_shape: Vec<usize>,
    maps: Vec<Option<AxisMap>>,
}

/// Values of the operands (None where absent or empty).
struct Given {
    roi: Option<Vec<f32>>,
    scales: Option<Vec<f32>>,
    sizes: Option<Vec<i64>>,
}

fn nearest_coeffs(ratio: f64, mode: Nearest) -> Vec<f64> {
    let b = |v: bool| v as i64 as f64;
    if ratio.fract() == 0.0 {
        return vec![0.0, 1.0];
    }
    match mode {
        Nearest::RoundPreferFloor => vec![b(ratio <= 0.5), b(ratio > 0.5)],
        Nearest::RoundPreferCeil => vec![b(ratio < 0.5), b(ratio >= 0.5)],
        Nearest::Floor => vec![1.0, 0.0],
        Nearest::Ceil => vec![0.0, 1.0],
    }
}

fn cubic_coeffs(r: f64, a: f64) -> Vec<f64> {
    let s = 1.0 - r;
    vec![
        ((a * (r + 1.0) - 5.0 * a) * (r + 1.0) + 8.0 * a) * (r + 1.0) - 4.0 * a,
        ((a + 2.0) * r - (a + 3.0)) * r * r + 1.0,
        ((a + 2.0) * s - (a + 3.0)) * s * s + 1.0,
        ((a * (s + 1.0) - 5.0 * a) * (s + 1.0) + 8.0 * a) * (s + 1.0) - 4.0 * a,
    ]
}

fn cubic_coeffs_antialias(r: f64, scale: f64, a: f64) -> Vec<f64> {
    let scale = scale.min(1.0);
    let k = |x: f64| {
        let x = x.abs();
        let (x2, x3) = (x * x, x * x * x);
        if x <= 1.0 {
            (a + 2.0) * x3 - (a + 3.0) * x2 + 1.0
        } else if x < 2.0 {
            a * x3 - 5.0 * a * x2 + 8.0 * a * x - 4.0 * a
        } else {
            0.0
        }
    };
    let start = (-2.0 / scale).floor() as i64 + 1;
    let c: Vec<f64> = (start..2 - start).map(|i| k(scale * (i as f64 - r))).collect();
    let sum: f64 = c.iter().sum();
    c.iter().map(|v| v / sum).collect()
}

fn linear_coeffs_antialias(r: f64, scale: f64) -> Vec<f64> {
    let scale = scale.min(1.0);
    let start = (-1.0 / scale).floor() as i64 + 1;
    let footprint = 2 - 2 * start;
    let c: Vec<f64> =
        (start..start + footprint).map(|i| (1.0 - ((i as f64 - r) * scale).abs()).clamp(0.0, 1.0)).collect();
    let sum: f64 = c.iter().sum();
    c.iter().map(|v| v / sum).collect()
}

impl Resize {
    fn coeffs(&self, ratio: f64, scale: f64) -> Vec<f64> {
        match (self.mode, self.antialias) {
            (Mode::Nearest, _) => nearest_coeffs(ratio, self.nearest),
            (Mode::Linear, false) => vec![1.0 - ratio, ratio],
            (Mode::Linear, true) => linear_coeffs_antialias(ratio, scale),
            (Mode::Cubic, false) => cubic_coeffs(ratio, self.cubic_a),
            (Mode::Cubic, true) => cubic_coeffs_antialias(ratio, scale, self.cubic_a),
        }
    }

    /// Source coordinate of output coordinate `y` (onnx's `_compute_x_ori`).
    fn x_ori(&self, y: f64, scale: f64, in_w: usize, out_w: f64, out_int: usize, roi: (f32, f32)) -> f64 {
        let inw = in_w as f64;
        match self.coord {
            Coord::AlignCorners => {
                if out_w == 1.0 {
                    0.0
                } else {
                    y * (inw - 1.0) / (out_w - 1.0)
                }
            }
            Coord::Asymmetric => y / scale,
            Coord::TfHalfPixelForNn => (y + 0.5) / scale,
            Coord::TfCropAndResize => {
                // roi values are float32 in the reference; keep its mix of widths.
                let span = roi.1 - roi.0;
                let x = if out_w == 1.0 {
                    (span * (in_w as f32 - 1.0) / 2.0) as f64
                } else {
                    y * span as f64 * (inw - 1.0) / (out_w - 1.0)
                };
                x + (roi.0 * (in_w as f32 - 1.0)) as f64
            }
            Coord::PytorchHalfPixel => {
                if out_w == 1.0 {
                    -0.5
                } else {
                    (y + 0.5) / scale - 0.5
                }
            }
            Coord::HalfPixel => (y + 0.5) / scale - 0.5,
            Coord::HalfPixelSymmetric => {
                let adjustment = out_int as f64 / out_w;
                let offset = inw / 2.0 * (1.0 - adjustment);
                offset + (y + 0.5) / scale - 0.5
            }
        }
    }

    /// One axis's map (onnx's `_interpolate_1d_along_axis`).
    fn axis_map(&self, in_w: usize, out_int: usize, scale: f64, roi: (f32, f32)) -> AxisMap {
        let out_w = scale * in_w as f64;
        let taps = self.coeffs(0.5, scale).len();
        let (mut idx, mut w, mut extrap) = (vec![], vec![], vec![]);
        for y in 0..out_int {
            let x = self.x_ori(y as f64, scale, in_w, out_w, out_int, roi);
            extrap.push(self.coord == Coord::TfCropAndResize && (x < 0.0 || x > in_w as f64 - 1.0));
            let ratio = if x == x.floor() { 1.0 } else { x - x.floor() };
            let mut c = self.coeffs(ratio, scale);
            let n = c.len() as i64;
            let pad = (n + 1) / 2;
            let xp = x + pad as f64;
            let p = xp.floor() as i64;
            let frac = xp - p as f64;
            let off = if n % 2 == 0 {
                if frac == 0.0 { -(n / 2) } else { -(n / 2) + 1 }
            } else if frac <= 0.5 {
                -((n - 1) / 2)
            } else {
                -((n - 1) / 2) + 1
            };
            let start = p + off - pad;
            if self.exclude_outside {
                for (t, cv) in c.iter_mut().enumerate() {
                    let k = start + t as i64;
                    if k < 0 || k >= in_w as i64 {
                        *cv = 0.0;
                    }
                }
                let sum: f64 = c.iter().sum();
                let sum = if sum == 0.0 { 1.0 } else { sum };
                c.iter_mut().for_each(|v| *v /= sum);
            }
            for (t, cv) in c.iter().enumerate() {
                idx.push((start + t as i64).clamp(0, in_w as i64 - 1).max(0) as usize);
                w.push(*cv);
            }
        }
        AxisMap { taps, idx, w, extrap }.compact()
    }

    /// Output shape and per-axis maps (onnx's `_interpolate_nd`).
    fn plan(&self, shape: &[usize], g: &Given) -> Result<Plan> {
        let r = shape.len();
        let axes: Vec<usize> = match &self.axes {
            Some(a) => a.iter().map(|&v| norm_axis(v, r)).collect::<Result<_>>()?,
            None => (0..r).collect(),
        };
        let mut scales = vec![1.0f64; r];
        let mut out = shape.to_vec();
        if let Some(s) = &g.scales {
            if s.len() != axes.len() {
                bail!("scales has {} values for {} axes", s.len(), axes.len());
            }
            for (&d, &v) in axes.iter().zip(s) {
                if v.is_nan() || v <= 0.0 {
                    bail!("scales must be positive, got {v}");
                }
                scales[d] = v as f64;
                out[d] = (v as f64 * shape[d] as f64) as usize;
            }
        } else if let Some(sz) = &g.sizes {
            if sz.len() != axes.len() {
                bail!("sizes has {} values for {} axes", sz.len(), axes.len());
            }
            for (&d, &v) in axes.iter().zip(sz) {
                if v < 0 {
                    bail!("sizes must be non-negative, got {v}");
                }
                out[d] = v as usize;
                scales[d] = v as f64 / shape[d] as f64;
            }
            if self.policy != Policy::Stretch {
                let it = axes.iter().map(|&d| scales[d]);
                let s = if self.policy == Policy::NotLarger {
                    it.fold(f64::INFINITY, f64::min)
                } else {
                    it.fold(f64::NEG_INFINITY, f64::max)
                };
                for &d in &axes {
                    scales[d] = s;
                    out[d] = (s * shape[d] as f64 + 0.5) as usize;
                }
            }
        } else {
            bail!("one of scales and sizes must be given");
        }
        let mut rois = vec![(0.0f32, 1.0f32); r];
        if let Some(roi) = &g.roi {
            let k = roi.len() / 2;
            if roi.len() % 2 != 0 || (k != axes.len() && k != r) {
                bail!("roi has {} values, expected {}", roi.len(), 2 * axes.len());
            }
            let target: Vec<usize> = if k == axes.len() { axes.clone() } else { (0..r).collect() };
            for (i, &d) in target.iter().enumerate() {
                rois[d] = (roi[i], roi[k + i]);
            }
        } else if self.coord == Coord::TfCropAndResize {
            bail!("tf_crop_and_resize needs a roi");
        }
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(b.abs());
        let maps = (0..r)
            .map(|d| {
                let (s, e) = rois[d];
                let trivial = g.roi.is_none() || (close(s as f64, 0.0) && close(e as f64, 1.0));
                if !axes.contains(&d) || (close(scales[d], 1.0) && out[d] == shape[d] && trivial) {
                    return None;
                }
                Some(self.axis_map(shape[d], out[d], scales[d], rois[d]))
            })
            .collect();
        Ok(Plan { out_shape: out, maps })
    }

    /// Reads the operands through `get(i)`: None where absent, Some(None)
    /// where present but unknown. Empty tensors count as absent.
    fn given<'a>(&self, get: impl Fn(usize) -> Option<Option<&'a Tensor>>) -> Result<Given> {
        let read = |i: usize, what: &str| -> Result<Option<&'a Tensor>> {
            match get(i) {
                None => Ok(None),
                Some(Some(t)) => Ok(if t.is_empty() { None } else { Some(t) }),
                Some(None) => Err(Error::needs_value(i, what)),
            }
        };
        let f32s = |t: &Tensor| t.to_f64().iter().map(|&v| v as f32).collect::<Vec<f32>>();
        Ok(match &self.operands {
            Operands::Attr(s) => Given { roi: None, scales: Some(s.clone()), sizes: None },
            Operands::Scales => Given { roi: None, scales: read(1, "scales")?.map(f32s), sizes: None },
            Operands::Full => {
                let roi = if self.coord == Coord::TfCropAndResize { read(1, "roi")?.map(f32s) } else { None };
                let scales = read(2, "scales")?.map(f32s);
                let sizes = if scales.is_none() { read(3, "sizes")?.map(|t| t.to_i64()) } else { None };
                Given { roi, scales, sizes }
            }
        })
    }
}

/// Applies one axis's map to a row-major f64 array (CPU reference).
fn apply_axis(data: &[f64], shape: &mut [usize], d: usize, m: &AxisMap, extrap: f64) -> Vec<f64> {
    let outer: usize = shape[..d].iter().product();
    let inner: usize = shape[d + 1..].iter().product();
    let (n_in, n_out) = (shape[d], m.extrap.len());
    let mut out = vec![0.0; outer * n_out * inner];
    for a in 0..outer {
        for o in 0..n_out {
            for b in 0..inner {
                out[(a * n_out + o) * inner + b] = if m.extrap[o] {
                    extrap
                } else {
                    (0..m.taps)
                        .map(|t| m.w[o * m.taps + t] * data[(a * n_in + m.idx[o * m.taps + t]) * inner + b])
                        .sum()
                };
            }
        }
    }
    shape[d] = n_out;
    out
}

/// Values of the per-axis tables, laid out in two scratch tensors: u32
/// words (input indices, extrapolation flags) and f32 weights.
#[derive(Default)]
struct Tables {
    words: Vec<u32>,
    weights: Vec<f32>,
}

impl Tables {
    fn push_words(&mut self, v: impl Iterator<Item = u32>) -> usize {
        let at = self.words.len();
        self.words.extend(v);
        at
    }

    fn push_weights(&mut self, v: impl Iterator<Item = f32>) -> usize {
        let at = self.weights.len();
        self.weights.extend(v);
        at
    }
}

/// WGSL function `name(k: u32) -> ty` returning `vals[k]`, as a switch
/// with equal values sharing a case (tables repeat a lot).
fn switch_fn(name: &str, ty: &str, vals: &[String]) -> String {
    let mut groups: Vec<(&String, Vec<usize>)> = vec![];
    let mut seen = std::collections::HashMap::new();
    for (k, v) in vals.iter().enumerate() {
        let g = *seen.entry(v).or_insert_with(|| {
            groups.push((v, vec![]));
            groups.len() - 1
        });
        groups[g].1.push(k);
    }
    let mut out = format!("fn {name}(k: u32) -> {ty} {{\n    switch k {{\n");
    // The most common value is the default case.
    let common = (0..groups.len()).max_by_key(|&g| groups[g].1.len());
    for (g, (v, keys)) in groups.iter().enumerate() {
        if Some(g) == common {
            continue;
        }
        let keys: Vec<String> = keys.iter().map(|k| format!("{k}u")).collect();
        out += &format!("        case {}: {{ return {v}; }}\n", keys.join(", "));
    }
    let default = common.map_or_else(|| format!("{ty}()"), |g| groups[g].0.clone());
    out += &format!("        default: {{ return {default}; }}\n    }}\n}}\n");
    out
}

impl Op for Resize {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let x = ty(inputs, 0)?;
        let g = self.given(|i| inputs.get(i).copied().flatten().map(|inp| inp.value))?;
        let plan = self.plan(&x.shape, &g)?;
        if self.mode != Mode::Nearest && !x.dtype.is_float() {
            return Err(Error::unsupported(format!("{:?} resize of {}", self.mode, x.dtype)));
        }
        Ok(vec![TypeInfo::new(x.dtype, plan.out_shape)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let x = arg(inputs, 0)?;
        let g = self.given(|i| inputs.get(i).copied().flatten().map(Some))?;
        let plan = self.plan(&x.shape, &g)?;
        if self.mode != Mode::Nearest && !x.dtype.is_float() {
            return Err(Error::unsupported(format!("{:?} resize of {}", self.mode, x.dtype)));
        }
        let mut shape = x.shape.clone();
        let mut data = x.to_f64();
        for (d, m) in plan.maps.iter().enumerate() {
            if let Some(m) = m {
                data = apply_axis(&data, &mut shape, d, m, self.extrapolation as f64);
            }
        }
        if x.dtype.is_float() {
            Ok(vec![Tensor::from_f64(x.dtype, shape, data)])
        } else {
            Ok(vec![Tensor::from_i64(x.dtype, shape, data.iter().map(|&v| v as i64).collect())])
        }
    }

    /// Two kernels: one writes the per-axis tables into scratch tensors
    /// (WGSL constant arrays indexed at run time get copied per invocation
    /// by some drivers), the other resizes reading them.
    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let x = cx.input(0)?;
        let g = self.given(|i| cx.inputs.get(i).copied().flatten().map(|inp| inp.value))?;
        let plan = self.plan(&x.shape, &g)?;
        let out = &plan.out_shape;
        let n = out.iter().product::<usize>();
        let mut args = vec![KernelArg::new("x", TensorRef::Input(0)), KernelArg::new("y", TensorRef::Output(0))];
        if n == 0 {
            return Ok(Lowering::one(kernel_1d("resize", args, 0, "", "")));
        }
        let st = strides(&x.shape);
        let gather = plan.maps.iter().flatten().all(AxisMap::is_gather);
        if !gather && !x.dtype.is_float() {
            return Err(Error::unsupported(format!("{:?} resize of {}", self.mode, x.dtype)));
        }
        let mut tabs = Tables::default();
        let mut body = unravel("c", "i", out);
        let mut fixed = vec![]; // index terms of identity and one-tap axes
        let mut extrap = vec![];
        let mut loops = vec![]; // (axis, taps, index table offset, weight table offset)
        for (d, m) in plan.maps.iter().enumerate() {
            let Some(m) = m else {
                fixed.push(format!("c{d} * {}u", st[d]));
                continue;
            };
            let at = tabs.push_words(m.idx.iter().map(|&v| v as u32));
            if m.extrap.iter().any(|&e| e) {
                let e = tabs.push_words(m.extrap.iter().map(|&e| e as u32));
                extrap.push(format!("ld_tu({e}u + c{d}) != 0u"));
            }
            if m.is_gather() {
                fixed.push(format!("ld_tu({at}u + c{d}) * {}u", st[d]));
            } else {
                let wat = tabs.push_weights(m.w.iter().map(|&v| v as f32));
                loops.push((d, m.taps, at, wat));
            }
        }
        if !extrap.is_empty() {
            body +=
                &format!("    if ({}) {{ st_y(i, {}); return; }}\n", extrap.join(" || "), f32_lit(self.extrapolation));
        }
        let fixed_sum = if fixed.is_empty() { "0u".to_string() } else { fixed.join(" + ") };
        if loops.is_empty() {
            body += &format!("    st_y(i, ld_x({fixed_sum}));\n");
        } else {
            body += &format!("    let off = {fixed_sum};\n    var acc = 0.0;\n");
            let mut indent = "    ".to_string();
            let (mut wexpr, mut iexpr) = (vec![], vec!["off".to_string()]);
            for &(d, taps, at, wat) in &loops {
                body += &format!(
                    "{indent}for (var t{d} = 0u; t{d} < {taps}u; t{d} = t{d} + 1u) {{\n{indent}    let k{d} = c{d} * {taps}u + t{d};\n"
                );
                indent += "    ";
                wexpr.push(format!("ld_tw({wat}u + k{d})"));
                iexpr.push(format!("ld_tu({at}u + k{d}) * {}u", st[d]));
            }
            body += &format!("{indent}acc = acc + {} * ld_x({});\n", wexpr.join(" * "), iexpr.join(" + "));
            for _ in &loops {
                indent.truncate(indent.len() - 4);
                body += &format!("{indent}}}\n");
            }
            body += "    st_y(i, acc);\n";
        }
        let (nu, nw) = (tabs.words.len(), tabs.weights.len());
        if nu == 0 {
            // Every axis is the identity: a plain copy.
            return Ok(Lowering::one(kernel_1d("resize", args, n, "", &body)));
        }
        let words: Vec<String> = tabs.words.iter().map(|v| format!("{v}u")).collect();
        let mut helpers = switch_fn("tab_u", "u32", &words);
        let mut fill = format!("    if (i < {nu}u) {{ st_tu(i, tab_u(i)); }}\n");
        let mut fill_args = vec![KernelArg::new("tu", TensorRef::Temp(0))];
        let mut temps = vec![TempSpec { elems: nu, phys: Phys::U32 }];
        args.push(KernelArg::new("tu", TensorRef::Temp(0)));
        if nw > 0 {
            let ws: Vec<String> = tabs.weights.iter().map(|&v| f32_lit(v)).collect();
            helpers += &switch_fn("tab_w", "f32", &ws);
            fill += &format!("    if (i < {nw}u) {{ st_tw(i, tab_w(i)); }}\n");
            fill_args.push(KernelArg::new("tw", TensorRef::Temp(1)));
            temps.push(TempSpec { elems: nw, phys: Phys::F32 });
            args.push(KernelArg::new("tw", TensorRef::Temp(1)));
        }
        let kernels = vec![
            kernel_1d("resize_tables", fill_args, nu.max(nw), &helpers, &fill),
            kernel_1d("resize", args, n, "", &body),
        ];
        Ok(Lowering::Kernels { temps, kernels })
    }
}

fn parse_coord(s: &str) -> Result<Coord> {
    Ok(match s {
        "half_pixel" => Coord::HalfPixel,
        "half_pixel_symmetric" => Coord::HalfPixelSymmetric,
        "pytorch_half_pixel" => Coord::PytorchHalfPixel,
        "align_corners" => Coord::AlignCorners,
        "asymmetric" => Coord::Asymmetric,
        "tf_half_pixel_for_nn" => Coord::TfHalfPixelForNn,
        "tf_crop_and_resize" => Coord::TfCropAndResize,
        _ => return Err(Error::unsupported(format!("coordinate_transformation_mode '{s}'"))),
    })
}

fn parse_mode(s: &str) -> Result<Mode> {
    Ok(match s {
        "nearest" => Mode::Nearest,
        "linear" | "bilinear" | "trilinear" => Mode::Linear,
        "cubic" => Mode::Cubic,
        _ => return Err(Error::unsupported(format!("mode '{s}'"))),
    })
}

/// Builds Resize or Upsample. Resize-10 and Upsample use asymmetric
/// coordinates and floor rounding (what onnx's 10→11 converter spells out).
pub fn build(op_type: &str, a: &Attrs, opset: i64) -> Result<Box<dyn Op>> {
    let mode = parse_mode(a.str("mode", "nearest")?)?;
    let legacy = |operands| -> Result<Box<dyn Op>> {
        Ok(Box::new(Resize {
            mode,
            coord: Coord::Asymmetric,
            nearest: Nearest::Floor,
            cubic_a: -0.75,
            exclude_outside: false,
            extrapolation: 0.0,
            antialias: false,
            axes: None,
            policy: Policy::Stretch,
            operands,
        }))
    };
    match op_type {
        "Upsample" if opset < 7 => Err(Error::unsupported("Upsample-1 (height_scale / width_scale attributes)")),
        "Upsample" if opset < 9 => match a.floats_opt("scales")? {
            Some(s) => legacy(Operands::Attr(s.to_vec())),
            None if a.0.is_empty() => legacy(Operands::Attr(vec![])),
            None => bail!("attribute 'scales' is required"),
        },
        "Upsample" => legacy(Operands::Scales),
        "Resize" if opset < 11 => legacy(Operands::Scales),
        "Resize" => {
            let nearest = match a.str("nearest_mode", "round_prefer_floor")? {
                "round_prefer_floor" => Nearest::RoundPreferFloor,
                "round_prefer_ceil" => Nearest::RoundPreferCeil,
                "floor" => Nearest::Floor,
                "ceil" => Nearest::Ceil,
                s => return Err(Error::unsupported(format!("nearest_mode '{s}'"))),
            };
            let policy = match a.str("keep_aspect_ratio_policy", "stretch")? {
                "stretch" => Policy::Stretch,
                "not_larger" => Policy::NotLarger,
                "not_smaller" => Policy::NotSmaller,
                s => return Err(Error::unsupported(format!("keep_aspect_ratio_policy '{s}'"))),
            };
            let antialias = a.int("antialias", 0)? != 0;
            if antialias && mode == Mode::Nearest {
                bail!("antialias is not defined for nearest mode");
            }
            Ok(Box::new(Resize {
                mode,
                coord: parse_coord(a.str("coordinate_transformation_mode", "half_pixel")?)?,
                nearest,
                cubic_a: a.float("cubic_coeff_a", -0.75)? as f64,
                exclude_outside: a.int("exclude_outside", 0)? != 0,
                extrapolation: a.float("extrapolation_value", 0.0)?,
                antialias,
                axes: a.ints_opt("axes")?.map(|v| v.to_vec()),
                policy,
                operands: Operands::Full,
            }))
        }
        _ => Err(Error::unsupported(op_type.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use crate::{Attr, DType};

    fn x22() -> Tensor {
        Tensor::from_f32(vec![1, 1, 2, 2], vec![1.0, 2.0, 3.0, 4.0])
    }

    fn f32s(v: &[f32]) -> Tensor {
        Tensor::from_f32(vec![v.len()], v.to_vec())
    }

    fn resize(
        a: &[(&str, Attr)],
        x: Tensor,
        roi: Option<Tensor>,
        scales: Option<Tensor>,
        sizes: Option<Tensor>,
    ) -> Tensor {
        let op = build("Resize", &attrs(a), 19).unwrap();
        op.eval(&[Some(&x), roi.as_ref(), scales.as_ref(), sizes.as_ref()]).unwrap().remove(0)
    }

    #[test]
    fn nearest_upsample_scales() {
        // onnx test_resize_upsample_scales_nearest: scales [1, 1, 2, 3].
        let y = resize(&[], x22(), None, Some(f32s(&[1.0, 1.0, 2.0, 3.0])), None);
        assert_eq!(y.shape, vec![1, 1, 4, 6]);
        assert_eq!(&y.to_f64()[..12], &[1., 1., 1., 2., 2., 2., 1., 1., 1., 2., 2., 2.]);
    }

    #[test]
    fn linear_half_pixel_and_align_corners() {
        let s = Some(f32s(&[1.0, 1.0, 2.0, 2.0]));
        let lin = ("mode", Attr::Str("linear".into()));
        // onnx test_resize_upsample_scales_linear, first row.
        let y = resize(std::slice::from_ref(&lin), x22(), None, s.clone(), None);
        assert_eq!(&y.to_f64()[..4], &[1.0, 1.25, 1.75, 2.0]);
        // align_corners: 1, 4/3, 5/3, 2.
        let ac = ("coordinate_transformation_mode", Attr::Str("align_corners".into()));
        let y = resize(&[lin, ac], x22(), None, s, None);
        let r = y.to_f64();
        assert!((r[1] - 4.0 / 3.0).abs() < 1e-6 && (r[2] - 5.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn cubic_sizes_and_tf_crop() {
        // Cubic with scale 1 on an axis is the identity there; sizes [1,1,2,2] is all identity.
        let y =
            resize(&[("mode", Attr::Str("cubic".into()))], x22(), None, None, Some(Tensor::i64_vec(vec![1, 1, 2, 2])));
        assert_eq!(y.to_f64(), vec![1.0, 2.0, 3.0, 4.0]);
        // tf_crop_and_resize of the centre point with extrapolation outside.
        let a = [
            ("mode", Attr::Str("linear".into())),
            ("coordinate_transformation_mode", Attr::Str("tf_crop_and_resize".into())),
            ("extrapolation_value", Attr::Float(10.0)),
        ];
        let roi = f32s(&[0.0, 0.0, 0.5, -1.0, 1.0, 1.0, 0.5, 0.5]);
        let y = resize(&a, x22(), Some(roi), None, Some(Tensor::i64_vec(vec![1, 1, 1, 2])));
        // row coordinate 0.5 (interpolating 1..3 and 2..4), columns -1 (outside) and 0.5... (out_w 2):
        // x = y * 1.5 * 1 / 1 - 1 -> -1 (extrapolated), 0.5.
        assert_eq!(y.to_f64(), vec![10.0, 2.5]);
    }

    #[test]
    fn upsample_and_int_nearest() {
        let op = build("Upsample", &attrs(&[("scales", Attr::Floats(vec![1.0, 1.0, 1.0, 3.0]))]), 7).unwrap();
        let y = op.eval(&[Some(&x22())]).unwrap().remove(0);
        assert_eq!(y.to_f64()[..6], [1., 1., 1., 2., 2., 2.]);
        let xi = Tensor::from_i64(DType::I32, vec![1, 3], vec![5, 6, 7]);
        let y = resize(&[], xi, None, None, Some(Tensor::i64_vec(vec![1, 2])));
        // half_pixel: x = (y + .5) * 1.5 - .5 = 0.25, 1.75 -> 0, 2
        assert_eq!(y.to_i64(), vec![5, 7]);
    }
}
