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

use half::{bf16, f16};

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
}

impl DType {
    /// The type with ONNX number `code`, or `None` for types the runtime
    /// does not carry (string, complex, 8- and 4-bit floats, ...).
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
            _ => return None,
        })
    }

    /// ONNX's number for this type.
    pub fn onnx(self) -> i32 {
        self as i32
    }

    /// Bytes of one logical element on the host.
    pub fn size_bytes(self) -> usize {
        use DType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 | F16 | BF16 => 2,
            F32 | I32 | U32 => 4,
            I64 | U64 | F64 => 8,
        }
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
        }
    }

    /// How the GPU stores elements of this type.
    pub fn phys(self) -> PhysType {
        use DType::*;
        match self {
            F32 | F16 | BF16 | F64 => PhysType::F32,
            I8 | I16 | I32 | I64 => PhysType::I32,
            U8 | U16 | U32 | U64 | Bool => PhysType::U32,
        }
    }

    /// Appends the 32-bit GPU form of the logical bytes `src` to `out`.
    /// `what` names the tensor in errors, e.g. "input 'idx'".
    pub fn to_physical(self, src: &[u8], what: &str, out: &mut Vec<u8>) -> Result<()> {
        use DType::*;
        if !src.len().is_multiple_of(self.size_bytes()) {
            return Err(Error::DataLength {
                what: what.to_string(),
                expected: src.len() / self.size_bytes() * self.size_bytes(),
                got: src.len(),
            });
        }
        match self {
            // Already 32 bits: a plain copy.
            F32 | I32 | U32 => {
                out.extend_from_slice(src);
                Ok(())
            }
            F16 => encode(src, out, |b| Ok(f16::from_le_bytes(b).to_f32().to_bits())),
            BF16 => encode(src, out, |b| Ok(bf16::from_le_bytes(b).to_f32().to_bits())),
            // `as` rounds to nearest even and saturates to infinity.
            F64 => encode(src, out, |b| Ok((f64::from_le_bytes(b) as f32).to_bits())),
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
        }
    }

    /// Appends the logical bytes of the 32-bit GPU words `words` to `out`.
    pub fn from_physical(self, words: &[u8], out: &mut Vec<u8>) {
        use DType::*;
        match self {
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
        dtype.to_physical(src, "t", &mut phys).expect("in range");
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
        let err = DType::I64.to_physical(&3_000_000_000i64.to_le_bytes(), "input 'idx'", &mut Vec::new()).unwrap_err();
        assert_eq!(err.to_string(), "value 3000000000 of input 'idx' does not fit int32 on the GPU");
        let err = DType::U64.to_physical(&u64::MAX.to_le_bytes(), "input 'u'", &mut Vec::new()).unwrap_err();
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
    fn ragged_bytes_are_an_error() {
        let err = DType::F32.to_physical(&[0; 5], "input 'x'", &mut Vec::new()).unwrap_err();
        assert!(err.to_string().starts_with("input 'x': data has 5 bytes"));
    }
}
