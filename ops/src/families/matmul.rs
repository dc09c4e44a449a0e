//! Matrix products: MatMul (numpy semantics: 1-D operands, broadcast batch
//! dimensions) and Gemm (alpha, beta, transA, transB, optional C broadcast
//! to the output).
//!
//! Both ops reduce to one strided description, [`Problem`]: a batch of
//! `M x N` products over `K`, each operand read through (row, k) strides and
//! a per-batch base offset. Transposition is only a choice of strides, so a
//! single set of kernels serves every form:
//! - `tiled`: 64x64 output tiles per 16x16 workgroup, 4x4 outputs per
//!   thread, operands staged through workgroup memory 16 k-steps at a time;
//! - `rowblock`: one thread per output column holding up to 8 rows in
//!   registers, for skinny products (M small: fully connected layers at batch
//!   1, where a tile would waste 63/64 of its work). Each B element is read
//!   once, which is what bounds a GEMV. Skinny N uses the same kernel on the
//!   transposed problem.
//!
//! The CPU reference walks the same `Problem`, so strides are tested once.

use crate::wgsl::{f32_lit, strides};
use crate::{
    Attrs, DType, Error, Input, Kernel, KernelArg, LowerCtx, Lowering, Op, Phys, Result, Tensor, TensorRef, TypeInfo,
    arg, bail, ty,
};

/// Builds MatMul or Gemm.
pub fn build(op_type: &str, a: &Attrs, _opset: i64) -> Result<Box<dyn Op>> {
    match op_type {
        "MatMul" => Ok(Box::new(MatMul)),
        "Gemm" => Ok(Box::new(Gemm {
            alpha: a.float("alpha", 1.0)?,
            beta: a.float("beta", 1.0)?,
            trans_a: a.int("transA", 0)? != 0,
            trans_b: a.int("transB", 0)? != 0,
        })),
        _ => Err(Error::unsupported(op_type.to_string())),
    }
}

/// Maps a flat batch index to an operand's base offset: the operand's batch
/// dimensions are broadcast against the output's.
#[derive(Clone, Debug, PartialEq)]
struct BatchMap {
    /// The output's batch dimensions.
    dims: Vec<usize>,
    /// Element stride of the operand per output batch dimension (0 where
    /// the operand is broadcast).
    strides: Vec<usize>,
}

impl BatchMap {
    /// No batching (or an operand shared by every batch).
    fn none() -> BatchMap {
        BatchMap { dims: vec![], strides: vec![] }
    }

    /// Operand batch dims `own` (right-aligned against `out`) whose matrices
    /// hold `mat` elements each.
    fn new(out: &[usize], own: &[usize], mat: usize) -> BatchMap {
        let off = out.len() - own.len();
        let st = strides(own);
        let strides =
            (0..out.len()).map(|d| if d < off || own[d - off] == 1 { 0 } else { st[d - off] * mat }).collect();
        BatchMap { dims: out.to_vec(), strides }
    }

    fn base(&self, bi: usize) -> usize {
        let mut rem = bi;
        let mut off = 0;
        for d in (0..self.dims.len()).rev() {
            off += (rem % self.dims[d]) * self.strides[d];
            rem /= self.dims[d];
        }
        off
    }

    /// A WGSL function `fn {name}(bi: u32) -> u32` computing `base`.
    fn wgsl(&self, name: &str) -> String {
        let mut body = String::new();
        if self.strides.iter().all(|&s| s == 0) {
            body += "    return 0u;\n";
        } else {
            body += "    var rem = bi;\n    var off = 0u;\n";
            for d in (0..self.dims.len()).rev() {
                if self.strides[d] != 0 {
                    body += &format!("    off = off + (rem % {}u) * {}u;\n", self.dims[d], self.strides[d]);
                }
                body += &format!("    rem = rem / {}u;\n", self.dims[d]);
            }
            body += "    return off;\n";
        }
        format!("fn {name}(bi: u32) -> u32 {{\n    _ = bi;\n{body}}}\n")
    }
}

/// One operand as the kernels read it: element (r, k) of batch `bi` sits at
/// `batch.base(bi) + r * s_r + k * s_k`; `r` is the row for the left
/// operand and the column for the right one.
#[derive(Clone, Debug, PartialEq)]
struct Operand {
    /// The kernel argument's name (its `ld_` accessor).
    arg: &'static str,
    s_r: usize,
    s_k: usize,
    batch: BatchMap,
}

