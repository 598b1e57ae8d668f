//! Graph invariants every pass must keep.

use crate::ir::Graph;
use petgraph::Direction;

/// Check `g`: no cycle; every output names a node; every node's operand
/// slots are `0..n` without gaps or repeats; and every node's type, inferred
/// again with [`crate::ir::Op::infer`] from its operands' recorded types (and
/// its own recorded type where the op declares one), equals its recorded type.
pub fn verify(g: &Graph) -> Result<(), String> {
    let order = g.topo_order();
    if order.len() != g.g.node_count() {
        return Err(format!(
            "cycle: {} of {} nodes have no topological position",
            g.g.node_count() - order.len(),
            g.g.node_count()
        ));
    }
    for (name, id) in &g.outputs {
        if !g.g.contains_node(*id) {
            return Err(format!("output `{name}` names missing node {}", id.index()));
        }
    }
    for id in order {
        let node = g.node(id);
        let at = || {
            format!(
                "node {} ({} in `{}`)",
                id.index(),
                node.op,
                if node.scope.is_empty() {
                    "(root)"
                } else {
                    &node.scope
                }
            )
        };
        let mut slots: Vec<usize> =
            g.g.edges_directed(id, Direction::Incoming)
                .map(|e| *e.weight())
                .collect();
        slots.sort_unstable();
        if slots.iter().enumerate().any(|(i, &s)| i != s) {
            return Err(format!("{}: operand slots {slots:?}", at()));
        }
        let inputs = g.inputs(id);
        let tys: Vec<_> = inputs.iter().map(|&i| g.ty(i)).collect();
        let declared = node.op.declares_type().then_some(&node.ty);
        match node.op.infer(&tys, declared) {
            Ok(t) if t == node.ty => {}
            Ok(t) => {
                return Err(format!(
                    "{}: recorded type {} but its operands give {t}",
                    at(),
                    node.ty
                ));
            }
            Err(e) => return Err(format!("{}: {e}", at())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Builder, DType, Dim};
    use crate::shape;

    #[test]
    fn catches_bad_types_slots_outputs_and_cycles() {
        let mut g = Graph::new("t");
        let mut b = Builder::new(&mut g);
        let x = b.input("x", DType::F32, shape!["seq", 4usize]).unwrap();
        let y = b.input("y", DType::F32, shape!["seq", 4usize]).unwrap();
        let s = b.add2(x, y).unwrap();
        let t = b.mul(s, s).unwrap();
        g.set_output("t", t);
        assert_eq!(verify(&g), Ok(()));

        let mut bad = g.clone();
        bad.g[s].ty.shape[1] = Dim::c(5);
        assert!(verify(&bad).unwrap_err().contains("recorded type"));

        let mut bad = g.clone();
        bad.g.add_edge(x, s, 3);
        assert!(verify(&bad).is_err());

        let mut bad = g.clone();
        bad.outputs.push(("gone".into(), s));
        bad.g.remove_node(s);
        assert!(verify(&bad).unwrap_err().contains("missing"));

        let mut bad = g.clone();
        bad.replace_input(s, 0, t);
        assert!(verify(&bad).unwrap_err().contains("cycle"));
    }
}
