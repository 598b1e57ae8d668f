//! One conformance suite for every backend (tract's test-rt idea): each test
//! runs on every backend of `kiln_runtime::backends::registry()` except the
//! reference interpreter, which is the oracle. A new backend joins by its
//! registry line. Backend-specific checks (thread splits of the JIT, f16
//! storage and adapter limits of wgpu) stay in tests/jit.rs and
//! tests/wgpu.rs.
//!
//! Outputs are held to 1e-4 relative, or 1e-5 of the output's RMS for values
//! that cancel to nearly zero (torch's `rtol + atol` form): compiled
//! backends sum in f32, in another order than the f64 oracle.

mod common;

use common::backends::under_test;
use common::inputs::{graph_inputs, max_abs_diff_and_scale, max_rel_diff_floored, test_lengths};
use common::random_spec::load_random_spec;
use common::sessions::{assert_copies_skipped, decode_alongside};
use common::tiny_specs;
use kiln_compiler::ir::Part;
use kiln_compiler::lower::{Lowered, lower};
use kiln_compiler::spec;
use kiln_runtime::backends::Backend;
use kiln_runtime::session::Model;
use kiln_runtime::{Tensor, Weights, run};
use std::path::Path;

const REL_TOL: f32 = 1e-4;

fn tiny(name: &str) -> Lowered {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("models/tiny/{name}.toml"));
    lower(&spec::load(&path).unwrap_or_else(|e| panic!("{}", e.render()))).unwrap()
}

/// Compile `l` for `backend` and compare every part with the interpreter
/// at a few lengths; returns the worst relative difference.
fn check_model(backend: &'static dyn Backend, l: &Lowered, seed: u64, what: &str) -> f32 {
    let graphs: Vec<_> = l.graphs().collect();
    let weights = Weights::random(&graphs, seed).unwrap_or_else(|e| panic!("{what}: {e}"));
    let model = Model::new(l.clone(), weights.clone())
        .compile(backend)
        .unwrap_or_else(|e| panic!("{what} on {backend}: {e}"));
    let mut worst = 0.0f32;
    for (part, g) in l.parts() {
        let compiled = model.part(part).expect("compiled");
        for lens in test_lengths(l, g) {
            let inputs = graph_inputs(l, g, &lens, seed ^ lens.past as u64 ^ lens.seq as u64);
            let at = format!("{what} on {backend}: graph `{}` at {lens:?}", g.name);
            let want = run(g, &weights, &inputs).unwrap_or_else(|e| panic!("{at}: graph: {e}"));
            let pairs: Vec<(&str, &Tensor)> = inputs.iter().map(|(n, t)| (n.as_str(), t)).collect();
            let got = compiled
                .run_host(&model.weights, &pairs)
                .unwrap_or_else(|e| panic!("{at}: {e}"));
            let d = max_rel_diff_floored(&want, &got, &at);
            assert!(d <= REL_TOL, "{at}: outputs differ by {d:e} (relative)");
            worst = worst.max(d);
        }
    }
    worst
}

#[test]
fn tiny_models_match_the_interpreter() {
    for backend in under_test("tiny_models_match_the_interpreter") {
        let mut report = String::new();
        for path in tiny_specs() {
            let rs = spec::load(&path).unwrap_or_else(|e| panic!("{}", e.render()));
            let lowered = lower(&rs).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let name = path.file_stem().unwrap().to_string_lossy().to_string();
            let w = check_model(backend, &lowered, 5, &name);
            report += &format!("{backend}: {name}: worst relative difference {w:e}\n");
        }
        eprintln!("{report}");
    }
}

#[test]
fn random_specs_match_the_interpreter() {
    for backend in under_test("random_specs_match_the_interpreter") {
        // The generator also produces specs the validator rejects; use the
        // accepted ones.
        let mut checked = 0;
        for seed in 0..40u64 {
            let Ok(rs) = load_random_spec(seed) else {
                continue;
            };
            let lowered = lower(&rs).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            check_model(backend, &lowered, seed, &format!("random spec {seed}"));
            checked += 1;
        }
        assert!(checked >= 24, "only {checked} random specs were accepted");
    }
}

