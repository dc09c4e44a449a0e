//! The op registry: ONNX op type → the family module that builds it.

use crate::families::elementwise;
use crate::{Attrs, Error, Op, Result};

/// Builds the op of a node. `opset` is the model's version of the op's
/// domain; families use it where attributes moved to inputs over time.
/// `n_outputs` is the node's output count, which some ops imply rather
/// than state (Split into equal parts before opset 18).
pub fn build_op(op_type: &str, domain: &str, opset: i64, attrs: &Attrs, n_outputs: usize) -> Result<Box<dyn Op>> {
    if domain == "ai.onnx.preview.training" && matches!(op_type, "Adagrad" | "Adam" | "Momentum") {
        return crate::families::training::build(op_type, attrs, opset);
    }
    if (domain == "com.microsoft" && op_type == "MatMulNBits") || (domain == "ai.drift" && op_type == "QMatMul") {
        return crate::families::nbits::build(op_type, attrs);
    }
    if domain == "ai.drift" && op_type == "SampleToken" {
        return crate::families::sampling::build(op_type);
    }
    if !(domain.is_empty() || domain == "ai.onnx") {
        return Err(Error::unsupported(format!("domain '{domain}'")));
    }
    if op_type == "Split" && !attrs.has("num_outputs") && !attrs.has("split") {
        let mut attrs = attrs.clone();
        attrs.0.insert("num_outputs".into(), crate::Attr::Int(n_outputs as i64));
        return crate::families::movement::build(op_type, &attrs, opset);
    }
    match op_type {
        "Clip" => elementwise::build_clip(attrs),
        "MaxPool" | "AveragePool" | "LpPool" | "GlobalAveragePool" | "GlobalMaxPool" | "GlobalLpPool" => {
            crate::families::pool::build(op_type, attrs, opset)
        }
        "Conv" | "ConvTranspose" | "ConvInteger" => crate::families::conv::build(op_type, attrs, opset),
        "MatMul" | "Gemm" | "MatMulInteger" => crate::families::matmul::build(op_type, attrs, opset),
        "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze" | "Identity" | "Dropout" | "Shape" | "Size" | "Constant"
        | "ConstantOfShape" | "Expand" | "Range" | "EyeLike" => crate::families::shape::build(op_type, attrs, opset),
        "Transpose" | "Concat" | "Split" | "Slice" | "Gather" | "GatherElements" | "GatherND" | "Tile" | "Pad"
        | "DepthToSpace" | "SpaceToDepth" | "Trilu" | "OneHot" | "CumSum" | "CumProd" | "ReverseSequence"
        | "CenterCropPad" => crate::families::movement::build(op_type, attrs, opset),
        "ReduceSum" | "ReduceMean" | "ReduceMax" | "ReduceMin" | "ReduceProd" | "ReduceL1" | "ReduceL2"
        | "ReduceLogSum" | "ReduceLogSumExp" | "ReduceSumSquare" | "ArgMax" | "ArgMin" => {
            crate::families::reduce::build(op_type, attrs, opset)
        }
        "Softmax"
        | "LogSoftmax"
        | "Hardmax"
        | "LayerNormalization"
        | "RMSNormalization"
        | "BatchNormalization"
        | "InstanceNormalization"
        | "GroupNormalization"
        | "LpNormalization"
        | "MeanVarianceNormalization"
        | "LRN" => crate::families::norm::build(op_type, attrs, opset),
        "Resize" | "Upsample" => crate::families::resize::build(op_type, attrs, opset),
        "Attention" | "RotaryEmbedding" | "LinearAttention" | "CausalConvWithState" | "TensorScatter" | "SwiGLU" => {
            crate::families::attention::build(op_type, attrs, opset)
        }
        "SoftmaxCrossEntropyLoss" | "NegativeLogLikelihoodLoss" => crate::families::loss::build(op_type, attrs, opset),
        "Scatter" | "ScatterElements" | "ScatterND" => crate::families::scatter::build(op_type, attrs, opset),
        "TopK" => crate::families::sort::build(op_type, attrs, opset),
        "NonZero" | "Compress" | "Unique" | "NonMaxSuppression" => {
            crate::families::select::build(op_type, attrs, opset)
        }
        "Einsum" => crate::families::einsum::build(op_type, attrs, opset),
        "GridSample" | "AffineGrid" | "RoiAlign" | "Col2Im" | "MaxUnpool" | "DeformConv" => {
            crate::families::sample::build(op_type, attrs, opset)
        }
        "RNN" | "LSTM" | "GRU" => crate::families::rnn::build(op_type, attrs, opset),
        "DFT" | "STFT" | "HannWindow" | "HammingWindow" | "BlackmanWindow" | "MelWeightMatrix" => {
            crate::families::signal::build(op_type, attrs, opset)
        }
        "QuantizeLinear" | "DequantizeLinear" | "DynamicQuantizeLinear" | "QLinearMatMul" | "QLinearConv" => {
            crate::families::quant::build(op_type, attrs, opset)
        }
        _ => elementwise::build(op_type, attrs),
    }
}

/// Whether `op_type` of the default domain has a builder.
pub fn is_supported(op_type: &str) -> bool {
    !matches!(build_op(op_type, "", 21, &Attrs::default(), 1), Err(Error::Unsupported(m)) if m == op_type)
}
