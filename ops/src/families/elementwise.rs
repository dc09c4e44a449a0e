//! Elementwise ops: unary math and activations, broadcasting binary math,
//! comparisons and logic, variadic Min/Max/Sum/Mean, Where and Cast.
//!
//! Every op here is a scalar function applied per output element; one
//! generic kernel (`broadcast_kernel`) serves them all, so an op is just its
//! CPU function and its WGSL expression side by side.

use crate::wgsl::{broadcast_index, f32_lit, kernel_1d, unravel};
use crate::{
    Attrs, CastMode, DType, Error, Input, KernelArg, LowerCtx, Lowering, Op, Phys, Pointwise, Result, Tensor,
    TensorRef, TypeInfo, arg, bail, ty, wgsl_round_fn,
};
use drift_numerics::E8M0Round;

/// The scalar function of an elementwise op.
#[derive(Clone, Debug, PartialEq)]
pub enum Func {
    // unary
    Relu,
    Sigmoid,
    Tanh,
    Erf,
    Gelu {
        tanh: bool,
    },
    LeakyRelu(f32),
    Elu(f32),
    Selu {
        alpha: f32,
        gamma: f32,
    },
    Celu(f32),
    ThresholdedRelu(f32),
    HardSigmoid {
        alpha: f32,
        beta: f32,
    },
    HardSwish,
    /// Swish (opset 24): `x * sigmoid(alpha * x)`.
    Swish(f32),
    Shrink {
        bias: f32,
        lambd: f32,
    },
    Softplus,
    Softsign,
    Mish,
    Abs,
    Neg,
    Exp,
    Log,
    Sqrt,
    Reciprocal,
    Floor,
    Ceil,
    Round,
    Sign,
    Sin,
    Cos,
    Tan,
    Asin,
    Acos,
    Atan,
    Sinh,
    Cosh,
    Asinh,
    Acosh,
    Atanh,
    Not,
    IsNaN,
    IsInf {
        pos: bool,
        neg: bool,
    },
    /// Clip with bounds known at compile time.
    Clip {
        min: f64,
        max: f64,
    },
    // binary
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Mod {
        fmod: bool,
    },
    Max,
    Min,
    Equal,
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
    And,
    Or,
    Xor,
    PRelu,
    BitShift {
        left: bool,
    },
    BitwiseAnd,
    BitwiseOr,
    BitwiseXor,
    BitwiseNot,
    // ternary
    Where,
}

impl Func {
    fn arity(&self) -> usize {
        use Func::*;
        match self {
            Add
            | Sub
            | Mul
            | Div
            | Pow
            | Mod { .. }
            | Max
            | Min
            | Equal
            | Less
            | LessOrEqual
            | Greater
            | GreaterOrEqual
            | And
            | Or
            | Xor
            | PRelu
            | BitShift { .. }
            | BitwiseAnd
            | BitwiseOr
            | BitwiseXor => 2,
            Where => 3,
            _ => 1,
        }
    }

    /// Output type is bool whatever the input type.
    fn yields_bool(&self) -> bool {
        use Func::*;
        matches!(
            self,
            Equal | Less | LessOrEqual | Greater | GreaterOrEqual | And | Or | Xor | Not | IsNaN | IsInf { .. }
        )
    }

    /// CPU reference on floats.
    fn eval_f(&self, a: &[f64]) -> f64 {
        use Func::*;
        let x = a[0];
        let b = |v: bool| v as i64 as f64;
        match self {
            Relu => x.max(0.0),
            Sigmoid => 1.0 / (1.0 + (-x).exp()),
            Tanh => x.tanh(),
            Erf => erf(x),
            Gelu { tanh: false } => 0.5 * x * (1.0 + erf(x / 2f64.sqrt())),
            Gelu { tanh: true } => {
                0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
            }
            LeakyRelu(al) => {
                if x >= 0.0 {
                    x
                } else {
                    *al as f64 * x
                }
            }
            Elu(al) => {
                if x >= 0.0 {
                    x
                } else {
                    *al as f64 * (x.exp() - 1.0)
                }
            }
            Selu { alpha, gamma } => *gamma as f64 * if x > 0.0 { x } else { *alpha as f64 * (x.exp() - 1.0) },
            Celu(al) => {
                let al = *al as f64;
                x.max(0.0) + (al * ((x / al).exp() - 1.0)).min(0.0)
            }
            ThresholdedRelu(al) => {
                if x > *al as f64 {
                    x
                } else {
                    0.0
                }
            }
            HardSigmoid { alpha, beta } => (*alpha as f64 * x + *beta as f64).clamp(0.0, 1.0),
            HardSwish => x * (x / 6.0 + 0.5).clamp(0.0, 1.0),
            Swish(al) => x / (1.0 + (-*al as f64 * x).exp()),
            Shrink { bias, lambd } => shrink(x, *bias as f64, *lambd as f64),
            Softplus => (x.exp()).ln_1p(),
            Softsign => x / (1.0 + x.abs()),
            Mish => x * (x.exp().ln_1p()).tanh(),
            Abs => x.abs(),
            Neg => -x,
            Exp => x.exp(),
            Log => x.ln(),
            Sqrt => x.sqrt(),
            Reciprocal => 1.0 / x,
            Floor => x.floor(),
            Ceil => x.ceil(),
            Round => x.round_ties_even(),
            Sign => {
                if x > 0.0 {
                    1.0
                } else if x < 0.0 {
                    -1.0
                } else {
                    0.0
                }
            }
            Sin => x.sin(),
            Cos => x.cos(),
            Tan => x.tan(),
            Asin => x.asin(),
            Acos => x.acos(),
            Atan => x.atan(),
            Sinh => x.sinh(),
            Cosh => x.cosh(),
            Asinh => x.asinh(),
            Acosh => x.acosh(),
            Atanh => x.atanh(),
            Not => b(x == 0.0),
            IsNaN => b(x.is_nan()),
            IsInf { pos, neg } => b((*pos && x == f64::INFINITY) || (*neg && x == f64::NEG_INFINITY)),
            Clip { min, max } => x.max(*min).min(*max),
            Add => x + a[1],
            Sub => x - a[1],
            Mul => x * a[1],
            Div => x / a[1],
            Pow => x.powf(a[1]),
            Mod { fmod: true } => x % a[1],
            Mod { fmod: false } => mod_floor(x, a[1]),
            Max => x.max(a[1]),
            Min => x.min(a[1]),
            Equal => b(x == a[1]),
            Less => b(x < a[1]),
            LessOrEqual => b(x <= a[1]),
            Greater => b(x > a[1]),
            GreaterOrEqual => b(x >= a[1]),
            And => b(x != 0.0 && a[1] != 0.0),
            Or => b(x != 0.0 || a[1] != 0.0),
            Xor => b((x != 0.0) != (a[1] != 0.0)),
            PRelu => {
                if x >= 0.0 {
                    x
                } else {
                    x * a[1]
                }
            }
            Where => {
                if x != 0.0 {
                    a[1]
                } else {
                    a[2]
                }
            }
            BitShift { .. } | BitwiseAnd | BitwiseOr | BitwiseXor | BitwiseNot => f64::NAN,
        }
    }

