//! The GPU backend: each part's kernel program (optimised and fused by the
//! compiler, [`kiln_compiler::compile`]) turned into WGSL by
//! [`kiln_compiler::codegen::wgsl`] and run through wgpu (Vulkan or GL).
//!
//! - **Adapter.** One device per process ([`gpu`]), from the backends named
//!   by `KILN_WGPU_BACKEND` (`vulkan`, `gl`, or a comma list; default: both,
//!   high-performance preference), with the adapter's own limits.
//! - **Compile once.** [`WgpuGraph::new`] builds one compute pipeline per
//!   kernel, with an explicit bind-group layout from the generator's
//!   bindings, and uploads every parameter and literal once
//!   ([`DeviceWeights`] shares them between a model's graphs).
//! - **Run.** Lengths are bound from the inputs; every kernel's size table is
//!   evaluated and written to its uniform; temporaries live in one device
//!   buffer per slot of the program's memory plan (grown when a longer run
//!   needs more, never shrunk); inputs are written, all kernels are encoded
//!   into one compute pass and submitted once; only the outputs are copied
//!   back (through one staging buffer).
//! - **Resident tensors.** [`WgpuGraph::run_resident`] takes some inputs as
//!   [`DeviceTensor`]s and leaves chosen outputs on the device: a session's
//!   KV cache (and an encoder's cross K/V) stays there between decode steps,
//!   so a step uploads its tokens and mask and reads back only the logits.
//! - **Limits.** A tensor larger than the adapter's
//!   `max_storage_buffer_binding_size` is rejected with an error naming it
//!   (at compile time for parameters, at run time for lengths-dependent
//!   tensors). Splitting such tensors is future work.
//! - **Errors.** Shader compilation and validation errors are captured in
//!   error scopes and returned as [`RuntimeError`]s, never panics.

use crate::backends::profile::Profile;
use crate::backends::{
    Backend, Cached, Compiled, KvStore, PartSource, Precision, PrepareOptions, Prepared, Resident,
};
use crate::error::{Result, RuntimeError};
use crate::exec::interpreter::{Bindings, NamedTensor, Outputs, metas};
use crate::exec::program::{bind_appending, bind_meta, const_data, param_or_join};
use crate::tensor::{Tensor, TensorData};
use crate::weights::Weights;
use kiln_compiler::codegen::wgsl::{self, ELEMENT_BYTES, Resource, WgslProgram};
use kiln_compiler::ir::DType;
use kiln_compiler::kernel::{BufferKind, CAPACITY, KernelProgram, Size};
use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use wgpu::util::DeviceExt;

mod append;
pub use append::{DeviceStore, DeviceStores};

/// WGSL shaders on a GPU through wgpu (`--backend wgpu`).
pub struct Wgpu;

impl Backend for Wgpu {
    fn name(&self) -> &'static str {
        "wgpu"
    }

    fn precisions(&self) -> &'static [Precision] {
        &[Precision::F32, Precision::F16]
    }

    fn available(&self) -> Result<()> {
        gpu().map(drop)
    }

    /// Pipelines for every part, with the weights uploaded once (shared by
    /// the encoder and decoder).
    fn prepare(
        &self,
        parts: Vec<PartSource<'_>>,
        weights: &mut Weights,
        opts: &PrepareOptions,
    ) -> Result<Prepared> {
        let mut uploaded = DeviceWeights::default();
        let wopts = WgpuOptions {
            f16_params: opts.precision == Precision::F16,
            ..WgpuOptions::default()
        };
        let mut out = Vec::with_capacity(parts.len());
        for p in parts {
            let program = p.program.ok_or_else(|| RuntimeError::Internal {
                message: format!("the {} reached wgpu uncompiled", p.part),
            })?;
            let g = WgpuGraph::new(program, weights, &mut uploaded, wopts)?;
            out.push((p.part, Box::new(g) as Box<dyn Compiled>));
        }
        Ok(Prepared {
            parts: out,
            layout: None,
        })
    }
}

fn err(m: impl Into<String>) -> RuntimeError {
    RuntimeError::Device(m.into())
}

/// The device every [`WgpuGraph`] of this process runs on.
pub struct Gpu {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    /// GL: wgpu's GLES backend shares one context between threads and
    /// panics when a thread waits on it too long (a slow shader compile on
    /// another thread), so all device work is serialised there.
    serial: Option<Mutex<()>>,
}

