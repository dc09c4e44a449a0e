//! One module per op family.

pub mod attention;
pub mod conv;
pub mod einsum;
pub mod elementwise;
pub mod loss;
pub mod matmul;
pub mod movement;
pub mod nbits;
pub mod norm;
pub mod pool;
pub mod quant;
pub mod reduce;
pub mod resize;
pub mod rnn;
pub mod sample;
pub mod sampling;
pub mod scatter;
pub mod select;
pub mod shape;
pub mod signal;
pub mod sort;
pub mod training;
pub mod transformer;
