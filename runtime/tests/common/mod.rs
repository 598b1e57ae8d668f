//! Helpers shared by the interpreter tests.
#![allow(dead_code)]

use kiln_compiler::ir::{Builder, Graph, IrError, NodeId};
use kiln_runtime::{Outputs, Tensor, Weights, run};

/// Build a graph with `f`, which returns its named outputs.
pub fn graph(
    f: impl FnOnce(&mut Builder) -> Result<Vec<(&'static str, NodeId)>, IrError>,
) -> Graph {
    let mut g = Graph::new("test");
    let outs = {
        let mut b = Builder::new(&mut g);
        f(&mut b).expect("graph builds")
    };
    for (name, id) in outs {
        g.set_output(name, id);
    }
    g
}

/// Run `g` on seed-0 random weights.
pub fn run_ok(g: &Graph, inputs: &[(&str, &Tensor)]) -> Outputs {
    let w = Weights::random(&[g], 0).expect("weights");
    run(g, &w, inputs).unwrap_or_else(|e| panic!("run failed: {e}"))
}

pub fn f32s(shape: &[usize], v: Vec<f32>) -> Tensor {
    Tensor::from_f32(shape, v).unwrap()
}

pub fn i32s(shape: &[usize], v: Vec<i32>) -> Tensor {
    Tensor::from_i32(shape, v).unwrap()
}

/// `0, 1, 2, ...` as f32 in `shape`.
pub fn arange(shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    f32s(shape, (0..n).map(|i| i as f32).collect())
}

/// Assert `t` has `shape` and values within `tol` of `want`.
#[track_caller]
pub fn assert_close(t: &Tensor, shape: &[usize], want: &[f32], tol: f32) {
    assert_eq!(t.shape(), shape, "shape of {t}");
    let want = Tensor::from_f32(shape, want.to_vec()).unwrap();
    let d = t.max_abs_diff(&want).unwrap();
    assert!(d <= tol, "max diff {d} > {tol}\n got {t}\nwant {want}");
}
