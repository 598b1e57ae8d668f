//! The GGUF container: header, metadata key/values, tensor infos and the
//! (memory-mapped) tensor data section.
//!
//! Layout (little-endian): magic `GGUF`, `u32` version (2 or 3), `u64`
//! tensor count, `u64` metadata count; the metadata (`string` key, `u32`
//! value type, value); the tensor infos (`string` name, `u32` n_dims,
//! n_dims × `u64` ne, `u32` ggml type, `u64` offset into the data section);
//! padding to `general.alignment` (default 32); the data section. A string
//! is a `u64` byte length and UTF-8 bytes; an array is a `u32` element type,
//! a `u64` count and the elements.

use super::dequant::{self, GgmlType};
use super::{GgufError, Result};
use kiln_runtime::Tensor;
use kiln_runtime::quant::{QuantMatrix, SharedBytes};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// The alignment of tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most this many dimensions.
const MAX_DIMS: u32 = 4;
/// Arrays of arrays deeper than this are rejected (no file needs more than 2).
const MAX_ARRAY_DEPTH: usize = 8;

/// The type tag of a metadata value (GGUF's `gguf_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetadataType {
    /// GGUF type `u8`.
    U8,
    /// GGUF type `i8`.
    I8,
    /// GGUF type `u16`.
    U16,
    /// GGUF type `i16`.
    I16,
    /// GGUF type `u32`.
    U32,
    /// GGUF type `i32`.
    I32,
    /// GGUF type `f32`.
    F32,
    /// GGUF type `bool` (one byte, 0 or 1).
    Bool,
    /// GGUF type UTF-8 string (u64 length + bytes).
    String,
    /// GGUF type array of one element type.
    Array,
    /// GGUF type `u64`.
    U64,
    /// GGUF type `i64`.
    I64,
    /// GGUF type `f64`.
    F64,
}

impl MetadataType {
    fn from_id(id: u32) -> Option<MetadataType> {
        use MetadataType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// The fewest bytes one value of this type occupies in a file (a string
    /// is at least its length field, an array its type and count).
    fn min_size(self) -> u64 {
        use MetadataType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }

    /// The lowercase name used in error messages (`u32`, `string`, ...).
    pub fn name(self) -> &'static str {
        use MetadataType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            String => "string",
            Array => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }
}

impl fmt::Display for MetadataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A `u8` value.
    U8(u8),
    /// A `i8` value.
    I8(i8),
    /// A `u16` value.
    U16(u16),
    /// A `i16` value.
    I16(i16),
    /// A `u32` value.
    U32(u32),
    /// A `i32` value.
    I32(i32),
    /// A `f32` value.
    F32(f32),
    /// A `bool` (one byte, 0 or 1) value.
    Bool(bool),
    /// Text; invalid UTF-8 in a value is replaced by U+FFFD.
    String(String),
    /// A nested array.
    Array(Array),
    /// A `u64` value.
    U64(u64),
    /// A `i64` value.
    I64(i64),
    /// A `f64` value.
    F64(f64),
}

/// A metadata array, stored by element type (so a million `u8`s take a
/// megabyte, not a million [`Value`]s).
#[derive(Debug, Clone, PartialEq)]
pub enum Array {
    /// Elements of type `u8`.
    U8(Vec<u8>),
    /// Elements of type `i8`.
    I8(Vec<i8>),
    /// Elements of type `u16`.
    U16(Vec<u16>),
    /// Elements of type `i16`.
    I16(Vec<i16>),
    /// Elements of type `u32`.
    U32(Vec<u32>),
    /// Elements of type `i32`.
    I32(Vec<i32>),
    /// Elements of type `f32`.
    F32(Vec<f32>),
    /// Elements of type `bool` (one byte, 0 or 1).
    Bool(Vec<bool>),
    /// Strings (invalid UTF-8 replaced by U+FFFD).
    String(Vec<String>),
    /// An array of arrays (each may have its own element type).
    Array(Vec<Array>),
    /// Elements of type `u64`.
    U64(Vec<u64>),
    /// Elements of type `i64`.
    I64(Vec<i64>),
    /// Elements of type `f64`.
    F64(Vec<f64>),
}

