//! Layer selectors: which blocks a `[[layer]]` override or `moe.layers` picks.

use super::error::did_you_mean;
use super::schema::Selector;

/// A parsed [`Selector`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Sel {
    All,
    Even,
    Odd,
    /// `every step from start`: start, start + step, ...
    Every {
        step: usize,
        from: usize,
    },
    /// `start..end` (end exclusive; `None`: to the last layer).
    Range {
        start: usize,
        end: Option<usize>,
    },
    /// Explicit indices (`[1, 3]`, or a single `"7"`).
    List(Vec<usize>),
}

/// A selector problem: message and help.
pub(crate) type SelError = (String, String);

const FORMS: &str = "use \"all\", \"even\", \"odd\", \"every N\", \"every N from M\", \"A..B\", \"A..\", \
a single index such as \"7\", or an array of indices such as [1, 3]";

impl Sel {
    pub fn parse(sel: &Selector) -> Result<Sel, SelError> {
        let text = match sel {
            Selector::List(v) => return Ok(Sel::List(v.clone())),
            Selector::Text(t) => t.trim(),
        };
        let bad = || {
            (
                format!("invalid layer selector \"{text}\""),
                FORMS.to_string(),
            )
        };
        let num = |s: &str| s.trim().parse::<usize>().map_err(|_| bad());
        match text {
            "all" => return Ok(Sel::All),
            "even" => return Ok(Sel::Even),
            "odd" => return Ok(Sel::Odd),
            _ => {}
        }
        if let Some(rest) = text.strip_prefix("every") {
            let (step, from) = match rest.split_once(" from ") {
                Some((s, f)) => (num(s)?, num(f)?),
                None => (num(rest)?, 0),
            };
            if step == 0 {
                return Err((
                    format!("layer selector \"{text}\" has a step of 0"),
                    "the step must be at least 1: \"every 1\" picks every layer, \"every 2\" every other".into(),
                ));
            }
            return Ok(Sel::Every { step, from });
        }
        if let Some((a, b)) = text.split_once("..") {
            let start = if a.trim().is_empty() { 0 } else { num(a)? };
            let end = if b.trim().is_empty() {
                None
            } else {
                Some(num(b)?)
            };
            return Ok(Sel::Range { start, end });
        }
        if let Ok(i) = text.parse::<usize>() {
            return Ok(Sel::List(vec![i]));
        }
        match did_you_mean(text, &["all", "even", "odd"]) {
            Some(s) => Err((
                format!("invalid layer selector \"{text}\""),
                format!("did you mean \"{s}\"? {FORMS}"),
            )),
            None => Err(bad()),
        }
    }

    /// Does this pick layer `i` of `n`?
    pub fn matches(&self, i: usize, n: usize) -> bool {
        match self {
            Sel::All => true,
            Sel::Even => i.is_multiple_of(2),
            Sel::Odd => i % 2 == 1,
            Sel::Every { step, from } => i >= *from && (i - from).is_multiple_of(*step.max(&1)),
            Sel::Range { start, end } => i >= *start && i < end.unwrap_or(n),
            Sel::List(v) => v.contains(&i),
        }
    }

    /// Check that every index the selector names exists in a stack of `n`
    /// layers; `owner` names the stack in messages ("the model", "the decoder").
    pub fn check(&self, n: usize, owner: &str) -> Result<(), SelError> {
        let have = match n {
            1 => format!("{owner} has 1 layer (index 0)"),
            _ => format!(
                "{owner} has {n} layers (indices 0 to {})",
                n.saturating_sub(1)
            ),
        };
        let out_of_range = |i: usize| {
            (
                format!("layer index {i} is out of range: {have}"),
                format!("pick layers between 0 and {}", n.saturating_sub(1)),
            )
        };
        match self {
            Sel::All | Sel::Even | Sel::Odd => Ok(()),
            Sel::Every { from, .. } if *from >= n => Err(out_of_range(*from)),
            Sel::Every { .. } => Ok(()),
            Sel::Range { start, end } => {
                if let Some(e) = *end {
                    if e <= *start {
                        return Err((
                            format!("layer range {start}..{e} is empty"),
                            "the end of a range is exclusive: \"0..4\" picks layers 0, 1, 2 and 3"
                                .into(),
                        ));
                    }
                    if e > n {
                        return Err((
                            format!("layer range {start}..{e} ends past the last layer: {have}"),
                            format!(
                                "use \"{start}..{n}\" or \"{start}..\" to run to the last layer"
                            ),
                        ));
                    }
                }
                if *start >= n {
                    return Err(out_of_range(*start));
                }
                Ok(())
            }
            Sel::List(v) => {
                if v.is_empty() {
                    return Err((
                        "layer selector [] picks no layers".into(),
                        "list at least one layer index, or remove this selector".into(),
                    ));
                }
                match v.iter().find(|&&i| i >= n) {
                    Some(&i) => Err(out_of_range(i)),
                    None => Ok(()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(text: &str, n: usize) -> Vec<usize> {
        let s = Sel::parse(&Selector::Text(text.into())).expect("valid selector");
        s.check(n, "the model").expect("in range");
        (0..n).filter(|&i| s.matches(i, n)).collect()
    }

    #[test]
    fn selector_forms() {
        assert_eq!(pick("all", 4), [0, 1, 2, 3]);
        assert_eq!(pick("even", 5), [0, 2, 4]);
        assert_eq!(pick("odd", 5), [1, 3]);
        assert_eq!(pick("every 2", 6), [0, 2, 4]);
        assert_eq!(pick("every 3 from 1", 8), [1, 4, 7]);
        assert_eq!(pick("every 1", 3), [0, 1, 2]);
        assert_eq!(pick("0..4", 8), [0, 1, 2, 3]);
        assert_eq!(pick("4..", 7), [4, 5, 6]);
        assert_eq!(pick("..2", 7), [0, 1]);
        assert_eq!(pick("7", 8), [7]);
        assert_eq!(pick(" odd ", 4), [1, 3]);
        let list = Sel::parse(&Selector::List(vec![1, 3, 5])).expect("list");
        assert_eq!(
            (0..6).filter(|&i| list.matches(i, 6)).collect::<Vec<_>>(),
            [1, 3, 5]
        );
    }

    #[test]
    fn selector_errors() {
        let parse = |t: &str| Sel::parse(&Selector::Text(t.into()));
        assert!(parse("every 0").is_err());
        assert!(parse("every").is_err());
        assert!(parse("every x").is_err());
        assert!(parse("1..x").is_err());
        assert!(parse("-1").is_err());
        assert!(parse("evens").is_err_and(|e| e.1.starts_with("did you mean \"even\"")));
        let check = |t: &str, n| parse(t).expect("parses").check(n, "the model");
        assert!(check("7", 4).is_err());
        assert!(check("4..", 4).is_err());
        assert!(check("2..2", 4).is_err());
        assert!(check("0..5", 4).is_err());
        assert!(check("every 2 from 4", 4).is_err());
        assert!(Sel::List(vec![]).check(4, "the model").is_err());
        assert!(Sel::List(vec![0, 4]).check(4, "the model").is_err());
        assert!(check("0..4", 4).is_ok());
    }
}
