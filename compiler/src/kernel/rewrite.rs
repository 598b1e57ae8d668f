//! Kernel rewrites: pattern rewrites of a fused [`KernelProgram`], run by
//! [`fuse_with`](super::fuse_with) after fusion and before memory planning.
//! Each keeps what the program computes (up to rounding where its docs say
//! so) and can be disabled by name, like the graph passes.
//!
//! | rewrite | what |
//! |---|---|
//! | `attention` | score Gemm + softmax RowReduce + PV Gemm → one streaming [`Kernel::Attention`](super::Kernel::Attention) (same rounding as the three) |
//! | `write-through` | a kernel whose output is only copied elsewhere writes to the copy's destination (exact) |
//! | `moe-dispatch` | expert Gemms compute only the rows (tokens) whose gate for that expert is non-zero (exact for finite values) |
//! | `append-cache` | a `present = concat(past, new)` output gets storage with spare rows, so a runtime that keeps it between runs appends `new` in place instead of copying `past` (exact) |

use super::KernelProgram;
use std::collections::BTreeSet;

/// Every kernel rewrite, in the order they run.
pub const REWRITE_NAMES: [&str; 4] = ["attention", "write-through", "moe-dispatch", "append-cache"];

/// Run the rewrites not in `disabled`; returns `(name, rewrites applied)`.
/// The caller re-plans memory afterwards.
pub fn run(p: &mut KernelProgram, disabled: &BTreeSet<String>) -> Vec<(&'static str, usize)> {
    let mut done = Vec::new();
    for name in REWRITE_NAMES {
        if disabled.contains(name) {
            continue;
        }
        let n = match name {
            "attention" => super::attention::fuse_attention(p),
            "write-through" => super::write_through::write_through(p),
            "moe-dispatch" => super::moe_dispatch::dispatch(p),
            "append-cache" => super::append::find_appends(p),
            _ => unreachable!("every name is handled"),
        };
        done.push((name, n));
    }
    done
}
