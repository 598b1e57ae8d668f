//! Kernels for the primitive ops, on concrete tensors. Each returns the
//! result or a message; the interpreter adds the node's scope.
//!
//! Everything here is plain row-major loops. Broadcasting walks the output
//! in row-major order with one running offset per operand, using stride 0
//! for broadcast axes ([`for_each_offset`]), so no element allocates.
//!
//! The full contract is in the crate docs (`lib.rs`).

use crate::tensor::{Tensor, TensorData, row_major_strides};
use kiln_compiler::ir::scalar::{self, nan_max};
use kiln_compiler::ir::{BinaryOp, DType, ReduceOp, UnaryOp};

pub(crate) type OpResult<T = Tensor> = Result<T, String>;

/// Build a tensor whose length is correct by construction.
fn tensor(shape: Vec<usize>, data: TensorData) -> OpResult {
    Tensor::new(shape, data).map_err(|e| format!("internal error: {e}"))
}

/// Apply `$body` to the vector inside any variant, rewrapping in the same variant.
macro_rules! same_dtype {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            TensorData::F32($v) => TensorData::F32($body),
            TensorData::I32($v) => TensorData::I32($body),
            TensorData::Bool($v) => TensorData::Bool($body),
        }
    };
}

/// Visit every index of `shape` in row-major order, calling `f` with the
/// matching element offset into each of `N` operands (given by their strides
/// over `shape`; stride 0 repeats an element along a broadcast axis).
pub(crate) fn for_each_offset<const N: usize>(
    shape: &[usize],
    strides: [&[usize]; N],
    mut f: impl FnMut([usize; N]),
) {
    let total: usize = shape.iter().product();
    if total == 0 {
        return;
    }
    let rank = shape.len();
    let mut index = vec![0usize; rank];
    let mut offsets = [0usize; N];
    for _ in 0..total {
        f(offsets);
        let mut axis = rank;
        while axis > 0 {
            axis -= 1;
            index[axis] += 1;
            for k in 0..N {
                offsets[k] += strides[k][axis];
            }
            if index[axis] < shape[axis] {
                break;
            }
            for k in 0..N {
                offsets[k] -= strides[k][axis] * shape[axis];
            }
            index[axis] = 0;
        }
    }
}

/// numpy broadcasting of two concrete shapes.
pub(crate) fn broadcast_shapes(a: &[usize], b: &[usize]) -> OpResult<Vec<usize>> {
    let n = a.len().max(b.len());
    let pad = |s: &[usize], i: usize| (i + s.len()).checked_sub(n).map_or(1, |j| s[j]);
    (0..n)
        .map(|i| match (pad(a, i), pad(b, i)) {
            (x, y) if x == y => Ok(x),
            (1, y) => Ok(y),
            (x, 1) => Ok(x),
            (x, y) => Err(format!(
                "cannot broadcast {a:?} against {b:?} (axis {i}: {x} vs {y})"
            )),
        })
        .collect()
}

/// Strides that read a tensor of `shape` as if broadcast to `out`
/// (right-aligned; 0 on stretched or missing axes).
pub(crate) fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let own = row_major_strides(shape);
    let lead = out.len() - shape.len();
    (0..out.len())
        .map(|i| match i.checked_sub(lead) {
            Some(j) if shape[j] == out[i] => own[j],
            _ => 0,
        })
        .collect()
}

/// Elementwise `f(a, b)` with numpy broadcasting.
fn zip_broadcast<A: Copy, B: Copy, C>(
    a: &[A],
    a_shape: &[usize],
    b: &[B],
    b_shape: &[usize],
    out_shape: &[usize],
    f: impl Fn(A, B) -> C,
) -> Vec<C> {
    if a_shape == b_shape {
        return a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect();
    }
    let sa = broadcast_strides(a_shape, out_shape);
    let sb = broadcast_strides(b_shape, out_shape);
    let mut out = Vec::with_capacity(out_shape.iter().product());
    for_each_offset(out_shape, [&sa, &sb], |[i, j]| out.push(f(a[i], b[j])));
    out
}

pub(crate) fn unary(op: UnaryOp, x: &Tensor) -> OpResult {
    use UnaryOp::*;
    let data = match (op, x.data()) {
        (Not, TensorData::Bool(v)) => TensorData::Bool(v.iter().map(|&b| !b).collect()),
        (op, TensorData::I32(v)) if scalar::i32_unary(op).is_some() => {
            let f = scalar::i32_unary(op).expect("checked");
            TensorData::I32(v.iter().map(|&a| f(a)).collect())
        }
        (op, TensorData::F32(v)) if scalar::f32_unary(op).is_some() => {
            let f = scalar::f32_unary(op).expect("checked");
            TensorData::F32(v.iter().map(|&a| f(a)).collect())
        }
        (op, d) => return Err(format!("{op:?} is not defined on {}", d.dtype())),
    };
    tensor(x.shape().to_vec(), data)
}

