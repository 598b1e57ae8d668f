//! The spec schema: every knob a transformer variant can turn, with its default.
//!
//! These types are both what a TOML file deserialises into and what the
//! resolver hands to the lowering. Fields whose default depends on other
//! fields (`kv_heads`, `head_dim`, `scale`, ...) are `Option` in the file and
//! always `Some` after [`crate::spec::resolve`]; the accessor methods read the
//! resolved values. Nothing here is keyed on a model's name: a value that
//! changes numerics is a field.

use serde::{Deserialize, Serialize};

/// A whole model: global sizes plus one section per knob family.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Human-readable model name; appears in IR headers and snapshots.
    pub name: String,
    /// A shipped model name (`"gpt2"`) or a path relative to this file whose
    /// spec this one deep-merges over. Cleared once resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extends: Option<String>,
    /// Encoder, decoder, or encoder-decoder.
    pub architecture: Architecture,
    /// Number of token embeddings (rows of the embedding matrix, columns of the LM head).
    pub vocab_size: usize,
    /// Hidden width of the residual stream.
    pub d_model: usize,
    /// Number of blocks (of the encoder, for encoder-decoder models).
    pub layers: usize,
    /// Decoder blocks of an encoder-decoder model; defaults to `layers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoder_layers: Option<usize>,
    /// Longest sequence the model accepts (learned position table size, less `positions.offset`).
    #[serde(default = "default_max_positions")]
    pub max_positions: usize,
    /// Blocks that share parameters: the `layers` blocks of each stack are cut
    /// into this many equal runs, and every block of a run uses the run's
    /// parameters, named after its first layer's group index (ALBERT: 1, one
    /// set shared by all). Default: every block its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_groups: Option<usize>,
    /// `[attention]`: self- (and cross-) attention.
    pub attention: Attention,
    /// `[norm]`: normalisation kind and placement.
    #[serde(default)]
    pub norm: Norm,
    /// `[residual]`: how the attention and MLP branches join the residual stream.
    #[serde(default)]
    pub residual: Residual,
    /// `[positions]`: how position information enters the model.
    pub positions: Positions,
    /// `[mlp]`: the feed-forward block.
    pub mlp: Mlp,
    /// `[moe]`: mixture-of-experts replacing the MLP in the layers it selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moe: Option<Moe>,
    /// `[embeddings]`: token embedding scale and token types.
    #[serde(default)]
    pub embeddings: Embeddings,
    /// `[head]`: what the model outputs.
    #[serde(default)]
    pub head: Head,
    /// Per-layer overrides, applied in order to the layers their selector picks.
    #[serde(default, rename = "layer", skip_serializing_if = "Vec::is_empty")]
    pub layer_overrides: Vec<LayerOverride>,
}

fn default_max_positions() -> usize {
    2048
}

/// The overall model structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Architecture {
    /// Bidirectional encoder only (BERT).
    Encoder,
    /// Causal decoder only (GPT-2, Llama).
    Decoder,
    /// Encoder plus a decoder with cross-attention (T5, BART).
    EncoderDecoder,
}

/// Self-attention (and, in encoder-decoder decoders, cross-attention).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attention {
    /// Number of query heads.
    pub heads: usize,
    /// Key/value heads: `heads` for MHA, 1 for MQA, in between for GQA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_heads: Option<usize>,
    /// Per-head width; defaults to `d_model / heads` (Gemma decouples it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    /// Biases on the Q, K and V projections.
    #[serde(default)]
    pub qkv_bias: bool,
    /// Bias on the output projection.
    #[serde(default)]
    pub out_bias: bool,
    /// Normalise queries and keys (with the model's norm kind) before RoPE.
    #[serde(default)]
    pub qk_norm: QkNorm,
    /// Multiplier on QK^T; defaults to `1/sqrt(head_dim)` (T5: 1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<f64>,
    /// `softcap * tanh(scores / softcap)` before masking (Gemma-2: 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub softcap: Option<f64>,
    /// A query sees at most this many keys, itself included (Mistral: 4096).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<usize>,
}

/// Whether (and over what) queries and keys are normalised before RoPE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QkNorm {
    /// No QK norm.
    #[default]
    None,
    /// One norm over each head's `head_dim` channels (Qwen3).
    PerHead,
    /// One norm over all projected channels (OLMo-2).
    Full,
}

