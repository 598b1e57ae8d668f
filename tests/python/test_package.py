"""The installed package: type stubs that match the native module, py.typed, the README example."""

import ast
import inspect
import pathlib
import re
import subprocess
import sys

import pytest

import kiln
import kiln._kiln as native
from conftest import ROOT

PKG = pathlib.Path(kiln.__file__).parent
STUB = PKG / "_kiln.pyi"


def stub_tree():
    return ast.parse(STUB.read_text())


def public(names):
    return {n for n in names if not n.startswith("_") or n in ("__iter__", "__next__", "__enter__", "__exit__")}


def test_stubs_and_py_typed_ship_in_the_wheel():
    assert (PKG / "py.typed").is_file()
    assert STUB.is_file()
    assert STUB.read_text() == (ROOT / "runtime/python/python/kiln/_kiln.pyi").read_text()


def test_stubs_declare_what_the_module_has():
    tree = stub_tree()
    funcs = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    runtime_funcs = {n for n, v in vars(native).items() if callable(v) and not isinstance(v, type)}
    runtime_classes = {n for n, v in vars(native).items() if isinstance(v, type)}
    assert funcs == public(runtime_funcs)
    assert set(classes) == public(runtime_classes)
    for name, node in classes.items():
        cls = getattr(native, name)
        declared = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
        declared |= {
            n.target.id for n in node.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
        }
        if issubclass(cls, BaseException):
            # Attributes set on each raised SpecError.
            continue
        has = public(n for n in dir(cls) if n not in dir(object))
        assert declared == has, f"{name}: stub {sorted(declared - has)} / module {sorted(has - declared)}"
    assert set(kiln.__all__) == public(vars(native)) | {"__version__"}


def stub_signature(node):
    a = node.args
    names = [x.arg for x in a.args]
    defaults = [None] * (len(a.args) - len(a.defaults)) + [ast.literal_eval(d) for d in a.defaults]
    return list(zip(names, defaults))


def runtime_signature(f):
    out = []
    for p in inspect.signature(f).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        out.append((p.name, None if p.default is inspect.Parameter.empty else p.default))
    return out


def test_stub_signatures_match():
    tree = stub_tree()
    checked = 0
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            assert stub_signature(node) == runtime_signature(getattr(native, node.name)), node.name
            checked += 1
        if isinstance(node, ast.ClassDef) and not issubclass(getattr(native, node.name), BaseException):
            cls = getattr(native, node.name)
            for m in node.body:
                if not isinstance(m, ast.FunctionDef) or m.name.startswith("__"):
                    continue
                if any(isinstance(d, ast.Name) and d.id == "property" for d in m.decorator_list):
                    assert isinstance(inspect.getattr_static(cls, m.name), type(native.Model.name)), m.name
                    continue
                want = stub_signature(m)
                got = runtime_signature(getattr(cls, m.name))
                assert want == got, f"{node.name}.{m.name}"
                checked += 1
    assert checked >= 15


def readme_example():
    text = (ROOT / "runtime/python/README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "runtime/python/README.md has a Python example"
    return blocks[0]


def test_the_readme_example_runs(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    exec(compile(readme_example(), "README.md", "exec"), {})
    assert capsys.readouterr().out.startswith("(3, 256) [")


def test_mypy_stubtest_and_strict_checking(tmp_path):
    pytest.importorskip("mypy")
    p = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "kiln"], cwd=tmp_path, capture_output=True, text=True
    )
    assert p.returncode == 0, p.stdout + p.stderr
    usage = tmp_path / "usage.py"
    usage.write_text(
        readme_example()
        + """
from typing import Dict, List, Optional, Union
total: float = float(model.forward([1, 2, 3]).sum())
gen: kiln.Generation = model.generate("hi", max_tokens=4, stop=["\\n", 2])
pieces: List[Union[str, int]] = [p for p in gen]
why: Optional[str] = gen.stopped
c: kiln.Compiled = kiln.compile("extends = 'gpt2'", opt_level=0)
text: str = c.ir_text() + c.kernels_text() + c.spec_text()
cost: Dict[str, object] = model.cost(seq_len=16)
try:
    kiln.compile("layers = 0")
except kiln.SpecError as e:
    where = (e.file, e.line, e.column, e.help)
"""
    )
    p = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(usage)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stdout + p.stderr


def test_version():
    cargo = (ROOT / "Cargo.toml").read_text()
    assert re.search(r'^version = "([^"]+)"', cargo, re.M).group(1) == kiln.__version__
    from importlib.metadata import version

    assert version("kiln-python") == kiln.__version__


def test_exception_hierarchy():
    assert issubclass(kiln.SpecError, kiln.KilnError)
    assert issubclass(kiln.KilnError, Exception)
    assert kiln.KilnError.__module__ == "kiln"
    with pytest.raises(kiln.KilnError):
        kiln.compile("layers = 0")
