//! The JIT's KV cache kept between runs: one f32 storage per cache with
//! spare rows, which a run appends its new rows to in place.

use crate::backends::KvStore;
use crate::error::{Result, RuntimeError};
use crate::tensor::Tensor;
use std::any::Any;
use std::collections::BTreeMap;

fn err(m: impl Into<String>) -> RuntimeError {
    RuntimeError::Limit(m.into())
}

/// An f32 cache tensor that runs append rows to in place
/// ([`JitGraph::run_appending`]): row-major storage with `capacity` rows
/// along `axis`, of which `shape[axis]` are in use.
#[derive(Debug, Clone, PartialEq)]
pub struct AppendStore {
    pub(super) data: Vec<f32>,
    pub(super) shape: Vec<usize>,
    axis: usize,
    pub(super) capacity: usize,
}

impl AppendStore {
    /// An empty store: `shape` with no rows in use along `axis`, room for `capacity`.
    pub fn new(shape: &[usize], axis: usize, capacity: usize) -> Result<AppendStore> {
        if axis >= shape.len() {
            return Err(RuntimeError::Internal {
                message: format!("cache axis {axis} of a rank-{} shape", shape.len()),
            });
        }
        let mut st = AppendStore {
            data: Vec::new(),
            shape: shape.to_vec(),
            axis,
            capacity: 0,
        };
        st.shape[axis] = 0;
        st.reserve(capacity)?;
        Ok(st)
    }

    /// The logical shape (rows in use along the axis).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Rows the storage holds along the axis.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Grow the storage to at least `capacity` rows, keeping the rows in use.
    pub fn reserve(&mut self, capacity: usize) -> Result<()> {
        if capacity <= self.capacity {
            return Ok(());
        }
        let (outer, inner) = self.split();
        let total = outer
            .checked_mul(capacity)
            .and_then(|x| x.checked_mul(inner))
            .ok_or_else(|| err(format!("a cache of {capacity} rows overflows memory")))?;
        let mut data = vec![0.0f32; total];
        let used = self.shape[self.axis] * inner;
        for o in 0..outer {
            let from = o * self.capacity * inner;
            data[o * capacity * inner..][..used].copy_from_slice(&self.data[from..from + used]);
        }
        self.data = data;
        self.capacity = capacity;
        Ok(())
    }

    /// The rows in use as a contiguous tensor.
    pub fn to_tensor(&self) -> Result<Tensor> {
        let (outer, inner) = self.split();
        let used = self.shape[self.axis] * inner;
        let mut out = Vec::with_capacity(outer * used);
        for o in 0..outer {
            out.extend_from_slice(&self.data[o * self.capacity * inner..][..used]);
        }
        Tensor::from_f32(&self.shape, out)
    }

    /// `(elements before the axis, elements after it)`.
    fn split(&self) -> (usize, usize) {
        (
            self.shape[..self.axis].iter().product(),
            self.shape[self.axis + 1..].iter().product(),
        )
    }
}

/// Every cache of one JIT session, by present output name.
#[derive(Debug, Default)]
pub struct JitStores(pub BTreeMap<String, AppendStore>);

impl KvStore for JitStores {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn capacity(&self) -> usize {
        self.0
            .values()
            .map(AppendStore::capacity)
            .min()
            .unwrap_or(0)
    }

    fn reserve(&mut self, rows: usize) -> Result<()> {
        self.0.values_mut().try_for_each(|st| st.reserve(rows))
    }

    fn tensor(&self, name: &str) -> Option<Result<Tensor>> {
        self.0.get(name).map(AppendStore::to_tensor)
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}
