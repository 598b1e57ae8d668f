//! [`QuantMatrix`]: a weight kept in its stored format, rows of blocks
//! along the last axis, over bytes shared with the file they came from.

use super::blocks::BlockFormat;
use crate::error::{Result, RuntimeError};
use crate::tensor::Tensor;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

/// Bytes shared with their owner (a memory-mapped file, or a vector): a
/// range of it, cloned without copying.
#[derive(Clone)]
pub struct SharedBytes {
    owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
    start: usize,
    len: usize,
}

impl SharedBytes {
    /// Own `bytes`.
    pub fn from_vec(bytes: Vec<u8>) -> SharedBytes {
        let len = bytes.len();
        SharedBytes {
            owner: Arc::new(bytes),
            start: 0,
            len,
        }
    }

    /// `range` of `owner`'s bytes, or `None` when it lies outside them.
    pub fn shared(
        owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
        range: Range<usize>,
    ) -> Option<SharedBytes> {
        let total = (*owner).as_ref().len();
        (range.start <= range.end && range.end <= total).then(|| SharedBytes {
            owner,
            start: range.start,
            len: range.end - range.start,
        })
    }

    /// Identifies these bytes: equal for two views of the same range of the
    /// same owner (a joined weight and its parts), so shared bytes are
    /// counted once.
    pub fn key(&self) -> (usize, usize, usize) {
        (
            Arc::as_ptr(&self.owner) as *const u8 as usize,
            self.start,
            self.len,
        )
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &(*self.owner).as_ref()[self.start..self.start + self.len]
    }

    /// Bytes `range` of these (relative), sharing the owner.
    fn slice(&self, range: Range<usize>) -> SharedBytes {
        assert!(range.end <= self.len && range.start <= range.end);
        SharedBytes {
            owner: Arc::clone(&self.owner),
            start: self.start + range.start,
            len: range.end - range.start,
        }
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Consecutive rows in one format.
#[derive(Clone)]
pub struct Segment {
    /// Their format.
    pub format: BlockFormat,
    /// How many rows.
    pub rows: usize,
    /// `rows × row_bytes` bytes.
    pub bytes: SharedBytes,
}

/// A weight in its stored block format: logical shape `[.., rows, cols]`,
/// row-major, each row `cols / block_len` blocks. Joined weights (merged
/// projections) are several segments, each in its own format, without
/// copying.
#[derive(Clone)]
pub struct QuantMatrix {
    shape: Vec<usize>,
    cols: usize,
    segments: Vec<Segment>,
}

impl fmt::Debug for QuantMatrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QuantMatrix({} {:?})", self.formats_text(), self.shape)
    }
}

impl PartialEq for QuantMatrix {
    fn eq(&self, other: &Self) -> bool {
        self.shape == other.shape
            && self.segments.len() == other.segments.len()
            && (self.segments.iter().zip(&other.segments)).all(|(a, b)| {
                a.format == b.format && a.rows == b.rows && a.bytes.as_slice() == b.bytes.as_slice()
            })
    }
}

fn bad(m: String) -> RuntimeError {
    RuntimeError::TensorMismatch(m)
}

impl QuantMatrix {
    /// A weight of `shape` (rank ≥ 1; blocks run along the last axis) in
    /// `format`, from exactly its bytes.
    pub fn new(format: BlockFormat, shape: &[usize], bytes: SharedBytes) -> Result<QuantMatrix> {
        let Some((&cols, outer)) = shape.split_last() else {
            return Err(bad(format!("a {format} weight needs at least one axis")));
        };
        let rows = outer
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
        let row_bytes = format.row_bytes(cols).ok_or_else(|| {
            bad(format!(
                "rows of {cols} elements are not whole {format} blocks of {}",
                format.block_len()
            ))
        })?;
        if rows.checked_mul(row_bytes) != Some(bytes.len()) {
            return Err(bad(format!(
                "a {format} weight of shape {shape:?} needs {} bytes, got {}",
                rows.saturating_mul(row_bytes),
                bytes.len()
            )));
        }
        Ok(QuantMatrix {
            shape: shape.to_vec(),
            cols,
            segments: vec![Segment {
                format,
                rows,
                bytes,
            }],
        })
    }

