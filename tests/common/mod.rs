//! Shared support for integration tests: a seeded RNG, a random spec
//! generator covering every knob, graph inputs the way a session builds them,
//! and output comparison. Each test crate uses a different subset, hence the
//! `dead_code` allowance.
#![allow(dead_code)]

pub mod backends;
pub mod inputs;
pub mod random_spec;
pub mod real;
pub mod rng;
pub mod sessions;

use std::path::{Path, PathBuf};

/// The tiny variant of every shipped model (`models/tiny/*.toml`), sorted.
pub fn tiny_specs() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    v.sort();
    v
}
