//! Algebraic simplification: small local rewrites, each exact (bit for bit
//! the same values) and each keeping the node's type, broadcasting included —
//! an identity like `x * 1` is only removed when `x` already has the
//! product's type.
//!
//! | pattern | becomes | note |
//! |---|---|---|
//! | `x * 1`, `1 * x`, `x / 1` | `x` | |
//! | `x - 0` | `x` | f32: only `+0.0` (`-0 - 0 = -0`) |
//! | `x + 0`, `0 + x` | `x` | f32: only `-0.0`; `x + +0.0` turns `-0.0` into `+0.0`, so it stays |
//! | `x and true`, `x or false` (either side) | `x` | |
//! | `neg(neg(x))`, `not(not(x))` | `x` | i32 negation wraps, so it is an involution too |
//! | `permute(permute(x, p), q)` | `permute(x, p∘q)` | removed when the composition is the identity |
//! | `permute(x, identity)` | `x` | |
//! | `reshape(reshape(x))` | `reshape(x)` | removed when it restores `x`'s type |
//! | `reshape(x)` to `x`'s shape | `x` | |
//! | `cast(x)` to `x`'s dtype | `x` | |
//! | `slice(x, axis, 0, n)` over the whole axis | `x` | |
//! | `concat(x)` of one operand | `x` | |
//! | `select(c, a, b)`, `c` a constant | `a` or `b` | |
//! | `select(c, a, a)` | `a` | |
//!
//! Constants are `scalar` and `literal` nodes whose elements are all equal.

use super::const_fold::{Elem, constant};
use super::{Pass, PassError};
use crate::ir::{BinaryOp, Graph, NodeId, Op, TensorType, UnaryOp};

/// Algebraic simplification (`simplify`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Simplify;

enum Rewrite {
    /// Every use of the node reads this existing node instead.
    Use(NodeId),
    /// Replace the node with a new one.
    New(Op, Vec<NodeId>, Option<TensorType>),
}

/// The splat value of a constant node, if it is one.
fn splat(g: &Graph, id: NodeId) -> Option<Elem> {
    constant(g, id, 0)?.splat()
}

fn is_one(e: Elem) -> bool {
    matches!(e, Elem::F32(x) if x == 1.0) || matches!(e, Elem::I32(1))
}

/// `x + z == x` for every `x`: i32 zero, or f32 `-0.0`.
fn is_additive_identity(e: Elem) -> bool {
    match e {
        Elem::F32(x) => x.to_bits() == (-0.0f32).to_bits(),
        Elem::I32(x) => x == 0,
        Elem::Bool(_) => false,
    }
}

/// `x - z == x` for every `x`: i32 zero, or f32 `+0.0`.
fn is_subtractive_identity(e: Elem) -> bool {
    match e {
        Elem::F32(x) => x.to_bits() == 0,
        Elem::I32(x) => x == 0,
        Elem::Bool(_) => false,
    }
}

fn rewrite(g: &Graph, id: NodeId) -> Option<Rewrite> {
    let node = g.node(id);
    let ins = g.inputs(id);
    let ty = &node.ty;
    // `x` may stand for the node only if it has exactly the node's type.
    let keeps_type = |x: NodeId| g.ty(x) == ty;
    let same = |x: NodeId| keeps_type(x).then_some(Rewrite::Use(x));
    // Binary `x op c` / `c op x` with `c` a splat constant satisfying `p`.
    let with_identity = |p: &dyn Fn(Elem) -> bool, either_side: bool| -> Option<Rewrite> {
        let (a, b) = (ins[0], ins[1]);
        if splat(g, b).is_some_and(p) && keeps_type(a) {
            return Some(Rewrite::Use(a));
        }
        if either_side && splat(g, a).is_some_and(p) && keeps_type(b) {
            return Some(Rewrite::Use(b));
        }
        None
    };
    match &node.op {
        Op::Binary(op) => match op {
            BinaryOp::Mul => with_identity(&is_one, true),
            BinaryOp::Div => with_identity(&is_one, false),
            BinaryOp::Add => with_identity(&is_additive_identity, true),
            BinaryOp::Sub => with_identity(&is_subtractive_identity, false),
            BinaryOp::And => with_identity(&|e| e == Elem::Bool(true), true),
            BinaryOp::Or => with_identity(&|e| e == Elem::Bool(false), true),
            _ => None,
        },
        Op::Unary(u @ (UnaryOp::Neg | UnaryOp::Not)) => {
            let inner = g.node(ins[0]);
            match inner.op {
                Op::Unary(v) if v == *u => same(g.inputs(ins[0])[0]),
                _ => None,
            }
        }
        Op::Permute { perm } => {
            if perm.iter().enumerate().all(|(i, &p)| i == p) {
                return same(ins[0]);
            }
            let Op::Permute { perm: inner } = &g.node(ins[0]).op else {
                return None;
            };
            let x = g.inputs(ins[0])[0];
            let composed: Vec<usize> = perm.iter().map(|&q| inner[q]).collect();
            if composed.iter().enumerate().all(|(i, &p)| i == p) {
                same(x)
            } else {
                Some(Rewrite::New(Op::Permute { perm: composed }, vec![x], None))
            }
        }
        Op::Reshape => {
            if keeps_type(ins[0]) {
                return same(ins[0]);
            }
            if !matches!(g.node(ins[0]).op, Op::Reshape) {
                return None;
            }
            let x = g.inputs(ins[0])[0];
            if keeps_type(x) {
                same(x)
            } else {
                Some(Rewrite::New(Op::Reshape, vec![x], Some(ty.clone())))
            }
        }
        Op::Cast => same(ins[0]),
        Op::Slice { axis, start, end } => {
            let full = start.as_const() == Some(0) && g.ty(ins[0]).shape.get(*axis) == Some(end);
            if full { same(ins[0]) } else { None }
        }
        Op::Concat { .. } if ins.len() == 1 => same(ins[0]),
        Op::Select => {
            let (c, a, b) = (ins[0], ins[1], ins[2]);
            match splat(g, c) {
                Some(Elem::Bool(true)) => same(a),
                Some(Elem::Bool(false)) => same(b),
                _ if a == b => same(a),
                _ => None,
            }
        }
        _ => None,
    }
}

