//! Convolutions: Conv and ConvTranspose over any number of spatial
//! dimensions, with groups (depthwise included), pads, strides, dilations,
//! auto_pad and an optional bias; ConvTranspose also takes output_padding
//! and output_shape; ConvInteger is Conv over integers with zero points
//! (the padding copy converts the input to int32 minus its zero point).
//!
//! Conv lowers to an implicit product on the register-blocked kernel of
//! `matmul` (rows: output channels of a group; columns: output positions of
//! every image; reduction: kernel taps x input channels; groups: batches),
//! so each thread reuses every loaded input for 8 output channels and every
//! loaded weight for 8 positions. Padded convolutions first copy the input
//! into a zero-padded scratch tensor so the product needs no bounds checks.
//!
//! On targets with workgroup memory, convolutions wide enough to tile run
//! on the tiled product kernels of `products` (`conv_tiled`).
//!
//! ConvTranspose uses a direct gather kernel: a thread owns one output
//! position and up to 8 output channels, solving the input coordinate from
//! `o = i * stride - pad + k * dilation` per tap. Thin grouped convolutions
//! (depthwise) use the same kernel on targets with workgroup memory.
//!
//! Shape rules follow the ONNX reference implementation, including its
//! ConvTranspose auto_pad split (SAME_UPPER puts the odd pad at the end).

use crate::wgsl::strides;
use crate::{
    Attrs, DType, Error, Input, Kernel, KernelArg, LowerCtx, Lowering, Op, Result, Tensor, TensorRef, TypeInfo, arg,
    bail, ty,
};

/// Builds Conv or ConvTranspose.
pub fn build(op_type: &str, a: &Attrs, _opset: i64) -> Result<Box<dyn Op>> {
    let attrs = ConvAttrs::parse(a)?;
    match op_type {
        "Conv" => Ok(Box::new(Conv { attrs, transpose: false, integer: false })),
        "ConvInteger" => Ok(Box::new(Conv { attrs, transpose: false, integer: true })),
        "ConvTranspose" => Ok(Box::new(Conv { attrs, transpose: true, integer: false })),
        _ => Err(Error::unsupported(op_type.to_string())),
    }
}

/// The `auto_pad` attribute shared by convolutions and pools.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoPad {
    NotSet,
    SameUpper,
    SameLower,
    Valid,
}

impl AutoPad {
    pub fn parse(a: &Attrs) -> Result<AutoPad> {
        Ok(match a.str("auto_pad", "NOTSET")? {
            "NOTSET" | "" => AutoPad::NotSet,
            "SAME_UPPER" => AutoPad::SameUpper,
            "SAME_LOWER" => AutoPad::SameLower,
            "VALID" => AutoPad::Valid,
            other => bail!("unknown auto_pad '{other}'"),
        })
    }
}

/// Reads an optional list of non-negative ints.
pub fn usizes(a: &Attrs, name: &str) -> Result<Option<Vec<usize>>> {
    match a.ints_opt(name)? {
        None => Ok(None),
        Some(v) => {
            if v.iter().any(|&x| x < 0) {
                bail!("attribute '{name}' has negative values: {:?}", v);
            }
            Ok(Some(v.iter().map(|&x| x as usize).collect()))
        }
    }
}

/// An attribute list of `r` entries, or `default` repeated.
pub fn per_dim(v: &Option<Vec<usize>>, r: usize, default: usize, name: &str) -> Result<Vec<usize>> {
    match v {
        None => Ok(vec![default; r]),
        Some(v) if v.len() == r => Ok(v.clone()),
        Some(v) => bail!("'{name}' has {} entries, expected {r}", v.len()),
    }
}

/// Attributes of Conv and ConvTranspose.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvAttrs {
    pub auto_pad: AutoPad,
    pub group: usize,
    pub kernel_shape: Option<Vec<usize>>,
    pub strides: Option<Vec<usize>>,
    pub dilations: Option<Vec<usize>>,
    /// Begin pads of every dimension, then end pads.
    pub pads: Option<Vec<usize>>,
    pub output_padding: Option<Vec<usize>>,
    pub output_shape: Option<Vec<usize>>,
}

impl ConvAttrs {
    fn parse(a: &Attrs) -> Result<ConvAttrs> {
        let group = a.int("group", 1)?;
        if group < 1 {
            bail!("group must be >= 1, got {group}");
        }
        Ok(ConvAttrs {
            auto_pad: AutoPad::parse(a)?,
            group: group as usize,
            kernel_shape: usizes(a, "kernel_shape")?,
            strides: usizes(a, "strides")?,
            dilations: usizes(a, "dilations")?,
            pads: usizes(a, "pads")?,
            output_padding: usizes(a, "output_padding")?,
            output_shape: usizes(a, "output_shape")?,
        })
    }
}

/// A convolution with every size resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct Geom {
    pub transpose: bool,
    pub n: usize,
    /// Input and output channels.
    pub c: usize,
    pub m: usize,
    pub group: usize,
    pub ins: Vec<usize>,
    pub ks: Vec<usize>,
    pub outs: Vec<usize>,
    pub strides: Vec<usize>,
    pub dil: Vec<usize>,
    /// Begin pads (negative for ConvTranspose outputs larger than natural).
    pub pad: Vec<i64>,
}

impl Geom {
    fn cg(&self) -> usize {
        self.c / self.group
    }
    fn mg(&self) -> usize {
        self.m / self.group
    }
    fn out_shape(&self) -> Vec<usize> {
        let mut s = vec![self.n, self.m];
        s.extend(&self.outs);
        s
    }
}

/// Span of a dilated kernel.
fn span(k: usize, d: usize) -> usize {
    (k.max(1) - 1) * d + 1
}

