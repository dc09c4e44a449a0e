//! Einsum: Einstein summation over any number of operands.
//!
//! The equation is compiled once per shape into a `Plan`: every label
//! (a letter, or one position of the broadcast `...` dims) gets a size, the
//! output labels come from the explicit `->` part or numpy's implicit rule
//! (ellipsis dims first, then the letters seen exactly once, sorted), and
//! every other label is summed. Each operand then needs only one stride per
//! output label and per summed label: a label repeated inside one operand
//! (`ii`, a diagonal) adds the strides of its dims, and a dim of size 1
//! under a larger label (broadcast) gets stride 0.
//!
//! GPU form: one thread per output element walks the summed index space
//! with the strides baked in, accumulating the product of the operands in
//! the element's physical type. The CPU reference runs the same plan.

use crate::families::movement::{kernel, map_coords};
use crate::wgsl::{strides, unravel};
use crate::{Attrs, DType, Error, Input, KernelArg, LowerCtx, Lowering, Op, Result, Tensor, TensorRef, TypeInfo, bail};

/// Builds an op of this family.
pub fn build(op_type: &str, attrs: &Attrs, _opset: i64) -> Result<Box<dyn Op>> {
    match op_type {
        "Einsum" => {
            let eq = attrs.str_opt("equation")?.ok_or_else(|| Error::msg("attribute 'equation' is required"))?;
            Ok(Box::new(Einsum::parse(eq)?))
        }
        _ => Err(Error::unsupported(op_type)),
    }
}

/// One token of an operand's subscripts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tok {
    Letter(u8),
    Ellipsis,
}

/// A dimension label after the ellipsis is expanded: a letter, or the k-th
/// broadcast dim counted in the widest ellipsis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Label {
    Ell(usize),
    Letter(u8),
}

/// Einsum with its equation parsed (shapes not yet known).
#[derive(Debug)]
pub struct Einsum {
    inputs: Vec<Vec<Tok>>,
    /// The explicit output subscripts; `None` for the implicit form.
    output: Option<Vec<Tok>>,
}

/// How to compute the output for concrete input shapes.
#[derive(Debug, PartialEq)]
struct Plan {
    out_shape: Vec<usize>,
    sum_shape: Vec<usize>,
    /// Per operand: its element stride along each output dim.
    out_strides: Vec<Vec<usize>>,
    /// Per operand: its element stride along each summed dim.
    sum_strides: Vec<Vec<usize>>,
}

/// Splits one operand's subscripts into tokens.
fn parse_term(t: &str) -> Result<Vec<Tok>> {
    let mut toks = vec![];
    let b = t.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_alphabetic() {
            toks.push(Tok::Letter(b[i]));
            i += 1;
        } else if t[i..].starts_with("...") {
            if toks.contains(&Tok::Ellipsis) {
                bail!("equation term '{t}' has more than one ellipsis");
            }
            toks.push(Tok::Ellipsis);
            i += 3;
        } else {
            bail!("equation term '{t}' has an invalid character '{}'", b[i] as char);
        }
    }
    Ok(toks)
}

impl Einsum {
    fn parse(equation: &str) -> Result<Einsum> {
        let eq: String = equation.chars().filter(|c| !c.is_whitespace()).collect();
        let (lhs, rhs) = match eq.split_once("->") {
            Some((l, r)) => (l, Some(r)),
            None => (eq.as_str(), None),
        };
        let inputs = lhs.split(',').map(parse_term).collect::<Result<Vec<_>>>()?;
        let output = rhs.map(parse_term).transpose()?;
        Ok(Einsum { inputs, output })
    }

    /// Labels of every dim of every operand, and the ellipsis width.
    fn label_dims(&self, shapes: &[&[usize]]) -> Result<(Vec<Vec<Label>>, usize)> {
        if shapes.len() != self.inputs.len() {
            bail!("equation has {} operands but the node has {} inputs", self.inputs.len(), shapes.len());
        }
        let mut ell_widths = vec![];
        for (toks, shape) in self.inputs.iter().zip(shapes) {
            let letters = toks.iter().filter(|t| matches!(t, Tok::Letter(_))).count();
            let has_ell = toks.contains(&Tok::Ellipsis);
            if shape.len() < letters || (!has_ell && shape.len() != letters) {
                bail!("operand subscripts of {} letters do not fit an input of shape {:?}", letters, shape);
            }
            ell_widths.push(shape.len() - letters);
        }
        let width = ell_widths.iter().copied().max().unwrap_or(0);
        let labels = self
            .inputs
            .iter()
            .zip(&ell_widths)
            .map(|(toks, &w)| {
                toks.iter()
                    .flat_map(|t| match *t {
                        Tok::Letter(c) => vec![Label::Letter(c)],
                        Tok::Ellipsis => (width - w..width).map(Label::Ell).collect(),
                    })
                    .collect()
            })
            .collect();
        Ok((labels, width))
    }

