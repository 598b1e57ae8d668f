//! Products of many activation rows with block-quantised weights (prefill):
//! integer GEMM with AVX-512 VNNI.
//!
//! The weights of 32 output columns are unpacked into a [`Panel`]: per
//! sub-block (32 values, or 16 for Q6_K) a signed 8-bit value per weight, a
//! scale `dw` and a minimum `mw` (the weight is `dw·q + mw`, exactly what
//! the block decoder computes), interleaved so that one 64-byte load holds
//! four consecutive `k` of 16 columns: the layout `vpdpbusd` multiplies
//! against one broadcast 4-byte group of an activation row. Activations are
//! quantised per block of 32 as for the row dot products ([`super::Q8Acts`],
//! ggml's Q8 rounding) and stored offset by 128 as unsigned bytes
//! ([`QRows`]); the offset's contribution `128·Σq` of each weight sub-block
//! is precomputed at packing and subtracted in i32, so every sub-block's
//! integer sum is exact. Each is then scaled in f32 (`acc += S·(dw·da)`,
//! then `acc += mw·(da·Σqa)` for formats with a minimum), as fused
//! multiply-adds in one fixed order: the portable reference
//! ([`tile_portable`]) performs the same operations and agrees bit for bit.
//!
//! A tile is up to 4 activation rows by 32 columns (16 accumulators in
//! registers); a panel is packed once per product and reused for every row.

use super::blocks::{BlockFormat, f16_at, scale_min_k4};
use super::dot::Q8Acts;
use super::matrix::QuantMatrix;

/// Columns of a panel (two vectors of 16 lanes).
pub const PANEL_COLS: usize = 32;
/// Activation rows of a tile.
pub const TILE_ROWS: usize = 4;

/// Activation rows quantised per block of 32, as unsigned bytes `q + 128`.
#[derive(Debug, Clone, Default)]
pub struct QRows {
    k: usize,
    rows: usize,
    /// `rows × k` bytes.
    u: Vec<u8>,
    /// `rows × k/32` block scales.
    d: Vec<f32>,
    /// `rows × k/32` values of `d · Σ q`.
    dsum: Vec<f32>,
    /// `rows × k/16` values of `d · Σ q` over each half block.
    dsum16: Vec<f32>,
    scratch: Q8Acts,
}

impl QRows {
    /// Empty, for rows of `k` values (a multiple of 32).
    pub fn new(k: usize) -> QRows {
        assert!(k.is_multiple_of(32), "QRows of {k} columns");
        QRows {
            k,
            ..QRows::default()
        }
    }

    /// Append a row (`x.len() == k`), quantised as [`Q8Acts`] does.
    pub fn push(&mut self, x: &[f32]) {
        assert_eq!(x.len(), self.k);
        let mut a = std::mem::take(&mut self.scratch);
        a.set(x);
        self.push_quantised(&a);
        self.scratch = a;
    }

    /// Replace the rows by `rows` rows quantised in parallel: `f(t, x)`
    /// fills `x` with row `t`'s `k` values. The same values as [`QRows::push`].
    pub fn fill_parallel(&mut self, rows: usize, f: impl Fn(usize, &mut Vec<f32>) + Sync) {
        use rayon::prelude::*;
        let (k, nb) = (self.k, self.k / 32);
        self.clear();
        if k == 0 {
            self.rows = rows;
            return;
        }
        self.u.resize(rows * k, 0);
        self.d.resize(rows * nb, 0.0);
        self.dsum.resize(rows * nb, 0.0);
        self.dsum16.resize(rows * 2 * nb, 0.0);
        (self.u.par_chunks_mut(k))
            .zip(self.d.par_chunks_mut(nb))
            .zip(self.dsum.par_chunks_mut(nb))
            .zip(self.dsum16.par_chunks_mut(2 * nb))
            .enumerate()
            .for_each_init(
                || (Vec::with_capacity(k), Q8Acts::default()),
                |(x, a), (t, (((u, d), ds), ds16))| {
                    f(t, x);
                    a.set_keeping(x, false);
                    for (o, &q) in u.iter_mut().zip(&a.q) {
                        *o = (i16::from(q) + 128) as u8;
                    }
                    d.copy_from_slice(&a.d);
                    ds.copy_from_slice(&a.dsum);
                    for (h, o) in ds16.iter_mut().enumerate() {
                        *o = a.d[h / 2] * a.sum16[h] as f32;
                    }
                },
            );
        self.rows = rows;
    }