pub(crate) fn binary(op: BinaryOp, a: &Tensor, b: &Tensor) -> OpResult {
    use BinaryOp::*;
    let shape = broadcast_shapes(a.shape(), b.shape())?;
    let (sa, sb, s) = (a.shape(), b.shape(), shape.as_slice());
    let data = match (a.data(), b.data()) {
        (TensorData::F32(x), TensorData::F32(y)) => {
            if let Some(f) = scalar::f32_binary(op) {
                TensorData::F32(zip_broadcast(x, sa, y, sb, s, f))
            } else if let Some(f) = scalar::compare::<f32>(op) {
                TensorData::Bool(zip_broadcast(x, sa, y, sb, s, f))
            } else {
                return Err(format!("{op:?} is not defined on f32"));
            }
        }
        (TensorData::I32(x), TensorData::I32(y)) => {
            if op == Div && s.iter().product::<usize>() > 0 && y.contains(&0) {
                return Err("integer division by zero".into());
            }
            if let Some(f) = scalar::i32_binary(op) {
                TensorData::I32(zip_broadcast(x, sa, y, sb, s, f))
            } else if let Some(f) = scalar::compare::<i32>(op) {
                TensorData::Bool(zip_broadcast(x, sa, y, sb, s, f))
            } else {
                return Err(format!("{op:?} is not defined on i32"));
            }
        }
        (TensorData::Bool(x), TensorData::Bool(y)) => match scalar::bool_binary(op) {
            Some(f) => TensorData::Bool(zip_broadcast(x, sa, y, sb, s, f)),
            None => return Err(format!("{op:?} is not defined on bool")),
        },
        (x, y) => {
            return Err(format!(
                "{op:?} operands differ in dtype: {} vs {}",
                x.dtype(),
                y.dtype()
            ));
        }
    };
    tensor(shape, data)
}

pub(crate) fn select(cond: &Tensor, a: &Tensor, b: &Tensor) -> OpResult {
    let TensorData::Bool(c) = cond.data() else {
        return Err(format!(
            "select condition must be bool, got {}",
            cond.dtype()
        ));
    };
    let shape = broadcast_shapes(&broadcast_shapes(cond.shape(), a.shape())?, b.shape())?;
    let sc = broadcast_strides(cond.shape(), &shape);
    let sa = broadcast_strides(a.shape(), &shape);
    let sb = broadcast_strides(b.shape(), &shape);
    let n = shape.iter().product();
    fn pick<T: Copy>(
        c: &[bool],
        x: &[T],
        y: &[T],
        shape: &[usize],
        s: [&[usize]; 3],
        n: usize,
    ) -> Vec<T> {
        let mut out = Vec::with_capacity(n);
        for_each_offset(shape, s, |[i, j, k]| {
            out.push(if c[i] { x[j] } else { y[k] })
        });
        out
    }
    let s = [sc.as_slice(), &sa, &sb];
    let data = match (a.data(), b.data()) {
        (TensorData::F32(x), TensorData::F32(y)) => TensorData::F32(pick(c, x, y, &shape, s, n)),
        (TensorData::I32(x), TensorData::I32(y)) => TensorData::I32(pick(c, x, y, &shape, s, n)),
        (TensorData::Bool(x), TensorData::Bool(y)) => TensorData::Bool(pick(c, x, y, &shape, s, n)),
        (x, y) => {
            return Err(format!(
                "select branches differ in dtype: {} vs {}",
                x.dtype(),
                y.dtype()
            ));
        }
    };
    tensor(shape, data)
}

