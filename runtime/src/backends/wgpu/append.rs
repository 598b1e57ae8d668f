//! The KV cache kept on the device with spare rows: each decode step binds
//! the cache's storage as both its past input and its present output and
//! writes only the new rows (the `append-cache` kernel rewrite), instead of
//! copying the whole cache into a fresh buffer every step.

use super::{DeviceTensor, Gpu, WgpuGraph, device_bytes, err, gpu, mib};
use crate::backends::KvStore;
use crate::error::Result;
use crate::exec::interpreter::{Bindings, Outputs};
use crate::exec::program::empty_store_shapes;
use crate::tensor::Tensor;
use kiln_compiler::ir::DType;
use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;

/// An f32 cache tensor in a device buffer that runs append rows to in place
/// ([`WgpuGraph::run_appending`]): row-major storage with `capacity` rows
/// along `axis`, of which `shape[axis]` are in use.
pub struct DeviceStore {
    gpu: Arc<Gpu>,
    pub(super) buf: wgpu::Buffer,
    pub(super) shape: Vec<usize>,
    axis: usize,
    pub(super) capacity: usize,
}

impl std::fmt::Debug for DeviceStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceStore")
            .field("shape", &self.shape)
            .field("axis", &self.axis)
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl DeviceStore {
    /// An empty store: `shape` with no rows in use along `axis`, room for
    /// `capacity` rows.
    pub fn new(shape: &[usize], axis: usize, capacity: usize) -> Result<DeviceStore> {
        if axis >= shape.len() {
            return Err(err(format!(
                "cache axis {axis} of a rank-{} shape",
                shape.len()
            )));
        }
        let gpu = gpu()?;
        let mut shape = shape.to_vec();
        shape[axis] = 0;
        let buf = Self::allocate(&gpu, &shape, axis, capacity)?;
        Ok(DeviceStore {
            gpu,
            buf,
            shape,
            axis,
            capacity,
        })
    }

    /// The logical shape (rows in use along the axis).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Rows the storage holds along the axis.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// A zeroed buffer for `capacity` rows of `shape`, within the adapter's
    /// largest binding.
    fn allocate(gpu: &Gpu, shape: &[usize], axis: usize, capacity: usize) -> Result<wgpu::Buffer> {
        let (outer, inner) = split(shape, axis);
        let n = outer
            .checked_mul(capacity)
            .and_then(|x| x.checked_mul(inner))
            .and_then(|x| i64::try_from(x).ok())
            .ok_or_else(|| err(format!("a cache of {capacity} rows overflows memory")))?;
        let bytes = device_bytes(n);
        let limit = gpu.max_binding_bytes();
        if bytes > limit {
            let mut at = shape.to_vec();
            at[axis] = capacity;
            return Err(err(format!(
                "a KV cache of {at:?} f32 needs {}, more than this adapter's largest storage \
                 binding ({}; max_storage_buffer_binding_size): use fewer positions or a smaller batch",
                mib(bytes),
                mib(limit)
            )));
        }
        Ok(gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("kv cache"),
            size: bytes.max(16).next_multiple_of(16),
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        }))
    }

    /// Copy the rows in use of every outer index into `to`, which holds
    /// `to_rows` rows per outer index (device-side; queued, not waited on).
    fn copy_rows(&self, to: &wgpu::Buffer, to_rows: usize) {
        let (outer, inner) = split(&self.shape, self.axis);
        let used = self.shape[self.axis] * inner;
        if used == 0 || outer == 0 {
            return;
        }
        let row = |o: usize, rows: usize| device_bytes((o * rows * inner) as i64);
        let dev = &self.gpu.device;
        let mut enc = dev.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        for o in 0..outer {
            enc.copy_buffer_to_buffer(
                &self.buf,
                row(o, self.capacity),
                to,
                row(o, to_rows),
                device_bytes(used as i64),
            );
        }
        self.gpu.queue.submit([enc.finish()]);
    }

    /// Grow the storage to at least `capacity` rows, keeping the rows in use.
    pub fn reserve(&mut self, capacity: usize) -> Result<()> {
        if capacity <= self.capacity {
            return Ok(());
        }
        let _serial = self.gpu.serialise();
        let buf = Self::allocate(&self.gpu, &self.shape, self.axis, capacity)?;
        self.copy_rows(&buf, capacity);
        self.buf = buf;
        self.capacity = capacity;
        Ok(())
    }

    /// The rows in use, read back as a contiguous host tensor.
    pub fn to_host(&self) -> Result<Tensor> {
        let rows = self.shape[self.axis];
        let packed = {
            let _serial = self.gpu.serialise();
            let buf = Self::allocate(&self.gpu, &self.shape, self.axis, rows)?;
            self.copy_rows(&buf, rows);
            buf
        };
        DeviceTensor {
            buf: packed,
            shape: self.shape.clone(),
            dtype: DType::F32,
        }
        .to_host()
    }
}

