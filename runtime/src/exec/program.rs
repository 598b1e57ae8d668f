//! What every backend that runs a [`KernelProgram`] shares: binding the
//! length symbols from the inputs (and from KV-cache stores kept between
//! runs), reading parameters by canonical name (joined parameters of merged
//! projections built from their parts), and literal buffers in their dtype.

use crate::error::{Result, RuntimeError};
use crate::exec::interpreter::{Bindings, InputMeta, bind_inputs, metas};
use crate::tensor::{Tensor, TensorData};
use crate::weights::Weights;
use kiln_compiler::ir::{DType, TensorType};
use kiln_compiler::kernel::{CAPACITY, KernelProgram};

/// A broken invariant of a compiled program (a bug, not the caller's).
fn err(m: impl Into<String>) -> RuntimeError {
    RuntimeError::Internal { message: m.into() }
}

/// Weights that do not fit the program's parameters (the caller's).
fn weights_err(p: &str, m: String) -> RuntimeError {
    RuntimeError::Weights {
        graph: p.to_string(),
        problems: vec![m],
    }
}

/// Bind length symbols from the inputs, exactly as the graph interpreter does.
pub fn bind(p: &KernelProgram, inputs: &[(&str, &Tensor)]) -> Result<Bindings> {
    bind_meta(p, &metas(inputs))
}

/// [`bind`] from the names, dtypes and shapes of the inputs.
pub(crate) fn bind_meta(p: &KernelProgram, inputs: &[InputMeta<'_>]) -> Result<Bindings> {
    let types: Vec<(&str, TensorType)> = p
        .inputs
        .iter()
        .map(|(name, id)| {
            let b = &p.buffers[*id];
            (name.as_str(), TensorType::new(b.dtype, b.shape.clone()))
        })
        .collect();
    let declared: Vec<(&str, &TensorType)> = types.iter().map(|(n, t)| (*n, t)).collect();
    let mut env = bind_inputs(&p.name, &declared, inputs)?;
    bind_capacity(p, &mut env)?;
    Ok(env)
}

/// The shape of an empty store for each of `p`'s appends, in order: the
/// past input's shape at `lengths` with no rows along the append axis.
pub(crate) fn empty_store_shapes(p: &KernelProgram, lengths: &Bindings) -> Result<Vec<Vec<usize>>> {
    p.appends
        .iter()
        .map(|a| {
            let b = &p.buffers[a.past];
            (b.shape.iter().enumerate())
                .map(|(i, d)| match i == a.axis {
                    true => Ok(0),
                    false => d.eval(&|s: &str| lengths.get(s).copied()).ok_or_else(|| {
                        err(format!("`{}`: unbound dim {d} of `{}`", p.name, b.name))
                    }),
                })
                .collect()
        })
        .collect()
}

/// Present output name → its store's capacity and shape in use.
pub(crate) type StoreLookup<'a> = dyn Fn(&str) -> Option<(usize, &'a [usize])> + 'a;

/// [`bind_meta`] for a run that appends to stores kept between runs:
/// `inputs` omits the caches' past inputs, which are bound from `store`
/// (present output name → the store's capacity and shape in use) for
/// every `(past, present)` of `caches`; [`CAPACITY`] is bound to the
/// stores' common capacity. Also returns the rows every cache holds after
/// the run (an error if the stores lack room for them).
pub(crate) fn bind_appending<'a>(
    p: &KernelProgram,
    caches: &'a [(String, String)],
    mut inputs: Vec<InputMeta<'a>>,
    store: &StoreLookup<'a>,
) -> Result<(Bindings, usize)> {
    let mut capacity = None;
    for (past, present) in caches {
        let (cap, shape) = store(present)
            .ok_or_else(|| err(format!("`{}`: no store for the cache `{present}`", p.name)))?;
        if capacity.is_some_and(|c| c != cap) {
            return Err(err(format!(
                "`{}`: cache stores of different capacities",
                p.name
            )));
        }
        capacity = Some(cap);
        inputs.push((past.as_str(), DType::F32, shape));
    }
    let mut env = bind_meta(p, &inputs)?;
    // Bound to the rows in use by `bind_meta`: the rows after the run.
    let need = env.get(CAPACITY).copied().unwrap_or(0);
    if let Some(c) = capacity {
        if c < need {
            return Err(err(format!(
                "`{}`: cache stores hold {c} rows, the run needs {need}; reserve first",
                p.name
            )));
        }
        env.insert(CAPACITY.to_string(), c);
    }
    Ok((env, need))
}

