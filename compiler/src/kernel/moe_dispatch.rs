//! Mixture-of-experts dispatch. Lowering computes experts densely: every
//! expert's projections run on every token (weights stacked on a batch axis
//! of the Gemms) and the down projection's epilogue multiplies each output
//! row by the token's gate for that expert, zero unless the expert was
//! selected. This rewrite makes that sparse:
//!
//! 1. the per-row gate `X` of the down projection (`product · X`, with `X`
//!    constant along the row) is computed once into a `(batch.., m)` buffer by
//!    a new element-wise kernel, and the epilogue reads it from there;
//! 2. the down projection gets that buffer as its row dispatch: a row whose
//!    gate is 0 is not computed (its output, `product · 0`, is 0);
//! 3. every projection feeding it row for row (the up projection as its
//!    left operand, the gate projection through the up projection's
//!    epilogue), and read by nothing else, gets the same dispatch: its
//!    skipped rows are read only by skipped rows.
//!
//! Exact for finite products (`x · 0 = 0`); the dense form would turn an
//! infinite or NaN product of an unselected expert into NaN.

use super::attention::same_on;
use super::row_major;
use super::{Body, BufId, Buffer, BufferKind, Epilogue, Inst, Kernel, KernelProgram, Size, View};
use crate::ir::{BinaryOp, DType, Dim};
use crate::kernel::kinds;
use std::collections::BTreeSet;

/// Dispatch every expert Gemm chain; returns how many chains.
pub(super) fn dispatch(p: &mut KernelProgram) -> usize {
    let mut count = 0;
    let mut seen = BTreeSet::new();
    while let Some(d) = (0..p.kernels.len()).find(|&i| !seen.contains(&i) && candidate(p, i)) {
        seen.insert(d);
        if let Some(shift) = rewrite(p, d) {
            count += 1;
            // Indices after the inserted kernel moved by one.
            seen = seen
                .into_iter()
                .map(|i| if i >= shift { i + 1 } else { i })
                .collect();
        }
    }
    count
}

/// A Gemm over stacked expert weights, not yet dispatched, with an
/// epilogue `product · X`.
fn candidate(p: &KernelProgram, i: usize) -> bool {
    let Kernel::Gemm(kinds::Gemm {
        b,
        batch,
        epilogue: Some(_),
        rows: None,
        ..
    }) = &p.kernels[i]
    else {
        return false;
    };
    // Experts: the weight changes along a batch axis of constant extent.
    matches!(p.buffers[b.buf].kind, BufferKind::Param(_))
        && batch
            .iter()
            .enumerate()
            .any(|(a, d)| d.as_const().is_some_and(|e| e > 1) && !b.strides[a].is_zero())
}

/// Values `v` depends on (itself included).
fn deps(body: &Body, v: usize, out: &mut BTreeSet<usize>) {
    if !out.insert(v) {
        return;
    }
    match &body.insts[v].0 {
        Inst::Unary(_, x) | Inst::Cast(x) => deps(body, *x, out),
        Inst::Binary(_, x, y) => {
            deps(body, *x, out);
            deps(body, *y, out);
        }
        Inst::Select(c, x, y) => {
            deps(body, *c, out);
            deps(body, *x, out);
            deps(body, *y, out);
        }
        _ => {}
    }
}

