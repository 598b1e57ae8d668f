#!/usr/bin/env python3
"""Peer benchmarks: PyTorch (transformers), ONNX Runtime (f32 and int8) and
llama.cpp (node-llama-cpp) on kiln's workloads.

Opt-in; not part of CI. Set up the environment with tests/bench/setup_venv.sh
(and tests/bench/setup_llamacpp.sh for llama.cpp), then run e.g.

    /work/venv-bench/bin/python tests/bench/peers.py --threads 2 --iters 10 \
        [--kiln target/release/kiln]
    /work/venv-bench/bin/python tests/bench/peers.py --only gguf   # llama.cpp + kiln

Spec workloads (batch 1, f32, random weights -- speed does not depend on values;
backends torch, onnxruntime, ort-int8, kiln):
  bert     bert-base-uncased BertModel (with pooler) encode, seq 128
  gpt2     gpt2 LM: prefill 128 tokens (full logits), then 64 greedy decode
           steps with the KV cache
  smollm2  SmolLM2-135M (Llama) LM: same as gpt2

GGUF workloads (the real SmolLM2-135M-Instruct file, the same file for every
backend; backends llamacpp, kiln): prefill 128 tokens, then 64 greedy decode
steps
  smollm2-q4_1  the shipped Q4_1 file ($SMOLLM2_GGUF)
  smollm2-q8_0  Q8_0 written from it by requant_gguf.py (cached)
  smollm2-f16   F16 written from it by requant_gguf.py (cached)
  smollm2-f32   F32 written from it (not in the `gguf` group)

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
SPEC_BACKENDS = ("torch", "onnxruntime", "ort-int8")

# GGUF workloads: one real checkpoint file run by llama.cpp and by kiln. `gguf_type` None is the
# shipped file itself; otherwise requant_gguf.py writes that format from it.
GGUF_MODELS = {
    "smollm2-q4_1": {"name": "smollm2-135m-instruct.q4_1", "source": "smollm2", "gguf_type": None},
    "smollm2-q8_0": {"name": "smollm2-135m-instruct.q8_0", "source": "smollm2", "gguf_type": "q8_0"},
    "smollm2-f16": {"name": "smollm2-135m-instruct.f16", "source": "smollm2", "gguf_type": "f16"},
    "smollm2-f32": {"name": "smollm2-135m-instruct.f32", "source": "smollm2", "gguf_type": "f32"},
}
GGUF_BACKENDS = ("llamacpp",)
ALL_BACKENDS = SPEC_BACKENDS + GGUF_BACKENDS + ("kiln",)
# --only groups.
GROUPS = {
    "spec": list(MODELS),
    "gguf": ["smollm2-q4_1", "smollm2-q8_0", "smollm2-f16"],
    "all": list(MODELS) + list(GGUF_MODELS),
}
LLAMACPP_DIR = os.environ.get("KILN_LLAMACPP_DIR") or "/work/node-peers"
LLAMACPP_RUNNER = REPO / "tests" / "bench" / "llamacpp" / "bench.mjs"


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
    for mod in ("torch", "transformers", "onnxruntime", "onnx", "onnxscript", "numpy", "gguf"):
        if mod == "gguf" and not args.gguf_keys:
            continue
        try:
            if mod == "gguf":  # has no __version__
                import importlib.metadata

                __import__(mod)
                info["versions"][mod] = importlib.metadata.version(mod)
            else:
                info["versions"][mod] = __import__(mod).__version__
        except Exception as e:  # noqa: BLE001
            info["versions"][mod] = f"unavailable ({err_text(e)})"
    if "llamacpp" in args.all_backends:
        try:
            pkg = Path(args.llamacpp_dir) / "node_modules" / "node-llama-cpp" / "package.json"
            info["versions"]["node-llama-cpp"] = json.loads(pkg.read_text())["version"]
        except Exception as e:  # noqa: BLE001
            info["versions"]["node-llama-cpp"] = f"unavailable ({err_text(e)})"
        try:
            info["versions"]["node"] = subprocess.run([args.node, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
        except Exception as e:  # noqa: BLE001
            info["versions"]["node"] = f"unavailable ({err_text(e)})"
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


def quantize_int8(f32_path):
    """Dynamic int8 quantisation of an exported f32 graph, cached beside it as model.int8.onnx.

    Returns (path, quantize_ms or None if cached)."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    f32_path = Path(f32_path)
    # Keyed by the ORT version too: the quantiser's output may change between releases.
    tag = "".join(c if c.isalnum() or c in "-._" else "_" for c in ort.__version__)
    path = f32_path.with_name(f"model.int8-ort{tag}.onnx")
    if path.is_file():
        return path, None
    tmp = f32_path.with_name(f".{path.name}.tmp-{os.getpid()}.onnx")
    t0 = time.perf_counter()
    try:
        with quiet():
            quantize_dynamic(str(f32_path), str(tmp), weight_type=QuantType.QInt8)
        ms = round((time.perf_counter() - t0) * 1e3, 1)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path, ms


