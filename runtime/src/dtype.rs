//! Logical element types and their 32-bit GPU form.
//!
//! A tensor's *logical* type is what the user passes and gets back (ONNX's
//! `TensorProto.DataType`). On the GPU every element is 32 bits: floats are
//! `f32`, signed integers `i32`, unsigned integers and bools `u32`
//! ([`PhysType`]). This module converts between the two, little endian on
//! both sides.
//!
//! Conversions up to the GPU are exact except two documented cases:
//! float64 is rounded to the nearest f32 (values beyond f32's range become
//! infinities), and int64/uint64 values outside the 32-bit range are an
//! error naming the tensor and the value. Conversions back are exact for
//! float32, float64, int32, int64, uint32, uint64; float16 and bfloat16 round
//! to nearest even; narrower integers keep the low bits (the kernels keep
//! values in range, so this only shows a kernel bug); bool is `!= 0`.
//!
//! float8 and float4 types widen exactly to f32 and, since kernels round
//! their results to the logical type, encode back exactly. 2- and 4-bit
//! types are packed on the host (ONNX's layout: first element in the low
//! bits) and one element per word on the GPU. The narrow-float codecs are
//! crate `drift-numerics`, shared with drift-ops.

use half::{bf16, f16};

use drift_numerics as minifloat;
use minifloat::{E8M0Round, MiniFloat};

use crate::bundle::PhysType;
use crate::error::{Error, Result};

/// A logical element type; the discriminants are ONNX's `TensorProto.DataType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
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

impl DType {
    /// The type with ONNX number `code`, or `None` for types the runtime
    /// does not carry (string, complex, 6-bit floats).
    pub fn from_onnx(code: i32) -> Option<DType> {
        use DType::*;
        Some(match code {
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
            _ => return None,
        })
    }

    /// ONNX's number for this type.
    pub fn onnx(self) -> i32 {
        self as i32
    }

    /// Bits of one logical element on the host.
    pub fn bits(self) -> usize {
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

    /// Bytes of one logical element on the host, rounded up: 1 for the
    /// packed 2- and 4-bit types (use `byte_len` for sizes).
    pub fn size_bytes(self) -> usize {
        self.bits().div_ceil(8)
    }

    /// Host bytes of `n` elements (2- and 4-bit elements packed, the last
    /// byte padded); saturates on absurd counts.
    pub fn byte_len(self, n: usize) -> usize {
        n.saturating_mul(self.bits()).div_ceil(8)
    }

    /// ONNX's lower-case name: "float32", "int64", ...
    pub fn name(self) -> &'static str {
        use DType::*;
        match self {
            F32 => "float32",
            U8 => "uint8",
            I8 => "int8",
            U16 => "uint16",
            I16 => "int16",
            I32 => "int32",
            I64 => "int64",
            Bool => "bool",
            F16 => "float16",
            F64 => "float64",
            U32 => "uint32",
            U64 => "uint64",
            BF16 => "bfloat16",
            F8E4M3FN => "float8e4m3fn",
            F8E4M3FNUZ => "float8e4m3fnuz",
            F8E5M2 => "float8e5m2",
            F8E5M2FNUZ => "float8e5m2fnuz",
            U4 => "uint4",
            I4 => "int4",
            F4E2M1 => "float4e2m1",
            F8E8M0 => "float8e8m0",
            U2 => "uint2",
            I2 => "int2",
        }
    }

    /// How the GPU stores elements of this type.
    pub fn phys(self) -> PhysType {
        use DType::*;
        match self {
            F32 | F16 | BF16 | F64 | F8E4M3FN | F8E4M3FNUZ | F8E5M2 | F8E5M2FNUZ | F4E2M1 | F8E8M0 => PhysType::F32,
            I2 | I4 | I8 | I16 | I32 | I64 => PhysType::I32,
            U2 | U4 | U8 | U16 | U32 | U64 | Bool => PhysType::U32,
        }
    }

    /// The narrow binary float format of a float8/float4 type (not e8m0).
    fn minifloat(self) -> Option<MiniFloat> {
        Some(match self {
            DType::F8E4M3FN => MiniFloat::E4M3FN,
            DType::F8E4M3FNUZ => MiniFloat::E4M3FNUZ,
            DType::F8E5M2 => MiniFloat::E5M2,
            DType::F8E5M2FNUZ => MiniFloat::E5M2FNUZ,
            DType::F4E2M1 => MiniFloat::E2M1,
            _ => return None,
        })
    }

