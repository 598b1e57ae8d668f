"""kiln.compile: the same texts as `kiln check` / `kiln compile --emit ir|kernels|dot`, the same errors."""

import pathlib

import pytest

import kiln
from conftest import ROOT, TINY

SPECS = sorted(TINY.glob("*.toml")) + [ROOT / "models" / n for n in ("llama-2-7b.toml", "mixtral-8x7b.toml", "t5-small.toml")]
BROKEN = sorted((ROOT / "tests" / "specs" / "broken").glob("*.toml"))


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.name)
def test_texts_equal_the_cli(spec, cli):
    c = kiln.compile(spec)
    assert c.ir_text() == cli("compile", spec, "--emit", "ir")
    assert c.kernels_text() == cli("compile", spec, "--emit", "kernels")
    assert c.dot_text() == cli("compile", spec, "--emit", "dot")
    check = cli("check", spec)
    spec_part, _, table = check.partition("# cost\n")
    assert spec_part == c.spec_text() + "\n"
    assert table.startswith("parameters")


def test_a_str_path_and_toml_text(cli, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    by_str = kiln.compile("models/tiny/gpt2.toml")
    by_path = kiln.compile(pathlib.Path("models/tiny/gpt2.toml"))
    assert by_str.ir_text() == by_path.ir_text() == cli("compile", "models/tiny/gpt2.toml", "--emit", "ir")
    assert by_str.name == "gpt2-tiny" and by_str.graphs == ["gpt2-tiny.decoder"]

    # TOML text: a relative `extends` resolves against the current directory.
    text = 'extends = "models/tiny/gpt2.toml"\nname = "mine"\nlayers = 1\n'
    c = kiln.compile(text)
    assert c.name == "mine"
    assert c.ir_text().startswith('graph "mine.decoder"')
    # The same spec written to a file compiles to the same graphs.
    f = tmp_path / "mine.toml"
    f.write_text(text.replace("models/tiny/gpt2.toml", str(TINY / "gpt2.toml")))
    assert kiln.compile(f).ir_text() == c.ir_text() == cli("compile", f, "--emit", "ir")
    assert kiln.compile(str(f)).spec_text() == c.spec_text()


def test_options_match_the_cli_flags(cli):
    spec = TINY / "gpt2.toml"
    raw = kiln.compile(spec, opt_level=0)
    assert raw.ir_text() == cli("compile", spec, "--emit", "ir", "--opt-level", "0")
    assert raw.ir_text() != kiln.compile(spec).ir_text()
    no_cse = kiln.compile(spec, disable_passes=["cse", "attention"])
    assert no_cse.kernels_text() == cli(
        "compile", spec, "--emit", "kernels", "--disable-pass", "cse", "--disable-pass", "attention"
    )
    with pytest.raises(kiln.KilnError, match="no-such-pass"):
        kiln.compile(spec, disable_passes=["no-such-pass"])


@pytest.mark.parametrize("spec", BROKEN, ids=lambda p: p.name)
def test_broken_specs_raise_the_cli_error(spec, cli, monkeypatch):
    monkeypatch.chdir(ROOT)
    rel = spec.relative_to(ROOT)
    with pytest.raises(kiln.SpecError) as e:
        kiln.compile(rel)
    text = str(e.value)
    assert text == spec.with_suffix(".err").read_text().rstrip("\n")
    assert text == cli("check", rel, ok=False).stderr.rstrip("\n")
    assert isinstance(e.value, kiln.KilnError)
    # The file at fault (`rel`, or a base it extends) and the place in it.
    where = e.value.file if e.value.line is None else f"{e.value.file}:{e.value.line}:{e.value.column}"
    assert text.startswith(f"{where}: error: {e.value.detail}")
    assert e.value.help is None or text.endswith(f"\n  help: {e.value.help}")


def test_toml_text_errors_name_the_string():
    with pytest.raises(kiln.SpecError) as e:
        kiln.compile('extends = "gpt2"\n[attention]\nkv_head = 4')
    assert str(e.value) == "<string>:3:1: error: unknown key `kv_head` in [attention]\n  help: did you mean `kv_heads`?"
    assert (e.value.file, e.value.line, e.value.column) == ("<string>", 3, 1)
    assert e.value.help == "did you mean `kv_heads`?"


def test_a_missing_file_is_named(cli):
    with pytest.raises(kiln.KilnError) as e:
        kiln.compile("no/such/spec.toml")
    assert "no/such/spec.toml" in str(e.value)
    assert str(e.value) == cli("check", "no/such/spec.toml", ok=False).stderr.rstrip("\n")
    with pytest.raises(TypeError):
        kiln.compile(42)


def test_cost_equals_check_json(cli_json):
    spec = ROOT / "models" / "llama-2-7b.toml"
    c = kiln.compile(spec)
    assert c.cost() == cli_json("check", spec)
    assert c.cost(seq_len=512, batch=4) == cli_json("check", spec, "--seq-len", 512, "--batch", 4)
    assert c.cost()["parameters"] == 6738415616
    with pytest.raises(ValueError, match="max_positions"):
        c.cost(seq_len=10**6)
