//! ggml tensor encodings and their dequantisation to f32.
//!
//! Block layouts follow ggml's `ggml-common.h` exactly (all little-endian;
//! `f16` is IEEE half precision):
//!
//! | type | elements/block | bytes | layout |
//! |---|---|---|---|
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
//! Arithmetic is f32 in the order of ggml's reference `dequantize_row_*`
//! (a build of ggml that contracts `d * q - m` into a fused multiply-add can
//! differ in the last bit).

use std::fmt;

/// A ggml tensor element type (the `type` field of a GGUF tensor info).
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// 32-bit float (id 0).
    F32,
    /// IEEE half-precision float (id 1).
    F16,
    /// 32 elements in 18-byte blocks (id 2).
    Q4_0,
    /// 32 elements in 20-byte blocks (id 3).
    Q4_1,
    /// 32 elements in 22-byte blocks (id 6).
    Q5_0,
    /// 32 elements in 24-byte blocks (id 7).
    Q5_1,
    /// 32 elements in 34-byte blocks (id 8).
    Q8_0,
    /// 32 elements in 36-byte blocks (id 9); not dequantised by kiln.
    Q8_1,
    /// 256 elements in 84-byte blocks (id 10).
    Q2_K,
    /// 256 elements in 110-byte blocks (id 11).
    Q3_K,
    /// 256 elements in 144-byte blocks (id 12).
    Q4_K,
    /// 256 elements in 176-byte blocks (id 13).
    Q5_K,
    /// 256 elements in 210-byte blocks (id 14).
    Q6_K,
    /// 256 elements in 292-byte blocks (id 15); not dequantised by kiln.
    Q8_K,
    /// 256 elements in 66-byte blocks (id 16); not dequantised by kiln.
    IQ2_XXS,
    /// 256 elements in 74-byte blocks (id 17); not dequantised by kiln.
    IQ2_XS,
    /// 256 elements in 98-byte blocks (id 18); not dequantised by kiln.
    IQ3_XXS,
    /// 256 elements in 50-byte blocks (id 19); not dequantised by kiln.
    IQ1_S,
    /// 32 elements in 18-byte blocks (id 20); not dequantised by kiln.
    IQ4_NL,
    /// 256 elements in 110-byte blocks (id 21); not dequantised by kiln.
    IQ3_S,
    /// 256 elements in 82-byte blocks (id 22); not dequantised by kiln.
    IQ2_S,
    /// 256 elements in 136-byte blocks (id 23); not dequantised by kiln.
    IQ4_XS,
    /// 8-bit integer (id 24); not dequantised by kiln.
    I8,
    /// 16-bit integer (id 25); not dequantised by kiln.
    I16,
    /// 32-bit integer (id 26); not dequantised by kiln.
    I32,
    /// 64-bit integer (id 27); not dequantised by kiln.
    I64,
    /// 64-bit float (narrowed to f32) (id 28).
    F64,
    /// 256 elements in 56-byte blocks (id 29); not dequantised by kiln.
    IQ1_M,
    /// bfloat16 (id 30).
    BF16,
    /// 256 elements in 54-byte blocks (id 34); not dequantised by kiln.
    TQ1_0,
    /// 256 elements in 66-byte blocks (id 35); not dequantised by kiln.
    TQ2_0,
    /// 32 elements in 17-byte blocks (id 39); not dequantised by kiln.
    MXFP4,
    /// 64 elements in 36-byte blocks (id 40); not dequantised by kiln.
    NVFP4,
    /// 128 elements in 18-byte blocks (id 41); not dequantised by kiln.
    Q1_0,
}

/// Dequantise one block: `block.len()` is the type size, `out.len()` the block size.
type BlockFn = fn(block: &[u8], out: &mut [f32]);

/// One row of the type table.
struct TypeInfo {
    ty: GgmlType,
    id: u32,
    name: &'static str,
    block_size: u64,
    type_size: u64,
    dequant: Option<BlockFn>,
}

