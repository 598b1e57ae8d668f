//! A model as the IR sees it: the graphs it is made of (an encoder, a
//! decoder step, or both) and the two limits every runtime enforces.

use super::{Graph, Op};
use std::collections::BTreeMap;

/// The graphs of one model. The lowering builds it; passes rewrite its
/// graphs; the compiler turns each into a kernel program.
#[derive(Debug, Clone)]
pub struct Module {
    /// The model's name.
    pub name: String,
    /// Token ids must be below this.
    pub vocab_size: usize,
    /// Longest sequence (cached plus new tokens) the model allows.
    pub max_positions: usize,
    /// The encoder graph (encoder and encoder-decoder models).
    pub encoder: Option<Graph>,
    /// The decoder step graph (decoder and encoder-decoder models).
    pub decoder: Option<Graph>,
}

/// Which graph of a [`Module`]: the parts a runtime compiles and runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Part {
    /// Runs once over a whole sequence (encoders; the source of an
    /// encoder-decoder).
    Encoder,
    /// One incremental step over new tokens with a KV cache.
    Decoder,
}

impl Part {
    /// Both parts, encoder first.
    pub const ALL: [Part; 2] = [Part::Encoder, Part::Decoder];

    /// `encoder` or `decoder`.
    pub fn as_str(self) -> &'static str {
        match self {
            Part::Encoder => "encoder",
            Part::Decoder => "decoder",
        }
    }
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Module {
    /// The encoder, then the decoder, whichever exist.
    pub fn graphs(&self) -> impl Iterator<Item = &Graph> {
        self.encoder.iter().chain(self.decoder.iter())
    }

    /// Every graph mutably (encoder first).
    pub fn graphs_mut(&mut self) -> impl Iterator<Item = &mut Graph> {
        self.encoder.iter_mut().chain(self.decoder.iter_mut())
    }

    /// The parts that exist with their graphs, encoder first.
    pub fn parts(&self) -> impl Iterator<Item = (Part, &Graph)> {
        Part::ALL
            .into_iter()
            .filter_map(|p| self.graph(p).map(|g| (p, g)))
    }

    /// The graph of `part`, if the model has one.
    pub fn graph(&self, part: Part) -> Option<&Graph> {
        match part {
            Part::Encoder => self.encoder.as_ref(),
            Part::Decoder => self.decoder.as_ref(),
        }
    }

    /// Distinct parameters over all graphs (shared ones, like the token
    /// embedding of an encoder-decoder, count once): name → element count.
    pub fn parameters(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for g in self.graphs() {
            for p in g.parameters() {
                let n = g.node(p);
                if let Op::Parameter { name, .. } = &n.op {
                    out.insert(name.clone(), n.ty.const_numel().unwrap_or(0));
                }
            }
        }
        out
    }

    /// Total distinct parameter elements (see [`Module::parameters`]).
    pub fn parameter_count(&self) -> usize {
        self.parameters().values().sum()
    }
}
