//! Pre-flight: checkpoint headers mapped through a table, compared with the
//! model's parameters, before any tensor data is read.

use super::error::CheckpointError;
use super::reader::{Checkpoint, SUPPORTED_DTYPES, TensorInfo};
use super::table::{Action, Bindings, Groups, Rule, Table, table, tables};
use kiln_compiler::ir::{Graph, Op};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The parameters a model declares, and what the loader needs to know of
/// its shape beyond them.
#[derive(Debug, Clone, Default)]
pub(crate) struct ModelParams {
    /// Canonical name -> declared shape.
    pub shapes: BTreeMap<String, Vec<usize>>,
    /// Decoder layer -> KV heads (from the `past.{i}.k` inputs).
    pub kv_heads: BTreeMap<usize, usize>,
}

impl ModelParams {
    pub(crate) fn from_graphs(graphs: &[&Graph]) -> Result<ModelParams, CheckpointError> {
        let mut out = ModelParams::default();
        let mut problems = Vec::new();
        for g in graphs {
            for id in g.parameters() {
                let node = g.node(id);
                let Op::Parameter { name, .. } = &node.op else {
                    continue;
                };
                let shape: Option<Vec<usize>> =
                    node.ty.shape.iter().map(|d| d.as_const()).collect();
                let Some(shape) = shape else {
                    problems.push(format!(
                        "`{name}` in graph `{}` has a symbolic shape ({})",
                        g.name, node.ty
                    ));
                    continue;
                };
                match out.shapes.get(name) {
                    Some(prev) if *prev != shape => problems.push(format!(
                        "`{name}` is declared as {prev:?} and as {shape:?} (graph `{}`)",
                        g.name
                    )),
                    Some(_) => {}
                    None => {
                        out.shapes.insert(name.clone(), shape);
                    }
                }
            }
            for id in g.inputs_decl() {
                let node = g.node(id);
                let Op::Input { name } = &node.op else {
                    continue;
                };
                let layer = name
                    .strip_prefix("past.")
                    .and_then(|r| r.strip_suffix(".k"))
                    .and_then(|i| i.parse::<usize>().ok());
                if let (Some(i), Some(kv)) =
                    (layer, node.ty.shape.get(1).and_then(|d| d.as_const()))
                {
                    out.kv_heads.insert(i, kv);
                }
            }
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(CheckpointError::Model(problems.join("; ")))
        }
    }
}

/// How one step turns its source tensors into parameters.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum StepOp {
    /// One source, one target (reshaped to the target's shape).
    Copy,
    /// One source split along `axis` into the targets, in `groups`
    /// interleaved repetitions (1: contiguous parts).
    Split { axis: usize, groups: usize },
    /// Sources stacked along a new leading axis into one target.
    Stack,
    /// One source that must equal the (already loaded) target.
    Tied,
}

/// One unit of loading work.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Step {
    /// Checkpoint tensor names, in order.
    pub sources: Vec<String>,
    /// Swap the last two axes of each source first.
    pub transpose: bool,
    pub op: StepOp,
    /// Canonical names and declared shapes.
    pub targets: Vec<(String, Vec<usize>)>,
}

/// The result of a successful pre-flight: which checkpoint tensors become
/// which parameters, and how. Load it with [`Checkpoint::load`].
#[derive(Debug, Clone)]
pub struct Plan {
    pub(crate) path: PathBuf,
    pub(crate) family: String,
    pub(crate) steps: Vec<Step>,
    pub(crate) unused: Vec<(String, String)>,
    pub(crate) ignored: Vec<(String, String)>,
    pub(crate) total_bytes: u64,
}

impl Plan {
    /// The family whose table mapped the checkpoint.
    pub fn family(&self) -> &str {
        &self.family
    }

    /// Bytes of checkpoint data the load reads (progress total).
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Canonical parameter -> the checkpoint tensors it is built from.
    pub fn parameters(&self) -> BTreeMap<&str, Vec<&str>> {
        let mut out = BTreeMap::new();
        for s in self.steps.iter().filter(|s| s.op != StepOp::Tied) {
            for (t, _) in &s.targets {
                out.insert(t.as_str(), s.sources.iter().map(String::as_str).collect());
            }
        }
        out
    }

