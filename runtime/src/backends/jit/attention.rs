//! Streaming attention for the JIT: per block of queries, keys are visited
//! in blocks of [`ATTENTION_KEY_BLOCK`] with an online softmax (running max
//! and sum per query, the partial output rescaled when the max grows), so
//! no `queries × keys` buffer exists. Scores of a block come from the GEMM
//! library (or dot products for one or two queries), then go through the
//! generated score function (scale, softcap, bias, masks) in place.

use super::gemm::{ViewAt, gemv};
use super::run::{PARALLEL_MIN_WORK, unflatten};
use kiln_compiler::codegen::cranelift::{ATTENTION_KEY_BLOCK as BK, KernelFn};
use kiln_compiler::ir::scalar::nan_max;
use rayon::prelude::*;

/// Queries per task: enough rows for the GEMM library to be efficient,
/// small enough that a 128-token prefill still feeds every thread.
const QUERY_BLOCK: usize = 32;

/// Up to this many queries per task, scores are dot products and the value
/// sums are row sums (decode), not GEMM calls.
const FEW_QUERIES: usize = 2;

pub(super) struct AttnCall {
    pub batch: Vec<usize>,
    pub m: usize,
    pub keys: usize,
    pub d: usize,
    pub dv: usize,
    pub q: ViewAt,
    pub kt: ViewAt,
    pub v: ViewAt,
    pub out: ViewAt,
}

#[derive(Clone, Copy)]
struct Task {
    bi: usize,
    i0: usize,
    i1: usize,
}

/// Raw addresses shared with the worker threads (read-only table).
#[derive(Clone, Copy)]
struct Addr(usize);

impl AttnCall {
    /// Run over every query. `ptrs` are the program's buffers; `score`
    /// reads its scratch block as buffer `scratch`.
    pub fn launch(&self, ptrs: &[*mut u8], score: Option<KernelFn>, sizes: &[i64], scratch: usize) {
        let nb: usize = self.batch.iter().product();
        if nb == 0 || self.m == 0 || self.dv == 0 {
            return;
        }
        let qb = if self.m <= FEW_QUERIES {
            self.m
        } else {
            QUERY_BLOCK.min(self.m)
        };
        let mut tasks = Vec::new();
        for bi in 0..nb {
            let mut i0 = 0;
            while i0 < self.m {
                let i1 = (i0 + qb).min(self.m);
                tasks.push(Task { bi, i0, i1 });
                i0 = i1;
            }
        }
        let table: Vec<Addr> = ptrs.iter().map(|p| Addr(*p as usize)).collect();
        let work = nb * self.m * self.keys.max(1) * (self.d + self.dv);
        let run = |t: Task| self.task(t, &table, (score, scratch), sizes);
        if work < PARALLEL_MIN_WORK || tasks.len() == 1 || rayon::current_num_threads() == 1 {
            tasks.into_iter().for_each(run);
        } else {
            tasks.into_par_iter().for_each(run);
        }
    }