impl Gpu {
    /// Exclusive use of the device where the backend needs it (GL).
    fn serialise(&self) -> Option<std::sync::MutexGuard<'_, ()>> {
        self.serial
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Adapter name and backend, e.g. `llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan)`.
    pub fn description(&self) -> String {
        format!("{} ({:?})", self.info.name, self.info.backend)
    }

    pub fn info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// Whether passes can write GPU timestamps (`TIMESTAMP_QUERY`), for
    /// per-kernel profiles.
    pub fn has_timestamps(&self) -> bool {
        self.device
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// Whether shaders may use subgroup operations (`SUBGROUP`).
    pub fn has_subgroups(&self) -> bool {
        self.device.features().contains(wgpu::Features::SUBGROUP)
    }

    /// Whether shaders may use f16 (`SHADER_F16`).
    pub fn has_f16(&self) -> bool {
        self.device.features().contains(wgpu::Features::SHADER_F16)
    }

    /// The largest tensor a shader can bind, in bytes.
    pub fn max_binding_bytes(&self) -> u64 {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
    }

    /// Run `f` with validation errors captured; the first error is returned.
    fn checked<T>(&self, what: &str, f: impl FnOnce() -> T) -> Result<T> {
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let v = f();
        match pollster::block_on(scope.pop()) {
            None => Ok(v),
            Some(e) => Err(err(format!("wgpu: {what}: {e}"))),
        }
    }
}

static GPU: OnceLock<std::result::Result<Arc<Gpu>, String>> = OnceLock::new();

/// The process's GPU device, created on first use. An error says why no
/// adapter could be used (none found, or `KILN_WGPU_BACKEND` is invalid).
pub fn gpu() -> Result<Arc<Gpu>> {
    GPU.get_or_init(init).clone().map_err(err)
}

fn init() -> std::result::Result<Arc<Gpu>, String> {
    let backends = match std::env::var("KILN_WGPU_BACKEND") {
        Ok(v) if !v.trim().is_empty() => {
            let b = wgpu::Backends::from_comma_list(&v);
            if b.is_empty() || !(wgpu::Backends::VULKAN | wgpu::Backends::GL).contains(b) {
                return Err(format!(
                    "KILN_WGPU_BACKEND=`{v}`: expected `vulkan`, `gl` or both (comma-separated)"
                ));
            }
            b
        }
        _ => wgpu::Backends::VULKAN | wgpu::Backends::GL,
    };
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends;
    let instance = wgpu::Instance::new(desc);
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        ..Default::default()
    }))
    .map_err(|e| format!("no wgpu adapter ({backends:?}): {e}"))?;
    let limits = adapter.limits();
    let info = adapter.get_info();
    // Optional features the generated shaders use when present.
    let features = adapter.features()
        & (wgpu::Features::SHADER_F16 | wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SUBGROUP);
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("kiln"),
        required_features: features,
        required_limits: limits.clone(),
        experimental_features: wgpu::ExperimentalFeatures::disabled(),
        memory_hints: wgpu::MemoryHints::Performance,
        trace: wgpu::Trace::Off,
    }))
    .map_err(|e| format!("wgpu adapter `{}`: no device: {e}", info.name))?;
    // Errors outside a scope (there should be none) are reported, not
    // panicked on; runs check their own scope.
    device.on_uncaptured_error(Arc::new(|e| eprintln!("kiln: wgpu error: {e}")));
    let serial = (info.backend == wgpu::Backend::Gl).then(|| Mutex::new(()));
    Ok(Arc::new(Gpu {
        device,
        queue,
        info,
        limits,
        serial,
    }))
}

/// Parameters uploaded to the device, by name and whether stored as f16,
/// shared by the graphs of one model (a tied embedding is uploaded once for
/// the encoder and decoder).
#[derive(Default)]
pub struct DeviceWeights {
    bufs: HashMap<(String, bool), Arc<wgpu::Buffer>>,
}

/// How [`WgpuGraph::compile_with`] compiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WgpuOptions {
    /// Store f32 parameters as f16 where the adapter has `SHADER_F16`
    /// (ignored elsewhere; [`WgpuGraph::f16_params`] says which).
    pub f16_params: bool,
    /// Reduce sums with subgroup operations where the adapter has
    /// `SUBGROUP` (the default; `false` keeps shared-memory trees).
    pub subgroups: bool,
}