    /// Append a row already quantised (`a.len() == k`).
    pub fn push_quantised(&mut self, a: &Q8Acts) {
        assert_eq!(a.len(), self.k);
        self.u
            .extend(a.q.iter().map(|&q| (i16::from(q) + 128) as u8));
        self.d.extend_from_slice(&a.d);
        self.dsum.extend_from_slice(&a.dsum);
        self.dsum16
            .extend((0..a.sum16.len()).map(|h| a.d[h / 2] * a.sum16[h] as f32));
        self.rows += 1;
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Forget the rows (keeping the storage).
    pub fn clear(&mut self) {
        self.rows = 0;
        self.u.clear();
        self.d.clear();
        self.dsum.clear();
        self.dsum16.clear();
    }
}

/// The values per scale of a format's packed sub-blocks, or `None` where
/// the format has no packed product (f16/bf16, Q2_K, Q3_K).
pub fn sub_block_len(format: BlockFormat) -> Option<usize> {
    use BlockFormat::*;
    match format {
        Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q4_K | Q5_K => Some(32),
        Q6_K => Some(16),
        F16 | BF16 | Q2_K | Q3_K => None,
    }
}

/// The packed weights of up to [`PANEL_COLS`] consecutive output columns.
#[derive(Debug, Clone, Default)]
pub struct Panel {
    /// Valid columns (the rest are zero).
    cols: usize,
    /// Values per sub-block (32 or 16).
    sub: usize,
    /// Number of sub-blocks along `k`.
    nsub: usize,
    /// Per sub-block, per group of 4 `k`, two vectors of 16 columns × 4
    /// bytes.
    q: Vec<i8>,
    /// `128 · Σ q` per sub-block and column.
    corr: Vec<i32>,
    /// Scale per sub-block and column.
    dw: Vec<f32>,
    /// Minimum per sub-block and column.
    mw: Vec<f32>,
    has_min: bool,
}

impl Panel {
    /// Pack rows `j0..j1` (at most [`PANEL_COLS`]) of `w`; `false` (and the
    /// panel unusable) when a row's format has no packed product. Rows of
    /// different sub-block lengths (a joined Q4_K and Q6_K projection) pack
    /// at the shorter one, a 32-block's scale repeated over its halves.
    pub fn pack(&mut self, w: &QuantMatrix, j0: usize, j1: usize) -> bool {
        assert!(j1 > j0 && j1 - j0 <= PANEL_COLS && j1 <= w.rows());
        let k = w.cols();
        let mut sub = 32;
        for j in j0..j1 {
            match sub_block_len(w.row(j).0) {
                Some(s) => sub = sub.min(s),
                None => return false,
            }
        }
        if !k.is_multiple_of(32) {
            return false;
        }
        let nsub = k / sub;
        self.cols = j1 - j0;
        self.sub = sub;
        self.nsub = nsub;
        self.q.clear();
        self.q.resize(nsub * sub * PANEL_COLS, 0);
        self.corr.clear();
        self.corr.resize(nsub * PANEL_COLS, 0);
        self.dw.clear();
        self.dw.resize(nsub * PANEL_COLS, 0.0);
        self.mw.clear();
        self.mw.resize(nsub * PANEL_COLS, 0.0);
        self.has_min = false;
        let groups = sub / 4;
        let mut vals = [0i8; 32];
        // Halves of 16 columns that are contiguous rows of one Q8_0, Q4_0
        // or Q4_1 segment pack with AVX-512 gathers (the same panel).
        let mut done = [false; 2];
        #[cfg(target_arch = "x86_64")]
        if sub == 32 && super::Isa::Avx512.available() {
            for (h, done) in done.iter_mut().enumerate() {
                if 16 * h + 16 > self.cols {
                    continue;
                }
                let (format, first) = w.row(j0 + 16 * h);
                let rb = first.len();
                let same = (1..16).all(|l| {
                    let (f, r) = w.row(j0 + 16 * h + l);
                    f == format && r.as_ptr() as usize == first.as_ptr() as usize + l * rb
                });
                if same
                    && matches!(
                        format,
                        BlockFormat::Q8_0 | BlockFormat::Q4_0 | BlockFormat::Q4_1
                    )
                {
                    // SAFETY: AVX-512 present; rows j0+16h.. are 16
                    // contiguous rows of `rb` bytes starting at `first`.
                    unsafe { self.pack16_avx512(format, first.as_ptr(), rb, h) };
                    *done = true;
                }
            }
        }
        for c in 0..self.cols {
            if done[c / 16] {
                continue;
            }
            let (format, row) = w.row(j0 + c);
            let own = sub_block_len(format).unwrap_or(sub);
            // Byte offset of column `c`'s 4-byte group 0 of sub-block 0.
            let col_at = (c / 16) * 64 + (c % 16) * 4;
            for s in 0..nsub {
                let (dw, mw) = if own == sub {
                    unpack(format, row, s, &mut vals[..sub])
                } else {
                    // A 32-block read as two halves of 16.
                    let mut whole = [0i8; 32];
                    let dm = unpack(format, row, s / 2, &mut whole);
                    vals[..16].copy_from_slice(&whole[16 * (s % 2)..16 * (s % 2) + 16]);
                    dm
                };
                let at = s * PANEL_COLS + c;
                self.dw[at] = dw;
                self.mw[at] = mw;
                self.has_min |= mw != 0.0;
                let sum: i32 = vals[..sub].iter().map(|&v| i32::from(v)).sum();
                self.corr[at] = 128 * sum;
                let base = s * groups * 128 + col_at;
                for (g, four) in vals[..sub].chunks_exact(4).enumerate() {
                    let o = base + g * 128;
                    self.q[o..o + 4].copy_from_slice(four);
                }
            }
        }
        true
    }

