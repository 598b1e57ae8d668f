//! WGSL helper functions with the kernel IR's element semantics
//! ([`crate::ir::scalar`]), emitted into a shader only when its body uses
//! them.
//!
//! WGSL's own `exp`, `log`, `sin`, `cos`, `tanh`, `pow` have loose accuracy
//! requirements (`sin`/`cos`: 2⁻¹¹ absolute; `exp`: 3 + 2|x| ulp; `tanh`
//! and `pow` inherited from `exp`/`log` forms that cancel near 0) and differ
//! between drivers, and WGSL has no `erf`; `max`/`min` do not define NaN.
//! So every transcendental is a polynomial here, with the same reductions
//! as the CPU generator (`codegen::cranelift::math`), tested against
//! `ir::scalar` to ≤ 1e-6 relative (≤ 2e-7 absolute near zeros of `sin`,
//! `cos`, `log`) on a real device by the runtime's tests:
//! - `k_exp`: Cody–Waite `x = n·ln2 + r` (the high part of ln2 with 9
//!   significant bits, so `n·hi` is exact even where WGSL's `fma` is not
//!   fused), degree-7 Taylor for `e^r`, `2^n` as two exponent-field
//!   scalings; results below the smallest normal are 0.
//! - `k_log`: `x = m·2^e` with `m ∈ [√½, √2)`, `log m = 2·atanh(s)`,
//!   `s = (m−1)/(m+1)`, odd series to s¹³; `e·ln2` in two parts.
//! - `k_trig` (sin, cos): `n = round(x·2/π)`, three-part Cody–Waite
//!   reduction (parts of 8 and 11 significant bits), Taylor polynomials on
//!   `[−π/4, π/4]`, quadrant selection (accurate to |x| ≈ 1e4, positions ×
//!   frequencies in RoPE).
//! - `k_tanh`, `k_erf`: as the CPU generator (Taylor near 0; `exp` forms,
//!   Numerical Recipes' `erfc` beyond).
//! - `k_pow`: repeated multiplication for integer and half-integer
//!   exponents up to 16 (times `sqrt x` for the half), `exp(y·log|x|)`
//!   otherwise (relative error ≈ 1e-7 + 6e-8·|y·ln x|: the product's
//!   rounding), with `powf`'s signs and special cases (negative base with
//!   integer exponent, `x⁰ = 1`, `1^y = 1`).
//! - `k_max`/`k_min`: NaN-propagating; `k_f2i`: saturating, NaN → 0.

use std::collections::BTreeSet;

/// A helper function name (`k_exp`, …).
pub type Helper = &'static str;

