//! Next-token selection: greedy, or temperature / top-k / top-p sampling
//! from a seeded generator so a run is reproducible.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// How to pick each next token.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingOptions {
    /// 0 means greedy (argmax); otherwise logits are divided by it.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (1 = all).
    pub top_p: f32,
    /// Seed of the sampler's ChaCha8 RNG; the same seed and logits give the same tokens.
    pub seed: u64,
}

impl Default for SamplingOptions {
    fn default() -> Self {
        SamplingOptions {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

/// A seeded sampler; one per generation.
pub struct Sampler {
    opts: SamplingOptions,
    rng: ChaCha8Rng,
}

impl Sampler {
    /// A sampler seeded from `opts.seed`.
    pub fn new(opts: SamplingOptions) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(opts.seed);
        Sampler { opts, rng }
    }

    /// Pick a token id from one row of logits.
    pub fn sample(&mut self, logits: &[f32]) -> usize {
        if self.opts.temperature <= 0.0 || logits.len() < 2 {
            return argmax(logits);
        }
        // Candidates sorted by logit, descending (ties by id for determinism).
        let mut idx: Vec<usize> = (0..logits.len()).collect();
        idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        if self.opts.top_k > 0 {
            idx.truncate(self.opts.top_k);
        }
        let t = self.opts.temperature as f64;
        let max = logits[idx[0]] as f64;
        let mut probs: Vec<f64> = idx
            .iter()
            .map(|&i| ((logits[i] as f64 - max) / t).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if self.opts.top_p < 1.0 {
            let mut acc = 0.0;
            let keep = probs
                .iter()
                .position(|p| {
                    acc += p;
                    acc >= self.opts.top_p as f64
                })
                .map_or(probs.len(), |i| i + 1);
            idx.truncate(keep);
            probs.truncate(keep);
        }
        let total: f64 = probs.iter().sum();
        let mut r = self.rng.random::<f64>() * total;
        for (k, p) in probs.iter().enumerate() {
            r -= p;
            if r < 0.0 {
                return idx[k];
            }
        }
        idx[probs.len() - 1]
    }
}

/// Index of the largest value (first one on ties; NaN never wins).
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] || v[best].is_nan() {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_is_argmax() {
        let mut s = Sampler::new(SamplingOptions::default());
        assert_eq!(s.sample(&[0.1, 3.0, -1.0, 3.0]), 1);
    }

    #[test]
    fn top_k_one_is_greedy_at_any_temperature() {
        let mut s = Sampler::new(SamplingOptions {
            temperature: 5.0,
            top_k: 1,
            ..Default::default()
        });
        for _ in 0..20 {
            assert_eq!(s.sample(&[0.1, 0.2, 2.0, -1.0]), 2);
        }
    }

    #[test]
    fn top_p_keeps_the_nucleus_only() {
        // probs ~ [0.0003, 0.6652, 0.2447, 0.0900]: top_p 0.8 keeps ids 1 and 2.
        let logits = [-5.0, 3.0, 2.0, 1.0];
        let mut s = Sampler::new(SamplingOptions {
            temperature: 1.0,
            top_p: 0.8,
            seed: 3,
            ..Default::default()
        });
        let mut seen = [0usize; 4];
        for _ in 0..400 {
            seen[s.sample(&logits)] += 1;
        }
        assert_eq!(seen[0] + seen[3], 0, "{seen:?}");
        assert!(seen[1] > seen[2] && seen[2] > 50, "{seen:?}");
    }

    #[test]
    fn sampling_is_reproducible_per_seed() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let run = |seed| {
            let mut s = Sampler::new(SamplingOptions {
                temperature: 1.0,
                seed,
                ..Default::default()
            });
            (0..30).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }
}
