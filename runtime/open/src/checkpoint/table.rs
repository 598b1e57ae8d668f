//! Mapping tables: how one checkpoint family's tensor names and layouts map
//! onto kiln's canonical parameters. The tables are data: the `[tensors]`
//! section of each family file (`models/families/*.toml`, embedded in the
//! binary, plus the user's, see `kiln_compiler::import::family`); this
//! module parses and validates them and matches names against their patterns.
//!
//! See the [module docs](super) for the table format.

use super::error::CheckpointError;
use kiln_compiler::import;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The family names that have a table, in auto-detection order (a table
/// that extends another comes after it).
pub fn families() -> Result<Vec<String>, CheckpointError> {
    Ok(tables()?.iter().map(|t| t.family.clone()).collect())
}

// ---------------------------------------------------------------------------
// File format (serde)
// ---------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TableFile {
    family: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    extends: Option<String>,
    #[serde(default)]
    model_types: Vec<String>,
    #[serde(default)]
    prefixes: Vec<String>,
    #[serde(default)]
    rename: BTreeMap<String, String>,
    #[serde(default)]
    optional: BTreeMap<String, String>,
    #[serde(default)]
    tied: BTreeMap<String, String>,
    #[serde(default)]
    ignore: BTreeMap<String, String>,
    #[serde(default)]
    rule: Vec<RuleFile>,
    /// Patterns of the parent's rules this table does not keep.
    #[serde(default)]
    drop: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    from: String,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    transpose: bool,
    #[serde(default)]
    reshape: bool,
    #[serde(default)]
    split: Option<SplitFile>,
    #[serde(default)]
    stack: Option<String>,
    #[serde(default)]
    tied: Option<String>,
    #[serde(default)]
    optional: bool,
    #[serde(default)]
    ignore: Option<String>,
    #[serde(default)]
    supersedes: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SplitFile {
    axis: usize,
    into: Vec<String>,
    #[serde(default)]
    groups: Option<GroupsFile>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum GroupsFile {
    Count(usize),
    Named(String),
}

// ---------------------------------------------------------------------------
// Patterns
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Lit(String),
    Var(String),
}

/// A tensor name with `{name}` placeholders, each matching a non-negative
/// decimal integer (no leading zeros): `layers.{i}.self_attn.q_proj.weight`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pattern {
    text: String,
    pieces: Vec<Piece>,
}

/// Placeholder values bound by a match.
pub(crate) type Bindings = Vec<(String, usize)>;

impl Pattern {
    fn parse(text: &str) -> Result<Pattern, String> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            match rest.find('{') {
                Some(0) => {
                    let close = rest
                        .find('}')
                        .ok_or_else(|| format!("pattern `{text}`: unclosed `{{`"))?;
                    let name = &rest[1..close];
                    let ok = !name.is_empty()
                        && name
                            .bytes()
                            .all(|c| c.is_ascii_lowercase() || c == b'_' || c.is_ascii_digit())
                        && !name.as_bytes()[0].is_ascii_digit();
                    if !ok {
                        return Err(format!("pattern `{text}`: bad placeholder `{{{name}}}`"));
                    }
                    if matches!(pieces.last(), Some(Piece::Var(_))) {
                        return Err(format!("pattern `{text}`: two placeholders in a row"));
                    }
                    pieces.push(Piece::Var(name.to_string()));
                    rest = &rest[close + 1..];
                }
                found => {
                    let end = found.unwrap_or(rest.len());
                    let lit = &rest[..end];
                    if lit.contains('}') {
                        return Err(format!("pattern `{text}`: stray `}}`"));
                    }
                    if matches!(pieces.last(), Some(Piece::Var(_)))
                        && lit.as_bytes()[0].is_ascii_digit()
                    {
                        return Err(format!(
                            "pattern `{text}`: a placeholder is followed by a digit"
                        ));
                    }
                    pieces.push(Piece::Lit(lit.to_string()));
                    rest = &rest[end..];
                }
            }
        }
        if pieces.is_empty() {
            return Err("empty pattern".into());
        }
        Ok(Pattern {
            text: text.to_string(),
            pieces,
        })
    }

    /// The pattern as written.
    pub(crate) fn text(&self) -> &str {
        &self.text
    }

    pub(crate) fn vars(&self) -> impl Iterator<Item = &str> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Var(v) => Some(v.as_str()),
            Piece::Lit(_) => None,
        })
    }

    /// Match `name` as a whole; `Some(bindings)` on success.
    pub(crate) fn matches(&self, name: &str) -> Option<Bindings> {
        let mut rest = name;
        let mut bound: Bindings = Vec::new();
        for piece in &self.pieces {
            match piece {
                Piece::Lit(l) => rest = rest.strip_prefix(l.as_str())?,
                Piece::Var(v) => {
                    let n = rest.bytes().take_while(u8::is_ascii_digit).count();
                    let digits = &rest[..n];
                    if n == 0 || (n > 1 && digits.starts_with('0')) {
                        return None;
                    }
                    let value: usize = digits.parse().ok()?;
                    match bound.iter().find(|(name, _)| name == v) {
                        Some((_, prev)) if *prev != value => return None,
                        Some(_) => {}
                        None => bound.push((v.clone(), value)),
                    }
                    rest = &rest[n..];
                }
            }
        }
        rest.is_empty().then_some(bound)
    }

    /// The name with placeholders replaced; unbound ones stay `{name}`.
    pub(crate) fn substitute(&self, bindings: &Bindings) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Lit(l) => out.push_str(l),
                Piece::Var(v) => match bindings.iter().find(|(n, _)| n == v) {
                    Some((_, value)) => out.push_str(&value.to_string()),
                    None => {
                        out.push('{');
                        out.push_str(v);
                        out.push('}');
                    }
                },
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------
// Resolved tables
// ---------------------------------------------------------------------------