/// The bias of Gemm: `beta * C[m * s_m + n * s_n]`.
#[derive(Clone, Debug, PartialEq)]
struct Bias {
    beta: f32,
    s_m: usize,
    s_n: usize,
}

/// A batched strided product `Y[b, m, n] = alpha * sum_k A[b, m, k] B[b, k, n] (+ bias)`.
#[derive(Clone, Debug, PartialEq)]
struct Problem {
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    a: Operand,
    b: Operand,
    /// Output strides per batch, row and column.
    o_b: usize,
    o_m: usize,
    o_n: usize,
    alpha: f32,
    bias: Option<Bias>,
}

impl Problem {
    /// The same product computing `Y^T = B^T A^T`: rows become columns.
    fn transposed(&self) -> Problem {
        Problem {
            m: self.n,
            n: self.m,
            a: self.b.clone(),
            b: self.a.clone(),
            o_m: self.o_n,
            o_n: self.o_m,
            bias: self.bias.as_ref().map(|c| Bias { beta: c.beta, s_m: c.s_n, s_n: c.s_m }),
            ..self.clone()
        }
    }

    /// CPU reference over f64 values; `c` is the bias operand.
    fn eval_f(&self, a: &[f64], b: &[f64], c: Option<&[f64]>) -> Vec<f64> {
        let mut y = vec![0.0; self.batch * self.m * self.n];
        for bi in 0..self.batch {
            let (ab, bb) = (self.a.batch.base(bi), self.b.batch.base(bi));
            for m in 0..self.m {
                for n in 0..self.n {
                    let mut s = 0.0;
                    for k in 0..self.k {
                        s += a[ab + m * self.a.s_r + k * self.a.s_k] * b[bb + n * self.b.s_r + k * self.b.s_k];
                    }
                    s *= self.alpha as f64;
                    if let (Some(bias), Some(c)) = (&self.bias, c) {
                        s += bias.beta as f64 * c[m * bias.s_m + n * bias.s_n];
                    }
                    y[bi * self.o_b + m * self.o_m + n * self.o_n] = s;
                }
            }
        }
        y
    }

    /// CPU reference over integers (wrapping like the GPU's 32-bit math
    /// would not: values are exact in i64).
    fn eval_i(&self, a: &[i64], b: &[i64], c: Option<&[i64]>) -> Vec<i64> {
        let mut y = vec![0; self.batch * self.m * self.n];
        for bi in 0..self.batch {
            let (ab, bb) = (self.a.batch.base(bi), self.b.batch.base(bi));
            for m in 0..self.m {
                for n in 0..self.n {
                    let mut s: i64 = 0;
                    for k in 0..self.k {
                        s = s.wrapping_add(
                            a[ab + m * self.a.s_r + k * self.a.s_k]
                                .wrapping_mul(b[bb + n * self.b.s_r + k * self.b.s_k]),
                        );
                    }
                    if let (Some(bias), Some(c)) = (&self.bias, c) {
                        s = s.wrapping_add(c[m * bias.s_m + n * bias.s_n]);
                    }
                    y[bi * self.o_b + m * self.o_m + n * self.o_n] = s;
                }
            }
        }
        y
    }

    fn eval(&self, dtype: DType, out_shape: Vec<usize>, a: &Tensor, b: &Tensor, c: Option<&Tensor>) -> Tensor {
        if dtype.is_float() {
            let cv = c.map(|c| c.to_f64());
            Tensor::from_f64(dtype, out_shape, self.eval_f(&a.to_f64(), &b.to_f64(), cv.as_deref()))
        } else {
            let cv = c.map(|c| c.to_i64());
            Tensor::from_i64(dtype, out_shape, self.eval_i(&a.to_i64(), &b.to_i64(), cv.as_deref()))
        }
    }

    /// The kernel for this product, chosen by its shape.
    fn lower(&self, phys: Phys) -> Result<Lowering> {
        if self.batch > MAX_GROUPS {
            return Err(Error::unsupported(format!("MatMul with {} batches", self.batch)));
        }
        let kernel = if self.m < 32 && self.m <= self.n {
            rowblock(self, phys)?
        } else if self.n < 32 {
            rowblock(&self.transposed(), phys)?
        } else {
            tiled(self, phys)?
        };
        Ok(Lowering::one(kernel))
    }