    /// Checkpoint tensors that are copies of a parameter (a tied LM head, an
    /// encoder's `embed_tokens`): checked equal at load, not loaded.
    /// `(checkpoint tensor, parameter)`.
    pub fn tied(&self) -> Vec<(&str, &str)> {
        self.steps
            .iter()
            .filter(|s| s.op == StepOp::Tied)
            .map(|s| (s.sources[0].as_str(), s.targets[0].0.as_str()))
            .collect()
    }

    /// Checkpoint tensors the table maps to parameters this model does not
    /// have and marks optional (a pooler under a mean-pooling spec):
    /// `(checkpoint tensor, canonical name)`.
    pub fn unused(&self) -> &[(String, String)] {
        &self.unused
    }

    /// Checkpoint tensors the table ignores: `(checkpoint tensor, reason)`.
    pub fn ignored(&self) -> &[(String, String)] {
        &self.ignored
    }
}

fn shape_str(info: &TensorInfo) -> String {
    format!("{}{:?}", info.dtype, info.shape)
}

/// Shape after an optional swap of the last two axes.
fn transformed(shape: &[usize], transpose: bool) -> Result<Vec<usize>, String> {
    let mut s = shape.to_vec();
    if transpose {
        let r = s.len();
        if r < 2 {
            return Err(format!("cannot transpose a rank-{r} tensor"));
        }
        s.swap(r - 2, r - 1);
    }
    Ok(s)
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Everything the builder accumulates.
struct Builder<'a> {
    ckpt: &'a Checkpoint,
    model: &'a ModelParams,
    problems: Vec<String>,
    steps: Vec<Step>,
    unused: Vec<(String, String)>,
    ignored: Vec<(String, String)>,
    /// Parameters some checkpoint tensor maps to (loaded or reported), so
    /// a problem with that tensor does not also report them missing.
    claimed: BTreeSet<String>,
}

