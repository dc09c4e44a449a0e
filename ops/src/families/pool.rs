//! Pooling: MaxPool (with the optional Indices output), AveragePool,
//! LpPool and their Global forms, over any number of spatial dimensions.
//!
//! One thread per output element walks its window; windows are Cartesian
//! products, so the element count an average divides by is computed per
//! dimension and multiplied. Output sizes follow the ONNX reference
//! implementation: in ceil_mode the last window must start inside the input
//! or its left padding; averaged padding is bounded by the explicit pads,
//! never by the extra room ceil_mode adds. `storage_order` only changes the
//! Indices output (column-major spatial offsets).

use super::conv::{AutoPad, per_dim, usizes};
use crate::wgsl::{f32_lit, kernel_1d, strides};
use crate::{
    Attrs, DType, Error, Input, KernelArg, LowerCtx, Lowering, Op, Phys, Result, Tensor, TensorRef, TypeInfo, arg,
    bail, ty,
};

/// Builds a pooling op.
pub fn build(op_type: &str, a: &Attrs, _opset: i64) -> Result<Box<dyn Op>> {
    let kind = match op_type {
        "MaxPool" | "GlobalMaxPool" => Kind::Max { storage_order: a.int("storage_order", 0)? != 0 },
        "AveragePool" | "GlobalAveragePool" => Kind::Avg { count_include_pad: a.int("count_include_pad", 0)? != 0 },
        "LpPool" | "GlobalLpPool" => Kind::Lp { p: a.float("p", 2.0)? },
        _ => return Err(Error::unsupported(op_type.to_string())),
    };
    if op_type.starts_with("Global") {
        return Ok(Box::new(GlobalPool { kind }));
    }
    Ok(Box::new(Pool { kind, attrs: PoolAttrs::parse(a)? }))
}

/// What a window reduces to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Max { storage_order: bool },
    Avg { count_include_pad: bool },
    Lp { p: f32 },
}

/// Window attributes of the windowed pools.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolAttrs {
    pub auto_pad: AutoPad,
    pub kernel_shape: Vec<usize>,
    pub strides: Option<Vec<usize>>,
    pub dilations: Option<Vec<usize>>,
    pub pads: Option<Vec<usize>>,
    pub ceil_mode: bool,
}

impl PoolAttrs {
    fn parse(a: &Attrs) -> Result<PoolAttrs> {
        let kernel_shape =
            usizes(a, "kernel_shape")?.ok_or_else(|| Error::msg("attribute 'kernel_shape' is required"))?;
        Ok(PoolAttrs {
            auto_pad: AutoPad::parse(a)?,
            kernel_shape,
            strides: usizes(a, "strides")?,
            dilations: usizes(a, "dilations")?,
            pads: usizes(a, "pads")?,
            ceil_mode: a.int("ceil_mode", 0)? != 0,
        })
    }
}

/// A pooling window geometry with every size resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct Geom {
    /// Batch times channels.
    pub nc: usize,
    pub ins: Vec<usize>,
    pub ks: Vec<usize>,
    pub outs: Vec<usize>,
    pub strides: Vec<usize>,
    pub dil: Vec<usize>,
    pub pad_begin: Vec<usize>,
    pub pad_end: Vec<usize>,
}

fn span(k: usize, d: usize) -> usize {
    (k.max(1) - 1) * d + 1
}

