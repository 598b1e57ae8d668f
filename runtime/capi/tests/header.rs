//! include/kiln.h is generated from src/lib.rs by cbindgen; this test
//! regenerates it and fails when the committed header differs, so the header
//! cannot drift from the code. `KILN_BLESS=1` writes the new header instead.

use std::path::Path;

#[test]
fn header_matches_the_code() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(root.join("src/lib.rs"))
        .generate()
        .expect("cbindgen generates the header");
    let mut generated = Vec::new();
    bindings.write(&mut generated);
    let generated = String::from_utf8(generated).expect("UTF-8 header");
    let path = root.join("include/kiln.h");
    if std::env::var("KILN_BLESS").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &generated).expect("write include/kiln.h");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != generated {
        let first = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(committed.lines().count().min(generated.lines().count()));
        panic!(
            "runtime/capi/include/kiln.h is out of date (first difference at line {}); \
             regenerate it with `KILN_BLESS=1 cargo test -p kiln-capi --test header` and review the diff",
            first + 1
        );
    }
    for f in [
        "kiln_model_open",
        "kiln_session_forward",
        "kiln_session_generate",
        "kiln_model_embed",
        "kiln_last_error",
        "kiln_model_free",
        "typedef struct KilnModel KilnModel;",
        "typedef bool (*KilnTokenCallback)",
    ] {
        assert!(generated.contains(f), "{f} missing from the header");
    }
}
