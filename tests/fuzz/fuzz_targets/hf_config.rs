//! Hugging Face config.json -> import -> validation -> lowering -> cost.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        kiln_fuzz::hf_config(text);
    }
});
