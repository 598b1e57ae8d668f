//! The graph: a petgraph `StableGraph` of typed op nodes. Edges point from a
//! producer to a consumer and carry the operand slot, so node indices stay
//! valid while passes rewrite the graph.

use super::op::Op;
use super::types::TensorType;
use petgraph::Direction;
use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::EdgeRef;

/// A node's handle; stays valid while other nodes are removed.
pub type NodeId = NodeIndex<u32>;

/// One op in a graph, with its inferred output type.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The operation.
    pub op: Op,
    /// Output type, inferred by [`Op::infer`] when the node was added.
    pub ty: TensorType,
    /// Where the node came from (`layers.3.attn`), for snapshots and errors.
    pub scope: String,
}

/// What a graph computes, e.g. a decoder step or an encoder pass.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    /// The graph's name (`decoder_step`, `encoder`, ...), used in errors and snapshots.
    pub name: String,
    /// The nodes; an edge's weight is the operand slot it feeds.
    pub g: StableDiGraph<Node, usize>,
    /// Named outputs in a stable order.
    pub outputs: Vec<(String, NodeId)>,
}

/// An op rejected its operands (type inference failed) while building a graph.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{scope}: {op}: {message}")]
pub struct IrError {
    /// Scope of the node being added.
    pub scope: String,
    /// Name of the op.
    pub op: String,
    /// Why its operands were rejected.
    pub message: String,
}

impl Graph {
    /// An empty graph named `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Graph {
            name: name.into(),
            ..Default::default()
        }
    }

    /// Add a node after inferring (and checking) its output type.
    pub fn add(
        &mut self,
        op: Op,
        inputs: &[NodeId],
        declared: Option<TensorType>,
        scope: &str,
    ) -> Result<NodeId, IrError> {
        let tys: Vec<&TensorType> = inputs.iter().map(|&i| &self.g[i].ty).collect();
        let ty = op
            .infer(&tys, declared.as_ref())
            .map_err(|message| IrError {
                scope: scope.to_string(),
                op: op.name(),
                message,
            })?;
        let id = self.g.add_node(Node {
            op,
            ty,
            scope: scope.to_string(),
        });
        for (slot, &i) in inputs.iter().enumerate() {
            self.g.add_edge(i, id, slot);
        }
        Ok(id)
    }

    /// The node `id`; panics if `id` is not in the graph.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.g[id]
    }

    /// The output type of node `id`; panics if `id` is not in the graph.
    pub fn ty(&self, id: NodeId) -> &TensorType {
        &self.g[id].ty
    }

    /// Operands of `id` in slot order.
    pub fn inputs(&self, id: NodeId) -> Vec<NodeId> {
        let mut v: Vec<(usize, NodeId)> = self
            .g
            .edges_directed(id, Direction::Incoming)
            .map(|e| (*e.weight(), e.source()))
            .collect();
        v.sort_unstable();
        v.into_iter().map(|(_, n)| n).collect()
    }

    /// Consumers of `id` (a node may appear once per slot it feeds).
    pub fn users(&self, id: NodeId) -> Vec<NodeId> {
        self.g.neighbors_directed(id, Direction::Outgoing).collect()
    }

    /// The node behind the output named `name`, if any.
    pub fn output(&self, name: &str) -> Option<NodeId> {
        self.outputs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, id)| *id)
    }

    /// Append an output named `name` (no check for duplicate names).
    pub fn set_output(&mut self, name: impl Into<String>, id: NodeId) {
        self.outputs.push((name.into(), id));
    }

    /// Input nodes in the order they were added (index order: sources of
    /// the graph, so also their order in [`Graph::topo_order`]), in one
    /// pass over the nodes.
    pub fn inputs_decl(&self) -> Vec<NodeId> {
        (self.g.node_indices())
            .filter(|&i| matches!(self.g[i].op, Op::Input { .. }))
            .collect()
    }

    /// Parameter nodes in the order they were added (as
    /// [`Graph::inputs_decl`]).
    pub fn parameters(&self) -> Vec<NodeId> {
        (self.g.node_indices())
            .filter(|&i| matches!(self.g[i].op, Op::Parameter { .. }))
            .collect()
    }

    /// A deterministic topological order: among ready nodes, the lowest index first,
    /// so a freshly lowered graph prints in the order it was built.
    pub fn topo_order(&self) -> Vec<NodeId> {
        use std::cmp::Reverse;
        use std::collections::{BinaryHeap, HashMap};
        let mut pending: HashMap<NodeId, usize> = self
            .g
            .node_indices()
            .map(|n| (n, self.g.edges_directed(n, Direction::Incoming).count()))
            .collect();
        let mut ready: BinaryHeap<Reverse<NodeId>> = pending
            .iter()
            .filter(|(_, c)| **c == 0)
            .map(|(n, _)| Reverse(*n))
            .collect();
        let mut order = Vec::with_capacity(pending.len());
        while let Some(Reverse(n)) = ready.pop() {
            order.push(n);
            for e in self.g.edges_directed(n, Direction::Outgoing) {
                let c = pending.get_mut(&e.target()).expect("edge target is a node");
                *c -= 1;
                if *c == 0 {
                    ready.push(Reverse(e.target()));
                }
            }
        }
        order
    }

    /// Count of parameters' elements whose shapes are constant.
    pub fn parameter_count(&self) -> usize {
        self.parameters()
            .iter()
            .filter_map(|&p| self.g[p].ty.const_numel())
            .sum()
    }
}
