//! Products with weights kept in their stored format ([`QuantMatrix`]):
//! decode-sized products (few rows) as row dot products against quantised
//! activations ([`crate::quant::dot`]); larger ones as integer GEMM over
//! packed panels ([`crate::quant::gemm`], AVX-512 VNNI), or, for rows that
//! do not pack, panels of weight rows decoded to f32 through the GEMM
//! library.
//! The generated epilogue runs over each finished block, as for f32.

use super::gemm::GemmCall;
use super::run::{Ptrs, unflatten};
use crate::error::{Result, RuntimeError};
use crate::quant::gemm::{self as qgemm, PANEL_COLS, Panel, QRows, TILE_ROWS};
use crate::quant::{Isa, Q8Acts, QuantMatrix};
use kiln_compiler::codegen::cranelift::KernelFn;
use rayon::prelude::*;

/// Rows of activations up to which a product runs as dot products.
pub(super) const QUANT_DOT_MAX_ROWS: usize = 8;

fn internal(m: String) -> RuntimeError {
    RuntimeError::Internal { message: m }
}

impl GemmCall {
    /// Run the product with `b` read from `w` (its `[n, k]` rows as the
    /// `k × n` operand); returns the rows computed.
    pub(super) fn launch_quant(
        &self,
        w: &QuantMatrix,
        ptrs: &[*mut u8],
        epilogue: Option<KernelFn>,
        bufs: Ptrs,
        sizes: &[i64],
    ) -> Result<usize> {
        let (m, n, k) = (self.m, self.n, self.k);
        let b = &self.b;
        let r = b.strides.len();
        if self.rows.is_some()
            || b.off != 0
            || b.strides[..r - 2].iter().any(|&s| s != 0)
            || b.rs() != 1
            || b.cs() != k as isize
            || w.cols() != k
            || w.rows() != n
        {
            return Err(internal(format!(
                "a stored-format weight {w:?} read as a {k}×{n} operand with strides {:?}",
                b.strides
            )));
        }
        if m == 0 || n == 0 {
            return Ok(0);
        }
        let nb: usize = self.batch.iter().product();
        let rows = nb * m;
        let isa = Isa::detect();
        let threads = rayon::current_num_threads();
        let pa = ptrs[self.a.buf] as usize;
        let po = ptrs[self.out.buf] as usize;
        // Activation row `t` (over batch points and rows) as a slice.
        let a_row = |t: usize, buf: &mut Vec<f32>| {
            let (bi, i) = (t / m, t % m);
            let off = self.a.batch_offset(&unflatten(bi, &self.batch)) as isize
                + i as isize * self.a.rs();
            let acs = self.a.cs();
            buf.clear();
            if acs == 1 {
                // SAFETY: row `i` of batch point `bi` of `a` lies inside its
                // buffer, contiguous.
                buf.extend_from_slice(unsafe {
                    std::slice::from_raw_parts((pa as *const f32).offset(off), k)
                });
                return;
            }
            // SAFETY: row `i` of batch point `bi` of `a` lies inside its buffer.
            buf.extend(
                (0..k).map(|p| unsafe { *(pa as *const f32).offset(off + p as isize * acs) }),
            );
        };
        // Element offset of each output row (over batch points and rows).
        let (ors, ocs) = (self.out.rs(), self.out.cs());
        let row_off: Vec<isize> = (0..rows)
            .map(|t| {
                let (bi, i) = (t / m, t % m);
                self.out.batch_offset(&unflatten(bi, &self.batch)) as isize + i as isize * ors
            })
            .collect();
        let out_at = |t: usize, j: usize| -> *mut f32 {
            // SAFETY: element (i, j) of batch point `bi` lies inside `out`.
            unsafe { (po as *mut f32).offset(row_off[t] + j as isize * ocs) }
        };
        let run_epilogue = |j0: usize, j1: usize| {
            if let Some(f) = epilogue {
                for bi in 0..nb {
                    let r0 = (bi * m) as i64;
                    // SAFETY: the generated epilogue over a finished block.
                    unsafe {
                        f(
                            bufs.get(),
                            sizes.as_ptr(),
                            r0,
                            r0 + m as i64,
                            j0 as i64,
                            j1 as i64,
                        )
                    };
                }
            }
        };
        if rows <= QUANT_DOT_MAX_ROWS {
            let mut x = Vec::with_capacity(k);
            let acts: Vec<Q8Acts> = (0..rows)
                .map(|t| {
                    a_row(t, &mut x);
                    Q8Acts::new(&x)
                })
                .collect();
            // Enough column chunks to balance the threads, each a few
            // dozen weight rows.
            let chunk = n.div_ceil(8 * threads).clamp(16, 256);
            let work = |c: usize| {
                let (j0, j1) = (c * chunk, ((c + 1) * chunk).min(n));
                w.for_each_row(j0..j1, |j, format, row| {
                    for (t, a) in acts.iter().enumerate() {
                        let v = crate::quant::dot::dot(isa, format, row, a);
                        // SAFETY: each (t, j) is written by one chunk only.
                        unsafe { *out_at(t, j) = v };
                    }
                });
                run_epilogue(j0, j1);
            };
            let chunks = n.div_ceil(chunk);
            if chunks == 1 || threads == 1 || n * k < 1 << 15 {
                (0..chunks).for_each(work);
            } else {
                (0..chunks).into_par_iter().for_each(work);
            }
            return Ok(rows);
        }
        // Larger products: integer GEMM over packed panels where the CPU
        // has VNNI and the rows' formats pack ([`crate::quant::gemm`]);
        // otherwise the activations once, contiguous, then panels of
        // decoded weight rows through the GEMM library.
        let packed = isa == Isa::Avx512 && qgemm::available() && k > 0 && k.is_multiple_of(32);
        // Every row packs (the usual case): the f32 copy is not needed.
        let all_packed =
            packed && (w.segments().iter()).all(|s| qgemm::sub_block_len(s.format).is_some());
        let mut qa = QRows::new(if packed { k } else { 0 });
        if packed {
            qa.fill_parallel(rows, a_row);
        }
        let mut a = Vec::new();
        if !all_packed {
            let mut x = Vec::with_capacity(k);
            a.reserve(rows * k);
            for t in 0..rows {
                a_row(t, &mut x);
                a.extend_from_slice(&x);
            }
        }
        let chunk = (n.div_ceil(4 * threads).div_ceil(PANEL_COLS) * PANEL_COLS).clamp(32, 512);
        let work = |c: usize| {
            let (j0, j1) = (c * chunk, ((c + 1) * chunk).min(n));
            let mut p = Panel::default();
            // A chunk whose first panel does not pack (f16/bf16 rows, no
            // VNNI) is decoded whole: one larger product.
            if !(packed && p.pack(w, j0, (j0 + PANEL_COLS).min(j1))) {
                self.decoded_panel(w, j0, j1, &a, po);
                run_epilogue(j0, j1);
                return;
            }
            let mut tile = [[0f32; PANEL_COLS]; TILE_ROWS];
            for p0 in (j0..j1).step_by(PANEL_COLS) {
                let p1 = (p0 + PANEL_COLS).min(j1);
                if p0 > j0 && !p.pack(w, p0, p1) {
                    self.decoded_panel(w, p0, p1, &a, po);
                    continue;
                }
                for r0 in (0..rows).step_by(TILE_ROWS) {
                    let tr = TILE_ROWS.min(rows - r0);
                    qgemm::tile(&p, &qa, r0, &mut tile[..tr]);
                    for (r, o) in tile[..tr].iter().enumerate() {
                        let o = &o[..p1 - p0];
                        let dst = out_at(r0 + r, p0);
                        if ocs == 1 {
                            // SAFETY: elements (t, p0..p1) are contiguous
                            // and written by this chunk only.
                            unsafe { std::ptr::copy_nonoverlapping(o.as_ptr(), dst, o.len()) };
                            continue;
                        }
                        for (cc, &v) in o.iter().enumerate() {
                            // SAFETY: each (t, j) is written by one chunk only.
                            unsafe { *dst.offset(cc as isize * ocs) = v };
                        }
                    }
                }
            }
            run_epilogue(j0, j1);
        };
        let chunks = n.div_ceil(chunk);
        if chunks == 1 || threads == 1 {
            (0..chunks).for_each(work);
        } else {
            (0..chunks).into_par_iter().for_each(work);
        }
        Ok(rows)
    }

