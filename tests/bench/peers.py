#!/usr/bin/env python3
"""Peer benchmarks: PyTorch (transformers) and ONNX Runtime on kiln's workloads.

Opt-in; not part of CI. Set up the environment with tests/bench/setup_venv.sh,
then run e.g.

    /work/venv-bench/bin/python tests/bench/peers.py --threads 2 --iters 10 \
        [--kiln target/release/kiln]

Workloads (batch 1, f32, random weights -- speed does not depend on values):
  bert     bert-base-uncased BertModel (with pooler) encode, seq 128
  gpt2     gpt2 LM: prefill 128 tokens (full logits), then 64 greedy decode
           steps with the KV cache
  smollm2  SmolLM2-135M (Llama) LM: same as gpt2

stdout: one JSON object per line. The first line describes the machine and the
library versions; each later line is one (model, backend) row. stderr: progress
and a readable table at the end. See tests/bench/README.md for the fields.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SEQ_LEN = 128
DECODE_TOKENS = 64
# Bump when the exported graphs change shape/signature so stale caches are not reused.
EXPORT_FORMAT = 1

MODELS = {
    "bert": {"name": "bert-base-uncased", "spec": "models/bert-base-uncased.toml", "kind": "encoder"},
    "gpt2": {"name": "gpt2", "spec": "models/gpt2.toml", "kind": "decoder"},
    "smollm2": {"name": "smollm2-135m", "spec": "models/smollm2-135m.toml", "kind": "decoder"},
}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def emit(obj):
    print(json.dumps(obj), flush=True)


def err_text(e: BaseException) -> str:
    s = f"{type(e).__name__}: {e}"
    return s if len(s) <= 600 else s[:600] + "..."


@contextlib.contextmanager
def quiet():
    """Keep library chatter (exporter progress lines, warnings) off stdout."""
    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def ms_stats(samples_s):
    ms = [x * 1e3 for x in samples_s]
    return round(statistics.median(ms), 3), round(min(ms), 3)


# --------------------------------------------------------------------------- machine


def machine_info(args):
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "machine": {
            "cpu": cpu,
            "logical_cores": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "os": platform.platform(),
        },
        "python": platform.python_version(),
        "threads": args.threads,
        "iters": args.iters,
        "warmup": args.warmup,
        "seq_len": SEQ_LEN,
        "decode_tokens": DECODE_TOKENS,
        "versions": {},
    }
    for mod in ("torch", "transformers", "onnxruntime", "onnx", "onnxscript", "numpy"):
        try:
            info["versions"][mod] = __import__(mod).__version__
        except Exception as e:  # noqa: BLE001
            info["versions"][mod] = f"unavailable ({err_text(e)})"
    return info


# --------------------------------------------------------------------------- models


def build_model(key):
    """Random-weight transformers model matching the kiln spec for `key`."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    with quiet():
        if key == "bert":
            # BertConfig() defaults are bert-base-uncased (vocab 30522, 12x768, erf GELU, eps 1e-12).
            m = tf.BertModel(tf.BertConfig(), add_pooling_layer=True)
        elif key == "gpt2":
            # GPT2Config() defaults are gpt2 (vocab 50257, 12x768, gelu_new, 1024 positions, tied head).
            m = tf.GPT2LMHeadModel(tf.GPT2Config())
        elif key == "smollm2":
            # HuggingFaceTB/SmolLM2-135M config.json (same as models/smollm2-135m.toml).
            cfg = tf.LlamaConfig(
                vocab_size=49152,
                hidden_size=576,
                intermediate_size=1536,
                num_hidden_layers=30,
                num_attention_heads=9,
                num_key_value_heads=3,
                hidden_act="silu",
                max_position_embeddings=8192,
                rms_norm_eps=1e-5,
                rope_theta=100000.0,
                tie_word_embeddings=True,
                attention_bias=False,
                mlp_bias=False,
            )
            m = tf.LlamaForCausalLM(cfg)
        else:
            raise KeyError(key)
    return m.eval()


