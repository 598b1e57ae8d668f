//! Matrix products for the JIT: tiles through the `gemm` crate with the
//! generated epilogue applied to each tile, and streamed matrix-vector
//! products for decode.

use super::run::{PARALLEL_MIN_WORK, Ptrs, unflatten};
use crate::error::Result;
use kiln_compiler::codegen::cranelift::KernelFn;
use kiln_compiler::kernel::{Size, View};
use rayon::prelude::*;

/// A view at concrete lengths: element offset and strides (in elements).
#[derive(Debug, Clone)]
pub(super) struct ViewAt {
    pub buf: usize,
    pub off: i64,
    pub strides: Vec<i64>,
}

pub(super) fn eval_view(v: &View, eval: &dyn Fn(&Size) -> Result<i64>) -> Result<ViewAt> {
    Ok(ViewAt {
        buf: v.buf,
        off: eval(&v.offset)?,
        strides: v.strides.iter().map(eval).collect::<Result<_>>()?,
    })
}

impl ViewAt {
    /// Element offset of batch index `bi` (the leading axes).
    pub fn batch_offset(&self, bi: &[usize]) -> i64 {
        self.off
            + bi.iter()
                .zip(&self.strides)
                .map(|(&i, &s)| i as i64 * s)
                .sum::<i64>()
    }
    pub fn rs(&self) -> isize {
        self.strides[self.strides.len() - 2] as isize
    }
    pub fn cs(&self) -> isize {
        self.strides[self.strides.len() - 1] as isize
    }
}

pub(super) struct GemmCall {
    pub batch: Vec<usize>,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: ViewAt,
    pub b: ViewAt,
    pub out: ViewAt,
    /// Row dispatch: rows whose value here is 0 are skipped (written 0).
    pub rows: Option<ViewAt>,
}

#[derive(Clone, Copy)]
struct Tile {
    bi: usize,
    i0: usize,
    i1: usize,
    j0: usize,
    j1: usize,
}

impl GemmCall {
    /// Tiles over (batch, row block, column block): enough to feed every
    /// thread. A single large product is split by columns, so each tile
    /// packs only its own slice of `b` (the weight) and the small `a` is
    /// the part packed more than once.
    fn tiles(&self) -> Vec<Tile> {
        let nb: usize = self.batch.iter().product();
        let threads = rayon::current_num_threads();
        let flops = 2 * nb * self.m * self.n * self.k.max(1);
        // A matrix-vector product is bound by reading `b`: split it as soon
        // as `b` is large, whatever the FLOPs.
        let streamed = self.m <= GEMV_MAX_ROWS && nb * self.n * self.k >= 8 * PARALLEL_MIN_WORK;
        let want = if flops < 4 * PARALLEL_MIN_WORK * 64 && !streamed {
            1
        } else {
            threads * 2
        };
        let per_batch = want.div_ceil(nb.max(1)).max(1);
        let (mb, nbk) = if per_batch == 1 {
            (self.m, self.n)
        } else if self.n >= 64 * per_batch || self.m < 16 * per_batch {
            let cols = self.n.div_ceil(per_batch).div_ceil(16) * 16;
            (self.m, cols.max(16))
        } else {
            (self.m.div_ceil(per_batch), self.n)
        };
        let (mb, nbk) = (mb.max(1), nbk.max(1));
        let mut t = Vec::new();
        for bi in 0..nb {
            let mut i0 = 0;
            while i0 < self.m {
                let i1 = (i0 + mb).min(self.m);
                let mut j0 = 0;
                while j0 < self.n {
                    let j1 = (j0 + nbk).min(self.n);
                    t.push(Tile { bi, i0, i1, j0, j1 });
                    j0 = j1;
                }
                i0 = i1;
            }
        }
        t
    }