    /// CPU reference on integers; `None` where the op has no integer form.
    fn eval_i(&self, a: &[i64]) -> Option<i64> {
        use Func::*;
        let x = a[0];
        let b = |v: bool| v as i64;
        Some(match self {
            Relu => x.max(0),
            Abs => x.wrapping_abs(),
            Neg => x.wrapping_neg(),
            Sign => x.signum(),
            Not => b(x == 0),
            Clip { min, max } => x.max(*min as i64).min(*max as i64),
            Add => x.wrapping_add(a[1]),
            Sub => x.wrapping_sub(a[1]),
            Mul => x.wrapping_mul(a[1]),
            Div => {
                if a[1] == 0 {
                    0
                } else {
                    x.wrapping_div(a[1])
                }
            }
            Pow if a[1] >= 0 => x.wrapping_pow(a[1].min(u32::MAX as i64) as u32),
            Pow => (x as f64).powf(a[1] as f64) as i64,
            Shrink { bias, lambd } => shrink(x as f64, *bias as f64, *lambd as f64) as i64,
            Mod { fmod: true } => {
                if a[1] == 0 {
                    0
                } else {
                    x % a[1]
                }
            }
            Mod { fmod: false } => {
                if a[1] == 0 {
                    0
                } else {
                    ((x % a[1]) + a[1]) % a[1]
                }
            }
            Max => x.max(a[1]),
            Min => x.min(a[1]),
            Equal => b(x == a[1]),
            Less => b(x < a[1]),
            LessOrEqual => b(x <= a[1]),
            Greater => b(x > a[1]),
            GreaterOrEqual => b(x >= a[1]),
            And => b(x != 0 && a[1] != 0),
            Or => b(x != 0 || a[1] != 0),
            Xor => b((x != 0) != (a[1] != 0)),
            PRelu => {
                if x >= 0 {
                    x
                } else {
                    x * a[1]
                }
            }
            Where => {
                if x != 0 {
                    a[1]
                } else {
                    a[2]
                }
            }
            // Shifts past the width give 0 (left) or the sign (right); the
            // result is wrapped to the logical width by the caller.
            BitShift { left: true } => {
                if (0..64).contains(&a[1]) {
                    ((x as u64) << a[1]) as i64
                } else {
                    0
                }
            }
            BitShift { left: false } => {
                if a[1] < 0 {
                    if x < 0 { -1 } else { 0 }
                } else {
                    x >> a[1].min(63)
                }
            }
            BitwiseAnd => x & a[1],
            BitwiseOr => x | a[1],
            BitwiseXor => x ^ a[1],
            BitwiseNot => !x,
            _ => return None,
        })
    }

