//! `kiln bench`: latency and throughput of one model on one backend, with
//! the figures the peers are compared on (see tests/bench/ and
//! docs/benchmarks.md) and the machine's own GEMM and memory figures from
//! the same run.

use super::CliError;
use super::{Format, ModelArgs, open_model};
use kiln_compiler::compile;
use kiln_compiler::ir::Part;
use kiln_compiler::lower::lower;
use kiln_compiler::spec::Architecture;
use kiln_runtime::backends::machine;
use kiln_runtime::backends::{self, BackendRef};
use kiln_runtime::session::{Model, argmax};
use serde_json::json;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Tokens per encode / prefill (batch 1). Default: 128, or what the
    /// model's max_positions leaves room for (reported as `seq_len`); a
    /// value the model cannot take is an error.
    #[arg(long)]
    seq_len: Option<usize>,
    /// Tokens generated one at a time after a prefill, for decode
    /// throughput. Default: 64, or what is left of max_positions (reported
    /// as `decode_tokens`); more than fits is an error.
    #[arg(long)]
    decode_tokens: Option<usize>,
    /// Timed repetitions (the median and the best are reported).
    #[arg(long, default_value_t = 10)]
    iters: usize,
    /// Untimed repetitions first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Skip measuring the machine (GEMM library GFLOP/s, memory bandwidth).
    #[arg(long)]
    no_machine: bool,
    /// Only time the compile (spec → native code), without weights: works
    /// for every shipped spec, whatever its size.
    #[arg(long)]
    compile_only: bool,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Median and best of `n` timed calls after `warmup` untimed ones.
fn time(
    warmup: usize,
    n: usize,
    f: &mut dyn FnMut() -> Result<(), CliError>,
) -> Result<(f64, f64), CliError> {
    for _ in 0..warmup {
        f()?;
    }
    let mut t = Vec::with_capacity(n.max(1));
    for _ in 0..n.max(1) {
        let s = Instant::now();
        f()?;
        t.push(ms(s.elapsed()));
    }
    t.sort_by(f64::total_cmp);
    Ok((t[t.len() / 2], t[0]))
}

/// Spec → runnable code for every graph, without weights.
fn compile_only(a: &Args) -> Result<(), CliError> {
    let path = a
        .model
        .spec
        .as_deref()
        .or(a.model.weights.as_deref())
        .ok_or("give a spec, a model folder or a .gguf file")?;
    let t0 = Instant::now();
    let (rs, lowered) = super::load(path)?;
    let lower_time = t0.elapsed();
    let mut kernels = 0;
    let mut nodes = 0;
    let mut stages = [Duration::ZERO; 3];
    let opts = a.model.compile_options();
    let pipeline = opts.pipeline()?;
    for g in lowered.graphs() {
        let t0 = Instant::now();
        let mut g = g.clone();
        pipeline.run(&mut g)?;
        let t1 = Instant::now();
        let program = compile::fuse_optimised(&g, &opts)?;
        let t2 = Instant::now();
        kernels += program.kernels.len();
        nodes += program.graph_nodes;
        kiln_runtime::backends::jit::JitGraph::new(program, Default::default())?;
        stages[0] += t1 - t0;
        stages[1] += t2 - t1;
        stages[2] += t2.elapsed();
    }
    let out = json!({
        "model": rs.spec.name,
        "layers": rs.spec.layers,
        "compile_ms": ms(t0.elapsed()),
        "graph_nodes": nodes,
        "kernels": kernels,
        "stage_ms": {
            "load_and_lower": ms(lower_time),
            "passes": ms(stages[0]),
            "fuse": ms(stages[1]),
            "codegen": ms(stages[2]),
        },
    });
    match a.format {
        Format::Json => outln!("{out}"),
        Format::Text => outln!(
            "{}: {} layers, {} graph nodes -> {} kernels, compiled in {:.1} ms \
             (load+lower {:.1}, passes {:.1}, fuse {:.1}, codegen {:.1})",
            rs.spec.name,
            rs.spec.layers,
            nodes,
            kernels,
            ms(t0.elapsed()),
            ms(lower_time),
            ms(stages[0]),
            ms(stages[1]),
            ms(stages[2])
        ),
    }
    Ok(())
}