    /// A large matrix-vector product over a `[k, n]` weight: threads take
    /// contiguous row ranges of the weight (each a sequential stream) and
    /// their partial sums are added, then the epilogue runs once.
    fn launch_split_k(
        &self,
        ptrs: &[*mut u8],
        epilogue: Option<KernelFn>,
        bufs: Ptrs,
        sizes: &[i64],
    ) -> bool {
        let nb: usize = self.batch.iter().product();
        let threads = rayon::current_num_threads();
        let (ocs, bcs) = (self.out.cs(), self.b.cs());
        if nb != 1
            || self.m > GEMV_MAX_ROWS
            || threads == 1
            || ocs != 1
            || bcs != 1
            || self.n * self.k < 8 * PARALLEL_MIN_WORK
        {
            return false;
        }
        let (pa, pb, po) = (
            ptrs[self.a.buf] as usize,
            ptrs[self.b.buf] as usize,
            ptrs[self.out.buf] as usize,
        );
        let (oa, ob, oo) = (
            self.a.batch_offset(&[]),
            self.b.batch_offset(&[]),
            self.out.batch_offset(&[]),
        );
        let (ars, acs, brs, ors) = (self.a.rs(), self.a.cs(), self.b.rs(), self.out.rs());
        let parts = threads;
        let per = self.k.div_ceil(parts);
        for i in 0..self.m {
            let partial: Vec<Vec<f32>> = (0..parts)
                .into_par_iter()
                .map(|t| {
                    let (p0, p1) = (t * per, ((t + 1) * per).min(self.k));
                    let mut acc = vec![0.0f32; self.n];
                    if p0 < p1 {
                        // SAFETY: rows p0..p1 of b and elements p0..p1 of
                        // row i of a lie inside their buffers.
                        unsafe {
                            let a = (pa as *const f32)
                                .offset(oa as isize + i as isize * ars + p0 as isize * acs);
                            let b = (pb as *const f32).offset(ob as isize + p0 as isize * brs);
                            gemv(a, acs, b, brs, 1, p1 - p0, &mut acc);
                        }
                    }
                    acc
                })
                .collect();
            // SAFETY: row i of out holds n contiguous elements.
            let out = unsafe {
                std::slice::from_raw_parts_mut(
                    (po as *mut f32).offset(oo as isize + i as isize * ors),
                    self.n,
                )
            };
            out.copy_from_slice(&partial[0]);
            for p in &partial[1..] {
                for (o, x) in out.iter_mut().zip(p) {
                    *o += x;
                }
            }
        }
        if let Some(f) = epilogue {
            // SAFETY: as for the tiled path, over the whole output.
            unsafe {
                f(
                    bufs.get(),
                    sizes.as_ptr(),
                    0,
                    self.m as i64,
                    0,
                    self.n as i64,
                )
            };
        }
        true
    }

