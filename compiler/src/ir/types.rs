//! Element types and tensor types (dtype + symbolic shape).

use super::dim::Dim;
use std::fmt;

/// Element type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit float.
    F32,
    /// 32-bit signed integer.
    I32,
    /// Boolean.
    Bool,
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::I32 => "i32",
            DType::Bool => "bool",
        })
    }
}

/// Shapes are row-major; the last axis is contiguous.
pub type Shape = Vec<Dim>;

/// A tensor's dtype and symbolic shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TensorType {
    /// Element type.
    pub dtype: DType,
    /// Dims, outermost first.
    pub shape: Shape,
}

impl TensorType {
    /// A tensor type of `dtype` and `shape`.
    pub fn new(dtype: DType, shape: Shape) -> Self {
        TensorType { dtype, shape }
    }
    /// An f32 tensor type of `shape`.
    pub fn f32(shape: Shape) -> Self {
        Self::new(DType::F32, shape)
    }
    /// Number of axes.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    /// Element count when every dim is constant.
    pub fn const_numel(&self) -> Option<usize> {
        self.shape.iter().map(Dim::as_const).product()
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[", self.dtype)?;
        for (i, d) in self.shape.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

/// Macro-free shape literal helper: `shape![Dim::sym("seq"), 64usize]`.
#[macro_export]
macro_rules! shape {
    ($($d:expr),* $(,)?) => { vec![$($crate::ir::Dim::from($d)),*] };
}