/// How the number of interleaved groups of a fused tensor is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Groups {
    /// A fixed count.
    Count(usize),
    /// The layer's KV-head count, read off the decoder graph's
    /// `past.{i}.k` input (`i` bound by the rule's `{i}` placeholder).
    KvHeads,
}

#[derive(Debug, Clone)]
pub(crate) struct Split {
    pub axis: usize,
    /// `None`: contiguous parts. `Some`: the axis is `groups` repetitions of
    /// `[part 0 chunk, part 1 chunk, ...]` (GPT-NeoX's per-head q|k|v).
    pub groups: Option<Groups>,
}

/// What a rule does with a matching checkpoint tensor.
#[derive(Debug, Clone)]
pub(crate) enum Action {
    /// Not loaded: a buffer or a tensor kiln has no use for, with the reason.
    Ignore(String),
    /// Loaded into `targets` (one, or one per split part).
    Load {
        targets: Vec<Pattern>,
        split: Option<Split>,
        /// Placeholder indexing the stacking axis (`e` for experts).
        stack: Option<String>,
    },
}

#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub from: Pattern,
    pub action: Action,
    pub transpose: bool,
    pub reshape: bool,
    /// When the model does not declare the targets: the tensor must equal
    /// this parameter (a tied copy), and nothing is loaded from it.
    pub tied: Option<Pattern>,
    /// When the model does not declare the targets (and `tied` does not
    /// apply): skip the tensor and report it as unused.
    pub optional: bool,
    /// Another checkpoint tensor (same placeholders, same prefix) that this
    /// one replaces when both are present: the other is then ignored
    /// (RoBERTa's `lm_head.decoder.bias` over `lm_head.bias`).
    pub supersedes: Option<Pattern>,
}

/// A resolved mapping table.
#[derive(Debug, Clone)]
pub struct Table {
    pub(crate) family: String,
    pub(crate) description: String,
    pub(crate) model_types: Vec<String>,
    pub(crate) prefixes: Vec<String>,
    pub(crate) rules: Vec<Rule>,
}

impl Table {
    /// The family name (`"llama"`).
    pub fn family(&self) -> &str {
        &self.family
    }

    /// One line saying what checkpoints it covers.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The config.json `model_type`s it is chosen for.
    pub fn model_types(&self) -> &[String] {
        &self.model_types
    }

    /// The rules matching `name` (after stripping at most one prefix),
    /// with the placeholder bindings and the prefix stripped. A name that
    /// matches without stripping is not tried with prefixes stripped.
    pub(crate) fn lookup(&self, name: &str) -> (Vec<(usize, Bindings)>, Option<usize>) {
        let direct = self.matching(name);
        if !direct.is_empty() {
            return (direct, None);
        }
        for (p, prefix) in self.prefixes.iter().enumerate() {
            if let Some(stripped) = name.strip_prefix(prefix.as_str()) {
                let m = self.matching(stripped);
                if !m.is_empty() {
                    return (m, Some(p));
                }
            }
        }
        (Vec::new(), None)
    }

    fn matching(&self, name: &str) -> Vec<(usize, Bindings)> {
        self.rules
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.from.matches(name).map(|b| (i, b)))
            .collect()
    }
}