    fn args(&self) -> Vec<KernelArg> {
        let mut args = vec![KernelArg::new("a", TensorRef::Input(0)), KernelArg::new("b", TensorRef::Input(1))];
        if self.bias.is_some() {
            args.push(KernelArg::new("c", TensorRef::Input(2)));
        }
        args.push(KernelArg::new("y", TensorRef::Output(0)));
        args
    }

    /// WGSL statements storing accumulator `acc` at output (m, n) of batch `bi`.
    fn store(&self, acc: &str, m: &str, n: &str, phys: Phys) -> String {
        let mut v = acc.to_string();
        if self.alpha != 1.0 {
            v = format!("{v} * {}", scalar(phys, self.alpha));
        }
        if let Some(c) = &self.bias {
            let term = format!("ld_c({m} * {}u + {n} * {}u)", c.s_m, c.s_n);
            v = if c.beta == 1.0 {
                format!("{v} + {term}")
            } else {
                format!("{v} + {} * {term}", scalar(phys, c.beta))
            };
        }
        format!("st_y(bi * {}u + {m} * {}u + {n} * {}u, {v});", self.o_b, self.o_m, self.o_n)
    }
}

const MAX_GROUPS: usize = crate::wgsl::MAX_GROUPS as usize;

/// A scale factor as a literal of the kernel's type (integers only take 1).
fn scalar(phys: Phys, x: f32) -> String {
    match phys {
        Phys::F32 => f32_lit(x),
        _ => crate::wgsl::lit(phys, x as f64),
    }
}

fn check_groups(what: &str, n: usize) -> Result<u32> {
    if n > MAX_GROUPS {
        return Err(Error::unsupported(format!("MatMul needing {n} workgroups along {what}")));
    }
    Ok(n.max(1) as u32)
}

/// Tile edge (outputs) and k-depth of the tiled kernel.
const TILE: usize = 64;
const TK: usize = 16;

/// WGSL loading one operand's `TILE x TK` tile into workgroup array `dst`
/// (laid out `[kk][r]`). Consecutive threads walk the operand's contiguous
/// axis so that global reads coalesce.
fn tile_load(op: &Operand, dst: &str, r0: &str, rows: usize, k: usize, t: Phys) -> String {
    let (rr, kk) = if op.s_k == 1 && op.s_r != 1 {
        (format!("e / {TK}u"), format!("e % {TK}u"))
    } else {
        (format!("e % {TILE}u"), format!("e / {TILE}u"))
    };
    format!(
        "        for (var q = 0u; q < {reps}u; q = q + 1u) {{
            let e = t + q * 256u;
            let rr = {rr};
            let kk = {kk};
            var v = {t}();
            if ({r0} + rr < {rows}u && k0 + kk < {k}u) {{
                v = ld_{arg}(base_{arg} + ({r0} + rr) * {sr}u + (k0 + kk) * {sk}u);
            }}
            {dst}[kk * {TILE}u + rr] = v;
        }}
",
        reps = TILE * TK / 256,
        t = t.wgsl(),
        arg = op.arg,
        sr = op.s_r,
        sk = op.s_k,
    )
}

