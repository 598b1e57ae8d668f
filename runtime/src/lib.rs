//! kiln's runtime: concrete [`Tensor`]s, named [`Weights`], and the reference
//! [`Interpreter`] that executes an IR graph in plain f32.
//!
//! The interpreter is the correctness oracle every backend is tested
//! against: clarity over speed, f64 accumulation for sums and dot products,
//! and an error (never a panic) for any bad input, naming the input,
//! parameter or node scope involved.
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
mod interpreter;
mod ops;
mod tensor;
mod weights;

pub mod session;

pub use error::{Result, RuntimeError};
pub use interpreter::{Bindings, Interpreter, NamedTensor, Outputs, RunStats, run};
pub use tensor::{Tensor, TensorData};
pub use weights::{Weights, parameter_seed};
