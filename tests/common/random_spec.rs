//! Random small specs over the whole knob space, as TOML text, so tests go
//! through the real front end (parsing, validation, defaults, per-layer
//! expansion) exactly as a user's file would.
//!
//! ```ignore
//! let toml = random_spec_toml(7);                  // deterministic per seed
//! match load_random_spec(7) {                     // = spec::load_str(&toml, "random-7.toml")
//!     Ok(rs) => { /* lower, run, compare */ }
//!     Err(e) => { /* the validator rejected a combination: count it */ }
//! }
//! ```
//!
//! Sizes are tiny (d_model ≤ 40, ≤ 3 blocks, vocab ≤ 64, max_positions ≥ 8)
//! so a spec lowers and runs in milliseconds. Most specs are valid; a few
//! knob combinations the validator rejects (odd rotary widths, odd
//! `d_model` with sinusoidal positions, selectors that pick no layer,
//! `parallel` with post-norm, ...) come up on purpose, at a low rate, so
//! validation is exercised too.

use super::rng::Rng;
use kiln_compiler::spec::{self, ResolvedSpec, SpecError};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

/// Resolve the spec of `seed` (`random_spec_toml`) through `spec::load_str`.
pub fn load_random_spec(seed: u64) -> Result<ResolvedSpec, Box<SpecError>> {
    let toml = random_spec_toml(seed);
    spec::load_str(&toml, Path::new(&format!("random-{seed}.toml"))).map_err(Box::new)
}

/// TOML text of a random spec, a pure function of `seed`.
pub fn random_spec_toml(seed: u64) -> String {
    Gen::new(seed).spec()
}

/// A TOML document under construction: top-level keys, then tables in order.
#[derive(Default)]
struct Doc {
    top: Vec<String>,
    tables: Vec<(String, Vec<String>)>,
    overrides: Vec<Vec<String>>,
}

impl Doc {
    fn top(&mut self, key: &str, value: impl ToString) {
        self.top.push(format!("{key} = {}", value.to_string()));
    }

    fn set(&mut self, table: &str, key: &str, value: impl ToString) {
        let line = format!("{key} = {}", value.to_string());
        match self.tables.iter_mut().find(|(t, _)| t == table) {
            Some((_, lines)) => lines.push(line),
            None => self.tables.push((table.to_string(), vec![line])),
        }
    }

    /// Make sure `[table]` is written even with no keys.
    fn table(&mut self, table: &str) {
        if !self.tables.iter().any(|(t, _)| t == table) {
            self.tables.push((table.to_string(), Vec::new()));
        }
    }

    fn render(&self, seed: u64) -> String {
        let mut s = format!("# random spec, seed {seed}\n");
        for l in &self.top {
            let _ = writeln!(s, "{l}");
        }
        for (t, lines) in &self.tables {
            let _ = writeln!(s, "\n[{t}]");
            for l in lines {
                let _ = writeln!(s, "{l}");
            }
        }
        for o in &self.overrides {
            let _ = writeln!(s, "\n[[layer]]");
            for l in o {
                let _ = writeln!(s, "{l}");
            }
        }
        s
    }
}

fn q(s: &str) -> String {
    format!("\"{s}\"")
}