def kv_shape(m):
    """(layers, kv_heads, head_dim) of a decoder."""
    c = m.config
    if hasattr(c, "n_layer"):  # GPT-2
        return c.n_layer, c.n_head, c.n_embd // c.n_head
    heads = c.num_attention_heads
    kv = getattr(c, "num_key_value_heads", None) or heads
    hd = getattr(c, "head_dim", None) or c.hidden_size // heads
    return c.num_hidden_layers, kv, hd


def config_digest(m):
    blob = json.dumps(m.config.to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(f"{EXPORT_FORMAT}:{blob}".encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- torch


def bench_torch(key, m, args, row):
    import torch

    torch.set_num_threads(args.threads)
    vocab = m.config.vocab_size
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (1, SEQ_LEN), generator=g)
    row["attn_implementation"] = m.config._attn_implementation

    with torch.inference_mode():
        if MODELS[key]["kind"] == "encoder":
            ts = []
            for i in range(args.warmup + args.iters):
                t0 = time.perf_counter()
                m(input_ids=ids)
                t1 = time.perf_counter()
                if i >= args.warmup:
                    ts.append(t1 - t0)
            row["encode_ms"], row["encode_ms_min"] = ms_stats(ts)
            return

        # Prefill: one forward over 128 tokens, full logits, fresh cache each time.
        ts = []
        for i in range(args.warmup + args.iters):
            t0 = time.perf_counter()
            m(input_ids=ids, use_cache=True)
            t1 = time.perf_counter()
            if i >= args.warmup:
                ts.append(t1 - t0)
        row["prefill_ms"], row["prefill_ms_min"] = ms_stats(ts)

        # Decode: after an (untimed) 128-token prefill, 64 greedy steps of one token each.
        try:
            ts = []
            for i in range(args.warmup + args.iters):
                out = m(input_ids=ids, use_cache=True)
                past = out.past_key_values
                tok = out.logits[:, -1:].argmax(-1)
                t0 = time.perf_counter()
                for _ in range(DECODE_TOKENS):
                    out = m(input_ids=tok, past_key_values=past, use_cache=True)
                    past = out.past_key_values
                    tok = out.logits[:, -1:].argmax(-1)
                t1 = time.perf_counter()
                if i >= args.warmup:
                    ts.append(t1 - t0)
            decode_stats(ts, row)
        except Exception as e:  # noqa: BLE001
            row["decode_error"] = err_text(e)


def decode_stats(ts, row):
    per_tok = [t / DECODE_TOKENS for t in ts]
    row["decode_ms_per_token"], row["decode_ms_per_token_min"] = ms_stats(per_tok)
    row["decode_tokens_per_s"] = round(DECODE_TOKENS / statistics.median(ts), 2)
    row["decode_tokens_per_s_max"] = round(DECODE_TOKENS / min(ts), 2)


# --------------------------------------------------------------------------- onnx export


def cache_root():
    base = os.environ.get("KILN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "kiln")
    return Path(base) / "bench-onnx"


def export_onnx(key, m):
    """Export (or reuse) the ONNX graph for `key`; returns (path, export_ms or None if cached)."""
    import torch
    import transformers

    tag = f"{MODELS[key]['name']}-torch{torch.__version__}-tf{transformers.__version__}-{config_digest(m)}"
    tag = "".join(c if c.isalnum() or c in "-._" else "_" for c in tag)
    final = cache_root() / tag
    path = final / "model.onnx"
    if path.is_file():
        return path, None

    cache_root().mkdir(parents=True, exist_ok=True)
    tmp = cache_root() / f".{tag}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t0 = time.perf_counter()
    try:
        with quiet(), torch.no_grad():
            if MODELS[key]["kind"] == "encoder":
                prog = _export_encoder(m)
            else:
                prog = _export_decoder(m)
            prog.save(str(tmp / "model.onnx"))
        export_ms = round((time.perf_counter() - t0) * 1e3, 1)
        if final.exists():  # another run won the race
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path, export_ms


def _export_encoder(m):
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids):
            out = self.inner(input_ids=input_ids)
            return out.last_hidden_state, out.pooler_output

    ids = torch.randint(0, m.config.vocab_size, (1, SEQ_LEN))
    seq = torch.export.Dim("seq", min=2, max=m.config.max_position_embeddings)
    return torch.onnx.export(
        Encoder(m),
        (ids,),
        input_names=["input_ids"],
        output_names=["last_hidden_state", "pooler_output"],
        dynamic_shapes={"input_ids": {1: seq}},
        opset_version=18,
        dynamo=True,
        verbose=False,
    )


def _export_decoder(m):
    """One graph with past key/values in and present key/values out.

    The past length is dynamic and may be 0, so the same graph serves prefill
    (empty past) and decode (one token, growing past)."""
    import torch
    from transformers import DynamicCache

    n_layers, kv_heads, head_dim = kv_shape(m)

    class WithPast(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, *past):
            cache = DynamicCache([(past[2 * i], past[2 * i + 1]) for i in range(n_layers)])
            out = self.inner(input_ids=input_ids, past_key_values=cache, use_cache=True)
            res = [out.logits]
            for layer in out.past_key_values.layers:
                res += [layer.keys, layer.values]
            return tuple(res)

    # Example shapes > 1 so torch.export does not specialise the dynamic dims.
    ids = torch.randint(0, m.config.vocab_size, (1, 3))
    past = [torch.randn(1, kv_heads, 4, head_dim) for _ in range(2 * n_layers)]
    max_pos = getattr(m.config, "max_position_embeddings", None) or m.config.n_positions
    seq = torch.export.Dim("seq", min=1, max=max_pos)
    plen = torch.export.Dim("past", min=0, max=max_pos)
    names = ["input_ids"] + [f"past.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")]
    onames = ["logits"] + [f"present.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")]
    return torch.onnx.export(
        WithPast(m),
        (ids, *past),
        input_names=names,
        output_names=onames,
        dynamic_shapes={"input_ids": {1: seq}, "past": tuple({2: plen} for _ in range(2 * n_layers))},
        opset_version=18,
        dynamo=True,
        verbose=False,
    )