    /// WGSL expression over operand expressions `a`; `t` is the logical
    /// type of the first data operand (Where's condition is u32), whose
    /// physical type the expression has. Pow's exponent may be of any type.
    fn wgsl(&self, a: &[String], t: DType) -> Result<String> {
        use Func::*;
        let p = t.phys();
        let x = &a[0];
        let fl = p == Phys::F32;
        let b2u = |c: String| format!("select(0u, 1u, {c})");
        let zero = match p {
            Phys::F32 => "0.0",
            Phys::I32 => "0i",
            Phys::U32 => "0u",
        };
        let need_float = |e: String| if fl { Ok(e) } else { Err(Error::unsupported(format!("{self:?} on integers"))) };
        Ok(match self {
            Relu => format!("max({x}, {zero})"),
            Sigmoid => need_float(format!("(1.0 / (1.0 + exp(-{x})))"))?,
            Tanh => need_float(format!("tanh_f({x})"))?,
            Erf => need_float(format!("erf_f({x})"))?,
            Gelu { tanh: false } => need_float(format!("(0.5 * {x} * (1.0 + erf_f({x} * 0.70710678118654752)))"))?,
            Gelu { tanh: true } => need_float(format!(
                "(0.5 * {x} * (1.0 + tanh(clamp(0.7978845608028654 * ({x} + 0.044715 * {x} * {x} * {x}), -15.0, 15.0))))"
            ))?,
            LeakyRelu(al) => need_float(format!("select({} * {x}, {x}, {x} >= 0.0)", f32_lit(*al)))?,
            Elu(al) => need_float(format!("select({} * (exp({x}) - 1.0), {x}, {x} >= 0.0)", f32_lit(*al)))?,
            Selu { alpha, gamma } => need_float(format!(
                "({} * select({} * (exp({x}) - 1.0), {x}, {x} > 0.0))",
                f32_lit(*gamma),
                f32_lit(*alpha)
            ))?,
            Celu(al) => {
                need_float(format!("(max({x}, 0.0) + min(0.0, {al} * (exp({x} / {al}) - 1.0)))", al = f32_lit(*al)))?
            }
            ThresholdedRelu(al) => need_float(format!("select(0.0, {x}, {x} > {})", f32_lit(*al)))?,
            HardSigmoid { alpha, beta } => {
                need_float(format!("clamp({} * {x} + {}, 0.0, 1.0)", f32_lit(*alpha), f32_lit(*beta)))?
            }
            HardSwish => need_float(format!("({x} * clamp({x} / 6.0 + 0.5, 0.0, 1.0))"))?,
            Swish(al) => need_float(format!("({x} / (1.0 + exp({} * {x})))", f32_lit(-*al)))?,
            Shrink { bias, lambd } => {
                let v = format!("shrink_f(f32({x}), {}, {})", f32_lit(*bias), f32_lit(*lambd));
                if fl { v } else { format!("{}({v})", p.wgsl()) }
            }
            Softplus => need_float(format!("softplus_f({x})"))?,
            Softsign => need_float(format!("({x} / (1.0 + abs({x})))"))?,
            Mish => need_float(format!("({x} * tanh_f(softplus_f({x})))"))?,
            Abs => {
                if p == Phys::U32 {
                    x.clone()
                } else {
                    format!("abs({x})")
                }
            }
            Neg => match p {
                Phys::U32 => format!("(0u - {x})"),
                _ => format!("(-{x})"),
            },
            Exp => need_float(format!("exp({x})"))?,
            Log => need_float(format!("log({x})"))?,
            Sqrt => need_float(format!("sqrt({x})"))?,
            Reciprocal => need_float(format!("(1.0 / {x})"))?,
            Floor => need_float(format!("floor({x})"))?,
            Ceil => need_float(format!("ceil({x})"))?,
            Round => need_float(format!("round({x})"))?,
            Sign => match p {
                Phys::U32 => format!("min({x}, 1u)"),
                _ => format!("sign({x})"),
            },
            Sin => need_float(format!("sin({x})"))?,
            Cos => need_float(format!("cos({x})"))?,
            Tan => need_float(format!("tan({x})"))?,
            Asin => need_float(format!("asin({x})"))?,
            Acos => need_float(format!("acos({x})"))?,
            Atan => need_float(format!("atan({x})"))?,
            Sinh => need_float(format!("sinh({x})"))?,
            Cosh => need_float(format!("cosh({x})"))?,
            Asinh => need_float(format!("asinh({x})"))?,
            Acosh => need_float(format!("acosh({x})"))?,
            Atanh => need_float(format!("atanh({x})"))?,
            Not => b2u(format!("{x} == 0u")),
            IsNaN => b2u(format!("is_nan_f({x})")),
            IsInf { pos, neg } => b2u(format!(
                "(({pos} && {x} == bitcast<f32>(0x7f800000u)) || ({neg} && {x} == bitcast<f32>(0xff800000u)))"
            )),
            Clip { min, max } => format!("min(max({x}, {}), {})", crate::wgsl::lit(p, *min), crate::wgsl::lit(p, *max)),
            Add => format!("({x} + {})", a[1]),
            Sub => format!("({x} - {})", a[1]),
            Mul => format!("({x} * {})", a[1]),
            Div => match p {
                Phys::F32 => format!("({x} / {})", a[1]),
                _ => format!("select({x} / {y}, {zero}, {y} == {zero})", y = a[1]),
            },
            Pow => match p {
                Phys::F32 => format!("pow_f({x}, f32({}))", a[1]),
                Phys::I32 => format!("pow_i({x}, f32({}))", a[1]),
                Phys::U32 => format!("u32(pow_i(i32({x}), f32({})))", a[1]),
            },
            Mod { fmod } => match (p, fmod) {
                (Phys::F32, true) => format!("fmod_f({x}, {})", a[1]),
                (Phys::F32, false) => format!("mod_floor_f({x}, {})", a[1]),
                (_, true) => format!("select({x} % {y}, {zero}, {y} == {zero})", y = a[1]),
                (_, false) => format!("mod_floor_{}({x}, {})", p.wgsl(), a[1]),
            },
            Max => format!("max({x}, {})", a[1]),
            Min => format!("min({x}, {})", a[1]),
            Equal => b2u(format!("{x} == {}", a[1])),
            Less => b2u(format!("{x} < {}", a[1])),
            LessOrEqual => b2u(format!("{x} <= {}", a[1])),
            Greater => b2u(format!("{x} > {}", a[1])),
            GreaterOrEqual => b2u(format!("{x} >= {}", a[1])),
            And => b2u(format!("({x} != 0u) && ({} != 0u)", a[1])),
            Or => b2u(format!("({x} != 0u) || ({} != 0u)", a[1])),
            Xor => b2u(format!("({x} != 0u) != ({} != 0u)", a[1])),
            PRelu => format!("select({x} * {y}, {x}, {x} >= {zero})", y = a[1]),
            Where => format!("select({}, {}, {x} != 0u)", a[2], a[1]),
            BitShift { left } => bit_shift(x, &a[1], t, *left)?,
            BitwiseAnd => format!("({x} & {})", a[1]),
            BitwiseOr => format!("({x} | {})", a[1]),
            BitwiseXor => format!("({x} ^ {})", a[1]),
            BitwiseNot => format!("(~{x})"),
        })
    }
}

/// WGSL helper functions the expressions above may call.
const HELPERS: &str = "
fn erf_f(x: f32) -> f32 {
    // Abramowitz & Stegun 7.1.26 refined: |error| < 1.5e-7.
    let s = sign(x);
    let a = abs(x);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * exp(-a * a);
    return s * y;
}
fn log1p_f(u: f32) -> f32 {
    // log(1 + u) without losing u's low bits (Goldberg's correction).
    let w = 1.0 + u;
    if (w == 1.0) { return u; }
    return log(w) * (u / (w - 1.0));
}
fn softplus_f(x: f32) -> f32 {
    // max(x, 0) + log1p(exp(-|x|)): accurate for large negative x too.
    return max(x, 0.0) + log1p_f(exp(-abs(x)));
}
fn tanh_f(z: f32) -> f32 {
    // tanh's exp-based form cancels near 0; the series is exact there.
    if (abs(z) < 0.125) {
        let z2 = z * z;
        return z * (1.0 + z2 * (-0.33333333333 + z2 * (0.13333333333 - z2 * 0.05396825397)));
    }
    return tanh(clamp(z, -15.0, 15.0));
}
fn shrink_f(x: f32, bias: f32, lambd: f32) -> f32 {
    return select(select(0.0, x - bias, x > lambd), x + bias, x < -lambd);
}
fn pow_i(x: i32, y: f32) -> i32 {
    // Integral non-negative exponents: exact, wrapping like numpy's integer
    // power; others go through floats and truncate like astype(int).
    if (y < 0.0 || floor(y) != y || y > 2147483647.0) { return i32(pow_f(f32(x), y)); }
    var n = u32(y);
    var b = x;
    var r = 1;
    while (n > 0u) {
        if ((n & 1u) == 1u) { r = r * b; }
        b = b * b;
        n = n >> 1u;
    }
    return r;
}
fn mod_floor_f(x: f32, y: f32) -> f32 {
    // numpy.mod: the result takes the divisor's sign (zeros too).
    let r = fmod_f(x, y);
    if (r == 0.0) { return select(0.0, -0.0, y < 0.0); }
    return select(r, r + y, (r < 0.0) != (y < 0.0));
}
fn is_nan_f(x: f32) -> bool {
    let b = bitcast<u32>(x);
    return (b & 0x7f800000u) == 0x7f800000u && (b & 0x7fffffu) != 0u;
}
fn pow_f(x: f32, y: f32) -> f32 {
    // pow() is undefined for x < 0; integer exponents keep their sign rule.
    if (y == 0.0) { return 1.0; }
    let m = pow(abs(x), y);
    if (x >= 0.0) { return m; }
    if (floor(y) != y) { return bitcast<f32>(0x7fc00000u); }
    let odd = (i32(y) & 1) == 1;
    return select(m, -m, odd);
}
fn fmod_f(x: f32, y: f32) -> f32 {
    // A finite x is its own remainder by an infinity (x - inf * 0 is NaN).
    if (abs(y) == bitcast<f32>(0x7f800000u) && abs(x) < bitcast<f32>(0x7f800000u)) { return x; }
    return x - y * trunc(x / y);
}
fn mod_floor_i32(x: i32, y: i32) -> i32 {
    if (y == 0) { return 0; }
    let r = x % y;
    return select(r, r + y, r != 0 && ((r < 0) != (y < 0)));
}
fn mod_floor_u32(x: u32, y: u32) -> u32 {
    return select(x % y, 0u, y == 0u);
}
";