    fn task(
        &self,
        t: Task,
        table: &[Addr],
        (score, scratch): (Option<KernelFn>, usize),
        sizes: &[i64],
    ) {
        let bq = t.i1 - t.i0;
        let (d, dv) = (self.d, self.dv);
        let bi = unflatten(t.bi, &self.batch);
        let base = |v: &ViewAt| table[v.buf].0 as *mut f32;
        // SAFETY (all pointer arithmetic below): views lie inside their
        // buffers for every index of the kernel's domain; this task writes
        // only its own queries' rows of `out`.
        let q = unsafe {
            base(&self.q).offset(self.q.batch_offset(&bi) as isize + t.i0 as isize * self.q.rs())
        };
        let kt = unsafe { base(&self.kt).offset(self.kt.batch_offset(&bi) as isize) };
        let v = unsafe { base(&self.v).offset(self.v.batch_offset(&bi) as isize) };
        let (qrs, qcs) = (self.q.rs(), self.q.cs());
        let (krs, kcs) = (self.kt.rs(), self.kt.cs());
        let (vrs, vcs) = (self.v.rs(), self.v.cs());

        let mut s = vec![0.0f32; bq * BK];
        let mut acc = vec![0.0f32; bq * dv];
        let mut part = vec![0.0f32; dv];
        let mut mx = vec![f32::NEG_INFINITY; bq];
        let mut sum = vec![0.0f32; bq];
        let mut ptrs: Vec<*mut u8> = table.iter().map(|a| a.0 as *mut u8).collect();
        if ptrs.len() <= scratch {
            ptrs.resize(scratch + 1, std::ptr::null_mut());
        }
        let row0 = t.bi * self.m + t.i0;
        // `gemv` needs a unit stride along one axis of its matrix.
        let few = bq <= FEW_QUERIES && (krs == 1 || kcs == 1) && (vrs == 1 || vcs == 1);
        let mut j0 = 0;
        while j0 < self.keys {
            let bk = BK.min(self.keys - j0);
            // Raw scores of this block.
            unsafe {
                let kb = kt.offset(j0 as isize * kcs);
                if few {
                    for i in 0..bq {
                        let qi = q.offset(i as isize * qrs);
                        gemv(qi, qcs, kb, krs, kcs, d, &mut s[i * BK..i * BK + bk]);
                    }
                } else {
                    gemm::gemm(
                        bq,
                        bk,
                        d,
                        s.as_mut_ptr(),
                        1,
                        BK as isize,
                        false,
                        q,
                        qcs,
                        qrs,
                        kb,
                        kcs,
                        krs,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            }
            if let Some(f) = score {
                ptrs[scratch] = s.as_mut_ptr().wrapping_sub(row0 * BK + j0).cast::<u8>();
                // SAFETY: the function touches rows row0..row0+bq and
                // columns j0..j0+bk of the block, which map inside `s`.
                unsafe {
                    f(
                        ptrs.as_ptr(),
                        sizes.as_ptr(),
                        row0 as i64,
                        (row0 + bq) as i64,
                        j0 as i64,
                        (j0 + bk) as i64,
                    )
                };
            }
            // Online softmax: probabilities relative to the running max.
            for i in 0..bq {
                let row = &mut s[i * BK..i * BK + bk];
                let bm = row.iter().fold(f32::NEG_INFINITY, |a, &x| nan_max(a, x));
                let m_new = nan_max(mx[i], bm);
                let scale = if mx[i] == m_new {
                    1.0
                } else {
                    exp_one(mx[i] - m_new)
                };
                let e = exp_sub(row, m_new);
                sum[i] = sum[i] * scale + e;
                if scale != 1.0 {
                    for a in &mut acc[i * dv..(i + 1) * dv] {
                        *a *= scale;
                    }
                }
                mx[i] = m_new;
            }
            // Accumulate probabilities × values.
            unsafe {
                let vb = v.offset(j0 as isize * vrs);
                if few {
                    for i in 0..bq {
                        gemv(s[i * BK..].as_ptr(), 1, vb, vrs, vcs, bk, &mut part);
                        for (a, p) in acc[i * dv..(i + 1) * dv].iter_mut().zip(&part) {
                            *a += p;
                        }
                    }
                } else {
                    gemm::gemm(
                        bq,
                        dv,
                        bk,
                        acc.as_mut_ptr(),
                        1,
                        dv as isize,
                        true,
                        s.as_ptr(),
                        1,
                        BK as isize,
                        vb,
                        vcs,
                        vrs,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            }
            j0 += bk;
        }
        let o = base(&self.out);
        let (ors, ocs) = (self.out.rs(), self.out.cs());
        let ob = self.out.batch_offset(&bi) as isize;
        for i in 0..bq {
            let inv = 1.0 / sum[i];
            for c in 0..dv {
                unsafe {
                    *o.offset(ob + (t.i0 + i) as isize * ors + c as isize * ocs) =
                        acc[i * dv + c] * inv;
                }
            }
        }
    }
}

/// `e^x` for `x ≤ 0` (relative error ≈ 1e-7; 0 below the smallest normal).
#[inline(always)]
fn exp_one(x: f32) -> f32 {
    const LN2_HI: f32 = std::f32::consts::LN_2;
    const LN2_LO: f32 = (std::f64::consts::LN_2 - LN2_HI as f64) as f32;
    const MIN_NORMAL_LN: f32 = -87.336_54;
    let c = x.clamp(MIN_NORMAL_LN, 0.0);
    // Round to nearest with 1.5·2²³; the low mantissa bits are then `n`.
    let j = c * std::f32::consts::LOG2_E + 12_582_912.0;
    let n = j - 12_582_912.0;
    let ni = j.to_bits() as i32 - 0x4B40_0000;
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, c));
    let mut p: f32 = 1.0 / 5040.0;
    for k in [720.0, 120.0, 24.0, 6.0, 2.0, 1.0, 1.0] {
        p = p.mul_add(r, 1.0 / k);
    }
    let y = p * f32::from_bits(((ni + 127) << 23) as u32);
    if x.is_nan() {
        x
    } else if x < MIN_NORMAL_LN {
        0.0
    } else {
        y
    }
}

/// `row[j] = e^(row[j] - m)` in place; returns the sum.
fn exp_sub(row: &mut [f32], m: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the features were just detected.
        return unsafe { exp_sub_avx2(row, m) };
    }
    exp_sub_body(row, m)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_sub_avx2(row: &mut [f32], m: f32) -> f32 {
    exp_sub_body(row, m)
}

#[inline(always)]
fn exp_sub_body(row: &mut [f32], m: f32) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut chunks = row.chunks_exact_mut(8);
    for c in &mut chunks {
        for l in 0..8 {
            c[l] = exp_one(c[l] - m);
            acc[l] += c[l];
        }
    }
    let mut total: f32 = acc.iter().sum();
    for x in chunks.into_remainder() {
        *x = exp_one(*x - m);
        total += *x;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_libm_on_non_positive_inputs() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x <= 0.0 {
            let want = f64::from(x).exp();
            let got = f64::from(exp_one(x));
            worst = worst.max(((got - want) / want).abs());
            x += 0.013;
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(exp_one(0.0), 1.0);
        assert_eq!(exp_one(-100.0), 0.0);
        assert_eq!(exp_one(f32::MIN), 0.0);
        assert_eq!(exp_one(f32::NEG_INFINITY), 0.0);
        assert!(exp_one(f32::NAN).is_nan());
    }

    #[test]
    fn exp_sub_sums_what_it_writes() {
        let mut row: Vec<f32> = (0..37).map(|i| -(i as f32) * 0.7).collect();
        let want: f32 = row.iter().map(|x| (x - 0.5).exp()).sum();
        let got = exp_sub(&mut row, 0.5);
        assert!((got - want).abs() < 1e-5 * want);
        assert!((row[3] - (-2.1f32 - 0.5).exp()).abs() < 1e-7);
    }
}
