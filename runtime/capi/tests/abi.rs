//! The C ABI called as C would call it: handles, buffers, callbacks, errors.

use kiln_capi::*;
use std::ffi::{CStr, CString, c_void};
use std::ptr::{null, null_mut};

fn spec(name: &str) -> CString {
    CString::new(format!(
        "{}/../../models/tiny/{name}.toml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn last_error() -> String {
    let p = kiln_last_error();
    assert!(!p.is_null(), "no error message");
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

fn open(name: &str, backend: i32) -> *mut KilnModel {
    let m = unsafe { kiln_model_open(spec(name).as_ptr(), null(), 0, backend) };
    assert!(
        !m.is_null(),
        "{}",
        if m.is_null() {
            last_error()
        } else {
            String::new()
        }
    );
    m
}

fn info(m: *const KilnModel) -> KilnModelInfo {
    let mut i = KilnModelInfo::default();
    assert_eq!(unsafe { kiln_model_info(m, &mut i) }, KilnStatus::Ok);
    i
}

fn forward(
    s: *mut KilnSession,
    tokens: &[i32],
    vocab: usize,
) -> Result<Vec<f32>, (KilnStatus, String)> {
    let mut out = vec![0.0; tokens.len() * vocab];
    let mut len = 0;
    let st = unsafe {
        kiln_session_forward(
            s,
            tokens.as_ptr(),
            tokens.len(),
            out.as_mut_ptr(),
            out.len(),
            &mut len,
        )
    };
    if st != KilnStatus::Ok {
        return Err((st, last_error()));
    }
    assert_eq!(len, out.len());
    Ok(out)
}

#[test]
fn open_errors_are_messages_and_null() {
    unsafe {
        let missing = CString::new("no/such/spec.toml").unwrap();
        assert!(kiln_model_open(missing.as_ptr(), null(), 0, KILN_BACKEND_JIT).is_null());
        assert!(
            last_error().contains("no/such/spec.toml"),
            "{}",
            last_error()
        );
        assert!(kiln_model_open(null(), null(), 0, KILN_BACKEND_JIT).is_null());
        assert_eq!(last_error(), "path is NULL");
        assert!(kiln_model_open(spec("gpt2").as_ptr(), null(), 0, 9).is_null());
        assert!(last_error().contains("unknown backend 9"));
        // A broken spec reports file, line and the fix, like the CLI.
        let dir = std::env::temp_dir().join(format!("kiln-capi-abi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "extends = \"gpt2\"\nlayres = 2\n").unwrap();
        let p = CString::new(bad.to_str().unwrap()).unwrap();
        assert!(kiln_model_open(p.as_ptr(), null(), 0, KILN_BACKEND_JIT).is_null());
        let e = last_error();
        assert!(
            e.contains("bad.toml:2:1: error: unknown key `layres`"),
            "{e}"
        );
        assert!(e.contains("did you mean `layers`?"), "{e}");
        // Weights beyond the machine's memory: the same up-front error as
        // the Rust API and the CLI, never an allocation abort.
        if std::path::Path::new("/proc/meminfo").exists() {
            let huge = dir.join("huge.toml");
            std::fs::write(
                &huge,
                "extends = \"llama-2-7b\"\nvocab_size = 16777216\nd_model = 16384\n[attention]\nheads = 128\n",
            )
            .unwrap();
            let p = CString::new(huge.to_str().unwrap()).unwrap();
            assert!(kiln_model_open(p.as_ptr(), null(), 0, KILN_BACKEND_JIT).is_null());
            let e = last_error();
            assert!(
                e.contains("the weights need")
                    && e.contains("the memory available on this machine"),
                "{e}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
        // NULL handles are errors everywhere, and free functions ignore them.
        let mut i = KilnModelInfo::default();
        assert_eq!(kiln_model_info(null(), &mut i), KilnStatus::InvalidArgument);
        assert!(kiln_session_new(null()).is_null());
        assert_eq!(kiln_session_past_len(null()), 0);
        kiln_model_free(null_mut());
        kiln_session_free(null_mut());
        kiln_string_free(null_mut());
        assert!(!CStr::from_ptr(kiln_version()).to_bytes().is_empty());
    }
}

#[test]
fn forward_checks_pointers_lengths_and_buffers() {
    let m = open("gpt2", KILN_BACKEND_JIT);
    let i = info(m);
    assert!(i.has_decoder && !i.has_encoder && !i.has_tokenizer);
    unsafe {
        let s = kiln_session_new(m);
        let t = [1, 2, 3];
        let mut len = 0;
        // Size query: nothing runs, the cache stays empty.
        assert_eq!(
            kiln_session_forward(s, t.as_ptr(), 3, null_mut(), 0, &mut len),
            KilnStatus::BufferTooSmall
        );
        assert_eq!(len, 3 * i.vocab_size);
        let mut small = vec![0.0f32; 5];
        assert_eq!(
            kiln_session_forward(s, t.as_ptr(), 3, small.as_mut_ptr(), 5, &mut len),
            KilnStatus::BufferTooSmall
        );
        assert_eq!(kiln_session_past_len(s), 0);
        // NULL tokens, zero tokens, and a length beyond max_positions never touch memory.
        assert_eq!(
            kiln_session_forward(s, null(), 3, small.as_mut_ptr(), 5, &mut len),
            KilnStatus::InvalidArgument
        );
        assert_eq!(
            kiln_session_forward(s, t.as_ptr(), 0, small.as_mut_ptr(), 5, &mut len),
            KilnStatus::InvalidArgument
        );
        let mut big = vec![0.0f32; 1];
        assert_eq!(
            kiln_session_forward(s, t.as_ptr(), usize::MAX / 2, big.as_mut_ptr(), 1, &mut len),
            KilnStatus::Error
        );
        assert!(last_error().contains("max_positions"), "{}", last_error());
        assert_eq!(
            kiln_session_forward(null_mut(), t.as_ptr(), 3, big.as_mut_ptr(), 1, &mut len),
            KilnStatus::InvalidArgument
        );

        // Incremental decoding through the cache equals one full pass.
        let full = forward(s, &[1, 2, 3, 4], i.vocab_size).unwrap();
        assert_eq!(kiln_session_past_len(s), 4);
        let s2 = kiln_session_new(m);
        forward(s2, &[1, 2, 3], i.vocab_size).unwrap();
        let last = forward(s2, &[4], i.vocab_size).unwrap();
        for (a, b) in last.iter().zip(&full[3 * i.vocab_size..]) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
        // Out-of-range ids are errors; the session is unchanged.
        let (st, e) = forward(s2, &[-1], i.vocab_size).unwrap_err();
        assert_eq!(st, KilnStatus::Error);
        assert!(e.contains("outside the vocabulary"), "{e}");
        assert_eq!(kiln_session_past_len(s2), 4);
        kiln_session_free(s);
        // The model may go before its sessions.
        kiln_model_free(m);
        forward(s2, &[5], i.vocab_size).unwrap();
        kiln_session_free(s2);
    }
}

unsafe extern "C" fn collect(token: i32, user: *mut c_void) -> bool {
    let v = unsafe { &mut *(user as *mut Vec<i32>) };
    v.push(token);
    v.len() < 3 // stop after three
}

#[test]
fn generate_streams_and_stops() {
    let m = open("llama-2-7b", KILN_BACKEND_JIT);
    unsafe {
        let s = kiln_session_new(m);
        let prompt = [3, 1, 4];
        let mut opts = kiln_generate_options_default();
        opts.max_new_tokens = 6;
        let mut out = [0i32; 6];
        let mut n = 0;
        let st = kiln_session_generate(
            s,
            prompt.as_ptr(),
            3,
            &opts,
            None,
            null_mut(),
            out.as_mut_ptr(),
            6,
            &mut n,
        );
        assert_eq!(st, KilnStatus::Ok, "{}", last_error());
        assert_eq!(n, 6);
        let all = out;

        // The callback sees each token and can stop early.
        let s2 = kiln_session_new(m);
        let mut seen: Vec<i32> = Vec::new();
        let st = kiln_session_generate(
            s2,
            prompt.as_ptr(),
            3,
            &opts,
            Some(collect),
            (&mut seen as *mut Vec<i32>).cast(),
            out.as_mut_ptr(),
            6,
            &mut n,
        );
        assert_eq!(st, KilnStatus::Ok);
        assert_eq!(seen, all[..3]);
        assert_eq!(&out[..n], &all[..3]);

        // Stop tokens, and a buffer smaller than max_new_tokens.
        let s3 = kiln_session_new(m);
        opts.stop_tokens = &all[1];
        opts.n_stop_tokens = 1;
        let st = kiln_session_generate(
            s3,
            prompt.as_ptr(),
            3,
            &opts,
            None,
            null_mut(),
            out.as_mut_ptr(),
            6,
            &mut n,
        );
        assert_eq!(st, KilnStatus::Ok);
        assert_eq!(&out[..n], &all[..2]);
        assert_eq!(
            kiln_session_generate(
                s3,
                prompt.as_ptr(),
                3,
                &opts,
                None,
                null_mut(),
                out.as_mut_ptr(),
                2,
                &mut n
            ),
            KilnStatus::BufferTooSmall
        );
        assert_eq!(n, 6);
        opts.temperature = f32::NAN;
        assert_eq!(
            kiln_session_generate(
                s3,
                prompt.as_ptr(),
                3,
                &opts,
                None,
                null_mut(),
                null_mut(),
                0,
                &mut n
            ),
            KilnStatus::InvalidArgument
        );
        assert!(last_error().contains("temperature"));
        for s in [s, s2, s3] {
            kiln_session_free(s);
        }
        kiln_model_free(m);
    }
}

/// One model handle, eight threads, each with its own session and tokens:
/// every result equals the single-threaded one; errors stay on their thread.
#[test]
fn one_model_many_threads() {
    let m = open("gpt2", KILN_BACKEND_JIT);
    let vocab = info(m).vocab_size;
    let inputs: Vec<Vec<i32>> = (0..8).map(|i| vec![i + 1, 2 * i + 3, 5, 7 + i]).collect();
    let single: Vec<Vec<f32>> = inputs
        .iter()
        .map(|t| unsafe {
            let s = kiln_session_new(m);
            let o = forward(s, t, vocab).unwrap();
            kiln_session_free(s);
            o
        })
        .collect();
    struct Shared(*const KilnModel);
    unsafe impl Sync for Shared {}
    let shared = Shared(m);
    std::thread::scope(|sc| {
        for (t, want) in inputs.iter().zip(&single) {
            let shared = &shared;
            sc.spawn(move || unsafe {
                let s = kiln_session_new(shared.0);
                assert_eq!(&forward(s, t, vocab).unwrap(), want);
                let (_, e) = forward(s, &[vocab as i32 + t[0]], vocab).unwrap_err();
                assert!(
                    e.contains(&format!("token id {}", vocab as i32 + t[0])),
                    "{e}"
                );
                kiln_session_free(s);
            });
        }
    });
    unsafe { kiln_model_free(m) };
}

#[test]
fn jit_and_reference_agree() {
    let (j, r) = (
        open("llama-2-7b", KILN_BACKEND_JIT),
        open("llama-2-7b", KILN_BACKEND_REFERENCE),
    );
    let vocab = info(j).vocab_size;
    unsafe {
        let (sj, sr) = (kiln_session_new(j), kiln_session_new(r));
        let a = forward(sj, &[5, 9, 2], vocab).unwrap();
        let b = forward(sr, &[5, 9, 2], vocab).unwrap();
        let scale = b.iter().map(|x| x.abs()).fold(0.0f32, f32::max).max(1.0);
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-4 * scale, "{x} vs {y}");
        }
        kiln_session_free(sj);
        kiln_session_free(sr);
        kiln_model_free(j);
        kiln_model_free(r);
    }
}

#[test]
fn embeddings_of_a_mean_pool_model() {
    let m = open("all-minilm-l6-v2", KILN_BACKEND_JIT);
    let i = info(m);
    assert!(i.has_encoder && !i.has_decoder);
    assert_eq!(i.embedding_dim, i.d_model);
    unsafe {
        let t = [1, 2, 3];
        let mut out = vec![0.0f32; i.embedding_dim];
        let mut len = 0;
        assert_eq!(
            kiln_model_embed(m, t.as_ptr(), 3, out.as_mut_ptr(), out.len(), &mut len),
            KilnStatus::Ok
        );
        assert_eq!(len, i.embedding_dim);
        assert!(out.iter().any(|x| *x != 0.0));
        let mut short = [0.0f32; 2];
        assert_eq!(
            kiln_model_embed(m, t.as_ptr(), 3, short.as_mut_ptr(), 2, &mut len),
            KilnStatus::BufferTooSmall
        );
        assert_eq!(len, i.embedding_dim);
        // A decoder-only model has no embedding head; an encoder has no logits.
        let s = kiln_session_new(m);
        assert_eq!(
            kiln_session_forward(s, t.as_ptr(), 3, out.as_mut_ptr(), out.len(), &mut len),
            KilnStatus::Error
        );
        assert!(last_error().contains("kiln_model_embed"));
        kiln_session_free(s);
        // No tokenizer in a spec: text functions say so.
        let text = CString::new("hello").unwrap();
        assert_eq!(
            kiln_model_embed_text(m, text.as_ptr(), out.as_mut_ptr(), out.len(), &mut len),
            KilnStatus::Error
        );
        assert!(last_error().contains("no tokenizer"));
        kiln_model_free(m);
    }
    let g = open("gpt2", KILN_BACKEND_JIT);
    unsafe {
        let mut out = [0.0f32; 4];
        let mut len = 0;
        assert_eq!(
            kiln_model_embed(g, [1].as_ptr(), 1, out.as_mut_ptr(), 4, &mut len),
            KilnStatus::Error
        );
        assert!(last_error().contains("no sentence-embedding head"));
        kiln_model_free(g);
    }
}

/// With the real all-MiniLM-L6-v2 (KILN_MINILM_DIR): tokenize, detokenize and
/// embed text through the C ABI; same vector as the Rust API.
#[test]
fn text_functions_with_minilm() {
    let Some(dir) = std::env::var_os("KILN_MINILM_DIR") else {
        if std::env::var("KILN_REQUIRE_REAL").is_ok_and(|v| v == "1") {
            panic!("KILN_MINILM_DIR is not set");
        }
        eprintln!("SKIPPED: KILN_MINILM_DIR is not set");
        return;
    };
    let path = CString::new(dir.to_str().unwrap()).unwrap();
    unsafe {
        let m = kiln_model_open(path.as_ptr(), null(), 0, KILN_BACKEND_JIT);
        assert!(!m.is_null(), "{}", last_error());
        let i = info(m);
        assert!(i.has_tokenizer && i.embedding_dim == 384);
        let text = CString::new("A cat sits on the mat.").unwrap();
        let mut ids = [0i32; 32];
        let mut n = 0;
        assert_eq!(
            kiln_tokenize(m, text.as_ptr(), ids.as_mut_ptr(), 32, &mut n),
            KilnStatus::Ok
        );
        assert_eq!(ids[0], 101); // [CLS]
        assert_eq!(
            kiln_tokenize(m, text.as_ptr(), ids.as_mut_ptr(), 2, &mut n),
            KilnStatus::BufferTooSmall
        );
        let mut s = null_mut();
        assert_eq!(kiln_detokenize(m, ids.as_ptr(), n, &mut s), KilnStatus::Ok);
        assert_eq!(
            CStr::from_ptr(s).to_str().unwrap(),
            "a cat sits on the mat."
        );
        kiln_string_free(s);
        let mut a = vec![0.0f32; 384];
        let mut b = vec![0.0f32; 384];
        let mut len = 0;
        assert_eq!(
            kiln_model_embed_text(m, text.as_ptr(), a.as_mut_ptr(), 384, &mut len),
            KilnStatus::Ok
        );
        assert_eq!(
            kiln_model_embed(m, ids.as_ptr(), n, b.as_mut_ptr(), 384, &mut len),
            KilnStatus::Ok
        );
        assert_eq!(a, b);
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
        let bad = [i32::MAX];
        assert_eq!(
            kiln_detokenize(m, bad.as_ptr(), 1, &mut s),
            KilnStatus::Error
        );
        // Too many ids for one call: refused before the ids are read, and
        // the message names the call's limit, not the model's context.
        assert_eq!(
            kiln_detokenize(m, bad.as_ptr(), (1 << 24) + 1, &mut s),
            KilnStatus::Error
        );
        let msg = std::ffi::CStr::from_ptr(kiln_last_error())
            .to_str()
            .unwrap();
        assert!(
            msg.contains("kiln_detokenize's limit of 16777216") && !msg.contains("max_positions"),
            "{msg}"
        );
        kiln_model_free(m);
    }
}