fn pool_geom(at: &PoolAttrs, x: &[usize]) -> Result<Geom> {
    if x.len() < 3 {
        bail!("pooling needs input [N, C, spatial...], got {:?}", x);
    }
    let r = x.len() - 2;
    let ins = x[2..].to_vec();
    let ks = per_dim(&Some(at.kernel_shape.clone()), r, 1, "kernel_shape")?;
    let st = per_dim(&at.strides, r, 1, "strides")?;
    let dil = per_dim(&at.dilations, r, 1, "dilations")?;
    if st.contains(&0) || dil.contains(&0) || ks.contains(&0) {
        bail!("kernel_shape, strides and dilations must be positive");
    }
    let pads = per_dim(&at.pads, 2 * r, 0, "pads")?;
    let (mut outs, mut pb, mut pe) = (vec![], vec![], vec![]);
    for d in 0..r {
        let sw = span(ks[d], dil[d]);
        let (o, b, e) = match at.auto_pad {
            AutoPad::SameUpper | AutoPad::SameLower => {
                let o = ins[d].div_ceil(st[d]);
                let total = ((o.max(1) - 1) * st[d] + sw).saturating_sub(ins[d]);
                let b = if at.auto_pad == AutoPad::SameUpper { total / 2 } else { total - total / 2 };
                (o, b, total - b)
            }
            AutoPad::Valid | AutoPad::NotSet => {
                let (b, e) = if at.auto_pad == AutoPad::Valid { (0, 0) } else { (pads[d], pads[r + d]) };
                let padded = ins[d] + b + e;
                if padded < sw {
                    bail!("window span {sw} exceeds padded input {padded} in dimension {d}");
                }
                let mut o = if at.ceil_mode && at.auto_pad == AutoPad::NotSet {
                    (padded - sw).div_ceil(st[d]) + 1
                } else {
                    (padded - sw) / st[d] + 1
                };
                // The last window must start inside the input or left padding.
                if at.ceil_mode && (o - 1) * st[d] >= ins[d] + b {
                    o -= 1;
                }
                (o, b, e)
            }
        };
        outs.push(o);
        pb.push(b);
        pe.push(e);
    }
    Ok(Geom { nc: x[0] * x[1], ins, ks, outs, strides: st, dil, pad_begin: pb, pad_end: pe })
}

impl Geom {
    /// The global pool's window: the whole input.
    fn global(x: &[usize]) -> Result<Geom> {
        if x.len() < 2 {
            bail!("global pooling needs input [N, C, ...], got {:?}", x);
        }
        let ins = x[2..].to_vec();
        let r = ins.len();
        Ok(Geom {
            nc: x[0] * x[1],
            outs: vec![1; r],
            ks: ins.clone(),
            ins,
            strides: vec![1; r],
            dil: vec![1; r],
            pad_begin: vec![0; r],
            pad_end: vec![0; r],
        })
    }

    fn out_shape(&self, x: &[usize]) -> Vec<usize> {
        let mut s = x[..2].to_vec();
        s.extend(&self.outs);
        s
    }

    /// Input coordinate of tap `k` of output `o` in dimension `d` (may lie in padding).
    fn coord(&self, d: usize, o: usize, k: usize) -> i64 {
        (o * self.strides[d] + k * self.dil[d]) as i64 - self.pad_begin[d] as i64
    }

    /// The range of coordinates a window element counts in, for averages.
    fn count_range(&self, d: usize, include_pad: bool) -> (i64, i64) {
        if include_pad {
            (-(self.pad_begin[d] as i64), (self.ins[d] + self.pad_end[d]) as i64)
        } else {
            (0, self.ins[d] as i64)
        }
    }
}

