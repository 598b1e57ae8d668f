//! Front-end tests: extends chains, per-layer expansion, defaults, errors.

use std::path::{Path, PathBuf};

use super::*;

const TINY: &str = r#"
name = "tiny"
architecture = "decoder"
vocab_size = 128
d_model = 64
layers = 2
max_positions = 128
[attention]
heads = 4
[positions]
kind = "rope"
[mlp]
d_ff = 256
activation = "silu"
gated = true
[norm]
kind = "rmsnorm"
"#;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("kiln-spec-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("create dir");
        }
        std::fs::write(&p, text).expect("write spec");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn load_text(text: &str) -> Result<ResolvedSpec, SpecError> {
    load_str(text, Path::new("test.toml"))
}

fn err_of(text: &str) -> SpecError {
    match load_text(text) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e,
    }
}

#[test]
fn minimal_spec_resolves_every_default() {
    let rs = load_text(TINY).expect("valid");
    let a = &rs.spec.attention;
    assert_eq!(a.kv_heads, Some(4));
    assert_eq!(a.head_dim, Some(16));
    assert_eq!(a.scale, Some(0.25));
    assert_eq!(rs.spec.norm.bias, Some(false));
    let p = &rs.spec.positions;
    assert_eq!(
        (p.theta, p.fraction, p.layout),
        (Some(10000.0), Some(1.0), Some(PairLayout::Half))
    );
    assert_eq!(rs.layers.len(), 2);
    assert!(rs.decoder.is_empty());
    assert_eq!(rs.layers[0].attention, rs.spec.attention);
    assert_eq!(rs.layers[1].norm, rs.spec.norm);
    let text = rs.to_toml();
    for needle in [
        "kv_heads = 4",
        "head_dim = 16",
        "scale = 0.25",
        "theta = 10000.0",
        "layout = \"half\"",
        "bias = false",
    ] {
        assert!(text.contains(needle), "`{needle}` missing from:\n{text}");
    }
}

#[test]
fn printed_spec_reloads_to_the_same_thing() {
    let rs = load_text(TINY).expect("valid");
    let again = load_text(&rs.to_toml()).expect("printed spec is valid");
    assert_eq!(again, rs);
    assert_eq!(resolve(rs.spec.clone()).expect("resolves"), rs);
}

#[test]
fn encoder_decoder_and_relative_defaults() {
    let text = r#"
name = "t"
architecture = "encoder-decoder"
vocab_size = 100
d_model = 32
layers = 3
[attention]
heads = 4
[positions]
kind = "relative"
[mlp]
d_ff = 64
activation = "relu"
[[layer]]
select = "0"
stack = "decoder"
attention = { sliding_window = 5 }
"#;
    let rs = load_text(text).expect("valid");
    assert_eq!(rs.spec.decoder_layers, Some(3));
    assert_eq!(rs.spec.positions.buckets, Some(32));
    assert_eq!(rs.spec.positions.max_distance, Some(128));
    assert_eq!(rs.spec.norm.bias, Some(true));
    assert_eq!(rs.layers.len(), 3);
    assert_eq!(rs.decoder.len(), 3);
    assert!(
        rs.layers
            .iter()
            .all(|l| l.attention.sliding_window.is_none())
    );
    assert_eq!(rs.decoder[0].attention.sliding_window, Some(5));
    assert_eq!(rs.decoder[1].attention.sliding_window, None);
}

