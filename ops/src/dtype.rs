//! Logical element types (as ONNX numbers them) and their physical GPU form.
//!
//! Every element on the GPU is 32 bits: floats become f32, signed integers
//! i32, unsigned integers and bools u32. Narrowing (int64, uint64, float64)
//! is checked at the program's boundary by the runtime and at compile time
//! for constants; see docs/conformance.md. Types narrower than their word
//! (float16, float8, int4, ...) hold exactly representable values: kernels
//! round every result to the logical type (`wgsl_round_fn`, `Tensor`).

use crate::{Error, Result};
use drift_numerics::{E8M0Round, MiniFloat};

/// A logical element type; the discriminant is ONNX's `TensorProto.DataType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32 = 1,
    U8 = 2,
    I8 = 3,
    U16 = 4,
    I16 = 5,
    I32 = 6,
    I64 = 7,
    Bool = 9,
    F16 = 10,
    F64 = 11,
    U32 = 12,
    U64 = 13,
    BF16 = 16,
    F8E4M3FN = 17,
    F8E4M3FNUZ = 18,
    F8E5M2 = 19,
    F8E5M2FNUZ = 20,
    U4 = 21,
    I4 = 22,
    F4E2M1 = 23,
    F8E8M0 = 24,
    U2 = 25,
    I2 = 26,
}

/// The 32-bit type an element has inside a kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phys {
    F32,
    I32,
    U32,
}

impl DType {
    /// Maps an ONNX data type number; strings, complex and 6-bit floats are
    /// not supported.
    pub fn from_onnx(code: i32) -> Result<DType> {
        use DType::*;
        Ok(match code {
            1 => F32,
            2 => U8,
            3 => I8,
            4 => U16,
            5 => I16,
            6 => I32,
            7 => I64,
            9 => Bool,
            10 => F16,
            11 => F64,
            12 => U32,
            13 => U64,
            16 => BF16,
            17 => F8E4M3FN,
            18 => F8E4M3FNUZ,
            19 => F8E5M2,
            20 => F8E5M2FNUZ,
            21 => U4,
            22 => I4,
            23 => F4E2M1,
            24 => F8E8M0,
            25 => U2,
            26 => I2,
            _ => return Err(Error::msg(format!("unsupported element type {}", onnx_type_name(code)))),
        })
    }

    pub fn onnx(self) -> i32 {
        self as i32
    }

    pub fn name(self) -> &'static str {
        onnx_type_name(self as i32)
    }

    pub fn phys(self) -> Phys {
        use DType::*;
        match self {
            F32 | F16 | BF16 | F64 | F8E4M3FN | F8E4M3FNUZ | F8E5M2 | F8E5M2FNUZ | F4E2M1 | F8E8M0 => Phys::F32,
            I2 | I4 | I8 | I16 | I32 | I64 => Phys::I32,
            U2 | U4 | U8 | U16 | U32 | U64 | Bool => Phys::U32,
        }
    }

    /// The narrow binary float format of a float8/float4 type (not e8m0).
    pub fn minifloat(self) -> Option<MiniFloat> {
        Some(match self {
            DType::F8E4M3FN => MiniFloat::E4M3FN,
            DType::F8E4M3FNUZ => MiniFloat::E4M3FNUZ,
            DType::F8E5M2 => MiniFloat::E5M2,
            DType::F8E5M2FNUZ => MiniFloat::E5M2FNUZ,
            DType::F4E2M1 => MiniFloat::E2M1,
            _ => return None,
        })
    }

    /// Integer range of an integer type (bool is 0..=1).
    pub fn int_range(self) -> Option<(i64, i64)> {
        use DType::*;
        Some(match self {
            I2 => (-2, 1),
            U2 => (0, 3),
            I4 => (-8, 7),
            U4 => (0, 15),
            I8 => (-128, 127),
            U8 => (0, 255),
            I16 => (-32768, 32767),
            U16 => (0, 65535),
            I32 => (i32::MIN as i64, i32::MAX as i64),
            U32 => (0, u32::MAX as i64),
            I64 => (i64::MIN, i64::MAX),
            U64 => (0, i64::MAX),
            Bool => (0, 1),
            _ => return None,
        })
    }

    pub fn is_float(self) -> bool {
        self.phys() == Phys::F32
    }

    pub fn is_signed_int(self) -> bool {
        self.phys() == Phys::I32
    }

    /// Bits per element in ONNX raw data.
    pub fn bits(self) -> u32 {
        use DType::*;
        match self {
            U2 | I2 => 2,
            U4 | I4 | F4E2M1 => 4,
            U8 | I8 | Bool | F8E4M3FN | F8E4M3FNUZ | F8E5M2 | F8E5M2FNUZ | F8E8M0 => 8,
            U16 | I16 | F16 | BF16 => 16,
            F32 | I32 | U32 => 32,
            I64 | U64 | F64 => 64,
        }
    }

    /// Bytes `n` elements take in ONNX raw data (2- and 4-bit elements are
    /// packed, the last byte padded).
    pub fn byte_len(self, n: usize) -> Option<usize> {
        n.checked_mul(self.bits() as usize).map(|b| b.div_ceil(8))
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How a tensor's elements sit in their buffer. Kernels see every element
/// as its [`Phys`] type either way: the generated `ld_`/`st_` accessors
/// convert, so a kernel body never depends on the storage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Storage {
    /// One 32-bit word per element, of the `Phys` type.
    #[default]
    Word,
    /// IEEE binary16, two elements per 32-bit word, element `2k` in the low
    /// half (the order of WGSL's `unpack2x16float`). Float tensors
    /// (`Phys::F32`) only; kernels still compute in f32.
    F16,
}

