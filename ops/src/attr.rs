//! Node attributes, decoded from ONNX by the importer, read by op builders.

use crate::{Result, Tensor, bail};
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq)]
pub enum Attr {
    Int(i64),
    Float(f32),
    Str(String),
    Ints(Vec<i64>),
    Floats(Vec<f32>),
    Strs(Vec<String>),
    Tensor(Tensor),
    /// A subgraph (If/Loop/Scan bodies); not supported by any op yet.
    Graph,
}

/// A node's attributes by name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Attrs(pub BTreeMap<String, Attr>);

impl Attrs {
    pub fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    pub fn int_opt(&self, name: &str) -> Result<Option<i64>> {
        match self.0.get(name) {
            None => Ok(None),
            Some(Attr::Int(v)) => Ok(Some(*v)),
            Some(other) => bail!("attribute '{name}' should be an int, found {}", kind(other)),
        }
    }

    pub fn int(&self, name: &str, default: i64) -> Result<i64> {
        Ok(self.int_opt(name)?.unwrap_or(default))
    }

    pub fn float_opt(&self, name: &str) -> Result<Option<f32>> {
        match self.0.get(name) {
            None => Ok(None),
            Some(Attr::Float(v)) => Ok(Some(*v)),
            Some(Attr::Int(v)) => Ok(Some(*v as f32)),
            Some(other) => bail!("attribute '{name}' should be a float, found {}", kind(other)),
        }
    }

    pub fn float(&self, name: &str, default: f32) -> Result<f32> {
        Ok(self.float_opt(name)?.unwrap_or(default))
    }

    pub fn str_opt(&self, name: &str) -> Result<Option<&str>> {
        match self.0.get(name) {
            None => Ok(None),
            Some(Attr::Str(v)) => Ok(Some(v)),
            Some(other) => bail!("attribute '{name}' should be a string, found {}", kind(other)),
        }
    }

    pub fn str<'a>(&'a self, name: &str, default: &'a str) -> Result<&'a str> {
        Ok(self.str_opt(name)?.unwrap_or(default))
    }

    pub fn ints_opt(&self, name: &str) -> Result<Option<&[i64]>> {
        match self.0.get(name) {
            None => Ok(None),
            Some(Attr::Ints(v)) => Ok(Some(v)),
            Some(other) => bail!("attribute '{name}' should be a list of ints, found {}", kind(other)),
        }
    }

    pub fn floats_opt(&self, name: &str) -> Result<Option<&[f32]>> {
        match self.0.get(name) {
            None => Ok(None),
            Some(Attr::Floats(v)) => Ok(Some(v)),
            Some(other) => bail!("attribute '{name}' should be a list of floats, found {}", kind(other)),
        }
    }

    pub fn tensor_opt(&self, name: &str) -> Result<Option<&Tensor>> {
        match self.0.get(name) {
            None => Ok(None),
            Some(Attr::Tensor(t)) => Ok(Some(t)),
            Some(other) => bail!("attribute '{name}' should be a tensor, found {}", kind(other)),
        }
    }
}

fn kind(a: &Attr) -> &'static str {
    match a {
        Attr::Int(_) => "an int",
        Attr::Float(_) => "a float",
        Attr::Str(_) => "a string",
        Attr::Ints(_) => "a list of ints",
        Attr::Floats(_) => "a list of floats",
        Attr::Strs(_) => "a list of strings",
        Attr::Tensor(_) => "a tensor",
        Attr::Graph => "a graph",
    }
}
