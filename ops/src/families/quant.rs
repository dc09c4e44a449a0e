//! Quantization: QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear,
//! QLinearMatMul and QLinearConv.
//!
//! Scales and zero points are run-time data: a kernel reads the parameter
//! of each element through an index map baked from the shapes (one value,
//! one per slice along `axis`, or one per block of `block_size` along it).
//! Arithmetic follows ONNX's reference implementation: quotients in f32
//! (rounded to float16 when both operands are float16), ties to even,
//! clipping to the target's range, float8 targets rounded like Cast with
//! the `saturate` attribute.
//!
//! QLinearMatMul and QLinearConv are compositions: the integer product of
//! MatMulInteger / ConvInteger (their own kernels, into an int32 scratch
//! tensor), then one requantizing pass.

use crate::families::reduce::{Rows, row_kernel};
use crate::wgsl::{kernel_1d, strides, unravel};
use crate::{
    Attrs, CastMode, DType, Error, Input, Kernel, KernelArg, LowerCtx, Lowering, Op, Phys, Result, TempSpec, Tensor,
    TensorRef, TypeInfo, arg, bail, norm_axis, round_float, ty, wgsl_round_fn,
};
use drift_numerics::E8M0Round;

/// Builds an op of this family.
pub fn build(op_type: &str, a: &Attrs, opset: i64) -> Result<Box<dyn Op>> {
    let dtype_attr = |name: &str| -> Result<Option<DType>> {
        match a.int(name, 0)? {
            0 => Ok(None),
            code => DType::from_onnx(code as i32).map(Some),
        }
    };
    match op_type {
        "QuantizeLinear" => Ok(Box::new(Quantize {
            layout: Layout::from_attrs(a)?,
            saturate: a.int("saturate", 1)? != 0,
            output_dtype: dtype_attr("output_dtype")?,
            precision: dtype_attr("precision")?,
        })),
        "DequantizeLinear" => {
            Ok(Box::new(Dequantize { layout: Layout::from_attrs(a)?, output_dtype: dtype_attr("output_dtype")? }))
        }
        "DynamicQuantizeLinear" => Ok(Box::new(DynamicQuantize)),
        "QLinearMatMul" => Ok(Box::new(QLinear {
            inner: super::matmul::build("MatMulInteger", &Attrs::default(), opset)?,
            conv: false,
        })),
        "QLinearConv" => Ok(Box::new(QLinear { inner: super::conv::build("ConvInteger", a, opset)?, conv: true })),
        _ => Err(Error::unsupported(op_type)),
    }
}

/// The `axis` and `block_size` attributes.
#[derive(Clone, Copy, Debug)]
struct Layout {
    axis: i64,
    block: usize,
}

impl Layout {
    fn from_attrs(a: &Attrs) -> Result<Layout> {
        let block = a.int("block_size", 0)?;
        if block < 0 {
            bail!("attribute 'block_size' is {block}, must not be negative");
        }
        Ok(Layout { axis: a.int("axis", 1)?, block: block as usize })
    }

    /// How a parameter tensor of shape `p` maps onto `x`'s elements.
    fn map(&self, x: &[usize], p: &[usize]) -> Result<ParamMap> {
        if p.iter().product::<usize>() == 1 {
            return Ok(ParamMap::One);
        }
        let axis = norm_axis(self.axis, x.len())?;
        if self.block == 0 {
            if p.len() != 1 || p[0] != x[axis] {
                bail!("scale of shape {p:?} is neither one value nor one per index of axis {axis} of {x:?}");
            }
            return Ok(ParamMap::Axis { axis });
        }
        let fits = p.len() == x.len()
            && (0..x.len()).all(|d| if d == axis { p[d] == x[d].div_ceil(self.block) } else { p[d] == x[d] });
        if !fits {
            bail!("scale of shape {p:?} does not block {x:?} by {} along axis {axis}", self.block);
        }
        Ok(ParamMap::Blocked { axis, block: self.block, strides: strides(p) })
    }
}

/// Which parameter (scale, zero point) element belongs to an element of x.
#[derive(Clone, Debug, PartialEq)]
enum ParamMap {
    /// One value for the whole tensor.
    One,
    /// One value per index along `axis`.
    Axis { axis: usize },
    /// One value per `block` consecutive indices along `axis`; the
    /// parameter tensor has x's rank.
    Blocked { axis: usize, block: usize, strides: Vec<usize> },
}

