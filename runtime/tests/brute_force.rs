//! The strided kernels against brute-force multi-index references, on many
//! random shapes (ranks 0-4, broadcast dims, every axis).

mod common;

use common::*;
use kiln_compiler::ir::{BinaryOp, DType, Dim, ReduceOp, Shape};
use kiln_runtime::Tensor;

/// A tiny deterministic generator (SplitMix64), so cases are reproducible.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn shape(&mut self, max_rank: usize) -> Vec<usize> {
        let rank = self.below(max_rank + 1);
        (0..rank).map(|_| 1 + self.below(4)).collect()
    }
    fn tensor(&mut self, shape: &[usize]) -> Tensor {
        let n = shape.iter().product();
        f32s(
            shape,
            (0..n)
                .map(|_| self.below(2001) as f32 / 100.0 - 10.0)
                .collect(),
        )
    }
    /// A shape that broadcasts against `s`: a suffix of it, with some dims set to 1.
    fn broadcastable(&mut self, s: &[usize]) -> Vec<usize> {
        let keep = self.below(s.len() + 1);
        s[s.len() - keep..]
            .iter()
            .map(|&d| if self.below(3) == 0 { 1 } else { d })
            .collect()
    }
}

fn dims(s: &[usize]) -> Shape {
    s.iter().map(|&d| Dim::c(d)).collect()
}

fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for a in (0..shape.len()).rev() {
        idx[a] = flat % shape[a];
        flat /= shape[a];
    }
    idx
}

fn ravel(idx: &[usize], shape: &[usize]) -> usize {
    idx.iter().zip(shape).fold(0, |o, (&i, &d)| o * d + i)
}

/// The element of `t` that output index `out` reads under broadcasting.
fn at_broadcast(t: &Tensor, out: &[usize]) -> f32 {
    let s = t.shape();
    let lead = out.len() - s.len();
    let idx: Vec<usize> = (0..s.len())
        .map(|j| if s[j] == 1 { 0 } else { out[lead + j] })
        .collect();
    t.as_f32().unwrap()[ravel(&idx, s)]
}

fn out_shape(a: &[usize], b: &[usize]) -> Vec<usize> {
    let n = a.len().max(b.len());
    (0..n)
        .map(|i| {
            let get = |s: &[usize]| (i + s.len()).checked_sub(n).map_or(1, |j| s[j]);
            get(a).max(get(b))
        })
        .collect()
}

const CASES: usize = 60;

#[test]
fn binary_and_select_broadcasting() {
    let mut r = Gen(1);
    for _ in 0..CASES {
        let full = r.shape(4);
        let (sa, sb, sc) = (
            r.broadcastable(&full),
            r.broadcastable(&full),
            r.broadcastable(&full),
        );
        let (sa, sb) = if r.below(2) == 0 {
            (full.clone(), sb)
        } else {
            (sa, full.clone())
        };
        let g = graph(|b| {
            let x = b.input("a", DType::F32, dims(&sa))?;
            let y = b.input("b", DType::F32, dims(&sb))?;
            let c = b.input("c", DType::F32, dims(&sc))?;
            let sub = b.sub(x, y)?;
            let max = b.binary(BinaryOp::Max, x, y)?;
            let zero = b.scalar(0.0)?;
            let cond = b.binary(BinaryOp::Lt, c, zero)?;
            let sel = b.select(cond, x, y)?;
            Ok(vec![("sub", sub), ("max", max), ("sel", sel)])
        });
        let (a, bt, c) = (r.tensor(&sa), r.tensor(&sb), r.tensor(&sc));
        let out = run_ok(&g, &[("a", &a), ("b", &bt), ("c", &c)]);
        let shape = out_shape(&out_shape(&sa, &sb), &sc);
        let ab = out_shape(&sa, &sb);
        let n: usize = ab.iter().product();
        let (mut sub, mut max) = (vec![], vec![]);
        for f in 0..n {
            let i = unravel(f, &ab);
            let (p, q) = (at_broadcast(&a, &i), at_broadcast(&bt, &i));
            sub.push(p - q);
            max.push(p.max(q));
        }
        assert_close(&out["sub"], &ab, &sub, 0.0);
        assert_close(&out["max"], &ab, &max, 0.0);
        let n: usize = shape.iter().product();
        let sel: Vec<f32> = (0..n)
            .map(|f| {
                let i = unravel(f, &shape);
                if at_broadcast(&c, &i) < 0.0 {
                    at_broadcast(&a, &i)
                } else {
                    at_broadcast(&bt, &i)
                }
            })
            .collect();
        assert_close(&out["sel"], &shape, &sel, 0.0);
    }
}

