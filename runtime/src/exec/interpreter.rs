//! The reference interpreter: plain, obviously correct f32 execution of an IR
//! [`Graph`], the oracle every backend is tested against.
//!
//! A run (1) checks the supplied inputs against the graph's `Input` nodes
//! and binds the shape symbols (`batch`, `seq`, `past`, ...) from them,
//! (2) checks the weights, (3) evaluates the nodes that reach an output in
//! [`Graph::topo_order`], freeing each intermediate after its last use, and
//! (4) checks every computed value against the node's declared type with the
//! symbols substituted, so an interpreter or IR bug surfaces as an error at
//! the node that caused it. The numeric contract is in the crate docs.

use crate::error::{Result, RuntimeError};
use crate::exec::ops;
use crate::tensor::Tensor;
use crate::weights::Weights;
use kiln_compiler::ir::{DType, Dim, Graph, Node, NodeId, Op, TensorType};
use std::borrow::{Borrow, Cow};
use std::collections::BTreeMap;

/// Symbol values for one run, e.g. `{batch: 1, past: 0, seq: 8}`.
pub type Bindings = BTreeMap<String, usize>;

/// A named input tensor: any `(name, tensor)` pair whose name is a string
/// (`&str`, `String`) and whose tensor is owned or borrowed, or a reference
/// to one. So `run` takes `[("x", &x)]`, `&[("x", x)]`, a
/// `Vec<(String, Tensor)>` or a `&HashMap<String, Tensor>`.
pub trait NamedTensor {
    /// The input's name.
    fn name(&self) -> &str;
    /// The input's value.
    fn tensor(&self) -> &Tensor;
}

impl<S: AsRef<str>, T: Borrow<Tensor>> NamedTensor for (S, T) {
    fn name(&self) -> &str {
        self.0.as_ref()
    }
    fn tensor(&self) -> &Tensor {
        self.1.borrow()
    }
}

impl<N: NamedTensor + ?Sized> NamedTensor for &N {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn tensor(&self) -> &Tensor {
        (**self).tensor()
    }
}

/// Collect named inputs into borrowed pairs.
fn pairs<N: NamedTensor>(inputs: &[N]) -> Vec<(&str, &Tensor)> {
    inputs.iter().map(|i| (i.name(), i.tensor())).collect()
}

/// Run `graph` once: shorthand for [`Interpreter::new`] then [`Interpreter::run`].
pub fn run<N: NamedTensor>(
    graph: &Graph,
    weights: &Weights,
    inputs: impl IntoIterator<Item = N>,
) -> Result<Outputs> {
    Interpreter::new(graph)?.run(weights, inputs)
}

/// A graph prepared for repeated runs (e.g. one per decode step): the
/// evaluation order and use counts are computed once.
#[derive(Debug, Clone)]
pub struct Interpreter<'g> {
    graph: &'g Graph,
    /// Nodes that reach an output, in topological order.
    order: Vec<NodeId>,
    /// Operands of each node in slot order, indexed by node index.
    operands: Vec<Vec<NodeId>>,
    /// How many times each node's value is read (by live consumers, once per
    /// slot, and once per output entry), indexed by node index.
    uses: Vec<usize>,
    /// `(name, node)` of every `Input` node, live or not.
    inputs: Vec<(&'g str, NodeId)>,
}

/// Statistics of one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Nodes evaluated (those that reach an output).
    pub nodes_evaluated: usize,
    /// Peak total elements of intermediate values held at once (inputs and
    /// weights, which the caller owns, are not counted).
    pub peak_live_elements: usize,
}

/// The named results of a run, in the graph's output order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outputs {
    entries: Vec<(String, Tensor)>,
    bindings: Bindings,
    stats: RunStats,
}

impl Outputs {
    /// Outputs produced by another executor (no interpreter statistics).
    pub(crate) fn from_parts(entries: Vec<(String, Tensor)>, bindings: Bindings) -> Outputs {
        Outputs {
            entries,
            bindings,
            stats: RunStats::default(),
        }
    }

