//! A serde deserializer over the located tree, so that every serde error —
//! unknown key, wrong type, bad enum value, missing key — comes back with the
//! file, line and column of the key that caused it, and a message in the
//! spec's own terms ("expected an integer", "valid keys are ...").

use std::fmt;

use serde::de::{self, DeserializeSeed, IntoDeserializer, Unexpected, Visitor};
use serde::forward_to_deserialize_any;

use super::error::{Located, did_you_mean, list_code, list_values};
use super::node::{Kind, Loc, Node};

/// Deserialize `T` from `node`, whose dotted path (for messages) is `path`
/// ("" for the document root) and whose key is written at `key_loc`.
pub(crate) fn from_node<'de, T: de::Deserialize<'de>>(
    node: &'de Node,
    path: &str,
    key_loc: Option<Loc>,
) -> Result<T, Located> {
    T::deserialize(NodeDe {
        node,
        path: path.to_string(),
        key_loc,
    })
    .map_err(DeError::into_located)
}

/// The keys `T` accepts, found by feeding it an impossible one.
pub(crate) fn fields_of<T: de::DeserializeOwned>() -> &'static [&'static str] {
    let probe = Node {
        loc: None,
        kind: Kind::Table(vec![super::node::Entry {
            key: "\u{0}".into(),
            key_loc: None,
            value: Node {
                loc: None,
                kind: Kind::Bool(false),
            },
        }]),
    };
    match T::deserialize(NodeDe {
        node: &probe,
        path: String::new(),
        key_loc: None,
    }) {
        Err(DeError {
            kind: ErrKind::UnknownField { expected, .. },
            ..
        }) => expected,
        _ => &[],
    }
}

#[derive(Debug)]
pub(crate) struct DeError {
    kind: ErrKind,
    /// Where: set by the innermost node that sees the error.
    at: Option<At>,
}

#[derive(Debug)]
struct At {
    loc: Option<Loc>,
    /// Dotted path of the value (or, for unknown keys, of the table).
    path: String,
}

#[derive(Debug)]
enum ErrKind {
    Custom(String),
    InvalidType {
        found: String,
        expected: String,
    },
    InvalidValue {
        found: String,
        expected: String,
    },
    UnknownVariant {
        variant: String,
        expected: &'static [&'static str],
    },
    UnknownField {
        field: String,
        expected: &'static [&'static str],
    },
    MissingField(&'static str),
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.kind)
    }
}

impl std::error::Error for DeError {}

fn found(u: &Unexpected<'_>) -> String {
    match u {
        Unexpected::Bool(b) => format!("a boolean ({b})"),
        Unexpected::Unsigned(n) => format!("an integer ({n})"),
        Unexpected::Signed(n) => format!("an integer ({n})"),
        Unexpected::Float(x) => format!("a float ({x:?})"),
        Unexpected::Char(c) => format!("a string (\"{c}\")"),
        Unexpected::Str(s) => format!("a string (\"{s}\")"),
        Unexpected::Seq => "an array".into(),
        Unexpected::Map => "a table".into(),
        Unexpected::Other(s) => s.to_string(),
        other => other.to_string(),
    }
}