/// Shrink: `x + bias` below `-lambd`, `x - bias` above `lambd`, else 0.
fn shrink(x: f64, bias: f64, lambd: f64) -> f64 {
    if x < -lambd {
        x + bias
    } else if x > lambd {
        x - bias
    } else {
        0.0
    }
}

/// numpy.mod on floats: the remainder takes the divisor's sign.
fn mod_floor(x: f64, y: f64) -> f64 {
    let r = x % y;
    if r == 0.0 {
        0f64.copysign(y)
    } else if (r < 0.0) != (y < 0.0) {
        r + y
    } else {
        r
    }
}

/// BitShift on the physical form of logical type `t`: shifts by a negative
/// amount or by the logical width or more give 0 (left) or the sign
/// (right), as ONNX's reference defines; left shifts wrap to the width.
fn bit_shift(x: &str, y: &str, t: DType, left: bool) -> Result<String> {
    let wrap = |e: String| narrow(&e, t, CastMode::default()).0;
    Ok(match (t.phys(), left) {
        (Phys::F32, _) => return Err(Error::unsupported(format!("BitShift on {t}"))),
        (Phys::U32, true) => format!("select({}, 0u, {y} >= 32u)", wrap(format!("({x} << min({y}, 31u))"))),
        (Phys::U32, false) => format!("select(({x} >> min({y}, 31u)), 0u, {y} >= 32u)"),
        (Phys::I32, true) => {
            format!("select({}, 0i, {y} < 0i || {y} >= 32i)", wrap(format!("({x} << u32(clamp({y}, 0i, 31i)))")))
        }
        (Phys::I32, false) => format!("({x} >> u32(select(clamp({y}, 0i, 31i), 31i, {y} < 0i)))"),
    })
}