#[test]
fn layer_overrides_expand_per_layer() {
    let text = format!(
        "{TINY}\n[[layer]]\nselect = \"odd\"\nattention = {{ sliding_window = 32 }}\n\
         [[layer]]\nselect = [1]\n[layer.norm]\neps = 1e-3\n[layer.attention]\nheads = 2\n"
    )
    .replace("layers = 2", "layers = 4");
    let rs = load_text(&text).expect("valid");
    let windows: Vec<_> = rs
        .layers
        .iter()
        .map(|l| l.attention.sliding_window)
        .collect();
    assert_eq!(windows, [None, Some(32), None, Some(32)]);
    let eps: Vec<_> = rs.layers.iter().map(|l| l.norm.eps).collect();
    assert_eq!(eps, [1e-5, 1e-3, 1e-5, 1e-5]);
    // Layer 1 overrides heads: its derived defaults follow its own values.
    let a1 = &rs.layers[1].attention;
    assert_eq!((a1.heads, a1.kv_heads, a1.head_dim), (2, Some(2), Some(32)));
    assert_eq!(rs.layers[0].attention.head_dim, Some(16));
    // The model-wide section is untouched by overrides.
    assert_eq!(rs.spec.attention.sliding_window, None);
    assert_eq!(rs.spec.layer_overrides.len(), 2);
}

#[test]
fn moe_layers_and_defaults() {
    let text = format!(
        "{TINY}\n[moe]\nexperts = 4\ntop_k = 2\nlayers = \"every 2 from 1\"\n[moe.shared_expert]\nd_ff = 32\n"
    )
    .replace("layers = 2\n", "layers = 4\n");
    let rs = load_text(&text).expect("valid");
    let moe: Vec<bool> = rs.layers.iter().map(|l| l.moe.is_some()).collect();
    assert_eq!(moe, [false, true, false, true]);
    assert_eq!(rs.spec.moe.as_ref().and_then(|m| m.d_ff), Some(256));
    let all = load_text(&format!("{TINY}\n[moe]\nexperts = 4\ntop_k = 1\n")).expect("valid");
    assert!(all.layers.iter().all(|l| l.moe.is_some()));
    assert_eq!(
        all.spec.moe.and_then(|m| m.layers),
        Some(Selector::Text("all".into()))
    );
}

