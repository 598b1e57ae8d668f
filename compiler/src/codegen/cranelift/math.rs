//! Elementary functions as Cranelift IR, identical for one lane (`f32`) and
//! four (`f32x4`), so a vector loop and its scalar tail give the same bits.
//!
//! Accuracy (checked against `ir::scalar` in the tests of this module):
//! ≤ 1e-6 relative over the normal range of each function; `exp` results
//! below the smallest normal f32 (x < -87.34) are flushed to zero.
//! - `exp`: Cody–Waite reduction `x = n·ln2 + r` (`|r| ≤ ln2/2`, `n` rounded
//!   with the 1.5·2²³ trick), a degree-7
//!   Taylor polynomial for `e^r` (truncation < 1e-8), `2^n` built in the
//!   exponent bits in two halves so `n` up to ±250 never overflows the field.
//! - `tanh`: odd Taylor polynomial to x¹⁵ for `|x| < 0.55`, else
//!   `1 − 2/(e^{2|x|} + 1)` with the sign restored.
//! - `erf`: odd Taylor polynomial to x¹⁵ for `|x| < 0.5`, else `1 − erfc`
//!   with the Chebyshev-fitted `erfc(z) = t·exp(−z² + P(t))`, `t = 1/(1+z/2)`
//!   (Numerical Recipes §6.2, fractional error < 1.2e-7).

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::types::{F32, F32X4, I32, I32X4};
use cranelift_codegen::ir::{InstBuilder, MemFlagsData, Type, Value};
use cranelift_frontend::FunctionBuilder;

/// A builder for one width: scalar (`lanes == 1`) or `f32x4`.
pub struct Math<'a, 'b> {
    pub b: &'a mut FunctionBuilder<'b>,
    pub lanes: u8,
}

impl Math<'_, '_> {
    pub fn fty(&self) -> Type {
        if self.lanes == 1 { F32 } else { F32X4 }
    }

    pub fn ity(&self) -> Type {
        if self.lanes == 1 { I32 } else { I32X4 }
    }

    /// An f32 constant at this width.
    pub fn fc(&mut self, v: f32) -> Value {
        let s = self.b.ins().f32const(v);
        if self.lanes == 1 {
            s
        } else {
            self.b.ins().splat(F32X4, s)
        }
    }

    /// An i32 constant at this width.
    pub fn ic(&mut self, v: i32) -> Value {
        let s = self.b.ins().iconst(I32, i64::from(v));
        if self.lanes == 1 {
            s
        } else {
            self.b.ins().splat(I32X4, s)
        }
    }

    /// `cond ? a : b` for a float comparison result at this width.
    pub fn fsel(&mut self, cond: Value, a: Value, b: Value) -> Value {
        if self.lanes == 1 {
            self.b.ins().select(cond, a, b)
        } else {
            let mask = self.b.ins().bitcast(F32X4, lane_flags(), cond);
            self.b.ins().bitselect(mask, a, b)
        }
    }

    /// `a·b + c`: one fused instruction where the CPU has FMA, else a
    /// multiply and an add (Cranelift's x64 backend has no vector FMA
    /// fallback). Rounding differs by at most an ulp per step.
    fn mul_add(&mut self, a: Value, b: Value, c: Value) -> Value {
        if has_fma() {
            self.b.ins().fma(a, b, c)
        } else {
            let p = self.b.ins().fmul(a, b);
            self.b.ins().fadd(p, c)
        }
    }

    /// `|m|` with the sign of `x` (`m ≥ 0`); x64 has no vector `fcopysign`.
    fn with_sign_of(&mut self, m: Value, x: Value) -> Value {
        if self.lanes == 1 {
            return self.b.ins().fcopysign(m, x);
        }
        let sign_bit = self.fc(-0.0);
        let s = self.b.ins().band(x, sign_bit);
        self.b.ins().bor(m, s)
    }

    /// Horner's rule with FMA: `c[0] + x·(c[1] + x·(…))`.
    fn poly(&mut self, x: Value, coeffs: &[f32]) -> Value {
        let (last, rest) = coeffs.split_last().expect("a polynomial has coefficients");
        let mut acc = self.fc(*last);
        for &c in rest.iter().rev() {
            let c = self.fc(c);
            acc = self.mul_add(acc, x, c);
        }
        acc
    }

    fn bits_to_float(&mut self, bits: Value) -> Value {
        let flags = if self.lanes == 1 {
            MemFlagsData::new()
        } else {
            lane_flags()
        };
        let ty = self.fty();
        self.b.ins().bitcast(ty, flags, bits)
    }

    /// `2^n` for an integer `n` in [-252, 254] (as i32 lanes), as a
    /// product of two normal powers of two.
    fn pow2(&mut self, ni: Value) -> (Value, Value) {
        // Shift amounts are scalars even for vectors.
        let one = self.b.ins().iconst(I32, 1);
        let h = self.b.ins().sshr(ni, one);
        let rest = self.b.ins().isub(ni, h);
        let bias = self.ic(127);
        let shift = self.b.ins().iconst(I32, 23);
        let scale = |v: Value, m: &mut Self| {
            let e = m.b.ins().iadd(v, bias);
            let bits = m.b.ins().ishl(e, shift);
            m.bits_to_float(bits)
        };
        let s1 = scale(h, self);
        let s2 = scale(rest, self);
        (s1, s2)
    }

