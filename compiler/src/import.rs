//! ONNX → IR. Reads the protobuf with `onnx-protobuf`, resolves external
//! initializer data relative to the model file, and converts attributes and
//! tensors to drift-ops types. No shape or op knowledge lives here.

use crate::error::{Error, Result};
use crate::ir::{Dim, Graph, Node, Value, ValueId};
use drift_ops::{Attr, Attrs, DType, Tensor};
use onnx_protobuf::{
    AttributeProto, GraphProto, Message, ModelProto, TensorProto, attribute_proto::AttributeType,
    tensor_proto::DataLocation, tensor_shape_proto::dimension, type_proto,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Reads and converts a model file.
pub fn import_file(path: &Path) -> Result<Graph> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    import_bytes(&bytes, path, &dir)
}

/// Converts model bytes; `path` names the model in errors, `dir` resolves
/// external data.
pub fn import_bytes(bytes: &[u8], path: &Path, dir: &Path) -> Result<Graph> {
    let not_onnx = |reason: String| Error::NotOnnx { path: path.to_path_buf(), reason };
    let model = ModelProto::parse_from_bytes(bytes).map_err(|e| not_onnx(format!("protobuf decoding failed: {e}")))?;
    let graph = model.graph.as_ref().ok_or_else(|| not_onnx("it has no graph".into()))?;
    if graph.node.is_empty() && graph.output.is_empty() {
        return Err(not_onnx("its graph is empty (no nodes, no outputs)".into()));
    }
    let mut opsets = std::collections::BTreeMap::new();
    for o in &model.opset_import {
        let domain = if o.domain == "ai.onnx" { String::new() } else { o.domain.clone() };
        opsets.insert(domain, o.version);
    }
    if opsets.is_empty() {
        // IR version 2 models predate opset_import; they are opset 1.
        opsets.insert(String::new(), 1);
    }
    let g = Graph { opsets, dir: dir.to_path_buf(), ..Graph::default() };
    let mut b = Builder { g, by_name: HashMap::new(), dir: dir.to_path_buf() };
    b.g.name = if graph.name.is_empty() { file_stem(path) } else { graph.name.clone() };
    b.graph(graph)?;
    Ok(b.g)
}

fn file_stem(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into())
}

struct Builder {
    g: Graph,
    by_name: HashMap<String, ValueId>,
    dir: PathBuf,
}

impl Builder {
    fn graph(&mut self, graph: &GraphProto) -> Result<()> {
        check_unique_names(graph)?;
        for init in &graph.initializer {
            let t =
                tensor_from_proto(init, &self.dir).map_err(|msg| Error::Tensor { tensor: init.name.clone(), msg })?;
            let id = self.value(&init.name);
            self.g.values[id].ty = Some(drift_ops::TypeInfo::new(t.dtype, t.shape.clone()));
            self.g.values[id].constant = Some(Arc::new(t));
        }
        for vi in &graph.input {
            let id = self.value(&vi.name);
            self.g.values[id].declared = declared_type(vi)?;
            // Old models list initializers among the inputs; they are weights.
            if self.g.values[id].constant.is_none() {
                self.g.inputs.push(id);
            }
        }
        for vi in graph.value_info.iter().chain(&graph.output) {
            let id = self.value(&vi.name);
            if self.g.values[id].declared.is_none() {
                self.g.values[id].declared = declared_type(vi)?;
            }
        }
        for (i, n) in graph.node.iter().enumerate() {
            let node = self.node(n, i)?;
            self.g.nodes.push(node);
        }
        for vi in &graph.output {
            let id = self.value(&vi.name);
            self.g.outputs.push(id);
        }
        Ok(())
    }

    fn value(&mut self, name: &str) -> ValueId {
        if let Some(&id) = self.by_name.get(name) {
            return id;
        }
        let id = self.g.add_value(Value { name: name.to_string(), ..Value::default() });
        self.by_name.insert(name.to_string(), id);
        id
    }

