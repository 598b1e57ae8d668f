//! A TOML tree that remembers where every key and value came from.
//!
//! Each file of an `extends` chain is parsed into a [`Node`] whose entries
//! carry their file and byte span; merging keeps those locations, so an error
//! about a value inherited from a base file points into the base file.

use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::error::Located;

/// A byte span in one of the loaded files (an index into [`super::source::Files`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Loc {
    pub file: usize,
    pub span: Range<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    /// Where the value is written (`None` for values built in memory).
    pub loc: Option<Loc>,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Kind {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Datetime(String),
    Array(Vec<Node>),
    /// Entries in file order (base entries first after a merge).
    Table(Vec<Entry>),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub key: String,
    /// Where the key is written; for a `[section]` header, the section name.
    pub key_loc: Option<Loc>,
    pub value: Node,
}

impl Node {
    pub fn table(loc: Option<Loc>) -> Node {
        Node {
            loc,
            kind: Kind::Table(Vec::new()),
        }
    }

    /// Parse one file's text into a located tree.
    pub fn parse(src: &str, file: usize) -> Result<Node, Located> {
        let doc = DeTable::parse(src).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let mut message = format!("invalid TOML: {}", e.message().trim_end());
            if e.message().trim_end() == "duplicate key"
                && let Some(key) = src.get(span.clone()).filter(|k| !k.trim().is_empty())
            {
                message.push_str(&format!(" `{}`", key.trim()));
            }
            Located::new(Some(Loc { file, span }), message, syntax_help(e.message()))
        })?;
        let mut root = from_table(doc.get_ref(), file, "")?;
        root.loc = Some(Loc { file, span: 0..0 });
        Ok(root)
    }

    /// A tree without locations, from an in-memory value.
    pub fn from_value(v: &toml::Value) -> Node {
        let kind = match v {
            toml::Value::String(s) => Kind::Str(s.clone()),
            toml::Value::Integer(i) => Kind::Int(*i),
            toml::Value::Float(f) => Kind::Float(*f),
            toml::Value::Boolean(b) => Kind::Bool(*b),
            toml::Value::Datetime(d) => Kind::Datetime(d.to_string()),
            toml::Value::Array(a) => Kind::Array(a.iter().map(Node::from_value).collect()),
            toml::Value::Table(t) => Kind::Table(
                t.iter()
                    .map(|(k, v)| Entry {
                        key: k.clone(),
                        key_loc: None,
                        value: Node::from_value(v),
                    })
                    .collect(),
            ),
        };
        Node { loc: None, kind }
    }

    pub fn entries(&self) -> &[Entry] {
        match &self.kind {
            Kind::Table(t) => t,
            _ => &[],
        }
    }

    pub fn entry(&self, key: &str) -> Option<&Entry> {
        self.entries().iter().find(|e| e.key == key)
    }

    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entry(key).map(|e| &e.value)
    }

    pub fn remove(&mut self, key: &str) -> Option<Entry> {
        match &mut self.kind {
            Kind::Table(t) => {
                let i = t.iter().position(|e| e.key == key)?;
                Some(t.remove(i))
            }
            _ => None,
        }
    }

    /// What kind of value this is, for messages: "a string", "an integer", ...
    pub fn describe(&self) -> &'static str {
        match self.kind {
            Kind::Str(_) => "a string",
            Kind::Int(_) => "an integer",
            Kind::Float(_) => "a float",
            Kind::Bool(_) => "a boolean",
            Kind::Datetime(_) => "a date-time",
            Kind::Array(_) => "an array",
            Kind::Table(_) => "a table",
        }
    }

    /// Back to a plain TOML value (locations dropped).
    #[cfg(test)]
    pub fn to_value(&self) -> toml::Value {
        match &self.kind {
            Kind::Str(s) => toml::Value::String(s.clone()),
            Kind::Int(i) => toml::Value::Integer(*i),
            Kind::Float(f) => toml::Value::Float(*f),
            Kind::Bool(b) => toml::Value::Boolean(*b),
            Kind::Datetime(d) => toml::Value::String(d.clone()),
            Kind::Array(a) => toml::Value::Array(a.iter().map(Node::to_value).collect()),
            Kind::Table(t) => toml::Value::Table(
                t.iter()
                    .map(|e| (e.key.clone(), e.value.to_value()))
                    .collect(),
            ),
        }
    }
}

/// Deep-merge `derived` over `base`: tables merge key by key, recursively;
/// anything else in `derived` (arrays included) replaces what `base` had.
pub(crate) fn merge(base: &mut Node, derived: Node) {
    match (&mut base.kind, derived.kind) {
        (Kind::Table(b), Kind::Table(d)) => {
            if derived.loc.is_some() {
                base.loc = derived.loc;
            }
            for entry in d {
                match b.iter_mut().find(|e| e.key == entry.key) {
                    Some(existing) => {
                        if entry.key_loc.is_some() {
                            existing.key_loc = entry.key_loc;
                        }
                        merge(&mut existing.value, entry.value);
                    }
                    None => b.push(entry),
                }
            }
        }
        (_, kind) => {
            *base = Node {
                loc: derived.loc,
                kind,
            };
        }
    }
}

