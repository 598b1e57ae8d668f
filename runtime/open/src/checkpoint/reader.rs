//! Reading safetensors files: memory-mapped, headers parsed and validated
//! up front, tensor data converted to f32 on demand.
//!
//! The header is parsed here rather than by the `safetensors` crate so that
//! every problem is reported against the file *and the tensor* it concerns
//! (the crate's validation errors name neither). The rules are the format's:
//! an 8-byte little-endian header length, a JSON object of
//! `name -> {dtype, shape, data_offsets: [start, end]}` (offsets relative to
//! the end of the header) plus an optional `__metadata__` string map, then
//! the data. Every tensor's byte range is checked against its dtype and
//! shape (with overflow-checked arithmetic) and against the file's length
//! before any data is touched, so a truncated or corrupt file is an error,
//! never a panic, and no allocation can exceed a small multiple of the
//! file's own size.

use super::error::CheckpointError;
use memmap2::Mmap;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Largest header accepted (the safetensors format's own limit).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// The dtypes kiln converts to f32 when loading.
pub const SUPPORTED_DTYPES: &[&str] = &["F32", "F16", "BF16", "F64"];

/// A tensor's element type as a safetensors header names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Dtype {
    /// IEEE 754 single precision.
    F32,
    /// IEEE 754 half precision.
    F16,
    /// bfloat16 (the top 16 bits of an f32).
    BF16,
    /// IEEE 754 double precision (narrowed to f32 on load).
    F64,
    /// Any other dtype (`I64`, `U8`, `F8_E4M3`, ...): allowed in a file,
    /// an error only if kiln needs to load that tensor.
    Other(String),
}

impl Dtype {
    fn parse(s: &str) -> Dtype {
        match s {
            "F32" => Dtype::F32,
            "F16" => Dtype::F16,
            "BF16" => Dtype::BF16,
            "F64" => Dtype::F64,
            other => Dtype::Other(other.to_string()),
        }
    }

    /// The header's name for it (`"BF16"`).
    pub fn name(&self) -> &str {
        match self {
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::F64 => "F64",
            Dtype::Other(s) => s,
        }
    }

    /// Whether kiln can convert it to f32.
    pub fn is_supported(&self) -> bool {
        !matches!(self, Dtype::Other(_))
    }

    /// Bits per element, for the dtypes of the safetensors format.
    fn bits(&self) -> Option<usize> {
        Some(match self {
            Dtype::F32 => 32,
            Dtype::F16 | Dtype::BF16 => 16,
            Dtype::F64 => 64,
            Dtype::Other(s) => match s.as_str() {
                "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" | "F8_E4M3FNUZ"
                | "F8_E5M2FNUZ" => 8,
                "I16" | "U16" => 16,
                "I32" | "U32" => 32,
                "I64" | "U64" | "C64" => 64,
                "F4" => 4,
                "F6_E2M3" | "F6_E3M2" => 6,
                _ => return None,
            },
        })
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One tensor as its file's header describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// The stored element type.
    pub dtype: Dtype,
    /// Dimensions, outermost first (row-major), as the header gives them.
    pub shape: Vec<usize>,
    /// Index of the file in [`Checkpoint::files`].
    pub(crate) file: usize,
    /// Absolute byte range in the file.
    pub(crate) start: usize,
    pub(crate) end: usize,
}

impl TensorInfo {
    /// Size of the tensor's data in the file.
    pub fn byte_len(&self) -> usize {
        self.end - self.start
    }