fn conv_geom(at: &ConvAttrs, x: &[usize], w: &[usize], transpose: bool) -> Result<Geom> {
    if x.len() < 3 || w.len() != x.len() {
        bail!("convolution needs input [N, C, spatial...] and matching weights, got {:?} and {:?}", x, w);
    }
    let r = x.len() - 2;
    let g = at.group;
    let (n, c) = (x[0], x[1]);
    let ks = w[2..].to_vec();
    if let Some(k) = &at.kernel_shape
        && k != &ks
    {
        bail!("kernel_shape {:?} does not match weights {:?}", k, w);
    }
    let m = if transpose {
        if w[0] != c {
            bail!("ConvTranspose weights {:?} do not match {c} input channels", w);
        }
        w[1] * g
    } else {
        if w[1] * g != c {
            bail!("Conv weights {:?} with group {g} do not match {c} input channels", w);
        }
        w[0]
    };
    if c % g != 0 || m % g != 0 {
        bail!("channels ({c} in, {m} out) are not divisible by group {g}");
    }
    let strides = per_dim(&at.strides, r, 1, "strides")?;
    let dil = per_dim(&at.dilations, r, 1, "dilations")?;
    if strides.contains(&0) || dil.contains(&0) {
        bail!("strides and dilations must be positive");
    }
    let ins = x[2..].to_vec();
    let (outs, pad) = if transpose {
        transpose_sizes(at, &ins, &ks, &strides, &dil)?
    } else {
        conv_sizes(at, &ins, &ks, &strides, &dil)?
    };
    Ok(Geom { transpose, n, c, m, group: g, ins, ks, outs, strides, dil, pad })
}

/// Output sizes and begin pads of a (forward) convolution.
fn conv_sizes(
    at: &ConvAttrs,
    ins: &[usize],
    ks: &[usize],
    st: &[usize],
    dil: &[usize],
) -> Result<(Vec<usize>, Vec<i64>)> {
    let r = ins.len();
    let pads = per_dim(&at.pads, 2 * r, 0, "pads")?;
    let mut outs = vec![];
    let mut begin = vec![];
    for d in 0..r {
        let sw = span(ks[d], dil[d]);
        let (o, pb) = match at.auto_pad {
            AutoPad::NotSet | AutoPad::Valid => {
                let (pb, pe) = if at.auto_pad == AutoPad::Valid { (0, 0) } else { (pads[d], pads[r + d]) };
                let padded = ins[d] + pb + pe;
                if padded < sw {
                    bail!("kernel span {sw} exceeds padded input {padded} in dimension {d}");
                }
                ((padded - sw) / st[d] + 1, pb)
            }
            AutoPad::SameUpper | AutoPad::SameLower => {
                let o = ins[d].div_ceil(st[d]);
                let total = ((o.max(1) - 1) * st[d] + sw).saturating_sub(ins[d]);
                (o, if at.auto_pad == AutoPad::SameUpper { total / 2 } else { total - total / 2 })
            }
        };
        outs.push(o);
        begin.push(pb as i64);
    }
    Ok((outs, begin))
}

/// Output sizes and begin pads of a transposed convolution, as the ONNX
/// reference computes them.
fn transpose_sizes(
    at: &ConvAttrs,
    ins: &[usize],
    ks: &[usize],
    st: &[usize],
    dil: &[usize],
) -> Result<(Vec<usize>, Vec<i64>)> {
    let r = ins.len();
    let op = per_dim(&at.output_padding, r, 0, "output_padding")?;
    let out_attr = at.output_shape.as_ref().map(|s| if s.len() == r + 2 { s[2..].to_vec() } else { s.clone() });
    if let Some(s) = &out_attr
        && s.len() != r
    {
        bail!("output_shape {:?} does not have {r} spatial entries", s);
    }
    let natural = |d: usize| (st[d] * (ins[d].max(1) - 1) + op[d] + span(ks[d], dil[d])) as i64;
    let same = matches!(at.auto_pad, AutoPad::SameUpper | AutoPad::SameLower);
    let mut outs = vec![];
    let mut begin = vec![];
    if at.pads.is_none() && same {
        for d in 0..r {
            let o = out_attr.as_ref().map_or(ins[d] * st[d], |s| s[d]);
            let total = natural(d) - o as i64;
            let half = total.div_euclid(2);
            outs.push(o);
            begin.push(if at.auto_pad == AutoPad::SameUpper { half } else { total - half });
        }
    } else {
        let pads = per_dim(&at.pads, 2 * r, 0, "pads")?;
        for d in 0..r {
            let o = match &out_attr {
                Some(s) => s[d] as i64,
                None => natural(d) - (pads[d] + pads[r + d]) as i64,
            };
            if o < 0 {
                bail!("ConvTranspose output size {o} is negative in dimension {d}");
            }
            outs.push(o as usize);
            begin.push(pads[d] as i64);
        }
    }
    Ok((outs, begin))
}

/// Conv (`transpose == false`) or ConvTranspose; ConvInteger is Conv with
/// `integer` set (inputs 2 and 3 are then zero points, the output int32).
#[derive(Debug)]
pub struct Conv {
    pub attrs: ConvAttrs,
    pub transpose: bool,
    pub integer: bool,
}

/// ConvInteger's zero points: whether x has one, and whether w has one
/// (`Some(true)` for one per output channel).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Quant {
    x_zero: bool,
    w_zero: Option<bool>,
}

impl Conv {
    fn geom(&self, x: &[usize], w: &[usize]) -> Result<Geom> {
        conv_geom(&self.attrs, x, w, self.transpose)
    }

