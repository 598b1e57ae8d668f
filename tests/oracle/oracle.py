"""A second implementation of kiln's spec language, written from docs/spec.md
alone (not from the lowering): float64 NumPy, one function per section of the
document. It runs a resolved spec (the `spec` object `kiln check --format json`
prints) on weights under kiln's canonical names.

Covered so far: decoder-only and encoder-only models with every `[attention]` knob (GQA,
head_dim, biases, qk-norm per-head/full, scale, softcap, sliding window),
`[norm]` (layernorm/rmsnorm, bias, affine, weight_offset, pre/post/sandwich,
embedding and final norms; `output` placement), `[residual]` (parallel, shared_norm, scale), `[positions]`
learned (offset), sinusoidal (both layouts, offset, both frequency spacings), rope (half/interleaved,
fraction, theta, scaling), alibi, relative and none, `[mlp]` (all activations,
gated, bias), `[moe]` on every layer (top-k, renormalize, shared expert and
its gate), `[embeddings]` (scale, token types), and the `lm`, `mlm`, `pooler`,
`mean-pool` and `none` heads, `embeddings.size` and `layer_groups`. Encoder-decoders too (cross-attention, sequential and parallel).
T5 relative buckets (shared or per layer), RoPE scaling (linear, llama3, yarn), `[[layer]]`
overrides (a RoPE layer's `positions` too: kind none, theta, fraction, scaling) and
`moe.layers` selectors too.
"""

import math

import numpy as np


def selects(sel, i, n):
    """docs/spec.md "Selectors": whether selector `sel` picks layer `i` of `n`."""
    if isinstance(sel, list):
        return i in sel
    s = sel.strip()
    if s == "all":
        return True
    if s == "even":
        return i % 2 == 0
    if s == "odd":
        return i % 2 == 1
    if s.startswith("every "):
        parts = s.split()
        step, start = int(parts[1]), int(parts[3]) if len(parts) == 4 else 0
        return i >= start and (i - start) % step == 0
    if ".." in s:
        a, b = s.split("..")
        return int(a) <= i < (int(b) if b else n)
    return i == int(s)


def merged(base, over):
    out = dict(base)
    for k, v in over.items():
        out[k] = merged(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


def layer_spec(spec, i, stack_name, n):
    """The spec layer `i` of a stack sees: `[[layer]]` entries that select it
    (in file order) deep-merged over the model-wide sections, and `[moe]`
    only where `moe.layers` picks it."""
    out = dict(spec)
    for entry in spec.get("layer") or []:
        if entry.get("stack", stack_name) != stack_name or not selects(entry["select"], i, n):
            continue
        for section in ("attention", "mlp", "norm", "residual", "positions"):
            if section in entry:
                out[section] = merged(out[section], entry[section])
    moe = spec.get("moe")
    if moe and moe.get("layers") is not None and not selects(moe["layers"], i, n):
        out["moe"] = None
    return out


def scale_value(v, d):
    if v == "sqrt-d-model":
        return math.sqrt(d)
    if v == "inv-sqrt-d-model":
        return 1.0 / math.sqrt(d)
    return float(v)


def activation(name, x):
    if name == "relu":
        return np.maximum(x, 0.0)
    if name == "relu2":
        return np.maximum(x, 0.0) ** 2
    if name == "gelu":
        erf = np.vectorize(math.erf)
        return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))
    if name == "gelu-tanh":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    if name == "silu":
        return x / (1.0 + np.exp(-x))
    raise ValueError(f"activation {name}")


def norm(n, w, prefix, x):
    """`[norm]` over the last axis; parameters `{prefix}.weight` / `.bias`."""
    eps = n["eps"]
    if n["kind"] == "layernorm":
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        y = (x - mu) / np.sqrt(var + eps)
    else:
        y = x / np.sqrt((x**2).mean(-1, keepdims=True) + eps)
    if n["affine"]:
        y = y * (n["weight_offset"] + w[f"{prefix}.weight"])
        if n["kind"] == "layernorm" and n["bias"]:
            y = y + w[f"{prefix}.bias"]
    return y