/// One family per name, in registration order: the last registered of a name
/// (a user's file replacing a shipped one).
pub(crate) fn latest_per_name(fams: &[Arc<import::Family>]) -> Vec<Arc<import::Family>> {
    let mut latest: Vec<Arc<import::Family>> = Vec::new();
    for f in fams {
        match latest.iter().position(|l| l.name == f.name) {
            Some(i) => latest[i] = f.clone(),
            None => latest.push(f.clone()),
        }
    }
    latest
}

/// Every family's table, parsed and resolved (again only when a family
/// file was registered since the last call).
pub fn tables() -> Result<Arc<Vec<Table>>, CheckpointError> {
    static CACHE: Mutex<Option<(usize, Arc<Vec<Table>>)>> = Mutex::new(None);
    let fams = import::all_families().map_err(|e| CheckpointError::Table {
        family: "(family files)".into(),
        message: e.to_string(),
    })?;
    if let Ok(c) = CACHE.lock()
        && let Some((n, t)) = &*c
        && *n == fams.len()
    {
        return Ok(t.clone());
    }
    let latest = latest_per_name(&fams);
    let mut out: Vec<Table> = Vec::new();
    for f in &latest {
        resolve(f, &latest, &mut out, 0)?;
    }
    let out = Arc::new(out);
    if let Ok(mut c) = CACHE.lock() {
        *c = Some((fams.len(), out.clone()));
    }
    Ok(out)
}

/// Parse `fam`'s table (and first the tables it builds on) into `out`,
/// unless it is there already. A family without `[tensors]` uses its
/// parent's rules under its own name and model types.
fn resolve(
    fam: &import::Family,
    all: &[Arc<import::Family>],
    out: &mut Vec<Table>,
    depth: usize,
) -> Result<(), CheckpointError> {
    let bad = |m: String| CheckpointError::Table {
        family: fam.name.clone(),
        message: format!("{}: {m}", fam.origin.display()),
    };
    if depth > 32 {
        return Err(bad("the families extend each other in a cycle".into()));
    }
    if out.iter().any(|t| t.family == fam.name) {
        return Ok(());
    }
    let by_name = |n: &str| find(all, n);
    let mut src = match &fam.tensors {
        Some(t) => t.clone(),
        None => {
            let Some(parent) = fam.parent.as_deref().and_then(by_name) else {
                return Ok(()); // no tensor names: the family imports configs only
            };
            let mut t = toml::Table::new();
            t.insert("extends".into(), toml::Value::String(parent.name.clone()));
            t
        }
    };
    if let Some(toml::Value::String(p)) = src.get("extends") {
        let p = p.clone();
        let parent =
            by_name(&p).ok_or_else(|| bad(format!("[tensors] extends unknown family `{p}`")))?;
        resolve(&parent, all, out, depth + 1)?;
    }
    src.insert("family".into(), toml::Value::String(fam.name.clone()));
    src.insert(
        "description".into(),
        toml::Value::String(fam.description.clone()),
    );
    src.insert(
        "model_types".into(),
        toml::Value::Array(
            fam.model_types
                .iter()
                .cloned()
                .map(toml::Value::String)
                .collect(),
        ),
    );
    let file: TableFile = toml::Value::Table(src)
        .try_into()
        .map_err(|e: toml::de::Error| bad(format!("[tensors]: {}", e.message())))?;
    let t = parse_file(file, out).map_err(|m| bad(format!("[tensors]: {m}")))?;
    out.push(t);
    Ok(())
}

fn find(all: &[Arc<import::Family>], name: &str) -> Option<Arc<import::Family>> {
    all.iter().rev().find(|f| f.name == name).cloned()
}

/// The table named `family` (a family name or one of a table's
/// `model_types`).
pub fn table(family: &str) -> Result<Table, CheckpointError> {
    let all = tables()?;
    all.iter()
        .rev()
        .find(|t| t.family == family)
        .or_else(|| {
            all.iter()
                .rev()
                .find(|t| t.model_types.iter().any(|m| m == family))
        })
        .cloned()
        .ok_or_else(|| CheckpointError::UnknownFamily {
            family: family.to_string(),
            known: {
                let mut k: Vec<String> = all.iter().map(|t| t.family.clone()).collect();
                k.sort();
                k
            },
        })
}

/// Parse one table; `earlier` holds the tables it may extend.
pub(crate) fn parse_table(family: &str, src: &str, earlier: &[Table]) -> Result<Table, String> {
    let file: TableFile = toml::from_str(src).map_err(|e| e.to_string())?;
    if file.family != family {
        return Err(format!("declares family `{}`", file.family));
    }
    parse_file(file, earlier)
}

