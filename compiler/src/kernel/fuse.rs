//! Fusion: an (optimised) [`Graph`] to a [`KernelProgram`].
//!
//! Rules:
//! - **Materialised** (a buffer): inputs, parameters, literals, graph outputs,
//!   matmul / gather / concat results, reductions that cannot join a row
//!   kernel, operands of a merging reshape that are not already contiguous
//!   buffers, and matmul / gather operands that are not pure views.
//!   A libm-backed value (sin, cos, log, pow) with several consumers is
//!   materialised too, so it is computed once, and so is any value with
//!   several consumers that stands for a chain of more than 8 inlined nodes
//!   (recomputing it per consumer would compound across layers).
//! - **Inlined** into consumers' bodies: elementwise ops, scalars, iota
//!   (as index arithmetic), broadcasts, permutes, slices and splitting
//!   reshapes (all as view strides and offsets).
//! - **Gemm epilogues**: the chain of single-use, same-shape elementwise
//!   consumers of a matmul (bias, activation, residual add, scaling and
//!   masking of attention scores) is folded into its Gemm.
//! - **Row reductions**: a reduction over the last axis of a consumer's
//!   iteration space becomes a stage of that consumer's RowReduce, so a norm
//!   or a softmax (its prologue, reductions and broadcast-back epilogue) is
//!   one kernel; a reduction consumed elsewhere is a per-row RowReduce.
//!
//! A policy choice that turns out impossible while building a kernel (a
//! reduction that is not aligned with the consumer's last axis, a merging
//! reshape of a computed value) materialises that node and fuses again.

use super::{
    Body, BufId, Buffer, BufferKind, BufferPlan, Epilogue, Inst, Kernel, KernelProgram, Size,
    Stage, ValId, View, row_major,
};
use crate::ir::{DType, Graph, NodeId, Op, Shape};
use crate::kernel::kinds;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Why a graph could not be fused into kernels.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FuseError {
    /// A node the fuser cannot turn into a kernel.
    #[error("graph `{graph}`: node %{node} ({op}): {message}")]
    Unsupported {
        /// The graph's name.
        graph: String,
        /// The node's index.
        node: usize,
        /// The node's op.
        op: String,
        /// Why it was rejected.
        message: String,
    },
}

/// Why a kernel could not be built.
enum Fail {
    /// Materialise this node and fuse again.
    Materialise(NodeId),
    /// Every node one pass found it had to materialise (so a graph with
    /// many such nodes takes a few passes, not one per node).
    MaterialiseAll(Vec<NodeId>),
    /// Give this appendable output contiguous storage and fuse again (a
    /// reshape reads it through flat addresses).
    Contiguous(NodeId),
    Error(FuseError),
}

/// What runs after fusion.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FuseOptions {
    /// Kernel rewrites ([`super::rewrite::REWRITE_NAMES`]) to skip.
    pub disabled: BTreeSet<String>,
}

/// Fuse `graph` into kernels (deterministic: the graph's topological order),
/// then apply every kernel rewrite.
pub fn fuse(graph: &Graph) -> Result<KernelProgram, FuseError> {
    fuse_with(graph, &FuseOptions::default())
}

/// [`fuse`] with some kernel rewrites disabled.
pub fn fuse_with(graph: &Graph, opts: &FuseOptions) -> Result<KernelProgram, FuseError> {
    let mut p = fuse_only(graph, !opts.disabled.contains("append-cache"))?;
    super::rewrite::run(&mut p, &opts.disabled);
    p.plan = BufferPlan::plan(&p.buffers, &p.kernels);
    Ok(p)
}

fn fuse_only(graph: &Graph, appendable: bool) -> Result<KernelProgram, FuseError> {
    let mut forced = BTreeSet::new();
    let mut contiguous = BTreeSet::new();
    loop {
        let mut f = Fuser::new(graph, &forced);
        if appendable {
            f.appendable = Some(contiguous.clone());
        }
        match f.run() {
            Ok(p) => return Ok(p),
            Err(Fail::Error(e)) => return Err(e),
            Err(Fail::Contiguous(n)) => {
                if !contiguous.insert(n) {
                    return Err(stuck(graph, n));
                }
            }
            Err(Fail::Materialise(n)) => {
                if !forced.insert(n) {
                    return Err(stuck(graph, n));
                }
            }
            Err(Fail::MaterialiseAll(ns)) => {
                let before = forced.len();
                forced.extend(ns.iter().copied());
                if forced.len() == before {
                    return Err(stuck(graph, ns[0]));
                }
            }
        }
    }
}

fn stuck(graph: &Graph, n: NodeId) -> FuseError {
    FuseError::Unsupported {
        graph: graph.name.clone(),
        node: n.index(),
        op: graph.node(n).op.to_string(),
        message: "cannot be fused even when materialised".into(),
    }
}

/// Node index along an axis: `Σₖ rows[a][k]·iₖ + off[a]` over a kernel's domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Map {
    rows: Vec<Vec<Size>>,
    off: Vec<Size>,
}

impl Map {
    /// Identity over `shape`, with zero rows on unit axes (their index is always 0).
    fn identity_of(shape: &[crate::ir::Dim]) -> Map {
        let mut m = Map::identity(shape.len());
        for (a, d) in shape.iter().enumerate() {
            if d.is_one() {
                m.rows[a] = vec![Size::zero(); shape.len()];
            }
        }
        m
    }

