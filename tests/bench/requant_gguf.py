#!/usr/bin/env python3
"""Write other formats of a GGUF model (Q8_0, F16, F32) from a quantised one, for the peer benchmarks.

    python tests/bench/requant_gguf.py SRC.gguf --type q8_0 [--type f16 ...] [--out-dir DIR] [--force]

prints one line per type: the path of the written (or cached) file. Every tensor is dequantised with
gguf.quants and requantised: for Q8_0 the 2-D weight matrices whose row length is a multiple of 32
(others fall back to F16), for F16 every 2-D matrix; 1-D tensors (norms) stay F32, as llama.cpp's
converter and quantiser keep them. A tensor already in the target type is copied byte for byte. All
metadata (tokenizer included) is copied unchanged except general.file_type, set to match (MOSTLY_Q8_0 =
7, MOSTLY_F16 = 1, ALL_F32 = 0).

The values are those of the source: a Q8_0 made from Q4_1 carries Q4_1's precision, which is fair for
speed but not for quality. Outputs are cached under ${KILN_CACHE:-~/.cache/kiln}/bench/gguf/, keyed by
the source file's SHA-256 (and FORMAT below), so a rerun only hashes the source. Each new file is read
back with gguf.GGUFReader and checked (tensor names, shapes, types, values against the source) before
it is moved into place.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

import numpy as np

# Bump when the output of a given source changes, so stale cached files are not reused.
FORMAT = 1

TYPES = {"q8_0": ("Q8_0", 7), "f16": ("F16", 1), "f32": ("F32", 0)}  # name -> (GGML type, LlamaFileType)


def log(*a):
    print("[requant_gguf]", *a, file=sys.stderr, flush=True)


def cache_dir() -> Path:
    base = os.environ.get("KILN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "kiln")
    return Path(base) / "bench" / "gguf"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def out_path(src: Path, qtype: str, out_dir: Path | None = None, digest: str | None = None) -> Path:
    digest = digest or file_sha256(src)
    stem = src.name[: -len(".gguf")] if src.name.endswith(".gguf") else src.name
    # SmolLM2-135M-Instruct.Q4_1 -> SmolLM2-135M-Instruct
    base = stem.rsplit(".", 1)[0] if "." in stem else stem
    folder = (out_dir or cache_dir()) / f"{stem}-{digest[:16]}-v{FORMAT}"
    return folder / f"{base}.{TYPES[qtype][0]}.gguf"


def target_type(gguf, t, qtype: str):
    """GGML type of tensor `t` in the output."""
    Q = gguf.GGMLQuantizationType
    if len(t.shape) < 2 or qtype == "f32":
        return Q.F32
    if qtype == "f16":
        return Q.F16
    row = int(t.shape[0])  # GGUF shapes are innermost-first
    return Q.Q8_0 if row % 32 == 0 else Q.F16


def convert(src: Path, dst: Path, qtype: str) -> None:
    import gguf

    r = gguf.GGUFReader(str(src))
    arch = r.fields["general.architecture"].contents()
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    w = gguf.GGUFWriter(str(tmp), arch)
    align = r.fields.get("general.alignment")
    if align is not None:
        w.data_alignment = int(align.contents())
    for field in r.fields.values():
        # GGUF.* are virtual (header) fields; the writer adds general.architecture itself.
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        val = field.contents()
        if field.name == "general.file_type":
            val = TYPES[qtype][1]
        w.add_key_value(field.name, val, vtype, sub_type=sub)
    if "general.file_type" not in r.fields:
        w.add_file_type(TYPES[qtype][1])

    counts: dict[str, int] = {}
    for t in r.tensors:
        want = target_type(gguf, t, qtype)
        if t.tensor_type == want:
            data = t.data  # same type: copy the bytes unchanged
        else:
            vals = gguf.quants.dequantize(t.data, t.tensor_type)
            data = gguf.quants.quantize(vals, want)
        w.add_tensor(t.name, data, raw_shape=data.shape, raw_dtype=want)
        counts[want.name] = counts.get(want.name, 0) + 1
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        verify(r, tmp, qtype)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log(f"wrote {dst} ({dst.stat().st_size / 1e6:.1f} MB; tensors: {counts})")


def verify(src_reader, path: Path, qtype: str) -> None:
    """Read `path` back and check it against the source reader: metadata, tensor list, values."""
    import gguf

    r = gguf.GGUFReader(str(path))
    a, b = src_reader.fields, r.fields
    if set(a) - {"general.file_type"} != set(b) - {"general.file_type"}:
        raise RuntimeError(f"metadata keys differ: {sorted(set(a) ^ set(b))}")
    for k in a:
        if k.startswith("GGUF.") or k == "general.file_type":
            continue
        if a[k].types != b[k].types or a[k].contents() != b[k].contents():
            raise RuntimeError(f"metadata {k} differs")
    if b["general.file_type"].contents() != TYPES[qtype][1]:
        raise RuntimeError("general.file_type not set")
    if [t.name for t in src_reader.tensors] != [t.name for t in r.tensors]:
        raise RuntimeError("tensor names/order differ")
    for s, t in zip(src_reader.tensors, r.tensors):
        if list(s.shape) != list(t.shape):
            raise RuntimeError(f"{s.name}: shape {list(t.shape)} != {list(s.shape)}")
        if t.tensor_type != target_type(gguf, s, qtype):
            raise RuntimeError(f"{s.name}: type {t.tensor_type.name}")
        x = gguf.quants.dequantize(s.data, s.tensor_type)
        y = gguf.quants.dequantize(t.data, t.tensor_type)
        if x.shape != y.shape:
            raise RuntimeError(f"{s.name}: dequantised shape {y.shape} != {x.shape}")
        # Q8_0 rounds to 1/254 of a block's range; F16 to 2^-11 relative.
        tol = 1e-6 if t.tensor_type.name == "F32" else (1e-3 if t.tensor_type.name == "F16" else 1.0 / 127)
        scale = max(float(np.abs(x).max()), 1e-30)
        err = float(np.abs(x - y).max()) / scale
        if not np.isfinite(y).all() or err > tol:
            raise RuntimeError(f"{s.name}: max error {err:.3g} of the tensor's range (tolerance {tol:g})")


def ensure(src: str | os.PathLike, qtype: str, out_dir: Path | None = None, force: bool = False) -> Path:
    """Path of `src` in `qtype`, writing it if it is not cached yet."""
    src = Path(src).resolve()
    if qtype not in TYPES:
        raise ValueError(f"unknown type {qtype!r} (one of {', '.join(TYPES)})")
    dst = out_path(src, qtype, out_dir)
    if dst.is_file() and not force:
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    log(f"converting {src.name} -> {TYPES[qtype][0]}")
    convert(src, dst, qtype)
    return dst


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path, help="source .gguf (e.g. $SMOLLM2_GGUF, the shipped Q4_1 file)")
    ap.add_argument("--type", dest="types", choices=sorted(TYPES), action="append", required=True, help="output type (repeatable)")
    ap.add_argument("--out-dir", type=Path, help="cache folder (default ${KILN_CACHE:-~/.cache/kiln}/bench/gguf)")
    ap.add_argument("--force", action="store_true", help="rewrite even when a cached file exists")
    args = ap.parse_args(argv)
    for q in args.types:
        print(ensure(args.src, q, args.out_dir, args.force), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