def linear(w, prefix, x, bias):
    y = x @ w[f"{prefix}.weight"].T
    if bias:
        y = y + w[f"{prefix}.bias"]
    return y


def rotary_dims(p, hd):
    r = int(round(hd * p.get("fraction", 1.0)))
    return r - r % 2


def rope(p, x, pos):
    """x: [seq, heads, hd]; rotates the first `rotary_dims` channels."""
    hd = x.shape[-1]
    r = rotary_dims(p, hd)
    if r == 0:
        return x
    theta = p.get("theta", 10000.0)
    half = r // 2
    inv, mscale = rope_scaling(p.get("scaling"), theta ** (-2.0 * np.arange(half) / r), r, theta)
    ang = pos[:, None] * inv[None, :]  # [seq, half]
    cos = mscale * np.cos(ang)[:, None, :]
    sin = mscale * np.sin(ang)[:, None, :]
    out = x.copy()
    rot = x[..., :r]
    if p.get("layout", "half") == "half":
        a, b = rot[..., :half], rot[..., half:]
        out[..., :half] = a * cos - b * sin
        out[..., half:r] = b * cos + a * sin
    else:
        a, b = rot[..., 0::2], rot[..., 1::2]
        out[..., 0:r:2] = a * cos - b * sin
        out[..., 1:r:2] = b * cos + a * sin
    return out


def rope_scaling(sc, f, r, theta):
    """`[positions.scaling]`: the scaled frequencies and the cos/sin factor."""
    if not sc:
        return f, 1.0
    kind, factor = sc["kind"], sc["factor"]
    if kind == "linear":
        return f / factor, 1.0
    orig = sc["original_max_positions"]
    if kind == "llama3":
        lo, hi = sc["low_freq_factor"], sc["high_freq_factor"]
        wavelen = 2 * math.pi / f
        smooth = (orig / wavelen - lo) / (hi - lo)
        blended = (1 - smooth) * f / factor + smooth * f
        out = np.where(wavelen < orig / hi, f, np.where(wavelen > orig / lo, f / factor, blended))
        return out, 1.0
    # yarn
    corr = lambda b: r * math.log(orig / (b * 2 * math.pi)) / (2 * math.log(theta))  # noqa: E731
    low = max(math.floor(corr(sc.get("beta_fast", 32.0))), 0)
    high = min(math.ceil(corr(sc.get("beta_slow", 1.0))), r - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(len(f)) - low) / (high - low), 0.0, 1.0)
    out = f * (1 - ramp) + (f / factor) * ramp
    m = sc.get("attention_factor")
    if m is None:
        m = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0
    return out, m


def t5_bucket(rel, bidirectional, buckets, max_distance):
    """T5's relative-position bucket of `rel = key - query` (transformers'
    `_relative_position_bucket`, its logarithm taken in float32 like torch)."""
    nb, ret = buckets, 0
    if bidirectional:
        nb //= 2
        ret = nb if rel > 0 else 0
        n = abs(rel)
    else:
        n = max(-rel, 0)
    exact = nb // 2
    if n < exact:
        return ret + n
    f32 = np.float32
    large = exact + int(f32(np.log(f32(n) / f32(exact)) / np.log(f32(max_distance) / f32(exact)) * f32(nb - exact)))
    return ret + min(large, nb - 1)


def relative_bias(p, w, prefix, seq, keys, causal):
    """`relative`: the learned bias of each head `[heads, seq, keys]`."""
    table = w[f"{prefix}positions.relative_bias"]  # [buckets, heads]
    b = np.array([[t5_bucket(j - i, not causal, p["buckets"], p["max_distance"]) for j in range(keys)]
                  for i in range(seq)])
    return np.transpose(table[b], (2, 0, 1))


