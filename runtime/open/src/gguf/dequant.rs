//! ggml tensor types (the `type` field of a GGUF tensor info) and their
//! decoding to f32. The block-quantised types are the runtime's weight
//! formats ([`kiln_runtime::quant::BlockFormat`], which documents their
//! layouts and decodes them); this table adds ggml's ids and the plain types
//! only files use (f32, f64).

pub use kiln_runtime::quant::{BlockFormat, f16_to_f32};
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

/// Dequantise one element of a plain type: `block.len()` is the type size.
type PlainFn = fn(block: &[u8], out: &mut [f32]);

/// How a type decodes to f32.
#[derive(Clone, Copy)]
enum Decode {
    /// kiln cannot read it.
    No,
    /// A plain type only files use (f32, f64).
    Plain(PlainFn),
    /// A weight format the runtime executes from ([`BlockFormat`]).
    Block(BlockFormat),
}

/// One row of the type table.
struct TypeInfo {
    ty: GgmlType,
    id: u32,
    name: &'static str,
    block_size: u64,
    type_size: u64,
    dequant: Decode,
}

/// Every type ggml has assigned an id (retired ids 4, 5, 31-33, 36-38 are
/// absent), with its block geometry and, where supported, its dequantiser.
static TYPES: &[TypeInfo] = &[
    t(GgmlType::F32, 0, "F32", 1, 4, Decode::Plain(deq_f32)),
    t(
        GgmlType::F16,
        1,
        "F16",
        1,
        2,
        Decode::Block(BlockFormat::F16),
    ),
    t(
        GgmlType::Q4_0,
        2,
        "Q4_0",
        32,
        18,
        Decode::Block(BlockFormat::Q4_0),
    ),
    t(
        GgmlType::Q4_1,
        3,
        "Q4_1",
        32,
        20,
        Decode::Block(BlockFormat::Q4_1),
    ),
    t(
        GgmlType::Q5_0,
        6,
        "Q5_0",
        32,
        22,
        Decode::Block(BlockFormat::Q5_0),
    ),
    t(
        GgmlType::Q5_1,
        7,
        "Q5_1",
        32,
        24,
        Decode::Block(BlockFormat::Q5_1),
    ),
    t(
        GgmlType::Q8_0,
        8,
        "Q8_0",
        32,
        34,
        Decode::Block(BlockFormat::Q8_0),
    ),
    t(GgmlType::Q8_1, 9, "Q8_1", 32, 36, Decode::No),
    t(
        GgmlType::Q2_K,
        10,
        "Q2_K",
        256,
        84,
        Decode::Block(BlockFormat::Q2_K),
    ),
    t(
        GgmlType::Q3_K,
        11,
        "Q3_K",
        256,
        110,
        Decode::Block(BlockFormat::Q3_K),
    ),
    t(
        GgmlType::Q4_K,
        12,
        "Q4_K",
        256,
        144,
        Decode::Block(BlockFormat::Q4_K),
    ),
    t(
        GgmlType::Q5_K,
        13,
        "Q5_K",
        256,
        176,
        Decode::Block(BlockFormat::Q5_K),
    ),
    t(
        GgmlType::Q6_K,
        14,
        "Q6_K",
        256,
        210,
        Decode::Block(BlockFormat::Q6_K),
    ),
    t(GgmlType::Q8_K, 15, "Q8_K", 256, 292, Decode::No),
    t(GgmlType::IQ2_XXS, 16, "IQ2_XXS", 256, 66, Decode::No),
    t(GgmlType::IQ2_XS, 17, "IQ2_XS", 256, 74, Decode::No),
    t(GgmlType::IQ3_XXS, 18, "IQ3_XXS", 256, 98, Decode::No),
    t(GgmlType::IQ1_S, 19, "IQ1_S", 256, 50, Decode::No),
    t(GgmlType::IQ4_NL, 20, "IQ4_NL", 32, 18, Decode::No),
    t(GgmlType::IQ3_S, 21, "IQ3_S", 256, 110, Decode::No),
    t(GgmlType::IQ2_S, 22, "IQ2_S", 256, 82, Decode::No),
    t(GgmlType::IQ4_XS, 23, "IQ4_XS", 256, 136, Decode::No),
    t(GgmlType::I8, 24, "I8", 1, 1, Decode::No),
    t(GgmlType::I16, 25, "I16", 1, 2, Decode::No),
    t(GgmlType::I32, 26, "I32", 1, 4, Decode::No),
    t(GgmlType::I64, 27, "I64", 1, 8, Decode::No),
    t(GgmlType::F64, 28, "F64", 1, 8, Decode::Plain(deq_f64)),
    t(GgmlType::IQ1_M, 29, "IQ1_M", 256, 56, Decode::No),
    t(
        GgmlType::BF16,
        30,
        "BF16",
        1,
        2,
        Decode::Block(BlockFormat::BF16),
    ),
    t(GgmlType::TQ1_0, 34, "TQ1_0", 256, 54, Decode::No),
    t(GgmlType::TQ2_0, 35, "TQ2_0", 256, 66, Decode::No),
    t(GgmlType::MXFP4, 39, "MXFP4", 32, 17, Decode::No),
    t(GgmlType::NVFP4, 40, "NVFP4", 64, 36, Decode::No),
    t(GgmlType::Q1_0, 41, "Q1_0", 128, 18, Decode::No),
];

const fn t(
    ty: GgmlType,
    id: u32,
    name: &'static str,
    block_size: u64,
    type_size: u64,
    dequant: Decode,
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

    /// The runtime's weight format of this type, where the runtime can
    /// execute from it ([`kiln_runtime::quant`]).
    pub fn block_format(self) -> Option<BlockFormat> {
        match self.info().dequant {
            Decode::Block(f) => Some(f),
            _ => None,
        }
    }

    /// Whether [`dequantize`] handles this type.
    pub fn is_supported(self) -> bool {
        !matches!(self.info().dequant, Decode::No)
    }

    /// The names of the types [`dequantize`] handles, comma-separated.
    pub fn supported_list() -> String {
        let names: Vec<&str> = TYPES
            .iter()
            .filter(|i| !matches!(i.dequant, Decode::No))
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
    if matches!(info.dequant, Decode::No) {
        return Err(format!(
            "unsupported GGUF tensor type {} (id {}); supported: {}",
            info.name,
            info.id,
            GgmlType::supported_list()
        ));
    }
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
    match info.dequant {
        Decode::Plain(f) => {
            for (block, dst) in bytes.chunks_exact(ts).zip(out.chunks_exact_mut(bs)) {
                f(block, dst);
            }
        }
        Decode::Block(format) => format.decode(bytes, &mut out),
        Decode::No => unreachable!("refused above"),
    }
    Ok(out)
}

fn deq_f32(b: &[u8], out: &mut [f32]) {
    out[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
}

fn deq_f64(b: &[u8], out: &mut [f32]) {
    let v = f64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
    out[0] = v as f32;
}

#[cfg(test)]
mod tests;
