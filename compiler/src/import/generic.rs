//! The one importer: a [`Family`] applied to a `config.json`.
//!
//! Order: every declared field is read (type-checked, defaults recorded),
//! then `[[reject]]`, `[[check]]`, the `[let]` values, `[[note]]`, the
//! `[spec]` template and the head. Names resolve lazily (a field or
//! derived value is computed on first use, cycles are an error), so a
//! family file lists things in whatever order reads best.

use std::collections::HashMap;

use serde_json::Value;

use super::ImportError;
use super::cfg::{Cfg, Result, show};
use super::families as shared;
use super::family::expr::{self, Env, Expr, Val};
use super::family::{Family, FieldDef, Piece, Template, Tree, Ty};
use super::rope::{self, RopeKeys};
use crate::spec::{HeadKind, MAX_LAYERS};

/// The functions family expressions may call.
pub(crate) const FUNCTIONS: &[&str] = &[
    "activation",
    "all",
    "any",
    "contains",
    "ends_with",
    "float",
    "has_tensor",
    "int",
    "layer_types",
    "len",
    "max",
    "max_layers",
    "merge",
    "min",
    "pow",
    "quote",
    "range",
    "rope",
    "sliding",
    "split",
    "sqrt",
    "starts_with",
    "strip_prefix",
];

enum Slot {
    Busy,
    Done(Val),
}

pub(crate) struct Ctx<'c, 'a> {
    fam: &'c Family,
    pub cfg: &'c mut Cfg<'a>,
    slots: HashMap<String, Slot>,
    locals: Vec<(String, Val)>,
    tensors: Option<&'c [String]>,
    /// Where in the family file evaluation is (for errors in expressions).
    site: String,
}

impl<'c, 'a> Ctx<'c, 'a> {
    pub fn new(fam: &'c Family, cfg: &'c mut Cfg<'a>, tensors: Option<&'c [String]>) -> Self {
        Ctx {
            fam,
            cfg,
            slots: HashMap::new(),
            locals: Vec::new(),
            tensors,
            site: String::new(),
        }
    }

    fn family_error(&self, message: String) -> ImportError {
        ImportError::new(
            &self.fam.origin,
            None,
            format!("family file: `{}`: {message}", self.site),
        )
    }

    fn eval_at(&mut self, site: &str, e: &Expr) -> Result<Val> {
        let saved = std::mem::replace(&mut self.site, site.to_string());
        let v = expr::eval(e, self);
        self.site = saved;
        v
    }

    fn render(&mut self, site: &str, t: &Template) -> Result<String> {
        let mut out = String::new();
        for p in &t.0 {
            match p {
                Piece::Text(s) => out.push_str(s),
                Piece::Hole(e) => out.push_str(&self.eval_at(site, e)?.to_string()),
            }
        }
        Ok(out)
    }

    fn truth(&mut self, site: &str, e: &Expr) -> Result<bool> {
        let v = self.eval_at(site, e)?;
        v.truthy().map_err(|m| {
            let saved = std::mem::replace(&mut self.site, site.to_string());
            let e = self.family_error(m);
            self.site = saved;
            e
        })
    }