impl Builder<'_> {
    fn check_dtype(&mut self, name: &str, info: &TensorInfo, target: &str) -> bool {
        if info.dtype.is_supported() {
            return true;
        }
        self.problems.push(format!(
            "dtype: checkpoint tensor `{name}` ({}) has dtype {}, which kiln cannot load \
             (supported: {}); it maps to `{target}`",
            self.ckpt.file_of(info).display(),
            info.dtype,
            SUPPORTED_DTYPES.join(", ")
        ));
        false
    }

    /// The targets are not declared by the model: tied copy, optional, or a problem.
    fn undeclared(
        &mut self,
        name: &str,
        info: &TensorInfo,
        rule: &Rule,
        b: &Bindings,
        targets: &[String],
    ) {
        if let Some(tied) = &rule.tied {
            let t = tied.substitute(b);
            if let Some(shape) = self.model.shapes.get(&t) {
                let ok = self.check_dtype(name, info, &t);
                match transformed(&info.shape, rule.transpose) {
                    Ok(s) if s == *shape || (rule.reshape && numel(&s) == numel(shape)) => {
                        if ok {
                            self.steps.push(Step {
                                sources: vec![name.to_string()],
                                transpose: rule.transpose,
                                op: StepOp::Tied,
                                targets: vec![(t, shape.clone())],
                            });
                        }
                    }
                    _ => self.problems.push(format!(
                        "shape: checkpoint tensor `{name}` {} is a copy of `{t}` (tied), which the model declares as {shape:?}",
                        shape_str(info)
                    )),
                }
                return;
            }
            if !rule.optional {
                let what = if targets.is_empty() {
                    String::new()
                } else {
                    format!(" maps to `{}`, and", targets.join("`, `"))
                };
                self.problems.push(format!(
                    "unexpected: checkpoint tensor `{name}` {}{what} is a copy of `{t}`, which the model does not have",
                    shape_str(info)
                ));
                return;
            }
        }
        if rule.optional {
            self.unused.push((name.to_string(), targets.join(", ")));
        } else {
            self.problems.push(format!(
                "unexpected: checkpoint tensor `{name}` {} maps to `{}`, which the model does not have",
                shape_str(info),
                targets.join("`, `")
            ));
        }
    }

    fn single(&mut self, name: &str, info: &TensorInfo, rule: &Rule, b: &Bindings) {
        let Action::Load { targets, split, .. } = &rule.action else {
            return;
        };
        let names: Vec<String> = targets.iter().map(|t| t.substitute(b)).collect();
        let declared: Vec<Option<&Vec<usize>>> =
            names.iter().map(|t| self.model.shapes.get(t)).collect();
        let n_declared = declared.iter().filter(|d| d.is_some()).count();
        if names.is_empty() || n_declared == 0 {
            self.undeclared(name, info, rule, b, &names);
            return;
        }
        if n_declared < names.len() {
            let missing: Vec<&str> = names
                .iter()
                .zip(&declared)
                .filter(|(_, d)| d.is_none())
                .map(|(n, _)| n.as_str())
                .collect();
            self.problems.push(format!(
                "unexpected: checkpoint tensor `{name}` {} splits into `{}`, but the model does not have `{}`",
                shape_str(info),
                names.join("`, `"),
                missing.join("`, `")
            ));
            return;
        }
        let shapes: Vec<Vec<usize>> = declared
            .into_iter()
            .map(|d| d.expect("all declared").clone())
            .collect();
        self.claimed.extend(names.iter().cloned());
        let dtype_ok = self.check_dtype(name, info, &names.join("`, `"));
        let src = match transformed(&info.shape, rule.transpose) {
            Ok(s) => s,
            Err(e) => {
                self.problems.push(format!(
                    "shape: checkpoint tensor `{name}` {}: {e} (for `{}`)",
                    shape_str(info),
                    names[0]
                ));
                return;
            }
        };
        let how = if rule.transpose {
            format!(", transposed to {src:?},")
        } else {
            String::new()
        };
        let op = match split {
            None => {
                let fits = if rule.reshape {
                    numel(&src) == numel(&shapes[0])
                } else {
                    src == shapes[0]
                };
                if !fits {
                    self.problems.push(format!(
                        "shape: checkpoint tensor `{name}` {}{how} does not fit parameter `{}` {:?}",
                        shape_str(info),
                        names[0],
                        shapes[0]
                    ));
                    return;
                }
                StepOp::Copy
            }
            Some(sp) => {
                let groups = match &sp.groups {
                    None => 1,
                    Some(Groups::Count(n)) => *n,
                    Some(Groups::KvHeads) => {
                        let layer = b.iter().find(|(v, _)| v == "i").map(|(_, i)| *i);
                        match layer.and_then(|i| self.model.kv_heads.get(&i)) {
                            Some(&kv) => kv,
                            None => {
                                self.problems.push(format!(
                                    "shape: checkpoint tensor `{name}` is split per KV head, but the model has no \
                                     decoder KV-cache input for its layer to count them (for `{}`)",
                                    names.join("`, `")
                                ));
                                return;
                            }
                        }
                    }
                };
                let axis = sp.axis;
                let mut why = None;
                if axis >= src.len() {
                    why = Some(format!("it has no axis {axis}"));
                } else {
                    let total: usize = shapes
                        .iter()
                        .map(|s| s.get(axis).copied().unwrap_or(0))
                        .sum();
                    for s in &shapes {
                        let others_match = s.len() == src.len()
                            && s.iter()
                                .zip(&src)
                                .enumerate()
                                .all(|(a, (x, y))| a == axis || x == y);
                        if !others_match {
                            why = Some(format!(
                                "the parts must be {src:?} except along axis {axis}"
                            ));
                        } else if s[axis] % groups != 0 {
                            why =
                                Some(format!("{} is not divisible into {groups} groups", s[axis]));
                        }
                    }
                    if why.is_none() && total != src[axis] {
                        why = Some(format!(
                            "the parts add up to {total} along axis {axis}, not {}",
                            src[axis]
                        ));
                    }
                }
                if let Some(why) = why {
                    let parts: Vec<String> = names
                        .iter()
                        .zip(&shapes)
                        .map(|(n, s)| format!("`{n}` {s:?}"))
                        .collect();
                    self.problems.push(format!(
                        "shape: checkpoint tensor `{name}` {}{how} does not split into {}: {why}",
                        shape_str(info),
                        parts.join(", ")
                    ));
                    return;
                }
                StepOp::Split { axis, groups }
            }
        };
        if dtype_ok {
            self.steps.push(Step {
                sources: vec![name.to_string()],
                transpose: rule.transpose,
                op,
                targets: names.into_iter().zip(shapes).collect(),
            });
        }
    }

    /// Sources of one stacked target: `(stack index, name)`.
    fn stack(&mut self, rule: &Rule, target: String, b: &Bindings, mut parts: Vec<(usize, &str)>) {
        parts.sort();
        let Some(shape) = self.model.shapes.get(&target).cloned() else {
            for (_, name) in &parts {
                let info = &self.ckpt.tensors()[*name];
                self.undeclared(name, info, rule, b, std::slice::from_ref(&target));
            }
            return;
        };
        self.claimed.insert(target.clone());
        let var = match &rule.action {
            Action::Load { stack: Some(v), .. } => v.clone(),
            _ => return,
        };
        let first = parts[0].1;
        // The prefix the checkpoint spells these names with.
        let mut b0 = b.clone();
        b0.push((var.clone(), parts[0].0));
        let prefix = first
            .strip_suffix(rule.from.substitute(&b0).as_str())
            .unwrap_or("");
        let expected = shape.first().copied().unwrap_or(0);
        let have: BTreeSet<usize> = parts.iter().map(|(i, _)| *i).collect();
        let missing: Vec<String> = (0..expected)
            .filter(|i| !have.contains(i))
            .map(|i| {
                let mut bi = b.clone();
                bi.retain(|(v, _)| *v != var);
                bi.push((var.clone(), i));
                format!("`{prefix}{}`", rule.from.substitute(&bi))
            })
            .collect();
        let extra: Vec<&str> = parts
            .iter()
            .filter(|(i, _)| *i >= expected)
            .map(|(_, n)| *n)
            .collect();
        let mut ok = true;
        if !missing.is_empty() {
            ok = false;
            self.problems.push(format!(
                "missing: parameter `{target}` {shape:?} stacks {expected} tensors like `{first}`; \
                 the checkpoint lacks {}",
                missing.join(", ")
            ));
        }
        for name in extra {
            ok = false;
            self.problems.push(format!(
                "unexpected: checkpoint tensor `{name}` would be entry {{{var}}} >= {expected} of parameter `{target}` {shape:?}"
            ));
        }
        for (_, name) in &parts {
            let info = &self.ckpt.tensors()[*name];
            ok &= self.check_dtype(name, info, &target);
            match transformed(&info.shape, rule.transpose) {
                Ok(s) if shape.len() == s.len() + 1 && s == shape[1..] => {}
                _ => {
                    ok = false;
                    self.problems.push(format!(
                        "shape: checkpoint tensor `{name}` {}{} does not fit one entry of parameter `{target}` {shape:?}",
                        shape_str(info),
                        if rule.transpose { " (transposed)" } else { "" }
                    ));
                }
            }
        }
        if ok {
            self.steps.push(Step {
                sources: parts.iter().map(|(_, n)| n.to_string()).collect(),
                transpose: rule.transpose,
                op: StepOp::Stack,
                targets: vec![(target, shape)],
            });
        }
    }
}

