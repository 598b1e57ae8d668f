//! Every `tests/specs/broken/*.toml` must fail to load with exactly the error
//! in its sibling `*.err` file (`SpecError::render()`, paths relative to the
//! repository root). Run with `KILN_BLESS=1` to (re)write the `.err` files —
//! then review the diff: the text is the user-facing message.

use std::path::{Path, PathBuf};

fn broken_specs(root: &Path) -> Vec<PathBuf> {
    let dir = root.join("tests/specs/broken");
    let mut specs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "toml"))
        .collect();
    specs.sort();
    specs
}

#[test]
fn broken_specs_fail_with_the_expected_error() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let prefix = format!("{}/", root.display());
    let bless = std::env::var_os("KILN_BLESS").is_some();
    let specs = broken_specs(root);
    assert!(
        specs.len() >= 30,
        "expected at least 30 broken specs, found {}",
        specs.len()
    );

    let mut failures = Vec::new();
    for spec in &specs {
        let rel = spec
            .strip_prefix(root)
            .unwrap_or(spec)
            .display()
            .to_string();
        let got = match kiln_compiler::spec::load(spec) {
            Ok(_) => {
                failures.push(format!("{rel}: loaded without error"));
                continue;
            }
            Err(e) => e.render().replace(&prefix, ""),
        };
        let err_file = spec.with_extension("err");
        if bless {
            std::fs::write(&err_file, format!("{got}\n"))
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", err_file.display()));
            continue;
        }
        match std::fs::read_to_string(&err_file) {
            Ok(want) if want.trim_end() == got => {}
            Ok(want) => failures.push(format!(
                "{rel}: error differs\n--- expected\n{}\n--- got\n{got}",
                want.trim_end()
            )),
            Err(_) => failures.push(format!(
                "{rel}: no {} (run with KILN_BLESS=1 to create it)\n--- got\n{got}",
                err_file
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("?.err")
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} broken specs misbehave:\n\n{}",
        failures.len(),
        specs.len(),
        failures.join("\n\n")
    );
}

#[test]
fn every_err_file_has_a_spec() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("tests/specs/broken");
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.extension().is_some_and(|e| e == "err") {
            assert!(
                p.with_extension("toml").is_file(),
                "{} has no matching .toml",
                p.display()
            );
        }
    }
}

#[test]
fn errors_name_a_line_and_column_and_give_help() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for spec in broken_specs(root) {
        let e = match kiln_compiler::spec::load(&spec) {
            Ok(_) => continue, // reported by the test above
            Err(e) => e,
        };
        assert!(
            e.line.is_some() && e.column.is_some(),
            "{}: no position",
            spec.display()
        );
        assert!(e.help.is_some(), "{}: no help", spec.display());
        assert!(e.snippet.is_some(), "{}: no source snippet", spec.display());
    }
}