    /// A field's value: from the file (the first of its spellings present),
    /// else its default (recorded), else null; then `null` and `min` apply.
    fn read_field(&mut self, name: &str, def: &FieldDef) -> Result<Val> {
        let mut found: Option<(String, Val)> = None;
        let keys: Vec<&str> = std::iter::once(name)
            .chain(def.aliases.iter().map(String::as_str))
            .collect();
        for k in &keys {
            let Some(raw) = self.cfg.raw(k) else { continue };
            let v = if raw.is_null() {
                // A field without a class default reads null as absent.
                if !def.nullable && def.null.is_none() && def.default.is_some() {
                    return Err(self
                        .cfg
                        .err(k, format!("is null; it must be {}", what(def.ty))));
                }
                Val::Null
            } else {
                self.convert(k, raw, def)?
            };
            match &found {
                None => found = Some((k.to_string(), v)),
                Some((k0, v0)) if *v0 != v => {
                    let this = show(raw);
                    let first = self.cfg.raw(k0).map(show).unwrap_or_default();
                    return Err(self.cfg.err(
                        k,
                        format!("is {this} but its alias `{k0}` is {first}; they name the same setting, so the file is ambiguous"),
                    ));
                }
                Some(_) => {}
            }
        }
        let (key, mut v) = match found {
            Some(kv) => kv,
            None => match &def.default {
                Some(d) => {
                    self.cfg
                        .defaults
                        .push((name.to_string(), d.quoted_default()));
                    let d = match (def.ty, d) {
                        (Ty::Activation, Val::Str(s)) => {
                            let s = s.clone();
                            self.activation_of(name, &s, def)?
                        }
                        _ => d.clone(),
                    };
                    (name.to_string(), d)
                }
                None => (name.to_string(), Val::Null),
            },
        };
        if v == Val::Null
            && let Some(e) = &def.null
        {
            v = self.eval_at(&format!("fields.{name}.null"), e)?;
        }
        if let (Some(min), Val::Int(i)) = (def.min, &v)
            && *i < min
        {
            let msg = if min == 1 {
                format!("must be positive, found {i}")
            } else {
                format!("must be at least {min}, found {i}")
            };
            return Err(self.cfg.err(&key, msg));
        }
        Ok(v)
    }

    fn activation_of(&mut self, key: &str, name: &str, def: &FieldDef) -> Result<Val> {
        let mapped = match def.map.get(name) {
            Some(m) => {
                if let Some(n) = &def.map_note {
                    self.cfg.note(format!("{key} = {name:?}: {n}"));
                }
                m.clone()
            }
            None => name.to_string(),
        };
        let a = shared::activation(self.cfg, key, &mapped)?;
        Ok(Val::Str(shared::activation_name(a).to_string()))
    }

    fn convert(&mut self, key: &str, raw: &Value, def: &FieldDef) -> Result<Val> {
        Ok(match def.ty {
            Ty::Int => {
                let u = self.cfg.as_usize(key, raw)?;
                Val::Int(
                    i64::try_from(u)
                        .map_err(|_| self.cfg.err(key, format!("= {u} is too large")))?,
                )
            }
            Ty::Float => Val::Float(self.cfg.as_f64(key, raw)?),
            Ty::Bool => Val::Bool(self.cfg.as_bool(key, raw)?),
            Ty::Str => {
                let s = self.cfg.as_str(key, raw)?;
                Val::Str(def.map.get(s).cloned().unwrap_or_else(|| s.to_string()))
            }
            Ty::Activation => {
                let s = self.cfg.as_str(key, raw)?.to_string();
                self.activation_of(key, &s, def)?
            }
            Ty::Object => {
                self.cfg.as_object(key, raw)?;
                Val::from_json(raw)
            }
            Ty::List => {
                if !raw.is_array() {
                    return Err(self
                        .cfg
                        .err(key, format!("must be an array, found {}", show(raw))));
                }
                Val::from_json(raw)
            }
            Ty::Any => Val::from_json(raw),
        })
    }

    fn value(&mut self, name: &str) -> Result<Val> {
        match self.slots.get(name) {
            Some(Slot::Done(v)) => return Ok(v.clone()),
            Some(Slot::Busy) => {
                return Err(self.family_error(format!("`{name}` depends on itself")));
            }
            None => {}
        }
        let fam = self.fam;
        self.slots.insert(name.to_string(), Slot::Busy);
        let v = if let Some((_, e)) = fam.lets.iter().find(|(n, _)| n == name) {
            self.eval_at(&format!("let.{name}"), e)
        } else if let Some((_, d)) = fam.fields.iter().find(|(n, _)| n == name) {
            self.read_field(name, d)
        } else {
            Err(self.family_error(format!("`{name}` is not a declared field or [let] value")))
        };
        match v {
            Ok(v) => {
                self.slots.insert(name.to_string(), Slot::Done(v.clone()));
                Ok(v)
            }
            Err(e) => {
                self.slots.remove(name);
                Err(e)
            }
        }
    }

