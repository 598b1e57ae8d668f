//! Attention as one kernel. Fusion leaves attention as three kernels:
//!
//! - `T1 = score(q × kt)`: a Gemm whose epilogue scales, soft-caps, biases
//!   and masks the scores;
//! - `T2 = softmax(X(T1))`: a RowReduce with stages `max X`, `sum exp(X - r0)`
//!   and epilogue `exp(X - r0) / r1`;
//! - `out = T2 × v`: a Gemm.
//!
//! When `T1` and `T2` are temporaries that nothing else reads, the three
//! become one [`Kernel::Attention`] whose score body is the Gemm epilogue
//! followed by `X`. The `m × keys` buffers disappear, and a backend can
//! stream over key blocks with an online softmax.

use super::{Body, BufId, BufferKind, Epilogue, Inst, Kernel, KernelProgram, View};
use crate::ir::{BinaryOp, Dim, ReduceOp, UnaryOp};
use crate::kernel::kinds;

/// Rewrite every attention triple of `p`; returns how many were rewritten.
/// Buffers left unused are removed (and the rest renumbered).
pub(super) fn fuse_attention(p: &mut KernelProgram) -> usize {
    // One forward pass, linear in the kernels: the use counts and writers
    // are taken once (a match only retires its private temporaries, which
    // nothing else reads), and matched producers are dropped at the end.
    let (writes, reads) = uses(p);
    let mut writer = vec![None; p.buffers.len()];
    for (i, k) in p.kernels.iter().enumerate() {
        writer[k.output()].get_or_insert(i);
    }
    let mut dead = vec![false; p.kernels.len()];
    let mut count = 0;
    for i2 in 0..p.kernels.len() {
        if let Some((i0, i1, k)) = match_at(p, i2, &writes, &reads, &writer) {
            // The reads of the first two kernels move to the third's place:
            // their operands are written before `i0` (buffers are written
            // once before they are read), so nothing between changes them.
            p.kernels[i2] = k;
            dead[i0] = true;
            dead[i1] = true;
            count += 1;
        }
    }
    if count > 0 {
        let mut keep = dead.iter().map(|d| !d);
        p.kernels.retain(|_| keep.next().unwrap_or(true));
        remove_unused_temps(p);
    }
    count
}

/// How many kernels write and read each buffer.
fn uses(p: &KernelProgram) -> (Vec<usize>, Vec<usize>) {
    let mut writes = vec![0; p.buffers.len()];
    let mut reads = vec![0; p.buffers.len()];
    for k in &p.kernels {
        writes[k.output()] += 1;
        for b in k.reads() {
            reads[b] += 1;
        }
    }
    (writes, reads)
}

/// `a` and `b` address the same elements over a domain of extents `dims`
/// (strides on unit axes do not matter).
pub(super) fn same_on(a: &View, b: &View, dims: &[Dim]) -> bool {
    a.buf == b.buf
        && a.offset == b.offset
        && a.strides.len() == dims.len()
        && b.strides.len() == dims.len()
        && dims
            .iter()
            .enumerate()
            .all(|(k, d)| d.is_one() || a.strides[k] == b.strides[k])
}

/// `v` is buffer `buf` in its own row-major layout over its own shape.
fn whole(p: &KernelProgram, v: &View, dims: &[Dim]) -> bool {
    let b = &p.buffers[v.buf];
    b.shape == dims
        && same_on(
            v,
            &View {
                buf: v.buf,
                offset: super::Size::zero(),
                strides: b.strides(),
            },
            dims,
        )
}

