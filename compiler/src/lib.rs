//! kiln's compiler. Data flows one way through the modules:
//! [`spec`] (TOML → resolved spec) → [`lower`] (spec → [`ir`] module) →
//! [`compile`] ([`passes`] then [`kernel`] fusion: one kernel program per
//! part) → [`codegen`]. The IR knows nothing of specs; the lowering is the
//! only bridge.

/// Static cost estimates of a spec (parameters, FLOPs, cache sizes).
pub mod analysis;
pub mod codegen;
pub mod compile;
pub mod import;
pub mod ir;
pub mod kernel;
pub mod lower;
pub mod passes;
pub mod spec;
