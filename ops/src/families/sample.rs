//! Sampling and scattering ops: GridSample, AffineGrid, RoiAlign, Col2Im,
//! MaxUnpool and DeformConv.
//!
//! All are gathers written as one thread per output element, with shapes,
//! strides and attributes baked into the WGSL, except MaxUnpool, which
//! zero-fills its output and then scatters one input element per thread.
//! Run-time data (grids, thetas, regions, offsets, masks, indices) is read
//! by the kernels; only operands that decide shapes (AffineGrid's size,
//! Col2Im's image and block shapes, MaxUnpool's output_shape) must be
//! compile-time constants.
//!
//! Semantics follow the ONNX reference implementation, including its
//! quirks: GridSample's nearest mode rounds half to even and reflects
//! before truncating; RoiAlign's max mode takes the maximum of the
//! *weighted* corner values; MaxUnpool reads its indices in the unpadded
//! (inferred) output shape and places that block at the origin of a
//! larger requested output. CPU references compute in f64.

use crate::families::conv::{per_dim, usizes};
use crate::families::movement::{kernel, map_coords};
use crate::wgsl::{f32_lit, strides, unravel};
use crate::{
    Attrs, Error, Input, KernelArg, LowerCtx, Lowering, Op, Result, TempSpec, Tensor, TensorRef, TypeInfo, arg, bail,
    need_value, numel, ty, unsupported,
};

/// Builds an op of this family.
pub fn build(op_type: &str, a: &Attrs, opset: i64) -> Result<Box<dyn Op>> {
    Ok(match op_type {
        "GridSample" => Box::new(GridSample::parse(a)?),
        "AffineGrid" => Box::new(AffineGrid { align: a.int("align_corners", 0)? != 0 }),
        "RoiAlign" => {
            let default_ctm = if opset >= 16 { "half_pixel" } else { "output_half_pixel" };
            let half_pixel = match a.str("coordinate_transformation_mode", default_ctm)? {
                "half_pixel" => true,
                "output_half_pixel" => false,
                m => bail!("unknown coordinate_transformation_mode '{m}'"),
            };
            let max = match a.str("mode", "avg")? {
                "avg" => false,
                "max" => true,
                m => bail!("unknown mode '{m}'"),
            };
            let positive = |name: &str| -> Result<usize> {
                let v = a.int(name, 1)?;
                if v < 1 {
                    bail!("attribute '{name}' must be positive, got {v}");
                }
                Ok(v as usize)
            };
            Box::new(RoiAlign {
                half_pixel,
                max,
                out_h: positive("output_height")?,
                out_w: positive("output_width")?,
                sampling_ratio: a.int("sampling_ratio", 0)?.max(0) as usize,
                spatial_scale: a.float("spatial_scale", 1.0)? as f64,
            })
        }
        "Col2Im" => Box::new(Col2Im {
            dilations: usizes(a, "dilations")?,
            pads: usizes(a, "pads")?,
            strides: usizes(a, "strides")?,
        }),
        "MaxUnpool" => Box::new(MaxUnpool {
            kernel_shape: usizes(a, "kernel_shape")?
                .ok_or_else(|| Error::msg("attribute 'kernel_shape' is required"))?,
            pads: usizes(a, "pads")?,
            strides: usizes(a, "strides")?,
        }),
        "DeformConv" => Box::new(DeformConv {
            dilations: usizes(a, "dilations")?,
            group: a.int("group", 1)?.max(1) as usize,
            kernel_shape: usizes(a, "kernel_shape")?,
            offset_group: a.int("offset_group", 1)?.max(1) as usize,
            pads: usizes(a, "pads")?,
            strides: usizes(a, "strides")?,
        }),
        _ => return Err(Error::unsupported(op_type)),
    })
}

/// Rejects non-float data: these ops are defined on floats only.
fn need_float(t: &TypeInfo, what: &str) -> Result<()> {
    if t.dtype.is_float() { Ok(()) } else { Err(Error::unsupported(format!("{} {what}", t.dtype))) }
}

/// A constant 1-D integer operand as non-negative sizes.
fn const_sizes(t: &Tensor, what: &str) -> Result<Vec<usize>> {
    let v = t.to_i64();
    if v.iter().any(|&x| x < 0) {
        bail!("{what} has negative entries: {v:?}");
    }
    Ok(v.iter().map(|&x| x as usize).collect())
}

/// WGSL dot product of coordinates `{prefix}{first + d}` and strides.
fn dot_wgsl(prefix: &str, first: usize, st: &[usize]) -> String {
    let terms: Vec<String> = st.iter().enumerate().map(|(d, s)| format!("{prefix}{} * {s}u", first + d)).collect();
    if terms.is_empty() { "0u".to_string() } else { terms.join(" + ") }
}

