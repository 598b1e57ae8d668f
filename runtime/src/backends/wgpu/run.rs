//! One run of a compiled graph: lengths bound, buffers sized and checked
//! against the adapter's limits, inputs and size tables written, every
//! kernel encoded (one pass, or one per kernel with timestamps while
//! profiling), outputs read back or kept on the device.

use super::tensor::{download, upload_bytes};
use super::{DeviceStore, DeviceTensor, RunState, WgpuGraph, device_bytes, err, mib};
use crate::backends::profile::Profile;
use crate::error::Result;
use crate::exec::interpreter::{Bindings, NamedTensor, Outputs, metas};
use crate::exec::program::{bind_appending, bind_meta};
use crate::tensor::Tensor;
use kiln_compiler::codegen::wgsl::{self, Resource};
use kiln_compiler::kernel::{BufferKind, CAPACITY, Size};
use std::collections::BTreeMap;
use std::time::Duration;

/// A kernel ready to dispatch: pipeline, bind group, grid `(x, y)`.
type Dispatch<'a> = (&'a wgpu::ComputePipeline, wgpu::BindGroup, u32, u32);

/// GPU timestamps of a profiled run: a query set, the buffer it resolves
/// into and a mappable copy.
struct Timer {
    set: wgpu::QuerySet,
    resolved: wgpu::Buffer,
    read: wgpu::Buffer,
    count: u32,
}

impl Timer {
    fn new(dev: &wgpu::Device, count: u32) -> Timer {
        let bytes = 8 * u64::from(count);
        let buffer = |usage| {
            dev.create_buffer(&wgpu::BufferDescriptor {
                label: Some("kernel timestamps"),
                size: bytes,
                usage,
                mapped_at_creation: false,
            })
        };
        Timer {
            set: dev.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("kernel timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count,
            }),
            resolved: buffer(wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC),
            read: buffer(wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST),
            count,
        }
    }

    fn resolve(&self, enc: &mut wgpu::CommandEncoder) {
        enc.resolve_query_set(&self.set, 0..self.count, &self.resolved, 0);
        enc.copy_buffer_to_buffer(&self.resolved, 0, &self.read, 0, 8 * u64::from(self.count));
    }

    /// Start mapping the copy (after the submit; completes with the poll).
    fn map(&self) -> std::sync::mpsc::Receiver<std::result::Result<(), wgpu::BufferAsyncError>> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.read
            .slice(..)
            .map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send(r);
            });
        rx
    }

    /// The timestamps, in ticks, once mapped.
    fn read(
        &self,
        rx: std::sync::mpsc::Receiver<std::result::Result<(), wgpu::BufferAsyncError>>,
    ) -> Result<Vec<u64>> {
        rx.recv()
            .map_err(|_| err("wgpu: the timestamp read-back never completed"))?
            .map_err(|e| err(format!("wgpu timestamp read-back: {e}")))?;
        let ticks = {
            let view = (self.read.slice(..).get_mapped_range())
                .map_err(|e| err(format!("wgpu timestamp read-back: {e}")))?;
            view.chunks_exact(8)
                .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
                .collect()
        };
        self.read.unmap();
        Ok(ticks)
    }
}

impl WgpuGraph {
    /// Run on `inputs` (every declared input by name); every output is read
    /// back.
    pub fn run<N: NamedTensor>(&self, inputs: impl IntoIterator<Item = N>) -> Result<Outputs> {
        let inputs: Vec<N> = inputs.into_iter().collect();
        let pairs: Vec<(&str, &Tensor)> = inputs.iter().map(|i| (i.name(), i.tensor())).collect();
        Ok(self.run_resident(&pairs, &[], &|_| false)?.0)
    }

    /// Run with the declared inputs split between `host` tensors (uploaded)
    /// and `device` ones (bound where they are, not copied). Outputs named
    /// by `keep` stay on the device and come back as [`DeviceTensor`]s; the
    /// rest are read back into the returned [`Outputs`].
    pub fn run_resident(
        &self,
        host: &[(&str, &Tensor)],
        device: &[(&str, &DeviceTensor)],
        keep: &dyn Fn(&str) -> bool,
    ) -> Result<(Outputs, Vec<(String, DeviceTensor)>)> {
        self.run_with(host, device, keep, &mut BTreeMap::new())
    }