    /// ConvInteger's zero points, checked against the output channels.
    fn quant(&self, x_zero: bool, w_zero: Option<&TypeInfo>, g: &Geom) -> Result<Quant> {
        let w_zero = match w_zero {
            None => None,
            Some(t) if t.numel() == 1 => Some(false),
            Some(t) if t.numel() == g.m => Some(true),
            Some(t) => bail!("w_zero_point of shape {:?} does not match {} output channels", t.shape, g.m),
        };
        Ok(Quant { x_zero, w_zero })
    }
}

impl Op for Conv {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let x = ty(inputs, 0)?;
        let g = self.geom(&x.shape, &ty(inputs, 1)?.shape)?;
        if self.integer {
            if x.dtype.is_float() {
                bail!("ConvInteger takes integers, got {}", x.dtype);
            }
            self.quant(inputs.get(2).is_some_and(|i| i.is_some()), inputs.get(3).copied().flatten().map(|i| i.ty), &g)?;
            return Ok(vec![TypeInfo::new(DType::I32, g.out_shape())]);
        }
        if !x.dtype.is_float() {
            return Err(Error::unsupported(format!("convolution on {}", x.dtype)));
        }
        Ok(vec![TypeInfo::new(x.dtype, g.out_shape())])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let (x, w) = (arg(inputs, 0)?, arg(inputs, 1)?);
        let g = self.geom(&x.shape, &w.shape)?;
        let get = |i: usize| inputs.get(i).copied().flatten();
        if self.integer {
            // Subtract the zero points, then convolve exactly (in f64).
            let xz = get(2).map_or(0.0, |t| t.to_f64()[0]);
            let xv: Vec<f64> = x.to_f64().iter().map(|v| v - xz).collect();
            let per_oc = w.len() / g.m.max(1);
            let wz = get(3).map(|t| t.to_f64());
            let wv: Vec<f64> = w
                .to_f64()
                .iter()
                .enumerate()
                .map(|(i, v)| v - wz.as_ref().map_or(0.0, |z| if z.len() == 1 { z[0] } else { z[i / per_oc] }))
                .collect();
            let y = eval_conv(&g, &xv, &wv, None);
            return Ok(vec![Tensor::from_f64(DType::I32, g.out_shape(), y)]);
        }
        let bias = get(2).map(|b| b.to_f64());
        let y = eval_conv(&g, &x.to_f64(), &w.to_f64(), bias.as_deref());
        Ok(vec![Tensor::from_f64(x.dtype, g.out_shape(), y)])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let g = self.geom(&cx.input(0)?.shape, &cx.input(1)?.shape)?;
        if g.transpose {
            return Ok(Lowering::one(conv_kernel(&g, cx.has_input(2))?));
        }
        if self.integer {
            let w_zero = if cx.has_input(3) { Some(cx.input(3)?) } else { None };
            let q = self.quant(cx.has_input(2), w_zero, &g)?;
            return conv_block(&g, false, Some(q));
        }
        if !cx.target.tiles.is_empty() {
            if crate::products::worth_tiling(g.mg(), g.n * g.outs.iter().product::<usize>()) {
                return conv_tiled(&g, cx.has_input(2), &cx.target);
            }
            // Depthwise and other thin grouped convolutions: one thread per
            // output position and channel block spreads them over the whole
            // GPU, where the register-blocked product (tuned for lavapipe)
            // gives each group's few outputs to a handful of threads.
            if g.group > 1 && cx.target.tuning.direct_grouped.unwrap_or(true) {
                return Ok(Lowering::one(conv_kernel(&g, cx.has_input(2))?));
            }
        }
        conv_block(&g, cx.has_input(2), None)
    }
}

/// Extents of the zero-padded input a forward convolution reads: every
/// window fits, so the kernel needs no bounds checks.
fn padded_extents(g: &Geom) -> Vec<usize> {
    (0..g.ins.len())
        .map(|d| {
            let need = (g.outs[d].max(1) - 1) * g.strides[d] + span(g.ks[d], g.dil[d]);
            need.max(g.ins[d] + g.pad[d] as usize)
        })
        .collect()
}

/// A kernel copying `x` into its zero-padded form `xp` (extents `hp`, the
/// input starting at the begin pads).
fn pad_kernel(g: &Geom, hp: &[usize], q: Option<Quant>) -> Kernel {
    let r = g.ins.len();
    let (hpsp, insp): (usize, usize) = (hp.iter().product(), g.ins.iter().product());
    let ist = strides(&g.ins);
    let mut body = format!(
        "    let nc = i / {hpsp}u;\n    let q = i % {hpsp}u;\n    var inside = true;\n    var src = nc * {insp}u;\n"
    );
    let hst = strides(hp);
    for d in 0..r {
        body += &format!(
            "    let t{d} = i32((q / {}u) % {}u) - {};\n    inside = inside && t{d} >= 0 && t{d} < {};\n    src = src + u32(max(t{d}, 0)) * {}u;\n",
            hst[d], hp[d], g.pad[d], g.ins[d], ist[d]
        );
    }
    let mut args = vec![KernelArg::new("x", TensorRef::Input(0)), KernelArg::new("xp", TensorRef::Temp(0))];
    body += &match q {
        None => "    var v = 0.0;\n    if (inside) { v = ld_x(src); }\n".to_string(),
        // Integer inputs leave here as int32 with the zero point removed, so
        // padding contributes nothing.
        Some(q) => {
            let zero = if q.x_zero {
                args.push(KernelArg::new("zx", TensorRef::Input(2)));
                " - i32(ld_zx(0u))"
            } else {
                ""
            };
            format!("    var v = 0i;\n    if (inside) {{ v = i32(ld_x(src)){zero}; }}\n")
        }
    };
    body += "    st_xp(i, v);\n";
    crate::wgsl::kernel_1d("conv_pad", args, g.n * g.c * hpsp, "", &body)
}

