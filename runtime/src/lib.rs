//! kiln's runtime: concrete [`Tensor`]s, named [`Weights`], and the reference
//! [`Interpreter`] that executes an IR graph in plain f32.
//!
//! The interpreter is the correctness oracle every backend is tested
//! against: clarity over speed, f64 accumulation for sums and dot products,
//! and an error (never a panic) for any bad input, naming the input,
//! parameter or node scope involved.
//!
//! # Numerics (the oracle's contract)
//!
//! - f32 `Add Sub Mul Div` are plain IEEE f32 operations (correctly rounded).
//! - The transcendental unary ops (`Exp Log Sqrt Rsqrt Tanh Erf Sin Cos`)
//!   and f32 `Pow` are computed in f64 and rounded once to f32, so they are
//!   within an ulp of the true value (`Erf` uses a cancellation-free series,
//!   accurate to a few f64 ulps).
//! - `Reduce Sum` and `MatMul` accumulate in f64 in a fixed order (input
//!   row-major order; `k` ascending for matmul) and round once at the end. A
//!   backend accumulating in f32 should match to a relative error of about
//!   `n * 2^-24` for an `n`-term sum.
//! - f32 `Max`/`Min` (binary and `Reduce Max`) propagate NaN. `Reduce Max`
//!   over an empty axis gives `-inf` (`i32::MIN`, `false`).
//! - i32 `Add Sub Mul Neg Abs` and `Reduce Sum` wrap on overflow; `Div`
//!   truncates toward zero and fails on a zero divisor; `Pow` computes in
//!   f64 and truncates back to i32. `Reduce Sum` of bool is an error;
//!   `Reduce Max` of bool is "any".
//! - `Cast` f32 -> i32 truncates toward zero, saturating at the i32 range
//!   (NaN -> 0); to bool is `x != 0`; bool -> number is 0/1. `Scalar` and
//!   `Literal` values convert to the declared dtype the same way.
//! - `Gather` indices must lie in `[0, n)`: negative indices are errors, not
//!   numpy-style wrap-around.
//!
//! # Example
//!
//! ```
//! use kiln_compiler::ir::{Builder, DType, Graph, Init};
//! use kiln_runtime::{Tensor, Weights, run};
//!
//! let mut g = Graph::new("demo");
//! let mut b = Builder::new(&mut g);
//! let x = b.input("x", DType::F32, kiln_compiler::shape!["batch", 4usize]).unwrap();
//! let w = b.param("w", &[4, 2], Init::Normal { std: 0.02 }).unwrap();
//! let y = b.matmul(x, w).unwrap();
//! g.set_output("y", y);
//!
//! let weights = Weights::random(&[&g], 0).unwrap();
//! let x = Tensor::from_f32(&[3, 4], vec![1.0; 12]).unwrap();
//! let out = run(&g, &weights, [("x", &x)]).unwrap();
//! assert_eq!(out["y"].shape(), &[3, 2]);
//! assert_eq!(out.bindings()["batch"], 3);
//! ```

mod error;
mod tensor;
mod weights;

pub mod backends;
pub mod exec;
pub mod quant;
pub mod session;

pub use backends::{Backend, Precision};
pub use error::{Result, RuntimeError};
pub use exec::interpreter::{Bindings, Interpreter, NamedTensor, Outputs, RunStats, run};
pub use session::sampling;
pub use tensor::{Tensor, TensorData};
pub use weights::{Weights, parameter_seed};