    /// [`WgpuGraph::run_resident`], with the [`WgpuGraph::appendable`]
    /// caches in `stores` (by present output name; every cache or none):
    /// their past inputs and present outputs are bound to the store's
    /// buffer, the copies of the past into the present are skipped, so the
    /// run writes only its new rows; the stores' rows in use then grow.
    pub(super) fn run_with(
        &self,
        host: &[(&str, &Tensor)],
        device: &[(&str, &DeviceTensor)],
        keep: &dyn Fn(&str) -> bool,
        stores: &mut BTreeMap<String, DeviceStore>,
    ) -> Result<(Outputs, Vec<(String, DeviceTensor)>)> {
        let p = &self.program;
        let (env, need) = self.bind(host, device, stores)?;
        // Appends into a store: the copy to skip, the buffers it stands for.
        let mut skip = vec![false; p.kernels.len()];
        let mut resident: Vec<Option<wgpu::Buffer>> = vec![None; p.buffers.len()];
        let mut in_store = vec![false; p.buffers.len()];
        for (a, (_, name)) in p.appends.iter().zip(&self.caches) {
            if let Some(st) = stores.get(name) {
                skip[a.copy] = true;
                resident[a.past] = Some(st.buf.clone());
                resident[a.present] = Some(st.buf.clone());
                in_store[a.present] = true;
            }
        }
        let read_back = |name: &str, id: usize| !keep(name) && !in_store[id];
        let lookup = |s: &str| env.get(s).copied();
        // A buffer's shape at this run's lengths.
        let shape_of = |id: usize| {
            p.buffers[id]
                .shape
                .iter()
                .map(|d| {
                    d.eval(&lookup)
                        .ok_or_else(|| err(format!("unbound dim {d}")))
                })
                .collect::<Result<Vec<usize>>>()
        };
        let gpu = &*self.gpu;
        let dev = &gpu.device;
        let _serial = gpu.serialise();
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());

