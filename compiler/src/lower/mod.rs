//! Lowering: resolved spec → IR graphs. The only module that knows both.
//!
//! Graph interfaces (symbolic dims: `batch`, `seq` new tokens, `past` cached
//! tokens, `src` encoder length):
//!
//! **encoder** (encoder and encoder-decoder models)
//! - inputs: `tokens` i32[batch, seq]; `attention_mask` i32[batch, seq] (1 = token, 0 = padding);
//!   `token_types` i32[batch, seq] when `embeddings.token_types > 0`
//! - outputs: `hidden` f32[batch, seq, d]; by head: `logits` (mlm/lm), `pooled` (pooler),
//!   `embedding` (mean-pool); encoder-decoder: `cross.{i}.k`, `cross.{i}.v` f32[batch, kv, seq, hd]
//!   for each decoder block, projected once per source sequence.
//!
//! **decoder** (decoder and encoder-decoder models): one step of incremental
//! decoding; a prefill is the same graph with `past = 0`.
//! - inputs: `tokens` i32[batch, seq]; `attention_mask` i32[batch, past+seq];
//!   `past.{i}.k`, `past.{i}.v` f32[batch, kv, past, hd]; encoder-decoder adds
//!   `cross.{i}.k`, `cross.{i}.v` f32[batch, kv, src, hd] and `encoder_mask` i32[batch, src]
//! - outputs: `logits` f32[batch, seq, vocab] (or `hidden` only with head `none`), `hidden`,
//!   `present.{i}.k`, `present.{i}.v` f32[batch, kv, past+seq, hd]

pub mod attention;
pub mod linear;
pub mod mlp;
pub mod norm;
pub mod positions;
mod stack;

use crate::ir::{
    BATCH, Builder, DType, Dim, Graph, Init, IrError, NodeId, PAST, ReduceOp, SEQ, SRC, UnaryOp,
};
use crate::spec::{Architecture, HeadKind, ResolvedSpec, Spec};
use linear::{WEIGHT_STD, linear};
use stack::{StackKind, cross_kv, padding_mask, stack};

pub use mlp::activation;

/// The graphs a model is made of: the IR's module type, under the name the
/// lowering has always given it.
pub type Lowered = crate::ir::Module;

/// Lower a resolved spec into its graphs.
pub fn lower(rs: &ResolvedSpec) -> Result<Lowered, IrError> {
    let spec = &rs.spec;
    let (encoder, decoder) = match spec.architecture {
        Architecture::Encoder => (Some(encoder_graph(rs, false)?), None),
        Architecture::Decoder => (None, Some(decoder_graph(rs, &rs.layers, false)?)),
        Architecture::EncoderDecoder => (
            Some(encoder_graph(rs, true)?),
            Some(decoder_graph(rs, &rs.decoder, true)?),
        ),
    };
    Ok(Lowered {
        name: spec.name.clone(),
        vocab_size: spec.vocab_size,
        max_positions: spec.max_positions,
        encoder,
        decoder,
    })
}

fn encoder_graph(rs: &ResolvedSpec, with_decoder: bool) -> Result<Graph, IrError> {
    let spec = &rs.spec;
    let mut g = Graph::new(format!("{}.encoder", spec.name));
    let mut b = Builder::new(&mut g);
    let bs = vec![Dim::sym(BATCH), Dim::sym(SEQ)];
    let tokens = b.input("tokens", DType::I32, bs.clone())?;
    let mask = b.input("attention_mask", DType::I32, bs.clone())?;
    let types = if spec.embeddings.token_types > 0 {
        Some(b.input("token_types", DType::I32, bs)?)
    } else {
        None
    };
    let prefix = if with_decoder { "encoder" } else { "" };
    let kind = StackKind {
        prefix,
        causal: false,
    };
    let out = stack(
        &mut b,
        spec,
        &rs.layers,
        &kind,
        tokens,
        types,
        mask,
        &[],
        None,
    )?;
    let mut outputs = vec![("hidden".to_string(), out.hidden)];
    if with_decoder {
        for (i, l) in rs.decoder.iter().enumerate() {
            let (k, v) = cross_kv(&mut b, spec, l, i, out.hidden)?;
            outputs.push((format!("cross.{i}.k"), k));
            outputs.push((format!("cross.{i}.v"), v));
        }
    } else {
        outputs.extend(head(&mut b, spec, out.hidden, mask)?);
    }
    for (n, id) in outputs {
        g.set_output(n, id);
    }
    Ok(g)
}