/// Whether value `x` of body `a` and value `y` of body `b` compute the
/// same expression: the same instructions over the same loads, constants
/// (bit for bit), sizes and stage results, with the same dtypes.
fn same_value(a: &Body, x: usize, b: &Body, y: usize) -> bool {
    let ((ia, da), (ib, db)) = (&a.insts[x], &b.insts[y]);
    let same = |p: &usize, q: &usize| same_value(a, *p, b, *q);
    da == db
        && match (ia, ib) {
            (Inst::Load(l), Inst::Load(m)) => l == m,
            (Inst::Const(c), Inst::Const(d)) => c.to_bits() == d.to_bits(),
            (Inst::Index(i), Inst::Index(j)) => i == j,
            (Inst::Size(s), Inst::Size(t)) => s == t,
            (Inst::Unary(u, p), Inst::Unary(v, q)) => u == v && same(p, q),
            (Inst::Binary(o, p1, p2), Inst::Binary(r, q1, q2)) => {
                o == r && same(p1, q1) && same(p2, q2)
            }
            (Inst::Select(c, p1, p2), Inst::Select(d, q1, q2)) => {
                same(c, d) && same(p1, q1) && same(p2, q2)
            }
            (Inst::Cast(p), Inst::Cast(q)) => same(p, q),
            (Inst::Reduced(s), Inst::Reduced(t)) => s == t,
            _ => false,
        }
}

/// Whether value `v` of `b` is `exp(X - r0)` in f32, where `X` is the same
/// expression as value `x` of `xb` and `r0` the first stage's result.
fn is_shifted_exp(b: &Body, v: usize, xb: &Body, x: usize) -> bool {
    let f32 = |v: usize| b.insts[v].1 == crate::ir::DType::F32;
    let Inst::Unary(UnaryOp::Exp, e) = &b.insts[v].0 else {
        return false;
    };
    let Inst::Binary(BinaryOp::Sub, d, r) = &b.insts[*e].0 else {
        return false;
    };
    f32(v) && f32(*e) && f32(*r) && b.insts[*r].0 == Inst::Reduced(0) && same_value(b, *d, xb, x)
}

/// Whether the stages and epilogue are a softmax of stage 0's value `X`:
/// `max X`, then `sum exp(X - r0)`, then `exp(X - r0) / r1` per element.
fn is_softmax(stages: &[super::Stage], epilogue: &Body) -> bool {
    let [s0, s1] = stages else { return false };
    if s0.op != ReduceOp::Max || s1.op != ReduceOp::Sum {
        return false;
    }
    let x = s0.body.result;
    if s0.body.insts[x].1 != crate::ir::DType::F32
        || !is_shifted_exp(&s1.body, s1.body.result, &s0.body, x)
    {
        return false;
    }
    let out = epilogue.result;
    let Inst::Binary(BinaryOp::Div, n, d) = &epilogue.insts[out].0 else {
        return false;
    };
    epilogue.insts[out].1 == crate::ir::DType::F32
        && is_shifted_exp(epilogue, *n, &s0.body, x)
        && epilogue.insts[*d] == (Inst::Reduced(1), crate::ir::DType::F32)
}