    /// The output named `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// Remove and return the output named `name`.
    pub fn remove(&mut self, name: &str) -> Option<Tensor> {
        let i = self.entries.iter().position(|(n, _)| n == name)?;
        Some(self.entries.remove(i).1)
    }

    /// `(name, tensor)` in the graph's output order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.entries.iter().map(|(n, t)| (n.as_str(), t))
    }

    /// Number of outputs.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the graph has no outputs.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The outputs as `(name, tensor)` pairs in the graph's output order.
    pub fn into_vec(self) -> Vec<(String, Tensor)> {
        self.entries
    }

    /// The symbol values the run bound from its inputs.
    pub fn bindings(&self) -> &Bindings {
        &self.bindings
    }

    /// Statistics of the run.
    pub fn stats(&self) -> RunStats {
        self.stats
    }
}

/// `graph.outputs[name]`, panicking like a map index if absent.
impl std::ops::Index<&str> for Outputs {
    type Output = Tensor;
    fn index(&self, name: &str) -> &Tensor {
        self.get(name)
            .unwrap_or_else(|| panic!("no output named `{name}`"))
    }
}

impl<'g> Interpreter<'g> {
    /// Prepare `graph`. Fails if it has a cycle or an output names a missing node.
    pub fn new(graph: &'g Graph) -> Result<Interpreter<'g>> {
        let topo = graph.topo_order();
        if topo.len() != graph.g.node_count() {
            return Err(RuntimeError::MalformedGraph(format!(
                "graph `{}` has a cycle",
                graph.name
            )));
        }
        let bound = graph
            .g
            .node_indices()
            .map(|i| i.index() + 1)
            .max()
            .unwrap_or(0);
        let mut uses = vec![0usize; bound];
        let mut live = vec![false; bound];
        for (name, id) in &graph.outputs {
            if !graph.g.contains_node(*id) {
                return Err(RuntimeError::MalformedGraph(format!(
                    "output `{name}` of graph `{}` names missing node {}",
                    graph.name,
                    id.index()
                )));
            }
            live[id.index()] = true;
            uses[id.index()] += 1;
        }
        let mut operands = vec![Vec::new(); bound];
        for &id in topo.iter().rev() {
            if live[id.index()] {
                let ops = graph.inputs(id);
                for &o in &ops {
                    live[o.index()] = true;
                    uses[o.index()] += 1;
                }
                operands[id.index()] = ops;
            }
        }
        let inputs = graph
            .inputs_decl()
            .into_iter()
            .filter_map(|id| match &graph.node(id).op {
                Op::Input { name } => Some((name.as_str(), id)),
                _ => None,
            })
            .collect();
        Ok(Interpreter {
            graph,
            order: topo.into_iter().filter(|id| live[id.index()]).collect(),
            operands,
            uses,
            inputs,
        })
    }

    /// The graph being interpreted.
    pub fn graph(&self) -> &'g Graph {
        self.graph
    }

    /// Check `inputs` against the graph's `Input` nodes and bind the shape
    /// symbols. A declared dim that is a lone symbol binds it; every other
    /// dim (constants, `past+seq`) is checked once all are bound. Every
    /// declared input must be supplied exactly once, with its dtype and rank.
    pub fn bind<N: NamedTensor>(&self, inputs: impl IntoIterator<Item = N>) -> Result<Bindings> {
        let inputs: Vec<N> = inputs.into_iter().collect();
        self.bind_pairs(&pairs(&inputs))
    }

    fn bind_pairs(&self, inputs: &[(&str, &Tensor)]) -> Result<Bindings> {
        let declared: Vec<(&str, &TensorType)> = self
            .inputs
            .iter()
            .map(|&(name, id)| (name, &self.graph.node(id).ty))
            .collect();
        bind_inputs(&self.graph.name, &declared, &metas(inputs))
    }

    /// Run the graph on `inputs` (every declared input, by name).
    pub fn run<N: NamedTensor>(
        &self,
        weights: &Weights,
        inputs: impl IntoIterator<Item = N>,
    ) -> Result<Outputs> {
        self.run_observed(weights, inputs, &mut |_, _| {})
    }

