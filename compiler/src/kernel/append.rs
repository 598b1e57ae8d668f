//! Append-cache: find the `present = concat(past, new)` outputs (a KV
//! cache) whose storage fusion gave spare rows, so a runtime that keeps
//! `present` between runs can append in place.
//!
//! Fusion gives such an output a [`capacity`](super::Buffer::capacity) axis
//! and writes `past` into its first rows with one Copy kernel and `new`
//! after them. The copy is what an in-place runtime skips: the storage it
//! passes as `present` is the previous run's, whose first rows are `past`.
//! That is only sound when nothing but the copy reads `past`, and the copy
//! writes exactly the first rows, element for element.

use super::attention::same_on;
use super::{Append, BufId, BufferKind, Kernel, KernelProgram, Size, View};
use crate::kernel::kinds;

/// Buffer `buf` from its origin with `strides`.
fn whole(buf: BufId, strides: Vec<Size>) -> View {
    View {
        buf,
        offset: Size::zero(),
        strides,
    }
}

/// Record every appendable cache in `p.appends`; returns how many.
pub(super) fn find_appends(p: &mut KernelProgram) -> usize {
    let mut reads = vec![0usize; p.buffers.len()];
    // Copies from a graph input, by destination buffer (one pass, so the
    // search stays linear in the kernels).
    let mut copies_into: Vec<Vec<usize>> = vec![Vec::new(); p.buffers.len()];
    for (i, k) in p.kernels.iter().enumerate() {
        for b in k.reads() {
            reads[b] += 1;
        }
        if let Kernel::Copy(kinds::Copy { out, src, .. }) = k
            && matches!(p.buffers[src.buf].kind, BufferKind::Input(_))
        {
            copies_into[out.buf].push(i);
        }
    }
    let mut found = Vec::new();
    for (present, buf) in p.buffers.iter().enumerate() {
        let Some(axis) = buf.capacity else {
            continue;
        };
        if buf.kind != BufferKind::Output {
            continue;
        }
        // The new rows may be copied in too (a permuted projection).
        let [copy] = copies_into[present][..] else {
            continue;
        };
        let Kernel::Copy(kinds::Copy { out, domain, src }) = &p.kernels[copy] else {
            continue;
        };
        let past = src.buf;
        let pb = &p.buffers[past];
        let prefix = matches!(pb.kind, BufferKind::Input(_))
            && reads[past] == 1
            && pb.capacity.is_none()
            && *domain == pb.shape
            && pb.shape.len() == buf.shape.len()
            && pb
                .shape
                .iter()
                .zip(&buf.shape)
                .enumerate()
                .all(|(a, (x, y))| a == axis || x == y)
            && same_on(src, &whole(past, pb.strides()), domain)
            && same_on(out, &whole(present, buf.strides()), domain);
        if prefix {
            found.push(Append {
                past,
                present,
                axis,
                copy,
            });
        }
    }
    p.appends = found;
    p.appends.len()
}

#[cfg(test)]
mod tests {
    use crate::ir::{Builder, DType, Graph, ReduceOp, UnaryOp};
    use crate::kernel::{BufferKind, FuseOptions, Kernel, fuse, fuse_with, kinds};
    use crate::shape;

    /// `present = concat(past, x * 2)` along axis 1, plus a row sum of it
    /// (and, when `extra_past_read`, another reader of `past`).
    fn cache_graph(extra_past_read: bool) -> Graph {
        let mut g = Graph::new("cache");
        let mut b = Builder::new(&mut g);
        let past = b
            .input("past", DType::F32, shape![2usize, "past", 4usize])
            .unwrap();
        let x = b
            .input("x", DType::F32, shape![2usize, "seq", 4usize])
            .unwrap();
        let y = b.mul_scalar(x, 2.0).unwrap();
        let present = b.concat(&[past, y], 1).unwrap();
        let sum = b.reduce(ReduceOp::Sum, present, &[2]).unwrap();
        let neg = extra_past_read.then(|| b.unary(UnaryOp::Neg, past).unwrap());
        g.set_output("present", present);
        g.set_output("sum", sum);
        if let Some(n) = neg {
            g.set_output("neg_past", n);
        }
        g
    }

    #[test]
    fn a_concat_output_of_an_input_is_appendable() {
        let p = fuse(&cache_graph(false)).unwrap();
        assert_eq!(p.appends.len(), 1, "{}", p.to_text());
        let a = &p.appends[0];
        assert_eq!(p.buffers[a.past].kind, BufferKind::Input("past".into()));
        assert_eq!(p.buffers[a.present].capacity, Some(1));
        assert_eq!(a.axis, 1);
        assert!(
            matches!(&p.kernels[a.copy], Kernel::Copy(kinds::Copy { src, .. }) if src.buf == a.past)
        );
        // Every view of `present` steps rows by its storage, not its shape.
        let text = p.to_text();
        assert!(text.contains("in [2, capacity, 4]"), "{text}");
        assert!(!text.contains("4*past+4*seq"), "{text}");
    }

    #[test]
    fn past_read_elsewhere_is_not_appendable() {
        let p = fuse(&cache_graph(true)).unwrap();
        assert!(p.appends.is_empty(), "{}", p.to_text());
    }

    #[test]
    fn disabled_by_name_keeps_contiguous_storage() {
        let opts = FuseOptions {
            disabled: ["append-cache".to_string()].into(),
        };
        let p = fuse_with(&cache_graph(false), &opts).unwrap();
        assert!(p.appends.is_empty());
        assert!(p.buffers.iter().all(|b| b.capacity.is_none()));
        assert!(!p.to_text().contains("capacity"));
    }
}