/// CPU reference of a window reduction: outputs and (for Max) row-major or
/// column-major spatial offsets of the maxima, plus the channel offset.
fn eval_pool(g: &Geom, kind: Kind, x: &[f64]) -> (Vec<f64>, Vec<i64>) {
    let r = g.ins.len();
    let insp: usize = g.ins.iter().product();
    let outsp: usize = g.outs.iter().product();
    let ksp: usize = g.ks.iter().product();
    let (ist, ost, kst) = (strides(&g.ins), strides(&g.outs), strides(&g.ks));
    // Column-major strides for storage_order = 1.
    let cst: Vec<usize> = (0..r).map(|d| g.ins[..d].iter().product()).collect();
    let mut y = vec![0.0; g.nc * outsp];
    let mut idx = vec![0i64; g.nc * outsp];
    for c in 0..g.nc {
        for op in 0..outsp {
            let o: Vec<usize> = (0..r).map(|d| (op / ost[d]) % g.outs[d]).collect();
            let (mut acc, mut best, mut arg_pos) = (0.0, f64::NEG_INFINITY, None::<(usize, usize)>);
            'taps: for kf in 0..ksp {
                let (mut xi, mut ci) = (0, 0);
                for d in 0..r {
                    let t = g.coord(d, o[d], (kf / kst[d]) % g.ks[d]);
                    if t < 0 || t >= g.ins[d] as i64 {
                        continue 'taps;
                    }
                    xi += t as usize * ist[d];
                    ci += t as usize * cst[d];
                }
                let v = x[c * insp + xi];
                match kind {
                    Kind::Max { .. } => {
                        if arg_pos.is_none() || v > best {
                            best = v;
                            arg_pos = Some((xi, ci));
                        }
                    }
                    Kind::Avg { .. } => acc += v,
                    Kind::Lp { p } => acc += v.abs().powf(p as f64),
                }
            }
            let count = |include_pad: bool| -> f64 {
                (0..r)
                    .map(|d| {
                        let (lo, hi) = g.count_range(d, include_pad);
                        (0..g.ks[d]).filter(|&k| (lo..hi).contains(&g.coord(d, o[d], k))).count() as f64
                    })
                    .product()
            };
            let e = c * outsp + op;
            y[e] = match kind {
                Kind::Max { storage_order } => {
                    let (xi, ci) = arg_pos.unwrap_or((0, 0));
                    idx[e] = (c * insp + if storage_order { ci } else { xi }) as i64;
                    best
                }
                Kind::Avg { count_include_pad } => acc / count(count_include_pad),
                // The reference scales the padded mean back by the window size.
                Kind::Lp { p } => (ksp as f64 * acc / count(true)).powf(1.0 / p as f64),
            };
        }
    }
    (y, idx)
}

/// The lowest value of a physical type: the start of a max.
fn lowest(p: Phys) -> &'static str {
    match p {
        Phys::F32 => "bitcast<f32>(0xff800000u)",
        Phys::I32 => "i32(-2147483648)",
        Phys::U32 => "0u",
    }
}

/// WGSL accumulating `|v|^p`.
fn lp_term(p: f32) -> String {
    if p == 1.0 {
        "abs(v)".into()
    } else if p == 2.0 {
        "v * v".into()
    } else {
        format!("pow(abs(v), {})", f32_lit(p))
    }
}