/// 64x64 tiles, 16x16 threads, each thread 4x4 outputs strided by 16 so
/// that neighbouring threads touch neighbouring columns.
fn tiled(p: &Problem, phys: Phys) -> Result<Kernel> {
    let t = phys.wgsl();
    let gx = check_groups("N", p.n.div_ceil(TILE))?;
    let gy = check_groups("M", p.m.div_ceil(TILE))?;
    let mut s =
        format!("var<workgroup> ta: array<{t}, {}>;\nvar<workgroup> tb: array<{t}, {}>;\n", TILE * TK, TILE * TK);
    s += &p.a.batch.wgsl(&format!("batch_{}", p.a.arg));
    s += &p.b.batch.wgsl(&format!("batch_{}", p.b.arg));
    s += &format!(
        "@compute @workgroup_size(16, 16, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {{
    let bi = wid.z;
    let m0 = wid.y * {TILE}u;
    let n0 = wid.x * {TILE}u;
    let base_{a} = batch_{a}(bi);
    let base_{b} = batch_{b}(bi);
    let t = lid.y * 16u + lid.x;
",
        a = p.a.arg,
        b = p.b.arg,
    );
    for i in 0..4 {
        for j in 0..4 {
            s += &format!("    var c{i}{j} = {t}();\n");
        }
    }
    s += &format!("    for (var k0 = 0u; k0 < {}u; k0 = k0 + {TK}u) {{\n", p.k);
    s += &tile_load(&p.a, "ta", "m0", p.m, p.k, phys);
    s += &tile_load(&p.b, "tb", "n0", p.n, p.k, phys);
    s += &format!("        workgroupBarrier();\n        for (var kk = 0u; kk < {TK}u; kk = kk + 1u) {{\n");
    for i in 0..4 {
        s += &format!("            let a{i} = ta[kk * {TILE}u + lid.y + {}u];\n", 16 * i);
    }
    for j in 0..4 {
        s += &format!("            let b{j} = tb[kk * {TILE}u + lid.x + {}u];\n", 16 * j);
    }
    for i in 0..4 {
        for j in 0..4 {
            s += &format!("            c{i}{j} = c{i}{j} + a{i} * b{j};\n");
        }
    }
    s += "        }\n        workgroupBarrier();\n    }\n";
    for i in 0..4 {
        for j in 0..4 {
            s += &format!(
                "    {{\n        let m = m0 + lid.y + {}u;\n        let n = n0 + lid.x + {}u;\n        if (m < {}u && n < {}u) {{ {} }}\n    }}\n",
                16 * i,
                16 * j,
                p.m,
                p.n,
                p.store(&format!("c{i}{j}"), "m", "n", phys)
            );
        }
    }
    s += "}\n";
    Ok(Kernel {
        name: "matmul_tiled".into(),
        args: p.args(),
        body: s,
        workgroup_size: [16, 16, 1],
        workgroups: [gx, gy, p.batch.max(1) as u32],
    })
}

/// Rows held in registers by one `rowblock` thread.
const RM: usize = 8;

/// One thread per output column `n`, `rm` rows each: every element of the
/// right operand is read once per `rm` rows; left-operand reads are the
/// same for the whole workgroup.
fn rowblock(p: &Problem, phys: Phys) -> Result<Kernel> {
    let t = phys.wgsl();
    let rm = p.m.clamp(1, RM);
    let wg = 64usize;
    let gx = check_groups("N", p.n.div_ceil(wg))?;
    let gy = check_groups("M", p.m.div_ceil(rm))?;
    let (a, b) = (&p.a, &p.b);
    let mut s = a.batch.wgsl(&format!("batch_{}", a.arg));
    s += &b.batch.wgsl(&format!("batch_{}", b.arg));
    s += &format!(
        "@compute @workgroup_size({wg}, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {{
    let n = wid.x * {wg}u + lid.x;
    if (n >= {nn}u) {{ return; }}
    let bi = wid.z;
    let m0 = wid.y * {rm}u;
    let col = batch_{bn}(bi) + n * {bsr}u;
    let rows = batch_{an}(bi);
",
        nn = p.n,
        an = a.arg,
        bn = b.arg,
        bsr = b.s_r,
    );
    // Rows past M (last chunk) read row M-1 and are not stored.
    for r in 0..rm {
        s += &format!("    let r{r} = rows + min(m0 + {r}u, {}u) * {}u;\n", p.m.max(1) - 1, a.s_r);
        s += &format!("    var acc{r} = {t}();\n");
    }
    s += &format!(
        "    for (var k = 0u; k < {}u; k = k + 1u) {{\n        let bv = ld_{}(col + k * {}u);\n",
        p.k, b.arg, b.s_k
    );
    for r in 0..rm {
        s += &format!("        acc{r} = acc{r} + ld_{}(r{r} + k * {}u) * bv;\n", a.arg, a.s_k);
    }
    s += "    }\n";
    for r in 0..rm {
        let st = p.store(&format!("acc{r}"), &format!("(m0 + {r}u)"), "n", phys);
        if p.m % rm == 0 {
            s += &format!("    {st}\n");
        } else {
            s += &format!("    if (m0 + {r}u < {}u) {{ {st} }}\n", p.m);
        }
    }
    s += "}\n";
    Ok(Kernel {
        name: "matmul_rows".into(),
        args: p.args(),
        body: s,
        workgroup_size: [wg as u32, 1, 1],
        workgroups: [gx, gy, p.batch.max(1) as u32],
    })
}

