//! Product kernels for GPUs with workgroup memory: MatMul, Gemm and Conv
//! (as an implicit product) on every target but `generic`.
//!
//! A [`Product`] is a batch of `rows x cols` outputs reduced over `k`, each
//! operand element addressed by a WGSL helper (`a_at(bi, r, k)` and
//! `b_at(bi, c, k)`, element indices for the operands' `ld_` accessors), and
//! an `epilogue(bi, r, c, v)` that stores one output through the output's
//! `st_` accessor (adding biases). Because every output element leaves
//! through that one call, epilogue fusion works on these kernels as on any
//! other.
//!
//! Two kernels:
//! - [`tiled`]: f32 tiles in workgroup memory (`bm x bk` of A, `bk x bn` of
//!   B per step, loaded by consecutive threads along whichever index is
//!   contiguous in memory), each thread holding `tm x tn` accumulators in
//!   registers, its rows and columns strided by the thread grid so that a
//!   warp's shared-memory reads and global stores are consecutive.
//! - [`cooperative`]: the same tiles as f16, multiplied by 16x16
//!   cooperative-matrix (tensor-core) operations with f32 accumulators; each
//!   warp stores its accumulators to workgroup memory one fragment at a time,
//!   and the lanes then hand every element to the epilogue.
//!
//! Products too small to fill the GPU split the reduction: part `s` of batch
//! `bi` writes unscaled partial sums to a temp. By default the parts meet in
//! the same kernel: each workgroup counts its arrival on an atomic counter
//! per output tile, and the last to arrive adds the parts (in part order, so
//! results do not depend on timing) and runs the epilogue; a dependent
//! dispatch costs several microseconds on desktop GPUs, more than most
//! split products' reduction. `--tune split-meet=pass` adds the parts in a
//! second kernel instead.

use crate::{Kernel, KernelArg, Phys, Result, Target, TempSpec, Tile, error::Error};

/// The WGSL of one thread's share of a tile load (see `Product::tile_share`).
#[derive(Default)]
struct TileShare {
    setup: String,
    fetch: String,
    put: String,
    /// The argument read four elements at a time (`ld4_`), if any.
    wide: Option<String>,
}

/// An operand whose elements sit in one argument at `batch + x * s_x + k *
/// s_k` (x: the operand's row for A, column for B), so that a tile load can
/// fetch four along its contiguous axis with one 16-byte load. `batch` is
/// the WGSL expression of batch `bi`'s base, a multiple of 4 by contract.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Words {
    pub arg: String,
    pub batch: String,
    pub s_x: usize,
    pub s_k: usize,
}

/// One batched product, as the kernels see it.
pub(crate) struct Product {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    pub k: usize,
    pub batch: usize,
    /// `fn load_a(bi: u32, r: u32, k: u32) -> f32` and `fn load_b(bi: u32,
    /// c: u32, k: u32) -> f32`, the operands' elements (0 where a padded
    /// operand has none), plus whatever they call. Their arguments are
    /// always in range: the kernels clamp them.
    pub address: String,
    /// Whether `address` also addresses B in two steps (implicit-GEMM
    /// convolutions): a thread's tile columns stay the same over the
    /// reduction, so what depends on the column alone is computed once,
    /// before the loop, by `fn b_col(bi: u32, c: u32) -> S` (any state type
    /// `S`), and per element by `fn load_b_col(bi: u32, s: S, k: u32) ->
    /// f32`; together they equal `load_b`. Used where B's loading threads
    /// run along columns.
    pub b_column: bool,
    pub operand_args: Vec<KernelArg>,
    /// `fn epilogue(bi: u32, r: u32, c: u32, v: f32)` and its arguments.
    pub epilogue: String,
    pub epilogue_args: Vec<KernelArg>,
    /// Whether consecutive `k` are adjacent in memory in A and in B: the
    /// loading threads then run along `k`, else along rows / columns.
    pub a_k_fast: bool,
    pub b_k_fast: bool,
    /// The lowering's temp index to use for partial sums, if split (the
    /// tile counters of an in-kernel meeting take the next index).
    pub part_temp: usize,
    /// A and B as plain words, where they are (`load_a` / `load_b` read
    /// exactly these elements).
    pub a_words: Option<Words>,
    pub b_words: Option<Words>,
}

/// What a product lowers to: kernels in order, and the temps they need
/// (partial sums at `Product::part_temp`, then tile counters), if any.
pub(crate) struct ProductKernels {
    pub kernels: Vec<Kernel>,
    pub temps: Vec<TempSpec>,
}

/// The operands of a product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    A,
    B,
}

/// How a product's reduction is split: `parts` ranges of `k`, which meet
/// in the product kernel itself (`in_kernel`) or in a second kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Split {
    parts: usize,
    in_kernel: bool,
}

impl Split {
    const NONE: Split = Split { parts: 1, in_kernel: false };

    fn is_split(&self) -> bool {
        self.parts > 1
    }

    /// Whether the parts meet in the product kernel itself.
    fn meets_in_kernel(&self) -> bool {
        self.is_split() && self.in_kernel
    }

