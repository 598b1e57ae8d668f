//! Writing a safetensors file under kiln's canonical parameter names (what
//! `kiln export` produces): any spec's weights, from random initialisation,
//! a HF folder or a GGUF file, saved so they load back for that spec
//! without a mapping table.

use super::error::CheckpointError;
use kiln_runtime::{Tensor, TensorData, Weights};
use std::io::Write;
use std::path::Path;

/// The `__metadata__` `format` of a canonical checkpoint.
pub const CANONICAL_FORMAT: &str = "kiln";

/// The safetensors bytes of `weights` (f32, i32 and bool tensors as F32,
/// I32 and BOOL), names sorted, with `metadata` (plus `format = "kiln"`).
pub fn safetensors_bytes(weights: &Weights, metadata: &[(&str, &str)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut meta = serde_json::Map::new();
    meta.insert("format".into(), CANONICAL_FORMAT.into());
    for (k, v) in metadata {
        meta.insert((*k).into(), (*v).into());
    }
    header.insert("__metadata__".into(), meta.into());
    let mut data: Vec<u8> = Vec::new();
    let mut named: Vec<(&str, &Tensor)> = weights.iter().collect();
    named.sort_by(|a, b| a.0.cmp(b.0));
    for (name, t) in named {
        let start = data.len();
        let dtype = match t.data() {
            TensorData::F32(v) => {
                data.extend(v.iter().flat_map(|x| x.to_le_bytes()));
                "F32"
            }
            TensorData::I32(v) => {
                data.extend(v.iter().flat_map(|x| x.to_le_bytes()));
                "I32"
            }
            TensorData::Bool(v) => {
                data.extend(v.iter().map(|&b| u8::from(b)));
                "BOOL"
            }
        };
        header.insert(
            name.to_string(),
            serde_json::json!({
                "dtype": dtype,
                "shape": t.shape(),
                "data_offsets": [start, data.len()],
            }),
        );
    }
    let mut text = serde_json::Value::Object(header).to_string();
    // The data section starts 8-byte aligned, as the reference writer does.
    while !(8 + text.len()).is_multiple_of(8) {
        text.push(' ');
    }
    let mut out = Vec::with_capacity(8 + text.len() + data.len());
    out.extend((text.len() as u64).to_le_bytes());
    out.extend(text.as_bytes());
    out.extend(data);
    out
}

/// Write [`safetensors_bytes`] to `path` through a temporary file in the
/// same directory, renamed into place: a failed write leaves nothing behind.
pub fn write_safetensors(
    path: &Path,
    weights: &Weights,
    metadata: &[(&str, &str)],
) -> Result<(), CheckpointError> {
    let fail = |source: std::io::Error| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bytes = safetensors_bytes(weights, metadata);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.unwrap_or_else(|| "checkpoint".into()),
        std::process::id()
    ));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail(e));
    }
    Ok(())
}
