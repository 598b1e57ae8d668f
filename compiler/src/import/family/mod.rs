//! Family files: how one Hugging Face family's `config.json` maps onto a
//! kiln spec, as data (`models/families/*.toml`, embedded in the binary;
//! the format is documented in docs/spec.md, "Families").
//!
//! A family file declares the config fields the HF modeling code reads
//! (`[fields]`: type, the HF class default, aliases, what `null` means),
//! derived values (`[let]`), the settings kiln refuses (`[[reject]]`,
//! `[[check]]`), notes for the output header (`[[note]]`), the spec the
//! config becomes (`[spec]`, whose `=`-strings are [`expr`] expressions),
//! the head per `architectures` entry (`[heads]`, `[head.KIND]`) and the
//! checkpoint's tensor names (`[tensors]`, read by kiln-open's loader). A
//! file may `extends` another family and replace parts of it.
//!
//! Families come from three places, later ones winning for a `model_type`:
//! the embedded files, the search folders ([`search_dirs`]: the
//! `KILN_FAMILY_PATH` folders, else `$XDG_CONFIG_HOME/kiln/families` or
//! `~/.config/kiln/families`), and files registered at run time
//! ([`register_file`], `--family FILE`).

pub(crate) mod expr;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};

use serde::Deserialize;

use super::ImportError;
use expr::{Expr, Val};

mod shipped {
    include!(concat!(env!("OUT_DIR"), "/shipped_families.rs"));
}

/// The largest family file read (real ones are a few KB).
const MAX_FAMILY_BYTES: u64 = 1 << 20;

/// How a config field is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ty {
    Int,
    Float,
    Bool,
    Str,
    /// A HF activation name, read as a kiln activation name.
    Activation,
    Object,
    List,
    Any,
}

impl Ty {
    fn parse(s: &str) -> Option<Ty> {
        Some(match s {
            "int" => Ty::Int,
            "float" => Ty::Float,
            "bool" => Ty::Bool,
            "string" => Ty::Str,
            "activation" => Ty::Activation,
            "object" => Ty::Object,
            "list" => Ty::List,
            "any" => Ty::Any,
            _ => return None,
        })
    }
}

/// One `[fields]` entry.
#[derive(Debug, Clone)]
pub(crate) struct FieldDef {
    pub ty: Ty,
    /// The HF class default, used (and recorded) when the file lacks the field.
    pub default: Option<Val>,
    /// The value when the field is null (explicitly, or absent without a default).
    pub null: Option<Expr>,
    /// An explicit `null` is accepted (and stays null unless `null` says otherwise).
    pub nullable: bool,
    /// Other spellings (HF `attribute_map`): the first present wins, two that disagree are an error.
    pub aliases: Vec<String>,
    /// Smallest accepted integer (`1`: must be positive).
    pub min: Option<i64>,
    /// String values read as others (Gemma's `"gelu"` is the tanh GELU).
    pub map: BTreeMap<String, String>,
    /// Said in the notes when `map` applies.
    pub map_note: Option<String>,
}

/// `[rope]`: where the family keeps its RoPE base and rotated fraction.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RopeDef {
    #[serde(default = "rope_theta_keys")]
    pub theta: Vec<String>,
    #[serde(default = "rope_default_theta")]
    pub default_theta: f64,
    #[serde(default = "rope_partial_keys")]
    pub partial: Vec<String>,
    #[serde(default)]
    pub default_partial: Option<f64>,
    #[serde(default)]
    pub ignored_theta: Vec<String>,
    #[serde(default)]
    pub ignored_partial: Vec<String>,
}

fn rope_theta_keys() -> Vec<String> {
    vec!["rope_theta".into()]
}
fn rope_default_theta() -> f64 {
    10000.0
}
fn rope_partial_keys() -> Vec<String> {
    vec!["partial_rotary_factor".into()]
}

impl Default for RopeDef {
    fn default() -> Self {
        RopeDef {
            theta: rope_theta_keys(),
            default_theta: rope_default_theta(),
            partial: rope_partial_keys(),
            default_partial: None,
            ignored_theta: Vec::new(),
            ignored_partial: Vec::new(),
        }
    }
}

/// A `[[check]]`: `require` must hold, else `message` about `field`.
#[derive(Debug, Clone)]
pub(crate) struct Check {
    pub field: Option<String>,
    pub require: Expr,
    pub message: Template,
}

