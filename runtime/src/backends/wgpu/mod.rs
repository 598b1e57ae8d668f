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
use crate::exec::interpreter::{Bindings, Outputs};
use crate::exec::program::{const_data, param_or_join};
use crate::tensor::Tensor;
use crate::weights::Weights;
use kiln_compiler::codegen::wgsl::{self, ELEMENT_BYTES, WgslProgram};
use kiln_compiler::kernel::{BufferKind, KernelProgram};
use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod append;
mod device;
mod run;
mod tensor;

pub use append::{DeviceStore, DeviceStores};
pub use device::{Gpu, adapter, gpu};
pub use tensor::DeviceTensor;
use tensor::{split_state, upload, upload_f16};

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