/// Every cache of one wgpu session, by present output name.
#[derive(Debug, Default)]
pub struct DeviceStores(pub BTreeMap<String, DeviceStore>);

impl KvStore for DeviceStores {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn capacity(&self) -> usize {
        self.0
            .values()
            .map(DeviceStore::capacity)
            .min()
            .unwrap_or(0)
    }

    fn reserve(&mut self, rows: usize) -> Result<()> {
        self.0.values_mut().try_for_each(|st| st.reserve(rows))
    }

    fn tensor(&self, name: &str) -> Option<Result<Tensor>> {
        self.0.get(name).map(DeviceStore::to_host)
    }

    fn on_device(&self) -> bool {
        true
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// `(elements before the axis, elements after it)` of `shape`.
fn split(shape: &[usize], axis: usize) -> (usize, usize) {
    (
        shape[..axis].iter().product(),
        shape[axis + 1..].iter().product(),
    )
}

impl WgpuGraph {
    /// The caches this program can append to in place, as `(past input,
    /// present output)` names; empty when the `append-cache` rewrite is off.
    pub fn appendable(&self) -> &[(String, String)] {
        &self.caches
    }

    /// An empty device store for each [`WgpuGraph::appendable`] cache, by
    /// present output name: the past input's shape at `lengths` with no
    /// rows along the append axis, and room for `capacity` rows.
    pub fn empty_stores(
        &self,
        lengths: &Bindings,
        capacity: usize,
    ) -> Result<BTreeMap<String, DeviceStore>> {
        let p = &self.program;
        let shapes = empty_store_shapes(p, lengths)?;
        let mut stores = BTreeMap::new();
        for ((a, (_, name)), shape) in p.appends.iter().zip(&self.caches).zip(shapes) {
            stores.insert(name.clone(), DeviceStore::new(&shape, a.axis, capacity)?);
        }
        Ok(stores)
    }

    /// Run with the [`WgpuGraph::appendable`] caches kept in `stores` (by
    /// present output name) instead of passed and returned: each run writes
    /// its new rows into the store's device buffer, so a decode step costs
    /// O(new rows), not O(cache). `host` and `device` omit those past
    /// inputs; every other output is read back. Every store must have the
    /// same capacity, at least the rows after the run
    /// ([`DeviceStore::reserve`]). A store changes only past its rows in use
    /// until the run has succeeded.
    pub fn run_appending(
        &self,
        host: &[(&str, &Tensor)],
        device: &[(&str, &DeviceTensor)],
        stores: &mut BTreeMap<String, DeviceStore>,
    ) -> Result<Outputs> {
        if stores.is_empty() && !self.caches.is_empty() {
            return Err(err(format!(
                "`{}`: run_appending without cache stores",
                self.program.name
            )));
        }
        Ok(self.run_with(host, device, &|_| false, stores)?.0)
    }
}
