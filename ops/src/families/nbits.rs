//! Weight-only quantized matrix multiplication.
//!
//! - `MatMulNBits` (com.microsoft): onnxruntime's contrib op that published
//!   int4 ONNX LLMs use. `Y = A · dequant(B)ᵀ (+ bias)`, B uint8
//!   `[N, blocks, block_size·bits/8]` (codes low bits first along K), scales
//!   `[N·blocks]`, optional zero points (uint8 packed like B, or floats;
//!   default `2^(bits-1)`). Here: shape rule and CPU reference. On the GPU
//!   it runs as `QMatMul`: the compiler repacks its constant inputs
//!   (`compiler/src/quantize.rs`), so B stays packed in GPU memory.
//! - `QMatMul` (ai.drift, internal): the same computation over words. Row n of
//!   the weight is `row_words` u32 words, element k at bits `bits·(k mod
//!   32/bits)` of word `k / (32/bits)` — byte for byte MatMulNBits' layout.
//!   Scales are f32 or f16 pairs packed in u32 words; zero points absent,
//!   packed codes, or f32. `bits = 16` is plain f16 weights (no scales). The
//!   compiler produces it from MatMulNBits and from `--quantize`.
//!
//! Kernels dequantize in the inner loop: a GEMV for few rows of A (decode:
//! one workgroup column per output, threads along K, a tree reduction) and a
//! 64×64-tiled GEMM for many (prefill: each weight word decoded once into
//! workgroup memory per tile).

use crate::wgsl::{f32_lit, grid_1d};
use crate::{
    Attrs, DType, Error, Input, Kernel, KernelArg, LowerCtx, Lowering, Op, Result, Tensor, TensorRef, TypeInfo,
};
use crate::{arg, bail, ty};
use half::f16;

/// Builds MatMulNBits (com.microsoft) or QMatMul (ai.drift).
pub fn build(op_type: &str, a: &Attrs) -> Result<Box<dyn Op>> {
    let dim = |name: &str| -> Result<usize> {
        match a.int_opt(name)? {
            Some(v) if v > 0 => Ok(v as usize),
            Some(v) => bail!("attribute '{name}' must be positive, got {v}"),
            None => bail!("attribute '{name}' is required"),
        }
    };
    let (k, n, bits) = (dim("K")?, dim("N")?, a.int("bits", 4)?);
    match op_type {
        "MatMulNBits" => {
            if !matches!(bits, 4 | 8) {
                return Err(Error::unsupported(format!("MatMulNBits with bits={bits} (4 and 8 are supported)")));
            }
            let block = dim("block_size")?;
            if block < 16 || !block.is_power_of_two() {
                bail!("attribute 'block_size' must be a power of two of at least 16, got {block}");
            }
            Ok(Box::new(MatMulNBits { k, n, bits: bits as u32, block }))
        }
        "QMatMul" => {
            let zero_points = match a.int("zero_points", 0)? {
                0 => ZeroPoints::Default,
                1 => ZeroPoints::Packed,
                2 => ZeroPoints::Float,
                z => bail!("attribute 'zero_points' must be 0, 1 or 2, got {z}"),
            };
            let fmt = WeightFormat {
                k,
                n,
                bits: bits as u32,
                group: dim("group")?,
                f16_scales: a.int("f16_scales", 0)? != 0,
                zero_points,
            };
            fmt.check()?;
            Ok(Box::new(QMatMul { fmt }))
        }
        _ => Err(Error::unsupported(op_type.to_string())),
    }
}

// ---------------------------------------------------------------- formats

/// How QMatMul's zero points are given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZeroPoints {
    /// None: symmetric codes around `2^(bits-1)`.
    Default,
    /// Codes of `bits` bits, `zp_row_words` u32 words per output row.
    Packed,
    /// One f32 per block.
    Float,
}

/// The packed weight layout of a QMatMul.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WeightFormat {
    pub k: usize,
    pub n: usize,
    /// 4 or 8 (integer codes with scales), or 16 (f16 values, no scales).
    pub bits: u32,
    /// Elements of K sharing one scale (and zero point).
    pub group: usize,
    pub f16_scales: bool,
    pub zero_points: ZeroPoints,
}

impl WeightFormat {
    fn check(&self) -> Result<()> {
        if !matches!(self.bits, 4 | 8 | 16) {
            bail!("QMatMul bits must be 4, 8 or 16, got {}", self.bits);
        }
        if self.bits < 16 && (self.group < 8 || !self.group.is_multiple_of(self.per_word())) {
            bail!("QMatMul group {} must be a multiple of {} of at least 8", self.group, self.per_word());
        }
        Ok(())
    }

    /// Elements per 32-bit word.
    pub fn per_word(&self) -> usize {
        32 / self.bits as usize
    }

    /// Scale blocks per output row (1 for f16 weights, which have none).
    pub fn blocks(&self) -> usize {
        if self.bits == 16 { 1 } else { self.k.div_ceil(self.group) }
    }