def onnx_op_counts(path, ops=("MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul", "QAttention", "ConvInteger", "MatMul", "Gemm")):
    """How many nodes of each (quantised or not) matmul-like op the graph has, functions included."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    counts = {}
    nodes = list(model.graph.node)
    for f in model.functions:
        nodes += list(f.node)
    for n in nodes:
        if n.op_type in ops:
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


# --------------------------------------------------------------------------- onnxruntime


def bench_ort(key, m, args, row, int8=False):
    import numpy as np
    import onnxruntime as ort

    path, export_ms = export_onnx(key, m)
    row["export_ms"] = export_ms  # None: reused from the cache
    row["export_cached"] = export_ms is None
    if int8:
        row["onnx_f32_path"] = str(path)
        path, quantize_ms = quantize_int8(path)
        row["quantization"] = "quantize_dynamic(weight_type=QInt8)"
        row["quantize_ms"] = quantize_ms  # None: reused from the cache
        row["quantize_cached"] = quantize_ms is None
        try:
            row["int8_ops"] = onnx_op_counts(path)
        except Exception as e:  # noqa: BLE001
            row["int8_ops_error"] = err_text(e)
    row["onnx_path"] = str(path)

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
        row.update(parity(key, m, sess, ids))
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
    out = {
        "parity_max_abs_diff": float(f"{np.abs(ref - got).max():.3g}"),
        # RMS of the difference over the RMS of torch's output.
        "parity_rel_rms": float(f"{np.sqrt(np.mean((ref - got) ** 2) / max(np.mean(ref**2), 1e-30)):.3g}"),
    }
    if MODELS[key]["kind"] == "decoder":
        # Fraction of the 128 positions whose greedy next token matches torch's.
        out["parity_top1_agreement"] = round(float((ref.argmax(-1) == got.argmax(-1)).mean()), 4)
    return out


# --------------------------------------------------------------------------- kiln


def last_json_object(p, row):
    """The last JSON object line on `p`'s stdout; None (with `row["error"]` set) when the
    process failed or printed none."""
    parsed = None
    for line in reversed(p.stdout.splitlines()):
        if line.strip().startswith("{"):
            try:
                parsed = json.loads(line)
                break
            except json.JSONDecodeError:
                continue
    if p.returncode != 0 or not isinstance(parsed, dict):
        tail = (p.stderr.strip() or p.stdout.strip())[-600:]
        row["error"] = f"exit {p.returncode}: {tail}" if p.returncode != 0 else f"no JSON object on stdout: {tail}"
        return None
    return parsed


def run_kiln(target, name, args, force_model=False, precision=None):
    """`kiln bench TARGET` (a spec or a .gguf file) with the peers' sizes and repetitions.

    force_model: name the row `name` even though kiln reports its own (kept as `kiln_model`).
    precision: kiln's `--precision` (default: kiln's own, `stored`)."""
    cmd = [
        args.kiln, "bench", str(target), "--seq-len", str(SEQ_LEN), "--decode-tokens", str(DECODE_TOKENS),
        "--iters", str(args.iters), "--warmup", str(args.warmup), "--format", "json",
    ]
    if precision:
        cmd += ["--precision", precision]
    row = {"model": name, "backend": "kiln", "cmd": " ".join(cmd)}
    if not args.kiln:
        row["error"] = "no kiln binary: pass --kiln PATH (target/release/kiln was not found)"
        return row
    env = dict(os.environ)
    env.setdefault("RAYON_NUM_THREADS", str(args.threads))
    try:
        p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=args.kiln_timeout)
    except Exception as e:  # noqa: BLE001
        row["error"] = err_text(e)
        return row
    parsed = last_json_object(p, row)
    if parsed is None:
        return row
    out = dict(parsed)
    if force_model and "model" in out:
        out["kiln_model"] = out["model"]
        out["model"] = row["model"]
    out.setdefault("model", row["model"])
    out.setdefault("backend", "kiln")
    out["source"] = "kiln"
    out["cmd"] = row["cmd"]
    return out


# --------------------------------------------------------------------------- GGUF files


def source_gguf(source, args):
    """Path of the shipped GGUF for `source` (only "smollm2": $SMOLLM2_GGUF, else fetch_real.sh)."""
    assert source == "smollm2", source
    if args.smollm2_gguf:
        return Path(args.smollm2_gguf)
    if getattr(args, "_fetched", None) is None:
        log("SMOLLM2_GGUF not set: running tests/parity/fetch_real.sh")
        p = subprocess.run(["bash", str(REPO / "tests" / "parity" / "fetch_real.sh")], cwd=REPO, capture_output=True, text=True, timeout=1800)
        if p.returncode != 0:
            raise RuntimeError(f"fetch_real.sh failed (exit {p.returncode}): {p.stderr.strip()[-400:]}")
        args._fetched = dict(line.split("=", 1) for line in p.stdout.splitlines() if "=" in line)
    path = args._fetched.get("SMOLLM2_GGUF")
    if not path:
        raise RuntimeError("fetch_real.sh printed no SMOLLM2_GGUF")
    args.smollm2_gguf = path
    return Path(path)


def gguf_file(key, args):
    """(path, seconds spent writing it or None) of the GGUF file of workload `key`."""
    w = GGUF_MODELS[key]
    src = source_gguf(w["source"], args)
    if not src.is_file():
        raise FileNotFoundError(f"GGUF not found: {src}")
    if w["gguf_type"] is None:
        return src, None
    import requant_gguf  # beside this script

    dst = requant_gguf.out_path(src, w["gguf_type"])
    if dst.is_file():
        return dst, None
    t0 = time.perf_counter()
    dst = requant_gguf.ensure(src, w["gguf_type"])
    return dst, round(time.perf_counter() - t0, 1)


def gguf_summary(path):
    """general.file_type and the tensor type counts of a GGUF (None when gguf is unavailable)."""
    try:
        import gguf
    except ImportError:
        return None
    r = gguf.GGUFReader(str(path))
    counts = {}
    for t in r.tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    ft = r.fields.get("general.file_type")
    return {"file_type": int(ft.contents()) if ft is not None else None, "tensor_types": counts}


# --------------------------------------------------------------------------- llama.cpp


def run_llamacpp(path, name, args):
    """tests/bench/llamacpp/bench.mjs on `path`; its per-repetition seconds become the usual row."""
    row = {"model": name, "backend": "llamacpp", "threads": args.threads, "gguf": str(path)}
    mods = Path(args.llamacpp_dir)
    if not (mods / "node_modules" / "node-llama-cpp" / "package.json").is_file():
        row["error"] = f"node-llama-cpp is not installed in {mods}: run `KILN_LLAMACPP_DIR={mods} bash tests/bench/setup_llamacpp.sh`"
        return row
    cmd = [
        args.node, str(LLAMACPP_RUNNER), "--modules", str(mods), "--model", str(path),
        "--threads", str(args.threads), "--iters", str(args.iters), "--warmup", str(args.warmup),
        "--seq-len", str(SEQ_LEN), "--decode-tokens", str(DECODE_TOKENS),
    ]
    row["cmd"] = " ".join(cmd)
    try:
        p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=args.llamacpp_timeout)
    except Exception as e:  # noqa: BLE001
        row["error"] = err_text(e)
        return row
    for line in p.stderr.splitlines():
        log(f"  {line}")
    parsed = last_json_object(p, row)
    if parsed is None:
        return row
    pre, dec = parsed.pop("prefill_s"), parsed.pop("decode_s")
    row["prefill_ms"], row["prefill_ms_min"] = ms_stats(pre)
    decode_stats(dec, row)
    for k in (
        "node_llama_cpp", "llama_cpp_release", "build_type", "gpu", "system_info", "model_size_bytes",
        "context_size", "batch_size", "flash_attention", "load_ms", "context_ms", "prompt_head", "generated_head",
    ):
        if k in parsed:
            row[k] = parsed[k]
    if parsed.get("threads") is not None:
        row["threads"] = parsed["threads"]
    return row


# --------------------------------------------------------------------------- main


def run_gguf_model(key, args, rows):
    name = GGUF_MODELS[key]["name"]
    backends = backends_for(key, args)
    if not backends:
        return
    try:
        path, write_s = gguf_file(key, args)
    except Exception as e:  # noqa: BLE001
        traceback.print_exc(file=sys.stderr)
        for b in backends:
            row = {"model": name, "workload": key, "backend": b, "error": f"GGUF file: {err_text(e)}"}
            emit(row)
            rows.append(row)
        return
    extra = {"workload": key, "gguf": str(path), "gguf_written_s": write_s}
    try:
        summary = gguf_summary(path)
        if summary:
            extra["gguf_file_type"] = summary["file_type"]
            extra["gguf_tensor_types"] = summary["tensor_types"]
    except Exception as e:  # noqa: BLE001
        extra["gguf_read_error"] = err_text(e)
    for b in backends:
        if b == "llamacpp":
            log(f"[{name}] llama.cpp (node-llama-cpp): {path}")
            row = run_llamacpp(path, name, args)
        else:
            log(f"[{name}] kiln: {args.kiln}")
            row = run_kiln(path, name, args, force_model=True)
        for k, v in extra.items():
            row.setdefault(k, v)
        emit(row)
        rows.append(row)


def backends_for(key, args):
    """The selected backends that run workload `key`, in order."""
    own = GGUF_BACKENDS if key in GGUF_MODELS else SPEC_BACKENDS
    want = args.backends_for_gguf if key in GGUF_MODELS else args.backends_for_spec
    return [b for b in own + ("kiln",) if b in want]


def run_model(key, args, rows):
    if key in GGUF_MODELS:
        return run_gguf_model(key, args, rows)
    name = MODELS[key]["name"]
    backends = backends_for(key, args)
    m = None
    build_err = None
    if {"torch", "onnxruntime", "ort-int8"} & set(backends):
        log(f"[{name}] building random-weight transformers model")
        try:
            m = build_model(key)
        except Exception as e:  # noqa: BLE001
            build_err = err_text(e)
            traceback.print_exc(file=sys.stderr)

    for backend, fn in (
        ("torch", bench_torch),
        ("onnxruntime", bench_ort),
        ("ort-int8", lambda k, mm, a, r: bench_ort(k, mm, a, r, int8=True)),
    ):
        if backend not in backends:
            continue
        row = {"model": name, "workload": key, "backend": backend, "threads": args.threads}
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
    if "kiln" in backends:
        for precision in args.kiln_precision or [None]:
            log(f"[{name}] kiln{' --precision ' + precision if precision else ''}: {args.kiln}")
            row = run_kiln(MODELS[key]["spec"], name, args, precision=precision)
            row.setdefault("workload", key)
            emit(row)
            rows.append(row)


def fmt(v, nd=2):
    return "-" if v is None else f"{v:.{nd}f}"


def table(rows):
    hdr = f"{'model':<27} {'backend':<12} {'encode/prefill ms (med/min)':>28} {'decode tok/s (med/max)':>24}  notes"
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
        if r.get("parity_top1_agreement") is not None:
            notes.append(f"top1 {r['parity_top1_agreement']:.0%}")
        if r.get("export_ms") is not None:
            notes.append(f"export {fmt(r['export_ms'] / 1e3, 1)} s")
        if r.get("quantize_ms") is not None:
            notes.append(f"quantize {fmt(r['quantize_ms'] / 1e3, 1)} s")
        if r.get("source") == "kiln" and (r.get("precision") or r.get("weights")):
            notes.append(f"{r.get('precision', '?')}: {r.get('weights', '?')}")
        if r.get("backend") == "llamacpp" and r.get("node_llama_cpp"):
            notes.append(f"node-llama-cpp {r['node_llama_cpp']}")
        if r.get("gguf_written_s") is not None:
            notes.append(f"gguf written {r['gguf_written_s']} s")
        for k in ("error", "decode_error"):
            if k in r:
                notes.append(f"{k.upper()}: {r[k][:120]}")
        lines.append(f"{r.get('model', '?'):<27} {r.get('backend', '?'):<12} {a:>28} {b:>24}  {'; '.join(notes)}")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads / ORT intra_op_num_threads / RAYON_NUM_THREADS for kiln (default 2)")
    ap.add_argument("--iters", type=int, default=10, help="timed iterations per figure (default 10)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed iterations before timing (default 2)")
    ap.add_argument(
        "--only", action="append", metavar="WORKLOAD",
        help=f"run only this workload or group (repeatable, or comma-separated): {', '.join(list(MODELS) + list(GGUF_MODELS))}; "
        f"groups: spec ({', '.join(GROUPS['spec'])}), gguf ({', '.join(GROUPS['gguf'])}), all. "
        "Default: spec, or with --backends every workload one of the chosen peers runs",
    )
    ap.add_argument(
        "--backends", "--peers", dest="backends", metavar="LIST",
        help=f"comma list of {','.join(ALL_BACKENDS)}. Default: torch,onnxruntime (plus kiln with --kiln) on the spec "
        "workloads and llamacpp,kiln on the GGUF workloads",
    )
    ap.add_argument("--kiln", metavar="PATH", help="kiln binary; also run `PATH bench <spec or .gguf> ...` for each workload (default for the GGUF workloads and with --backends ...kiln: target/release/kiln)")
    ap.add_argument("--kiln-precision", metavar="LIST", type=lambda v: [x for x in v.split(",") if x], default=None, help="spec workloads: one kiln row per precision in this comma list (f32, int8, bf16; default: kiln's own default)")
    ap.add_argument("--kiln-timeout", type=float, default=1800, help="seconds allowed per kiln bench run (default 1800)")
    ap.add_argument("--smollm2-gguf", metavar="FILE", default=os.environ.get("SMOLLM2_GGUF") or None, help="the shipped SmolLM2-135M-Instruct Q4_1 GGUF (default $SMOLLM2_GGUF, else tests/parity/fetch_real.sh is run)")
    ap.add_argument("--llamacpp-dir", metavar="DIR", default=LLAMACPP_DIR, help=f"folder where tests/bench/setup_llamacpp.sh installed node-llama-cpp (default $KILN_LLAMACPP_DIR or {LLAMACPP_DIR})")
    ap.add_argument("--node", default="node", help="node binary for the llama.cpp peer (default node)")
    ap.add_argument("--llamacpp-timeout", type=float, default=1800, help="seconds allowed per llama.cpp run (default 1800)")
    args = ap.parse_args(argv)
    if args.iters < 1 or args.warmup < 0 or args.threads < 1:
        ap.error("--iters and --threads must be >= 1, --warmup >= 0")

    explicit = args.backends is not None
    if explicit:
        chosen = {b.strip() for b in args.backends.split(",") if b.strip()}
        bad = chosen - set(ALL_BACKENDS)
        if bad:
            ap.error(f"unknown backend(s): {', '.join(sorted(bad))} (known: {', '.join(ALL_BACKENDS)})")
        if not chosen:
            ap.error("--backends: empty list")
        args.backends_for_spec = args.backends_for_gguf = chosen
    else:
        args.backends_for_spec = {"torch", "onnxruntime"} | ({"kiln"} if args.kiln else set())
        args.backends_for_gguf = {"llamacpp", "kiln"}

    every = list(MODELS) + list(GGUF_MODELS)
    if args.only:
        keys = []
        for item in args.only:
            for k in (x.strip() for x in item.split(",")):
                if not k:
                    continue
                if k not in GROUPS and k not in every:
                    ap.error(f"--only: unknown workload {k!r} (workloads: {', '.join(every)}; groups: {', '.join(GROUPS)})")
                for kk in GROUPS.get(k, [k]):
                    if kk not in keys:
                        keys.append(kk)
    elif not explicit:
        keys = list(GROUPS["spec"])
    elif args.backends_for_spec == {"kiln"}:
        keys = list(GROUPS["spec"]) + list(GROUPS["gguf"])
    else:
        # Every workload that one of the chosen peers (kiln aside) runs.
        keys = [k for k in GROUPS["spec"] + GROUPS["gguf"] if any(b != "kiln" for b in backends_for(k, args))]
    args.keys = keys
    args.all_backends = {b for k in keys for b in backends_for(k, args)}
    args.gguf_keys = [k for k in keys if k in GGUF_MODELS]
    if not args.all_backends:
        ap.error("no selected backend runs the selected workloads (spec workloads: "
                 f"{', '.join(SPEC_BACKENDS)}, kiln; GGUF workloads: {', '.join(GGUF_BACKENDS)}, kiln)")

    if args.kiln:
        k = Path(args.kiln)
        args.kiln = str(k if k.is_absolute() or os.sep not in args.kiln else k.resolve())
    elif "kiln" in args.all_backends:
        default = REPO / "target" / "release" / "kiln"
        args.kiln = str(default) if default.is_file() else None
    # requant_gguf.py sits beside this script.
    sys.path.insert(0, str(Path(__file__).resolve().parent))

    # Keep any OpenMP pools in line with --threads (torch and ORT set their own below too).
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    try:
        if "torch" not in args.all_backends:
            raise ImportError  # not needed: keep its import time out of the run
        import torch

        torch.set_num_threads(args.threads)
        torch.set_num_interop_threads(1)
    except Exception:  # noqa: BLE001
        pass

    emit(machine_info(args))
    rows = []
    for key in args.keys:
        try:
            run_model(key, args, rows)
        except Exception as e:  # noqa: BLE001  (belt and braces: never abort the other models)
            name = (MODELS.get(key) or GGUF_MODELS[key])["name"]
            row = {"model": name, "workload": key, "backend": "?", "error": err_text(e)}
            emit(row)
            rows.append(row)
    log("")
    log(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