    /// A template tree → TOML (null leaves are left out).
    fn build(&mut self, site: &str, t: &Tree) -> Result<Option<toml::Value>> {
        Ok(match t {
            Tree::Lit(v) => Some(v.clone()),
            Tree::Expr(e) => {
                let v = self.eval_at(site, e)?;
                v.to_toml().map_err(|m| {
                    ImportError::new(
                        &self.fam.origin,
                        None,
                        format!("family file: `{site}`: {m}"),
                    )
                })?
            }
            Tree::Table(items) => {
                let mut out = toml::Table::new();
                for (k, v) in items {
                    if let Some(x) = self.build(&format!("{site}.{k}"), v)? {
                        out.insert(k.clone(), x);
                    }
                }
                Some(toml::Value::Table(out))
            }
            Tree::Array(items) => {
                let mut out = Vec::new();
                for (i, v) in items.iter().enumerate() {
                    if let Some(x) = self.build(&format!("{site}[{i}]"), v)? {
                        out.push(x);
                    }
                }
                Some(toml::Value::Array(out))
            }
        })
    }

    fn rope(
        &mut self,
        head_dim: usize,
        max_positions: usize,
        layer_type: Option<&str>,
    ) -> Result<Val> {
        let r = &self.fam.rope;
        fn v(x: &[String]) -> Vec<&str> {
            x.iter().map(String::as_str).collect()
        }
        let (theta, partial, it, ip) = (
            v(&r.theta),
            v(&r.partial),
            v(&r.ignored_theta),
            v(&r.ignored_partial),
        );
        let keys = RopeKeys {
            theta: &theta,
            default_theta: r.default_theta,
            partial: &partial,
            default_partial: r.default_partial,
            ignored_theta: &it,
            ignored_partial: &ip,
        };
        let p = rope::rope(self.cfg, &keys, head_dim, max_positions, layer_type)?;
        let t = toml::Value::try_from(&p).map_err(|e| self.family_error(e.to_string()))?;
        Ok(Val::from_toml(&t))
    }
}

fn what(ty: Ty) -> &'static str {
    match ty {
        Ty::Int => "a non-negative integer",
        Ty::Float => "a number",
        Ty::Bool => "true or false",
        Ty::Str | Ty::Activation => "a string",
        Ty::Object => "an object",
        Ty::List => "an array",
        Ty::Any => "a value",
    }
}

impl Val {
    /// A default as `kiln import` lists it (`10000.0`, `"silu"`, `false`).
    fn quoted_default(&self) -> String {
        self.quoted()
    }
}

fn usize_arg(v: &Val) -> Option<usize> {
    match v {
        Val::Int(i) => usize::try_from(*i).ok(),
        _ => None,
    }
}

fn f64_arg(v: &Val) -> Option<f64> {
    match v {
        Val::Int(i) => Some(*i as f64),
        Val::Float(x) => Some(*x),
        _ => None,
    }
}

impl Env for Ctx<'_, '_> {
    type Error = ImportError;

    fn name(&mut self, name: &str) -> Result<Val> {
        if let Some((_, v)) = self.locals.iter().rev().find(|(n, _)| n == name) {
            return Ok(v.clone());
        }
        self.value(name)
    }