pub fn run(a: Args) -> Result<(), CliError> {
    if a.compile_only {
        return compile_only(&a);
    }
    let backend = a.model.backend;
    // Open on the interpreter first so the compile is timed on its own:
    // spec → graphs (lowering) → passes, fusion and code generation.
    let mut args = a.model.clone();
    args.backend = BackendRef(backends::reference());
    // The precision applies at the compile below (the reference backend
    // runs f32 and stored only).
    args.precision = kiln_runtime::Precision::Stored;
    let loaded = open_model(&args)?;
    let t0 = Instant::now();
    let relowered = lower(&loaded.spec)?;
    let lower_time = t0.elapsed();
    drop(relowered);
    // Counted before the JIT adds transposed copies of tied weights.
    let params: usize = loaded.model.weights.numel();
    let t1 = Instant::now();
    let model: Model = (loaded.model.with_precision(a.model.precision))
        .with_options(a.model.compile_options())
        .compile(backend.0)?;
    super::note_precision(&a.model, &model);
    // Bytes a decode step reads per parameter: the stored formats' own
    // size where the weights stay in them.
    let weight_bytes = if model.f16_weights() {
        2.0
    } else {
        model.weights.n_bytes() as f64 / params.max(1) as f64
    };
    let weights_text = weights_text(&model);
    let prepare_time = t1.elapsed();
    // Spec → runnable code: lowering plus each graph's passes, fusion and
    // code generation (weight preparation is reported on its own).
    let jit_time = model.compile_time();
    let compile_time = lower_time + jit_time;
    let rs = &loaded.spec;
    let vocab = rs.spec.vocab_size;
    // Measure what was asked or say why not: never a silently shorter run.
    // Unasked lengths default to what the model has room for.
    let max = rs.spec.max_positions;
    let enc_dec = rs.spec.architecture == Architecture::EncoderDecoder;
    let decodes = rs.spec.architecture != Architecture::Encoder;
    let n = match a.seq_len {
        Some(n) if n == 0 || n > max => {
            return Err(CliError::Usage(format!(
                "--seq-len {n}: the model takes 1 to {max} tokens (max_positions = {max})"
            )));
        }
        Some(n) => n,
        // Decoders keep room for the decode steps.
        None if decodes && !enc_dec => {
            let room = a.decode_tokens.unwrap_or(64.min(max / 2));
            128.min(max.saturating_sub(room)).max(1)
        }
        None => 128.min(max),
    };
    // The decoder's prefill: the prompt, or one start token after an
    // encoder's source; every decode step after it must fit too.
    let start = if enc_dec { 1 } else { n };
    let decode_tokens = match a.decode_tokens {
        Some(t) if decodes && start + t > max => {
            return Err(CliError::Usage(format!(
                "--decode-tokens {t} after {start} prefill token(s) exceeds max_positions = {max}: use at most {}{}",
                max - start,
                if enc_dec {
                    ""
                } else {
                    " or a shorter --seq-len"
                }
            )));
        }
        Some(t) => t,
        None => 64.min(max.saturating_sub(start)),
    };
    let prompt: Vec<i32> = (0..n).map(|i| ((i * 7919 + 13) % vocab) as i32).collect();
    let mut out = json!({
        "model": rs.spec.name,
        "backend": backend.to_string(),
        "weights": weights_text,
        "precision": a.model.precision.to_string(),
        "threads": rayon::current_num_threads(),
        "seq_len": n,
        "parameters": params,
        "compile_ms": ms(compile_time),
        "prepare_weights_ms": ms(prepare_time.saturating_sub(jit_time)),
    });
    if let Some(device) = Part::ALL.iter().find_map(|&p| model.part(p)?.device()) {
        out["adapter"] = device.into();
    }
    let part = match rs.spec.architecture {
        Architecture::Encoder => Part::Encoder,
        _ => Part::Decoder,
    };
    // Timed runs are unprofiled (a profiled GPU run encodes one pass per
    // kernel and so runs slower); the kernel profile comes from runs of
    // its own afterwards.
    let profiled_runs = a.iters.clamp(1, 3);
    match rs.spec.architecture {
        Architecture::Encoder => {
            let mut encode = || model.encode(&prompt).map(|_| ()).map_err(CliError::from);
            let (med, best) = time(a.warmup, a.iters, &mut encode)?;
            out["encode_ms"] = med.into();
            out["encode_ms_min"] = best.into();
            model.enable_profiling(part);
            for _ in 0..profiled_runs {
                encode()?;
            }
            add_profile(&model, part, &mut out, "");
            model.disable_profiling(part);
        }
        Architecture::Decoder | Architecture::EncoderDecoder => {
            let start: Vec<i32> = if enc_dec { vec![0] } else { prompt.clone() };
            let new_session = || -> Result<kiln_runtime::session::Session<'_>, CliError> {
                let mut s = model.session();
                if enc_dec {
                    s.set_source(&prompt)?;
                }
                Ok(s)
            };
            let mut prefill = || {
                new_session()?
                    .forward(&start)
                    .map(|_| ())
                    .map_err(CliError::from)
            };
            let (med, best) = time(a.warmup, a.iters, &mut prefill)?;
            out["prefill_ms"] = med.into();
            out["prefill_ms_min"] = best.into();
            model.enable_profiling(part);
            for _ in 0..profiled_runs {
                prefill()?;
            }
            add_profile(&model, part, &mut out, "");
            model.disable_profiling(part);
            let steps = decode_tokens;
            // Decode runs: the first `profiled_runs` timed, then one profiled
            // (its steps alone: profiling starts after its prefill).
            let mut rates = Vec::new();
            for run in 0..=profiled_runs {
                let profiled = run == profiled_runs;
                let mut s = new_session()?;
                let o = s.forward(&start)?;
                let mut next = last_argmax(&o)?;
                if profiled {
                    model.enable_profiling(part);
                }
                let t = Instant::now();
                for _ in 0..steps {
                    let o = s.forward(&[next])?;
                    next = last_argmax(&o)?;
                }
                if !profiled {
                    rates.push(steps as f64 / t.elapsed().as_secs_f64());
                }
            }
            rates.sort_by(f64::total_cmp);
            let rate = rates[rates.len() / 2];
            out["decode_tokens"] = steps.into();
            out["decode_tokens_per_s"] = rate.into();
            out["decode_tokens_per_s_max"] = rates[rates.len() - 1].into();
            // Every decode step reads every weight once.
            out["decode_weight_gb_per_s"] = (rate * params as f64 * weight_bytes / 1e9).into();
            add_profile(&model, part, &mut out, "decode_");
            model.disable_profiling(part);
        }
    }
    if !a.no_machine {
        out["gemm_library_gflops_768"] = machine::gemm_gflops(768, 768, 768, 10).into();
        out["memory_read_gb_per_s"] = machine::read_bandwidth_gbs(512 << 20, 5).into();
    }
    match a.format {
        Format::Json => outln!("{out}"),
        Format::Text => {
            let obj = out.as_object().expect("an object");
            for (k, v) in obj {
                match v.as_f64() {
                    Some(x) if v.is_f64() => outln!("{k:>28}  {x:.2}"),
                    _ => outln!("{k:>28}  {v}"),
                }
            }
        }
    }
    Ok(())
}