impl ParamMap {
    /// Parameter index of every element of a tensor of shape `x`.
    fn indices(&self, x: &[usize]) -> Vec<usize> {
        let xs = strides(x);
        let n: usize = x.iter().product();
        let coord = |e: usize, d: usize| (e / xs[d]) % x[d];
        (0..n)
            .map(|e| match self {
                ParamMap::One => 0,
                ParamMap::Axis { axis } => coord(e, *axis),
                ParamMap::Blocked { axis, block, strides } => {
                    (0..x.len()).map(|d| if d == *axis { coord(e, d) / block } else { coord(e, d) } * strides[d]).sum()
                }
            })
            .collect()
    }

    /// WGSL for the parameter index, over coordinates `c0..` of x.
    fn wgsl(&self, rank: usize) -> String {
        match self {
            ParamMap::One => "0u".into(),
            ParamMap::Axis { axis } => format!("c{axis}"),
            ParamMap::Blocked { axis, block, strides } => (0..rank)
                .map(|d| {
                    if d == *axis {
                        format!("(c{d} / {block}u) * {}u", strides[d])
                    } else {
                        format!("c{d} * {}u", strides[d])
                    }
                })
                .collect::<Vec<_>>()
                .join(" + "),
        }
    }
}

/// The input's type and, when present, the same for an optional input.
fn opt_ty<'a>(inputs: &[Option<Input<'a>>], i: usize) -> Option<&'a TypeInfo> {
    inputs.get(i).copied().flatten().map(|t| t.ty)
}

/// An f32 quotient rounded as numpy rounds `x / scale`: to float16 (or
/// bfloat16) when both operands are, or to `precision` when given.
fn quotient_type(x: DType, scale: DType, precision: Option<DType>) -> DType {
    match precision {
        Some(p) => p,
        None if x == scale => x,
        None => DType::F32,
    }
}

/// Rounds expression `v` to float type `t` in WGSL (identity for f32).
fn wgsl_round(v: &str, t: DType, mode: CastMode, helpers: &mut String) -> String {
    match wgsl_round_fn(t, mode) {
        Some((name, text)) => {
            if !helpers.contains(&format!("fn {name}(")) {
                helpers.push_str(&text);
            }
            format!("{name}({v})")
        }
        None => v.to_string(),
    }
}

/// QuantizeLinear: `saturate(round(x / scale) + zero_point)`.
#[derive(Debug)]
struct Quantize {
    layout: Layout,
    saturate: bool,
    output_dtype: Option<DType>,
    precision: Option<DType>,
}

impl Quantize {
    /// The output type: `output_dtype`, else the zero point's, else uint8.
    fn out_dtype(&self, zero: Option<DType>) -> Result<DType> {
        let t = match (self.output_dtype, zero) {
            (Some(o), Some(z)) if o != z => bail!("attribute 'output_dtype' is {o} but the zero point is {z}"),
            (o, z) => z.or(o).unwrap_or(DType::U8),
        };
        if t.is_float() && t.minifloat().is_none() || t.int_range().is_none() && !t.is_float() || t.bits() > 16 {
            return Err(Error::unsupported(format!("QuantizeLinear to {t}")));
        }
        Ok(t)
    }

    fn mode(&self) -> CastMode {
        CastMode { saturate: self.saturate, e8m0: E8M0Round::Up }
    }
}