/// Stacked targets: (rule, target) -> (bindings but the stack's, [(index, source)]).
type StackGroups<'a> = BTreeMap<(usize, String), (Bindings, Vec<(usize, &'a str)>)>;

/// Map `ckpt` through `table` and compare with `model`. Returns the plan
/// and every problem found (the plan is only usable if there are none).
pub(crate) fn build(ckpt: &Checkpoint, table: &Table, model: &ModelParams) -> (Plan, Vec<String>) {
    let mut bld = Builder {
        ckpt,
        model,
        problems: Vec::new(),
        steps: Vec::new(),
        unused: Vec::new(),
        ignored: Vec::new(),
        claimed: BTreeSet::new(),
    };
    // Which prefix the names starting with each first segment (`layers`,
    // `lm_head`) carry, to name missing tensors the way this checkpoint would.
    let mut prefix_votes: BTreeMap<(String, Option<usize>), usize> = BTreeMap::new();
    let mut stacks: StackGroups = BTreeMap::new();
    // Tensors another present tensor supersedes (`supersedes` rules).
    let mut superseded: BTreeMap<String, &str> = BTreeMap::new();
    for name in ckpt.tensors().keys() {
        let (m, prefix) = table.lookup(name);
        if let [(r, b)] = m.as_slice()
            && let Some(other) = &table.rules[*r].supersedes
        {
            let p = prefix.map_or("", |p| table.prefixes[p].as_str());
            superseded.insert(format!("{p}{}", other.substitute(b)), name.as_str());
        }
    }
    for (name, info) in ckpt.tensors() {
        let (matches, prefix) = table.lookup(name);
        if let Some(by) = superseded.get(name.as_str()) {
            bld.ignored.push((
                name.clone(),
                format!("superseded by `{by}`, which the model uses when both are present"),
            ));
            continue;
        }
        match matches.as_slice() {
            [] => bld.problems.push(format!(
                "unexpected: checkpoint tensor `{name}` {} matches no rule of the `{}` table",
                shape_str(info),
                table.family
            )),
            [(r, b)] => {
                let stripped = prefix.map_or(name.as_str(), |p| &name[table.prefixes[p].len()..]);
                *prefix_votes
                    .entry((first_segment(stripped), prefix))
                    .or_default() += 1;
                let rule = &table.rules[*r];
                match &rule.action {
                    Action::Ignore(why) => bld.ignored.push((name.clone(), why.clone())),
                    Action::Load {
                        targets,
                        stack: Some(var),
                        ..
                    } => {
                        let idx = b.iter().find(|(v, _)| v == var).map_or(0, |(_, i)| *i);
                        let mut rest = b.clone();
                        rest.retain(|(v, _)| v != var);
                        let target = targets[0].substitute(&rest);
                        stacks
                            .entry((*r, target))
                            .or_insert_with(|| (rest, Vec::new()))
                            .1
                            .push((idx, name.as_str()));
                    }
                    Action::Load { .. } => bld.single(name, info, rule, b),
                }
            }
            several => {
                let pats: Vec<&str> = several
                    .iter()
                    .map(|(r, _)| table.rules[*r].from.text())
                    .collect();
                bld.problems.push(format!(
                    "checkpoint tensor `{name}` matches several rules of the `{}` table ({}): a bug in the table",
                    table.family,
                    pats.join(", ")
                ));
            }
        }
    }
    for ((r, target), (b, parts)) in stacks {
        let rule = &table.rules[r];
        bld.stack(rule, target, &b, parts);
    }

    // Each parameter from exactly one step.
    let mut provided: BTreeMap<&str, &str> = BTreeMap::new();
    let mut dupes = Vec::new();
    for s in bld.steps.iter().filter(|s| s.op != StepOp::Tied) {
        for (t, _) in &s.targets {
            if let Some(prev) = provided.insert(t, &s.sources[0]) {
                dupes.push(format!(
                    "duplicate: parameter `{t}` is provided by both `{prev}` and `{}`",
                    s.sources[0]
                ));
            }
        }
    }
    let prefix_for = |source: &str| {
        let seg = first_segment(source);
        prefix_votes
            .iter()
            .filter(|((s, _), _)| *s == seg)
            .max_by_key(|(_, n)| **n)
            .and_then(|((_, p), _)| *p)
            .map_or("", |p| table.prefixes[p].as_str())
    };
    let mut missing = Vec::new();
    for (p, shape) in &model.shapes {
        if provided.contains_key(p.as_str()) || bld.claimed.contains(p) {
            continue;
        }
        let expected = expected_source(table, p).map(|s| format!("{}{s}", prefix_for(&s)));
        let mut line = match &expected {
            Some(s) => format!("missing: parameter `{p}` {shape:?} (checkpoint tensor `{s}`)"),
            None => format!(
                "missing: parameter `{p}` {shape:?} (no rule of the `{}` table produces it)",
                table.family
            ),
        };
        if p == "head.weight" && provided.contains_key("embed.tokens") {
            line.push_str(
                "; the checkpoint's head is probably tied to the embedding: set `tied = true` under [head] in the spec",
            );
        }
        missing.push(line);
    }
    let mut problems = bld.problems;
    problems.extend(dupes);
    problems.extend(missing);
    let total_bytes = bld
        .steps
        .iter()
        .flat_map(|s| &s.sources)
        .map(|n| ckpt.tensors()[n].byte_len() as u64)
        .sum();
    let plan = Plan {
        path: ckpt.path().to_path_buf(),
        family: table.family.clone(),
        steps: bld.steps,
        unused: bld.unused,
        ignored: bld.ignored,
        total_bytes,
    };
    (plan, problems)
}