impl Default for WgpuOptions {
    fn default() -> Self {
        WgpuOptions {
            f16_params: false,
            subgroups: true,
        }
    }
}

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

/// One shader ready to dispatch: its pipeline, bind-group layout and size
/// table uniform (16 bytes per four sizes).
struct Launch {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
    uniform: wgpu::Buffer,
}

impl Launch {
    /// Build `k`'s pipeline with an explicit layout from its bindings;
    /// shader errors come back as errors about `what`.
    fn new(gpu: &Gpu, k: &wgsl::WgslKernel, what: &str) -> Result<Launch> {
        let dev = &gpu.device;
        let storage = k.bindings.len() as u32;
        if storage > gpu.limits.max_storage_buffers_per_shader_stage {
            return Err(err(format!(
                "{what}: {storage} storage buffers, the adapter allows {}",
                gpu.limits.max_storage_buffers_per_shader_stage
            )));
        }
        let mut entries: Vec<wgpu::BindGroupLayoutEntry> = k
            .bindings
            .iter()
            .enumerate()
            .map(|(b, bind)| wgpu::BindGroupLayoutEntry {
                binding: b as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage {
                        read_only: !bind.writable,
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            })
            .collect();
        entries.push(wgpu::BindGroupLayoutEntry {
            binding: storage,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        });
        let (pipeline, layout) = gpu.checked(what, || {
            let layout = dev.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: None,
                entries: &entries,
            });
            let pl = dev.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: None,
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
            let module = dev.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(what),
                source: wgpu::ShaderSource::Wgsl(k.source.as_str().into()),
            });
            let pipeline = dev.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(what),
                layout: Some(&pl),
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            });
            (pipeline, layout)
        })?;
        let uniform = dev.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: (k.sizes.len().div_ceil(4).max(1) * 16) as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(Launch {
            pipeline,
            layout,
            uniform,
        })
    }
}

/// A compiled graph: pipelines, uploaded parameters and run state.
pub struct WgpuGraph {
    gpu: Arc<Gpu>,
    program: KernelProgram,
    shaders: WgslProgram,
    /// What the shaders were generated with.
    codegen: wgsl::Options,
    /// Per kernel: its pipeline, and a Gemm's for few rows.
    launches: Vec<(Launch, Option<Launch>)>,
    /// Parameters and literals, by buffer.
    fixed: Vec<Option<Arc<wgpu::Buffer>>>,
    compile_time: Duration,
    /// Buffers sized per run; one run at a time.
    state: Mutex<RunState>,
    /// `(past input, present output)` names of each of the program's
    /// appends, in its order.
    caches: Vec<(String, String)>,
    /// Per-kernel GPU times of the runs since profiling was enabled.
    profile: Mutex<Option<Profile>>,
}

#[derive(Default)]
struct RunState {
    /// Plan slots, inputs and outputs: (buffer, capacity in bytes).
    slots: Vec<Option<(wgpu::Buffer, u64)>>,
    io: Vec<Option<(wgpu::Buffer, u64)>>,
    staging: Option<(wgpu::Buffer, u64)>,
}

/// Bytes of `b` on the device at the given element count (every element is
/// 4 bytes; bool is a u32).
fn device_bytes(n: i64) -> u64 {
    (n.max(0) as u64) * ELEMENT_BYTES
}

/// The bytes of a tensor as stored on the device.
fn upload_bytes(d: &TensorData) -> Vec<u8> {
    match d {
        TensorData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::Bool(v) => v.iter().flat_map(|&x| u32::from(x).to_le_bytes()).collect(),
    }
}

