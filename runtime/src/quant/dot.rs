//! Dot products of stored-format weight rows with activations.
//!
//! Activations are quantised per block of 32 ([`Q8Acts`]: `x ≈ d·q`,
//! `q ∈ [-127, 127]`, `d = max|x| / 127`, ggml's Q8 rounding), so every
//! integer format's product is integer sums of `q_w · q_a` per block, exact
//! in i32, scaled once per block (or sub-block) in f32. F16 and BF16 rows
//! are widened exactly and multiplied with the f32 activations.
//!
//! Three paths, chosen at run time ([`Isa::detect`], forceable with
//! `KILN_QUANT_ISA=avx512|avx2|portable`): AVX-512 (VNNI `vpdpbusd`, BW
//! masks, 256-bit lanes), AVX2 (`vpmaddubsw`), and portable Rust (the
//! reference). They differ only in the order of the f32 block sums: on
//! inputs where every product and sum is exact in f32 they agree bit for
//! bit, which is how the tests check the integer paths.

use super::blocks::{BlockFormat, f16_at, f16_to_f32, scale_min_k4};
use std::sync::OnceLock;

/// One activation row quantised per block of 32 (a trailing partial block
/// is kept only as f32: the integer formats' rows are whole blocks).
#[derive(Debug, Clone, Default)]
pub struct Q8Acts {
    /// Scale of each block.
    pub d: Vec<f32>,
    /// 32 values per block.
    pub q: Vec<i8>,
    /// Σ q of each block.
    pub sum: Vec<i32>,
    /// Σ q of each half block (16 values), two per block.
    pub sum16: Vec<i32>,
    /// `d · Σ q` of each block (the term of a block minimum).
    pub dsum: Vec<f32>,
    /// Σ q of each block in the first of 8 lanes (zeros in the others):
    /// the offset terms of Q4_0 and Q8_0 as one vector subtraction.
    pub sum8: Vec<i32>,
    /// The activations themselves (for F16 and BF16 rows; empty when
    /// quantised with `keep_x = false`).
    pub x: Vec<f32>,
    /// Number of values.
    len: usize,
}

impl Q8Acts {
    /// Quantise `x`.
    pub fn new(x: &[f32]) -> Q8Acts {
        let mut a = Q8Acts::default();
        a.set(x);
        a
    }

    /// Quantise `x` into this (reusing its storage).
    pub fn set(&mut self, x: &[f32]) {
        self.set_keeping(x, true);
    }

    /// Quantise `x`; keep its f32 values too only if `keep_x` (the F16 and
    /// BF16 products read them; the integer GEMM does not).
    pub fn set_keeping(&mut self, x: &[f32], keep_x: bool) {
        self.fill(x, keep_x, true);
    }

    /// The scalar loop alone (the reference of the vector one, for tests).
    #[cfg(test)]
    pub(crate) fn new_scalar(x: &[f32]) -> Q8Acts {
        let mut a = Q8Acts::default();
        a.fill(x, true, false);
        a
    }

    /// [`Q8Acts::set_keeping`], with AVX-512 where `vector` and available.
    fn fill(&mut self, x: &[f32], keep_x: bool, vector: bool) {
        let nb = x.len() / 32;
        self.len = x.len();
        self.d.clear();
        self.sum.clear();
        self.sum16.clear();
        self.dsum.clear();
        self.sum8.clear();
        self.sum8.resize(8 * nb, 0);
        self.q.resize(32 * nb, 0);
        self.x.clear();
        if keep_x {
            self.x.extend_from_slice(x);
        }
        #[cfg(target_arch = "x86_64")]
        if vector && nb > 0 && x.iter().all(|v| v.is_finite()) && Isa::Avx512.available() {
            self.d.resize(nb, 0.0);
            self.sum.resize(nb, 0);
            self.sum16.resize(2 * nb, 0);
            self.dsum.resize(nb, 0.0);
            // SAFETY: AVX-512 present; every array holds its nb blocks.
            unsafe { x86::quantise_avx512(x, self) };
            return;
        }
        let _ = vector;
        for b in 0..nb {
            let xs = &x[32 * b..32 * b + 32];
            let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let qs = &mut self.q[32 * b..32 * b + 32];
            for (q, &v) in qs.iter_mut().zip(xs) {
                *q = round_away(v * id) as i8;
            }
            let s0: i32 = qs[..16].iter().map(|&q| i32::from(q)).sum();
            let s1: i32 = qs[16..].iter().map(|&q| i32::from(q)).sum();
            self.d.push(d);
            self.sum.push(s0 + s1);
            self.sum16.extend([s0, s1]);
            self.dsum.push(d * (s0 + s1) as f32);
            self.sum8[8 * b] = s0 + s1;
        }
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// `r` rounded to the nearest integer, halves away from zero (C's
/// `roundf`, ggml's rounding), for `|r| < 2^23`: a truncating conversion
/// and an exact remainder instead of a libm call per value.
#[inline]
pub fn round_away(r: f32) -> i32 {
    let t = r as i32;
    let f = r - t as f32;
    t + i32::from(f >= 0.5) - i32::from(f <= -0.5)
}

/// An instruction-set path of the product kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512 F/BW/VL with VNNI.
    Avx512,
    /// AVX2 with FMA and F16C.
    Avx2,
    /// Plain Rust: the reference.
    Portable,
}

impl Isa {
    /// Every path, fastest first.
    pub const ALL: [Isa; 3] = [Isa::Avx512, Isa::Avx2, Isa::Portable];

