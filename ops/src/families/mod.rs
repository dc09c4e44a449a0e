//! One module per op family.

pub mod conv;
pub mod elementwise;
pub mod matmul;
pub mod movement;
pub mod norm;
pub mod pool;
pub mod reduce;
pub mod resize;
pub mod shape;