    /// Like [`Interpreter::run`], also calling `observe(node, value)` on every
    /// evaluated node's value (inputs and parameters included) as it is
    /// computed, e.g. to compare a backend's intermediates node by node.
    pub fn run_observed<N: NamedTensor>(
        &self,
        weights: &Weights,
        inputs: impl IntoIterator<Item = N>,
        observe: &mut dyn FnMut(NodeId, &Tensor),
    ) -> Result<Outputs> {
        let inputs: Vec<N> = inputs.into_iter().collect();
        let inputs = pairs(&inputs);
        let bindings = self.bind_pairs(&inputs)?;
        weights.check(self.graph)?;

        let mut values: Vec<Option<Cow<'_, Tensor>>> = vec![None; self.uses.len()];
        let mut remaining = self.uses.clone();
        let mut stats = RunStats::default();
        let mut live_elements = 0usize;

        for &id in &self.order {
            let node = self.graph.node(id);
            let operands = &self.operands[id.index()];
            let value: Cow<'_, Tensor> = match &node.op {
                Op::Input { name } => {
                    let (_, t) = inputs
                        .iter()
                        .find(|(n, _)| n == name)
                        .expect("checked by bind");
                    Cow::Borrowed(*t)
                }
                Op::Parameter { name, .. } => {
                    weights.dense(name).expect("checked by Weights::check")?
                }
                Op::Reshape
                    if operands.len() == 1
                        && remaining[operands[0].index()] == 1
                        && matches!(values[operands[0].index()], Some(Cow::Owned(_))) =>
                {
                    // Last use of an owned value: reuse its buffer.
                    let x = values[operands[0].index()]
                        .take()
                        .expect("matched above")
                        .into_owned();
                    live_elements -= x.numel();
                    let shape = self.shape_of(node, &bindings)?;
                    Cow::Owned(
                        x.reshape(&shape)
                            .map_err(|e| self.op_error(id, node, e.to_string()))?,
                    )
                }
                _ => {
                    let args: Vec<&Tensor> = operands
                        .iter()
                        .map(|o| {
                            values[o.index()]
                                .as_deref()
                                .expect("operand evaluated before use")
                        })
                        .collect();
                    Cow::Owned(self.eval(id, node, &args, &bindings)?)
                }
            };
            if let Cow::Owned(t) = &value {
                self.check_type(id, node, t, &bindings)?;
                live_elements += t.numel();
                stats.peak_live_elements = stats.peak_live_elements.max(live_elements);
            }
            observe(id, &value);
            stats.nodes_evaluated += 1;
            values[id.index()] = Some(value);
            for o in operands {
                remaining[o.index()] -= 1;
                if remaining[o.index()] == 0
                    && let Some(Cow::Owned(t)) = values[o.index()].take()
                {
                    live_elements -= t.numel();
                }
            }
        }