#[test]
fn reduce_permute_slice_on_random_axes() {
    let mut r = Gen(2);
    for _ in 0..CASES {
        let s = r.shape(4);
        let axes: Vec<usize> = (0..s.len()).filter(|_| r.below(2) == 0).collect();
        let mut perm: Vec<usize> = (0..s.len()).collect();
        for i in (1..perm.len()).rev() {
            let j = r.below(i + 1);
            perm.swap(i, j);
        }
        let slice = (!s.is_empty()).then(|| {
            let axis = r.below(s.len());
            let start = r.below(s[axis] + 1);
            let end = start + r.below(s[axis] - start + 1);
            (axis, start, end)
        });
        let g = graph(|b| {
            let x = b.input("x", DType::F32, dims(&s))?;
            let sum = b.reduce(ReduceOp::Sum, x, &axes)?;
            let max = b.reduce(ReduceOp::Max, x, &axes)?;
            let p = b.permute(x, &perm)?;
            let mut outs = vec![("sum", sum), ("max", max), ("p", p)];
            if let Some((axis, start, end)) = slice {
                outs.push(("slice", b.slice(x, axis, Dim::c(start), Dim::c(end))?));
            }
            Ok(outs)
        });
        let x = r.tensor(&s);
        let xv = x.as_f32().unwrap();
        let out = run_ok(&g, &[("x", &x)]);

        let rs: Vec<usize> = (0..s.len())
            .map(|a| if axes.contains(&a) { 1 } else { s[a] })
            .collect();
        let mut sum = vec![0.0f64; rs.iter().product()];
        let mut max = vec![f32::NEG_INFINITY; sum.len()];
        for (f, &v) in xv.iter().enumerate() {
            let mut i = unravel(f, &s);
            for &a in &axes {
                i[a] = 0;
            }
            let o = ravel(&i, &rs);
            sum[o] += v as f64;
            max[o] = max[o].max(v);
        }
        let sum: Vec<f32> = sum.iter().map(|&v| v as f32).collect();
        assert_close(&out["sum"], &rs, &sum, 0.0);
        assert_close(&out["max"], &rs, &max, 0.0);

        let ps: Vec<usize> = perm.iter().map(|&p| s[p]).collect();
        let pv: Vec<f32> = (0..xv.len())
            .map(|f| {
                let o = unravel(f, &ps);
                let mut i = vec![0; s.len()];
                for (k, &p) in perm.iter().enumerate() {
                    i[p] = o[k];
                }
                xv[ravel(&i, &s)]
            })
            .collect();
        assert_close(&out["p"], &ps, &pv, 0.0);

        if let Some((axis, start, end)) = slice {
            let mut ss = s.clone();
            ss[axis] = end - start;
            let sv: Vec<f32> = (0..ss.iter().product())
                .map(|f| {
                    let mut i = unravel(f, &ss);
                    i[axis] += start;
                    xv[ravel(&i, &s)]
                })
                .collect();
            assert_close(&out["slice"], &ss, &sv, 0.0);
        }
    }
}