/// Normalisation layers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Norm {
    /// LayerNorm or RMSNorm.
    #[serde(default)]
    pub kind: NormKind,
    /// Added to the variance (or mean square) inside the square root; default 1e-5.
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// LayerNorm bias; defaults to true for LayerNorm, false (and forbidden) for RMSNorm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bias: Option<bool>,
    /// Learned scale; false gives a parameter-free norm (OLMo-1).
    #[serde(default = "yes")]
    pub affine: bool,
    /// Scale is `weight_offset + w` (Gemma's `1 + w`: 1.0).
    #[serde(default)]
    pub weight_offset: f64,
    /// Where the norm sits relative to each residual branch.
    #[serde(default)]
    pub placement: Placement,
    /// Norm right after the embeddings (BERT, BART).
    #[serde(default)]
    pub embedding_norm: bool,
    /// Norm after the last block (all pre-norm models).
    #[serde(default = "yes")]
    pub final_norm: bool,
    /// With `pre` placement: `false` feeds the attention sub-block the raw
    /// stream, without its norm (ModernBERT's first layer, via `[[layer]]`).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub attention_norm: bool,
}

impl Default for Norm {
    fn default() -> Self {
        Norm {
            kind: NormKind::default(),
            eps: default_eps(),
            bias: None,
            affine: true,
            weight_offset: 0.0,
            placement: Placement::default(),
            embedding_norm: false,
            final_norm: true,
            attention_norm: true,
        }
    }
}

impl Default for Residual {
    /// Matches the per-field serde defaults (an absent `[residual]` equals an empty one).
    fn default() -> Self {
        Residual {
            parallel: false,
            shared_norm: true,
            scale: 1.0,
        }
    }
}

fn default_eps() -> f64 {
    1e-5
}

fn one() -> f64 {
    1.0
}

fn is_one(x: &f64) -> bool {
    *x == 1.0
}

fn is_true(x: &bool) -> bool {
    *x
}

fn yes() -> bool {
    true
}

/// Which normalisation function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NormKind {
    /// `(x - mean) / sqrt(var + eps)`, then scale and bias.
    #[default]
    Layernorm,
    /// `x / sqrt(mean(x^2) + eps)`, then scale; no mean, no bias.
    Rmsnorm,
}

/// Where norms sit relative to the residual branches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    /// `x + f(norm(x))` (GPT-2, Llama, T5).
    #[default]
    Pre,
    /// `norm(x + f(x))` (BERT, BART).
    Post,
    /// `x + norm'(f(norm(x)))` (Gemma-2).
    Sandwich,
    /// `x + norm'(f(x))`: only the branch's output is normalised (OLMo-2).
    Output,
}

/// How the attention and MLP branches add into the residual stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Residual {
    /// `x + attn(n(x)) + mlp(n'(x))` instead of two sequential residual steps.
    #[serde(default)]
    pub parallel: bool,
    /// With `parallel`, one norm feeds both branches (Phi-2) instead of two (GPT-NeoX).
    #[serde(default = "yes")]
    pub shared_norm: bool,
    /// Multiplier on each branch before it is added to the stream: `x + s * f(..)`
    /// (Granite's `residual_multiplier`).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub scale: f64,
}

/// Positional encoding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Positions {
    /// Which positional encoding.
    pub kind: PositionKind,
    /// Learned table row of position `p` is `p + offset` (RoBERTa, BART: 2).
    #[serde(default)]
    pub offset: usize,
    /// RoPE base frequency; sinusoidal base (default 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub theta: Option<f64>,
    /// RoPE: fraction of each head's channels rotated (Pythia 0.25, Phi-2 0.4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Option<f64>,
    /// RoPE / sinusoidal channel layout: `half` pairs channel i with i + n/2
    /// (HF `rotate_half`), `interleaved` pairs 2i with 2i + 1 (GPT-J, Meta).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<PairLayout>,
    /// RoPE frequency scaling for long contexts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<RopeScaling>,
    /// T5 relative attention: number of buckets (default 32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buckets: Option<usize>,
    /// T5 relative attention: distance beyond which buckets saturate (default 128).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_distance: Option<usize>,
    /// Relative: every layer has its own bias table (UMT5) instead of sharing
    /// the first layer's (T5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_layer: Option<bool>,
    /// Sinusoidal: how the frequencies are spaced (default `vaswani`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequencies: Option<Frequencies>,
}

/// Spacing of sinusoidal frequencies over `half = d / 2` channel pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Frequencies {
    /// `theta^(-2i / d)` (Vaswani et al.; Marian, Pegasus).
    Vaswani,
    /// `theta^(-i / (half - 1))` (tensor2tensor and fairseq; M2M-100, XGLM).
    Tensor2tensor,
}

