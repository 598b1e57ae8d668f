//! Projection merging: matrix products of one input with several weights
//! (Q, K and V; gate and up) become one product with the weights joined, and
//! each original result a slice of it.
//!
//! `x @ Wᵢᵀ` for weights `Wᵢ: [outᵢ, in]` (the lowering's `linear`) becomes
//! `y = x @ concat(W₁, …, Wₙ)ᵀ` and `x @ Wᵢᵀ = y[…, offᵢ..offᵢ+outᵢ]`. Exact:
//! every output element is the same dot product. One wide product packs the
//! input once and gives the GEMM library larger blocks; slices are views,
//! so nothing is copied. The joined weight is a concatenation of parameters
//! only, which a backend builds once when it loads the weights (the kernel
//! IR's joined parameters).

use super::{Pass, PassError};
use crate::ir::{Builder, DType, Dim, Graph, NodeId, Op};

/// Merge projections that share their input (`merge-projections`).
#[derive(Debug, Clone, Copy, Default)]
pub struct MergeProjections;

/// `m = x @ transpose(P)` with `P` a rank-2 f32 parameter: `(P, out)`.
fn projection(g: &Graph, m: NodeId, x: NodeId) -> Option<(NodeId, usize)> {
    if !matches!(g.node(m).op, Op::MatMul) || g.inputs(m)[0] != x {
        return None;
    }
    let t = g.inputs(m)[1];
    let Op::Permute { perm } = &g.node(t).op else {
        return None;
    };
    if perm.as_slice() != [1, 0] {
        return None;
    }
    let p = g.inputs(t)[0];
    let ty = g.ty(p);
    if !matches!(g.node(p).op, Op::Parameter { .. }) || ty.dtype != DType::F32 || ty.rank() != 2 {
        return None;
    }
    Some((p, ty.shape[0].as_const()?))
}

/// The longest common dotted prefix of some scopes.
fn common_scope(scopes: &[&str]) -> String {
    let mut parts: Vec<&str> = scopes[0].split('.').collect();
    for s in &scopes[1..] {
        let other: Vec<&str> = s.split('.').collect();
        let same = parts.iter().zip(&other).take_while(|(a, b)| a == b).count();
        parts.truncate(same);
    }
    parts.join(".")
}

impl Pass for MergeProjections {
    fn name(&self) -> &'static str {
        "merge-projections"
    }

    fn run(&self, g: &mut Graph) -> Result<bool, PassError> {
        let mut changed = false;
        for x in g.topo_order() {
            if g.ty(x).rank() < 2 || g.ty(x).dtype != DType::F32 {
                continue;
            }
            let mut group: Vec<(NodeId, NodeId, usize)> = Vec::new();
            for m in g.users(x) {
                if let Some((p, out)) = projection(g, m, x)
                    && !group.iter().any(|&(gm, gp, _)| gm == m || gp == p)
                {
                    group.push((m, p, out));
                }
            }
            if group.len() < 2 {
                continue;
            }
            // Deterministic order: the users' order in the graph.
            group.sort_by_key(|&(m, _, _)| m.index());
            let scopes: Vec<String> = group
                .iter()
                .map(|&(m, _, _)| g.node(m).scope.clone())
                .collect();
            let scope_refs: Vec<&str> = scopes.iter().map(String::as_str).collect();
            let scope = common_scope(&scope_refs);
            let params: Vec<NodeId> = group.iter().map(|&(_, p, _)| p).collect();
            let rank = g.ty(x).rank();
            let mut b = Builder::new(g);
            let slices = b.scoped(scope, |b| -> Result<Vec<NodeId>, crate::ir::IrError> {
                let joined = b.concat(&params, 0)?;
                let jt = b.transpose_last(joined)?;
                let y = b.matmul(x, jt)?;
                let mut start = 0;
                let mut out = Vec::new();
                for &(_, _, n) in &group {
                    out.push(b.slice(y, rank - 1, Dim::c(start), Dim::c(start + n))?);
                    start += n;
                }
                Ok(out)
            });
            let slices = slices.map_err(PassError::ir("merge-projections"))?;
            for (&(m, _, _), s) in group.iter().zip(slices) {
                g.replace_all_uses(m, s);
            }
            changed = true;
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Init, UnaryOp};
    use crate::shape;

    fn projections() -> (Graph, Vec<NodeId>) {
        let mut g = Graph::new("t");
        let mut b = Builder::new(&mut g);
        let x = b
            .input("x", DType::F32, shape!["batch", "seq", 8usize])
            .unwrap();
        let mut outs = Vec::new();
        for (name, n) in [("q", 8), ("k", 4), ("v", 4)] {
            let y = b.scoped(format!("attn.{name}"), |b| {
                let w = b
                    .param("weight", &[n, 8], Init::Normal { std: 0.02 })
                    .unwrap();
                let wt = b.transpose_last(w).unwrap();
                b.matmul(x, wt).unwrap()
            });
            outs.push(y);
        }
        let t = b.unary(UnaryOp::Tanh, x).unwrap();
        for (i, o) in outs.iter().enumerate() {
            g.set_output(format!("y{i}"), *o);
        }
        g.set_output("t", t);
        (g, outs)
    }

    #[test]
    fn shared_input_projections_become_one_product() {
        let (mut g, _) = projections();
        assert!(MergeProjections.run(&mut g).unwrap());
        crate::passes::Dce.run(&mut g).unwrap();
        crate::passes::verify(&g).unwrap();
        let matmuls: Vec<NodeId> = g
            .topo_order()
            .into_iter()
            .filter(|&n| matches!(g.node(n).op, Op::MatMul))
            .collect();
        assert_eq!(matmuls.len(), 1);
        let m = matmuls[0];
        assert_eq!(g.ty(m).shape.last(), Some(&Dim::c(16)));
        assert_eq!(g.node(m).scope, "attn");
        // Each output is its slice of the product, in order.
        for (i, (lo, hi)) in [(0, 8), (8, 12), (12, 16)].into_iter().enumerate() {
            let o = g.output(&format!("y{i}")).unwrap();
            match &g.node(o).op {
                Op::Slice { axis, start, end } => {
                    assert_eq!((*axis, start, end), (2, &Dim::c(lo), &Dim::c(hi)));
                    assert_eq!(g.inputs(o)[0], m);
                }
                op => panic!("output {i} is {op}"),
            }
        }
        // Run again: nothing left to merge.
        assert!(!MergeProjections.run(&mut g).unwrap());
    }

    #[test]
    fn a_single_projection_is_left_alone() {
        let mut g = Graph::new("t");
        let mut b = Builder::new(&mut g);
        let x = b.input("x", DType::F32, shape!["seq", 8usize]).unwrap();
        let w = b.param("w", &[4, 8], Init::Normal { std: 0.02 }).unwrap();
        let wt = b.transpose_last(w).unwrap();
        let y = b.matmul(x, wt).unwrap();
        // Not a projection: the weight is not transposed.
        let w2 = b.param("w2", &[8, 4], Init::Normal { std: 0.02 }).unwrap();
        let y2 = b.matmul(x, w2).unwrap();
        g.set_output("y", y);
        g.set_output("y2", y2);
        assert!(!MergeProjections.run(&mut g).unwrap());
    }
}
