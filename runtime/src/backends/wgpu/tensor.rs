//! Tensors in device memory: kept outputs bound as later inputs
//! ([`DeviceTensor`]), and the conversions between host data and device
//! bytes (f32, i32, bool as u32; f16 weights).

use super::{device_bytes, err, gpu};
use crate::backends::{Cached, Resident};
use crate::error::{Result, RuntimeError};
use crate::tensor::{Tensor, TensorData};
use kiln_compiler::ir::DType;
use std::any::Any;
use wgpu::util::DeviceExt;

/// A tensor that lives in a device buffer: a kept output of
/// [`WgpuGraph::run_resident`], bound as an input of a later run without
/// passing through the host. Cloning shares the buffer.
#[derive(Debug, Clone)]
pub struct DeviceTensor {
    pub(super) buf: wgpu::Buffer,
    pub(super) shape: Vec<usize>,
    pub(super) dtype: DType,
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
pub(super) fn split_state<'a>(
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

/// The bytes of a tensor as stored on the device.
pub(super) fn upload_bytes(d: &TensorData) -> Vec<u8> {
    match d {
        TensorData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::Bool(v) => v.iter().flat_map(|&x| u32::from(x).to_le_bytes()).collect(),
    }
}

pub(super) fn download(bytes: &[u8], dt: DType) -> TensorData {
    let words = bytes.chunks_exact(4).map(|c| [c[0], c[1], c[2], c[3]]);
    match dt {
        DType::F32 => TensorData::F32(words.map(f32::from_le_bytes).collect()),
        DType::I32 => TensorData::I32(words.map(i32::from_le_bytes).collect()),
        DType::Bool => TensorData::Bool(words.map(|w| u32::from_le_bytes(w) != 0).collect()),
    }
}

/// An f32 tensor uploaded as f16 (round to nearest even).
pub(super) fn upload_f16(dev: &wgpu::Device, label: &str, d: &TensorData) -> wgpu::Buffer {
    let bytes: Vec<u8> = match d {
        TensorData::F32(v) => v
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect(),
        other => upload_bytes(other),
    };
    upload_raw(dev, label, bytes)
}

pub(super) fn upload(dev: &wgpu::Device, label: &str, d: &TensorData) -> wgpu::Buffer {
    upload_raw(dev, label, upload_bytes(d))
}

pub(super) fn upload_raw(dev: &wgpu::Device, label: &str, mut bytes: Vec<u8>) -> wgpu::Buffer {
    // Bindings need at least one element; keep 16-byte multiples.
    let len = bytes.len().max(16).next_multiple_of(16);
    bytes.resize(len, 0);
    dev.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some(label),
        contents: &bytes,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
    })
}