/// A forward convolution as an implicit product (see `matmul::block_kernel`):
/// rows are the output channels of a group, columns the output positions of
/// every image, the reduction runs over kernel taps and input channels, and
/// groups are batches.
fn conv_block(g: &Geom, has_bias: bool, q: Option<Quant>) -> Result<Lowering> {
    use super::matmul::{BlockSpec, block_kernel, block_shape};
    let r = g.ins.len();
    let (cg, mg) = (g.cg(), g.mg());
    let hp = padded_extents(g);
    // Integer inputs always go through the copy, which converts them.
    let needs_pad = hp != g.ins || q.is_some();
    let phys = if q.is_some() { crate::Phys::I32 } else { crate::Phys::F32 };
    let t = phys.wgsl();
    let (hpsp, ksp, outsp): (usize, usize, usize) =
        (hp.iter().product(), g.ks.iter().product(), g.outs.iter().product());
    let (hst, kst, ost) = (strides(&hp), strides(&g.ks), strides(&g.outs));
    let outsp = outsp.max(1);
    // Column base: image n, group g, the window's corner.
    let mut col = format!(
        "fn col_base(bi: u32, c: u32) -> u32 {{\n    let n = c / {outsp}u;\n    let o = c % {outsp}u;\n    return (n * {}u + bi * {cg}u) * {hpsp}u",
        g.c
    );
    for d in 0..r {
        col += &format!(" + ((o / {}u) % {}u) * {}u", ost[d], g.outs[d], g.strides[d] * hst[d]);
    }
    col += ";\n}\n";
    let mut helpers = format!(
        "fn row_base(bi: u32, r: u32) -> u32 {{ return (bi * {mg}u + r) * {}u; }}
{col}fn row_out(bi: u32, r: u32) -> u32 {{ return (bi * {mg}u + r) * {outsp}u; }}
fn col_out(bi: u32, c: u32) -> u32 {{ return (c / {outsp}u) * {}u + c % {outsp}u; }}
fn epilogue(bi: u32, r: u32, c: u32, o: u32, v: {t}) {{ st_y(o, v); }}
",
        cg * ksp,
        g.m * outsp
    );
    if has_bias {
        helpers += &format!("fn row_add(bi: u32, r: u32) -> f32 {{ return ld_b(bi * {mg}u + r); }}\n");
    }
    let w_zero = q.and_then(|q| q.w_zero);
    if let Some(per_channel) = w_zero {
        let idx = if per_channel { format!("bi * {mg}u + r") } else { "0u".into() };
        helpers += &format!("fn row_zero(bi: u32, r: u32) -> i32 {{ return i32(ld_zw({idx})); }}\n");
    }
    // Reduction: kernel taps outside, input channels inside.
    let mut k_open = String::new();
    let (mut tap, mut kf) = (vec!["0u".to_string()], vec!["0u".to_string()]);
    for d in 0..r {
        if g.ks[d] > 1 {
            k_open += &format!("    for (var k{d} = 0u; k{d} < {}u; k{d} = k{d} + 1u) {{\n", g.ks[d]);
            tap.push(format!("k{d} * {}u", g.dil[d] * hst[d]));
            kf.push(format!("k{d} * {}u", kst[d]));
        }
    }
    let loops = g.ks.iter().filter(|&&k| k > 1).count();
    k_open += &format!(
        "    let tap = {};\n    let kf = {};\n    for (var ic = 0u; ic < {cg}u; ic = ic + 1u) {{\n        let ro = ic * {ksp}u + kf;\n        let co = ic * {hpsp}u + tap;\n",
        tap.join(" + "),
        kf.join(" + ")
    );
    let k_close = "    }\n".repeat(loops + 1);
    let (rb, cb) = block_shape(mg, g.n * outsp);
    let mut args = vec![
        KernelArg::new("w", TensorRef::Input(1)),
        KernelArg::new("x", if needs_pad { TensorRef::Temp(0) } else { TensorRef::Input(0) }),
    ];
    if has_bias {
        args.push(KernelArg::new("b", TensorRef::Input(2)));
    }
    if w_zero.is_some() {
        args.push(KernelArg::new("zw", TensorRef::Input(3)));
    }
    args.push(KernelArg::new("y", TensorRef::Output(0)).stored_once());
    let mut main = block_kernel(&BlockSpec {
        name: format!("conv{r}d"),
        args,
        phys,
        rows: mg,
        cols: g.n * outsp,
        batch: g.group,
        rb,
        cb,
        row_arg: "w".into(),
        col_arg: "x".into(),
        helpers,
        k_open,
        k_close,
        scale: None,
        row_add: has_bias,
        col_add: false,
        convert_loads: q.is_some(),
        row_zero: w_zero.is_some(),
        col_zero: false,
    })?;
    main.flops = 2 * (g.group * mg * g.n * outsp * cg * ksp) as u64;
    if !needs_pad {
        return Ok(Lowering::one(main));
    }
    Ok(Lowering::Kernels {
        temps: vec![crate::TempSpec { elems: g.n * g.c * hpsp, phys }],
        kernels: vec![pad_kernel(g, &hp, q), main],
    })
}