/// Whether kernel `i2` is the value product of an attention triple
/// `(i0, i1, i2)`: the producers and the replacement kernel.
fn match_at(
    p: &KernelProgram,
    i2: usize,
    writes: &[usize],
    reads: &[usize],
    writers: &[Option<usize>],
) -> Option<(usize, usize, Kernel)> {
    let writer = |b: BufId| writers[b];
    let private =
        |b: BufId| p.buffers[b].kind == BufferKind::Temp && writes[b] == 1 && reads[b] == 1;
    {
        let k2 = &p.kernels[i2];
        let Kernel::Gemm(kinds::Gemm {
            out,
            a: probs,
            b: v,
            batch,
            m,
            n: dv,
            k: keys,
            epilogue: None,
            rows: None,
        }) = k2
        else {
            return None;
        };
        let t2 = probs.buf;
        if !private(t2) {
            return None;
        }
        let i1 = writer(t2)?;
        let Kernel::RowReduce(kinds::RowReduce {
            out: rout,
            domain,
            loads,
            stages,
            epilogue,
            per_row: false,
        }) = &p.kernels[i1]
        else {
            return None;
        };
        let expected: Vec<Dim> = batch.iter().chain([m, keys]).cloned().collect();
        if *domain != expected
            || !whole(p, rout, domain)
            || !same_on(probs, rout, domain)
            || !is_softmax(stages, epilogue)
        {
            return None;
        }
        // The scores: a load of stage 0 from a private Gemm output.
        let (lt, t1, i0) = loads.iter().enumerate().find_map(|(l, view)| {
            let t1 = view.buf;
            let i0 = writer(t1)?;
            let scores = matches!(p.kernels[i0], Kernel::Gemm(kinds::Gemm { .. }))
                && private(t1)
                && whole(p, view, domain);
            scores.then_some((l, t1, i0))
        })?;
        let Kernel::Gemm(kinds::Gemm {
            out: sout,
            a: q,
            b: kt,
            batch: b1,
            m: m1,
            n: n1,
            k: d,
            epilogue: e1,
            rows: None,
        }) = &p.kernels[i0]
        else {
            return None;
        };
        if b1 != batch || m1 != m || n1 != keys || !whole(p, sout, domain) || sout.buf != t1 {
            return None;
        }
        let score = score_body(e1.as_ref(), &stages[0].body, loads, lt);
        Some((
            i0,
            i1,
            Kernel::Attention(kinds::Attention {
                out: out.clone(),
                q: q.clone(),
                kt: kt.clone(),
                v: v.clone(),
                batch: batch.clone(),
                m: m.clone(),
                keys: keys.clone(),
                d: d.clone(),
                dv: dv.clone(),
                score,
            }),
        ))
    }
}

/// The score body: the Gemm epilogue (or the bare product), then stage 0's
/// `X` with its load of the scores (`lt`) replaced by that value. `None`
/// when the score is the bare product.
fn score_body(
    gemm_epilogue: Option<&Epilogue>,
    x: &Body,
    x_loads: &[View],
    lt: usize,
) -> Option<Epilogue> {
    let bare_x = x.insts.len() == 1 && x.insts[0].0 == Inst::Load(lt);
    if gemm_epilogue.is_none() && bare_x {
        return None;
    }
    let mut loads: Vec<View> = Vec::new();
    let mut load = |v: &View| match loads.iter().position(|x| x == v) {
        Some(i) => i,
        None => {
            loads.push(v.clone());
            loads.len() - 1
        }
    };
    let mut body = Body::default();
    let product = match gemm_epilogue {
        Some(e) => {
            let map: Vec<usize> = e.loads.iter().map(&mut load).collect();
            append(&mut body, &e.body, &|l| Err(map[l]))
        }
        None => {
            body.insts.push((Inst::Reduced(0), crate::ir::DType::F32));
            0
        }
    };
    let map: Vec<usize> = x_loads.iter().map(&mut load).collect();
    let result = append(&mut body, x, &|l| {
        if l == lt { Ok(product) } else { Err(map[l]) }
    });
    // The scores' own view was added above but is no longer read.
    let dead = map[lt];
    if !body.insts.iter().any(|(i, _)| *i == Inst::Load(dead)) {
        loads.remove(dead);
        for (inst, _) in &mut body.insts {
            if let Inst::Load(l) = inst
                && *l > dead
            {
                *l -= 1;
            }
        }
    }
    body.result = result;
    Some(Epilogue { loads, body })
}

/// Append `src` to `dst`; `load(l)` is `Ok(value)` to use an existing value
/// of `dst` for a load, or `Err(index)` to load through `dst`'s load list.
/// Returns the value of `src`'s result in `dst`.
fn append(dst: &mut Body, src: &Body, load: &dyn Fn(usize) -> Result<usize, usize>) -> usize {
    let mut vmap = Vec::with_capacity(src.insts.len());
    for (inst, dt) in &src.insts {
        let m = |v: &usize| vmap[*v];
        let new = match inst {
            Inst::Load(l) => match load(*l) {
                Ok(v) => {
                    vmap.push(v);
                    continue;
                }
                Err(l) => Inst::Load(l),
            },
            Inst::Unary(u, x) => Inst::Unary(*u, m(x)),
            Inst::Binary(o, x, y) => Inst::Binary(*o, m(x), m(y)),
            Inst::Select(c, x, y) => Inst::Select(m(c), m(x), m(y)),
            Inst::Cast(x) => Inst::Cast(m(x)),
            other => other.clone(),
        };
        dst.insts.push((new, *dt));
        vmap.push(dst.insts.len() - 1);
    }
    vmap[src.result]
}

