"""`kiln serve` through the `openai` Python client on 127.0.0.1: completions, chat completions
(streamed and not), embeddings, models, health, metrics; the limits (body size, prompt length,
max_tokens, queue, timeout) and their error bodies; concurrent requests; graceful shutdown.

Every generated text is compared with what the `kiln` command prints for the same request.
"""

import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

from conftest import ROOT, kiln_bin

openai = pytest.importorskip("openai")


class Server:
    """A `kiln serve` process on a free port; stopped with SIGTERM (it must exit 0)."""

    def __init__(self, model, *args):
        self.proc = subprocess.Popen(
            [str(kiln_bin()), "serve", str(model), "--port", "0", *map(str, args)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.log = []
        deadline = time.time() + 120
        while time.time() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.log.append(line)
            m = re.search(r"`(.*)` listening on (http://\S+)", line)
            if m:
                self.model_id, self.url = m.group(1), m.group(2)
                break
        else:
            self.proc.kill()
        if not hasattr(self, "url"):
            self.proc.kill()
            pytest.fail("kiln serve did not start:\n" + "".join(self.log) + self.proc.stderr.read())
        # Drain stderr so the server never blocks on a full pipe.
        self._drain = threading.Thread(target=self._read_rest, daemon=True)
        self._drain.start()
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0)

    def _read_rest(self):
        for line in self.proc.stderr:
            self.log.append(line)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self._drain.join(timeout=5)
        return code

    def post(self, path, body, raw=None):
        """POST JSON (or raw bytes); returns (status, parsed body)."""
        data = raw if raw is not None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path, data=data, headers={"content-type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def get(self, path):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return r.status, r.read().decode()


@pytest.fixture(scope="module")
def smol(smollm2_gguf):
    s = Server(smollm2_gguf, "--max-concurrent", "2", "--max-prompt-tokens", "256", "--max-tokens", "128")
    yield s
    assert s.stop() == 0, "".join(s.log)


def test_health_models_and_unknown_routes(smol, smollm2_gguf):
    status, body = smol.get("/health")
    assert status == 200 and json.loads(body)["status"] == "ok"
    models = smol.client.models.list()
    assert [m.id for m in models.data] == [smollm2_gguf.stem] == [smol.model_id]
    assert smol.client.models.retrieve(smol.model_id).id == smol.model_id
    with pytest.raises(openai.NotFoundError):
        smol.client.models.retrieve("no-such-model")
    try:
        urllib.request.urlopen(smol.url + "/v2/nothing", timeout=10)
        pytest.fail("expected 404")
    except urllib.error.HTTPError as e:
        assert e.code == 404 and "/v1/chat/completions" in json.loads(e.read())["error"]["message"]


def test_chat_completion_equals_generate_chat(smol, smollm2_gguf, cli_json):
    question = "What is 2+2?"
    want = cli_json("generate", smollm2_gguf, "--chat", "--prompt", question, "--max-tokens", "32")
    r = smol.client.chat.completions.create(
        model=smol.model_id,
        messages=[{"role": "user", "content": question}],
        temperature=0,
        max_tokens=32,
    )
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == want["text"]
    assert r.choices[0].finish_reason == ("stop" if want["stopped"] == "stop_token" else "length")
    assert r.usage.prompt_tokens == len(want["prompt_tokens"])
    assert r.usage.completion_tokens == len(want["tokens"])
    # A system message, and content given as parts, render as the CLI's --system does.
    want = cli_json(
        "generate", smollm2_gguf, "--chat", "--system", "You are terse.", "--prompt", question, "--max-tokens", "16"
    )
    r = smol.client.chat.completions.create(
        model=smol.model_id,
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": "2+2?"}]},
        ],
        temperature=0,
        max_tokens=16,
    )
    assert r.choices[0].message.content == want["text"]


def test_streamed_chat_is_the_same_text_in_pieces(smol):
    args = dict(
        model=smol.model_id,
        messages=[{"role": "user", "content": "Tell me about the sea."}],
        temperature=0,
        max_tokens=40,
    )
    whole = smol.client.chat.completions.create(**args)
    chunks = list(smol.client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **args))
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([p for p in pieces if p]) > 5, "the reply arrived in several events"
    assert "".join(pieces) == whole.choices[0].message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_completion_equals_generate_and_stop_strings_cut_it(smol, smollm2_gguf, cli_json):
    prompt = "The capital of France is"
    want = cli_json("generate", smollm2_gguf, "--prompt", prompt, "--max-tokens", "12")
    r = smol.client.completions.create(model=smol.model_id, prompt=prompt, max_tokens=12, temperature=0)
    assert r.choices[0].text == want["text"]
    assert r.usage.prompt_tokens == len(want["prompt_tokens"])
    # Token ids work as a prompt too.
    r = smol.client.completions.create(model=smol.model_id, prompt=want["prompt_tokens"], max_tokens=12, temperature=0)
    assert r.choices[0].text == want["text"]
    # A stop string ends the text before it, even split across tokens.
    cut = want["text"].find(".")
    assert cut > 0, want["text"]
    r = smol.client.completions.create(model=smol.model_id, prompt=prompt, max_tokens=12, temperature=0, stop=["."])
    assert r.choices[0].text == want["text"][:cut]
    assert r.choices[0].finish_reason == "stop"
    streamed = smol.client.completions.create(
        model=smol.model_id, prompt=prompt, max_tokens=12, temperature=0, stop=["."], stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == want["text"][:cut]
    # Sampling with a seed is reproducible.
    a, b = (
        smol.client.completions.create(
            model=smol.model_id, prompt=prompt, max_tokens=12, temperature=0.9, top_p=0.9, seed=7
        ).choices[0].text
        for _ in range(2)
    )
    assert a == b


def test_requests_kiln_cannot_honour_are_refused_by_name(smol):
    m = smol.model_id
    msgs = [{"role": "user", "content": "hi"}]
    cases = [
        (dict(n=2), "n"),
        (dict(logprobs=True), "logprobs"),
        (dict(presence_penalty=0.5), "presence_penalty"),
        (dict(max_tokens=10_000), "max_tokens"),
        (dict(temperature=3.0), "temperature"),
        (dict(response_format={"type": "json_object"}), "response_format"),
    ]
    for extra, param in cases:
        with pytest.raises(openai.BadRequestError) as e:
            smol.client.chat.completions.create(model=m, messages=msgs, **extra)
        assert e.value.body["param"] == param, (extra, e.value.body)
        assert e.value.body["message"], extra
    with pytest.raises(openai.NotFoundError) as e:
        smol.client.chat.completions.create(model="gpt-4", messages=msgs)
    assert smol.model_id in e.value.body["message"]
    # Over-long prompts, oversized bodies, malformed JSON, embeddings of a decoder.
    status, body = smol.post("/v1/completions", {"prompt": "word " * 400, "max_tokens": 1})
    assert status == 400 and "more than the limit of 256" in body["error"]["message"], body
    status, body = smol.post("/v1/completions", None, raw=b'{"prompt": "x" ' + b" " * (2 << 20) + b"}")
    assert status == 413 and "--max-body-bytes" in body["error"]["message"], body
    status, body = smol.post("/v1/completions", None, raw=b'{"prompt": ')
    assert status == 400 and body["error"]["type"] == "invalid_request_error", body
    status, body = smol.post("/v1/embeddings", {"input": "x"})
    assert status == 400 and "pooling head" in body["error"]["message"], body
    status, body = smol.post("/v1/chat/completions", {"messages": []})
    assert status == 400 and body["error"]["param"] == "messages"


def test_concurrent_requests_all_succeed_with_the_sequential_answers(smol):
    questions = ["What is 2+2?", "Name a colour.", "Say hello.", "What is the sea?"]
    ask = lambda q: smol.client.chat.completions.create(  # noqa: E731
        model=smol.model_id, messages=[{"role": "user", "content": q}], temperature=0, max_tokens=24
    ).choices[0].message.content
    sequential = {q: ask(q) for q in questions}
    results, errors = {}, []

    def worker(i):
        q = questions[i % len(questions)]
        try:
            results[i] = (q, ask(q))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(results) == 8
    for q, text in results.values():
        assert text == sequential[q], q


def test_metrics_count_requests_and_tokens(smol):
    smol.client.completions.create(model=smol.model_id, prompt="Hello", max_tokens=3, temperature=0)
    status, text = smol.get("/metrics")
    assert status == 200
    ok = re.search(r'kiln_requests_total\{endpoint="completions",status="200"\} (\d+)', text)
    assert ok and int(ok.group(1)) >= 1, text
    assert re.search(r"kiln_completion_tokens_total [1-9]\d*", text), text
    assert "kiln_request_duration_seconds_bucket" in text
    assert re.search(r"kiln_requests_in_flight 0", text), text


def _stream_in_thread(server, max_tokens, out):
    def run():
        try:
            s = server.client.completions.create(
                model=server.model_id, prompt="Once upon a time", max_tokens=max_tokens, temperature=0, stream=True
            )
            for c in s:
                out.setdefault("chunks", []).append(c)
        except Exception as e:  # noqa: BLE001 - the test inspects it
            out["error"] = e

    t = threading.Thread(target=run)
    t.start()
    return t


def test_a_full_queue_gets_503_and_the_queue_drains(smollm2_gguf):
    s = Server(smollm2_gguf, "--max-concurrent", "1", "--max-queue", "0")
    try:
        first = {}
        t = _stream_in_thread(s, 100, first)
        deadline = time.time() + 60
        while not first.get("chunks") and time.time() < deadline and "error" not in first:
            time.sleep(0.01)
        status, body = s.post("/v1/completions", {"prompt": "Hi", "max_tokens": 2})
        assert status == 503, body
        assert "busy" in body["error"]["message"] and "--max-queue" in body["error"]["message"]
        t.join()
        assert "error" not in first, first
        _, metrics = s.get("/metrics")
        assert 'kiln_rejected_total{reason="queue_full"} 1' in metrics
        # With the slot free again, requests are served.
        status, body = s.post("/v1/completions", {"prompt": "Hi", "max_tokens": 2})
        assert status == 200, body
    finally:
        assert s.stop() == 0


def test_a_request_past_the_timeout_gets_504(smollm2_gguf):
    s = Server(smollm2_gguf, "--timeout", "0.3", "--max-tokens", "2000")
    try:
        status, body = s.post("/v1/completions", {"prompt": "Once upon a time", "max_tokens": 2000, "temperature": 0})
        assert status == 504, body
        assert "--timeout" in body["error"]["message"]
    finally:
        assert s.stop() == 0


def test_sigterm_finishes_the_request_in_flight_then_exits(smollm2_gguf):
    s = Server(smollm2_gguf)
    out = {}
    t = _stream_in_thread(s, 48, out)
    deadline = time.time() + 60
    while not out.get("chunks") and time.time() < deadline and "error" not in out:
        time.sleep(0.01)
    s.proc.send_signal(signal.SIGTERM)
    t.join(timeout=120)
    assert "error" not in out, out
    finals = [c.choices[0].finish_reason for c in out["chunks"] if c.choices[0].finish_reason]
    assert finals and finals[-1] in ("stop", "length"), "the stream ran to its end"
    assert s.stop() == 0
    assert any("shutting down" in line for line in s.log), s.log
    with pytest.raises(OSError):
        urllib.request.urlopen(s.url + "/health", timeout=5)


def test_embeddings_equal_kiln_embed(minilm_dir, cli_json):
    s = Server(minilm_dir)
    try:
        sentences = ["A cat sits on the mat.", "A dog lies on the rug.", "Quantum field theory."]
        want = cli_json("embed", minilm_dir, *sentences)["embeddings"]
        r = s.client.embeddings.create(model=s.model_id, input=sentences)
        assert [d.index for d in r.data] == [0, 1, 2]
        for got, exp in zip(r.data, want):
            assert len(got.embedding) == len(exp) == 384
            assert max(abs(a - b) for a, b in zip(got.embedding, exp)) < 1e-5
        assert r.usage.prompt_tokens > 0
        # base64 (the openai client's default on the wire) decodes to the same floats.
        import base64

        import numpy as np

        status, body = s.post("/v1/embeddings", {"input": sentences[0], "encoding_format": "base64"})
        assert status == 200
        v = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
        assert np.abs(v - np.array(want[0])).max() < 1e-5
        # An encoder cannot chat.
        status, body = s.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
        assert status == 400 and "decoder" in body["error"]["message"], body
    finally:
        assert s.stop() == 0