/// Every type ggml has assigned an id (retired ids 4, 5, 31-33, 36-38 are
/// absent), with its block geometry and, where supported, its dequantiser.
static TYPES: &[TypeInfo] = &[
    t(GgmlType::F32, 0, "F32", 1, 4, Some(deq_f32)),
    t(GgmlType::F16, 1, "F16", 1, 2, Some(deq_f16)),
    t(GgmlType::Q4_0, 2, "Q4_0", 32, 18, Some(deq_q4_0)),
    t(GgmlType::Q4_1, 3, "Q4_1", 32, 20, Some(deq_q4_1)),
    t(GgmlType::Q5_0, 6, "Q5_0", 32, 22, Some(deq_q5_0)),
    t(GgmlType::Q5_1, 7, "Q5_1", 32, 24, Some(deq_q5_1)),
    t(GgmlType::Q8_0, 8, "Q8_0", 32, 34, Some(deq_q8_0)),
    t(GgmlType::Q8_1, 9, "Q8_1", 32, 36, None),
    t(GgmlType::Q2_K, 10, "Q2_K", 256, 84, Some(deq_q2_k)),
    t(GgmlType::Q3_K, 11, "Q3_K", 256, 110, Some(deq_q3_k)),
    t(GgmlType::Q4_K, 12, "Q4_K", 256, 144, Some(deq_q4_k)),
    t(GgmlType::Q5_K, 13, "Q5_K", 256, 176, Some(deq_q5_k)),
    t(GgmlType::Q6_K, 14, "Q6_K", 256, 210, Some(deq_q6_k)),
    t(GgmlType::Q8_K, 15, "Q8_K", 256, 292, None),
    t(GgmlType::IQ2_XXS, 16, "IQ2_XXS", 256, 66, None),
    t(GgmlType::IQ2_XS, 17, "IQ2_XS", 256, 74, None),
    t(GgmlType::IQ3_XXS, 18, "IQ3_XXS", 256, 98, None),
    t(GgmlType::IQ1_S, 19, "IQ1_S", 256, 50, None),
    t(GgmlType::IQ4_NL, 20, "IQ4_NL", 32, 18, None),
    t(GgmlType::IQ3_S, 21, "IQ3_S", 256, 110, None),
    t(GgmlType::IQ2_S, 22, "IQ2_S", 256, 82, None),
    t(GgmlType::IQ4_XS, 23, "IQ4_XS", 256, 136, None),
    t(GgmlType::I8, 24, "I8", 1, 1, None),
    t(GgmlType::I16, 25, "I16", 1, 2, None),
    t(GgmlType::I32, 26, "I32", 1, 4, None),
    t(GgmlType::I64, 27, "I64", 1, 8, None),
    t(GgmlType::F64, 28, "F64", 1, 8, Some(deq_f64)),
    t(GgmlType::IQ1_M, 29, "IQ1_M", 256, 56, None),
    t(GgmlType::BF16, 30, "BF16", 1, 2, Some(deq_bf16)),
    t(GgmlType::TQ1_0, 34, "TQ1_0", 256, 54, None),
    t(GgmlType::TQ2_0, 35, "TQ2_0", 256, 66, None),
    t(GgmlType::MXFP4, 39, "MXFP4", 32, 17, None),
    t(GgmlType::NVFP4, 40, "NVFP4", 64, 36, None),
    t(GgmlType::Q1_0, 41, "Q1_0", 128, 18, None),
];

const fn t(
    ty: GgmlType,
    id: u32,
    name: &'static str,
    block_size: u64,
    type_size: u64,
    dequant: Option<BlockFn>,
) -> TypeInfo {
    TypeInfo {
        ty,
        id,
        name,
        block_size,
        type_size,
        dequant,
    }
}

impl GgmlType {
    fn info(self) -> &'static TypeInfo {
        TYPES
            .iter()
            .find(|i| i.ty == self)
            .expect("every GgmlType has a row in TYPES")
    }

    /// The type with ggml id `id`, if known.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        TYPES.iter().find(|i| i.id == id).map(|i| i.ty)
    }

    /// ggml's numeric id.
    pub fn id(self) -> u32 {
        self.info().id
    }

    /// ggml's name (`Q4_K`).
    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// Elements per block (1 for plain types).
    pub fn block_size(self) -> u64 {
        self.info().block_size
    }

    /// Bytes per block.
    pub fn type_size(self) -> u64 {
        self.info().type_size
    }

    /// Whether [`dequantize`] handles this type.
    pub fn is_supported(self) -> bool {
        self.info().dequant.is_some()
    }

    /// The names of the types [`dequantize`] handles, comma-separated.
    pub fn supported_list() -> String {
        let names: Vec<&str> = TYPES
            .iter()
            .filter(|i| i.dequant.is_some())
            .map(|i| i.name)
            .collect();
        names.join(", ")
    }

    /// `NAME (id)` for every known type, comma-separated.
    pub fn known_list() -> String {
        let names: Vec<String> = TYPES
            .iter()
            .map(|i| format!("{} ({})", i.name, i.id))
            .collect();
        names.join(", ")
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Dequantise `n` elements of type `ty` from `bytes` (exactly
/// `n / block_size * type_size` bytes) to f32. Errors (never panics) on an
/// unsupported type, an `n` that is not a whole number of blocks, or a byte
/// length that does not match.
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>, String> {
    let info = ty.info();
    let Some(block_fn) = info.dequant else {
        return Err(format!(
            "unsupported GGUF tensor type {} (id {}); supported: {}",
            info.name,
            info.id,
            GgmlType::supported_list()
        ));
    };
    let (bs, ts) = (info.block_size as usize, info.type_size as usize);
    if !n.is_multiple_of(bs) {
        return Err(format!(
            "{n} elements is not a whole number of {} blocks of {bs}",
            info.name
        ));
    }
    let expected = (n / bs).checked_mul(ts);
    if expected != Some(bytes.len()) {
        return Err(format!(
            "{n} elements of {} need {} bytes, got {}",
            info.name,
            expected.map_or_else(|| "more than usize::MAX".to_string(), |e| e.to_string()),
            bytes.len()
        ));
    }
    let mut out = vec![0f32; n];
    for (block, dst) in bytes.chunks_exact(ts).zip(out.chunks_exact_mut(bs)) {
        block_fn(block, dst);
    }
    Ok(out)
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

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16_to_f32(le16(b, at))
}

fn deq_f32(b: &[u8], out: &mut [f32]) {
    out[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
}

fn deq_f16(b: &[u8], out: &mut [f32]) {
    out[0] = f16_at(b, 0);
}

fn deq_bf16(b: &[u8], out: &mut [f32]) {
    out[0] = f32::from_bits(u32::from(le16(b, 0)) << 16);
}

fn deq_f64(b: &[u8], out: &mut [f32]) {
    let v = f64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
    out[0] = v as f32;
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
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
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

#[cfg(test)]
mod tests;