impl Value {
    /// The value's type tag.
    pub fn ty(&self) -> MetadataType {
        match self {
            Value::U8(_) => MetadataType::U8,
            Value::I8(_) => MetadataType::I8,
            Value::U16(_) => MetadataType::U16,
            Value::I16(_) => MetadataType::I16,
            Value::U32(_) => MetadataType::U32,
            Value::I32(_) => MetadataType::I32,
            Value::F32(_) => MetadataType::F32,
            Value::Bool(_) => MetadataType::Bool,
            Value::String(_) => MetadataType::String,
            Value::Array(_) => MetadataType::Array,
            Value::U64(_) => MetadataType::U64,
            Value::I64(_) => MetadataType::I64,
            Value::F64(_) => MetadataType::F64,
        }
    }

    /// A short description for error messages: `u32`, `array of string`.
    pub fn describe(&self) -> String {
        match self {
            Value::Array(a) => format!("array of {}", a.elem_type()),
            v => v.ty().to_string(),
        }
    }

    /// Any integer type holding a non-negative value.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer or float type, as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// A bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// A string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// An array.
    pub fn as_array(&self) -> Option<&Array> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

impl Array {
    /// The element type.
    pub fn elem_type(&self) -> MetadataType {
        match self {
            Array::U8(_) => MetadataType::U8,
            Array::I8(_) => MetadataType::I8,
            Array::U16(_) => MetadataType::U16,
            Array::I16(_) => MetadataType::I16,
            Array::U32(_) => MetadataType::U32,
            Array::I32(_) => MetadataType::I32,
            Array::F32(_) => MetadataType::F32,
            Array::Bool(_) => MetadataType::Bool,
            Array::String(_) => MetadataType::String,
            Array::Array(_) => MetadataType::Array,
            Array::U64(_) => MetadataType::U64,
            Array::I64(_) => MetadataType::I64,
            Array::F64(_) => MetadataType::F64,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::String(v) => v.len(),
            Array::Array(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F64(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements of a string array.
    pub fn as_strings(&self) -> Option<&[String]> {
        match self {
            Array::String(v) => Some(v),
            _ => None,
        }
    }

    /// The elements of any integer array, as i64 (`None` for other element
    /// types or a `u64` too large for i64).
    pub fn to_i64s(&self) -> Option<Vec<i64>> {
        fn conv<T: Copy>(v: &[T], f: impl Fn(T) -> Option<i64>) -> Option<Vec<i64>> {
            v.iter().map(|&x| f(x)).collect()
        }
        match self {
            Array::U8(v) => conv(v, |x| Some(x.into())),
            Array::I8(v) => conv(v, |x| Some(x.into())),
            Array::U16(v) => conv(v, |x| Some(x.into())),
            Array::I16(v) => conv(v, |x| Some(x.into())),
            Array::U32(v) => conv(v, |x| Some(x.into())),
            Array::I32(v) => conv(v, |x| Some(x.into())),
            Array::U64(v) => conv(v, |x| i64::try_from(x).ok()),
            Array::I64(v) => Some(v.clone()),
            _ => None,
        }
    }
}

/// One tensor's description from the file's tensor-info table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// llama.cpp's name (`blk.0.attn_q.weight`).
    pub name: String,
    /// GGUF's `ne`: dimensions innermost first (`dims[0]` is the row length).
    pub dims: Vec<u64>,
    /// Element encoding.
    pub ty: GgmlType,
    /// Byte offset of the data from the start of the data section.
    pub offset: u64,
    /// Byte length of the data.
    pub n_bytes: u64,
}

impl TensorInfo {
    /// kiln's row-major shape (outermost first): `dims` reversed.
    pub fn shape(&self) -> Vec<usize> {
        // Every dim was checked to fit in usize (the tensor fits in the file).
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// The bytes of a file: memory-mapped, or owned (in-memory files, tests).
enum Bytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// A parsed GGUF file: metadata and tensor infos in memory, tensor data
/// memory-mapped.
pub struct GgufFile {
    path: PathBuf,
    /// Shared with the weights kept in their stored format.
    bytes: std::sync::Arc<Bytes>,
    version: u32,
    metadata: Vec<(String, Value)>,
    metadata_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .finish()
    }
}

impl GgufFile {
    /// Open and parse a GGUF file, memory-mapping its tensor data.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        let err = |message: String| GgufError {
            file: path.to_path_buf(),
            message,
        };
        // Before opening: opening a FIFO blocks until someone writes to it.
        let meta = std::fs::metadata(path).map_err(|e| err(format!("cannot open: {e}")))?;
        if !meta.is_file() {
            return Err(err(
                "cannot open: not a regular file (a directory, device or pipe)".into(),
            ));
        }
        let file = std::fs::File::open(path).map_err(|e| err(format!("cannot open: {e}")))?;
        let len = file
            .metadata()
            .map_err(|e| err(format!("cannot stat: {e}")))?
            .len();
        let bytes = if len == 0 {
            Bytes::Owned(Vec::new())
        } else {
            // SAFETY: the map is read-only and private to this value. As with
            // any memory-mapped file, another process truncating or rewriting
            // the file while it is mapped is outside what we can guard against.
            let map = unsafe { memmap2::Mmap::map(&file) }
                .map_err(|e| err(format!("cannot memory-map: {e}")))?;
            Bytes::Mapped(map)
        };
        GgufFile::parse(path.to_path_buf(), bytes)
    }

    /// Parse a GGUF image held in memory; `name` stands for the file in errors.
    pub fn from_bytes(name: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<GgufFile> {
        GgufFile::parse(name.into(), Bytes::Owned(bytes))
    }

    fn parse(path: PathBuf, bytes: Bytes) -> Result<GgufFile> {
        let parsed = parse_layout(&bytes);
        match parsed {
            Ok(layout) => {
                let metadata_index = layout
                    .metadata
                    .iter()
                    .enumerate()
                    .map(|(i, (k, _))| (k.clone(), i))
                    .collect();
                let tensor_index = layout
                    .tensors
                    .iter()
                    .enumerate()
                    .map(|(i, t)| (t.name.clone(), i))
                    .collect();
                Ok(GgufFile {
                    path,
                    bytes: std::sync::Arc::new(bytes),
                    version: layout.version,
                    metadata: layout.metadata,
                    metadata_index,
                    tensors: layout.tensors,
                    tensor_index,
                    alignment: layout.alignment,
                    data_offset: layout.data_offset,
                })
            }
            Err(message) => Err(GgufError {
                file: path,
                message,
            }),
        }
    }

    /// The file's path (or the name given to [`GgufFile::from_bytes`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// An error about this file.
    pub fn error(&self, message: impl Into<String>) -> GgufError {
        GgufError {
            file: self.path.clone(),
            message: message.into(),
        }
    }

    /// The format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The alignment of tensor data (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Byte offset of the data section from the start of the file.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// All metadata, in file order.
    pub fn metadata(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.metadata.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The metadata value under `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// A required non-negative integer (any integer type).
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        let v = self.require(key)?;
        v.as_u64().ok_or_else(|| {
            self.error(format!(
                "metadata `{key}` must be a non-negative integer, found {} {v:?}",
                v.describe()
            ))
        })
    }

    /// A required number (any integer or float type).
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        let v = self.require(key)?;
        v.as_f64().ok_or_else(|| {
            self.error(format!(
                "metadata `{key}` must be a number, found {}",
                v.describe()
            ))
        })
    }

    /// A required string.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| {
            self.error(format!(
                "metadata `{key}` must be a string, found {}",
                v.describe()
            ))
        })
    }

    /// A required metadata value.
    pub fn require(&self, key: &str) -> Result<&Value> {
        self.get(key)
            .ok_or_else(|| self.error(format!("missing metadata key `{key}`")))
    }

    /// All tensor infos, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor named `name` (llama.cpp's name).
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The raw (possibly quantised) bytes of a tensor, borrowed from the map.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let t = self
            .tensor(name)
            .ok_or_else(|| self.error(format!("no tensor named `{name}`")))?;
        // Bounds were checked at parse time.
        let start = (self.data_offset + t.offset) as usize;
        Ok(&self.bytes[start..start + t.n_bytes as usize])
    }

    /// A tensor in its stored block format, sharing the file's bytes (no
    /// copy), or `None` when its type is not one the runtime executes from.
    pub fn tensor_stored(&self, name: &str) -> Result<Option<QuantMatrix>> {
        let t = self
            .tensor(name)
            .ok_or_else(|| self.error(format!("no tensor named `{name}`")))?;
        let Some(format) = t.ty.block_format() else {
            return Ok(None);
        };
        let start = (self.data_offset + t.offset) as usize;
        let owner: std::sync::Arc<dyn AsRef<[u8]> + Send + Sync> = self.bytes.clone();
        let bytes = SharedBytes::shared(owner, start..start + t.n_bytes as usize)
            .ok_or_else(|| self.error(format!("tensor `{name}` lies outside the file")))?;
        QuantMatrix::new(format, &t.shape(), bytes)
            .map(Some)
            .map_err(|e| self.error(format!("tensor `{name}`: {e}")))
    }

    /// Dequantise a tensor to f32, shaped row-major ([`TensorInfo::shape`]).
    pub fn tensor_f32(&self, name: &str) -> Result<Tensor> {
        let t = self
            .tensor(name)
            .ok_or_else(|| self.error(format!("no tensor named `{name}`")))?;
        if !t.ty.is_supported() {
            return Err(self.error(format!(
                "unsupported GGUF tensor type {} in tensor `{name}`; supported: {}",
                t.ty,
                GgmlType::supported_list()
            )));
        }
        let bytes = self.tensor_bytes(name)?;
        let data = dequant::dequantize(t.ty, bytes, t.n_elements() as usize)
            .map_err(|e| self.error(format!("tensor `{name}`: {e}")))?;
        Tensor::from_f32(&t.shape(), data).map_err(|e| self.error(format!("tensor `{name}`: {e}")))
    }
}

/// What parsing produces, before it is attached to its bytes.
struct Layout {
    version: u32,
    metadata: Vec<(String, Value)>,
    tensors: Vec<TensorInfo>,
    alignment: u64,
    data_offset: u64,
}

/// A bounds-checked little-endian reader.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8], String> {
        if n > self.remaining() {
            return Err(format!(
                "truncated file: {} needs {n} bytes at offset {}, but only {} remain",
                what(),
                self.pos,
                self.remaining()
            ));
        }
        let n = n as usize; // <= remaining, so fits
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], String> {
        let b = self.take(N as u64, what)?;
        Ok(b.try_into().expect("take returned N bytes"))
    }

    fn u8(&mut self, what: &dyn Fn() -> String) -> Result<u8, String> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: &dyn Fn() -> String) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A length-prefixed string; `strict` rejects invalid UTF-8 (keys and
    /// tensor names), otherwise it is replaced (values).
    fn string(&mut self, strict: bool, what: &dyn Fn() -> String) -> Result<String, String> {
        let len = self.u64(&|| format!("length of {}", what()))?;
        if len > self.remaining() {
            return Err(format!(
                "{} claims a length of {len} bytes at offset {}, but only {} bytes remain in the file",
                what(),
                self.pos - 8,
                self.remaining()
            ));
        }
        let bytes = self.take(len, what)?;
        if strict {
            std::str::from_utf8(bytes)
                .map(str::to_owned)
                .map_err(|e| format!("{} is not valid UTF-8: {e}", what()))
        } else {
            Ok(String::from_utf8_lossy(bytes).into_owned())
        }
    }

    /// Check that `count` items of at least `min_size` bytes each can fit in
    /// what is left of the file, before allocating room for them.
    fn check_count(
        &self,
        count: u64,
        min_size: u64,
        what: &dyn Fn() -> String,
    ) -> Result<usize, String> {
        let fits = count
            .checked_mul(min_size)
            .is_some_and(|need| need <= self.remaining());
        if !fits {
            return Err(format!(
                "{} claims {count} entries (at least {min_size} bytes each) at offset {}, but only {} bytes remain in the file",
                what(),
                self.pos,
                self.remaining()
            ));
        }
        Ok(count as usize) // <= remaining bytes, so fits in usize
    }
}

fn parse_layout(bytes: &[u8]) -> Result<Layout, String> {
    let mut c = Cursor { bytes, pos: 0 };
    let magic = c.array::<4>(&|| "the magic number".into())?;
    if &magic != b"GGUF" {
        return Err(format!(
            "not a GGUF file: the first 4 bytes are {magic:02x?}, expected \"GGUF\" (47 47 55 46)"
        ));
    }
    let version = c.u32(&|| "the version".into())?;
    match version {
        2 | 3 => {}
        1 => {
            return Err(
                "GGUF version 1 is not supported (only 2 and 3); re-convert the model with a current llama.cpp"
                    .into(),
            );
        }
        v if matches!(v.swap_bytes(), 1..=3) => {
            return Err(format!(
                "big-endian GGUF (version field reads {v:#x}) is not supported; only little-endian files"
            ));
        }
        v => return Err(format!("unsupported GGUF version {v} (supported: 2, 3)")),
    }
    let n_tensors = c.u64(&|| "the tensor count".into())?;
    let n_kv = c.u64(&|| "the metadata count".into())?;

    // Metadata.
    let n_kv = c.check_count(n_kv, 8 + 4 + 1, &|| "the header's metadata count".into())?;
    let mut metadata: Vec<(String, Value)> = Vec::with_capacity(n_kv);
    let mut seen: HashMap<String, usize> = HashMap::with_capacity(n_kv);
    for i in 0..n_kv {
        let key = c.string(true, &|| format!("the key of metadata entry #{i}"))?;
        let ty = c.u32(&|| format!("the value type of metadata `{key}`"))?;
        let ty = MetadataType::from_id(ty).ok_or_else(|| {
            format!("metadata `{key}` has unknown value type {ty} (valid: 0..=12)")
        })?;
        let value = read_value(&mut c, ty, 0, &|| format!("metadata `{key}`"))?;
        if let Some(first) = seen.insert(key.clone(), i) {
            return Err(format!(
                "duplicate metadata key `{key}` (entries #{first} and #{i})"
            ));
        }
        metadata.push((key, value));
    }

    let alignment = match seen.get("general.alignment").map(|&i| &metadata[i].1) {
        None => DEFAULT_ALIGNMENT,
        Some(Value::U32(a)) if a.is_power_of_two() => u64::from(*a),
        Some(Value::U32(a)) => {
            return Err(format!(
                "metadata `general.alignment` is {a}; it must be a power of two"
            ));
        }
        Some(v) => {
            return Err(format!(
                "metadata `general.alignment` must be a u32, found {}",
                v.describe()
            ));
        }
    };

    // Tensor infos.
    let n_tensors = c.check_count(n_tensors, 8 + 4 + 4 + 8, &|| {
        "the header's tensor count".into()
    })?;
    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(n_tensors);
    let mut names: HashMap<String, usize> = HashMap::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let name = c.string(true, &|| format!("the name of tensor #{i}"))?;
        let what = |field: &str| format!("the {field} of tensor `{name}`");
        let n_dims = c.u32(&|| what("dimension count"))?;
        if n_dims > MAX_DIMS {
            return Err(format!(
                "tensor `{name}` has {n_dims} dimensions; ggml allows at most {MAX_DIMS}"
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            dims.push(c.u64(&|| what(&format!("dimension {d}")))?);
        }
        let ty_id = c.u32(&|| what("type"))?;
        let ty = GgmlType::from_id(ty_id).ok_or_else(|| {
            format!(
                "tensor `{name}` has unknown ggml type id {ty_id}; known types: {}",
                GgmlType::known_list()
            )
        })?;
        let offset = c.u64(&|| what("data offset"))?;
        let n_bytes = tensor_n_bytes(&name, &dims, ty)?;
        if offset % alignment != 0 {
            return Err(format!(
                "tensor `{name}` has data offset {offset}, which is not a multiple of the alignment {alignment}"
            ));
        }
        if let Some(first) = names.insert(name.clone(), i) {
            return Err(format!(
                "duplicate tensor name `{name}` (tensors #{first} and #{i})"
            ));
        }
        tensors.push(TensorInfo {
            name,
            dims,
            ty,
            offset,
            n_bytes,
        });
    }

    // Data section: aligned after the infos; every tensor must lie inside the file.
    let file_len = bytes.len() as u64;
    let data_offset = (c.pos as u64).next_multiple_of(alignment);
    for t in &tensors {
        let end = data_offset
            .checked_add(t.offset)
            .and_then(|s| s.checked_add(t.n_bytes));
        if end.is_none_or(|end| end > file_len) {
            return Err(format!(
                "tensor `{}` ({} {:?}, {} bytes at data offset {}) extends past the end of the file \
                 (data section starts at byte {data_offset}, file is {file_len} bytes): the file is truncated or corrupt",
                t.name, t.ty, t.dims, t.n_bytes, t.offset
            ));
        }
    }

    Ok(Layout {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
    })
}

/// The byte size of a tensor, with every multiplication checked.
fn tensor_n_bytes(name: &str, dims: &[u64], ty: GgmlType) -> Result<u64, String> {
    let block = ty.block_size();
    let ne0 = dims.first().copied().unwrap_or(1);
    if ne0 % block != 0 {
        return Err(format!(
            "tensor `{name}` has row length {ne0}, which is not a multiple of {ty}'s block size {block}"
        ));
    }
    let too_big = || {
        format!(
            "tensor `{name}` has dimensions {dims:?} whose size overflows 64 bits: the file is corrupt"
        )
    };
    let n: u64 = dims
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d))
        .ok_or_else(too_big)?;
    // Every element must be addressable in memory once dequantised.
    if usize::try_from(n).is_err() || n.checked_mul(4).is_none() {
        return Err(too_big());
    }
    (n / block).checked_mul(ty.type_size()).ok_or_else(too_big)
}

fn read_value(
    c: &mut Cursor<'_>,
    ty: MetadataType,
    depth: usize,
    what: &dyn Fn() -> String,
) -> Result<Value, String> {
    Ok(match ty {
        MetadataType::U8 => Value::U8(c.u8(what)?),
        MetadataType::I8 => Value::I8(c.u8(what)? as i8),
        MetadataType::U16 => Value::U16(c.u16(what)?),
        MetadataType::I16 => Value::I16(c.u16(what)? as i16),
        MetadataType::U32 => Value::U32(c.u32(what)?),
        MetadataType::I32 => Value::I32(c.u32(what)? as i32),
        MetadataType::F32 => Value::F32(f32::from_bits(c.u32(what)?)),
        MetadataType::Bool => Value::Bool(read_bool(c, what)?),
        MetadataType::String => Value::String(c.string(false, what)?),
        MetadataType::U64 => Value::U64(c.u64(what)?),
        MetadataType::I64 => Value::I64(c.u64(what)? as i64),
        MetadataType::F64 => Value::F64(f64::from_bits(c.u64(what)?)),
        MetadataType::Array => Value::Array(read_array(c, depth, what)?),
    })
}

fn read_bool(c: &mut Cursor<'_>, what: &dyn Fn() -> String) -> Result<bool, String> {
    match c.u8(what)? {
        0 => Ok(false),
        1 => Ok(true),
        b => Err(format!(
            "{} is a bool stored as byte {b} (must be 0 or 1)",
            what()
        )),
    }
}

fn read_array(
    c: &mut Cursor<'_>,
    depth: usize,
    what: &dyn Fn() -> String,
) -> Result<Array, String> {
    if depth >= MAX_ARRAY_DEPTH {
        return Err(format!(
            "{} nests arrays more than {MAX_ARRAY_DEPTH} deep",
            what()
        ));
    }
    let ty = c.u32(&|| format!("the element type of {}", what()))?;
    let ty = MetadataType::from_id(ty)
        .ok_or_else(|| format!("{} has unknown element type {ty} (valid: 0..=12)", what()))?;
    let count = c.u64(&|| format!("the length of {}", what()))?;
    let n = c.check_count(count, ty.min_size(), &|| {
        format!("{} (array of {ty})", what())
    })?;
    let elem = |i: usize| move || format!("{} element {i}", what());
    macro_rules! collect {
        ($variant:ident, $read:expr) => {{
            let mut v = Vec::with_capacity(n);
            for i in 0..n {
                let w = elem(i);
                v.push($read(&mut *c, &w as &dyn Fn() -> String)?);
            }
            Array::$variant(v)
        }};
    }
    Ok(match ty {
        MetadataType::U8 => collect!(U8, |c: &mut Cursor<'_>, w| c.u8(w)),
        MetadataType::I8 => collect!(I8, |c: &mut Cursor<'_>, w| c.u8(w).map(|x| x as i8)),
        MetadataType::U16 => collect!(U16, |c: &mut Cursor<'_>, w| c.u16(w)),
        MetadataType::I16 => collect!(I16, |c: &mut Cursor<'_>, w| c.u16(w).map(|x| x as i16)),
        MetadataType::U32 => collect!(U32, |c: &mut Cursor<'_>, w| c.u32(w)),
        MetadataType::I32 => collect!(I32, |c: &mut Cursor<'_>, w| c.u32(w).map(|x| x as i32)),
        MetadataType::F32 => collect!(F32, |c: &mut Cursor<'_>, w| c.u32(w).map(f32::from_bits)),
        MetadataType::Bool => collect!(Bool, |c: &mut Cursor<'_>, w| read_bool(c, w)),
        MetadataType::String => collect!(String, |c: &mut Cursor<'_>, w| c.string(false, w)),
        MetadataType::U64 => collect!(U64, |c: &mut Cursor<'_>, w| c.u64(w)),
        MetadataType::I64 => collect!(I64, |c: &mut Cursor<'_>, w| c.u64(w).map(|x| x as i64)),
        MetadataType::F64 => collect!(F64, |c: &mut Cursor<'_>, w| c.u64(w).map(f64::from_bits)),
        MetadataType::Array => collect!(Array, |c: &mut Cursor<'_>, w| read_array(c, depth + 1, w)),
    })
}