    /// Columns `16h..16h + 16` from 16 contiguous rows (`rb` bytes each,
    /// the first at `base`) of a Q8_0, Q4_0 or Q4_1 matrix: each 4-byte
    /// group of the 16 rows is one gather, the sums come from `vpdpbusd`
    /// against ones, the scales through `vcvtph2ps` — the values the
    /// scalar loop of [`Panel::pack`] writes.
    ///
    /// # Safety
    /// AVX-512 F/BW/VNNI present; the 16 rows hold `nsub` blocks each.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn pack16_avx512(&mut self, format: BlockFormat, base: *const u8, rb: usize, h: usize) {
        use std::arch::x86_64::*;
        let bb = format.block_bytes();
        let (qs_at, zero, min) = match format {
            BlockFormat::Q8_0 => (2, false, false),
            BlockFormat::Q4_0 => (2, true, false),
            _ => (4, false, true),
        };
        let lanes = _mm512_mullo_epi32(
            _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
            _mm512_set1_epi32(rb as i32),
        );
        let ones = _mm512_set1_epi8(1);
        let m4 = _mm512_set1_epi8(0x0f);
        let eight = _mm512_set1_epi8(8);
        let zf = _mm512_setzero_ps();
        for s in 0..self.nsub {
            // SAFETY: block `s` of each of the 16 rows lies inside them; the
            // panel arrays hold nsub sub-blocks.
            unsafe {
                let blk = base.add(s * bb);
                let mut sum = _mm512_setzero_si512();
                for g in 0..8 {
                    let v = if format == BlockFormat::Q8_0 {
                        _mm512_i32gather_epi32::<1>(lanes, blk.add(2 + 4 * g).cast())
                    } else {
                        let raw =
                            _mm512_i32gather_epi32::<1>(lanes, blk.add(qs_at + 4 * (g % 4)).cast());
                        let n = if g < 4 {
                            _mm512_and_si512(raw, m4)
                        } else {
                            _mm512_and_si512(_mm512_srli_epi16(raw, 4), m4)
                        };
                        if zero { _mm512_sub_epi8(n, eight) } else { n }
                    };
                    let at = ((s * 8 + g) * 2 + h) * 64;
                    _mm512_storeu_si512(self.q.as_mut_ptr().add(at).cast(), v);
                    sum = _mm512_dpbusd_epi32(sum, ones, v);
                }
                let at = s * PANEL_COLS + 16 * h;
                _mm512_storeu_si512(
                    self.corr.as_mut_ptr().add(at).cast(),
                    _mm512_slli_epi32(sum, 7),
                );
                let sc = _mm512_i32gather_epi32::<1>(lanes, blk.cast());
                let d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(sc));
                _mm512_storeu_ps(self.dw.as_mut_ptr().add(at), d);
                if min {
                    let m = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(sc, 16)));
                    _mm512_storeu_ps(self.mw.as_mut_ptr().add(at), m);
                    self.has_min |= _mm512_cmp_ps_mask(m, zf, _CMP_NEQ_UQ) != 0;
                }
            }
        }
    }

    /// Position of value `t` of sub-block `s` of column `c` in `q`.
    fn q_index(&self, s: usize, t: usize, c: usize) -> usize {
        let groups = self.sub / 4;
        let (g, e) = (t / 4, t % 4);
        ((s * groups + g) * 2 + c / 16) * 64 + (c % 16) * 4 + e
    }
}