/// serde's "expected" phrases, in TOML terms.
fn expected_phrase(exp: &dyn de::Expected, invalid_value: bool) -> String {
    let e = exp.to_string();
    match e.as_str() {
        "usize" | "u64" | "u32" | "u16" | "u8" if invalid_value => "a non-negative integer".into(),
        "usize" | "u64" | "u32" | "u16" | "u8" | "i64" | "i32" | "i16" | "i8" | "isize" => {
            "an integer".into()
        }
        "f64" | "f32" => "a number".into(),
        "a sequence" => "an array".into(),
        "a map" => "a table".into(),
        _ if e.starts_with("struct ") || e.contains("tagged enum") => "a table".into(),
        _ => e,
    }
}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError::new(ErrKind::Custom(msg.to_string()))
    }
    fn invalid_type(unexp: Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        DeError::new(ErrKind::InvalidType {
            found: found(&unexp),
            expected: expected_phrase(exp, false),
        })
    }
    fn invalid_value(unexp: Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        let found = match unexp {
            Unexpected::Signed(n) => n.to_string(),
            Unexpected::Unsigned(n) => n.to_string(),
            Unexpected::Float(x) => format!("{x:?}"),
            other => found(&other),
        };
        DeError::new(ErrKind::InvalidValue {
            found,
            expected: expected_phrase(exp, true),
        })
    }
    fn invalid_length(len: usize, exp: &dyn de::Expected) -> Self {
        DeError::new(ErrKind::Custom(format!(
            "expected {exp}, found {len} elements"
        )))
    }
    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        DeError::new(ErrKind::UnknownVariant {
            variant: variant.to_string(),
            expected,
        })
    }
    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        DeError::new(ErrKind::UnknownField {
            field: field.to_string(),
            expected,
        })
    }
    fn missing_field(field: &'static str) -> Self {
        DeError::new(ErrKind::MissingField(field))
    }
    fn duplicate_field(field: &'static str) -> Self {
        DeError::new(ErrKind::Custom(format!("key `{field}` is set twice")))
    }
}

/// Sections of the top level that are tables, for "missing table" wording.
const SECTIONS: &[&str] = &[
    "attention",
    "norm",
    "residual",
    "positions",
    "mlp",
    "moe",
    "embeddings",
    "head",
];