    fn identity(rank: usize) -> Map {
        Map {
            rows: (0..rank).map(|a| unit(rank, a)).collect(),
            off: vec![Size::zero(); rank],
        }
    }
}

fn unit(rank: usize, a: usize) -> Vec<Size> {
    (0..rank)
        .map(|k| if k == a { Size::one() } else { Size::zero() })
        .collect()
}

fn sizes(shape: &[crate::ir::Dim]) -> Vec<Size> {
    shape.iter().map(Size::from_dim).collect()
}

fn is_elementwise(op: &Op) -> bool {
    matches!(op, Op::Unary(_) | Op::Binary(_) | Op::Select | Op::Cast)
}

/// The epilogue of product `m`: `m` then the nodes it feeds, in topological
/// order, up to the last point where the region has a single exit: every
/// member but the last (the sink) has all its users inside. Members are
/// `eligible`; a member that must end a region (`ends`: a buffer or a graph
/// output) can only be the sink. Just `[m]` when nothing joins.
fn epilogue_region(
    m: NodeId,
    topo: &[NodeId],
    topo_at: &HashMap<NodeId, usize>,
    users: &dyn Fn(NodeId) -> Vec<NodeId>,
    eligible: impl Fn(NodeId) -> bool,
    ends: impl Fn(NodeId) -> bool,
) -> Vec<NodeId> {
    // Bounds the body a Gemm's epilogue carries (a GELU is 11 nodes).
    const MAX_MEMBERS: usize = 48;
    let mut members = vec![m];
    // Each member's users, looked up once.
    let mut their_users = vec![users(m)];
    let mut inside: BTreeSet<NodeId> = BTreeSet::from([m]);
    let mut pending: BTreeSet<usize> = their_users[0].iter().map(|u| topo_at[u]).collect();
    let mut closed = 1;
    while let Some(i) = pending.pop_first() {
        let u = topo[i];
        if members.len() == MAX_MEMBERS || !eligible(u) {
            break;
        }
        let us = users(u);
        pending.extend(us.iter().map(|w| topo_at[w]));
        members.push(u);
        inside.insert(u);
        let single_exit = their_users
            .iter()
            .all(|ws| ws.iter().all(|w| inside.contains(w)));
        their_users.push(us);
        if single_exit {
            closed = members.len();
        }
        if ends(u) {
            break;
        }
    }
    members.truncate(closed);
    members
}

/// Input index map of a reshape when every group of axes is kept, split or
/// a unit axis (an affine map); `None` when axes merge.
fn reshape_map(input: &[crate::ir::Dim], output: &[crate::ir::Dim], map: &Map) -> Option<Map> {
    let r = map.rows.first().map_or(0, Vec::len);
    let r = if map.rows.is_empty() { 0 } else { r };
    let ins: Vec<(usize, Size)> = input
        .iter()
        .enumerate()
        .filter(|(_, d)| !d.is_one())
        .map(|(i, d)| (i, Size::from_dim(d)))
        .collect();
    let outs: Vec<(usize, Size)> = output
        .iter()
        .enumerate()
        .filter(|(_, d)| !d.is_one())
        .map(|(i, d)| (i, Size::from_dim(d)))
        .collect();
    let mut rows = vec![vec![Size::zero(); r]; input.len()];
    let mut off = vec![Size::zero(); input.len()];
    let (mut i, mut j) = (0, 0);
    while i < ins.len() && j < outs.len() {
        let mut acc = outs[j].1.clone();
        let mut j2 = j + 1;
        while acc != ins[i].1 && j2 < outs.len() {
            acc = &acc * &outs[j2].1;
            j2 += 1;
        }
        if acc != ins[i].1 {
            return None;
        }
        // in = Σ out_t · (product of later dims in the group)
        let mut scale = Size::one();
        let a = ins[i].0;
        for t in (j..j2).rev() {
            let o = outs[t].0;
            for (k, row) in rows[a].iter_mut().enumerate() {
                *row = row.clone() + &map.rows[o][k] * &scale;
            }
            off[a] = off[a].clone() + &map.off[o] * &scale;
            scale = &scale * &outs[t].1;
        }
        i += 1;
        j = j2;
    }
    (i == ins.len() && j == outs.len()).then_some(Map { rows, off })
}

struct Fuser<'g> {
    g: &'g Graph,
    /// Nodes with a buffer.
    mat: BTreeSet<NodeId>,
    /// Matmuls folded into the Gemm of their epilogue chain's end.
    gemm_of: HashMap<NodeId, NodeId>,
    /// Reached from an output.
    live: BTreeSet<NodeId>,
    outputs: BTreeSet<NodeId>,
    buffers: Vec<Buffer>,
    buf_of: HashMap<NodeId, BufId>,
    kernels: Vec<Kernel>,
    joined: BTreeMap<String, Vec<(String, usize)>>,
    /// When set, `concat(input, new)` outputs get a capacity axis (spare
    /// rows for appending in place), except the nodes in the set.
    appendable: Option<BTreeSet<NodeId>>,
}

/// A kernel under construction: shared loads and reduction stages.
struct KB {
    rank: usize,
    domain: Vec<Size>,
    loads: Vec<View>,
    stages: Vec<Stage>,
    stage_memo: HashMap<(NodeId, Map), usize>,
    /// In a Gemm epilogue: the matmul whose element is `Reduced(0)`.
    gemm: Option<NodeId>,
    /// The node the kernel computes (expanded even though it has a buffer).
    root: Option<NodeId>,
}

