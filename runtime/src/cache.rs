//! What a [`crate::session::Session`] keeps between steps: cached tensors
//! passed into each step and taken back from it ([`Cached`]), or — where
//! the backend appends to the KV cache in place — per-cache storage with
//! spare rows that a step writes only its new rows into ([`KvStores`]).

use crate::backends::jit::{AppendStore, JitGraph};
use crate::interpreter::Bindings;
use crate::{Outputs, Result, RuntimeError, Tensor, Weights};
use std::collections::BTreeMap;

/// A tensor a session keeps between steps (KV cache, cross K/V): in host
/// memory, or resident on the GPU so a decode step never copies it through
/// the host.
#[derive(Debug, Clone)]
pub(crate) enum Cached {
    Host(Tensor),
    #[cfg(feature = "wgpu")]
    Device(crate::backends::wgpu::DeviceTensor),
}

impl Cached {
    /// The host tensor; device state has no host copy.
    pub fn host(&self) -> Result<&Tensor> {
        match self {
            Cached::Host(t) => Ok(t),
            #[cfg(feature = "wgpu")]
            Cached::Device(_) => Err(RuntimeError::Graph(
                "a device-resident cache tensor reached a host backend".into(),
            )),
        }
    }

    /// A host copy (read back from the device if resident).
    pub fn to_host(&self) -> Result<Tensor> {
        match self {
            Cached::Host(t) => Ok(t.clone()),
            #[cfg(feature = "wgpu")]
            Cached::Device(d) => d.to_host(),
        }
    }

    pub fn on_device(&self) -> bool {
        match self {
            Cached::Host(_) => false,
            #[cfg(feature = "wgpu")]
            Cached::Device(_) => true,
        }
    }
}

/// Compiled decoder code that appends to every KV cache in place.
#[derive(Clone, Copy)]
pub(crate) enum Appender<'m> {
    Jit(&'m JitGraph),
    #[cfg(feature = "wgpu")]
    Gpu(&'m crate::backends::wgpu::WgpuGraph),
}

/// The KV cache of an appending session, by `present` output name.
#[derive(Debug, Default)]
pub(crate) enum KvStores {
    /// The session passes its cache in and out ([`Cached`]) instead.
    #[default]
    None,
    Host(BTreeMap<String, AppendStore>),
    #[cfg(feature = "wgpu")]
    Device(BTreeMap<String, crate::backends::wgpu::DeviceStore>),
}

impl Appender<'_> {
    /// How many caches the code appends to.
    pub fn caches(&self) -> usize {
        match self {
            Appender::Jit(j) => j.appendable().len(),
            #[cfg(feature = "wgpu")]
            Appender::Gpu(w) => w.appendable().len(),
        }
    }

    /// Empty stores with room for `capacity` rows, shaped at `lengths`.
    pub fn empty_stores(&self, lengths: &Bindings, capacity: usize) -> Result<KvStores> {
        Ok(match self {
            Appender::Jit(j) => KvStores::Host(j.empty_stores(lengths, capacity)?),
            #[cfg(feature = "wgpu")]
            Appender::Gpu(w) => KvStores::Device(w.empty_stores(lengths, capacity)?),
        })
    }

    /// One step: `host` inputs plus `state` (cross K/V), appending to
    /// `stores` (made by [`Appender::empty_stores`] of the same code).
    pub fn run<'a>(
        &self,
        weights: &Weights,
        mut host: Vec<(&'a str, &'a Tensor)>,
        state: &'a [(String, &'a Cached)],
        stores: &mut KvStores,
    ) -> Result<Outputs> {
        let mismatch = || RuntimeError::Graph("cache stores of another backend".into());
        match (self, stores) {
            (Appender::Jit(j), KvStores::Host(st)) => {
                for (n, c) in state {
                    host.push((n, c.host()?));
                }
                j.run_appending(weights, host, st)
            }
            #[cfg(feature = "wgpu")]
            (Appender::Gpu(w), KvStores::Device(st)) => {
                let mut device = Vec::new();
                for (n, c) in state {
                    match c {
                        Cached::Host(t) => host.push((n, t)),
                        Cached::Device(d) => device.push((n.as_str(), d)),
                    }
                }
                w.run_appending(&host, &device, st)
            }
            _ => Err(mismatch()),
        }
    }
}

impl KvStores {
    /// No cache is kept in stores (the session passes [`Cached`] tensors).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many caches the stores hold (two per decoder block).
    pub fn len(&self) -> usize {
        match self {
            KvStores::None => 0,
            KvStores::Host(s) => s.len(),
            #[cfg(feature = "wgpu")]
            KvStores::Device(s) => s.len(),
        }
    }

    /// Rows every store has room for.
    pub fn capacity(&self) -> Option<usize> {
        match self {
            KvStores::None => None,
            KvStores::Host(s) => s.values().map(AppendStore::capacity).min(),
            #[cfg(feature = "wgpu")]
            KvStores::Device(s) => s.values().map(|d| d.capacity()).min(),
        }
    }

    /// Grow every store to at least `rows`, keeping the rows in use.
    pub fn reserve(&mut self, rows: usize) -> Result<()> {
        match self {
            KvStores::None => Ok(()),
            KvStores::Host(s) => s.values_mut().try_for_each(|st| st.reserve(rows)),
            #[cfg(feature = "wgpu")]
            KvStores::Device(s) => s.values_mut().try_for_each(|st| st.reserve(rows)),
        }
    }

    /// The rows in use of the cache `name` as a host tensor.
    pub fn tensor(&self, name: &str) -> Option<Result<Tensor>> {
        match self {
            KvStores::None => None,
            KvStores::Host(s) => s.get(name).map(AppendStore::to_tensor),
            #[cfg(feature = "wgpu")]
            KvStores::Device(s) => s.get(name).map(|d| d.to_host()),
        }
    }

    /// Whether the stores are device memory.
    pub fn on_device(&self) -> bool {
        match self {
            KvStores::None | KvStores::Host(_) => false,
            #[cfg(feature = "wgpu")]
            KvStores::Device(_) => true,
        }
    }
}
