//! The memory budget: what one step holds besides the weights (the KV cache
//! and the compiled code's planned activations), checked before anything
//! is allocated.

use super::Model;
use crate::{Result, RuntimeError};
use kiln_compiler::ir::{Graph, Op, Part};
use std::collections::BTreeMap;

impl Model {
    /// Refuse, with [`RuntimeError::Limit`], any step that would hold more
    /// than `bytes` besides the weights: the KV cache (see
    /// [`Model::step_bytes`]) plus the activations the compiled code plans
    /// at the step's lengths (its arena and outputs; the reference
    /// interpreter's temporaries are not counted). An appending cache's
    /// storage grows by doubling only as far as the budget allows.
    /// A batch too wide or a cache too long is then a clear error before
    /// anything is allocated, never an abort. `None` (the default): no limit.
    pub fn set_memory_budget(&mut self, bytes: Option<usize>) {
        self.memory_budget = bytes;
    }

    pub fn memory_budget(&self) -> Option<usize> {
        self.memory_budget
    }

    /// Bytes a step of `part` holds besides the
    /// weights at these lengths: the KV cache (decoder) and the compiled
    /// code's planned activations. Where the backend appends to the cache in
    /// place, the cache is its storage, here at exactly the rows after the
    /// step; elsewhere the step holds the past cache and the new one.
    pub fn step_bytes(
        &self,
        part: Part,
        batch: usize,
        seq: usize,
        past: usize,
        src: usize,
    ) -> Result<usize> {
        self.step_bytes_holding(part, batch, seq, past, src, past.saturating_add(seq))
    }

    /// [`Model::step_bytes`] with an appending cache's storage of `rows`
    /// rows.
    pub(super) fn step_bytes_holding(
        &self,
        part: Part,
        batch: usize,
        seq: usize,
        past: usize,
        src: usize,
        rows: usize,
    ) -> Result<usize> {
        let decoder = self
            .lowered
            .decoder
            .as_ref()
            .filter(|_| part == Part::Decoder);
        let mut per_row = 0usize;
        if let Some(g) = decoder {
            for i in 0..count_layers(g) {
                let (kvh, hd) = cache_dims(g, i)?;
                per_row = per_row.saturating_add(
                    8usize
                        .saturating_mul(batch)
                        .saturating_mul(kvh)
                        .saturating_mul(hd),
                );
            }
        }
        let appending = decoder.is_some() && self.appending().is_some();
        let cache_rows = if appending {
            rows
        } else {
            // The past passed in and the present coming back.
            past.saturating_mul(2).saturating_add(seq)
        };
        let kv = per_row.saturating_mul(cache_rows);
        let lengths: BTreeMap<String, usize> =
            [("batch", batch), ("seq", seq), ("past", past), ("src", src)]
                .into_iter()
                .map(|(s, v)| (s.to_string(), v))
                .collect();
        let act = match self.program(part) {
            Some(p) => {
                // The presents are the cache, counted above.
                let env = |s: &str| lengths.get(s).copied();
                let presents: i64 = (p.outputs.iter())
                    .filter(|(n, _)| n.starts_with("present."))
                    .map(|(_, id)| p.buffers[*id].bytes().eval(&env).unwrap_or(0))
                    .sum();
                p.peak_bytes(&lengths)
                    .saturating_sub(usize::try_from(presents).unwrap_or(0))
            }
            None => 0,
        };
        Ok(kv.saturating_add(act))
    }

    /// [`RuntimeError::Limit`] when a step is over the memory budget.
    pub(super) fn check_budget(
        &self,
        part: Part,
        batch: usize,
        seq: usize,
        past: usize,
        src: usize,
    ) -> Result<()> {
        self.cache_rows_within_budget(part, batch, seq, past, src, past + seq)
            .map(|_| ())
    }

    /// The rows, at most `want` and at least the `past + seq` the step
    /// needs, that an appending cache's storage may grow to within the
    /// memory budget; [`RuntimeError::Limit`] when not even the rows needed
    /// fit.
    pub(super) fn cache_rows_within_budget(
        &self,
        part: Part,
        batch: usize,
        seq: usize,
        past: usize,
        src: usize,
        want: usize,
    ) -> Result<usize> {
        let Some(budget) = self.memory_budget else {
            return Ok(want);
        };
        let need_rows = past + seq;
        let bytes = |rows| self.step_bytes_holding(part, batch, seq, past, src, rows);
        if bytes(want)? <= budget {
            return Ok(want);
        }
        let need = bytes(need_rows)?;
        if need > budget {
            let mb = |b: usize| b as f64 / (1 << 20) as f64;
            return Err(RuntimeError::Limit(format!(
                "{batch} row(s) of {seq} token(s) after {past} cached need {:.1} MiB besides the weights, over the memory budget of {:.1} MiB; use fewer rows or shorter sequences, or raise the budget",
                mb(need),
                mb(budget)
            )));
        }
        // Bytes grow with the rows: the most rows that fit.
        let (mut lo, mut hi) = (need_rows, want);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if bytes(mid)? <= budget {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }
}

/// Decoder blocks of `g` (one `present.{i}.k` each).
pub(super) fn count_layers(g: &Graph) -> usize {
    g.outputs
        .iter()
        .filter(|(n, _)| n.starts_with("present.") && n.ends_with(".k"))
        .count()
}

/// `(kv_heads, head_dim)` of block `i`'s cache, from the `past.{i}.k` input.
pub(super) fn cache_dims(g: &Graph, i: usize) -> Result<(usize, usize)> {
    let name = format!("past.{i}.k");
    let id = g
        .inputs_decl()
        .into_iter()
        .find(|&n| matches!(&g.node(n).op, Op::Input { name: x } if *x == name))
        .ok_or_else(|| RuntimeError::Internal {
            message: format!("decoder declares no input `{name}`"),
        })?;
    let s = &g.node(id).ty.shape;
    match (
        s.get(1).and_then(|d| d.as_const()),
        s.get(3).and_then(|d| d.as_const()),
    ) {
        (Some(k), Some(h)) => Ok((k, h)),
        _ => Err(RuntimeError::Internal {
            message: format!("`{name}` has no constant kv_heads/head_dim"),
        }),
    }
}