/// Give appendable caches exactly the rows in use (row-major storage), for
/// a run that does not keep them between runs.
pub(crate) fn bind_capacity(p: &KernelProgram, env: &mut Bindings) -> Result<()> {
    let Some((b, a)) = p.buffers.iter().find_map(|b| b.capacity.map(|a| (b, a))) else {
        return Ok(());
    };
    let rows = b.shape[a]
        .eval(&|s: &str| env.get(s).copied())
        .ok_or_else(|| err(format!("`{}`: unbound rows of `{}`", p.name, b.name)))?;
    env.insert(CAPACITY.to_string(), rows);
    Ok(())
}

/// Parameter `name` from `weights`, checked against its declared type.
pub(crate) fn param<'w>(
    program: &str,
    weights: &'w Weights,
    name: &str,
    dtype: DType,
    shape: &[kiln_compiler::ir::Dim],
) -> Result<std::borrow::Cow<'w, Tensor>> {
    let t = weights
        .dense(name)
        .ok_or_else(|| weights_err(program, format!("missing parameter `{name}`")))??;
    let want: Vec<usize> = shape.iter().map(|d| d.as_const().unwrap_or(0)).collect();
    if t.shape() != want.as_slice() || t.dtype() != dtype {
        return Err(weights_err(
            program,
            format!(
                "parameter `{name}`: expected {dtype}{want:?}, got {}{:?}",
                t.dtype(),
                t.shape()
            ),
        ));
    }
    Ok(t)
}

/// Parameter `name` of `p`: from `weights`, or, for a joined parameter the
/// weights lack, built from its parts (rows of each, in order).
pub(crate) fn param_or_join<'w>(
    p: &KernelProgram,
    weights: &'w Weights,
    name: &str,
    dtype: DType,
    shape: &[kiln_compiler::ir::Dim],
) -> Result<std::borrow::Cow<'w, Tensor>> {
    match (weights.shape_of(name), p.joined.get(name)) {
        (None, Some(parts)) => {
            let t = join_rows(weights, name, parts)?;
            let want: Vec<usize> = shape.iter().map(|d| d.as_const().unwrap_or(0)).collect();
            if t.shape() != want.as_slice() || t.dtype() != dtype {
                return Err(weights_err(
                    &p.name,
                    format!(
                        "joined parameter `{name}`: expected {dtype}{want:?}, got {}{:?}",
                        t.dtype(),
                        t.shape()
                    ),
                ));
            }
            Ok(std::borrow::Cow::Owned(t))
        }
        _ => param(&p.name, weights, name, dtype, shape),
    }
}

/// The rows of `parts` (f32 matrices with equal columns), stacked.
pub fn join_rows(weights: &Weights, name: &str, parts: &[(String, usize)]) -> Result<Tensor> {
    let mut rows = 0;
    let mut cols = None;
    let mut data = Vec::new();
    for (part, _) in parts {
        let t = weights
            .dense(part)
            .ok_or_else(|| weights_err(name, format!("missing parameter `{part}`")))??;
        let (r, c) = match t.shape() {
            [r, c] if t.dtype() == DType::F32 => (*r, *c),
            s => {
                return Err(weights_err(
                    name,
                    format!(
                        "parameter `{part}`: expected an f32 matrix, got {}{s:?}",
                        t.dtype()
                    ),
                ));
            }
        };
        if *cols.get_or_insert(c) != c {
            return Err(weights_err(
                name,
                format!(
                    "parameter `{part}` has {c} columns, the other parts {}",
                    cols.unwrap_or(c)
                ),
            ));
        }
        rows += r;
        data.extend(t.to_f32_vec());
    }
    Tensor::from_f32(&[rows, cols.unwrap_or(0)], data)
}

/// Undo [`join_rows`]: put the parts of joined weight `name` back (each
/// its rows, in order) and remove `name`.
pub fn split_rows(weights: &mut Weights, name: &str, parts: &[(String, usize)]) -> Result<()> {
    let Some(t) = weights.remove(name) else {
        return Ok(());
    };
    let [rows, cols] = *t.shape() else {
        return Err(err(format!("joined weight `{name}` is not a matrix")));
    };
    if parts.iter().map(|(_, r)| r).sum::<usize>() != rows {
        return Err(err(format!(
            "joined weight `{name}` has {rows} rows, its parts differ"
        )));
    }
    let data = t.to_f32_vec();
    let mut at = 0;
    for (part, r) in parts {
        let piece = data[at * cols..(at + r) * cols].to_vec();
        weights.insert(part.clone(), Tensor::from_f32(&[*r, cols], piece)?);
        at += r;
    }
    Ok(())
}

/// A literal buffer's values in its dtype (the graph's `Literal` rules).
pub(crate) fn const_data(v: &[f32], dtype: DType) -> TensorData {
    match dtype {
        DType::F32 => TensorData::F32(v.to_vec()),
        DType::I32 => TensorData::I32(v.iter().map(|&x| x as i32).collect()),
        DType::Bool => TensorData::Bool(v.iter().map(|&x| x != 0.0).collect()),
    }
}