impl Pass for Simplify {
    fn name(&self) -> &'static str {
        "simplify"
    }

    fn run(&self, g: &mut Graph) -> Result<bool, PassError> {
        let mut changed = false;
        for id in g.topo_order() {
            if !g.g.contains_node(id) {
                continue;
            }
            let Some(rw) = rewrite(g, id) else {
                continue;
            };
            let new = match rw {
                Rewrite::Use(x) => x,
                Rewrite::New(op, inputs, declared) => {
                    let scope = g.node(id).scope.clone();
                    g.add(op, &inputs, declared, &scope)
                        .map_err(PassError::ir("simplify"))?
                }
            };
            g.replace_and_remove(id, new);
            changed = true;
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Builder, DType, Dim, Op};
    use crate::shape;

    fn out(g: &Graph, name: &str) -> NodeId {
        g.output(name).unwrap()
    }

    #[test]
    fn arithmetic_identities_respect_broadcasting_and_signed_zero() {
        let mut g = Graph::new("t");
        let mut b = Builder::new(&mut g);
        let x = b.input("x", DType::F32, shape!["seq", 4usize]).unwrap();
        let one = b.scalar(1.0).unwrap();
        let ones = b.literal(vec![1.0; 4], &[4]).unwrap();
        let wide = b
            .add(
                Op::Scalar(1.0),
                &[],
                Some(TensorType::f32(shape![2usize, "seq", 4usize])),
            )
            .unwrap();
        let pz = b.scalar(0.0).unwrap();
        let nz = b.scalar(-0.0).unwrap();
        let m1 = b.mul(one, x).unwrap();
        let m2 = b.mul(x, ones).unwrap();
        let m3 = b.mul(x, wide).unwrap(); // broadcasts: stays
        let d1 = b.div(x, one).unwrap();
        let d2 = b.div(one, x).unwrap(); // not an identity
        let s1 = b.sub(x, pz).unwrap();
        let s2 = b.sub(x, nz).unwrap(); // -0 - -0 = +0: stays
        let a1 = b.add2(nz, x).unwrap();
        let a2 = b.add2(x, pz).unwrap(); // -0 + +0 = +0: stays
        let i = b.input("i", DType::I32, shape!["seq"]).unwrap();
        let iz = b.scalar_i32(0).unwrap();
        let a3 = b.add2(i, iz).unwrap();
        let t = b
            .add(
                Op::Scalar(1.0),
                &[],
                Some(TensorType::new(DType::Bool, vec![])),
            )
            .unwrap();
        let c = b.binary(BinaryOp::Lt, x, x).unwrap();
        let and = b.binary(BinaryOp::And, t, c).unwrap();
        for (n, id) in [
            ("m1", m1),
            ("m2", m2),
            ("m3", m3),
            ("d1", d1),
            ("d2", d2),
            ("s1", s1),
            ("s2", s2),
            ("a1", a1),
            ("a2", a2),
            ("a3", a3),
            ("and", and),
        ] {
            g.set_output(n, id);
        }
        assert!(Simplify.run(&mut g).unwrap());
        for n in ["m1", "m2", "d1", "s1", "a1"] {
            assert_eq!(out(&g, n), x, "{n}");
        }
        for (n, id) in [("m3", m3), ("d2", d2), ("s2", s2), ("a2", a2)] {
            assert_eq!(out(&g, n), id, "{n}");
        }
        assert_eq!(out(&g, "a3"), i);
        assert_eq!(out(&g, "and"), c);
        super::super::verify(&g).unwrap();
    }

    #[test]
    fn layout_rewrites() {
        let mut g = Graph::new("t");
        let mut b = Builder::new(&mut g);
        let x = b
            .input("x", DType::F32, shape!["batch", "seq", 4usize, 8usize])
            .unwrap();
        let p1 = b.permute(x, &[0, 2, 1, 3]).unwrap();
        let p2 = b.permute(p1, &[0, 2, 1, 3]).unwrap(); // identity overall
        let p3 = b.permute(p1, &[1, 0, 2, 3]).unwrap(); // composed
        let id = b.permute(x, &[0, 1, 2, 3]).unwrap();
        let r1 = b.reshape(x, shape!["batch", "seq", 32usize]).unwrap();
        let r2 = b
            .reshape(r1, shape!["batch", "seq", 2usize, 16usize])
            .unwrap();
        let r3 = b
            .reshape(r1, shape!["batch", "seq", 4usize, 8usize])
            .unwrap();
        let r4 = b
            .reshape(x, shape!["batch", "seq", 4usize, 8usize])
            .unwrap();
        let i = b.input("i", DType::I32, shape!["seq"]).unwrap();
        let c = b.cast(i, DType::F32).unwrap();
        let c2 = b
            .add(Op::Cast, &[c], Some(TensorType::f32(shape!["seq"])))
            .unwrap();
        let sl = b.slice(x, 3, Dim::c(0), Dim::c(8)).unwrap();
        let sl2 = b.slice(x, 1, Dim::c(0), Dim::sym("seq")).unwrap();
        let sl3 = b.slice(x, 3, Dim::c(0), Dim::c(4)).unwrap(); // partial: stays
        let cat = b.concat(&[x], 2).unwrap();
        let nn = b.unary(UnaryOp::Neg, x).unwrap();
        let nn = b.unary(UnaryOp::Neg, nn).unwrap();
        for (n, id) in [
            ("p2", p2),
            ("p3", p3),
            ("id", id),
            ("r2", r2),
            ("r3", r3),
            ("r4", r4),
            ("c2", c2),
            ("sl", sl),
            ("sl2", sl2),
            ("sl3", sl3),
            ("cat", cat),
            ("nn", nn),
        ] {
            g.set_output(n, id);
        }
        assert!(Simplify.run(&mut g).unwrap());
        for n in ["p2", "id", "r3", "r4", "sl", "sl2", "cat", "nn"] {
            assert_eq!(out(&g, n), x, "{n}");
        }
        assert_eq!(out(&g, "c2"), c);
        assert_eq!(out(&g, "sl3"), sl3);
        let p3 = out(&g, "p3");
        assert_eq!(g.inputs(p3), vec![x]);
        assert_eq!(
            g.node(p3).op,
            Op::Permute {
                perm: vec![2, 0, 1, 3]
            }
        );
        let r2 = out(&g, "r2");
        assert_eq!(g.inputs(r2), vec![x]);
        assert_eq!(g.ty(r2).shape, shape!["batch", "seq", 2usize, 16usize]);
        super::super::verify(&g).unwrap();
    }

    #[test]
    fn select_with_constant_condition() {
        let mut g = Graph::new("t");
        let mut b = Builder::new(&mut g);
        let x = b.input("x", DType::F32, shape!["seq", 4usize]).unwrap();
        let y = b.input("y", DType::F32, shape!["seq", 4usize]).unwrap();
        let small = b.scalar(0.0).unwrap();
        let bool_ty = TensorType::new(DType::Bool, vec![]);
        let t = b.add(Op::Scalar(1.0), &[], Some(bool_ty.clone())).unwrap();
        let f = b.add(Op::Scalar(0.0), &[], Some(bool_ty)).unwrap();
        let s1 = b.select(t, x, y).unwrap();
        let s2 = b.select(f, x, y).unwrap();
        let s3 = b.select(t, small, x).unwrap(); // picks a broadcast scalar: stays
        let c = b.binary(BinaryOp::Lt, x, y).unwrap();
        let s4 = b.select(c, y, y).unwrap();
        for (n, id) in [("s1", s1), ("s2", s2), ("s3", s3), ("s4", s4)] {
            g.set_output(n, id);
        }
        assert!(Simplify.run(&mut g).unwrap());
        assert_eq!(out(&g, "s1"), x);
        assert_eq!(out(&g, "s2"), y);
        assert_eq!(out(&g, "s3"), s3);
        assert_eq!(out(&g, "s4"), y);
        super::super::verify(&g).unwrap();
    }
}