fn display_path(path: &str) -> String {
    if path.is_empty() {
        "the top level".into()
    } else if path.contains('[') {
        format!("`{path}`")
    } else {
        format!("[{path}]")
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// The last dotted component of a path ("attention.heads" → "heads").
fn leaf(path: &str) -> &str {
    let p = path.rsplit('.').next().unwrap_or(path);
    p.split('[').next().unwrap_or(p)
}

impl DeError {
    fn new(kind: ErrKind) -> DeError {
        DeError { kind, at: None }
    }

    /// Record where the error happened, unless an inner node already did.
    fn locate(mut self, de: &NodeDe<'_>) -> DeError {
        if self.at.is_some() {
            return self;
        }
        // Errors raised from buffered content (internally tagged enums) know
        // only the table; find the key they are about inside it.
        let inner = match &self.kind {
            ErrKind::UnknownField { field, .. } => de
                .node
                .entry(field)
                .map(|e| (e.key_loc.clone(), de.path.clone())),
            ErrKind::UnknownVariant { variant, .. } => de
                .node
                .entries()
                .iter()
                .find(|e| matches!(&e.value.kind, Kind::Str(s) if s == variant))
                .map(|e| (e.key_loc.clone(), join(&de.path, &e.key))),
            ErrKind::InvalidType { found, .. } | ErrKind::InvalidValue { found, .. } => de
                .node
                .entries()
                .iter()
                .find(|e| matches_found(&e.value, found))
                .map(|e| (e.key_loc.clone(), join(&de.path, &e.key))),
            _ => None,
        };
        let (loc, path) = match inner {
            Some((loc, path)) => (loc, path),
            None => (de.key_loc.clone().or(de.node.loc.clone()), de.path.clone()),
        };
        self.at = Some(At { loc, path });
        self
    }

    pub(crate) fn into_located(self) -> Located {
        let (loc, path) = match self.at {
            Some(At { loc, path }) => (loc, path),
            None => (None, String::new()),
        };
        let key = leaf(&path).to_string();
        let (message, help) = match self.kind {
            ErrKind::Custom(m) if path.is_empty() => (m, None),
            ErrKind::Custom(m) => (format!("`{path}`: {m}"), None),
            ErrKind::InvalidType { found, expected } => {
                let help = type_help(&key, &found, &expected);
                (
                    format!("expected {expected} for `{path}`, found {found}"),
                    Some(help),
                )
            }
            ErrKind::InvalidValue { found, expected } => (
                format!("expected {expected} for `{path}`, found {found}"),
                Some(format!("set `{key}` to {expected}")),
            ),
            ErrKind::UnknownVariant { variant, expected } => {
                let mut help = match did_you_mean(&variant, expected) {
                    Some(s) => format!("did you mean \"{s}\"? "),
                    None => String::new(),
                };
                help.push_str(&format!("valid values are {}", list_values(expected)));
                if path == "mlp.activation" && matches!(variant.as_str(), "swiglu" | "geglu") {
                    let act = if variant == "swiglu" { "silu" } else { "gelu" };
                    help = format!(
                        "a {variant} MLP is `activation = \"{act}\"` with `gated = true`; {help}"
                    );
                }
                (
                    format!("invalid value \"{variant}\" for `{path}`"),
                    Some(help),
                )
            }
            ErrKind::UnknownField { field, expected } => {
                let message = if path.is_empty() {
                    format!("unknown key `{field}`")
                } else {
                    format!("unknown key `{field}` in {}", display_path(&path))
                };
                let section = section_of(&field).filter(|_| path.is_empty());
                let help = match (section, did_you_mean(&field, expected)) {
                    (Some(section), _) => format!("`{field}` belongs in the [{section}] table"),
                    (None, Some(s)) => format!("did you mean `{s}`?"),
                    (None, None) => format!(
                        "valid keys in {} are {}",
                        display_path(&path),
                        list_code(expected)
                    ),
                };
                (message, Some(help))
            }
            ErrKind::MissingField(field) => {
                if path.is_empty() && SECTIONS.contains(&field) {
                    (
                        format!("missing required table [{field}]"),
                        Some(format!("add a [{field}] section")),
                    )
                } else if path.is_empty() {
                    (
                        format!("missing required key `{field}`"),
                        Some(format!("add `{field} = ...` at the top of the file")),
                    )
                } else {
                    (
                        format!("missing required key `{field}` in {}", display_path(&path)),
                        Some(format!("add `{field} = ...` to {}", display_path(&path))),
                    )
                }
            }
        };
        Located::new(loc, message, help)
    }
}

/// "an integer (2)", "a table", ... for a node.
fn describe_value(node: &Node) -> String {
    match &node.kind {
        Kind::Str(s) => format!("a string (\"{s}\")"),
        Kind::Int(i) => format!("an integer ({i})"),
        Kind::Float(x) => format!("a float ({x:?})"),
        Kind::Bool(b) => format!("a boolean ({b})"),
        _ => node.describe().to_string(),
    }
}

fn matches_found(node: &Node, found: &str) -> bool {
    match &node.kind {
        Kind::Str(s) => found == format!("a string (\"{s}\")"),
        Kind::Int(i) => found == format!("an integer ({i})") || found == i.to_string(),
        Kind::Float(x) => found == format!("a float ({x:?})") || found == format!("{x:?}"),
        Kind::Bool(b) => found == format!("a boolean ({b})"),
        _ => false,
    }
}

/// Which section a misplaced top-level key belongs to.
fn section_of(key: &str) -> Option<&'static str> {
    use super::schema::*;
    let tables: [(&'static str, &'static [&'static str]); 8] = [
        ("attention", fields_of::<Attention>()),
        ("norm", fields_of::<Norm>()),
        ("residual", fields_of::<Residual>()),
        ("positions", fields_of::<Positions>()),
        ("mlp", fields_of::<Mlp>()),
        ("moe", fields_of::<Moe>()),
        ("embeddings", fields_of::<Embeddings>()),
        ("head", fields_of::<Head>()),
    ];
    tables
        .iter()
        .find(|(_, fields)| fields.contains(&key))
        .map(|(s, _)| *s)
}

fn type_help(key: &str, found: &str, expected: &str) -> String {
    let quoted = found
        .strip_prefix("a string (\"")
        .and_then(|s| s.strip_suffix("\")"));
    let float = found
        .strip_prefix("a float (")
        .and_then(|s| s.strip_suffix(')'))
        .and_then(|s| s.parse::<f64>().ok());
    match expected {
        "an integer" | "a non-negative integer" => match (quoted, float) {
            (Some(q), _) if q.trim().parse::<i64>().is_ok() => {
                format!("remove the quotes: `{key} = {}`", q.trim())
            }
            (_, Some(x)) if (0.0..1e15).contains(&x) => {
                format!(
                    "write a whole number without a decimal point, e.g. `{key} = {}`",
                    x.trunc()
                )
            }
            _ => format!("write a whole number, e.g. `{key} = 8`"),
        },
        "a number" => match quoted {
            Some(q) if q.trim().parse::<f64>().is_ok() => {
                format!("remove the quotes: `{key} = {}`", q.trim())
            }
            _ => format!("write a number, e.g. `{key} = 1.0`"),
        },
        "a boolean" => match quoted {
            Some(q @ ("true" | "false")) => format!("remove the quotes: `{key} = {q}`"),
            _ => format!("write `{key} = true` or `{key} = false`"),
        },
        "a string" => format!("quote the value, e.g. `{key} = \"...\"`"),
        "a table" => format!(
            "`{key}` is a table: write `[{key}]` on its own line followed by its keys, or `{key} = {{ ... }}`"
        ),
        "an array" if key == "layer" => {
            "per-layer overrides are an array of tables: write `[[layer]]` (double brackets) before each one".into()
        }
        "an array" => format!("write an array, e.g. `{key} = [1, 2]`"),
        _ if expected.starts_with("a layer selector") => format!(
            "write e.g. `{key} = \"odd\"`, `{key} = \"0..4\"`, `{key} = \"every 2\"` or `{key} = [1, 3]`"
        ),
        other => format!("write {other}"),
    }
}

/// Deserializes one node; errors are stamped with its location.
#[derive(Clone)]
struct NodeDe<'de> {
    node: &'de Node,
    path: String,
    key_loc: Option<Loc>,
}

impl<'de> NodeDe<'de> {
    fn any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let r = match &self.node.kind {
            Kind::Str(s) => visitor.visit_borrowed_str(s),
            Kind::Int(i) => visitor.visit_i64(*i),
            Kind::Float(x) => visitor.visit_f64(*x),
            Kind::Bool(b) => visitor.visit_bool(*b),
            Kind::Datetime(_) => Err(de::Error::invalid_type(
                Unexpected::Other("a date-time"),
                &visitor,
            )),
            Kind::Array(items) => visitor.visit_seq(SeqDe {
                items: items.iter().enumerate(),
                path: &self.path,
            }),
            Kind::Table(entries) => visitor.visit_map(MapDe {
                entries: entries.iter(),
                value: None,
                path: &self.path,
            }),
        };
        r.map_err(|e| e.locate(&self))
    }
}

impl<'de> de::Deserializer<'de> for NodeDe<'de> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.any(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        // The inner type may fail after this deserializer returns (serde's
        // internally tagged enums buffer, then decode), so locate here too.
        let at = self.clone();
        visitor.visit_some(self).map_err(|e| e.locate(&at))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let at = self.clone();
        visitor
            .visit_newtype_struct(self)
            .map_err(|e| e.locate(&at))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.any(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let r = match &self.node.kind {
            Kind::Str(s) => {
                visitor.visit_enum(IntoDeserializer::<DeError>::into_deserializer(s.as_str()))
            }
            _ => Err(DeError::new(ErrKind::InvalidType {
                found: describe_value(self.node),
                expected: format!("one of {}", list_values(variants)),
            })),
        };
        r.map_err(|e| e.locate(&self))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map identifier
    }
}

