//! A safetensors file -> header validation -> f32 reads -> pre-flight and load.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| kiln_fuzz::safetensors(data));
