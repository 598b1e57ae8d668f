"""kiln.open on test-sized specs (seeded random weights): outputs equal the kiln command's."""

import pathlib
import time

import numpy as np
import pytest

import kiln
from conftest import PARITY, ROOT, TINY

GPT2 = TINY / "gpt2.toml"


@pytest.fixture(scope="module")
def gpt2():
    return kiln.open(GPT2)


def kiln_threads():
    """Names of this process's threads that kiln's generation workers run on (Linux)."""
    names = []
    for comm in pathlib.Path("/proc/self/task").glob("*/comm"):
        try:
            names.append(comm.read_text().strip())
        except OSError:
            pass
    return [n for n in names if n == "kiln-generate"]


def test_properties(gpt2):
    assert (gpt2.name, gpt2.architecture) == ("gpt2-tiny", "decoder")
    assert (gpt2.vocab_size, gpt2.max_positions, gpt2.d_model) == (256, 64, 64)
    assert (gpt2.backend, gpt2.precision) == ("jit", "stored")
    assert gpt2.weights_origin == "random (seed 0)"
    assert not gpt2.has_tokenizer and gpt2.eos_token_ids == [] and gpt2.bos_token_id is None
    assert gpt2.embedding_dim is None and gpt2.warnings == []
    assert gpt2.source == str(GPT2)
    assert "gpt2-tiny" in repr(gpt2)
    assert set(kiln.backends()) >= {"jit", "reference", "kernel-ir"}
    assert gpt2.spec_text() == kiln.compile(GPT2).spec_text()


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--backend", "reference"],
        ["--backend", "kernel-ir"],
        ["--precision", "int8"],
        ["--precision", "bf16"],
        ["--seed", "7"],
        ["--opt-level", "0"],
    ],
    ids=lambda a: " ".join(a) or "default",
)
def test_forward_equals_kiln_run(args, cli_json):
    opts = dict(zip(args[0::2], args[1::2]))
    m = kiln.open(
        GPT2,
        backend=opts.get("--backend", "jit"),
        precision=opts.get("--precision", "stored"),
        seed=int(opts.get("--seed", 0)),
        opt_level=int(opts.get("--opt-level", 1)),
    )
    got = m.forward([1, 2, 3])
    want = np.array(cli_json("run", GPT2, "--tokens", "1,2,3", *args)["logits"], dtype=np.float32)
    assert got.dtype == np.float32 and got.shape == (3, 256) == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_forward_takes_numpy_ids_and_owns_kiln_buffer(gpt2):
    a = gpt2.forward(np.array([1, 2, 3], dtype=np.int64))
    b = gpt2.forward((1, 2, 3))
    np.testing.assert_array_equal(a, b)
    # The array is a view of kiln's own buffer (handed over, not copied).
    assert a.flags["C_CONTIGUOUS"] and not a.flags["OWNDATA"] and a.base is not None
    outs = gpt2.outputs([1, 2, 3])
    assert outs["logits"].shape == (1, 3, 256)
    np.testing.assert_array_equal(outs["logits"][0], a)


def test_encoder_and_encoder_decoder_equal_kiln_run(cli_json):
    bert = TINY / "bert-base-uncased.toml"
    m = kiln.open(bert)
    assert m.architecture == "encoder"
    want = cli_json("run", bert, "--tokens", "5,6,7,8")
    (key,) = want.keys()
    got = m.forward([5, 6, 7, 8])
    np.testing.assert_allclose(got, np.array(want[key], dtype=np.float32).reshape(got.shape), atol=1e-5, rtol=0)

    t5 = TINY / "t5-small.toml"
    m = kiln.open(t5)
    assert m.architecture == "encoder-decoder"
    got = m.forward([5, 6, 7], decoder_ids=[0, 4])
    want = np.array(cli_json("run", t5, "--tokens", "5,6,7", "--decoder-tokens", "0,4")["logits"], dtype=np.float32)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    toks = list(m.generate_ids([5, 6, 7], max_tokens=5))
    assert toks == cli_json("run", t5, "--tokens", "5,6,7", "--generate", 5)["tokens"]