/// A forward float convolution on the tiled product kernels (targets with
/// workgroup memory): rows are a group's output channels, columns the
/// output positions of every image, the reduction index `k` is input
/// channel x taps, split into its coordinates by `conv_columns`.
fn conv_tiled(g: &Geom, has_bias: bool, target: &crate::Target) -> Result<Lowering> {
    use crate::products::{Product, Words, cooperative, tiled};
    let r = g.ins.len();
    let (cg, mg) = (g.cg(), g.mg());
    let ksp: usize = g.ks.iter().product();
    let outsp = g.outs.iter().product::<usize>().max(1);
    // B through its column state (`conv_columns`), whole or in two steps.
    let load_b =
        conv_columns(g) + "fn load_b(bi: u32, c: u32, k: u32) -> f32 { return load_b_col(bi, b_col(bi, c), k); }\n";
    let address = format!(
        "fn load_a(bi: u32, r: u32, k: u32) -> f32 {{ return ld_w((bi * {mg}u + r) * {}u + k); }}\n{load_b}",
        cg * ksp
    );
    let bias = if has_bias { format!(" + ld_b(bi * {mg}u + r)") } else { String::new() };
    let epilogue = format!(
        "fn epilogue(bi: u32, r: u32, c: u32, v: f32) {{ st_y((c / {outsp}u) * {}u + (bi * {mg}u + r) * {outsp}u + c % {outsp}u, v{bias}); }}\n",
        g.m * outsp
    );
    let mut epilogue_args = vec![];
    if has_bias {
        epilogue_args.push(KernelArg::new("b", TensorRef::Input(2)));
    }
    epilogue_args.push(KernelArg::new("y", TensorRef::Output(0)));
    let p = Product {
        name: format!("conv{r}d"),
        rows: mg,
        cols: g.n * outsp,
        k: cg * ksp,
        batch: g.group,
        address,
        b_column: true,
        operand_args: vec![KernelArg::new("w", TensorRef::Input(1)), KernelArg::new("x", TensorRef::Input(0))],
        epilogue,
        epilogue_args,
        a_k_fast: true,
        b_k_fast: false,
        part_temp: 0,
        // The weights, [group][row][k]: read four along k where k allows.
        a_words: Some(Words { arg: "w".into(), batch: format!("bi * {}u", mg * cg * ksp), s_x: cg * ksp, s_k: 1 }),
        b_words: None,
    };
    let pk = if target.use_cooperative() { cooperative(&p, target)? } else { tiled(&p, target)? };
    Ok(Lowering::Kernels { temps: pk.temps, kernels: pk.kernels })
}

/// `b_col` and `load_b_col` of a convolution (see `Product::b_column`): the
/// column state is the input plane's base index and the window's corner per
/// spatial dimension, so per element only the tap's coordinates remain.
/// Outside the input (padding) an element is 0, read from a clamped place;
/// bounds checks appear only where a window can leave the input (inputs the
/// layout pass padded need none).
fn conv_columns(g: &Geom) -> String {
    let r = g.ins.len();
    let (insp, ksp, outsp): (usize, usize, usize) =
        (g.ins.iter().product(), g.ks.iter().product(), g.outs.iter().product::<usize>().max(1));
    let (ist, kst, ost) = (strides(&g.ins), strides(&g.ks), strides(&g.outs));
    let state = format!("array<i32, {}>", r + 1);
    // Coordinate `d` of flat index `x` over extents `ext` with strides `st`,
    // without the division or modulo that cannot matter.
    let coord = |x: &str, d: usize, st: &[usize], ext: &[usize]| match (d == 0, d + 1 == ext.len()) {
        (true, true) => x.to_string(),
        (true, false) => format!("({x} / {}u)", st[d]),
        (false, true) => format!("({x} % {}u)", ext[d]),
        (false, false) => format!("(({x} / {}u) % {}u)", st[d], ext[d]),
    };
    let mut col = format!(
        "fn b_col(bi: u32, c: u32) -> {state} {{\n    let n = c / {outsp}u;\n    let o = c % {outsp}u;\n    _ = o;\n    var s: {state};\n    s[0] = i32((n * {}u + bi * {}u) * {insp}u);\n",
        g.c,
        g.cg()
    );
    for d in 0..r {
        let corner = coord("o", d, &ost, &g.outs);
        col += &format!("    s[{}] = i32({corner} * {}u) - {};\n", d + 1, g.strides[d], g.pad[d]);
    }
    col += "    return s;\n}\n";
    let mut ld = format!("fn load_b_col(bi: u32, s: {state}, k: u32) -> f32 {{\n");
    ld += &if ksp == 1 {
        "    let ic = k;\n".to_string()
    } else {
        format!("    let ic = k / {ksp}u;\n    let t = k % {ksp}u;\n")
    };
    let mut at = format!("u32(s[0]) + ic * {insp}u");
    let mut inside = vec![];
    for (d, stride) in ist.iter().enumerate() {
        let tap = if g.ks[d] == 1 { "0u".to_string() } else { coord("t", d, &kst, &g.ks) };
        ld += &format!("    let i{d} = s[{}] + i32({tap} * {}u);\n", d + 1, g.dil[d]);
        let (low, high) = window_leaves_input(g, d);
        if low || high {
            inside.push(format!("i{d} >= 0 && i{d} < {}", g.ins[d]));
            at += &format!(" + u32(clamp(i{d}, 0, {})) * {stride}u", g.ins[d].max(1) - 1);
        } else {
            at += &format!(" + u32(i{d}) * {stride}u");
        }
    }
    ld += &if inside.is_empty() {
        format!("    return ld_x({at});\n}}\n")
    } else {
        format!("    return select(0.0, ld_x({at}), {});\n}}\n", inside.join(" && "))
    };
    col + &ld
}

/// Whether a forward convolution's windows reach below 0 and past the end
/// of the input along spatial dimension `d`.
fn window_leaves_input(g: &Geom, d: usize) -> (bool, bool) {
    let reach = ((g.outs[d].max(1) - 1) * g.strides[d] + (g.ks[d] - 1) * g.dil[d]) as i64 - g.pad[d];
    (g.pad[d] > 0, reach >= g.ins[d] as i64)
}