    /// Encode dense rows `x` (shape `[.., rows, cols]`) in `format`: Q8_0
    /// as ggml quantises it (per block of 32, `d = max|x| / 127` stored as
    /// f16, `q = round(x / d)`), BF16 and F16 rounded to nearest even.
    /// Other formats are not produced here (GGUF files bring them).
    pub fn encode(format: BlockFormat, shape: &[usize], x: &[f32]) -> Result<QuantMatrix> {
        let bad = |m: String| RuntimeError::Internal { message: m };
        let cols = *shape
            .last()
            .ok_or_else(|| bad("a scalar weight to encode".into()))?;
        if shape.iter().product::<usize>() != x.len() {
            return Err(bad(format!("{} values for shape {shape:?}", x.len())));
        }
        let rb = format
            .row_bytes(cols)
            .ok_or_else(|| bad(format!("{cols} columns are not whole {format} blocks")))?;
        let rows = x.len().checked_div(cols).unwrap_or(0);
        let mut out = Vec::with_capacity(rows * rb);
        match format {
            BlockFormat::Q8_0 => {
                for b in x.chunks_exact(32) {
                    let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let d = amax / 127.0;
                    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                    out.extend(half::f16::from_f32(d).to_bits().to_le_bytes());
                    out.extend(
                        b.iter()
                            .map(|&v| super::dot::round_away(v * id) as i8 as u8),
                    );
                }
            }
            BlockFormat::BF16 => {
                for &v in x {
                    out.extend(half::bf16::from_f32(v).to_bits().to_le_bytes());
                }
            }
            BlockFormat::F16 => {
                for &v in x {
                    out.extend(half::f16::from_f32(v).to_bits().to_le_bytes());
                }
            }
            other => return Err(bad(format!("kiln does not encode {other}"))),
        }
        QuantMatrix::new(format, shape, SharedBytes::from_vec(out))
    }

    /// The logical shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Elements per row (the last axis).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Rows (the product of the leading axes).
    pub fn rows(&self) -> usize {
        self.segments.iter().map(|s| s.rows).sum()
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.rows() * self.cols
    }

    /// Bytes the weight occupies.
    pub fn n_bytes(&self) -> usize {
        self.segments.iter().map(|s| s.bytes.len()).sum()
    }

    /// Its segments, in row order.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The formats, `Q4_K+Q6_K` when mixed.
    pub fn formats_text(&self) -> String {
        let mut names: Vec<&str> = self.segments.iter().map(|s| s.format.name()).collect();
        names.dedup();
        names.join("+")
    }

    /// `f(j, format, bytes)` for each row `j` of `rows`, in order, walking
    /// the segments once (no per-row lookup).
    pub fn for_each_row(&self, rows: Range<usize>, mut f: impl FnMut(usize, BlockFormat, &[u8])) {
        let mut first = 0;
        for s in &self.segments {
            let (lo, hi) = (rows.start.max(first), rows.end.min(first + s.rows));
            if lo < hi {
                let rb = s
                    .format
                    .row_bytes(self.cols)
                    .expect("checked at construction");
                let bytes = s.bytes.as_slice();
                for j in lo..hi {
                    let r = j - first;
                    f(j, s.format, &bytes[r * rb..(r + 1) * rb]);
                }
            }
            first += s.rows;
        }
    }

    /// Row `r`: its format and bytes.
    pub fn row(&self, mut r: usize) -> (BlockFormat, &[u8]) {
        for s in &self.segments {
            if r < s.rows {
                let rb = s
                    .format
                    .row_bytes(self.cols)
                    .expect("checked at construction");
                return (s.format, &s.bytes.as_slice()[r * rb..(r + 1) * rb]);
            }
            r -= s.rows;
        }
        panic!("row {r} past the end of a {:?} weight", self.shape)
    }