/// MatMul's shapes: operands promoted to matrices, batch dims broadcast.
#[derive(Debug)]
struct MatMulShape {
    out: Vec<usize>,
    problem: Problem,
}

fn matmul_shape(a: &[usize], b: &[usize]) -> Result<MatMulShape> {
    if a.is_empty() || b.is_empty() {
        bail!("MatMul operands must have rank >= 1, got {:?} and {:?}", a, b);
    }
    // 1-D operands become a row (left) or column (right) matrix.
    let a2: Vec<usize> = if a.len() == 1 { vec![1, a[0]] } else { a.to_vec() };
    let b2: Vec<usize> = if b.len() == 1 { vec![b[0], 1] } else { b.to_vec() };
    let (m, k) = (a2[a2.len() - 2], a2[a2.len() - 1]);
    let (k2, n) = (b2[b2.len() - 2], b2[b2.len() - 1]);
    if k != k2 {
        bail!("MatMul inner dimensions differ: {:?} x {:?}", a, b);
    }
    let (ab, bb) = (&a2[..a2.len() - 2], &b2[..b2.len() - 2]);
    let batch_dims = super::elementwise::broadcast_shapes(&[ab, bb])?;
    let batch: usize = batch_dims.iter().product();
    let mut out = batch_dims.clone();
    if a.len() > 1 {
        out.push(m);
    }
    if b.len() > 1 {
        out.push(n);
    }
    let problem = Problem {
        batch,
        m,
        n,
        k,
        a: Operand { arg: "a", s_r: k, s_k: 1, batch: BatchMap::new(&batch_dims, ab, m * k) },
        b: Operand { arg: "b", s_r: 1, s_k: n, batch: BatchMap::new(&batch_dims, bb, k * n) },
        o_b: m * n,
        o_m: n,
        o_n: 1,
        alpha: 1.0,
        bias: None,
    };
    Ok(MatMulShape { out, problem })
}

/// MatMul with numpy semantics.
#[derive(Debug)]
pub struct MatMul;