/// Rewrite the chain ending at Gemm `d`; returns where the gate kernel was
/// inserted, or `None` (nothing changed) when `d`'s epilogue is not
/// `product · X` with `X` constant along its rows.
fn rewrite(p: &mut KernelProgram, d: usize) -> Option<usize> {
    let Kernel::Gemm(kinds::Gemm {
        batch,
        m,
        epilogue: Some(e),
        ..
    }) = &p.kernels[d]
    else {
        return None;
    };
    let (batch, m, e) = (batch.clone(), m.clone(), e.clone());
    let r = batch.len() + 2;
    let body = &e.body;
    let (Inst::Binary(BinaryOp::Mul, x, y), DType::F32) = &body.insts[body.result] else {
        return None;
    };
    let is_product = |v: usize| body.insts[v].0 == Inst::Reduced(0);
    let gate = match (is_product(*x), is_product(*y)) {
        (true, false) => *y,
        (false, true) => *x,
        _ => return None,
    };
    let mut used = BTreeSet::new();
    deps(body, gate, &mut used);
    for &v in &used {
        match &body.insts[v].0 {
            Inst::Reduced(_) => return None,
            Inst::Index(a) if *a == r - 1 => return None,
            Inst::Load(l) if !e.loads[*l].strides[r - 1].is_zero() => return None,
            _ => {}
        }
    }
    if body.insts[gate].1 != DType::F32 {
        return None;
    }

    // The gate as its own kernel over (batch.., m).
    let mut domain: Vec<Dim> = batch.clone();
    domain.push(m.clone());
    let mut loads = Vec::new();
    let mut gbody = Body::default();
    let mut map = vec![usize::MAX; body.insts.len()];
    for &v in &used {
        let (inst, dt) = &body.insts[v];
        let m = |x: &usize| map[*x];
        let new = match inst {
            Inst::Load(l) => {
                let mut view = e.loads[*l].clone();
                view.strides.pop();
                let i = loads.iter().position(|x| *x == view).unwrap_or_else(|| {
                    loads.push(view);
                    loads.len() - 1
                });
                Inst::Load(i)
            }
            Inst::Unary(u, x) => Inst::Unary(*u, m(x)),
            Inst::Binary(o, x, y) => Inst::Binary(*o, m(x), m(y)),
            Inst::Select(c, x, y) => Inst::Select(m(c), m(x), m(y)),
            Inst::Cast(x) => Inst::Cast(m(x)),
            other => other.clone(),
        };
        gbody.insts.push((new, *dt));
        map[v] = gbody.insts.len() - 1;
    }
    gbody.result = map[gate];
    let gate_buf = p.buffers.len();
    p.buffers.push(Buffer {
        name: format!("{} (expert gates)", p.buffers[p.kernels[d].output()].name),
        dtype: DType::F32,
        shape: domain.clone(),
        kind: BufferKind::Temp,
        capacity: None,
    });
    let gate_view = View {
        buf: gate_buf,
        offset: Size::zero(),
        strides: row_major(&domain),
    };

    // The chain: Gemms feeding `d` row for row, read by nothing else.
    let mut chain = vec![d];
    loop {
        let grown = (0..p.kernels.len())
            .find(|&k| !chain.contains(&k) && feeds_rows_only(p, k, &chain, &batch, &m));
        match grown {
            Some(k) => chain.push(k),
            None => break,
        }
    }
    // The gate kernel goes after the last writer of what it reads, and
    // members before that point stay dense.
    let read: BTreeSet<BufId> = loads.iter().map(|l: &View| l.buf).collect();
    let after = p
        .kernels
        .iter()
        .enumerate()
        .filter(|(_, k)| read.contains(&k.output()))
        .map(|(i, _)| i + 1)
        .max()
        .unwrap_or(0);
    chain.retain(|&k| k >= after);
    let at = chain
        .iter()
        .copied()
        .min()
        .expect("d itself is after its inputs");

    let mut row_view = gate_view.clone();
    row_view.strides.push(Size::zero());
    if let Kernel::Gemm(kinds::Gemm { epilogue, .. }) = &mut p.kernels[d] {
        let mut b = Body::default();
        b.insts.push((Inst::Reduced(0), DType::F32));
        b.insts.push((Inst::Load(0), DType::F32));
        let (px, py) = if is_product(*x) { (0, 1) } else { (1, 0) };
        b.insts
            .push((Inst::Binary(BinaryOp::Mul, px, py), DType::F32));
        b.result = 2;
        *epilogue = Some(Epilogue {
            loads: vec![row_view],
            body: b,
        });
    }
    for &k in &chain {
        if let Kernel::Gemm(kinds::Gemm { rows, .. }) = &mut p.kernels[k] {
            *rows = Some(gate_view.clone());
        }
    }
    let out = View {
        buf: gate_buf,
        offset: Size::zero(),
        strides: row_major(&domain),
    };
    p.kernels.insert(
        at,
        Kernel::Elementwise(kinds::Elementwise {
            out,
            domain,
            loads,
            body: gbody,
        }),
    );
    Some(at)
}

/// Whether Gemm `k` (same batch and rows as the chain) writes a private
/// temporary that only chain members read, each at its own row: as the
/// left operand, or through the epilogue, in the temporary's own layout.
fn feeds_rows_only(p: &KernelProgram, k: usize, chain: &[usize], batch: &[Dim], m: &Dim) -> bool {
    let Kernel::Gemm(kinds::Gemm {
        out,
        batch: kb,
        m: km,
        n: kn,
        rows: None,
        ..
    }) = &p.kernels[k]
    else {
        return false;
    };
    let t = out.buf;
    if kb != batch || km != m || p.buffers[t].kind != BufferKind::Temp {
        return false;
    }
    let mut odomain: Vec<Dim> = batch.to_vec();
    odomain.extend([m.clone(), kn.clone()]);
    if p.kernels.iter().filter(|x| x.output() == t).count() != 1 {
        return false;
    }
    p.kernels.iter().enumerate().all(|(i, x)| {
        let reads = x.reads().iter().filter(|&&b| b == t).count();
        if reads == 0 {
            return true;
        }
        if !chain.contains(&i) {
            return false;
        }
        let Kernel::Gemm(kinds::Gemm {
            a,
            epilogue,
            n: xn,
            k: xk,
            ..
        }) = x
        else {
            return false;
        };
        let mut ok = 0;
        if a.buf == t {
            if xk != kn || !same_on(a, out, &odomain) {
                return false;
            }
            ok += 1;
        }
        for l in epilogue.iter().flat_map(|e| e.loads.iter()) {
            if l.buf == t {
                if xn != kn || !same_on(l, out, &odomain) {
                    return false;
                }
                ok += 1;
            }
        }
        ok == reads
    })
}