def alibi_slopes(n):
    c = 1 << int(math.floor(math.log2(n)))
    s = [2.0 ** (-8.0 * k / c) for k in range(1, c + 1)]
    s += [2.0 ** (-8.0 * k / (2 * c)) for k in range(1, 2 * (n - c), 2)]
    return np.array(s[:n])


def sinusoidal(p, d, pos):
    half = d // 2
    theta = p.get("theta", 10000.0)
    if p.get("frequencies", "vaswani") == "tensor2tensor":
        inv = 1.0 / theta ** (np.arange(half) / (half - 1))
    else:
        inv = 1.0 / theta ** (2.0 * np.arange(half) / d)
    a = (pos[:, None] + p.get("offset", 0)) * inv[None, :]
    if p.get("layout", "interleaved") == "half":
        return np.concatenate([np.sin(a), np.cos(a)], -1)
    out = np.zeros((len(pos), d))
    out[:, 0 : 2 * half : 2] = np.sin(a)
    out[:, 1 : 2 * half : 2] = np.cos(a)
    return out


def attention(spec, w, pre, x, pos, causal=True, source=None, prefix=""):
    """Self-attention of `x`, or with `source` (the encoder's output)
    cross-attention: keys and values from it, no positions, no window."""
    a, n, p = spec["attention"], spec["norm"], spec["positions"]
    seq = x.shape[0]
    h, kvh, hd = a["heads"], a["kv_heads"], a["head_dim"]
    kv_in = x if source is None else source
    keys = kv_in.shape[0]
    q = linear(w, f"{pre}.q", x, a["qkv_bias"])
    k = linear(w, f"{pre}.k", kv_in, a["qkv_bias"])
    v = linear(w, f"{pre}.v", kv_in, a["qkv_bias"]).reshape(keys, kvh, hd)
    qk = a.get("qk_norm", "none")
    if qk == "full":
        q, k = norm(n, w, f"{pre}.q_norm", q), norm(n, w, f"{pre}.k_norm", k)
    q, k = q.reshape(seq, h, hd), k.reshape(keys, kvh, hd)
    if qk == "per-head":
        q, k = norm(n, w, f"{pre}.q_norm", q), norm(n, w, f"{pre}.k_norm", k)
    if p["kind"] == "rope" and source is None:
        q, k = rope(p, q, pos), rope(p, k, pos)
    group = h // kvh
    out = np.zeros((seq, h, hd))
    qi, kj = np.arange(seq)[:, None], np.arange(keys)[None, :]
    mask = kj <= qi if causal else np.ones((seq, keys), dtype=bool)
    if source is not None:
        mask = np.ones((seq, keys), dtype=bool)
    elif a.get("sliding_window"):
        if causal:
            mask &= (qi - kj) < a["sliding_window"]
        else:
            mask &= np.abs(qi - kj) < a["sliding_window"]
    slopes = alibi_slopes(h) if p["kind"] == "alibi" and source is None else None
    rel_prefix = pre[: -len("attn")] if p.get("per_layer") else prefix  # `layers.{i}.` of this block
    rel = relative_bias(p, w, rel_prefix, seq, keys, causal) if p["kind"] == "relative" and source is None else None
    for hh in range(h):
        g = hh // group
        s = a["scale"] * (q[:, hh, :] @ k[:, g, :].T)
        if a.get("softcap"):
            s = a["softcap"] * np.tanh(s / a["softcap"])
        if slopes is not None:
            s = s + (slopes[hh] * (kj - qi) if causal else -slopes[hh] * np.abs(kj - qi))
        if rel is not None:
            s = s + rel[hh]
        s = np.where(mask, s, np.finfo(np.float32).min)
        s = s - s.max(-1, keepdims=True)
        e = np.exp(s)
        prob = e / e.sum(-1, keepdims=True)
        out[:, hh, :] = prob @ v[:, g, :]
    return linear(w, f"{pre}.o", out.reshape(seq, h * hd), a["out_bias"])