    /// u32 words per output row of the weight (blocks are padded whole).
    pub fn row_words(&self) -> usize {
        if self.bits == 16 { self.k.div_ceil(2) } else { self.blocks() * self.group / self.per_word() }
    }

    /// u32 words per output row of packed zero points.
    pub fn zp_row_words(&self) -> usize {
        (self.blocks() * self.bits as usize).div_ceil(32)
    }

    /// The code that means zero when no zero points are given.
    fn default_zero(&self) -> f32 {
        (1u32 << (self.bits.min(8) - 1)) as f32
    }

    /// Weight bytes one product reads: codes, scales and zero points.
    pub fn bytes(&self) -> usize {
        let scales = if self.bits == 16 {
            0
        } else if self.f16_scales {
            (self.n * self.blocks()).div_ceil(2) * 4
        } else {
            self.n * self.blocks() * 4
        };
        let zp = match self.zero_points {
            ZeroPoints::Default => 0,
            ZeroPoints::Packed => self.n * self.zp_row_words() * 4,
            ZeroPoints::Float => self.n * self.blocks() * 4,
        };
        self.n * self.row_words() * 4 + scales + zp
    }

    /// The QMatMul attributes of this format.
    pub fn attrs(&self) -> Attrs {
        use crate::Attr::Int;
        let zp = match self.zero_points {
            ZeroPoints::Default => 0,
            ZeroPoints::Packed => 1,
            ZeroPoints::Float => 2,
        };
        let pairs = [
            ("K", self.k as i64),
            ("N", self.n as i64),
            ("bits", self.bits as i64),
            ("group", self.group as i64),
            ("f16_scales", self.f16_scales as i64),
            ("zero_points", zp),
        ];
        Attrs(pairs.into_iter().map(|(k, v)| (k.to_string(), Int(v))).collect())
    }

    /// Dequantized weight `[N][K]` (row n = output feature n) from the
    /// packed words, scale words and zero point data.
    pub fn dequantize(&self, w: &[u32], scales: &[f64], zp: Option<&[f64]>) -> Result<Vec<f32>> {
        let (rw, kb) = (self.row_words(), self.blocks());
        if w.len() != self.n * rw {
            bail!("QMatMul weight has {} words, {}×{} expected", w.len(), self.n, rw);
        }
        let mut out = vec![0f32; self.n * self.k];
        for n in 0..self.n {
            for k in 0..self.k {
                let word = w[n * rw + k / self.per_word()];
                let shift = self.bits as usize * (k % self.per_word());
                out[n * self.k + k] = if self.bits == 16 {
                    f16::from_bits((word >> shift) as u16).to_f32()
                } else {
                    let code = ((word >> shift) & ((1 << self.bits) - 1)) as f32;
                    let b = k / self.group;
                    let s = self.scale(scales, n * kb + b)?;
                    let z = self.zero(zp, n, b)?;
                    (code - z) * s
                };
            }
        }
        Ok(out)
    }

    fn scale(&self, scales: &[f64], i: usize) -> Result<f32> {
        let v = if self.f16_scales {
            let word = *scales.get(i / 2).ok_or_else(|| Error::msg("QMatMul scales are too short"))? as u32;
            f16::from_bits((word >> (16 * (i % 2))) as u16).to_f32()
        } else {
            *scales.get(i).ok_or_else(|| Error::msg("QMatMul scales are too short"))? as f32
        };
        Ok(v)
    }

    fn zero(&self, zp: Option<&[f64]>, n: usize, b: usize) -> Result<f32> {
        let short = || Error::msg("QMatMul zero points are too short");
        match (self.zero_points, zp) {
            (ZeroPoints::Default, _) => Ok(self.default_zero()),
            (ZeroPoints::Packed, Some(z)) => {
                let per = 32 / self.bits as usize;
                let word = *z.get(n * self.zp_row_words() + b / per).ok_or_else(short)? as u32;
                Ok(((word >> (self.bits as usize * (b % per))) & ((1 << self.bits) - 1)) as f32)
            }
            (ZeroPoints::Float, Some(z)) => Ok(*z.get(n * self.blocks() + b).ok_or_else(short)? as f32),
            _ => bail!("QMatMul zero points are missing"),
        }
    }
}

/// Packs integer codes (`0..2^bits`, row-major `[N][K]`) into QMatMul words.
pub fn pack_codes(codes: &[u32], fmt: &WeightFormat) -> Vec<u32> {
    let (rw, per, bits) = (fmt.row_words(), fmt.per_word(), fmt.bits as usize);
    let mut words = vec![0u32; fmt.n * rw];
    for n in 0..fmt.n {
        for k in 0..fmt.k {
            words[n * rw + k / per] |= codes[n * fmt.k + k] << (bits * (k % per));
        }
    }
    words
}

