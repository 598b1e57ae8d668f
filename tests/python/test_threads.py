"""kiln releases the GIL while it computes: Python threads run meanwhile, and several threads share one model."""

import threading
import time

import pytest

import kiln
from conftest import TINY

GPT2 = TINY / "gpt2.toml"


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A model whose forward pass over 1024 tokens takes a noticeable time."""
    spec = tmp_path_factory.mktemp("wide") / "wide.toml"
    spec.write_text(
        f'extends = "{GPT2}"\nname = "wide"\nd_model = 256\nlayers = 4\nmax_positions = 1024\n'
        "vocab_size = 4096\n[attention]\nheads = 4\n[mlp]\nd_ff = 1024\n"
    )
    return kiln.open(spec)


def test_python_threads_run_during_a_forward_pass(wide):
    ids = [i % 4096 for i in range(1024)]
    wide.forward(ids)  # warm up
    window = {}

    def work():
        window["start"] = time.perf_counter()
        for _ in range(3):
            wide.forward(ids)
        window["end"] = time.perf_counter()

    t = threading.Thread(target=work)
    ticks = []
    t.start()
    while t.is_alive():
        ticks.append(time.perf_counter())
        time.sleep(0.001)
    t.join()
    inside = [x for x in ticks if window["start"] < x < window["end"]]
    span = window["end"] - window["start"]
    assert span > 0.05, f"the forward passes took only {span:.3f}s; the test needs a slower model"
    # With the GIL held for the whole pass this thread could not tick at all inside the window.
    assert len(inside) >= 10, f"{len(inside)} ticks during {span:.3f}s of forward passes"


def test_threads_generate_at_once_from_one_model():
    m = kiln.open(GPT2)
    prompts = [[1, 2, 3], [4, 5, 6], [7, 8], [9]]
    want = [list(m.generate_ids(p, max_tokens=20)) for p in prompts]
    got = [None] * len(prompts)
    errors = []

    def work(i):
        try:
            for _ in range(5):
                got[i] = list(m.generate_ids(prompts[i], max_tokens=20))
                if got[i] != want[i]:
                    return
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a generating thread hung"
    assert errors == []
    assert got == want


def test_interleaved_generations_do_not_share_a_cache():
    m = kiln.open(GPT2)
    a_want = list(m.generate_ids([1, 2, 3], max_tokens=12))
    b_want = list(m.generate_ids([9, 8], max_tokens=12))
    a, b = m.generate_ids([1, 2, 3], max_tokens=12), m.generate_ids([9, 8], max_tokens=12)
    a_got, b_got = [], []
    for x, y in zip(a, b):
        a_got.append(x)
        b_got.append(y)
    assert (a_got, b_got) == (a_want, b_want)