/// Sub-block `s` of a row of `format`: its signed values into `q` and its
/// scale and minimum (value = `dw · q + mw`).
fn unpack(format: BlockFormat, row: &[u8], s: usize, q: &mut [i8]) -> (f32, f32) {
    use BlockFormat::*;
    let bb = format.block_bytes();
    let nib = |qs: &[u8], i: usize| {
        if i < 16 {
            qs[i] & 0x0f
        } else {
            qs[i - 16] >> 4
        }
    };
    match format {
        Q8_0 => {
            let w = &row[s * bb..(s + 1) * bb];
            for (v, &b) in q.iter_mut().zip(&w[2..34]) {
                *v = b as i8;
            }
            (f16_at(w, 0), 0.0)
        }
        Q4_0 | Q4_1 => {
            let w = &row[s * bb..(s + 1) * bb];
            let zero = format == Q4_0;
            let qs: &[u8; 16] = w[if zero { 2 } else { 4 }..][..16].try_into().unwrap();
            let off = if zero { 8 } else { 0 };
            let (lo, hi) = q.split_at_mut(16);
            for i in 0..16 {
                lo[i] = (qs[i] & 0x0f) as i8 - off;
                hi[i] = (qs[i] >> 4) as i8 - off;
            }
            (f16_at(w, 0), if zero { 0.0 } else { f16_at(w, 2) })
        }
        Q5_0 | Q5_1 => {
            let w = &row[s * bb..(s + 1) * bb];
            let zero = format == Q5_0;
            let at = if zero { 2 } else { 4 };
            let qh = u32::from_le_bytes([w[at], w[at + 1], w[at + 2], w[at + 3]]);
            let qs = &w[at + 4..];
            for (i, v) in q.iter_mut().enumerate() {
                let u = nib(qs, i) | ((((qh >> i) & 1) as u8) << 4);
                *v = u as i8 - if zero { 16 } else { 0 };
            }
            (f16_at(w, 0), if zero { 0.0 } else { f16_at(w, 2) })
        }
        Q4_K | Q5_K => {
            let five = format == Q5_K;
            let (sb, j) = (s / 8, s % 8);
            let w = &row[sb * bb..(sb + 1) * bb];
            let (d, dmin) = (f16_at(w, 0), f16_at(w, 2));
            let (sc, m) = scale_min_k4(j, &w[4..16]);
            let (qh, qs) = if five {
                (&w[16..48], &w[48..176])
            } else {
                (&w[0..0], &w[16..144])
            };
            let qs = &qs[32 * (j / 2)..32 * (j / 2) + 32];
            for (l, v) in q.iter_mut().enumerate() {
                let lo = if j % 2 == 0 { qs[l] & 0x0f } else { qs[l] >> 4 };
                let hi = if five { ((qh[l] >> j) & 1) << 4 } else { 0 };
                *v = (lo | hi) as i8;
            }
            (d * f32::from(sc), -(dmin * f32::from(m)))
        }
        Q6_K => {
            let (sb, j, half) = (s / 16, (s % 16) / 2, s % 2);
            let w = &row[sb * bb..(sb + 1) * bb];
            let d = f16_at(w, 208);
            let sc = w[192 + 8 * (j / 4) + 2 * (j % 4) + half] as i8;
            let (n, t) = (j / 4, j % 4);
            let ql = &w[64 * n..64 * n + 64];
            let qh = &w[128 + 32 * n..128 + 32 * n + 32];
            for (i, v) in q.iter_mut().enumerate() {
                let l = 16 * half + i;
                let low = match t {
                    0 => ql[l] & 0x0f,
                    1 => ql[l + 32] & 0x0f,
                    2 => ql[l] >> 4,
                    _ => ql[l + 32] >> 4,
                };
                *v = (low | (((qh[l] >> (2 * t)) & 3) << 4)) as i8 - 32;
            }
            (d * f32::from(sc), 0.0)
        }
        F16 | BF16 | Q2_K | Q3_K => unreachable!("{format} has no packed product"),
    }
}