    /// Number of elements (the header's shape was checked not to overflow).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The bytes of a safetensors file: memory-mapped, or owned (a checkpoint
/// held in memory, [`Checkpoint::from_bytes`]).
enum Bytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
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

/// A safetensors file and its bytes.
struct MappedFile {
    path: PathBuf,
    map: Bytes,
}

/// An opened checkpoint: one or more memory-mapped safetensors files whose
/// headers have been parsed and validated, and the `model_type` of the
/// directory's `config.json` if there is one. No tensor data has been read.
pub struct Checkpoint {
    path: PathBuf,
    files: Vec<MappedFile>,
    tensors: BTreeMap<String, TensorInfo>,
    model_type: Option<String>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("path", &self.path)
            .field(
                "files",
                &self.files.iter().map(|m| &m.path).collect::<Vec<_>>(),
            )
            .field("tensors", &self.tensors.len())
            .field("model_type", &self.model_type)
            .finish()
    }
}

impl Checkpoint {
    /// Open a checkpoint: a `.safetensors` file, or a directory holding
    /// `model.safetensors`, or shards listed by `model.safetensors.index.json`
    /// (or, without an index, `model-NNNNN-of-NNNNN.safetensors` shards).
    /// A directory's `config.json`, if present, supplies
    /// [`model_type`](Checkpoint::model_type).
    ///
    /// Files are memory-mapped: they must not be modified while the
    /// checkpoint is open (as with any mmap, truncating a mapped file under
    /// a running process is undefined behaviour).
    pub fn open(path: &Path) -> Result<Checkpoint, CheckpointError> {
        let meta = std::fs::metadata(path).map_err(|source| CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let (files, model_type) = if meta.is_dir() {
            (shard_paths(path)?, read_model_type(path)?)
        } else {
            (vec![path.to_path_buf()], None)
        };
        let mut ckpt = Checkpoint {
            path: path.to_path_buf(),
            files: Vec::new(),
            tensors: BTreeMap::new(),
            model_type,
        };
        for file in files {
            let idx = ckpt.files.len();
            let (mapped, tensors) = map_file(&file, idx)?;
            for (name, info) in tensors {
                if let Some(prev) = ckpt.tensors.get(&name) {
                    return Err(CheckpointError::DuplicateTensor {
                        tensor: name,
                        first: ckpt.files[prev.file].path.clone(),
                        second: file,
                    });
                }
                ckpt.tensors.insert(name, info);
            }
            ckpt.files.push(mapped);
        }
        if meta.is_dir() {
            check_index(path, &ckpt)?;
        }
        Ok(ckpt)
    }

    /// A checkpoint held in memory: the bytes of one `.safetensors` file,
    /// validated exactly as [`Checkpoint::open`] validates a file on disk.
    /// `name` stands for the file in errors and is [`Checkpoint::path`].
    ///
    /// ```
    /// use kiln_open::checkpoint::Checkpoint;
    ///
    /// let header = br#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    /// let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    /// bytes.extend_from_slice(header);
    /// bytes.extend_from_slice(&[0, 0, 128, 63, 0, 0, 0, 64]); // 1.0, 2.0
    /// let ckpt = Checkpoint::from_bytes("in-memory.safetensors", bytes)?;
    /// assert_eq!(ckpt.read_f32("w")?, vec![1.0, 2.0]);
    /// # Ok::<(), kiln_open::checkpoint::CheckpointError>(())
    /// ```
    pub fn from_bytes(
        name: impl Into<PathBuf>,
        bytes: Vec<u8>,
    ) -> Result<Checkpoint, CheckpointError> {
        let path = name.into();
        let tensors = parse_header(&path, &bytes, 0)?.into_iter().collect();
        Ok(Checkpoint {
            path: path.clone(),
            files: vec![MappedFile {
                path,
                map: Bytes::Owned(bytes),
            }],
            tensors,
            model_type: None,
        })
    }

    /// The path the checkpoint was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The safetensors files, in load order.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|f| f.path.as_path())
    }

    /// `model_type` from the directory's `config.json`.
    pub fn model_type(&self) -> Option<&str> {
        self.model_type.as_deref()
    }

    /// Every tensor, by name.
    pub fn tensors(&self) -> &BTreeMap<String, TensorInfo> {
        &self.tensors
    }

    /// The file holding `info`.
    pub(crate) fn file_of(&self, info: &TensorInfo) -> &Path {
        &self.files[info.file].path
    }