def test_greedy_generation_equals_the_cli(gpt2, cli_json):
    gen = gpt2.generate_ids([1, 2, 3], max_tokens=10)
    assert gen.stopped is None
    toks = list(gen)
    assert toks == cli_json("run", GPT2, "--tokens", "1,2,3", "--generate", 10)["tokens"]
    g = cli_json("generate", GPT2, "--tokens", "1,2,3", "--max-tokens", 10)
    assert toks == g["tokens"] and g["stopped"] == gen.stopped == "max_tokens"
    assert gen.tokens == toks and gen.prompt_tokens == [1, 2, 3] and gen.text == ""
    assert list(gen) == []  # exhausted


def test_sampling_and_stop_ids_equal_the_cli(gpt2, cli_json):
    kw = dict(max_tokens=20, temperature=0.9, top_k=40, top_p=0.95, seed=11)
    toks = list(gpt2.generate_ids([4, 5], **kw))
    g = cli_json(
        "generate", GPT2, "--tokens", "4,5", "--max-tokens", 20, "--temperature", 0.9,
        "--top-k", 40, "--top-p", 0.95, "--sample-seed", 11,
    )
    assert toks == g["tokens"]
    assert toks != list(gpt2.generate_ids([4, 5], max_tokens=20)), "sampling should leave the greedy path"
    # Stop at the third distinct token generated.
    stop = toks[2]
    gen = gpt2.generate_ids([4, 5], stop=[stop], **kw)
    got = list(gen)
    assert got == toks[: toks.index(stop) + 1] and gen.stopped == "stop_token"
    g = cli_json(
        "generate", GPT2, "--tokens", "4,5", "--max-tokens", 20, "--temperature", 0.9,
        "--top-k", 40, "--top-p", 0.95, "--sample-seed", 11, "--stop", stop,
    )
    assert got == g["tokens"] and g["stopped"] == "stop_token"
    assert list(gpt2.generate_ids([4, 5], stop=stop, **kw)) == got


def test_generation_ends_at_the_context(gpt2, cli_json):
    gen = gpt2.generate_ids([1, 2, 3], max_tokens=100)
    toks = list(gen)
    # Every position is used: the prompt and all generated tokens but the last were fed.
    assert len(toks) == 64 - 3 + 1
    g = cli_json("generate", GPT2, "--tokens", "1,2,3", "--max-tokens", 100)
    assert toks == g["tokens"] and gen.stopped == g["stopped"] == "context"


def test_closing_or_dropping_a_generation_stops_its_worker(tmp_path):
    spec = tmp_path / "long.toml"
    spec.write_text(f'extends = "{GPT2}"\nname = "long"\nmax_positions = 4096\n')
    m = kiln.open(spec)
    assert kiln_threads() == []
    gen = m.generate_ids([1, 2, 3], max_tokens=4000)
    first = [next(gen), next(gen)]
    assert kiln_threads() == ["kiln-generate"]
    gen.close()
    assert kiln_threads() == [] and gen.stopped == "closed"
    assert first == gen.tokens[:2] and len(gen.tokens) == 2
    assert list(gen) == []

    gen = m.generate_ids([1, 2, 3], max_tokens=4000)
    next(gen)
    del gen
    deadline = time.monotonic() + 10
    while kiln_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert kiln_threads() == []

    with m.generate_ids([1, 2, 3], max_tokens=4000) as gen:
        next(gen)
    assert gen.stopped == "closed" and kiln_threads() == []