fn erf(x: f64) -> f64 {
    // erf via the complementary series is overkill for folding; use the
    // standard high-precision rational approximation (W. J. Cody).
    let t = 1.0 / (1.0 + 0.5 * x.abs());
    let y = t
        * (-x * x - 1.26551223
            + t * (1.00002368
                + t * (0.37409196
                    + t * (0.09678418
                        + t * (-0.18628806
                            + t * (0.27886807
                                + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))))
            .exp();
    if x >= 0.0 { 1.0 - y } else { y - 1.0 }
}

/// An elementwise op: a scalar function over broadcast inputs.
#[derive(Debug)]
pub struct Elementwise {
    pub func: Func,
    /// Variadic ops (Sum, Max, Min, Mean) fold several inputs with `func`.
    pub variadic: bool,
    /// Mean divides the folded sum by the input count.
    pub mean: bool,
}

/// numpy-style broadcast of several shapes.
pub fn broadcast_shapes(shapes: &[&[usize]]) -> Result<Vec<usize>> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![1usize; rank];
    for s in shapes {
        let off = rank - s.len();
        for (d, &n) in s.iter().enumerate() {
            let o = &mut out[off + d];
            if *o == 1 {
                *o = n;
            } else if n != 1 && n != *o {
                bail!("shapes {:?} cannot be broadcast together", shapes);
            }
        }
    }
    Ok(out)
}

impl Elementwise {
    fn out_dtype(&self, first_data: DType) -> DType {
        if self.func.yields_bool() { DType::Bool } else { first_data }
    }

    /// Index of the operand whose type decides the computation type.
    fn data_operand(&self) -> usize {
        if self.func == Func::Where { 1 } else { 0 }
    }
}

impl Op for Elementwise {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let n = if self.variadic { inputs.len() } else { self.func.arity() };
        if inputs.len() < n || n == 0 {
            bail!("expects {} inputs, got {}", n, inputs.len());
        }
        let tys: Vec<&TypeInfo> = (0..n).map(|i| ty(inputs, i)).collect::<Result<_>>()?;
        let shapes = self.operand_shapes(tys.iter().map(|t| t.shape.as_slice()).collect());
        let shape = broadcast_shapes(&shapes.iter().map(Vec::as_slice).collect::<Vec<_>>())?;
        Ok(vec![TypeInfo::new(self.out_dtype(tys[self.data_operand()].dtype), shape)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let n = if self.variadic { inputs.len() } else { self.func.arity() };
        let ts: Vec<&Tensor> = (0..n).map(|i| arg(inputs, i)).collect::<Result<_>>()?;
        let shapes = self.operand_shapes(ts.iter().map(|t| t.shape.as_slice()).collect());
        let shape = broadcast_shapes(&shapes.iter().map(Vec::as_slice).collect::<Vec<_>>())?;
        let data_ty = ts[self.data_operand()].dtype;
        let out_ty = self.out_dtype(data_ty);
        let total: usize = shape.iter().product();
        let idx: Vec<Vec<usize>> = shapes.iter().map(|s| broadcast_indices(&shape, s, total)).collect();
        if data_ty.is_float() {
            let vals: Vec<Vec<f64>> = ts.iter().map(|t| t.to_f64()).collect();
            let mut out = Vec::with_capacity(total);
            for e in 0..total {
                let args: Vec<f64> = (0..n).map(|k| vals[k][idx[k][e]]).collect();
                out.push(self.fold_f(&args));
            }
            Ok(vec![Tensor::from_f64(out_ty, shape, out)])
        } else {
            let vals: Vec<Vec<i64>> = ts.iter().map(|t| t.to_i64()).collect();
            let mut out = Vec::with_capacity(total);
            for e in 0..total {
                let args: Vec<i64> = (0..n).map(|k| vals[k][idx[k][e]]).collect();
                out.push(self.fold_i(&args)?);
            }
            Ok(vec![Tensor::from_i64(out_ty, shape, out)])
        }
    }

    fn pointwise(&self, cx: &LowerCtx, operands: &[String]) -> Option<Pointwise> {
        let n_in = if self.variadic { cx.inputs.len() } else { self.func.arity() };
        let in_shapes: Vec<&[usize]> =
            (0..n_in).map(|k| cx.input(k).map(|t| t.shape.as_slice())).collect::<Result<_>>().ok()?;
        let expr = self.wgsl_fold(operands.get(..n_in)?, cx.input(self.data_operand()).ok()?.dtype).ok()?;
        Some(Pointwise { expr, helpers: HELPERS.to_string(), operand_shapes: self.operand_shapes(in_shapes) })
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let out = cx.output(0);
        let n_in = if self.variadic { cx.inputs.len() } else { self.func.arity() };
        let names: Vec<String> = (0..n_in).map(|i| format!("x{i}")).collect();
        let mut body = unravel("c", "i", &out.shape);
        let mut operands = Vec::new();
        let in_shapes: Vec<&[usize]> =
            (0..n_in).map(|k| cx.input(k).map(|t| t.shape.as_slice())).collect::<Result<_>>()?;
        let shapes = self.operand_shapes(in_shapes);
        for (k, name) in names.iter().enumerate() {
            let shape = &shapes[k];
            let index = if shape == &out.shape { "i".to_string() } else { broadcast_index("c", &out.shape, shape) };
            body += &format!("    let a{k} = ld_{name}({index});\n");
            operands.push(format!("a{k}"));
        }
        let expr = self.wgsl_fold(&operands, cx.input(self.data_operand())?.dtype)?;
        body += &format!("    st_y(i, {expr});\n");
        // Operands of the output's own shape are read at `i` only: they may
        // share memory with the output (in-place).
        let mut args: Vec<KernelArg> = names
            .iter()
            .enumerate()
            .map(|(k, nm)| {
                let arg = KernelArg::new(nm, TensorRef::Input(k));
                if shapes[k] == out.shape { arg.pointwise() } else { arg }
            })
            .collect();
        args.push(KernelArg::new("y", TensorRef::Output(0)).pointwise().stored_once());
        let name = format!("{:?}", self.func).to_lowercase();
        let name = name.split([' ', '(', '{']).next().unwrap_or("eltwise").to_string();
        Ok(Lowering::one(kernel_1d(&name, args, out.numel(), HELPERS, &body)))
    }
}

/// `x` → `y`, each element read and written by its own thread only.
fn pointwise_xy() -> Vec<KernelArg> {
    vec![
        KernelArg::new("x", TensorRef::Input(0)).pointwise(),
        KernelArg::new("y", TensorRef::Output(0)).pointwise().stored_once(),
    ]
}

impl Elementwise {
    /// Operand shapes for broadcasting. PRelu before opset 7 broadcast a
    /// 1-D slope of C values along axis 1 (channels), not the last axis.
    fn operand_shapes(&self, shapes: Vec<&[usize]>) -> Vec<Vec<usize>> {
        let mut out: Vec<Vec<usize>> = shapes.iter().map(|s| s.to_vec()).collect();
        if self.func == Func::PRelu && broadcast_shapes(&shapes).is_err() {
            let (x, slope) = (shapes[0], shapes[1]);
            if slope.len() == 1 && x.len() > 2 && x[1] == slope[0] {
                out[1] = vec![slope[0]];
                out[1].extend(std::iter::repeat_n(1, x.len() - 2));
            }
        }
        out
    }

    fn fold_f(&self, a: &[f64]) -> f64 {
        if !self.variadic {
            return self.func.eval_f(a);
        }
        let mut acc = a[0];
        for &x in &a[1..] {
            acc = self.func.eval_f(&[acc, x]);
        }
        if self.mean { acc / a.len() as f64 } else { acc }
    }

    fn fold_i(&self, a: &[i64]) -> Result<i64> {
        let f = |args: &[i64]| {
            self.func.eval_i(args).ok_or_else(|| Error::unsupported(format!("{:?} on integers", self.func)))
        };
        if !self.variadic {
            return f(a);
        }
        let mut acc = a[0];
        for &x in &a[1..] {
            acc = f(&[acc, x])?;
        }
        Ok(if self.mean { acc / a.len() as i64 } else { acc })
    }

    fn wgsl_fold(&self, a: &[String], t: DType) -> Result<String> {
        let p = t.phys();
        if !self.variadic {
            return self.func.wgsl(a, t);
        }
        let mut acc = a[0].clone();
        for x in &a[1..] {
            acc = self.func.wgsl(&[acc, x.clone()], t)?;
        }
        if self.mean {
            acc = format!("({acc} / {}({}))", p.wgsl(), a.len());
        }
        Ok(acc)
    }
}

/// For each element of `out_shape`, the linear index into a tensor of
/// `in_shape` broadcast to it.
pub fn broadcast_indices(out_shape: &[usize], in_shape: &[usize], total: usize) -> Vec<usize> {
    let st = crate::wgsl::strides(in_shape);
    let ost = crate::wgsl::strides(out_shape);
    let off = out_shape.len() - in_shape.len();
    (0..total)
        .map(|e| {
            let mut idx = 0;
            for (d, &n) in in_shape.iter().enumerate() {
                if n != 1 {
                    idx += ((e / ost[d + off]) % out_shape[d + off]) * st[d];
                }
            }
            idx
        })
        .collect()
}

/// Cast between element types. `mode` carries the `saturate` and
/// `round_mode` attributes, which only matter for float8 targets.
#[derive(Debug)]
pub struct Cast {
    pub to: DType,
    pub mode: CastMode,
}

impl Op for Cast {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        Ok(vec![TypeInfo::new(self.to, ty(inputs, 0)?.shape.clone())])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        Ok(vec![arg(inputs, 0)?.cast_mode(self.to, self.mode)])
    }

    fn pointwise(&self, cx: &LowerCtx, operands: &[String]) -> Option<Pointwise> {
        let (expr, helpers) = cast_expr(operands.first()?, cx.input(0).ok()?.dtype, self.to, self.mode);
        Some(Pointwise { expr, helpers, operand_shapes: vec![cx.input(0).ok()?.shape.clone()] })
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let from = cx.input(0)?.dtype;
        let (expr, helpers) = cast_expr("ld_x(i)", from, self.to, self.mode);
        let args = pointwise_xy();
        Ok(Lowering::one(kernel_1d("cast", args, cx.output(0).numel(), &helpers, &format!("    st_y(i, {expr});"))))
    }
}

/// WGSL converting expression `x` of logical type `from` to `to`, both in
/// their physical forms, rounding to the target's precision as ONNX's Cast
/// does. Returns the expression and the helper functions it calls.
pub fn cast_expr(x: &str, from: DType, to: DType, mode: CastMode) -> (String, String) {
    let (pf, pt) = (from.phys(), to.phys());
    let converted = if to == DType::Bool {
        match pf {
            Phys::F32 => format!("select(0u, 1u, {x} != 0.0)"),
            Phys::I32 => format!("select(0u, 1u, {x} != 0i)"),
            Phys::U32 => format!("select(0u, 1u, {x} != 0u)"),
        }
    } else if pf == pt {
        x.to_string()
    } else if pf == Phys::F32 && pt == Phys::U32 && to.bits() < 32 {
        // Narrow unsigned targets wrap like a C cast through a signed
        // integer (numpy: -1.0 -> 255); WGSL's u32() would clamp to 0.
        format!("u32(i32({x}))")
    } else {
        format!("{}({x})", pt.wgsl())
    };
    narrow(&converted, to, mode)
}

/// Rounds a physical value to a narrower logical type (f16, float8, int8,
/// ...): the expression and the helper functions it needs.
pub fn narrow(x: &str, to: DType, mode: CastMode) -> (String, String) {
    if let Some((name, helpers)) = wgsl_round_fn(to, mode) {
        return (format!("{name}({x})"), helpers);
    }
    let e = match to.bits() {
        b if b >= 32 || to == DType::Bool => x.to_string(),
        b if to.phys() == Phys::I32 => format!("((({x}) << {s}u) >> {s}u)", s = 32 - b),
        b => format!("(({x}) & {:#x}u)", (1u32 << b) - 1),
    };
    (e, String::new())
}

/// Builds an elementwise op from its ONNX type and attributes.
pub fn build(op_type: &str, a: &Attrs) -> Result<Box<dyn Op>> {
    use Func::*;
    let simple = |func| -> Result<Box<dyn Op>> { Ok(Box::new(Elementwise { func, variadic: false, mean: false })) };
    let variadic = |func, mean| -> Result<Box<dyn Op>> { Ok(Box::new(Elementwise { func, variadic: true, mean })) };
    match op_type {
        "Relu" => simple(Relu),
        "Sigmoid" => simple(Sigmoid),
        "Tanh" => simple(Tanh),
        "Erf" => simple(Erf),
        "Gelu" => simple(Gelu { tanh: a.str("approximate", "none")? == "tanh" }),
        "LeakyRelu" => simple(LeakyRelu(a.float("alpha", 0.01)?)),
        "Elu" => simple(Elu(a.float("alpha", 1.0)?)),
        "Selu" => simple(Selu { alpha: a.float("alpha", 1.673_263_2)?, gamma: a.float("gamma", 1.050_701)? }),
        "Celu" => simple(Celu(a.float("alpha", 1.0)?)),
        "ThresholdedRelu" => simple(ThresholdedRelu(a.float("alpha", 1.0)?)),
        "HardSigmoid" => simple(HardSigmoid { alpha: a.float("alpha", 0.2)?, beta: a.float("beta", 0.5)? }),
        "HardSwish" => simple(HardSwish),
        "Swish" => simple(Swish(a.float("alpha", 1.0)?)),
        "Shrink" => simple(Shrink { bias: a.float("bias", 0.0)?, lambd: a.float("lambd", 0.5)? }),
        "BitCast" => {
            let to = a.int_opt("to")?.ok_or_else(|| Error::msg("attribute 'to' is required"))?;
            Ok(Box::new(BitCast { to: DType::from_onnx(to as i32)? }))
        }
        "Softplus" => simple(Softplus),
        "Softsign" => simple(Softsign),
        "Mish" => simple(Mish),
        "Abs" => simple(Abs),
        "Neg" => simple(Neg),
        "Exp" => simple(Exp),
        "Log" => simple(Log),
        "Sqrt" => simple(Sqrt),
        "Reciprocal" => simple(Reciprocal),
        "Floor" => simple(Floor),
        "Ceil" => simple(Ceil),
        "Round" => simple(Round),
        "Sign" => simple(Sign),
        "Sin" => simple(Sin),
        "Cos" => simple(Cos),
        "Tan" => simple(Tan),
        "Asin" => simple(Asin),
        "Acos" => simple(Acos),
        "Atan" => simple(Atan),
        "Sinh" => simple(Sinh),
        "Cosh" => simple(Cosh),
        "Asinh" => simple(Asinh),
        "Acosh" => simple(Acosh),
        "Atanh" => simple(Atanh),
        "Not" => simple(Not),
        "IsNaN" => simple(IsNaN),
        "IsInf" => simple(IsInf { pos: a.int("detect_positive", 1)? != 0, neg: a.int("detect_negative", 1)? != 0 }),
        "Add" => simple(Add),
        "Sub" => simple(Sub),
        "Mul" => simple(Mul),
        "Div" => simple(Div),
        "Pow" => simple(Pow),
        "Mod" => simple(Mod { fmod: a.int("fmod", 0)? != 0 }),
        "Equal" => simple(Equal),
        "Less" => simple(Less),
        "LessOrEqual" => simple(LessOrEqual),
        "Greater" => simple(Greater),
        "GreaterOrEqual" => simple(GreaterOrEqual),
        "And" => simple(And),
        "Or" => simple(Or),
        "Xor" => simple(Xor),
        "PRelu" => simple(PRelu),
        "Where" => simple(Where),
        "BitShift" => simple(BitShift { left: a.str("direction", "")? == "LEFT" }),
        "BitwiseAnd" => simple(BitwiseAnd),
        "BitwiseOr" => simple(BitwiseOr),
        "BitwiseXor" => simple(BitwiseXor),
        "BitwiseNot" => simple(BitwiseNot),
        "Max" => variadic(Max, false),
        "Min" => variadic(Min, false),
        "Sum" => variadic(Add, false),
        "Mean" => variadic(Add, true),
        "CastLike" => Ok(Box::new(CastLike { mode: cast_mode(a)? })),
        "Cast" => {
            let to = a.int_opt("to")?.ok_or_else(|| Error::msg("attribute 'to' is required"))?;
            Ok(Box::new(Cast { to: DType::from_onnx(to as i32)?, mode: cast_mode(a)? }))
        }
        _ => Err(Error::unsupported(op_type.to_string())),
    }
}

/// Clip: bounds come from attributes (opset < 11) or constant inputs.
#[derive(Debug)]
pub struct ClipOp {
    pub attr_min: Option<f32>,
    pub attr_max: Option<f32>,
}

impl ClipOp {
    fn bounds(&self, min: Option<&Tensor>, max: Option<&Tensor>, dtype: DType) -> (f64, f64) {
        let lo = min.map(|t| t.to_f64()[0]).or(self.attr_min.map(|v| v as f64));
        let hi = max.map(|t| t.to_f64()[0]).or(self.attr_max.map(|v| v as f64));
        let (dlo, dhi) =
            if dtype.is_float() { (f64::NEG_INFINITY, f64::INFINITY) } else { (i64::MIN as f64, i64::MAX as f64) };
        (lo.unwrap_or(dlo), hi.unwrap_or(dhi))
    }

    fn func(&self, min: Option<&Tensor>, max: Option<&Tensor>, dtype: DType) -> Elementwise {
        let (min, max) = self.bounds(min, max, dtype);
        Elementwise { func: Func::Clip { min, max }, variadic: false, mean: false }
    }
}

impl Op for ClipOp {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        Ok(vec![ty(inputs, 0)?.clone()])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let x = arg(inputs, 0)?;
        let get = |i: usize| inputs.get(i).copied().flatten();
        self.func(get(1), get(2), x.dtype).eval(&[Some(x)])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let min = if cx.has_input(1) { Some(cx.const_input(1, "min")?) } else { None };
        let max = if cx.has_input(2) { Some(cx.const_input(2, "max")?) } else { None };
        let inner = LowerCtx { inputs: cx.inputs[..1].to_vec(), outputs: cx.outputs.clone(), target: cx.target };
        self.func(min, max, cx.input(0)?.dtype).lower(&inner)
    }

    fn pointwise(&self, cx: &LowerCtx, operands: &[String]) -> Option<Pointwise> {
        let min = if cx.has_input(1) { Some(cx.value(1)?) } else { None };
        let max = if cx.has_input(2) { Some(cx.value(2)?) } else { None };
        let inner = LowerCtx { inputs: cx.inputs[..1].to_vec(), outputs: cx.outputs.clone(), target: cx.target };
        self.func(min, max, cx.input(0).ok()?.dtype).pointwise(&inner, operands)
    }
}