impl Op for Quantize {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let (x, s) = (ty(inputs, 0)?, ty(inputs, 1)?);
        self.layout.map(&x.shape, &s.shape)?;
        if let Some(z) = opt_ty(inputs, 2).filter(|z| z.numel() != s.numel()) {
            bail!("zero point of shape {:?} does not match scale of shape {:?}", z.shape, s.shape);
        }
        let out = self.out_dtype(opt_ty(inputs, 2).map(|z| z.dtype))?;
        Ok(vec![TypeInfo::new(out, x.shape.clone())])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let (x, s) = (arg(inputs, 0)?, arg(inputs, 1)?);
        let z = inputs.get(2).copied().flatten();
        let out = self.out_dtype(z.map(|z| z.dtype))?;
        let idx = self.layout.map(&x.shape, &s.shape)?.indices(&x.shape);
        let q = quotient_type(x.dtype, s.dtype, self.precision);
        let (xv, sv) = (x.to_f64(), s.to_f64());
        let zv = z.map(|z| z.to_f64());
        let mode = self.mode();
        let vals = (0..x.len())
            .map(|e| {
                let sc = round_float(q, sv[idx[e]], mode) as f32;
                let v = round_float(q, (round_float(q, xv[e], mode) as f32 / sc) as f64, mode);
                let zp = zv.as_ref().map_or(0.0, |z| z[idx[e]]);
                match out.int_range() {
                    Some((lo, hi)) => quantize_int(v as f32, zp as f32, lo, hi) as f64,
                    // float8 ignores its (zero) zero point; float4 adds it.
                    None if out == DType::F4E2M1 => v + zp,
                    None => v,
                }
            })
            .collect();
        Ok(vec![Tensor::from_f64_mode(out, x.shape.clone(), vals, mode)])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let (x, s) = (cx.input(0)?, cx.input(1)?);
        let zero = cx.has_input(2);
        let out = self.out_dtype(if zero { Some(cx.input(2)?.dtype) } else { None })?;
        let pidx = self.layout.map(&x.shape, &s.shape)?.wgsl(x.rank());
        let q = quotient_type(x.dtype, s.dtype, self.precision);
        let mode = self.mode();
        let mut helpers = String::new();
        let xs = wgsl_round("ld_x(i)", q, mode, &mut helpers);
        let ss = wgsl_round("ld_s(p)", q, mode, &mut helpers);
        let mut body = unravel("c", "i", &x.shape);
        body += &format!("    let p = {pidx};\n");
        body += &format!("    let v = {};\n", wgsl_round(&format!("({xs} / {ss})"), q, mode, &mut helpers));
        body += &format!("    let zp = {};\n", if zero { "f32(ld_z(p))" } else { "0.0" });
        let y = match out.int_range() {
            Some((lo, hi)) => {
                helpers += QUANTIZE_INT;
                let q = format!("quantize_int(v, zp, {lo}.0, {hi}.0)");
                if out.phys() == Phys::U32 { format!("u32({q})") } else { q }
            }
            None if out == DType::F4E2M1 => wgsl_round("(v + zp)", out, mode, &mut helpers),
            None => wgsl_round("v", out, mode, &mut helpers),
        };
        body += &format!("    st_y(i, {y});\n");
        let mut args = vec![KernelArg::new("x", TensorRef::Input(0)), KernelArg::new("s", TensorRef::Input(1))];
        if zero {
            args.push(KernelArg::new("z", TensorRef::Input(2)));
        }
        args.push(KernelArg::new("y", TensorRef::Output(0)));
        Ok(Lowering::one(kernel_1d("quantize", args, x.numel(), &helpers, &body)))
    }
}

/// `clip(rint(v) + zp, lo, hi)` as ONNX's reference computes it; NaN gives
/// `lo` (numpy's int32 cast of NaN is the most negative value).
fn quantize_int(v: f32, zp: f32, lo: i64, hi: i64) -> i64 {
    if v.is_nan() {
        return lo;
    }
    (v.round_ties_even() + zp).clamp(lo as f32, hi as f32) as i64
}

/// WGSL twin of `quantize_int`; WGSL's `round` breaks ties to even.
const QUANTIZE_INT: &str = "
fn quantize_int(v: f32, zp: f32, lo: f32, hi: f32) -> i32 {
    if (v != v) { return i32(lo); }
    return i32(clamp(round(v) + zp, lo, hi));
}
";

/// DequantizeLinear: `(x - zero_point) * scale`.
#[derive(Debug)]
struct Dequantize {
    layout: Layout,
    output_dtype: Option<DType>,
}

impl Dequantize {
    fn out_dtype(&self, scale: DType) -> Result<DType> {
        let t = self.output_dtype.unwrap_or(scale);
        if !t.is_float() {
            bail!("DequantizeLinear's output must be a float type, got {t}");
        }
        Ok(t)
    }
}