#[test]
fn yarn_attention_factor_is_filled() {
    let text = format!(
        "{TINY}\n[positions.scaling]\nkind = \"yarn\"\nfactor = 4.0\noriginal_max_positions = 32\n"
    );
    let rs = load_text(&text).expect("valid");
    match rs.spec.positions.scaling {
        Some(RopeScaling::Yarn {
            attention_factor: Some(a),
            beta_fast,
            ..
        }) => {
            assert!((a - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-12);
            assert_eq!(beta_fast, 32.0);
        }
        other => panic!("unexpected scaling {other:?}"),
    }
}

#[test]
fn extends_relative_path_and_chain() {
    let dir = TempDir::new("chain");
    dir.write("base/root.toml", TINY);
    dir.write(
        "base/mid.toml",
        "extends = \"root.toml\"\nname = \"mid\"\nlayers = 3\n[attention]\nkv_heads = 2\n[mlp]\nbias = true\n",
    );
    let leaf = dir.write(
        "leaf.toml",
        "extends = \"base/mid.toml\"\nname = \"leaf\"\n[attention]\nheads = 8\n[[layer]]\nselect = \"0..1\"\nmlp = { d_ff = 8 }\n",
    );
    let rs = load(&leaf).expect("valid chain");
    let s = &rs.spec;
    assert_eq!(s.name, "leaf");
    assert_eq!(s.extends, None);
    assert_eq!(s.layers, 3);
    assert_eq!((s.attention.heads, s.attention.kv_heads), (8, Some(2)));
    assert!(s.mlp.bias && s.mlp.gated);
    assert_eq!(s.norm.kind, NormKind::Rmsnorm);
    assert_eq!(
        rs.layers.iter().map(|l| l.mlp.d_ff).collect::<Vec<_>>(),
        [8, 256, 256]
    );
}

#[test]
fn extends_arrays_are_replaced_not_merged() {
    let dir = TempDir::new("arrays");
    dir.write(
        "base.toml",
        &format!("{TINY}\n[[layer]]\nselect = \"even\"\nattention = {{ sliding_window = 4 }}\n"),
    );
    let derived = dir.write(
        "d.toml",
        "extends = \"base.toml\"\nname = \"d\"\n[[layer]]\nselect = \"odd\"\nattention = { softcap = 5.0 }\n",
    );
    let rs = load(&derived).expect("valid");
    assert_eq!(rs.spec.layer_overrides.len(), 1);
    assert!(
        rs.layers
            .iter()
            .all(|l| l.attention.sliding_window.is_none())
    );
    assert_eq!(rs.layers[1].attention.softcap, Some(5.0));
}

#[test]
fn extends_shipped_model_by_name() {
    let Some(name) = shipped_names()
        .find(|n| *n == "gpt2")
        .or_else(|| shipped_names().next())
    else {
        return; // no shipped specs in this checkout
    };
    let base = load_shipped(name).expect("shipped spec is valid");
    let dir = TempDir::new("shipped");
    let p = dir.write(
        "mine.toml",
        &format!("extends = \"{name}\"\nname = \"mine\"\nlayers = 1\n"),
    );
    let rs = load(&p).expect("extends a shipped model");
    assert_eq!(rs.spec.name, "mine");
    assert_eq!(rs.spec.layers, 1);
    assert_eq!(rs.spec.d_model, base.spec.d_model);
    assert_eq!(rs.spec.attention, base.spec.attention);

    // A file of the same name beside the extending one wins over the shipped copy.
    dir.write(&format!("{name}.toml"), TINY);
    let local = load(&p).expect("extends the local file");
    assert_eq!(local.spec.d_model, 64);
    // ... unless it is the extending file itself.
    let own = dir.write(
        &format!("{name}.toml"),
        &format!("extends = \"{name}\"\nname = \"x\"\n"),
    );
    assert_eq!(
        load(&own).expect("extends the shipped copy").spec.d_model,
        base.spec.d_model
    );
}

#[test]
fn every_shipped_spec_loads() {
    for name in shipped_names() {
        if let Err(e) = load_shipped(name) {
            panic!("shipped spec {name} fails:\n{}", e.render());
        }
    }
    assert!(load_shipped("no-such-model").is_err());
}

#[test]
fn extends_cycle_names_the_chain() {
    let dir = TempDir::new("cycle");
    let a = dir.write("a.toml", "extends = \"b.toml\"\nname = \"a\"\n");
    dir.write("b.toml", "extends = \"c.toml\"\nname = \"b\"\n");
    dir.write("c.toml", "extends = \"a.toml\"\nname = \"c\"\n");
    let e = load(&a).expect_err("cycle");
    let d = dir.0.display();
    assert_eq!(
        e.message,
        format!("`extends` cycle: {d}/a.toml -> {d}/b.toml -> {d}/c.toml -> {d}/a.toml")
    );
    assert_eq!(e.file, dir.0.join("c.toml"));
    assert_eq!((e.line, e.column), (Some(1), Some(1)));
    let selfish = dir.write("self.toml", "extends = \"self.toml\"\nname = \"s\"\n");
    assert!(
        load(&selfish)
            .expect_err("self cycle")
            .message
            .contains("cycle")
    );
}

#[test]
fn errors_in_a_base_file_point_into_it() {
    let dir = TempDir::new("basepos");
    dir.write(
        "base.toml",
        &TINY.replace("heads = 4", "heads = 4\nkv_heads = 3"),
    );
    let d = dir.write("d.toml", "extends = \"base.toml\"\nname = \"d\"\n");
    let e = load(&d).expect_err("kv_heads does not divide heads");
    assert_eq!(e.file, dir.0.join("base.toml"));
    assert_eq!((e.line, e.column), (Some(10), Some(1)));
    assert!(e.message.contains("not a multiple"), "{}", e.message);
    // Fixing it in the derived file points there instead.
    let d2 = dir.write(
        "d2.toml",
        "extends = \"base.toml\"\nname = \"d\"\n[attention]\nheads = 5\n",
    );
    let e = load(&d2).expect_err("still broken");
    assert_eq!(e.file, dir.0.join("base.toml"));
    let ok = dir.write(
        "ok.toml",
        "extends = \"base.toml\"\nname = \"d\"\n[attention]\nheads = 6\nhead_dim = 8\n",
    );
    assert!(load(&ok).is_ok());
}

#[test]
fn error_positions_and_paths() {
    let e = err_of(&TINY.replace("d_model = 64", "d_modle = 64"));
    assert_eq!(
        e.render(),
        "test.toml:5:1: error: unknown key `d_modle`\n  help: did you mean `d_model`?"
    );
    let e = err_of(&TINY.replace("heads = 4", "heads = 4\nattn = 1"));
    assert_eq!((e.line, e.column), (Some(10), Some(1)));
    assert!(
        e.message.starts_with("unknown key `attn` in [attention]"),
        "{}",
        e.message
    );
    let e = err_of("name = \"x\"\narchitecture = \"decoder\"\nvocab_size = 1\nd_model = \"big\"\n");
    assert_eq!(
        e.message,
        "expected an integer for `d_model`, found a string (\"big\")"
    );
    assert_eq!((e.line, e.column), (Some(4), Some(1)));
    let e = err_of("name = [1, 2\n");
    assert!(e.message.starts_with("invalid TOML"), "{}", e.message);
    assert_eq!(e.line, Some(1));
    let e = load("/no/such/file.toml").expect_err("missing file");
    assert_eq!(e.file, PathBuf::from("/no/such/file.toml"));
}

#[test]
fn miette_diagnostic_has_source_and_label() {
    use miette::Diagnostic;
    let e = err_of(&TINY.replace("kind = \"rope\"", "kind = \"ropes\""));
    assert!(e.help().is_some());
    let labels: Vec<_> = e.labels().expect("labels").collect();
    assert_eq!(labels.len(), 1);
    let snippet = e.snippet.as_ref().expect("snippet");
    let (off, len) = snippet.span();
    assert_eq!(&snippet.text()[off..off + len], "kind");
    assert!(e.source_code().is_some());
}

#[test]
fn resolve_rejects_in_memory_errors_without_panicking() {
    let mut spec = load_text(TINY).expect("valid").spec;
    spec.attention.kv_heads = Some(3);
    let msg = resolve(spec.clone()).expect_err("bad kv_heads").summary();
    assert!(msg.contains("not a multiple"), "{msg}");
    spec.attention.kv_heads = Some(0);
    assert!(resolve(spec.clone()).is_err());
    spec.attention.kv_heads = None;
    spec.extends = Some("gpt2".into());
    assert!(resolve(spec).is_err());
}

#[test]
fn selector_matches_public_wrapper() {
    assert_eq!(
        selector_matches(&Selector::Text("every 3 from 1".into()), 4, 8),
        Ok(true)
    );
    assert_eq!(selector_matches(&Selector::List(vec![2]), 3, 8), Ok(false));
    assert!(selector_matches(&Selector::Text("sometimes".into()), 0, 8).is_err());
}

#[test]
fn arbitrary_input_never_panics() {
    // A crude fuzz: every prefix of a spec, and a spec with each line dropped.
    let text = format!(
        "{TINY}\n[[layer]]\nselect = \"every 2 from 1\"\nattention = {{ sliding_window = 2 }}\n[moe]\nexperts = 2\ntop_k = 1\n"
    );
    for cut in (0..text.len()).filter(|&i| text.is_char_boundary(i)) {
        let _ = load_text(&text[..cut]);
    }
    let lines: Vec<&str> = text.lines().collect();
    for skip in 0..lines.len() {
        let t: Vec<&str> = lines
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != skip)
            .map(|(_, l)| *l)
            .collect();
        let _ = load_text(&t.join("\n"));
    }
    for (from, to) in [
        ("= 4", "= 0"),
        ("= 64", "= 0"),
        ("= 256", "= 0"),
        ("\"rope\"", "\"sinusoidal\""),
        ("= 2", "= 99999999999"),
    ] {
        let _ = load_text(&text.replace(from, to));
    }
}

