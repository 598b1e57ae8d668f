#!/usr/bin/env python3
"""Write the small hand-made seed inputs committed under tests/fuzz/seeds/.

The repository's real files (specs, configs, parity-fixture checkpoints) are
added to the working corpus by run.sh at run time; this script makes what the
repository has no small real example of: GGUF files (the tests build theirs
in memory) and safetensors files of every dtype. Deterministic; re-run it to
regenerate (python3 tests/fuzz/make_seeds.py).
"""
import json
import os
import random
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = os.path.join(HERE, "seeds")
rng = random.Random(6)


def write(target, name, data):
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---------------------------------------------------------------- safetensors

def safetensors(tensors, metadata=None):
    """tensors: list of (name, dtype, shape, bytes)."""
    header, data = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def f32s(n):
    return struct.pack(f"<{n}f", *[rng.uniform(-2, 2) for _ in range(n)])


def f16s(n):
    return struct.pack(f"<{n}e", *[rng.uniform(-2, 2) for _ in range(n)])


def bf16s(n):
    return b"".join(struct.pack("<f", rng.uniform(-2, 2))[2:] for _ in range(n))


write("safetensors", "dtypes.safetensors", safetensors([
    ("a.f32", "F32", [2, 3], f32s(6)),
    ("b.f16", "F16", [4], f16s(4)),
    ("c.bf16", "BF16", [2, 2], bf16s(4)),
    ("d.f64", "F64", [3], struct.pack("<3d", 1.5, -2.0, 1e300)),
    ("e.i64", "I64", [2], struct.pack("<2q", 0, 7)),
    ("f.scalar", "F32", [], f32s(1)),
    ("g.empty", "F32", [0, 4], b""),
], metadata={"format": "pt"}))

# A GPT-2-named checkpoint small enough to commit (the fuzz target plans it
# against the gpt2 parity fixture, which it does not fit: a shape problem).
write("safetensors", "gpt2-names.safetensors", safetensors([
    ("wte.weight", "F32", [4, 2], f32s(8)),
    ("wpe.weight", "F32", [2, 2], f32s(4)),
    ("h.0.attn.c_attn.weight", "F32", [2, 6], f32s(12)),
    ("h.0.attn.c_attn.bias", "F16", [6], f16s(6)),
    ("h.0.attn.bias", "BOOL", [1, 1, 2, 2], bytes([1, 0, 1, 1])),
    ("ln_f.weight", "BF16", [2], bf16s(2)),
]))

# ----------------------------------------------------------------------- gguf

T = {"U8": 0, "I8": 1, "U16": 2, "I16": 3, "U32": 4, "I32": 5, "F32": 6,
     "BOOL": 7, "STR": 8, "ARR": 9, "U64": 10, "I64": 11, "F64": 12}
FMT = {"U8": "<B", "I8": "<b", "U16": "<H", "I16": "<h", "U32": "<I",
       "I32": "<i", "F32": "<f", "BOOL": "<?", "U64": "<Q", "I64": "<q",
       "F64": "<d"}
# ggml type: (id, block size, bytes per block)
GG = {"F32": (0, 1, 4), "F16": (1, 1, 2), "Q4_0": (2, 32, 18),
      "Q4_1": (3, 32, 20), "Q5_0": (6, 32, 22), "Q5_1": (7, 32, 24),
      "Q8_0": (8, 32, 34), "Q2_K": (10, 256, 84), "Q3_K": (11, 256, 110),
      "Q4_K": (12, 256, 144), "Q5_K": (13, 256, 176), "Q6_K": (14, 256, 210),
      "F64": (28, 1, 8), "BF16": (30, 1, 2), "IQ4_NL": (20, 32, 18)}


def gstr(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gval(ty, v):
    if ty == "STR":
        return gstr(v)
    if ty.startswith("ARR:"):
        et = ty[4:]
        out = struct.pack("<IQ", gtype(et), len(v))
        return out + b"".join(gval(et, x) for x in v)
    return struct.pack(FMT[ty], v)


def gtype(ty):
    return T["ARR"] if ty.startswith("ARR:") else T[ty]


def block(ty):
    """Random bytes for one block, with small f16 scales so values are finite."""
    _, _, size = GG[ty]
    b = bytearray(rng.getrandbits(8) for _ in range(size))
    scale = struct.pack("<e", rng.uniform(0.001, 0.05))
    if ty in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "IQ4_NL"):
        b[0:2] = scale
    if ty in ("Q4_1", "Q5_1", "Q4_K", "Q5_K"):
        b[2:4] = scale
    if ty == "Q2_K":
        b[80:82] = scale
        b[82:84] = scale
    if ty == "Q3_K":
        b[108:110] = scale
    if ty == "Q6_K":
        b[208:210] = scale
    return bytes(b)


def tensor_data(ty, ne):
    n = 1
    for d in ne:
        n *= d
    if ty == "F32":
        return f32s(n)
    if ty == "F16":
        return f16s(n)
    if ty == "BF16":
        return bf16s(n)
    if ty == "F64":
        return struct.pack(f"<{n}d", *[rng.uniform(-1, 1) for _ in range(n)])
    _, bs, _ = GG[ty]
    return b"".join(block(ty) for _ in range(n // bs))


def gguf(kv, tensors, alignment=32):
    """kv: list of (key, type, value); tensors: list of (name, ne, type)."""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv))
    for k, ty, v in kv:
        out += gstr(k) + struct.pack("<I", gtype(ty)) + gval(ty, v)
    datas, off = [], 0
    for name, ne, ty in tensors:
        raw = tensor_data(ty, ne)
        out += gstr(name) + struct.pack("<I", len(ne))
        out += b"".join(struct.pack("<Q", d) for d in ne)
        out += struct.pack("<IQ", GG[ty][0], off)
        pad = -len(raw) % alignment
        datas.append(raw + b"\0" * pad)
        off += len(raw) + pad
    out += b"\0" * (-len(out) % alignment)
    return out + b"".join(datas)