/// Input coordinate feeding output coordinate `o` through kernel tap `k`
/// in dimension `d`, if any.
fn tap(g: &Geom, d: usize, o: usize, k: usize) -> Option<usize> {
    let kd = (k * g.dil[d]) as i64;
    let i = if g.transpose {
        let t = o as i64 + g.pad[d] - kd;
        let s = g.strides[d] as i64;
        if t < 0 || t % s != 0 {
            return None;
        }
        t / s
    } else {
        (o * g.strides[d]) as i64 - g.pad[d] + kd
    };
    (i >= 0 && i < g.ins[d] as i64).then_some(i as usize)
}

/// CPU reference: a direct gather matching the kernel.
fn eval_conv(g: &Geom, x: &[f64], w: &[f64], bias: Option<&[f64]>) -> Vec<f64> {
    let (cg, mg) = (g.cg(), g.mg());
    let (insp, ksp, outsp): (usize, usize, usize) =
        (g.ins.iter().product(), g.ks.iter().product(), g.outs.iter().product());
    let (ist, kst, ost) = (strides(&g.ins), strides(&g.ks), strides(&g.outs));
    let r = g.ins.len();
    let mut y = vec![0.0; g.n * g.m * outsp];
    for n in 0..g.n {
        for oc in 0..g.m {
            let (grp, ocl) = (oc / mg, oc % mg);
            for op in 0..outsp {
                let mut s = bias.map_or(0.0, |b| b[oc]);
                'taps: for kf in 0..ksp {
                    let mut xi = 0;
                    for d in 0..r {
                        let (o, k) = ((op / ost[d]) % g.outs[d], (kf / kst[d]) % g.ks[d]);
                        match tap(g, d, o, k) {
                            Some(i) => xi += i * ist[d],
                            None => continue 'taps,
                        }
                    }
                    for ic in 0..cg {
                        let ci = grp * cg + ic;
                        let wi = if g.transpose { (ci * mg + ocl) * ksp + kf } else { (oc * cg + ic) * ksp + kf };
                        s += x[(n * g.c + ci) * insp + xi] * w[wi];
                    }
                }
                y[(n * g.m + oc) * outsp + op] = s;
            }
        }
    }
    y
}

/// Threads per workgroup of the gather kernel.
const WG: usize = 64;
/// Most output channels one thread accumulates.
const OCB_MAX: usize = 8;

/// Output channels per thread: the largest divisor of the group's channel
/// count up to `OCB_MAX`, so no thread has idle accumulators.
fn channel_block(mg: usize) -> usize {
    (1..=OCB_MAX.min(mg.max(1))).rev().find(|&b| mg.is_multiple_of(b)).unwrap_or(1)
}

/// WGSL for the loops over kernel taps of dimension `d` and deeper, ending
/// in `inner` with `xs` (input spatial offset) and `kf` (tap index) in scope.
fn tap_loops(g: &Geom, d: usize, inner: &str, indent: usize) -> String {
    let r = g.ins.len();
    let pad = " ".repeat(indent);
    if d == r {
        return inner.lines().map(|l| format!("{pad}{l}\n")).collect();
    }
    let (ist, kst) = (strides(&g.ins), strides(&g.ks));
    let prev_xs = if d == 0 { "0u".to_string() } else { format!("xs{}", d - 1) };
    let prev_kf = if d == 0 { "0u".to_string() } else { format!("kf{}", d - 1) };
    let mut s = String::new();
    if g.ks[d] == 1 {
        s += &format!("{pad}{{\n{pad}    let k{d} = 0u;\n");
    } else {
        s += &format!("{pad}for (var k{d} = 0u; k{d} < {}u; k{d} = k{d} + 1u) {{\n", g.ks[d]);
    }
    let body_indent = indent + 4;
    let p2 = " ".repeat(body_indent);
    let (ind, dil, st) = (g.ins[d], g.dil[d], g.strides[d]);
    if g.transpose {
        // o = i * s - pad + k * dil  =>  i = (o + pad - k * dil) / s
        s += &format!("{p2}let t{d} = b{d} - i32(k{d} * {dil}u);\n");
        let mut conds = vec![format!("t{d} < 0")];
        if st > 1 {
            conds.push(format!("(t{d} % {st}) != 0"));
        }
        conds.push(format!("t{d} >= {}", ind * st));
        s += &format!("{p2}if ({}) {{ continue; }}\n", conds.join(" || "));
        s += &format!("{p2}let i{d} = u32(t{d}) / {st}u;\n");
    } else {
        let (lo_check, hi_check) = window_leaves_input(g, d);
        if lo_check || hi_check {
            s += &format!("{p2}let t{d} = b{d} + i32(k{d} * {dil}u);\n");
            let mut conds = vec![];
            if lo_check {
                conds.push(format!("t{d} < 0"));
            }
            if hi_check {
                conds.push(format!("t{d} >= {ind}"));
            }
            s += &format!("{p2}if ({}) {{ continue; }}\n", conds.join(" || "));
            s += &format!("{p2}let i{d} = u32(t{d});\n");
        } else {
            s += &format!("{p2}let i{d} = u32(b{d}) + k{d} * {dil}u;\n");
        }
    }
    s += &format!("{p2}let xs{d} = {prev_xs} + i{d} * {}u;\n", ist[d]);
    s += &format!("{p2}let kf{d} = {prev_kf} + k{d} * {}u;\n", kst[d]);
    s += &tap_loops(g, d + 1, inner, body_indent);
    s += &format!("{pad}}}\n");
    s
}

