//! Dense, row-major, host-memory tensors with a concrete shape.

use crate::error::{Result, RuntimeError};
use kiln_compiler::ir::DType;
use std::fmt;

/// The elements of a tensor, one variant per [`DType`]. Each dtype is stored
/// natively, so i32 indices and bools are exact at any magnitude.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// 32-bit floats.
    F32(Vec<f32>),
    /// 32-bit signed integers (token ids, indices, positions).
    I32(Vec<i32>),
    /// Booleans (masks).
    Bool(Vec<bool>),
}

impl TensorData {
    /// The dtype of the elements.
    pub fn dtype(&self) -> DType {
        match self {
            TensorData::F32(_) => DType::F32,
            TensorData::I32(_) => DType::I32,
            TensorData::Bool(_) => DType::Bool,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::I32(v) => v.len(),
            TensorData::Bool(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `n` zeros (or `false`s) of `dtype`.
    pub fn zeros(dtype: DType, n: usize) -> TensorData {
        match dtype {
            DType::F32 => TensorData::F32(vec![0.0; n]),
            DType::I32 => TensorData::I32(vec![0; n]),
            DType::Bool => TensorData::Bool(vec![false; n]),
        }
    }
}

/// A dense row-major tensor: a dtype, a concrete shape and its elements.
///
/// The invariant `data.len() == shape.iter().product()` is checked by every
/// constructor. A rank-0 tensor (shape `[]`) holds one element.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: TensorData,
}

impl Tensor {
    /// A tensor from a shape and matching data.
    pub fn new(shape: Vec<usize>, data: TensorData) -> Result<Tensor> {
        let Some(expected) = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)) else {
            return Err(RuntimeError::TensorMismatch(format!(
                "shape {shape:?} has more elements than fit in memory"
            )));
        };
        if data.len() != expected {
            return Err(RuntimeError::DataLength {
                shape,
                expected,
                len: data.len(),
            });
        }
        Ok(Tensor { shape, data })
    }

    /// An f32 tensor.
    pub fn from_f32(shape: &[usize], data: Vec<f32>) -> Result<Tensor> {
        Tensor::new(shape.to_vec(), TensorData::F32(data))
    }

    /// An i32 tensor (token ids, positions).
    pub fn from_i32(shape: &[usize], data: Vec<i32>) -> Result<Tensor> {
        Tensor::new(shape.to_vec(), TensorData::I32(data))
    }

    /// A bool tensor (masks).
    pub fn from_bool(shape: &[usize], data: Vec<bool>) -> Result<Tensor> {
        Tensor::new(shape.to_vec(), TensorData::Bool(data))
    }

    /// A `[batch, seq]` i32 tensor of token ids, one row per sequence.
    /// All rows must have the same length.
    pub fn tokens(rows: &[&[i32]]) -> Result<Tensor> {
        let seq = rows.first().map_or(0, |r| r.len());
        if let Some(bad) = rows.iter().find(|r| r.len() != seq) {
            return Err(RuntimeError::TensorMismatch(format!(
                "token rows differ in length: {seq} vs {}",
                bad.len()
            )));
        }
        Tensor::from_i32(&[rows.len(), seq], rows.concat())
    }

    /// A rank-0 f32 tensor.
    pub fn scalar(value: f32) -> Tensor {
        Tensor {
            shape: vec![],
            data: TensorData::F32(vec![value]),
        }
    }

    /// A tensor of zeros (`false` for bool).
    pub fn zeros(dtype: DType, shape: &[usize]) -> Tensor {
        Tensor {
            shape: shape.to_vec(),
            data: TensorData::zeros(dtype, shape.iter().product()),
        }
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    /// The concrete shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of axes.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// The elements.
    pub fn data(&self) -> &TensorData {
        &self.data
    }

    /// Take the elements.
    pub fn into_data(self) -> TensorData {
        self.data
    }

    /// Same elements, new shape; fails if the element counts differ.
    pub fn reshape(self, shape: &[usize]) -> Result<Tensor> {
        Tensor::new(shape.to_vec(), self.data)
    }

    /// The elements of an f32 tensor.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            TensorData::F32(v) => Some(v),
            _ => None,
        }
    }

    /// The elements of an i32 tensor.
    pub fn as_i32(&self) -> Option<&[i32]> {
        match &self.data {
            TensorData::I32(v) => Some(v),
            _ => None,
        }
    }

    /// The elements of a bool tensor.
    pub fn as_bool(&self) -> Option<&[bool]> {
        match &self.data {
            TensorData::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// The elements converted to f32 (bool as 0/1; i32 rounds above 2^24).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match &self.data {
            TensorData::F32(v) => v.clone(),
            TensorData::I32(v) => v.iter().map(|&x| x as f32).collect(),
            TensorData::Bool(v) => v.iter().map(|&x| f32::from(u8::from(x))).collect(),
        }
    }

    /// The largest `|a - b|` over all elements, compared as f32.
    ///
    /// The shapes must be equal (dtypes may differ). Equal values, including
    /// equal infinities and NaN against NaN, count as 0; NaN against a number
    /// or opposite infinities count as `f32::INFINITY`. Empty tensors give 0.
    pub fn max_abs_diff(&self, other: &Tensor) -> Result<f32> {
        if self.shape != other.shape {
            return Err(RuntimeError::TensorMismatch(format!(
                "cannot compare shapes {:?} and {:?}",
                self.shape, other.shape
            )));
        }
        let (a, b) = (self.to_f32_vec(), other.to_f32_vec());
        let mut worst = 0.0f32;
        for (&x, &y) in a.iter().zip(&b) {
            let d = if x == y || (x.is_nan() && y.is_nan()) {
                0.0
            } else if x.is_nan() || y.is_nan() {
                f32::INFINITY
            } else {
                (x - y).abs()
            };
            worst = worst.max(d);
        }
        Ok(worst)
    }
}

