//! RoPE settings in both config layouts.
//!
//! transformers ≤ 4 writes `rope_theta`, `partial_rotary_factor` (GPT-NeoX:
//! `rotary_emb_base`, `rotary_pct`) at the top level and scaling as
//! `rope_scaling = {"type" | "rope_type": ..., "factor": ...}`; transformers 5
//! nests everything in `rope_parameters = {"rope_type", "rope_theta",
//! "partial_rotary_factor", ...}`. As in HF's `convert_rope_params_to_dict`, a
//! non-empty `rope_scaling` replaces `rope_parameters`, and values inside the
//! dict win over the top-level keys.

use serde_json::{Map, Value};

use super::cfg::{Cfg, Result, fmt_f64, show};
use crate::spec::{PairLayout, PositionKind, Positions, RopeScaling};

/// Where one family keeps its RoPE base and rotated fraction.
pub(crate) struct RopeKeys<'k> {
    /// Top-level keys for the base, in priority order (after the dict's `rope_theta`).
    pub theta: &'k [&'k str],
    /// The class's `default_theta`.
    pub default_theta: f64,
    /// Top-level keys for the rotated fraction, in priority order.
    pub partial: &'k [&'k str],
    /// The class default for the fraction (`None`: the family rotates whole heads unless told).
    pub default_partial: Option<f64>,
    /// Top-level keys this family's HF class does *not* read for the base but
    /// that a reader could take for it: an error when they disagree with the base used.
    pub ignored_theta: &'k [&'k str],
    /// Same for the fraction.
    pub ignored_partial: &'k [&'k str],
}

const COMMON_KEYS: &[&str] = &["rope_type", "type", "rope_theta", "partial_rotary_factor"];