/// Every backend sees the compiler's options: a disabled kernel rewrite is
/// missing from the program it runs, and the outputs still match.
#[test]
fn compile_options_reach_every_backend() {
    let lowered = tiny("gpt2");
    for backend in under_test("compile_options_reach_every_backend") {
        let opts = kiln::Options {
            disabled_passes: vec!["attention".into()],
            ..Default::default()
        };
        let model = Model::random(lowered.clone(), 3)
            .unwrap()
            .with_options(opts)
            .compile(backend)
            .unwrap();
        let program = model.program(Part::Decoder).expect("a kernel program");
        assert!(
            !program.to_text().contains(" attention "),
            "{backend}: the attention rewrite ran"
        );
        let plain = Model::random(lowered.clone(), 3)
            .unwrap()
            .compile(backend)
            .unwrap();
        assert!(
            (plain.program(Part::Decoder).unwrap().to_text()).contains(" attention "),
            "{backend}: no attention kernel by default"
        );
        let want = Model::random(lowered.clone(), 3).unwrap();
        let toks = [1, 2, 3, 4];
        let a = want.session().forward(&toks).unwrap();
        let b = model.session().forward(&toks).unwrap();
        let d = max_rel_diff_floored(&a, &b, backend.name());
        assert!(d <= REL_TOL, "{backend}: differ by {d:e}");
        // An unknown name is the caller's mistake, reported by the compiler.
        let bad = kiln::Options {
            disabled_passes: vec!["fusion".into()],
            ..Default::default()
        };
        let e = Model::random(lowered.clone(), 3)
            .unwrap()
            .with_options(bad)
            .compile(backend)
            .err()
            .expect("an error");
        assert!(
            matches!(
                &e,
                kiln_runtime::RuntimeError::Compile(
                    kiln_compiler::compile::CompileError::UnknownPass { .. }
                )
            ),
            "{backend}: {e:?}"
        );
    }
}

/// A compiled model generates the reference's tokens (prefill, then decode
/// steps with the cache), for a decoder and an encoder-decoder; its cache
/// holds what the reference's holds; a failed step leaves it as it was.
#[test]
fn sessions_generate_like_the_reference() {
    for backend in under_test("sessions_generate_like_the_reference") {
        for name in ["gpt2", "llama-2-7b", "t5-small"] {
            let lowered = tiny(name);
            let reference = Model::random(lowered.clone(), 7).unwrap();
            let model = Model::random(lowered, 7).unwrap().compile(backend).unwrap();
            assert_eq!(model.backend().name(), backend.name());
            let what = format!("{name} on {backend}");
            let (mut a, mut b) = (reference.session(), model.session());
            if name == "t5-small" {
                a.set_source(&[4, 5, 6, 7]).unwrap();
                b.set_source(&[4, 5, 6, 7]).unwrap();
            }
            for toks in [vec![1, 2, 3], vec![9], vec![17]] {
                let (x, y) = (a.forward(&toks).unwrap(), b.forward(&toks).unwrap());
                let d = max_rel_diff_floored(&x, &y, &what);
                assert!(
                    d <= REL_TOL,
                    "{what}: after {} tokens differ by {d:e}",
                    a.past_len()
                );
                assert!(!a.cache_on_device(), "{what}: reference cache on a device");
                let mut layers = 0;
                while let Ok((ka, va)) = a.cached_kv(layers) {
                    let (kb, vb) = b.cached_kv(layers).unwrap();
                    for (x, y) in [(ka, kb), (va, vb)] {
                        assert_eq!(x.shape(), y.shape(), "{what}: block {layers} cache shape");
                        let (d, scale) = max_abs_diff_and_scale(&x.to_f32_vec(), &y.to_f32_vec());
                        assert!(
                            d <= REL_TOL * scale,
                            "{what}: block {layers} cache differs by {d:e}"
                        );
                    }
                    layers += 1;
                }
                assert!(
                    layers > 0 && b.cached_kv(layers).is_err(),
                    "{what}: block count"
                );
            }
            // A failed step (token outside the vocabulary) leaves the cache
            // as it was.
            let (past, before) = (b.past_len(), b.cached_kv(0).unwrap());
            assert!(b.forward(&[i32::MAX]).is_err());
            assert_eq!(b.past_len(), past, "{what}: failed step moved the cache");
            let after = b.cached_kv(0).unwrap();
            assert_eq!(before.0.to_f32_vec(), after.0.to_f32_vec(), "{what}");
            let prompt = [5, 6, 7];
            let mut s = reference.session();
            let mut t = model.session();
            if name == "t5-small" {
                s.set_source(&[4, 5, 6, 7]).unwrap();
                t.set_source(&[4, 5, 6, 7]).unwrap();
            }
            assert_eq!(
                s.generate_greedy(&prompt, 6, None).unwrap(),
                t.generate_greedy(&prompt, 6, None).unwrap(),
                "{what}: greedy tokens"
            );
        }
    }
}