fn download(bytes: &[u8], dt: DType) -> TensorData {
    let words = bytes.chunks_exact(4).map(|c| [c[0], c[1], c[2], c[3]]);
    match dt {
        DType::F32 => TensorData::F32(words.map(f32::from_le_bytes).collect()),
        DType::I32 => TensorData::I32(words.map(i32::from_le_bytes).collect()),
        DType::Bool => TensorData::Bool(words.map(|w| u32::from_le_bytes(w) != 0).collect()),
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
}

impl WgpuGraph {
    /// Generate WGSL for `program` (already optimised and fused by the
    /// compiler), build the pipelines and upload the parameters it reads
    /// from `weights`, reusing (and adding to) those in `shared`.
    pub fn new(
        program: KernelProgram,
        weights: &Weights,
        shared: &mut DeviceWeights,
        opts: WgpuOptions,
    ) -> Result<WgpuGraph> {
        let gpu = gpu()?;
        let codegen = wgsl::Options {
            f16_params: opts.f16_params && gpu.has_f16(),
            subgroups: opts.subgroups && gpu.has_subgroups(),
        };
        let held = gpu.clone();
        let _serial = held.serialise();
        let t0 = Instant::now();
        let shaders = wgsl::generate_with(&program, codegen)
            .map_err(|e| err(format!("`{}`: WGSL generation: {e}", program.name)))?;
        let limit = gpu.max_binding_bytes();
        let dev = &gpu.device;

        let mut launches = Vec::with_capacity(shaders.kernels.len());
        for (i, k) in shaders.kernels.iter().enumerate() {
            let what = format!(
                "`{}` kernel k{i} ({})",
                program.name,
                program.kernels[i].kind()
            );
            let main = Launch::new(&gpu, k, &what)?;
            let skinny = match &k.skinny {
                Some(sk) => Some(Launch::new(&gpu, &sk.kernel, &format!("{what}, few rows"))?),
                None => None,
            };
            launches.push((main, skinny));
        }

        let compile_time = t0.elapsed();
        // Parameters (checked, uploaded once per name; a joined parameter of
        // merged projections is built from its parts) and literals.
        let mut fixed = Vec::with_capacity(program.buffers.len());
        for (id, b) in program.buffers.iter().enumerate() {
            fixed.push(match &b.kind {
                BufferKind::Param(name) => {
                    let half = wgsl::param_f16(&program, id, codegen);
                    let t = param_or_join(&program, weights, name, b.dtype, &b.shape)?;
                    let bytes = t.numel() as u64 * if half { 2 } else { ELEMENT_BYTES };
                    if bytes > limit {
                        return Err(err(format!(
                            "parameter `{name}` ({}{:?}{}, {}) is larger than this adapter's \
                             largest storage binding ({}; max_storage_buffer_binding_size)",
                            b.dtype,
                            t.shape(),
                            if half { " stored as f16" } else { "" },
                            mib(bytes),
                            mib(limit)
                        )));
                    }
                    let key = (name.clone(), half);
                    let buf = match shared.bufs.get(&key) {
                        Some(buf) => buf.clone(),
                        None => {
                            let buf = Arc::new(if half {
                                upload_f16(dev, name, t.data())
                            } else {
                                upload(dev, name, t.data())
                            });
                            shared.bufs.insert(key, buf.clone());
                            buf
                        }
                    };
                    Some(buf)
                }
                BufferKind::Const(v) => {
                    Some(Arc::new(upload(dev, &b.name, &const_data(v, b.dtype))))
                }
                _ => None,
            });
        }
        let slots = program.plan.slots.len();
        let caches = program.append_names();
        Ok(WgpuGraph {
            caches,
            profile: Mutex::new(None),
            compile_time,
            state: Mutex::new(RunState {
                slots: (0..slots).map(|_| None).collect(),
                io: (0..program.buffers.len()).map(|_| None).collect(),
                staging: None,
            }),
            gpu,
            program,
            shaders,
            codegen,
            launches,
            fixed,
        })
    }

    pub fn program(&self) -> &KernelProgram {
        &self.program
    }

    pub fn shaders(&self) -> &WgslProgram {
        &self.shaders
    }

    /// Start (or restart) collecting a [`Profile`] of every run, from GPU
    /// timestamps (where the adapter has `TIMESTAMP_QUERY`; runs are then
    /// encoded one pass per kernel).
    pub fn enable_profiling(&self) {
        *self.profile.lock().unwrap_or_else(|e| e.into_inner()) = Some(Profile::default());
    }

    /// Stop profiling (and drop the profile): runs are timed as they run
    /// unprofiled.
    pub fn disable_profiling(&self) {
        *self.profile.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The profile collected since [`WgpuGraph::enable_profiling`]; `None`
    /// when not enabled or the adapter cannot time kernels.
    pub fn profile(&self) -> Option<Profile> {
        if !self.gpu.has_timestamps() {
            return None;
        }
        self.profile
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether the parameters are stored as f16 on the device.
    pub fn f16_params(&self) -> bool {
        self.codegen.f16_params
    }

    /// Whether row reductions sum with subgroup operations.
    pub fn subgroups(&self) -> bool {
        self.codegen.subgroups
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// WGSL generation and pipeline creation (not the parameter uploads).
    pub fn compile_time(&self) -> Duration {
        self.compile_time
    }

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
    fn run_with(
        &self,
        host: &[(&str, &Tensor)],
        device: &[(&str, &DeviceTensor)],
        keep: &dyn Fn(&str) -> bool,
        stores: &mut BTreeMap<String, DeviceStore>,
    ) -> Result<(Outputs, Vec<(String, DeviceTensor)>)> {
        let p = &self.program;
        let mut meta = metas(host);
        meta.extend(
            device
                .iter()
                .map(|&(n, d)| (n, d.dtype, d.shape.as_slice())),
        );
        let (env, need) = if stores.is_empty() {
            let env = bind_meta(p, &meta)?;
            let need = env.get(CAPACITY).copied().unwrap_or(0);
            (env, need)
        } else {
            let view: &BTreeMap<String, DeviceStore> = stores;
            let store = |name: &str| view.get(name).map(|s| (s.capacity, s.shape.as_slice()));
            bind_appending(p, &self.caches, meta, &store)?
        };
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
        let eval = |s: &Size| {
            s.eval(&lookup)
                .ok_or_else(|| err(format!("`{}`: unbound size {s}", p.name)))
        };
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
        let limit = gpu.max_binding_bytes();
        let _serial = gpu.serialise();
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());

        // Bytes of every buffer at this run's lengths, within the limit.
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
        fn pick<'a>(
            fixed: &'a [Option<Arc<wgpu::Buffer>>],
            resident: &'a [Option<wgpu::Buffer>],
            st: &'a RunState,
            r: Resource,
        ) -> &'a wgpu::Buffer {
            match r {
                Resource::Slot(s) => &st.slots[s].as_ref().expect("allocated").0,
                Resource::Buffer(id) => match (&fixed[id], &resident[id]) {
                    (Some(b), _) => b,
                    (None, Some(b)) => b,
                    (None, None) => &st.io[id].as_ref().expect("allocated").0,
                },
            }
        }
        let resource = |st, r| pick(&self.fixed, &resident, st, r);

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
                .groups(&|s| s.eval(&lookup))
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
                    resource: resource(&st, bind.resource).as_entire_binding(),
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

        let scope = dev.push_error_scope(wgpu::ErrorFilter::Validation);
        let mut enc = dev.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        // Profiling: one pass per kernel, with GPU timestamps at its ends
        // (as many kernels as a query set holds; any beyond run untimed).
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
            t.resolve(&mut enc);
        }
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
            let ticks = t.read(rx)?;
            let period = f64::from(gpu.queue.get_timestamp_period());
            let mut run = Profile::for_kernels(p.kernels.len());
            let lengths = |s: &str| env.get(s).copied();
            for (q, &ki) in timed.iter().enumerate() {
                let ns = ticks[2 * q + 1].saturating_sub(ticks[2 * q]) as f64 * period;
                let k = &p.kernels[ki];
                run.record(
                    ki,
                    k.kind(),
                    Duration::from_nanos(ns as u64),
                    k.matmul_flops(&lengths),
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
}

/// A tensor that lives in a device buffer: a kept output of
/// [`WgpuGraph::run_resident`], bound as an input of a later run without
/// passing through the host. Cloning shares the buffer.
#[derive(Debug, Clone)]
pub struct DeviceTensor {
    buf: wgpu::Buffer,
    shape: Vec<usize>,
    dtype: DType,
}

impl DeviceTensor {
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Copy the tensor back to the host (for inspection and tests).
    pub fn to_host(&self) -> Result<Tensor> {
        let gpu = gpu()?;
        let _serial = gpu.serialise();
        let n = device_bytes(self.shape.iter().product::<usize>() as i64);
        let size = n.max(16).next_multiple_of(16);
        let staging = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("read-back"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        if n > 0 {
            enc.copy_buffer_to_buffer(&self.buf, 0, &staging, 0, n);
        }
        gpu.queue.submit([enc.finish()]);
        let slice = staging.slice(..);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        gpu.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| err(format!("wgpu: {e}")))?;
        rx.recv()
            .map_err(|_| err("wgpu: the read-back never completed"))?
            .map_err(|e| err(format!("wgpu read-back: {e}")))?;
        let data = {
            let view = slice
                .get_mapped_range()
                .map_err(|e| err(format!("wgpu read-back: {e}")))?;
            download(&view[..n as usize], self.dtype)
        };
        staging.unmap();
        Tensor::new(self.shape.clone(), data)
    }
}

impl Resident for DeviceTensor {
    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn dtype(&self) -> DType {
        self.dtype
    }

    fn to_host(&self) -> Result<Tensor> {
        DeviceTensor::to_host(self)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// `state` split into host tensors (appended to `host`) and device ones.
fn split_state<'a>(
    host: &mut Vec<(&'a str, &'a Tensor)>,
    state: &[(&'a str, &'a Cached)],
) -> Result<Vec<(&'a str, &'a DeviceTensor)>> {
    let mut device = Vec::new();
    for (n, c) in state {
        match c {
            Cached::Host(t) => host.push((n, t)),
            Cached::Resident(r) => {
                let d = r.as_any().downcast_ref::<DeviceTensor>().ok_or_else(|| {
                    RuntimeError::Internal {
                        message: format!("`{n}` is resident on another backend's device"),
                    }
                })?;
                device.push((*n, d));
            }
        }
    }
    Ok(device)
}

impl Compiled for WgpuGraph {
    fn program(&self) -> Option<&KernelProgram> {
        Some(&self.program)
    }

    fn run_host(&self, _weights: &Weights, inputs: &[(&str, &Tensor)]) -> Result<Outputs> {
        WgpuGraph::run(self, inputs)
    }

    fn run(
        &self,
        _weights: &Weights,
        host: &[(&str, &Tensor)],
        state: &[(&str, &Cached)],
        keep: &dyn Fn(&str) -> bool,
    ) -> Result<(Outputs, Vec<(String, Cached)>)> {
        let mut pairs = host.to_vec();
        let device = split_state(&mut pairs, state)?;
        let (out, kept) = self.run_resident(&pairs, &device, keep)?;
        let kept = (kept.into_iter())
            .map(|(n, d)| (n, Cached::Resident(Arc::new(d) as Arc<dyn Resident>)))
            .collect();
        Ok((out, kept))
    }

    fn appends(&self) -> &[(String, String)] {
        &self.caches
    }

    fn empty_cache(&self, lengths: &Bindings, capacity: usize) -> Result<Box<dyn KvStore>> {
        Ok(Box::new(DeviceStores(
            self.empty_stores(lengths, capacity)?,
        )))
    }

    fn run_appending(
        &self,
        _weights: &Weights,
        host: &[(&str, &Tensor)],
        state: &[(&str, &Cached)],
        cache: &mut dyn KvStore,
    ) -> Result<Outputs> {
        let stores = (cache.as_any_mut().downcast_mut::<DeviceStores>()).ok_or_else(|| {
            RuntimeError::Internal {
                message: "a KV cache made by another backend reached wgpu".into(),
            }
        })?;
        let mut pairs = host.to_vec();
        let device = split_state(&mut pairs, state)?;
        WgpuGraph::run_appending(self, &pairs, &device, &mut stores.0)
    }

    fn enable_profiling(&self) {
        WgpuGraph::enable_profiling(self)
    }

    fn disable_profiling(&self) {
        WgpuGraph::disable_profiling(self)
    }

    fn profile(&self) -> Option<Profile> {
        WgpuGraph::profile(self)
    }

    fn codegen_time(&self) -> Duration {
        self.compile_time
    }

    fn f16_weights(&self) -> bool {
        self.f16_params()
    }

    fn device(&self) -> Option<String> {
        Some(self.gpu.description())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// An f32 tensor uploaded as f16 (round to nearest even).
fn upload_f16(dev: &wgpu::Device, label: &str, d: &TensorData) -> wgpu::Buffer {
    let bytes: Vec<u8> = match d {
        TensorData::F32(v) => v
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect(),
        other => upload_bytes(other),
    };
    upload_raw(dev, label, bytes)
}

fn upload(dev: &wgpu::Device, label: &str, d: &TensorData) -> wgpu::Buffer {
    upload_raw(dev, label, upload_bytes(d))
}

fn upload_raw(dev: &wgpu::Device, label: &str, mut bytes: Vec<u8>) -> wgpu::Buffer {
    // Bindings need at least one element; keep 16-byte multiples.
    let len = bytes.len().max(16).next_multiple_of(16);
    bytes.resize(len, 0);
    dev.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some(label),
        contents: &bytes,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
    })
}

/// Whether an adapter is available, and which (for tests and reports).
pub fn adapter() -> std::result::Result<String, String> {
    gpu().map(|g| g.description()).map_err(|e| e.to_string())
}
