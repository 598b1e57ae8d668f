"""The two real checkpoints (tests/parity/fetch_real.sh; KILN_MINILM_DIR / KILN_SMOLLM2_GGUF, skipped when
absent unless KILN_REQUIRE_REAL=1): outputs equal the kiln command's and the committed transformers /
sentence-transformers references (tests/parity/real)."""

import json

import numpy as np
import pytest

import kiln
from conftest import PARITY, read_safetensors

REAL = PARITY / "real"


def cosine(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    return kiln.open(minilm_dir)


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):
    return kiln.open(smollm2_gguf)


def test_minilm_embed_equals_kiln_embed_and_sentence_transformers(minilm, minilm_dir, cli_json):
    ref = json.loads((REAL / "minilm_embeddings.json").read_text())
    sentences = ref["sentences"]
    assert minilm.architecture == "encoder" and minilm.embedding_dim == 384
    for s, ids in zip(sentences, ref["token_ids"]):
        assert minilm.tokenize(s) == ids
    got = minilm.embed(sentences)
    assert got.dtype == np.float32 and got.shape == (len(sentences), 384)
    want = np.array(cli_json("embed", minilm_dir, *sentences)["embeddings"], dtype=np.float32)
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    for i, e in enumerate(ref["embeddings"]):
        assert cosine(got[i], e) >= 0.9999, sentences[i]
    one = minilm.embed(sentences[0])
    assert one.shape == (384,)
    np.testing.assert_allclose(one, got[0], atol=1e-5, rtol=0)


def test_smollm2_greedy_text_equals_kiln_generate(smollm2, smollm2_gguf, cli_json):
    prompt = "The capital of France is"
    gen = smollm2.generate(prompt, max_tokens=24)
    pieces = list(gen)
    want = cli_json("generate", smollm2_gguf, "--prompt", prompt, "--max-tokens", 24)
    assert "".join(pieces) == gen.text == want["text"]
    assert gen.tokens == want["tokens"] and gen.prompt_tokens == want["prompt_tokens"]
    assert gen.stopped == want["stopped"]
    assert len(pieces) > 3, "the text should arrive in pieces"


def test_smollm2_matches_transformers_reference(smollm2_gguf):
    ref = json.loads((REAL / "smollm2_reference.json").read_text())
    # transformers dequantises the GGUF to f32; kiln does the same with precision="f32".
    m = kiln.open(smollm2_gguf, precision="f32")
    prompt = ref["prompt"]
    assert m.tokenize(prompt) == ref["prompt_token_ids"]
    logits = m.forward(ref["prompt_token_ids"])
    want = read_safetensors(REAL / "smollm2_first_step.safetensors")["logits"]
    assert float(np.max(np.abs(logits[-1] - want))) <= 1e-3
    gen = m.generate(prompt, max_tokens=len(ref["greedy_ids"]))
    assert "".join(gen) == ref["greedy_text"]
    assert gen.tokens == ref["greedy_ids"]


def test_smollm2_stop_strings_and_tokenizer(smollm2, smollm2_gguf, cli_json):
    prompt = "The capital of France is"
    full = cli_json("generate", smollm2_gguf, "--prompt", prompt, "--max-tokens", 24)["text"]
    assert "\n" in full, full
    gen = smollm2.generate(prompt, max_tokens=24, stop=["\n"])
    assert "".join(gen) == full[: full.index("\n")] and gen.stopped == "stop_string"
    ids = smollm2.tokenize(full)
    assert smollm2.detokenize(ids) == full
    assert smollm2.eos_token_ids, "the GGUF names its end-of-sequence token"
    c = smollm2.cost()
    assert c == cli_json("check", smollm2_gguf)
    assert 130e6 < c["parameters"] < 140e6


def test_live_transformers_minilm(minilm, minilm_dir):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    sentences = ["A cat sits on the mat.", "Stock markets fell sharply today."]
    tok = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    hf = transformers.AutoModel.from_pretrained(minilm_dir).eval()
    batch = tok(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = hf(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    want = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    got = minilm.embed(sentences)
    for g, w in zip(got, want):
        assert cosine(g, w) >= 0.9999