pub(crate) fn reduce(op: ReduceOp, x: &Tensor, axes: &[usize]) -> OpResult {
    let rank = x.rank();
    let mut out_shape = x.shape().to_vec();
    for &a in axes {
        *out_shape
            .get_mut(a)
            .ok_or_else(|| format!("reduce axis {a} out of range for shape {:?}", x.shape()))? = 1;
    }
    // Output strides over the input's index space: 0 on reduced axes.
    let out_strides: Vec<usize> = row_major_strides(&out_shape)
        .into_iter()
        .enumerate()
        .map(|(i, s)| if axes.contains(&i) { 0 } else { s })
        .collect();
    let in_strides = row_major_strides(x.shape());
    debug_assert_eq!(out_strides.len(), rank);
    let n_out: usize = out_shape.iter().product();
    let walk = |f: &mut dyn FnMut(usize, usize)| {
        for_each_offset(x.shape(), [&in_strides, &out_strides], |[i, o]| f(i, o));
    };
    let data = match (op, x.data()) {
        (ReduceOp::Sum, TensorData::F32(v)) => {
            let mut acc = vec![0.0f64; n_out];
            walk(&mut |i, o| acc[o] += f64::from(v[i]));
            TensorData::F32(acc.into_iter().map(|s| s as f32).collect())
        }
        (ReduceOp::Sum, TensorData::I32(v)) => {
            let mut acc = vec![0i32; n_out];
            walk(&mut |i, o| acc[o] = acc[o].wrapping_add(v[i]));
            TensorData::I32(acc)
        }
        (ReduceOp::Max, TensorData::F32(v)) => {
            let mut acc = vec![f32::NEG_INFINITY; n_out];
            walk(&mut |i, o| acc[o] = nan_max(acc[o], v[i]));
            TensorData::F32(acc)
        }
        (ReduceOp::Max, TensorData::I32(v)) => {
            let mut acc = vec![i32::MIN; n_out];
            walk(&mut |i, o| acc[o] = acc[o].max(v[i]));
            TensorData::I32(acc)
        }
        (ReduceOp::Max, TensorData::Bool(v)) => {
            let mut acc = vec![false; n_out];
            walk(&mut |i, o| acc[o] |= v[i]);
            TensorData::Bool(acc)
        }
        (ReduceOp::Sum, TensorData::Bool(_)) => return Err("sum is not defined on bool".into()),
    };
    tensor(out_shape, data)
}

pub(crate) fn matmul(a: &Tensor, b: &Tensor) -> OpResult {
    let (TensorData::F32(x), TensorData::F32(y)) = (a.data(), b.data()) else {
        return Err(format!(
            "matmul operands must be f32, got {} and {}",
            a.dtype(),
            b.dtype()
        ));
    };
    let (ra, rb) = (a.rank(), b.rank());
    if ra < 2 || rb < 2 {
        return Err(format!(
            "matmul needs rank >= 2, got {:?} and {:?}",
            a.shape(),
            b.shape()
        ));
    }
    let (m, k) = (a.shape()[ra - 2], a.shape()[ra - 1]);
    let (kb, n) = (b.shape()[rb - 2], b.shape()[rb - 1]);
    if k != kb {
        return Err(format!(
            "matmul inner dims differ: {:?} x {:?}",
            a.shape(),
            b.shape()
        ));
    }
    let (batch_a, batch_b) = (&a.shape()[..ra - 2], &b.shape()[..rb - 2]);
    let batch = broadcast_shapes(batch_a, batch_b)?;
    // Strides in units of whole matrices.
    let sa = broadcast_strides(batch_a, &batch);
    let sb = broadcast_strides(batch_b, &batch);
    let mut out = Vec::with_capacity(batch.iter().product::<usize>() * m * n);
    let mut acc = vec![0.0f64; n];
    for_each_offset(&batch, [&sa, &sb], |[ia, ib]| {
        let am = &x[ia * m * k..(ia + 1) * m * k];
        let bm = &y[ib * k * n..(ib + 1) * k * n];
        for i in 0..m {
            acc.fill(0.0);
            for (p, &av) in am[i * k..(i + 1) * k].iter().enumerate() {
                let av = f64::from(av);
                for (s, &bv) in acc.iter_mut().zip(&bm[p * n..(p + 1) * n]) {
                    *s += av * f64::from(bv);
                }
            }
            out.extend(acc.iter().map(|&s| s as f32));
        }
    });
    let mut shape = batch;
    shape.extend([m, n]);
    tensor(shape, TensorData::F32(out))
}

pub(crate) fn permute(x: &Tensor, perm: &[usize]) -> OpResult {
    let rank = x.rank();
    let mut seen = vec![false; rank];
    if perm.len() != rank
        || perm
            .iter()
            .any(|&p| p >= rank || std::mem::replace(&mut seen[p], true))
    {
        return Err(format!(
            "bad permutation {perm:?} for shape {:?}",
            x.shape()
        ));
    }
    let strides = row_major_strides(x.shape());
    let out_shape: Vec<usize> = perm.iter().map(|&p| x.shape()[p]).collect();
    let read: Vec<usize> = perm.iter().map(|&p| strides[p]).collect();
    fn gather_strided<T: Copy>(v: &[T], shape: &[usize], read: &[usize]) -> Vec<T> {
        let mut out = Vec::with_capacity(v.len());
        for_each_offset(shape, [read], |[i]| out.push(v[i]));
        out
    }
    let data = same_dtype!(x.data(), v => gather_strided(v, &out_shape, &read));
    tensor(out_shape, data)
}