    /// Run the product; returns how many rows (over every batch point) were
    /// computed.
    pub fn launch(
        &self,
        ptrs: &[*mut u8],
        epilogue: Option<KernelFn>,
        bufs: Ptrs,
        sizes: &[i64],
    ) -> usize {
        let nb: usize = self.batch.iter().product();
        if self.m == 0 || self.n == 0 {
            return 0;
        }
        if let Some(rows) = &self.rows {
            return self.launch_dispatched(ptrs, rows, epilogue, bufs, sizes);
        }
        let base = |v: &ViewAt| ptrs[v.buf] as usize;
        let (pa, pb, po) = (base(&self.a), base(&self.b), base(&self.out));
        let run = |t: Tile| {
            let bi = unflatten(t.bi, &self.batch);
            let oa = self.a.batch_offset(&bi);
            let ob = self.b.batch_offset(&bi);
            let oo = self.out.batch_offset(&bi);
            let (ars, acs) = (self.a.rs(), self.a.cs());
            let (brs, bcs) = (self.b.rs(), self.b.cs());
            let (ors, ocs) = (self.out.rs(), self.out.cs());
            // SAFETY: offsets and strides come from views that lie inside
            // their buffers; tiles write disjoint blocks of `out`.
            unsafe {
                let a = (pa as *const f32).offset(oa as isize + t.i0 as isize * ars);
                let b = (pb as *const f32).offset(ob as isize + t.j0 as isize * bcs);
                let o = (po as *mut f32)
                    .offset(oo as isize + t.i0 as isize * ors + t.j0 as isize * ocs);
                let (mt, nt) = (t.i1 - t.i0, t.j1 - t.j0);
                if mt <= GEMV_MAX_ROWS && ocs == 1 && (bcs == 1 || brs == 1) {
                    // Matrix-vector products (decode) are memory bound:
                    // stream the weight once instead of packing it.
                    for i in 0..mt {
                        let ai = a.offset(i as isize * ars);
                        let oi = o.offset(i as isize * ors);
                        let out = std::slice::from_raw_parts_mut(oi, nt);
                        gemv(ai, acs, b, brs, bcs, self.k, out);
                    }
                } else {
                    gemm::gemm(
                        mt,
                        nt,
                        self.k,
                        o,
                        ocs,
                        ors,
                        false,
                        a,
                        acs,
                        ars,
                        b,
                        bcs,
                        brs,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
                if let Some(f) = epilogue {
                    let r = (t.bi * self.m) as i64;
                    f(
                        bufs.get(),
                        sizes.as_ptr(),
                        r + t.i0 as i64,
                        r + t.i1 as i64,
                        t.j0 as i64,
                        t.j1 as i64,
                    );
                }
            }
        };
        if self.launch_split_k(ptrs, epilogue, bufs, sizes) {
            return nb * self.m;
        }
        let tiles = self.tiles();
        if tiles.len() == 1 {
            run(tiles[0]);
        } else {
            tiles.into_par_iter().for_each(run);
        }
        nb * self.m
    }

    /// A dispatched product (mixture of experts): per batch point, only the
    /// rows whose dispatch value is non-zero are gathered, multiplied and
    /// scattered back (then their epilogue runs); the other rows are zeroed.
    fn launch_dispatched(
        &self,
        ptrs: &[*mut u8],
        rows: &ViewAt,
        epilogue: Option<KernelFn>,
        bufs: Ptrs,
        sizes: &[i64],
    ) -> usize {
        let nb: usize = self.batch.iter().product();
        let (m, n, k) = (self.m, self.n, self.k);
        let base = |v: &ViewAt| ptrs[v.buf] as usize;
        let (pa, pb, po, pr) = (base(&self.a), base(&self.b), base(&self.out), base(rows));
        let picked: Vec<Vec<usize>> = (0..nb)
            .map(|bi| {
                let idx = unflatten(bi, &self.batch);
                let off = rows.batch_offset(&idx);
                let rs = rows.strides[rows.strides.len() - 1] as isize;
                (0..m)
                    .filter(|&i| {
                        // SAFETY: the dispatch view lies inside its f32 buffer.
                        unsafe { *(pr as *const f32).offset(off as isize + i as isize * rs) != 0.0 }
                    })
                    .collect()
            })
            .collect();
        let computed: usize = picked.iter().map(Vec::len).sum();
        // Column blocks keep every thread busy when few experts are picked.
        let threads = rayon::current_num_threads();
        let work = computed * n * k;
        let col_blocks = if work < 4 * PARALLEL_MIN_WORK * 64 || threads == 1 {
            1
        } else {
            (2 * threads).div_ceil(nb.max(1)).clamp(1, n.div_ceil(16))
        };
        let per = n.div_ceil(col_blocks).div_ceil(16) * 16;
        let tasks: Vec<(usize, usize, usize)> = (0..nb)
            .flat_map(|bi| (0..n.div_ceil(per)).map(move |c| (bi, c * per, ((c + 1) * per).min(n))))
            .collect();
        let run = |(bi, j0, j1): (usize, usize, usize)| {
            let idx = unflatten(bi, &self.batch);
            let (oa, ob, oo) = (
                self.a.batch_offset(&idx) as isize,
                self.b.batch_offset(&idx) as isize,
                self.out.batch_offset(&idx) as isize,
            );
            let (ars, acs) = (self.a.rs(), self.a.cs());
            let (brs, bcs) = (self.b.rs(), self.b.cs());
            let (ors, ocs) = (self.out.rs(), self.out.cs());
            let sel = &picked[bi];
            let nt = j1 - j0;
            // SAFETY: offsets and strides come from views inside their
            // buffers; tasks write disjoint column blocks of disjoint batch
            // points of `out`.
            unsafe {
                let o = (po as *mut f32).offset(oo + j0 as isize * ocs);
                let mut chosen = sel.iter().peekable();
                for i in 0..m {
                    if chosen.peek() == Some(&&i) {
                        chosen.next();
                        continue;
                    }
                    for j in 0..nt {
                        *o.offset(i as isize * ors + j as isize * ocs) = 0.0;
                    }
                }
                if sel.is_empty() {
                    return;
                }
                let b = (pb as *const f32).offset(ob + j0 as isize * bcs);
                // The picked rows of `a`, packed.
                let mut packed = Vec::with_capacity(sel.len() * k);
                for &i in sel {
                    let row = (pa as *const f32).offset(oa + i as isize * ars);
                    packed.extend((0..k).map(|p| *row.offset(p as isize * acs)));
                }
                let mut prod = vec![0.0f32; sel.len() * nt];
                if sel.len() <= GEMV_MAX_ROWS && (bcs == 1 || brs == 1) {
                    for (r, out) in prod.chunks_exact_mut(nt).enumerate() {
                        gemv(packed[r * k..].as_ptr(), 1, b, brs, bcs, k, out);
                    }
                } else {
                    gemm::gemm(
                        sel.len(),
                        nt,
                        k,
                        prod.as_mut_ptr(),
                        1,
                        nt as isize,
                        false,
                        packed.as_ptr(),
                        1,
                        k as isize,
                        b,
                        bcs,
                        brs,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
                for (r, &i) in sel.iter().enumerate() {
                    for j in 0..nt {
                        *o.offset(i as isize * ors + j as isize * ocs) = prod[r * nt + j];
                    }
                    if let Some(f) = epilogue {
                        let row = (bi * m + i) as i64;
                        f(
                            bufs.get(),
                            sizes.as_ptr(),
                            row,
                            row + 1,
                            j0 as i64,
                            j1 as i64,
                        );
                    }
                }
            }
        };
        if tasks.len() == 1 || work < PARALLEL_MIN_WORK {
            tasks.into_iter().for_each(run);
        } else {
            tasks.into_par_iter().for_each(run);
        }
        computed
    }
}

/// Rows of `a` up to which a product runs as matrix-vector products.
const GEMV_MAX_ROWS: usize = 2;

/// `out[j] = Σₚ x[p·xs]·b[p·brs + j·bcs]` for `j < out.len()`, where `b` has
/// a unit stride along `p` (dot products) or along `j` (scaled row sums).
/// Uses AVX2+FMA code when the CPU has it.
///
/// # Safety
/// `x` and `b` are valid for every element these strides reach.
pub(super) unsafe fn gemv(
    x: *const f32,
    xs: isize,
    b: *const f32,
    brs: isize,
    bcs: isize,
    k: usize,
    out: &mut [f32],
) {
    let xv: Vec<f32> = (0..k)
        .map(|p| unsafe { *x.offset(p as isize * xs) })
        .collect();
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the features were just detected; same contract as ours.
        unsafe { gemv_avx2(&xv, b, brs, bcs, out) };
        return;
    }
    // SAFETY: forwarded contract.
    unsafe { gemv_body(&xv, b, brs, bcs, out) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gemv_avx2(x: &[f32], b: *const f32, brs: isize, bcs: isize, out: &mut [f32]) {
    // SAFETY: forwarded contract; compiled here with AVX2 and FMA.
    unsafe { gemv_body(x, b, brs, bcs, out) }
}

#[inline(always)]
unsafe fn gemv_body(x: &[f32], b: *const f32, brs: isize, bcs: isize, out: &mut [f32]) {
    let k = x.len();
    if brs == 1 {
        for (j, o) in out.iter_mut().enumerate() {
            // SAFETY: column j of b is k contiguous elements.
            let col = unsafe { std::slice::from_raw_parts(b.offset(j as isize * bcs), k) };
            *o = dot(x, col);
        }
        return;
    }
    let n = out.len();
    out.fill(0.0);
    // Eight, then four rows of b per pass over `out`: fewer read-modify-writes.
    let mut p = 0;
    while p + 8 <= k {
        // SAFETY: rows p..p+8 of b hold n contiguous elements each.
        let r =
            |q: usize| unsafe { std::slice::from_raw_parts(b.offset((p + q) as isize * brs), n) };
        let rs = [r(0), r(1), r(2), r(3), r(4), r(5), r(6), r(7)];
        let xs = &x[p..p + 8];
        for j in 0..n {
            out[j] += xs[0] * rs[0][j]
                + xs[1] * rs[1][j]
                + xs[2] * rs[2][j]
                + xs[3] * rs[3][j]
                + xs[4] * rs[4][j]
                + xs[5] * rs[5][j]
                + xs[6] * rs[6][j]
                + xs[7] * rs[7][j];
        }
        p += 8;
    }
    while p + 4 <= k {
        // SAFETY: rows p..p+4 of b hold n contiguous elements each.
        let r =
            |q: usize| unsafe { std::slice::from_raw_parts(b.offset((p + q) as isize * brs), n) };
        let (r0, r1, r2, r3) = (r(0), r(1), r(2), r(3));
        let (x0, x1, x2, x3) = (x[p], x[p + 1], x[p + 2], x[p + 3]);
        for j in 0..n {
            out[j] += x0 * r0[j] + x1 * r1[j] + x2 * r2[j] + x3 * r3[j];
        }
        p += 4;
    }
    while p < k {
        // SAFETY: as above, one row.
        let row = unsafe { std::slice::from_raw_parts(b.offset(p as isize * brs), n) };
        for (o, &w) in out.iter_mut().zip(row) {
            *o += x[p] * w;
        }
        p += 1;
    }
}

/// A dot product in sixteen independent lanes (so it vectorises).
#[inline(always)]
pub(super) fn dot(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let (xc, yc) = (x.chunks_exact(16), y.chunks_exact(16));
    let tail: f32 = xc
        .remainder()
        .iter()
        .zip(yc.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (a, b) in xc.zip(yc) {
        for l in 0..16 {
            acc[l] += a[l] * b[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::gemv;

    /// Both layouts of `b`, at depths that take every pass width (8, 4
    /// and single rows), against a plain f64 sum.
    #[test]
    fn gemv_matches_a_plain_sum_at_every_depth() {
        let n = 19;
        for k in [1usize, 3, 4, 5, 7, 8, 9, 12, 13, 17, 31] {
            let x: Vec<f32> = (0..k).map(|p| ((p * 7 % 11) as f32 - 5.0) * 0.25).collect();
            // b[p][j] = f(p, j), stored [k, n] (rows) and [n, k] (columns).
            let f = |p: usize, j: usize| ((p * 13 + j * 5) % 17) as f32 * 0.125 - 1.0;
            let rows: Vec<f32> = (0..k).flat_map(|p| (0..n).map(move |j| f(p, j))).collect();
            let cols: Vec<f32> = (0..n).flat_map(|j| (0..k).map(move |p| f(p, j))).collect();
            let want: Vec<f64> = (0..n)
                .map(|j| (0..k).map(|p| f64::from(x[p]) * f64::from(f(p, j))).sum())
                .collect();
            for (b, brs, bcs) in [(&rows, n as isize, 1), (&cols, 1, k as isize)] {
                let mut out = vec![f32::NAN; n];
                // SAFETY: the strides address exactly the k × n elements of `b`.
                unsafe { gemv(x.as_ptr(), 1, b.as_ptr(), brs, bcs, k, &mut out) };
                for (j, (&o, &w)) in out.iter().zip(&want).enumerate() {
                    assert!(
                        (f64::from(o) - w).abs() <= 1e-5,
                        "k {k} j {j} brs {brs}: {o} vs {w}"
                    );
                }
            }
        }
    }
}