    /// A tensor's elements converted to f32.
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>, CheckpointError> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| CheckpointError::Tensor {
                path: self.path.clone(),
                tensor: name.to_string(),
                message: "no such tensor in the checkpoint".into(),
            })?;
        self.read_info(name, info)
    }

    pub(crate) fn read_info(
        &self,
        name: &str,
        info: &TensorInfo,
    ) -> Result<Vec<f32>, CheckpointError> {
        let file = self.files.get(info.file);
        let bytes = file.and_then(|f| f.map.get(info.start..info.end));
        let (Some(file), Some(bytes)) = (file, bytes) else {
            return Err(CheckpointError::Tensor {
                path: self.path.clone(),
                tensor: name.to_string(),
                message: "byte range outside its file (plan made for another checkpoint?)".into(),
            });
        };
        let bad = |message: String| CheckpointError::Tensor {
            path: file.path.clone(),
            tensor: name.to_string(),
            message,
        };
        let per = match info.dtype {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            Dtype::F64 => 8,
            Dtype::Other(ref d) => {
                return Err(bad(format!(
                    "dtype {d} is not supported; supported: {}",
                    SUPPORTED_DTYPES.join(", ")
                )));
            }
        };
        if bytes.len() != info.numel() * per {
            return Err(bad(format!(
                "{} bytes of data for {} {} elements",
                bytes.len(),
                info.numel(),
                info.dtype
            )));
        }
        Ok(match info.dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::F64 => bytes
                .chunks_exact(8)
                .map(|c| {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(c);
                    f64::from_le_bytes(a) as f32
                })
                .collect(),
            Dtype::Other(_) => unreachable!("rejected above"),
        })
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The safetensors files of a checkpoint directory, in load order.
fn shard_paths(dir: &Path) -> Result<Vec<PathBuf>, CheckpointError> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let map = read_index(&index)?;
        let mut files: Vec<&String> = map.values().collect();
        files.sort();
        files.dedup();
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    let shards: Vec<PathBuf> = names
        .iter()
        .filter(|n| is_shard_name(n))
        .map(|n| dir.join(n))
        .collect();
    if shards.is_empty() {
        return Err(CheckpointError::NoCheckpoint {
            path: dir.to_path_buf(),
            found: names,
        });
    }
    Ok(shards)
}

/// `model-00001-of-00002.safetensors`.
fn is_shard_name(name: &str) -> bool {
    let Some(rest) = name
        .strip_prefix("model-")
        .and_then(|r| r.strip_suffix(".safetensors"))
    else {
        return false;
    };
    match rest.split_once("-of-") {
        Some((a, b)) => {
            !a.is_empty()
                && !b.is_empty()
                && a.bytes().all(|c| c.is_ascii_digit())
                && b.bytes().all(|c| c.is_ascii_digit())
        }
        None => false,
    }
}

/// The largest index or config JSON file read (a 70B model's index is ~100 KB).
const MAX_JSON_BYTES: u64 = 64 << 20;

/// A JSON file of a checkpoint directory: a regular file of at most
/// [`MAX_JSON_BYTES`], so a device or FIFO named `config.json` is an error,
/// not an endless read.
fn read_json_file(path: &Path) -> Result<String, CheckpointError> {
    kiln_compiler::spec::read_text_file(path, MAX_JSON_BYTES).map_err(io_err(path))
}

/// `weight_map` of an index file: tensor name -> shard file name.
fn read_index(path: &Path) -> Result<BTreeMap<String, String>, CheckpointError> {
    let text = read_json_file(path)?;
    let bad = |message: String| CheckpointError::Index {
        path: path.to_path_buf(),
        message,
    };
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let Some(map) = value.get("weight_map").and_then(|m| m.as_object()) else {
        return Err(bad("no `weight_map` object".into()));
    };
    let mut out = BTreeMap::new();
    for (name, file) in map {
        let Some(file) = file.as_str() else {
            return Err(bad(format!(
                "`weight_map` entry `{name}` is not a file name"
            )));
        };
        // Shards must be plain files beside the index: no paths out of the directory.
        let plain = !file.is_empty()
            && !file.contains(['/', '\\'])
            && file != "."
            && file != ".."
            && file.ends_with(".safetensors");
        if !plain {
            return Err(bad(format!(
                "`weight_map` entry `{name}` names `{file}`, not a .safetensors file in the same directory"
            )));
        }
        out.insert(name.clone(), file.to_string());
    }
    if out.is_empty() {
        return Err(bad("`weight_map` is empty".into()));
    }
    Ok(out)
}