/// `(outer, len, inner)`: the products of the dims before, at and after `axis`.
fn split_at_axis(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    let outer = shape[..axis].iter().product();
    let inner = shape[axis + 1..].iter().product();
    (outer, shape[axis], inner)
}

pub(crate) fn slice(x: &Tensor, axis: usize, start: usize, end: usize) -> OpResult {
    if axis >= x.rank() {
        return Err(format!(
            "slice axis {axis} out of range for shape {:?}",
            x.shape()
        ));
    }
    let (outer, len, inner) = split_at_axis(x.shape(), axis);
    if start > end || end > len {
        return Err(format!(
            "slice [{start}, {end}) out of range for axis {axis} of size {len} (shape {:?})",
            x.shape()
        ));
    }
    fn copy<T: Copy>(
        v: &[T],
        outer: usize,
        len: usize,
        inner: usize,
        start: usize,
        end: usize,
    ) -> Vec<T> {
        let mut out = Vec::with_capacity(outer * (end - start) * inner);
        for o in 0..outer {
            out.extend_from_slice(&v[(o * len + start) * inner..(o * len + end) * inner]);
        }
        out
    }
    let data = same_dtype!(x.data(), v => copy(v, outer, len, inner, start, end));
    let mut shape = x.shape().to_vec();
    shape[axis] = end - start;
    tensor(shape, data)
}

pub(crate) fn concat(xs: &[&Tensor], axis: usize) -> OpResult {
    let first = xs.first().ok_or("concat of no tensors")?;
    if axis >= first.rank() {
        return Err(format!(
            "concat axis {axis} out of range for shape {:?}",
            first.shape()
        ));
    }
    let mut shape = first.shape().to_vec();
    shape[axis] = 0;
    for t in xs {
        let agree = t.dtype() == first.dtype()
            && t.rank() == first.rank()
            && (0..t.rank()).all(|i| i == axis || t.shape()[i] == first.shape()[i]);
        if !agree {
            return Err(format!(
                "cannot concat {}{:?} with {}{:?} along axis {axis}",
                first.dtype(),
                first.shape(),
                t.dtype(),
                t.shape()
            ));
        }
        shape[axis] += t.shape()[axis];
    }
    let (outer, _, inner) = split_at_axis(first.shape(), axis);
    let mut data = TensorData::zeros(first.dtype(), 0);
    fn append<T: Copy>(out: &mut Vec<T>, v: &[T], o: usize, chunk: usize) {
        out.extend_from_slice(&v[o * chunk..(o + 1) * chunk]);
    }
    for o in 0..outer {
        for t in xs {
            let chunk = t.shape()[axis] * inner;
            match (&mut data, t.data()) {
                (TensorData::F32(out), TensorData::F32(v)) => append(out, v, o, chunk),
                (TensorData::I32(out), TensorData::I32(v)) => append(out, v, o, chunk),
                (TensorData::Bool(out), TensorData::Bool(v)) => append(out, v, o, chunk),
                _ => unreachable!("dtypes checked above"),
            }
        }
    }
    tensor(shape, data)
}

pub(crate) fn gather(data: &Tensor, indices: &Tensor, axis: usize) -> OpResult {
    let TensorData::I32(idx) = indices.data() else {
        return Err(format!(
            "gather indices must be i32, got {}",
            indices.dtype()
        ));
    };
    if axis >= data.rank() {
        return Err(format!(
            "gather axis {axis} out of range for shape {:?}",
            data.shape()
        ));
    }
    let (outer, len, inner) = split_at_axis(data.shape(), axis);
    if let Some(pos) = idx.iter().position(|&i| i < 0 || i as usize >= len) {
        let at = unravel(pos, indices.shape());
        return Err(format!(
            "index {} (at indices position {at:?}) out of range for axis {axis} of size {len} (data shape {:?})",
            idx[pos],
            data.shape()
        ));
    }
    fn take<T: Copy>(v: &[T], idx: &[i32], outer: usize, len: usize, inner: usize) -> Vec<T> {
        let mut out = Vec::with_capacity(outer * idx.len() * inner);
        for o in 0..outer {
            for &i in idx {
                let row = o * len + i as usize;
                out.extend_from_slice(&v[row * inner..(row + 1) * inner]);
            }
        }
        out
    }
    let out = same_dtype!(data.data(), v => take(v, idx, outer, len, inner));
    let mut shape = data.shape()[..axis].to_vec();
    shape.extend_from_slice(indices.shape());
    shape.extend_from_slice(&data.shape()[axis + 1..]);
    tensor(shape, out)
}