#[test]
fn gather_concat_matmul_on_random_shapes() {
    let mut r = Gen(3);
    for _ in 0..CASES {
        let mut s = r.shape(3);
        if s.is_empty() {
            s.push(3);
        }
        let axis = r.below(s.len());
        let idx_shape = r.shape(2);
        let parts: Vec<usize> = (0..3).map(|_| r.below(3)).collect();
        let (m, k, n) = (1 + r.below(3), r.below(4), 1 + r.below(3));
        let batch = r.shape(2);
        let (ba, bb) = (r.broadcastable(&batch), r.broadcastable(&batch));
        let (ma, mb) = (
            [ba.clone(), vec![m, k]].concat(),
            [bb.clone(), vec![k, n]].concat(),
        );
        let g = graph(|b| {
            let x = b.input("x", DType::F32, dims(&s))?;
            let idx = b.input("idx", DType::I32, dims(&idx_shape))?;
            let gathered = b.gather(x, idx, axis)?;
            let pieces: Vec<_> = parts
                .iter()
                .enumerate()
                .map(|(i, &len)| {
                    let mut ps = s.clone();
                    ps[axis] = len;
                    b.input(&format!("part{i}"), DType::F32, dims(&ps))
                })
                .collect::<Result<_, _>>()?;
            let cat = b.concat(&pieces, axis)?;
            let a = b.input("ma", DType::F32, dims(&ma))?;
            let c = b.input("mb", DType::F32, dims(&mb))?;
            Ok(vec![("g", gathered), ("cat", cat), ("mm", b.matmul(a, c)?)])
        });
        let x = r.tensor(&s);
        let n_idx: usize = idx_shape.iter().product();
        let idx = i32s(
            &idx_shape,
            (0..n_idx).map(|_| r.below(s[axis]) as i32).collect(),
        );
        let part_tensors: Vec<Tensor> = parts
            .iter()
            .map(|&len| {
                let mut ps = s.clone();
                ps[axis] = len;
                r.tensor(&ps)
            })
            .collect();
        let (ta, tb) = (r.tensor(&ma), r.tensor(&mb));
        let names = ["part0", "part1", "part2"];
        let mut inputs = vec![("x", &x), ("idx", &idx), ("ma", &ta), ("mb", &tb)];
        inputs.extend(names.iter().copied().zip(&part_tensors));
        let out = run_ok(&g, &inputs);

        // gather: out[pre, j.., post] = x[pre, idx[j..], post]
        let gs: Vec<usize> = [&s[..axis], &idx_shape[..], &s[axis + 1..]].concat();
        let gv: Vec<f32> = (0..gs.iter().product())
            .map(|f| {
                let o = unravel(f, &gs);
                let j = &o[axis..axis + idx_shape.len()];
                let picked = idx.as_i32().unwrap()[ravel(j, &idx_shape)] as usize;
                let i: Vec<usize> = [&o[..axis], &[picked], &o[axis + idx_shape.len()..]].concat();
                x.as_f32().unwrap()[ravel(&i, &s)]
            })
            .collect();
        assert_close(&out["g"], &gs, &gv, 0.0);

        // concat: find which piece each index along `axis` falls in.
        let mut cs = s.clone();
        cs[axis] = parts.iter().sum();
        let cv: Vec<f32> = (0..cs.iter().product())
            .map(|f| {
                let mut i = unravel(f, &cs);
                let mut p = 0;
                while i[axis] >= parts[p] {
                    i[axis] -= parts[p];
                    p += 1;
                }
                let t = &part_tensors[p];
                t.as_f32().unwrap()[ravel(&i, t.shape())]
            })
            .collect();
        assert_close(&out["cat"], &cs, &cv, 0.0);

        // matmul: out[b.., i, j] = sum_p a[b.., i, p] * c[b.., p, j], batch broadcast.
        let bs = out_shape(&ba, &bb);
        let ms: Vec<usize> = [bs.clone(), vec![m, n]].concat();
        let mv: Vec<f32> = (0..ms.iter().product())
            .map(|f| {
                let o = unravel(f, &ms);
                let (bi, i, j) = (&o[..bs.len()], o[bs.len()], o[bs.len() + 1]);
                let mut acc = 0.0f64;
                for p in 0..k {
                    let ai: Vec<usize> = [bi, &[i, p]].concat();
                    let ci: Vec<usize> = [bi, &[p, j]].concat();
                    acc += at_broadcast(&ta, &ai) as f64 * at_broadcast(&tb, &ci) as f64;
                }
                acc as f32
            })
            .collect();
        assert_close(&out["mm"], &ms, &mv, 0.0);
    }
}
