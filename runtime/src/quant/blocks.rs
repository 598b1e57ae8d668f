//! Block-quantised weight formats (ggml's layouts) and their decoding to f32.
//!
//! These are storage formats of weights the runtime executes from directly
//! ([`super::QuantMatrix`]); a file reader maps its own type ids onto them.
//! Block layouts follow ggml's `ggml-common.h` exactly (all little-endian;
//! `f16` is IEEE half precision):
//!
//! | format | elements/block | bytes | layout |
//! |---|---|---|---|
//! | F16 | 1 | 2 | IEEE half |
//! | BF16 | 1 | 2 | bfloat16 (the top half of an f32) |
//! | Q4_0 | 32 | 18 | `d: f16`, 16 bytes: low nibbles are elements 0..16, high nibbles 16..32; `x = (q - 8) d` |
//! | Q4_1 | 32 | 20 | `d: f16, m: f16`, 16 nibble bytes as Q4_0; `x = q d + m` |
//! | Q5_0 | 32 | 22 | `d: f16, qh: u32` (bit j = 5th bit of element j), 16 nibble bytes; `x = (q - 16) d` |
//! | Q5_1 | 32 | 24 | `d: f16, m: f16, qh: u32`, 16 nibble bytes; `x = q d + m` |
//! | Q8_0 | 32 | 34 | `d: f16`, 32 × i8; `x = q d` |
//! | Q2_K | 256 | 84 | `scales[16]` (4-bit scale, 4-bit min), `qs[64]` (2-bit), `d, dmin: f16` |
//! | Q3_K | 256 | 110 | `hmask[32]`, `qs[64]` (2-bit), `scales[12]` (16 × 6-bit), `d: f16` |
//! | Q4_K | 256 | 144 | `d, dmin: f16`, `scales[12]` (8 × 6-bit scale + min), `qs[128]` |
//! | Q5_K | 256 | 176 | `d, dmin: f16`, `scales[12]`, `qh[32]`, `qs[128]` |
//! | Q6_K | 256 | 210 | `ql[128]`, `qh[64]`, `scales[16]: i8`, `d: f16` |
//!
//! Decoding is f32 in the order of ggml's reference `dequantize_row_*` (a
//! build of ggml that contracts `d * q - m` into a fused multiply-add can
//! differ in the last bit).

use std::fmt;

/// A storage format of weights, decoded block by block.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BlockFormat {
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// 4-bit, 32 per block, one scale.
    Q4_0,
    /// 4-bit, 32 per block, scale and minimum.
    Q4_1,
    /// 5-bit, 32 per block, one scale.
    Q5_0,
    /// 5-bit, 32 per block, scale and minimum.
    Q5_1,
    /// 8-bit, 32 per block, one scale.
    Q8_0,
    /// 2-bit super-blocks of 256 (decoded only: no product kernel).
    Q2_K,
    /// 3-bit super-blocks of 256 (decoded only: no product kernel).
    Q3_K,
    /// 4-bit super-blocks of 256 with 6-bit sub-block scales and minima.
    Q4_K,
    /// 5-bit super-blocks of 256 with 6-bit sub-block scales and minima.
    Q5_K,
    /// 6-bit super-blocks of 256 with 8-bit sub-block scales.
    Q6_K,
}

impl BlockFormat {
    /// Every format.
    pub const ALL: [BlockFormat; 12] = [
        BlockFormat::F16,
        BlockFormat::BF16,
        BlockFormat::Q4_0,
        BlockFormat::Q4_1,
        BlockFormat::Q5_0,
        BlockFormat::Q5_1,
        BlockFormat::Q8_0,
        BlockFormat::Q2_K,
        BlockFormat::Q3_K,
        BlockFormat::Q4_K,
        BlockFormat::Q5_K,
        BlockFormat::Q6_K,
    ];