#[derive(Default)]
struct BodyB {
    body: Body,
    memo: HashMap<(NodeId, Map), ValId>,
}

impl BodyB {
    fn push(&mut self, inst: Inst, dt: DType) -> ValId {
        let leaf = matches!(
            inst,
            Inst::Load(_) | Inst::Const(_) | Inst::Index(_) | Inst::Size(_) | Inst::Reduced(_)
        );
        if leaf
            && let Some(i) = self
                .body
                .insts
                .iter()
                .position(|(x, d)| *x == inst && *d == dt)
        {
            return i;
        }
        self.body.insts.push((inst, dt));
        self.body.insts.len() - 1
    }

    fn finish(mut self, result: ValId) -> Body {
        self.body.result = result;
        self.body
    }
}

impl<'g> Fuser<'g> {
    fn new(g: &'g Graph, forced: &BTreeSet<NodeId>) -> Fuser<'g> {
        let topo = g.topo_order();
        let outputs: BTreeSet<NodeId> = g.outputs.iter().map(|(_, id)| *id).collect();
        let mut live = outputs.clone();
        for &n in topo.iter().rev() {
            if live.contains(&n) {
                live.extend(g.inputs(n));
            }
        }
        let live_users = |n: NodeId| -> Vec<NodeId> {
            g.users(n)
                .into_iter()
                .filter(|u| live.contains(u))
                .collect()
        };
        let mut mat: BTreeSet<NodeId> = forced.clone();
        mat.extend(outputs.iter().copied());
        for &n in &topo {
            match &g.node(n).op {
                Op::Input { .. }
                | Op::Parameter { .. }
                | Op::Literal(_)
                | Op::MatMul
                | Op::Gather { .. }
                | Op::Concat { .. } => {
                    mat.insert(n);
                }
                Op::Reduce { axes, .. } if axes.len() != 1 => {
                    mat.insert(n);
                }
                _ => {}
            }
        }
        // Readers of `n`, looking through views (reshape, permute, slice).
        fn count_consumers(g: &Graph, live: &BTreeSet<NodeId>, n: NodeId) -> usize {
            g.users(n)
                .into_iter()
                .filter(|u| live.contains(u))
                .map(|u| match g.node(u).op {
                    Op::Reshape | Op::Permute { .. } | Op::Slice { .. } => {
                        count_consumers(g, live, u)
                    }
                    _ => 1,
                })
                .sum()
        }
        let consumers = |n: NodeId| count_consumers(g, &live, n);
        // A value behind a libm call (sin, cos, log, pow: ~20-40 ns each)
        // read by several consumers is computed once, not once per consumer
        // (RoPE's cos/sin table is read by q and k of every layer).
        for &n in &topo {
            let costly = match &g.node(n).op {
                Op::Unary(u) => matches!(
                    u,
                    crate::ir::UnaryOp::Sin | crate::ir::UnaryOp::Cos | crate::ir::UnaryOp::Log
                ),
                Op::Binary(b) => *b == crate::ir::BinaryOp::Pow,
                _ => false,
            };
            if costly && live.contains(&n) && consumers(n) > 1 {
                mat.insert(n);
            }
        }
        // Operands that must be buffers or pure views of buffers.
        for &n in &topo {
            if !live.contains(&n) {
                continue;
            }
            let ins = g.inputs(n);
            match &g.node(n).op {
                Op::Reshape => {
                    let x = ins[0];
                    let id = Map::identity(g.ty(n).rank());
                    if reshape_map(&g.ty(x).shape, &g.ty(n).shape, &id).is_none()
                        && !is_linear(g, &mat, x)
                    {
                        mat.insert(x);
                    }
                }
                Op::MatMul => {
                    for x in ins {
                        if !is_view(g, &mat, x) {
                            mat.insert(x);
                        }
                    }
                }
                Op::Gather { .. } => {
                    mat.insert(ins[0]);
                    if !is_view(g, &mat, ins[1]) {
                        mat.insert(ins[1]);
                    }
                }
                _ => {}
            }
        }
        // Gemm epilogues: the region of elementwise nodes the product feeds
        // that has one exit (its sink), so a GELU that reads its input four
        // times is fused as a whole, not cut at its first fan-out.
        let topo_at: HashMap<NodeId, usize> =
            topo.iter().enumerate().map(|(i, &n)| (n, i)).collect();
        let mut gemm_of = HashMap::new();
        let mut claimed: BTreeSet<NodeId> = BTreeSet::new();
        for &m in &topo {
            if !matches!(g.node(m).op, Op::MatMul)
                || !live.contains(&m)
                || forced.contains(&m)
                || outputs.contains(&m)
            {
                continue;
            }
            let members = epilogue_region(
                m,
                &topo,
                &topo_at,
                &live_users,
                |u| {
                    // The product's buffer holds the sink's value: it must stay
                    // f32 (a comparison or cast ends the region).
                    is_elementwise(&g.node(u).op)
                        && g.ty(u).shape == g.ty(m).shape
                        && g.ty(u).dtype == DType::F32
                        && !claimed.contains(&u)
                },
                |u| mat.contains(&u),
            );
            if let Some((&sink, inner)) = members.split_last()
                && !inner.is_empty()
            {
                claimed.extend(members[1..].iter().copied());
                mat.remove(&m);
                mat.insert(sink);
                gemm_of.insert(sink, m);
            }
        }
        // An inlined value is recomputed by each of its consumers. When it
        // stands for a long chain (the residual stream through sandwich
        // norms, which also feeds the next layer's norm) that recomputation
        // compounds layer after layer, so a value read by several consumers
        // whose inlined chain exceeds INLINE_MAX nodes is materialised.
        const INLINE_MAX: usize = 8;
        let mut chain: HashMap<NodeId, usize> = HashMap::new();
        for &n in &topo {
            if !live.contains(&n) {
                continue;
            }
            let mut len = 0;
            // Gemm epilogue members are computed inside their Gemm.
            if !mat.contains(&n) && !claimed.contains(&n) {
                let own = match g.node(n).op {
                    Op::Reshape | Op::Permute { .. } | Op::Slice { .. } => 0,
                    _ => 1,
                };
                let below: usize = g
                    .inputs(n)
                    .iter()
                    .map(|i| chain.get(i).copied().unwrap_or(0))
                    .sum();
                len = (own + below).min(1 << 20);
                if len > INLINE_MAX && is_elementwise(&g.node(n).op) && consumers(n) > 1 {
                    mat.insert(n);
                    len = 0;
                }
            }
            chain.insert(n, len);
        }
        Fuser {
            g,
            mat,
            gemm_of,
            live,
            outputs,
            buffers: Vec::new(),
            buf_of: HashMap::new(),
            kernels: Vec::new(),
            joined: BTreeMap::new(),
            appendable: None,
        }
    }

    fn unsupported(&self, n: NodeId, message: impl Into<String>) -> Fail {
        Fail::Error(FuseError::Unsupported {
            graph: self.g.name.clone(),
            node: n.index(),
            op: self.g.node(n).op.to_string(),
            message: message.into(),
        })
    }

    fn run(mut self) -> Result<KernelProgram, Fail> {
        let g = self.g;
        let mut pending = Vec::new();
        let mut inputs = Vec::new();
        for id in g.inputs_decl() {
            if let Op::Input { name } = &g.node(id).op {
                let b = self.buffer(id);
                inputs.push((name.clone(), b));
            }
        }
        for n in g.topo_order() {
            if !self.live.contains(&n) || !self.mat.contains(&n) {
                continue;
            }
            if matches!(
                g.node(n).op,
                Op::Input { .. } | Op::Parameter { .. } | Op::Literal(_)
            ) || self.joined_parts(n).is_some()
            {
                continue;
            }
            match self.build(n) {
                Ok(()) => {}
                // Note it and go on: the pass is discarded, but the other
                // nodes it must materialise are found in the same pass.
                Err(Fail::Materialise(x)) => pending.push(x),
                Err(e) => return Err(e),
            }
        }
        if !pending.is_empty() {
            pending.sort();
            pending.dedup();
            return Err(Fail::MaterialiseAll(pending));
        }
        // Outputs: a leaf or a repeated node is copied into its own buffer.
        let mut outputs = Vec::new();
        let mut seen = BTreeSet::new();
        for (name, id) in &g.outputs {
            let b = self.buffer(*id);
            let own = self.buffers[b].kind == BufferKind::Output && seen.insert(b);
            let b = if own {
                b
            } else {
                let ty = g.ty(*id);
                self.buffers.push(Buffer {
                    name: format!("{name} (copy)"),
                    dtype: ty.dtype,
                    shape: ty.shape.clone(),
                    kind: BufferKind::Output,
                    capacity: None,
                });
                let nb = self.buffers.len() - 1;
                let rank = ty.rank();
                let src = self.view(*id, &Map::identity(rank));
                self.kernels.push(Kernel::Copy(kinds::Copy {
                    out: self.out_view(nb),
                    domain: ty.shape.clone(),
                    src,
                }));
                seen.insert(nb);
                nb
            };
            outputs.push((name.clone(), b));
        }
        let plan = BufferPlan::plan(&self.buffers, &self.kernels);
        Ok(KernelProgram {
            name: g.name.clone(),
            buffers: self.buffers,
            kernels: self.kernels,
            inputs,
            outputs,
            plan,
            graph_nodes: g.node_count(),
            joined: self.joined,
            appends: Vec::new(),
        })
    }

    /// The parameters a concatenation joins, when it is one of parameters
    /// only along their first axis (merged projection weights): a weight a
    /// runtime builds once, not a kernel.
    fn joined_parts(&self, n: NodeId) -> Option<Vec<(String, usize)>> {
        let g = self.g;
        if !matches!(g.node(n).op, Op::Concat { axis: 0 }) || self.outputs.contains(&n) {
            return None;
        }
        g.inputs(n)
            .into_iter()
            .map(|p| match &g.node(p).op {
                Op::Parameter { name, .. } if g.ty(p).rank() == 2 => {
                    Some((name.clone(), g.ty(p).shape[0].as_const()?))
                }
                _ => None,
            })
            .collect()
    }

    /// The buffer of a materialised node (created on first use).
    fn buffer(&mut self, n: NodeId) -> BufId {
        if let Some(&b) = self.buf_of.get(&n) {
            return b;
        }
        let node = self.g.node(n);
        let (name, kind) = match &node.op {
            _ if let Some(parts) = self.joined_parts(n) => {
                let name = parts
                    .iter()
                    .map(|(p, _)| p.as_str())
                    .collect::<Vec<_>>()
                    .join("+");
                self.joined.insert(name.clone(), parts);
                (name.clone(), BufferKind::Param(name))
            }
            Op::Input { name } => (name.clone(), BufferKind::Input(name.clone())),
            Op::Parameter { name, .. } => (name.clone(), BufferKind::Param(name.clone())),
            Op::Literal(v) => (
                format!("%{} {}", n.index(), node.scope),
                BufferKind::Const(v.clone()),
            ),
            _ if self.outputs.contains(&n) => (format!("%{}", n.index()), BufferKind::Output),
            _ => (
                format!("%{} {}", n.index(), node.scope)
                    .trim_end()
                    .to_string(),
                BufferKind::Temp,
            ),
        };
        let capacity = match (&kind, &node.op) {
            (BufferKind::Output, Op::Concat { axis })
                if self
                    .appendable
                    .as_ref()
                    .is_some_and(|not| !not.contains(&n))
                    && matches!(self.g.inputs(n)[..], [past, _]
                        if matches!(self.g.node(past).op, Op::Input { .. })) =>
            {
                Some(*axis)
            }
            _ => None,
        };
        self.buffers.push(Buffer {
            name,
            dtype: node.ty.dtype,
            shape: node.ty.shape.clone(),
            kind,
            capacity,
        });
        let b = self.buffers.len() - 1;
        self.buf_of.insert(n, b);
        b
    }

    fn out_view(&self, b: BufId) -> View {
        View {
            buf: b,
            offset: Size::zero(),
            strides: self.buffers[b].strides(),
        }
    }

    /// A view of materialised node `n` through `map`.
    fn view(&mut self, n: NodeId, map: &Map) -> View {
        let b = self.buffer(n);
        let rs = self.buffers[b].strides();
        let r = map.rows.first().map_or(0, Vec::len);
        let mut strides = vec![Size::zero(); r];
        let mut offset = Size::zero();
        for (a, s) in rs.iter().enumerate() {
            for (k, st) in strides.iter_mut().enumerate() {
                *st = st.clone() + s * &map.rows[a][k];
            }
            offset = offset + s * &map.off[a];
        }
        View {
            buf: b,
            offset,
            strides,
        }
    }

    /// A view of `n` (materialised, or a chain of reshapes / permutes /
    /// slices of a materialised node) through `map`.
    fn view_of(&mut self, n: NodeId, map: &Map) -> Result<View, Fail> {
        if self.mat.contains(&n) {
            return Ok(self.view(n, map));
        }
        let g = self.g;
        let ins = g.inputs(n);
        match &g.node(n).op {
            Op::Permute { perm } => {
                let m = permute_map(perm, map);
                self.view_of(ins[0], &m)
            }
            Op::Slice { axis, start, .. } => {
                let mut m = map.clone();
                m.off[*axis] = m.off[*axis].clone() + Size::from_dim(start);
                self.view_of(ins[0], &m)
            }
            Op::Reshape => match reshape_map(&g.ty(ins[0]).shape, &g.ty(n).shape, map) {
                Some(m) => self.view_of(ins[0], &m),
                None => self.linear_view(n, map),
            },
            _ => Err(Fail::Materialise(n)),
        }
    }

    /// A view through a chain of reshapes down to a contiguous buffer: the
    /// flat address is preserved by every reshape.
    fn linear_view(&mut self, n: NodeId, map: &Map) -> Result<View, Fail> {
        let rs = row_major(&self.g.ty(n).shape);
        let r = map.rows.first().map_or(0, Vec::len);
        let mut strides = vec![Size::zero(); r];
        let mut offset = Size::zero();
        for (a, s) in rs.iter().enumerate() {
            for (k, st) in strides.iter_mut().enumerate() {
                *st = st.clone() + s * &map.rows[a][k];
            }
            offset = offset + s * &map.off[a];
        }
        let mut x = n;
        while !self.mat.contains(&x) {
            match self.g.node(x).op {
                Op::Reshape => x = self.g.inputs(x)[0],
                _ => return Err(Fail::Materialise(x)),
            }
        }
        let buf = self.buffer(x);
        if self.buffers[buf].capacity.is_some() {
            return Err(Fail::Contiguous(x));
        }
        Ok(View {
            buf,
            offset,
            strides,
        })
    }

    fn new_kb(&self, domain: &Shape) -> KB {
        KB {
            rank: domain.len(),
            domain: sizes(domain),
            loads: Vec::new(),
            stages: Vec::new(),
            stage_memo: HashMap::new(),
            gemm: None,
            root: None,
        }
    }

    fn load(&mut self, kb: &mut KB, bb: &mut BodyB, v: View, dt: DType) -> ValId {
        let l = match kb.loads.iter().position(|x| *x == v) {
            Some(l) => l,
            None => {
                kb.loads.push(v);
                kb.loads.len() - 1
            }
        };
        bb.push(Inst::Load(l), dt)
    }

    /// The value of node `n` at the point `map` of the domain, in body `bb`.
    fn val(&mut self, kb: &mut KB, bb: &mut BodyB, n: NodeId, map: &Map) -> Result<ValId, Fail> {
        let key = (n, map.clone());
        if let Some(&v) = bb.memo.get(&key) {
            return Ok(v);
        }
        let g = self.g;
        let node = g.node(n);
        let dt = node.ty.dtype;
        let v = if kb.gemm == Some(n) {
            if *map != Map::identity_of(&node.ty.shape) {
                return Err(self.unsupported(n, "matmul read off its own grid in its epilogue"));
            }
            bb.push(Inst::Reduced(0), dt)
        } else if self.mat.contains(&n) && kb.root != Some(n) {
            let view = self.view(n, map);
            self.load(kb, bb, view, dt)
        } else {
            let ins = g.inputs(n);
            let shape = &node.ty.shape;
            match &node.op {
                Op::Scalar(c) => bb.push(Inst::Const(*c), dt),
                Op::Iota { axis } => {
                    let mut acc: Option<ValId> = None;
                    let row = &map.rows[*axis];
                    for (k, c) in row.iter().enumerate() {
                        if c.is_zero() {
                            continue;
                        }
                        let mut t = bb.push(Inst::Index(k), DType::I32);
                        if *c != Size::one() {
                            let cv = size_val(bb, c);
                            t = bb.push(Inst::Binary(crate::ir::BinaryOp::Mul, t, cv), DType::I32);
                        }
                        acc = Some(match acc {
                            None => t,
                            Some(a) => {
                                bb.push(Inst::Binary(crate::ir::BinaryOp::Add, a, t), DType::I32)
                            }
                        });
                    }
                    let off = &map.off[*axis];
                    let v = match (acc, off.is_zero()) {
                        (None, _) => size_val(bb, off),
                        (Some(a), true) => a,
                        (Some(a), false) => {
                            let o = size_val(bb, off);
                            bb.push(Inst::Binary(crate::ir::BinaryOp::Add, a, o), DType::I32)
                        }
                    };
                    if dt == DType::I32 {
                        v
                    } else {
                        bb.push(Inst::Cast(v), dt)
                    }
                }
                Op::Unary(u) => {
                    let x = self.val(kb, bb, ins[0], map)?;
                    bb.push(Inst::Unary(*u, x), dt)
                }
                Op::Cast => {
                    let x = self.val(kb, bb, ins[0], map)?;
                    bb.push(Inst::Cast(x), dt)
                }
                Op::Binary(b) => {
                    let m0 = broadcast_map(&g.ty(ins[0]).shape, shape, map);
                    let m1 = broadcast_map(&g.ty(ins[1]).shape, shape, map);
                    let x = self.val(kb, bb, ins[0], &m0)?;
                    let y = self.val(kb, bb, ins[1], &m1)?;
                    bb.push(Inst::Binary(*b, x, y), dt)
                }
                Op::Select => {
                    let mut v = [0; 3];
                    for (s, &x) in ins.iter().enumerate() {
                        let m = broadcast_map(&g.ty(x).shape, shape, map);
                        v[s] = self.val(kb, bb, x, &m)?;
                    }
                    bb.push(Inst::Select(v[0], v[1], v[2]), dt)
                }
                Op::Permute { perm } => {
                    let m = permute_map(perm, map);
                    self.val(kb, bb, ins[0], &m)?
                }
                Op::Slice { axis, start, .. } => {
                    let mut m = map.clone();
                    m.off[*axis] = m.off[*axis].clone() + Size::from_dim(start);
                    self.val(kb, bb, ins[0], &m)?
                }
                Op::Reshape => match reshape_map(&g.ty(ins[0]).shape, shape, map) {
                    Some(m) => self.val(kb, bb, ins[0], &m)?,
                    None => {
                        let view = self.linear_view(n, map)?;
                        self.load(kb, bb, view, dt)
                    }
                },
                Op::Reduce { op, axes } => {
                    let s = self.stage(kb, n, *op, axes[0], map)?;
                    bb.push(Inst::Reduced(s), dt)
                }
                _ => return Err(Fail::Materialise(n)),
            }
        };
        bb.memo.insert(key, v);
        Ok(v)
    }

    /// The stage computing reduction `n` (over its axis `ax`) for the row of
    /// the current point; `map` is where the consumer reads `n`.
    fn stage(
        &mut self,
        kb: &mut KB,
        n: NodeId,
        op: crate::ir::ReduceOp,
        ax: usize,
        map: &Map,
    ) -> Result<usize, Fail> {
        let g = self.g;
        let last = kb.rank.wrapping_sub(1);
        let x = g.inputs(n)[0];
        let len = Size::from_dim(&g.ty(x).shape[ax]);
        let aligned = kb.gemm.is_none()
            && kb.rank > 0
            && kb.domain[last] == len
            && map.rows[ax].iter().all(Size::is_zero)
            && map.off[ax].is_zero()
            && map.rows.iter().all(|row| row[last].is_zero());
        if !aligned {
            return Err(Fail::Materialise(n));
        }
        let mut m = map.clone();
        m.rows[ax] = unit(kb.rank, last);
        self.stage_over(kb, n, op, m)
    }

    fn stage_over(
        &mut self,
        kb: &mut KB,
        n: NodeId,
        op: crate::ir::ReduceOp,
        input_map: Map,
    ) -> Result<usize, Fail> {
        let key = (n, input_map.clone());
        if let Some(&s) = kb.stage_memo.get(&key) {
            return Ok(s);
        }
        let x = self.g.inputs(n)[0];
        let mut bb = BodyB::default();
        let v = self.val(kb, &mut bb, x, &input_map)?;
        kb.stages.push(Stage {
            op,
            body: bb.finish(v),
        });
        let s = kb.stages.len() - 1;
        kb.stage_memo.insert(key, s);
        Ok(s)
    }

    /// Elementwise / RowReduce / Copy computing node `n` over `domain` into `out`.
    fn compute(&mut self, n: NodeId, domain: &Shape, out: View) -> Result<Kernel, Fail> {
        let mut kb = self.new_kb(domain);
        if out.buf == self.buf_of.get(&n).copied().unwrap_or(usize::MAX) {
            kb.root = Some(n);
        }
        let mut bb = BodyB::default();
        let v = self.val(&mut kb, &mut bb, n, &Map::identity_of(domain))?;
        let body = bb.finish(v);
        Ok(if !kb.stages.is_empty() {
            Kernel::RowReduce(kinds::RowReduce {
                out,
                domain: domain.clone(),
                loads: kb.loads,
                stages: kb.stages,
                epilogue: body,
                per_row: false,
            })
        } else if body.insts.len() == 1 && matches!(body.insts[0].0, Inst::Load(_)) {
            Kernel::Copy(kinds::Copy {
                out,
                domain: domain.clone(),
                src: kb.loads[0].clone(),
            })
        } else {
            Kernel::Elementwise(kinds::Elementwise {
                out,
                domain: domain.clone(),
                loads: kb.loads,
                body,
            })
        })
    }

    /// The kernel(s) producing materialised node `n`.
    fn build(&mut self, n: NodeId) -> Result<(), Fail> {
        let g = self.g;
        let node = g.node(n);
        let shape = node.ty.shape.clone();
        let ins = g.inputs(n);
        let matmul = match (&node.op, self.gemm_of.get(&n)) {
            (_, Some(&m)) => Some(m),
            (Op::MatMul, None) => Some(n),
            _ => None,
        };
        if let Some(m) = matmul {
            let (a, b) = {
                let i = g.inputs(m);
                (i[0], i[1])
            };
            let mshape = &g.ty(m).shape;
            let r = mshape.len();
            let nb = r - 2;
            let operand_map = |x: NodeId| {
                let xs = &g.ty(x).shape;
                let q = xs.len();
                let mut rows = Vec::with_capacity(q);
                for (t, d) in xs.iter().enumerate() {
                    if t >= q - 2 {
                        rows.push(unit(r, nb + t - (q - 2)));
                    } else if d.is_one() {
                        rows.push(vec![Size::zero(); r]);
                    } else {
                        rows.push(unit(r, t + nb - (q - 2)));
                    }
                }
                Map {
                    rows,
                    off: vec![Size::zero(); q],
                }
            };
            let av = self.view_of(a, &operand_map(a))?;
            let bv = self.view_of(b, &operand_map(b))?;
            let epilogue = if m != n {
                let mut kb = self.new_kb(mshape);
                kb.gemm = Some(m);
                kb.root = Some(n);
                let mut bb = BodyB::default();
                let v = self.val(&mut kb, &mut bb, n, &Map::identity_of(mshape))?;
                Some(Epilogue {
                    loads: kb.loads,
                    body: bb.finish(v),
                })
            } else {
                None
            };
            let ob = self.buffer(n);
            let ashape = &g.ty(a).shape;
            self.kernels.push(Kernel::Gemm(kinds::Gemm {
                out: self.out_view(ob),
                a: av,
                b: bv,
                batch: mshape[..nb].to_vec(),
                m: mshape[nb].clone(),
                n: mshape[nb + 1].clone(),
                k: ashape[ashape.len() - 1].clone(),
                epilogue,
                rows: None,
            }));
            return Ok(());
        }
        match &node.op {
            Op::Reduce { op, axes } => {
                if axes.len() != 1 {
                    return Err(self.unsupported(n, "reduction over several axes"));
                }
                let ax = axes[0];
                let x = ins[0];
                let xs = &g.ty(x).shape;
                let q = xs.len();
                let order: Vec<usize> = (0..q).filter(|&a| a != ax).chain([ax]).collect();
                let domain: Shape = order.iter().map(|&a| xs[a].clone()).collect();
                let mut pos = vec![0; q];
                for (d, &a) in order.iter().enumerate() {
                    pos[a] = d;
                }
                let input_map = Map {
                    rows: (0..q).map(|a| unit(q, pos[a])).collect(),
                    off: vec![Size::zero(); q],
                };
                let mut kb = self.new_kb(&domain);
                let s = self.stage_over(&mut kb, n, *op, input_map)?;
                let mut bb = BodyB::default();
                let v = bb.push(Inst::Reduced(s), node.ty.dtype);
                let ob = self.buffer(n);
                let rs = self.buffers[ob].strides();
                let strides = order
                    .iter()
                    .map(|&a| if a == ax { Size::zero() } else { rs[a].clone() })
                    .collect();
                self.kernels.push(Kernel::RowReduce(kinds::RowReduce {
                    out: View {
                        buf: ob,
                        offset: Size::zero(),
                        strides,
                    },
                    domain,
                    loads: kb.loads,
                    stages: kb.stages,
                    epilogue: bb.finish(v),
                    per_row: true,
                }));
            }
            Op::Gather { axis } => {
                let (data, idx) = (ins[0], ins[1]);
                if !self.mat.contains(&data) {
                    return Err(Fail::Materialise(data));
                }
                let table = self.buffer(data);
                let is = g.ty(idx).shape.clone();
                let iv = self.view_of(idx, &Map::identity(is.len()))?;
                let ob = self.buffer(n);
                self.kernels.push(Kernel::Gather(kinds::Gather {
                    out: ob,
                    table,
                    indices: iv,
                    indices_shape: is,
                    axis: *axis,
                }));
            }
            Op::Concat { axis } => {
                let ob = self.buffer(n);
                let rs = self.buffers[ob].strides();
                let mut start = Size::zero();
                for &p in &ins {
                    let ps = g.ty(p).shape.clone();
                    let out = View {
                        buf: ob,
                        offset: &rs[*axis] * &start,
                        strides: rs.clone(),
                    };
                    let k = self.compute(p, &ps, out)?;
                    self.kernels.push(k);
                    start = start + Size::from_dim(&ps[*axis]);
                }
            }
            _ => {
                let ob = self.buffer(n);
                let out = self.out_view(ob);
                let k = self.compute(n, &shape, out)?;
                self.kernels.push(k);
            }
        }
        Ok(())
    }
}

fn size_val(bb: &mut BodyB, s: &Size) -> ValId {
    match s.as_const() {
        Some(c) => bb.push(Inst::Const(c as f64), DType::I32),
        None => bb.push(Inst::Size(s.clone()), DType::I32),
    }
}

fn permute_map(perm: &[usize], map: &Map) -> Map {
    let mut rows = map.rows.clone();
    let mut off = map.off.clone();
    for (i, &p) in perm.iter().enumerate() {
        rows[p] = map.rows[i].clone();
        off[p] = map.off[i].clone();
    }
    Map { rows, off }
}

/// Where an operand of shape `x` is read when its broadcast result (shape
/// `out`) is read through `map`.
fn broadcast_map(x: &[crate::ir::Dim], out: &[crate::ir::Dim], map: &Map) -> Map {
    let r = map.rows.first().map_or(0, Vec::len);
    let shift = out.len() - x.len();
    let mut rows = Vec::with_capacity(x.len());
    let mut off = Vec::with_capacity(x.len());
    for (a, d) in x.iter().enumerate() {
        if d.is_one() {
            rows.push(vec![Size::zero(); r]);
            off.push(Size::zero());
        } else {
            rows.push(map.rows[a + shift].clone());
            off.push(map.off[a + shift].clone());
        }
    }
    Map { rows, off }
}

/// `n` is a buffer or a chain of reshapes of one (its flat order is a buffer's).
fn is_linear(g: &Graph, mat: &BTreeSet<NodeId>, n: NodeId) -> bool {
    mat.contains(&n) || (matches!(g.node(n).op, Op::Reshape) && is_linear(g, mat, g.inputs(n)[0]))
}

/// `n` is a strided view of a buffer.
fn is_view(g: &Graph, mat: &BTreeSet<NodeId>, n: NodeId) -> bool {
    if mat.contains(&n) {
        return true;
    }
    match &g.node(n).op {
        Op::Permute { .. } | Op::Slice { .. } => is_view(g, mat, g.inputs(n)[0]),
        Op::Reshape => {
            let x = g.inputs(n)[0];
            let id = Map::identity(g.ty(n).rank());
            if reshape_map(&g.ty(x).shape, &g.ty(n).shape, &id).is_some() {
                is_view(g, mat, x)
            } else {
                is_linear(g, mat, x)
            }
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use crate::ir::{Builder, DType, Graph, Init, UnaryOp};
    use crate::kernel::{Kernel, KernelProgram, fuse, kinds};
    use crate::shape;

    /// `y = x·w`, then `y · tanh(y) + y·0.5`: `y` fans out three ways and
    /// the branches meet again. With `leak`, `y·0.5` is also an output.
    fn fan_out_graph(leak: bool) -> Graph {
        let mut g = Graph::new("fan-out");
        let mut b = Builder::new(&mut g);
        let x = b.input("x", DType::F32, shape!["seq", 8usize]).unwrap();
        let w = b.param("w", &[8, 4], Init::Fill(0.0)).unwrap();
        let y = b.matmul(x, w).unwrap();
        let t = b.unary(UnaryOp::Tanh, y).unwrap();
        let yt = b.mul(y, t).unwrap();
        let half = b.mul_scalar(y, 0.5).unwrap();
        let out = b.binary(crate::ir::BinaryOp::Add, yt, half).unwrap();
        g.set_output("out", out);
        if leak {
            g.set_output("half", half);
        }
        g
    }

    fn count(p: &KernelProgram, pred: impl Fn(&Kernel) -> bool) -> usize {
        p.kernels.iter().filter(|k| pred(k)).count()
    }

    #[test]
    fn a_fanning_out_epilogue_joins_its_gemm() {
        let p = fuse(&fan_out_graph(false)).unwrap();
        let text = p.to_text();
        assert_eq!(p.kernels.len(), 1, "{text}");
        assert!(
            matches!(
                &p.kernels[0],
                Kernel::Gemm(kinds::Gemm {
                    epilogue: Some(_),
                    ..
                })
            ),
            "{text}"
        );
        assert!(text.contains("tanh"), "{text}");
    }

    #[test]
    fn a_region_with_a_second_exit_stops_before_it() {
        // `half` is read outside (an output), so the region cannot hold
        // it as an inner node: the product stays alone, and the rest runs
        // as element-wise kernels.
        let p = fuse(&fan_out_graph(true)).unwrap();
        let text = p.to_text();
        assert_eq!(
            count(&p, |k| matches!(k, Kernel::Gemm(kinds::Gemm { .. }))),
            1,
            "{text}"
        );
        assert!(
            count(&p, |k| matches!(
                k,
                Kernel::Elementwise(kinds::Elementwise { .. })
            )) >= 1,
            "{text}"
        );
        let gemm_has_tanh = p.kernels.iter().any(|k| {
            matches!(k, Kernel::Gemm(kinds::Gemm { epilogue: Some(e), .. }) if format!("{e:?}").contains("Tanh"))
        });
        assert!(!gemm_has_tanh, "{text}");
    }
}
