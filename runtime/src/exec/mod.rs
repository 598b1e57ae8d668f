//! Execution shared by every backend: the reference interpreter of IR
//! graphs (the oracle), its tensor operations, and what every backend that
//! runs kernel programs needs (binding lengths, reading parameters).

pub mod interpreter;
pub(crate) mod ops;
pub mod program;