fn decoder_graph(
    rs: &ResolvedSpec,
    layers: &[crate::spec::LayerSpec],
    enc_dec: bool,
) -> Result<Graph, IrError> {
    let spec = &rs.spec;
    let d = spec.d_model;
    let mut g = Graph::new(format!("{}.decoder", spec.name));
    let mut b = Builder::new(&mut g);
    let (batch, seq, past) = (Dim::sym(BATCH), Dim::sym(SEQ), Dim::sym(PAST));
    let tokens = b.input("tokens", DType::I32, vec![batch.clone(), seq.clone()])?;
    let mask = b.input(
        "attention_mask",
        DType::I32,
        vec![batch.clone(), past.clone() + seq.clone()],
    )?;
    let mut caches = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let (kvh, hd) = (l.attention.kv_heads(), l.attention.head_dim(d));
        let shape = vec![batch.clone(), Dim::c(kvh), past.clone(), Dim::c(hd)];
        let k = b.input(&format!("past.{i}.k"), DType::F32, shape.clone())?;
        let v = b.input(&format!("past.{i}.v"), DType::F32, shape)?;
        caches.push((k, v));
    }
    let mut cross = Vec::new();
    let mut enc_mask = None;
    if enc_dec {
        for (i, l) in layers.iter().enumerate() {
            let (kvh, hd) = (l.attention.kv_heads(), l.attention.head_dim(d));
            let shape = vec![batch.clone(), Dim::c(kvh), Dim::sym(SRC), Dim::c(hd)];
            let k = b.input(&format!("cross.{i}.k"), DType::F32, shape.clone())?;
            let v = b.input(&format!("cross.{i}.v"), DType::F32, shape)?;
            cross.push((k, v));
        }
        let m = b.input(
            "encoder_mask",
            DType::I32,
            vec![batch.clone(), Dim::sym(SRC)],
        )?;
        enc_mask = Some(b.scoped("decoder.mask", |b| padding_mask(b, m))?);
    }
    let prefix = if enc_dec { "decoder" } else { "" };
    let kind = StackKind {
        prefix,
        causal: true,
    };
    let cross_arg = enc_mask.map(|m| (cross.as_slice(), m));
    let out = stack(
        &mut b, spec, layers, &kind, tokens, None, mask, &caches, cross_arg,
    )?;
    let mut outputs = vec![("hidden".to_string(), out.hidden)];
    outputs.extend(head(&mut b, spec, out.hidden, mask)?);
    for (i, (k, v)) in out.present.into_iter().enumerate() {
        outputs.push((format!("present.{i}.k"), k));
        outputs.push((format!("present.{i}.v"), v));
    }
    for (n, id) in outputs {
        g.set_output(n, id);
    }
    Ok(g)
}

/// The model head on the final hidden states `[batch, seq, d]`.
fn head(
    b: &mut Builder,
    spec: &Spec,
    x: NodeId,
    mask: NodeId,
) -> Result<Vec<(String, NodeId)>, IrError> {
    let d = spec.d_model;
    let h = &spec.head;
    // The MLM head works at the embedding width (`embeddings.size`, ALBERT
    // and ELECTRA), so that its vocabulary projection can be the embedding.
    let e = spec.embeddings.size.unwrap_or(d);
    b.scoped("head", |b| {
        let vocab = |b: &mut Builder, x: NodeId, width: usize| -> Result<NodeId, IrError> {
            let x = b.mul_scalar(x, h.input_scale.value(d))?;
            let w = if h.tied {
                embed_table(b)?
            } else {
                b.param(
                    "weight",
                    &[spec.vocab_size, width],
                    Init::Normal { std: WEIGHT_STD },
                )?
            };
            let wt = b.transpose_last(w)?;
            let mut y = b.matmul(x, wt)?;
            if h.bias {
                let bias = b.param("bias", &[spec.vocab_size], Init::Fill(0.0))?;
                y = b.add2(y, bias)?;
            }
            if let Some(c) = h.softcap {
                y = b.softcap(y, c)?;
            }
            Ok(y)
        };
        match h.kind {
            HeadKind::None => Ok(vec![]),
            HeadKind::Lm => Ok(vec![("logits".into(), vocab(b, x, d)?)]),
            HeadKind::Mlm => {
                let t = b.scoped("transform", |b| {
                    let t = linear(b, "dense", x, d, e, h.transform_bias)?;
                    let t = activation(b, spec.mlp.activation, t)?;
                    norm::norm(b, &spec.norm, "norm", t, e)
                })?;
                Ok(vec![("logits".into(), vocab(b, t, e)?)])
            }
            HeadKind::Pooler => {
                let s = b.shape(x);
                let first = b.slice(x, 1, Dim::c(0), Dim::c(1))?;
                let first = b.reshape(first, vec![s[0].clone(), Dim::c(d)])?;
                let p = b.scoped("pooler", |b| linear(b, "dense", first, d, d, true))?;
                let p = b.unary(UnaryOp::Tanh, p)?;
                Ok(vec![("pooled".into(), p)])
            }
            HeadKind::MeanPool => {
                // sentence-transformers: sum(x * m) / max(sum(m), 1e-9), then optionally L2.
                let s = b.shape(x);
                let m = b.cast(mask, DType::F32)?;
                let m = b.reshape(m, vec![s[0].clone(), s[1].clone(), Dim::c(1)])?;
                let xm = b.mul(x, m)?;
                let sum = b.reduce(ReduceOp::Sum, xm, &[1])?;
                let cnt = b.reduce(ReduceOp::Sum, m, &[1])?;
                let eps = b.scalar(1e-9)?;
                let cnt = b.binary(crate::ir::BinaryOp::Max, cnt, eps)?;
                let mean = b.div(sum, cnt)?;
                let mut e = b.reshape(mean, vec![s[0].clone(), Dim::c(d)])?;
                if h.normalize {
                    let sq = b.mul(e, e)?;
                    let ss = b.reduce(ReduceOp::Sum, sq, &[1])?;
                    let n = b.unary(UnaryOp::Sqrt, ss)?;
                    let eps = b.scalar(1e-12)?;
                    let n = b.binary(crate::ir::BinaryOp::Max, n, eps)?;
                    e = b.div(e, n)?;
                }
                Ok(vec![("embedding".into(), e)])
            }
        }
    })
}

/// The shared token embedding `embed.tokens`, which tied heads reuse: one
/// parameter with two uses, never a copy.
fn embed_table(b: &mut Builder) -> Result<NodeId, IrError> {
    b.graph
        .parameters()
        .into_iter()
        .find(|&p| matches!(&b.graph.node(p).op, crate::ir::Op::Parameter { name, .. } if name == "embed.tokens"))
        .ok_or_else(|| IrError {
            scope: b.scope(),
            op: "param".into(),
            message: "tied head without a token embedding `embed.tokens`".into(),
        })
}
