//! The backends a conformance test runs on: every backend of the registry
//! but the oracle, skipping (with a message) one this machine cannot run,
//! unless `KILN_REQUIRE_<NAME>=1` (CI sets `KILN_REQUIRE_WGPU=1`).

use kiln_runtime::backends::{Backend, registry};

/// The backends under test, after the reference interpreter.
pub fn under_test(test: &str) -> Vec<&'static dyn Backend> {
    let mut out = Vec::new();
    for &b in registry() {
        if b.name() == "reference" {
            continue;
        }
        match b.available() {
            Ok(()) => out.push(b),
            Err(e) => {
                let var = format!("KILN_REQUIRE_{}", b.name().to_uppercase().replace('-', "_"));
                if std::env::var(&var).is_ok_and(|v| v == "1") {
                    panic!(
                        "{test}: {var}=1 but the {} backend cannot run: {e}",
                        b.name()
                    );
                }
                eprintln!(
                    "SKIPPED {test} on {}: {e}; set {var}=1 to fail instead",
                    b.name()
                );
            }
        }
    }
    out
}
