//! The portable IR: a graph of primitive tensor ops with symbolic shapes.
//! It knows nothing of specs; the lowering builds it, passes rewrite it, and
//! executors (the reference interpreter, later the code generators) consume it.

mod builder;
mod dim;
mod dot;
mod graph;
mod module;
mod op;
mod rewrite;
pub mod scalar;
mod text;
mod types;

pub use builder::{Builder, R};
pub use dim::{BATCH, Dim, PAST, SEQ, SRC};
pub use dot::to_dot;
pub use graph::{Graph, IrError, Node, NodeId};
pub use module::{Module, Part};
pub use op::{BinaryOp, Init, Op, ReduceOp, UnaryOp, broadcast, fmt_num};
pub use text::to_text;
pub use types::{DType, Shape, TensorType};