    /// Columns `j0..j1` of the product for every batch point: weight rows
    /// decoded to f32, then the GEMM library. `a` holds the activations
    /// contiguous (`batch · m × k`); `po` is the output buffer.
    fn decoded_panel(&self, w: &QuantMatrix, j0: usize, j1: usize, a: &[f32], po: usize) {
        let (m, k) = (self.m, self.k);
        let (ors, ocs) = (self.out.rs(), self.out.cs());
        let nt = j1 - j0;
        let mut panel = vec![0f32; nt * k];
        w.decode_rows(j0..j1, &mut panel);
        for bi in 0..self.batch.iter().product() {
            let off = self.out.batch_offset(&unflatten(bi, &self.batch)) + j0 as i64 * ocs as i64;
            // SAFETY: rows of batch point `bi` of the packed activations and
            // block (·, j0..j1) of `out`, written by this caller only.
            unsafe {
                gemm::gemm(
                    m,
                    nt,
                    k,
                    (po as *mut f32).offset(off as isize),
                    ocs,
                    ors,
                    false,
                    a.as_ptr().add(bi * m * k),
                    1,
                    k as isize,
                    panel.as_ptr(),
                    k as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        }
    }
}

/// Rows `index[t]` of a stored-format 2-D table, decoded into a contiguous
/// f32 output.
pub(super) fn gather_quant(
    ptrs: &[*mut u8],
    out: usize,
    w: &QuantMatrix,
    picked: &[usize],
) -> std::result::Result<(), String> {
    let cols = w.cols();
    let dst = ptrs[out] as *mut f32;
    for (t, &r) in picked.iter().enumerate() {
        if r >= w.rows() {
            return Err(format!("index {r} out of range [0, {})", w.rows()));
        }
        // SAFETY: output row `t` of `cols` floats lies inside `out`.
        let o = unsafe { std::slice::from_raw_parts_mut(dst.add(t * cols), cols) };
        w.decode_rows(r..r + 1, o);
    }
    Ok(())
}