    /// Whether the product kernel runs the epilogue (unsplit, or the last
    /// workgroup of a tile in an in-kernel meeting).
    fn epilogue_in_main(&self) -> bool {
        !self.is_split() || self.in_kernel
    }
}

const MAX_GROUPS: usize = crate::wgsl::MAX_GROUPS as usize;

/// Fewest `bk` slices of the reduction one part of a split keeps.
const MIN_SLICES: usize = 2;
/// Most parts a reduction splits into: the last workgroup of a tile adds
/// them all, so more parts lengthen that tail.
const MAX_PARTS: usize = 32;

impl Product {
    fn flops(&self) -> u64 {
        2 * (self.rows * self.cols * self.k * self.batch) as u64
    }

    /// Workgroups of one tile shape, over every batch.
    fn groups(&self, bm: usize, bn: usize) -> usize {
        self.rows.div_ceil(bm) * self.cols.div_ceil(bn) * self.batch
    }

    /// The largest tile but the last that still gives `fill` workgroups unsplit; when
    /// none does, the next-to-last tile with the reduction split into
    /// enough parts to fill the GPU, each at least `MIN_SLICES` slices of
    /// `bk` long and at most `MAX_PARTS` of them: on an H100 small products
    /// are bound by the latency of their serial reduction loop, so many
    /// short parts win (the sweep of `tests/bench/tune.py`,
    /// docs/benchmarks.md). The last (smallest) tile takes over where the
    /// reduction is too short to split and it gives at least twice the
    /// workgroups (a 192x784 product over 32). `forced` (from `--tune`)
    /// replaces the choice of tile; `tuning.split` the choice of split.
    fn choose<T: Copy>(
        &self,
        tiles: &[T],
        forced: Option<T>,
        dims: impl Fn(&T) -> (usize, usize, usize),
        target: &Target,
    ) -> (T, Split) {
        let tuning = target.tuning;
        let fill = tuning.fill.unwrap_or(target.fill);
        let slices = tuning.min_slices.unwrap_or(MIN_SLICES);
        // Parts a tile's reduction splits into, and the workgroups then.
        let parts_of = |t: &T| {
            let (bm, bn, bk) = dims(t);
            let groups = self.groups(bm, bn);
            let most = (self.k / (slices * bk)).min(MAX_PARTS).min(MAX_GROUPS / self.batch.max(1)).max(1);
            let parts = match tuning.split {
                Some(s) => s.min(self.k.div_ceil(bk)).min(MAX_GROUPS / self.batch.max(1)).max(1),
                None if groups >= fill => 1,
                None => fill.div_ceil(groups).min(most),
            };
            (parts, groups * parts)
        };
        let tile = forced.unwrap_or_else(|| {
            let last = *tiles.last().expect("targets with products have tiles");
            // The smallest tile is only for what cannot split (below).
            let unsplit = tiles[..tiles.len().max(2) - 1].iter().copied().find(|t| {
                let (bm, bn, _) = dims(t);
                self.groups(bm, bn) >= fill
            });
            let split_tile = tiles.len().checked_sub(2).map_or(last, |i| tiles[i]);
            let (_, wide) = parts_of(&split_tile);
            let (_, small) = parts_of(&last);
            unsplit.unwrap_or(if 2 * wide < fill && small >= 2 * wide { last } else { split_tile })
        });
        let (parts, _) = parts_of(&tile);
        (tile, Split { parts, in_kernel: tuning.split_in_kernel.unwrap_or(true) })
    }

    /// The reduction range of part `s` as WGSL (`k_begin`, `k_end`), with
    /// parts a whole number of `bk` slices long.
    fn k_range(&self, split: Split, bk: usize) -> String {
        if !split.is_split() {
            return format!("    let k_begin = 0u;\n    let k_end = {}u;\n", self.k);
        }
        let chunk = self.k.div_ceil(split.parts).next_multiple_of(bk);
        format!("    let k_begin = part * {chunk}u;\n    let k_end = min(k_begin + {chunk}u, {}u);\n", self.k)
    }

    /// Batch and part of the workgroup.
    fn batch_part(split: Split) -> String {
        if !split.is_split() {
            "    let bi = wid.z;\n    let part = 0u;\n    _ = part;\n".into()
        } else {
            format!("    let bi = wid.z / {p}u;\n    let part = wid.z % {p}u;\n", p = split.parts)
        }
    }

    /// One output leaving the kernel: to the epilogue, or to the partial
    /// sums of its part.
    fn store(&self, split: Split, r: &str, c: &str, v: &str) -> String {
        let st = if !split.is_split() {
            format!("epilogue(bi, {r}, {c}, {v});")
        } else {
            format!("st_part({}, {v});", self.part_index(split, "part", r, c))
        };
        format!("if ({}) {{ {st} }}", self.guard(r, c))
    }

    fn guard(&self, r: &str, c: &str) -> String {
        format!("{r} < {}u && {c} < {}u", self.rows, self.cols)
    }

    /// Index of output (r, c) of batch `bi` in the partial sums of part `s`.
    fn part_index(&self, split: Split, s: &str, r: &str, c: &str) -> String {
        format!("((bi * {}u + {s}) * {}u + {r}) * {}u + {c}", split.parts, self.rows, self.cols)
    }

