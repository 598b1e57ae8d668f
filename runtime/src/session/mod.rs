//! Sessions: the stateful side of running a model. A [`Model`] is immutable
//! (graphs, weights, and the parts a backend compiled from them) and shared
//! by any number of threads; a [`Session`] owns one sequence's KV cache
//! (and, for encoder-decoder models, the encoder's cross K/V), so
//! incremental decoding feeds only the new tokens each step. Sessions see
//! backends only through [`crate::backends::Compiled`] and
//! [`crate::backends::KvStore`].

mod budget;
mod model;
pub mod sampling;

pub use model::Model;
pub use sampling::argmax;

use crate::backends::{Cached, KvStore};
use crate::exec::interpreter::Outputs;
use crate::{Result, RuntimeError, Tensor};
use budget::cache_dims;
use kiln_compiler::ir::{DType, Part};
use model::declares_input;
use sampling::{Sampler, SamplingOptions};
use std::collections::BTreeMap;

/// What to generate and when to stop.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: SamplingOptions,
    /// Generation ends after emitting any of these.
    pub stop_tokens: Vec<i32>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 32,
            sampling: SamplingOptions::default(),
            stop_tokens: Vec::new(),
        }
    }
}

/// One sequence's decoding state.
pub struct Session<'m> {
    model: &'m Model,
    /// `(k, v)` per decoder block, `[batch, kv_heads, past, head_dim]`.
    cache: Vec<(Cached, Cached)>,
    /// Where the backend appends in place (JIT, wgpu), the KV cache
    /// instead: by `present` output name, storage with spare rows that each
    /// step writes only its new rows into.
    stores: Option<Box<dyn KvStore>>,
    past: usize,
    /// Per row, 1 for each real cached token and 0 for left padding.
    mask: Vec<Vec<i32>>,
    /// Encoder-decoder: cross K/V per block and the source length.
    cross: Option<(Vec<(Cached, Cached)>, usize)>,
}

impl<'m> Session<'m> {
    pub(super) fn new(model: &'m Model) -> Self {
        Session {
            model,
            cache: Vec::new(),
            stores: None,
            past: 0,
            mask: Vec::new(),
            cross: None,
        }
    }

    /// Tokens already in the cache.
    pub fn past_len(&self) -> usize {
        self.past
    }

    /// Encoder-decoder: encode the source once; later [`Session::forward`]
    /// calls attend to it.
    pub fn set_source(&mut self, tokens: &[i32]) -> Result<()> {
        self.model.graph(Part::Decoder)?;
        let inputs = self.model.encoder_inputs(&[tokens])?;
        let is_cross = |n: &str| n.starts_with("cross.");
        let (_, kept) = (self.model).run_part_with(Part::Encoder, &inputs, &[], &is_cross)?;
        let kv = kv_pairs(kept, "cross", self.model.decoder_layers())?;
        self.cross = Some((kv, tokens.len()));
        Ok(())
    }

    /// Block `layer`'s cached `(k, v)`, `[batch, kv_heads, past, head_dim]`,
    /// as host tensors (read back from the device on the GPU backend).
    pub fn cached_kv(&self, layer: usize) -> Result<(Tensor, Tensor)> {
        if let Some(stores) = &self.stores {
            let get = |kv: &str| {
                let name = format!("present.{layer}.{kv}");
                stores.tensor(&name).unwrap_or_else(|| {
                    Err(RuntimeError::Request(format!(
                        "no cache for block {layer} ({} cached tensors)",
                        stores.len()
                    )))
                })
            };
            return Ok((get("k")?, get("v")?));
        }
        let (k, v) = self.cache.get(layer).ok_or_else(|| {
            RuntimeError::Request(format!(
                "no cache for block {layer} ({} cached blocks)",
                self.cache.len()
            ))
        })?;
        Ok((k.to_host()?, v.to_host()?))
    }

    /// Rows of cache storage per block when the backend appends to the
    /// cache in place (the JIT, and wgpu in device memory; grown by
    /// doubling, up to `max_positions`); `None` when each step passes the
    /// whole cache in and gets it back (the reference interpreter).
    pub fn cache_capacity(&self) -> Option<usize> {
        self.stores.as_ref().map(|s| s.capacity())
    }

    /// Whether the KV cache (and an encoder-decoder's cross K/V) lives in
    /// device memory (the GPU backend, after the first step), so decode
    /// steps do not copy it through the host.
    pub fn cache_on_device(&self) -> bool {
        let cross = self.cross.as_ref().map_or(&[][..], |(kv, _)| kv);
        let both = |(k, v): &(Cached, Cached)| k.on_device() && v.on_device();
        if let Some(stores) = &self.stores {
            return stores.on_device() && cross.iter().all(both);
        }
        !self.cache.is_empty() && self.cache.iter().chain(cross).all(both)
    }

    /// Feed new tokens; returns all decoder outputs for them (`logits`
    /// `[1, tokens, vocab]`, `hidden`) and extends the KV cache.
    pub fn forward(&mut self, tokens: &[i32]) -> Result<Outputs> {
        self.forward_batch(&[tokens])
    }