/// A `[[reject]]`: `field` with a value kiln cannot express.
#[derive(Debug, Clone)]
pub(crate) struct Reject {
    pub field: String,
    /// When it applies (default: the field is `true`).
    pub when: Option<Expr>,
    pub why: Template,
}

/// A `[[note]]` for the output header.
#[derive(Debug, Clone)]
pub(crate) struct Note {
    pub when: Option<Expr>,
    pub text: Template,
}

/// Message text with `{expression}` holes.
#[derive(Debug, Clone)]
pub(crate) struct Template(pub Vec<Piece>);

#[derive(Debug, Clone)]
pub(crate) enum Piece {
    Text(String),
    Hole(Expr),
}

/// A `[spec]` or `[head.KIND]` value with its expressions parsed.
#[derive(Debug, Clone)]
pub(crate) enum Tree {
    Lit(toml::Value),
    Expr(Expr),
    Table(Vec<(String, Tree)>),
    Array(Vec<Tree>),
}

/// `[heads]` and `[head.KIND]`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Heads {
    /// The head when no `architectures` entry is listed: a kind, or an expression.
    pub default: Option<Tree>,
    /// `architectures` entry → head kind (or an expression giving one).
    pub architectures: Vec<(String, Tree)>,
    /// Available kinds, each with the `[head]` table it becomes.
    pub kinds: Vec<(String, toml::Table)>,
}

/// One family, after `extends` is applied.
#[derive(Debug, Clone)]
pub struct Family {
    /// Its name (the file's stem for shipped ones).
    pub name: String,
    /// One line saying what it covers.
    pub description: String,
    /// The `config.json` `model_type`s it is chosen for.
    pub model_types: Vec<String>,
    /// Where it came from (`models/families/NAME.toml` for shipped ones).
    pub origin: PathBuf,
    /// The family it extends.
    pub parent: Option<String>,
    pub(crate) fields: Vec<(String, FieldDef)>,
    pub(crate) lets: Vec<(String, Expr)>,
    pub(crate) rope: RopeDef,
    pub(crate) rejects: Vec<Reject>,
    pub(crate) checks: Vec<Check>,
    pub(crate) notes: Vec<Note>,
    pub(crate) heads: Heads,
    /// The raw `[spec]` table (merged over the parent's).
    spec_raw: toml::Table,
    pub(crate) spec: Tree,
    /// Its own `[tensors]` table, if any (kiln-open merges it over the parent's).
    pub tensors: Option<toml::Table>,
    /// Its own `[gguf]` table, if any: the GGUF architectures it reads and their
    /// tensor names (kiln-open reads it; not inherited).
    pub gguf: Option<toml::Table>,
}

impl Family {
    /// The `[[reject]]` entries: `(field, reason)`.
    pub fn rejected_fields(&self) -> Vec<String> {
        self.rejects.iter().map(|r| r.field.clone()).collect()
    }

