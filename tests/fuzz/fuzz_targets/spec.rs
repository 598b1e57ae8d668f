//! Spec TOML -> parse, `extends`, validation, per-layer expansion -> lowering -> cost.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        kiln_fuzz::spec_text(text);
    }
});