/// The source of `name` and the helpers it calls.
fn source(name: Helper) -> (&'static str, &'static [Helper]) {
    match name {
        "k_isnan" => (
            "fn k_isnan(x: f32) -> bool {\n  return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u;\n}\n",
            &[],
        ),
        "k_nan" => (
            "fn k_nan() -> f32 {\n  return bitcast<f32>(0x7fc00000u);\n}\n",
            &[],
        ),
        "k_inf" => (
            "fn k_inf() -> f32 {\n  return bitcast<f32>(0x7f800000u);\n}\n",
            &[],
        ),
        "k_max" => (
            "fn k_max(a: f32, b: f32) -> f32 {\n  if (k_isnan(a) || k_isnan(b)) { return k_nan(); }\n  return select(b, a, a >= b);\n}\n",
            &["k_isnan", "k_nan"],
        ),
        "k_min" => (
            "fn k_min(a: f32, b: f32) -> f32 {\n  if (k_isnan(a) || k_isnan(b)) { return k_nan(); }\n  return select(b, a, a <= b);\n}\n",
            &["k_isnan", "k_nan"],
        ),
        "k_f2i" => (
            "fn k_f2i(x: f32) -> i32 {\n  if (k_isnan(x)) { return 0i; }\n  if (x >= 2147483648.0f) { return 2147483647i; }\n  if (x <= -2147483648.0f) { return bitcast<i32>(0x80000000u); }\n  return i32(x);\n}\n",
            &["k_isnan"],
        ),
        "k_exp" => (
            r"fn k_exp(x: f32) -> f32 {
  if (k_isnan(x)) { return x; }
  if (x < -87.33654f) { return 0.0f; }
  let xc = min(x, 100.0f);
  let n = round(xc * 1.4426950f);
  // The select keeps drivers from re-associating the two steps into one
  // inexact product n·ln2 (Mesa does, for float ops not marked exact).
  let r1 = fma(n, -0.693359375f, xc);
  let r = fma(n, 2.1219444e-4f, select(r1, 0.0f, k_isnan(r1)));
  var p = 1.9841270e-4f;
  p = fma(p, r, 1.3888889e-3f);
  p = fma(p, r, 8.3333333e-3f);
  p = fma(p, r, 4.1666668e-2f);
  p = fma(p, r, 1.6666667e-1f);
  p = fma(p, r, 0.5f);
  p = fma(p, r, 1.0f);
  p = fma(p, r, 1.0f);
  let ni = i32(n);
  let h = ni >> 1u;
  let s1 = bitcast<f32>(u32(h + 127i) << 23u);
  let s2 = bitcast<f32>(u32(ni - h + 127i) << 23u);
  return p * s1 * s2;
}
",
            &["k_isnan"],
        ),
        "k_log" => (
            r"fn k_log(x: f32) -> f32 {
  if (k_isnan(x) || x < 0.0f) { return k_nan(); }
  if (x == 0.0f) { return -k_inf(); }
  if (x == k_inf()) { return x; }
  var y = x;
  var e = 0i;
  if (y < 1.1754944e-38f) { y = y * 16777216.0f; e = -24i; }
  let bits = bitcast<u32>(y);
  e = e + i32((bits >> 23u) & 0xffu) - 127i;
  var m = bitcast<f32>((bits & 0x007fffffu) | 0x3f800000u);
  if (m > 1.4142135f) { m = m * 0.5f; e = e + 1i; }
  let s = (m - 1.0f) / (m + 1.0f);
  let z = s * s;
  var p = 0.15384616f;
  p = fma(p, z, 0.18181819f);
  p = fma(p, z, 0.22222222f);
  p = fma(p, z, 0.2857143f);
  p = fma(p, z, 0.4f);
  p = fma(p, z, 0.6666667f);
  let ef = f32(e);
  let t = fma(s * z, p, fma(ef, 1.4286068e-6f, 2.0f * s));
  return fma(ef, 0.693145751953125f, t);
}
",
            &["k_isnan", "k_nan", "k_inf"],
        ),
        "k_trig" => (
            r"fn k_trig(x: f32, cosine: bool) -> f32 {
  if (k_isnan(x) || abs(x) == k_inf()) { return k_nan(); }
  let n = round(x * 0.63661975f);
  var r = fma(n, -1.5703125f, x);
  r = fma(n, -4.8375129699707031e-4f, r);
  r = fma(n, -7.5497899548918821e-8f, r);
  let z = r * r;
  var sp = -2.5052108e-8f;
  sp = fma(sp, z, 2.7557319e-6f);
  sp = fma(sp, z, -1.9841270e-4f);
  sp = fma(sp, z, 8.3333333e-3f);
  sp = fma(sp, z, -1.6666667e-1f);
  let sv = fma(r * z, sp, r);
  var cp = -2.7557319e-7f;
  cp = fma(cp, z, 2.4801587e-5f);
  cp = fma(cp, z, -1.3888889e-3f);
  cp = fma(cp, z, 4.1666668e-2f);
  cp = fma(cp, z, -0.5f);
  let cv = fma(z, cp, 1.0f);
  var q = i32(n) & 3i;
  if (cosine) { q = (q + 1i) & 3i; }
  switch q {
    case 0i: { return sv; }
    case 1i: { return cv; }
    case 2i: { return -sv; }
    default: { return -cv; }
  }
}
",
            &["k_isnan", "k_nan", "k_inf"],
        ),
        "k_tanh" => (
            r"fn k_tanh(x: f32) -> f32 {
  let a = abs(x);
  if (a < 0.55f) {
    let z = x * x;
    var p = -1.4558344e-3f;
    p = fma(p, z, 3.5921280e-3f);
    p = fma(p, z, -8.8632355e-3f);
    p = fma(p, z, 2.1869488e-2f);
    p = fma(p, z, -5.3968254e-2f);
    p = fma(p, z, 0.13333334f);
    p = fma(p, z, -0.33333334f);
    p = fma(p, z, 1.0f);
    return x * p;
  }
  if (k_isnan(x)) { return x; }
  let e = k_exp(2.0f * a);
  let t = 1.0f - 2.0f / (e + 1.0f);
  return select(t, -t, x < 0.0f);
}
",
            &["k_exp", "k_isnan"],
        ),
        "k_erf" => (
            r"fn k_erf(x: f32) -> f32 {
  let a0 = abs(x);
  if (a0 < 0.5f) {
    let z = x * x;
    var p = -1.4925650e-5f;
    p = fma(p, z, 1.20553326e-4f);
    p = fma(p, z, -8.5483269e-4f);
    p = fma(p, z, 5.2239776e-3f);
    p = fma(p, z, -2.6866170e-2f);
    p = fma(p, z, 0.11283792f);
    p = fma(p, z, -0.37612638f);
    p = fma(p, z, 1.1283792f);
    return x * p;
  }
  if (k_isnan(x)) { return x; }
  let a = min(a0, 10.0f);
  let t = 1.0f / fma(a, 0.5f, 1.0f);
  var q = 0.17087277f;
  q = fma(q, t, -0.82215223f);
  q = fma(q, t, 1.4885159f);
  q = fma(q, t, -1.135204f);
  q = fma(q, t, 0.27886807f);
  q = fma(q, t, -0.18628806f);
  q = fma(q, t, 0.09678418f);
  q = fma(q, t, 0.37409196f);
  q = fma(q, t, 1.0000237f);
  q = fma(q, t, -1.2655122f);
  let erfc = t * k_exp(fma(-a, a, q));
  let v = 1.0f - erfc;
  return select(v, -v, x < 0.0f);
}
",
            &["k_exp", "k_isnan"],
        ),
        "k_pow" => (
            r"fn k_pow(x: f32, y: f32) -> f32 {
  if (y == 0.0f || x == 1.0f) { return 1.0f; }
  if (k_isnan(x) || k_isnan(y)) { return k_nan(); }
  let yi = round(y);
  let is_int = yi == y && abs(y) < 16777216.0f;
  let odd = is_int && (abs(yi) % 2.0f) == 1.0f;
  if (x < 0.0f && !is_int) { return k_nan(); }
  var r: f32;
  let half = round(2.0f * y) == 2.0f * y && abs(y) <= 16.0f && x > 0.0f;
  if ((is_int || half) && abs(y) <= 16.0f) {
    var n = u32(floor(abs(y)));
    var b = abs(x);
    r = 1.0f;
    loop {
      if (n == 0u) { break; }
      if ((n & 1u) == 1u) { r = r * b; }
      n = n >> 1u;
      b = b * b;
    }
    if (!is_int) { r = r * sqrt(x); }
    if (y < 0.0f) { r = 1.0f / r; }
  } else if (x == 0.0f) {
    r = select(k_inf(), 0.0f, y > 0.0f);
  } else {
    r = k_exp(y * k_log(abs(x)));
  }
  if (x < 0.0f && odd) { r = -r; }
  if (x == 0.0f && odd && bitcast<u32>(x) == 0x80000000u) { r = -r; }
  return r;
}
",
            &["k_exp", "k_log", "k_isnan", "k_nan", "k_inf"],
        ),
        other => panic!("no WGSL helper `{other}`"),
    }
}

