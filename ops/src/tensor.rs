//! Host tensors: constants in the IR and the values CPU references compute.
//!
//! Storage is deliberately coarse: floats of every width are held as f32
//! (f16/bf16/float8/float4 widen exactly) except f64, and integers of every
//! width as i64. Raw data of 2- and 4-bit types is packed (`minifloat`).
//! CPU references read values as f64 or i64 and build results with
//! `Tensor::from_f64` / `from_i64`, which round to the target type.

use crate::{CastMode, DType, Error, Result, Storage, bail, round_float};
use drift_numerics::{self as minifloat, E8M0Round, MiniFloat};
use half::{bf16, f16};

#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: Data,
}

/// Element count of a shape (1 for a scalar). Saturates instead of
/// overflowing, so an absurd shape compares unequal to any real count
/// (shape rules check counts with it before anything is allocated).
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().fold(1usize, |n, &d| n.saturating_mul(d))
}

impl Tensor {
    /// Builds a float or integer tensor from f64 values, rounding to `dtype`
    /// (narrow floats as Cast does by default: saturating).
    pub fn from_f64(dtype: DType, shape: Vec<usize>, v: Vec<f64>) -> Tensor {
        Tensor::from_f64_mode(dtype, shape, v, CastMode::default())
    }

    /// `from_f64` with an explicit rounding mode for narrow float types.
    pub fn from_f64_mode(dtype: DType, shape: Vec<usize>, v: Vec<f64>, mode: CastMode) -> Tensor {
        let data = match dtype {
            DType::F64 => Data::F64(v),
            DType::F32 => Data::F32(v.into_iter().map(|x| x as f32).collect()),
            d if d.is_float() => Data::F32(v.into_iter().map(|x| round_float(d, x, mode) as f32).collect()),
            _ => Data::I64(v.into_iter().map(|x| wrap_int(dtype, float_to_int(x))).collect()),
        };
        Tensor { dtype, shape, data }
    }

    /// Builds a tensor from i64 values, wrapping integers to `dtype`'s width.
    pub fn from_i64(dtype: DType, shape: Vec<usize>, v: Vec<i64>) -> Tensor {
        if dtype.is_float() {
            return Tensor::from_f64(dtype, shape, v.into_iter().map(|x| x as f64).collect());
        }
        let data = Data::I64(v.into_iter().map(|x| wrap_int(dtype, x)).collect());
        Tensor { dtype, shape, data }
    }

    pub fn from_f32(shape: Vec<usize>, v: Vec<f32>) -> Tensor {
        Tensor { dtype: DType::F32, shape, data: Data::F32(v) }
    }

    /// A 1-D int64 tensor, the usual form of shape operands.
    pub fn i64_vec(v: Vec<i64>) -> Tensor {
        Tensor { dtype: DType::I64, shape: vec![v.len()], data: Data::I64(v) }
    }

    pub fn scalar_f64(dtype: DType, x: f64) -> Tensor {
        Tensor::from_f64(dtype, vec![], vec![x])
    }