    /// The end of a product kernel whose parts meet in it (nothing
    /// otherwise): after storing its partial sums, each workgroup of the
    /// `gx x gy` grid counts its arrival at its output tile's counter; the
    /// last to arrive adds the parts of the outputs `outputs` (each
    /// thread's, as WGSL row and column expressions), runs the epilogue and
    /// resets the counter for the next run. The storage barriers are
    /// device-scope release (before counting) and acquire (before reading
    /// the other parts).
    fn meet_in_kernel(&self, split: Split, gx: u32, gy: u32, outputs: &[(String, String)]) -> String {
        if !split.meets_in_kernel() {
            return String::new();
        }
        let mut s = format!(
            "    let tile = (bi * {gy}u + wid.y) * {gx}u + wid.x;\n    storageBarrier();\n    if (tid == 0u) {{ arrived = atomic_add_count(tile, 1u); }}\n    if (workgroupUniformLoad(&arrived) == {}u) {{\n        storageBarrier();\n",
            split.parts - 1
        );
        for (r, c) in outputs {
            s += &format!(
                "        {{\n            let r = {r};\n            let c = {c};\n            if ({}) {{\n                var v = 0.0;\n                for (var s = 0u; s < {}u; s = s + 1u) {{ v = v + ld_part({}); }}\n                epilogue(bi, r, c, v);\n            }}\n        }}\n",
                self.guard("r", "c"),
                split.parts,
                self.part_index(split, "s", "r", "c")
            );
        }
        s + "        if (tid == 0u) { atomic_store_count(tile, 0u); }\n    }\n"
    }