/// The multi-index of flat position `pos` in `shape`.
fn unravel(mut pos: usize, shape: &[usize]) -> Vec<usize> {
    let mut at = vec![0; shape.len()];
    for (a, &d) in at.iter_mut().zip(shape).rev() {
        *a = pos % d;
        pos /= d;
    }
    at
}

pub(crate) fn cast(x: &Tensor, to: DType) -> OpResult {
    let data = match (x.data(), to) {
        (d, to) if d.dtype() == to => d.clone(),
        (TensorData::F32(v), DType::I32) => TensorData::I32(v.iter().map(|&a| a as i32).collect()),
        (TensorData::F32(v), DType::Bool) => {
            TensorData::Bool(v.iter().map(|&a| a != 0.0).collect())
        }
        (TensorData::I32(v), DType::F32) => TensorData::F32(v.iter().map(|&a| a as f32).collect()),
        (TensorData::I32(v), DType::Bool) => TensorData::Bool(v.iter().map(|&a| a != 0).collect()),
        (TensorData::Bool(v), DType::F32) => {
            TensorData::F32(v.iter().map(|&a| f32::from(u8::from(a))).collect())
        }
        (TensorData::Bool(v), DType::I32) => {
            TensorData::I32(v.iter().map(|&a| i32::from(a)).collect())
        }
        (d, to) => unreachable!("same-dtype cast {} -> {to} handled above", d.dtype()),
    };
    tensor(x.shape().to_vec(), data)
}

/// `shape` filled with `value` (converted to `dtype`: i32 truncates, bool is `value != 0`).
pub(crate) fn fill(dtype: DType, shape: Vec<usize>, value: f64) -> OpResult {
    let n = shape.iter().product();
    let data = match dtype {
        DType::F32 => TensorData::F32(vec![value as f32; n]),
        DType::I32 => TensorData::I32(vec![value as i32; n]),
        DType::Bool => TensorData::Bool(vec![value != 0.0; n]),
    };
    tensor(shape, data)
}

/// A literal's values, converted to `dtype` as in [`fill`].
pub(crate) fn literal(dtype: DType, shape: Vec<usize>, values: &[f32]) -> OpResult {
    let n: usize = shape.iter().product();
    if n != values.len() {
        return Err(format!(
            "literal of {} values for shape {shape:?}",
            values.len()
        ));
    }
    let data = match dtype {
        DType::F32 => TensorData::F32(values.to_vec()),
        DType::I32 => TensorData::I32(values.iter().map(|&v| v as i32).collect()),
        DType::Bool => TensorData::Bool(values.iter().map(|&v| v != 0.0).collect()),
    };
    tensor(shape, data)
}

/// Each element is its index along `axis`.
pub(crate) fn iota(dtype: DType, shape: Vec<usize>, axis: usize) -> OpResult {
    if axis >= shape.len() {
        return Err(format!("iota axis {axis} out of range for shape {shape:?}"));
    }
    let (outer, len, inner) = split_at_axis(&shape, axis);
    let index =
        || (0..outer).flat_map(move |_| (0..len).flat_map(move |i| std::iter::repeat_n(i, inner)));
    let data = match dtype {
        DType::F32 => TensorData::F32(index().map(|i| i as f32).collect()),
        DType::I32 => {
            if len > i32::MAX as usize {
                return Err(format!("iota length {len} exceeds i32"));
            }
            TensorData::I32(index().map(|i| i as i32).collect())
        }
        DType::Bool => return Err("iota is not defined on bool".into()),
    };
    tensor(shape, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_helpers() {
        assert_eq!(
            broadcast_shapes(&[2, 1, 3], &[4, 1]).unwrap(),
            vec![2, 4, 3]
        );
        assert!(broadcast_shapes(&[3], &[4]).is_err());
        assert_eq!(broadcast_strides(&[4, 1], &[2, 4, 3]), vec![0, 1, 0]);
        let mut seen = vec![];
        for_each_offset(&[2, 3], [&[3, 1], &[0, 1]], |[a, b]| seen.push((a, b)));
        assert_eq!(seen, vec![(0, 0), (1, 1), (2, 2), (3, 0), (4, 1), (5, 2)]);
        let mut count = 0;
        for_each_offset::<1>(&[], [&[]], |_| count += 1);
        assert_eq!(count, 1);
        for_each_offset::<1>(&[3, 0], [&[0, 1]], |_| count += 1);
        assert_eq!(count, 1);
    }
}