fn first_segment(name: &str) -> String {
    name.split('.').next().unwrap_or("").to_string()
}

/// The checkpoint name (without prefix) a table expects for parameter `p`.
fn expected_source(table: &Table, p: &str) -> Option<String> {
    table.rules.iter().find_map(|r| match &r.action {
        Action::Load { targets, .. } => targets
            .iter()
            .find_map(|t| t.matches(p))
            .map(|b| r.from.substitute(&b)),
        Action::Ignore(_) => None,
    })
}

fn finish(path: &Path, plan: Plan, problems: Vec<String>) -> Result<Plan, CheckpointError> {
    if problems.is_empty() {
        Ok(plan)
    } else {
        Err(CheckpointError::Mismatch {
            path: path.to_path_buf(),
            family: plan.family,
            problems,
        })
    }
}

/// Choose a table (explicit family, config.json `model_type`, or
/// auto-detection) and build a problem-free plan.
pub(crate) fn choose(
    ckpt: &Checkpoint,
    model: &ModelParams,
    family: Option<&str>,
) -> Result<Plan, CheckpointError> {
    let path = ckpt.path();
    if let Some(f) = family {
        let t = table(f)?;
        let (plan, problems) = build(ckpt, &t, model);
        return finish(path, plan, problems);
    }
    // kiln's own names (`kiln export`): every tensor is a parameter of the
    // model under its canonical name.
    if mostly_canonical(ckpt, model)
        && let Some(t) = canonical_table(model)
    {
        let (plan, problems) = build(ckpt, &t, model);
        return finish(path, plan, problems);
    }
    let all = tables()?;
    if let Some(mt) = ckpt.model_type()
        && let Some(t) = all.iter().find(|t| t.model_types.iter().any(|m| m == mt))
    {
        let (plan, problems) = build(ckpt, t, model);
        return finish(path, plan, problems);
    }
    auto_detect(ckpt, model, &all)
}

