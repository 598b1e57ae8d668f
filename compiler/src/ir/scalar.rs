//! The IR's numeric contract, element by element: what each unary and
//! binary op computes on one f32, i32 or bool. Every executor (the
//! reference interpreter, the kernel-IR interpreter, code generators) and
//! constant folding use these, so they cannot drift apart.
//!
//! - f32 `+ - * /` are plain f32 operations; `exp log sqrt rsqrt tanh erf
//!   sin cos` and `pow` are computed in f64 and rounded once.
//! - `max`/`min` propagate NaN.
//! - i32 arithmetic wraps; i32 `pow` is computed in f64 and truncated;
//!   i32 division truncates toward zero (callers reject a zero divisor).

use super::op::{BinaryOp, UnaryOp};

/// In f64, rounded once.
fn via_f64(x: f32, f: impl Fn(f64) -> f64) -> f32 {
    f(f64::from(x)) as f32
}

/// NaN-propagating maximum.
pub fn nan_max(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else if a >= b {
        a
    } else {
        b
    }
}

/// NaN-propagating minimum.
pub fn nan_min(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else if a <= b {
        a
    } else {
        b
    }
}

/// `op` on f32, or None where it is not defined (`not`).
pub fn f32_unary(op: UnaryOp) -> Option<fn(f32) -> f32> {
    use UnaryOp::*;
    Some(match op {
        Neg => |a| -a,
        Abs => f32::abs,
        Floor => f32::floor,
        Recip => |a| 1.0 / a,
        Exp => |a| via_f64(a, f64::exp),
        Log => |a| via_f64(a, f64::ln),
        Sqrt => |a| via_f64(a, f64::sqrt),
        Rsqrt => |a| via_f64(a, |y| 1.0 / y.sqrt()),
        Tanh => |a| via_f64(a, f64::tanh),
        Erf => |a| via_f64(a, erf),
        Sin => |a| via_f64(a, f64::sin),
        Cos => |a| via_f64(a, f64::cos),
        Not => return None,
    })
}

/// `op` on i32 (`neg`, `abs`, wrapping), or None.
pub fn i32_unary(op: UnaryOp) -> Option<fn(i32) -> i32> {
    match op {
        UnaryOp::Neg => Some(i32::wrapping_neg),
        UnaryOp::Abs => Some(i32::wrapping_abs),
        _ => None,
    }
}

/// Arithmetic `op` on f32 (not comparisons or logic), or None.
pub fn f32_binary(op: BinaryOp) -> Option<fn(f32, f32) -> f32> {
    use BinaryOp::*;
    Some(match op {
        Add => |p, q| p + q,
        Sub => |p, q| p - q,
        Mul => |p, q| p * q,
        Div => |p, q| p / q,
        Max => nan_max,
        Min => nan_min,
        Pow => |p, q| f64::from(p).powf(f64::from(q)) as f32,
        Lt | Le | Eq | And | Or => return None,
    })
}

/// Arithmetic `op` on i32 (wrapping; `div` assumes a non-zero divisor), or None.
pub fn i32_binary(op: BinaryOp) -> Option<fn(i32, i32) -> i32> {
    use BinaryOp::*;
    Some(match op {
        Add => i32::wrapping_add,
        Sub => i32::wrapping_sub,
        Mul => i32::wrapping_mul,
        Div => i32::wrapping_div,
        Max => i32::max,
        Min => i32::min,
        Pow => |p, q| f64::from(p).powf(f64::from(q)) as i32,
        Lt | Le | Eq | And | Or => return None,
    })
}

/// A comparison `op` (`lt`, `le`, `eq`) on f32 or i32, or None.
pub fn compare<T: PartialOrd>(op: BinaryOp) -> Option<fn(T, T) -> bool> {
    match op {
        BinaryOp::Lt => Some(|p, q| p < q),
        BinaryOp::Le => Some(|p, q| p <= q),
        BinaryOp::Eq => Some(|p, q| p == q),
        _ => None,
    }
}

/// A logical `op` (`and`, `or`) on bool, or None.
pub fn bool_binary(op: BinaryOp) -> Option<fn(bool, bool) -> bool> {
    match op {
        BinaryOp::And => Some(|p, q| p && q),
        BinaryOp::Or => Some(|p, q| p || q),
        _ => None,
    }
}

/// The error function in f64, accurate to a few ulps.
///
/// Uses the everywhere-positive series (Abramowitz & Stegun 7.1.6)
/// `erf(x) = 2/sqrt(pi) * exp(-x^2) * sum_{n>=0} 2^n x^(2n+1) / (1*3*...*(2n+1))`:
/// every term is positive, so there is no cancellation. For `|x| >= 6`,
/// `1 - erf(|x|) < 2.2e-17` and the result is `±1`.
pub fn erf(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    let a = x.abs();
    if a >= 6.0 {
        return 1.0f64.copysign(x);
    }
    let a2 = a * a;
    let (mut term, mut sum) = (a, a);
    let mut n = 0.0;
    while term > sum * 1e-18 {
        n += 1.0;
        term *= 2.0 * a2 / (2.0 * n + 1.0);
        sum += term;
    }
    let r = (std::f64::consts::FRAC_2_SQRT_PI * (-a2).exp() * sum).min(1.0);
    r.copysign(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_reference_values() {
        // Values from Python's math.erf (correctly rounded libm).
        let cases = [
            (0.0, 0.0),
            (1e-10, 1.1283791670955126e-10),
            (0.1, 0.1124629160182849),
            (0.5, 0.5204998778130465),
            (1.0, 0.8427007929497149),
            (1.5, 0.9661051464753108),
            (2.0, 0.9953222650189527),
            (3.0, 0.9999779095030014),
            (4.5, 0.9999999998033839),
            (5.9, 0.9999999999999999),
            (-0.7, -0.6778011938374184),
        ];
        for (x, want) in cases {
            let got = erf(x);
            assert!(
                (got - want).abs() <= 4.0 * f64::EPSILON * want.abs().max(1e-300),
                "erf({x}) = {got}, want {want}"
            );
        }
        assert_eq!(erf(7.0), 1.0);
        assert_eq!(erf(-7.0), -1.0);
        assert!(erf(f64::NAN).is_nan());
        assert_eq!(erf(-0.0).to_bits(), (-0.0f64).to_bits());
    }
}
