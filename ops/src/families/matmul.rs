//! Matrix products: MatMul (numpy semantics: 1-D operands, broadcast batch
//! dimensions), Gemm (alpha, beta, transA, transB, optional C broadcast to
//! the output) and MatMulInteger (zero points, int32 result).
//!
//! All three reduce to one strided description, [`Problem`]: a batch of
//! `M x N` products over `K`, each operand read through (row, k) strides and
//! a per-batch base offset. Transposition is only a choice of strides, so a
//! single kernel serves every form: a register-blocked product
//! ([`block_kernel`], shared with Conv) where each thread accumulates up to
//! 8x8 outputs (1x16 for a GEMV: fully connected layers at batch 1) and
//! reads its operands straight from memory.
//!
//! Why no workgroup-memory tiling: on lavapipe (the CPU Vulkan driver the
//! test suite runs on) every load, workgroup memory included, is a per-lane
//! loop costing ~25 cycles, while multiply-adds are vectorised and nearly
//! free; only register reuse cuts loads. Measured there, 512^3 MatMul: 16x16
//! tiles through workgroup memory 430 ms, 8x16 register blocks 124 ms.
//! GPUs serve the same reuse from L1.
//!
//! The CPU reference walks the same `Problem`, so strides are tested once.

use crate::products::{GEMV_ROWS, Product, Words, cooperative, gemv, tiled, worth_tiling};
use crate::wgsl::{f32_lit, strides};
use crate::{
    Attrs, DType, Error, Input, Kernel, KernelArg, LowerCtx, Lowering, Op, Phys, Result, Target, Tensor, TensorRef,
    TypeInfo, arg, bail, ty,
};