/// Read the RoPE settings; `head_dim` checks the rotated channel count,
/// `max_positions` is HF's fallback for `original_max_position_embeddings`.
///
/// With `layer_type` (`"sliding_attention"`), a transformers-5
/// `rope_parameters` nested per attention type (Gemma-3, OLMo-3, ModernBERT)
/// is read at that entry; a flat one is read as it is.
pub(crate) fn rope(
    cfg: &mut Cfg,
    keys: &RopeKeys,
    head_dim: usize,
    max_positions: usize,
    layer_type: Option<&str>,
) -> Result<Positions> {
    let scaling = match cfg.present("rope_scaling") {
        Some(v) => Some(cfg.as_object("rope_scaling", v)?),
        None => None,
    };
    let params = match cfg.present("rope_parameters") {
        Some(v) => Some(cfg.as_object("rope_parameters", v)?),
        None => None,
    };
    let empty = Map::new();
    let nested = params.is_some_and(|p| p.values().any(|v| v.is_object()));
    let (dname, dict): (String, &Map<String, Value>) = match (layer_type, scaling, params) {
        (Some(lt), _, Some(p)) if nested => match p.get(lt) {
            Some(Value::Object(sub)) => (format!("rope_parameters.{lt}"), sub),
            _ => {
                return Err(cfg.err(
                    &format!("rope_parameters.{lt}"),
                    format!(
                        "is missing: the RoPE parameters are given per attention type ({}), and this family reads the `{lt}` entry",
                        p.keys().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
        },
        (_, Some(s), _) if !s.is_empty() => ("rope_scaling".into(), s),
        (_, _, Some(p)) => ("rope_parameters".into(), p),
        _ => ("rope_parameters".into(), &empty),
    };
    let field = |k: &str| format!("{dname}.{k}");
    let get = |k: &str| dict.get(k).filter(|v| !v.is_null());

    for (k, v) in dict {
        if v.is_object() {
            return Err(cfg.err(
                &field(k),
                "holds per-layer-type RoPE parameters (a nested table per attention type), which kiln does not \
                 support: it applies one RoPE setting to every layer",
            ));
        }
    }

    // Scaling type.
    let ty = match (get("rope_type"), get("type")) {
        (Some(a), Some(b)) if a != b => {
            return Err(cfg.err(
                &field("type"),
                format!(
                    "is {} but `{}` is {}; they name the same setting",
                    show(b),
                    field("rope_type"),
                    show(a)
                ),
            ));
        }
        (Some(a), _) => (field("rope_type"), cfg.as_str(&field("rope_type"), a)?),
        (None, Some(b)) => (field("type"), cfg.as_str(&field("type"), b)?),
        (None, None) => (field("rope_type"), "default"),
    };
    let (ty_field, ty) = ty;
    let extra: &[&str] = match ty {
        "default" => &[],
        "linear" => &["factor"],
        "llama3" => &[
            "factor",
            "low_freq_factor",
            "high_freq_factor",
            "original_max_position_embeddings",
        ],
        "yarn" => &[
            "factor",
            "original_max_position_embeddings",
            "beta_fast",
            "beta_slow",
            "attention_factor",
            "mscale",
            "mscale_all_dim",
            "truncate",
        ],
        "dynamic" => {
            return Err(cfg.err(
                &ty_field,
                "= \"dynamic\" is not supported: dynamic NTK scaling recomputes the frequencies from the \
                 sequence length at run time, and kiln's RoPE scaling is static (supported: default, linear, llama3, yarn)",
            ));
        }
        other => {
            return Err(cfg.err(
                &ty_field,
                format!(
                    "= {other:?} is not supported (supported RoPE types: default, linear, llama3, yarn)"
                ),
            ));
        }
    };
    for k in dict.keys() {
        if !COMMON_KEYS.contains(&k.as_str()) && !extra.contains(&k.as_str()) {
            return Err(cfg.err(
                &field(k),
                format!(
                    "is not a parameter of RoPE type {ty:?} that kiln can express (it reads {})",
                    COMMON_KEYS
                        .iter()
                        .chain(extra)
                        .filter(|k| **k != "type")
                        .copied()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }

    // Base frequency.
    let theta = match get("rope_theta") {
        Some(v) => cfg.as_f64(&field("rope_theta"), v)?,
        None => match keys.theta.iter().find(|k| cfg.present(k).is_some()) {
            Some(k) => cfg.as_f64(k, cfg.present(k).unwrap_or(&Value::Null))?,
            None => cfg.f64_or(keys.theta[0], keys.default_theta)?,
        },
    };
    if theta.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
        return Err(cfg.err(
            "rope_theta",
            format!("must be positive, found {}", fmt_f64(theta)),
        ));
    }
    for k in keys.ignored_theta {
        if let Some(x) = cfg.f64_opt(k)?
            && x != theta
        {
            return Err(cfg.err(
                k,
                format!(
                    "is {} but this model type takes its RoPE base from `{}` (= {}); the file is ambiguous — remove one",
                    fmt_f64(x),
                    keys.theta.first().copied().unwrap_or("rope_theta"),
                    fmt_f64(theta)
                ),
            ));
        }
    }

    // Rotated fraction.
    let (pfield, partial) = match get("partial_rotary_factor") {
        Some(v) => (
            field("partial_rotary_factor"),
            cfg.as_f64(&field("partial_rotary_factor"), v)?,
        ),
        None => match keys.partial.iter().find(|k| cfg.present(k).is_some()) {
            Some(k) => (
                k.to_string(),
                cfg.as_f64(k, cfg.present(k).unwrap_or(&Value::Null))?,
            ),
            None => match keys.default_partial {
                Some(d) => {
                    let key = keys
                        .partial
                        .first()
                        .copied()
                        .unwrap_or("partial_rotary_factor");
                    (key.to_string(), cfg.f64_or(key, d)?)
                }
                None => ("partial_rotary_factor".to_string(), 1.0),
            },
        },
    };
    for k in keys.ignored_partial {
        if let Some(x) = cfg.f64_opt(k)?
            && x != partial
        {
            return Err(cfg.err(
                k,
                format!(
                    "is {} but this model type takes its rotated fraction from `{pfield}` (= {}); the file is ambiguous — remove one",
                    fmt_f64(x),
                    fmt_f64(partial)
                ),
            ));
        }
    }
    let fraction = rotary_fraction(cfg, &pfield, partial, head_dim)?;

    let orig = |cfg: &mut Cfg| -> Result<usize> {
        match get("original_max_position_embeddings") {
            Some(v) => cfg.as_usize(&field("original_max_position_embeddings"), v),
            None => match cfg.usize_opt("original_max_position_embeddings")? {
                Some(x) => Ok(x),
                None => {
                    cfg.note(format!(
                        "{} absent: HF uses max_position_embeddings = {max_positions} as the original context",
                        field("original_max_position_embeddings")
                    ));
                    Ok(max_positions)
                }
            },
        }
    };
    let req_f64 = |cfg: &Cfg, k: &str| -> Result<f64> {
        match get(k) {
            Some(v) => cfg.as_f64(&field(k), v),
            None => Err(cfg.err(&field(k), format!("is required for RoPE type {ty:?}"))),
        }
    };
    let positive = |cfg: &Cfg, k: &str, x: f64| -> Result<f64> {
        if x > 0.0 {
            Ok(x)
        } else {
            Err(cfg.err(&field(k), format!("must be positive, found {}", fmt_f64(x))))
        }
    };

    let scaling = match ty {
        "linear" => {
            let factor = req_f64(cfg, "factor")?;
            Some(RopeScaling::Linear {
                factor: positive(cfg, "factor", factor)?,
            })
        }
        "llama3" => {
            let factor = req_f64(cfg, "factor")?;
            let low = req_f64(cfg, "low_freq_factor")?;
            let high = req_f64(cfg, "high_freq_factor")?;
            Some(RopeScaling::Llama3 {
                factor: positive(cfg, "factor", factor)?,
                low_freq_factor: positive(cfg, "low_freq_factor", low)?,
                high_freq_factor: positive(cfg, "high_freq_factor", high)?,
                original_max_positions: orig(cfg)?,
            })
        }
        "yarn" => {
            let original = orig(cfg)?;
            if original == 0 {
                return Err(cfg.err(
                    &field("original_max_position_embeddings"),
                    "must be positive",
                ));
            }
            // HF: a null factor means max_position_embeddings / original.
            let factor = match dict.get("factor") {
                Some(Value::Null) => max_positions as f64 / original as f64,
                Some(v) => cfg.as_f64(&field("factor"), v)?,
                None => return Err(cfg.err(&field("factor"), "is required for RoPE type \"yarn\"")),
            };
            let factor = positive(cfg, "factor", factor)?;
            // HF: `get("beta_fast") or 32`, `get("beta_slow") or 1` (a 0 or null means the default).
            let beta = |cfg: &Cfg, k: &str, d: f64| -> Result<f64> {
                match get(k) {
                    Some(v) => cfg
                        .as_f64(&field(k), v)
                        .map(|x| if x == 0.0 { d } else { x }),
                    None => Ok(d),
                }
            };
            let beta_fast = beta(cfg, "beta_fast", 32.0)?;
            let beta_slow = beta(cfg, "beta_slow", 1.0)?;
            if let Some(v) = get("truncate")
                && !cfg.as_bool(&field("truncate"), v)?
            {
                return Err(cfg.err(
                    &field("truncate"),
                    "= false is not supported: kiln's YaRN always rounds the correction range outward (HF's default, truncate = true)",
                ));
            }
            let mscale = |s: f64, m: f64| {
                if s <= 1.0 {
                    1.0
                } else {
                    0.1 * m * s.ln() + 1.0
                }
            };
            let attention_factor = match get("attention_factor") {
                Some(v) => cfg.as_f64(&field("attention_factor"), v)?,
                None => {
                    let m = get("mscale")
                        .map(|v| cfg.as_f64(&field("mscale"), v))
                        .transpose()?;
                    let m_all = get("mscale_all_dim")
                        .map(|v| cfg.as_f64(&field("mscale_all_dim"), v))
                        .transpose()?;
                    match (m, m_all) {
                        (Some(m), Some(a)) if m != 0.0 && a != 0.0 => {
                            mscale(factor, m) / mscale(factor, a)
                        }
                        _ => mscale(factor, 1.0),
                    }
                }
            };
            Some(RopeScaling::Yarn {
                factor,
                original_max_positions: original,
                beta_fast,
                beta_slow,
                attention_factor: Some(attention_factor),
            })
        }
        _ => None,
    };

    Ok(Positions {
        kind: PositionKind::Rope,
        offset: 0,
        theta: Some(theta),
        fraction: Some(fraction),
        layout: Some(PairLayout::Half), // HF `rotate_half` in every family here
        scaling,
        buckets: None,
        max_distance: None,
        frequencies: None,
        per_layer: None,
    })
}

/// HF rotates `int(head_dim * partial)` channels; kiln rotates
/// `round(head_dim * fraction)` rounded down to even. When HF's count `2k` is
/// even, `head_dim * partial` lies in `[2k, 2k + 1)`, which kiln maps to `2k`
/// too, so the fraction carries over unchanged; an odd or zero count is an error.
fn rotary_fraction(cfg: &Cfg, field: &str, partial: f64, head_dim: usize) -> Result<f64> {
    if !(partial > 0.0 && partial <= 1.0) {
        return Err(cfg.err(
            field,
            format!("must be in (0, 1], found {}", fmt_f64(partial)),
        ));
    }
    let hf = (head_dim as f64 * partial) as usize; // Python int(): truncation
    if hf == 0 || !hf.is_multiple_of(2) {
        return Err(cfg.err(
            field,
            format!(
                "= {} rotates int({head_dim} * {}) = {hf} channels per head; RoPE needs a positive even count",
                fmt_f64(partial),
                fmt_f64(partial)
            ),
        ));
    }
    Ok(partial)
}
