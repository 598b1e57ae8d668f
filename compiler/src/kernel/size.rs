//! Symbolic sizes for views: polynomials over the length symbols.
//!
//! A [`Dim`] is linear (`past+seq`), but a stride over a buffer of shape
//! `[batch, 4, seq, past+seq]` is a product (`4*past*seq + 4*seq*seq`), so
//! views carry [`Size`]s: integer polynomials in the symbols, evaluated
//! once per run from the bound lengths.

use crate::ir::Dim;
use std::collections::BTreeMap;
use std::fmt;

/// A polynomial with integer coefficients in the length symbols (`batch`, `seq`, ...): element counts, strides and offsets.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Size {
    /// Monomial (sorted symbol names, repeated for powers) -> coefficient; never 0.
    terms: BTreeMap<Vec<String>, i64>,
}

impl Size {
    /// The constant `v`.
    pub fn c(v: i64) -> Size {
        let mut terms = BTreeMap::new();
        if v != 0 {
            terms.insert(Vec::new(), v);
        }
        Size { terms }
    }

    /// The constant 0.
    pub fn zero() -> Size {
        Size::default()
    }

    /// The constant 1.
    pub fn one() -> Size {
        Size::c(1)
    }

    /// The symbol `name`.
    pub fn sym(name: &str) -> Size {
        Size {
            terms: BTreeMap::from([(vec![name.to_string()], 1)]),
        }
    }

    /// The size of a linear [`Dim`].
    pub fn from_dim(d: &Dim) -> Size {
        const BIG: usize = 1 << 20;
        let syms: Vec<&str> = d.symbols().collect();
        let base = d.eval(&|_| Some(BIG)).expect("dims are non-negative") as i64;
        let mut out = Size::zero();
        let mut lin = 0i64;
        for s in &syms {
            let v = d
                .eval(&|t| Some(if t == *s { BIG + 1 } else { BIG }))
                .expect("dims are non-negative") as i64;
            let coef = v - base;
            lin += coef * BIG as i64;
            out = out + Size::sym(s).scale(coef);
        }
        out + Size::c(base - lin)
    }

    /// Whether the polynomial is identically 0.
    pub fn is_zero(&self) -> bool {
        self.terms.is_empty()
    }

    /// The value when the polynomial has no symbols.
    pub fn as_const(&self) -> Option<i64> {
        match self.terms.len() {
            0 => Some(0),
            1 => self.terms.get(&Vec::new()).copied(),
            _ => None,
        }
    }

    /// The integer `f` with `self == other · f`, if there is one.
    pub fn ratio(&self, other: &Size) -> Option<i64> {
        let (m, c) = other.terms.iter().next()?;
        let a = self.terms.get(m).copied().unwrap_or(0);
        if a % c != 0 {
            return None;
        }
        let f = a / c;
        (other.clone().scale(f) == *self).then_some(f)
    }

    /// `self · k`.
    pub fn scale(mut self, k: i64) -> Size {
        if k == 0 {
            return Size::zero();
        }
        for c in self.terms.values_mut() {
            *c *= k;
        }
        self
    }

    /// Value with the symbols bound; `None` if one is unbound.
    pub fn eval(&self, env: &dyn Fn(&str) -> Option<usize>) -> Option<i64> {
        let mut total = 0i64;
        for (m, c) in &self.terms {
            let mut v = *c;
            for s in m {
                v *= env(s)? as i64;
            }
            total += v;
        }
        Some(total)
    }

    fn normalised(mut self) -> Size {
        self.terms.retain(|_, c| *c != 0);
        self
    }
}

impl std::ops::Add for Size {
    type Output = Size;
    fn add(mut self, rhs: Size) -> Size {
        for (m, c) in rhs.terms {
            *self.terms.entry(m).or_insert(0) += c;
        }
        self.normalised()
    }
}

impl std::ops::Sub for Size {
    type Output = Size;
    fn sub(self, rhs: Size) -> Size {
        self + rhs.scale(-1)
    }
}

impl std::ops::Mul for &Size {
    type Output = Size;
    fn mul(self, rhs: &Size) -> Size {
        let mut out = Size::zero();
        for (m1, c1) in &self.terms {
            for (m2, c2) in &rhs.terms {
                let mut m: Vec<String> = m1.iter().chain(m2).cloned().collect();
                m.sort();
                *out.terms.entry(m).or_insert(0) += c1 * c2;
            }
        }
        out.normalised()
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.terms.is_empty() {
            return f.write_str("0");
        }
        // Symbolic terms first (highest degree first), then the constant.
        let mut terms: Vec<(&Vec<String>, &i64)> = self.terms.iter().collect();
        terms.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(b.0)));
        for (i, &(m, &c)) in terms.iter().enumerate() {
            let neg = c < 0;
            if i > 0 {
                f.write_str(if neg { "-" } else { "+" })?;
            } else if neg {
                f.write_str("-")?;
            }
            let a = c.abs();
            if m.is_empty() {
                write!(f, "{a}")?;
            } else {
                if a != 1 {
                    write!(f, "{a}*")?;
                }
                f.write_str(&m.join("*"))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_and_display() {
        let d = Dim::sym("past") + Dim::sym("seq");
        let s = Size::from_dim(&d);
        assert_eq!(s.to_string(), "past+seq");
        let stride = &(&s * &Size::sym("seq")) * &Size::c(4);
        assert_eq!(stride.to_string(), "4*past*seq+4*seq*seq");
        let env = |x: &str| Some(if x == "past" { 2 } else { 3 });
        assert_eq!(stride.eval(&env), Some(60));
        assert_eq!(
            Size::from_dim(&(Dim::sym("seq") - Dim::c(1))).to_string(),
            "seq-1"
        );
        assert_eq!(Size::from_dim(&Dim::c(64)).as_const(), Some(64));
    }
}
