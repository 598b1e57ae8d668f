//! Random valid specs -> passes, fusion, Cranelift -> the JIT against the
//! reference interpreter (see `kiln_fuzz::jit_against_interpreter`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kiln_fuzz::jit_against_interpreter(data);
});