pub fn build_clip(a: &Attrs) -> Result<Box<dyn Op>> {
    Ok(Box::new(ClipOp { attr_min: a.float_opt("min")?, attr_max: a.float_opt("max")? }))
}

/// Cast's `saturate` and `round_mode` attributes (opsets 19 and 25).
pub fn cast_mode(a: &Attrs) -> Result<CastMode> {
    let round = a.str("round_mode", "up")?;
    let e8m0 = E8M0Round::parse(round)
        .ok_or_else(|| Error::msg(format!("attribute 'round_mode' is '{round}', expected up, down or nearest")))?;
    Ok(CastMode { saturate: a.int("saturate", 1)? != 0, e8m0 })
}

/// CastLike: Cast to the element type of input 1 (whose values are unused).
#[derive(Debug)]
pub struct CastLike {
    pub mode: CastMode,
}

impl Op for CastLike {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        Cast { to: ty(inputs, 1)?.dtype, mode: self.mode }.infer(inputs)
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        Cast { to: arg(inputs, 1)?.dtype, mode: self.mode }.eval(inputs)
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        Cast { to: cx.input(1)?.dtype, mode: self.mode }.lower(cx)
    }

    fn pointwise(&self, cx: &LowerCtx, operands: &[String]) -> Option<Pointwise> {
        let mut pw = Cast { to: cx.input(1).ok()?.dtype, mode: self.mode }.pointwise(cx, operands)?;
        // Input 1 gives only its type; it is never read.
        pw.operand_shapes.push(cx.input(1).ok()?.shape.clone());
        Some(pw)
    }
}