#[test]
fn every_spec_under_models_loads_from_disk() {
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
    let mut dirs = vec![models];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for p in entries.flatten().map(|e| e.path()) {
            // models/families/ holds family files (import rules), not specs.
            if p.is_dir() && !p.ends_with("families") {
                dirs.push(p);
            } else if p.extension().is_some_and(|e| e == "toml")
                && let Err(e) = load(&p)
            {
                panic!("{}", e.render());
            }
        }
    }
}

#[test]
fn mutated_shipped_specs_never_panic() {
    // Replace each value in every shipped spec with values of the wrong type
    // or out of range, and cut each spec at every line; loading must return
    // (an error or a spec), never panic or abort.
    let replacements = [
        "0",
        "-1",
        "99999999999999",
        "1.5",
        "-0.0",
        "nan",
        "inf",
        "\"x\"",
        "true",
        "[]",
        "{}",
        "\"every 0\"",
        "\"0..\"",
    ];
    for name in shipped_names() {
        let Some(text) = shipped_spec(name) else {
            continue;
        };
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let Some((key, _)) = line.split_once(" = ") else {
                continue;
            };
            if key.trim_start().starts_with('#') || key.contains('[') {
                continue;
            }
            for r in replacements {
                let mut mutated = lines.clone();
                let new = format!("{key} = {r}");
                mutated[i] = &new;
                let _ = load_str(&mutated.join("\n"), Path::new("fuzz.toml"));
            }
            let cut = lines[..i].join("\n");
            let _ = load_str(&cut, Path::new("fuzz.toml"));
        }
    }
}