    /// ggml's name (`Q4_K`).
    pub fn name(self) -> &'static str {
        match self {
            BlockFormat::F16 => "F16",
            BlockFormat::BF16 => "BF16",
            BlockFormat::Q4_0 => "Q4_0",
            BlockFormat::Q4_1 => "Q4_1",
            BlockFormat::Q5_0 => "Q5_0",
            BlockFormat::Q5_1 => "Q5_1",
            BlockFormat::Q8_0 => "Q8_0",
            BlockFormat::Q2_K => "Q2_K",
            BlockFormat::Q3_K => "Q3_K",
            BlockFormat::Q4_K => "Q4_K",
            BlockFormat::Q5_K => "Q5_K",
            BlockFormat::Q6_K => "Q6_K",
        }
    }

    /// The format named `name` (ggml's spelling).
    pub fn from_name(name: &str) -> Option<BlockFormat> {
        BlockFormat::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Elements per block.
    pub fn block_len(self) -> usize {
        match self {
            BlockFormat::F16 | BlockFormat::BF16 => 1,
            BlockFormat::Q4_0
            | BlockFormat::Q4_1
            | BlockFormat::Q5_0
            | BlockFormat::Q5_1
            | BlockFormat::Q8_0 => 32,
            _ => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            BlockFormat::F16 | BlockFormat::BF16 => 2,
            BlockFormat::Q4_0 => 18,
            BlockFormat::Q4_1 => 20,
            BlockFormat::Q5_0 => 22,
            BlockFormat::Q5_1 => 24,
            BlockFormat::Q8_0 => 34,
            BlockFormat::Q2_K => 84,
            BlockFormat::Q3_K => 110,
            BlockFormat::Q4_K => 144,
            BlockFormat::Q5_K => 176,
            BlockFormat::Q6_K => 210,
        }
    }

    /// Bytes of a row of `cols` elements, if `cols` is whole blocks.
    pub fn row_bytes(self, cols: usize) -> Option<usize> {
        cols.is_multiple_of(self.block_len())
            .then(|| cols / self.block_len() * self.block_bytes())
    }

    /// Whether the product kernels ([`super::dot`]) read this format
    /// directly (the others are decoded to f32 first).
    pub fn has_kernel(self) -> bool {
        !matches!(self, BlockFormat::Q2_K | BlockFormat::Q3_K)
    }

    /// Decode whole blocks: `bytes` is `out.len() / block_len` blocks.
    ///
    /// # Panics
    /// When the lengths disagree (callers check them: [`BlockFormat::row_bytes`]).
    pub fn decode(self, bytes: &[u8], out: &mut [f32]) {
        let (bl, bb) = (self.block_len(), self.block_bytes());
        assert_eq!(bytes.len() / bb * bl, out.len(), "{self}: block count");
        assert!(bytes.len().is_multiple_of(bb) && out.len().is_multiple_of(bl));
        match self {
            BlockFormat::F16 => {
                #[cfg(target_arch = "x86_64")]
                if is_x86_feature_detected!("avx512f") {
                    // SAFETY: AVX-512F is present; lengths checked above.
                    unsafe { f16_rows_avx512(bytes, out) };
                    return;
                }
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
                }
            }
            BlockFormat::BF16 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = bf16_to_f32(u16::from_le_bytes([b[0], b[1]]));
                }
            }
            _ => {
                let f = match self {
                    BlockFormat::Q4_0 => deq_q4_0,
                    BlockFormat::Q4_1 => deq_q4_1,
                    BlockFormat::Q5_0 => deq_q5_0,
                    BlockFormat::Q5_1 => deq_q5_1,
                    BlockFormat::Q8_0 => deq_q8_0,
                    BlockFormat::Q2_K => deq_q2_k,
                    BlockFormat::Q3_K => deq_q3_k,
                    BlockFormat::Q4_K => deq_q4_k,
                    BlockFormat::Q5_K => deq_q5_k,
                    _ => deq_q6_k,
                };
                for (b, o) in bytes.chunks_exact(bb).zip(out.chunks_exact_mut(bl)) {
                    f(b, o);
                }
            }
        }
    }
}