/// Packs f32 values as f16 pairs, low half first.
pub fn pack_f16(values: &[f32]) -> Vec<u32> {
    values
        .chunks(2)
        .map(|c| {
            let lo = f16::from_f32(c[0]).to_bits() as u32;
            let hi = c.get(1).map_or(0, |&x| f16::from_f32(x).to_bits() as u32);
            lo | (hi << 16)
        })
        .collect()
}

/// drift's weight-only quantization of a weight given as `[N][K]` rows:
/// per output row and group of `group` inputs, `scale = f16(absmax / qmax)`
/// and `code = clamp(round_half_even(w / scale), -qmax-1, qmax) + 2^(bits-1)`.
/// Returns the QMatMul format, weight words and f16 scale words.
/// `fixtures/llama.py` computes the same scheme in numpy for the references.
pub fn quantize_rows(rows: &[f32], n: usize, k: usize, bits: u32, group: usize) -> (WeightFormat, Vec<u32>, Vec<u32>) {
    let fmt = WeightFormat { k, n, bits, group, f16_scales: true, zero_points: ZeroPoints::Default };
    let qmax = ((1i32 << (bits - 1)) - 1) as f32;
    let blocks = fmt.blocks();
    let mut codes = vec![0u32; n * k];
    let mut scales = Vec::with_capacity(n * blocks);
    for r in 0..n {
        for b in 0..blocks {
            let span = r * k + b * group..r * k + ((b + 1) * group).min(k);
            let amax = rows[span.clone()].iter().fold(0f32, |m, x| m.max(x.abs()));
            let scale = f16::from_f32(amax / qmax).to_f32();
            for (i, &x) in span.clone().zip(&rows[span]) {
                let q = if scale == 0.0 { 0.0 } else { (x / scale).round_ties_even().clamp(-qmax - 1.0, qmax) };
                codes[i] = (q as i32 + (1 << (bits - 1))) as u32;
            }
            scales.push(scale);
        }
    }
    let words = pack_codes(&codes, &fmt);
    (fmt, words, pack_f16(&scales))
}

// ---------------------------------------------------------------- MatMulNBits

/// onnxruntime's MatMulNBits (see the module docs).
#[derive(Debug)]
pub struct MatMulNBits {
    pub k: usize,
    pub n: usize,
    pub bits: u32,
    pub block: usize,
}

impl MatMulNBits {
    pub fn blocks(&self) -> usize {
        self.k.div_ceil(self.block)
    }

    /// The QMatMul format its repacked inputs have; zero points packed like
    /// B (`Packed`), floats (`Float`) or absent.
    pub fn format(&self, zero_points: ZeroPoints) -> WeightFormat {
        WeightFormat { k: self.k, n: self.n, bits: self.bits, group: self.block, f16_scales: false, zero_points }
    }

    fn check_inputs(&self, inputs: &[Option<Input>]) -> Result<TypeInfo> {
        let a = ty(inputs, 0)?;
        let (b, s) = (ty(inputs, 1)?, ty(inputs, 2)?);
        if a.shape.last() != Some(&self.k) {
            bail!("A has shape {:?}, its last dim must be K = {}", a.shape, self.k);
        }
        let blob = self.block * self.bits as usize / 8;
        if b.dtype != DType::U8 || b.shape != [self.n, self.blocks(), blob] {
            bail!("B must be uint8 [{}, {}, {blob}], got {} {:?}", self.n, self.blocks(), b.dtype, b.shape);
        }
        if s.numel() != self.n * self.blocks() {
            bail!("scales must hold N × blocks = {} values, got shape {:?}", self.n * self.blocks(), s.shape);
        }
        if inputs.get(4).copied().flatten().is_some() {
            return Err(Error::unsupported("MatMulNBits with g_idx (act-order)".to_string()));
        }
        let mut shape = a.shape.clone();
        *shape.last_mut().expect("rank ≥ 1") = self.n;
        Ok(TypeInfo::new(a.dtype, shape))
    }
}

/// Zero point of block `b` of row `n` from MatMulNBits' zero_points input.
fn nbits_zero(t: Option<&Tensor>, bits: u32, blocks: usize, n: usize, b: usize) -> f64 {
    let Some(t) = t else { return (1u32 << (bits - 1)) as f64 };
    if t.dtype == DType::U8 {
        let per_byte = 8 / bits as usize;
        let row_bytes = (blocks * bits as usize).div_ceil(8);
        let byte = t.to_i64()[n * row_bytes + b / per_byte] as u32;
        ((byte >> (bits as usize * (b % per_byte))) & ((1 << bits) - 1)) as f64
    } else {
        t.to_f64()[n * blocks + b]
    }
}