    pub fn len(&self) -> usize {
        match &self.data {
            Data::F32(v) => v.len(),
            Data::F64(v) => v.len(),
            Data::I64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Every element as f64 (integers convert exactly up to 2^53).
    pub fn to_f64(&self) -> Vec<f64> {
        match &self.data {
            Data::F32(v) => v.iter().map(|&x| x as f64).collect(),
            Data::F64(v) => v.clone(),
            Data::I64(v) => v.iter().map(|&x| x as f64).collect(),
        }
    }

    /// Every element as i64 (floats truncate toward zero).
    pub fn to_i64(&self) -> Vec<i64> {
        match &self.data {
            Data::F32(v) => v.iter().map(|&x| float_to_int(x as f64)).collect(),
            Data::F64(v) => v.iter().map(|&x| float_to_int(x)).collect(),
            Data::I64(v) => v.clone(),
        }
    }

    /// Elements as the GPU stores them: one little-endian 32-bit word each.
    /// Integers that do not fit 32 bits are an error naming the value.
    pub fn to_phys_words(&self) -> Result<Vec<u32>> {
        match &self.data {
            Data::F32(v) => Ok(v.iter().map(|x| x.to_bits()).collect()),
            Data::F64(v) => v.iter().map(|&x| float_to_word(self.dtype, x)).collect(),
            Data::I64(v) => v.iter().map(|&x| int_to_word(self.dtype, x)).collect(),
        }
    }

    /// Whether every value keeps its magnitude as an IEEE half: a float
    /// tensor whose finite values all round to finite f16 (|x| < 65520).
    /// NaN and infinities stay what they are; precision is not checked,
    /// that is what choosing f16 storage trades.
    pub fn fits_f16(&self) -> bool {
        match &self.data {
            Data::F32(v) => v.iter().all(|&x| !x.is_finite() || f16::from_f32(x).is_finite()),
            Data::F64(v) => v.iter().all(|&x| !x.is_finite() || f16::from_f64(x).is_finite()),
            Data::I64(_) => false,
        }
    }

    /// Elements laid out as `storage` puts them in a buffer, little endian,
    /// padded with zeros to `storage.bytes(len)`. `Word` is
    /// [`Tensor::to_phys_words`]; `F16` rounds each value to nearest even
    /// with the `half` crate (which takes float64 through f32: the double
    /// rounding differs from a direct one only within 2^-24 of a tie).
    pub fn to_storage_bytes(&self, storage: Storage) -> Result<Vec<u8>> {
        let mut out: Vec<u8> = match (storage, &self.data) {
            (Storage::Word, _) => self.to_phys_words()?.iter().flat_map(|w| w.to_le_bytes()).collect(),
            (Storage::F16, Data::F32(v)) => v.iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect(),
            (Storage::F16, Data::F64(v)) => v.iter().flat_map(|&x| f16::from_f64(x).to_le_bytes()).collect(),
            (Storage::F16, Data::I64(_)) => bail!("{} values cannot be stored as f16", self.dtype),
        };
        out.resize(storage.bytes(self.len()) as usize, 0);
        Ok(out)
    }

    /// Reads a tensor back from physical 32-bit words.
    pub fn from_phys_words(dtype: DType, shape: Vec<usize>, words: &[u32]) -> Tensor {
        match dtype.phys() {
            crate::Phys::F32 => {
                Tensor::from_f64(dtype, shape, words.iter().map(|&w| f32::from_bits(w) as f64).collect())
            }
            crate::Phys::I32 => Tensor::from_i64(dtype, shape, words.iter().map(|&w| w as i32 as i64).collect()),
            crate::Phys::U32 => Tensor::from_i64(dtype, shape, words.iter().map(|&w| w as i64).collect()),
        }
    }

    /// Decodes little-endian raw bytes as ONNX lays them out (2- and 4-bit
    /// elements packed, first element in the low bits).
    pub fn from_raw(dtype: DType, shape: Vec<usize>, raw: &[u8]) -> Result<Tensor> {
        let n = numel(&shape);
        let need = dtype.byte_len(n).ok_or_else(|| Error::msg("tensor size overflows"))?;
        if raw.len() != need {
            bail!("raw data has {} bytes, {} {} elements of shape {:?} need {}", raw.len(), n, dtype, shape, need);
        }
        let bits = dtype.bits();
        if bits < 8 {
            let codes = (0..n).map(|i| minifloat::unpack_sub_byte(raw, bits, i));
            let data = match dtype {
                DType::F4E2M1 => Data::F32(codes.map(|c| MiniFloat::E2M1.decode(c)).collect()),
                DType::I4 | DType::I2 => Data::I64(codes.map(|c| minifloat::sign_extend(c, bits) as i64).collect()),
                _ => Data::I64(codes.map(i64::from).collect()),
            };
            return Ok(Tensor { dtype, shape, data });
        }
        let chunks = raw.chunks_exact(bits as usize / 8);
        let data = match dtype {
            DType::F32 => Data::F32(chunks.map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()),
            DType::F64 => Data::F64(chunks.map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect()),
            DType::F16 => Data::F32(chunks.map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()),
            DType::BF16 => Data::F32(chunks.map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect()),
            DType::F8E8M0 => Data::F32(chunks.map(|c| minifloat::decode_e8m0(c[0].into())).collect()),
            d => match d.minifloat() {
                Some(f) => Data::F32(chunks.map(|c| f.decode(c[0].into())).collect()),
                None => Data::I64(chunks.map(|c| raw_int(dtype, c)).collect()),
            },
        };
        Ok(Tensor { dtype, shape, data })
    }

    /// Encodes as ONNX raw little-endian bytes of `self.dtype`. Values are
    /// expected to be representable (as `from_f64` leaves them), so narrow
    /// floats encode without saturating: an infinity stays one.
    pub fn to_raw(&self) -> Vec<u8> {
        let n = self.len();
        let mut out = Vec::with_capacity(self.dtype.byte_len(n).unwrap_or(0));
        let floats = || self.to_f64().into_iter();
        match self.dtype {
            DType::F32 => floats().for_each(|x| out.extend((x as f32).to_le_bytes())),
            DType::F64 => floats().for_each(|x| out.extend(x.to_le_bytes())),
            DType::F16 => floats().for_each(|x| out.extend(f16::from_f64(x).to_le_bytes())),
            DType::BF16 => floats().for_each(|x| out.extend(bf16::from_f64(x).to_le_bytes())),
            DType::F8E8M0 => {
                // Exact powers of two: rounding down keeps 2^-127 (an f32 subnormal).
                floats().for_each(|x| out.push(minifloat::encode_e8m0(x as f32, true, E8M0Round::Down) as u8))
            }
            DType::F4E2M1 => {
                minifloat::pack_sub_byte(floats().map(|x| MiniFloat::E2M1.encode(x as f32, true)), 4, &mut out)
            }
            d if d.bits() < 8 => {
                minifloat::pack_sub_byte(self.to_i64().into_iter().map(|x| x as u32), d.bits(), &mut out)
            }
            d => match d.minifloat() {
                Some(f) => floats().for_each(|x| out.push(f.encode(x as f32, false) as u8)),
                None => {
                    let sz = d.bits() as usize / 8;
                    self.to_i64().iter().for_each(|&x| out.extend(&x.to_le_bytes()[..sz]))
                }
            },
        }
        out
    }

    /// The same values under a new shape with the same element count.
    pub fn reshaped(&self, shape: Vec<usize>) -> Result<Tensor> {
        if numel(&shape) != self.len() {
            bail!("cannot reshape {} elements to {:?}", self.len(), shape);
        }
        Ok(Tensor { dtype: self.dtype, shape, data: self.data.clone() })
    }

    /// Converts values to another element type with ONNX Cast semantics.
    pub fn cast(&self, to: DType) -> Tensor {
        self.cast_mode(to, CastMode::default())
    }

    /// `cast` with Cast's `saturate`/`round_mode` for narrow float targets.
    pub fn cast_mode(&self, to: DType, mode: CastMode) -> Tensor {
        if to.is_float() || self.dtype.is_float() && to == DType::Bool {
            let v = self.to_f64();
            if to == DType::Bool {
                return Tensor::from_i64(to, self.shape.clone(), v.iter().map(|&x| (x != 0.0) as i64).collect());
            }
            return Tensor::from_f64_mode(to, self.shape.clone(), v, mode);
        }
        if to == DType::Bool {
            return Tensor::from_i64(to, self.shape.clone(), self.to_i64().iter().map(|&x| (x != 0) as i64).collect());
        }
        Tensor::from_i64(to, self.shape.clone(), self.to_i64())
    }
}

fn float_to_int(x: f64) -> i64 {
    if x.is_nan() { 0 } else { x as i64 }
}

/// Wraps an integer to the width of `dtype`, as a C cast would.
fn wrap_int(dtype: DType, x: i64) -> i64 {
    match dtype {
        DType::I8 => x as i8 as i64,
        DType::U8 => x as u8 as i64,
        DType::I16 => x as i16 as i64,
        DType::U16 => x as u16 as i64,
        DType::I32 => x as i32 as i64,
        DType::U32 => x as u32 as i64,
        DType::I4 => minifloat::sign_extend(x as u32 & 0xf, 4) as i64,
        DType::U4 => x & 0xf,
        DType::I2 => minifloat::sign_extend(x as u32 & 3, 2) as i64,
        DType::U2 => x & 3,
        DType::Bool => (x != 0) as i64,
        _ => x,
    }
}

fn raw_int(dtype: DType, c: &[u8]) -> i64 {
    match dtype {
        DType::U8 | DType::Bool => c[0] as i64,
        DType::I8 => c[0] as i8 as i64,
        DType::U16 => u16::from_le_bytes([c[0], c[1]]) as i64,
        DType::I16 => i16::from_le_bytes([c[0], c[1]]) as i64,
        DType::U32 => u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64,
        DType::I32 => i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64,
        _ => i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]),
    }
}

