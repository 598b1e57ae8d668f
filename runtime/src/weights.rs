//! Named parameter tensors: random initialisation from a graph's
//! [`Init`]s, and checking a weights map against a graph.

use crate::error::{Result, RuntimeError};
use crate::quant::{BlockFormat, QuantMatrix};
use crate::tensor::Tensor;
use kiln_compiler::ir::{DType, Graph, Init, Op};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::borrow::Cow;
use std::collections::BTreeMap;

/// A map from canonical parameter name (`layers.3.attn.q.weight`) to tensor.
///
/// A parameter is a dense f32 [`Tensor`] or a weight kept in its stored
/// block format ([`QuantMatrix`], from a GGUF file under
/// `Precision::Stored`). Backends that execute from stored formats (the
/// JIT) read the latter directly; every other reader goes through
/// [`Weights::dense`], which decodes it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Weights {
    tensors: BTreeMap<String, Tensor>,
    quantised: BTreeMap<String, QuantMatrix>,
}

/// One parameter declaration collected from a graph.
struct ParamDecl<'g> {
    name: &'g str,
    init: Init,
    shape: Option<Vec<usize>>,
    declared: String,
}

fn param_decls(graph: &Graph) -> Vec<ParamDecl<'_>> {
    graph
        .parameters()
        .into_iter()
        .filter_map(|id| {
            let node = graph.node(id);
            match &node.op {
                Op::Parameter { name, init } => Some(ParamDecl {
                    name,
                    init: *init,
                    shape: node.ty.shape.iter().map(|d| d.as_const()).collect(),
                    declared: node.ty.to_string(),
                }),
                _ => None,
            }
        })
        .collect()
}

impl Weights {
    /// An empty map.
    pub fn new() -> Weights {
        Weights::default()
    }

    /// Fill every parameter of `graphs` per its [`Init`].
    ///
    /// Each parameter draws from its own ChaCha8 stream seeded by
    /// [`parameter_seed`]`(seed, name)`, so its values depend only on `seed`,
    /// its name and its shape: not on graph order, nor on which other
    /// parameters exist. A parameter shared by several graphs (an
    /// encoder-decoder's `embed.tokens`) is created once; all its
    /// declarations must agree on shape and init. `Normal { std }` uses the
    /// Box-Muller transform on 53-bit uniforms, computed in f64.
    pub fn random(graphs: &[&Graph], seed: u64) -> Result<Weights> {
        let mut weights = Weights::new();
        let mut seen: BTreeMap<&str, (Option<Vec<usize>>, Init, String)> = BTreeMap::new();
        let mut problems = Vec::new();
        for graph in graphs {
            for p in param_decls(graph) {
                if let Some((shape, init, first)) = seen.get(p.name) {
                    if *shape != p.shape || *init != p.init {
                        problems.push(format!(
                            "`{}` declared as {} {:?} in graph `{first}` but as {} {:?} in graph `{}`",
                            p.name,
                            fmt_shape(shape),
                            init,
                            fmt_shape(&p.shape),
                            p.init,
                            graph.name
                        ));
                    }
                    continue;
                }
                seen.insert(p.name, (p.shape.clone(), p.init, graph.name.clone()));
                match &p.shape {
                    Some(shape) => {
                        weights.insert(p.name, init_tensor(p.name, p.init, shape, seed));
                    }
                    None => problems.push(format!(
                        "`{}` has a symbolic shape ({}); parameters must have constant shapes",
                        p.name, p.declared
                    )),
                }
            }
        }
        if problems.is_empty() {
            Ok(weights)
        } else {
            let names: Vec<&str> = graphs.iter().map(|g| g.name.as_str()).collect();
            Err(RuntimeError::Weights {
                graph: names.join(", "),
                problems,
            })
        }
    }

    /// Add or replace a dense tensor (a stored-format weight of that name
    /// stays until removed: a backend may keep a decoded copy beside it);
    /// returns the dense tensor it replaced.
    pub fn insert(&mut self, name: impl Into<String>, tensor: Tensor) -> Option<Tensor> {
        self.tensors.insert(name.into(), tensor)
    }