    /// Element `i` of logical bytes `data` as the 32-bit word the GPU
    /// holds, for types narrower than a byte or encoded as 8-bit floats.
    fn narrow_word(self, data: &[u8], i: usize) -> u32 {
        let code =
            if self.bits() < 8 { minifloat::unpack_sub_byte(data, self.bits() as u32, i) } else { u32::from(data[i]) };
        match self {
            DType::I4 | DType::I2 => minifloat::sign_extend(code, self.bits() as u32) as u32,
            DType::U4 | DType::U2 => code,
            DType::F8E8M0 => minifloat::decode_e8m0(code).to_bits(),
            d => d.minifloat().map_or(code, |f| f.decode(code).to_bits()),
        }
    }

    /// Whether elements go through `narrow_word` (float8, float4, 2/4-bit).
    fn is_narrow(self) -> bool {
        self.bits() < 8 || self == DType::F8E8M0 || self.minifloat().is_some()
    }

    /// Every one of the `n` elements of logical bytes `data` widened to f64
    /// (int64 and uint64 beyond 2^53 round; bool is 0/1).
    pub fn to_f64_values(self, data: &[u8], n: usize) -> Vec<f64> {
        use DType::*;
        if self.is_narrow() {
            return (0..n.min(data.len() * 8 / self.bits()))
                .map(|i| {
                    let w = self.narrow_word(data, i);
                    match self.phys() {
                        PhysType::F32 => f64::from(f32::from_bits(w)),
                        PhysType::I32 => f64::from(w as i32),
                        PhysType::U32 => f64::from(w),
                    }
                })
                .collect();
        }
        let size = self.size_bytes();
        data.chunks_exact(size)
            .take(n)
            .map(|c| {
                let mut b = [0u8; 8];
                b[..size].copy_from_slice(c);
                let [b0, b1, b2, b3, ..] = b;
                match self {
                    F32 => f64::from(f32::from_le_bytes([b0, b1, b2, b3])),
                    F64 => f64::from_le_bytes(b),
                    F16 => f64::from(f16::from_le_bytes([b0, b1])),
                    BF16 => f64::from(bf16::from_le_bytes([b0, b1])),
                    I8 => f64::from(b0 as i8),
                    I16 => f64::from(i16::from_le_bytes([b0, b1])),
                    I32 => f64::from(i32::from_le_bytes([b0, b1, b2, b3])),
                    I64 => i64::from_le_bytes(b) as f64,
                    U16 => f64::from(u16::from_le_bytes([b0, b1])),
                    U32 => f64::from(u32::from_le_bytes([b0, b1, b2, b3])),
                    U64 => u64::from_le_bytes(b) as f64,
                    _ => f64::from(b0),
                }
            })
            .collect()
    }

    /// Appends the 32-bit GPU form of the `n` elements in logical bytes
    /// `src` to `out`. `what` names the tensor in errors, e.g. "input 'idx'".
    pub fn to_physical(self, src: &[u8], n: usize, what: &str, out: &mut Vec<u8>) -> Result<()> {
        use DType::*;
        if src.len() != self.byte_len(n) {
            return Err(Error::DataLength { what: what.to_string(), expected: self.byte_len(n), got: src.len() });
        }
        if self.is_narrow() {
            out.reserve(n * 4);
            (0..n).for_each(|i| out.extend_from_slice(&self.narrow_word(src, i).to_le_bytes()));
            return Ok(());
        }
        match self {
            // Already 32 bits: a plain copy.
            F32 | I32 | U32 => {
                out.extend_from_slice(src);
                Ok(())
            }
            F16 => encode(src, out, |b| Ok(f16::from_le_bytes(b).to_f32().to_bits())),
            BF16 => encode(src, out, |b| Ok(bf16::from_le_bytes(b).to_f32().to_bits())),
            // `as` rounds to nearest even; a finite value past f32's range
            // would become infinity, which is an error rather than a guess.
            F64 => encode(src, out, |b| {
                let v = f64::from_le_bytes(b);
                let narrowed = v as f32;
                if narrowed.is_infinite() && v.is_finite() {
                    return Err(does_not_fit(format!("{v:e}"), what, "float32"));
                }
                Ok(narrowed.to_bits())
            }),
            I8 => encode(src, out, |b| Ok(i32::from(i8::from_le_bytes(b)) as u32)),
            I16 => encode(src, out, |b| Ok(i32::from(i16::from_le_bytes(b)) as u32)),
            U8 => encode(src, out, |b: [u8; 1]| Ok(u32::from(b[0]))),
            U16 => encode(src, out, |b| Ok(u32::from(u16::from_le_bytes(b)))),
            Bool => encode(src, out, |b: [u8; 1]| Ok(u32::from(b[0] != 0))),
            I64 => encode(src, out, |b| {
                let v = i64::from_le_bytes(b);
                i32::try_from(v).map(|x| x as u32).map_err(|_| does_not_fit(v, what, "int32"))
            }),
            U64 => encode(src, out, |b| {
                let v = u64::from_le_bytes(b);
                u32::try_from(v).map_err(|_| does_not_fit(v, what, "uint32"))
            }),
            F8E4M3FN | F8E4M3FNUZ | F8E5M2 | F8E5M2FNUZ | U4 | I4 | F4E2M1 | F8E8M0 | U2 | I2 => {
                unreachable!("narrow types are converted above")
            }
        }
    }