    fn node(&mut self, n: &onnx_protobuf::NodeProto, index: usize) -> Result<Node> {
        let name = if n.name.is_empty() { format!("{}_{index}", n.op_type) } else { n.name.clone() };
        let domain = if n.domain == "ai.onnx" { String::new() } else { n.domain.clone() };
        let opset = self.g.opsets.get(&domain).copied().unwrap_or(1);
        let mut attrs = Attrs::default();
        for a in &n.attribute {
            let v = attr_from_proto(a, &self.dir).map_err(|msg| Error::Node {
                node: name.clone(),
                op_type: n.op_type.clone(),
                msg: format!("attribute '{}': {msg}", a.name),
            })?;
            attrs.0.insert(a.name.clone(), v);
        }
        let inputs = n.input.iter().map(|s| (!s.is_empty()).then(|| self.value(s))).collect();
        let outputs = n.output.iter().map(|s| (!s.is_empty()).then(|| self.value(s))).collect();
        let subgraphs =
            n.attribute.iter().filter_map(|a| Some((a.name.clone(), Arc::new(a.g.as_ref()?.clone())))).collect();
        Ok(Node {
            name,
            op_type: n.op_type.clone(),
            domain,
            opset,
            attrs,
            inputs,
            outputs,
            subgraphs,
            ..Node::default()
        })
    }
}

/// Imports a control-flow body into `g` for one use (a branch taken, one
/// iteration): its inputs bound to `inputs`, every value and node it defines
/// renamed with `prefix`, other names looked up in `outer` (the enclosing
/// body's renamed values) and then among the model's values. Returns the
/// ids of the body's outputs and of the nodes it added.
pub fn inline_body(
    g: &mut Graph,
    body: &GraphProto,
    prefix: &str,
    inputs: &[ValueId],
    outer: &HashMap<String, ValueId>,
) -> std::result::Result<(Vec<ValueId>, Vec<usize>), String> {
    if body.input.len() != inputs.len() {
        return Err(format!("the body takes {} inputs, {} are given", body.input.len(), inputs.len()));
    }
    let globals: HashMap<String, ValueId> =
        g.values.iter().enumerate().map(|(id, v)| (v.name.clone(), id)).filter(|(n, _)| !n.is_empty()).collect();
    let mut local: HashMap<String, ValueId> =
        body.input.iter().zip(inputs).map(|(vi, &id)| (vi.name.clone(), id)).collect();
    let dir = g.dir.clone();
    for init in &body.initializer {
        let t = tensor_from_proto(init, &dir).map_err(|e| format!("initializer '{}': {e}", init.name))?;
        let id = g.add_value(Value {
            name: format!("{prefix}{}", init.name),
            ty: Some(drift_ops::TypeInfo::new(t.dtype, t.shape.clone())),
            constant: Some(Arc::new(t)),
            ..Value::default()
        });
        local.insert(init.name.clone(), id);
    }
    let resolve = |local: &HashMap<String, ValueId>, name: &str| -> std::result::Result<ValueId, String> {
        local
            .get(name)
            .or_else(|| outer.get(name))
            .or_else(|| globals.get(name))
            .copied()
            .ok_or_else(|| format!("the body reads '{name}', which is neither defined in it nor visible around it"))
    };
    let first_node = g.nodes.len();
    for (i, n) in body.node.iter().enumerate() {
        let name = format!("{prefix}{}", if n.name.is_empty() { format!("{}_{i}", n.op_type) } else { n.name.clone() });
        let domain = if n.domain == "ai.onnx" { String::new() } else { n.domain.clone() };
        let opset = g.opsets.get(&domain).copied().unwrap_or(1);
        let mut attrs = Attrs::default();
        for a in &n.attribute {
            let v = attr_from_proto(a, &dir).map_err(|m| format!("node '{name}': attribute '{}': {m}", a.name))?;
            attrs.0.insert(a.name.clone(), v);
        }
        let node_inputs = n
            .input
            .iter()
            .map(|s| if s.is_empty() { Ok(None) } else { resolve(&local, s).map(Some) })
            .collect::<std::result::Result<Vec<_>, String>>()?;
        let mut node_outputs = vec![];
        for s in &n.output {
            if s.is_empty() {
                node_outputs.push(None);
                continue;
            }
            let id = g.add_value(Value { name: format!("{prefix}{s}"), ..Value::default() });
            local.insert(s.clone(), id);
            node_outputs.push(Some(id));
        }
        let subgraphs =
            n.attribute.iter().filter_map(|a| Some((a.name.clone(), Arc::new(a.g.as_ref()?.clone())))).collect();
        g.nodes.push(Node {
            name,
            op_type: n.op_type.clone(),
            domain,
            opset,
            attrs,
            inputs: node_inputs,
            outputs: node_outputs,
            subgraphs,
            ..Node::default()
        });
    }
    // Nested control flow sees this body's names, then the enclosing ones.
    let mut scope = outer.clone();
    scope.extend(local.iter().map(|(k, &v)| (k.clone(), v)));
    let scope = Arc::new(scope);
    for node in &mut g.nodes[first_node..] {
        if !node.subgraphs.is_empty() {
            node.scope = Arc::clone(&scope);
        }
    }
    let outputs = body.output.iter().map(|vi| resolve(&local, &vi.name)).collect::<std::result::Result<_, _>>()?;
    Ok((outputs, (first_node..g.nodes.len()).collect()))
}

