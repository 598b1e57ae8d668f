//! Snapshots of what kiln compiles for the custom variant. After an
//! intended change, review the new text with `cargo insta review` (or run
//! with `INSTA_UPDATE=always` and read the `.snap` diff) before committing.

use kiln_example_custom_variant::SPEC;

#[test]
fn resolved_spec() -> Result<(), kiln::Error> {
    insta::assert_snapshot!(kiln::compile_str(SPEC)?.spec_text());
    Ok(())
}

#[test]
fn graph_ir() -> Result<(), kiln::Error> {
    insta::assert_snapshot!(kiln::compile_str(SPEC)?.ir_text());
    Ok(())
}

#[test]
fn kernel_ir() -> Result<(), kiln::Error> {
    insta::assert_snapshot!(kiln::compile_str(SPEC)?.kernels_text());
    Ok(())
}

/// The text forms are the ones the `kiln` command prints for the same file.
#[test]
fn file_and_string_compile_alike() -> Result<(), kiln::Error> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("parallel-alibi-gqa.toml");
    let (file, string) = (kiln::compile_file(&path)?, kiln::compile_str(SPEC)?);
    assert_eq!(file.ir_text(), string.ir_text());
    assert_eq!(file.kernels_text(), string.kernels_text());
    Ok(())
}

/// A mistake in a variant is reported against the text, with a fix.
#[test]
fn a_typo_is_reported_with_its_position() {
    let broken = SPEC.replace("kv_heads = 2", "kv_heads = 3");
    let err = kiln::compile_str(&broken).unwrap_err().to_string();
    assert!(err.starts_with("<string>:14:"), "{err}");
    assert!(err.contains("kv_heads"), "{err}");
}
