//! Write-through: a kernel whose whole output is only copied elsewhere
//! writes straight to the copy's destination, and the copy disappears.
//!
//! The common case is attention's output `[b, kv, group, seq, hd]`, copied
//! to `[b, seq, heads, hd]` before the heads merge into the model width. The
//! copy's source view must visit every element of the temporary exactly
//! once: each temporary axis is a mixed-radix digit of one copy axis.

use super::attention::{remove_unused_temps, same_on};
use super::{BufferKind, Kernel, KernelProgram, Size, View, row_major};
use crate::ir::Dim;
use crate::kernel::kinds;

/// Apply every write-through; returns how many copies were removed. One
/// forward pass, linear in the kernels: use counts and writers are taken
/// once and kept current (a kernel that takes over a copy's output becomes
/// that buffer's writer, so chains of copies collapse too).
pub(super) fn write_through(p: &mut KernelProgram) -> usize {
    let mut writes = vec![0usize; p.buffers.len()];
    let mut reads = vec![0usize; p.buffers.len()];
    let mut writer = vec![None; p.buffers.len()];
    for (i, k) in p.kernels.iter().enumerate() {
        writes[k.output()] += 1;
        writer[k.output()].get_or_insert(i);
        for b in k.reads() {
            reads[b] += 1;
        }
    }
    let mut dead = vec![false; p.kernels.len()];
    let mut count = 0;
    for (ci, is_dead) in dead.iter_mut().enumerate() {
        let Some((ki, out)) = match_copy(p, ci, &writes, &reads, &writer) else {
            continue;
        };
        let target = out.buf;
        match &mut p.kernels[ki] {
            Kernel::Elementwise(kinds::Elementwise { out: o, .. })
            | Kernel::Attention(kinds::Attention { out: o, .. }) => *o = out,
            // match_copy returns only these kinds.
            _ => continue,
        }
        *is_dead = true;
        writer[target] = Some(ki);
        count += 1;
    }
    if count > 0 {
        let mut keep = dead.iter().map(|d| !d);
        p.kernels.retain(|_| keep.next().unwrap_or(true));
        remove_unused_temps(p);
    }
    count
}

/// Whether kernel `ci` is a copy of a temporary written whole by kernel
/// `ki`: `ki` and the view through which it can write the copy's
/// destination directly.
fn match_copy(
    p: &KernelProgram,
    ci: usize,
    writes: &[usize],
    reads: &[usize],
    writer: &[Option<usize>],
) -> Option<(usize, View)> {
    let Kernel::Copy(kinds::Copy { out, domain, src }) = &p.kernels[ci] else {
        return None;
    };
    let t = src.buf;
    if p.buffers[t].kind != BufferKind::Temp || writes[t] != 1 || reads[t] != 1 {
        return None;
    }
    let ki = writer[t]?;
    let kdomain: Vec<Dim> = match &p.kernels[ki] {
        Kernel::Elementwise(kinds::Elementwise { domain, .. }) => domain.clone(),
        Kernel::Attention(kinds::Attention {
            batch, m, dv, out, ..
        }) if out.buf == t => batch.iter().chain([m, dv]).cloned().collect(),
        _ => return None,
    };
    let shape = &p.buffers[t].shape;
    let rs = row_major(shape);
    let kout = match &p.kernels[ki] {
        Kernel::Elementwise(kinds::Elementwise { out, .. })
        | Kernel::Attention(kinds::Attention { out, .. }) => out,
        _ => return None,
    };
    let own = View {
        buf: t,
        offset: Size::zero(),
        strides: rs.clone(),
    };
    if kdomain != *shape || !same_on(kout, &own, shape) {
        return None;
    }
    let strides = compose(shape, &rs, domain, src, &out.strides)?;
    Some((
        ki,
        View {
            buf: out.buf,
            offset: out.offset.clone(),
            strides,
        },
    ))
}

/// Strides over the temporary's axes that land each element where the copy
/// puts it, when the copy reads the temporary (shape `shape`, row-major
/// strides `rs`) through `src` over `cdomain` exactly once per element.
fn compose(
    shape: &[Dim],
    rs: &[Size],
    cdomain: &[Dim],
    src: &View,
    cout: &[Size],
) -> Option<Vec<Size>> {
    if !src.offset.is_zero() {
        return None;
    }
    // Each temporary axis: the copy axis it is a digit of, and its weight.
    let mut digit: Vec<Option<(usize, i64)>> = vec![None; shape.len()];
    for (t, e) in shape.iter().enumerate() {
        if e.is_one() {
            continue;
        }
        digit[t] = cdomain
            .iter()
            .enumerate()
            .filter(|(a, d)| !d.is_one() && !src.strides[*a].is_zero())
            .filter_map(|(a, _)| rs[t].ratio(&src.strides[a]).map(|f| (a, f)))
            .filter(|&(_, f)| f > 0)
            .min_by_key(|&(_, f)| f);
        digit[t]?;
    }
    // Every copy axis is exactly the mixed-radix number of its digits.
    for (a, extent) in cdomain.iter().enumerate() {
        if extent.is_one() {
            continue;
        }
        let mut ds: Vec<(i64, &Dim)> = (0..shape.len())
            .filter_map(|t| digit[t].filter(|d| d.0 == a).map(|d| (d.1, &shape[t])))
            .collect();
        ds.sort_by_key(|d| d.0);
        let mut weight = 1i64;
        for (i, (f, e)) in ds.iter().enumerate() {
            if *f != weight {
                return None;
            }
            if i + 1 < ds.len() {
                weight *= e.as_const()? as i64;
            } else if Size::from_dim(extent) != Size::from_dim(e).scale(weight) {
                return None;
            }
        }
        if ds.is_empty() {
            return None;
        }
    }
    Some(
        digit
            .iter()
            .map(|d| match d {
                Some((a, f)) => cout[*a].clone().scale(*f),
                None => Size::zero(),
            })
            .collect(),
    )
}