/// Every tensor listed by the index must be in the shard it names.
fn check_index(dir: &Path, ckpt: &Checkpoint) -> Result<(), CheckpointError> {
    let index = dir.join("model.safetensors.index.json");
    if !index.is_file() {
        return Ok(());
    }
    let map = read_index(&index)?;
    let mut problems = Vec::new();
    for (name, file) in &map {
        match ckpt.tensors.get(name) {
            None => problems.push(format!(
                "`{name}` is listed in {file} but no shard holds it"
            )),
            Some(info) => {
                let actual = &ckpt.files[info.file].path;
                if actual.file_name().and_then(|n| n.to_str()) != Some(file.as_str()) {
                    problems.push(format!(
                        "`{name}` is listed in {file} but is in {}",
                        actual.display()
                    ));
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CheckpointError::Index {
            path: index,
            message: problems.join("; "),
        })
    }
}

/// `model_type` of `dir/config.json`, if the file exists.
fn read_model_type(dir: &Path) -> Result<Option<String>, CheckpointError> {
    let path = dir.join("config.json");
    if !path.is_file() {
        return Ok(None);
    }
    let text = read_json_file(&path)?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| CheckpointError::Config {
            path: path.clone(),
            message: e.to_string(),
        })?;
    Ok(value
        .get("model_type")
        .and_then(|t| t.as_str())
        .map(str::to_string))
}

/// Map a file and parse and validate its header.
fn map_file(
    path: &Path,
    idx: usize,
) -> Result<(MappedFile, Vec<(String, TensorInfo)>), CheckpointError> {
    let header_err = |message: String| CheckpointError::Header {
        path: path.to_path_buf(),
        message,
    };
    // Before opening: opening a FIFO blocks until someone writes to it.
    if !std::fs::metadata(path).map_err(io_err(path))?.is_file() {
        return Err(header_err(
            "not a regular file (a directory, device or pipe); name a .safetensors file or a model directory".into(),
        ));
    }
    let file = File::open(path).map_err(io_err(path))?;
    let len = file.metadata().map_err(io_err(path))?.len();
    if len < 8 {
        return Err(header_err(format!(
            "the file is {len} bytes long, shorter than the 8-byte header length (truncated or not a safetensors file)"
        )));
    }
    // SAFETY: the map is read-only and private to this process; the usual
    // mmap caveat applies (the file must not be truncated while mapped),
    // which `Checkpoint::open` documents.
    let map = unsafe { Mmap::map(&file) }.map_err(io_err(path))?;
    let tensors = parse_header(path, &map, idx)?;
    Ok((
        MappedFile {
            path: path.to_path_buf(),
            map: Bytes::Mapped(map),
        },
        tensors,
    ))
}

/// Parse and validate the header of the safetensors bytes `buf`.
pub(crate) fn parse_header(
    path: &Path,
    buf: &[u8],
    file_idx: usize,
) -> Result<Vec<(String, TensorInfo)>, CheckpointError> {
    let header_err = |message: String| CheckpointError::Header {
        path: path.to_path_buf(),
        message,
    };
    let len = buf.len() as u64;
    let Some(prefix) = buf.get(..8) else {
        return Err(header_err(format!(
            "the file is {len} bytes long, shorter than the 8-byte header length"
        )));
    };
    let n = u64::from_le_bytes(prefix.try_into().expect("8 bytes"));
    if n > MAX_HEADER_BYTES {
        return Err(header_err(format!(
            "header length {n} exceeds the format's limit of {MAX_HEADER_BYTES} bytes (corrupt file?)"
        )));
    }
    if n > len - 8 {
        return Err(header_err(format!(
            "header length {n} but the file has only {} bytes after the length prefix (truncated?)",
            len - 8
        )));
    }
    let data_start = 8 + n as usize;
    let text = std::str::from_utf8(&buf[8..data_start])
        .map_err(|e| header_err(format!("header is not UTF-8: {e}")))?;
    let value: serde_json::Value = serde_json::from_str(text.trim_end_matches(' '))
        .map_err(|e| header_err(format!("header is not valid JSON: {e}")))?;
    let Some(entries) = value.as_object() else {
        return Err(header_err("header is not a JSON object".into()));
    };
    let data_len = buf.len() - data_start;
    let mut out = Vec::with_capacity(entries.len());
    for (name, entry) in entries {
        if name == "__metadata__" {
            continue;
        }
        let bad = |message: String| CheckpointError::Tensor {
            path: path.to_path_buf(),
            tensor: name.clone(),
            message,
        };
        let Some(obj) = entry.as_object() else {
            return Err(bad("header entry is not an object".into()));
        };
        let dtype = match obj.get("dtype").and_then(|d| d.as_str()) {
            Some(d) => Dtype::parse(d),
            None => return Err(bad("header entry has no string `dtype`".into())),
        };
        let Some(shape_json) = obj.get("shape").and_then(|s| s.as_array()) else {
            return Err(bad("header entry has no `shape` array".into()));
        };
        let mut shape = Vec::with_capacity(shape_json.len().min(64));
        for d in shape_json {
            match d.as_u64().and_then(|d| usize::try_from(d).ok()) {
                Some(d) => shape.push(d),
                None => {
                    return Err(bad(format!(
                        "shape entry {d} is not a non-negative integer"
                    )));
                }
            }
        }
        let offsets: Option<Vec<u64>> = obj
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .filter(|o| o.len() == 2)
            .and_then(|o| o.iter().map(|v| v.as_u64()).collect());
        let Some(offsets) = offsets else {
            return Err(bad(
                "header entry has no `data_offsets` pair of non-negative integers".into(),
            ));
        };
        let (start, end) = (offsets[0], offsets[1]);
        if start > end {
            return Err(bad(format!("data_offsets [{start}, {end}] are reversed")));
        }
        let Some(numel) = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)) else {
            return Err(bad(format!(
                "shape {shape:?} has more elements than fit in memory"
            )));
        };
        if let Some(bits) = dtype.bits() {
            let expected = numel
                .checked_mul(bits)
                .map(|b| b.div_ceil(8) as u64)
                .ok_or_else(|| bad(format!("shape {shape:?} of {dtype} is too large")))?;
            if end - start != expected {
                return Err(bad(format!(
                    "{dtype}{shape:?} needs {expected} bytes but data_offsets [{start}, {end}] span {}",
                    end - start
                )));
            }
        }
        if end > data_len as u64 {
            return Err(bad(format!(
                "data_offsets [{start}, {end}] end past the file's {data_len} data bytes (truncated file?)"
            )));
        }
        out.push((
            name.clone(),
            TensorInfo {
                dtype,
                shape,
                file: file_idx,
                start: data_start + start as usize,
                end: data_start + end as usize,
            },
        ));
    }
    check_layout(path, &out, data_start, buf.len())?;
    Ok(out)
}

