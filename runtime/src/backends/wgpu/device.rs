//! The process's one GPU device: adapter choice (`KILN_WGPU_BACKEND`),
//! limits and features, and serialised use where the driver needs it.

use super::err;
use crate::error::Result;
use std::sync::{Arc, Mutex, OnceLock};

/// The device every [`WgpuGraph`] of this process runs on.
pub struct Gpu {
    pub(super) device: wgpu::Device,
    pub(super) queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    pub(super) limits: wgpu::Limits,
    /// GL: wgpu's GLES backend shares one context between threads and
    /// panics when a thread waits on it too long (a slow shader compile on
    /// another thread), so all device work is serialised there.
    serial: Option<Mutex<()>>,
}

impl Gpu {
    /// Exclusive use of the device where the backend needs it (GL).
    pub(super) fn serialise(&self) -> Option<std::sync::MutexGuard<'_, ()>> {
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
    pub(super) fn checked<T>(&self, what: &str, f: impl FnOnce() -> T) -> Result<T> {
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

/// Whether an adapter is available, and which (for tests and reports).
pub fn adapter() -> Result<String> {
    gpu().map(|g| g.description())
}