    /// The head kinds available, in file order.
    pub fn head_kinds(&self) -> Vec<&str> {
        self.heads.kinds.iter().map(|(k, _)| k.as_str()).collect()
    }
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

/// A TOML table as `(key, value)` pairs (in the order the TOML reader gives them: by key).
#[derive(Debug)]
struct Ordered<T>(Vec<(String, T)>);

impl<T> Default for Ordered<T> {
    fn default() -> Self {
        Ordered(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Ordered<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
            type Value = Ordered<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a table")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, T>()? {
                    out.push((k, v));
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FamilyFile {
    family: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    model_types: Vec<String>,
    #[serde(default)]
    extends: Option<String>,
    #[serde(default)]
    fields: Ordered<toml::Value>,
    #[serde(default, rename = "let")]
    lets: Ordered<String>,
    #[serde(default)]
    rope: Option<RopeDef>,
    #[serde(default)]
    reject: Vec<RejectFile>,
    #[serde(default)]
    check: Vec<CheckFile>,
    #[serde(default)]
    note: Vec<NoteFile>,
    #[serde(default)]
    heads: Option<HeadsFile>,
    #[serde(default)]
    head: Ordered<toml::Table>,
    #[serde(default)]
    spec: Option<toml::Table>,
    #[serde(default)]
    tensors: Option<toml::Table>,
    #[serde(default)]
    gguf: Option<toml::Table>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldFile {
    #[serde(rename = "type")]
    ty: Option<String>,
    default: Option<toml::Value>,
    null: Option<String>,
    #[serde(default)]
    nullable: bool,
    #[serde(default)]
    aliases: Vec<String>,
    min: Option<i64>,
    #[serde(default)]
    map: BTreeMap<String, String>,
    map_note: Option<String>,
    /// Remove a field the parent declares.
    #[serde(default)]
    drop: bool,
    /// What the field means (documentation only).
    #[serde(default)]
    #[allow(dead_code)]
    doc: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RejectFile {
    field: String,
    when: Option<String>,
    why: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckFile {
    field: Option<String>,
    require: String,
    message: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoteFile {
    when: Option<String>,
    text: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeadsFile {
    default: Option<toml::Value>,
    #[serde(default)]
    architectures: Ordered<toml::Value>,
}

fn ferr(origin: &Path, key: &str, message: impl Into<String>) -> ImportError {
    ImportError::new(
        origin,
        None,
        format!("family file: `{key}`: {}", message.into()),
    )
}

fn parse_expr(origin: &Path, key: &str, src: &str) -> Result<Expr, ImportError> {
    expr::parse(src).map_err(|m| ferr(origin, key, format!("{m} in `{src}`")))
}

/// A `[head.KIND]` table without its `drop` and `check` keys: the `[head]` template.
pub(crate) fn head_body(t: &toml::Table) -> toml::Table {
    let mut t = t.clone();
    t.remove("drop");
    t.remove("check");
    t
}

/// A `[head.KIND]` (or any) table as a template tree.
pub(crate) fn tree_of(origin: &Path, key: &str, t: &toml::Table) -> Result<Tree, ImportError> {
    tree(origin, key, &toml::Value::Table(t.clone()))
}

/// `"=expr"` → an expression; other strings and values are literals.
fn tree(origin: &Path, key: &str, v: &toml::Value) -> Result<Tree, ImportError> {
    Ok(match v {
        toml::Value::String(s) if s.starts_with('=') => {
            Tree::Expr(parse_expr(origin, key, &s[1..])?)
        }
        toml::Value::Table(t) => Tree::Table(
            t.iter()
                .map(|(k, v)| Ok((k.clone(), tree(origin, &format!("{key}.{k}"), v)?)))
                .collect::<Result<_, ImportError>>()?,
        ),
        toml::Value::Array(a) => Tree::Array(
            a.iter()
                .enumerate()
                .map(|(i, v)| tree(origin, &format!("{key}[{i}]"), v))
                .collect::<Result<_, _>>()?,
        ),
        other => Tree::Lit(other.clone()),
    })
}

pub(crate) fn template(origin: &Path, key: &str, src: &str) -> Result<Template, ImportError> {
    let mut pieces = Vec::new();
    let mut rest = src;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            pieces.push(Piece::Text(rest[..open].to_string()));
        }
        let after = &rest[open + 1..];
        // The hole ends at the matching `}` (table literals nest).
        let mut depth = 1;
        let mut end = None;
        for (i, c) in after.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = Some(i);
                        break;
                    }
                }
                _ => {}
            }
        }
        let Some(end) = end else {
            return Err(ferr(origin, key, format!("`{{` without `}}` in {src:?}")));
        };
        pieces.push(Piece::Hole(parse_expr(origin, key, &after[..end])?));
        rest = &after[end + 1..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.to_string()));
    }
    Ok(Template(pieces))
}

fn field_def(origin: &Path, name: &str, v: &toml::Value) -> Result<Option<FieldDef>, ImportError> {
    let key = format!("fields.{name}");
    let infer = |d: &toml::Value| match d {
        toml::Value::Integer(_) => Some(Ty::Int),
        toml::Value::Float(_) => Some(Ty::Float),
        toml::Value::Boolean(_) => Some(Ty::Bool),
        toml::Value::String(_) => Some(Ty::Str),
        _ => None,
    };
    let f: FieldFile = match v {
        toml::Value::Table(t) => toml::Value::Table(t.clone())
            .try_into()
            .map_err(|e: toml::de::Error| ferr(origin, &key, e.message().to_string()))?,
        lit => FieldFile {
            ty: None,
            default: Some(lit.clone()),
            null: None,
            nullable: false,
            aliases: Vec::new(),
            min: None,
            map: BTreeMap::new(),
            map_note: None,
            drop: false,
            doc: None,
        },
    };
    if f.drop {
        return Ok(None);
    }
    let ty = match (&f.ty, &f.default) {
        (Some(t), _) => Ty::parse(t).ok_or_else(|| {
            ferr(
                origin,
                &key,
                format!("type {t:?} is not one of int, float, bool, string, activation, object, list, any"),
            )
        })?,
        (None, Some(d)) => infer(d).ok_or_else(|| ferr(origin, &key, "give a `type` for this default"))?,
        (None, None) => return Err(ferr(origin, &key, "give a `type` or a `default`")),
    };
    let default = f.default.as_ref().map(Val::from_toml);
    if let Some(d) = &default {
        let ok = match (ty, d) {
            (Ty::Int, Val::Int(i)) => *i >= 0,
            (Ty::Float, Val::Float(_) | Val::Int(_)) => true,
            (Ty::Bool, Val::Bool(_)) => true,
            (Ty::Str | Ty::Activation, Val::Str(_)) => true,
            (Ty::List, Val::List(_)) | (Ty::Object, Val::Table(_)) | (Ty::Any, _) => true,
            _ => false,
        };
        if !ok {
            return Err(ferr(
                origin,
                &key,
                format!("the default {} does not fit the type", d.quoted()),
            ));
        }
    }
    let default = match (ty, default) {
        (Ty::Float, Some(Val::Int(i))) => Some(Val::Float(i as f64)),
        (_, d) => d,
    };
    Ok(Some(FieldDef {
        ty,
        default,
        null: f
            .null
            .as_deref()
            .map(|s| parse_expr(origin, &format!("{key}.null"), s))
            .transpose()?,
        nullable: f.nullable,
        aliases: f.aliases,
        min: f.min,
        map: f.map,
        map_note: f.map_note,
    }))
}

/// Merge `over` into `base` (tables recursively; other values replace).
fn deep_merge(base: &mut toml::Table, over: &toml::Table) {
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => deep_merge(b, o),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

/// Finds a family by name (the one a file extends).
pub(crate) type Lookup<'l> = dyn FnMut(&str) -> Result<Option<Arc<Family>>, ImportError> + 'l;

/// Parse one family file; `lookup` finds the family it extends.
pub(crate) fn parse_family(
    origin: &Path,
    src: &str,
    lookup: &mut Lookup<'_>,
) -> Result<Family, ImportError> {
    let file: FamilyFile = toml::from_str(src)
        .map_err(|e| ImportError::new(origin, None, format!("invalid family file: {e}")))?;
    let parent = match &file.extends {
        Some(p) => Some(lookup(p)?.ok_or_else(|| {
            ferr(
                origin,
                "extends",
                format!(
                    "no family named {p:?} (shipped ones: {})",
                    shipped_names().join(", ")
                ),
            )
        })?),
        None => None,
    };
    let mut fam = match &parent {
        Some(p) => Family {
            name: file.family.clone(),
            description: file.description.clone(),
            model_types: file.model_types.clone(),
            origin: origin.to_path_buf(),
            parent: Some(p.name.clone()),
            tensors: None,
            gguf: None,
            ..(**p).clone()
        },
        None => Family {
            name: file.family.clone(),
            description: file.description.clone(),
            model_types: file.model_types.clone(),
            origin: origin.to_path_buf(),
            parent: None,
            fields: Vec::new(),
            lets: Vec::new(),
            rope: RopeDef::default(),
            rejects: Vec::new(),
            checks: Vec::new(),
            notes: Vec::new(),
            heads: Heads::default(),
            spec_raw: toml::Table::new(),
            spec: Tree::Table(Vec::new()),
            tensors: None,
            gguf: None,
        },
    };
    if fam.model_types.is_empty() {
        return Err(ferr(
            origin,
            "model_types",
            "is empty; list the config.json model_type values this family reads",
        ));
    }
    for (name, v) in &file.fields.0 {
        let def = field_def(origin, name, v)?;
        fam.fields.retain(|(n, _)| n != name);
        match def {
            Some(d) => fam.fields.push((name.clone(), d)),
            // A dropped field takes the parent's rejects, checks and notes about it along.
            None => {
                let uses = |e: &Expr| {
                    let (mut names, mut calls) = (Vec::new(), Vec::new());
                    expr::references(e, &mut names, &mut calls);
                    names.iter().any(|n| n == name)
                };
                fam.rejects.retain(|r| r.field != *name);
                fam.checks
                    .retain(|c| c.field.as_deref() != Some(name.as_str()) && !uses(&c.require));
                fam.notes.retain(|n| !n.when.as_ref().is_some_and(&uses));
            }
        }
    }
    for (name, src) in &file.lets.0 {
        let key = format!("let.{name}");
        let Some(body) = src.strip_prefix('=') else {
            return Err(ferr(
                origin,
                &key,
                "must be an expression starting with `=`",
            ));
        };
        let e = parse_expr(origin, &key, body)?;
        fam.lets.retain(|(n, _)| n != name);
        fam.lets.push((name.clone(), e));
    }
    if let Some(r) = file.rope {
        fam.rope = r;
    }
    for (i, r) in file.reject.iter().enumerate() {
        let key = format!("reject[{i}]");
        fam.rejects.push(Reject {
            field: r.field.clone(),
            when: r
                .when
                .as_deref()
                .map(|s| parse_expr(origin, &key, s.trim_start_matches('=')))
                .transpose()?,
            why: template(origin, &key, &r.why)?,
        });
    }
    for (i, c) in file.check.iter().enumerate() {
        let key = format!("check[{i}]");
        fam.checks.push(Check {
            field: c.field.clone(),
            require: parse_expr(origin, &key, c.require.trim_start_matches('='))?,
            message: template(origin, &key, &c.message)?,
        });
    }
    for (i, n) in file.note.iter().enumerate() {
        let key = format!("note[{i}]");
        fam.notes.push(Note {
            when: n
                .when
                .as_deref()
                .map(|s| parse_expr(origin, &key, s.trim_start_matches('=')))
                .transpose()?,
            text: template(origin, &key, &n.text)?,
        });
    }
    if let Some(h) = &file.heads {
        if let Some(d) = &h.default {
            fam.heads.default = Some(tree(origin, "heads.default", d)?);
        }
        for (arch, v) in &h.architectures.0 {
            let t = tree(origin, &format!("heads.architectures.{arch}"), v)?;
            fam.heads.architectures.retain(|(a, _)| a != arch);
            fam.heads.architectures.push((arch.clone(), t));
        }
    }
    for (kind, t) in &file.head.0 {
        let key = format!("head.{kind}");
        if !super::HEAD_KINDS.contains(&kind.as_str()) {
            return Err(ferr(
                origin,
                &key,
                format!(
                    "is not a head kind (kinds: {})",
                    super::HEAD_KINDS.join(", ")
                ),
            ));
        }
        let drop = t.get("drop") == Some(&toml::Value::Boolean(true));
        fam.heads.kinds.retain(|(k, _)| k != kind);
        if !drop {
            tree_of(origin, &key, &head_body(t))?;
            fam.heads.kinds.push((kind.clone(), t.clone()));
        }
    }
    // Listed (in messages, `kiln import --list`) default first, then in HEAD_KINDS order.
    let default_kind = match &fam.heads.default {
        Some(Tree::Lit(toml::Value::String(k))) => Some(k.clone()),
        _ => None,
    };
    fam.heads.kinds.sort_by_key(|(k, _)| {
        (
            Some(k) != default_kind.as_ref(),
            super::HEAD_KINDS.iter().position(|h| h == k),
        )
    });
    if fam.heads.kinds.is_empty() {
        return Err(ferr(
            origin,
            "head",
            "no [head.KIND] table: say which heads the family has",
        ));
    }
    if let Some(s) = &file.spec {
        deep_merge(&mut fam.spec_raw, s);
    }
    fam.spec = tree(origin, "spec", &toml::Value::Table(fam.spec_raw.clone()))?;
    fam.tensors = file.tensors.clone();
    fam.gguf = file.gguf.clone();
    check_names(&fam)?;
    Ok(fam)
}

/// Every name an expression uses is a field, a derived value or a
/// comprehension variable, and every function exists.
fn check_names(fam: &Family) -> Result<(), ImportError> {
    let known: Vec<&str> = fam
        .fields
        .iter()
        .map(|(n, _)| n.as_str())
        .chain(fam.lets.iter().map(|(n, _)| n.as_str()))
        .collect();
    let mut exprs: Vec<(String, &Expr)> = Vec::new();
    for (n, f) in &fam.fields {
        if let Some(e) = &f.null {
            exprs.push((format!("fields.{n}.null"), e));
        }
    }
    for (n, e) in &fam.lets {
        exprs.push((format!("let.{n}"), e));
    }
    for (i, r) in fam.rejects.iter().enumerate() {
        if let Some(e) = &r.when {
            exprs.push((format!("reject[{i}].when"), e));
        }
        for p in &r.why.0 {
            if let Piece::Hole(e) = p {
                exprs.push((format!("reject[{i}].why"), e));
            }
        }
    }
    for (i, c) in fam.checks.iter().enumerate() {
        exprs.push((format!("check[{i}].require"), &c.require));
        for p in &c.message.0 {
            if let Piece::Hole(e) = p {
                exprs.push((format!("check[{i}].message"), e));
            }
        }
    }
    for (i, n) in fam.notes.iter().enumerate() {
        if let Some(e) = &n.when {
            exprs.push((format!("note[{i}].when"), e));
        }
        for p in &n.text.0 {
            if let Piece::Hole(e) = p {
                exprs.push((format!("note[{i}].text"), e));
            }
        }
    }
    fn trees<'t>(key: String, t: &'t Tree, out: &mut Vec<(String, &'t Expr)>) {
        match t {
            Tree::Lit(_) => {}
            Tree::Expr(e) => out.push((key, e)),
            Tree::Table(items) => {
                for (k, v) in items {
                    trees(format!("{key}.{k}"), v, out);
                }
            }
            Tree::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    trees(format!("{key}[{i}]"), v, out);
                }
            }
        }
    }
    let mut owned: Vec<(String, Tree)> = Vec::new();
    for (k, t) in &fam.heads.kinds {
        owned.push((format!("head.{k}"), tree_of(&fam.origin, k, &head_body(t))?));
    }
    let mut tree_exprs = Vec::new();
    trees("spec".into(), &fam.spec, &mut tree_exprs);
    if let Some(d) = &fam.heads.default {
        trees("heads.default".into(), d, &mut tree_exprs);
    }
    for (a, t) in &fam.heads.architectures {
        trees(format!("heads.architectures.{a}"), t, &mut tree_exprs);
    }
    for (k, t) in &owned {
        trees(k.clone(), t, &mut tree_exprs);
    }
    exprs.extend(tree_exprs);
    for (key, e) in exprs {
        let (mut names, mut calls) = (Vec::new(), Vec::new());
        expr::references(e, &mut names, &mut calls);
        if let Some(n) = names.iter().find(|n| !known.contains(&n.as_str())) {
            return Err(ferr(
                &fam.origin,
                &key,
                format!("`{n}` is not a declared field or [let] value; declare it in [fields]"),
            ));
        }
        if let Some(f) = calls
            .iter()
            .find(|f| !super::generic::FUNCTIONS.contains(&f.as_str()))
        {
            return Err(ferr(
                &fam.origin,
                &key,
                format!(
                    "`{f}` is not a function (functions: {})",
                    super::generic::FUNCTIONS.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The registry
// ---------------------------------------------------------------------------

fn shipped_names() -> Vec<&'static str> {
    shipped::FAMILIES.iter().map(|(n, _)| *n).collect()
}

/// The shipped family files `(name, text)`, sorted by name.
pub fn shipped_sources() -> &'static [(&'static str, &'static str)] {
    shipped::FAMILIES
}

fn builtin() -> Result<&'static [Arc<Family>], ImportError> {
    static BUILTIN: OnceLock<Result<Vec<Arc<Family>>, ImportError>> = OnceLock::new();
    BUILTIN
        .get_or_init(|| {
            let mut done: BTreeMap<String, Arc<Family>> = BTreeMap::new();
            fn load(
                name: &str,
                done: &mut BTreeMap<String, Arc<Family>>,
                stack: &mut Vec<String>,
            ) -> Result<Option<Arc<Family>>, ImportError> {
                if let Some(f) = done.get(name) {
                    return Ok(Some(f.clone()));
                }
                let Some((_, src)) = shipped::FAMILIES.iter().find(|(n, _)| *n == name) else {
                    return Ok(None);
                };
                let origin = PathBuf::from(format!("models/families/{name}.toml"));
                if stack.iter().any(|s| s == name) {
                    return Err(ferr(
                        &origin,
                        "extends",
                        format!("extends itself through {}", stack.join(" → ")),
                    ));
                }
                stack.push(name.to_string());
                let fam = parse_family(&origin, src, &mut |p| load(p, done, stack))?;
                stack.pop();
                if fam.name != name {
                    return Err(ferr(
                        &origin,
                        "family",
                        format!("= {:?} differs from the file name {name:?}", fam.name),
                    ));
                }
                let fam = Arc::new(fam);
                done.insert(name.to_string(), fam.clone());
                Ok(Some(fam))
            }
            let mut out = Vec::new();
            for (name, _) in shipped::FAMILIES {
                if let Some(f) = load(name, &mut done, &mut Vec::new())? {
                    out.push(f);
                }
            }
            Ok(out)
        })
        .as_deref()
        .map_err(Clone::clone)
}

fn registered() -> &'static RwLock<Vec<Arc<Family>>> {
    static USER: RwLock<Vec<Arc<Family>>> = RwLock::new(Vec::new());
    &USER
}

/// The folders searched for family files: `KILN_FAMILY_PATH` (folders
/// separated by `:`) when set, else `$XDG_CONFIG_HOME/kiln/families`, else
/// `~/.config/kiln/families`.
pub fn search_dirs() -> Vec<PathBuf> {
    if let Some(p) = std::env::var_os("KILN_FAMILY_PATH") {
        return std::env::split_paths(&p)
            .filter(|d| !d.as_os_str().is_empty())
            .collect();
    }
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|x| !x.is_empty()) {
        return vec![PathBuf::from(x).join("kiln/families")];
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| vec![PathBuf::from(h).join(".config/kiln/families")])
        .unwrap_or_default()
}

fn searched() -> Result<&'static [Arc<Family>], ImportError> {
    static SEARCHED: OnceLock<Result<Vec<Arc<Family>>, ImportError>> = OnceLock::new();
    SEARCHED
        .get_or_init(|| {
            let mut out: Vec<Arc<Family>> = Vec::new();
            for dir in search_dirs() {
                let Ok(rd) = std::fs::read_dir(&dir) else {
                    continue;
                };
                let mut files: Vec<PathBuf> = rd
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "toml"))
                    .collect();
                files.sort();
                for f in files {
                    let fam = read_family(&f, &out)?;
                    out.push(Arc::new(fam));
                }
            }
            Ok(out)
        })
        .as_deref()
        .map_err(Clone::clone)
}