    fn call(&mut self, f: &str, args: Vec<Val>) -> Result<Val> {
        let bad = |ctx: &mut Self| {
            let shown: Vec<String> = args.iter().map(|a| a.type_name().to_string()).collect();
            ctx.family_error(format!("`{f}` cannot take ({})", shown.join(", ")))
        };
        Ok(match (f, args.as_slice()) {
            ("activation", [Val::Str(name), Val::Str(field)]) => {
                let a = shared::activation(self.cfg, field, name)?;
                Val::Str(shared::activation_name(a).to_string())
            }
            ("rope", [hd, mp]) => match (usize_arg(hd), usize_arg(mp)) {
                (Some(hd), Some(mp)) => self.rope(hd, mp, None)?,
                _ => return Err(bad(self)),
            },
            ("rope", [hd, mp, Val::Str(lt)]) => match (usize_arg(hd), usize_arg(mp)) {
                (Some(hd), Some(mp)) => self.rope(hd, mp, Some(lt.as_str()))?,
                _ => return Err(bad(self)),
            },
            ("layer_types", [n]) => {
                let Some(n) = usize_arg(n) else {
                    return Err(bad(self));
                };
                match shared::layer_types(self.cfg, n)? {
                    None => Val::Null,
                    Some(flags) => Val::List(flags.into_iter().map(Val::Bool).collect()),
                }
            }
            ("sliding", [w, Val::List(flags)]) => {
                let w = match w {
                    Val::Null => None,
                    w => Some(usize_arg(w).ok_or_else(|| bad(self))?),
                };
                let flags: Vec<bool> = flags
                    .iter()
                    .map(|f| f.truthy())
                    .collect::<std::result::Result<_, _>>()
                    .map_err(|m| self.family_error(m))?;
                let (all, layer) = shared::window_layers(w, &flags);
                let t =
                    toml::Value::try_from(layer).map_err(|e| self.family_error(e.to_string()))?;
                let mut out = std::collections::BTreeMap::new();
                out.insert(
                    "window".to_string(),
                    all.map_or(Val::Null, |w| {
                        Val::Int(i64::try_from(w).unwrap_or(i64::MAX))
                    }),
                );
                out.insert("layer".to_string(), Val::from_toml(&t));
                Val::Table(out)
            }
            ("has_tensor", [Val::Str(name)]) => match self.tensors {
                None => Val::Null,
                Some(names) => Val::Bool(
                    names
                        .iter()
                        .any(|n| n == name || n.ends_with(&format!(".{name}"))),
                ),
            },
            _ => match pure_call(f, &args) {
                Some(Ok(v)) => v,
                Some(Err(m)) => return Err(self.family_error(m)),
                None => return Err(bad(self)),
            },
        })
    }

    fn fail(&mut self, message: String) -> ImportError {
        self.family_error(message)
    }

    fn push_local(&mut self, name: &str, v: Val) {
        self.locals.push((name.to_string(), v));
    }

    fn pop_local(&mut self) {
        self.locals.pop();
    }
}

