"""Compare kiln (JIT and reference interpreter) with the independent NumPy
oracle (oracle.py) on random valid specs and random weights with non-trivial
norms and biases: full-sequence logits to 1e-4 relative (floored at 1e-5 of
the logits' RMS), and greedy generation through kiln's KV cache.

    python3 -m venv /work/venv-oracle && /work/venv-oracle/bin/pip install numpy
    cargo build --release
    /work/venv-oracle/bin/python tests/oracle/compare.py --kiln target/release/kiln --specs 200

Opt-in, like the parity scripts: not part of `cargo test`. Every mismatch is
printed with the spec that caused it (kept under --keep DIR).
"""

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import oracle  # noqa: E402

PARAM = re.compile(r'param "([^"]+)" : f32\[([0-9, ]*)\]')


def random_spec(r):
    """A random spec of any architecture over the knobs oracle.py covers."""
    arch = r.choice(["decoder", "decoder", "encoder", "encoder-decoder"])
    heads = r.choice([1, 2, 3, 4, 6])
    kv = r.choice([h for h in range(1, heads + 1) if heads % h == 0])
    hd = r.choice([4, 6, 8])
    d = r.choice([heads * hd, 16, 24, 32])
    placement = r.choice(["pre", "pre", "post", "sandwich", "output"])
    kind = r.choice(["layernorm", "rmsnorm"])
    pos = r.choice(["learned", "sinusoidal", "rope", "rope", "alibi", "relative", "none"])
    lines = [
        'name = "oracle"',
        f'architecture = "{arch}"',
        f"vocab_size = {r.choice([37, 64, 101])}",
        f"d_model = {d}",
        f"layers = {r.choice([1, 2, 3])}",
        *([f"decoder_layers = {r.choice([1, 2])}"] if arch == "encoder-decoder" else []),
        "max_positions = 48",
        "[attention]",
        f"heads = {heads}",
        f"kv_heads = {kv}",
        f"head_dim = {hd}",
        f"qkv_bias = {str(r.random() < 0.5).lower()}",
        f"out_bias = {str(r.random() < 0.5).lower()}",
        f'qk_norm = "{r.choice(["none", "none", "per-head", "full"])}"',
    ]
    if r.random() < 0.3:
        lines.append(f"scale = {r.choice([0.1, 0.3, 1.0])}")
    if r.random() < 0.25:
        lines.append(f"softcap = {r.choice([2.0, 5.0, 20.0])}")
    if r.random() < 0.3:
        lines.append(f"sliding_window = {r.choice([1, 2, 3, 5])}")
    lines += [
        "[norm]",
        f'kind = "{kind}"',
        f"eps = {r.choice([1e-5, 1e-6, 1e-3])}",
        f'placement = "{placement}"',
        f"embedding_norm = {str(r.random() < 0.3).lower()}",
        f"final_norm = {str(r.random() < 0.8).lower()}",
    ]
    if r.random() < 0.2:
        lines.append("weight_offset = 1.0")
    if kind == "layernorm" and r.random() < 0.3:
        lines.append("bias = false")
    residual = []
    if placement == "pre" and r.random() < 0.3:
        residual += ["parallel = true", f"shared_norm = {str(r.random() < 0.5).lower()}"]
    if r.random() < 0.2:
        residual.append(f"scale = {r.choice([0.25, 0.5, 2.0])}")
    if residual:
        lines += ["[residual]", *residual]
    lines += ["[positions]", f'kind = "{pos}"']
    if pos in ("learned", "sinusoidal") and r.random() < 0.3:
        lines.append("offset = 2")
    if pos == "sinusoidal" and r.random() < 0.4:
        lines.append(f'frequencies = "{r.choice(["vaswani", "tensor2tensor"])}"')
    if pos in ("rope", "sinusoidal"):
        lines.append(f'layout = "{r.choice(["half", "interleaved"])}"')
        lines.append(f"theta = {r.choice([100.0, 10000.0])}")
    if pos == "rope" and r.random() < 0.4:
        lines.append(f"fraction = {r.choice([0.25, 0.5, 0.75])}")
    if pos == "relative":
        lines += [f"buckets = {r.choice([4, 8, 16])}", f"max_distance = {r.choice([8, 20, 64])}"]
        if r.random() < 0.4:
            lines.append("per_layer = true")
    if pos == "rope" and r.random() < 0.4:
        kind = r.choice(["linear", "llama3", "yarn"])
        if kind == "linear":
            lines.append(f'scaling = {{ kind = "linear", factor = {r.choice([2.0, 4.0])} }}')
        elif kind == "llama3":
            lines.append(
                f'scaling = {{ kind = "llama3", factor = {r.choice([2.0, 8.0])}, low_freq_factor = 1.0, '
                f'high_freq_factor = 4.0, original_max_positions = {r.choice([8, 16, 32])} }}'
            )
        else:
            extra = f", attention_factor = {r.choice([1.0, 1.2])}" if r.random() < 0.3 else ""
            lines.append(
                f'scaling = {{ kind = "yarn", factor = {r.choice([2.0, 4.0])}, '
                f'original_max_positions = {r.choice([8, 16, 32])}{extra} }}'
            )
    lines += [
        "[mlp]",
        f"d_ff = {r.choice([8, 20, 40])}",
        f'activation = "{r.choice(["relu", "relu2", "gelu", "gelu-tanh", "silu"])}"',
        f"gated = {str(r.random() < 0.5).lower()}",
        f"bias = {str(r.random() < 0.5).lower()}",
    ]
    if r.random() < 0.3:
        experts = r.choice([2, 3, 4])
        lines += ["[moe]", f"experts = {experts}", f"top_k = {r.randint(1, experts)}",
                  f"renormalize = {str(r.random() < 0.5).lower()}"]
        if r.random() < 0.5:
            lines.append(f"d_ff = {r.choice([6, 12])}")
        if r.random() < 0.4:
            lines += ["[moe.shared_expert]", f"d_ff = {r.choice([4, 10])}",
                      f"gate = {str(r.random() < 0.5).lower()}"]
    emb = []
    if r.random() < 0.3:
        emb.append(f'scale = "{r.choice(["sqrt-d-model", "inv-sqrt-d-model"])}"')
    if arch == "encoder" and r.random() < 0.5:
        emb.append(f"token_types = {r.choice([1, 2])}")
    if arch != "encoder-decoder" and r.random() < 0.2:
        emb.append(f"size = {r.choice([6, 10])}")
    if emb:
        lines += ["[embeddings]", *emb]
    shared = arch != "encoder-decoder" and r.random() < 0.15
    if shared:
        lines.insert(lines.index("[attention]"), "layer_groups = 1")
    if "[moe]" in lines and not shared and r.random() < 0.4:
        at = lines.index("[moe]") + 1
        lines.insert(at, f'layers = "{r.choice(["even", "odd", "1..", "0..1", "every 2 from 1"])}"')
    kind = "lm" if arch != "encoder" else r.choice(["lm", "mlm", "pooler", "mean-pool", "none"])
    lines += ["[head]", f'kind = "{kind}"']
    if kind == "mlm" and r.random() < 0.3:
        lines.append("transform_bias = false")
    if kind in ("lm", "mlm"):
        lines.append(f"tied = {str(r.random() < 0.5).lower()}")
        if r.random() < 0.3:
            lines.append("bias = true")
        if r.random() < 0.2:
            lines.append(f"softcap = {r.choice([3.0, 30.0])}")
        if r.random() < 0.2:
            lines.append('input_scale = "inv-sqrt-d-model"')
    else:
        lines.append("tied = false")
    if kind == "mean-pool" and r.random() < 0.5:
        lines.append("normalize = true")
    # Per-layer overrides of knobs with no derived defaults.
    for _ in range(0 if shared else r.choice([0, 0, 1, 2])):
        sel = r.choice(['"even"', '"odd"', '"1.."', '"0"', "[0, 2]", '"every 2 from 1"'])
        lines += ["[[layer]]", f"select = {sel}"]
        if arch == "encoder-decoder" and r.random() < 0.5:
            lines.append(f'stack = "{r.choice(["encoder", "decoder"])}"')
        choices = ["window", "softcap", "mlp", "eps", "bias", "heads"] + (["positions"] * 2 if pos == "rope" else [])
        choice = r.choice(choices)
        if choice == "positions":
            lines.append(r.choice([
                'positions = { kind = "none" }',
                f"positions = {{ theta = {r.choice([50.0, 500.0])} }}",
                f"positions = {{ fraction = {r.choice([0.5, 1.0])} }}",
                'positions = { scaling = { kind = "linear", factor = 3.0 } }',
            ]))
        elif choice == "heads":
            # Per-layer head counts (head_dim is explicit, so nothing derived changes).
            h = r.choice([1, 2, 4])
            lines.append(f"attention = {{ heads = {h}, kv_heads = {r.choice([k for k in (1, 2) if h % k == 0])} }}")
        elif choice == "window":
            lines.append(f"attention = {{ sliding_window = {r.choice([1, 2, 4])} }}")
        elif choice == "softcap":
            lines.append(f"attention = {{ softcap = {r.choice([1.0, 4.0])} }}")
        elif choice == "mlp":
            lines.append(f'mlp = {{ d_ff = {r.choice([6, 18])}, activation = "{r.choice(["relu", "silu", "gelu"])}" }}')
        elif choice == "eps" and placement == "pre" and "parallel = true" not in lines and r.random() < 0.3:
            lines.append("norm = { attention_norm = false }")
        elif choice == "eps":
            lines.append(f"norm = {{ eps = {r.choice([1e-2, 1e-4])} }}")
        else:
            lines.append(f"attention = {{ qkv_bias = {str(r.random() < 0.5).lower()}, out_bias = true }}")
    return "\n".join(lines) + "\n"