/// A float as TOML (always with a decimal point or exponent).
fn f(x: f64) -> String {
    let s = format!("{x:?}");
    if s.contains(['.', 'e', 'E']) {
        s
    } else {
        format!("{s}.0")
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Arch {
    Encoder,
    Decoder,
    EncoderDecoder,
}

struct Gen {
    r: Rng,
    seed: u64,
    doc: Doc,
}

impl Gen {
    fn new(seed: u64) -> Gen {
        Gen {
            r: Rng::new(seed),
            seed,
            doc: Doc::default(),
        }
    }

    fn spec(mut self) -> String {
        let r = &mut self.r;
        let arch = match r.range(0, 19) {
            0..=8 => Arch::Decoder,
            9..=14 => Arch::Encoder,
            _ => Arch::EncoderDecoder,
        };
        let heads = r.range(1, 4);
        // An odd per-head width now and then: odd rotary widths and odd
        // sinusoidal d_model are rejected by the validator.
        let width = *r.pick(&[2, 4, 4, 6, 8, 8, 5]);
        let d_model = heads * width;
        let layers = r.range(1, 3);
        let vocab = r.range(16, 64);
        let causal = arch != Arch::Encoder;

        self.doc.top("name", q(&format!("random-{}", self.seed)));
        self.doc.top(
            "architecture",
            q(match arch {
                Arch::Encoder => "encoder",
                Arch::Decoder => "decoder",
                Arch::EncoderDecoder => "encoder-decoder",
            }),
        );
        self.doc.top("vocab_size", vocab);
        self.doc.top("d_model", d_model);
        self.doc.top("layers", layers);
        let mut decoder_layers = layers;
        if arch == Arch::EncoderDecoder && self.r.chance(0.5) {
            decoder_layers = self.r.range(1, 3);
            self.doc.top("decoder_layers", decoder_layers);
        }
        let max_positions = self.r.range(8, 32);
        self.doc.top("max_positions", max_positions);

        self.attention(heads, causal);
        let placement = self.norm();
        self.residual(placement);
        self.positions(arch);
        self.mlp();
        self.moe(layers);
        self.embeddings(arch);
        self.head(arch);
        let n = if arch == Arch::EncoderDecoder {
            layers.max(decoder_layers)
        } else {
            layers
        };
        self.overrides(arch, n, heads);
        self.doc.render(self.seed)
    }

    fn attention(&mut self, heads: usize, causal: bool) {
        let (r, d) = (&mut self.r, &mut self.doc);
        d.set("attention", "heads", heads);
        match r.range(0, 3) {
            0 => {}                                     // MHA by default
            1 => d.set("attention", "kv_heads", heads), // MHA, explicit
            2 => d.set("attention", "kv_heads", 1),     // MQA
            _ => {
                // GQA: a divisor of heads
                let divisors: Vec<usize> =
                    (1..=heads).filter(|k| heads.is_multiple_of(*k)).collect();
                d.set("attention", "kv_heads", *r.pick(&divisors));
            }
        }
        if r.chance(0.25) {
            // Decoupled head width (Gemma): not d_model / heads.
            d.set("attention", "head_dim", *r.pick(&[2, 4, 6, 8]));
        }
        if r.chance(0.3) {
            d.set("attention", "qkv_bias", true);
        }
        if r.chance(0.3) {
            d.set("attention", "out_bias", true);
        }
        match r.range(0, 4) {
            0 => d.set("attention", "qk_norm", q("per-head")),
            1 => d.set("attention", "qk_norm", q("full")),
            _ => {}
        }
        if r.chance(0.2) {
            d.set("attention", "scale", f(*r.pick(&[1.0, 0.5, 0.125])));
        }
        if r.chance(0.2) {
            d.set("attention", "softcap", f(*r.pick(&[5.0, 20.0, 50.0])));
        }
        if causal && r.chance(0.25) {
            d.set("attention", "sliding_window", r.range(1, 4));
        }
    }

    /// Returns the placement.
    fn norm(&mut self) -> &'static str {
        let (r, d) = (&mut self.r, &mut self.doc);
        let rms = r.chance(0.5);
        d.set("norm", "kind", q(if rms { "rmsnorm" } else { "layernorm" }));
        if r.chance(0.5) {
            d.set("norm", "eps", f(*r.pick(&[1e-6, 1e-5, 1e-3])));
        }
        let affine = !r.chance(0.15);
        if !affine {
            d.set("norm", "affine", false);
        }
        if !rms && affine && r.chance(0.25) {
            d.set("norm", "bias", false);
        }
        if rms && r.chance(0.03) {
            d.set("norm", "bias", true); // rejected: RMSNorm has no bias
        }
        if affine && r.chance(0.2) {
            d.set("norm", "weight_offset", f(1.0));
        }
        let placement = match r.range(0, 19) {
            0..=11 => "pre",
            12..=16 => "post",
            _ => "sandwich",
        };
        d.set("norm", "placement", q(placement));
        if r.chance(0.25) {
            d.set("norm", "embedding_norm", true);
        }
        if r.chance(0.2) {
            d.set("norm", "final_norm", false);
        }
        placement
    }

    fn residual(&mut self, placement: &str) {
        let (r, d) = (&mut self.r, &mut self.doc);
        // `parallel` needs pre-norm; now and then ask anyway (rejected).
        if (placement == "pre" && r.chance(0.25)) || r.chance(0.02) {
            d.set("residual", "parallel", true);
            if r.chance(0.5) {
                d.set("residual", "shared_norm", false);
            }
        }
    }

    fn positions(&mut self, arch: Arch) {
        let (r, d) = (&mut self.r, &mut self.doc);
        let kind = *r.pick(&[
            "learned",
            "sinusoidal",
            "rope",
            "rope",
            "alibi",
            "relative",
            "none",
        ]);
        d.set("positions", "kind", q(kind));
        match kind {
            "learned" if r.chance(0.3) => d.set("positions", "offset", 2),
            "sinusoidal" => {
                if r.chance(0.3) {
                    d.set("positions", "theta", f(500.0));
                }
                if r.chance(0.5) {
                    let l = *r.pick(&["half", "interleaved"]);
                    d.set("positions", "layout", q(l));
                }
            }
            "rope" => {
                if r.chance(0.3) {
                    d.set("positions", "theta", f(*r.pick(&[10000.0, 500.0])));
                }
                if r.chance(0.4) {
                    d.set("positions", "fraction", f(*r.pick(&[0.5, 0.25, 1.0])));
                }
                if r.chance(0.5) {
                    let l = *r.pick(&["half", "interleaved"]);
                    d.set("positions", "layout", q(l));
                }
                match r.range(0, 5) {
                    0 => d.set(
                        "positions",
                        "scaling",
                        format!("{{ kind = \"linear\", factor = {} }}", f(2.0)),
                    ),
                    1 => d.set(
                        "positions",
                        "scaling",
                        "{ kind = \"llama3\", factor = 8.0, low_freq_factor = 1.0, \
                         high_freq_factor = 4.0, original_max_positions = 8 }",
                    ),
                    2 => {
                        let extra = if r.chance(0.5) {
                            ", beta_fast = 16.0, beta_slow = 2.0, attention_factor = 1.2"
                        } else {
                            ""
                        };
                        d.set(
                            "positions",
                            "scaling",
                            format!(
                                "{{ kind = \"yarn\", factor = 4.0, original_max_positions = 8{extra} }}"
                            ),
                        )
                    }
                    _ => {}
                }
            }
            "relative" => {
                // Bidirectional stacks need an even bucket count: 5 is rejected there.
                let buckets = *r.pick(&[4, 8, 8, 6, 5]);
                d.set("positions", "buckets", buckets);
                let exact = if arch == Arch::Encoder {
                    buckets / 4
                } else {
                    buckets / 2
                };
                d.set("positions", "max_distance", exact + r.range(1, 12));
            }
            _ => {}
        }
    }

    fn mlp(&mut self) {
        let (r, d) = (&mut self.r, &mut self.doc);
        d.set("mlp", "d_ff", r.range(4, 24));
        let act = *r.pick(&["relu", "gelu", "gelu-tanh", "silu"]);
        d.set("mlp", "activation", q(act));
        if r.chance(0.4) {
            d.set("mlp", "gated", true);
        }
        if r.chance(0.3) {
            d.set("mlp", "bias", true);
        }
    }

    fn moe(&mut self, layers: usize) {
        let (r, d) = (&mut self.r, &mut self.doc);
        if !r.chance(0.2) {
            return;
        }
        let experts = r.range(2, 4);
        d.set("moe", "experts", experts);
        d.set("moe", "top_k", r.range(1, experts));
        if r.chance(0.3) {
            d.set("moe", "renormalize", false);
        }
        if r.chance(0.3) {
            d.set("moe", "d_ff", r.range(4, 12));
        }
        if r.chance(0.3) {
            let gate = r.chance(0.5);
            d.set(
                "moe",
                "shared_expert",
                format!("{{ d_ff = {}, gate = {gate} }}", r.range(4, 12)),
            );
        }
        if r.chance(0.35) {
            let sel = if layers >= 2 {
                *r.pick(&["\"odd\"", "\"even\"", "[0]", "\"1..\"", "\"every 2\""])
            } else {
                *r.pick(&["\"even\"", "[0]", "\"all\""])
            };
            d.set("moe", "layers", sel);
        }
    }

    fn embeddings(&mut self, arch: Arch) {
        let (r, d) = (&mut self.r, &mut self.doc);
        if r.chance(0.25) {
            let s = *r.pick(&["\"sqrt-d-model\"", "\"inv-sqrt-d-model\"", "2.0"]);
            d.set("embeddings", "scale", s);
        }
        if arch == Arch::Encoder && r.chance(0.3) {
            d.set("embeddings", "token_types", r.range(1, 3));
        }
    }

    fn head(&mut self, arch: Arch) {
        let (r, d) = (&mut self.r, &mut self.doc);
        let kind = if arch == Arch::Encoder {
            *r.pick(&["lm", "mlm", "pooler", "mean-pool", "none"])
        } else if r.chance(0.8) {
            "lm"
        } else {
            "none"
        };
        d.table("head");
        d.set("head", "kind", q(kind));
        let logits = matches!(kind, "lm" | "mlm");
        if logits && r.chance(0.3) {
            d.set("head", "tied", false);
        }
        if matches!(kind, "lm" | "mlm" | "pooler") && r.chance(0.25) {
            d.set("head", "bias", true);
        }
        if logits && r.chance(0.15) {
            let s = *r.pick(&["\"inv-sqrt-d-model\"", "0.5"]);
            d.set("head", "input_scale", s);
        }
        if logits && r.chance(0.2) {
            d.set("head", "softcap", f(*r.pick(&[10.0, 30.0])));
        }
        if kind == "mean-pool" && r.chance(0.5) {
            d.set("head", "normalize", true);
        }
    }

    /// Up to two `[[layer]]` overrides over `n` blocks.
    fn overrides(&mut self, arch: Arch, n: usize, heads: usize) {
        let r = &mut self.r;
        for _ in 0..2 {
            if !r.chance(0.35) {
                continue;
            }
            let select = if n >= 2 {
                *r.pick(&[
                    "\"odd\"",
                    "\"even\"",
                    "\"0\"",
                    "\"0..1\"",
                    "\"every 2\"",
                    "[1]",
                ])
            } else {
                // "odd" picks no layer of a 1-block model: rejected.
                *r.pick(&["\"even\"", "\"0\"", "\"all\"", "[0]", "\"odd\""])
            };
            let mut sections: BTreeMap<&str, Vec<String>> = BTreeMap::new();
            for _ in 0..r.range(1, 2) {
                let (section, kv) = match r.range(0, 8) {
                    0 if arch != Arch::Encoder => {
                        ("attention", format!("sliding_window = {}", r.range(1, 3)))
                    }
                    1 => ("attention", "kv_heads = 1".to_string()),
                    2 => ("attention", "qk_norm = \"per-head\"".to_string()),
                    3 => ("attention", format!("softcap = {}", f(10.0))),
                    4 => {
                        let a = *r.pick(&["relu", "gelu", "gelu-tanh", "silu"]);
                        ("mlp", format!("activation = \"{a}\""))
                    }
                    5 => ("mlp", format!("gated = {}", r.chance(0.5))),
                    6 => ("mlp", format!("d_ff = {}", r.range(4, 16))),
                    7 => (
                        "attention",
                        format!("heads = {}, kv_heads = 1", heads.max(2)),
                    ),
                    _ => {
                        let p = *r.pick(&["pre", "post", "sandwich"]);
                        ("norm", format!("placement = \"{p}\""))
                    }
                };
                sections.entry(section).or_default().push(kv);
            }
            let mut lines = vec![format!("select = {select}")];
            if arch == Arch::EncoderDecoder && r.chance(0.3) {
                lines.push(format!("stack = \"{}\"", r.pick(&["encoder", "decoder"])));
            }
            for (section, kvs) in sections {
                // Later keys win (a section may be drawn twice with the same key).
                let mut seen: BTreeMap<String, String> = BTreeMap::new();
                for kv in kvs {
                    for part in kv.split(", ") {
                        let (k, v) = part.split_once(" = ").expect("key = value");
                        seen.insert(k.to_string(), v.to_string());
                    }
                }
                let body: Vec<String> = seen.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                lines.push(format!("{section} = {{ {} }}", body.join(", ")));
            }
            self.doc.overrides.push(lines);
        }
    }
}