def ffn(m, w, pre, x):
    """`[mlp]` with weights under `pre` (`up`, `gate`, `down`)."""
    up = linear(w, f"{pre}.up", x, m["bias"])
    if m["gated"]:
        hidden = activation(m["activation"], linear(w, f"{pre}.gate", x, m["bias"])) * up
    else:
        hidden = activation(m["activation"], up)
    return linear(w, f"{pre}.down", hidden, m["bias"])


def moe(spec, w, pre, x):
    """`[moe]`: softmax router, the top-k experts per token, weighted sum."""
    m, e = spec["mlp"], spec["moe"]
    probs = x @ w[f"{pre}.router.weight"].T
    probs = np.exp(probs - probs.max(-1, keepdims=True))
    probs = probs / probs.sum(-1, keepdims=True)
    out = np.zeros_like(x)
    for t in range(x.shape[0]):
        # Highest probability first; ties go to the lower expert index.
        top = sorted(range(e["experts"]), key=lambda j: (-probs[t, j], j))[: e["top_k"]]
        weights = probs[t, top]
        if e["renormalize"]:
            weights = weights / weights.sum()
        for j, g in zip(top, weights):
            # Expert j: row j of each stacked `experts.*` parameter.
            ew = {f"x.{k[len(pre) + 9:]}": v[j] for k, v in w.items() if k.startswith(f"{pre}.experts.")}
            out[t] += g * ffn(m, ew, "x", x[t : t + 1])[0]
    sh = e.get("shared_expert")
    if sh:
        s = ffn(m, w, f"{pre}.shared", x)
        if sh.get("gate"):
            s = s / (1.0 + np.exp(-(x @ w[f"{pre}.shared_gate.weight"].T)))
        out = out + s
    return out


def mlp(spec, w, pre, x):
    if spec.get("moe"):
        return moe(spec, w, f"{pre}.moe", x)
    return ffn(spec["mlp"], w, f"{pre}.mlp", x)


def block(spec, w, pre, x, pos, causal=True, source=None, prefix=""):
    """One block under parameter prefix `pre` (`layers.3`, `decoder.layers.0`);
    with `source`, a decoder block of an encoder-decoder (cross-attention)."""
    n, r = spec["norm"], spec["residual"]
    attn = lambda h: attention(spec, w, f"{pre}.attn", h, pos, causal, prefix=prefix)  # noqa: E731
    cross = lambda h: attention(spec, w, f"{pre}.cross_attn", h, pos, False, source)  # noqa: E731
    ffn_ = lambda h: mlp(spec, w, pre, h)  # noqa: E731
    sc = r.get("scale", 1.0)
    if r["parallel"]:
        n1 = norm(n, w, f"{pre}.attn_norm", x)
        n2 = n1 if r["shared_norm"] else norm(n, w, f"{pre}.mlp_norm", x)
        y = attn(n1) + ffn_(n2)
        if source is not None:
            nc = n1 if r["shared_norm"] else norm(n, w, f"{pre}.cross_norm", x)
            y = y + cross(nc)
        return x + sc * y
    subs = [("attn", attn)] + ([("cross", cross)] if source is not None else []) + [("mlp", ffn_)]
    for name, f in subs:
        if n["placement"] == "pre":
            h = x if name == "attn" and n.get("attention_norm", True) is False else norm(n, w, f"{pre}.{name}_norm", x)
            x = x + sc * f(h)
        elif n["placement"] == "post":
            x = norm(n, w, f"{pre}.{name}_norm", x + sc * f(x))
        elif n["placement"] == "output":
            x = x + sc * norm(n, w, f"{pre}.{name}_post_norm", f(x))
        else:  # sandwich
            y = f(norm(n, w, f"{pre}.{name}_norm", x))
            x = x + sc * norm(n, w, f"{pre}.{name}_post_norm", y)
    return x