impl Op for MatMul {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let (a, b) = (ty(inputs, 0)?, ty(inputs, 1)?);
        Ok(vec![TypeInfo::new(a.dtype, matmul_shape(&a.shape, &b.shape)?.out)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let (a, b) = (arg(inputs, 0)?, arg(inputs, 1)?);
        let sh = matmul_shape(&a.shape, &b.shape)?;
        Ok(vec![sh.problem.eval(a.dtype, sh.out, a, b, None)])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let (a, b) = (cx.input(0)?, cx.input(1)?);
        matmul_shape(&a.shape, &b.shape)?.problem.lower(a.dtype.phys())
    }
}

/// Gemm: `alpha * A' B' + beta * C`, A' and B' optionally transposed.
#[derive(Debug)]
pub struct Gemm {
    pub alpha: f32,
    pub beta: f32,
    pub trans_a: bool,
    pub trans_b: bool,
}

impl Gemm {
    /// The problem for operands of shapes `a`, `b` and optional bias `c`.
    fn problem(&self, a: &[usize], b: &[usize], c: Option<&[usize]>) -> Result<Problem> {
        if a.len() != 2 || b.len() != 2 {
            bail!("Gemm operands must be matrices, got {:?} and {:?}", a, b);
        }
        let (m, k) = if self.trans_a { (a[1], a[0]) } else { (a[0], a[1]) };
        let (k2, n) = if self.trans_b { (b[1], b[0]) } else { (b[0], b[1]) };
        if k != k2 {
            bail!("Gemm inner dimensions differ: {:?} x {:?} (transA={}, transB={})", a, b, self.trans_a, self.trans_b);
        }
        let (a_sr, a_sk) = if self.trans_a { (1, m) } else { (k, 1) };
        let (b_sr, b_sk) = if self.trans_b { (k, 1) } else { (1, n) };
        let bias = match c {
            Some(c) if self.beta != 0.0 => Some(bias_strides(c, m, n, self.beta)?),
            _ => None,
        };
        Ok(Problem {
            batch: 1,
            m,
            n,
            k,
            a: Operand { arg: "a", s_r: a_sr, s_k: a_sk, batch: BatchMap::none() },
            b: Operand { arg: "b", s_r: b_sr, s_k: b_sk, batch: BatchMap::none() },
            o_b: m * n,
            o_m: n,
            o_n: 1,
            alpha: self.alpha,
            bias,
        })
    }
}

/// How C of shape `c` broadcasts (unidirectionally) onto `M x N`.
fn bias_strides(c: &[usize], m: usize, n: usize, beta: f32) -> Result<Bias> {
    if c.len() > 2 {
        bail!("Gemm's C must have rank <= 2, got {:?}", c);
    }
    let cn = c.last().copied().unwrap_or(1);
    let cm = if c.len() == 2 { c[0] } else { 1 };
    if (cm != 1 && cm != m) || (cn != 1 && cn != n) {
        bail!("Gemm's C of shape {:?} does not broadcast to [{m}, {n}]", c);
    }
    Ok(Bias { beta, s_m: if cm == 1 { 0 } else { cn }, s_n: if cn == 1 { 0 } else { 1 } })
}

impl Op for Gemm {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let (a, b) = (ty(inputs, 0)?, ty(inputs, 1)?);
        let c = inputs.get(2).copied().flatten().map(|i| i.ty.shape.as_slice());
        let p = self.problem(&a.shape, &b.shape, c)?;
        Ok(vec![TypeInfo::new(a.dtype, vec![p.m, p.n])])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let (a, b) = (arg(inputs, 0)?, arg(inputs, 1)?);
        let c = inputs.get(2).copied().flatten();
        let p = self.problem(&a.shape, &b.shape, c.map(|c| c.shape.as_slice()))?;
        if !a.dtype.is_float() && (self.alpha != 1.0 || (p.bias.is_some() && self.beta != 1.0)) {
            return Err(Error::unsupported("integer Gemm with alpha or beta other than 1"));
        }
        Ok(vec![p.eval(a.dtype, vec![p.m, p.n], a, b, c)])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let (a, b) = (cx.input(0)?, cx.input(1)?);
        let c = if cx.has_input(2) { Some(cx.input(2)?.shape.as_slice()) } else { None };
        let p = self.problem(&a.shape, &b.shape, c)?;
        let phys = a.dtype.phys();
        if phys != Phys::F32 && (self.alpha != 1.0 || (p.bias.is_some() && self.beta != 1.0)) {
            return Err(Error::unsupported("integer Gemm with alpha or beta other than 1"));
        }
        p.lower(phys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize], v: &[f32]) -> Tensor {
        Tensor::from_f32(shape.to_vec(), v.to_vec())
    }

    fn iota(shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        t(shape, &(0..n).map(|i| i as f32).collect::<Vec<_>>())
    }

    fn run(op: &dyn Op, ins: &[Option<&Tensor>]) -> Tensor {
        op.eval(ins).unwrap().remove(0)
    }

    #[test]
    fn matmul_2d() {
        // [[0,1,2],[3,4,5]] x [[0,1],[2,3],[4,5]]
        let y = run(&MatMul, &[Some(&iota(&[2, 3])), Some(&iota(&[3, 2]))]);
        assert_eq!(y.shape, vec![2, 2]);
        assert_eq!(y.to_f64(), vec![10.0, 13.0, 28.0, 40.0]);
    }

    #[test]
    fn matmul_1d_operands() {
        let v = t(&[3], &[1.0, 2.0, 3.0]);
        let y = run(&MatMul, &[Some(&v), Some(&v)]);
        assert_eq!(y.shape, Vec::<usize>::new());
        assert_eq!(y.to_f64(), vec![14.0]);
        // [3] x [2,3,2] -> [2,2]
        let y = run(&MatMul, &[Some(&v), Some(&iota(&[2, 3, 2]))]);
        assert_eq!(y.shape, vec![2, 2]);
        assert_eq!(y.to_f64(), vec![16.0, 22.0, 52.0, 58.0]);
        // [2,2,3] x [3] -> [2,2]
        let y = run(&MatMul, &[Some(&iota(&[2, 2, 3])), Some(&v)]);
        assert_eq!(y.shape, vec![2, 2]);
        assert_eq!(y.to_f64(), vec![8.0, 26.0, 44.0, 62.0]);
    }

