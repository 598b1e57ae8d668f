//! The kernel-IR interpreter, one method per kernel kind.

use super::{Exec, KErr, V, for_each, unary};
use crate::error::Result;
use crate::tensor::TensorData;
use kiln_compiler::ir::scalar::nan_max;
use kiln_compiler::ir::{DType, ReduceOp, UnaryOp};
use kiln_compiler::kernel::{View, kinds};

impl Exec<'_> {
    pub(super) fn elementwise(&mut self, k: &kinds::Elementwise) -> std::result::Result<(), KErr> {
        let kinds::Elementwise {
            out,
            domain,
            loads,
            body,
        } = k;
        let mut vals = Vec::new();
        let dims = self.dims(domain)?;
        let o = self.view(out)?;
        let ls = loads
            .iter()
            .map(|l| self.view(l))
            .collect::<Result<Vec<_>>>()?;
        let sz = self.sizes(body)?;
        let mut results = Vec::new();
        for_each(&dims, &mut |idx| {
            let v = self.eval(body, &ls, idx, &[], &sz, &mut vals)?;
            results.push((idx.to_vec(), v));
            Ok(())
        })?;
        for (idx, v) in results {
            self.write(&o, &idx, v)?;
        }
        Ok(())
    }

    pub(super) fn copy(&mut self, k: &kinds::Copy) -> std::result::Result<(), KErr> {
        let kinds::Copy { out, domain, src } = k;
        let dims = self.dims(domain)?;
        let o = self.view(out)?;
        let s = self.view(src)?;
        let mut results = Vec::new();
        for_each(&dims, &mut |idx| {
            results.push((idx.to_vec(), self.read(&s, idx)?));
            Ok(())
        })?;
        for (idx, v) in results {
            self.write(&o, &idx, v)?;
        }
        Ok(())
    }

    pub(super) fn row_reduce(&mut self, k: &kinds::RowReduce) -> std::result::Result<(), KErr> {
        let kinds::RowReduce {
            out,
            domain,
            loads,
            stages,
            epilogue,
            per_row,
        } = k;
        let mut vals = Vec::new();
        let dims = self.dims(domain)?;
        let r = dims.len();
        let len = dims[r - 1];
        let o = self.view(out)?;
        let ls = loads
            .iter()
            .map(|l| self.view(l))
            .collect::<Result<Vec<_>>>()?;
        let ssz = stages
            .iter()
            .map(|s| self.sizes(&s.body))
            .collect::<Result<Vec<_>>>()?;
        let esz = self.sizes(epilogue)?;
        let mut results = Vec::new();
        for_each(&dims[..r - 1], &mut |row| {
            let mut idx = row.to_vec();
            idx.push(0);
            let mut reduced: Vec<V> = Vec::new();
            for (s, st) in stages.iter().enumerate() {
                let dt = st.body.insts[st.body.result].1;
                let mut acc_f = match st.op {
                    ReduceOp::Sum => 0.0f64,
                    ReduceOp::Max => f64::NEG_INFINITY,
                };
                let mut acc_i = match st.op {
                    ReduceOp::Sum => 0i32,
                    ReduceOp::Max => i32::MIN,
                };
                let mut acc_b = false;
                let mut acc_m = f32::NEG_INFINITY;
                for j in 0..len {
                    idx[r - 1] = j;
                    let v = self.eval(&st.body, &ls, &idx, &reduced, &ssz[s], &mut vals)?;
                    match (st.op, v) {
                        (ReduceOp::Sum, V::F(x)) => acc_f += f64::from(x),
                        (ReduceOp::Sum, V::I(x)) => acc_i = acc_i.wrapping_add(x),
                        (ReduceOp::Max, V::F(x)) => acc_m = nan_max(acc_m, x),
                        (ReduceOp::Max, V::I(x)) => acc_i = acc_i.max(x),
                        (ReduceOp::Max, V::B(x)) => acc_b |= x,
                        (ReduceOp::Sum, V::B(_)) => {
                            return Err("sum is not defined on bool".into());
                        }
                    }
                }
                reduced.push(match (st.op, dt) {
                    (ReduceOp::Sum, DType::F32) => V::F(acc_f as f32),
                    (ReduceOp::Max, DType::F32) => V::F(acc_m),
                    (_, DType::I32) => V::I(acc_i),
                    (_, DType::Bool) => V::B(acc_b),
                });
            }
            let cols = if *per_row { 1 } else { len };
            for j in 0..cols {
                idx[r - 1] = j;
                let v = self.eval(epilogue, &ls, &idx, &reduced, &esz, &mut vals)?;
                results.push((idx.clone(), v));
            }
            Ok(())
        })?;
        for (idx, v) in results {
            self.write(&o, &idx, v)?;
        }
        Ok(())
    }

    pub(super) fn gemm(&mut self, k: &kinds::Gemm) -> std::result::Result<(), KErr> {
        let kinds::Gemm {
            out,
            a,
            b,
            batch,
            m,
            n,
            k,
            epilogue,
            rows,
        } = k;
        let mut vals = Vec::new();
        let bd = self.dims(batch)?;
        let rv = rows.as_ref().map(|r| self.view(r)).transpose()?;
        let [m, n, k]: [usize; 3] = self
            .dims(&[m.clone(), n.clone(), k.clone()])?
            .try_into()
            .expect("three dims");
        let (o, av, bv) = (self.view(out)?, self.view(a)?, self.view(b)?);
        let (el, ebody, esz) = match epilogue {
            Some(e) => (
                e.loads
                    .iter()
                    .map(|l| self.view(l))
                    .collect::<Result<Vec<_>>>()?,
                Some(&e.body),
                self.sizes(&e.body)?,
            ),
            None => (Vec::new(), None, Vec::new()),
        };
        let (TensorData::F32(x), TensorData::F32(y)) = (&self.data[av.buf], &self.data[bv.buf])
        else {
            return Err("gemm operands must be f32".to_string().into());
        };
        let nb = bd.len();
        let mut results = Vec::new();
        for_each(&bd, &mut |bi| {
            let mut ia = bi.to_vec();
            ia.extend([0, 0]);
            let mut ib = ia.clone();
            for i in 0..m {
                if let Some(rv) = &rv {
                    let mut at = bi.to_vec();
                    at.push(i);
                    if self.read(rv, &at)?.f() == 0.0 {
                        for j in 0..n {
                            let mut io = bi.to_vec();
                            io.extend([i, j]);
                            results.push((io, V::F(0.0)));
                        }
                        continue;
                    }
                }
                for j in 0..n {
                    let mut acc = 0.0f64;
                    for p in 0..k {
                        ia[nb] = i;
                        ia[nb + 1] = p;
                        ib[nb] = p;
                        ib[nb + 1] = j;
                        let xa = *x.get(av.at(&ia)).ok_or("gemm a out of bounds")?;
                        let yb = *y.get(bv.at(&ib)).ok_or("gemm b out of bounds")?;
                        acc += f64::from(xa) * f64::from(yb);
                    }
                    let mut io = bi.to_vec();
                    io.extend([i, j]);
                    let prod = V::F(acc as f32);
                    let v = match ebody {
                        Some(body) => self.eval(body, &el, &io, &[prod], &esz, &mut vals)?,
                        None => prod,
                    };
                    results.push((io, v));
                }
            }
            Ok(())
        })?;
        for (idx, v) in results {
            self.write(&o, &idx, v)?;
        }
        Ok(())
    }

    pub(super) fn gather_kernel(&mut self, k: &kinds::Gather) -> std::result::Result<(), KErr> {
        let kinds::Gather {
            out,
            table,
            indices,
            indices_shape,
            axis,
        } = k;
        self.gather(*out, *table, indices, indices_shape, *axis)
    }

    pub(super) fn attention(&mut self, k: &kinds::Attention) -> std::result::Result<(), KErr> {
        let kinds::Attention {
            out,
            q,
            kt,
            v,
            batch,
            m,
            keys,
            d,
            dv,
            score,
        } = k;
        let mut vals = Vec::new();
        // The unfused program's arithmetic: f64 dot products rounded
        // to f32, the score body, a two-pass softmax with an f64 sum
        // and f32 probabilities, then f64 sums of probability × value.
        let bd = self.dims(batch)?;
        let [m, keys, d, dv]: [usize; 4] = self
            .dims(&[m.clone(), keys.clone(), d.clone(), dv.clone()])?
            .try_into()
            .expect("four dims");
        let (o, qv, kv, vv) = (
            self.view(out)?,
            self.view(q)?,
            self.view(kt)?,
            self.view(v)?,
        );
        let (sl, sbody, ssz) = match score {
            Some(e) => (
                e.loads
                    .iter()
                    .map(|l| self.view(l))
                    .collect::<Result<Vec<_>>>()?,
                Some(&e.body),
                self.sizes(&e.body)?,
            ),
            None => (Vec::new(), None, Vec::new()),
        };
        let f32_of = |b: usize| match &self.data[b] {
            TensorData::F32(x) => Ok(x.as_slice()),
            _ => Err("attention operands must be f32".to_string()),
        };
        let (xq, xk, xv) = (f32_of(qv.buf)?, f32_of(kv.buf)?, f32_of(vv.buf)?);
        let nb = bd.len();
        let exp = |x: f32| unary(UnaryOp::Exp, V::F(x)).map(V::f);
        let mut results = Vec::new();
        for_each(&bd, &mut |bi| {
            let mut idx = bi.to_vec();
            idx.extend([0, 0]);
            let mut idx2 = idx.clone();
            for i in 0..m {
                let mut s = Vec::with_capacity(keys);
                for j in 0..keys {
                    let mut acc = 0.0f64;
                    for p in 0..d {
                        idx[nb] = i;
                        idx[nb + 1] = p;
                        idx2[nb] = p;
                        idx2[nb + 1] = j;
                        let a = *xq.get(qv.at(&idx)).ok_or("attention q out of bounds")?;
                        let b = *xk.get(kv.at(&idx2)).ok_or("attention k out of bounds")?;
                        acc += f64::from(a) * f64::from(b);
                    }
                    idx[nb + 1] = j;
                    let dot = V::F(acc as f32);
                    s.push(match sbody {
                        Some(body) => self.eval(body, &sl, &idx, &[dot], &ssz, &mut vals)?.f(),
                        None => dot.f(),
                    });
                }
                let max = s.iter().fold(f32::NEG_INFINITY, |a, &x| nan_max(a, x));
                let mut sum = 0.0f64;
                for x in &mut s {
                    *x = exp(*x - max)?;
                    sum += f64::from(*x);
                }
                let sum = sum as f32;
                for c in 0..dv {
                    let mut acc = 0.0f64;
                    for (j, e) in s.iter().enumerate() {
                        idx2[nb] = j;
                        idx2[nb + 1] = c;
                        let b = *xv.get(vv.at(&idx2)).ok_or("attention v out of bounds")?;
                        acc += f64::from(e / sum) * f64::from(b);
                    }
                    let mut io = bi.to_vec();
                    io.extend([i, c]);
                    results.push((io, V::F(acc as f32)));
                }
            }
            Ok(())
        })?;
        for (idx, v) in results {
            self.write(&o, &idx, v)?;
        }
        Ok(())
    }

    fn gather(
        &mut self,
        out: usize,
        table: usize,
        indices: &View,
        indices_shape: &[kiln_compiler::ir::Dim],
        axis: usize,
    ) -> std::result::Result<(), KErr> {
        let ts = self.shapes[table].clone();
        let is = self.dims(indices_shape)?;
        let iv = self.view(indices)?;
        let (pre, rows, post): (usize, usize, usize) = (
            ts[..axis].iter().product(),
            ts[axis],
            ts[axis + 1..].iter().product(),
        );
        let TensorData::I32(ix) = &self.data[iv.buf] else {
            return Err("gather indices must be i32".into());
        };
        let mut picked = Vec::new();
        for_each(&is, &mut |idx| {
            let v = *ix.get(iv.at(idx)).ok_or("gather indices out of bounds")?;
            if v < 0 || v as usize >= rows {
                return Err(format!("gather index {v} out of range [0, {rows})"));
            }
            picked.push(v as usize);
            Ok(())
        })?;
        let src = self.data[table].clone();
        let dst = &mut self.data[out];
        let mut o = 0usize;
        for p in 0..pre {
            for &r in &picked {
                let base = (p * rows + r) * post;
                for q in 0..post {
                    match (&src, &mut *dst) {
                        (TensorData::F32(s), TensorData::F32(d)) => d[o] = s[base + q],
                        (TensorData::I32(s), TensorData::I32(d)) => d[o] = s[base + q],
                        (TensorData::Bool(s), TensorData::Bool(d)) => d[o] = s[base + q],
                        _ => return Err("gather dtype mismatch".into()),
                    }
                    o += 1;
                }
            }
        }
        Ok(())
    }
}