/// Whether [`tile`] has a fast path on this CPU.
pub fn available() -> bool {
    super::Isa::Avx512.available()
}

/// Rows `r0..r0 + out.len()` (at most [`TILE_ROWS`]) of `a` times the
/// panel: `out[r][c]` for the panel's columns (the rest of each row is
/// zero).
///
/// # Panics
/// When the CPU lacks AVX-512 VNNI ([`available`]) or the shapes disagree.
pub fn tile(p: &Panel, a: &QRows, r0: usize, out: &mut [[f32; PANEL_COLS]]) {
    check(p, a, r0, out.len());
    assert!(available(), "the packed product needs AVX-512 VNNI");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the CPU has the features (checked above); shapes checked.
    unsafe {
        if p.sub == 32 {
            x86::tile::<8>(p, a, r0, out)
        } else {
            x86::tile::<4>(p, a, r0, out)
        }
    }
}

fn check(p: &Panel, a: &QRows, r0: usize, rows: usize) {
    assert!((1..=TILE_ROWS).contains(&rows) && r0 + rows <= a.rows);
    assert_eq!(p.nsub * p.sub, a.k, "panel and activation lengths");
}

/// The reference of [`tile`]: the same integer sums and the same f32
/// operations in the same order.
pub fn tile_portable(p: &Panel, a: &QRows, r0: usize, out: &mut [[f32; PANEL_COLS]]) {
    check(p, a, r0, out.len());
    let nb = a.k / 32;
    for (r, o) in out.iter_mut().enumerate() {
        let i = r0 + r;
        let u = &a.u[i * a.k..(i + 1) * a.k];
        for (c, oc) in o.iter_mut().enumerate() {
            let mut acc = 0f32;
            for s in 0..p.nsub {
                let mut isum = 0i32;
                for t in 0..p.sub {
                    isum += i32::from(u[s * p.sub + t]) * i32::from(p.q[p.q_index(s, t, c)]);
                }
                let at = s * PANEL_COLS + c;
                let b = i * nb + s * p.sub / 32;
                let sc = p.dw[at] * a.d[b];
                acc = ((isum - p.corr[at]) as f32).mul_add(sc, acc);
                if p.has_min {
                    let ds = if p.sub == 32 {
                        a.dsum[b]
                    } else {
                        a.dsum16[2 * i * nb + s]
                    };
                    acc = p.mw[at].mul_add(ds, acc);
                }
            }
            *oc = acc;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{PANEL_COLS, Panel, QRows};
    use std::arch::x86_64::*;

    /// 4 rows (rows past `rows` repeat the last; not stored) by 32 columns;
    /// `G` groups of 4 values per sub-block. Every accumulator is its own
    /// variable so that all 16 stay in registers.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn tile<const G: usize>(
        p: &Panel,
        a: &QRows,
        r0: usize,
        out: &mut [[f32; PANEL_COLS]],
    ) {
        let k = a.k;
        let nb = k / 32;
        let sub = 4 * G;
        let rows = out.len();
        let row = |r: usize| r0 + r.min(rows - 1);
        let (i0, i1, i2, i3) = (row(0), row(1), row(2), row(3));
        let u = a.u.as_ptr();
        let (u0, u1, u2, u3) = (
            u.wrapping_add(i0 * k),
            u.wrapping_add(i1 * k),
            u.wrapping_add(i2 * k),
            u.wrapping_add(i3 * k),
        );
        let z = _mm512_setzero_ps();
        let (mut c00, mut c01, mut c10, mut c11) = (z, z, z, z);
        let (mut c20, mut c21, mut c30, mut c31) = (z, z, z, z);
        let qp = p.q.as_ptr();
        let d = a.d.as_ptr();
        let ds = if G == 8 {
            a.dsum.as_ptr()
        } else {
            a.dsum16.as_ptr()
        };
        // Per-row strides of `d` and of `ds` in entries.
        let dss = if G == 8 { nb } else { 2 * nb };
        // SAFETY (whole body): the caller checked that the panel holds nsub
        // sub-blocks of G·2 vectors and 32 entries of each per-column array,
        // and that rows i0..=i3 of `a` exist (k bytes, k/32 and k/16 scales).
        unsafe {
            for s in 0..p.nsub {
                let zi = _mm512_setzero_si512();
                let (mut a00, mut a01, mut a10, mut a11) = (zi, zi, zi, zi);
                let (mut a20, mut a21, mut a30, mut a31) = (zi, zi, zi, zi);
                let base = s * sub;
                for g in 0..G {
                    let w = qp.add((s * G + g) * 128);
                    let w0 = _mm512_loadu_si512(w.cast());
                    let w1 = _mm512_loadu_si512(w.add(64).cast());
                    let at = base + 4 * g;
                    let b0 = _mm512_set1_epi32(std::ptr::read_unaligned(u0.add(at).cast::<i32>()));
                    a00 = _mm512_dpbusd_epi32(a00, b0, w0);
                    a01 = _mm512_dpbusd_epi32(a01, b0, w1);
                    let b1 = _mm512_set1_epi32(std::ptr::read_unaligned(u1.add(at).cast::<i32>()));
                    a10 = _mm512_dpbusd_epi32(a10, b1, w0);
                    a11 = _mm512_dpbusd_epi32(a11, b1, w1);
                    let b2 = _mm512_set1_epi32(std::ptr::read_unaligned(u2.add(at).cast::<i32>()));
                    a20 = _mm512_dpbusd_epi32(a20, b2, w0);
                    a21 = _mm512_dpbusd_epi32(a21, b2, w1);
                    let b3 = _mm512_set1_epi32(std::ptr::read_unaligned(u3.add(at).cast::<i32>()));
                    a30 = _mm512_dpbusd_epi32(a30, b3, w0);
                    a31 = _mm512_dpbusd_epi32(a31, b3, w1);
                }
                let at = s * PANEL_COLS;
                let k0 = _mm512_loadu_si512(p.corr.as_ptr().add(at).cast());
                let k1 = _mm512_loadu_si512(p.corr.as_ptr().add(at + 16).cast());
                let dw0 = _mm512_loadu_ps(p.dw.as_ptr().add(at));
                let dw1 = _mm512_loadu_ps(p.dw.as_ptr().add(at + 16));
                let b = base / 32;
                macro_rules! scale {
                    ($i:expr, $x0:ident, $x1:ident, $c0:ident, $c1:ident) => {{
                        let da = _mm512_set1_ps(*d.add($i * nb + b));
                        let s0 = _mm512_cvtepi32_ps(_mm512_sub_epi32($x0, k0));
                        $c0 = _mm512_fmadd_ps(s0, _mm512_mul_ps(dw0, da), $c0);
                        let s1 = _mm512_cvtepi32_ps(_mm512_sub_epi32($x1, k1));
                        $c1 = _mm512_fmadd_ps(s1, _mm512_mul_ps(dw1, da), $c1);
                    }};
                }
                scale!(i0, a00, a01, c00, c01);
                scale!(i1, a10, a11, c10, c11);
                scale!(i2, a20, a21, c20, c21);
                scale!(i3, a30, a31, c30, c31);
                if p.has_min {
                    let m0 = _mm512_loadu_ps(p.mw.as_ptr().add(at));
                    let m1 = _mm512_loadu_ps(p.mw.as_ptr().add(at + 16));
                    // The minimum's term: one per sub-block (32 values, or
                    // the half block of 16).
                    let h = if G == 8 { b } else { s };
                    macro_rules! mins {
                        ($i:expr, $c0:ident, $c1:ident) => {{
                            let v = _mm512_set1_ps(*ds.add($i * dss + h));
                            $c0 = _mm512_fmadd_ps(m0, v, $c0);
                            $c1 = _mm512_fmadd_ps(m1, v, $c1);
                        }};
                    }
                    mins!(i0, c00, c01);
                    mins!(i1, c10, c11);
                    mins!(i2, c20, c21);
                    mins!(i3, c30, c31);
                }
            }
            let res = [[c00, c01], [c10, c11], [c20, c21], [c30, c31]];
            for (o, c) in out.iter_mut().zip(res) {
                _mm512_storeu_ps(o.as_mut_ptr(), c[0]);
                _mm512_storeu_ps(o.as_mut_ptr().add(16), c[1]);
            }
        }
    }
}