/// The functions of family expressions that read nothing but their
/// arguments (shared by every expression environment): `None` when `f` is
/// not one of them or cannot take these arguments.
pub(crate) fn pure_call(f: &str, args: &[Val]) -> Option<std::result::Result<Val, String>> {
    Some(Ok(match (f, args) {
        ("max_layers", []) => Val::Int(MAX_LAYERS as i64),
        ("range", [n]) => {
            let n = usize_arg(n)?;
            if n > MAX_LAYERS {
                return Some(Err(format!(
                    "range({n}) is longer than the {MAX_LAYERS} layers kiln supports"
                )));
            }
            Val::List((0..n as i64).map(Val::Int).collect())
        }
        ("len", [Val::List(l)]) => Val::Int(l.len() as i64),
        // A table with `b`'s keys set over `a`'s (one level).
        ("merge", [Val::Table(a), Val::Table(b)]) => {
            let mut t = a.clone();
            t.extend(b.iter().map(|(k, v)| (k.clone(), v.clone())));
            Val::Table(t)
        }
        ("len", [Val::Str(s)]) => Val::Int(s.chars().count() as i64),
        ("all", [Val::List(l)]) => Val::Bool(l.iter().all(|v| *v == Val::Bool(true))),
        ("any", [Val::List(l)]) => Val::Bool(l.contains(&Val::Bool(true))),
        ("contains", [Val::List(l), x]) => Val::Bool(l.contains(x)),
        ("contains", [Val::Str(s), Val::Str(x)]) => Val::Bool(s.contains(x.as_str())),
        ("starts_with", [Val::Str(s), Val::Str(p)]) => Val::Bool(s.starts_with(p.as_str())),
        ("ends_with", [Val::Str(s), Val::Str(p)]) => Val::Bool(s.ends_with(p.as_str())),
        ("strip_prefix", [Val::Str(s), Val::Str(p)]) => {
            Val::Str(s.strip_prefix(p.as_str()).unwrap_or(s).to_string())
        }
        ("split", [Val::Str(s), Val::Str(sep)]) => Val::List(
            s.split(sep.as_str())
                .map(|x| Val::Str(x.to_string()))
                .collect(),
        ),
        ("quote", [v]) => Val::Str(v.quoted()),
        ("int", [v]) => match v {
            Val::Int(i) => Val::Int(*i),
            Val::Float(x) if x.is_finite() && x.fract() == 0.0 && x.abs() < 9.0e15 => {
                Val::Int(*x as i64)
            }
            _ => return None,
        },
        ("float", [v]) => Val::Float(f64_arg(v)?),
        ("sqrt", [v]) => Val::Float(f64_arg(v)?.sqrt()),
        ("pow", [a, b]) => match (f64_arg(a), f64_arg(b)) {
            (Some(a), Some(b)) => Val::Float(a.powf(b)),
            _ => return None,
        },
        ("min" | "max", [a, b]) => match (a, b) {
            (Val::Int(x), Val::Int(y)) => Val::Int(if f == "min" { *x.min(y) } else { *x.max(y) }),
            _ => match (f64_arg(a), f64_arg(b)) {
                (Some(x), Some(y)) => Val::Float(if f == "min" { x.min(y) } else { x.max(y) }),
                _ => return None,
            },
        },
        _ => return None,
    }))
}

/// What [`import`] produced: the spec table and the head chosen.
pub(crate) struct Built {
    pub table: toml::Table,
}

fn head_kind(s: &str) -> Option<HeadKind> {
    Some(match s {
        "lm" => HeadKind::Lm,
        "mlm" => HeadKind::Mlm,
        "pooler" => HeadKind::Pooler,
        "mean-pool" => HeadKind::MeanPool,
        "none" => HeadKind::None,
        _ => return None,
    })
}