    /// Rows `start..start + n` as a 2-D weight sharing these bytes.
    pub fn slice_rows(&self, start: usize, n: usize) -> Result<QuantMatrix> {
        let end = start
            .checked_add(n)
            .filter(|&e| e <= self.rows())
            .ok_or_else(|| bad(format!("rows {start}+{n} of a {:?} weight", self.shape)))?;
        let mut segments = Vec::new();
        let mut at = 0usize;
        for s in &self.segments {
            let (lo, hi) = (start.max(at), end.min(at + s.rows));
            if lo < hi {
                let rb = s
                    .format
                    .row_bytes(self.cols)
                    .expect("checked at construction");
                segments.push(Segment {
                    format: s.format,
                    rows: hi - lo,
                    bytes: s.bytes.slice((lo - at) * rb..(hi - at) * rb),
                });
            }
            at += s.rows;
        }
        Ok(QuantMatrix {
            shape: vec![n, self.cols],
            cols: self.cols,
            segments,
        })
    }

    /// Give the weight another shape with the same rows and columns
    /// (`[experts, out, in]` for the row slices of a stacked weight).
    pub fn reshaped(mut self, shape: &[usize]) -> Result<QuantMatrix> {
        let rows: usize = shape.iter().rev().skip(1).product();
        if shape.last() != Some(&self.cols) || rows != self.rows() {
            return Err(bad(format!(
                "a {:?} weight cannot take the shape {shape:?}",
                self.shape
            )));
        }
        self.shape = shape.to_vec();
        Ok(self)
    }

    /// The rows of `parts` one after another (2-D weights of equal width),
    /// sharing their bytes.
    pub fn join_rows(parts: &[&QuantMatrix]) -> Result<QuantMatrix> {
        let cols = parts.first().map_or(0, |p| p.cols);
        if let Some(p) = parts.iter().find(|p| p.cols != cols) {
            return Err(bad(format!(
                "cannot join rows of {cols} and {} elements",
                p.cols
            )));
        }
        let segments: Vec<Segment> = parts.iter().flat_map(|p| p.segments.clone()).collect();
        let rows = segments.iter().map(|s| s.rows).sum();
        Ok(QuantMatrix {
            shape: vec![rows, cols],
            cols,
            segments,
        })
    }

    /// The rows in the order `order` (row `i` of the result is row
    /// `order[i]`), copied.
    pub fn permute_rows(&self, order: &[usize]) -> Result<QuantMatrix> {
        if order.len() != self.rows() || order.iter().any(|&r| r >= self.rows()) {
            return Err(bad(format!(
                "a row order of {} for {} rows",
                order.len(),
                self.rows()
            )));
        }
        let mut out = QuantMatrix {
            shape: self.shape.clone(),
            cols: self.cols,
            segments: Vec::new(),
        };
        // One segment per run of rows in one format.
        let mut run: Option<(BlockFormat, usize, Vec<u8>)> = None;
        for &r in order {
            let (f, bytes) = self.row(r);
            match &mut run {
                Some((rf, n, v)) if *rf == f => {
                    v.extend_from_slice(bytes);
                    *n += 1;
                }
                _ => {
                    if let Some((format, rows, v)) = run.take() {
                        out.segments.push(Segment {
                            format,
                            rows,
                            bytes: SharedBytes::from_vec(v),
                        });
                    }
                    run = Some((f, 1, bytes.to_vec()));
                }
            }
        }
        if let Some((format, rows, v)) = run {
            out.segments.push(Segment {
                format,
                rows,
                bytes: SharedBytes::from_vec(v),
            });
        }
        Ok(out)
    }

    /// Decode rows `rows` into `out` (`rows.len() × cols` floats, row-major).
    pub fn decode_rows(&self, rows: Range<usize>, out: &mut [f32]) {
        assert_eq!(out.len(), rows.len() * self.cols);
        for (i, r) in rows.enumerate() {
            let (f, bytes) = self.row(r);
            f.decode(bytes, &mut out[i * self.cols..(i + 1) * self.cols]);
        }
    }

    /// The whole weight decoded to an f32 tensor of its shape.
    pub fn dequantize(&self) -> Result<Tensor> {
        let mut data = vec![0f32; self.numel()];
        self.decode_rows(0..self.rows(), &mut data);
        Tensor::from_f32(&self.shape, data)
    }
}