/// Every tiny decoder, a padded batch prefill and then 35 decode steps
/// (`decode_alongside`), gives the reference session's logits and final
/// cache. Backends that append to the cache in place grow its storage
/// twice (16 → 32 → 64 rows) and their profile skips exactly the cache
/// copies; the others pass the cache in and out.
#[test]
fn decode_sessions_match_the_reference() {
    for backend in under_test("decode_sessions_match_the_reference") {
        for path in tiny_specs() {
            let what = format!("{} on {backend}", path.display());
            let lowered = lower(&spec::load(&path).unwrap()).unwrap();
            if lowered.decoder.is_none() {
                continue;
            }
            let reference = Model::random(lowered.clone(), 5).unwrap();
            let model = Model::random(lowered, 5).unwrap().compile(backend).unwrap();
            let decoder = model.part(Part::Decoder).unwrap();
            let appends = !decoder.appends().is_empty();
            model.enable_profiling(Part::Decoder);
            let s = decode_alongside(&what, &reference, &model, REL_TOL, &|_| {});
            if appends {
                assert_eq!(s.cache_capacity(), Some(64), "{what}");
                if let Some(profile) = model.profile(Part::Decoder) {
                    let program = model.program(Part::Decoder).unwrap();
                    assert_copies_skipped(&what, &profile, program);
                }
            } else {
                assert_eq!(s.cache_capacity(), None, "{what}");
            }
            model.disable_profiling(Part::Decoder);
            assert!(
                model.profile(Part::Decoder).is_none(),
                "{what}: still profiling"
            );
        }
    }
}

#[test]
fn a_failed_step_leaves_the_session_usable() {
    for backend in under_test("a_failed_step_leaves_the_session_usable") {
        // Encoder-decoder: forward before set_source fails, then works.
        let model = Model::random(tiny("t5-small"), 2)
            .unwrap()
            .compile(backend)
            .unwrap();
        let mut s = model.session();
        let e = s.forward(&[0]).unwrap_err();
        assert!(
            matches!(e, kiln_runtime::RuntimeError::Request(_)),
            "{backend}: {e:?}"
        );
        assert!(e.to_string().contains("set_source"), "{e}");
        s.set_source(&[4, 5, 6]).unwrap();
        let a = s.forward(&[0]).unwrap()["logits"].to_f32_vec();
        let mut fresh = model.session();
        fresh.set_source(&[4, 5, 6]).unwrap();
        assert_eq!(a, fresh.forward(&[0]).unwrap()["logits"].to_f32_vec());
        // Decoder: an out-of-vocabulary token mid-way changes nothing;
        // set_source on a decoder-only model says what it lacks.
        let model = Model::random(tiny("gpt2"), 2)
            .unwrap()
            .compile(backend)
            .unwrap();
        let mut s = model.session();
        let e = s.set_source(&[1]).unwrap_err();
        assert!(
            matches!(e, kiln_runtime::RuntimeError::Request(_))
                && e.to_string().contains("no encoder"),
            "{backend}: {e:?}"
        );
        s.forward(&[1, 2]).unwrap();
        assert!(s.forward(&[1_000_000]).is_err());
        assert_eq!(s.past_len(), 2);
        let mut t = model.session();
        t.forward(&[1, 2]).unwrap();
        assert_eq!(
            s.forward(&[3]).unwrap()["logits"].to_f32_vec(),
            t.forward(&[3]).unwrap()["logits"].to_f32_vec()
        );
    }
}