/// Kind of positional encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PositionKind {
    /// A learned table added to the token embeddings (GPT-2, BERT, BART).
    Learned,
    /// Fixed sin/cos table added to the token embeddings.
    Sinusoidal,
    /// Rotary embeddings applied to queries and keys.
    Rope,
    /// Per-head linear distance bias on attention scores.
    Alibi,
    /// T5 bucketed relative bias, learned, from the first layer of each stack.
    Relative,
    /// No positional information.
    None,
}

/// Which channels RoPE / sinusoidal encodings pair up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PairLayout {
    /// Channel `i` with `i + n/2` (HF `rotate_half`).
    Half,
    /// Channel `2i` with `2i + 1` (GPT-J, Meta).
    Interleaved,
}

/// RoPE frequency scaling for contexts longer than training (`kind = ...`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum RopeScaling {
    /// Positions divided by `factor` (linear interpolation).
    Linear {
        /// Position divisor.
        factor: f64,
    },
    /// Llama 3.1's frequency-dependent interpolation.
    Llama3 {
        /// Context extension factor.
        factor: f64,
        /// Llama 3.1 `low_freq_factor`: wavelengths above `original_max_positions / low_freq_factor` are fully scaled.
        low_freq_factor: f64,
        /// Llama 3.1 `high_freq_factor`: wavelengths below `original_max_positions / high_freq_factor` are unscaled.
        high_freq_factor: f64,
        /// Context length the model was trained with.
        original_max_positions: usize,
    },
    /// YaRN: ramp between interpolated and extrapolated frequencies, plus an
    /// attention temperature on cos/sin.
    Yarn {
        /// Context extension factor.
        factor: f64,
        /// Context length the model was trained with.
        original_max_positions: usize,
        /// Rotations-per-context above which frequencies extrapolate (default 32).
        #[serde(default = "yarn_beta_fast")]
        beta_fast: f64,
        /// Rotations-per-context below which frequencies interpolate (default 1).
        #[serde(default = "yarn_beta_slow")]
        beta_slow: f64,
        /// Defaults to `0.1 * ln(factor) + 1`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        attention_factor: Option<f64>,
    },
}

fn yarn_beta_fast() -> f64 {
    32.0
}

fn yarn_beta_slow() -> f64 {
    1.0
}

/// The feed-forward block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mlp {
    /// Hidden width.
    pub d_ff: usize,
    /// Activation function.
    pub activation: Activation,
    /// GLU: `down(act(gate(x)) * up(x))` (SwiGLU with `silu`, GeGLU with `gelu`).
    #[serde(default)]
    pub gated: bool,
    /// Biases on the MLP projections.
    #[serde(default)]
    pub bias: bool,
}

/// MLP activation function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Activation {
    /// `max(x, 0)`.
    Relu,
    /// Squared ReLU, `max(x, 0)²` (HF `relu2`: Persimmon, Arcee, Nemotron).
    Relu2,
    /// Exact GELU, `x * Phi(x)` with erf (BERT's `gelu`).
    Gelu,
    /// Tanh-approximated GELU (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    /// `x * sigmoid(x)`.
    Silu,
}

/// Mixture of experts: a router picks `top_k` of `experts` MLPs per token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Moe {
    /// Number of routed experts.
    pub experts: usize,
    /// Experts each token is routed to.
    pub top_k: usize,
    /// Divide the top-k router probabilities by their sum (Mixtral yes, Qwen2-MoE no).
    #[serde(default = "yes")]
    pub renormalize: bool,
    /// Hidden width of each expert; defaults to `mlp.d_ff`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub d_ff: Option<usize>,
    /// An always-on expert added to the routed ones (Qwen2-MoE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_expert: Option<SharedExpert>,
    /// Which layers are MoE; the others use the dense `mlp` (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<Selector>,
}

/// An always-on expert of a MoE layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedExpert {
    /// Its hidden width.
    pub d_ff: usize,
    /// Multiply the shared expert's output by `sigmoid(x . w)` (Qwen2-MoE).
    #[serde(default)]
    pub gate: bool,
}

/// Token embedding options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Embeddings {
    /// Multiplier on token embeddings: a number, or `"sqrt-d-model"` (Gemma).
    #[serde(default)]
    pub scale: Scale,
    /// Number of token-type (segment) embeddings (BERT: 2).
    #[serde(default)]
    pub token_types: usize,
    /// Width of the embedding tables when it differs from `d_model` (ALBERT,
    /// ELECTRA): token, position and token-type embeddings and the embedding
    /// norm are this wide, and `embed.project` (with bias) maps them to d_model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<usize>,
}