/// BitCast (opset 26): reinterprets the bits of each element as another
/// type of the same width. Exact on the GPU for types up to 32 bits: the
/// element's logical bits are rebuilt from its 32-bit word (float16 and
/// float8 re-encoded, narrow integers masked) and decoded as the target.
#[derive(Debug)]
pub struct BitCast {
    pub to: DType,
}

impl Op for BitCast {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let x = ty(inputs, 0)?;
        if x.dtype.bits() != self.to.bits() {
            bail!(
                "BitCast from {} ({} bits) to {} ({} bits): widths differ",
                x.dtype,
                x.dtype.bits(),
                self.to,
                self.to.bits()
            );
        }
        Ok(vec![TypeInfo::new(self.to, x.shape.clone())])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let x = arg(inputs, 0)?;
        Ok(vec![Tensor::from_raw(self.to, x.shape.clone(), &x.to_raw())?])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let from = cx.input(0)?.dtype;
        if from.bits() > 32 {
            return Err(Error::unsupported(format!("BitCast of 64-bit {from}: the GPU holds it in 32 bits")));
        }
        let (bits, mut helpers) = crate::dtype::wgsl_to_bits(from, "ld_x(i)");
        let (y, more) = crate::dtype::wgsl_from_bits(self.to, &bits);
        if !helpers.contains(&more) {
            helpers += &more;
        }
        let args = pointwise_xy();
        Ok(Lowering::one(kernel_1d("bitcast", args, cx.output(0).numel(), &helpers, &format!("    st_y(i, {y});"))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Attr, Data};

    fn run(op: &str, a: &[(&str, Attr)], ins: &[Tensor]) -> Tensor {
        let attrs = Attrs(a.iter().map(|(k, v)| (k.to_string(), v.clone())).collect());
        let op = build(op, &attrs).unwrap();
        op.eval(&ins.iter().map(Some).collect::<Vec<_>>()).unwrap().remove(0)
    }

    fn f32s(v: &[f32]) -> Tensor {
        Tensor::from_f32(vec![v.len()], v.to_vec())
    }

    fn ints(dtype: DType, v: &[i64]) -> Tensor {
        Tensor::from_i64(dtype, vec![v.len()], v.to_vec())
    }

    fn same(got: &[f64], want: &[f64]) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            let ok = (g.is_nan() && w.is_nan()) || (g == w && g.is_sign_negative() == w.is_sign_negative());
            assert!(ok || (g - w).abs() <= 1e-6 * w.abs(), "{got:?} vs {want:?}");
        }
    }

    // Expected values: onnx.reference.ReferenceEvaluator (onnx 1.23.2).

    #[test]
    fn mod_of_floats_takes_the_divisors_sign() {
        let x = f32s(&[0.0, -0.0, -3.0, 3.0, 1.0, -1.0, 5.5, -5.5, f32::INFINITY]);
        let inf = f32::INFINITY;
        let y = f32s(&[-2.0, 2.0, inf, -inf, 0.0, inf, -2.0, 2.0, 2.0]);
        let z = run("Mod", &[], &[x, y]);
        same(&z.to_f64(), &[-0.0, 0.0, f64::INFINITY, f64::NEG_INFINITY, f64::NAN, f64::INFINITY, -0.5, 0.5, f64::NAN]);
    }

    #[test]
    fn bit_shift_follows_the_logical_width() {
        let left = [("direction", Attr::Str("LEFT".into()))];
        let right = [("direction", Attr::Str("RIGHT".into()))];
        let z = run("BitShift", &left, &[ints(DType::I8, &[1, -1, 64, 3, 5]), ints(DType::I8, &[1, 7, 1, 8, -1])]);
        assert_eq!(z.to_i64(), [2, -128, -128, 0, 0]);
        let z = run("BitShift", &right, &[ints(DType::I8, &[-128, -1, 64, 3, -5]), ints(DType::I8, &[1, 7, 9, 8, -1])]);
        assert_eq!(z.to_i64(), [-64, -1, 0, 0, -1]);
        let z = run("BitShift", &left, &[ints(DType::U16, &[1, 0x8001, 3]), ints(DType::U16, &[15, 1, 16])]);
        assert_eq!(z.to_i64(), [32768, 2, 0]);
    }

    #[test]
    fn integer_pow_shrink_swish() {
        let z = run("Pow", &[], &[ints(DType::I32, &[2, -3, 5]), ints(DType::I32, &[10, 3, 0])]);
        assert_eq!(z.to_i64(), [1024, -27, 1]);
        let z = run(
            "Shrink",
            &[("bias", Attr::Float(0.5)), ("lambd", Attr::Float(0.5))],
            &[f32s(&[-2.0, -0.5, 0.2, 0.6, 3.0])],
        );
        same(&z.to_f64(), &[-1.5, 0.0, 0.0, 0.10000002384185791, 2.5]);
        let z = run("Swish", &[("alpha", Attr::Float(0.5))], &[f32s(&[-2.0, 0.0, 1.0, 3.0])]);
        let want = [-0.5378828048706055, 0.0, 0.622459352016449, 2.452723503112793];
        z.to_f64().iter().zip(want).for_each(|(g, w)| assert!((g - w).abs() < 1e-6, "{g} vs {w}"));
    }

    #[test]
    fn bitcast_reinterprets_narrow_types() {
        let h = Tensor::from_f64(DType::F16, vec![4], vec![1.0, -2.5, 65504.0, f64::INFINITY]);
        let z = run("BitCast", &[("to", Attr::Int(5))], &[h]);
        assert_eq!(z.to_i64(), [15360, -16128, 31743, 31744]);
        let z = run("BitCast", &[("to", Attr::Int(17))], &[ints(DType::U8, &[0x38, 0x7f, 0x80, 0x01])]);
        same(&z.to_f64(), &[1.0, f64::NAN, -0.0, 0.001953125]);
        let attrs = Attrs([("to".to_string(), Attr::Int(6))].into_iter().collect());
        let op = build("BitCast", &attrs).unwrap();
        let x = TypeInfo::new(DType::F16, vec![2]);
        assert!(op.infer(&[Some(Input { ty: &x, value: None })]).unwrap_err().to_string().contains("widths differ"));
    }

    #[test]
    fn cast_to_sub_byte_integers_wraps_like_ml_dtypes() {
        let x = f32s(&[-9.0, 300.0, 7.6]);
        assert_eq!(run("Cast", &[("to", Attr::Int(21))], &[x]).to_i64(), [7, 12, 7]);
        let x = f32s(&[-3.0, 2.0, 1.9, -2.1]);
        assert_eq!(run("Cast", &[("to", Attr::Int(26))], &[x]).to_i64(), [1, -2, 1, -2]);
        // And the kernel goes through i32 for narrow unsigned targets.
        let (e, helpers) = cast_expr("v", DType::F32, DType::U4, CastMode::default());
        assert_eq!((e.as_str(), helpers.as_str()), ("((u32(i32(v))) & 0xfu)", ""));
    }

    #[test]
    fn cast_to_float8_honours_saturate() {
        let x = f32s(&[1e6, -1e6, 0.47892547]);
        let sat = run("Cast", &[("to", Attr::Int(17))], std::slice::from_ref(&x));
        assert_eq!(sat.data, Data::F32(vec![448.0, -448.0, 0.46875]));
        let raw = run("Cast", &[("to", Attr::Int(17)), ("saturate", Attr::Int(0))], &[x]);
        same(&raw.to_f64(), &[f64::NAN, f64::NAN, 0.46875]);
        let e8 =
            run("Cast", &[("to", Attr::Int(24)), ("round_mode", Attr::Str("up".into()))], &[f32s(&[0.0, 0.124, 1.1])]);
        same(&e8.to_f64(), &[2f64.powi(-127), 0.125, 2.0]);
    }
}