/// Apply `fam` to the config in `ctx`.
pub(crate) fn import(
    ctx: &mut Ctx<'_, '_>,
    architectures: &[String],
    requested: Option<HeadKind>,
    model_type: &str,
) -> Result<Built> {
    let fam = ctx.fam;
    for (name, _) in &fam.fields {
        ctx.value(name)?;
    }
    for (i, r) in fam.rejects.iter().enumerate() {
        let site = format!("reject[{i}]");
        let hit = match &r.when {
            Some(e) => ctx.truth(&site, e)?,
            None => ctx.value(&r.field)? == Val::Bool(true),
        };
        if hit {
            let why = ctx.render(&site, &r.why)?;
            let shown = ctx
                .cfg
                .raw(&r.field)
                .map(show)
                .unwrap_or_else(|| "(absent)".into());
            return Err(ctx
                .cfg
                .err(&r.field, format!("= {shown} is not supported: {why}")));
        }
    }
    for (i, c) in fam.checks.iter().enumerate() {
        let site = format!("check[{i}]");
        if !ctx.truth(&site, &c.require)? {
            let msg = ctx.render(&site, &c.message)?;
            return Err(ImportError::new(ctx.cfg.file(), c.field.as_deref(), msg));
        }
    }
    for (name, _) in &fam.lets {
        ctx.value(name)?;
    }
    for (i, n) in fam.notes.iter().enumerate() {
        let site = format!("note[{i}]");
        let on = match &n.when {
            Some(e) => ctx.truth(&site, e)?,
            None => true,
        };
        if on {
            let text = ctx.render(&site, &n.text)?;
            ctx.cfg.note(text);
        }
    }
    let mut table = match ctx.build("spec", &fam.spec)? {
        Some(toml::Value::Table(t)) => t,
        _ => toml::Table::new(),
    };

    // The head: asked for, else the one the `architectures` entry names, else the default.
    let kinds: Vec<&str> = fam.head_kinds();
    let kind_of = |ctx: &mut Ctx, site: &str, t: &Tree| -> Result<String> {
        match ctx.build(site, t)? {
            Some(toml::Value::String(s)) if kinds.contains(&s.as_str()) => Ok(s),
            other => Err(ImportError::new(
                &fam.origin,
                None,
                format!(
                    "family file: `{site}`: gives {}, not one of the family's heads ({})",
                    other.map_or("null".into(), |v| v.to_string()),
                    kinds.join(", ")
                ),
            )),
        }
    };
    let kind = match requested {
        Some(h) => {
            let name = super::head_name(h);
            if !kinds.contains(&name) {
                return Err(ImportError::new(
                    ctx.cfg.file(),
                    None,
                    format!(
                        "head \"{name}\" is not available for model_type {model_type:?} (choose from: {})",
                        kinds.join(", ")
                    ),
                ));
            }
            name.to_string()
        }
        None => {
            let by_arch = architectures
                .iter()
                .find_map(|a| fam.heads.architectures.iter().find(|(n, _)| n == a));
            let (kind, why) = match by_arch {
                Some((a, t)) => (
                    kind_of(ctx, &format!("heads.architectures.{a}"), t)?,
                    format!("for {a}"),
                ),
                None => {
                    let k = match &fam.heads.default {
                        Some(t) => kind_of(ctx, "heads.default", t)?,
                        None => kinds[0].to_string(),
                    };
                    (k, format!("the default for model_type {model_type:?}"))
                }
            };
            let others: Vec<&str> = kinds.iter().copied().filter(|k| *k != kind).collect();
            ctx.cfg.note(format!(
                "head: \"{kind}\", {why} (other choices: {})",
                if others.is_empty() {
                    "none".to_string()
                } else {
                    others.join(", ")
                }
            ));
            kind
        }
    };
    let (_, head_src) = fam
        .heads
        .kinds
        .iter()
        .find(|(k, _)| *k == kind)
        .ok_or_else(|| ctx.family_error(format!("no [head.{kind}]")))?;
    if let Some(c) = head_src.get("check").and_then(|c| c.as_table()) {
        let site = format!("head.{kind}.check");
        let get = |k: &str| c.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let (Some(require), Some(message)) = (get("require"), get("message")) else {
            return Err(ctx.family_error(format!("`{site}` needs `require` and `message`")));
        };
        let require = expr::parse(require.trim_start_matches('=')).map_err(|m| {
            ImportError::new(&fam.origin, None, format!("family file: `{site}`: {m}"))
        })?;
        let message = super::family::template(&fam.origin, &site, &message)?;
        if !ctx.truth(&site, &require)? {
            let msg = ctx.render(&site, &message)?;
            return Err(ImportError::new(
                ctx.cfg.file(),
                get("field").as_deref(),
                msg,
            ));
        }
    }
    let head_tree = super::family::tree_of(
        &fam.origin,
        &format!("head.{kind}"),
        &super::family::head_body(head_src),
    )?;
    let mut head = match ctx.build(&format!("head.{kind}"), &head_tree)? {
        Some(toml::Value::Table(t)) => t,
        _ => toml::Table::new(),
    };
    head.insert("kind".into(), toml::Value::String(kind.clone()));
    debug_assert!(head_kind(&kind).is_some());
    table.insert("head".into(), toml::Value::Table(head));
    Ok(Built { table })
}