    /// Its name (`KILN_QUANT_ISA`'s values).
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Portable => "portable",
        }
    }

    /// Whether this CPU can run the path (detected once).
    pub fn available(self) -> bool {
        static AVAILABLE: OnceLock<[bool; 3]> = OnceLock::new();
        let a = AVAILABLE.get_or_init(|| Isa::ALL.map(Isa::detect_available));
        a[Isa::ALL.iter().position(|&i| i == self).unwrap_or(2)]
    }

    fn detect_available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Isa::Avx512 => {
                    is_x86_feature_detected!("avx512f")
                        && is_x86_feature_detected!("avx512bw")
                        && is_x86_feature_detected!("avx512vl")
                        && is_x86_feature_detected!("avx512vnni")
                        && Isa::Avx2.detect_available()
                }
                Isa::Avx2 => {
                    is_x86_feature_detected!("avx2")
                        && is_x86_feature_detected!("fma")
                        && is_x86_feature_detected!("f16c")
                }
                Isa::Portable => true,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Isa::Portable
        }
    }

    /// The path this process uses: `KILN_QUANT_ISA` when set (a path the CPU
    /// lacks, or an unknown name, is reported once on stderr and the best
    /// available path is used), else the fastest available.
    pub fn detect() -> Isa {
        static CHOSEN: OnceLock<Isa> = OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let best = Isa::ALL.into_iter().find(|i| i.available()).unwrap_or(Isa::Portable);
            match std::env::var("KILN_QUANT_ISA") {
                Ok(name) => match Isa::ALL.into_iter().find(|i| i.name() == name) {
                    Some(i) if i.available() => i,
                    Some(i) => {
                        eprintln!(
                            "warning: KILN_QUANT_ISA={} but this CPU lacks it; using {}",
                            i.name(),
                            best.name()
                        );
                        best
                    }
                    None => {
                        eprintln!(
                            "warning: KILN_QUANT_ISA={name} is not one of avx512, avx2, portable; using {}",
                            best.name()
                        );
                        best
                    }
                },
                Err(_) => best,
            }
        })
    }
}

/// `Σ w·x` of one weight row (`format`, `row` its bytes) with the
/// activations `a` on path `isa`.
///
/// # Panics
/// When `isa` is not available, `format` has no kernel
/// ([`BlockFormat::has_kernel`]) or the lengths disagree.
pub fn dot(isa: Isa, format: BlockFormat, row: &[u8], a: &Q8Acts) -> f32 {
    assert!(
        isa.available(),
        "{} is not available on this CPU",
        isa.name()
    );
    assert_eq!(
        format.row_bytes(a.len()),
        Some(row.len()),
        "a {format} row of {} bytes against {} activations",
        row.len(),
        a.len()
    );
    assert!(
        !matches!(format, BlockFormat::F16 | BlockFormat::BF16) || a.x.len() == a.len(),
        "{format} rows need the f32 activations (quantised without them)"
    );
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the features were checked just above; lengths match.
        Isa::Avx512 => unsafe { x86::dot_avx512(format, row, a) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { x86::dot_avx2(format, row, a) },
        _ => dot_portable(format, row, a),
    }
}

