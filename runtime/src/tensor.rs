//! Host tensors: what callers pass to and get back from a run.
//!
//! A [`HostTensor`] holds its elements in their *logical* type as little-endian
//! bytes, exactly as ONNX's raw tensor data lays them out, so the CLI and the
//! tests can move data between files and the runtime without conversions.

use crate::dtype::DType;
use crate::error::{Error, Result};

/// A dense tensor in host memory.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// `dtype.byte_len(len())` little-endian bytes, row major (2- and 4-bit
    /// elements packed).
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
        let expected = self.dtype.byte_len(self.len());
        if self.data.len() == expected {
            Ok(())
        } else {
            Err(Error::DataLength { what: what.to_string(), expected, got: self.data.len() })
        }
    }

    /// Every element as f64 (int64 and uint64 beyond 2^53 round; bool is 0/1).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        self.dtype.to_f64_values(&self.data, self.len())
    }

    /// Every element as f32, for summaries and comparisons.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        self.to_f64_vec().into_iter().map(|v| v as f32).collect()
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
