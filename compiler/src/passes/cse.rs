//! Common-subexpression elimination: nodes that compute the same thing
//! become one.
//!
//! Two nodes are the same when they have the same op and attributes, the
//! same operands in the same slots, and the same output type. Parameters are
//! the same when their names are (a tied head and the embedding read one
//! weight). Scalars and literals compare by the value the interpreter makes
//! of them in the declared dtype (`0.1` and `0.1f32 as f64` are one f32
//! scalar; `0.0` and `-0.0` are two), so the many `scalar` nodes the lowering
//! creates collapse. `add`, `mul`, `eq`, `and` and `or` are commutative (bit
//! for bit, also in f32), so their operands are compared as a set. Inputs
//! are never merged: they are the interface.

use super::{Pass, PassError};
use crate::ir::{BinaryOp, DType, Dim, Graph, NodeId, Op, ReduceOp, TensorType, UnaryOp};
use std::collections::HashMap;

/// Common-subexpression elimination (`cse`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Cse;

/// A hashable stand-in for an [`Op`] and its attributes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum OpKey {
    Parameter(String),
    /// Values as the interpreter materialises them: f32 bits, i32, or bool.
    Constant(Vec<u32>),
    Literal(Vec<u32>),
    Iota(usize),
    Unary(UnaryOp),
    Binary(BinaryOp),
    Select,
    Reduce(ReduceOp, Vec<usize>),
    MatMul,
    Reshape,
    Permute(Vec<usize>),
    Slice(usize, Dim, Dim),
    Concat(usize),
    Gather(usize),
    Cast,
}

/// A value's canonical bits once converted to `dtype` (as `ops::fill` does).
fn canonical(v: f64, dtype: DType) -> u32 {
    match dtype {
        DType::F32 => (v as f32).to_bits(),
        DType::I32 => (v as i32) as u32,
        DType::Bool => u32::from(v != 0.0),
    }
}

fn op_key(op: &Op, ty: &TensorType) -> Option<OpKey> {
    Some(match op {
        Op::Input { .. } => return None,
        Op::Parameter { name, .. } => OpKey::Parameter(name.clone()),
        Op::Scalar(v) => OpKey::Constant(vec![canonical(*v, ty.dtype)]),
        Op::Literal(v) => OpKey::Literal(
            v.iter()
                .map(|&x| canonical(f64::from(x), ty.dtype))
                .collect(),
        ),
        Op::Iota { axis } => OpKey::Iota(*axis),
        Op::Unary(u) => OpKey::Unary(*u),
        Op::Binary(b) => OpKey::Binary(*b),
        Op::Select => OpKey::Select,
        Op::Reduce { op, axes } => OpKey::Reduce(*op, axes.clone()),
        Op::MatMul => OpKey::MatMul,
        Op::Reshape => OpKey::Reshape,
        Op::Permute { perm } => OpKey::Permute(perm.clone()),
        Op::Slice { axis, start, end } => OpKey::Slice(*axis, start.clone(), end.clone()),
        Op::Concat { axis } => OpKey::Concat(*axis),
        Op::Gather { axis } => OpKey::Gather(*axis),
        Op::Cast => OpKey::Cast,
    })
}

fn commutative(op: &Op) -> bool {
    matches!(
        op,
        Op::Binary(BinaryOp::Add | BinaryOp::Mul | BinaryOp::Eq | BinaryOp::And | BinaryOp::Or)
    )
}

impl Pass for Cse {
    fn name(&self) -> &'static str {
        "cse"
    }

    fn run(&self, g: &mut Graph) -> Result<bool, PassError> {
        let mut seen: HashMap<(OpKey, Vec<NodeId>, TensorType), NodeId> = HashMap::new();
        let mut changed = false;
        // Operands come before their users, so by the time a node is keyed
        // its operands are already the surviving representatives.
        for id in g.topo_order() {
            let node = g.node(id);
            let Some(op) = op_key(&node.op, &node.ty) else {
                continue;
            };
            let mut inputs = g.inputs(id);
            if commutative(&node.op) {
                inputs.sort_unstable();
            }
            let key = (op, inputs, node.ty.clone());
            match seen.get(&key) {
                Some(&first) => {
                    g.replace_and_remove(id, first);
                    changed = true;
                }
                None => {
                    seen.insert(key, id);
                }
            }
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Builder, Init};
    use crate::shape;

    #[test]
    fn merges_duplicates_scalars_parameters_and_commuted_operands() {
        let mut g = Graph::new("t");
        let mut b = Builder::new(&mut g);
        let x = b.input("x", DType::F32, shape!["seq", 4usize]).unwrap();
        let x2 = b.input("x", DType::F32, shape!["seq", 4usize]).unwrap();
        let w1 = b.param("w", &[4], Init::Fill(1.0)).unwrap();
        let w2 = b.param("w", &[4], Init::Fill(1.0)).unwrap();
        let s1 = b.scalar(0.5).unwrap();
        let s2 = b.scalar(0.5).unwrap();
        let s3 = b.scalar(0.1).unwrap();
        let s4 = b.scalar(f64::from(0.1f32)).unwrap();
        let zero = b.scalar(0.0).unwrap();
        let neg_zero = b.scalar(-0.0).unwrap();
        let a = b.mul(x, w1).unwrap();
        let c = b.mul(w2, x).unwrap(); // commuted, other copy of `w`
        let d = b.sub(x, w1).unwrap();
        let e = b.sub(w1, x).unwrap(); // not commutative: stays
        let f1 = b.mul(a, s1).unwrap();
        let f2 = b.mul(c, s2).unwrap();
        let h1 = b.add2(f1, s3).unwrap();
        let h2 = b.add2(f2, s4).unwrap();
        let z1 = b.add2(h1, zero).unwrap();
        let z2 = b.add2(h2, neg_zero).unwrap();
        let y = b.concat(&[z1, z2, d, e], 1).unwrap();
        let other = b.unary(UnaryOp::Neg, x2).unwrap();
        g.set_output("y", y);
        g.set_output("other", other);
        let before = g.node_count();
        assert!(Cse.run(&mut g).unwrap());
        // w2, c, s2, s4, f2, h2 merged away; z1/z2 differ (signed zeros); x2 kept.
        assert_eq!(g.node_count(), before - 6);
        assert!(g.g.contains_node(x2));
        let ins = g.inputs(y);
        assert_ne!(ins[0], ins[1]);
        assert_eq!(g.inputs(ins[0])[0], g.inputs(ins[1])[0]);
        assert_ne!(ins[2], ins[3]);
        assert!(!Cse.run(&mut g).unwrap(), "idempotent");
        super::super::verify(&g).unwrap();
    }

    #[test]
    fn same_op_different_types_stay_apart() {
        let mut g = Graph::new("t");
        let mut b = Builder::new(&mut g);
        let f = b.scalar(1.0).unwrap();
        let i = b.scalar_i32(1).unwrap();
        let x = b.input("x", DType::F32, shape![6usize]).unwrap();
        let r1 = b.reshape(x, shape![2usize, 3usize]).unwrap();
        let r2 = b.reshape(x, shape![3usize, 2usize]).unwrap();
        for (n, id) in [("f", f), ("i", i), ("r1", r1), ("r2", r2)] {
            g.set_output(n, id);
        }
        assert!(!Cse.run(&mut g).unwrap());
    }
}