fn read_family(path: &Path, earlier: &[Arc<Family>]) -> Result<Family, ImportError> {
    let src = crate::spec::read_text_file(path, MAX_FAMILY_BYTES)
        .map_err(|e| ImportError::new(path, None, format!("cannot read the family file: {e}")))?;
    let builtin = builtin()?;
    parse_family(path, &src, &mut |p| {
        Ok(earlier
            .iter()
            .rev()
            .chain(builtin.iter())
            .find(|f| f.name == p)
            .cloned())
    })
}

/// Every family: shipped, then the search folders', then registered files
/// (a later one wins for a `model_type` it shares with an earlier one).
pub fn families() -> Result<Vec<Arc<Family>>, ImportError> {
    let mut all: Vec<Arc<Family>> = builtin()?.to_vec();
    all.extend(searched()?.iter().cloned());
    all.extend(registered().read().map(|r| r.clone()).unwrap_or_default());
    Ok(all)
}

/// Read a family file and make it available to every later import and
/// checkpoint load of this process (`kiln … --family FILE`).
pub fn register_file(path: &Path) -> Result<Arc<Family>, ImportError> {
    let earlier = families()?;
    let fam = Arc::new(read_family(path, &earlier)?);
    if let Ok(mut r) = registered().write() {
        r.push(fam.clone());
    }
    Ok(fam)
}

/// The family chosen for a `model_type` (the last registered one listing it).
pub fn for_model_type(model_type: &str) -> Result<Option<Arc<Family>>, ImportError> {
    Ok(families()?
        .into_iter()
        .rev()
        .find(|f| f.model_types.iter().any(|m| m == model_type)))
}

/// Every `model_type` some family reads, sorted.
pub fn model_types() -> Result<Vec<String>, ImportError> {
    let mut v: Vec<String> = families()?
        .iter()
        .flat_map(|f| f.model_types.iter().cloned())
        .collect();
    v.sort();
    v.dedup();
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_family_parses() {
        let all = builtin().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(all.len(), shipped::FAMILIES.len());
    }

    #[test]
    fn templates_split_holes() {
        let t = template(Path::new("f"), "k", "= {a + 1} of {{ b = 2 }.b} end").unwrap();
        assert_eq!(t.0.len(), 5);
        assert!(template(Path::new("f"), "k", "oops {a").is_err());
    }
}