    /// Add or replace a weight in its stored format; a dense tensor of that
    /// name goes.
    pub fn insert_quant(&mut self, name: impl Into<String>, weight: QuantMatrix) {
        let name = name.into();
        self.tensors.remove(&name);
        self.quantised.insert(name, weight);
    }

    /// The dense tensor named `name` (not a stored-format weight: see
    /// [`Weights::dense`]).
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// The stored-format weight named `name`.
    pub fn quant(&self, name: &str) -> Option<&QuantMatrix> {
        self.quantised.get(name)
    }

    /// The stored-format weight named `name` when no dense tensor of that
    /// name is held: what a backend reads from its blocks (a decoded copy,
    /// when there is one, is what other readers use).
    pub fn stored_only(&self, name: &str) -> Option<&QuantMatrix> {
        if self.tensors.contains_key(name) {
            return None;
        }
        self.quantised.get(name)
    }

    /// Parameter `name` as a dense f32 tensor: the tensor itself, or its
    /// stored-format weight decoded.
    pub fn dense(&self, name: &str) -> Option<Result<Cow<'_, Tensor>>> {
        match (self.tensors.get(name), self.quantised.get(name)) {
            (Some(t), _) => Some(Ok(Cow::Borrowed(t))),
            (None, Some(q)) => Some(q.dequantize().map(Cow::Owned)),
            (None, None) => None,
        }
    }

    /// The shape of parameter `name`, dense or stored.
    pub fn shape_of(&self, name: &str) -> Option<&[usize]> {
        (self.tensors.get(name).map(Tensor::shape))
            .or_else(|| self.quant(name).map(QuantMatrix::shape))
    }

    /// Remove and return the dense tensor named `name`.
    pub fn remove(&mut self, name: &str) -> Option<Tensor> {
        self.tensors.remove(name)
    }

    /// Remove and return the stored-format weight named `name`.
    pub fn remove_quant(&mut self, name: &str) -> Option<QuantMatrix> {
        self.quantised.remove(name)
    }

    /// Number of parameters (a name held both ways counts once).
    pub fn len(&self) -> usize {
        self.tensors.len()
            + self
                .quantised
                .keys()
                .filter(|n| !self.tensors.contains_key(*n))
                .count()
    }

    /// Whether there are no tensors.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty() && self.quantised.is_empty()
    }

    /// `(name, tensor)` pairs of the dense tensors, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.tensors.iter().map(|(n, t)| (n.as_str(), t))
    }

    /// `(name, weight)` pairs of the stored-format weights, in name order.
    pub fn iter_quant(&self) -> impl Iterator<Item = (&str, &QuantMatrix)> {
        self.quantised.iter().map(|(n, t)| (n.as_str(), t))
    }

    /// Whether any weight is held in a stored format.
    pub fn has_quantised(&self) -> bool {
        !self.quantised.is_empty()
    }

    /// Elements of every parameter (each name once).
    pub fn numel(&self) -> usize {
        let dense: usize = self.tensors.values().map(Tensor::numel).sum();
        let mut seen = std::collections::BTreeSet::new();
        let mut stored = 0;
        for (n, q) in &self.quantised {
            if self.tensors.contains_key(n) {
                continue;
            }
            // A joined weight shares its parts' segments: each once.
            for s in q.segments() {
                if seen.insert(s.bytes.key()) {
                    stored += s.rows * q.cols();
                }
            }
        }
        dense + stored
    }

    /// Bytes the weights occupy: 4 per dense element, the stored bytes of
    /// the others (shared with a mapped file or not; bytes shared by a
    /// joined weight and its parts count once).
    pub fn n_bytes(&self) -> usize {
        let dense: usize = self.tensors.values().map(|t| 4 * t.numel()).sum();
        dense + self.stored_bytes().values().sum::<usize>()
    }

    /// Bytes of the stored-format weights by format, each byte range once.
    pub fn stored_bytes(&self) -> BTreeMap<BlockFormat, usize> {
        let mut seen = std::collections::BTreeSet::new();
        let mut by = BTreeMap::new();
        for q in self.quantised.values() {
            for s in q.segments() {
                if seen.insert(s.bytes.key()) {
                    *by.entry(s.format).or_default() += s.bytes.len();
                }
            }
        }
        by
    }

    /// Decode every stored-format weight into a dense tensor (for a model
    /// that leaves stored precision: export, `--precision f32`).
    pub fn decode_all(&mut self) -> Result<()> {
        for (name, q) in std::mem::take(&mut self.quantised) {
            if let std::collections::btree_map::Entry::Vacant(slot) = self.tensors.entry(name) {
                slot.insert(q.dequantize()?);
            }
        }
        Ok(())
    }

    /// Check that every parameter of `graph` is present with dtype f32 and
    /// its declared shape. The error lists every missing or mismatched name.
    /// Extra tensors are allowed (one map can serve several graphs).
    pub fn check(&self, graph: &Graph) -> Result<()> {
        let mut problems = Vec::new();
        let mut checked = std::collections::BTreeSet::new();
        for p in param_decls(graph) {
            if !checked.insert(p.name) {
                continue;
            }
            if let Some(q) = self.stored_only(p.name) {
                if p.shape.as_deref() != Some(q.shape()) {
                    problems.push(format!(
                        "`{}` is {} {:?} but the graph declares {}",
                        p.name,
                        q.formats_text(),
                        q.shape(),
                        p.declared
                    ));
                }
                continue;
            }
            let Some(t) = self.get(p.name) else {
                problems.push(format!("missing `{}` ({})", p.name, p.declared));
                continue;
            };
            let shape_ok = p.shape.as_deref() == Some(t.shape());
            if t.dtype() != DType::F32 || !shape_ok {
                problems.push(format!(
                    "`{}` is {}{:?} but the graph declares {}",
                    p.name,
                    t.dtype(),
                    t.shape(),
                    p.declared
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(RuntimeError::Weights {
                graph: graph.name.clone(),
                problems,
            })
        }
    }
}

fn fmt_shape(shape: &Option<Vec<usize>>) -> String {
    match shape {
        Some(s) => format!("{s:?}"),
        None => "(symbolic)".into(),
    }
}

/// The seed of parameter `name`'s random stream under run seed `seed`:
/// `splitmix64(fnv1a64(name) ^ splitmix64(seed))`. Stable across releases;
/// changing it changes every randomly initialised model.
pub fn parameter_seed(seed: u64, name: &str) -> u64 {
    splitmix64(fnv1a64(name.as_bytes()) ^ splitmix64(seed))
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The tensor for one parameter.
fn init_tensor(name: &str, init: Init, shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let data = match init {
        Init::Fill(v) => vec![v; n],
        Init::Normal { std } => {
            let mut rng = ChaCha8Rng::seed_from_u64(parameter_seed(seed, name));
            let mut out = Vec::with_capacity(n + 1);
            while out.len() < n {
                let (z0, z1) = box_muller(&mut rng);
                out.push((f64::from(std) * z0) as f32);
                out.push((f64::from(std) * z1) as f32);
            }
            out.truncate(n);
            out
        }
    };
    Tensor::from_f32(shape, data).expect("length matches shape by construction")
}

/// Two independent standard normals.
fn box_muller(rng: &mut ChaCha8Rng) -> (f64, f64) {
    // Uniforms from the top 53 bits: u1 in (0, 1] (so ln(u1) is finite), u2 in [0, 1).
    let unit = |x: u64| (x >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
    let u1 = 1.0 - unit(rng.next_u64());
    let u2 = unit(rng.next_u64());
    let r = (-2.0 * u1.ln()).sqrt();
    let theta = 2.0 * std::f64::consts::PI * u2;
    (r * theta.cos(), r * theta.sin())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_reference() {
        // Reference values of 64-bit FNV-1a.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn normal_moments() {
        let t = init_tensor("w", Init::Normal { std: 0.5 }, &[100, 100], 7);
        let v = t.as_f32().unwrap();
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        let var = v
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / n;
        assert!(mean.abs() < 0.02, "mean {mean}");
        assert!((var.sqrt() - 0.5).abs() < 0.02, "std {}", var.sqrt());
    }
}