/// Matmul throughput and share of time inside the model, from the JIT's
/// profile of the runs since profiling was (re)started; keys get `prefix`.
fn add_profile(model: &Model, part: Part, out: &mut serde_json::Value, prefix: &str) {
    let Some(p) = model.profile(part) else {
        return;
    };
    let program = model.program(part);
    let kind = |i: usize| program.map_or("?", |p| p.kernels[i].kind());
    let gemm = p.time("gemm").as_secs_f64();
    if gemm > 0.0 {
        // Attention's products are not in the Gemm kernels' time.
        let flops: f64 = (p.flops_by_kernel.iter().enumerate())
            .filter(|(i, _)| kind(*i) == "gemm")
            .map(|(_, f)| f)
            .sum();
        out[format!("{prefix}matmul_gflops")] = (flops / gemm / 1e9).into();
        out[format!("{prefix}matmul_share")] = (gemm / p.total().as_secs_f64().max(1e-12)).into();
    }
    let kinds: serde_json::Map<String, serde_json::Value> = p
        .by_kind
        .iter()
        .map(|(k, d)| (k.to_string(), (ms(*d) / p.runs.max(1) as f64).into()))
        .collect();
    out[format!("{prefix}kernel_ms_per_run")] = kinds.into();
    // The five slowest kernels (see `kiln compile --emit kernels`).
    let mut ks: Vec<(usize, Duration)> = p.by_kernel.iter().copied().enumerate().collect();
    ks.sort_by_key(|k| std::cmp::Reverse(k.1));
    let top: Vec<serde_json::Value> = ks
        .iter()
        .take(5)
        .map(|(i, d)| {
            let mut k = json!({
                "kernel": format!("k{i}"),
                "kind": kind(*i),
                "ms_per_run": ms(*d) / p.runs.max(1) as f64,
            });
            let flops = p.flops_by_kernel.get(*i).copied().unwrap_or(0.0);
            if flops > 0.0 && !d.is_zero() {
                k["gflops"] = (flops / d.as_secs_f64() / 1e9).into();
            }
            k
        })
        .collect();
    out[format!("{prefix}slowest_kernels")] = top.into();
}

fn last_argmax(o: &kiln_runtime::Outputs) -> Result<i32, CliError> {
    let l = o.get("logits").ok_or("the model produced no logits")?;
    let v = *l.shape().last().unwrap_or(&1);
    let d = l.to_f32_vec();
    Ok(argmax(&d[d.len() - v..]) as i32)
}

/// The weights' formats as benchmarked: `f16`, `f32`, or the stored formats
/// with their share of the bytes (`Q4_1 96.6 MB + f32 0.1 MB`).
fn weights_text(model: &Model) -> String {
    if model.f16_weights() {
        return "f16".into();
    }
    let mut bytes: std::collections::BTreeMap<String, usize> = (model.weights.stored_bytes())
        .into_iter()
        .map(|(f, b)| (f.name().to_string(), b))
        .collect();
    if bytes.is_empty() {
        return "f32".into();
    }
    let dense: usize = model.weights.iter().map(|(_, t)| 4 * t.numel()).sum();
    *bytes.entry("f32".into()).or_default() += dense;
    let parts: Vec<String> = (bytes.iter())
        .map(|(f, b)| format!("{f} {:.1} MB", *b as f64 / 1e6))
        .collect();
    parts.join(" + ")
}