# GPT-2 byte-level alphabet for "Hello world" and a few merges.
def byte_char(b):
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs, n = bs[:], 0
    for x in range(256):
        if x not in bs:
            bs.append(x)
            cs.append(256 + n)
            n += 1
    return chr(dict(zip(bs, cs))[b])


chars = sorted({byte_char(b) for b in "Hello world, 123 héllo!".encode()})
merges = ["H e", "l l", "He ll", "Ġ w", "o r"]
tokens = ["<|endoftext|>", "<s>"] + chars + [m.replace(" ", "") for m in merges] + ["<user>"]
types = [3, 3] + [1] * (len(chars) + len(merges)) + [4]
tokenizer_kv = [
    ("tokenizer.ggml.model", "STR", "gpt2"),
    ("tokenizer.ggml.pre", "STR", "smollm"),
    ("tokenizer.ggml.tokens", "ARR:STR", tokens),
    ("tokenizer.ggml.token_type", "ARR:I32", types),
    ("tokenizer.ggml.merges", "ARR:STR", merges),
    ("tokenizer.ggml.bos_token_id", "U32", 1),
    ("tokenizer.ggml.eos_token_id", "U32", 0),
    ("tokenizer.ggml.add_bos_token", "BOOL", True),
]

# A one-block llama (d_model 32, 4 heads, 2 KV heads) in 32-block quant types.
vocab, d, ff = len(tokens), 32, 64
llama_kv = [
    ("general.architecture", "STR", "llama"),
    ("general.name", "STR", "fuzz-tiny"),
    ("general.alignment", "U32", 32),
    ("llama.context_length", "U32", 64),
    ("llama.embedding_length", "U32", d),
    ("llama.block_count", "U32", 1),
    ("llama.feed_forward_length", "U32", ff),
    ("llama.attention.head_count", "U32", 4),
    ("llama.attention.head_count_kv", "U32", 2),
    ("llama.attention.layer_norm_rms_epsilon", "F32", 1e-5),
    ("llama.rope.freq_base", "F32", 10000.0),
    ("llama.rope.dimension_count", "U32", 8),
]
write("gguf", "llama-tiny.gguf", gguf(llama_kv + tokenizer_kv, [
    ("token_embd.weight", [d, vocab], "F16"),
    ("blk.0.attn_norm.weight", [d], "BF16"),
    ("blk.0.attn_q.weight", [d, d], "Q8_0"),
    ("blk.0.attn_k.weight", [d, 16], "Q4_0"),
    ("blk.0.attn_v.weight", [d, 16], "Q4_1"),
    ("blk.0.attn_output.weight", [d, d], "Q5_0"),
    ("blk.0.ffn_norm.weight", [d], "F32"),
    ("blk.0.ffn_gate.weight", [d, ff], "Q5_1"),
    ("blk.0.ffn_up.weight", [d, ff], "Q4_0"),
    ("blk.0.ffn_down.weight", [ff, d], "Q8_0"),
    ("output_norm.weight", [d], "F32"),
]))

write("gguf", "tokenizer.gguf", gguf(tokenizer_kv, []))

# One tensor of every other dequantised type (K-quants: 256-element blocks).
write("gguf", "kquants.gguf", gguf(
    [("general.architecture", "STR", "llama"),
     ("general.alignment", "U32", 16),
     ("nested", "ARR:ARR:U8", [[1, 2], [3]]),
     ("floats", "ARR:F64", [0.5, -1.0]),
     ("flags", "ARR:BOOL", [True, False])],
    [(f"{ty.lower()}.weight", [256], ty)
     for ty in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")]
    + [("f64.weight", [2, 2], "F64"), ("iq4.weight", [32], "IQ4_NL")],
    alignment=16))

# -------------------------------------------------------------- spec/hf_config

write("spec", "extends-local.toml",
      b'extends = "gpt2"\nname = "fuzz"\nlayers = 2\n\n[[layer]]\nselect = "odd"\n'
      b'attention.sliding_window = 4\n')
write("spec", "moe-layers.toml",
      b'extends = "../mixtral-8x7b.toml"\nname = "moe"\nlayers = 3\nd_model = 64\n'
      b'vocab_size = 100\n[attention]\nheads = 4\nkv_heads = 2\n[mlp]\nd_ff = 32\n'
      b'[moe]\nexperts = 4\ntop_k = 2\nlayers = [0, 2]\n')
write("hf_config", "llama-rope-scaling.json", json.dumps({
    "model_type": "llama", "vocab_size": 100, "hidden_size": 32,
    "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "max_position_embeddings": 128,
    "rope_scaling": {"rope_type": "yarn", "factor": 4.0,
                     "original_max_position_embeddings": 32},
    "tie_word_embeddings": True}, indent=1).encode())

print("seeds written to", SEEDS)
