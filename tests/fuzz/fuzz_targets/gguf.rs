//! A GGUF file -> parse -> dequantise every tensor -> spec, tokenizer, weights.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| kiln_fuzz::gguf(data));
