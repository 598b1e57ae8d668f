//! The stages [`crate::compile_file`] runs, one function each, for tools that
//! stop early or need the intermediate values (the `kiln` command's `check`,
//! `compile` and `bench` use them): load + lower, graph passes, fusion, and
//! the text forms.
//!
//! ```
//! use kiln::pipeline;
//! use std::path::Path;
//!
//! let origin = Path::new("inline.toml");
//! let (spec, mut lowered) = pipeline::load_str("extends = \"gpt2\"\nlayers = 1", origin)?;
//! assert_eq!(spec.layers.len(), 1);
//! pipeline::optimise(&mut lowered, &kiln::Options::default(), origin)?;
//! let kernels = pipeline::fuse(&lowered, origin)?;
//! assert_eq!(
//!     pipeline::kernels_text(&kernels),
//!     kiln::compile_str("extends = \"gpt2\"\nlayers = 1")?.kernels_text()
//! );
//! # Ok::<(), kiln::Error>(())
//! ```

use crate::{Error, Options};
use kiln_compiler::compile;
use kiln_compiler::ir::{to_dot, to_text};
use kiln_compiler::kernel::KernelProgram;
use kiln_compiler::lower::{Lowered, lower};
use kiln_compiler::spec::{self, ResolvedSpec};
use std::path::Path;

/// Load what `path` names (a `.toml` spec, a HF folder or its
/// `config.json`, a `.gguf` file; the spec only, no weights) and lower it to
/// IR graphs, as lowered (no passes yet).
///
/// ```
/// let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny/gpt2.toml");
/// let (spec, lowered) = kiln::pipeline::load(&path)?;
/// assert_eq!(lowered.vocab_size, spec.spec.vocab_size);
/// # Ok::<(), kiln::Error>(())
/// ```
pub fn load(path: &Path) -> Result<(ResolvedSpec, Lowered), Error> {
    let rs = kiln_open::source::open_spec(path)?;
    lower_spec(rs, path)
}

/// Resolve spec TOML text and lower it; `origin` names the text in errors
/// and anchors a relative `extends` path.
///
/// ```
/// let err = kiln::pipeline::load_str("d_model = \"big\"", "mine.toml".as_ref()).unwrap_err();
/// assert!(err.to_string().starts_with("mine.toml:1:1: error: expected an integer for `d_model`"), "{err}");
/// ```
pub fn load_str(toml: &str, origin: &Path) -> Result<(ResolvedSpec, Lowered), Error> {
    let rs = spec::load_str(toml, origin)?;
    lower_spec(rs, origin)
}

fn lower_spec(rs: ResolvedSpec, origin: &Path) -> Result<(ResolvedSpec, Lowered), Error> {
    let lowered = lower(&rs).map_err(|source| Error::Lower {
        origin: origin.display().to_string(),
        source: Box::new(source),
    })?;
    Ok((rs, lowered))
}

/// Run the graph passes `opts` selects over every graph of `lowered`
/// ([`kiln_compiler::compile::optimise`]).
///
/// ```
/// let origin = std::path::Path::new("x.toml");
/// let (_, mut lowered) = kiln::pipeline::load_str("extends = \"gpt2\"\nlayers = 1", origin)?;
/// let before = kiln::pipeline::ir_text(&lowered);
/// kiln::pipeline::optimise(&mut lowered, &kiln::Options::default(), origin)?;
/// assert!(kiln::pipeline::ir_text(&lowered).len() < before.len());
/// # Ok::<(), kiln::Error>(())
/// ```
pub fn optimise(lowered: &mut Lowered, opts: &Options, origin: &Path) -> Result<(), Error> {
    compile::optimise(lowered, opts).map_err(|e| Error::compile(origin, e))
}

/// Fuse every graph of `lowered` into a kernel program (encoder, then decoder).
///
/// ```
/// let origin = std::path::Path::new("x.toml");
/// let (_, lowered) = kiln::pipeline::load_str("extends = \"t5-small\"\nlayers = 1", origin)?;
/// assert_eq!(kiln::pipeline::fuse(&lowered, origin)?.len(), 2);
/// # Ok::<(), kiln::Error>(())
/// ```
pub fn fuse(lowered: &Lowered, origin: &Path) -> Result<Vec<KernelProgram>, Error> {
    fuse_with(lowered, &Options::default(), origin)
}

/// [`fuse`] without the kernel rewrites `opts.disabled_passes` names
/// (`attention`, `write-through`, `moe-dispatch`, `append-cache`); the
/// graphs are taken as already optimised ([`optimise`]).
///
/// ```
/// let origin = std::path::Path::new("x.toml");
/// let (_, lowered) = kiln::pipeline::load_str("extends = \"gpt2\"\nlayers = 1", origin)?;
/// let opts = kiln::Options { disabled_passes: vec!["attention".into()], ..Default::default() };
/// let text = kiln::pipeline::kernels_text(&kiln::pipeline::fuse_with(&lowered, &opts, origin)?);
/// assert!(!text.contains(" attention "));
/// assert!(kiln::pipeline::kernels_text(&kiln::pipeline::fuse(&lowered, origin)?).contains(" attention "));
/// # Ok::<(), kiln::Error>(())
/// ```
pub fn fuse_with(
    lowered: &Lowered,
    opts: &Options,
    origin: &Path,
) -> Result<Vec<KernelProgram>, Error> {
    lowered
        .graphs()
        .map(|g| compile::fuse_optimised(g, opts).map_err(|e| Error::compile(origin, e)))
        .collect()
}

