//! examples/c/main.c compiled with the system C compiler against this
//! crate's shared library and run: the logits it prints match the Rust
//! API's (what `kiln run models/tiny/gpt2.toml --tokens … --seed 0` prints)
//! to 1e-5, and its streamed tokens match greedy generation.

use kiln_open::source::{OpenOptions, open};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The directory holding libkiln_capi.so: cargo puts the library next to
/// the `deps` folder this test binary runs from.
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let deps = exe.parent().expect("deps dir");
    for dir in [deps, deps.parent().unwrap_or(deps)] {
        if dir
            .join(format!(
                "{}kiln_capi{}",
                std::env::consts::DLL_PREFIX,
                std::env::consts::DLL_SUFFIX
            ))
            .exists()
        {
            return dir.to_path_buf();
        }
    }
    panic!(
        "libkiln_capi shared library not found next to {}",
        exe.display()
    );
}

fn build_example(out: &Path) {
    let cc = std::env::var("CC").unwrap_or_else(|_| "gcc".into());
    let lib = lib_dir();
    let status = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic"])
        .arg("-I")
        .arg(repo().join("runtime/capi/include"))
        .arg(repo().join("examples/c/main.c"))
        .arg("-L")
        .arg(&lib)
        .arg("-lkiln_capi")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-o")
        .arg(out)
        .status()
        .unwrap_or_else(|e| panic!("cannot run the C compiler `{cc}` (set CC): {e}"));
    assert!(status.success(), "compiling examples/c/main.c failed");
}

#[test]
fn c_example_prints_the_rust_apis_logits() {
    let dir = std::env::temp_dir().join(format!("kiln-capi-c-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join("kiln-c-example");
    build_example(&exe);

    let spec = repo().join("models/tiny/gpt2.toml");
    let tokens = [1, 2, 3, 17];
    let list = tokens.map(|t| t.to_string()).join(",");
    let out = Command::new(&exe).arg(&spec).arg(&list).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);

    let mut lines = stdout.lines();
    let header: Vec<usize> = lines
        .next()
        .and_then(|l| l.strip_prefix("logits "))
        .expect("a `logits ROWS COLS` line")
        .split(' ')
        .map(|x| x.parse().unwrap())
        .collect();
    let (rows, cols) = (header[0], header[1]);
    let c_logits: Vec<f32> = lines
        .by_ref()
        .take(rows)
        .flat_map(|l| {
            l.split(' ')
                .map(|x| x.parse::<f32>().unwrap())
                .collect::<Vec<_>>()
        })
        .collect();

    let loaded = open(
        &spec,
        OpenOptions {
            seed: 0,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    assert_eq!((rows, cols), (tokens.len(), loaded.spec.spec.vocab_size));
    let want = loaded.model.session().forward(&tokens).unwrap()["logits"].to_f32_vec();
    assert_eq!(c_logits.len(), want.len());
    let worst = c_logits
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        worst <= 1e-5,
        "C logits differ from the Rust API's by {worst}"
    );

    let ids = |prefix: &str| -> Vec<i32> {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("{prefix} in {stdout}"));
        line.split(':')
            .nth(1)
            .unwrap()
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect()
    };
    let greedy = loaded
        .model
        .session()
        .generate_greedy(&tokens, 5, None)
        .unwrap();
    assert_eq!(ids("streamed:"), greedy);
    assert_eq!(ids("generated 5:"), greedy);
    let error = stdout
        .lines()
        .find(|l| l.starts_with("expected error: "))
        .unwrap_or_else(|| panic!("no error line in {stdout}"));
    assert!(
        error.contains("token id 263 is outside the vocabulary"),
        "{error}"
    );
}
