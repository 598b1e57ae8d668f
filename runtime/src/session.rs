//! Sessions: the stateful side of running a model. A [`ReferenceModel`] is
//! immutable (graphs + weights) and shared; a [`Session`] owns one sequence's
//! KV cache (and, for encoder-decoder models, the encoder's cross K/V), so
//! incremental decoding feeds only the new tokens each step.

use crate::{Outputs, Result, RuntimeError, Tensor, Weights, run};
use kiln_compiler::ir::{DType, Graph, Op};
use kiln_compiler::lower::Lowered;

/// A lowered model with its weights, executed by the reference interpreter.
pub struct ReferenceModel {
    pub lowered: Lowered,
    pub weights: Weights,
}

impl ReferenceModel {
    pub fn new(lowered: Lowered, weights: Weights) -> Self {
        ReferenceModel { lowered, weights }
    }

    /// Random weights for every parameter of every graph, from `seed`.
    pub fn random(lowered: Lowered, seed: u64) -> Result<Self> {
        let graphs: Vec<&Graph> = lowered.graphs().collect();
        let weights = Weights::random(&graphs, seed)?;
        Ok(ReferenceModel { lowered, weights })
    }

    pub fn session(&self) -> Session<'_> {
        Session {
            model: self,
            cache: Vec::new(),
            past: 0,
            cross: None,
        }
    }

    /// Run the encoder graph over one sequence (batch 1, no padding).
    pub fn encode(&self, tokens: &[i32]) -> Result<Outputs> {
        let g = self.lowered.encoder.as_ref().ok_or_else(|| {
            RuntimeError::Graph(format!("`{}` has no encoder", self.lowered.name))
        })?;
        let n = tokens.len();
        let mut inputs = vec![
            (
                "tokens".to_string(),
                Tensor::from_i32(&[1, n], tokens.to_vec())?,
            ),
            (
                "attention_mask".to_string(),
                Tensor::from_i32(&[1, n], vec![1; n])?,
            ),
        ];
        if declares_input(g, "token_types") {
            inputs.push((
                "token_types".to_string(),
                Tensor::from_i32(&[1, n], vec![0; n])?,
            ));
        }
        run(g, &self.weights, inputs)
    }
}

fn declares_input(g: &Graph, name: &str) -> bool {
    g.inputs_decl()
        .iter()
        .any(|&i| matches!(&g.node(i).op, Op::Input { name: n } if n == name))
}

/// One sequence's decoding state.
pub struct Session<'m> {
    model: &'m ReferenceModel,
    /// `(k, v)` per decoder block, `[1, kv_heads, past, head_dim]`.
    cache: Vec<(Tensor, Tensor)>,
    past: usize,
    /// Encoder-decoder: cross K/V per block and the source length.
    cross: Option<(Vec<(Tensor, Tensor)>, usize)>,
}

impl<'m> Session<'m> {
    /// Tokens already in the cache.
    pub fn past_len(&self) -> usize {
        self.past
    }

    /// Encoder-decoder: encode the source once; later [`Session::forward`]
    /// calls attend to it.
    pub fn set_source(&mut self, tokens: &[i32]) -> Result<()> {
        let out = self.model.encode(tokens)?;
        let dec = self.decoder()?;
        let layers = count_layers(dec);
        let mut kv = Vec::with_capacity(layers);
        for i in 0..layers {
            let k = take(&out, &format!("cross.{i}.k"))?;
            let v = take(&out, &format!("cross.{i}.v"))?;
            kv.push((k, v));
        }
        self.cross = Some((kv, tokens.len()));
        Ok(())
    }