#[test]
fn one_compiled_model_serves_many_threads() {
    let lowered = tiny("qwen2.5-0.5b");
    for backend in under_test("one_compiled_model_serves_many_threads") {
        let model = Model::random(lowered.clone(), 9)
            .unwrap()
            .compile(backend)
            .unwrap();
        let prompts: Vec<Vec<i32>> = (0..6)
            .map(|t| (0..(3 + t)).map(|i| i * 5 + t).collect())
            .collect();
        let alone: Vec<Vec<i32>> = prompts
            .iter()
            .map(|p| model.session().generate_greedy(p, 5, None).unwrap())
            .collect();
        let shared: Vec<Vec<i32>> = std::thread::scope(|s| {
            let hs: Vec<_> = prompts
                .iter()
                .map(|p| s.spawn(|| model.session().generate_greedy(p, 5, None).unwrap()))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(alone, shared, "{backend}");
        // Called from rayon's own workers too.
        use rayon::prelude::*;
        let from_workers: Vec<Vec<i32>> = prompts
            .par_iter()
            .map(|p| model.session().generate_greedy(p, 5, None).unwrap())
            .collect();
        assert_eq!(alone, from_workers, "{backend}");
    }
}

/// Whatever layout a backend keeps the weights in, moving the model back to
/// the reference interpreter gives the canonical weights again, exactly.
#[test]
fn leaving_a_backend_restores_the_canonical_weights() {
    for backend in under_test("leaving_a_backend_restores_the_canonical_weights") {
        let reference = Model::random(tiny("gpt2"), 4).unwrap();
        let shapes = |m: &Model| -> Vec<(String, Vec<usize>)> {
            (m.weights.iter())
                .map(|(n, t)| (n.to_string(), t.shape().to_vec()))
                .collect()
        };
        let before = shapes(&reference);
        let values: Vec<Vec<f32>> = reference
            .weights
            .iter()
            .map(|(_, t)| t.to_f32_vec())
            .collect();
        let want = reference.session().forward(&[1, 2, 3]).unwrap()["logits"].to_f32_vec();
        let compiled = reference.compile(backend).unwrap();
        let got = compiled.session().forward(&[1, 2, 3]).unwrap()["logits"].to_f32_vec();
        let back = compiled
            .compile(kiln_runtime::backends::reference())
            .unwrap();
        assert_eq!(before, shapes(&back), "{backend}");
        let after: Vec<Vec<f32>> = back.weights.iter().map(|(_, t)| t.to_f32_vec()).collect();
        assert!(
            values == after,
            "{backend}: weights changed in the round trip"
        );
        let again = back.session().forward(&[1, 2, 3]).unwrap()["logits"].to_f32_vec();
        assert_eq!(want, again, "{backend}: the round trip must be exact");
        let (d, scale) = max_abs_diff_and_scale(&want, &got);
        assert!(d <= REL_TOL * scale, "{backend}: differ by {d:e}");
    }
}

/// An encoder (BERT) encodes a padded batch like the reference, and a
/// request for a part the model lacks is a clear error.
#[test]
fn encoders_encode_like_the_reference() {
    let lowered = tiny("bert-base-uncased");
    for backend in under_test("encoders_encode_like_the_reference") {
        let reference = Model::random(lowered.clone(), 6).unwrap();
        let model = Model::random(lowered.clone(), 6)
            .unwrap()
            .compile(backend)
            .unwrap();
        let seqs: [&[i32]; 2] = [&[1, 2, 3, 4, 5], &[6, 7]];
        let a = reference.encode_batch(&seqs).unwrap();
        let b = model.encode_batch(&seqs).unwrap();
        let d = max_rel_diff_floored(&a, &b, backend.name());
        assert!(d <= REL_TOL, "{backend}: differ by {d:e}");
        let e = model.session().forward(&[1]).unwrap_err();
        assert!(
            matches!(e, kiln_runtime::RuntimeError::Request(_))
                && e.to_string().contains("no decoder"),
            "{backend}: {e:?}"
        );
    }
}