    #[test]
    fn matmul_broadcast_batch() {
        // A [2,1,1,2] x B [3,2,1]: out [2,3,1,1]; A batch i, B batch j.
        let a = t(&[2, 1, 1, 2], &[1.0, 2.0, 3.0, 4.0]);
        let b = t(&[3, 2, 1], &[1.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
        let y = run(&MatMul, &[Some(&a), Some(&b)]);
        assert_eq!(y.shape, vec![2, 3, 1, 1]);
        assert_eq!(y.to_f64(), vec![1.0, 2.0, 3.0, 3.0, 4.0, 7.0]);
    }

    #[test]
    fn matmul_integers() {
        let a = Tensor::from_i64(DType::I32, vec![1, 2], vec![2, -3]);
        let b = Tensor::from_i64(DType::I32, vec![2, 1], vec![5, 7]);
        let y = run(&MatMul, &[Some(&a), Some(&b)]);
        assert_eq!(y.dtype, DType::I32);
        assert_eq!(y.to_i64(), vec![-11]);
    }

    #[test]
    fn gemm_all_attributes() {
        // A^T: A is [3,2] (K=3, M=2), B^T: B is [2,3] (N=2, K=3).
        let g = Gemm { alpha: 0.5, beta: 2.0, trans_a: true, trans_b: true };
        let a = iota(&[3, 2]); // A' = [[0,2,4],[1,3,5]]
        let b = iota(&[2, 3]); // B' = [[0,3],[1,4],[2,5]]
        let c = t(&[1, 2], &[1.0, -1.0]);
        let y = run(&g, &[Some(&a), Some(&b), Some(&c)]);
        // A'B' = [[10,28],[13,40]]
        assert_eq!(y.shape, vec![2, 2]);
        assert_eq!(y.to_f64(), vec![7.0, 12.0, 8.5, 18.0]);
    }

    #[test]
    fn gemm_bias_forms() {
        let g = Gemm { alpha: 1.0, beta: 1.0, trans_a: false, trans_b: false };
        let (a, b) = (iota(&[2, 2]), t(&[2, 2], &[1.0, 0.0, 0.0, 1.0]));
        let scalar = t(&[], &[10.0]);
        assert_eq!(run(&g, &[Some(&a), Some(&b), Some(&scalar)]).to_f64(), vec![10.0, 11.0, 12.0, 13.0]);
        let col = t(&[2, 1], &[10.0, 20.0]);
        assert_eq!(run(&g, &[Some(&a), Some(&b), Some(&col)]).to_f64(), vec![10.0, 11.0, 22.0, 23.0]);
        assert_eq!(run(&g, &[Some(&a), Some(&b), None]).to_f64(), vec![0.0, 1.0, 2.0, 3.0]);
        // beta = 0 ignores C entirely.
        let g0 = Gemm { beta: 0.0, ..g };
        let nan = t(&[2, 2], &[f32::NAN; 4]);
        assert_eq!(run(&g0, &[Some(&a), Some(&b), Some(&nan)]).to_f64(), vec![0.0, 1.0, 2.0, 3.0]);
    }

    #[test]
    fn transposed_problem_is_equivalent() {
        let g = Gemm { alpha: 2.0, beta: 1.0, trans_a: true, trans_b: false };
        let p = g.problem(&[3, 4], &[3, 5], Some(&[4, 1])).unwrap();
        let a: Vec<f64> = (0..12).map(|x| x as f64 * 0.5).collect();
        let b: Vec<f64> = (0..15).map(|x| 3.0 - x as f64).collect();
        let c = [1.0, 2.0, 3.0, 4.0];
        let y1 = p.eval_f(&a, &b, Some(&c));
        // The transposed problem takes its operands the other way round.
        let y2 = p.transposed().eval_f(&b, &a, Some(&c));
        assert_eq!(y1, y2);
    }

    #[test]
    fn kernels_are_chosen_by_shape() {
        let names = |a: &[usize], b: &[usize]| {
            let Lowering::Kernels { kernels, .. } = matmul_shape(a, b).unwrap().problem.lower(Phys::F32).unwrap()
            else {
                panic!()
            };
            kernels[0].name.clone()
        };
        assert_eq!(names(&[1, 4096], &[4096, 1000]), "matmul_rows");
        assert_eq!(names(&[1000, 64], &[64, 2]), "matmul_rows");
        assert_eq!(names(&[128, 64], &[64, 128]), "matmul_tiled");
    }
}
