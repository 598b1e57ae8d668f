//! The memory planner: liveness over the kernel order assigns every
//! temporary to an arena slot. A slot holds buffers of one symbolic byte size
//! (identical polynomials), so a plan is valid at every length; a temporary
//! reuses a slot whose previous occupant was last touched by an earlier
//! kernel, or works in place: an element-wise or row kernel may write its
//! output over an input that dies there when it reads that input only
//! through exactly the output's view (each element, or row, is read before
//! it is written).

use super::{BufferKind, Kernel, Size, View};
use crate::kernel::Buffer;
use crate::kernel::kinds;
use std::collections::BTreeMap;

/// Where the `Temp` buffers of a program live: arena slots shared by buffers whose lifetimes do not overlap.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BufferPlan {
    /// Byte size of each arena slot.
    pub slots: Vec<Size>,
    /// The slot of each buffer (temporaries only).
    pub slot_of: Vec<Option<usize>>,
}

impl BufferPlan {
    /// Assign each `Temp` buffer a slot: its input's slot when a kernel can write in
    /// place, else a free slot of the same symbolic size, else a new slot.
    pub fn plan(buffers: &[Buffer], kernels: &[Kernel]) -> BufferPlan {
        // First and last kernel touching each buffer.
        let mut span: Vec<Option<(usize, usize)>> = vec![None; buffers.len()];
        for (k, kernel) in kernels.iter().enumerate() {
            for b in kernel.reads().into_iter().chain([kernel.output()]) {
                let s = span[b].get_or_insert((k, k));
                s.0 = s.0.min(k);
                s.1 = s.1.max(k);
            }
        }
        let mut order: Vec<usize> = (0..buffers.len())
            .filter(|&b| buffers[b].kind == BufferKind::Temp && span[b].is_some())
            .collect();
        order.sort_by_key(|&b| (span[b].expect("filtered").0, b));
        let mut slots: Vec<Size> = Vec::new();
        let mut busy_until: Vec<usize> = Vec::new();
        let mut slot_of = vec![None; buffers.len()];
        for b in order {
            let (first, last) = span[b].expect("filtered");
            let bytes = buffers[b].bytes();
            // In place: a dying input of the producing kernel, read only
            // through the output's own view.
            let donor = (kernels[first].output() == b)
                .then(|| {
                    kernels[first].reads().into_iter().find(|&t| {
                        t != b
                            && buffers[t].kind == BufferKind::Temp
                            && span[t].is_some_and(|(_, l)| l == first)
                            && slot_of[t]
                                .is_some_and(|s: usize| slots[s] == bytes && busy_until[s] == first)
                            && in_place(&kernels[first], t)
                    })
                })
                .flatten();
            if let Some(t) = donor {
                let s = slot_of[t].expect("checked");
                busy_until[s] = last;
                slot_of[b] = Some(s);
                continue;
            }
            let free = (0..slots.len()).find(|&s| busy_until[s] < first && slots[s] == bytes);
            let s = free.unwrap_or_else(|| {
                slots.push(bytes);
                busy_until.push(0);
                slots.len() - 1
            });
            busy_until[s] = last;
            slot_of[b] = Some(s);
        }
        BufferPlan { slots, slot_of }
    }

    /// Total arena bytes at the given lengths.
    pub fn arena_bytes(&self, lengths: &BTreeMap<String, usize>) -> usize {
        let env = |s: &str| lengths.get(s).copied();
        self.slots
            .iter()
            .map(|s| s.eval(&env).unwrap_or(0) as usize)
            .sum()
    }
}

/// Whether `k` may write its output over input `t`: an element-wise or row
/// kernel whose every read of `t` is through the output's exact view.
fn in_place(k: &Kernel, t: usize) -> bool {
    let same = |v: &View, out: &View| v.offset == out.offset && v.strides == out.strides;
    match k {
        Kernel::Elementwise(kinds::Elementwise { out, loads, .. }) => {
            loads.iter().filter(|l| l.buf == t).all(|l| same(l, out))
        }
        Kernel::RowReduce(kinds::RowReduce {
            out,
            loads,
            per_row: false,
            ..
        }) => loads.iter().filter(|l| l.buf == t).all(|l| same(l, out)),
        _ => false,
    }
}