    /// The epilogue's arguments, its outputs marked stored once: every
    /// product kernel (tiled, cooperative, GEMV, split-K parts) calls
    /// `epilogue` at most once per element, under a bounds guard, so the
    /// optimizer may splice a consumer into those stores.
    fn epilogue_args(&self) -> impl Iterator<Item = KernelArg> + '_ {
        self.epilogue_args.iter().map(|a| match a.tensor {
            crate::TensorRef::Output(_) => a.clone().stored_once(),
            _ => a.clone(),
        })
    }

    /// The kernel's arguments; `wide` names operands read four at a time.
    fn args(&self, split: Split, wide: &[Option<String>]) -> Vec<KernelArg> {
        let mut args = self.operand_args.clone();
        for a in &mut args {
            a.wide = wide.iter().flatten().any(|w| *w == a.name);
        }
        if split.is_split() {
            args.push(KernelArg::new("part", crate::TensorRef::Temp(self.part_temp)));
        }
        if split.meets_in_kernel() {
            args.push(KernelArg::new("count", crate::TensorRef::Temp(self.part_temp + 1)).atomic());
        }
        if split.epilogue_in_main() {
            args.extend(self.epilogue_args());
        }
        args
    }

    /// The helpers the product kernel needs: the operand addressing, the
    /// epilogue where it runs, the arrival order of an in-kernel meeting.
    fn main_helpers(&self, split: Split) -> String {
        let mut s = self.address.clone();
        if split.epilogue_in_main() {
            s += &self.epilogue;
        }
        if split.meets_in_kernel() {
            s += "var<workgroup> arrived: u32;\n";
        }
        s
    }

    /// This thread's share of one tile of operand `side` (`extent x bk`
    /// elements, element (i, kk) read by `load_a(bi, r0 + i, k0 + kk)` or
    /// `load_b(bi, c0 + i, k0 + kk)`) as three pieces of WGSL: `setup` (the
    /// tile coordinates of each element, once), `fetch` (global loads into
    /// registers `pa{j}` / `pb{j}`, so that the next tile is in flight while
    /// this one is multiplied) and `put` (the registers, converted by
    /// `convert`, into workgroup memory `ta` / `tb` at `slot(i, kk)`).
    fn tile_share(
        &self,
        side: Side,
        (extent, bk, threads): (usize, usize, usize),
        slot: impl Fn(&str, &str) -> String,
        convert: &str,
    ) -> TileShare {
        let (reg, dst, load, base, limit, k_fast) = match side {
            Side::A => ("pa", "ta", "load_a", "r0", self.rows, self.a_k_fast),
            Side::B => ("pb", "tb", "load_b", "c0", self.cols, self.b_k_fast),
        };
        if let Some(words) = self.quads(side, extent, bk) {
            return self.tile_quads(side, words, (extent, bk, threads), slot, convert);
        }
        let mut t = TileShare::default();
        let (lmax, kmax) = (limit.max(1) - 1, self.k.max(1) - 1);
        let total = extent * bk;
        // Column state, when the load has one and this share's column is
        // fixed over the loop (threads along the extent).
        let column = side == Side::B && !k_fast && self.b_column;
        for j in 0..total.div_ceil(threads) {
            let e = format!("(tid + {}u)", j * threads);
            // A share past the tile's end (threads not dividing it) loads
            // nothing and stores nowhere.
            let spare = (j + 1) * threads > total;
            let (i, kk) = if k_fast {
                (format!("{e} / {bk}u"), format!("{e} % {bk}u"))
            } else {
                (format!("{e} % {extent}u"), format!("{e} / {extent}u"))
            };
            t.setup += &format!("    let {reg}i{j} = {i};\n    let {reg}k{j} = {kk};\n    var {reg}{j} = 0.0;\n");
            let in_tile = if spare { format!(" && {e} < {total}u") } else { String::new() };
            let value = if column {
                t.setup += &format!("    let {reg}s{j} = b_col(bi, min({base} + {reg}i{j}, {lmax}u));\n");
                format!("load_b_col(bi, {reg}s{j}, min(k, {kmax}u))")
            } else {
                format!("{load}(bi, min(x, {lmax}u), min(k, {kmax}u))")
            };
            t.fetch += &format!(
                "        {{\n            let x = {base} + {reg}i{j};\n            let k = k0 + {reg}k{j};\n            {reg}{j} = select(0.0, {value}, x < {limit}u && k < k_end{in_tile});\n        }}\n",
            );
            let put = format!("{dst}[{}] = {convert}({reg}{j});", slot(&format!("{reg}i{j}"), &format!("{reg}k{j}")));
            t.put +=
                &if spare { format!("        if ({e} < {total}u) {{ {put} }}\n") } else { format!("        {put}\n") };
        }
        t
    }

    /// Operand `side` as words a tile of `extent x bk` can load four at a
    /// time: along k where k is contiguous, else along the extent; every
    /// quad must start on 16 bytes and hold no element past the operand.
    fn quads(&self, side: Side, extent: usize, bk: usize) -> Option<&Words> {
        let (words, limit) = match side {
            Side::A => (self.a_words.as_ref()?, self.rows),
            Side::B => (self.b_words.as_ref()?, self.cols),
        };
        let fits = match (words.s_k, words.s_x) {
            (1, s_x) => [s_x, bk, self.k].iter().all(|x| x.is_multiple_of(4)) && self.k >= 4,
            (s_k, 1) => [s_k, extent, limit].iter().all(|x| x.is_multiple_of(4)) && limit >= 4,
            _ => false,
        };
        fits.then_some(words)
    }

    /// `tile_share` of an operand read as words (`quads`): each share is
    /// four adjacent elements, fetched with one `ld4_` into a vec4 register
    /// and put into workgroup memory one element at a time.
    fn tile_quads(
        &self,
        side: Side,
        words: &Words,
        (extent, bk, threads): (usize, usize, usize),
        slot: impl Fn(&str, &str) -> String,
        convert: &str,
    ) -> TileShare {
        let (reg, dst, base, limit) = match side {
            Side::A => ("pa", "ta", "r0", self.rows),
            Side::B => ("pb", "tb", "c0", self.cols),
        };
        let k_fast = words.s_k == 1;
        let mut t = TileShare { wide: Some(words.arg.clone()), ..TileShare::default() };
        // Clamped starts of a quad: the last whole quad along each axis.
        let (lmax, kmax) = if k_fast { (limit.max(1) - 1, self.k - 4) } else { (limit - 4, self.k.max(1) - 1) };
        let total = extent * bk / 4;
        for j in 0..total.div_ceil(threads) {
            let q = format!("(tid + {}u)", j * threads);
            let spare = (j + 1) * threads > total;
            let (i, kk) = if k_fast {
                (format!("{q} / {}u", bk / 4), format!("({q} % {}u) * 4u", bk / 4))
            } else {
                (format!("({q} % {}u) * 4u", extent / 4), format!("{q} / {}u", extent / 4))
            };
            t.setup +=
                &format!("    let {reg}i{j} = {i};\n    let {reg}k{j} = {kk};\n    var {reg}{j} = vec4<f32>();\n");
            let in_tile = if spare { format!(" && {q} < {total}u") } else { String::new() };
            let word = format!("{} + min(x, {lmax}u) * {}u + min(k, {kmax}u) * {}u", words.batch, words.s_x, words.s_k);
            t.fetch += &format!(
                "        {{\n            let x = {base} + {reg}i{j};\n            let k = k0 + {reg}k{j};\n            {reg}{j} = select(vec4<f32>(), bitcast<vec4<f32>>(ld4_{}(({word}) >> 2u)), x < {limit}u && k < k_end{in_tile});\n        }}\n",
                words.arg
            );
            let mut put = String::new();
            for c in 0..4 {
                let (ic, kc) = if k_fast {
                    (format!("{reg}i{j}"), format!("({reg}k{j} + {c}u)"))
                } else {
                    (format!("({reg}i{j} + {c}u)"), format!("{reg}k{j}"))
                };
                put += &format!("{dst}[{}] = {convert}({reg}{j}[{c}]); ", slot(&ic, &kc));
            }
            t.put += &if spare {
                format!("        if ({q} < {total}u) {{ {put}}}\n")
            } else {
                format!("        {}\n", put.trim_end())
            };
        }
        t
    }

    /// Adds the split parts and runs the epilogue.
    fn reduce_parts(&self, split: usize) -> Kernel {
        let mn = self.rows * self.cols;
        let body = format!(
            "    let bi = i / {mn}u;\n    let e = i % {mn}u;\n    var v = 0.0;\n    for (var s = 0u; s < {split}u; s = s + 1u) {{ v = v + ld_part((bi * {split}u + s) * {mn}u + e); }}\n    epilogue(bi, e / {c}u, e % {c}u, v);\n",
            c = self.cols.max(1)
        );
        let mut args = vec![KernelArg::new("part", crate::TensorRef::Temp(self.part_temp))];
        args.extend(self.epilogue_args());
        crate::wgsl::kernel_1d(&format!("{}_parts", self.name), args, self.batch * mn, &self.epilogue, &body)
    }

    fn finish(&self, main: Kernel, split: Split) -> ProductKernels {
        if !split.is_split() {
            return ProductKernels { kernels: vec![main], temps: vec![] };
        }
        let part = TempSpec { elems: self.batch * split.parts * self.rows * self.cols, phys: Phys::F32 };
        if split.in_kernel {
            let [gx, gy, _] = main.workgroups;
            let count = TempSpec { elems: self.batch * (gx * gy) as usize, phys: Phys::U32 };
            return ProductKernels { kernels: vec![main], temps: vec![part, count] };
        }
        ProductKernels { kernels: vec![main, self.reduce_parts(split.parts)], temps: vec![part] }
    }
}