def test_text_generation_and_stop_strings(cli_json):
    # llama.cpp's converter wrote this GGUF with a byte-level stand-in tokenizer.
    gguf = PARITY / "fixtures" / "llama" / "model.gguf"
    m = kiln.open(gguf)
    assert m.has_tokenizer
    prompt = "kiln"
    ids = m.tokenize(prompt)
    assert ids and m.detokenize(ids) == prompt
    gen = m.generate(prompt, max_tokens=24)
    pieces = list(gen)
    text = "".join(pieces)
    want = cli_json("generate", gguf, "--prompt", prompt, "--max-tokens", 24)
    assert gen.tokens == want["tokens"] and gen.prompt_tokens == want["prompt_tokens"]
    assert text == gen.text == want["text"] and gen.stopped == want["stopped"]
    assert all(isinstance(p, str) and p for p in pieces)
    # A stop string from the middle: everything before it is yielded, it and the rest are not.
    visible = text.strip("\ufffd")
    assert len(visible) >= 6, f"generated text too short to cut: {text!r}"
    stop = visible[len(visible) // 2 : len(visible) // 2 + 2]
    gen = m.generate(prompt, max_tokens=24, stop=["never-in-the-text", stop])
    got = "".join(gen)
    assert got == text[: text.index(stop)] and gen.stopped == "stop_string"
    # The token completing the stop string was generated; nothing after it.
    assert len(gen.tokens) <= len(want["tokens"]) and gen.tokens == want["tokens"][: len(gen.tokens)]
    # generate_ids ends at the token completing the stop string.
    ids_gen = m.generate_ids(prompt, max_tokens=24, stop=stop)
    assert list(ids_gen) == gen.tokens and ids_gen.stopped == "stop_string"


def test_cost_equals_check_json(gpt2, cli_json):
    assert gpt2.cost() == cli_json("check", GPT2)
    assert gpt2.cost(seq_len=16, batch=3) == cli_json("check", GPT2, "--seq-len", 16, "--batch", 3)
    c = gpt2.cost()
    for key in ("parameters", "flops_per_token", "kv_cache_bytes_per_token", "peak_activation_bytes"):
        assert c[key] > 0


def test_errors(gpt2, cli):
    with pytest.raises(ValueError, match=r"token id 300 is outside the vocabulary \(0\.\.256\)"):
        gpt2.forward([1, 300])
    with pytest.raises(ValueError, match="at least one token"):
        gpt2.forward([])
    with pytest.raises(ValueError, match="65 tokens exceed the model's max_positions = 64"):
        gpt2.forward([1] * 65)
    with pytest.raises(TypeError, match="tokenize"):
        gpt2.forward("hello")
    with pytest.raises(kiln.KilnError, match="needs a tokenizer"):
        gpt2.tokenize("hello")
    with pytest.raises(kiln.KilnError, match="needs a tokenizer"):
        gpt2.generate([1, 2])
    with pytest.raises(kiln.KilnError, match="needs a tokenizer"):
        gpt2.embed(["hello"])
    with pytest.raises(ValueError, match=r"top_p must be in \[0, 1\]"):
        gpt2.generate_ids([1], top_p=2.0)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        gpt2.generate_ids([1], temperature=-1.0)
    with pytest.raises(kiln.KilnError, match="max_positions = 64"):
        list(gpt2.generate_ids([1] * 70, max_tokens=2))
    with pytest.raises(kiln.KilnError, match="encoder-only"):
        kiln.open(TINY / "bert-base-uncased.toml").generate_ids([1, 2])

    # Opening: the kiln command's messages.
    with pytest.raises(kiln.KilnError) as e:
        kiln.open(GPT2, backend="nope")
    assert str(e.value) in cli("run", GPT2, "--tokens", "1", "--backend", "nope", ok=False).stderr
    with pytest.raises(kiln.KilnError, match="unknown precision `f8`"):
        kiln.open(GPT2, precision="f8")
    with pytest.raises(kiln.KilnError) as e:
        kiln.open("no/such/model.toml")
    assert str(e.value) == cli("run", "no/such/model.toml", "--tokens", "1", ok=False).stderr.rstrip("\n")
    with pytest.raises(kiln.KilnError, match="memory budget") as e:
        kiln.open(ROOT / "models" / "llama-2-7b.toml", memory_limit="1G")
    assert str(e.value) == cli(
        "run", ROOT / "models" / "llama-2-7b.toml", "--tokens", "1", "--memory-limit", "1G", ok=False
    ).stderr.rstrip("\n")
    with pytest.raises(ValueError, match="give bytes"):
        kiln.open(GPT2, memory_limit="lots")


def test_spec_errors_keep_their_location(tmp_path, cli):
    bad = tmp_path / "bad.toml"
    bad.write_text(f'extends = "{GPT2}"\nname = "bad"\n[attention]\nkv_head = 2\n')
    with pytest.raises(kiln.SpecError) as e:
        kiln.open(bad)
    assert str(e.value).startswith(f"{bad}:4:1: error: unknown key `kv_head` in [attention]")
    assert (e.value.file, e.value.line, e.value.column) == (str(bad), 4, 1)
    assert str(e.value) == cli("run", bad, "--tokens", "1", ok=False).stderr.rstrip("\n")