        let mut entries = Vec::with_capacity(self.graph.outputs.len());
        for (name, id) in &self.graph.outputs {
            let i = id.index();
            remaining[i] -= 1;
            let t = if remaining[i] == 0 {
                values[i].take().expect("output evaluated").into_owned()
            } else {
                values[i].as_deref().expect("output evaluated").clone()
            };
            entries.push((name.clone(), t));
        }
        Ok(Outputs {
            entries,
            bindings,
            stats,
        })
    }

    /// Evaluate one computing node (not `Input`/`Parameter`) on its operands.
    fn eval(&self, id: NodeId, node: &Node, args: &[&Tensor], env: &Bindings) -> Result<Tensor> {
        let dtype = node.ty.dtype;
        let arity = |n: usize| {
            if args.len() == n {
                Ok(())
            } else {
                Err(format!("expects {n} operands, got {}", args.len()))
            }
        };
        let result = match &node.op {
            Op::Input { .. } | Op::Parameter { .. } => unreachable!("bound by the caller"),
            Op::Scalar(v) => ops::fill(dtype, self.shape_of(node, env)?, *v),
            Op::Literal(values) => ops::literal(dtype, self.shape_of(node, env)?, values),
            Op::Iota { axis } => ops::iota(dtype, self.shape_of(node, env)?, *axis),
            Op::Unary(u) => arity(1).and_then(|()| ops::unary(*u, args[0])),
            Op::Binary(b) => arity(2).and_then(|()| ops::binary(*b, args[0], args[1])),
            Op::Select => arity(3).and_then(|()| ops::select(args[0], args[1], args[2])),
            Op::Reduce { op, axes } => arity(1).and_then(|()| ops::reduce(*op, args[0], axes)),
            Op::MatMul => arity(2).and_then(|()| ops::matmul(args[0], args[1])),
            Op::Reshape => {
                let shape = self.shape_of(node, env)?;
                arity(1).and_then(|()| {
                    args[0]
                        .clone()
                        .reshape(&shape)
                        .map_err(|_| format!("cannot reshape {:?} to {shape:?}", args[0].shape()))
                })
            }
            Op::Permute { perm } => arity(1).and_then(|()| ops::permute(args[0], perm)),
            Op::Slice { axis, start, end } => {
                let start = self.dim_of(node, start, env)?;
                let end = self.dim_of(node, end, env)?;
                arity(1).and_then(|()| ops::slice(args[0], *axis, start, end))
            }
            Op::Concat { axis } => ops::concat(args, *axis),
            Op::Gather { axis } => arity(2).and_then(|()| ops::gather(args[0], args[1], *axis)),
            Op::Cast => arity(1).and_then(|()| ops::cast(args[0], dtype)),
        };
        result.map_err(|message| self.op_error(id, node, message))
    }

    fn op_error(&self, id: NodeId, node: &Node, message: String) -> RuntimeError {
        RuntimeError::Op {
            scope: scope_of(node),
            op: node.op.to_string(),
            node: id.index(),
            message,
        }
    }

    fn dim_of(&self, node: &Node, dim: &Dim, env: &Bindings) -> Result<usize> {
        eval_dim(dim, env).ok_or_else(|| RuntimeError::UnboundDim {
            scope: scope_of(node),
            op: node.op.to_string(),
            dim: dim.to_string(),
            bindings: fmt_bindings(env),
        })
    }

    /// The node's declared shape with the symbols substituted.
    fn shape_of(&self, node: &Node, env: &Bindings) -> Result<Vec<usize>> {
        node.ty
            .shape
            .iter()
            .map(|d| self.dim_of(node, d, env))
            .collect()
    }

    /// A computed value must have the node's declared dtype and shape.
    fn check_type(&self, id: NodeId, node: &Node, t: &Tensor, env: &Bindings) -> Result<()> {
        let shape = self.shape_of(node, env)?;
        if t.dtype() != node.ty.dtype || t.shape() != shape.as_slice() {
            return Err(RuntimeError::Internal {
                message: format!(
                    "{}: {} (node {}): computed {}{:?} but the node declares {} = {shape:?}",
                    scope_of(node),
                    node.op,
                    id.index(),
                    t.dtype(),
                    t.shape(),
                    node.ty
                ),
            });
        }
        Ok(())
    }
}

/// A node's scope for messages; top-level nodes have an empty scope.
fn scope_of(node: &Node) -> String {
    if node.scope.is_empty() {
        "(top level)".into()
    } else {
        node.scope.clone()
    }
}

fn eval_dim(dim: &Dim, env: &Bindings) -> Option<usize> {
    dim.eval(&|s| env.get(s).copied())
}

fn fmt_bindings(env: &Bindings) -> String {
    let parts: Vec<String> = env.iter().map(|(s, v)| format!("{s}: {v}")).collect();
    parts.join(", ")
}

/// What binding needs of an input: its name, dtype and shape (a host tensor
/// or one resident on a device).
pub(crate) type InputMeta<'a> = (&'a str, DType, &'a [usize]);