/// Floats are f32 on the GPU: precision may drop, but a finite value beyond
/// f32's range would silently become infinity, so it is an error.
fn float_to_word(dtype: DType, x: f64) -> Result<u32> {
    let narrowed = x as f32;
    if narrowed.is_infinite() && x.is_finite() {
        return Err(Error::unsupported(format!("{dtype} value {x:e} is beyond the range of the GPU's 32-bit floats")));
    }
    Ok(narrowed.to_bits())
}

fn int_to_word(dtype: DType, x: i64) -> Result<u32> {
    match dtype.phys() {
        crate::Phys::I32 => i32::try_from(x)
            .map(|v| v as u32)
            .map_err(|_| Error::unsupported(format!("{dtype} value {x} does not fit the GPU's 32-bit integers"))),
        _ => u32::try_from(x)
            .map_err(|_| Error::unsupported(format!("{dtype} value {x} does not fit the GPU's 32-bit integers"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_storage_packs_halves_low_first_and_pads_to_words() {
        let t = Tensor::from_f32(vec![3], vec![1.0, -2.0, 65504.0]);
        assert!(t.fits_f16());
        // 1.0 = 0x3c00, -2.0 = 0xc000, 65504 = 0x7bff, then a zero half.
        assert_eq!(t.to_storage_bytes(Storage::F16).unwrap(), [0x00, 0x3c, 0x00, 0xc0, 0xff, 0x7b, 0, 0]);
        assert_eq!(t.to_storage_bytes(Storage::Word).unwrap().len(), 12);
        // Beyond f16's range (65520 rounds to infinity): kept as words.
        assert!(!Tensor::from_f32(vec![1], vec![65520.0]).fits_f16());
        assert!(Tensor::from_f32(vec![2], vec![f32::INFINITY, f32::NAN]).fits_f16());
        // float64 goes through `half`'s conversion (0.1 = 0x2e66 either way).
        let t = Tensor::from_f64(DType::F64, vec![1], vec![0.1]);
        assert_eq!(t.to_storage_bytes(Storage::F16).unwrap(), [0x66, 0x2e, 0, 0]);
        assert!(Tensor::i64_vec(vec![1]).to_storage_bytes(Storage::F16).is_err());
    }

    #[test]
    fn sub_byte_raw_data_packs_like_onnx() {
        // onnx.numpy_helper.from_array(np.array([1, -2, 7, -8, 3], ml_dtypes.int4)).raw_data
        let t = Tensor::from_raw(DType::I4, vec![5], &[225, 135, 3]).unwrap();
        assert_eq!(t.to_i64(), [1, -2, 7, -8, 3]);
        assert_eq!(t.to_raw(), [225, 135, 3]);
        // ... and of np.array([0.5, -6, 1.5], ml_dtypes.float4_e2m1fn).
        let t = Tensor::from_raw(DType::F4E2M1, vec![3], &[241, 3]).unwrap();
        assert_eq!(t.to_f64(), [0.5, -6.0, 1.5]);
        assert_eq!(t.to_raw(), [241, 3]);
        let err = Tensor::from_raw(DType::U2, vec![5], &[0]).unwrap_err();
        assert!(err.to_string().contains("need 2"), "{err}");
    }

    #[test]
    fn float8_values_widen_exactly_and_encode_back() {
        let raw = [0x38u8, 0x7e, 0xfe, 0x01, 0x7f];
        let t = Tensor::from_raw(DType::F8E4M3FN, vec![5], &raw).unwrap();
        let v = t.to_f64();
        assert_eq!(&v[..4], [1.0, 448.0, -448.0, 0.001953125]);
        assert!(v[4].is_nan());
        assert_eq!(t.to_raw(), raw);
        assert_eq!(t.to_phys_words().unwrap()[0], 1.0f32.to_bits());
    }
}