/// Whether a quantized type subtracts its zero point (integers do; ONNX
/// ignores the zero point of float8 and float4 data).
fn uses_zero_point(x: DType) -> bool {
    !x.is_float()
}

impl Op for Dequantize {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let (x, s) = (ty(inputs, 0)?, ty(inputs, 1)?);
        self.layout.map(&x.shape, &s.shape)?;
        if let Some(z) = opt_ty(inputs, 2) {
            if uses_zero_point(x.dtype) && z.dtype != x.dtype {
                bail!("zero point is {} but x is {}", z.dtype, x.dtype);
            }
            if z.numel() != s.numel() {
                bail!("zero point of shape {:?} does not match scale of shape {:?}", z.shape, s.shape);
            }
        }
        Ok(vec![TypeInfo::new(self.out_dtype(s.dtype)?, x.shape.clone())])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let (x, s) = (arg(inputs, 0)?, arg(inputs, 1)?);
        let z = inputs.get(2).copied().flatten().filter(|_| uses_zero_point(x.dtype));
        let idx = self.layout.map(&x.shape, &s.shape)?.indices(&x.shape);
        let (xv, sv, zv) = (x.to_f64(), s.to_f64(), z.map(|z| z.to_f64()));
        let vals = (0..x.len())
            .map(|e| {
                let zp = zv.as_ref().map_or(0.0, |z| z[idx[e]]);
                ((xv[e] as f32 - zp as f32) * sv[idx[e]] as f32) as f64
            })
            .collect();
        Ok(vec![Tensor::from_f64(self.out_dtype(s.dtype)?, x.shape.clone(), vals)])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let (x, s) = (cx.input(0)?, cx.input(1)?);
        let zero = cx.has_input(2) && uses_zero_point(x.dtype);
        let out = self.out_dtype(s.dtype)?;
        let pidx = self.layout.map(&x.shape, &s.shape)?.wgsl(x.rank());
        let mut helpers = String::new();
        let mut body = unravel("c", "i", &x.shape);
        body += &format!("    let p = {pidx};\n");
        let zp = if zero { "f32(ld_z(p))" } else { "0.0" };
        let y = wgsl_round(&format!("((f32(ld_x(i)) - {zp}) * ld_s(p))"), out, CastMode::default(), &mut helpers);
        body += &format!("    st_y(i, {y});\n");
        let mut args = vec![KernelArg::new("x", TensorRef::Input(0)), KernelArg::new("s", TensorRef::Input(1))];
        if zero {
            args.push(KernelArg::new("z", TensorRef::Input(2)));
        }
        args.push(KernelArg::new("y", TensorRef::Output(0)));
        Ok(Lowering::one(kernel_1d("dequantize", args, x.numel(), &helpers, &body)))
    }
}

/// DynamicQuantizeLinear: uint8 quantization with scale and zero point
/// from the data's range (widened to include 0).
#[derive(Debug)]
struct DynamicQuantize;

/// Scale and zero point for data in `[lo, hi]` (both already include 0),
/// in f32 as the reference computes them.
fn dynamic_params(lo: f32, hi: f32) -> (f32, f32) {
    let scale = if hi == lo { 1.0 } else { hi - lo } / 255.0;
    let zp = (0.0 - lo / scale).clamp(0.0, 255.0).round_ties_even();
    (scale, zp)
}

