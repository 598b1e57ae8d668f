//! Measurements of the machine itself, for benchmarks to compare against:
//! what the GEMM library reaches and how fast memory can be read.

use rayon::prelude::*;
use std::time::Instant;

/// Best-of-`reps` f32 GFLOP/s of the GEMM library on an `m×k · k×n`
/// product with every rayon thread.
pub fn gemm_gflops(m: usize, n: usize, k: usize, reps: usize) -> f64 {
    let a = vec![1.0f32; m * k];
    let b = vec![0.5f32; k * n];
    let mut c = vec![0.0f32; m * n];
    let threads = rayon::current_num_threads();
    let mut best = f64::INFINITY;
    for _ in 0..reps.max(1) + 1 {
        let t = Instant::now();
        // SAFETY: row-major buffers of exactly these sizes.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                k as isize,
                b.as_ptr(),
                1,
                n as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                if threads > 1 {
                    gemm::Parallelism::Rayon(threads)
                } else {
                    gemm::Parallelism::None
                },
            );
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(&c);
    2.0 * (m * n * k) as f64 / best / 1e9
}

/// Best-of-`reps` memory read bandwidth in GB/s: every thread sums its part
/// of a buffer much larger than the caches.
pub fn read_bandwidth_gbs(bytes: usize, reps: usize) -> f64 {
    let n = bytes / 4;
    let data: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
    let chunk = n.div_ceil(rayon::current_num_threads() * 4).max(1024);
    let mut best = f64::INFINITY;
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        let s: f32 = data
            .par_chunks(chunk)
            .map(|c| {
                // Sixteen independent sums, so the loop vectorises.
                let mut acc = [0.0f32; 16];
                let mut it = c.chunks_exact(16);
                for x in &mut it {
                    for i in 0..16 {
                        acc[i] += x[i];
                    }
                }
                acc.iter().sum::<f32>() + it.remainder().iter().sum::<f32>()
            })
            .sum();
        std::hint::black_box(s);
        best = best.min(t.elapsed().as_secs_f64());
    }
    (n * 4) as f64 / best / 1e9
}
