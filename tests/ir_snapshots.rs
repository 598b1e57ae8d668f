//! The IR of every shipped model's tiny variant, snapshot-tested: a reviewer
//! sees exactly which graph a spec lowers to, and any change to the lowering
//! shows up as a diff. Full-size specs are summarised (node counts per op and
//! the parameter count) since their graphs are the tiny ones with more layers.

use kiln_compiler::ir::to_text;
use kiln_compiler::lower::lower;
use kiln_compiler::spec;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn specs(dir: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut v: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    v.sort();
    v
}

#[test]
fn tiny_variant_graphs() {
    let tiny = specs("models/tiny");
    assert!(
        tiny.len() >= 16,
        "expected a tiny variant of every shipped model"
    );
    for path in tiny {
        let rs = spec::load(&path).unwrap_or_else(|e| panic!("{}", e.render()));
        let lowered = lower(&rs).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let text: String = lowered.graphs().map(to_text).collect();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        insta::assert_snapshot!(format!("tiny__{name}"), text);
    }
}

#[test]
fn full_size_summaries() {
    for path in specs("models") {
        let rs = spec::load(&path).unwrap_or_else(|e| panic!("{}", e.render()));
        let lowered = lower(&rs).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut out = String::new();
        for g in lowered.graphs() {
            let mut ops: BTreeMap<String, usize> = BTreeMap::new();
            for id in g.g.node_indices() {
                *ops.entry(g.node(id).op.name()).or_default() += 1;
            }
            out += &format!("graph {}: {} nodes\n", g.name, g.g.node_count());
            for (op, n) in ops {
                out += &format!("  {op:<12} {n}\n");
            }
            let inputs: Vec<String> = g
                .inputs_decl()
                .iter()
                .map(|&i| g.node(i).op.attrs().trim_matches('"').to_string())
                .collect();
            let outputs: Vec<String> = g.outputs.iter().map(|(n, _)| n.clone()).collect();
            out += &format!(
                "  inputs: {}\n  outputs: {}\n",
                per_layer_summary(&inputs),
                per_layer_summary(&outputs)
            );
        }
        out += &format!("parameters: {}\n", lowered.parameter_count());
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        insta::assert_snapshot!(format!("full__{name}"), out);
    }
}

/// `tokens, past.{0..31}.k, past.{0..31}.v` instead of 64 cache names.
fn per_layer_summary(names: &[String]) -> String {
    let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
    for n in names {
        let parts: Vec<&str> = n.split('.').collect();
        let key = match parts.as_slice() {
            [a, i, b] if i.parse::<usize>().is_ok() => {
                Some((format!("{a}.{{}}.{b}"), i.parse::<usize>().unwrap()))
            }
            _ => None,
        };
        match key {
            Some((k, i)) => match groups.iter_mut().find(|(g, _)| *g == k) {
                Some((_, v)) => v.push(i),
                None => groups.push((k, vec![i])),
            },
            None => groups.push((n.clone(), vec![])),
        }
    }
    groups
        .into_iter()
        .map(|(k, v)| {
            if v.is_empty() {
                k
            } else {
                k.replace("{}", &format!("{{{}..{}}}", v[0], v[v.len() - 1]))
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}