/// The [`InputMeta`] of host tensors.
pub(crate) fn metas<'a>(inputs: &[(&'a str, &'a Tensor)]) -> Vec<InputMeta<'a>> {
    inputs
        .iter()
        .map(|&(n, t)| (n, t.dtype(), t.shape()))
        .collect()
}

/// Bind the length symbols of a graph's (or kernel program's) `declared`
/// inputs from the supplied inputs: a declared dim that is a lone symbol
/// binds it; every other dim (constants, `past+seq`) is checked once all are
/// bound. Every declared input must be supplied exactly once, with its dtype
/// and rank.
pub(crate) fn bind_inputs(
    graph: &str,
    declared: &[(&str, &TensorType)],
    inputs: &[InputMeta<'_>],
) -> Result<Bindings> {
    let declared_names = || {
        let mut v: Vec<&str> = declared.iter().map(|(n, _)| *n).collect();
        v.dedup();
        v.join(", ")
    };
    for (i, (name, _, _)) in inputs.iter().enumerate() {
        if inputs[..i].iter().any(|(n, _, _)| n == name) {
            return Err(RuntimeError::DuplicateInput {
                name: name.to_string(),
            });
        }
        if !declared.iter().any(|(n, _)| n == name) {
            return Err(RuntimeError::UnexpectedInput {
                name: name.to_string(),
                graph: graph.to_string(),
                declared: declared_names(),
            });
        }
    }
    let mut given = Vec::with_capacity(declared.len());
    for &(name, ty) in declared {
        let Some(&(_, dtype, shape)) = inputs.iter().find(|(n, _, _)| *n == name) else {
            let supplied: Vec<&str> = inputs.iter().map(|(n, _, _)| *n).collect();
            return Err(RuntimeError::MissingInput {
                name: name.to_string(),
                declared: ty.to_string(),
                supplied: supplied.join(", "),
            });
        };
        if dtype != ty.dtype {
            return Err(RuntimeError::InputDType {
                name: name.to_string(),
                expected: ty.dtype,
                got: dtype,
            });
        }
        if shape.len() != ty.rank() {
            return Err(RuntimeError::InputRank {
                name: name.to_string(),
                declared: ty.to_string(),
                expected: ty.rank(),
                got: shape.to_vec(),
            });
        }
        given.push((name, &ty.shape, shape));
    }

    // Bind lone symbols, remembering where each was bound.
    let mut origin: BTreeMap<&str, (usize, &str, usize)> = BTreeMap::new();
    for &(name, dims, shape) in &given {
        for (axis, (dim, &got)) in dims.iter().zip(shape).enumerate() {
            let Some(sym) = dim.as_symbol() else { continue };
            match origin.get(sym) {
                Some(&(value, first_input, first_axis)) if value != got => {
                    return Err(RuntimeError::SymbolConflict {
                        symbol: sym.to_string(),
                        first_input: first_input.to_string(),
                        first_axis,
                        first_value: value,
                        second_input: name.to_string(),
                        second_axis: axis,
                        second_value: got,
                    });
                }
                Some(_) => {}
                None => {
                    origin.insert(sym, (got, name, axis));
                }
            }
        }
    }
    let bindings: Bindings = origin
        .iter()
        .map(|(s, (v, _, _))| (s.to_string(), *v))
        .collect();

    // Check every dim against the bindings.
    for &(name, dims, shape) in &given {
        for (axis, (dim, &got)) in dims.iter().zip(shape).enumerate() {
            let expected = eval_dim(dim, &bindings).ok_or_else(|| RuntimeError::UnboundDim {
                scope: format!("input `{name}` axis {axis}"),
                op: "input".into(),
                dim: dim.to_string(),
                bindings: fmt_bindings(&bindings),
            })?;
            if expected != got {
                return Err(RuntimeError::InputDim {
                    name: name.to_string(),
                    axis,
                    declared: dim.to_string(),
                    expected,
                    got,
                    shape: shape.to_vec(),
                });
            }
        }
    }
    Ok(bindings)
}