struct SeqDe<'a, 'de> {
    items: std::iter::Enumerate<std::slice::Iter<'de, Node>>,
    path: &'a str,
}

impl<'de> de::SeqAccess<'de> for SeqDe<'_, 'de> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        match self.items.next() {
            Some((i, node)) => {
                let de = NodeDe {
                    node,
                    path: format!("{}[{i}]", self.path),
                    key_loc: node.loc.clone(),
                };
                seed.deserialize(de.clone())
                    .map(Some)
                    .map_err(|e| e.locate(&de))
            }
            None => Ok(None),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct MapDe<'a, 'de> {
    entries: std::slice::Iter<'de, super::node::Entry>,
    value: Option<&'de super::node::Entry>,
    path: &'a str,
}

impl<'de> de::MapAccess<'de> for MapDe<'_, 'de> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some(entry) = self.entries.next() else {
            return Ok(None);
        };
        self.value = Some(entry);
        let key: de::value::BorrowedStrDeserializer<'de, DeError> =
            de::value::BorrowedStrDeserializer::new(&entry.key);
        seed.deserialize(key).map(Some).map_err(|mut e| {
            if e.at.is_none() {
                e.at = Some(At {
                    loc: entry.key_loc.clone(),
                    path: self.path.to_string(),
                });
            }
            e
        })
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let Some(entry) = self.value.take() else {
            return Err(de::Error::custom("value requested before key"));
        };
        let de = NodeDe {
            node: &entry.value,
            path: join(self.path, &entry.key),
            key_loc: entry.key_loc.clone().or(entry.value.loc.clone()),
        };
        // Locate here as well as inside: a type may fail after the node's
        // deserializer has returned (buffered enums).
        seed.deserialize(de.clone()).map_err(|e| e.locate(&de))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

#[cfg(test)]
mod tests {
    use super::super::schema::*;
    use super::*;

