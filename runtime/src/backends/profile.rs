//! Where a compiled graph's time goes, kernel by kernel: what `kiln bench`
//! reports for every backend that can measure it (the JIT with clocks
//! around each kernel, wgpu with GPU timestamps).

use std::time::Duration;

/// Where runs' time went, by kernel kind and by kernel, summed over runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Profile {
    /// `(kind, time)` in first-seen order.
    pub by_kind: Vec<(&'static str, Duration)>,
    /// Time per kernel, indexed like the program's kernels, summed over runs.
    pub by_kernel: Vec<Duration>,
    /// Multiply-add FLOPs of the Gemm and attention kernels (2·m·n·k each).
    pub gemm_flops: f64,
    /// Multiply-add FLOPs per kernel (Gemm and attention; 0 for the rest),
    /// indexed like `by_kernel`.
    pub flops_by_kernel: Vec<f64>,
    /// Number of runs the times are summed over.
    pub runs: usize,
}

impl Profile {
    /// An empty profile of one run over `kernels` kernels.
    pub(crate) fn for_kernels(kernels: usize) -> Profile {
        Profile {
            by_kernel: vec![Duration::ZERO; kernels],
            flops_by_kernel: vec![0.0; kernels],
            ..Profile::default()
        }
    }

    /// Kernel `ki` of kind `kind` took `t` and computed `flops`.
    pub(crate) fn record(&mut self, ki: usize, kind: &'static str, t: Duration, flops: f64) {
        match self.by_kind.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, d)) => *d += t,
            None => self.by_kind.push((kind, t)),
        }
        self.by_kernel[ki] += t;
        self.flops_by_kernel[ki] += flops;
        self.gemm_flops += flops;
    }

    /// Add one run's profile to this sum of runs.
    pub(crate) fn add_run(&mut self, run: &Profile) {
        for (k, t) in &run.by_kind {
            match self.by_kind.iter_mut().find(|(x, _)| x == k) {
                Some((_, d)) => *d += *t,
                None => self.by_kind.push((k, *t)),
            }
        }
        let n = run.by_kernel.len();
        self.by_kernel
            .resize(n.max(self.by_kernel.len()), Duration::ZERO);
        self.flops_by_kernel
            .resize(n.max(self.flops_by_kernel.len()), 0.0);
        for (i, (t, f)) in run.by_kernel.iter().zip(&run.flops_by_kernel).enumerate() {
            self.by_kernel[i] += *t;
            self.flops_by_kernel[i] += f;
        }
        self.gemm_flops += run.gemm_flops;
        self.runs += 1;
    }

    /// Total time spent in kernels of `kind` (e.g. `"gemm"`), over all runs.
    pub fn time(&self, kind: &str) -> Duration {
        self.by_kind
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, d)| *d)
            .sum()
    }

    /// Total time spent in all kernels, over all runs.
    pub fn total(&self) -> Duration {
        self.by_kind.iter().map(|(_, d)| *d).sum()
    }
}
