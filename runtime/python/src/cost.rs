//! The cost table of `kiln check --format json`, computed the same way:
//! the analysis over the graphs as lowered, and the planned peak activation
//! memory of the kernel programs after the default passes.

use crate::errors::Failure;
use kiln_compiler::analysis::cost::cost;
use kiln_compiler::lower::lower;
use kiln_compiler::spec::ResolvedSpec;
use pyo3::prelude::*;

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
    let origin = std::path::Path::new(&rs.spec.name);
    let peak = kiln::pipeline::peak_activation_bytes(&mut lowered, batch, seq_len, origin)?;
    kiln::pipeline::check_report(rs, &c, peak, batch)
        .map_err(|e| Failure::kiln(format!("cannot serialise the report: {e}")))
}

/// A JSON value as Python objects (dicts, lists, ints, floats, strings),
/// through the standard library's `json`, so numbers read as Python's own
/// `json.loads` of `kiln check --format json` would.
pub fn to_python<'py>(py: Python<'py>, v: &serde_json::Value) -> PyResult<Bound<'py, PyAny>> {
    let text = serde_json::to_string(v)
        .map_err(|e| Failure::kiln(format!("cannot serialise the report: {e}")).into_pyerr(py))?;
    py.import("json")?.call_method1("loads", (text,))
}
