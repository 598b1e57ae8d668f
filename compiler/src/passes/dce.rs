//! Dead-code elimination: remove every node no output depends on.
//!
//! `Input` nodes stay even when unused: they are the graph's interface (a
//! caller supplies every declared input, and inputs bind the shape symbols).

use super::{Pass, PassError};
use crate::ir::{Graph, Op};
use petgraph::Direction;

/// Dead-code elimination (`dce`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Dce;

impl Pass for Dce {
    fn name(&self) -> &'static str {
        "dce"
    }

    fn run(&self, g: &mut Graph) -> Result<bool, PassError> {
        let bound = g.g.node_indices().map(|i| i.index() + 1).max().unwrap_or(0);
        let mut live = vec![false; bound];
        let mut stack: Vec<_> = g.outputs.iter().map(|(_, id)| *id).collect();
        while let Some(n) = stack.pop() {
            if !g.g.contains_node(n) || std::mem::replace(&mut live[n.index()], true) {
                continue;
            }
            stack.extend(g.g.neighbors_directed(n, Direction::Incoming));
        }
        let dead: Vec<_> =
            g.g.node_indices()
                .filter(|n| !live[n.index()] && !matches!(g.g[*n].op, Op::Input { .. }))
                .collect();
        for &n in &dead {
            g.g.remove_node(n);
        }
        Ok(!dead.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Builder, DType, Init, UnaryOp};
    use crate::shape;

    #[test]
    fn removes_unreachable_nodes_but_keeps_inputs() {
        let mut g = Graph::new("t");
        let mut b = Builder::new(&mut g);
        let x = b.input("x", DType::F32, shape!["seq", 4usize]).unwrap();
        let unused = b.input("unused", DType::I32, shape!["seq"]).unwrap();
        let w = b.param("w", &[4], Init::Fill(1.0)).unwrap();
        let y = b.mul(x, w).unwrap();
        let dead = b.unary(UnaryOp::Exp, y).unwrap();
        let dead2 = b.unary(UnaryOp::Neg, dead).unwrap();
        let dead_param = b.param("dead", &[4], Init::Fill(0.0)).unwrap();
        g.set_output("y", y);
        assert!(Dce.run(&mut g).unwrap());
        for n in [dead, dead2, dead_param] {
            assert!(!g.g.contains_node(n));
        }
        for n in [x, unused, w, y] {
            assert!(g.g.contains_node(n));
        }
        assert!(!Dce.run(&mut g).unwrap(), "idempotent");
    }
}