// ---------------------------------------------------------------- GridSample

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Interp {
    Nearest,
    Linear,
    Cubic,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Padding {
    Zeros,
    Border,
    Reflection,
}

/// GridSample over any number of spatial dims (4-D and 5-D in practice).
/// The grid's last axis holds coordinates in reverse dim order (x first).
#[derive(Debug)]
pub struct GridSample {
    interp: Interp,
    padding: Padding,
    align: bool,
}

/// Keys' cubic convolution coefficients (a = -0.75) for taps at -1, 0, 1, 2
/// around a point at fraction `t` past tap 0.
fn cubic_coeffs(t: f64) -> [f64; 4] {
    const A: f64 = -0.75;
    let (x0, x1, x2, x3) = (t + 1.0, t, 1.0 - t, 2.0 - t);
    [
        ((A * x0 - 5.0 * A) * x0 + 8.0 * A) * x0 - 4.0 * A,
        ((A + 2.0) * x1 - (A + 3.0)) * x1 * x1 + 1.0,
        ((A + 2.0) * x2 - (A + 3.0)) * x2 * x2 + 1.0,
        ((A * x3 - 5.0 * A) * x3 + 8.0 * A) * x3 - 4.0 * A,
    ]
}

/// Reflects `x` by the nearer border until it lies in `[lo, hi]`.
fn reflect(x: f64, lo: f64, hi: f64) -> f64 {
    let range = hi - lo;
    if range <= 0.0 {
        return lo;
    }
    if x < lo {
        let dx = lo - x;
        let n = (dx / range).floor();
        let r = dx - n * range;
        if n as i64 % 2 == 0 { lo + r } else { hi - r }
    } else if x > hi {
        let dx = x - hi;
        let n = (dx / range).floor();
        let r = dx - n * range;
        if n as i64 % 2 == 0 { hi - r } else { lo + r }
    } else {
        x
    }
}

/// WGSL versions of `cubic_coeffs` and `reflect`.
const GRID_HELPERS: &str = "
fn gs_cubic(t: f32) -> array<f32, 4> {
    let a = -0.75;
    let x0 = t + 1.0;
    let x2 = 1.0 - t;
    let x3 = 2.0 - t;
    return array<f32, 4>(
        ((a * x0 - 5.0 * a) * x0 + 8.0 * a) * x0 - 4.0 * a,
        ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0,
        ((a + 2.0) * x2 - (a + 3.0)) * x2 * x2 + 1.0,
        ((a * x3 - 5.0 * a) * x3 + 8.0 * a) * x3 - 4.0 * a);
}
fn gs_reflect(x: f32, lo: f32, hi: f32) -> f32 {
    let range = hi - lo;
    if (range <= 0.0) { return lo; }
    if (x < lo) {
        let dx = lo - x;
        let n = floor(dx / range);
        let r = dx - n * range;
        return select(hi - r, lo + r, i32(n) % 2 == 0);
    }
    if (x > hi) {
        let dx = x - hi;
        let n = floor(dx / range);
        let r = dx - n * range;
        return select(lo + r, hi - r, i32(n) % 2 == 0);
    }
    return x;
}
";

impl GridSample {
    fn parse(a: &Attrs) -> Result<GridSample> {
        let interp = match a.str("mode", "linear")? {
            "nearest" => Interp::Nearest,
            "linear" | "bilinear" => Interp::Linear,
            "cubic" | "bicubic" => Interp::Cubic,
            m => bail!("unknown mode '{m}'"),
        };
        let padding = match a.str("padding_mode", "zeros")? {
            "zeros" => Padding::Zeros,
            "border" => Padding::Border,
            "reflection" => Padding::Reflection,
            m => bail!("unknown padding_mode '{m}'"),
        };
        Ok(GridSample { interp, padding, align: a.int("align_corners", 0)? != 0 })
    }

    fn out_shape(&self, x: &[usize], grid: &[usize]) -> Result<Vec<usize>> {
        let r = x.len().saturating_sub(2);
        if x.len() < 3 || grid.len() != x.len() || grid[0] != x[0] || grid[r + 1] != r {
            bail!("X of shape {x:?} and grid of shape {grid:?} do not match (N x C x D1.. and N x O1.. x rank)");
        }
        if self.interp == Interp::Cubic && r != 2 {
            unsupported!("cubic GridSample over {r} spatial dims");
        }
        Ok([&x[..2], &grid[1..=r]].concat())
    }

    /// The valid coordinate range of a dim of `len` pixels.
    fn bounds(&self, len: usize) -> (f64, f64) {
        if self.align { (0.0, len as f64 - 1.0) } else { (-0.5, len as f64 - 0.5) }
    }

    /// Pixel coordinate of normalized `g`, rounded and folded into range
    /// as the mode and padding ask.
    fn source_coord(&self, g: f64, len: usize) -> f64 {
        let l = len as f64;
        let mut x = if self.align { (g + 1.0) / 2.0 * (l - 1.0) } else { ((g + 1.0) * l - 1.0) / 2.0 };
        if self.interp == Interp::Nearest {
            x = x.round_ties_even();
        }
        let (lo, hi) = self.bounds(len);
        if x < lo || x > hi {
            x = match self.padding {
                Padding::Zeros => x,
                Padding::Border => x.clamp(0.0, l - 1.0),
                Padding::Reflection => reflect(x, lo, hi),
            };
        }
        x
    }

    /// First tap index and tap weights around coordinate `x`.
    fn taps(&self, x: f64) -> (i64, Vec<f64>) {
        match self.interp {
            Interp::Nearest => (x as i64, vec![1.0]),
            Interp::Linear => {
                let f = x.floor();
                (f as i64, vec![1.0 - (x - f), x - f])
            }
            Interp::Cubic => {
                let f = x.floor();
                (f as i64 - 1, cubic_coeffs(x - f).to_vec())
            }
        }
    }

    /// Where tap `i` of a dim of `len` pixels reads, or None for a zero.
    fn pixel(&self, i: i64, len: usize) -> Option<usize> {
        let n = len as i64;
        match self.padding {
            Padding::Zeros => (0..n).contains(&i).then_some(i as usize),
            Padding::Border => Some(i.clamp(0, n - 1) as usize),
            Padding::Reflection => {
                let (lo, hi) = self.bounds(len);
                Some((reflect(i as f64, lo, hi) as i64).clamp(0, n - 1) as usize)
            }
        }
    }

    /// WGSL statements mapping tap index `j{d}` of a dim of `len` pixels to
    /// `m{d}` and its validity `v{d}`.
    fn pixel_wgsl(&self, d: usize, len: usize) -> String {
        let n = len as i32;
        match self.padding {
            Padding::Zeros => {
                format!("let v{d} = j{d} >= 0 && j{d} < {n}; let m{d} = u32(clamp(j{d}, 0, {}));", n - 1)
            }
            Padding::Border => format!("let v{d} = true; let m{d} = u32(clamp(j{d}, 0, {}));", n - 1),
            Padding::Reflection => {
                let (lo, hi) = self.bounds(len);
                format!(
                    "let v{d} = true; let m{d} = u32(clamp(i32(gs_reflect(f32(j{d}), {}, {})), 0, {}));",
                    f32_lit(lo as f32),
                    f32_lit(hi as f32),
                    n - 1
                )
            }
        }
    }

    /// WGSL computing coordinate `x{d}` from grid value `g` for a dim of
    /// `len` pixels, then its first tap `i{d}` and weights `w{d}`.
    fn coord_wgsl(&self, d: usize, g: &str, len: usize) -> String {
        let l = f32_lit(len as f32);
        let mut s = if self.align {
            format!("    var x{d} = ({g} + 1.0) / 2.0 * ({l} - 1.0);\n")
        } else {
            format!("    var x{d} = (({g} + 1.0) * {l} - 1.0) / 2.0;\n")
        };
        if self.interp == Interp::Nearest {
            s += &format!("    x{d} = round(x{d});\n");
        }
        let (lo, hi) = self.bounds(len);
        let (lo, hi) = (f32_lit(lo as f32), f32_lit(hi as f32));
        match self.padding {
            Padding::Zeros => {}
            Padding::Border => {
                s += &format!("    if (x{d} < {lo} || x{d} > {hi}) {{ x{d} = clamp(x{d}, 0.0, {l} - 1.0); }}\n")
            }
            Padding::Reflection => {
                s += &format!("    if (x{d} < {lo} || x{d} > {hi}) {{ x{d} = gs_reflect(x{d}, {lo}, {hi}); }}\n")
            }
        }
        s += &match self.interp {
            Interp::Nearest => format!("    let i{d} = i32(x{d});\n    let w{d} = array<f32, 1>(1.0);\n"),
            Interp::Linear => format!(
                "    let f{d} = floor(x{d});\n    let i{d} = i32(f{d});\n    let w{d} = array<f32, 2>(1.0 - (x{d} - f{d}), x{d} - f{d});\n"
            ),
            Interp::Cubic => {
                format!(
                    "    let f{d} = floor(x{d});\n    let i{d} = i32(f{d}) - 1;\n    let w{d} = gs_cubic(x{d} - f{d});\n"
                )
            }
        };
        s
    }

    fn n_taps(&self) -> usize {
        match self.interp {
            Interp::Nearest => 1,
            Interp::Linear => 2,
            Interp::Cubic => 4,
        }
    }
}

impl Op for GridSample {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let (x, g) = (ty(inputs, 0)?, ty(inputs, 1)?);
        need_float(x, "X")?;
        need_float(g, "grid")?;
        Ok(vec![TypeInfo::new(x.dtype, self.out_shape(&x.shape, &g.shape)?)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let (x, g) = (arg(inputs, 0)?, arg(inputs, 1)?);
        let out = self.out_shape(&x.shape, &g.shape)?;
        let dims = &x.shape[2..];
        let r = dims.len();
        let (xv, gv) = (x.to_f64(), g.to_f64());
        let xs = strides(&x.shape);
        let y = map_coords(&out, |o| {
            let gbase = (o[0] * numel(&out[2..])
                + o[2..].iter().zip(strides(&out[2..])).map(|(c, s)| c * s).sum::<usize>())
                * r;
            let taps: Vec<(i64, Vec<f64>)> =
                (0..r).map(|d| self.taps(self.source_coord(gv[gbase + r - 1 - d], dims[d]))).collect();
            let corners = map_coords(&vec![self.n_taps(); r], |k| k.to_vec());
            corners
                .iter()
                .map(|k| {
                    let mut off = o[0] * xs[0] + o[1] * xs[1];
                    let mut w = 1.0;
                    for d in 0..r {
                        match self.pixel(taps[d].0 + k[d] as i64, dims[d]) {
                            Some(m) => off += m * xs[d + 2],
                            None => return 0.0,
                        }
                        w *= taps[d].1[k[d]];
                    }
                    w * xv[off]
                })
                .sum()
        });
        Ok(vec![Tensor::from_f64(x.dtype, out, y)])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let (x, g) = (cx.input(0)?, cx.input(1)?);
        let out = self.out_shape(&x.shape, &g.shape)?;
        let dims = &x.shape[2..];
        let r = dims.len();
        let xs = strides(&x.shape);
        let gsp = numel(&out[2..]);
        let mut body = unravel("c", "i", &out);
        // Grid element of (n, o...): the spatial part of i is i % gsp.
        body += &format!("    let gb = (c0 * {gsp}u + i % {gsp}u) * {r}u;\n");
        for (d, &len) in dims.iter().enumerate() {
            body += &self.coord_wgsl(d, &format!("ld_grid(gb + {}u)", r - 1 - d), len);
        }
        body += &format!("    let xb = c0 * {}u + c1 * {}u;\n    var acc = 0.0;\n", xs[0], xs[1]);
        let taps = self.n_taps();
        let mut inner = format!(
            "if ({}) {{ acc = acc + {} * ld_x(xb + {}); }}",
            (0..r).map(|d| format!("v{d}")).collect::<Vec<_>>().join(" && "),
            (0..r).map(|d| format!("w{d}[k{d}]")).collect::<Vec<_>>().join(" * "),
            (0..r).map(|d| format!("m{d} * {}u", xs[d + 2])).collect::<Vec<_>>().join(" + ")
        );
        for d in (0..r).rev() {
            inner = format!(
                "for (var k{d} = 0; k{d} < {taps}; k{d} = k{d} + 1) {{ let j{d} = i{d} + k{d}; {} {inner} }}",
                self.pixel_wgsl(d, dims[d])
            );
        }
        body += &format!("    {inner}\n    st_y(i, acc);");
        let args = vec![
            KernelArg::new("x", TensorRef::Input(0)),
            KernelArg::new("grid", TensorRef::Input(1)),
            KernelArg::new("y", TensorRef::Output(0)),
        ];
        Ok(Lowering::one(kernel("grid_sample", args, numel(&out), GRID_HELPERS, &body)))
    }
}

// ---------------------------------------------------------------- AffineGrid

/// AffineGrid: the sampling grid of an affine transform `theta` (N x 2 x 3
/// for 2-D, N x 3 x 4 for 3-D) over an output of constant `size`.
#[derive(Debug)]
pub struct AffineGrid {
    align: bool,
}

impl AffineGrid {
    /// Spatial dims of the output from theta's shape and the size operand.
    fn spatial(theta: &[usize], size: &Tensor) -> Result<Vec<usize>> {
        let size = const_sizes(size, "size")?;
        let r = size.len().saturating_sub(2);
        if !(r == 2 || r == 3) || theta != [size[0], r, r + 1] {
            bail!("theta of shape {theta:?} does not match size {size:?} (N x 2 x 3 with 4 sizes, N x 3 x 4 with 5)");
        }
        Ok(size[2..].to_vec())
    }

    /// Normalized base coordinate of pixel `i` of `len`.
    fn base(&self, i: usize, len: usize) -> f64 {
        let (i, l) = (i as f64, len as f64);
        match (self.align, len) {
            (true, 1) => -1.0,
            (true, _) => -1.0 + 2.0 * i / (l - 1.0),
            (false, _) => -1.0 + (2.0 * i + 1.0) / l,
        }
    }

    /// WGSL of `base` for coordinate variable `c` of a dim of `len`.
    fn base_wgsl(&self, c: &str, len: usize) -> String {
        let l = f32_lit(len as f32);
        match (self.align, len) {
            (true, 1) => "-1.0".to_string(),
            (true, _) => format!("(-1.0 + 2.0 * f32({c}) / ({l} - 1.0))"),
            (false, _) => format!("(-1.0 + (2.0 * f32({c}) + 1.0) / {l})"),
        }
    }
}

impl Op for AffineGrid {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let theta = ty(inputs, 0)?;
        need_float(theta, "theta")?;
        let sp = Self::spatial(&theta.shape, need_value(inputs, 1, "size")?)?;
        let out = [&[theta.shape[0]][..], &sp, &[sp.len()]].concat();
        Ok(vec![TypeInfo::new(theta.dtype, out)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let theta = arg(inputs, 0)?;
        let sp = Self::spatial(&theta.shape, arg(inputs, 1)?)?;
        let r = sp.len();
        let out = [&[theta.shape[0]][..], &sp, &[r]].concat();
        let tv = theta.to_f64();
        let y = map_coords(&out, |c| {
            let (n, k) = (c[0], c[r + 1]);
            // Homogeneous base point: x (last dim) first, then y, (z), 1.
            let mut p: Vec<f64> = (0..r).map(|j| self.base(c[r - j], sp[r - 1 - j])).collect();
            p.push(1.0);
            p.iter().enumerate().map(|(j, v)| tv[(n * r + k) * (r + 1) + j] * v).sum()
        });
        Ok(vec![Tensor::from_f64(theta.dtype, out, y)])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let theta = cx.input(0)?;
        let sp = Self::spatial(&theta.shape, cx.const_input(1, "size")?)?;
        let r = sp.len();
        let out = [&[theta.shape[0]][..], &sp, &[r]].concat();
        let mut body = unravel("c", "i", &out);
        body += &format!("    let tb = (c0 * {r}u + c{}) * {}u;\n", r + 1, r + 1);
        let mut terms: Vec<String> = (0..r)
            .map(|j| format!("ld_theta(tb + {j}u) * {}", self.base_wgsl(&format!("c{}", r - j), sp[r - 1 - j])))
            .collect();
        terms.push(format!("ld_theta(tb + {r}u)"));
        body += &format!("    st_y(i, {});", terms.join(" + "));
        let args = vec![KernelArg::new("theta", TensorRef::Input(0)), KernelArg::new("y", TensorRef::Output(0))];
        Ok(Lowering::one(kernel("affine_grid", args, numel(&out), "", &body)))
    }
}

// ---------------------------------------------------------------- RoiAlign

/// RoiAlign over N x C x H x W with regions (num_rois x 4: x1, y1, x2, y2)
/// and their batch indices; average or max over a sampling grid per bin.
#[derive(Debug)]
pub struct RoiAlign {
    half_pixel: bool,
    max: bool,
    out_h: usize,
    out_w: usize,
    /// Samples per bin along each axis; 0 = ceil(roi size / bins).
    sampling_ratio: usize,
    spatial_scale: f64,
}

/// Bilinear corner offsets and weights of a RoiAlign sample at (y, x), as
/// the reference computes them (all zero outside [-1, size]).
fn roi_corners(y: f64, x: f64, h: usize, w: usize) -> [(usize, f64); 4] {
    if y < -1.0 || y > h as f64 || x < -1.0 || x > w as f64 {
        return [(0, 0.0); 4];
    }
    let (mut y, mut x) = (y.max(0.0), x.max(0.0));
    let (mut y0, mut x0) = (y as usize, x as usize);
    let (y1, x1);
    if y0 >= h - 1 {
        y0 = h - 1;
        y1 = y0;
        y = y0 as f64;
    } else {
        y1 = y0 + 1;
    }
    if x0 >= w - 1 {
        x0 = w - 1;
        x1 = x0;
        x = x0 as f64;
    } else {
        x1 = x0 + 1;
    }
    let (ly, lx) = (y - y0 as f64, x - x0 as f64);
    let (hy, hx) = (1.0 - ly, 1.0 - lx);
    [(y0 * w + x0, hy * hx), (y0 * w + x1, hy * lx), (y1 * w + x0, ly * hx), (y1 * w + x1, ly * lx)]
}

/// WGSL of `roi_corners`, accumulating into `acc` (average) or `best`.
const ROI_HELPERS: &str = "
struct RoiSample { p: array<u32, 4>, w: array<f32, 4> }
fn roi_corners(yy: f32, xx: f32, h: u32, w: u32) -> RoiSample {
    var s: RoiSample;
    if (yy < -1.0 || yy > f32(h) || xx < -1.0 || xx > f32(w)) {
        s.p = array<u32, 4>(0u, 0u, 0u, 0u);
        s.w = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
        return s;
    }
    var y = max(yy, 0.0);
    var x = max(xx, 0.0);
    var y0 = u32(y);
    var x0 = u32(x);
    var y1 = y0 + 1u;
    var x1 = x0 + 1u;
    if (y0 >= h - 1u) { y0 = h - 1u; y1 = y0; y = f32(y0); }
    if (x0 >= w - 1u) { x0 = w - 1u; x1 = x0; x = f32(x0); }
    let ly = y - f32(y0);
    let lx = x - f32(x0);
    let hy = 1.0 - ly;
    let hx = 1.0 - lx;
    s.p = array<u32, 4>(y0 * w + x0, y0 * w + x1, y1 * w + x0, y1 * w + x1);
    s.w = array<f32, 4>(hy * hx, hy * lx, ly * hx, ly * lx);
    return s;
}
";

impl RoiAlign {
    fn out_shape(&self, x: &[usize], rois: &[usize], idx: &[usize]) -> Result<Vec<usize>> {
        if x.len() != 4 || rois.len() != 2 || rois[1] != 4 || idx != [rois[0]] {
            bail!("X {x:?}, rois {rois:?} and batch_indices {idx:?} do not match (N x C x H x W, R x 4, R)");
        }
        Ok(vec![rois[0], x[1], self.out_h, self.out_w])
    }

    /// Region start (y, x), bin size (h, w) and samples per bin (h, w).
    fn region(&self, roi: &[f64]) -> ((f64, f64), (f64, f64), (usize, usize)) {
        let off = if self.half_pixel { 0.5 } else { 0.0 };
        let s = |v: f64| v * self.spatial_scale - off;
        let (x1, y1, x2, y2) = (s(roi[0]), s(roi[1]), s(roi[2]), s(roi[3]));
        let (mut rw, mut rh) = (x2 - x1, y2 - y1);
        if !self.half_pixel {
            rw = rw.max(1.0);
            rh = rh.max(1.0);
        }
        let (oh, ow) = (self.out_h as f64, self.out_w as f64);
        let grid = |len: f64, bins: f64| {
            if self.sampling_ratio > 0 { self.sampling_ratio } else { (len / bins).ceil().max(0.0) as usize }
        };
        ((y1, x1), (rh / oh, rw / ow), (grid(rh, oh), grid(rw, ow)))
    }
}

impl Op for RoiAlign {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let x = ty(inputs, 0)?;
        need_float(x, "X")?;
        Ok(vec![TypeInfo::new(x.dtype, self.out_shape(&x.shape, &ty(inputs, 1)?.shape, &ty(inputs, 2)?.shape)?)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let (x, rois, idx) = (arg(inputs, 0)?, arg(inputs, 1)?, arg(inputs, 2)?);
        let out = self.out_shape(&x.shape, &rois.shape, &idx.shape)?;
        let (xv, rv, iv) = (x.to_f64(), rois.to_f64(), idx.to_i64());
        let (nb, ch, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
        let y = map_coords(&out, |c| {
            let ((y1, x1), (bh, bw), (gh, gw)) = self.region(&rv[c[0] * 4..c[0] * 4 + 4]);
            let b = iv[c[0]].clamp(0, nb as i64 - 1) as usize;
            let plane = &xv[(b * ch + c[1]) * h * w..][..h * w];
            let mut acc = if self.max { None } else { Some(0.0) };
            let mut best: Option<f64> = None;
            for iy in 0..gh {
                let yy = y1 + c[2] as f64 * bh + (iy as f64 + 0.5) * bh / gh as f64;
                for ix in 0..gw {
                    let xx = x1 + c[3] as f64 * bw + (ix as f64 + 0.5) * bw / gw as f64;
                    let corners = roi_corners(yy, xx, h, w);
                    if let Some(a) = acc.as_mut() {
                        *a += corners.iter().map(|&(p, wt)| wt * plane[p]).sum::<f64>();
                    } else {
                        let v = corners.iter().map(|&(p, wt)| wt * plane[p]).fold(f64::NEG_INFINITY, f64::max);
                        best = Some(best.map_or(v, |b| b.max(v)));
                    }
                }
            }
            match acc {
                Some(a) => a / (gh * gw).max(1) as f64,
                None => best.unwrap_or(0.0),
            }
        });
        Ok(vec![Tensor::from_f64(x.dtype, out, y)])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let (x, rois, idx) = (cx.input(0)?, cx.input(1)?, cx.input(2)?);
        let out = self.out_shape(&x.shape, &rois.shape, &idx.shape)?;
        let (nb, ch, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
        let off = f32_lit(if self.half_pixel { 0.5 } else { 0.0 });
        let scale = f32_lit(self.spatial_scale as f32);
        let min_size = if self.half_pixel { "" } else { "rw = max(rw, 1.0); rh = max(rh, 1.0);" };
        let grid = |len: &str, bins: usize| {
            if self.sampling_ratio > 0 {
                format!("{}u", self.sampling_ratio)
            } else {
                format!("u32(max(ceil({len} / {}), 0.0))", f32_lit(bins as f32))
            }
        };
        let idx_expr = if idx.dtype.is_signed_int() { "ld_idx(c0)" } else { "i32(ld_idx(c0))" };
        let (init, combine, finish) = if self.max {
            (
                "var acc = 0.0; var first = true;",
                "let v = max(max(s.w[0] * ld_x(xb + s.p[0]), s.w[1] * ld_x(xb + s.p[1])), max(s.w[2] * ld_x(xb + s.p[2]), s.w[3] * ld_x(xb + s.p[3])));
            acc = select(max(acc, v), v, first); first = false;",
                "acc",
            )
        } else {
            (
                "var acc = 0.0;",
                "acc = acc + s.w[0] * ld_x(xb + s.p[0]) + s.w[1] * ld_x(xb + s.p[1]) + s.w[2] * ld_x(xb + s.p[2]) + s.w[3] * ld_x(xb + s.p[3]);",
                "acc / f32(max(gh * gw, 1u))",
            )
        };
        let body = unravel("c", "i", &out)
            + &format!(
                "    let rb = c0 * 4u;
    let x1 = ld_rois(rb) * {scale} - {off};
    let y1 = ld_rois(rb + 1u) * {scale} - {off};
    var rw = ld_rois(rb + 2u) * {scale} - {off} - x1;
    var rh = ld_rois(rb + 3u) * {scale} - {off} - y1;
    {min_size}
    let bh = rh / {oh};
    let bw = rw / {ow};
    let gh = {gh};
    let gw = {gw};
    let b = u32(clamp({idx_expr}, 0, {nb1}));
    let xb = (b * {ch}u + c1) * {hw}u;
    {init}
    for (var iy = 0u; iy < gh; iy = iy + 1u) {{
        let yy = y1 + f32(c2) * bh + (f32(iy) + 0.5) * bh / f32(gh);
        for (var ix = 0u; ix < gw; ix = ix + 1u) {{
            let xx = x1 + f32(c3) * bw + (f32(ix) + 0.5) * bw / f32(gw);
            let s = roi_corners(yy, xx, {h}u, {w}u);
            {combine}
        }}
    }}
    st_y(i, {finish});",
                oh = f32_lit(self.out_h as f32),
                ow = f32_lit(self.out_w as f32),
                gh = grid("rh", self.out_h),
                gw = grid("rw", self.out_w),
                nb1 = nb as i64 - 1,
                hw = h * w,
            );
        let args = vec![
            KernelArg::new("x", TensorRef::Input(0)),
            KernelArg::new("rois", TensorRef::Input(1)),
            KernelArg::new("idx", TensorRef::Input(2)),
            KernelArg::new("y", TensorRef::Output(0)),
        ];
        Ok(Lowering::one(kernel("roi_align", args, numel(&out), ROI_HELPERS, &body)))
    }
}

// ---------------------------------------------------------------- Col2Im

/// Col2Im: sums sliding blocks (N x C*prod(block) x L) back into an image of
/// constant `image_shape`; the inverse layout of an im2col.
#[derive(Debug)]
pub struct Col2Im {
    dilations: Option<Vec<usize>>,
    pads: Option<Vec<usize>>,
    strides: Option<Vec<usize>>,
}

/// Col2Im's resolved geometry.
struct Col2ImGeom {
    out: Vec<usize>,
    block: Vec<usize>,
    /// Sliding positions per spatial dim.
    n_blocks: Vec<usize>,
    dil: Vec<usize>,
    pad_begin: Vec<usize>,
    stride: Vec<usize>,
}

impl Col2Im {
    fn geom(&self, x: &[usize], image: &Tensor, block: &Tensor) -> Result<Col2ImGeom> {
        let image = const_sizes(image, "image_shape")?;
        let block = const_sizes(block, "block_shape")?;
        let r = image.len();
        if block.len() != r || r == 0 {
            bail!("image_shape {image:?} and block_shape {block:?} must have the same non-zero length");
        }
        let dil = per_dim(&self.dilations, r, 1, "dilations")?;
        let stride = per_dim(&self.strides, r, 1, "strides")?;
        let pads = per_dim(&self.pads, 2 * r, 0, "pads")?;
        let k: usize = block.iter().product();
        if x.len() != 3 || k == 0 || !x[1].is_multiple_of(k) {
            bail!("input of shape {x:?} is not N x C*{k} x L for block_shape {block:?}");
        }
        let mut n_blocks = vec![];
        for d in 0..r {
            let span = dil[d] * (block[d].max(1) - 1) + 1;
            let padded = image[d] + pads[d] + pads[d + r];
            if padded < span || stride[d] == 0 {
                bail!("block {block:?} does not fit image {image:?} with pads {pads:?}");
            }
            n_blocks.push((padded - span) / stride[d] + 1);
        }
        if n_blocks.iter().product::<usize>() != x[2] {
            bail!("input has {} blocks, the geometry gives {n_blocks:?}", x[2]);
        }
        let out = [&[x[0], x[1] / k][..], &image].concat();
        Ok(Col2ImGeom { out, block, n_blocks, dil, pad_begin: pads[..r].to_vec(), stride })
    }
}

impl Op for Col2Im {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let x = ty(inputs, 0)?;
        let g = self.geom(&x.shape, need_value(inputs, 1, "image_shape")?, need_value(inputs, 2, "block_shape")?)?;
        Ok(vec![TypeInfo::new(x.dtype, g.out)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let x = arg(inputs, 0)?;
        let g = self.geom(&x.shape, arg(inputs, 1)?, arg(inputs, 2)?)?;
        let xv = x.to_f64();
        let (k, l) = (x.shape[1] / g.out[1], x.shape[2]);
        let r = g.block.len();
        let blocks = map_coords(&g.block, |b| b.to_vec());
        let bst = strides(&g.n_blocks);
        let y = map_coords(&g.out, |c| {
            let mut acc = 0.0;
            for (kb, b) in blocks.iter().enumerate() {
                let mut pos = 0;
                for d in 0..r {
                    let p = (c[d + 2] + g.pad_begin[d]) as i64 - (b[d] * g.dil[d]) as i64;
                    if p < 0 || !(p as usize).is_multiple_of(g.stride[d]) || p as usize / g.stride[d] >= g.n_blocks[d] {
                        pos = usize::MAX;
                        break;
                    }
                    pos += p as usize / g.stride[d] * bst[d];
                }
                if pos != usize::MAX {
                    acc += xv[(c[0] * x.shape[1] + c[1] * k + kb) * l + pos];
                }
            }
            acc
        });
        Ok(vec![Tensor::from_f64(x.dtype, g.out, y)])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let x = cx.input(0)?;
        let g = self.geom(&x.shape, cx.const_input(1, "image_shape")?, cx.const_input(2, "block_shape")?)?;
        let (k, l) = (x.shape[1] / g.out[1], x.shape[2]);
        let bst = strides(&g.n_blocks);
        let mut body = unravel("c", "i", &g.out);
        body += &format!("    var acc = {}(0);\n", x.dtype.phys().wgsl());
        body += &format!("    for (var kb = 0u; kb < {k}u; kb = kb + 1u) {{\n");
        body += &unravel("b", "kb", &g.block).replace("    let", "        let");
        body += "        var ok = true;\n        var pos = 0u;\n";
        for (d, st) in bst.iter().enumerate() {
            body += &format!(
                "        let p{d} = i32(c{}) + {} - i32(b{d}) * {};
        ok = ok && p{d} >= 0 && p{d} % {s} == 0 && p{d} / {s} < {nb};
        pos = pos + u32(max(p{d}, 0) / {s}) * {st}u;\n",
                d + 2,
                g.pad_begin[d],
                g.dil[d],
                s = g.stride[d],
                nb = g.n_blocks[d],
            );
        }
        body += &format!(
            "        if (ok) {{ acc = acc + ld_x((c0 * {cs}u + c1 * {k}u + kb) * {l}u + pos); }}\n    }}\n    st_y(i, acc);",
            cs = x.shape[1]
        );
        Ok(Lowering::one(kernel("col2im", crate::families::movement::xy_args(), numel(&g.out), "", &body)))
    }
}

// ---------------------------------------------------------------- MaxUnpool

/// MaxUnpool: scatters values to the flat positions MaxPool's indices name
/// in the inferred output; an explicit larger output_shape pads at the end.
#[derive(Debug)]
pub struct MaxUnpool {
    kernel_shape: Vec<usize>,
    pads: Option<Vec<usize>>,
    strides: Option<Vec<usize>>,
}

impl MaxUnpool {
    /// The output shape the pooling geometry implies.
    fn inferred(&self, x: &[usize]) -> Result<Vec<usize>> {
        let r = self.kernel_shape.len();
        if x.len() != r + 2 {
            bail!("X of shape {x:?} does not match kernel_shape {:?}", self.kernel_shape);
        }
        let st = per_dim(&self.strides, r, 1, "strides")?;
        let pads = per_dim(&self.pads, 2 * r, 0, "pads")?;
        let mut out = x[..2].to_vec();
        for d in 0..r {
            let full = (x[d + 2].max(1) - 1) * st[d] + self.kernel_shape[d];
            out.push(full.checked_sub(pads[d] + pads[d + r]).ok_or_else(|| Error::msg("pads exceed the output"))?);
        }
        Ok(out)
    }

    fn out_shape(&self, x: &[usize], output_shape: Option<&Tensor>) -> Result<Vec<usize>> {
        let inferred = self.inferred(x)?;
        match output_shape {
            None => Ok(inferred),
            Some(t) => {
                let s = const_sizes(t, "output_shape")?;
                if s.len() != inferred.len() {
                    bail!("output_shape {s:?} must have rank {}", inferred.len());
                }
                Ok(s)
            }
        }
    }
}

impl Op for MaxUnpool {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let x = ty(inputs, 0)?;
        if ty(inputs, 1)?.shape != x.shape {
            bail!("indices must have X's shape {:?}", x.shape);
        }
        let os = if inputs.get(2).copied().flatten().is_some() {
            Some(need_value(inputs, 2, "output_shape")?)
        } else {
            None
        };
        Ok(vec![TypeInfo::new(x.dtype, self.out_shape(&x.shape, os)?)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let (x, ind) = (arg(inputs, 0)?, arg(inputs, 1)?);
        let out = self.out_shape(&x.shape, inputs.get(2).copied().flatten())?;
        let inferred = self.inferred(&x.shape)?;
        let (ist, ost) = (strides(&inferred), strides(&out));
        let mut y = vec![0.0; numel(&out)];
        for (v, &k) in x.to_f64().iter().zip(&ind.to_i64()) {
            if k < 0 || k as usize >= numel(&inferred) {
                continue;
            }
            let c: Vec<usize> = ist.iter().zip(&inferred).map(|(s, n)| (k as usize / s) % n).collect();
            if c.iter().zip(&out).all(|(a, b)| a < b) {
                y[c.iter().zip(&ost).map(|(a, s)| a * s).sum::<usize>()] = *v;
            }
        }
        Ok(vec![Tensor::from_f64(x.dtype, out, y)])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let x = cx.input(0)?;
        let os = if cx.has_input(2) { Some(cx.const_input(2, "output_shape")?) } else { None };
        let out = self.out_shape(&x.shape, os)?;
        let inferred = self.inferred(&x.shape)?;
        let t = x.dtype.phys().wgsl();
        let fill = kernel(
            "max_unpool_fill",
            vec![KernelArg::new("y", TensorRef::Output(0))],
            numel(&out),
            "",
            &format!("    st_y(i, {t}(0));"),
        );
        let idx = if cx.input(1)?.dtype.is_signed_int() { "ld_ind(i)" } else { "i32(ld_ind(i))" };
        let mut body = format!("    let k = {idx};\n    if (k < 0 || k >= {}) {{ return; }}\n", numel(&inferred));
        body += &unravel("c", "u32(k)", &inferred);
        let inside: Vec<String> = out.iter().enumerate().map(|(d, n)| format!("c{d} < {n}u")).collect();
        body += &format!("    if ({}) {{ st_y({}, ld_x(i)); }}", inside.join(" && "), dot_wgsl("c", 0, &strides(&out)));
        let args = vec![
            KernelArg::new("x", TensorRef::Input(0)),
            KernelArg::new("ind", TensorRef::Input(1)),
            KernelArg::new("y", TensorRef::Output(0)),
        ];
        let scatter = kernel("max_unpool_scatter", args, x.numel(), "", &body);
        Ok(Lowering::Kernels { temps: Vec::<TempSpec>::new(), kernels: vec![fill, scatter] })
    }
}

// ---------------------------------------------------------------- DeformConv

/// DeformConv (2-D): a convolution whose taps are shifted by learned
/// offsets, sampled bilinearly (zero outside), optionally scaled by a mask.
#[derive(Debug)]
pub struct DeformConv {
    dilations: Option<Vec<usize>>,
    group: usize,
    kernel_shape: Option<Vec<usize>>,
    offset_group: usize,
    pads: Option<Vec<usize>>,
    strides: Option<Vec<usize>>,
}

/// DeformConv's resolved geometry.
struct DeformGeom {
    out: Vec<usize>,
    k: [usize; 2],
    dil: [usize; 2],
    pad: [usize; 2],
    stride: [usize; 2],
}

/// Bilinear sample of a plane at (y, x) with zeros outside.
fn bilinear_zero(plane: &[f64], h: usize, w: usize, y: f64, x: f64) -> f64 {
    let (y0, x0) = (y.floor(), x.floor());
    let (ly, lx) = (y - y0, x - x0);
    let mut acc = 0.0;
    for (dy, wy) in [(0, 1.0 - ly), (1, ly)] {
        for (dx, wx) in [(0, 1.0 - lx), (1, lx)] {
            let (yy, xx) = (y0 as i64 + dy, x0 as i64 + dx);
            if (0..h as i64).contains(&yy) && (0..w as i64).contains(&xx) {
                acc += wy * wx * plane[yy as usize * w + xx as usize];
            }
        }
    }
    acc
}

const DEFORM_HELPERS: &str = "
fn tap(b: u32, y: i32, x: i32, h: i32, w: i32) -> f32 {
    if (y < 0 || y >= h || x < 0 || x >= w) { return 0.0; }
    return ld_x(b + u32(y * w + x));
}
fn bilinear_zero(b: u32, y: f32, x: f32, h: i32, w: i32) -> f32 {
    let y0 = floor(y);
    let x0 = floor(x);
    let ly = y - y0;
    let lx = x - x0;
    let iy = i32(y0);
    let ix = i32(x0);
    return (1.0 - ly) * ((1.0 - lx) * tap(b, iy, ix, h, w) + lx * tap(b, iy, ix + 1, h, w))
        + ly * ((1.0 - lx) * tap(b, iy + 1, ix, h, w) + lx * tap(b, iy + 1, ix + 1, h, w));
}
";

impl DeformConv {
    fn geom(&self, x: &[usize], w: &[usize], offset: &[usize]) -> Result<DeformGeom> {
        if x.len() != 4 {
            unsupported!("DeformConv over {} spatial dims (only 2-D)", x.len().saturating_sub(2));
        }
        if w.len() != 4
            || x[1] != w[1] * self.group
            || !w[0].is_multiple_of(self.group)
            || !x[1].is_multiple_of(self.offset_group)
        {
            bail!("X {x:?}, W {w:?}, group {} and offset_group {} do not match", self.group, self.offset_group);
        }
        let ks = match &self.kernel_shape {
            Some(k) if k.len() == 2 => [k[0], k[1]],
            Some(k) => bail!("kernel_shape {k:?} must have 2 entries"),
            None => [w[2], w[3]],
        };
        let dil = per_dim(&self.dilations, 2, 1, "dilations")?;
        let st = per_dim(&self.strides, 2, 1, "strides")?;
        let pads = per_dim(&self.pads, 4, 0, "pads")?;
        let mut out = vec![x[0], w[0]];
        for d in 0..2 {
            let span = dil[d] * (ks[d].max(1) - 1) + 1;
            let padded = x[d + 2] + pads[d] + pads[d + 2];
            if padded < span || st[d] == 0 {
                bail!("kernel {ks:?} does not fit X {x:?} with pads {pads:?}");
            }
            out.push((padded - span) / st[d] + 1);
        }
        let want = [x[0], self.offset_group * ks[0] * ks[1] * 2, out[2], out[3]];
        if offset != want {
            bail!("offset has shape {offset:?}, expected {want:?}");
        }
        Ok(DeformGeom { out, k: ks, dil: [dil[0], dil[1]], pad: [pads[0], pads[1]], stride: [st[0], st[1]] })
    }
}

impl Op for DeformConv {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let x = ty(inputs, 0)?;
        need_float(x, "X")?;
        let g = self.geom(&x.shape, &ty(inputs, 1)?.shape, &ty(inputs, 2)?.shape)?;
        if let Some(m) = inputs.get(4).copied().flatten() {
            let want = [g.out[0], self.offset_group * g.k[0] * g.k[1], g.out[2], g.out[3]];
            if m.ty.shape != want {
                bail!("mask has shape {:?}, expected {want:?}", m.ty.shape);
            }
        }
        Ok(vec![TypeInfo::new(x.dtype, g.out)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let (x, w, off) = (arg(inputs, 0)?, arg(inputs, 1)?, arg(inputs, 2)?);
        let g = self.geom(&x.shape, &w.shape, &off.shape)?;
        let (xv, wv, ov) = (x.to_f64(), w.to_f64(), off.to_f64());
        let bias = inputs.get(3).copied().flatten().map(|b| b.to_f64());
        let mask = inputs.get(4).copied().flatten().map(|m| m.to_f64());
        let (c, h, wd) = (x.shape[1], x.shape[2], x.shape[3]);
        let (icg, ocg, icog) = (w.shape[1], w.shape[0] / self.group, c / self.offset_group);
        let (kk, ohw) = (g.k[0] * g.k[1], g.out[2] * g.out[3]);
        let y = map_coords(&g.out, |o| {
            let (n, oc, i, j) = (o[0], o[1], o[2], o[3]);
            let mut acc = bias.as_ref().map_or(0.0, |b| b[oc]);
            for ci in 0..icg {
                let ic = (oc / ocg) * icg + ci;
                let og = ic / icog;
                let plane = &xv[(n * c + ic) * h * wd..][..h * wd];
                for (k, (kh, kw)) in (0..g.k[0]).flat_map(|a| (0..g.k[1]).map(move |b| (a, b))).enumerate() {
                    let at = |ch: usize| ((n * self.offset_group * kk * 2 + ch) * ohw) + i * g.out[3] + j;
                    let dy = ov[at(og * kk * 2 + k * 2)];
                    let dx = ov[at(og * kk * 2 + k * 2 + 1)];
                    let yy = (i * g.stride[0] + kh * g.dil[0]) as f64 - g.pad[0] as f64 + dy;
                    let xx = (j * g.stride[1] + kw * g.dil[1]) as f64 - g.pad[1] as f64 + dx;
                    let m = mask
                        .as_ref()
                        .map_or(1.0, |m| m[((n * self.offset_group + og) * kk + k) * ohw + i * g.out[3] + j]);
                    acc += wv[((oc * icg + ci) * g.k[0] + kh) * g.k[1] + kw] * bilinear_zero(plane, h, wd, yy, xx) * m;
                }
            }
            acc
        });
        Ok(vec![Tensor::from_f64(x.dtype, g.out, y)])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let (x, w) = (cx.input(0)?, cx.input(1)?);
        let g = self.geom(&x.shape, &w.shape, &cx.input(2)?.shape)?;
        let (c, h, wd) = (x.shape[1], x.shape[2], x.shape[3]);
        let (icg, ocg, icog) = (w.shape[1], w.shape[0] / self.group, c / self.offset_group);
        let (kk, ohw, ow) = (g.k[0] * g.k[1], g.out[2] * g.out[3], g.out[3]);
        let ogs = self.offset_group;
        let mut args = vec![
            KernelArg::new("x", TensorRef::Input(0)),
            KernelArg::new("w", TensorRef::Input(1)),
            KernelArg::new("off", TensorRef::Input(2)),
            KernelArg::new("y", TensorRef::Output(0)),
        ];
        let init = if cx.has_input(3) {
            args.push(KernelArg::new("bias", TensorRef::Input(3)));
            "ld_bias(c1)"
        } else {
            "0.0"
        };
        let mask = if cx.has_input(4) {
            args.push(KernelArg::new("mask", TensorRef::Input(4)));
            format!("ld_mask(((c0 * {ogs}u + og) * {kk}u + k) * {ohw}u + pix)")
        } else {
            "1.0".to_string()
        };
        let body = unravel("c", "i", &g.out)
            + &format!(
                "    let pix = c2 * {ow}u + c3;
    var acc = {init};
    for (var ci = 0u; ci < {icg}u; ci = ci + 1u) {{
        let ic = (c1 / {ocg}u) * {icg}u + ci;
        let og = ic / {icog}u;
        let xb = (c0 * {c}u + ic) * {hw}u;
        for (var k = 0u; k < {kk}u; k = k + 1u) {{
            let kh = k / {kw}u;
            let kw = k % {kw}u;
            let ob = ((c0 * {ogs}u + og) * {kk}u + k) * 2u;
            let dy = ld_off(ob * {ohw}u + pix);
            let dx = ld_off((ob + 1u) * {ohw}u + pix);
            let yy = f32(c2 * {sh}u + kh * {dh}u) - {ph} + dy;
            let xx = f32(c3 * {sw}u + kw * {dw}u) - {pw} + dx;
            let wt = ld_w(((c1 * {icg}u + ci) * {kh_}u + kh) * {kw}u + kw);
            acc = acc + wt * bilinear_zero(xb, yy, xx, {h}, {wd}) * {mask};
        }}
    }}
    st_y(i, acc);",
                hw = h * wd,
                kw = g.k[1],
                kh_ = g.k[0],
                sh = g.stride[0],
                sw = g.stride[1],
                dh = g.dil[0],
                dw = g.dil[1],
                ph = f32_lit(g.pad[0] as f32),
                pw = f32_lit(g.pad[1] as f32),
            );
        Ok(Lowering::one(kernel("deform_conv", args, numel(&g.out), DEFORM_HELPERS, &body)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Attr;
    use crate::testing::*;

    fn run(op: &str, a: Attrs, inputs: &[Option<&Tensor>]) -> Tensor {
        build(op, &a, 22).unwrap().eval(inputs).unwrap().remove(0)
    }

    fn iota(shape: Vec<usize>) -> Tensor {
        let n = numel(&shape);
        Tensor::from_f32(shape, (0..n).map(|v| v as f32).collect())
    }

    fn assert_close(got: &[f64], want: &[f64]) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= 1e-4 + 1e-4 * w.abs(), "got {got:?}, want {want:?}");
        }
    }

    // Expected outputs, from onnx.reference.ReferenceEvaluator on the
    // inputs built in each test.
    const GS_LINEAR_ZEROS: [f64; 4] = [0.0, 0.44999998807907104, 2.879999876022339, 0.0];
    const GS_NEAREST_BORDER: [f64; 4] = [0.0, 0.0, 3.0, 1.0];
    const GS_CUBIC_REFLECTION: [f64; 4] =
        [-0.42749935388565063, 0.3153127133846283, 3.898498058319092, 1.270499587059021];
    const GS_LINEAR_REFLECTION_AC: [f64; 4] =
        [0.3999999761581421, 1.2000000476837158, 3.250000238418579, 1.6500000953674316];
    const AFFINE_2D: [f64; 12] = [
        -0.8166666626930237,
        -0.5999999642372131,
        -0.15000000596046448,
        -0.800000011920929,
        0.5166666507720947,
        -1.0,
        -0.3166666626930237,
        1.399999976158142,
        0.3499999940395355,
        1.2000000476837158,
        1.0166666507720947,
        1.0,
    ];
    const ROI_AVG: [f64; 8] = [3.0, 5.0, 13.0, 15.0, 3.5, 4.5, 8.5, 9.5];
    const ROI_MAX: [f64; 8] = [6.0, 8.0, 16.0, 18.0, 3.375, 3.9375, 6.1875, 6.75];
    const COL2IM: [f64; 12] = [0.0, 4.0, 1.0, 5.0, 10.0, 18.0, 12.0, 20.0, 10.0, 14.0, 11.0, 15.0];
    const DEFORM: [f64; 4] = [-0.9549998044967651, 1.9249999523162842, 8.734999656677246, 2.825000286102295];

    #[test]
    fn grid_sample_modes() {
        let x = iota(vec![1, 1, 3, 2]);
        let grid = Tensor::from_f32(vec![1, 1, 4, 2], vec![-1.0, -0.8, -0.6, -0.5, 0.7, 0.2, 1.3, -1.4]);
        let s = |mode: &str, pad: &str, align: i64| {
            let a = attrs(vec![
                ("mode", Attr::Str(mode.into())),
                ("padding_mode", Attr::Str(pad.into())),
                ("align_corners", Attr::Int(align)),
            ]);
            run("GridSample", a, &[Some(&x), Some(&grid)]).to_f64()
        };
        assert_close(&s("linear", "zeros", 0), &GS_LINEAR_ZEROS);
        assert_close(&s("nearest", "border", 1), &GS_NEAREST_BORDER);
        assert_close(&s("cubic", "reflection", 0), &GS_CUBIC_REFLECTION);
        assert_close(&s("linear", "reflection", 1), &GS_LINEAR_REFLECTION_AC);
    }

    #[test]
    fn affine_grid_2d() {
        let theta = Tensor::from_f32(vec![1, 2, 3], vec![1.0, 0.5, 0.1, -0.3, 2.0, 0.2]);
        let size = Tensor::i64_vec(vec![1, 1, 2, 3]);
        let g = run("AffineGrid", Attrs::default(), &[Some(&theta), Some(&size)]);
        assert_eq!(g.shape, vec![1, 2, 3, 2]);
        assert_eq!(g.dtype, crate::DType::F32);
        assert_close(&g.to_f64(), &AFFINE_2D);
    }

    #[test]
    fn roi_align_avg_and_max() {
        let x = iota(vec![1, 1, 5, 5]);
        let rois = Tensor::from_f32(vec![2, 4], vec![0.0, 0.0, 4.0, 4.0, 1.0, 0.5, 3.0, 2.5]);
        let bi = Tensor::i64_vec(vec![0, 0]);
        let a = |mode: &str| {
            attrs(vec![
                ("mode", Attr::Str(mode.into())),
                ("output_height", Attr::Int(2)),
                ("output_width", Attr::Int(2)),
                ("sampling_ratio", Attr::Int(2)),
            ])
        };
        let y = run("RoiAlign", a("avg"), &[Some(&x), Some(&rois), Some(&bi)]);
        assert_close(&y.to_f64(), &ROI_AVG);
        let y = run("RoiAlign", a("max"), &[Some(&x), Some(&rois), Some(&bi)]);
        assert_close(&y.to_f64(), &ROI_MAX);
    }

    #[test]
    fn col2im_strided() {
        let x = iota(vec![1, 4, 4]);
        let a = attrs(vec![("strides", Attr::Ints(vec![1, 2]))]);
        let (img, blk) = (Tensor::i64_vec(vec![3, 4]), Tensor::i64_vec(vec![2, 2]));
        let y = run("Col2Im", a, &[Some(&x), Some(&img), Some(&blk)]);
        assert_eq!(y.shape, vec![1, 1, 3, 4]);
        assert_close(&y.to_f64(), &COL2IM);
    }

    #[test]
    fn max_unpool_pads_to_output_shape() {
        let x = Tensor::from_f32(vec![1, 1, 2, 2], vec![5.0, 6.0, 7.0, 8.0]);
        let ind = Tensor::i64_vec(vec![5, 7, 13, 15]).reshaped(vec![1, 1, 2, 2]).unwrap();
        let a = attrs(vec![("kernel_shape", Attr::Ints(vec![2, 2])), ("strides", Attr::Ints(vec![2, 2]))]);
        let os = Tensor::i64_vec(vec![1, 1, 5, 5]);
        let y = run("MaxUnpool", a, &[Some(&x), Some(&ind), Some(&os)]);
        let mut want = vec![0.0; 25];
        want[6] = 5.0;
        want[8] = 6.0;
        want[16] = 7.0;
        want[18] = 8.0;
        assert_eq!(y.to_f64(), want);
    }

    #[test]
    fn deform_conv_with_mask_and_bias() {
        let x = iota(vec![1, 1, 3, 3]);
        let w = Tensor::from_f32(vec![1, 1, 2, 2], vec![1.0, 2.0, -1.0, 0.5]);
        let off: Vec<f32> = (0..32).map(|v| ((v * 7) % 11) as f32 / 10.0 - 0.5).collect();
        let off = Tensor::from_f32(vec![1, 8, 2, 2], off);
        let b = Tensor::from_f32(vec![1], vec![0.25]);
        let mask: Vec<f32> = (0..16).map(|v| ((v * 3) % 5) as f32 / 4.0).collect();
        let mask = Tensor::from_f32(vec![1, 4, 2, 2], mask);
        let a = attrs(vec![("kernel_shape", Attr::Ints(vec![2, 2]))]);
        let y = run("DeformConv", a, &[Some(&x), Some(&w), Some(&off), Some(&b), Some(&mask)]);
        assert_close(&y.to_f64(), &DEFORM);
    }
}