impl Default for Embeddings {
    fn default() -> Self {
        Embeddings {
            scale: Scale::Value(1.0),
            token_types: 0,
            size: None,
        }
    }
}

/// A multiplier given as a number or as a function of `d_model`.
///
/// Deserialises from a number or a [`NamedScale`] string (hand-written, so a
/// bad name gets a "valid values" error rather than serde's untagged one).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Scale {
    /// A literal multiplier.
    Value(f64),
    /// A multiplier derived from `d_model`.
    Named(NamedScale),
}

impl Default for Scale {
    fn default() -> Self {
        Scale::Value(1.0)
    }
}

/// A multiplier named as a function of `d_model`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NamedScale {
    /// `sqrt(d_model)`.
    SqrtDModel,
    /// `1 / sqrt(d_model)`.
    InvSqrtDModel,
}

impl Scale {
    /// The multiplier for a model of width `d_model`.
    pub fn value(self, d_model: usize) -> f64 {
        match self {
            Scale::Value(v) => v,
            Scale::Named(NamedScale::SqrtDModel) => (d_model as f64).sqrt(),
            Scale::Named(NamedScale::InvSqrtDModel) => 1.0 / (d_model as f64).sqrt(),
        }
    }
}

/// The model's output head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Head {
    /// What the head computes.
    #[serde(default)]
    pub kind: HeadKind,
    /// The output projection reuses the token embedding matrix.
    #[serde(default = "yes")]
    pub tied: bool,
    /// Bias on the output projection (Phi-2; BART's `final_logits_bias`).
    #[serde(default)]
    pub bias: bool,
    /// Multiplier on the hidden state before the output projection (T5 v1.0: `"inv-sqrt-d-model"`).
    #[serde(default)]
    pub input_scale: Scale,
    /// `softcap * tanh(logits / softcap)` (Gemma-2: 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub softcap: Option<f64>,
    /// Mean pooling: L2-normalise the pooled vector (sentence-transformers).
    #[serde(default)]
    pub normalize: bool,
    /// MLM: a bias on the transform's dense layer (BERT: yes; ModernBERT: no).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub transform_bias: bool,
}

impl Default for Head {
    fn default() -> Self {
        Head {
            kind: HeadKind::default(),
            tied: true,
            bias: false,
            input_scale: Scale::Value(1.0),
            softcap: None,
            normalize: false,
            transform_bias: true,
        }
    }
}

/// Kind of output head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HeadKind {
    /// Vocabulary logits for every position.
    #[default]
    Lm,
    /// BERT's masked-LM head: dense + activation + norm, then vocabulary logits.
    Mlm,
    /// BERT's pooler: dense + tanh on the first token, beside the hidden states.
    Pooler,
    /// Masked mean of the final hidden states (sentence embeddings).
    MeanPool,
    /// The final hidden states only.
    None,
}

/// Which layers a per-layer override or MoE applies to.
///
/// Deserialises from a string, an array of indices, or a single integer
/// (read as a one-element list).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Selector {
    /// Explicit layer indices: `[1, 3, 5]`.
    List(Vec<usize>),
    /// `"all"`, `"even"`, `"odd"`, `"every 2"` (0, 2, 4...), `"every 3 from 1"`,
    /// a range `"0..4"` (end exclusive) or `"4.."`, or a single index `"7"`.
    Text(String),
}

/// `[[layer]]`: knobs that may differ between layers, deep-merged over the
/// model-wide sections for the layers `select` picks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerOverride {
    /// Which layers the override applies to.
    pub select: Selector,
    /// Restrict to one stack of an encoder-decoder model (default: both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<Stack>,
    /// Table deep-merged over `[attention]` for the selected layers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention: Option<toml::Table>,
    /// Table deep-merged over `[mlp]` for the selected layers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlp: Option<toml::Table>,
    /// Table deep-merged over `[norm]` for the selected layers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub norm: Option<toml::Table>,
    /// Table deep-merged over `[residual]` for the selected layers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub residual: Option<toml::Table>,
    /// RoPE models only: `kind` (`"rope"` or `"none"`), `theta`, `fraction`
    /// and `scaling` for the selected layers (Gemma-3's local base, SmolLM3's
    /// layers without RoPE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub positions: Option<toml::Table>,
}

/// One stack of an encoder-decoder model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stack {
    /// The encoder stack.
    Encoder,
    /// The decoder stack.
    Decoder,
}