/// The family name of checkpoints saved under kiln's canonical parameter
/// names (`kiln export`).
pub const CANONICAL: &str = "kiln";

/// Whether most tensors of `ckpt` are named like the model's parameters
/// (then the canonical table's pre-flight names any stray tensor).
fn mostly_canonical(ckpt: &Checkpoint, model: &ModelParams) -> bool {
    let names = ckpt.tensors();
    let known = names
        .keys()
        .filter(|n| model.shapes.contains_key(*n))
        .count();
    known > 0 && 2 * known > names.len()
}

/// An identity table over the model's parameters: kiln's own names.
fn canonical_table(model: &ModelParams) -> Option<Table> {
    let quote = |s: &str| toml::Value::String(s.to_string()).to_string();
    let mut src = format!(
        "family = \"{CANONICAL}\"\ndescription = \"kiln's canonical parameter names (kiln export)\"\n[rename]\n"
    );
    for n in model.shapes.keys() {
        src.push_str(&format!("{} = {}\n", quote(n), quote(n)));
    }
    super::table::parse_table(CANONICAL, &src, &[]).ok()
}

/// Try every table; use the one that fits (or several that map identically).
fn auto_detect(
    ckpt: &Checkpoint,
    model: &ModelParams,
    all: &[Table],
) -> Result<Plan, CheckpointError> {
    let path = ckpt.path();
    let mut results: Vec<(Plan, Vec<String>)> = all.iter().map(|t| build(ckpt, t, model)).collect();
    let fits: Vec<&Plan> = results
        .iter()
        .filter(|(_, p)| p.is_empty())
        .map(|(p, _)| p)
        .collect();
    match fits.as_slice() {
        [] => {
            // kiln's own names compete too, so a canonical checkpoint for
            // another spec lists its real differences.
            if let Some(t) = canonical_table(model) {
                results.push(build(ckpt, &t, model));
            }
            let (plan, problems) = results
                .into_iter()
                .min_by_key(|(_, p)| p.len())
                .expect("at least one table");
            Err(CheckpointError::NoTableFits {
                path: path.to_path_buf(),
                model_type: ckpt.model_type().map(str::to_string),
                closest: plan.family,
                problems,
            })
        }
        [first, rest @ ..] => {
            if rest.iter().all(|p| p.steps == first.steps) {
                Ok((*first).clone())
            } else {
                Err(CheckpointError::Ambiguous {
                    path: path.to_path_buf(),
                    families: fits.iter().map(|p| p.family.clone()).collect(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::table::parse_table;
    use super::*;

    /// A checkpoint with tensors `x` and `y` of shape [2].
    fn xy() -> (tempfile::TempDir, Checkpoint) {
        let header = r#"{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"y":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&[0; 16]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        std::fs::write(&path, bytes).unwrap();
        let ckpt = Checkpoint::open(&path).unwrap();
        (dir, ckpt)
    }

    fn model(names: &[&str]) -> ModelParams {
        ModelParams {
            shapes: names.iter().map(|n| (n.to_string(), vec![2])).collect(),
            kv_heads: BTreeMap::new(),
        }
    }

    #[test]
    fn tables_that_fit_but_differ_are_ambiguous() {
        let (_d, ckpt) = xy();
        let one = parse_table(
            "one",
            "family = \"one\"\n[rename]\nx = \"a\"\ny = \"b\"\n",
            &[],
        )
        .unwrap();
        let two = parse_table(
            "two",
            "family = \"two\"\n[rename]\nx = \"b\"\ny = \"a\"\n",
            &[],
        )
        .unwrap();
        let same = parse_table(
            "same",
            "family = \"same\"\n[rename]\nx = \"a\"\ny = \"b\"\n",
            &[],
        )
        .unwrap();
        let m = model(&["a", "b"]);
        let e = auto_detect(&ckpt, &m, &[one.clone(), two])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("the mapping tables `one`, `two` all fit it but map it differently"),
            "{e}"
        );
        // Identical mappings are no ambiguity: the first table is reported.
        let plan = auto_detect(&ckpt, &m, &[one, same]).unwrap();
        assert_eq!(plan.family(), "one");
    }

    #[test]
    fn optional_and_tied_rules_depend_on_the_model() {
        let (_d, ckpt) = xy();
        let t = parse_table(
            "t",
            "family = \"t\"\n[rename]\nx = \"a\"\n[[rule]]\nfrom = \"y\"\nto = \"b\"\ntied = \"a\"\n",
            &[],
        )
        .unwrap();
        // The model declares b: y loads into it.
        let (plan, problems) = build(&ckpt, &t, &model(&["a", "b"]));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(plan.parameters()["b"], vec!["y"]);
        // It does not: y must be a copy of a.
        let (plan, problems) = build(&ckpt, &t, &model(&["a"]));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(plan.tied(), vec![("y", "a")]);
        // Optional: skipped and listed.
        let t = parse_table(
            "t",
            "family = \"t\"\n[rename]\nx = \"a\"\n[optional]\ny = \"b\"\n",
            &[],
        )
        .unwrap();
        let (plan, problems) = build(&ckpt, &t, &model(&["a"]));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(plan.unused(), &[("y".to_string(), "b".to_string())]);
        // Neither: reported.
        let t = parse_table("t", "family = \"t\"\n[rename]\nx = \"a\"\ny = \"b\"\n", &[]).unwrap();
        let (_, problems) = build(&ckpt, &t, &model(&["a"]));
        assert_eq!(
            problems,
            vec![
                "unexpected: checkpoint tensor `y` F32[2] maps to `b`, which the model does not have"
            ]
        );
    }
}
