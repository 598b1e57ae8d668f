//! The cost table of `kiln check --format json`, computed the same way:
//! the analysis over the graphs as lowered, and the planned peak activation
//! memory of the kernel programs after the default passes.

use crate::errors::Failure;
use kiln_compiler::analysis::cost::cost;
use kiln_compiler::lower::{Lowered, lower};
use kiln_compiler::spec::ResolvedSpec;
use pyo3::prelude::*;
use std::collections::BTreeMap;

/// `kiln check SPEC --format json [--seq-len N] [--batch B]` (without `--weights`).
pub fn check_json(
    rs: &ResolvedSpec,
    seq_len: Option<usize>,
    batch: usize,
) -> Result<serde_json::Value, Failure> {
    let mut lowered = lower(rs)?;
    let max = rs.spec.max_positions;
    let seq_len = seq_len.unwrap_or(128.min(max));
    if seq_len == 0 || seq_len > max {
        return Err(Failure::value(format!(
            "seq_len {seq_len}: the model takes 1 to {max} tokens (max_positions = {max})"
        )));
    }
    if batch == 0 {
        return Err(Failure::value("batch must be at least 1"));
    }
    let c = cost(rs, &lowered, seq_len);
    let peak = peak_activation_bytes(&mut lowered, batch, seq_len)?;
    let report =
        |e: &dyn std::fmt::Display| Failure::kiln(format!("cannot serialise the report: {e}"));
    let resolved = toml::Value::try_from(&rs.spec).map_err(|e| report(&e))?;
    let mut v = serde_json::to_value(&c).map_err(|e| report(&e))?;
    v["name"] = rs.spec.name.clone().into();
    v["peak_activation_bytes"] = peak.into();
    v["peak_activation_batch"] = batch.into();
    v["spec"] = serde_json::to_value(&resolved).map_err(|e| report(&e))?;
    Ok(v)
}

/// Planned peak activation memory (kernel-IR buffer plan after the default
/// passes) of the largest graph at `batch` x `seq` with an empty cache.
fn peak_activation_bytes(
    lowered: &mut Lowered,
    batch: usize,
    seq: usize,
) -> Result<usize, Failure> {
    kiln_compiler::passes::default_pipeline(1).run_lowered(lowered)?;
    let lengths = BTreeMap::from([
        ("batch".to_string(), batch),
        ("seq".to_string(), seq),
        ("past".to_string(), 0),
        ("src".to_string(), seq),
    ]);
    let mut peak = 0;
    for g in lowered.graphs() {
        let p = kiln_compiler::kernel::fuse(g)
            .map_err(|e| Failure::kiln(format!("{}: {e}", g.name)))?;
        peak = peak.max(p.peak_bytes(&lengths));
    }
    Ok(peak)
}

/// A JSON value as Python objects (dicts, lists, ints, floats, strings),
/// through the standard library's `json`, so numbers read as Python's own
/// `json.loads` of `kiln check --format json` would.
pub fn to_python<'py>(py: Python<'py>, v: &serde_json::Value) -> PyResult<Bound<'py, PyAny>> {
    let text = serde_json::to_string(v)
        .map_err(|e| Failure::kiln(format!("cannot serialise the report: {e}")).into_pyerr(py))?;
    py.import("json")?.call_method1("loads", (text,))
}