def write_safetensors(path, tensors):
    header, blobs, at = {}, [], 0
    for name in sorted(tensors):
        b = np.ascontiguousarray(tensors[name], dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape), "data_offsets": [at, at + len(b)]}
        blobs.append(b)
        at += len(b)
    text = json.dumps(header).encode()
    text += b" " * (-(8 + len(text)) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for b in blobs:
            f.write(b)


def random_weights(r, params):
    rng = np.random.default_rng(r.randrange(1 << 30))
    w = {}
    for name, shape in params.items():
        if "norm" in name and name.endswith(".weight"):
            v = 1.0 + 0.3 * rng.standard_normal(shape)
        elif name.endswith(".bias"):
            v = 0.2 * rng.standard_normal(shape)
        else:
            v = rng.standard_normal(shape) / np.sqrt(shape[-1])
        w[name] = v.astype(np.float32)
    return w


def kiln(exe, *args):
    out = subprocess.run([exe, *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"kiln {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def rel_diff(got, want):
    scale = max(np.sqrt((want**2).mean()), 1e-30)
    err = np.abs(got - want) / np.maximum(np.abs(want), 1e-1 * scale)
    return float(err.max())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", default="target/release/kiln")
    ap.add_argument("--specs", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", default=None, help="write failing specs here")
    a = ap.parse_args()
    r = random.Random(a.seed)
    tol = 1e-4
    compared = rejected = 0
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.specs):
            text = random_spec(r)
            spec_path = os.path.join(tmp, "spec.toml")
            with open(spec_path, "w") as f:
                f.write(text)
            try:
                resolved = json.loads(kiln(a.kiln, "check", spec_path, "--format", "json"))["spec"]
            except RuntimeError:
                rejected += 1  # the validator refused the combination
                continue
            ir = kiln(a.kiln, "compile", spec_path, "--emit", "ir", "--opt-level", "0")
            params = {m[1]: tuple(int(x) for x in m[2].split(",") if x.strip()) for m in PARAM.finditer(ir)}
            w = random_weights(r, params)
            wpath = os.path.join(tmp, "w.safetensors")
            write_safetensors(wpath, w)
            w64 = {k: v.astype(np.float64) for k, v in w.items()}
            n = r.randint(1, 12)
            toks = [r.randrange(resolved["vocab_size"]) for _ in range(n)]
            dec = [r.randrange(resolved["vocab_size"]) for _ in range(r.randint(1, 6))]
            key, want = oracle.outputs(resolved, w64, toks, dec)
            extra = ["--decoder-tokens", ",".join(map(str, dec))] if resolved["architecture"] == "encoder-decoder" else []
            problems = []
            for backend in ("jit", "reference"):
                got = json.loads(kiln(a.kiln, "run", spec_path, "--weights", wpath, "--backend", backend,
                                      "--tokens", ",".join(map(str, toks)), *extra, "--format", "json"))
                if key not in got:
                    problems.append(f"{backend}: no `{key}` output (got {sorted(got)})")
                    continue
                d = rel_diff(np.array(got[key]), want)
                if not d <= tol:
                    problems.append(f"{backend}: {key} differ by {d:.2e}")
            if resolved["architecture"] == "decoder":
                # Greedy through the KV cache (kiln) against full recomputation.
                steps = 4
                got = json.loads(kiln(a.kiln, "run", spec_path, "--weights", wpath, "--tokens",
                                      ",".join(map(str, toks)), "--generate", str(steps), "--format", "json"))
                ref = oracle.greedy(resolved, w64, toks, steps)
                if got["tokens"] != ref:
                    problems.append(f"greedy: kiln {got['tokens']} vs oracle {ref}")
            compared += 1
            if problems:
                failures.append((i, text, problems))
                if a.keep:
                    os.makedirs(a.keep, exist_ok=True)
                    with open(os.path.join(a.keep, f"spec-{i}.toml"), "w") as f:
                        f.write(text)
                print(f"MISMATCH spec {i}: {'; '.join(problems)}\n{text}", flush=True)
    print(f"compared {compared} random specs ({rejected} rejected by the validator); {len(failures)} mismatches")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