        let bytes = self.buffer_bytes(&lookup)?;
        // Slots: the largest occupant at this run (bool temporaries take 4
        // bytes per element here, so the plan's byte sizes are not used).
        let mut slot_bytes = vec![0u64; p.plan.slots.len()];
        for (id, b) in p.buffers.iter().enumerate() {
            if let (BufferKind::Temp, Some(s)) = (&b.kind, p.plan.slot_of[id]) {
                slot_bytes[s] = slot_bytes[s].max(bytes[id]);
            }
        }
        let grow = |slot: &mut Option<(wgpu::Buffer, u64)>, need: u64, usage, label: &str| {
            let need = need.max(16).next_multiple_of(16);
            if slot.as_ref().is_none_or(|(_, cap)| *cap < need) {
                let buf = dev.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size: need,
                    usage,
                    mapped_at_creation: false,
                });
                *slot = Some((buf, need));
            }
        };
        let storage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC;
        for (s, &need) in slot_bytes.iter().enumerate() {
            grow(&mut st.slots[s], need, storage, "slot");
        }
        // Device-resident inputs are bound in place of the input buffers.
        for (id, b) in p.buffers.iter().enumerate() {
            if resident[id].is_some() {
                continue;
            }
            match &b.kind {
                BufferKind::Input(name) => {
                    if let Some((_, d)) = device.iter().find(|(n, _)| n == name) {
                        resident[id] = Some(d.buf.clone());
                    } else {
                        grow(&mut st.io[id], bytes[id], storage, &b.name);
                    }
                }
                BufferKind::Output => grow(&mut st.io[id], bytes[id], storage, &b.name),
                _ => {}
            }
        }
        // Outputs read back: where each lives, and its place in the staging
        // buffer. Kept outputs stay where they are.
        let mut reads = Vec::with_capacity(p.outputs.len());
        let mut total = 0u64;
        for (name, id) in &p.outputs {
            if read_back(name, *id) {
                reads.push((*id, total, bytes[*id]));
                total += bytes[*id];
            }
        }
        grow(
            &mut st.staging,
            total,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            "staging",
        );
        for (id, b) in p.buffers.iter().enumerate() {
            if let BufferKind::Input(name) = &b.kind {
                if resident[id].is_some() {
                    continue;
                }
                let (_, t) = host
                    .iter()
                    .find(|(n, _)| n == name)
                    .ok_or_else(|| err(format!("missing input `{name}`")))?;
                if t.numel() > 0 {
                    let (buf, _) = st.io[id].as_ref().expect("allocated");
                    gpu.queue.write_buffer(buf, 0, &upload_bytes(t.data()));
                }
            }
        }
        let resource = |st, r| self.resource(&resident, st, r);
        let groups = self.bind_groups(&st, &resident, &skip, &lookup)?;

        let scope = dev.push_error_scope(wgpu::ErrorFilter::Validation);
        let mut enc = dev.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        let (timer, timed) = self.encode(&mut enc, &groups);
        let staging = st.staging.as_ref().expect("allocated").0.clone();
        for &(id, at, n) in &reads {
            if n > 0 {
                let src = resource(&st, wgsl::resource_of(p, id));
                enc.copy_buffer_to_buffer(src, 0, &staging, at, n);
            }
        }
        // Kept outputs: an output buffer leaves the run state (the next run
        // allocates a new one); anything else kept is copied out.
        let mut kept = Vec::new();
        let mut taken = vec![false; p.buffers.len()];
        for (name, id) in &p.outputs {
            if !keep(name) || in_store[*id] {
                continue;
            }
            let b = &p.buffers[*id];
            let shape = shape_of(*id)?;
            let buf = if matches!(b.kind, BufferKind::Output) && !taken[*id] {
                taken[*id] = true;
                st.io[*id].as_ref().expect("allocated").0.clone()
            } else {
                let copy = dev.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(name),
                    size: bytes[*id].max(16).next_multiple_of(16),
                    usage: storage,
                    mapped_at_creation: false,
                });
                let src = resource(&st, wgsl::resource_of(p, *id));
                if bytes[*id] > 0 {
                    enc.copy_buffer_to_buffer(src, 0, &copy, 0, bytes[*id]);
                }
                copy
            };
            kept.push((
                name.clone(),
                DeviceTensor {
                    buf,
                    shape,
                    dtype: b.dtype,
                },
            ));
        }
        gpu.queue.submit([enc.finish()]);
        for (id, t) in taken.iter().enumerate() {
            if *t {
                st.io[id] = None;
            }
        }
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(err(format!("`{}`: wgpu: {e}", p.name)));
        }
        let slice = staging.slice(..total.max(16));
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        let times = timer.as_ref().map(Timer::map);
        dev.poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| err(format!("`{}`: wgpu: {e}", p.name)))?;
        rx.recv()
            .map_err(|_| err("wgpu: the read-back never completed"))?
            .map_err(|e| err(format!("`{}`: wgpu read-back: {e}", p.name)))?;
        if let (Some(t), Some(rx)) = (&timer, times) {
            self.record_profile(&t.read(rx)?, &timed, &lookup);
        }
        let mut entries = Vec::with_capacity(p.outputs.len());
        {
            let view = slice
                .get_mapped_range()
                .map_err(|e| err(format!("`{}`: wgpu read-back: {e}", p.name)))?;
            let read = p.outputs.iter().filter(|(name, id)| read_back(name, *id));
            for ((name, id), &(_, at, n)) in read.zip(&reads) {
                let data = download(&view[at as usize..(at + n) as usize], p.buffers[*id].dtype);
                entries.push((name.clone(), Tensor::new(shape_of(*id)?, data)?));
            }
        }
        staging.unmap();
        for (a, (_, name)) in p.appends.iter().zip(&self.caches) {
            if let Some(st) = stores.get_mut(name) {
                st.shape[a.axis] = need;
            }
        }
        Ok((Outputs::from_parts(entries, env), kept))
    }

    /// Encode every dispatched kernel: while profiling (where the adapter
    /// has timestamps), one pass per kernel with GPU timestamps at its ends
    /// (as many kernels as a query set holds; any beyond run untimed), then
    /// one pass for the rest. Returns the timer and the timed kernels.
    fn encode(
        &self,
        enc: &mut wgpu::CommandEncoder,
        groups: &[Option<Dispatch<'_>>],
    ) -> (Option<Timer>, Vec<usize>) {
        let gpu = &*self.gpu;
        let dev = &gpu.device;
        let profiling = gpu.has_timestamps()
            && self
                .profile
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some();
        let timed: Vec<usize> = (groups.iter().enumerate())
            .filter(|(_, g)| profiling && g.is_some())
            .map(|(ki, _)| ki)
            .take(wgpu::QUERY_SET_MAX_QUERIES as usize / 2)
            .collect();
        let timer = (!timed.is_empty()).then(|| Timer::new(dev, 2 * timed.len() as u32));
        let dispatch = |pass: &mut wgpu::ComputePass<'_>, ki: usize| {
            if let Some((pipeline, bg, x, y)) = &groups[ki] {
                pass.set_pipeline(pipeline);
                pass.set_bind_group(0, bg, &[]);
                pass.dispatch_workgroups(*x, *y, 1);
            }
        };
        if let Some(t) = &timer {
            for (q, &ki) in timed.iter().enumerate() {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: None,
                    timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                        query_set: &t.set,
                        beginning_of_pass_write_index: Some(2 * q as u32),
                        end_of_pass_write_index: Some(2 * q as u32 + 1),
                    }),
                });
                dispatch(&mut pass, ki);
            }
        }
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes: None,
            });
            let after = timed.last().map_or(0, |&ki| ki + 1);
            for ki in after..groups.len() {
                dispatch(&mut pass, ki);
            }
        }
        if let Some(t) = &timer {
            t.resolve(enc);
        }
        (timer, timed)
    }

    /// Bind the lengths from the inputs (host and device) and, when the
    /// caches live in `stores`, from the stores; also the rows every cache
    /// holds after the run.
    fn bind(
        &self,
        host: &[(&str, &Tensor)],
        device: &[(&str, &DeviceTensor)],
        stores: &BTreeMap<String, DeviceStore>,
    ) -> Result<(Bindings, usize)> {
        let p = &self.program;
        let mut meta = metas(host);
        meta.extend(
            device
                .iter()
                .map(|&(n, d)| (n, d.dtype, d.shape.as_slice())),
        );
        if stores.is_empty() {
            let env = bind_meta(p, &meta)?;
            let need = env.get(CAPACITY).copied().unwrap_or(0);
            return Ok((env, need));
        }
        let store = |name: &str| stores.get(name).map(|s| (s.capacity, s.shape.as_slice()));
        bind_appending(p, &self.caches, meta, &store)
    }

    /// Bytes of every buffer at this run's lengths; a buffer over the
    /// adapter's largest storage binding is an error naming it.
    fn buffer_bytes(&self, lookup: &dyn Fn(&str) -> Option<usize>) -> Result<Vec<u64>> {
        let p = &self.program;
        let limit = self.gpu.max_binding_bytes();
        let eval = |s: &Size| {
            s.eval(lookup)
                .ok_or_else(|| err(format!("`{}`: unbound size {s}", p.name)))
        };
        let mut bytes = Vec::with_capacity(p.buffers.len());
        for (id, b) in p.buffers.iter().enumerate() {
            let elements = eval(&b.storage_numel())?;
            let n = if wgsl::param_f16(p, id, self.codegen) {
                elements.max(0) as u64 * 2
            } else {
                device_bytes(elements)
            };
            if n > limit {
                let id = bytes.len();
                let what = match &b.kind {
                    BufferKind::Input(name) => format!("input `{name}`"),
                    BufferKind::Output => {
                        let name = p.outputs.iter().find(|(_, o)| *o == id).map(|(n, _)| n);
                        format!("output `{}`", name.unwrap_or(&b.name))
                    }
                    BufferKind::Param(name) => format!("parameter `{name}`"),
                    _ => format!("intermediate `{}`", b.name),
                };
                let dims: Vec<String> = b.shape.iter().map(|d| d.to_string()).collect();
                let at: Vec<String> = b
                    .shape
                    .iter()
                    .map(|d| d.eval(&lookup).map_or("?".into(), |v| v.to_string()))
                    .collect();
                return Err(err(format!(
                    "`{}`: {what} ({}[{}] = [{}]) needs {} at these lengths, more than this \
                     adapter's largest storage binding ({}; max_storage_buffer_binding_size)",
                    p.name,
                    b.dtype,
                    dims.join(", "),
                    at.join(", "),
                    mib(n),
                    mib(limit)
                )));
            }
            bytes.push(n);
        }
        Ok(bytes)
    }

    /// The device buffer a shader binding names at this run.
    fn resource<'a>(
        &'a self,
        resident: &'a [Option<wgpu::Buffer>],
        st: &'a RunState,
        r: Resource,
    ) -> &'a wgpu::Buffer {
        match r {
            Resource::Slot(s) => &st.slots[s].as_ref().expect("allocated").0,
            Resource::Buffer(id) => match (&self.fixed[id], &resident[id]) {
                (Some(b), _) => b,
                (None, Some(b)) => b,
                (None, None) => &st.io[id].as_ref().expect("allocated").0,
            },
        }
    }

    /// Per kernel, its pipeline, bind group and workgroup grid (`None`: not
    /// dispatched, a skipped cache copy or an empty grid), with its size
    /// table written; a Gemm over few rows takes its skinny variant.
    fn bind_groups<'a>(
        &'a self,
        st: &RunState,
        resident: &[Option<wgpu::Buffer>],
        skip: &[bool],
        lookup: &dyn Fn(&str) -> Option<usize>,
    ) -> Result<Vec<Option<Dispatch<'a>>>> {
        let p = &self.program;
        let gpu = &*self.gpu;
        let dev = &gpu.device;
        let eval = |s: &Size| {
            s.eval(lookup)
                .ok_or_else(|| err(format!("`{}`: unbound size {s}", p.name)))
        };
        let resource = |r| self.resource(resident, st, r);
        // Size tables, bind groups, one pass.
        let mut groups = Vec::with_capacity(self.launches.len());
        for (ki, k) in self.shaders.kernels.iter().enumerate() {
            if skip[ki] {
                groups.push(None);
                continue;
            }
            // A Gemm over few rows (decode) runs its skinny variant.
            let (k, launch) = match (&k.skinny, &self.launches[ki]) {
                (Some(sk), (_, Some(l))) if eval(&sk.rows)? <= wgsl::SKINNY_ROWS => {
                    (&*sk.kernel, l)
                }
                (_, (l, _)) => (k, l),
            };
            let n = k
                .dispatch
                .groups(&|s| s.eval(lookup))
                .ok_or_else(|| err(format!("`{}` kernel k{ki}: unbound dispatch", p.name)))?;
            if n == 0 {
                groups.push(None);
                continue;
            }
            let max = u64::from(gpu.limits.max_compute_workgroups_per_dimension);
            let (x, y) = (n.min(max), n.div_ceil(max));
            if y > max {
                return Err(err(format!(
                    "`{}` kernel k{ki}: {n} workgroups exceed the adapter's grid",
                    p.name
                )));
            }
            let mut table = Vec::with_capacity(k.sizes.len().div_ceil(4).max(1) * 16);
            for s in &k.sizes {
                let v = eval(s)?;
                let v = i32::try_from(v).map_err(|_| {
                    err(format!(
                        "`{}` kernel k{ki}: size {s} = {v} exceeds i32",
                        p.name
                    ))
                })?;
                table.extend(v.to_le_bytes());
            }
            table.resize(k.sizes.len().div_ceil(4).max(1) * 16, 0);
            gpu.queue.write_buffer(&launch.uniform, 0, &table);
            let mut entries: Vec<wgpu::BindGroupEntry> = k
                .bindings
                .iter()
                .enumerate()
                .map(|(b, bind)| wgpu::BindGroupEntry {
                    binding: b as u32,
                    resource: resource(bind.resource).as_entire_binding(),
                })
                .collect();
            entries.push(wgpu::BindGroupEntry {
                binding: k.bindings.len() as u32,
                resource: launch.uniform.as_entire_binding(),
            });
            let bg = dev.create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &launch.layout,
                entries: &entries,
            });
            groups.push(Some((&launch.pipeline, bg, x as u32, y as u32)));
        }

        Ok(groups)
    }

    /// Add one profiled run's GPU timestamps (`ticks`, two per timed
    /// kernel) to the profile.
    fn record_profile(
        &self,
        ticks: &[u64],
        timed: &[usize],
        lookup: &dyn Fn(&str) -> Option<usize>,
    ) {
        let p = &self.program;
        let period = f64::from(self.gpu.queue.get_timestamp_period());
        let mut run = Profile::for_kernels(p.kernels.len());
        for (q, &ki) in timed.iter().enumerate() {
            let ns = ticks[2 * q + 1].saturating_sub(ticks[2 * q]) as f64 * period;
            let k = &p.kernels[ki];
            run.record(
                ki,
                k.kind(),
                Duration::from_nanos(ns as u64),
                k.matmul_flops(lookup),
            );
        }
        if let Some(acc) = self
            .profile
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            acc.add_run(&run);
        }
    }
}