/// Builds MatMul or Gemm.
pub fn build(op_type: &str, a: &Attrs, _opset: i64) -> Result<Box<dyn Op>> {
    match op_type {
        "MatMul" => Ok(Box::new(MatMul)),
        "MatMulInteger" => Ok(Box::new(MatMulInteger)),
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
    /// MatMulInteger's zero point of this operand, subtracted from it.
    zero: Option<ZeroPoint>,
}

impl Operand {
    /// The operand as plain words for 16-byte tile loads: no zero point,
    /// every batch base a multiple of 4 (`batch` names its WGSL function).
    fn words(&self, batch: &str) -> Option<Words> {
        let aligned = self.batch.strides.iter().all(|s| s.is_multiple_of(4));
        (self.zero.is_none() && aligned).then(|| Words {
            arg: self.arg.into(),
            batch: format!("{batch}(bi)"),
            s_x: self.s_r,
            s_k: self.s_k,
        })
    }
}

/// A zero point input: one value, or one per row (column for the right
/// operand).
#[derive(Clone, Debug, PartialEq)]
struct ZeroPoint {
    arg: &'static str,
    input: usize,
    per_r: bool,
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
    /// Operands are converted to the output's integer type (MatMulInteger).
    integer: bool,
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

    /// The kernel for this product. Targets with workgroup memory tile
    /// float products (on tensor cores where activations are f16); the
    /// rest, and thin products, use register blocks. Rows go to the grid's
    /// y dimension; a product too tall for it runs transposed.
    fn lower(&self, phys: Phys, target: &Target) -> Result<Lowering> {
        let gpu = phys == Phys::F32 && !self.integer && !target.tiles.is_empty();
        if gpu && self.m <= GEMV_ROWS {
            let pk = gemv(&self.product())?;
            return Ok(Lowering::Kernels { temps: pk.temps, kernels: pk.kernels });
        }
        if gpu && worth_tiling(self.m, self.n) {
            let p = self.product();
            let pk = if target.use_cooperative() { cooperative(&p, target)? } else { tiled(&p, target)? };
            return Ok(Lowering::Kernels { temps: pk.temps, kernels: pk.kernels });
        }
        let (rb, cb) = block_shape(self.m, self.n);
        let p = if self.m.div_ceil(rb) > MAX_GROUPS { self.transposed() } else { self.clone() };
        let threads = self.m.div_ceil(rb) * self.n.div_ceil(cb) * self.batch;
        let split = split_k(self.k, threads, self.batch);
        let mut main = p.block(phys, split)?;
        main.flops = self.flops();
        if split == 1 {
            return Ok(Lowering::one(main));
        }
        Ok(Lowering::Kernels {
            temps: vec![crate::TempSpec { elems: split * self.batch * self.m * self.n, phys }],
            kernels: vec![main, p.reduce_splits(phys, split)],
        })
    }

    /// The product as the tiled kernels address it.
    fn product(&self) -> Product {
        let mut address = self.a.batch.wgsl("batch_a");
        address += &self.b.batch.wgsl("batch_b");
        address += &format!(
            "fn load_a(bi: u32, r: u32, k: u32) -> f32 {{ return ld_{}(batch_a(bi) + r * {}u + k * {}u); }}
fn load_b(bi: u32, c: u32, k: u32) -> f32 {{ return ld_{}(batch_b(bi) + c * {}u + k * {}u); }}
",
            self.a.arg, self.a.s_r, self.a.s_k, self.b.arg, self.b.s_r, self.b.s_k
        );
        let mut v = "v".to_string();
        if self.alpha != 1.0 {
            v = format!("v * {}", f32_lit(self.alpha));
        }
        let mut epilogue_args = vec![];
        if let Some(c) = &self.bias {
            let beta = if c.beta == 1.0 { String::new() } else { format!("{} * ", f32_lit(c.beta)) };
            v += &format!(" + {beta}ld_c(r * {}u + c * {}u)", c.s_m, c.s_n);
            epilogue_args.push(KernelArg::new("c", TensorRef::Input(2)));
        }
        epilogue_args.push(KernelArg::new("y", TensorRef::Output(0)));
        Product {
            name: "matmul".into(),
            rows: self.m,
            cols: self.n,
            k: self.k,
            batch: self.batch,
            address,
            operand_args: vec![KernelArg::new("a", TensorRef::Input(0)), KernelArg::new("b", TensorRef::Input(1))],
            epilogue: format!(
                "fn epilogue(bi: u32, r: u32, c: u32, v: f32) {{ st_y(bi * {}u + r * {}u + c * {}u, {v}); }}
",
                self.o_b, self.o_m, self.o_n
            ),
            epilogue_args,
            a_k_fast: self.a.s_k == 1,
            b_k_fast: self.b.s_k == 1,
            part_temp: 0,
            b_column: false,
            a_words: self.a.words("batch_a"),
            b_words: self.b.words("batch_b"),
        }
    }

    fn flops(&self) -> u64 {
        2 * (self.batch * self.m * self.n * self.k) as u64
    }

    /// Sums the `split` partial products (laid out `[batch][split][m][n]`)
    /// and applies alpha and the bias.
    fn reduce_splits(&self, phys: Phys, split: usize) -> Kernel {
        let mn = self.m * self.n;
        let mut body = format!(
            "    let bi = i / {mn}u;\n    let e = i % {mn}u;\n    let m = e / {n}u;\n    let n = e % {n}u;\n    var v = {t}();\n    for (var s = 0u; s < {split}u; s = s + 1u) {{ v = v + ld_part((bi * {split}u + s) * {mn}u + e); }}\n",
            n = self.n.max(1),
            t = phys.wgsl()
        );
        if self.alpha != 1.0 {
            body += &format!("    v = v * {};\n", scalar(phys, self.alpha));
        }
        let mut args = vec![KernelArg::new("part", TensorRef::Temp(0))];
        if let Some(c) = &self.bias {
            let beta = if c.beta == 1.0 { String::new() } else { format!("{} * ", scalar(phys, c.beta)) };
            body += &format!("    v = v + {beta}ld_c(m * {}u + n * {}u);\n", c.s_m, c.s_n);
            args.push(KernelArg::new("c", TensorRef::Input(2)));
        }
        body += &format!("    st_y(bi * {}u + m * {}u + n * {}u, v);\n", self.o_b, self.o_m, self.o_n);
        args.push(KernelArg::new("y", TensorRef::Output(0)).stored_once());
        crate::wgsl::kernel_1d("matmul_splits", args, self.batch * mn, "", &body)
    }

    fn args(&self) -> Vec<KernelArg> {
        let mut args = vec![KernelArg::new("a", TensorRef::Input(0)), KernelArg::new("b", TensorRef::Input(1))];
        if self.bias.is_some() {
            args.push(KernelArg::new("c", TensorRef::Input(2)));
        }
        for z in [&self.a.zero, &self.b.zero].into_iter().flatten() {
            args.push(KernelArg::new(z.arg, TensorRef::Input(z.input)));
        }
        args.push(KernelArg::new("y", TensorRef::Output(0)).stored_once());
        args
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

/// A register-blocked product kernel, shared by MatMul/Gemm and Conv: each
/// thread accumulates an `rb x cb` block of outputs, reading `rb` row-operand
/// and `cb` column-operand values per reduction step. Memory reads are what
/// software Vulkan drivers pay for (lavapipe issues every load lane by lane,
/// whatever its address), so a thread reuses each value it reads `rb` or `cb`
/// times from registers. The caller supplies the operand addressing as WGSL
/// helpers:
/// - `fn row_base(bi: u32, r: u32) -> u32` and `fn col_base(bi: u32, c: u32) -> u32`,
/// - `k_open`/`k_close`: loops over the reduction defining `ro` and `co`,
///   the offsets added to every row and column base,
/// - `fn row_out(bi: u32, r: u32) -> u32` and `fn col_out(bi: u32, c: u32) -> u32`,
///   whose sum is an output's index,
/// - optionally `fn row_add(bi: u32, r: u32) -> T` / `fn col_add(bi: u32, c: u32) -> T`,
///   terms added to every output of a row / column (biases), read once per
///   thread and row / column,
/// - `fn epilogue(bi: u32, r: u32, c: u32, o: u32, v: T)` storing output `o`.
///
/// The epilogue is written out per output, so everything per-row or
/// per-column is hoisted: a thread's stores are its only per-output work.
pub(crate) struct BlockSpec {
    pub name: String,
    pub args: Vec<KernelArg>,
    pub phys: Phys,
    /// Row and column extents of one batch, and the batch count.
    pub rows: usize,
    pub cols: usize,
    pub batch: usize,
    /// Outputs per thread along rows and columns.
    pub rb: usize,
    pub cb: usize,
    /// Names of the row and column operands' accessors (`ld_<name>`).
    pub row_arg: String,
    pub col_arg: String,
    pub helpers: String,
    pub k_open: String,
    pub k_close: String,
    /// Literal multiplying every accumulator (Gemm's alpha), if any.
    pub scale: Option<String>,
    pub row_add: bool,
    pub col_add: bool,
    /// Integer products (MatMulInteger, ConvInteger): loaded operands are
    /// converted to the accumulator type and, where set, have the zero
    /// points `row_zero(bi, r)` / `col_zero(bi, c)` subtracted.
    pub convert_loads: bool,
    pub row_zero: bool,
    pub col_zero: bool,
}

/// Threads per workgroup of block kernels: small, so that the few threads of
/// late layers still spread over several workgroups (one CPU core each on
/// lavapipe).
pub(crate) const BLOCK_WG: usize = 32;

pub(crate) fn block_kernel(sp: &BlockSpec) -> Result<Kernel> {
    let t = sp.phys.wgsl();
    let (rb, cb) = (sp.rb.max(1), sp.cb.max(1));
    let col_blocks = sp.cols.div_ceil(cb);
    let gx = check_groups("columns", col_blocks.div_ceil(BLOCK_WG))?;
    let gy = check_groups("rows", sp.rows.div_ceil(rb))?;
    let gz = check_groups("batches", sp.batch)?;
    let (rmax, cmax) = (sp.rows.max(1) - 1, sp.cols.max(1) - 1);
    let mut s = sp.helpers.clone();
    s += &format!(
        "@compute @workgroup_size({BLOCK_WG}, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {{
    let cblk = wid.x * {BLOCK_WG}u + lid.x;
    if (cblk >= {col_blocks}u) {{ return; }}
    let bi = wid.z;
    let r0 = wid.y * {rb}u;
    let c0 = cblk * {cb}u;
"
    );
    // Rows and columns past the end (last blocks) re-read the last valid
    // one and are not stored.
    let clamp = |base: &str, i: usize, max: usize, exact: bool| {
        if exact { format!("{base} + {i}u") } else { format!("min({base} + {i}u, {max}u)") }
    };
    let (rows_exact, cols_exact) = (sp.rows.is_multiple_of(rb) && sp.rows > 0, sp.cols.is_multiple_of(cb));
    for i in 0..rb {
        s += &format!("    let rb{i} = row_base(bi, {});\n", clamp("r0", i, rmax, rows_exact));
    }
    for j in 0..cb {
        s += &format!("    let cb{j} = col_base(bi, {});\n", clamp("c0", j, cmax, cols_exact));
    }
    for i in 0..rb {
        if sp.row_zero {
            s += &format!("    let zr{i} = row_zero(bi, {});\n", clamp("r0", i, rmax, rows_exact));
        }
    }
    for j in 0..cb {
        if sp.col_zero {
            s += &format!("    let zc{j} = col_zero(bi, {});\n", clamp("c0", j, cmax, cols_exact));
        }
    }
    for i in 0..rb {
        for j in 0..cb {
            s += &format!("    var a{i}_{j} = {t}();\n");
        }
    }
    s += &sp.k_open;
    let load = |arg: &str, idx: String, zero: Option<String>| {
        let v = format!("ld_{arg}({idx})");
        let v = if sp.convert_loads { format!("{t}({v})") } else { v };
        match zero {
            Some(z) => format!("{v} - {z}"),
            None => v,
        }
    };
    for i in 0..rb {
        let v = load(&sp.row_arg, format!("rb{i} + ro"), sp.row_zero.then(|| format!("zr{i}")));
        s += &format!("        let u{i} = {v};\n");
    }
    for j in 0..cb {
        let v = load(&sp.col_arg, format!("cb{j} + co"), sp.col_zero.then(|| format!("zc{j}")));
        s += &format!("        let v{j} = {v};\n");
    }
    for i in 0..rb {
        for j in 0..cb {
            s += &format!("        a{i}_{j} = a{i}_{j} + u{i} * v{j};\n");
        }
    }
    s += &sp.k_close;
    for i in 0..rb {
        let r = clamp("r0", i, rmax, rows_exact);
        s += &format!("    let ro{i} = row_out(bi, {r});\n");
        if sp.row_add {
            s += &format!("    let ra{i} = row_add(bi, {r});\n");
        }
    }
    for j in 0..cb {
        let c = clamp("c0", j, cmax, cols_exact);
        s += &format!("    let co{j} = col_out(bi, {c});\n");
        if sp.col_add {
            s += &format!("    let ca{j} = col_add(bi, {c});\n");
        }
    }
    for i in 0..rb {
        for j in 0..cb {
            let mut v = match &sp.scale {
                Some(k) => format!("a{i}_{j} * {k}"),
                None => format!("a{i}_{j}"),
            };
            if sp.row_add {
                v += &format!(" + ra{i}");
            }
            if sp.col_add {
                v += &format!(" + ca{j}");
            }
            let st = format!("epilogue(bi, r0 + {i}u, c0 + {j}u, ro{i} + co{j}, {v});");
            let mut conds = vec![];
            if !rows_exact {
                conds.push(format!("r0 + {i}u < {}u", sp.rows));
            }
            if !cols_exact {
                conds.push(format!("c0 + {j}u < {}u", sp.cols));
            }
            if conds.is_empty() {
                s += &format!("    {st}\n");
            } else {
                s += &format!("    if ({}) {{ {st} }}\n", conds.join(" && "));
            }
        }
    }
    s += "}\n";
    Ok(Kernel {
        name: sp.name.clone(),
        args: sp.args.clone(),
        body: s,
        workgroup_size: [BLOCK_WG as u32, 1, 1],
        workgroups: [gx, gy, gz],
        flops: 0,
    })
}

/// Longest side of a thread's block, and most accumulators per thread.
/// Measured on lavapipe (VGG-19, ResNet-50): 8x8 blocks run as fast as
/// 16x8 once JIT time counts (every store and load site is a per-lane loop
/// the driver compiles), and 64 accumulators suit GPU register files.
pub(crate) const BLOCK_SIDE: usize = 16;
pub(crate) const BLOCK_REGS: usize = 64;

/// Block shape (rows, cols) for extents `rows x cols`: as square as the
/// extents allow, never longer than an extent. A short side (a GEMV's
/// single row) gains nothing from a longer other side: loads per
/// multiply-add are `1/rb + 1/cb`.
pub(crate) fn block_shape(rows: usize, cols: usize) -> (usize, usize) {
    let side = |n: usize| n.clamp(1, BLOCK_SIDE);
    let (mut rb, mut cb) = (side(rows), side(cols));
    while rb * cb > BLOCK_REGS {
        if rb >= cb { rb /= 2 } else { cb /= 2 }
    }
    (rb.max(1), cb.max(1))
}

impl Problem {
    /// The product as a block kernel: rows are M, columns N. When `split`
    /// exceeds 1, batch `bi` of the kernel is part `bi % split` of the
    /// reduction for batch `bi / split`, written unscaled to the partials
    /// (Temp 0).
    fn block(&self, phys: Phys, split: usize) -> Result<Kernel> {
        let t = phys.wgsl();
        let (rb, cb) = block_shape(self.m, self.n);
        let mut helpers = self.a.batch.wgsl("batch_a");
        helpers += &self.b.batch.wgsl("batch_b");
        for (side, op) in [("row", &self.a), ("col", &self.b)] {
            if let Some(z) = &op.zero {
                let idx = if z.per_r { "i" } else { "0u" };
                helpers += &format!("fn {side}_zero(bi: u32, i: u32) -> {t} {{ return {t}(ld_{}({idx})); }}\n", z.arg);
            }
        }
        helpers += &format!(
            "fn row_base(bi: u32, r: u32) -> u32 {{ return batch_a(bi / {split}u) + r * {}u; }}
fn col_base(bi: u32, c: u32) -> u32 {{ return batch_b(bi / {split}u) + c * {}u; }}
",
            self.a.s_r, self.b.s_r
        );
        let k_loop = |k0: &str, k1: &str| {
            format!(
                "    for (var k = {k0}; k < {k1}; k = k + 1u) {{\n        let ro = k * {}u;\n        let co = k * {}u;\n",
                self.a.s_k, self.b.s_k
            )
        };
        if split > 1 {
            let chunk = self.k.div_ceil(split);
            helpers += &format!(
                "fn row_out(bi: u32, r: u32) -> u32 {{ return r * {}u; }}
fn col_out(bi: u32, c: u32) -> u32 {{ return bi * {}u + c; }}
fn epilogue(bi: u32, r: u32, c: u32, o: u32, v: {t}) {{ st_part(o, v); }}
",
                self.n,
                self.m * self.n
            );
            let mut args: Vec<KernelArg> = self.args().into_iter().filter(|a| a.name != "c" && a.name != "y").collect();
            args.push(KernelArg::new("part", TensorRef::Temp(0)));
            let k0 = format!("(bi % {split}u) * {chunk}u");
            return block_kernel(&BlockSpec {
                name: "matmul_split".into(),
                args,
                phys,
                rows: self.m,
                cols: self.n,
                batch: self.batch * split,
                rb,
                cb,
                row_arg: self.a.arg.into(),
                col_arg: self.b.arg.into(),
                helpers,
                k_open: k_loop(&k0, &format!("min({k0} + {chunk}u, {}u)", self.k)),
                k_close: "    }\n".into(),
                scale: None,
                row_add: false,
                col_add: false,
                convert_loads: self.integer,
                row_zero: self.a.zero.is_some(),
                col_zero: self.b.zero.is_some(),
            });
        }
        helpers += &format!(
            "fn row_out(bi: u32, r: u32) -> u32 {{ return r * {}u; }}
fn col_out(bi: u32, c: u32) -> u32 {{ return bi * {}u + c * {}u; }}
",
            self.o_m, self.o_b, self.o_n
        );
        // A bias varying along one side only is read once per row or column.
        let (mut row_add, mut col_add) = (false, false);
        let mut bias2d = String::new();
        if let Some(c) = &self.bias {
            let beta = if c.beta == 1.0 { String::new() } else { format!("{} * ", scalar(phys, c.beta)) };
            if c.s_m == 0 {
                col_add = true;
                helpers += &format!("fn col_add(bi: u32, c: u32) -> {t} {{ return {beta}ld_c(c * {}u); }}\n", c.s_n);
            } else if c.s_n == 0 {
                row_add = true;
                helpers += &format!("fn row_add(bi: u32, r: u32) -> {t} {{ return {beta}ld_c(r * {}u); }}\n", c.s_m);
            } else {
                bias2d = format!(" + {beta}ld_c(r * {}u + c * {}u)", c.s_m, c.s_n);
            }
        }
        helpers += &format!("fn epilogue(bi: u32, r: u32, c: u32, o: u32, v: {t}) {{ st_y(o, v{bias2d}); }}\n");
        let scale = (self.alpha != 1.0).then(|| scalar(phys, self.alpha));
        block_kernel(&BlockSpec {
            name: "matmul".into(),
            args: self.args(),
            phys,
            rows: self.m,
            cols: self.n,
            batch: self.batch,
            rb,
            cb,
            row_arg: self.a.arg.into(),
            col_arg: self.b.arg.into(),
            helpers,
            k_open: k_loop("0u", &format!("{}u", self.k)),
            k_close: "    }\n".into(),
            scale,
            row_add,
            col_add,
            convert_loads: self.integer,
            row_zero: self.a.zero.is_some(),
            col_zero: self.b.zero.is_some(),
        })
    }
}

/// How many parts to split a long reduction into when the product alone
/// has too few threads to fill a GPU (a GEMV: fully connected layers at
/// batch 1). Parts keep at least 256 steps; the partial sums cost one extra
/// small kernel.
fn split_k(k: usize, threads: usize, batch: usize) -> usize {
    const TARGET_THREADS: usize = 4096;
    if k < 1024 || threads >= TARGET_THREADS {
        return 1;
    }
    let s = TARGET_THREADS.div_ceil(threads.max(1)).min(k / 256);
    // The kernel's batches carry the parts.
    if s < 2 || batch * s > MAX_GROUPS { 1 } else { s }
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
        a: Operand { arg: "a", s_r: k, s_k: 1, batch: BatchMap::new(&batch_dims, ab, m * k), zero: None },
        b: Operand { arg: "b", s_r: 1, s_k: n, batch: BatchMap::new(&batch_dims, bb, k * n), zero: None },
        o_b: m * n,
        o_m: n,
        o_n: 1,
        alpha: 1.0,
        bias: None,
        integer: false,
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
        matmul_shape(&a.shape, &b.shape)?.problem.lower(a.dtype.phys(), &cx.target)
    }
}

/// MatMulInteger: `(A - a_zero_point) x (B - b_zero_point)` in int32, zero
/// points per tensor, per row of A or per column of B.
#[derive(Debug)]
pub struct MatMulInteger;

impl MatMulInteger {
    fn shape(a: &[usize], b: &[usize], a_zero: Option<&[usize]>, b_zero: Option<&[usize]>) -> Result<MatMulShape> {
        let mut sh = matmul_shape(a, b)?;
        let zero = |shape: Option<&[usize]>, arg, input, len: usize| -> Result<Option<ZeroPoint>> {
            let Some(s) = shape else { return Ok(None) };
            let n: usize = s.iter().product();
            if n != 1 && n != len {
                bail!("zero point of shape {:?} fits neither one value nor {len}", s);
            }
            Ok(Some(ZeroPoint { arg, input, per_r: n != 1 }))
        };
        let p = &mut sh.problem;
        p.a.zero = zero(a_zero, "za", 2, p.m)?;
        p.b.zero = zero(b_zero, "zb", 3, p.n)?;
        p.integer = true;
        Ok(sh)
    }
}

/// Subtracts zero point `z` (one value, or one per `r` index where element
/// `e` has `r = (e / r_stride) % r_len`) from integer values.
fn sub_zero(v: &Tensor, z: Option<&Tensor>, r_stride: usize, r_len: usize) -> Tensor {
    let zs = z.map(|z| z.to_i64()).unwrap_or_else(|| vec![0]);
    let vals = v
        .to_i64()
        .into_iter()
        .enumerate()
        .map(|(e, x)| x - if zs.len() == 1 { zs[0] } else { zs[(e / r_stride) % r_len] });
    Tensor::from_i64(DType::I64, v.shape.clone(), vals.collect())
}

impl Op for MatMulInteger {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let (a, b) = (ty(inputs, 0)?, ty(inputs, 1)?);
        if a.dtype.is_float() || b.dtype.is_float() {
            bail!("MatMulInteger takes integers, got {} and {}", a.dtype, b.dtype);
        }
        let shape = |i: usize| inputs.get(i).copied().flatten().map(|t| t.ty.shape.as_slice());
        Ok(vec![TypeInfo::new(DType::I32, MatMulInteger::shape(&a.shape, &b.shape, shape(2), shape(3))?.out)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let (a, b) = (arg(inputs, 0)?, arg(inputs, 1)?);
        let get = |i: usize| inputs.get(i).copied().flatten();
        let sh = MatMulInteger::shape(&a.shape, &b.shape, get(2).map(|t| &t.shape[..]), get(3).map(|t| &t.shape[..]))?;
        let p = &sh.problem;
        // A's rows are its second-to-last axis, B's columns its last.
        let a = sub_zero(a, get(2), p.k, p.m);
        let b = sub_zero(b, get(3), 1, p.n);
        let plain = Problem {
            integer: false,
            a: Operand { zero: None, ..p.a.clone() },
            b: Operand { zero: None, ..p.b.clone() },
            ..p.clone()
        };
        Ok(vec![plain.eval(DType::I32, sh.out, &a, &b, None)])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let (a, b) = (cx.input(0)?, cx.input(1)?);
        let shape = |i: usize| if cx.has_input(i) { cx.input(i).ok().map(|t| t.shape.as_slice()) } else { None };
        MatMulInteger::shape(&a.shape, &b.shape, shape(2), shape(3))?.problem.lower(Phys::I32, &cx.target)
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
            a: Operand { arg: "a", s_r: a_sr, s_k: a_sk, batch: BatchMap::none(), zero: None },
            b: Operand { arg: "b", s_r: b_sr, s_k: b_sk, batch: BatchMap::none(), zero: None },
            o_b: m * n,
            o_m: n,
            o_n: 1,
            alpha: self.alpha,
            bias,
            integer: false,
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
        p.lower(phys, &cx.target)
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
    fn matmul_integer_zero_points() {
        let u8s = |shape: &[usize], v: &[i64]| Tensor::from_i64(DType::U8, shape.to_vec(), v.to_vec());
        let a = u8s(&[4, 3], &[11, 7, 3, 10, 6, 2, 9, 5, 1, 8, 4, 0]);
        let b = u8s(&[3, 2], &[1, 4, 2, 5, 3, 6]);
        // ONNX test_matmulinteger: a_zero_point 12, b_zero_point 0.
        let y = run(&MatMulInteger, &[Some(&a), Some(&b), Some(&u8s(&[1], &[12])), Some(&u8s(&[1], &[0]))]);
        assert_eq!(y.dtype, DType::I32);
        assert_eq!(y.to_i64(), vec![-38, -83, -44, -98, -50, -113, -56, -128]);
        // Per-row (A) and per-column (B) zero points.
        let y = run(&MatMulInteger, &[Some(&a), Some(&b), Some(&u8s(&[4], &[1, 2, 3, 4])), Some(&u8s(&[2], &[1, 2]))]);
        assert_eq!(y.to_i64(), vec![10, 46, 4, 28, -2, 10, -8, -8]);
    }

    #[test]
    fn gemv_splits_the_reduction() {
        // 1 x 25088 x 1024 (VGG's first FC, one weight block): 64 threads.
        assert_eq!(split_k(25088, 64, 1), 64);
        assert_eq!(split_k(512, 64, 1), 1);
        assert_eq!(split_k(4096, 8192, 1), 1);
        let Lowering::Kernels { temps, kernels } =
            matmul_shape(&[1, 4096], &[4096, 1000]).unwrap().problem.lower(Phys::F32, &Target::GENERIC).unwrap()
        else {
            panic!()
        };
        assert_eq!(kernels.len(), 2);
        assert_eq!(temps[0].elems, 16 * 1000);
    }

    #[test]
    fn block_shapes() {
        assert_eq!(block_shape(1, 4096), (1, 16));
        assert_eq!(block_shape(512, 512), (8, 8));
        assert_eq!(block_shape(3, 50176), (3, 16));
        assert_eq!(block_shape(1000, 2), (16, 2));
        assert_eq!(block_shape(0, 0), (1, 1));
    }

    #[test]
    fn block_kernel_layout() {
        let Lowering::Kernels { kernels, .. } =
            matmul_shape(&[2, 70, 50], &[50, 90]).unwrap().problem.lower(Phys::F32, &Target::GENERIC).unwrap()
        else {
            panic!()
        };
        let k = &kernels[0];
        // 90 columns in blocks of 8 -> 12 threads (1 group of 32); 70 rows / 8 -> 9; 2 batches.
        assert_eq!(k.workgroups, [1, 9, 2]);
        assert!(k.body.contains("a7_7"));
    }
}