    fn plan(&self, shapes: &[&[usize]]) -> Result<Plan> {
        let (labels, width) = self.label_dims(shapes)?;
        // Sizes by label, in order of first appearance; 1 broadcasts.
        let mut sizes: Vec<(Label, usize)> = vec![];
        let mut counts: Vec<usize> = vec![];
        for (ls, shape) in labels.iter().zip(shapes) {
            for (&l, &n) in ls.iter().zip(shape.iter()) {
                match sizes.iter().position(|&(k, _)| k == l) {
                    Some(p) => {
                        counts[p] += 1;
                        let s = &mut sizes[p].1;
                        if *s == 1 {
                            *s = n;
                        } else if n != 1 && n != *s {
                            bail!("label {l:?} has sizes {} and {n}", *s);
                        }
                    }
                    None => {
                        sizes.push((l, n));
                        counts.push(1);
                    }
                }
            }
        }
        let out_labels: Vec<Label> = match &self.output {
            Some(toks) => {
                let mut out = vec![];
                for t in toks {
                    match *t {
                        Tok::Ellipsis => out.extend((0..width).map(Label::Ell)),
                        Tok::Letter(c) => {
                            let l = Label::Letter(c);
                            if out.contains(&l) || !sizes.iter().any(|&(k, _)| k == l) {
                                bail!("output label '{}' is repeated or absent from the inputs", c as char);
                            }
                            out.push(l);
                        }
                    }
                }
                out
            }
            None => {
                let mut letters: Vec<Label> = sizes
                    .iter()
                    .zip(&counts)
                    .filter(|&(&(l, _), &c)| matches!(l, Label::Letter(_)) && c == 1)
                    .map(|(&(l, _), _)| l)
                    .collect();
                letters.sort();
                (0..width).map(Label::Ell).chain(letters).collect()
            }
        };
        let size_of = |l: Label| sizes.iter().find(|&&(k, _)| k == l).map_or(1, |&(_, n)| n);
        let sum_labels: Vec<Label> = sizes.iter().map(|&(l, _)| l).filter(|l| !out_labels.contains(l)).collect();
        let stride_of = |ls: &[Label], shape: &[usize], l: Label| -> usize {
            let st = strides(shape);
            ls.iter().zip(shape).zip(&st).filter(|&((&k, &n), _)| k == l && n != 1).map(|(_, &s)| s).sum()
        };
        let per_input = |want: &[Label]| -> Vec<Vec<usize>> {
            labels.iter().zip(shapes).map(|(ls, sh)| want.iter().map(|&l| stride_of(ls, sh, l)).collect()).collect()
        };
        Ok(Plan {
            out_shape: out_labels.iter().map(|&l| size_of(l)).collect(),
            sum_shape: sum_labels.iter().map(|&l| size_of(l)).collect(),
            out_strides: per_input(&out_labels),
            sum_strides: per_input(&sum_labels),
        })
    }
}

/// Dot product of coordinates and strides.
fn offset(coords: &[usize], strides: &[usize]) -> usize {
    coords.iter().zip(strides).map(|(c, s)| c * s).sum()
}

/// WGSL dot product of coordinates `{prefix}d` and strides.
fn offset_wgsl(prefix: &str, strides: &[usize]) -> String {
    let terms: Vec<String> =
        strides.iter().enumerate().filter(|&(_, &s)| s != 0).map(|(d, s)| format!("{prefix}{d} * {s}u")).collect();
    if terms.is_empty() { "0u".to_string() } else { terms.join(" + ") }
}

/// The common element type of all operands.
fn common_dtype(types: &[&TypeInfo]) -> Result<DType> {
    let dt = types.first().map(|t| t.dtype).ok_or_else(|| Error::msg("Einsum needs at least one input"))?;
    if types.iter().any(|t| t.dtype != dt) {
        bail!("inputs must share one element type");
    }
    if dt == DType::Bool {
        return Err(Error::unsupported("bool inputs"));
    }
    Ok(dt)
}

