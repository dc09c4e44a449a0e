//! Host tensors: what callers pass to and get back from a run.
//!
//! A [`HostTensor`] holds its elements in their *logical* type as little-endian
//! bytes, exactly as ONNX's raw tensor data lays them out, so the CLI and the
//! tests can move data between files and the runtime without conversions.

use half::{bf16, f16};

use crate::dtype::DType;
use crate::error::{Error, Result};

/// A dense tensor in host memory.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// `len() * dtype.size_bytes()` little-endian bytes, row major.
    pub data: Vec<u8>,
}

impl HostTensor {
    /// A tensor from raw logical bytes; fails when their length does not
    /// match `dtype` and `shape`.
    pub fn new(dtype: DType, shape: Vec<usize>, data: Vec<u8>) -> Result<HostTensor> {
        let tensor = HostTensor { dtype, shape, data };
        tensor.check_len("tensor")?;
        Ok(tensor)
    }

    /// A float32 tensor. `values.len()` should equal the product of `shape`.
    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> HostTensor {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        HostTensor { dtype: DType::F32, shape, data }
    }

    /// An int64 tensor. `values.len()` should equal the product of `shape`.
    pub fn from_i64(shape: Vec<usize>, values: &[i64]) -> HostTensor {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        HostTensor { dtype: DType::I64, shape, data }
    }

    /// Number of elements: the product of the shape (1 for a scalar).
    /// Saturates instead of overflowing on absurd shapes.
    pub fn len(&self) -> usize {
        self.shape.iter().fold(1usize, |n, &d| n.saturating_mul(d))
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks that `data` holds exactly `len()` elements; `what` names the
    /// tensor in the error, e.g. "input 'x'".
    pub fn check_len(&self, what: &str) -> Result<()> {
        let expected = self.len().saturating_mul(self.dtype.size_bytes());
        if self.data.len() == expected {
            Ok(())
        } else {
            Err(Error::DataLength { what: what.to_string(), expected, got: self.data.len() })
        }
    }

    /// Every element as f64 (int64 and uint64 beyond 2^53 round; bool is 0/1).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        let mut out = Vec::with_capacity(self.data.len() / self.dtype.size_bytes());
        self.for_each_f64(|v| out.push(v));
        out
    }

    /// Every element as f32, for summaries and comparisons.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.data.len() / self.dtype.size_bytes());
        self.for_each_f64(|v| out.push(v as f32));
        out
    }

    /// Calls `f` with each element widened to f64.
    fn for_each_f64(&self, mut f: impl FnMut(f64)) {
        use DType::*;
        let n = self.dtype.size_bytes();
        for c in self.data.chunks_exact(n) {
            let mut b = [0u8; 8];
            b[..n].copy_from_slice(c);
            let [b0, b1, b2, b3, ..] = b;
            let v = match self.dtype {
                F32 => f64::from(f32::from_le_bytes([b0, b1, b2, b3])),
                F64 => f64::from_le_bytes(b),
                F16 => f64::from(f16::from_le_bytes([b0, b1])),
                BF16 => f64::from(bf16::from_le_bytes([b0, b1])),
                I8 => f64::from(b0 as i8),
                I16 => f64::from(i16::from_le_bytes([b0, b1])),
                I32 => f64::from(i32::from_le_bytes([b0, b1, b2, b3])),
                I64 => i64::from_le_bytes(b) as f64,
                U8 | Bool => f64::from(b0),
                U16 => f64::from(u16::from_le_bytes([b0, b1])),
                U32 => f64::from(u32::from_le_bytes([b0, b1, b2, b3])),
                U64 => u64::from_le_bytes(b) as f64,
            };
            f(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widening_reads_every_type() {
        let t = HostTensor::from_i64(vec![2], &[-3, 1 << 40]);
        assert_eq!(t.to_f64_vec(), [-3.0, (1u64 << 40) as f64]);
        let t = HostTensor::new(DType::I8, vec![2], vec![0xfe, 7]).expect("2 bytes");
        assert_eq!(t.to_f32_vec(), [-2.0, 7.0]);
        let t = HostTensor::from_f32(vec![], &[2.5]);
        assert_eq!((t.len(), t.to_f64_vec()), (1, vec![2.5]));
    }

    #[test]
    fn wrong_length_is_an_error() {
        let err = HostTensor::new(DType::F16, vec![3], vec![0; 4]).unwrap_err();
        assert_eq!(err.to_string(), "tensor: data has 4 bytes, its dtype and shape need 6");
    }
}