/// Every graph in kiln's IR text form, one after the other
/// (`kiln compile --emit ir`).
///
/// ```
/// let (_, lowered) = kiln::pipeline::load_str("extends = \"gpt2\"\nlayers = 1", "x.toml".as_ref())?;
/// assert!(kiln::pipeline::ir_text(&lowered).contains("param \"embed.tokens\""));
/// # Ok::<(), kiln::Error>(())
/// ```
pub fn ir_text(lowered: &Lowered) -> String {
    lowered.graphs().map(to_text).collect()
}

/// Every graph as Graphviz DOT (`kiln compile --emit dot`).
///
/// ```
/// let (_, lowered) = kiln::pipeline::load_str("extends = \"gpt2\"\nlayers = 1", "x.toml".as_ref())?;
/// assert!(kiln::pipeline::dot_text(&lowered).contains("digraph"));
/// # Ok::<(), kiln::Error>(())
/// ```
pub fn dot_text(lowered: &Lowered) -> String {
    lowered.graphs().map(to_dot).collect()
}

/// Every kernel program in the kernel IR's text form
/// (`kiln compile --emit kernels`).
///
/// ```
/// let origin = std::path::Path::new("x.toml");
/// let (_, lowered) = kiln::pipeline::load_str("extends = \"gpt2\"\nlayers = 1", origin)?;
/// let text = kiln::pipeline::kernels_text(&kiln::pipeline::fuse(&lowered, origin)?);
/// assert!(text.starts_with("kernels \"gpt2.decoder\""), "{text}");
/// # Ok::<(), kiln::Error>(())
/// ```
pub fn kernels_text(programs: &[KernelProgram]) -> String {
    programs.iter().map(KernelProgram::to_text).collect()
}

/// Planned peak activation memory (the kernel programs' buffer plan after
/// the default graph passes) of the largest graph at `batch` × `seq` with
/// an empty cache: `kiln check`'s `peak_activation_bytes`. Optimises
/// `lowered` in place.
///
/// ```
/// let origin = std::path::Path::new("x.toml");
/// let (_, mut lowered) = kiln::pipeline::load_str("extends = \"gpt2\"\nlayers = 1", origin)?;
/// let one = kiln::pipeline::peak_activation_bytes(&mut lowered, 1, 16, origin)?;
/// assert!(kiln::pipeline::peak_activation_bytes(&mut lowered, 2, 16, origin)? > one);
/// # Ok::<(), kiln::Error>(())
/// ```
pub fn peak_activation_bytes(
    lowered: &mut Lowered,
    batch: usize,
    seq: usize,
    origin: &Path,
) -> Result<usize, Error> {
    optimise(lowered, &Options::default(), origin)?;
    let lengths = std::collections::BTreeMap::from([
        ("batch".to_string(), batch),
        ("seq".to_string(), seq),
        ("past".to_string(), 0),
        ("src".to_string(), seq),
    ]);
    let mut peak = 0;
    for g in lowered.graphs() {
        let p = kiln_compiler::kernel::fuse(g)
            .map_err(|e| Error::compile(origin, compile::CompileError::Fuse(e)))?;
        peak = peak.max(p.peak_bytes(&lengths));
    }
    Ok(peak)
}

/// `kiln check --format json`'s report (without `--weights`): the cost
/// table's fields, `name`, `peak_activation_bytes`, `peak_activation_batch`
/// and the resolved `spec`.
pub fn check_report(
    rs: &ResolvedSpec,
    cost: &kiln_compiler::analysis::cost::Cost,
    peak: usize,
    batch: usize,
) -> Result<serde_json::Value, serde_json::Error> {
    let resolved = toml::Value::try_from(&rs.spec).map_err(serde::ser::Error::custom)?;
    let mut v = serde_json::to_value(cost)?;
    v["name"] = rs.spec.name.clone().into();
    v["peak_activation_bytes"] = peak.into();
    v["peak_activation_batch"] = batch.into();
    v["spec"] = serde_json::to_value(&resolved)?;
    Ok(v)
}

/// A byte count as the `--memory-limit` flags take it: `8G`, `512M`,
/// `64K`, `1.5G` or plain bytes (binary units: K = 1024).
///
/// ```
/// assert_eq!(kiln::pipeline::parse_bytes("1.5K"), Ok(1536));
/// assert!(kiln::pipeline::parse_bytes("8X").is_err());
/// ```
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&t[..i], &t[i..]),
        None => (t, ""),
    };
    let upper = unit.to_ascii_uppercase();
    let scale: f64 = match upper.trim_end_matches("IB").trim_end_matches('B') {
        "" => 1.0,
        "K" => 1024.0,
        "M" => 1024.0 * 1024.0,
        "G" => 1024.0 * 1024.0 * 1024.0,
        "T" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(format!("`{s}`: give bytes, or a number with K, M, G or T")),
    };
    let n: f64 = (num.trim().parse())
        .map_err(|_| format!("`{s}`: give bytes, or a number with K, M, G or T"))?;
    let bytes = n * scale;
    if !(bytes.is_finite() && (1.0..1.8e19).contains(&bytes)) {
        return Err(format!(
            "`{s}`: the limit must be at least one byte and below 16 EiB"
        ));
    }
    Ok(bytes as u64)
}