/// The direct gather kernel: ConvTranspose everywhere, and thin grouped
/// convolutions (depthwise) on targets with workgroup memory.
fn conv_kernel(g: &Geom, has_bias: bool) -> Result<Kernel> {
    let r = g.ins.len();
    let (cg, mg) = (g.cg(), g.mg());
    let ocb = channel_block(mg);
    let blocks = mg / ocb.max(1);
    let (insp, ksp, outsp): (usize, usize, usize) =
        (g.ins.iter().product(), g.ks.iter().product(), g.outs.iter().product());
    let positions = g.n * outsp;
    let groups_x = positions.div_ceil(WG).max(1);
    let gx = groups_x.min(crate::wgsl::MAX_GROUPS as usize);
    let gz = groups_x.div_ceil(gx);
    let gy = g.group * blocks;
    if gy > crate::wgsl::MAX_GROUPS as usize || gz > crate::wgsl::MAX_GROUPS as usize {
        return Err(Error::unsupported(format!("convolution too large to dispatch ({gy} channel blocks)")));
    }
    // Weight strides: per input channel of the group, and per output channel.
    let (w_ic, w_j) = if g.transpose { (mg * ksp, ksp) } else { (ksp, cg * ksp) };
    let mut s = format!(
        "@compute @workgroup_size({WG}, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {{
    let pos = (wid.z * {gx}u + wid.x) * {WG}u + lid.x;
    if (pos >= {positions}u) {{ return; }}
    let n = pos / {outsp}u;
    let opos = pos % {outsp}u;
    let grp = wid.y / {blocks}u;
    let ocl = (wid.y % {blocks}u) * {ocb}u;
    let oc = grp * {mg}u + ocl;
    let xb = (n * {c}u + grp * {cg}u) * {insp}u;
",
        c = g.c,
    );
    s += &if g.transpose {
        format!("    let wb = (grp * {cg}u * {mg}u + ocl) * {ksp}u;\n")
    } else {
        format!("    let wb = oc * {cg}u * {ksp}u;\n")
    };
    for (d, st) in strides(&g.outs).iter().enumerate() {
        s += &format!("    let o{d} = (opos / {st}u) % {}u;\n", g.outs[d]);
        // b{d}: the tap-independent part of the input coordinate.
        s += &if g.transpose {
            format!("    let b{d} = i32(o{d}) + {};\n", g.pad[d])
        } else {
            format!("    let b{d} = i32(o{d} * {}u) - {};\n", g.strides[d], g.pad[d])
        };
    }
    for j in 0..ocb {
        s += &format!("    var acc{j} = 0.0;\n");
    }
    let last = r - 1;
    let mut inner = format!(
        "var xi = xb + xs{last};\nvar wi = wb + kf{last};\nfor (var ic = 0u; ic < {cg}u; ic = ic + 1u) {{\n    let xv = ld_x(xi);\n"
    );
    for j in 0..ocb {
        let off = if j == 0 { String::new() } else { format!(" + {}u", j * w_j) };
        inner += &format!("    acc{j} = acc{j} + xv * ld_w(wi{off});\n");
    }
    inner += &format!("    xi = xi + {insp}u;\n    wi = wi + {w_ic}u;\n}}\n");
    s += &tap_loops(g, 0, &inner, 4);
    s += &format!("    let yb = (n * {}u + oc) * {outsp}u + opos;\n", g.m);
    for j in 0..ocb {
        let bias = if has_bias { format!(" + ld_b(oc + {j}u)") } else { String::new() };
        s += &format!("    st_y(yb + {}u, acc{j}{bias});\n", j * outsp);
    }
    s += "}\n";
    let mut args = vec![KernelArg::new("x", TensorRef::Input(0)), KernelArg::new("w", TensorRef::Input(1))];
    if has_bias {
        args.push(KernelArg::new("b", TensorRef::Input(2)));
    }
    args.push(KernelArg::new("y", TensorRef::Output(0)).stored_once());
    let name = if g.transpose { "conv_transpose" } else { "conv" };
    Ok(Kernel {
        name: format!("{name}{r}d"),
        args,
        body: s,
        workgroup_size: [WG as u32, 1, 1],
        workgroups: [gx as u32, gy.max(1) as u32, gz as u32],
        flops: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Attr;

    fn attrs(list: &[(&str, Attr)]) -> Attrs {
        Attrs(list.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
    }

    fn ints(v: &[i64]) -> Attr {
        Attr::Ints(v.to_vec())
    }

    fn iota(shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        Tensor::from_f32(shape.to_vec(), (0..n).map(|i| i as f32).collect())
    }

    fn ones(shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        Tensor::from_f32(shape.to_vec(), vec![1.0; n])
    }

    fn run(op: &str, a: &[(&str, Attr)], ins: &[Option<&Tensor>]) -> Tensor {
        build(op, &attrs(a), 21).unwrap().eval(ins).unwrap().remove(0)
    }

    #[test]
    fn conv_basic_with_padding() {
        // ONNX test_basic_conv_with_padding: 5x5 iota, 3x3 ones, pads 1.
        let y =
            run("Conv", &[("pads", ints(&[1, 1, 1, 1]))], &[Some(&iota(&[1, 1, 5, 5])), Some(&ones(&[1, 1, 3, 3]))]);
        assert_eq!(y.shape, vec![1, 1, 5, 5]);
        let want = [
            12., 21., 27., 33., 24., 33., 54., 63., 72., 51., 63., 99., 108., 117., 81., 93., 144., 153., 162., 111.,
            72., 111., 117., 123., 84.,
        ];
        assert_eq!(y.to_f64(), want);
    }

    #[test]
    fn conv_strides_asymmetric_pads() {
        // ONNX test_conv_with_strides_and_asymmetric_padding: 7x5 iota.
        let a = [("pads", ints(&[1, 0, 1, 0])), ("strides", ints(&[2, 2]))];
        let y = run("Conv", &a, &[Some(&iota(&[1, 1, 7, 5])), Some(&ones(&[1, 1, 3, 3]))]);
        assert_eq!(y.shape, vec![1, 1, 4, 2]);
        assert_eq!(y.to_f64(), vec![21., 33., 99., 117., 189., 207., 171., 183.]);
    }

    #[test]
    fn conv_auto_pad_same_lower() {
        let a = [("auto_pad", Attr::Str("SAME_LOWER".into())), ("strides", ints(&[2, 2]))];
        let y = run("Conv", &a, &[Some(&iota(&[1, 1, 5, 5])), Some(&ones(&[1, 1, 3, 3]))]);
        assert_eq!(y.shape, vec![1, 1, 3, 3]);
        assert_eq!(y.to_f64(), vec![12., 27., 24., 63., 108., 81., 72., 117., 84.]);
    }

    #[test]
    fn conv_groups_and_bias() {
        // Depthwise 1-D: two channels, kernel [1, 2] and [3, 4], bias 10/20.
        let x = Tensor::from_f32(vec![1, 2, 3], vec![1., 2., 3., 4., 5., 6.]);
        let w = Tensor::from_f32(vec![2, 1, 2], vec![1., 2., 3., 4.]);
        let b = Tensor::from_f32(vec![2], vec![10., 20.]);
        let y = run("Conv", &[("group", Attr::Int(2))], &[Some(&x), Some(&w), Some(&b)]);
        assert_eq!(y.shape, vec![1, 2, 2]);
        assert_eq!(y.to_f64(), vec![15., 18., 52., 59.]);
    }

    #[test]
    fn conv_dilation() {
        // 1-D, kernel [1, 1] dilated by 2: y[i] = x[i] + x[i + 2].
        let x = Tensor::from_f32(vec![1, 1, 5], vec![1., 2., 4., 8., 16.]);
        let y = run("Conv", &[("dilations", ints(&[2]))], &[Some(&x), Some(&ones(&[1, 1, 2]))]);
        assert_eq!(y.to_f64(), vec![5., 10., 20.]);
    }

    #[test]
    fn conv_transpose_basic() {
        // ONNX test_convtranspose_1d: x [0,1,2], w ones [1,2,3]: out 5.
        let y = run("ConvTranspose", &[], &[Some(&iota(&[1, 1, 3])), Some(&ones(&[1, 2, 3]))]);
        assert_eq!(y.shape, vec![1, 2, 5]);
        assert_eq!(y.to_f64(), vec![0., 1., 3., 3., 2., 0., 1., 3., 3., 2.]);
    }

    #[test]
    fn conv_transpose_strides_pads() {
        // 1-D, stride 2, pads 1/1: natural length 2*(3-1)+3 = 7, minus 2.
        let x = Tensor::from_f32(vec![1, 1, 3], vec![1., 2., 3.]);
        let w = Tensor::from_f32(vec![1, 1, 3], vec![1., 10., 100.]);
        let y = run("ConvTranspose", &[("strides", ints(&[2])), ("pads", ints(&[1, 1]))], &[Some(&x), Some(&w)]);
        // full: [1, 10, 102, 20, 203, 30, 300] -> drop first and last
        assert_eq!(y.to_f64(), vec![10., 102., 20., 203., 30.]);
    }

    #[test]
    fn conv_transpose_output_shape_and_same() {
        let x = Tensor::from_f32(vec![1, 1, 3], vec![1., 2., 3.]);
        let w = Tensor::from_f32(vec![1, 1, 3], vec![1., 10., 100.]);
        // output_shape larger than natural: zeros appended.
        let y = run("ConvTranspose", &[("strides", ints(&[2])), ("output_shape", ints(&[8]))], &[Some(&x), Some(&w)]);
        assert_eq!(y.to_f64(), vec![1., 10., 102., 20., 203., 30., 300., 0.]);
        // SAME_UPPER: output 6, total pad 1 at the end (reference behaviour).
        let a = [("strides", ints(&[2])), ("auto_pad", Attr::Str("SAME_UPPER".into()))];
        let y = run("ConvTranspose", &a, &[Some(&x), Some(&w)]);
        assert_eq!(y.to_f64(), vec![1., 10., 102., 20., 203., 30.]);
    }

    #[test]
    fn conv_transpose_groups() {
        // Two groups, each 1 -> 1 channel, kernel 1: y = x * w per channel.
        let x = Tensor::from_f32(vec![1, 2, 2], vec![1., 2., 3., 4.]);
        let w = Tensor::from_f32(vec![2, 1, 1], vec![10., 100.]);
        let y = run("ConvTranspose", &[("group", Attr::Int(2))], &[Some(&x), Some(&w)]);
        assert_eq!(y.to_f64(), vec![10., 20., 300., 400.]);
    }

    #[test]
    fn conv_integer() {
        // ONNX test_convinteger_without_padding: x 2..10, x_zero_point 1, w ones.
        let x = Tensor::from_i64(DType::U8, vec![1, 1, 3, 3], (2..11).collect());
        let w = Tensor::from_i64(DType::U8, vec![1, 1, 2, 2], vec![1; 4]);
        let xz = Tensor::from_i64(DType::U8, vec![], vec![1]);
        let y = run("ConvInteger", &[], &[Some(&x), Some(&w), Some(&xz)]);
        assert_eq!((y.dtype, y.to_i64()), (DType::I32, vec![12, 16, 24, 28]));
        // A per-channel weight zero point of 1 zeroes the kernel.
        let wz = Tensor::from_i64(DType::U8, vec![1], vec![1]);
        let y = run("ConvInteger", &[], &[Some(&x), Some(&w), Some(&xz), Some(&wz)]);
        assert_eq!(y.to_i64(), vec![0; 4]);
    }

    #[test]
    fn channel_blocks() {
        assert_eq!(channel_block(64), 8);
        assert_eq!(channel_block(1), 1);
        assert_eq!(channel_block(6), 6);
        assert_eq!(channel_block(12), 6);
        assert_eq!(channel_block(11), 1);
    }
}