/// The reduction loop's head: registers hold the next tiles of A and B
/// (fetched before the loop, then during each step's multiplications);
/// each step puts them into workgroup memory, waits, and fetches the next.
/// The caller writes the step's multiplications and closes the loop with
/// a barrier.
fn prefetch_loop(a: &TileShare, b: &TileShare, bk: usize) -> String {
    format!(
        "{}{}    var k0 = k_begin;\n{}{}    for (; k0 < k_end; k0 = k0 + {bk}u) {{\n{}{}        workgroupBarrier();\n        if (k0 + {bk}u < k_end) {{\n            let k0 = k0 + {bk}u;\n{}{}        }}\n",
        a.setup, b.setup, a.fetch, b.fetch, a.put, b.put, a.fetch, b.fetch
    )
}

fn check_groups(what: &str, n: usize) -> Result<u32> {
    if n > MAX_GROUPS {
        return Err(Error::unsupported(format!("a product needing {n} workgroups along {what}")));
    }
    Ok(n.max(1) as u32)
}

/// The f32 tiled product over the target's `tiles`.
pub(crate) fn tiled(p: &Product, target: &Target) -> Result<ProductKernels> {
    let (t, split) = p.choose(target.tiles, target.tuning.tile, |t: &Tile| (t.bm, t.bn, t.bk), target);
    let threads = t.threads();
    let (gm, gn) = (t.bm / t.tm, t.bn / t.tn);
    let gx = check_groups("columns", p.cols.div_ceil(t.bn))?;
    let gy = check_groups("rows", p.rows.div_ceil(t.bm))?;
    let gz = check_groups("batches", p.batch * split.parts)?;
    // With 4 or more outputs per thread and side, a thread's rows and
    // columns are adjacent and read from workgroup memory as vec4s (one
    // 16-byte load per 4 values); otherwise strided by the thread grid.
    let vec = t.tm % 4 == 0 && t.tn % 4 == 0;
    // Rows of the k-major tiles get padding when the loading threads run
    // along k, so their stores spread over banks (a whole vec4 if read so).
    let pad = if vec { 4 } else { 1 };
    let (sa, sb) = (t.bm + pad * usize::from(p.a_k_fast), t.bn + pad * usize::from(p.b_k_fast));
    let mut s = p.main_helpers(split);
    if vec {
        s += &format!(
            "var<workgroup> ta: array<vec4<f32>, {}>;\nvar<workgroup> tb: array<vec4<f32>, {}>;\n",
            t.bk * sa / 4,
            t.bk * sb / 4
        );
    } else {
        s += &format!("var<workgroup> ta: array<f32, {}>;\nvar<workgroup> tb: array<f32, {}>;\n", t.bk * sa, t.bk * sb);
    }
    s += &format!(
        "@compute @workgroup_size({threads}, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {{
{bp}{kr}    let r0 = wid.y * {bm}u;
    let c0 = wid.x * {bn}u;
    let tx = tid % {gn}u;
    let ty = tid / {gn}u;
",
        bp = Product::batch_part(split),
        kr = p.k_range(split, t.bk),
        bm = t.bm,
        bn = t.bn,
    );
    for i in 0..t.tm {
        for j in 0..t.tn {
            s += &format!("    var acc{i}_{j} = 0.0;\n");
        }
    }
    let slot = |stride: usize| {
        move |i: &str, kk: &str| {
            if vec {
                format!("({kk} * {stride}u + {i}) / 4u][({kk} * {stride}u + {i}) % 4u")
            } else {
                format!("{kk} * {stride}u + {i}")
            }
        }
    };
    let a = p.tile_share(Side::A, (t.bm, t.bk, threads), slot(sa), "f32");
    let b = p.tile_share(Side::B, (t.bn, t.bk, threads), slot(sb), "f32");
    s += &prefetch_loop(&a, &b, t.bk);
    s += &format!("        for (var kk = 0u; kk < {}u; kk = kk + 1u) {{\n", t.bk);
    // Row i and column j of this thread, and the expression reading them.
    let row = |i: usize| if vec { format!("ty * {}u + {i}u", t.tm) } else { format!("ty + {}u", i * gm) };
    let col = |j: usize| if vec { format!("tx * {}u + {j}u", t.tn) } else { format!("tx + {}u", j * gn) };
    if vec {
        for q in 0..t.tm / 4 {
            s += &format!("            let ua{q} = ta[(kk * {sa}u + ty * {}u) / 4u + {q}u];\n", t.tm);
        }
        for q in 0..t.tn / 4 {
            s += &format!("            let vb{q} = tb[(kk * {sb}u + tx * {}u) / 4u + {q}u];\n", t.tn);
        }
        for i in 0..t.tm {
            s += &format!("            let u{i} = ua{}[{}];\n", i / 4, i % 4);
        }
        for j in 0..t.tn {
            s += &format!("            let v{j} = vb{}[{}];\n", j / 4, j % 4);
        }
    } else {
        for i in 0..t.tm {
            s += &format!("            let u{i} = ta[kk * {sa}u + {}];\n", row(i));
        }
        for j in 0..t.tn {
            s += &format!("            let v{j} = tb[kk * {sb}u + {}];\n", col(j));
        }
    }
    for i in 0..t.tm {
        for j in 0..t.tn {
            s += &format!("            acc{i}_{j} = fma(u{i}, v{j}, acc{i}_{j});\n");
        }
    }
    s += "        }\n        workgroupBarrier();\n    }\n";
    for i in 0..t.tm {
        s += &format!("    let rr{i} = r0 + {};\n", row(i));
    }
    for j in 0..t.tn {
        s += &format!("    let cc{j} = c0 + {};\n", col(j));
    }
    for i in 0..t.tm {
        for j in 0..t.tn {
            s += &format!("    {}\n", p.store(split, &format!("rr{i}"), &format!("cc{j}"), &format!("acc{i}_{j}")));
        }
    }
    let outputs: Vec<(String, String)> =
        (0..t.tm).flat_map(|i| (0..t.tn).map(move |j| (format!("rr{i}"), format!("cc{j}")))).collect();
    s += &p.meet_in_kernel(split, gx, gy, &outputs);
    s += "}\n";
    let main = Kernel {
        name: p.name.clone(),
        args: p.args(split, &[a.wide, b.wide]),
        body: s,
        workgroup_size: [threads as u32, 1, 1],
        workgroups: [gx, gy, gz],
        flops: p.flops(),
    };
    Ok(p.finish(main, split))
}