/// Drop temporaries no kernel touches any more, renumbering the rest.
pub(super) fn remove_unused_temps(p: &mut KernelProgram) {
    let (writes, reads) = uses(p);
    let keep: Vec<bool> = (0..p.buffers.len())
        .map(|b| p.buffers[b].kind != BufferKind::Temp || writes[b] + reads[b] > 0)
        .collect();
    let mut new_id = vec![usize::MAX; keep.len()];
    let mut next = 0;
    for (b, &k) in keep.iter().enumerate() {
        if k {
            new_id[b] = next;
            next += 1;
        }
    }
    let mut b = 0;
    p.buffers.retain(|_| {
        b += 1;
        keep[b - 1]
    });
    for k in &mut p.kernels {
        k.map_bufs(&|b| new_id[b]);
    }
    for (_, b) in p.inputs.iter_mut().chain(p.outputs.iter_mut()) {
        *b = new_id[*b];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::DType::F32;
    use crate::kernel::Stage;

    /// `x * scale` over load 0 (the scores), with `scale` a constant.
    fn scaled(insts: &mut Vec<(Inst, crate::ir::DType)>, scale: f64) -> usize {
        insts.push((Inst::Load(0), F32));
        insts.push((Inst::Const(scale), F32));
        let n = insts.len();
        insts.push((Inst::Binary(BinaryOp::Mul, n - 2, n - 1), F32));
        insts.len() - 1
    }

    /// `exp(x - r0)` where x is [`scaled`], then `op(that, r1)` if given.
    fn shifted_exp(scale: f64, then: Option<BinaryOp>) -> Body {
        let mut insts = Vec::new();
        let x = scaled(&mut insts, scale);
        insts.push((Inst::Reduced(0), F32));
        insts.push((Inst::Binary(BinaryOp::Sub, x, x + 1), F32));
        insts.push((Inst::Unary(UnaryOp::Exp, x + 2), F32));
        let mut result = x + 3;
        if let Some(op) = then {
            insts.push((Inst::Reduced(1), F32));
            insts.push((Inst::Binary(op, result, result + 1), F32));
            result += 2;
        }
        Body { insts, result }
    }

    fn stages(max_scale: f64, sum_scale: f64) -> Vec<Stage> {
        let mut insts = Vec::new();
        let result = scaled(&mut insts, max_scale);
        vec![
            Stage {
                op: ReduceOp::Max,
                body: Body { insts, result },
            },
            Stage {
                op: ReduceOp::Sum,
                body: shifted_exp(sum_scale, None),
            },
        ]
    }

    #[test]
    fn softmax_is_recognised_by_structure() {
        let epilogue = shifted_exp(0.125, Some(BinaryOp::Div));
        assert!(is_softmax(&stages(0.125, 0.125), &epilogue));
        // Another X in one place (a different constant), another final op,
        // or stages in the other order: not a softmax.
        assert!(!is_softmax(&stages(0.125, 0.25), &epilogue));
        assert!(!is_softmax(
            &stages(0.125, 0.125),
            &shifted_exp(0.5, Some(BinaryOp::Div))
        ));
        assert!(!is_softmax(
            &stages(0.125, 0.125),
            &shifted_exp(0.125, Some(BinaryOp::Mul))
        ));
        let mut swapped = stages(0.125, 0.125);
        swapped.swap(0, 1);
        assert!(!is_softmax(&swapped, &epilogue));
        // -0.0 and 0.0 are different constants.
        assert!(!is_softmax(
            &stages(0.0, -0.0),
            &shifted_exp(0.0, Some(BinaryOp::Div))
        ));
    }
}