impl fmt::Display for BlockFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// f16 values to f32, 16 at a time (`vcvtph2ps`, exact like
/// [`f16_to_f32`]).
///
/// # Safety
/// AVX-512F present; `bytes` holds `2 · out.len()` bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn f16_rows_avx512(bytes: &[u8], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = out.len();
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: 16 values at `i` lie inside both slices.
        unsafe {
            let h = _mm256_loadu_si256(bytes.as_ptr().add(2 * i) as *const __m256i);
            _mm512_storeu_ps(out.as_mut_ptr().add(i), _mm512_cvtph_ps(h));
        }
        i += 16;
    }
    for t in i..n {
        out[t] = f16_to_f32(u16::from_le_bytes([bytes[2 * t], bytes[2 * t + 1]]));
    }
}

/// bfloat16 to f32 (exact).
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// IEEE half precision to f32 (exact: every f16 is representable).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h & 0x8000) << 16;
    let exp = u32::from((h >> 10) & 0x1f);
    let mant = u32::from(h & 0x03ff);
    let bits = match (exp, mant) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: m × 2^-24, renormalised.
            let shift = m.leading_zeros() - 21; // bring the top set bit to bit 10
            let m = (m << shift) & 0x03ff;
            let e = 113 - shift; // 127 - 15 + 1 - shift
            sign | (e << 23) | (m << 13)
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 112) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

pub(super) fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub(super) fn f16_at(b: &[u8], at: usize) -> f32 {
    f16_to_f32(le16(b, at))
}

fn deq_q4_0(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    for j in 0..16 {
        out[j] = ((qs[j] & 0x0f) as i32 - 8) as f32 * d;
        out[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
    }
}

fn deq_q4_1(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qs = &b[4..20];
    for j in 0..16 {
        out[j] = (qs[j] & 0x0f) as f32 * d + m;
        out[j + 16] = (qs[j] >> 4) as f32 * d + m;
    }
}

fn deq_q5_0(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..22];
    for j in 0..16 {
        let xh0 = ((qh >> j) << 4) & 0x10;
        let xh1 = (qh >> (j + 12)) & 0x10;
        let x0 = ((u32::from(qs[j]) & 0x0f) | xh0) as i32 - 16;
        let x1 = ((u32::from(qs[j]) >> 4) | xh1) as i32 - 16;
        out[j] = x0 as f32 * d;
        out[j + 16] = x1 as f32 * d;
    }
}

fn deq_q5_1(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let qs = &b[8..24];
    for j in 0..16 {
        let xh0 = ((qh >> j) << 4) & 0x10;
        let xh1 = (qh >> (j + 12)) & 0x10;
        let x0 = (u32::from(qs[j]) & 0x0f) | xh0;
        let x1 = (u32::from(qs[j]) >> 4) | xh1;
        out[j] = x0 as f32 * d + m;
        out[j + 16] = x1 as f32 * d + m;
    }
}

fn deq_q8_0(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    for (o, &q) in out.iter_mut().zip(&b[2..34]) {
        *o = f32::from(q as i8) * d;
    }
}

fn deq_q2_k(b: &[u8], out: &mut [f32]) {
    let scales = &b[0..16];
    let qs = &b[16..80];
    let d = f16_at(b, 80);
    let min = f16_at(b, 82);
    let mut y = 0;
    let mut is = 0;
    for n in 0..2 {
        let q = &qs[32 * n..32 * n + 32];
        for shift in [0, 2, 4, 6] {
            for half in 0..2 {
                let sc = scales[is];
                is += 1;
                let dl = d * f32::from(sc & 0x0f);
                let ml = min * f32::from(sc >> 4);
                for l in 0..16 {
                    out[y] = dl * f32::from((q[16 * half + l] >> shift) & 3) - ml;
                    y += 1;
                }
            }
        }
    }
}