/// The element type and shape a value info declares; a negative dimension
/// is an error naming the tensor (unknown dims are `Dim::Unknown`).
fn declared_type(vi: &onnx_protobuf::ValueInfoProto) -> Result<Option<(i32, Vec<Dim>)>> {
    let Some(type_proto::Value::TensorType(t)) = vi.type_.as_ref().and_then(|tp| tp.value.as_ref()) else {
        return Ok(None);
    };
    let Some(shape) = t.shape.as_ref() else { return Ok(None) };
    let mut dims = Vec::with_capacity(shape.dim.len());
    for (axis, d) in shape.dim.iter().enumerate() {
        dims.push(match &d.value {
            Some(dimension::Value::DimValue(v)) if *v < 0 => {
                return Err(Error::Tensor {
                    tensor: vi.name.clone(),
                    msg: format!("declares a negative dimension {v} at axis {axis}"),
                });
            }
            Some(dimension::Value::DimValue(v)) => Dim::Fixed(*v as usize),
            Some(dimension::Value::DimParam(s)) if !s.is_empty() => Dim::Sym(s.clone()),
            _ => Dim::Unknown,
        });
    }
    Ok(Some((t.elem_type, dims)))
}

/// Each name is defined once: graph inputs, initializers and graph outputs
/// are each listed once, and no node writes an initializer or a graph input
/// (one that is not also an initializer, as old models list weights there).
fn check_unique_names(graph: &GraphProto) -> Result<()> {
    let twice = |tensor: &str, what: &str| Error::Tensor { tensor: tensor.to_string(), msg: format!("is {what}") };
    let mut inits = std::collections::HashSet::new();
    for t in &graph.initializer {
        if !inits.insert(t.name.as_str()) {
            return Err(twice(&t.name, "defined twice as an initializer"));
        }
    }
    let mut inputs = std::collections::HashSet::new();
    for vi in &graph.input {
        if !inputs.insert(vi.name.as_str()) {
            return Err(twice(&vi.name, "declared twice as a graph input"));
        }
    }
    let mut outputs = std::collections::HashSet::new();
    for vi in &graph.output {
        if !outputs.insert(vi.name.as_str()) {
            return Err(twice(&vi.name, "listed twice as a graph output"));
        }
    }
    for (i, n) in graph.node.iter().enumerate() {
        let node = if n.name.is_empty() { format!("{}_{i}", n.op_type) } else { n.name.clone() };
        for out in n.output.iter().filter(|o| !o.is_empty()) {
            let what = if inits.contains(out.as_str()) {
                "an initializer"
            } else if inputs.contains(out.as_str()) {
                "a graph input"
            } else {
                continue;
            };
            return Err(twice(out, &format!("{what} and also the output of node '{node}'")));
        }
    }
    Ok(())
}

fn attr_from_proto(a: &AttributeProto, dir: &Path) -> std::result::Result<Attr, String> {
    let ty = a.type_.enum_value().map_err(|v| format!("unknown attribute type {v}"))?;
    Ok(match ty {
        AttributeType::INT => Attr::Int(a.i),
        AttributeType::FLOAT => Attr::Float(a.f),
        AttributeType::STRING => Attr::Str(String::from_utf8_lossy(&a.s).into_owned()),
        AttributeType::INTS => Attr::Ints(a.ints.clone()),
        AttributeType::FLOATS => Attr::Floats(a.floats.clone()),
        AttributeType::STRINGS => {
            Attr::Strs(a.strings.iter().map(|s| String::from_utf8_lossy(s).into_owned()).collect())
        }
        AttributeType::TENSOR => match a.t.as_ref() {
            Some(t) => Attr::Tensor(tensor_from_proto(t, dir)?),
            None => return Err("tensor attribute without a tensor".into()),
        },
        AttributeType::GRAPH | AttributeType::GRAPHS => Attr::Graph,
        other => return Err(format!("attribute type {other:?} is not supported")),
    })
}