impl Storage {
    /// Bytes of one element; kernel parameters give offsets in these units.
    pub fn elem_bytes(self) -> u64 {
        match self {
            Storage::Word => 4,
            Storage::F16 => 2,
        }
    }

    /// Bytes `n` elements take in a buffer: whole 32-bit words, at least one.
    pub fn bytes(self, n: usize) -> u64 {
        (n.max(1) as u64 * self.elem_bytes()).next_multiple_of(4)
    }

    pub fn name(self) -> &'static str {
        match self {
            Storage::Word => "word",
            Storage::F16 => "f16",
        }
    }
}

impl Phys {
    /// The WGSL scalar type.
    pub fn wgsl(self) -> &'static str {
        match self {
            Phys::F32 => "f32",
            Phys::I32 => "i32",
            Phys::U32 => "u32",
        }
    }
}

/// ONNX's name for a data type number, for messages.
pub fn onnx_type_name(code: i32) -> &'static str {
    match code {
        1 => "float32",
        2 => "uint8",
        3 => "int8",
        4 => "uint16",
        5 => "int16",
        6 => "int32",
        7 => "int64",
        8 => "string",
        9 => "bool",
        10 => "float16",
        11 => "float64",
        12 => "uint32",
        13 => "uint64",
        14 => "complex64",
        15 => "complex128",
        16 => "bfloat16",
        17 => "float8e4m3fn",
        18 => "float8e4m3fnuz",
        19 => "float8e5m2",
        20 => "float8e5m2fnuz",
        21 => "uint4",
        22 => "int4",
        23 => "float4e2m1",
        24 => "float8e8m0",
        25 => "uint2",
        26 => "int2",
        27 => "float6e2m3",
        28 => "float6e3m2",
        _ => "unknown",
    }
}

/// How a conversion to a narrow float type treats out-of-range values:
/// Cast's `saturate` and `round_mode` attributes (ONNX defaults: saturate,
/// round e8m0 up).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CastMode {
    pub saturate: bool,
    pub e8m0: E8M0Round,
}

impl Default for CastMode {
    fn default() -> CastMode {
        CastMode { saturate: true, e8m0: E8M0Round::Up }
    }
}

/// `x` rounded to float type `dtype` (exactly as the kernels round).
pub fn round_float(dtype: DType, x: f64, mode: CastMode) -> f64 {
    use half::{bf16, f16};
    match dtype {
        DType::F64 => x,
        DType::F32 => x as f32 as f64,
        DType::F16 => f16::from_f64(x).to_f64(),
        DType::BF16 => bf16::from_f64(x).to_f64(),
        DType::F8E8M0 => {
            drift_numerics::decode_e8m0(drift_numerics::encode_e8m0(x as f32, mode.saturate, mode.e8m0)) as f64
        }
        _ => match dtype.minifloat() {
            Some(f) => f.round(x as f32, mode.saturate) as f64,
            None => x,
        },
    }
}

