"""kiln from Python against Hugging Face transformers.

1. The committed fixtures (tests/parity/fixtures: tiny seeded HF models, transformers' outputs, and the
   GGUF files llama.cpp's converter wrote from them): every one through ``kiln.open``, to 1e-4 as
   tests/parity.rs checks them from Rust.
2. Where transformers (and torch) are importable, a live comparison on a few fixtures.
"""

import json

import numpy as np
import pytest

import kiln
from conftest import PARITY, read_safetensors

TOL = 1e-4
FIXTURES = sorted(p for p in (PARITY / "fixtures").iterdir() if p.is_dir())
GGUF = [p for p in FIXTURES if (p / "model.gguf").exists()]


def close(got, want, what):
    got = np.asarray(got, dtype=np.float32)
    want = np.asarray(want, dtype=np.float32)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    d = float(np.max(np.abs(got - want))) if got.size else 0.0
    assert d <= TOL, f"{what}: max |diff| = {d:.2e}"


def test_every_fixture_is_here():
    assert len(FIXTURES) >= 72 and len(GGUF) >= 20


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.name)
def test_fixture_matches_transformers(fixture):
    exp = read_safetensors(fixture / "expected.safetensors")
    ids = exp["input_ids"][0]
    m = kiln.open(fixture)
    if m.architecture == "decoder":
        close(m.forward(ids), exp["logits"][0], "logits")
    elif m.architecture == "encoder":
        out = m.outputs(ids)
        close(out["hidden"][0], exp["last_hidden_state"][0], "last_hidden_state")
        if "logits" in exp:
            close(out["logits"][0], exp["logits"][0], "logits (MLM head)")
        if "pooler_output" in exp:
            close(out["pooled"][0], exp["pooler_output"][0], "pooler_output")
    else:
        dec = exp["decoder_input_ids"][0]
        close(m.forward(ids, decoder_ids=dec), exp["logits"][0], "logits")


@pytest.mark.parametrize("fixture", GGUF, ids=lambda p: p.name)
def test_gguf_fixture_matches_transformers(fixture):
    exp = read_safetensors(fixture / "expected.safetensors")
    m = kiln.open(fixture / "model.gguf")
    close(m.forward(exp["input_ids"][0]), exp["logits"][0], "logits")


LIVE = ["llama", "gpt2", "bert", "t5"]


@pytest.mark.parametrize("family", LIVE)
def test_live_transformers(family):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    fixture = PARITY / "fixtures" / family
    meta = json.loads((fixture / "meta.json").read_text())
    cls = getattr(transformers, meta["hf_class"])
    hf = cls.from_pretrained(fixture, attn_implementation="eager", torch_dtype=torch.float32).eval()
    ids = [5, 9, 17, 33, 2, 64, 100, 7]
    m = kiln.open(fixture)
    x = torch.tensor([ids])
    with torch.no_grad():
        if m.architecture == "decoder":
            close(m.forward(ids), hf(input_ids=x).logits[0].numpy(), "logits")
            want = hf.generate(x, max_new_tokens=8, do_sample=False, pad_token_id=0)[0, len(ids):].tolist()
            got = list(m.generate_ids(ids, max_tokens=8))
            n = min(len(got), len(want))
            assert got[:n] == want[:n]
        elif m.architecture == "encoder":
            base = hf.base_model if hasattr(hf, "base_model") else hf
            close(m.outputs(ids)["hidden"][0], base(input_ids=x).last_hidden_state[0].numpy(), "hidden")
        else:
            dec = [0, 11, 12]
            want = hf(input_ids=x, decoder_input_ids=torch.tensor([dec])).logits[0].numpy()
            close(m.forward(ids, decoder_ids=dec), want, "logits")