#[test]
fn extends_refuses_what_is_not_a_small_regular_file() {
    // `extends` (and `load`) read only regular files of at most MAX_SPEC_BYTES:
    // a device would read forever (`/dev/zero`), a FIFO would block.
    let dir = TempDir::new("extends-devices");
    let spec = |target: &str| format!("extends = \"{target}\"\nname = \"x\"\n");
    #[cfg(unix)]
    {
        let p = dir.write("zero.toml", &spec("/dev/zero"));
        let e = load(&p).unwrap_err();
        assert!(
            e.message.contains("cannot read base spec `/dev/zero`")
                && e.message.contains("not a regular file"),
            "{}",
            e.render()
        );
        let e = load("/dev/zero").unwrap_err();
        assert!(
            e.message.contains("cannot read spec") && e.message.contains("not a regular file"),
            "{}",
            e.render()
        );
        let fifo = dir.0.join("fifo.toml");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .is_ok_and(|s| s.success());
        if made {
            let p = dir.write("pipe.toml", &spec("fifo.toml"));
            let e = load(&p).unwrap_err();
            assert!(e.message.contains("not a regular file"), "{}", e.render());
            // A FIFO named like a shipped model beside the spec is skipped:
            // the embedded copy is used.
            std::fs::rename(&fifo, dir.0.join("gpt2.toml")).unwrap();
            let p = dir.write("named.toml", &spec("gpt2"));
            assert_eq!(load(&p).unwrap().spec.d_model, 768);
        }
    }
    std::fs::create_dir_all(dir.0.join("sub.toml")).unwrap();
    let p = dir.write("dir.toml", &spec("sub.toml"));
    let e = load(&p).unwrap_err();
    assert!(e.message.contains("it is a directory"), "{}", e.render());

    let big = format!("{TINY}#{}\n", "x".repeat(MAX_SPEC_BYTES as usize));
    dir.write("big.toml", &big);
    let p = dir.write("uses-big.toml", &spec("big.toml"));
    let e = load(&p).unwrap_err();
    assert!(
        e.message
            .contains(&format!("more than the {MAX_SPEC_BYTES} bytes")),
        "{}",
        e.render()
    );

    std::fs::write(dir.0.join("latin1.toml"), b"name = \"caf\xe9\"\n").unwrap();
    let p = dir.write("uses-latin1.toml", &spec("latin1.toml"));
    let e = load(&p).unwrap_err();
    assert!(e.message.contains("not UTF-8"), "{}", e.render());
}