/// The WGSL function rounding an f32 to `dtype`'s precision, as
/// `(name, definitions)`, or `None` when f32 already is that precise.
/// Integer code only, so it is bit-exact on every GPU (no float16
/// capability, no reliance on the rounding mode of float arithmetic).
pub fn wgsl_round_fn(dtype: DType, mode: CastMode) -> Option<(String, String)> {
    let fmt = match dtype {
        DType::F16 => MiniFloat::F16,
        DType::BF16 => {
            let body = "fn round_bf16(x: f32) -> f32 {
    let b = bitcast<u32>(x);
    if ((b & 0x7fffffffu) > 0x7f800000u) { return x; }
    return bitcast<f32>((b + 0x7fffu + ((b >> 16u) & 1u)) & 0xffff0000u);
}
";
            return Some(("round_bf16".into(), body.into()));
        }
        DType::F8E8M0 => return Some(wgsl_e8m0_fn(mode)),
        _ => dtype.minifloat()?,
    };
    let saturate = mode.saturate && fmt != MiniFloat::F16;
    Some(wgsl_minifloat_fn(fmt, saturate))
}

/// Encode-then-decode of a `MiniFloat` in WGSL, mirroring `MiniFloat::encode`
/// and `MiniFloat::decode` line by line.
fn wgsl_minifloat_fn(fmt: MiniFloat, saturate: bool) -> (String, String) {
    use drift_numerics::Specials;
    let tag = format!("{fmt:?}").to_lowercase();
    let name = format!("round_{tag}{}", if saturate { "_sat" } else { "" });
    let (eb, mb, bias) = (fmt.exp_bits(), fmt.man_bits(), fmt.bias());
    let mag_bits = fmt.mag_bits();
    let specials = fmt.specials();
    let nan = |s: &str| format!("({}u | ({s} << {mag_bits}u))", fmt.nan_code(0) & !(1 << mag_bits));
    let nan_expr = match specials {
        Specials::NegZeroNan => format!("{}u", fmt.nan_code(0)),
        Specials::None => format!("((s ^ 1u) << {mag_bits}u)"),
        _ => nan("s"),
    };
    let ovf_expr = format!("{}u", fmt.overflow_code(0, saturate));
    let ovf_expr = if specials == Specials::NegZeroNan && !saturate {
        ovf_expr
    } else {
        format!("({ovf_expr} | (s << {mag_bits}u))")
    };
    let fnuz_zero = if specials == Specials::NegZeroNan { "if (mag == 0u) { return 0u; }" } else { "" };
    let dec_nan = match specials {
        Specials::Ieee => format!("e == {}u && m != 0u", (1u32 << eb) - 1),
        Specials::TopNan => format!("mag == {}u", (1u32 << mag_bits) - 1),
        Specials::NegZeroNan => "s == 1u && mag == 0u".to_string(),
        Specials::None => "false".to_string(),
    };
    let dec_inf = if specials == Specials::Ieee { format!("e == {}u", (1u32 << eb) - 1) } else { "false".into() };
    let sub_scale = crate::wgsl::f32_lit(f32::from_bits(((1 - bias - mb as i32 + 127) as u32) << 23));
    let text = format!(
        "fn enc_{name}(x: f32) -> u32 {{
    let b = bitcast<u32>(x);
    let s = b >> 31u;
    let a = b & 0x7fffffffu;
    if (a > 0x7f800000u) {{ return {nan_expr}; }}
    if (a == 0x7f800000u) {{ return {ovf_expr}; }}
    var ex = i32(a >> 23u) - 127;
    var m = (a & 0x7fffffu) | 0x800000u;
    if ((a >> 23u) == 0u) {{ ex = -126; m = a & 0x7fffffu; }}
    let ee = max(ex, {emin});
    let sh = u32(min({top} + ee - ex, 31));
    var q = m >> sh;
    let r = m & ((1u << sh) - 1u);
    let h = 1u << (sh - 1u);
    if (r > h || (r == h && (q & 1u) == 1u)) {{ q = q + 1u; }}
    let mag = (u32(ee + {bm1}) << {mb}u) + q;
    if (mag > {max}u) {{ return {ovf_expr}; }}
    {fnuz_zero}
    return (s << {mag_bits}u) | mag;
}}
fn dec_{name}(c: u32) -> f32 {{
    let s = (c >> {mag_bits}u) & 1u;
    let mag = c & {mag_mask}u;
    let e = mag >> {mb}u;
    let m = mag & {man_mask}u;
    if ({dec_nan}) {{ return bitcast<f32>(0x7fc00000u); }}
    var v = bitcast<f32>(((e + {ebias}u) << 23u) | (m << {mshift}u));
    if ({dec_inf}) {{ v = bitcast<f32>(0x7f800000u); }}
    if (e == 0u) {{ v = f32(m) * {sub_scale}; }}
    return select(v, -v, s == 1u);
}}
fn {name}(x: f32) -> f32 {{ return dec_{name}(enc_{name}(x)); }}
",
        emin = 1 - bias,
        top = 23 - mb as i32,
        bm1 = bias - 1,
        max = fmt.max_code(),
        mag_mask = (1u32 << mag_bits) - 1,
        man_mask = (1u32 << mb) - 1,
        ebias = (127 - bias) as u32,
        mshift = 23 - mb,
    );
    (name, text)
}