/// `prefix` is the dotted key path of the table (empty at the top), so a
/// value error can name its key.
fn from_table(t: &DeTable<'_>, file: usize, prefix: &str) -> Result<Node, Located> {
    let mut entries: Vec<(&Spanned<std::borrow::Cow<'_, str>>, &Spanned<DeValue<'_>>)> =
        t.iter().collect();
    entries.sort_by_key(|(k, _)| k.span().start);
    let mut out = Vec::with_capacity(entries.len());
    for (k, v) in entries {
        let key_loc = Some(Loc {
            file,
            span: k.span(),
        });
        let key = k.get_ref().to_string();
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        out.push(Entry {
            value: from_value(v, file, &path)?,
            key,
            key_loc,
        });
    }
    Ok(Node {
        loc: None,
        kind: Kind::Table(out),
    })
}

fn from_value(v: &Spanned<DeValue<'_>>, file: usize, path: &str) -> Result<Node, Located> {
    let loc = Some(Loc {
        file,
        span: v.span(),
    });
    let kind = match v.get_ref() {
        DeValue::String(s) => Kind::Str(s.to_string()),
        DeValue::Integer(i) => {
            let digits = i.as_str().replace('_', "");
            match i64::from_str_radix(&digits, i.radix()) {
                Ok(n) => Kind::Int(n),
                Err(_) => {
                    return Err(Located::new(
                        loc,
                        format!("integer `{i}` for `{path}` is out of range"),
                        Some("integers must fit in 64 bits".into()),
                    ));
                }
            }
        }
        DeValue::Float(f) => {
            let text = f.as_str().replace('_', "");
            match text.parse::<f64>() {
                Ok(x) if x.is_finite() || text.contains("inf") || text.contains("nan") => {
                    Kind::Float(x)
                }
                _ => {
                    return Err(Located::new(
                        loc,
                        format!("float `{text}` for `{path}` is out of range"),
                        Some("floats must fit in 64 bits".into()),
                    ));
                }
            }
        }
        DeValue::Boolean(b) => Kind::Bool(*b),
        DeValue::Datetime(d) => Kind::Datetime(d.to_string()),
        DeValue::Array(a) => Kind::Array(
            a.iter()
                .map(|e| from_value(e, file, path))
                .collect::<Result<_, _>>()?,
        ),
        DeValue::Table(t) => {
            return Ok(Node {
                loc,
                ..from_table(t, file, path)?
            });
        }
    };
    Ok(Node { loc, kind })
}

fn syntax_help(message: &str) -> Option<String> {
    let m = message.to_ascii_lowercase();
    Some(if m.contains("duplicate key") {
        "each key may be set only once per table; remove or rename one of them".into()
    } else if m.contains("string") {
        "close the string with a matching quote on the same line".into()
    } else {
        "fix the TOML syntax here (see https://toml.io/en/v1.0.0)".into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Node {
        Node::parse(s, 0).expect("valid TOML")
    }

    #[test]
    fn merge_tables_recursively_and_replace_the_rest() {
        let mut base = parse(
            "name = \"a\"\nlist = [1, 2]\n[t]\nx = 1\ny = 2\n[t.inner]\np = 1\nq = 2\n[[arr]]\nk = 1\n[[arr]]\nk = 2\n",
        );
        let derived = parse(
            "name = \"b\"\nlist = [3]\n[t]\ny = 20\nz = 30\n[t.inner]\nq = 5\n[[arr]]\nk = 9\n",
        );
        merge(&mut base, derived);
        let v = base.to_value();
        let expected: toml::Value = toml::from_str(
            "name = \"b\"\nlist = [3]\n[t]\nx = 1\ny = 20\nz = 30\n[t.inner]\np = 1\nq = 5\n[[arr]]\nk = 9\n",
        )
        .expect("valid");
        assert_eq!(v, expected);
    }

    #[test]
    fn merge_replaces_table_with_scalar_and_back() {
        let mut base = parse("[a]\nx = 1\n");
        merge(&mut base, parse("a = 3\n"));
        assert_eq!(base.get("a").map(|n| n.kind.clone()), Some(Kind::Int(3)));
        merge(&mut base, parse("[a]\ny = 1\n"));
        assert!(
            base.get("a")
                .is_some_and(|n| n.get("y").is_some() && n.get("x").is_none())
        );
    }

    #[test]
    fn merged_entries_keep_their_file() {
        let mut base = Node::parse("[a]\nx = 1\ny = 2\n", 0).expect("valid");
        let derived = Node::parse("[a]\ny = 3\n", 1).expect("valid");
        merge(&mut base, derived);
        let a = base.get("a").expect("a");
        assert_eq!(
            a.entry("x")
                .and_then(|e| e.key_loc.as_ref())
                .map(|l| l.file),
            Some(0)
        );
        assert_eq!(
            a.entry("y")
                .and_then(|e| e.key_loc.as_ref())
                .map(|l| l.file),
            Some(1)
        );
    }

    #[test]
    fn entries_in_file_order_and_numbers_decoded() {
        let n = parse("zeta = 0x10\nalpha = 1_000.5\nmid = -3\n");
        let keys: Vec<_> = n.entries().iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["zeta", "alpha", "mid"]);
        assert_eq!(n.get("zeta").map(|v| v.kind.clone()), Some(Kind::Int(16)));
        assert_eq!(
            n.get("alpha").map(|v| v.kind.clone()),
            Some(Kind::Float(1000.5))
        );
        assert_eq!(n.get("mid").map(|v| v.kind.clone()), Some(Kind::Int(-3)));
    }
}
