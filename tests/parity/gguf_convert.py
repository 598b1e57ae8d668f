#!/usr/bin/env python3
"""Write GGUF files from kiln's tiny parity fixtures with llama.cpp's own converter.

Each fixture in tests/parity/fixtures/<name>/ (config.json + model.safetensors, random
weights made by generate.py) is converted by llama.cpp's `convert_hf_to_gguf.py` — the
program users run to make the GGUF files they bring — to `model.gguf` beside it, at f32
so the comparison with transformers' logits (expected.safetensors) tests the mapping,
not rounding. tests/parity.rs (`every_gguf_matches_transformers*`) opens each file the
way `kiln run FILE.gguf` does and compares.

The fixtures have no tokenizer, so the converter's vocabulary step is replaced by a
byte-level one of the model's vocabulary size (`tokenizer.ggml.model = "gpt2"`); the
rest — metadata keys, tensor names, Q/K row permutation, fused tensors split or kept,
Gemma's norm offset folded in — is llama.cpp's.

    usage: tests/parity/fetch_llamacpp.sh            # the pinned converter, once
           /work/venv-parity/bin/python tests/parity/gguf_convert.py [FIXTURE ...]

With no names, every fixture listed in GGUF_FIXTURES is converted.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures"
LLAMACPP = Path(os.environ.get("KILN_LLAMACPP", "/work/llamacpp"))

# fixture → the general.architecture llama.cpp writes for it. Where llama.cpp's graph reads a
# setting differently from transformers (Gemma's query scale and layer pattern, StarCoder2's
# and Mistral's sliding windows, Qwen2-MoE's dense layers), the `-gguf` fixture generate.py
# makes without that setting is converted instead of the base one.
GGUF_FIXTURES = {
    "llama": "llama",
    # (mistral: llama.cpp reads it as `llama` and ignores its sliding window, so transformers is
    # no reference for a fixture whose window is shorter than the test sequence)
    "mixtral": "llama",
    "granite": "granite",
    "qwen2": "qwen2",
    "qwen2_moe-gguf": "qwen2moe",
    "qwen3": "qwen3",
    "qwen3_moe": "qwen3moe",
    "gemma": "gemma",
    "gemma2-gguf": "gemma2",
    "gemma3-gguf": "gemma3",
    "phi3": "phi3",
    "starcoder2-gguf": "starcoder2",
    "olmo2": "olmo2",
    "gpt2": "gpt2",
    "falcon": "falcon",
    "falcon-new": "falcon",
    "bloom": "bloom",
    "mpt": "mpt",
    "stablelm": "stablelm",
    "cohere": "command-r",
}


# config.json as the real checkpoints spell it, where transformers 5 writes it otherwise and
# llama.cpp's converter reads the older spelling.
LEGACY_CONFIG = {
    # GPT-2 checkpoints carry n_ctx (transformers 5 no longer writes it).
    "gpt2": lambda c: c.setdefault("n_ctx", c["n_positions"]),
    # Falcon-7B's multi_query form has one K/V head (transformers 5's FalconConfig reports
    # num_kv_heads = num_attention_heads, which the converter would believe).
    "falcon": lambda c: c.update(num_kv_heads=1) if c.get("multi_query") and not c.get("new_decoder_architecture") else None,
    # MosaicML's configs name the class MPTForCausalLM.
    "mpt": lambda c: c.update(architectures=["MPTForCausalLM"]),
}


def byte_chars() -> list[str]:
    """GPT-2's byte → printable character table (the byte-level alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs))
    return [chr(table[b]) for b in range(256)]


def stand_in_tokens(n: int) -> list[str]:
    """The byte symbols (as many as fit), extra tokens, and `ab` last (the one merge)."""
    chars = byte_chars()
    tokens = [chars[i] if i < 256 else f"<extra_{i}>" for i in range(n)]
    tokens[-1] = "ab"
    return tokens


def byte_vocab(self) -> None:
    """Replaces the converter's set_vocab: a byte-level vocabulary of the model's size."""
    import gguf

    n = self.hparams.get("vocab_size") or self.hparams["text_config"]["vocab_size"]
    tokens = stand_in_tokens(n)
    self.gguf_writer.add_tokenizer_model("gpt2")
    self.gguf_writer.add_tokenizer_pre("default")
    self.gguf_writer.add_token_list(tokens)
    self.gguf_writer.add_token_types([gguf.TokenType.NORMAL] * n)
    # llama.cpp requires merges for a BPE vocabulary: one, into the last token.
    self.gguf_writer.add_token_merges(["a b"])
    self.gguf_writer.add_bos_token_id(0)
    self.gguf_writer.add_eos_token_id(1)


def convert(name: str, arch: str) -> None:
    import torch
    from conversion import ModelBase, ModelType, get_model_architecture, get_model_class
    import gguf

    src = FIXTURES / name
    out = src / "model.gguf"
    with tempfile.TemporaryDirectory() as tmp:
        # The converter reads a folder: the fixture's weights, its config (legacy spellings
        # restored) and a stand-in tokenizer.json of the vocabulary's size (Gemma 3 trims
        # token_embd to the tokenizer's length).
        work = Path(tmp)
        config = json.loads((src / "config.json").read_text())
        if name in LEGACY_CONFIG:
            LEGACY_CONFIG[name](config)
        (work / "config.json").write_text(json.dumps(config))
        (work / "model.safetensors").symlink_to(src / "model.safetensors")
        n = config.get("vocab_size") or config["text_config"]["vocab_size"]
        vocab = {t: i for i, t in enumerate(stand_in_tokens(n))}
        (work / "tokenizer.json").write_text(json.dumps({"model": {"vocab": vocab}, "added_tokens": []}))
        hparams = ModelBase.load_hparams(work, False)
        cls = get_model_class(get_model_architecture(hparams, ModelType.TEXT))
        cls.set_vocab = byte_vocab
        with torch.inference_mode():
            model = cls(work, gguf.LlamaFileType.ALL_F32, out, model_name=name)
            if name in LEGACY_CONFIG:  # the converter read the config through AutoConfig
                LEGACY_CONFIG[name](model.hparams)
            model.write()
    reader = gguf.GGUFReader(out)
    got = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    if got != arch:
        raise SystemExit(f"{name}: llama.cpp wrote architecture {got!r}, expected {arch!r}")
    meta = json.loads((src / "meta.json").read_text())
    meta["gguf"] = {
        "file": "model.gguf",
        "architecture": got,
        "converter": "llama.cpp convert_hf_to_gguf.py (llama-cpp-python 0.3.36 sdist, vendor/llama.cpp)",
        "outtype": "f32",
        "vocabulary": "byte-level stand-in (the fixtures have no tokenizer)",
    }
    (src / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"{name:<12} -> {out.relative_to(HERE.parent.parent)}  ({got}, {out.stat().st_size} bytes)")


def main() -> None:
    if not (LLAMACPP / "convert_hf_to_gguf.py").exists():
        raise SystemExit(f"no converter at {LLAMACPP}; run tests/parity/fetch_llamacpp.sh (or set KILN_LLAMACPP)")
    sys.path.insert(0, str(LLAMACPP))
    sys.path.insert(1, str(LLAMACPP / "gguf-py"))
    names = sys.argv[1:] or list(GGUF_FIXTURES)
    for n in names:
        if n not in GGUF_FIXTURES:
            raise SystemExit(f"{n}: not in GGUF_FIXTURES ({', '.join(GGUF_FIXTURES)})")
        convert(n, GGUF_FIXTURES[n])


if __name__ == "__main__":
    main()