impl Op for MatMulNBits {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        Ok(vec![self.check_inputs(inputs)?])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let (a, b, s) = (arg(inputs, 0)?, arg(inputs, 1)?, arg(inputs, 2)?);
        let get = |i: usize| inputs.get(i).copied().flatten();
        let (codes, scales, kb) = (b.to_i64(), s.to_f64(), self.blocks());
        let blob = self.block * self.bits as usize / 8;
        let per_byte = 8 / self.bits as usize;
        let mut w = vec![0f64; self.n * self.k];
        for n in 0..self.n {
            for k in 0..self.k {
                let (blk, within) = (k / self.block, k % self.block);
                let byte = codes[(n * kb + blk) * blob + within / per_byte] as u32;
                let code = (byte >> (self.bits as usize * (within % per_byte))) & ((1 << self.bits) - 1);
                let z = nbits_zero(get(3), self.bits, kb, n, blk);
                w[n * self.k + k] = (code as f64 - z) * scales[n * kb + blk];
            }
        }
        let bias = get(5).map(|t| t.to_f64());
        Ok(vec![matmul_nt(a, &w, self.k, self.n, bias.as_deref())])
    }

    fn lower(&self, _cx: &LowerCtx) -> Result<Lowering> {
        Err(Error::unsupported(
            "MatMulNBits runs as QMatMul, which needs B, scales and zero_points as initializers".to_string(),
        ))
    }
}

/// `A · Wᵀ (+ bias)` for W given as `[N][K]` rows, A `[.., K]`.
fn matmul_nt(a: &Tensor, w: &[f64], k: usize, n: usize, bias: Option<&[f64]>) -> Tensor {
    let av = a.to_f64();
    let m = av.len() / k.max(1);
    let mut y = vec![0f64; m * n];
    for r in 0..m {
        for c in 0..n {
            let row = &av[r * k..(r + 1) * k];
            let dot: f64 = row.iter().zip(&w[c * k..(c + 1) * k]).map(|(x, y)| x * y).sum();
            y[r * n + c] = dot + bias.map_or(0.0, |b| b[c]);
        }
    }
    let mut shape = a.shape.clone();
    *shape.last_mut().expect("rank ≥ 1") = n;
    Tensor::from_f64(a.dtype, shape, y)
}

// ---------------------------------------------------------------- QMatMul

/// Inputs of QMatMul.
const A: usize = 0;
const W: usize = 1;
const SCALES: usize = 2;
const ZP: usize = 3;
const BIAS: usize = 4;

/// drift's packed-weight matmul (see the module docs).
#[derive(Debug)]
pub struct QMatMul {
    pub fmt: WeightFormat,
}

/// Rows of A up to which QMatMul runs as a GEMV.
pub const GEMV_MAX_ROWS: usize = 8;

impl Op for QMatMul {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let a = ty(inputs, A)?;
        if a.shape.last() != Some(&self.fmt.k) || !a.dtype.is_float() {
            bail!("A is {} {:?}, a float tensor with last dim K = {} expected", a.dtype, a.shape, self.fmt.k);
        }
        let w = ty(inputs, W)?;
        if w.numel() != self.fmt.n * self.fmt.row_words() {
            bail!("the packed weight has {} words, {} expected", w.numel(), self.fmt.n * self.fmt.row_words());
        }
        let mut shape = a.shape.clone();
        *shape.last_mut().expect("rank ≥ 1") = self.fmt.n;
        Ok(vec![TypeInfo::new(a.dtype, shape)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let a = arg(inputs, A)?;
        let get = |i: usize| inputs.get(i).copied().flatten();
        let words: Vec<u32> = arg(inputs, W)?.to_i64().into_iter().map(|x| x as u32).collect();
        let scales = get(SCALES).map(|t| if self.fmt.f16_scales { to_f64_words(t) } else { t.to_f64() });
        let zp = get(ZP).map(|t| if self.fmt.zero_points == ZeroPoints::Packed { to_f64_words(t) } else { t.to_f64() });
        let w = self.fmt.dequantize(&words, scales.as_deref().unwrap_or_default(), zp.as_deref())?;
        let w: Vec<f64> = w.into_iter().map(f64::from).collect();
        let bias = get(BIAS).map(|t| t.to_f64());
        Ok(vec![matmul_nt(a, &w, self.fmt.k, self.fmt.n, bias.as_deref())])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let a = cx.input(A)?;
        let m = a.numel() / self.fmt.k;
        if m == 0 {
            return Ok(Lowering::Kernels { temps: vec![], kernels: vec![] });
        }
        let spec = QSpec { fmt: self.fmt, bias: cx.has_input(BIAS), custom_a: false, prologue: false };
        let kernel = if m <= GEMV_MAX_ROWS {
            gemv_kernel(&spec, m)
        } else {
            let mut k = gemm_kernel(&spec, &format!("{m}u"));
            k.workgroups = [self.fmt.n.div_ceil(GEMM_COLS) as u32, m.div_ceil(GEMM_ROWS) as u32, 1];
            k.flops = 2 * (m * self.fmt.n * self.fmt.k) as u64;
            k
        };
        Ok(Lowering::one(kernel))
    }
}

/// Words (u32 values held as integers) as f64s, bit patterns preserved.
fn to_f64_words(t: &Tensor) -> Vec<f64> {
    t.to_i64().into_iter().map(|x| x as u32 as f64).collect()
}

/// What a QMatMul kernel computes.
#[derive(Clone, Copy, Debug)]
pub struct QSpec {
    pub fmt: WeightFormat,
    pub bias: bool,
    /// The caller defines `fn a_at(m: u32, k: u32) -> f32` (row m, column
    /// k of A, both in range) and binds A itself; otherwise A is argument
    /// `a`, dense `[M, K]`.
    pub custom_a: bool,
    /// The caller also defines `fn row_prologue(lane: u32)`, which every
    /// thread of a GEMV workgroup calls first (it may use barriers): it
    /// computes per-row values that `a_at` reads (a fused RMSNorm's means).
    pub prologue: bool,
}

impl QSpec {
    /// Kernel arguments: a, w, scales, zero points, bias (as present), y.
    pub fn args(&self) -> Vec<KernelArg> {
        let mut args = vec![];
        if !self.custom_a {
            args.push(KernelArg::new("a", TensorRef::Input(A)));
        }
        args.push(KernelArg::new("w", TensorRef::Input(W)));
        if self.fmt.bits != 16 {
            args.push(KernelArg::new("s", TensorRef::Input(SCALES)));
        }
        if self.fmt.zero_points != ZeroPoints::Default {
            args.push(KernelArg::new("z", TensorRef::Input(ZP)));
        }
        if self.bias {
            args.push(KernelArg::new("bias", TensorRef::Input(BIAS)));
        }
        args.push(KernelArg::new("y", TensorRef::Output(0)));
        args
    }