/// Tiles of the cooperative-matrix kernel: `bm x bn` outputs per workgroup
/// over `bk`-deep slices, each warp owning `wm x wn` of them as 16x16
/// fragments.
#[derive(Clone, Copy, Debug)]
struct CoopTile {
    bm: usize,
    bn: usize,
    bk: usize,
    wm: usize,
    wn: usize,
}

/// Largest first; the next-to-last is the tile of split products: in the
/// H100 sweep 64x32 tiles of four warps, split to about 400 workgroups,
/// beat 32x32 and 64x64 tiles on every small product but one. 32x32 serves
/// reductions too short to split (see `Product::choose`).
const COOP_TILES: &[CoopTile] = &[
    CoopTile { bm: 128, bn: 128, bk: 32, wm: 64, wn: 32 },
    CoopTile { bm: 64, bn: 64, bk: 32, wm: 32, wn: 32 },
    CoopTile { bm: 64, bn: 32, bk: 32, wm: 32, wn: 16 },
    CoopTile { bm: 32, bn: 32, bk: 32, wm: 16, wn: 16 },
];

/// f16 halves of padding per workgroup-memory row: 16 bytes keeps rows
/// aligned for matrix loads and moves them across banks.
const COOP_PAD: usize = 8;

/// The cooperative-matrix product (f16 operands, f32 accumulators) for
/// warps of `subgroup` threads.
pub(crate) fn cooperative(p: &Product, target: &Target) -> Result<ProductKernels> {
    let subgroup = target.subgroup as usize;
    let forced = target.tuning.coop.map(|[bm, bn, bk, wm, wn]| CoopTile { bm, bn, bk, wm, wn });
    let (t, split) = p.choose(COOP_TILES, forced, |t: &CoopTile| (t.bm, t.bn, t.bk), target);
    let (warps_m, warps_n) = (t.bm / t.wm, t.bn / t.wn);
    let threads = warps_m * warps_n * subgroup;
    let (fm, fn_) = (t.wm / 16, t.wn / 16);
    let gx = check_groups("columns", p.cols.div_ceil(t.bn))?;
    let gy = check_groups("rows", p.rows.div_ceil(t.bm))?;
    let gz = check_groups("batches", p.batch * split.parts)?;
    let (sa, sb) = (t.bk + COOP_PAD, t.bn + COOP_PAD);
    let mut s = "enable f16;\nenable wgpu_cooperative_matrix;\n".to_string();
    s += &p.main_helpers(split);
    s += &format!(
        "var<workgroup> ta: array<f16, {}>;\nvar<workgroup> tb: array<f16, {}>;\nvar<workgroup> tc: array<f32, {}>;\n",
        t.bm * sa,
        t.bk * sb,
        warps_m * warps_n * 256
    );
    s += &format!(
        "@compute @workgroup_size({threads}, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {{
{bp}{kr}    let r0 = wid.y * {bm}u;
    let c0 = wid.x * {bn}u;
    let warp = tid / {subgroup}u;
    let lane = tid % {subgroup}u;
    let wr = (warp / {warps_n}u) * {wm}u;
    let wc = (warp % {warps_n}u) * {wn}u;
",
        bp = Product::batch_part(split),
        kr = p.k_range(split, t.bk),
        bm = t.bm,
        bn = t.bn,
        wm = t.wm,
        wn = t.wn,
    );
    for i in 0..fm {
        for j in 0..fn_ {
            s += &format!("    var acc{i}_{j} = coop_mat16x16<f32, C>();\n");
        }
    }
    // A row-major [m][k], B row-major [k][n].
    let a = p.tile_share(Side::A, (t.bm, t.bk, threads), |i, kk| format!("{i} * {sa}u + {kk}"), "f16");
    let b = p.tile_share(Side::B, (t.bn, t.bk, threads), |i, kk| format!("{kk} * {sb}u + {i}"), "f16");
    s += &prefetch_loop(&a, &b, t.bk);
    for kk in (0..t.bk).step_by(16) {
        for i in 0..fm {
            s += &format!(
                "        let a{i}_{kk} = coopLoadT<coop_mat16x16<f16, A>>(&ta[(wr + {}u) * {sa}u + {kk}u], {sa}u);\n",
                i * 16
            );
        }
        for j in 0..fn_ {
            s += &format!(
                "        let b{j}_{kk} = coopLoadT<coop_mat16x16<f16, B>>(&tb[{kk}u * {sb}u + wc + {}u], {sb}u);\n",
                j * 16
            );
        }
        for i in 0..fm {
            for j in 0..fn_ {
                s += &format!("        acc{i}_{j} = coopMultiplyAdd(a{i}_{kk}, b{j}_{kk}, acc{i}_{j});\n");
            }
        }
    }
    s += "        workgroupBarrier();\n    }\n";
    // Each warp's 16x16 staging area; lanes take 256 / subgroup elements.
    let per_lane = 256usize.div_ceil(subgroup);
    let mut outputs = vec![];
    for i in 0..fm {
        for j in 0..fn_ {
            s += &format!("    coopStoreT(acc{i}_{j}, &tc[warp * 256u], 16u);\n    workgroupBarrier();\n");
            for e in 0..per_lane {
                let idx = format!("(lane + {}u)", e * subgroup);
                let r = format!("(r0 + wr + {}u + {idx} / 16u)", i * 16);
                let c = format!("(c0 + wc + {}u + {idx} % 16u)", j * 16);
                s += &format!(
                    "    {{ let r = {r}; let c = {c}; let v = tc[warp * 256u + {idx}]; {} }}\n",
                    p.store(split, "r", "c", "v")
                );
                outputs.push((r, c));
            }
            s += "    workgroupBarrier();\n";
        }
    }
    s += &p.meet_in_kernel(split, gx, gy, &outputs);
    s += "}\n";
    let main = Kernel {
        name: format!("{}_coop", p.name),
        args: p.args(split, &[a.wide, b.wide]),
        body: s,
        workgroup_size: [threads as u32, 1, 1],
        workgroups: [gx, gy, gz],
        flops: p.flops(),
    };
    Ok(p.finish(main, split))
}

