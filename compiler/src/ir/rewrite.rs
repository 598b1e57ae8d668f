//! Small graph-editing helpers for passes: rewire uses, remove nodes, check
//! invariants. Purely additive over [`Graph`]; they never change what an op means.

use super::graph::{Graph, NodeId};
use petgraph::Direction;
use petgraph::visit::EdgeRef;

impl Graph {
    /// Every use of `old` (each operand slot it feeds and each graph output
    /// naming it) now reads `new` instead. Returns how many uses moved.
    ///
    /// The caller guarantees `new` computes the same value with the same
    /// type and is not downstream of `old` (otherwise a cycle appears;
    /// `passes::verify` would catch it).
    pub fn replace_all_uses(&mut self, old: NodeId, new: NodeId) -> usize {
        if old == new {
            return 0;
        }
        debug_assert_eq!(
            self.g[old].ty, self.g[new].ty,
            "replace_all_uses must preserve the type"
        );
        let uses: Vec<_> = self
            .g
            .edges_directed(old, Direction::Outgoing)
            .map(|e| (e.id(), e.target(), *e.weight()))
            .collect();
        for &(edge, target, slot) in &uses {
            self.g.remove_edge(edge);
            self.g.add_edge(new, target, slot);
        }
        let mut moved = uses.len();
        for (_, id) in &mut self.outputs {
            if *id == old {
                *id = new;
                moved += 1;
            }
        }
        moved
    }

    /// Replace the operand in `slot` of `node` with `new`.
    pub fn replace_input(&mut self, node: NodeId, slot: usize, new: NodeId) {
        let edge = self
            .g
            .edges_directed(node, Direction::Incoming)
            .find(|e| *e.weight() == slot)
            .map(|e| e.id());
        if let Some(e) = edge {
            self.g.remove_edge(e);
        }
        self.g.add_edge(new, node, slot);
    }

    /// Whether a graph output names `id`.
    pub fn is_output(&self, id: NodeId) -> bool {
        self.outputs.iter().any(|(_, o)| *o == id)
    }

    /// Whether anything reads `id`: a consumer or a graph output.
    pub fn is_used(&self, id: NodeId) -> bool {
        self.g
            .edges_directed(id, Direction::Outgoing)
            .next()
            .is_some()
            || self.is_output(id)
    }

    /// Remove `id` and its edges. Returns false (and leaves the graph alone)
    /// if it is still used.
    pub fn remove_unused(&mut self, id: NodeId) -> bool {
        if !self.g.contains_node(id) || self.is_used(id) {
            return false;
        }
        self.g.remove_node(id);
        true
    }

    /// Move every use of `old` to `new`, then remove `old`.
    pub fn replace_and_remove(&mut self, old: NodeId, new: NodeId) {
        self.replace_all_uses(old, new);
        self.remove_unused(old);
    }

    /// Node count (every node, reachable or not).
    pub fn node_count(&self) -> usize {
        self.g.node_count()
    }
}

#[cfg(test)]
mod tests {
    use crate::ir::{Builder, DType, Graph};
    use crate::shape;

    #[test]
    fn replace_moves_slots_and_outputs() {
        let mut g = Graph::new("t");
        let mut b = Builder::new(&mut g);
        let x = b.input("x", DType::F32, shape![4usize]).unwrap();
        let y = b.input("y", DType::F32, shape![4usize]).unwrap();
        let n = b.unary(crate::ir::UnaryOp::Neg, x).unwrap();
        let s = b.sub(n, y).unwrap();
        let t = b.sub(y, n).unwrap();
        g.set_output("n", n);
        g.set_output("s", s);
        g.set_output("t", t);
        g.replace_and_remove(n, x);
        assert!(!g.g.contains_node(n));
        assert_eq!(g.inputs(s), vec![x, y]);
        assert_eq!(g.inputs(t), vec![y, x]);
        assert_eq!(g.output("n"), Some(x));
        assert!(g.is_used(x));
        assert!(!g.remove_unused(x));
        g.replace_input(t, 1, y);
        assert_eq!(g.inputs(t), vec![y, y]);
    }
}