fn parse_file(file: TableFile, earlier: &[Table]) -> Result<Table, String> {
    let mut rules = Vec::new();
    let pat = |s: &str| Pattern::parse(s);
    for (from, to) in &file.rename {
        rules.push(Rule {
            from: pat(from)?,
            action: Action::Load {
                targets: vec![pat(to)?],
                split: None,
                stack: None,
            },
            transpose: false,
            reshape: false,
            tied: None,
            optional: false,
            supersedes: None,
        });
    }
    for (from, to) in &file.optional {
        rules.push(Rule {
            from: pat(from)?,
            action: Action::Load {
                targets: vec![pat(to)?],
                split: None,
                stack: None,
            },
            transpose: false,
            reshape: false,
            tied: None,
            optional: true,
            supersedes: None,
        });
    }
    for (from, target) in &file.tied {
        rules.push(Rule {
            from: pat(from)?,
            action: Action::Load {
                targets: Vec::new(),
                split: None,
                stack: None,
            },
            transpose: false,
            reshape: false,
            tied: Some(pat(target)?),
            optional: false,
            supersedes: None,
        });
    }
    for (from, why) in &file.ignore {
        rules.push(Rule {
            from: pat(from)?,
            action: Action::Ignore(why.clone()),
            transpose: false,
            reshape: false,
            tied: None,
            optional: false,
            supersedes: None,
        });
    }
    for r in &file.rule {
        rules.push(rule(r)?);
    }
    for r in &rules {
        validate(r)?;
    }
    let mut prefixes = file.prefixes.clone();
    let model_types = file.model_types.clone(); // not inherited: each names its own
    if file.extends.is_none() && !file.drop.is_empty() {
        return Err("`drop` removes a parent's rules, but the table extends none".into());
    }
    if let Some(parent) = &file.extends {
        let Some(p) = earlier.iter().find(|t| &t.family == parent) else {
            return Err(format!("extends unknown (or later) table `{parent}`"));
        };
        let own: Vec<String> = rules.iter().map(|r| r.from.text.clone()).collect();
        for d in &file.drop {
            if !p.rules.iter().any(|r| &r.from.text == d) {
                return Err(format!(
                    "`drop` names `{d}`, which is not a rule of `{parent}`"
                ));
            }
        }
        rules.extend(
            p.rules
                .iter()
                .filter(|r| !own.contains(&r.from.text) && !file.drop.contains(&r.from.text))
                .cloned(),
        );
        if prefixes.is_empty() {
            prefixes = p.prefixes.clone();
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for r in &rules {
        if !seen.insert(r.from.text.clone()) {
            return Err(format!("two rules for `{}`", r.from.text));
        }
    }
    Ok(Table {
        family: file.family,
        description: file.description,
        model_types,
        prefixes,
        rules,
    })
}

fn rule(r: &RuleFile) -> Result<Rule, String> {
    let from = Pattern::parse(&r.from)?;
    let ctx = |m: &str| format!("rule for `{}`: {m}", r.from);
    if let Some(why) = &r.ignore {
        if r.to.is_some()
            || r.split.is_some()
            || r.stack.is_some()
            || r.tied.is_some()
            || r.supersedes.is_some()
        {
            return Err(ctx("`ignore` cannot be combined with a target"));
        }
        return Ok(Rule {
            from,
            action: Action::Ignore(why.clone()),
            transpose: false,
            reshape: false,
            tied: None,
            optional: false,
            supersedes: None,
        });
    }
    let (targets, split) = match (&r.to, &r.split) {
        (Some(_), Some(_)) => return Err(ctx("has both `to` and `split`")),
        (Some(to), None) => (vec![Pattern::parse(to)?], None),
        (None, Some(s)) => {
            if s.into.len() < 2 {
                return Err(ctx("`split.into` needs at least two targets"));
            }
            let groups = match &s.groups {
                None => None,
                Some(GroupsFile::Count(0)) => return Err(ctx("`split.groups` must be positive")),
                Some(GroupsFile::Count(n)) => Some(Groups::Count(*n)),
                Some(GroupsFile::Named(n)) if n == "kv_heads" => Some(Groups::KvHeads),
                Some(GroupsFile::Named(n)) => {
                    return Err(ctx(&format!(
                        "`split.groups` is a count or \"kv_heads\", not \"{n}\""
                    )));
                }
            };
            let targets = s
                .into
                .iter()
                .map(|t| Pattern::parse(t))
                .collect::<Result<_, _>>()?;
            (
                targets,
                Some(Split {
                    axis: s.axis,
                    groups,
                }),
            )
        }
        (None, None) if r.tied.is_some() => (Vec::new(), None),
        (None, None) => return Err(ctx("needs `to`, `split`, `tied` or `ignore`")),
    };
    if r.stack.is_some() && split.is_some() {
        return Err(ctx("`stack` and `split` cannot be combined"));
    }
    if r.reshape && (split.is_some() || r.stack.is_some()) {
        return Err(ctx("`reshape` applies to single-target rules only"));
    }
    Ok(Rule {
        from,
        action: Action::Load {
            targets,
            split,
            stack: r.stack.clone(),
        },
        transpose: r.transpose,
        reshape: r.reshape,
        tied: r.tied.as_deref().map(Pattern::parse).transpose()?,
        optional: r.optional,
        supersedes: r.supersedes.as_deref().map(Pattern::parse).transpose()?,
    })
}

/// Placeholders of targets must be bound by `from`; a stack placeholder
/// must be in `from` and in no target.
fn validate(r: &Rule) -> Result<(), String> {
    let from_vars: Vec<&str> = r.from.vars().collect();
    let ctx = |m: String| format!("rule for `{}`: {m}", r.from.text);
    let mut outs: Vec<&Pattern> = r.tied.iter().chain(&r.supersedes).collect();
    if let Action::Load { targets, stack, .. } = &r.action {
        outs.extend(targets);
        if let Some(s) = stack {
            if !from_vars.contains(&s.as_str()) {
                return Err(ctx(format!(
                    "stack placeholder `{{{s}}}` is not in the source pattern"
                )));
            }
            if targets.iter().any(|t| t.vars().any(|v| v == s)) {
                return Err(ctx(format!(
                    "stack placeholder `{{{s}}}` appears in a target"
                )));
            }
        }
    }
    for t in outs {
        for v in t.vars() {
            if !from_vars.contains(&v) {
                return Err(ctx(format!(
                    "target `{}` uses `{{{v}}}`, which the source pattern does not bind",
                    t.text
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_and_substitute() {
        let p = Pattern::parse("layers.{i}.experts.{e}.w1").unwrap();
        let b = p.matches("layers.12.experts.0.w1").unwrap();
        assert_eq!(b, vec![("i".to_string(), 12), ("e".to_string(), 0)]);
        assert!(p.matches("layers.01.experts.0.w1").is_none());
        assert!(p.matches("layers..experts.0.w1").is_none());
        assert!(p.matches("layers.1.experts.0.w1.x").is_none());
        let t = Pattern::parse("layers.{i}.moe.{e}").unwrap();
        assert_eq!(t.substitute(&vec![("i".into(), 3)]), "layers.3.moe.{e}");
        let same = Pattern::parse("a.{i}.b.{i}").unwrap();
        assert!(same.matches("a.1.b.1").is_some());
        assert!(same.matches("a.1.b.2").is_none());
    }

    #[test]
    fn bad_patterns_are_rejected() {
        assert!(Pattern::parse("a.{i").is_err());
        assert!(Pattern::parse("a.{I}").is_err());
        assert!(Pattern::parse("a.{i}{j}").is_err());
        assert!(Pattern::parse("a.{i}0").is_err());
        assert!(Pattern::parse("a}").is_err());
    }

    #[test]
    fn every_embedded_table_parses() {
        let all = tables().unwrap_or_else(|e| panic!("{e}"));
        // Every shipped family has a table (its own [tensors] or its parent's).
        assert_eq!(
            all.len(),
            kiln_compiler::import::family::shipped_sources().len()
        );
        for t in all.iter() {
            assert!(!t.description.is_empty(), "{} has no description", t.family);
        }
    }

    #[test]
    fn table_errors_are_reported() {
        let e = parse_table(
            "x",
            "family = \"x\"\n[rename]\n\"a.{i}\" = \"b.{j}\"\n",
            &[],
        )
        .unwrap_err();
        assert!(e.contains("does not bind"), "{e}");
        let e = parse_table("x", "family = \"x\"\nbogus = 1\n", &[]).unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
        let e = parse_table("x", "family = \"x\"\nextends = \"nope\"\n", &[]).unwrap_err();
        assert!(e.contains("extends unknown"), "{e}");
        let e = parse_table(
            "x",
            "family = \"x\"\n[[rule]]\nfrom = \"a\"\nsplit = { axis = 0, into = [\"b\", \"c\"], groups = \"heads\" }\n",
            &[],
        )
        .unwrap_err();
        assert!(e.contains("kv_heads"), "{e}");
    }
}