impl Op for Einsum {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let types: Vec<&TypeInfo> = inputs
            .iter()
            .map(|i| i.map(|i| i.ty).ok_or_else(|| Error::msg("inputs are required")))
            .collect::<Result<_>>()?;
        let dt = common_dtype(&types)?;
        let shapes: Vec<&[usize]> = types.iter().map(|t| t.shape.as_slice()).collect();
        Ok(vec![TypeInfo::new(dt, self.plan(&shapes)?.out_shape)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let ts: Vec<&Tensor> =
            inputs.iter().map(|t| t.ok_or_else(|| Error::msg("inputs are required"))).collect::<Result<_>>()?;
        let shapes: Vec<&[usize]> = ts.iter().map(|t| t.shape.as_slice()).collect();
        let plan = self.plan(&shapes)?;
        let dt = ts[0].dtype;
        let vals: Vec<Vec<f64>> = ts.iter().map(|t| t.to_f64()).collect();
        let sums = map_coords(&plan.sum_shape, |s| s.to_vec());
        let out = map_coords(&plan.out_shape, |o| {
            let base: Vec<usize> = plan.out_strides.iter().map(|st| offset(o, st)).collect();
            sums.iter()
                .map(|s| {
                    vals.iter().enumerate().map(|(k, v)| v[base[k] + offset(s, &plan.sum_strides[k])]).product::<f64>()
                })
                .sum::<f64>()
        });
        Ok(vec![Tensor::from_f64(dt, plan.out_shape, out)])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let types: Vec<&TypeInfo> = (0..cx.inputs.len()).map(|i| cx.input(i)).collect::<Result<_>>()?;
        let t = common_dtype(&types)?.phys().wgsl();
        let shapes: Vec<&[usize]> = types.iter().map(|t| t.shape.as_slice()).collect();
        let plan = self.plan(&shapes)?;
        let n_sum: usize = plan.sum_shape.iter().product();
        let mut args: Vec<KernelArg> =
            (0..types.len()).map(|k| KernelArg::new(&format!("in{k}"), TensorRef::Input(k))).collect();
        args.push(KernelArg::new("y", TensorRef::Output(0)));
        let mut body = unravel("c", "i", &plan.out_shape);
        for (k, st) in plan.out_strides.iter().enumerate() {
            body += &format!("    let b{k} = {};\n", offset_wgsl("c", st));
        }
        let product: Vec<String> = plan
            .sum_strides
            .iter()
            .enumerate()
            .map(|(k, st)| format!("ld_in{k}(b{k} + {})", offset_wgsl("s", st)))
            .collect();
        body += &format!(
            "    var acc = {t}(0);
    for (var r = 0u; r < {n_sum}u; r = r + 1u) {{
{}        acc = acc + {};
    }}
    st_y(i, acc);",
            unravel("s", "r", &plan.sum_shape).replace("    let", "        let"),
            product.join(" * ")
        );
        let n: usize = plan.out_shape.iter().product();
        Ok(Lowering::one(kernel("einsum", args, n, "", &body)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn einsum(eq: &str, inputs: &[&Tensor]) -> Tensor {
        let op = Einsum::parse(eq).unwrap();
        let inputs: Vec<Option<&Tensor>> = inputs.iter().map(|&t| Some(t)).collect();
        op.eval(&inputs).unwrap().remove(0)
    }

    fn iota(shape: Vec<usize>) -> Tensor {
        let n = shape.iter().product::<usize>();
        Tensor::from_f32(shape, (0..n).map(|v| v as f32).collect())
    }

    // Expected values: onnx.reference.ReferenceEvaluator (numpy.einsum) on
    // the same iota inputs.
    #[test]
    fn matmul_transpose_and_sum() {
        let a = iota(vec![2, 3]);
        let b = iota(vec![3, 2]);
        let y = einsum("ij,jk->ik", &[&a, &b]);
        assert_eq!(y.shape, vec![2, 2]);
        assert_eq!(y.to_f64(), vec![10.0, 13.0, 28.0, 40.0]);
        let y = einsum("ij->ji", &[&a]);
        assert_eq!(y.to_f64(), vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        let y = einsum("ij->i", &[&a]);
        assert_eq!(y.to_f64(), vec![3.0, 12.0]);
        // Implicit output: 'j' is summed, 'i' and 'k' appear once.
        let y = einsum("ij,jk", &[&a, &b]);
        assert_eq!(y.to_f64(), vec![10.0, 13.0, 28.0, 40.0]);
    }

    #[test]
    fn diagonal_ellipsis_and_scalar() {
        let x = iota(vec![2, 3, 3]);
        let y = einsum("...ii->...i", &[&x]);
        assert_eq!(y.shape, vec![2, 3]);
        assert_eq!(y.to_f64(), vec![0.0, 4.0, 8.0, 9.0, 13.0, 17.0]);
        // Trace with implicit output: nothing appears once, so a scalar.
        let y = einsum("ii", &[&iota(vec![3, 3])]);
        assert_eq!(y.shape, Vec::<usize>::new());
        assert_eq!(y.to_f64(), vec![12.0]);
        let s = Tensor::from_f32(vec![], vec![5.0]);
        assert_eq!(einsum("->", &[&s]).to_f64(), vec![5.0]);
        let v = iota(vec![4]);
        assert_eq!(einsum("i,i", &[&v, &v]).to_f64(), vec![14.0]);
    }

    #[test]
    fn broadcast_ellipsis_batch_matmul() {
        // The ellipsis dims (2,) and (1,) broadcast to (2,).
        let x = iota(vec![2, 1, 2]);
        let y = iota(vec![1, 2, 2]);
        let z = einsum("...ij,...jk->...ik", &[&x, &y]);
        assert_eq!(z.shape, vec![2, 1, 2]);
        assert_eq!(z.to_f64(), vec![2.0, 3.0, 6.0, 11.0]);
        let bad = Einsum::parse("ij,ij->i").unwrap();
        let (a, b) = (iota(vec![2, 3]), iota(vec![2, 4]));
        assert!(bad.eval(&[Some(&a), Some(&b)]).is_err());
    }
}