    /// Feed new tokens for a batch of sequences. The first call fixes the
    /// batch: rows of different lengths are left-padded (masked, and not
    /// counted in positions) so each row's last column is its last token.
    /// Later calls feed the same number of tokens to every row. Outputs are
    /// `[rows, columns, …]`.
    pub fn forward_batch(&mut self, rows: &[&[i32]]) -> Result<Outputs> {
        let g = self.model.graph(Part::Decoder)?;
        let n = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        if rows.is_empty() || rows.iter().any(|r| r.is_empty()) {
            return Err(RuntimeError::Request(
                "forward: every row needs at least one token".into(),
            ));
        }
        if self.past > 0 && (rows.len() != self.mask.len() || rows.iter().any(|r| r.len() != n)) {
            return Err(RuntimeError::Request(format!(
                "forward: this session decodes {} rows; later calls must give every row the same number of tokens",
                self.mask.len()
            )));
        }
        if rows.len() > 1 && self.cross.is_some() {
            return Err(RuntimeError::Unsupported(
                "batched decoding of encoder-decoder models is not supported; use one session per sequence".into(),
            ));
        }
        for r in rows {
            self.model.check_tokens(r, self.past + n - r.len())?;
        }
        let batch = rows.len();
        let src = self.cross.as_ref().map_or(0, |(_, s)| *s);
        let layers = budget::count_layers(g);
        let appending = self.model.appending();
        let total = self.past + n;
        let max = self.model.lowered.max_positions;
        // An appending cache's storage after this step: what it holds, or
        // (from 16 rows) double, up to `max_positions`, cut short by the
        // memory budget.
        let room = if self.past == 0 {
            0
        } else {
            self.cache_capacity().unwrap_or(0)
        };
        let want = if appending.is_none() || room >= total {
            room.max(total)
        } else if room == 0 {
            total.next_power_of_two().max(16).min(max).max(total)
        } else {
            (2 * room).min(max).max(total)
        };
        let hold =
            self.model
                .cache_rows_within_budget(Part::Decoder, batch, n, self.past, src, want)?;
        if self.past == 0 {
            // The first step fixes the batch (again, if an earlier first
            // step failed).
            self.cache.clear();
            self.stores = None;
            self.mask = vec![Vec::new(); batch];
            match appending {
                Some(c) => {
                    let lengths = BTreeMap::from([("batch".to_string(), batch)]);
                    self.stores = Some(c.empty_cache(&lengths, hold)?);
                }
                None => {
                    for i in 0..layers {
                        let (kvh, hd) = cache_dims(g, i)?;
                        let empty = Tensor::zeros(DType::F32, &[batch, kvh, 0, hd]);
                        self.cache
                            .push((Cached::Host(empty.clone()), Cached::Host(empty)));
                    }
                }
            }
        }
        // Nothing in `self` changes until the step has succeeded, so a
        // failed call leaves the session as it was.
        let mut state: Vec<(String, &Cached)> = Vec::new();
        let mut encoder_mask = None;
        if declares_input(g, "encoder_mask") {
            let (kv, src) = self.cross.as_ref().ok_or_else(|| {
                RuntimeError::Request(
                    "encoder-decoder model: call set_source with the source tokens before forward"
                        .into(),
                )
            })?;
            for (i, (k, v)) in kv.iter().enumerate() {
                state.push((format!("cross.{i}.k"), k));
                state.push((format!("cross.{i}.v"), v));
            }
            encoder_mask = Some(Tensor::from_i32(&[1, *src], vec![1; *src])?);
        }
        for (i, (k, v)) in self.cache.iter().enumerate() {
            state.push((format!("past.{i}.k"), k));
            state.push((format!("past.{i}.v"), v));
        }
        let mut tokens = Vec::with_capacity(batch * n);
        let mut new_mask = self.mask.clone();
        for (r, m) in rows.iter().zip(new_mask.iter_mut()) {
            let pad = n - r.len();
            tokens.extend(std::iter::repeat_n(0, pad));
            tokens.extend_from_slice(r);
            m.extend(std::iter::repeat_n(0, pad));
            m.extend(std::iter::repeat_n(1, r.len()));
        }
        let mask: Vec<i32> = new_mask.iter().flatten().copied().collect();
        let mut inputs = vec![
            ("tokens".to_string(), Tensor::from_i32(&[batch, n], tokens)?),
            (
                "attention_mask".to_string(),
                Tensor::from_i32(&[batch, total], mask)?,
            ),
        ];
        inputs.extend(encoder_mask.map(|m| ("encoder_mask".to_string(), m)));
        if let (Some(c), Some(stores)) = (appending, self.stores.as_mut()) {
            // Growing keeps the rows in use, and a step writes only past
            // them, so a failed step still changes nothing the session sees.
            stores.reserve(hold)?;
            let pairs: Vec<(&str, &Tensor)> = inputs.iter().map(|(n, t)| (n.as_str(), t)).collect();
            let state: Vec<(&str, &Cached)> = state.iter().map(|(n, c)| (n.as_str(), *c)).collect();
            let out = c.run_appending(&self.model.weights, &pairs, &state, &mut **stores)?;
            self.mask = new_mask;
            self.past = total;
            return Ok(out);
        }
        // The cache is borrowed by the step; only on success do the
        // `present` outputs replace it, so a failed call changes nothing.
        let is_present = |n: &str| n.starts_with("present.");
        let (out, kept) =
            (self.model).run_part_with(Part::Decoder, &inputs, &state, &is_present)?;
        self.cache = kv_pairs(kept, "present", layers)?;
        self.mask = new_mask;
        self.past = total;
        Ok(out)
    }

