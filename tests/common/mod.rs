//! Shared support for integration tests: a seeded RNG, a random spec
//! generator covering every knob, graph inputs the way a session builds them,
//! and output comparison. Each test crate uses a different subset, hence the
//! `dead_code` allowance.
#![allow(dead_code)]

pub mod inputs;
pub mod random_spec;
pub mod rng;