/// The kernel of a window reduction; one thread per output element.
fn pool_kernel(g: &Geom, kind: Kind, phys: Phys, with_indices: bool) -> Result<Lowering> {
    let r = g.ins.len();
    let insp: usize = g.ins.iter().product();
    let outsp: usize = g.outs.iter().product::<usize>().max(1);
    let (ist, ost) = (strides(&g.ins), strides(&g.outs));
    let t = phys.wgsl();
    if phys != Phys::F32 && !matches!(kind, Kind::Max { .. }) {
        return Err(Error::unsupported(format!("{kind:?} pooling on integers")));
    }
    let mut s = format!("    let nc = i / {outsp}u;\n    let opos = i % {outsp}u;\n    let xb = nc * {insp}u;\n");
    for (d, ost) in ost.iter().enumerate() {
        s += &format!(
            "    let b{d} = i32(((opos / {ost}u) % {}u) * {}u) - {};\n",
            g.outs[d], g.strides[d], g.pad_begin[d]
        );
    }
    let count_stmt = |include_pad: bool| -> String {
        let mut c = "    var cnt = 1.0;\n".to_string();
        for d in 0..r {
            let (lo, hi) = g.count_range(d, include_pad);
            c += &format!(
                "    {{\n        var n = 0.0;\n        for (var k = 0u; k < {}u; k = k + 1u) {{\n            let q = b{d} + i32(k * {}u);\n            if (q >= {lo} && q < {hi}) {{ n = n + 1.0; }}\n        }}\n        cnt = cnt * n;\n    }}\n",
                g.ks[d], g.dil[d]
            );
        }
        c
    };
    // Per-thread state and the innermost update.
    let (init, update) = match kind {
        Kind::Max { storage_order } => {
            let pos = if storage_order {
                let terms: Vec<String> =
                    (0..r).map(|d| format!("u32(t{d}) * {}u", g.ins[..d].iter().product::<usize>())).collect();
                terms.join(" + ")
            } else {
                format!("xs{}", r - 1)
            };
            (
                format!("    var acc = {};\n    var am = 0u;\n    var found = false;\n", lowest(phys)),
                format!("if (!found || v > acc) {{ acc = v; am = {pos}; found = true; }}"),
            )
        }
        Kind::Avg { .. } => ("    var acc = 0.0;\n".to_string(), "acc = acc + v;".to_string()),
        Kind::Lp { p } => ("    var acc = 0.0;\n".to_string(), format!("acc = acc + {};", lp_term(p))),
    };
    s += &init;
    // Nested loops over the window; coordinates in padding are skipped.
    let mut close = String::new();
    for (d, ist) in ist.iter().enumerate() {
        let ind = "    ".repeat(d + 1);
        let prev = if d == 0 { "0u".to_string() } else { format!("xs{}", d - 1) };
        s += &format!("{ind}for (var k{d} = 0u; k{d} < {}u; k{d} = k{d} + 1u) {{\n", g.ks[d]);
        s += &format!("{ind}    let t{d} = b{d} + i32(k{d} * {}u);\n", g.dil[d]);
        s += &format!("{ind}    if (t{d} < 0 || t{d} >= {}) {{ continue; }}\n", g.ins[d]);
        s += &format!("{ind}    let xs{d} = {prev} + u32(t{d}) * {ist}u;\n");
        close = format!("{ind}}}\n") + &close;
    }
    let ind = "    ".repeat(r + 1);
    let last = if r == 0 { "0u".to_string() } else { format!("xs{}", r - 1) };
    s += &format!("{ind}let v = ld_x(xb + {last});\n{ind}{update}\n");
    s += &close;
    let ksp: usize = g.ks.iter().product();
    s += &match kind {
        Kind::Max { .. } => {
            let mut st = "    st_y(i, acc);\n".to_string();
            if with_indices {
                st += "    st_ind(i, i32(xb + am));\n";
            }
            st
        }
        Kind::Avg { count_include_pad } => count_stmt(count_include_pad) + "    st_y(i, acc / cnt);\n",
        Kind::Lp { p } => count_stmt(true) + &format!("    st_y(i, pow({ksp}.0 * acc / cnt, {}));\n", f32_lit(1.0 / p)),
    };
    let _ = t;
    let mut args =
        vec![KernelArg::new("x", TensorRef::Input(0)), KernelArg::new("y", TensorRef::Output(0)).stored_once()];
    if with_indices {
        args.push(KernelArg::new("ind", TensorRef::Output(1)));
    }
    let name = match kind {
        Kind::Max { .. } => "maxpool",
        Kind::Avg { .. } => "avgpool",
        Kind::Lp { .. } => "lppool",
    };
    Ok(Lowering::one(kernel_1d(name, args, g.nc * outsp, "", &s)))
}

/// MaxPool, AveragePool or LpPool.
#[derive(Debug)]
pub struct Pool {
    pub kind: Kind,
    pub attrs: PoolAttrs,
}

impl Op for Pool {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let x = ty(inputs, 0)?;
        let g = pool_geom(&self.attrs, &x.shape)?;
        let mut out = vec![TypeInfo::new(x.dtype, g.out_shape(&x.shape))];
        if matches!(self.kind, Kind::Max { .. }) {
            out.push(TypeInfo::new(DType::I64, g.out_shape(&x.shape)));
        }
        Ok(out)
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let x = arg(inputs, 0)?;
        let g = pool_geom(&self.attrs, &x.shape)?;
        let (y, idx) = eval_pool(&g, self.kind, &x.to_f64());
        let shape = g.out_shape(&x.shape);
        let mut out = vec![Tensor::from_f64(x.dtype, shape.clone(), y)];
        if matches!(self.kind, Kind::Max { .. }) {
            out.push(Tensor::from_i64(DType::I64, shape, idx));
        }
        Ok(out)
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let x = cx.input(0)?;
        let g = pool_geom(&self.attrs, &x.shape)?;
        // Indices only when the node has a real second output (an omitted
        // one comes as an empty placeholder).
        let indices = cx.outputs.get(1).is_some_and(|t| t.dtype == DType::I64 && t.numel() > 0);
        pool_kernel(&g, self.kind, x.dtype.phys(), indices)
    }
}