/// Prints `f32[2, 3] [[1, 2, 3], [4, 5, 6]]`, eliding the middle of axes
/// longer than 6 with `...`.
impl fmt::Display for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{:?} ", self.dtype(), self.shape)?;
        let strides = row_major_strides(&self.shape);
        fmt_axis(f, &self.data, &self.shape, &strides, 0, 0)
    }
}

fn fmt_axis(
    f: &mut fmt::Formatter<'_>,
    data: &TensorData,
    shape: &[usize],
    strides: &[usize],
    axis: usize,
    offset: usize,
) -> fmt::Result {
    if axis == shape.len() {
        return match data {
            TensorData::F32(v) => write!(f, "{}", v[offset]),
            TensorData::I32(v) => write!(f, "{}", v[offset]),
            TensorData::Bool(v) => write!(f, "{}", v[offset]),
        };
    }
    const EDGE: usize = 3;
    let n = shape[axis];
    f.write_str("[")?;
    let mut first = true;
    for i in 0..n {
        if n > 2 * EDGE && i == EDGE {
            f.write_str(", ...")?;
        }
        if n > 2 * EDGE && (EDGE..n - EDGE).contains(&i) {
            continue;
        }
        if !first {
            f.write_str(", ")?;
        }
        first = false;
        fmt_axis(
            f,
            data,
            shape,
            strides,
            axis + 1,
            offset + i * strides[axis],
        )?;
    }
    f.write_str("]")
}

/// Row-major (C-order) element strides of `shape`.
pub(crate) fn row_major_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_check_length() {
        assert!(Tensor::from_f32(&[2, 3], vec![0.0; 6]).is_ok());
        let e = Tensor::from_f32(&[2, 3], vec![0.0; 5]).unwrap_err();
        assert!(e.to_string().contains("5 elements"), "{e}");
        assert_eq!(Tensor::scalar(2.0).numel(), 1);
        assert_eq!(Tensor::zeros(DType::I32, &[2, 0]).numel(), 0);
        let t = Tensor::tokens(&[&[1, 2], &[3, 4]]).unwrap();
        assert_eq!(t.shape(), &[2, 2]);
        assert!(Tensor::tokens(&[&[1, 2], &[3]]).is_err());
        let huge = Tensor::from_f32(&[usize::MAX, 2], vec![]).unwrap_err();
        assert!(huge.to_string().contains("more elements"), "{huge}");
    }

    #[test]
    fn diff_and_display() {
        let a = Tensor::from_f32(&[2, 2], vec![1.0, 2.0, f32::NAN, f32::INFINITY]).unwrap();
        let b = Tensor::from_f32(&[2, 2], vec![1.5, 2.0, f32::NAN, f32::INFINITY]).unwrap();
        assert_eq!(a.max_abs_diff(&b).unwrap(), 0.5);
        let c = Tensor::from_f32(&[2, 2], vec![1.0, 2.0, 0.0, f32::INFINITY]).unwrap();
        assert_eq!(a.max_abs_diff(&c).unwrap(), f32::INFINITY);
        assert!(a.max_abs_diff(&Tensor::scalar(1.0)).is_err());
        assert_eq!(b.to_string(), "f32[2, 2] [[1.5, 2], [NaN, inf]]");
        let long = Tensor::from_i32(&[8], (0..8).collect()).unwrap();
        assert_eq!(long.to_string(), "i32[8] [0, 1, 2, ..., 5, 6, 7]");
        assert_eq!(Tensor::scalar(3.0).to_string(), "f32[] 3");
    }
}