/// Products with at most this many rows run as GEMV ([`gemv`]).
pub(crate) const GEMV_ROWS: usize = 8;

/// Threads of a GEMV workgroup, and how they split when B's columns (not
/// its k) are contiguous: `GEMV_COLS` columns x slices of k.
const GEMV_WG: usize = 256;
const GEMV_COLS: usize = 32;

/// A thin product (at most [`GEMV_ROWS`] rows: fully connected layers at
/// small batch). It is memory-bound, so every element of B is read once and
/// coalesced: where B's k is contiguous one workgroup owns one column and
/// its threads stride over k; otherwise a workgroup owns 32 columns and its
/// threads run along them, in 8 slices of k. Partial sums meet in workgroup
/// memory and one thread per output runs the epilogue.
pub(crate) fn gemv(p: &Product) -> Result<ProductKernels> {
    let rows = p.rows.max(1);
    let (cmax, kmax) = (p.cols.max(1) - 1, p.k.max(1) - 1);
    let slices = if p.b_k_fast { GEMV_WG } else { GEMV_WG / GEMV_COLS };
    let width = GEMV_WG / slices;
    let gx = check_groups("columns", p.cols.div_ceil(width))?;
    let gz = check_groups("batches", p.batch)?;
    let mut s = p.address.clone() + &p.epilogue;
    s += &format!("var<workgroup> red: array<f32, {}>;\n", rows * GEMV_WG);
    s += &format!(
        "@compute @workgroup_size({GEMV_WG}, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {{
    let bi = wid.z;
    let lane = tid % {width}u;
    let slice = tid / {width}u;
    let c = wid.x * {width}u + lane;
    let cc = min(c, {cmax}u);
"
    );
    for r in 0..rows {
        s += &format!("    var acc{r} = 0.0;\n");
    }
    s += &format!(
        "    for (var k = slice; k < {}u; k = k + {slices}u) {{\n        let kc = min(k, {kmax}u);\n        let v = load_b(bi, cc, kc);\n",
        p.k
    );
    for r in 0..rows {
        s += &format!("        acc{r} = fma(load_a(bi, {r}u, kc), v, acc{r});\n");
    }
    s += "    }\n";
    for r in 0..rows {
        s += &format!("    red[{}u + tid] = acc{r};\n", r * GEMV_WG);
    }
    s += "    workgroupBarrier();\n";
    // Tree over the slices: slice s adds slice s + half.
    let mut half = slices / 2;
    while half > 0 {
        s += &format!("    if (slice < {half}u) {{\n");
        for r in 0..rows {
            s += &format!(
                "        red[{o}u + tid] = red[{o}u + tid] + red[{o}u + tid + {}u];\n",
                half * width,
                o = r * GEMV_WG
            );
        }
        s += "    }\n    workgroupBarrier();\n";
        half /= 2;
    }
    s += &format!("    if (slice == 0u && c < {}u) {{\n", p.cols);
    for r in 0..rows {
        s += &format!("        epilogue(bi, {r}u, c, red[{}u + lane]);\n", r * GEMV_WG);
    }
    s += "    }\n}\n";
    let main = Kernel {
        name: format!("{}_gemv", p.name),
        args: p.args(Split::NONE, &[]),
        body: s,
        workgroup_size: [GEMV_WG as u32, 1, 1],
        workgroups: [gx, 1, gz],
        flops: p.flops(),
    };
    Ok(ProductKernels { kernels: vec![main], temps: vec![] })
}