# --------------------------------------------------------------------------- onnxruntime


def bench_ort(key, m, args, row):
    import numpy as np
    import onnxruntime as ort

    path, export_ms = export_onnx(key, m)
    row["onnx_path"] = str(path)
    row["export_ms"] = export_ms  # None: reused from the cache
    row["export_cached"] = export_ms is None

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    t0 = time.perf_counter()
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    row["session_ms"] = round((time.perf_counter() - t0) * 1e3, 1)
    row["graph_optimization"] = "ORT_ENABLE_ALL"

    rng = np.random.default_rng(1)
    ids = rng.integers(0, m.config.vocab_size, size=(1, SEQ_LEN), dtype=np.int64)

    # Sanity check that the (possibly cached) graph is this model: compare
    # against one torch forward on the same input.
    try:
        row["parity_max_abs_diff"] = parity(key, m, sess, ids)
    except Exception as e:  # noqa: BLE001
        row["parity_error"] = err_text(e)

    if MODELS[key]["kind"] == "encoder":
        feed = {"input_ids": ids}
        ts = []
        for i in range(args.warmup + args.iters):
            t0 = time.perf_counter()
            sess.run(None, feed)
            t1 = time.perf_counter()
            if i >= args.warmup:
                ts.append(t1 - t0)
        row["encode_ms"], row["encode_ms_min"] = ms_stats(ts)
        return

    n_layers, kv_heads, head_dim = kv_shape(m)
    past_names = [f"past.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")]
    empty = np.zeros((1, kv_heads, 0, head_dim), dtype=np.float32)
    prefill_feed = {"input_ids": ids, **{n: empty for n in past_names}}

    ts = []
    for i in range(args.warmup + args.iters):
        t0 = time.perf_counter()
        sess.run(None, prefill_feed)
        t1 = time.perf_counter()
        if i >= args.warmup:
            ts.append(t1 - t0)
    row["prefill_ms"], row["prefill_ms_min"] = ms_stats(ts)

    try:
        ts = []
        for i in range(args.warmup + args.iters):
            outs = sess.run(None, prefill_feed)
            tok = outs[0][:, -1:].argmax(-1).astype(np.int64)
            t0 = time.perf_counter()
            for _ in range(DECODE_TOKENS):
                feed = {"input_ids": tok, **dict(zip(past_names, outs[1:]))}
                outs = sess.run(None, feed)
                tok = outs[0][:, -1:].argmax(-1).astype(np.int64)
            t1 = time.perf_counter()
            if i >= args.warmup:
                ts.append(t1 - t0)
        decode_stats(ts, row)
    except Exception as e:  # noqa: BLE001
        row["decode_error"] = err_text(e)


