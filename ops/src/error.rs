//! The error type of op construction, shape rules and CPU references.
//!
//! Messages are phrased about the op alone; the compiler prefixes the node.

/// Why an op could not be built, typed or evaluated.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The op type (or this form of it) has no implementation.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The model is wrong: bad attribute, rank, shape or type.
    #[error("{0}")]
    Invalid(String),
    /// Input `input` decides a shape (or the kernel's form) and must be known
    /// at compile time, but its value is only known at run time. The compiler
    /// turns this into an error naming the graph inputs it comes from, which a
    /// caller may then fix at compile time (value-specialized inputs).
    #[error("{what} (input {input}) must be a constant known at compile time")]
    NeedsValue { input: usize, what: String },
}

impl Error {
    pub fn msg(m: impl Into<String>) -> Error {
        Error::Invalid(m.into())
    }
    pub fn unsupported(m: impl Into<String>) -> Error {
        Error::Unsupported(m.into())
    }
    pub fn needs_value(input: usize, what: impl Into<String>) -> Error {
        Error::NeedsValue { input, what: what.into() }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Returns `Err(Error::Invalid)` with a formatted message.
#[macro_export]
macro_rules! bail {
    ($($t:tt)*) => { return Err($crate::Error::Invalid(format!($($t)*))) };
}

/// Returns `Err(Error::Unsupported)` with a formatted message.
#[macro_export]
macro_rules! unsupported {
    ($($t:tt)*) => { return Err($crate::Error::Unsupported(format!($($t)*))) };
}