fn deq_q3_k(b: &[u8], out: &mut [f32]) {
    let hmask = &b[0..32];
    let qs = &b[32..96];
    let raw = &b[96..108];
    let d_all = f16_at(b, 108);
    // Unpack 16 6-bit scales: low 4 bits from bytes 0..8, high 2 bits from 8..12.
    let kmask1 = 0x0303_0303u32;
    let kmask2 = 0x0f0f_0f0fu32;
    let w =
        |i: usize| u32::from_le_bytes([raw[4 * i], raw[4 * i + 1], raw[4 * i + 2], raw[4 * i + 3]]);
    let (a0, a1, tmp) = (w(0), w(1), w(2));
    let aux = [
        (a0 & kmask2) | ((tmp & kmask1) << 4),
        (a1 & kmask2) | (((tmp >> 2) & kmask1) << 4),
        ((a0 >> 4) & kmask2) | (((tmp >> 4) & kmask1) << 4),
        ((a1 >> 4) & kmask2) | (((tmp >> 6) & kmask1) << 4),
    ];
    let scale = |i: usize| (aux[i / 4] >> (8 * (i % 4))) as u8 as i8;
    let mut y = 0;
    let mut is = 0;
    let mut m = 1u8;
    for n in 0..2 {
        let q = &qs[32 * n..32 * n + 32];
        for shift in [0, 2, 4, 6] {
            for half in 0..2 {
                let dl = d_all * f32::from(i16::from(scale(is)) - 32);
                is += 1;
                for l in 0..16 {
                    let k = 16 * half + l;
                    let low = ((q[k] >> shift) & 3) as i8;
                    let high = if hmask[k] & m != 0 { 0 } else { 4 };
                    out[y] = dl * f32::from(low - high);
                    y += 1;
                }
            }
            m <<= 1;
        }
    }
}

/// The `j`-th 6-bit (scale, min) pair of a Q4_K/Q5_K block's `scales[12]`.
pub fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

fn deq_q4_k(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let min = f16_at(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..144];
    for (chunk, q) in qs.chunks_exact(32).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, m1) = (d * f32::from(sc1), min * f32::from(m1));
        let (d2, m2) = (d * f32::from(sc2), min * f32::from(m2));
        let y = &mut out[64 * chunk..64 * chunk + 64];
        for l in 0..32 {
            y[l] = d1 * f32::from(q[l] & 0x0f) - m1;
            y[l + 32] = d2 * f32::from(q[l] >> 4) - m2;
        }
    }
}

fn deq_q5_k(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let min = f16_at(b, 2);
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for (chunk, ql) in qs.chunks_exact(32).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, m1) = (d * f32::from(sc1), min * f32::from(m1));
        let (d2, m2) = (d * f32::from(sc2), min * f32::from(m2));
        let (u1, u2) = (1u8 << (2 * chunk), 2u8 << (2 * chunk));
        let y = &mut out[64 * chunk..64 * chunk + 64];
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            y[l] = d1 * f32::from((ql[l] & 0x0f) + h1) - m1;
            y[l + 32] = d2 * f32::from((ql[l] >> 4) + h2) - m2;
        }
    }
}

fn deq_q6_k(b: &[u8], out: &mut [f32]) {
    let ql = &b[0..128];
    let qh = &b[128..192];
    let sc = &b[192..208];
    let d = f16_at(b, 208);
    for n in 0..2 {
        let (ql, qh) = (&ql[64 * n..64 * n + 64], &qh[32 * n..32 * n + 32]);
        let sc = &sc[8 * n..8 * n + 8];
        let y = &mut out[128 * n..128 * n + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i8 - 32;
            let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
            let s = |k: usize| f32::from(sc[is + k] as i8);
            y[l] = d * s(0) * f32::from(q1);
            y[l + 32] = d * s(2) * f32::from(q2);
            y[l + 64] = d * s(4) * f32::from(q3);
            y[l + 96] = d * s(6) * f32::from(q4);
        }
    }
}
