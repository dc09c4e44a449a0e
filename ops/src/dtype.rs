//! Logical element types (as ONNX numbers them) and their physical GPU form.
//!
//! Every element on the GPU is 32 bits: floats become f32, signed integers
//! i32, unsigned integers and bools u32. Narrowing (int64, uint64, float64)
//! is checked at the program's boundary by the runtime and at compile time
//! for constants; see docs/conformance.md.

use crate::{Error, Result};

/// A logical element type; the discriminant is ONNX's `TensorProto.DataType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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

/// The 32-bit type an element has inside a kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phys {
    F32,
    I32,
    U32,
}

impl DType {
    /// Maps an ONNX data type number; strings, complex and 8-bit floats are
    /// not supported yet.
    pub fn from_onnx(code: i32) -> Result<DType> {
        use DType::*;
        Ok(match code {
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
            _ => return Err(Error::msg(format!("unsupported element type {}", onnx_type_name(code)))),
        })
    }

    pub fn onnx(self) -> i32 {
        self as i32
    }

    pub fn name(self) -> &'static str {
        onnx_type_name(self as i32)
    }

    pub fn phys(self) -> Phys {
        use DType::*;
        match self {
            F32 | F16 | BF16 | F64 => Phys::F32,
            I8 | I16 | I32 | I64 => Phys::I32,
            U8 | U16 | U32 | U64 | Bool => Phys::U32,
        }
    }

    pub fn is_float(self) -> bool {
        self.phys() == Phys::F32
    }

    pub fn is_signed_int(self) -> bool {
        self.phys() == Phys::I32
    }

    /// Bytes per element in ONNX raw data.
    pub fn size_bytes(self) -> usize {
        use DType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 | F16 | BF16 => 2,
            F32 | I32 | U32 => 4,
            I64 | U64 | F64 => 8,
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Phys {
    /// The WGSL scalar type.
    pub fn wgsl(self) -> &'static str {
        match self {
            Phys::F32 => "f32",
            Phys::I32 => "i32",
            Phys::U32 => "u32",
        }
    }
}

/// ONNX's name for a data type number, for messages.
pub fn onnx_type_name(code: i32) -> &'static str {
    match code {
        1 => "float32",
        2 => "uint8",
        3 => "int8",
        4 => "uint16",
        5 => "int16",
        6 => "int32",
        7 => "int64",
        8 => "string",
        9 => "bool",
        10 => "float16",
        11 => "float64",
        12 => "uint32",
        13 => "uint64",
        14 => "complex64",
        15 => "complex128",
        16 => "bfloat16",
        17..=20 => "float8",
        21 => "uint4",
        22 => "int4",
        23 => "float4e2m1",
        _ => "unknown",
    }
}