/// The sources of `used` and everything they call, each once, callees first.
pub fn prelude(used: &BTreeSet<Helper>) -> String {
    fn visit(h: Helper, seen: &mut Vec<Helper>) {
        if seen.contains(&h) {
            return;
        }
        for &d in source(h).1 {
            visit(d, seen);
        }
        seen.push(h);
    }
    let mut order = Vec::new();
    for &h in used {
        visit(h, &mut order);
    }
    order
        .iter()
        .map(|h| source(h).0)
        .collect::<Vec<_>>()
        .join("")
}

#[cfg(test)]
mod tests {
    /// The constants written into the shaders, checked against their
    /// definitions (f32-rounded; spelled as in the shaders, hence the
    /// allowances).
    #[test]
    #[allow(clippy::approx_constant, clippy::excessive_precision)]
    fn polynomial_constants() {
        use std::f64::consts::{FRAC_2_SQRT_PI, LN_2};
        // exp's ln2 = 0.693359375 (9 significant bits: n·hi is exact
        // without a fused multiply-add, which WGSL does not promise) + lo.
        assert!((0.693_359_375f64 - 2.121_944_4e-4f32 as f64 - LN_2).abs() < 1e-11);
        let c = FRAC_2_SQRT_PI as f32;
        for (got, want) in [
            (1.128_379_2f32, c),
            (-0.376_126_38, -c / 3.0),
            (0.112_837_92, c / 10.0),
            (-0.026_866_17, -c / 42.0),
            (5.223_977_6e-3, c / 216.0),
            (-8.548_327e-4, -c / 1320.0),
            (1.205_533_26e-4, c / 9360.0),
            (-1.492_565e-5, -c / 75600.0),
        ] {
            assert!((got - want).abs() <= 5e-7 * want.abs(), "{got} vs {want}");
        }
        // tanh's Taylor coefficients.
        for (got, want) in [
            (-0.333_333_34f32, -1.0 / 3.0),
            (0.133_333_34, 2.0 / 15.0),
            (-5.396_825_4e-2, -17.0 / 315.0),
            (2.186_948_8e-2, 62.0 / 2835.0),
            (-8.863_235_5e-3, -1382.0 / 155_925.0),
            (3.592_128e-3, 21844.0 / 6_081_075.0),
            (-1.455_834_4e-3, -929_569.0 / 638_512_875.0),
        ] {
            assert!(
                (got as f64 - want).abs() <= 1e-7 * want.abs(),
                "{got} vs {want}"
            );
        }
        // The three-part π/2 and the two-part ln2 of log.
        let p = 1.570_312_5f64 + 4.837_512_969_970_703e-4 + 7.549_789_954_891_882e-8;
        assert!((p - std::f64::consts::FRAC_PI_2).abs() < 1e-15);
        let l = 0.693_145_751_953_125f32 as f64 + 1.428_606_8e-6f32 as f64;
        assert!((l - LN_2).abs() < 1e-12);
    }
}