/// The knobs of one block after per-layer overrides are applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerSpec {
    /// Attention of this layer.
    pub attention: Attention,
    /// MLP of this layer.
    pub mlp: Mlp,
    /// Norms of this layer.
    pub norm: Norm,
    /// Residual wiring of this layer.
    pub residual: Residual,
    /// The positions this layer's attention uses: the model's, or for a RoPE
    /// model its `[[layer]] positions` override (kind `none`: no rotation).
    pub positions: Positions,
    /// The MoE section when this layer is a mixture-of-experts layer.
    pub moe: Option<Moe>,
}

impl Attention {
    /// Key/value heads (`kv_heads`, defaulting to `heads`).
    pub fn kv_heads(&self) -> usize {
        self.kv_heads.unwrap_or(self.heads)
    }
    /// Per-head width (`head_dim`, defaulting to `d_model / heads`).
    pub fn head_dim(&self, d_model: usize) -> usize {
        self.head_dim.unwrap_or(d_model / self.heads.max(1))
    }
    /// Score multiplier (`scale`, defaulting to `1/sqrt(head_dim)`).
    pub fn scale(&self, d_model: usize) -> f64 {
        self.scale
            .unwrap_or(1.0 / (self.head_dim(d_model) as f64).sqrt())
    }
}

impl Norm {
    /// Whether the norm has a bias: `bias` (default: LayerNorm only), and only if `affine`.
    pub fn has_bias(&self) -> bool {
        self.bias.unwrap_or(self.kind == NormKind::Layernorm) && self.affine
    }
}

impl Positions {
    /// RoPE / sinusoidal base frequency (default 10000).
    pub fn theta(&self) -> f64 {
        self.theta.unwrap_or(10000.0)
    }
    /// Fraction of each head's channels rotated (default 1).
    pub fn fraction(&self) -> f64 {
        self.fraction.unwrap_or(1.0)
    }
    /// Channel pairing (default: interleaved for sinusoidal, half otherwise).
    pub fn layout(&self) -> PairLayout {
        self.layout.unwrap_or(match self.kind {
            PositionKind::Sinusoidal => PairLayout::Interleaved,
            _ => PairLayout::Half,
        })
    }
    /// T5 relative-attention bucket count (default 32).
    pub fn buckets(&self) -> usize {
        self.buckets.unwrap_or(32)
    }
    /// T5 relative-attention max distance (default 128).
    pub fn max_distance(&self) -> usize {
        self.max_distance.unwrap_or(128)
    }
    /// Rotated channels per head (even, at most `head_dim`).
    pub fn rotary_dims(&self, head_dim: usize) -> usize {
        let r = (head_dim as f64 * self.fraction()).round() as usize;
        r - r % 2
    }
}

impl Moe {
    /// Each expert's hidden width (`d_ff`, defaulting to `mlp.d_ff`).
    pub fn expert_d_ff(&self, mlp: &Mlp) -> usize {
        self.d_ff.unwrap_or(mlp.d_ff)
    }
}

impl Spec {
    /// Decoder blocks (`decoder_layers`, defaulting to `layers`).
    pub fn decoder_layers(&self) -> usize {
        self.decoder_layers.unwrap_or(self.layers)
    }
}

impl Spec {
    /// The spec as TOML text, every field that has a value written out.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print spec: {e}\n"))
    }
}

impl<'de> Deserialize<'de> for Scale {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Scale;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number, \"sqrt-d-model\" or \"inv-sqrt-d-model\"")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Scale, E> {
                Ok(Scale::Value(v as f64))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Scale, E> {
                Ok(Scale::Value(v as f64))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Scale, E> {
                Ok(Scale::Value(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Scale, E> {
                NamedScale::deserialize(serde::de::value::StrDeserializer::<E>::new(v))
                    .map(Scale::Named)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Selector;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a layer selector (a string such as \"odd\" or \"0..4\", or an array of layer indices)")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Selector, E> {
                usize::try_from(v)
                    .map(|i| Selector::List(vec![i]))
                    .map_err(|_| {
                        E::invalid_value(
                            serde::de::Unexpected::Signed(v),
                            &"a layer index (0 or more)",
                        )
                    })
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Selector, E> {
                usize::try_from(v)
                    .map(|i| Selector::List(vec![i]))
                    .map_err(|_| {
                        E::invalid_value(serde::de::Unexpected::Unsigned(v), &"a layer index")
                    })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Selector, E> {
                Ok(Selector::Text(v.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Selector, A::Error> {
                let mut out = Vec::new();
                while let Some(i) = seq.next_element::<usize>()? {
                    out.push(i);
                }
                Ok(Selector::List(out))
            }
        }
        d.deserialize_any(V)
    }
}