impl Op for DynamicQuantize {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let x = ty(inputs, 0)?;
        if x.dtype != DType::F32 {
            bail!("DynamicQuantizeLinear takes float32, got {}", x.dtype);
        }
        Ok(vec![
            TypeInfo::new(DType::U8, x.shape.clone()),
            TypeInfo::new(DType::F32, vec![]),
            TypeInfo::new(DType::U8, vec![]),
        ])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let x = arg(inputs, 0)?;
        let v: Vec<f32> = x.to_f64().iter().map(|&e| e as f32).collect();
        let lo = v.iter().fold(0f32, |a, &b| a.min(b));
        let hi = v.iter().fold(0f32, |a, &b| a.max(b));
        let (scale, zp) = dynamic_params(lo, hi);
        let y = v.iter().map(|&e| quantize_int(e / scale, zp, 0, 255)).collect();
        Ok(vec![
            Tensor::from_i64(DType::U8, x.shape.clone(), y),
            Tensor::from_f64(DType::F32, vec![], vec![scale as f64]),
            Tensor::from_i64(DType::U8, vec![], vec![zp as i64]),
        ])
    }

    /// One row kernel over the whole tensor: the lanes find the range,
    /// then quantize; lane 0 writes scale and zero point.
    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let n = cx.input(0)?.numel();
        let body = "    var mn = 0.0;
    var mx = 0.0;
    for (var j = lane; j < n_el; j = j + LANES) {
        let v = ld_x(base + elem_off(j));
        mn = min(mn, v);
        mx = max(mx, v);
    }
    let lo = seg_min_f32(mn, lid);
    let hi = seg_max_f32(mx, lid);
    let scale = select(hi - lo, 1.0, hi == lo) / 255.0;
    let zp = round(clamp(0.0 - lo / scale, 0.0, 255.0));
    for (var j = lane; j < n_el; j = j + LANES) {
        let i = base + elem_off(j);
        st_y(i, u32(quantize_int(ld_x(i) / scale, zp, 0.0, 255.0)));
    }
    if (valid && lane == 0u) {
        st_scale(0u, scale);
        st_zp(0u, u32(zp));
    }
";
        let args = vec![
            KernelArg::new("x", TensorRef::Input(0)),
            KernelArg::new("y", TensorRef::Output(0)),
            KernelArg::new("scale", TensorRef::Output(1)),
            KernelArg::new("zp", TensorRef::Output(2)),
        ];
        Ok(Lowering::one(row_kernel("dynamic_quantize", args, &Rows::contiguous(1, n), QUANTIZE_INT, body)))
    }
}

/// QLinearMatMul / QLinearConv: the integer product of `inner`
/// (MatMulInteger or ConvInteger), then
/// `clip(rint(acc * a_s * b_s / y_s) + y_zero_point)`.
/// Inputs: a, a_scale, a_zero, b, b_scale, b_zero, y_scale, y_zero and,
/// for QLinearConv, an int32 bias.
#[derive(Debug)]
struct QLinear {
    inner: Box<dyn Op>,
    conv: bool,
}

/// The inner op's inputs: a, b, a_zero, b_zero.
const INNER_INPUTS: [usize; 4] = [0, 3, 2, 5];

impl QLinear {
    fn inner_inputs<'a>(inputs: &[Option<Input<'a>>]) -> Vec<Option<Input<'a>>> {
        INNER_INPUTS.iter().map(|&i| inputs.get(i).copied().flatten()).collect()
    }

    /// Output type: y_zero_point's, else a's.
    fn out_dtype(a: DType, y_zero: Option<DType>) -> Result<DType> {
        let t = y_zero.unwrap_or(a);
        if !matches!(t, DType::U8 | DType::I8) {
            return Err(Error::unsupported(format!("requantizing to {t}")));
        }
        Ok(t)
    }

    /// How a scale or zero point maps onto the accumulator's elements:
    /// one value, or (b's scale, y's) one per output channel/column.
    fn param_map(&self, acc: &[usize], p: &TypeInfo, what: &str, per_channel: bool) -> Result<ParamMap> {
        if p.numel() == 1 {
            return Ok(ParamMap::One);
        }
        let axis = if self.conv { 1 } else { acc.len() - 1 };
        if per_channel && p.rank() == 1 && p.shape[0] == acc[axis] {
            return Ok(ParamMap::Axis { axis });
        }
        Err(Error::unsupported(format!("{what} of shape {:?} (one value or one per output channel)", p.shape)))
    }

    /// Parameter maps of a_scale, b_scale, y_scale, y_zero over `acc`.
    fn maps(&self, acc: &[usize], tys: &[Option<&TypeInfo>]) -> Result<[Option<ParamMap>; 4]> {
        let m = |i: usize, what: &str, per: bool| -> Result<Option<ParamMap>> {
            tys[i].map(|t| self.param_map(acc, t, what, per)).transpose()
        };
        Ok([m(1, "a_scale", false)?, m(4, "b_scale", true)?, m(6, "y_scale", false)?, m(7, "y_zero_point", true)?])
    }
}

