//! One module per op family.

pub mod elementwise;
pub mod matmul;
pub mod conv;
pub mod pool;
pub mod shape;
pub mod movement;
pub mod norm;
pub mod reduce;
pub mod resize;
