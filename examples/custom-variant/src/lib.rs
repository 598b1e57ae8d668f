//! A custom architecture variant written as a kiln spec
//! ([`SPEC`], `parallel-alibi-gqa.toml`), and the snapshot tests a research
//! crate would keep for it: `tests/snapshots.rs` pins the resolved spec, the
//! graph IR after kiln's passes and the fused kernel IR with
//! `insta::assert_snapshot!(kiln::compile_str(SPEC)?.ir_text())`, so any change
//! to what kiln builds for this variant shows up as a reviewed diff.
//!
//! ```
//! let c = kiln::compile_str(kiln_example_custom_variant::SPEC)?;
//! assert_eq!(c.spec().layers.len(), 2);
//! assert_eq!(c.spec().layers[1].attention.sliding_window, Some(16));
//! # Ok::<(), kiln::Error>(())
//! ```

/// The variant's spec: parallel attention + MLP blocks, grouped-query
/// attention with per-head QK-norm, ALiBi, SwiGLU, a sliding window on the
/// odd layers.
pub const SPEC: &str = include_str!("../parallel-alibi-gqa.toml");
