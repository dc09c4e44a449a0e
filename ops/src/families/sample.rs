//! Sampling ops: GridSample, AffineGrid, RoiAlign, Col2Im, MaxUnpool, DeformConv.

use crate::{Attrs, Error, Op, Result};

/// Builds an op of this family.
pub fn build(op_type: &str, _attrs: &Attrs, _opset: i64) -> Result<Box<dyn Op>> {
    Err(Error::unsupported(op_type))
}