def parity(key, m, sess, ids):
    import numpy as np
    import torch

    with torch.inference_mode():
        if MODELS[key]["kind"] == "encoder":
            ref = m(input_ids=torch.from_numpy(ids)).last_hidden_state.numpy()
            got = sess.run(["last_hidden_state"], {"input_ids": ids})[0]
        else:
            ref = m(input_ids=torch.from_numpy(ids), use_cache=True).logits.numpy()
            n_layers, kv_heads, head_dim = kv_shape(m)
            empty = np.zeros((1, kv_heads, 0, head_dim), dtype=np.float32)
            feed = {"input_ids": ids}
            feed.update({f"past.{i}.{kv}": empty for i in range(n_layers) for kv in ("key", "value")})
            got = sess.run(["logits"], feed)[0]
    return float(f"{np.abs(ref - got).max():.3g}")


# --------------------------------------------------------------------------- kiln


def run_kiln(key, args):
    spec = MODELS[key]["spec"]
    cmd = [args.kiln, "bench", spec, "--seq-len", str(SEQ_LEN), "--decode-tokens", str(DECODE_TOKENS), "--format", "json"]
    row = {"model": MODELS[key]["name"], "backend": "kiln", "cmd": " ".join(cmd)}
    env = dict(os.environ)
    env.setdefault("RAYON_NUM_THREADS", str(args.threads))
    try:
        p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=args.kiln_timeout)
    except Exception as e:  # noqa: BLE001
        row["error"] = err_text(e)
        return row
    parsed = None
    for line in reversed(p.stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                parsed = json.loads(line)
                break
            except json.JSONDecodeError:
                continue
    if p.returncode != 0 or not isinstance(parsed, dict):
        tail = (p.stderr.strip() or p.stdout.strip())[-600:]
        row["error"] = f"exit {p.returncode}: {tail}" if p.returncode != 0 else f"no JSON object on stdout: {tail}"
        return row
    out = dict(parsed)
    out.setdefault("model", row["model"])
    out.setdefault("backend", "kiln")
    out["source"] = "kiln"
    out["cmd"] = row["cmd"]
    return out


# --------------------------------------------------------------------------- main


def run_model(key, args, rows):
    name = MODELS[key]["name"]
    m = None
    build_err = None
    if "torch" in args.backends or "onnxruntime" in args.backends:
        log(f"[{name}] building random-weight transformers model")
        try:
            m = build_model(key)
        except Exception as e:  # noqa: BLE001
            build_err = err_text(e)
            traceback.print_exc(file=sys.stderr)

    for backend, fn in (("torch", bench_torch), ("onnxruntime", bench_ort)):
        if backend not in args.backends:
            continue
        row = {"model": name, "backend": backend, "threads": args.threads}
        if m is None:
            row["error"] = f"model build failed: {build_err}"
        else:
            log(f"[{name}] {backend}")
            try:
                fn(key, m, args, row)
            except Exception as e:  # noqa: BLE001
                row["error"] = err_text(e)
                traceback.print_exc(file=sys.stderr)
        emit(row)
        rows.append(row)

    del m
    if args.kiln:
        log(f"[{name}] kiln: {args.kiln}")
        row = run_kiln(key, args)
        emit(row)
        rows.append(row)


def fmt(v, nd=2):
    return "-" if v is None else f"{v:.{nd}f}"


def table(rows):
    hdr = f"{'model':<18} {'backend':<12} {'encode/prefill ms (med/min)':>28} {'decode tok/s (med/max)':>24}  notes"
    lines = [hdr, "-" * len(hdr)]
    for r in rows:
        if "encode_ms" in r:
            a = f"{fmt(r.get('encode_ms'))} / {fmt(r.get('encode_ms_min'))}"
        elif "prefill_ms" in r:
            a = f"{fmt(r.get('prefill_ms'))} / {fmt(r.get('prefill_ms_min'))}"
        else:
            a = "-"
        b = "-"
        if "decode_tokens_per_s" in r:
            b = f"{fmt(r.get('decode_tokens_per_s'), 1)} / {fmt(r.get('decode_tokens_per_s_max'), 1)}"
        notes = []
        if r.get("attn_implementation"):
            notes.append(f"attn={r['attn_implementation']}")
        if "compile_ms" in r:
            notes.append(f"compile {fmt(r['compile_ms'], 0)} ms")
        if r.get("parity_max_abs_diff") is not None:
            notes.append(f"parity {r['parity_max_abs_diff']:.1e}")
        if r.get("export_ms") is not None:
            notes.append(f"export {fmt(r['export_ms'] / 1e3, 1)} s")
        for k in ("error", "decode_error"):
            if k in r:
                notes.append(f"{k.upper()}: {r[k][:120]}")
        lines.append(f"{r.get('model', '?'):<18} {r.get('backend', '?'):<12} {a:>28} {b:>24}  {'; '.join(notes)}")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads / ORT intra_op_num_threads / RAYON_NUM_THREADS for kiln (default 2)")
    ap.add_argument("--iters", type=int, default=10, help="timed iterations per figure (default 10)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed iterations before timing (default 2)")
    ap.add_argument("--only", choices=sorted(MODELS), action="append", help="run only this model (repeatable)")
    ap.add_argument("--backends", default="torch,onnxruntime", help="comma list of torch,onnxruntime (default both)")
    ap.add_argument("--kiln", metavar="PATH", help="kiln binary; also run `PATH bench <spec> ...` for each model")
    ap.add_argument("--kiln-timeout", type=float, default=1800, help="seconds allowed per kiln bench run (default 1800)")
    args = ap.parse_args(argv)
    if args.iters < 1 or args.warmup < 0 or args.threads < 1:
        ap.error("--iters and --threads must be >= 1, --warmup >= 0")
    args.backends = {b.strip() for b in args.backends.split(",") if b.strip()}
    bad = args.backends - {"torch", "onnxruntime"}
    if bad:
        ap.error(f"unknown backend(s): {', '.join(sorted(bad))}")
    if args.kiln:
        k = Path(args.kiln)
        args.kiln = str(k if k.is_absolute() or os.sep not in args.kiln else k.resolve())

    # Keep any OpenMP pools in line with --threads (torch and ORT set their own below too).
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    try:
        import torch

        torch.set_num_threads(args.threads)
        torch.set_num_interop_threads(1)
    except Exception:  # noqa: BLE001
        pass

    emit(machine_info(args))
    rows = []
    for key in args.only or list(MODELS):
        try:
            run_model(key, args, rows)
        except Exception as e:  # noqa: BLE001  (belt and braces: never abort the other models)
            row = {"model": MODELS[key]["name"], "backend": "?", "error": err_text(e)}
            emit(row)
            rows.append(row)
    log("")
    log(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