    pub fn exp(&mut self, x: Value) -> Value {
        const LN2_HI: f32 = std::f32::consts::LN_2;
        const LN2_LO: f32 = (std::f64::consts::LN_2 - LN2_HI as f64) as f32;
        // Results below the smallest normal f32 flush to zero: producing
        // a subnormal costs a microcode assist per lane on x86 (~100
        // cycles), and masked attention scores are all -inf. Clamp so `n`
        // stays in pow2's range; fmin/fmax propagate NaN.
        const MIN_NORMAL_LN: f32 = -87.336_54;
        let lo = self.fc(MIN_NORMAL_LN);
        let hi = self.fc(100.0);
        let tiny = self.b.ins().fcmp(FloatCC::LessThan, x, lo);
        let x = self.b.ins().fmax(x, lo);
        let x = self.b.ins().fmin(x, hi);
        let log2e = self.fc(std::f32::consts::LOG2_E);
        let t = self.b.ins().fmul(x, log2e);
        // Round to nearest by adding 1.5·2²³: the sum's low mantissa bits
        // are the integer `n` (no float→int conversion needed; |t| < 2²²).
        let magic = self.fc(12_582_912.0);
        let j = self.b.ins().fadd(t, magic);
        let n = self.b.ins().fsub(j, magic);
        let flags = if self.lanes == 1 {
            MemFlagsData::new()
        } else {
            lane_flags()
        };
        let ity = self.ity();
        let jbits = self.b.ins().bitcast(ity, flags, j);
        let magic_bits = self.ic(0x4B40_0000);
        let ni = self.b.ins().isub(jbits, magic_bits);
        let neg_hi = self.fc(-LN2_HI);
        let neg_lo = self.fc(-LN2_LO);
        let r = self.mul_add(n, neg_hi, x);
        let r = self.mul_add(n, neg_lo, r);
        let p = self.poly(
            r,
            &[
                1.0,
                1.0,
                1.0 / 2.0,
                1.0 / 6.0,
                1.0 / 24.0,
                1.0 / 120.0,
                1.0 / 720.0,
                1.0 / 5040.0,
            ],
        );
        let (s1, s2) = self.pow2(ni);
        let y = self.b.ins().fmul(p, s1);
        let y = self.b.ins().fmul(y, s2);
        let zero = self.fc(0.0);
        self.fsel(tiny, zero, y)
    }

    pub fn tanh(&mut self, x: Value) -> Value {
        let z = self.b.ins().fmul(x, x);
        let p = self.poly(
            z,
            &[
                1.0,
                -1.0 / 3.0,
                2.0 / 15.0,
                -17.0 / 315.0,
                62.0 / 2835.0,
                -1382.0 / 155_925.0,
                21844.0 / 6_081_075.0,
                -929_569.0 / 638_512_875.0,
            ],
        );
        let small = self.b.ins().fmul(x, p);
        let a = self.b.ins().fabs(x);
        let two_a = self.b.ins().fadd(a, a);
        let e = self.exp(two_a);
        let one = self.fc(1.0);
        let two = self.fc(2.0);
        let d = self.b.ins().fadd(e, one);
        let q = self.b.ins().fdiv(two, d);
        let large = self.b.ins().fsub(one, q);
        let large = self.with_sign_of(large, x);
        let cut = self.fc(0.55);
        let is_small = self.b.ins().fcmp(FloatCC::LessThan, a, cut);
        self.fsel(is_small, small, large)
    }

    pub fn erf(&mut self, x: Value) -> Value {
        const C: f32 = std::f32::consts::FRAC_2_SQRT_PI;
        let z = self.b.ins().fmul(x, x);
        let p = self.poly(
            z,
            &[
                C,
                -C / 3.0,
                C / 10.0,
                -C / 42.0,
                C / 216.0,
                -C / 1320.0,
                C / 9360.0,
                -C / 75600.0,
            ],
        );
        let small = self.b.ins().fmul(x, p);
        let a = self.b.ins().fabs(x);
        let ten = self.fc(10.0);
        let a = self.b.ins().fmin(a, ten);
        let one = self.fc(1.0);
        let half = self.fc(0.5);
        let d = self.mul_add(a, half, one);
        let t = self.b.ins().fdiv(one, d);
        let q = self.poly(
            t,
            &[
                -1.265_512_2,
                1.000_023_7,
                0.374_091_96,
                0.096_784_18,
                -0.186_288_06,
                0.278_868_07,
                -1.135_204,
                1.488_515_9,
                -0.822_152_23,
                0.170_872_77,
            ],
        );
        let na = self.b.ins().fneg(a);
        let arg = self.mul_add(na, a, q);
        let e = self.exp(arg);
        let erfc = self.b.ins().fmul(t, e);
        let large = self.b.ins().fsub(one, erfc);
        let large = self.with_sign_of(large, x);
        let is_small = self.b.ins().fcmp(FloatCC::LessThan, a, half);
        self.fsel(is_small, small, large)
    }
}

/// Whether the host has fused multiply-add (what `cranelift_native`
/// enables for the JIT).
fn has_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        true
    }
}

/// Lane-order flags for bitcasts between vector types.
pub fn lane_flags() -> MemFlagsData {
    MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little)
}