/// float8e8m0 rounding in WGSL, mirroring `minifloat::encode_e8m0`.
fn wgsl_e8m0_fn(mode: CastMode) -> (String, String) {
    let tag = format!("{:?}", mode.e8m0).to_lowercase();
    let name = format!("round_e8m0_{tag}{}", if mode.saturate { "_sat" } else { "" });
    let round_up = match mode.e8m0 {
        E8M0Round::Up => "(b & 0x7fffffu) != 0u",
        E8M0Round::Down => "false",
        E8M0Round::Nearest => "(b & 0x400000u) != 0u && ((b & 0x200000u) != 0u || (b & 0x1fffffu) != 0u || e > 0u)",
    };
    let sat = if mode.saturate { "if (e == 0xfeu) { up = false; }" } else { "" };
    let text = format!(
        "fn {name}(x: f32) -> f32 {{
    let b = bitcast<u32>(x);
    let e = (b >> 23u) & 0xffu;
    var up = {round_up};
    {sat}
    let c = select(e + select(0u, 1u, up), 0xffu, e == 0xffu);
    if (c == 0xffu) {{ return bitcast<f32>(0x7fc00000u); }}
    if (c == 0u) {{ return bitcast<f32>(0x00400000u); }}
    return bitcast<f32>(c << 23u);
}}
"
    );
    (name, text)
}

/// WGSL for the logical bit pattern (zero-extended to u32) of expression
/// `x`, an exactly representable value of `dtype` (up to 32 bits) in its
/// physical form, and the helper functions it calls.
pub fn wgsl_to_bits(dtype: DType, x: &str) -> (String, String) {
    let mask = |bits: u32| format!("(bitcast<u32>({x}) & {:#x}u)", (1u64 << bits) - 1);
    match dtype {
        DType::F32 | DType::I32 => (format!("bitcast<u32>({x})"), String::new()),
        DType::BF16 => (format!("(bitcast<u32>({x}) >> 16u)"), String::new()),
        DType::F8E8M0 => (format!("select((bitcast<u32>({x}) >> 23u) & 0xffu, 0xffu, {x} != {x})"), String::new()),
        DType::F16 => {
            let (name, text) = wgsl_minifloat_fn(MiniFloat::F16, false);
            (format!("enc_{name}({x})"), text)
        }
        d if d.is_float() => {
            let (name, text) = wgsl_minifloat_fn(d.minifloat().expect("narrow float"), false);
            (format!("enc_{name}({x})"), text)
        }
        d if d.phys() == Phys::I32 => (mask(d.bits()), String::new()),
        _ => (x.to_string(), String::new()),
    }
}

/// WGSL decoding logical bit pattern `b` (a u32 expression) as `dtype`,
/// giving its physical form, and the helper functions it calls.
pub fn wgsl_from_bits(dtype: DType, b: &str) -> (String, String) {
    match dtype {
        DType::F32 => (format!("bitcast<f32>({b})"), String::new()),
        DType::I32 => (format!("bitcast<i32>({b})"), String::new()),
        DType::BF16 => (format!("bitcast<f32>(({b}) << 16u)"), String::new()),
        DType::F8E8M0 => (
            format!(
                "select(select(bitcast<f32>(({b}) << 23u), bitcast<f32>(0x00400000u), ({b}) == 0u), bitcast<f32>(0x7fc00000u), ({b}) == 0xffu)"
            ),
            String::new(),
        ),
        DType::F16 => {
            let (name, text) = wgsl_minifloat_fn(MiniFloat::F16, false);
            (format!("dec_{name}({b})"), text)
        }
        d if d.is_float() => {
            let (name, text) = wgsl_minifloat_fn(d.minifloat().expect("narrow float"), false);
            (format!("dec_{name}({b})"), text)
        }
        d if d.phys() == Phys::I32 => {
            let s = 32 - d.bits();
            (format!("((bitcast<i32>({b}) << {s}u) >> {s}u)"), String::new())
        }
        _ => (b.to_string(), String::new()),
    }
}
