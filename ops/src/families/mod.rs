//! One module per op family.

pub mod elementwise;