    /// Greedy decoding: feed `prompt`, then up to `max_new` argmax tokens one
    /// step at a time through the KV cache (stopping after `stop`).
    pub fn generate_greedy(
        &mut self,
        prompt: &[i32],
        max_new: usize,
        stop: Option<i32>,
    ) -> Result<Vec<i32>> {
        let opts = GenerateOptions {
            max_new_tokens: max_new,
            stop_tokens: stop.into_iter().collect(),
            ..GenerateOptions::default()
        };
        self.generate(prompt, &opts, &mut |_| true)
    }

    /// Feed `prompt`, then pick tokens per `opts`, calling `on_token` with
    /// each as soon as it is chosen (return false to stop early). Returns the
    /// generated ids. Stops at `max_new_tokens`, a stop token, or the model's
    /// `max_positions`.
    pub fn generate(
        &mut self,
        prompt: &[i32],
        opts: &GenerateOptions,
        on_token: &mut dyn FnMut(i32) -> bool,
    ) -> Result<Vec<i32>> {
        let mut out = self.generate_batch(&[prompt], opts, &mut |_, id| on_token(id))?;
        Ok(out.pop().unwrap_or_default())
    }

    /// Generate for several prompts at once (left-padded into one batch).
    /// `on_token(row, id)` sees each row's tokens as they are chosen; a row
    /// ends at a stop token (or when `on_token` returns false) while the
    /// others go on. Each row samples from its own seeded generator, so a
    /// row's output equals generating it alone.
    pub fn generate_batch(
        &mut self,
        prompts: &[&[i32]],
        opts: &GenerateOptions,
        on_token: &mut dyn FnMut(usize, i32) -> bool,
    ) -> Result<Vec<Vec<i32>>> {
        let mut samplers: Vec<Sampler> = prompts
            .iter()
            .map(|_| Sampler::new(opts.sampling.clone()))
            .collect();
        let mut out = vec![Vec::new(); prompts.len()];
        let mut done = vec![false; prompts.len()];
        let mut feed: Vec<Vec<i32>> = prompts.iter().map(|p| p.to_vec()).collect();
        let width = |f: &[Vec<i32>]| f.iter().map(Vec::len).max().unwrap_or(0);
        let max = self.model.lowered.max_positions;
        if opts.max_new_tokens > 0 && self.past + width(&feed) > max {
            // Not one token could be generated: say so instead of an empty result.
            return Err(RuntimeError::Limit(format!(
                "the prompt has {} token(s){}, more than the model's max_positions = {max}; shorten it to at most {}",
                width(&feed),
                if self.past > 0 {
                    format!(" after {} cached", self.past)
                } else {
                    String::new()
                },
                max.saturating_sub(self.past)
            )));
        }
        for _ in 0..opts.max_new_tokens {
            if done.iter().all(|d| *d)
                || self.past + width(&feed) > self.model.lowered.max_positions
            {
                break;
            }
            let rows: Vec<&[i32]> = feed.iter().map(Vec::as_slice).collect();
            let o = self.forward_batch(&rows)?;
            let logits = take(&o, "logits")?;
            let shape = logits.shape().to_vec();
            let (cols, v) = (shape[1], shape[2]);
            let data = logits.to_f32_vec();
            for r in 0..prompts.len() {
                let last = &data[(r * cols + cols - 1) * v..(r * cols + cols) * v];
                let next = samplers[r].sample(last) as i32;
                if !done[r] {
                    out[r].push(next);
                    if !on_token(r, next) || opts.stop_tokens.contains(&next) {
                        done[r] = true;
                    }
                }
                feed[r] = vec![next];
            }
        }
        Ok(out)
    }
}

fn take(out: &Outputs, name: &str) -> Result<Tensor> {
    out.get(name)
        .cloned()
        .ok_or_else(|| RuntimeError::Internal {
            message: format!("graph produced no output `{name}`"),
        })
}

/// `({prefix}.{i}.k, {prefix}.{i}.v)` for each of `layers` blocks, from a
/// run's kept outputs.
fn kv_pairs(
    kept: Vec<(String, Cached)>,
    prefix: &str,
    layers: usize,
) -> Result<Vec<(Cached, Cached)>> {
    let mut kept: BTreeMap<String, Cached> = kept.into_iter().collect();
    let mut take = |name: String| {
        kept.remove(&name).ok_or_else(|| RuntimeError::Internal {
            message: format!("graph produced no output `{name}`"),
        })
    };
    (0..layers)
        .map(|i| {
            Ok((
                take(format!("{prefix}.{i}.k"))?,
                take(format!("{prefix}.{i}.v"))?,
            ))
        })
        .collect()
}
