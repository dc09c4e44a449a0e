//! Helpers shared by the unit tests of the op families.

use crate::{Attr, Attrs, Tensor};

/// Attributes from `(name, value)` pairs.
pub fn attrs<'a>(pairs: impl AsRef<[(&'a str, Attr)]>) -> Attrs {
    Attrs(pairs.as_ref().iter().map(|(k, a)| (k.to_string(), a.clone())).collect())
}

/// A deterministic float32 tensor: element k is ((7k + seed) mod 13) / 6.5 - 1.
/// Scripts producing expected values (onnx's reference, onnxruntime) build
/// the same inputs with the same formula.
pub fn pattern(shape: Vec<usize>, seed: usize) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_f32(shape, (0..n).map(|k| ((k * 7 + seed) % 13) as f32 / 6.5 - 1.0).collect())
}