/// GlobalMaxPool, GlobalAveragePool or GlobalLpPool.
#[derive(Debug)]
pub struct GlobalPool {
    pub kind: Kind,
}

impl GlobalPool {
    /// Global pools have no padding: the Lp form is the plain p-norm.
    fn eval_global(&self, x: &Tensor) -> Result<Tensor> {
        let g = Geom::global(&x.shape)?;
        let (y, _) = eval_pool(&g, self.kind, &x.to_f64());
        Ok(Tensor::from_f64(x.dtype, g.out_shape(&x.shape), y))
    }
}

impl Op for GlobalPool {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let x = ty(inputs, 0)?;
        Ok(vec![TypeInfo::new(x.dtype, Geom::global(&x.shape)?.out_shape(&x.shape))])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        Ok(vec![self.eval_global(arg(inputs, 0)?)?])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let x = cx.input(0)?;
        pool_kernel(&Geom::global(&x.shape)?, self.kind, x.dtype.phys(), false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Attr;
    use crate::testing::*;

    fn ints(v: &[i64]) -> Attr {
        Attr::Ints(v.to_vec())
    }

    fn iota(shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        Tensor::from_f32(shape.to_vec(), (1..=n).map(|i| i as f32).collect())
    }

    fn run(op: &str, a: &[(&str, Attr)], x: &Tensor) -> Vec<Tensor> {
        build(op, &attrs(a), 22).unwrap().eval(&[Some(x)]).unwrap()
    }

    #[test]
    fn maxpool_precomputed_strides() {
        // ONNX test_maxpool_2d_precomputed_strides: 5x5 of 1..25, k2 s2.
        let out = run("MaxPool", &[("kernel_shape", ints(&[2, 2])), ("strides", ints(&[2, 2]))], &iota(&[1, 1, 5, 5]));
        assert_eq!(out[0].shape, vec![1, 1, 2, 2]);
        assert_eq!(out[0].to_f64(), vec![7., 9., 17., 19.]);
        assert_eq!(out[1].to_i64(), vec![6, 8, 16, 18]);
        let a = [("kernel_shape", ints(&[2, 2])), ("strides", ints(&[2, 2])), ("storage_order", Attr::Int(1))];
        assert_eq!(run("MaxPool", &a, &iota(&[1, 1, 5, 5]))[1].to_i64(), vec![6, 16, 8, 18]);
    }

    #[test]
    fn maxpool_ceil_mode() {
        // ONNX test_maxpool_2d_ceil: 4x4 of 1..16, k3 s2 ceil -> 2x2.
        let a = [("kernel_shape", ints(&[3, 3])), ("strides", ints(&[2, 2])), ("ceil_mode", Attr::Int(1))];
        let out = run("MaxPool", &a, &iota(&[1, 1, 4, 4]));
        assert_eq!(out[0].to_f64(), vec![11., 12., 15., 16.]);
        // test_maxpool_2d_ceil_output_size_reduce_by_one: 2x2, k1 s2 -> 1x1.
        let a = [("kernel_shape", ints(&[1, 1])), ("strides", ints(&[2, 2])), ("ceil_mode", Attr::Int(1))];
        assert_eq!(run("MaxPool", &a, &iota(&[1, 1, 2, 2]))[0].shape, vec![1, 1, 1, 1]);
    }

    #[test]
    fn maxpool_dilations_and_same_upper() {
        let a = [("kernel_shape", ints(&[2, 2])), ("dilations", ints(&[2, 2]))];
        assert_eq!(run("MaxPool", &a, &iota(&[1, 1, 4, 4]))[0].to_f64(), vec![11., 12., 15., 16.]);
        // SAME_UPPER, k3 s2 on 5x5: pads 1/1 -> 3x3 of maxima.
        let a =
            [("kernel_shape", ints(&[3, 3])), ("strides", ints(&[2, 2])), ("auto_pad", Attr::Str("SAME_UPPER".into()))];
        assert_eq!(
            run("MaxPool", &a, &iota(&[1, 1, 5, 5]))[0].to_f64(),
            vec![7., 9., 10., 17., 19., 20., 22., 24., 25.]
        );
    }

    #[test]
    fn averagepool_pads() {
        // 3x3 of 1..9, k2, pads 1: corners see 1 element, or 4 with pads.
        let a = [("kernel_shape", ints(&[2, 2])), ("pads", ints(&[1, 1, 1, 1]))];
        let y = run("AveragePool", &a, &iota(&[1, 1, 3, 3]))[0].to_f64();
        assert_eq!(y.len(), 16);
        assert_eq!(&y[..4], &[1.0, 1.5, 2.5, 3.0]);
        let mut a2 = a.to_vec();
        a2.push(("count_include_pad", Attr::Int(1)));
        let y = run("AveragePool", &a2, &iota(&[1, 1, 3, 3]))[0].to_f64();
        assert_eq!(&y[..4], &[0.25, 0.75, 1.25, 0.75]);
    }

    #[test]
    fn averagepool_ceil_last_window_on_pad() {
        // ONNX test_averagepool_2d_ceil_last_window_starts_on_pad.
        let a = [
            ("kernel_shape", ints(&[3, 3])),
            ("strides", ints(&[3, 3])),
            ("pads", ints(&[1, 1, 1, 1])),
            ("ceil_mode", Attr::Int(1)),
            ("count_include_pad", Attr::Int(1)),
        ];
        let y = run("AveragePool", &a, &iota(&[1, 1, 2, 2]))[0].clone();
        assert_eq!(y.shape, vec![1, 1, 1, 1]);
        assert_eq!(y.to_f64(), vec![(10.0f32 / 9.0) as f64]);
    }

    #[test]
    fn averagepool_ceil_counts_only_padded_extent() {
        // 1-D length 4, k3 s2 ceil, pads 0: windows [0,3) and [2,5); the
        // second sees x[2], x[3] only, even with count_include_pad.
        let a = [
            ("kernel_shape", ints(&[3])),
            ("strides", ints(&[2])),
            ("ceil_mode", Attr::Int(1)),
            ("count_include_pad", Attr::Int(1)),
        ];
        assert_eq!(run("AveragePool", &a, &iota(&[1, 1, 4]))[0].to_f64(), vec![2.0, 3.5]);
    }

    #[test]
    fn lppool_and_globals() {
        let x = Tensor::from_f32(vec![1, 1, 4], vec![3., -4., 0., 1.]);
        let a = [("kernel_shape", ints(&[2])), ("strides", ints(&[2])), ("p", Attr::Int(2))];
        assert_eq!(run("LpPool", &a, &x)[0].to_f64(), vec![5.0, 1.0]);
        assert_eq!(run("GlobalAveragePool", &[], &x)[0].to_f64(), vec![0.0]);
        assert_eq!(run("GlobalMaxPool", &[], &x)[0].to_f64(), vec![3.0]);
        let y = run("GlobalLpPool", &[("p", Attr::Int(1))], &x)[0].clone();
        assert_eq!((y.shape.clone(), y.to_f64()), (vec![1, 1, 1], vec![8.0]));
    }

    #[test]
    fn maxpool_integers() {
        let x = Tensor::from_i64(DType::U8, vec![1, 1, 3], vec![5, 200, 7]);
        let y = run("MaxPool", &[("kernel_shape", ints(&[2]))], &x);
        assert_eq!(y[0].dtype, DType::U8);
        assert_eq!(y[0].to_i64(), vec![200, 200]);
    }
}