    fn de<T: for<'a> de::Deserialize<'a>>(src: &str) -> Result<T, Located> {
        let node = Node::parse(src, 0).expect("valid TOML");
        from_node(&node, "", None)
    }

    #[test]
    fn field_lists() {
        assert!(fields_of::<Attention>().contains(&"kv_heads"));
        assert!(fields_of::<Spec>().contains(&"layer"));
    }

    #[test]
    fn unknown_key_points_at_key() {
        let e = de::<Attention>("heads = 4\nkv_haeds = 2\n").expect_err("unknown");
        assert_eq!(e.message, "unknown key `kv_haeds`");
        assert_eq!(e.help.as_deref(), Some("did you mean `kv_heads`?"));
        assert_eq!(e.loc.map(|l| l.span), Some(10..18));
    }

    #[test]
    fn type_errors() {
        let e = de::<Attention>("heads = \"4\"\n").expect_err("type");
        assert_eq!(
            e.message,
            "expected an integer for `heads`, found a string (\"4\")"
        );
        assert_eq!(e.help.as_deref(), Some("remove the quotes: `heads = 4`"));
        let e = de::<Attention>("heads = -4\n").expect_err("negative");
        assert_eq!(
            e.message,
            "expected a non-negative integer for `heads`, found -4"
        );
    }

    #[test]
    fn scaling_errors_find_their_key() {
        let e = de::<Positions>("kind = \"rope\"\n[scaling]\nkind = \"linear\"\nfactr = 2.0\n")
            .expect_err("unknown");
        assert_eq!(e.message, "unknown key `factr` in [scaling]");
        assert_eq!(e.loc.map(|l| l.span.start), Some(40));
        let e = de::<Positions>("kind = \"rope\"\n[scaling]\nkind = \"lineer\"\nfactor = 2.0\n")
            .expect_err("variant");
        assert_eq!(e.message, "invalid value \"lineer\" for `scaling.kind`");
        let e = de::<Positions>("kind = \"rope\"\n[scaling]\nkind = \"linear\"\nfactor = \"x\"\n")
            .expect_err("type");
        assert_eq!(
            e.message,
            "expected a number for `scaling.factor`, found a string (\"x\")"
        );
        let ok = de::<Positions>("kind = \"rope\"\n[scaling]\nkind = \"linear\"\nfactor = 2\n")
            .expect("int as float");
        assert_eq!(ok.scaling, Some(RopeScaling::Linear { factor: 2.0 }));
    }
}