/// Decodes a TensorProto, reading external data relative to `dir`.
pub fn tensor_from_proto(t: &TensorProto, dir: &Path) -> std::result::Result<Tensor, String> {
    let dtype = DType::from_onnx(t.data_type).map_err(|e| e.to_string())?;
    let mut shape = Vec::with_capacity(t.dims.len());
    for &d in &t.dims {
        shape.push(usize::try_from(d).map_err(|_| format!("negative dimension {d} in {:?}", t.dims))?);
    }
    let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or("element count overflows")?;
    if t.data_location.enum_value_or_default() == DataLocation::EXTERNAL {
        let raw = read_external(t, dir, dtype.byte_len(n).ok_or("tensor size overflows")?)?;
        return Tensor::from_raw(dtype, shape, &raw).map_err(|e| e.to_string());
    }
    if !t.raw_data.is_empty() || n == 0 {
        return Tensor::from_raw(dtype, shape, &t.raw_data).map_err(|e| e.to_string());
    }
    typed_fields(t, dtype, shape, n)
}

fn typed_fields(t: &TensorProto, dtype: DType, shape: Vec<usize>, n: usize) -> std::result::Result<Tensor, String> {
    let check = |len: usize| {
        if len == n { Ok(()) } else { Err(format!("has {len} values, shape {shape:?} needs {n}")) }
    };
    Ok(match dtype {
        DType::F32 => {
            check(t.float_data.len())?;
            Tensor::from_f32(shape, t.float_data.clone())
        }
        DType::F64 => {
            check(t.double_data.len())?;
            Tensor::from_f64(dtype, shape, t.double_data.clone())
        }
        DType::I64 => {
            check(t.int64_data.len())?;
            Tensor::from_i64(dtype, shape, t.int64_data.clone())
        }
        DType::U32 | DType::U64 => {
            check(t.uint64_data.len())?;
            Tensor::from_i64(dtype, shape, t.uint64_data.iter().map(|&v| v as i64).collect())
        }
        DType::F16 | DType::BF16 => {
            check(t.int32_data.len())?;
            let raw: Vec<u8> = t.int32_data.iter().flat_map(|&v| (v as u16).to_le_bytes()).collect();
            Tensor::from_raw(dtype, shape, &raw).map_err(|e| e.to_string())?
        }
        // One bit pattern (8-bit floats) or one packed byte (2- and 4-bit
        // types) per int32 entry.
        d if d.bits() < 8 || d.minifloat().is_some() || d == DType::F8E8M0 => {
            let bytes = d.byte_len(n).ok_or("tensor size overflows")?;
            if t.int32_data.len() != bytes {
                return Err(format!(
                    "has {} int32 entries, {n} {d} elements of shape {shape:?} need {bytes}",
                    t.int32_data.len()
                ));
            }
            let raw: Vec<u8> = t.int32_data.iter().map(|&v| v as u8).collect();
            Tensor::from_raw(dtype, shape, &raw).map_err(|e| e.to_string())?
        }
        _ => {
            check(t.int32_data.len())?;
            Tensor::from_i64(dtype, shape, t.int32_data.iter().map(|&v| v as i64).collect())
        }
    })
}

fn read_external(t: &TensorProto, dir: &Path, expected: usize) -> std::result::Result<Vec<u8>, String> {
    let kv: HashMap<&str, &str> = t.external_data.iter().map(|e| (e.key.as_str(), e.value.as_str())).collect();
    let location = kv.get("location").ok_or("external data without a 'location'")?;
    let rel = Path::new(location);
    if rel.is_absolute() || rel.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return Err(format!("external data location '{location}' must stay inside the model's folder"));
    }
    let path = dir.join(rel);
    let parse = |k: &str| kv.get(k).map(|v| v.parse::<u64>().map_err(|_| format!("bad external data {k} '{v}'")));
    let offset = parse("offset").transpose()?.unwrap_or(0);
    let length = parse("length").transpose()?.unwrap_or(expected as u64);
    if length != expected as u64 {
        return Err(format!("external data length {length} does not match the tensor's {expected} bytes"));
    }
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(&path).map_err(|e| format!("external data file {}: {e}", path.display()))?;
    let size = f.metadata().map_err(|e| e.to_string())?.len();
    if offset.checked_add(length).is_none_or(|end| end > size) {
        return Err(format!(
            "external data {}: bytes {offset}..+{length} lie past its end ({size} bytes)",
            path.display()
        ));
    }
    f.seek(SeekFrom::Start(offset)).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; length as usize];
    f.read_exact(&mut buf).map_err(|e| format!("external data {}: {e}", path.display()))?;
    Ok(buf)
}