#[test]
fn sizes_beyond_what_kiln_supports_are_errors_at_the_key() {
    // Found by fuzzing: `head_dim = 2^62` (or a d_model of 2^40 giving such a
    // head width) passed validation, and lowering then tried to allocate the
    // RoPE frequency table of head_dim / 2 entries: an abort, not an error.
    let cases = [
        (
            "d_model = 64",
            "d_model = 1099511627776",
            "`d_model` is 1099511627776",
        ),
        (
            "heads = 4",
            "heads = 4\nhead_dim = 4611686018427387904",
            "`attention.head_dim` is 4611686018427387904",
        ),
        ("d_ff = 256", "d_ff = 16777217", "`mlp.d_ff` is 16777217"),
        (
            "vocab_size = 128",
            "vocab_size = 9223372036854775807",
            "`vocab_size` is 9223372036854775807",
        ),
    ];
    for (from, to, needle) in cases {
        let text = TINY.replace(from, to);
        let e = err_of(&text);
        assert!(
            e.message.contains(needle) && e.message.contains("more than the 16777216 (2^24)"),
            "{}",
            e.render()
        );
        let line = text
            .lines()
            .position(|l| l.starts_with(to.lines().last().unwrap()))
            .unwrap();
        assert_eq!(e.line, Some(line + 1), "{}", e.render());
    }
    // In a per-layer override, the message names the override.
    let e = err_of(&format!(
        "{TINY}\n[[layer]]\nselect = \"0\"\nattention = {{ head_dim = 33554432 }}\n"
    ));
    assert!(
        e.message
            .contains("`layer[0].attention.head_dim` is 33554432"),
        "{}",
        e.render()
    );
    // At the limit, a size is accepted.
    let rs = load_text(&TINY.replace("d_ff = 256", "d_ff = 16777216")).unwrap();
    assert_eq!(rs.layers[0].mlp.d_ff, 1 << 24);
}

#[test]
fn parameter_counts_beyond_what_kiln_supports_are_errors() {
    // Each size below the limit, but together 2^24 experts of 2^24 x 2^24
    // weights: 2^72 parameters, whose count overflows 64 bits in lowering.
    let text = TINY.replace("d_model = 64", "d_model = 16777216").replace(
        "heads = 4",
        "heads = 4\n[moe]\nexperts = 16777216\ntop_k = 2\nd_ff = 16777216",
    );
    let e = err_of(&text);
    assert!(
        e.message
            .contains("parameters, more than the 2.81e14 (2^48) kiln supports"),
        "{}",
        e.render()
    );
    // 4096 layers of a 4096-wide model with a 2^24-wide MLP: also too many.
    let text = TINY
        .replace("layers = 2", "layers = 4096")
        .replace("d_model = 64", "d_model = 4096")
        .replace("d_ff = 256", "d_ff = 16777216");
    assert!(err_of(&text).message.contains("(2^48) kiln supports"));
    // A large real model is far below the limit.
    assert!(load_shipped("mixtral-8x7b").is_ok());
}

#[test]
fn out_of_range_numbers_name_their_key() {
    let e = err_of("extends = \"gpt2\"\nlayers = 99999999999999999999\n");
    assert_eq!(
        e.message,
        "integer `99999999999999999999` for `layers` is out of range"
    );
    assert_eq!((e.line, e.column), (Some(2), Some(10)));
    let e = err_of("extends = \"gpt2\"\n[attention]\nsoftcap = 1e400\n");
    assert_eq!(
        e.message,
        "float `1e400` for `attention.softcap` is out of range"
    );
    let e = err_of(
        "extends = \"gpt2\"\n[[layer]]\nselect = 0\nattention.sliding_window = 99999999999999999999\n",
    );
    assert!(
        e.message
            .contains("for `layer.attention.sliding_window` is out of range"),
        "{}",
        e.message
    );
}