    /// WGSL constants and the dequantization helpers shared by both kernels:
    /// `codes(w) -> array<f32, E>` (code or f16 value of each element of a
    /// word), `dq(n, k) -> vec2<f32>` (scale and zero point of the block of
    /// element k of row n), `bias_of(n)`.
    fn helpers(&self) -> String {
        let f = &self.fmt;
        let e = f.per_word();
        let mut s = format!(
            "const K: u32 = {}u;\nconst N: u32 = {}u;\nconst RW: u32 = {}u;\nconst KB: u32 = {}u;\nconst G: u32 = {}u;\nconst E: u32 = {e}u;\n",
            f.k,
            f.n,
            f.row_words(),
            f.blocks(),
            f.group
        );
        let vals: Vec<String> = if f.bits == 16 {
            vec!["h.x".into(), "h.y".into()]
        } else {
            let mask = (1u32 << f.bits) - 1;
            (0..e).map(|i| format!("f32((w >> {}u) & {mask}u)", i as u32 * f.bits)).collect()
        };
        let unpack = if f.bits == 16 { "    let h = unpack2x16float(w);\n" } else { "" };
        s += &format!(
            "fn codes(w: u32) -> array<f32, {e}> {{\n{unpack}    return array<f32, {e}>({});\n}}\n",
            vals.join(", ")
        );
        let scale = match (f.bits, f.f16_scales) {
            (16, _) => "1.0".to_string(),
            (_, true) => "unpack2x16float(ld_s(i >> 1u))[i & 1u]".to_string(),
            (_, false) => "ld_s(i)".to_string(),
        };
        let zero = match f.zero_points {
            _ if f.bits == 16 => "0.0".to_string(),
            ZeroPoints::Default => f32_lit(f.default_zero()),
            ZeroPoints::Packed => {
                let per = 32 / f.bits;
                format!(
                    "f32((ld_z(n * {}u + b / {per}u) >> ({}u * (b % {per}u))) & {}u)",
                    f.zp_row_words(),
                    f.bits,
                    (1u32 << f.bits) - 1
                )
            }
            ZeroPoints::Float => "ld_z(i)".to_string(),
        };
        s += &format!(
            "fn dq(n: u32, k: u32) -> vec2<f32> {{\n    let b = k / G;\n    let i = n * KB + b;\n    return vec2<f32>({scale}, {zero});\n}}\n"
        );
        let bias = if self.bias { "ld_bias(n)" } else { "0.0" };
        s += &format!("fn bias_of(n: u32) -> f32 {{ return {bias}; }}\n");
        if !self.custom_a {
            s += "fn a_at(m: u32, k: u32) -> f32 { return ld_a(m * K + k); }\n";
        }
        s
    }
}

/// Short name of a weight format for kernel listings.
fn fmt_name(f: &WeightFormat) -> String {
    if f.bits == 16 { "f16".into() } else { format!("int{}", f.bits) }
}

/// Workgroups of a GEMV whose workgroups each run a prologue (`QSpec::
/// prologue`): they loop over output groups, so the prologue's work (a
/// row of A read per workgroup) stays a small multiple of one read of A
/// however wide the product.
const PROLOGUE_GROUPS: usize = 264;

/// ` + {x}u`, or nothing for 0.
fn plus(x: usize) -> String {
    if x == 0 { String::new() } else { format!(" + {x}u") }
}

/// Loads a GEMV thread issues before using any of them. A GEMV is bound by
/// memory latency as much as bandwidth: one load in flight per thread
/// leaves a GPU's memory system mostly idle, four keep four times the bytes
/// in flight.
const GEMV_LOADS: usize = 4;

/// One workgroup of 256 threads computes `256 / T` outputs for all `m` rows
/// of A: T threads walk one weight row (coalesced) a unit at a time — four
/// words read as one 16-byte load where rows start on 16 bytes, else one
/// word — `GEMV_LOADS` units, T apart, loaded before use; then a tree
/// reduction in workgroup memory sums their partials. With a prologue, at
/// most `PROLOGUE_GROUPS` workgroups loop over the output groups.
pub fn gemv_kernel(spec: &QSpec, m: usize) -> Kernel {
    let f = &spec.fmt;
    let e = f.per_word();
    // Words per unit: quads where every row starts on 16 bytes.
    let quads = f.row_words().is_multiple_of(4);
    let words = if quads { 4 } else { 1 };
    // Units that hold elements below K (the rest is block padding).
    let ku = f.k.div_ceil(e * words);
    let t = ku.next_power_of_two().clamp(1, 64);
    let per_group = 256 / t;
    let groups = f.n.div_ceil(per_group);
    let workgroups = grid_1d(if spec.prologue { groups.min(PROLOGUE_GROUPS) } else { groups }, 1);
    let stride = workgroups[0] as usize * workgroups[1] as usize;
    // A unit's last elements may lie past K: they read A as 0.
    let load_a = if f.k.is_multiple_of(e * words) {
        "fn la(m: u32, k: u32) -> f32 { return a_at(m, k); }\n"
    } else {
        "fn la(m: u32, k: u32) -> f32 { if (k < K) { return a_at(m, k); } return 0.0; }\n"
    };
    let mut acc = String::new();
    for r in 0..m {
        let terms: Vec<String> = (0..e).map(|i| format!("(q[{i}] - d.y) * la({r}u, k + {i}u)")).collect();
        acc += &format!("            acc[{r}] += d.x * ({});\n", terms.join(" + "));
    }
    // The words of the unit held in `w`, loaded from unit index `j + off`.
    let use_unit = |w: &str, off: usize| -> String {
        let word = |value: String, first: String| {
            format!(
                "            {{\n            let k = {first} * E;\n            let q = codes({value});\n            let d = dq(n, k);\n{acc}            }}\n"
            )
        };
        if quads {
            let lanes = ["x", "y", "z", "w"];
            (0..4).map(|c| word(format!("{w}.{}", lanes[c]), format!("((j{}) * 4u{})", plus(off), plus(c)))).collect()
        } else {
            word(w.to_string(), format!("(j{})", plus(off)))
        }
    };
    let load = |off: usize| {
        if quads { format!("ld4_w(n * RQ + j{})", plus(off)) } else { format!("ld_w(n * RW + j{})", plus(off)) }
    };
    // Rows long enough go `GEMV_LOADS` units at a time, the rest (and
    // shorter rows) one at a time.
    let mut batched = String::new();
    if ku >= GEMV_LOADS * t {
        let loads: String = (0..GEMV_LOADS).map(|u| format!("            let w{u} = {};\n", load(u * t))).collect();
        let uses: String = (0..GEMV_LOADS).map(|u| use_unit(&format!("w{u}"), u * t)).collect();
        batched = format!(
            "        for (; j + {}u < KU; j += {}u) {{\n{loads}{uses}        }}\n",
            (GEMV_LOADS - 1) * t,
            GEMV_LOADS * t
        );
    }
    let body = format!(
        "{helpers}{load_a}const T: u32 = {t}u;
const KU: u32 = {ku}u;
const RQ: u32 = {rq}u;
var<workgroup> red: array<f32, {red}>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {{
    let first = wid.x + wid.y * {gx}u;
    if (first >= {groups}u) {{ return; }}
{prologue}    for (var group = first; group < {groups}u; group += {stride}u) {{
    let t = lid.x % T;
    let n = group * {per_group}u + lid.x / T;
    var acc: array<f32, {m}>;
    if (n < N) {{
        var j = t;
{batched}        for (; j < KU; j += T) {{
            let w0 = {single_load};
{single}        }}
    }}
    for (var r = 0u; r < {m}u; r++) {{ red[r * 256u + lid.x] = acc[r]; }}
    workgroupBarrier();
    for (var s = T / 2u; s > 0u; s >>= 1u) {{
        if (t < s) {{
            for (var r = 0u; r < {m}u; r++) {{ red[r * 256u + lid.x] += red[r * 256u + lid.x + s]; }}
        }}
        workgroupBarrier();
    }}
    if (t == 0u && n < N) {{
        for (var r = 0u; r < {m}u; r++) {{ st_y(r * N + n, red[r * 256u + lid.x] + bias_of(n)); }}
    }}
    workgroupBarrier();
    }}
}}
",
        helpers = spec.helpers(),
        rq = f.row_words() / 4,
        single_load = load(0),
        single = use_unit("w0", 0),
        red = 256 * m,
        gx = workgroups[0],
        prologue = if spec.prologue { "    row_prologue(lid.x);\n" } else { "" },
    );
    let mut args = spec.args();
    if quads {
        args.iter_mut().filter(|a| a.name == "w").for_each(|a| a.wide = true);
    }
    Kernel {
        name: format!("qgemv_{}", fmt_name(f)),
        args,
        body,
        workgroup_size: [256, 1, 1],
        workgroups,
        flops: 2 * (m * f.n * f.k) as u64,
    }
}

/// Rows and columns of the output tile of one GEMM workgroup.
pub const GEMM_ROWS: usize = 64;
pub const GEMM_COLS: usize = 128;

/// A 64×128 output tile per workgroup of 256 threads, each holding 4 rows
/// × 8 columns of accumulators, stepping K by 16: A's tile (transposed) and
/// the tile of weights, decoded and scaled once, go through workgroup
/// memory as vec4s, so each step of the inner loop reads three vec4s for 32
/// multiply-adds. A thread's columns are two runs of four, 64 apart, so a
/// warp reads consecutive vec4s of the weight tile. `m` is the WGSL
/// expression of A's row count (a literal, or a run-time dim); the caller
/// sets the workgroups: `[ceil(N / GEMM_COLS), ceil(M / GEMM_ROWS), 1]`.
pub fn gemm_kernel(spec: &QSpec, m: &str) -> Kernel {
    let mut fma = String::new();
    for (i, c) in ["x", "y", "z", "w"].iter().enumerate() {
        for h in 0..2 {
            fma += &format!("            acc[{}] += a.{c} * b{h};\n", i * 2 + h);
        }
    }
    let body = format!(
        "{helpers}const TK: u32 = 16u;
// A's tile as [k][row / 4] and the weights' as [k][col / 4].
var<workgroup> As: array<vec4<f32>, {a_tile}>;
var<workgroup> Bs: array<vec4<f32>, {b_tile}>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {{
    let M = {m};
    let m0 = wid.y * {rows}u;
    let n0 = wid.x * {cols}u;
    let tx = li % 16u;
    let ty = li / 16u;
    // acc[2i + h]: row ty * 4 + i, columns h * 64 + tx * 4 .. + 3.
    var acc: array<vec4<f32>, 8>;
    for (var k0 = 0u; k0 < K; k0 += TK) {{
        // Consecutive threads along k: A's rows are read contiguously.
        for (var r = li; r < {rows}u * TK; r += 256u) {{
            let row = r / TK;
            let kk = r % TK;
            var v = 0.0;
            if (m0 + row < M && k0 + kk < K) {{ v = a_at(m0 + row, k0 + kk); }}
            As[kk * {a_row}u + row / 4u][row % 4u] = v;
        }}
        // Consecutive threads along a weight row's words, each decoded once.
        for (var r = li; r < {cols}u * (TK / E); r += 256u) {{
            let col = r / (TK / E);
            let wj = r % (TK / E);
            let n = n0 + col;
            let k = k0 + wj * E;
            var q: array<f32, E>;
            var d = vec2<f32>(0.0, 0.0);
            if (n < N && k < K) {{
                q = codes(ld_w(n * RW + k / E));
                d = dq(n, k);
            }}
            for (var e = 0u; e < E; e++) {{ Bs[(wj * E + e) * {b_row}u + col / 4u][col % 4u] = (q[e] - d.y) * d.x; }}
        }}
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {{
            let a = As[kk * {a_row}u + ty];
            let b0 = Bs[kk * {b_row}u + tx];
            let b1 = Bs[kk * {b_row}u + 16u + tx];
{fma}        }}
        workgroupBarrier();
    }}
    for (var i = 0u; i < 4u; i++) {{
        let row = m0 + ty * 4u + i;
        for (var h = 0u; h < 2u; h++) {{
            for (var c = 0u; c < 4u; c++) {{
                let n = n0 + h * 64u + tx * 4u + c;
                if (row < M && n < N) {{ st_y(row * N + n, acc[i * 2u + h][c] + bias_of(n)); }}
            }}
        }}
    }}
}}
",
        helpers = spec.helpers(),
        rows = GEMM_ROWS,
        cols = GEMM_COLS,
        a_row = GEMM_ROWS / 4,
        b_row = GEMM_COLS / 4,
        a_tile = 16 * GEMM_ROWS / 4,
        b_tile = 16 * GEMM_COLS / 4,
    );
    Kernel {
        name: format!("qgemm_{}", fmt_name(&spec.fmt)),
        args: spec.args(),
        body,
        workgroup_size: [256, 1, 1],
        workgroups: [1, 1, 1],
        flops: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Attr;
    use crate::testing::{attrs, pattern};

    fn weights(n: usize, k: usize) -> Vec<f32> {
        pattern(vec![n, k], 3).to_f64().into_iter().map(|x| x as f32 * 0.37).collect()
    }

    #[test]
    fn quantize_rows_round_trips_within_half_a_step() {
        for bits in [4, 8] {
            let (n, k, group) = (3, 64, 32);
            let w = weights(n, k);
            let (fmt, words, scales) = quantize_rows(&w, n, k, bits, group);
            let s: Vec<f64> = scales.iter().map(|&x| x as f64).collect();
            let dq = fmt.dequantize(&words, &s, None).unwrap();
            for r in 0..n {
                for b in 0..2 {
                    let span = r * k + b * group..r * k + (b + 1) * group;
                    let amax = w[span.clone()].iter().fold(0f32, |m, x| m.max(x.abs()));
                    let step = amax / ((1 << (bits - 1)) - 1) as f32;
                    for i in span {
                        assert!((dq[i] - w[i]).abs() <= step * 0.5 + 1e-3 * step, "bits {bits} at {i}");
                    }
                }
            }
        }
    }

    #[test]
    fn qmatmul_reference_matches_matmulnbits_on_the_same_codes() {
        // MatMulNBits (4-bit, packed zero points) and the QMatMul it repacks
        // into must agree exactly: the words are B's bytes read four at a time.
        let (n, k, block): (usize, usize, usize) = (5, 48, 16);
        let kb = k.div_ceil(block);
        let codes: Vec<i64> = (0..n * kb * block / 2).map(|i| ((i * 37 + 11) % 256) as i64).collect();
        let zp_bytes = (kb * 4).div_ceil(8);
        let zps: Vec<i64> = (0..n * zp_bytes).map(|i| ((i * 13 + 5) % 256) as i64).collect();
        let scales: Vec<f64> = (0..n * kb).map(|i| 0.01 + i as f64 * 0.003).collect();
        let b = Tensor::from_i64(DType::U8, vec![n, kb, block / 2], codes.clone());
        let s = Tensor::from_f64(DType::F32, vec![n * kb], scales.clone());
        let z = Tensor::from_i64(DType::U8, vec![n * zp_bytes], zps.clone());
        let a = pattern(vec![2, k], 1);
        let attrs = attrs([
            ("K", Attr::Int(k as i64)),
            ("N", Attr::Int(n as i64)),
            ("bits", Attr::Int(4)),
            ("block_size", Attr::Int(block as i64)),
        ]);
        let want = build("MatMulNBits", &attrs).unwrap().eval(&[Some(&a), Some(&b), Some(&s), Some(&z)]).unwrap();

        let nb = MatMulNBits { k, n, bits: 4, block };
        let fmt = nb.format(ZeroPoints::Packed);
        let bytes: Vec<u8> = codes.iter().map(|&x| x as u8).collect();
        let words: Vec<i64> = bytes.chunks(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64).collect();
        let mut zw = vec![0i64; n * fmt.zp_row_words()];
        for r in 0..n {
            for (j, &byte) in zps[r * zp_bytes..(r + 1) * zp_bytes].iter().enumerate() {
                zw[r * fmt.zp_row_words() + j / 4] |= byte << (8 * (j % 4));
            }
        }
        let w = Tensor::from_i64(DType::U32, vec![n, fmt.row_words()], words);
        let zt = Tensor::from_i64(DType::U32, vec![zw.len()], zw);
        let q = QMatMul { fmt };
        let got = q.eval(&[Some(&a), Some(&w), Some(&s), Some(&zt)]).unwrap();
        assert_eq!(got[0].shape, want[0].shape);
        for (x, y) in got[0].to_f64().iter().zip(want[0].to_f64()) {
            assert!((x - y).abs() <= 1e-5 * y.abs().max(1.0), "{x} vs {y}");
        }
    }

    #[test]
    fn kernels_cover_every_format() {
        for (bits, zero_points, f16_scales) in [
            (4, ZeroPoints::Default, true),
            (8, ZeroPoints::Packed, false),
            (4, ZeroPoints::Float, false),
            (16, ZeroPoints::Default, false),
        ] {
            let fmt = WeightFormat { k: 70, n: 9, bits, group: 32, f16_scales, zero_points };
            let spec = QSpec { fmt, bias: true, custom_a: false, prologue: false };
            assert!(gemv_kernel(&spec, 3).body.contains("fn main"));
            assert!(gemm_kernel(&spec, "M_EXPR").body.contains("let M = M_EXPR;"));
        }
    }
}