/// The data section is exactly the tensors, back to back (the format has no
/// holes and no shared bytes): overlapping or gapped byte ranges are errors
/// naming both tensors, so one tensor can never alias another's bytes.
fn check_layout(
    path: &Path,
    tensors: &[(String, TensorInfo)],
    data_start: usize,
    file_len: usize,
) -> Result<(), CheckpointError> {
    let mut spans: Vec<(usize, usize, &str)> = (tensors.iter())
        .filter(|(_, t)| t.end > t.start)
        .map(|(n, t)| (t.start, t.end, n.as_str()))
        .collect();
    spans.sort_unstable();
    let rel = |x: usize| x - data_start;
    let bad = |tensor: &str, message: String| CheckpointError::Tensor {
        path: path.to_path_buf(),
        tensor: tensor.to_string(),
        message,
    };
    let mut at = data_start;
    let mut prev: Option<(usize, usize, &str)> = None;
    for &(start, end, name) in &spans {
        if let Some((ps, pe, pn)) = prev
            && start < at
        {
            return Err(bad(
                name,
                format!(
                    "data_offsets [{}, {}] overlap tensor `{pn}` at [{}, {}]: each byte belongs to one tensor (corrupt or forged header)",
                    rel(start),
                    rel(end),
                    rel(ps),
                    rel(pe)
                ),
            ));
        }
        if start > at {
            let after = match prev {
                Some((_, _, pn)) => format!("after tensor `{pn}`"),
                None => "at the start of the data".into(),
            };
            return Err(bad(
                name,
                format!(
                    "data_offsets [{}, {}] leave a gap of {} bytes {after}: the data section has no holes (corrupt header?)",
                    rel(start),
                    rel(end),
                    start - at
                ),
            ));
        }
        at = end;
        prev = Some((start, end, name));
    }
    if at < file_len {
        let tail = match prev {
            Some((_, _, pn)) => format!("after tensor `{pn}`"),
            None => "and no tensor uses them".into(),
        };
        return Err(CheckpointError::Header {
            path: path.to_path_buf(),
            message: format!(
                "{} bytes at the end of the data section {tail} belong to no tensor (corrupt or appended file?)",
                file_len - at
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data: &[u8]) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.extend_from_slice(data);
        v
    }

    fn err(buf: &[u8]) -> String {
        parse_header(Path::new("x.safetensors"), buf, 0)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn parses_a_valid_header() {
        let buf = file(
            r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}"#,
            &[0; 4],
        );
        let t = parse_header(Path::new("x"), &buf, 0).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].1.shape, vec![2]);
        assert_eq!(t[0].1.dtype, Dtype::F16);
    }

    #[test]
    fn overlapping_gapped_or_trailing_bytes_are_errors_naming_the_tensors() {
        // `b` reads half of `a`'s bytes.
        let overlap = file(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
            &[0; 12],
        );
        assert_eq!(
            err(&overlap),
            "x.safetensors: tensor `b`: data_offsets [4, 12] overlap tensor `a` at [0, 8]: each byte belongs to one tensor (corrupt or forged header)"
        );
        // Two tensors over the very same bytes.
        let alias = file(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
            &[0; 8],
        );
        assert!(
            err(&alias).contains("overlap tensor `a`"),
            "{}",
            err(&alias)
        );
        let gap = file(
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#,
            &[0; 12],
        );
        assert_eq!(
            err(&gap),
            "x.safetensors: tensor `b`: data_offsets [8, 12] leave a gap of 4 bytes after tensor `a`: the data section has no holes (corrupt header?)"
        );
        let trailing = file(
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
            &[0; 6],
        );
        assert!(
            err(&trailing).contains(
                "2 bytes at the end of the data section after tensor `a` belong to no tensor"
            ),
            "{}",
            err(&trailing)
        );
        // Back to back, in any header order, with an empty tensor: fine.
        let ok = file(
            r#"{"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},"e":{"dtype":"F32","shape":[0],"data_offsets":[8,8]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
            &[0; 8],
        );
        assert_eq!(parse_header(Path::new("x"), &ok, 0).unwrap().len(), 3);
    }

    #[test]
    fn rejects_corrupt_headers() {
        assert!(err(&[1, 2, 3]).contains("shorter than the 8-byte"));
        let mut huge = u64::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        assert!(err(&huge).contains("exceeds the format's limit"));
        let mut long = 1000u64.to_le_bytes().to_vec();
        long.extend_from_slice(b"{}");
        assert!(err(&long).contains("only 2 bytes after"), "{}", err(&long));
        assert!(err(&file("{not json", &[])).contains("not valid JSON"));
        assert!(err(&file("[]", &[])).contains("not a JSON object"));
        let bad_shape = file(
            r#"{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#,
            &[0; 4],
        );
        assert!(err(&bad_shape).contains("tensor `a`"));
        let overflow = file(
            r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,4]}}"#,
            &[0; 4],
        );
        assert!(
            err(&overflow).contains("more elements than fit"),
            "{}",
            err(&overflow)
        );
        let size = file(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#,
            &[0; 4],
        );
        assert!(err(&size).contains("needs 8 bytes"), "{}", err(&size));
        let past_end = file(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
            &[0; 4],
        );
        assert!(
            err(&past_end).contains("truncated file"),
            "{}",
            err(&past_end)
        );
    }

    #[test]
    fn shard_names() {
        assert!(is_shard_name("model-00001-of-00002.safetensors"));
        assert!(!is_shard_name("model-a-of-2.safetensors"));
        assert!(!is_shard_name("model.safetensors"));
    }
}