/// The reference: every block's integer sum, then its f32 scaling, in order.
pub fn dot_portable(format: BlockFormat, row: &[u8], a: &Q8Acts) -> f32 {
    let bb = format.block_bytes();
    let isum = |w: &[u8], b: usize, f: &dyn Fn(usize) -> i32| -> i32 {
        let _ = w;
        (0..32).map(|i| f(i) * i32::from(a.q[32 * b + i])).sum()
    };
    let mut acc = 0f32;
    match format {
        BlockFormat::F16 => {
            for (w, &x) in row.chunks_exact(2).zip(&a.x) {
                acc += f16_to_f32(u16::from_le_bytes([w[0], w[1]])) * x;
            }
        }
        BlockFormat::BF16 => {
            for (w, &x) in row.chunks_exact(2).zip(&a.x) {
                acc += f32::from_bits(u32::from(u16::from_le_bytes([w[0], w[1]])) << 16) * x;
            }
        }
        BlockFormat::Q8_0 => {
            for (b, w) in row.chunks_exact(bb).enumerate() {
                let s = isum(w, b, &|i| i32::from(w[2 + i] as i8));
                acc += f16_at(w, 0) * a.d[b] * s as f32;
            }
        }
        BlockFormat::Q4_0 | BlockFormat::Q4_1 => {
            for (b, w) in row.chunks_exact(bb).enumerate() {
                let qs = &w[if format == BlockFormat::Q4_0 { 2 } else { 4 }..];
                let s = isum(w, b, &|i| i32::from(nibble(qs, i)));
                if format == BlockFormat::Q4_0 {
                    acc += f16_at(w, 0) * a.d[b] * (s - 8 * a.sum[b]) as f32;
                } else {
                    acc += f16_at(w, 0) * a.d[b] * s as f32 + f16_at(w, 2) * a.dsum[b];
                }
            }
        }
        BlockFormat::Q5_0 | BlockFormat::Q5_1 => {
            for (b, w) in row.chunks_exact(bb).enumerate() {
                let at = if format == BlockFormat::Q5_0 { 2 } else { 4 };
                let qh = u32::from_le_bytes([w[at], w[at + 1], w[at + 2], w[at + 3]]);
                let qs = &w[at + 4..];
                let s = isum(w, b, &|i| {
                    i32::from(nibble(qs, i)) | (((qh >> i) & 1) << 4) as i32
                });
                if format == BlockFormat::Q5_0 {
                    acc += f16_at(w, 0) * a.d[b] * (s - 16 * a.sum[b]) as f32;
                } else {
                    acc += f16_at(w, 0) * a.d[b] * s as f32 + f16_at(w, 2) * a.dsum[b];
                }
            }
        }
        BlockFormat::Q4_K | BlockFormat::Q5_K => {
            let five = format == BlockFormat::Q5_K;
            for (sb, w) in row.chunks_exact(bb).enumerate() {
                let (d, dmin) = (f16_at(w, 0), f16_at(w, 2));
                let scales = &w[4..16];
                let (qh, qs) = if five {
                    (&w[16..48], &w[48..176])
                } else {
                    (&w[0..0], &w[16..144])
                };
                for j in 0..8 {
                    let b = 8 * sb + j;
                    let (sc, m) = scale_min_k4(j, scales);
                    let q = &qs[32 * (j / 2)..32 * (j / 2) + 32];
                    let s = isum(w, b, &|l| {
                        let lo = if j % 2 == 0 { q[l] & 0x0f } else { q[l] >> 4 };
                        let hi = if five { ((qh[l] >> j) & 1) << 4 } else { 0 };
                        i32::from(lo | hi)
                    });
                    acc += d * f32::from(sc) * a.d[b] * s as f32 - dmin * f32::from(m) * a.dsum[b];
                }
            }
        }
        BlockFormat::Q6_K => {
            for (sb, w) in row.chunks_exact(bb).enumerate() {
                let d = f16_at(w, 208);
                for j in 0..8 {
                    let b = 8 * sb + j;
                    let mut s = 0i32;
                    for half in 0..2 {
                        let sc = i32::from(w[192 + q6_scale(j, half)] as i8);
                        let part: i32 = (16 * half..16 * half + 16)
                            .map(|l| i32::from(q6(w, j, l)) * i32::from(a.q[32 * b + l]))
                            .sum();
                        s += sc * (part - 32 * a.sum16[2 * b + half]);
                    }
                    acc += d * a.d[b] * s as f32;
                }
            }
        }
        BlockFormat::Q2_K | BlockFormat::Q3_K => {
            panic!("{format} has no product kernel: decode it first")
        }
    }
    acc
}