    fn decoder(&self) -> Result<&'m Graph> {
        let model: &'m ReferenceModel = self.model;
        model.lowered.decoder.as_ref().ok_or_else(|| {
            RuntimeError::Graph(format!("`{}` has no decoder", self.model.lowered.name))
        })
    }

    /// Feed new tokens; returns all decoder outputs for them (`logits`
    /// `[1, tokens, vocab]`, `hidden`) and extends the KV cache.
    pub fn forward(&mut self, tokens: &[i32]) -> Result<Outputs> {
        let g = self.decoder()?;
        let layers = count_layers(g);
        if self.cache.is_empty() {
            for i in 0..layers {
                let (kvh, hd) = cache_dims(g, i)?;
                self.cache.push((
                    Tensor::zeros(DType::F32, &[1, kvh, 0, hd]),
                    Tensor::zeros(DType::F32, &[1, kvh, 0, hd]),
                ));
            }
        }
        let n = tokens.len();
        let mut inputs = vec![
            (
                "tokens".to_string(),
                Tensor::from_i32(&[1, n], tokens.to_vec())?,
            ),
            (
                "attention_mask".to_string(),
                Tensor::from_i32(&[1, self.past + n], vec![1; self.past + n])?,
            ),
        ];
        for (i, (k, v)) in self.cache.iter().enumerate() {
            inputs.push((format!("past.{i}.k"), k.clone()));
            inputs.push((format!("past.{i}.v"), v.clone()));
        }
        if declares_input(g, "encoder_mask") {
            let (kv, src) = self.cross.as_ref().ok_or_else(|| {
                RuntimeError::Graph(
                    "encoder-decoder model: call set_source with the source tokens before forward"
                        .into(),
                )
            })?;
            for (i, (k, v)) in kv.iter().enumerate() {
                inputs.push((format!("cross.{i}.k"), k.clone()));
                inputs.push((format!("cross.{i}.v"), v.clone()));
            }
            inputs.push((
                "encoder_mask".to_string(),
                Tensor::from_i32(&[1, *src], vec![1; *src])?,
            ));
        }
        let mut out = run(g, &self.model.weights, inputs)?;
        for i in 0..layers {
            let k = take(&out, &format!("present.{i}.k"))?;
            let v = take(&out, &format!("present.{i}.v"))?;
            self.cache[i] = (k, v);
            out.remove(&format!("present.{i}.k"));
            out.remove(&format!("present.{i}.v"));
        }
        self.past += n;
        Ok(out)
    }

    /// Greedy decoding: feed `prompt`, then `max_new` argmax tokens one step
    /// at a time through the KV cache (stopping early at `stop`).
    pub fn generate_greedy(
        &mut self,
        prompt: &[i32],
        max_new: usize,
        stop: Option<i32>,
    ) -> Result<Vec<i32>> {
        let mut out = Vec::new();
        let mut feed = prompt.to_vec();
        for _ in 0..max_new {
            let o = self.forward(&feed)?;
            let logits = take(&o, "logits")?;
            let v = *logits.shape().last().unwrap_or(&0);
            let data = logits.to_f32_vec();
            let last = &data[data.len() - v..];
            let next = argmax(last) as i32;
            out.push(next);
            if Some(next) == stop {
                break;
            }
            feed = vec![next];
        }
        Ok(out)
    }
}

/// Index of the largest value (first one on ties).
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

fn take(out: &Outputs, name: &str) -> Result<Tensor> {
    out.get(name)
        .cloned()
        .ok_or_else(|| RuntimeError::Graph(format!("graph produced no output `{name}`")))
}

fn count_layers(g: &Graph) -> usize {
    g.outputs
        .iter()
        .filter(|(n, _)| n.starts_with("present.") && n.ends_with(".k"))
        .count()
}

/// `(kv_heads, head_dim)` of block `i`'s cache, from the `past.{i}.k` input.
fn cache_dims(g: &Graph, i: usize) -> Result<(usize, usize)> {
    let name = format!("past.{i}.k");
    let id = g
        .inputs_decl()
        .into_iter()
        .find(|&n| matches!(&g.node(n).op, Op::Input { name: x } if *x == name))
        .ok_or_else(|| RuntimeError::Graph(format!("decoder declares no input `{name}`")))?;
    let s = &g.node(id).ty.shape;
    match (
        s.get(1).and_then(|d| d.as_const()),
        s.get(3).and_then(|d| d.as_const()),
    ) {
        (Some(k), Some(h)) => Ok((k, h)),
        _ => Err(RuntimeError::Graph(format!(
            "`{name}` has no constant kv_heads/head_dim"
        ))),
    }
}