    /// Appends the logical bytes of the 32-bit GPU words `words` to `out`.
    /// Narrow floats encode exactly (kernels rounded them already), without
    /// saturating so that an infinity stays one; 2- and 4-bit elements keep
    /// their low bits and are packed.
    pub fn from_physical(self, words: &[u8], out: &mut Vec<u8>) {
        use DType::*;
        let word = |w: &[u8]| u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
        let codes = words.chunks_exact(4).map(word);
        match self {
            F8E8M0 => {
                // Exact powers of two: rounding down keeps 2^-127 (an f32 subnormal).
                codes.for_each(|w| out.push(minifloat::encode_e8m0(f32::from_bits(w), true, E8M0Round::Down) as u8))
            }
            F4E2M1 => minifloat::pack_sub_byte(codes.map(|w| MiniFloat::E2M1.encode(f32::from_bits(w), true)), 4, out),
            U4 | I4 | U2 | I2 => minifloat::pack_sub_byte(codes, self.bits() as u32, out),
            F8E4M3FN | F8E4M3FNUZ | F8E5M2 | F8E5M2FNUZ => {
                let f = self.minifloat().expect("float8");
                codes.for_each(|w| out.push(f.encode(f32::from_bits(w), false) as u8))
            }
            F32 | I32 | U32 => out.extend_from_slice(words),
            F16 => decode(words, out, |w| f16::from_f32(f32::from_bits(w)).to_le_bytes()),
            BF16 => decode(words, out, |w| bf16::from_f32(f32::from_bits(w)).to_le_bytes()),
            F64 => decode(words, out, |w| f64::from(f32::from_bits(w)).to_le_bytes()),
            // Narrowing keeps the low bits; see the module docs.
            I8 => decode(words, out, |w| (w as i8).to_le_bytes()),
            I16 => decode(words, out, |w| (w as i16).to_le_bytes()),
            I64 => decode(words, out, |w| i64::from(w as i32).to_le_bytes()),
            U8 => decode(words, out, |w| (w as u8).to_le_bytes()),
            U16 => decode(words, out, |w| (w as u16).to_le_bytes()),
            U64 => decode(words, out, |w| u64::from(w).to_le_bytes()),
            Bool => decode(words, out, |w| [u8::from(w != 0)]),
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Converts each `N`-byte element of `src` with `f` and appends its word.
fn encode<const N: usize>(src: &[u8], out: &mut Vec<u8>, mut f: impl FnMut([u8; N]) -> Result<u32>) -> Result<()> {
    out.reserve(src.len() / N * 4);
    for chunk in src.chunks_exact(N) {
        let mut bytes = [0u8; N];
        bytes.copy_from_slice(chunk);
        out.extend_from_slice(&f(bytes)?.to_le_bytes());
    }
    Ok(())
}

/// Converts each 32-bit word of `words` with `f` and appends its bytes.
fn decode<const N: usize>(words: &[u8], out: &mut Vec<u8>, f: impl Fn(u32) -> [u8; N]) {
    out.reserve(words.len() / 4 * N);
    for w in words.chunks_exact(4) {
        out.extend_from_slice(&f(u32::from_le_bytes([w[0], w[1], w[2], w[3]])));
    }
}

fn does_not_fit(value: impl ToString, what: &str, target: &'static str) -> Error {
    Error::DoesNotFit { value: value.to_string(), what: what.to_string(), target }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Round-trips `src` through the GPU form and returns (words, back).
    fn round_trip(dtype: DType, src: &[u8]) -> (Vec<u32>, Vec<u8>) {
        let mut phys = Vec::new();
        dtype.to_physical(src, src.len() * 8 / dtype.bits(), "t", &mut phys).expect("in range");
        let words = phys.chunks_exact(4).map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]])).collect();
        let mut back = Vec::new();
        dtype.from_physical(&phys, &mut back);
        (words, back)
    }

    #[test]
    fn onnx_numbers_round_trip() {
        for code in 0..20 {
            if let Some(t) = DType::from_onnx(code) {
                assert_eq!(t.onnx(), code);
            }
        }
        assert_eq!(DType::from_onnx(8), None, "string is not carried");
    }

    #[test]
    fn halves_widen_exactly_and_round_back() {
        let src: Vec<u8> = [1.5f32, -0.0, 65504.0, 1e-7].iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect();
        let (words, back) = round_trip(DType::F16, &src);
        assert_eq!(f32::from_bits(words[0]), 1.5);
        assert_eq!(f32::from_bits(words[2]), 65504.0);
        assert_eq!(back, src);
        let (words, back) = round_trip(DType::BF16, &bf16::from_f32(-3.0).to_le_bytes());
        assert_eq!(f32::from_bits(words[0]), -3.0);
        assert_eq!(back, bf16::from_f32(-3.0).to_le_bytes());
    }

    #[test]
    fn integers_sign_extend_and_range_check() {
        let (words, back) = round_trip(DType::I8, &[0xff, 5]);
        assert_eq!(words, [u32::MAX, 5]);
        assert_eq!(back, [0xff, 5]);
        let src: Vec<u8> = [-7i64, i32::MAX as i64].iter().flat_map(|v| v.to_le_bytes()).collect();
        let (words, back) = round_trip(DType::I64, &src);
        assert_eq!(words, [(-7i32) as u32, i32::MAX as u32]);
        assert_eq!(back, src);
        let err =
            DType::I64.to_physical(&3_000_000_000i64.to_le_bytes(), 1, "input 'idx'", &mut Vec::new()).unwrap_err();
        assert_eq!(err.to_string(), "value 3000000000 of input 'idx' does not fit int32 on the GPU");
        let err = DType::U64.to_physical(&u64::MAX.to_le_bytes(), 1, "input 'u'", &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("does not fit uint32"));
    }

    #[test]
    fn bool_and_f64() {
        let (words, back) = round_trip(DType::Bool, &[0, 1, 2]);
        assert_eq!(words, [0, 1, 1]);
        assert_eq!(back, [0, 1, 1]);
        let (words, back) = round_trip(DType::F64, &0.1f64.to_le_bytes());
        assert_eq!(f32::from_bits(words[0]), 0.1f32);
        assert_eq!(back, f64::from(0.1f32).to_le_bytes());
    }

    #[test]
    fn packed_and_float8_types_unpack_to_words_and_pack_back() {
        // onnx.numpy_helper.from_array(np.array([1, -2, 7, -8, 3], ml_dtypes.int4)).raw_data
        let src = [225u8, 135, 3];
        let mut phys = Vec::new();
        DType::I4.to_physical(&src, 5, "t", &mut phys).expect("5 elements in 3 bytes");
        let words: Vec<i32> = phys.chunks_exact(4).map(|w| i32::from_le_bytes([w[0], w[1], w[2], w[3]])).collect();
        assert_eq!(words, [1, -2, 7, -8, 3]);
        let mut back = Vec::new();
        DType::I4.from_physical(&phys, &mut back);
        assert_eq!(back, src);
        assert_eq!(DType::I4.to_f64_values(&src, 5), [1.0, -2.0, 7.0, -8.0, 3.0]);
        let err = DType::U2.to_physical(&src, 5, "input 'q'", &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("need 2"), "{err}");
        // float8e5m2 0x7b is 57344, 0x7c infinity, 0x85 -1.25 * 2^-14 (ml_dtypes);
        // e8m0 0x00 is 2^-127.
        let (words, back) = round_trip(DType::F8E5M2, &[0x7b, 0x7c, 0x85]);
        assert_eq!(words[..2], [57344f32.to_bits(), f32::INFINITY.to_bits()]);
        assert_eq!(f32::from_bits(words[2]), -2f32.powi(-14) * 1.25);
        assert_eq!(back, [0x7b, 0x7c, 0x85]);
        let (words, back) = round_trip(DType::F8E8M0, &[0x00, 0x7f]);
        assert_eq!(words, [0x0040_0000, 1f32.to_bits()]);
        assert_eq!(back, [0x00, 0x7f]);
    }

    #[test]
    fn ragged_bytes_are_an_error() {
        let err = DType::F32.to_physical(&[0; 5], 1, "input 'x'", &mut Vec::new()).unwrap_err();
        assert!(err.to_string().starts_with("input 'x': data has 5 bytes"));
    }
}