/// Element `i` (0..32) of a 32-block's 16 nibble bytes.
fn nibble(qs: &[u8], i: usize) -> u8 {
    if i < 16 {
        qs[i] & 0x0f
    } else {
        qs[i - 16] >> 4
    }
}

/// The unsigned 6-bit value of element `l` (0..32) of 32-block `j` (0..8)
/// of a Q6_K super-block (ggml's `ql`/`qh` interleave).
fn q6(w: &[u8], j: usize, l: usize) -> u8 {
    let (n, t) = (j / 4, j % 4);
    let ql = &w[64 * n..64 * n + 64];
    let qh = &w[128 + 32 * n..128 + 32 * n + 32];
    let low = match t {
        0 => ql[l] & 0x0f,
        1 => ql[l + 32] & 0x0f,
        2 => ql[l] >> 4,
        _ => ql[l + 32] >> 4,
    };
    low | (((qh[l] >> (2 * t)) & 3) << 4)
}

/// Index into a Q6_K block's 16 scales of half `half` of 32-block `j`.
fn q6_scale(j: usize, half: usize) -> usize {
    8 * (j / 4) + 2 * (j % 4) + half
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::blocks::f16_to_f32;
    use super::super::blocks::{BlockFormat, f16_at, scale_min_k4};
    use super::{Q8Acts, q6_scale};
    use std::arch::x86_64::*;

    /// 32 unsigned values of a 32-block of nibbles: low nibbles then high.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn nibbles(qs: *const u8) -> __m256i {
        // SAFETY: the caller's block holds 16 bytes at `qs`.
        let x = unsafe { _mm_loadu_si128(qs as *const __m128i) };
        let m = _mm_set1_epi8(0x0f);
        let lo = _mm_and_si128(x, m);
        let hi = _mm_and_si128(_mm_srli_epi16(x, 4), m);
        _mm256_set_m128i(hi, lo)
    }

    /// 0x10 in each byte whose bit of `bits` is set (AVX2: ggml's shuffle).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn bits_avx2(bits: u32) -> __m256i {
        let t = _mm256_set1_epi32(bits as i32);
        let shuf = _mm256_set_epi64x(
            0x0303_0303_0303_0303,
            0x0202_0202_0202_0202,
            0x0101_0101_0101_0101,
            0x0000_0000_0000_0000,
        );
        let bytes = _mm256_shuffle_epi8(t, shuf);
        let mask = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe_u64 as i64);
        let set = _mm256_cmpeq_epi8(_mm256_or_si256(bytes, mask), _mm256_set1_epi64x(-1));
        _mm256_and_si256(set, _mm256_set1_epi8(0x10))
    }

    /// 0x10 in each byte whose bit of `bits` is set (AVX-512 BW/VL mask).
    #[inline]
    #[target_feature(enable = "avx512bw,avx512vl")]
    fn bits_avx512(bits: u32) -> __m256i {
        _mm256_maskz_mov_epi8(bits, _mm256_set1_epi8(0x10))
    }

    /// Σ u·s over 32 lanes as 8 i32 (u unsigned ≤ 127 or ≤ 255 with s signed):
    /// AVX2 pairs through i16, exact while |u·s| pairs stay under 2¹⁵.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn udot_avx2(u: __m256i, s: __m256i) -> __m256i {
        _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
    }

    #[inline]
    #[target_feature(enable = "avx512vnni,avx512vl")]
    fn udot_avx512(u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// The body shared by both paths: `$udot` multiplies unsigned by
    /// signed bytes, `$bits` spreads the fifth bits of Q5 formats.
    macro_rules! dot_body {
        ($format:expr, $row:expr, $a:expr, $udot:ident, $bits:ident, $signed_q8:expr) => {{
            let (format, row, a): (BlockFormat, &[u8], &Q8Acts) = ($format, $row, $a);
            let bb = format.block_bytes();
            let nb = a.len() / 32;
            let mut acc = _mm256_setzero_ps();
            let mut extra = 0f32;
            let w = row.as_ptr();
            let q = a.q.as_ptr();
            // SAFETY (whole body): `row` holds `nb` blocks of `bb` bytes (or
            // 32 × nb values of 2 bytes) and `a` 32 × nb values: every load
            // below stays inside them.
            unsafe {
                match format {
                    BlockFormat::F16 | BlockFormat::BF16 => {
                        let x = a.x.as_ptr();
                        for i in (0..a.len()).step_by(8) {
                            let h = _mm_loadu_si128(w.add(2 * i) as *const __m128i);
                            let wf = if format == BlockFormat::F16 {
                                _mm256_cvtph_ps(h)
                            } else {
                                _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
                            };
                            acc = _mm256_fmadd_ps(wf, _mm256_loadu_ps(x.add(i)), acc);
                        }
                    }
                    BlockFormat::Q8_0 => {
                        for b in 0..nb {
                            let blk = w.add(b * bb);
                            let wq = _mm256_loadu_si256(blk.add(2) as *const __m256i);
                            let aq = _mm256_loadu_si256(q.add(32 * b) as *const __m256i);
                            let (s, k) = $signed_q8(wq, aq);
                            let scale = f16_at(std::slice::from_raw_parts(blk, 2), 0) * a.d[b];
                            acc =
                                _mm256_fmadd_ps(_mm256_set1_ps(scale), _mm256_cvtepi32_ps(s), acc);
                            if k != 0 {
                                extra += scale * (k * a.sum[b]) as f32;
                            }
                        }
                    }
                    BlockFormat::Q4_0
                    | BlockFormat::Q4_1
                    | BlockFormat::Q5_0
                    | BlockFormat::Q5_1 => {
                        let (qs_at, has_min, has_high) = match format {
                            BlockFormat::Q4_0 => (2, false, false),
                            BlockFormat::Q4_1 => (4, true, false),
                            BlockFormat::Q5_0 => (6, false, true),
                            _ => (8, true, true),
                        };
                        let offset = match format {
                            BlockFormat::Q4_0 => 8,
                            BlockFormat::Q5_0 => 16,
                            _ => 0,
                        };
                        for b in 0..nb {
                            let blk = std::slice::from_raw_parts(w.add(b * bb), bb);
                            let mut wq = nibbles(blk.as_ptr().add(qs_at));
                            if has_high {
                                let h = qs_at - 4;
                                let qh = u32::from_le_bytes([
                                    blk[h],
                                    blk[h + 1],
                                    blk[h + 2],
                                    blk[h + 3],
                                ]);
                                wq = _mm256_or_si256(wq, $bits(qh));
                            }
                            let aq = _mm256_loadu_si256(q.add(32 * b) as *const __m256i);
                            let s = $udot(wq, aq);
                            let scale = f16_at(blk, 0) * a.d[b];
                            acc =
                                _mm256_fmadd_ps(_mm256_set1_ps(scale), _mm256_cvtepi32_ps(s), acc);
                            if has_min {
                                extra += f16_at(blk, 2) * a.dsum[b];
                            } else {
                                extra -= scale * (offset * a.sum[b]) as f32;
                            }
                        }
                    }
                    BlockFormat::Q4_K | BlockFormat::Q5_K => {
                        let five = format == BlockFormat::Q5_K;
                        for sb in 0..nb / 8 {
                            let blk = std::slice::from_raw_parts(w.add(sb * bb), bb);
                            let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
                            let scales = &blk[4..16];
                            let qs = blk.as_ptr().add(if five { 48 } else { 16 });
                            let qh = if five {
                                _mm256_loadu_si256(blk.as_ptr().add(16) as *const __m256i)
                            } else {
                                _mm256_setzero_si256()
                            };
                            let m4 = _mm256_set1_epi8(0x0f);
                            for c in 0..4 {
                                let x = _mm256_loadu_si256(qs.add(32 * c) as *const __m256i);
                                let halves = [
                                    _mm256_and_si256(x, m4),
                                    _mm256_and_si256(_mm256_srli_epi16(x, 4), m4),
                                ];
                                for (h, mut wq) in halves.into_iter().enumerate() {
                                    let j = 2 * c + h;
                                    if five {
                                        // Bit j of each qh byte, moved to 0x10.
                                        let bit = _mm256_and_si256(qh, _mm256_set1_epi8(1 << j));
                                        let set = _mm256_cmpeq_epi8(bit, _mm256_setzero_si256());
                                        wq = _mm256_or_si256(
                                            wq,
                                            _mm256_andnot_si256(set, _mm256_set1_epi8(0x10)),
                                        );
                                    }
                                    let b = 8 * sb + j;
                                    let aq = _mm256_loadu_si256(q.add(32 * b) as *const __m256i);
                                    let s = $udot(wq, aq);
                                    let (sc, m) = scale_min_k4(j, scales);
                                    let scale = d * f32::from(sc) * a.d[b];
                                    acc = _mm256_fmadd_ps(
                                        _mm256_set1_ps(scale),
                                        _mm256_cvtepi32_ps(s),
                                        acc,
                                    );
                                    extra -= dmin * f32::from(m) * a.dsum[b];
                                }
                            }
                        }
                    }
                    BlockFormat::Q6_K => {
                        let m4 = _mm256_set1_epi8(0x0f);
                        let m3 = _mm256_set1_epi8(3);
                        for sb in 0..nb / 8 {
                            let blk = std::slice::from_raw_parts(w.add(sb * bb), bb);
                            let d = f16_at(blk, 208);
                            for n in 0..2 {
                                let ql = blk.as_ptr().add(64 * n);
                                let qh = _mm256_loadu_si256(
                                    blk.as_ptr().add(128 + 32 * n) as *const __m256i
                                );
                                let l0 = _mm256_loadu_si256(ql as *const __m256i);
                                let l1 = _mm256_loadu_si256(ql.add(32) as *const __m256i);
                                let lows = [
                                    _mm256_and_si256(l0, m4),
                                    _mm256_and_si256(l1, m4),
                                    _mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                    _mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                ];
                                for (t, low) in lows.into_iter().enumerate() {
                                    let high = _mm256_and_si256(
                                        _mm256_srl_epi16(qh, _mm_cvtsi32_si128((2 * t) as i32)),
                                        m3,
                                    );
                                    let wq = _mm256_or_si256(low, _mm256_slli_epi16(high, 4));
                                    let j = 4 * n + t;
                                    let b = 8 * sb + j;
                                    let aq = _mm256_loadu_si256(q.add(32 * b) as *const __m256i);
                                    let s = $udot(wq, aq);
                                    // Lanes 0..4 are the first 16 values, 4..8 the rest.
                                    let lo = _mm256_castsi256_si128(s);
                                    let hi = _mm256_extracti128_si256(s, 1);
                                    let sc0 =
                                        _mm_set1_epi32(i32::from(blk[192 + q6_scale(j, 0)] as i8));
                                    let sc1 =
                                        _mm_set1_epi32(i32::from(blk[192 + q6_scale(j, 1)] as i8));
                                    let scaled = _mm256_set_m128i(
                                        _mm_mullo_epi32(hi, sc1),
                                        _mm_mullo_epi32(lo, sc0),
                                    );
                                    let corr = 32
                                        * (i32::from(blk[192 + q6_scale(j, 0)] as i8)
                                            * a.sum16[2 * b]
                                            + i32::from(blk[192 + q6_scale(j, 1)] as i8)
                                                * a.sum16[2 * b + 1]);
                                    let scale = d * a.d[b];
                                    acc = _mm256_fmadd_ps(
                                        _mm256_set1_ps(scale),
                                        _mm256_cvtepi32_ps(scaled),
                                        acc,
                                    );
                                    extra -= scale * corr as f32;
                                }
                            }
                        }
                    }
                    BlockFormat::Q2_K | BlockFormat::Q3_K => {
                        panic!("{format} has no product kernel: decode it first")
                    }
                }
            }
            hsum(acc) + extra
        }};
    }

    /// Q8_0 on AVX2: |w| times a with w's sign (ggml's sign trick); no
    /// correction (the second value multiplies the block's Σ a).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn q8_avx2(w: __m256i, a: __m256i) -> (__m256i, i32) {
        (udot_avx2(_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w)), 0)
    }

    /// Q8_0 on AVX-512 VNNI: (w + 128) times a, then less 128 Σ a.
    #[inline]
    #[target_feature(enable = "avx512vnni,avx512vl,avx2")]
    fn q8_avx512(w: __m256i, a: __m256i) -> (__m256i, i32) {
        let u = _mm256_xor_si256(w, _mm256_set1_epi8(-128));
        (udot_avx512(u, a), -128)
    }

    /// # Safety
    /// AVX2, FMA and F16C present; `row` and `a` agree in length.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_avx2(format: BlockFormat, row: &[u8], a: &Q8Acts) -> f32 {
        dot_body!(format, row, a, udot_avx2, bits_avx2, q8_avx2)
    }

    /// # Safety
    /// AVX-512 F/BW/VL/VNNI, AVX2, FMA and F16C present; lengths agree.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn dot_avx512(format: BlockFormat, row: &[u8], a: &Q8Acts) -> f32 {
        match format {
            // SAFETY: as for this function.
            BlockFormat::Q4_0 | BlockFormat::Q4_1 | BlockFormat::Q8_0 => unsafe {
                dot_pairs_avx512(format, row, a)
            },
            // SAFETY: as for this function.
            BlockFormat::F16 | BlockFormat::BF16 => unsafe { dot_half_avx512(format, row, a) },
            _ => dot_body!(format, row, a, udot_avx512, bits_avx512, q8_avx512),
        }
    }

    /// [`Q8Acts::set_keeping`]'s block loop, 32 values as two vectors: the
    /// same operations as the scalar loop (max of |x|, `d = amax / 127`,
    /// `1 / d`, `x · id` rounded half away from zero by truncation and the
    /// exact remainder), so the results are identical. Finite inputs only
    /// (the caller checks).
    ///
    /// # Safety
    /// AVX-512 F/BW present; `a`'s arrays sized for `x.len() / 32` blocks.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn quantise_avx512(x: &[f32], a: &mut Q8Acts) {
        let nb = x.len() / 32;
        let one = _mm512_set1_epi32(1);
        let half = _mm512_set1_ps(0.5);
        let mhalf = _mm512_set1_ps(-0.5);
        for b in 0..nb {
            // SAFETY: block `b` lies inside `x`, `a.q` and the per-block arrays.
            unsafe {
                let p = x.as_ptr().add(32 * b);
                let v = [_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16))];
                let amax =
                    _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v[0]), _mm512_abs_ps(v[1])));
                let d = amax / 127.0;
                let id = _mm512_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
                let mut sums = [0i32; 2];
                for h in 0..2 {
                    let r = _mm512_mul_ps(v[h], id);
                    let t = _mm512_cvttps_epi32(r);
                    let f = _mm512_sub_ps(r, _mm512_cvtepi32_ps(t));
                    let up = _mm512_cmp_ps_mask(f, half, _CMP_GE_OQ);
                    let down = _mm512_cmp_ps_mask(f, mhalf, _CMP_LE_OQ);
                    let q = _mm512_mask_add_epi32(t, up, t, one);
                    let q = _mm512_mask_sub_epi32(q, down, q, one);
                    sums[h] = _mm512_reduce_add_epi32(q);
                    _mm_storeu_si128(
                        a.q.as_mut_ptr().add(32 * b + 16 * h) as *mut __m128i,
                        _mm512_cvtepi32_epi8(q),
                    );
                }
                *a.d.get_unchecked_mut(b) = d;
                *a.sum.get_unchecked_mut(b) = sums[0] + sums[1];
                *a.sum16.get_unchecked_mut(2 * b) = sums[0];
                *a.sum16.get_unchecked_mut(2 * b + 1) = sums[1];
                *a.dsum.get_unchecked_mut(b) = d * (sums[0] + sums[1]) as f32;
                *a.sum8.get_unchecked_mut(8 * b) = sums[0] + sums[1];
            }
        }
    }

    /// An f16 scale through F16C.
    #[inline]
    #[target_feature(enable = "f16c")]
    unsafe fn h2f(p: *const u8) -> f32 {
        // SAFETY: the caller's block holds 2 bytes at `p`.
        let h = unsafe { std::ptr::read_unaligned(p as *const u16) };
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(h))))
    }

    /// Q4_0, Q4_1 and Q8_0 two blocks per 512-bit `vpdpbusd`, the offsets
    /// subtracted in i32 (from [`Q8Acts::sum8`]), two accumulators.
    ///
    /// # Safety
    /// As [`dot_avx512`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,avx2,fma,f16c")]
    unsafe fn dot_pairs_avx512(format: BlockFormat, row: &[u8], a: &Q8Acts) -> f32 {
        let bb = format.block_bytes();
        let nb = a.len() / 32;
        let (qs_at, has_min, shift) = match format {
            BlockFormat::Q4_0 => (2, false, 3),
            BlockFormat::Q4_1 => (4, true, 0),
            _ => (2, false, 7),
        };
        let q8 = format == BlockFormat::Q8_0;
        let w = row.as_ptr();
        let q = a.q.as_ptr();
        let mut acc = [_mm512_setzero_ps(); 2];
        let mut ex = [0f32; 2];
        // SAFETY (whole body): `row` holds `nb` blocks of `bb` bytes and `a`
        // 32 × nb values (8 × nb in `sum8`): every load stays inside them.
        unsafe {
            let load = |blk: *const u8| -> __m256i {
                if q8 {
                    _mm256_xor_si256(
                        _mm256_loadu_si256(blk.add(2) as *const __m256i),
                        _mm256_set1_epi8(-128),
                    )
                } else {
                    nibbles(blk.add(qs_at))
                }
            };
            for p in 0..nb / 2 {
                let b = 2 * p;
                let (b0, b1) = (w.add(b * bb), w.add((b + 1) * bb));
                let wq = _mm512_inserti64x4(_mm512_castsi256_si512(load(b0)), load(b1), 1);
                let aq = _mm512_loadu_si512(q.add(32 * b) as *const _);
                let mut s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wq, aq);
                if shift != 0 {
                    let c = _mm512_loadu_si512(a.sum8.as_ptr().add(8 * b) as *const _);
                    s = _mm512_sub_epi32(s, _mm512_sll_epi32(c, _mm_cvtsi32_si128(shift)));
                }
                let d0 = h2f(b0) * *a.d.get_unchecked(b);
                let d1 = h2f(b1) * *a.d.get_unchecked(b + 1);
                let sc = _mm512_insertf32x8(_mm512_set1_ps(d0), _mm256_set1_ps(d1), 1);
                acc[p & 1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), sc, acc[p & 1]);
                if has_min {
                    ex[p & 1] += h2f(b0.add(2)) * *a.dsum.get_unchecked(b)
                        + h2f(b1.add(2)) * *a.dsum.get_unchecked(b + 1);
                }
            }
            let mut total = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1])) + ex[0] + ex[1];
            if nb % 2 == 1 {
                let b = nb - 1;
                let b0 = w.add(b * bb);
                let mut s = udot_avx512(load(b0), _mm256_loadu_si256(q.add(32 * b) as *const _));
                if shift != 0 {
                    let c = _mm256_loadu_si256(a.sum8.as_ptr().add(8 * b) as *const _);
                    s = _mm256_sub_epi32(s, _mm256_sll_epi32(c, _mm_cvtsi32_si128(shift)));
                }
                let d0 = h2f(b0) * a.d[b];
                total += hsum(_mm256_mul_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(d0)));
                if has_min {
                    total += h2f(b0.add(2)) * a.dsum[b];
                }
            }
            total
        }
    }

    /// F16 and BF16 rows against the f32 activations, 16 per step, four
    /// accumulators.
    ///
    /// # Safety
    /// As [`dot_avx512`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn dot_half_avx512(format: BlockFormat, row: &[u8], a: &Q8Acts) -> f32 {
        let n = a.len();
        let w = row.as_ptr();
        let x = a.x.as_ptr();
        let f16 = format == BlockFormat::F16;
        let mut acc = [_mm512_setzero_ps(); 4];
        // SAFETY: `row` holds `n` 2-byte values and `a.x` `n` floats.
        unsafe {
            let widen = |i: usize| -> __m512 {
                let h = _mm256_loadu_si256(w.add(2 * i) as *const __m256i);
                if f16 {
                    _mm512_cvtph_ps(h)
                } else {
                    _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
                }
            };
            let mut i = 0;
            while i + 16 <= n {
                let j = (i / 16) & 3;
                acc[j] = _mm512_fmadd_ps(widen(i), _mm512_loadu_ps(x.add(i)), acc[j]);
                i += 16;
            }
            let mut total = _mm512_reduce_add_ps(_mm512_add_ps(
                _mm512_add_ps(acc[0], acc[1]),
                _mm512_add_ps(acc[2], acc[3]),
            ));
            for t in i..n {
                let h = u16::from_le_bytes([row[2 * t], row[2 * t + 1]]);
                let wv = if f16 {
                    f16_to_f32(h)
                } else {
                    f32::from_bits(u32::from(h) << 16)
                };
                total += wv * a.x[t];
            }
            total
        }
    }
}
