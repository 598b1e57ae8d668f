//! The readers family files share (their functions and field types):
//! HF activation names, `layer_types`, sliding-window placement, and the
//! checks every config gets. Everything per family is data
//! (`models/families/*.toml`, see [`super::family`]).

use serde_json::Value;

use super::cfg::{Cfg, Result, show};
use crate::spec::*;

// ---------------------------------------------------------------------------
// Shared pieces
// ---------------------------------------------------------------------------

/// HF activation name → kiln activation; anything else is an error naming `field`.
pub(crate) fn activation(cfg: &Cfg, field: &str, name: &str) -> Result<Activation> {
    Ok(match name {
        "gelu" | "gelu_python" => Activation::Gelu,
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" | "gelu_accurate" | "gelu_python_tanh" => {
            Activation::GeluTanh
        }
        "silu" | "swish" => Activation::Silu,
        "relu" => Activation::Relu,
        "relu2" => Activation::Relu2,
        other => {
            return Err(cfg.err(
                field,
                format!(
                    "= {other:?} is not an activation kiln supports (relu; relu2 (squared relu); gelu, gelu_python → exact gelu; \
                     gelu_new, gelu_pytorch_tanh, gelu_fast, gelu_accurate, gelu_python_tanh → gelu-tanh; silu, swish → silu)"
                ),
            ));
        }
    })
}

/// The kiln spelling of an activation (`gelu-tanh`).
pub(crate) fn activation_name(a: Activation) -> &'static str {
    match a {
        Activation::Relu => "relu",
        Activation::Gelu => "gelu",
        Activation::GeluTanh => "gelu-tanh",
        Activation::Silu => "silu",
        Activation::Relu2 => "relu2",
    }
}

/// `layer_types` (transformers 5): per layer, sliding (`true`) or full attention.
pub(crate) fn layer_types(cfg: &Cfg, layers: usize) -> Result<Option<Vec<bool>>> {
    let Some(v) = cfg.present("layer_types") else {
        return Ok(None);
    };
    let Some(arr) = v.as_array() else {
        return Err(cfg.err(
            "layer_types",
            format!("must be an array of strings, found {}", show(v)),
        ));
    };
    if arr.len() != layers {
        return Err(cfg.err(
            "layer_types",
            format!("has {} entries but num_hidden_layers = {layers}", arr.len()),
        ));
    }
    arr.iter()
        .enumerate()
        .map(|(i, t)| match t.as_str() {
            Some("sliding_attention") => Ok(true),
            Some("full_attention") => Ok(false),
            _ => Err(cfg.err(
                &format!("layer_types[{i}]"),
                format!(
                    "= {} is not supported (kiln expresses \"full_attention\" and \"sliding_attention\")",
                    show(t)
                ),
            )),
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// Where a sliding window goes, for the layers `sliding` marks: `(model-wide
/// window, per-layer overrides)`. Model-wide when every layer has it, else
/// one `[[layer]]` override with the tightest selector.
pub(crate) fn window_layers(
    window: Option<usize>,
    sliding: &[bool],
) -> (Option<usize>, Vec<LayerOverride>) {
    let Some(w) = window else {
        return (None, Vec::new());
    };
    let picked: Vec<usize> = (0..sliding.len()).filter(|&i| sliding[i]).collect();
    let n = sliding.len();
    if picked.is_empty() {
        return (None, Vec::new());
    }
    if picked.len() == n {
        return (Some(w), Vec::new());
    }
    let even: Vec<usize> = (0..n).step_by(2).collect();
    let odd: Vec<usize> = (1..n).step_by(2).collect();
    let select = if picked == even {
        Selector::Text("even".into())
    } else if picked == odd {
        Selector::Text("odd".into())
    } else if picked == (picked[0]..n).collect::<Vec<_>>() {
        Selector::Text(format!("{}..", picked[0]))
    } else {
        Selector::List(picked)
    };
    let mut t = toml::Table::new();
    t.insert(
        "sliding_window".into(),
        toml::Value::Integer(i64::try_from(w).unwrap_or(i64::MAX)),
    );
    (
        None,
        vec![LayerOverride {
            select,
            stack: None,
            attention: Some(t),
            mlp: None,
            norm: None,
            residual: None,
            positions: None,
        }],
    )
}

/// Refuse numerics-changing fields no family here reads.
pub(crate) fn common_checks(cfg: &Cfg) -> Result<()> {
    if let Some(v) = cfg.present("quantization_config")
        && !matches!(v, Value::Object(m) if m.is_empty())
    {
        return Err(cfg.err(
            "quantization_config",
            "is set: quantized checkpoints (GPTQ, AWQ, bitsandbytes, ...) are not supported; kiln computes with f32 weights",
        ));
    }
    Ok(())
}