def stack(spec, w, tokens, causal, prefix="", layers=None, source=None):
    """Embeddings, the blocks and the final norm: hidden states [seq, d].
    `prefix` is `encoder.` / `decoder.` for the stacks of an
    encoder-decoder (the token embedding is shared, unprefixed)."""
    d, n, p = spec["d_model"], spec["norm"], spec["positions"]
    tokens = np.asarray(tokens)
    pos = np.arange(len(tokens), dtype=np.float64)
    x = w["embed.tokens"][tokens] * scale_value(spec["embeddings"]["scale"], d)
    if spec["embeddings"].get("token_types", 0) > 0:
        x = x + w["embed.token_types"][0]  # one segment: type 0
    if p["kind"] == "learned":
        x = x + w[f"{prefix}embed.positions"][np.arange(len(tokens)) + p.get("offset", 0)]
    elif p["kind"] == "sinusoidal":
        x = x + sinusoidal(p, x.shape[-1], pos)
    if n["embedding_norm"]:
        x = norm(n, w, f"{prefix}embed.norm", x)
    if x.shape[-1] != d:  # embeddings.size: project to d_model
        x = linear(w, f"{prefix}embed.project", x, True)
    n_layers = spec["layers"] if layers is None else layers
    stack_name = "decoder" if prefix == "decoder." else "encoder"
    groups = spec.get("layer_groups") or n_layers
    for i in range(n_layers):
        ls = layer_spec(spec, i, stack_name, n_layers)
        g = i // (n_layers // groups)
        x = block(ls, w, f"{prefix}layers.{g}", x, pos, causal, source, prefix)
    if n["final_norm"]:
        x = norm(n, w, f"{prefix}final_norm", x)
    return x


def vocab_logits(spec, w, x):
    hd = spec["head"]
    table = w["embed.tokens"] if hd["tied"] else w["head.weight"]
    logits = x @ table.T
    if hd["bias"]:
        logits = logits + w["head.bias"]
    if hd.get("softcap"):
        logits = hd["softcap"] * np.tanh(logits / hd["softcap"])
    return logits


def head(spec, w, x):
    """`[head]`: `(output name, values)` as the model returns its main output."""
    hd, d = spec["head"], spec["d_model"]
    kind = hd["kind"]
    if kind == "lm":
        return "logits", vocab_logits(spec, w, x * scale_value(hd["input_scale"], d))
    if kind == "mlm":
        t = activation(spec["mlp"]["activation"],
                       linear(w, "head.transform.dense", x, spec["head"].get("transform_bias", True)))
        t = norm(spec["norm"], w, "head.transform.norm", t)
        return "logits", vocab_logits(spec, w, t * scale_value(hd["input_scale"], d))
    if kind == "pooler":
        return "pooled", np.tanh(linear(w, "head.pooler.dense", x[:1], True))
    if kind == "mean-pool":
        v = x.mean(0, keepdims=True)
        if hd.get("normalize"):
            v = v / np.linalg.norm(v)
        return "embedding", v
    return "hidden", x


def outputs(spec, w, tokens, decoder_tokens=None):
    """The main output for one unpadded sequence: `(name, [rows, width])`.
    Encoder-decoders encode `tokens` and decode `decoder_tokens`."""
    arch = spec["architecture"]
    if arch == "encoder-decoder":
        src = stack(spec, w, tokens, False, "encoder.")
        layers = spec.get("decoder_layers") or spec["layers"]
        x = stack(spec, w, decoder_tokens, True, "decoder.", layers, src)
        return head(spec, w, x)
    return head(spec, w, stack(spec, w, tokens, arch == "decoder"))


def decoder_logits(spec, w, tokens):
    """Logits [seq, vocab] of a decoder-only spec for one unpadded sequence."""
    return outputs(spec, w, tokens)[1]


def greedy(spec, w, prompt, steps):
    """Greedy continuation, recomputing the whole sequence each step."""
    toks = list(prompt)
    out = []
    for _ in range(steps):
        nxt = int(np.argmax(decoder_logits(spec, w, toks)[-1]))
        out.append(nxt)
        toks.append(nxt)
    return out
