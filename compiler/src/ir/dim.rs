//! Symbolic dimensions: a constant plus a linear combination of named symbols.
//!
//! Model sizes (d_model, heads, vocab) are constants baked into code; lengths
//! (`batch`, `seq`, `past`, `src`) are symbols bound at run time, so one
//! compiled graph serves every sequence length and decode step. Linear
//! expressions are enough for every shape a transformer needs (`past + seq`).

use std::collections::BTreeMap;
use std::fmt;

/// Well-known symbols. Any name is allowed; these are the ones the lowering uses.
/// Batch size.
pub const BATCH: &str = "batch";
/// Number of new tokens in this step.
pub const SEQ: &str = "seq";
/// Number of tokens already in the KV cache.
pub const PAST: &str = "past";
/// Length of the encoder output a decoder cross-attends to.
pub const SRC: &str = "src";

/// A symbolic dimension: `constant + Σ coeff·symbol`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Dim {
    constant: i64,
    terms: BTreeMap<String, i64>,
}

impl Dim {
    /// The constant dim `value`.
    pub fn c(value: usize) -> Dim {
        Dim {
            constant: value as i64,
            terms: BTreeMap::new(),
        }
    }

    /// The symbol `name` (coefficient 1, constant 0).
    pub fn sym(name: &str) -> Dim {
        Dim {
            constant: 0,
            terms: BTreeMap::from([(name.to_string(), 1)]),
        }
    }

    /// The value when the dim has no symbols.
    pub fn as_const(&self) -> Option<usize> {
        (self.terms.is_empty() && self.constant >= 0).then_some(self.constant as usize)
    }

    /// Whether the dim is the constant 1.
    pub fn is_one(&self) -> bool {
        self.as_const() == Some(1)
    }

    /// The symbols with a non-zero coefficient, in name order.
    pub fn symbols(&self) -> impl Iterator<Item = &str> {
        self.terms.keys().map(String::as_str)
    }

    /// The lone symbol of a dim that is exactly one symbol (`seq`, not `past+seq`).
    pub fn as_symbol(&self) -> Option<&str> {
        match (self.constant, self.terms.len()) {
            (0, 1) => self
                .terms
                .iter()
                .next()
                .filter(|(_, c)| **c == 1)
                .map(|(s, _)| s.as_str()),
            _ => None,
        }
    }

    /// Evaluate with symbol values; `None` if a symbol is unbound or the result is negative.
    pub fn eval(&self, env: &dyn Fn(&str) -> Option<usize>) -> Option<usize> {
        let mut v = self.constant;
        for (s, c) in &self.terms {
            v += c * env(s)? as i64;
        }
        usize::try_from(v).ok()
    }

    fn normalised(mut self) -> Dim {
        self.terms.retain(|_, c| *c != 0);
        self
    }
}

impl std::ops::Add for Dim {
    type Output = Dim;
    fn add(mut self, rhs: Dim) -> Dim {
        self.constant += rhs.constant;
        for (s, c) in rhs.terms {
            *self.terms.entry(s).or_insert(0) += c;
        }
        self.normalised()
    }
}

impl std::ops::Sub for Dim {
    type Output = Dim;
    fn sub(mut self, rhs: Dim) -> Dim {
        self.constant -= rhs.constant;
        for (s, c) in rhs.terms {
            *self.terms.entry(s).or_insert(0) -= c;
        }
        self.normalised()
    }
}

impl From<usize> for Dim {
    fn from(v: usize) -> Dim {
        Dim::c(v)
    }
}

impl From<&str> for Dim {
    fn from(s: &str) -> Dim {
        Dim::sym(s)
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (s, c) in &self.terms {
            match (*c, first) {
                (1, true) => write!(f, "{s}")?,
                (1, false) => write!(f, "+{s}")?,
                (-1, _) => write!(f, "-{s}")?,
                (c, true) => write!(f, "{c}*{s}")?,
                (c, false) if c > 0 => write!(f, "+{c}*{s}")?,
                (c, false) => write!(f, "{c}*{s}")?,
            }
            first = false;
        }
        if first {
            write!(f, "{}", self.constant)
        } else if self.constant > 0 {
            write!(f, "+{}", self.constant)
        } else if self.constant < 0 {
            write!(f, "{}", self.constant)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_and_display() {
        let total = Dim::sym(PAST) + Dim::sym(SEQ);
        assert_eq!(total.to_string(), "past+seq");
        assert_eq!((total.clone() - Dim::sym(PAST)), Dim::sym(SEQ));
        assert_eq!((Dim::c(3) + Dim::c(4)).as_const(), Some(7));
        assert_eq!((Dim::sym(SEQ) - Dim::c(1)).to_string(), "seq-1");
        let env = |s: &str| match s {
            "past" => Some(5),
            "seq" => Some(2),
            _ => None,
        };
        assert_eq!(total.eval(&env), Some(7));
        assert_eq!(Dim::sym(BATCH).eval(&env), None);
        assert_eq!(Dim::sym(SEQ).as_symbol(), Some("seq"));
        assert_eq!(total.as_symbol(), None);
    }
}