impl Op for QLinear {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let acc = self.inner.infer(&QLinear::inner_inputs(inputs))?.remove(0);
        let tys: Vec<Option<&TypeInfo>> = (0..9).map(|i| opt_ty(inputs, i)).collect();
        for (i, what) in [(1, "a_scale"), (4, "b_scale"), (6, "y_scale")] {
            if tys[i].is_none() {
                bail!("input {i} ({what}) is required");
            }
        }
        self.maps(&acc.shape, &tys)?;
        Ok(vec![TypeInfo::new(QLinear::out_dtype(ty(inputs, 0)?.dtype, tys[7].map(|t| t.dtype))?, acc.shape)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let get = |i: usize| inputs.get(i).copied().flatten();
        let inner: Vec<Option<&Tensor>> = INNER_INPUTS.iter().map(|&i| get(i)).collect();
        let acc = self.inner.eval(&inner)?.remove(0);
        let info = |i: usize| get(i).map(|t| TypeInfo::new(t.dtype, t.shape.clone()));
        let infos: Vec<Option<TypeInfo>> = (0..9).map(info).collect();
        let refs: Vec<Option<&TypeInfo>> = infos.iter().map(Option::as_ref).collect();
        let maps = self.maps(&acc.shape, &refs)?;
        let out = QLinear::out_dtype(arg(inputs, 0)?.dtype, get(7).map(|t| t.dtype))?;
        let (lo, hi) = out.int_range().expect("8-bit integer");
        let vals = |i: usize| get(i).map(|t| t.to_f64());
        let (a_s, b_s, y_s, y_z) = (vals(1), vals(4), vals(6), vals(7));
        let idx: Vec<Option<Vec<usize>>> = maps.iter().map(|m| m.as_ref().map(|m| m.indices(&acc.shape))).collect();
        let bias = vals(8);
        let per_oc = if self.conv { acc.shape[2..].iter().product::<usize>() } else { 1 };
        let scale_t = arg(inputs, 1)?.dtype;
        let mode = CastMode::default();
        let accv = acc.to_f64();
        let y = (0..acc.len())
            .map(|e| {
                let pick =
                    |v: &Option<Vec<f64>>, k: usize| v.as_ref().map_or(0.0, |v| v[idx[k].as_ref().map_or(0, |x| x[e])]);
                let b = bias.as_ref().map_or(0.0, |b| b[(e / per_oc) % b.len()]);
                let ab = round_float(scale_t, pick(&a_s, 0) * pick(&b_s, 1), mode) as f32;
                let mult = round_float(scale_t, (ab / pick(&y_s, 2) as f32) as f64, mode) as f32;
                quantize_int((accv[e] + b) as f32 * mult, pick(&y_z, 3) as f32, lo, hi)
            })
            .collect();
        Ok(vec![Tensor::from_i64(out, acc.shape.clone(), y)])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let acc_ty = TypeInfo::new(DType::I32, cx.output(0).shape.clone());
        let inner_cx =
            LowerCtx { inputs: QLinear::inner_inputs(&cx.inputs), outputs: vec![acc_ty.clone()], target: cx.target };
        let Lowering::Kernels { temps: inner_temps, kernels } = self.inner.lower(&inner_cx)? else {
            bail!("the integer product lowered to a view");
        };
        // Our temp 0 is the accumulator; the inner op's temps follow it.
        let remap = |r: TensorRef| match r {
            TensorRef::Input(i) => TensorRef::Input(INNER_INPUTS[i]),
            TensorRef::Output(_) => TensorRef::Temp(0),
            TensorRef::Temp(t) => TensorRef::Temp(t + 1),
        };
        let mut kernels: Vec<Kernel> = kernels
            .into_iter()
            .map(|mut k| {
                k.args.iter_mut().for_each(|a| a.tensor = remap(a.tensor));
                k
            })
            .collect();
        let mut temps = vec![TempSpec { elems: acc_ty.numel(), phys: Phys::I32 }];
        temps.extend(inner_temps);
        kernels.push(self.requantize_kernel(cx, &acc_ty.shape)?);
        Ok(Lowering::Kernels { temps, kernels })
    }
}

impl QLinear {
    /// The pass from the int32 accumulator (temp 0) to the output.
    fn requantize_kernel(&self, cx: &LowerCtx, acc: &[usize]) -> Result<Kernel> {
        let tys: Vec<Option<&TypeInfo>> = (0..9).map(|i| opt_ty(&cx.inputs, i)).collect();
        let maps = self.maps(acc, &tys)?;
        let out = cx.output(0).dtype;
        let (lo, hi) = out.int_range().expect("8-bit integer");
        let scale_t = cx.input(1)?.dtype;
        let mut helpers = QUANTIZE_INT.to_string();
        let mut args = vec![KernelArg::new("acc", TensorRef::Temp(0))];
        let mut body = unravel("c", "i", acc);
        let mut load = |name: &str, input: usize, map: &Option<ParamMap>, default: &str| -> String {
            match map {
                Some(m) => {
                    args.push(KernelArg::new(name, TensorRef::Input(input)));
                    format!("f32(ld_{name}({}))", m.wgsl(acc.len()))
                }
                None => default.to_string(),
            }
        };
        let a_s = load("a_s", 1, &maps[0], "1.0");
        let b_s = load("b_s", 4, &maps[1], "1.0");
        let y_s = load("y_s", 6, &maps[2], "1.0");
        let y_z = load("y_z", 7, &maps[3], "0.0");
        let mut acc_expr = "f32(ld_acc(i))".to_string();
        if self.conv && cx.has_input(8) {
            args.push(KernelArg::new("bias", TensorRef::Input(8)));
            acc_expr = "f32(ld_acc(i) + ld_bias(c1))".to_string();
        }
        let mode = CastMode::default();
        let ab = wgsl_round(&format!("({a_s} * {b_s})"), scale_t, mode, &mut helpers);
        let mult = wgsl_round(&format!("({ab} / {y_s})"), scale_t, mode, &mut helpers);
        body += &format!("    let q = quantize_int({acc_expr} * {mult}, {y_z}, {lo}.0, {hi}.0);\n");
        body += &format!("    st_y(i, {});\n", if out.phys() == Phys::U32 { "u32(q)" } else { "q" });
        args.push(KernelArg::new("y", TensorRef::Output(0)));
        Ok(kernel_1d("requantize", args, acc.iter().product(), &helpers, &body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Attr;

    fn eval(op: &str, opset: i64, a: &[(&str, Attr)], ins: &[Option<Tensor>]) -> Vec<Tensor> {
        let attrs = Attrs(a.iter().map(|(k, v)| (k.to_string(), v.clone())).collect());
        let op = build(op, &attrs, opset).unwrap();
        op.eval(&ins.iter().map(|t| t.as_ref()).collect::<Vec<_>>()).unwrap()
    }

    fn f32s(shape: Vec<usize>, v: &[f32]) -> Option<Tensor> {
        Some(Tensor::from_f32(shape, v.to_vec()))
    }

    fn ints(dtype: DType, shape: Vec<usize>, v: &[i64]) -> Option<Tensor> {
        Some(Tensor::from_i64(dtype, shape, v.to_vec()))
    }

    // Expected values below come from onnx.reference.ReferenceEvaluator
    // (onnx 1.23.2) on the same inputs.

    #[test]
    fn quantize_blocked_int4_rounds_ties_to_even_and_clips() {
        let x = f32s(vec![2, 4], &[-3.0, 2.5, 3.5, -0.5, 100.0, -100.0, 7.4, 0.49]);
        let s = f32s(vec![2, 2], &[1.0, 0.5, 2.0, 1.0]);
        let z = ints(DType::I4, vec![2, 2], &[1, -1, 0, 2]);
        let y = eval("QuantizeLinear", 25, &[("axis", Attr::Int(1)), ("block_size", Attr::Int(2))], &[x, s, z]);
        assert_eq!(y[0].dtype, DType::I4);
        assert_eq!(y[0].to_i64(), [-2, 3, 6, -2, 7, -8, 7, 2]);
    }

    #[test]
    fn quantize_float8_saturates_only_when_asked() {
        let x = f32s(vec![5], &[1.0, -500.0, 1000.0, f32::INFINITY, 0.3]);
        let s = f32s(vec![], &[2.0]);
        let z = Some(Tensor::from_f64(DType::F8E4M3FN, vec![1], vec![0.0]));
        let sat = eval("QuantizeLinear", 25, &[], &[x.clone(), s.clone(), z.clone()]);
        assert_eq!(sat[0].to_f64(), [0.5, -256.0, 448.0, 448.0, 0.15625]);
        let raw = eval("QuantizeLinear", 25, &[("saturate", Attr::Int(0))], &[x, s, z]);
        let v = raw[0].to_f64();
        assert_eq!((v[0], v[1], v[4]), (0.5, -256.0, 0.15625));
        assert!(v[2].is_nan() && v[3].is_nan(), "{v:?}");
    }

    #[test]
    fn dequantize_per_axis_to_float16() {
        let x = ints(DType::I8, vec![2, 3], &[-128, 0, 127, 5, 6, 7]);
        let s = Some(Tensor::from_f64(DType::F16, vec![3], vec![0.1, 0.25, 3.0]));
        let z = ints(DType::I8, vec![3], &[1, -2, 0]);
        let y = eval("DequantizeLinear", 25, &[("axis", Attr::Int(1))], &[x, s, z]);
        assert_eq!(y[0].dtype, DType::F16);
        assert_eq!(y[0].to_f64(), [-12.8984375, 0.5, 381.0, 0.39990234375, 2.0, 21.0]);
    }

    #[test]
    fn dynamic_quantize_matches_reference() {
        let x = f32s(vec![2, 3], &[1.0, -2.5, 0.3, 4.0, 0.0, -0.7]);
        let y = eval("DynamicQuantizeLinear", 11, &[], &[x]);
        assert_eq!(y[0].to_i64(), [137, 0, 110, 255, 98, 71]);
        assert_eq!(y[1].to_f64()[0] as f32, 0.025490196);
        assert_eq!(y[2].to_i64(), [98]);
    }

    #[test]
    fn qlinear_matmul_matches_reference_and_lowers_through_a_temp() {
        let a = ints(DType::U8, vec![2, 3], &[208, 236, 0, 30, 100, 255]);
        let b = ints(DType::U8, vec![3, 2], &[152, 51, 244, 60, 26, 255]);
        let sc = |v: f32| f32s(vec![1], &[v]);
        let zp = |v: i64| ints(DType::U8, vec![1], &[v]);
        let ins = [a, sc(0.0066), zp(113), b, sc(0.00705), zp(114), sc(0.0107), zp(118)];
        let y = eval("QLinearMatMul", 21, &[], &ins);
        assert_eq!(y[0].to_i64(), [246, 0, 43, 231]);

        let op = build("QLinearMatMul", &Attrs::default(), 21).unwrap();
        let tys: Vec<TypeInfo> =
            ins.iter().map(|t| t.as_ref().map(|t| TypeInfo::new(t.dtype, t.shape.clone())).unwrap()).collect();
        let inputs: Vec<Option<Input>> = tys.iter().map(|ty| Some(Input { ty, value: None })).collect();
        let out = op.infer(&inputs).unwrap();
        let Lowering::Kernels { temps, kernels } =
            op.lower(&LowerCtx { inputs, outputs: out, target: Default::default() }).unwrap()
        else {
            panic!("QLinearMatMul lowers to kernels");
        };
        assert_eq!(temps[0], TempSpec { elems: 4, phys: Phys::I32 });
        let (last, inner) = kernels.split_last().unwrap();
        // Only the requantizing pass writes the output; the product fills temp 0.
        assert!(inner.iter().all(|k| k.args.iter().all(|a| a.tensor != TensorRef::Output(0))));
        assert!(inner.iter().any(|k| k.args.iter().any(|a| a.tensor == TensorRef::Temp(0))));
        assert!(last.args.iter().any(|a| a.tensor == TensorRef::Output(0)));
    }

    #[test]
    fn mismatched_scale_shape_is_an_error() {
        let attrs = Attrs::default();
        let op = build("QuantizeLinear", &attrs, 25).unwrap();
        let x = TypeInfo::new(DType::F32, vec![2, 3]);
        let s = TypeInfo::new(DType::F32, vec![2]);
        let err = op.infer(&[Some(Input { ty: &x, value: None }), Some(Input { ty: &s, value: None })]).unwrap_err();
        assert!(err.to_string().contains("scale of shape [2]"), "{err}");
    }
}