/// Whether a product is worth tiling: both sides at least a small tile.
/// Thinner products (GEMV: fully connected layers at batch 1) stay on the
/// register-blocked kernel, which splits their reduction.
pub(crate) fn worth_tiling(rows: usize, cols: usize) -> bool {
    rows >= 16 && cols >= 16
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TensorRef;

    fn product(rows: usize, cols: usize, k: usize) -> Product {
        Product {
            name: "matmul".into(),
            rows,
            cols,
            k,
            batch: 1,
            address: format!(
                "fn load_a(bi: u32, r: u32, k: u32) -> f32 {{ return ld_a(r * {k}u + k); }}\nfn load_b(bi: u32, c: u32, k: u32) -> f32 {{ return ld_b(k * {cols}u + c); }}\n"
            ),
            operand_args: vec![KernelArg::new("a", TensorRef::Input(0)), KernelArg::new("b", TensorRef::Input(1))],
            epilogue: "fn epilogue(bi: u32, r: u32, c: u32, v: f32) { st_y(r * 8u + c, v); }\n".into(),
            epilogue_args: vec![KernelArg::new("y", TensorRef::Output(0))],
            a_k_fast: true,
            b_k_fast: false,
            part_temp: 0,
            b_column: false,
            a_words: Some(Words { arg: "a".into(), batch: "0u".into(), s_x: k, s_k: 1 }),
            b_words: Some(Words { arg: "b".into(), batch: "0u".into(), s_x: 1, s_k: cols }),
        }
    }

    #[test]
    fn big_products_take_big_tiles_small_ones_split() {
        let nvidia = crate::Target::named("nvidia").unwrap();
        let big = tiled(&product(4096, 4096, 4096), &nvidia).unwrap();
        assert_eq!(big.kernels.len(), 1);
        assert_eq!(big.kernels[0].workgroups, [32, 32, 1]);
        assert_eq!(big.kernels[0].flops, 2 * 4096u64.pow(3));
        // ResNet-50's last convolutions at batch 1: 512 x 49 over 4608.
        let small = tiled(&product(512, 49, 4608), &nvidia).unwrap();
        // The parts meet in the product kernel: partial sums, then one
        // counter per output tile.
        assert_eq!(small.kernels.len(), 1);
        let [part, count] = &small.temps[..] else { panic!("temps {:?}", small.temps) };
        assert_eq!(part.elems % (512 * 49), 0);
        let [gx, gy, gz] = small.kernels[0].workgroups;
        assert!(gz > 1);
        assert_eq!(count.elems, (gx * gy) as usize);
        assert!(small.kernels[0].args.iter().any(|a| a.atomic));
        assert!(small.kernels[0].body.contains("storageBarrier"));
        // Meeting in a second kernel instead.
        let pass = Target { tuning: crate::Tuning::parse("split-meet=pass").unwrap(), ..nvidia };
        let two = tiled(&product(512, 49, 4608), &pass).unwrap();
        assert_eq!(two.kernels.len(), 2);
        assert_eq!(two.temps.len(), 1);
    }

    #[test]
    fn cooperative_tiles() {
        let k = cooperative(&product(4096, 4096, 4096), &crate::Target::named("nvidia").unwrap()).unwrap();
        assert_eq!(k.kernels[0].workgroup_size, [256, 1, 1]);
        assert!(k.kernels[0].body.starts_with("enable f16;"));
        assert!(k.kernels[0].body.contains("coopMultiplyAdd"));
    }
}
