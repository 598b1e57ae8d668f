//! The example's parts on its default spec (random weights): streaming
//! delivers exactly the generated tokens, threads sharing one compiled model
//! agree with one thread, and the binary runs end to end.

use kiln_example_generate_stream::{
    default_spec, generate_parallel, open_model, prompt_ids, stream,
};
use std::process::Command;

#[test]
fn streamed_pieces_are_the_generated_tokens() {
    let loaded = open_model(&default_spec(), 7).unwrap();
    let mut pieces = Vec::new();
    let ids = stream(&loaded, &[5, 6, 7], 6, &mut |p| pieces.push(p.to_string())).unwrap();
    assert_eq!(ids.len(), 6);
    let streamed: Vec<i32> = pieces.iter().map(|p| p.trim().parse().unwrap()).collect();
    assert_eq!(streamed, ids);
    // Greedy decoding through the KV cache equals the argmax of a full forward pass.
    let mut all = vec![5, 6, 7];
    all.extend(&ids[..5]);
    let out = loaded.model.session().forward(&all).unwrap();
    let logits = out["logits"].to_f32_vec();
    let vocab = loaded.spec.spec.vocab_size;
    let last = kiln::runtime::session::argmax(&logits[(all.len() - 1) * vocab..]);
    assert_eq!(last as i32, ids[5]);
}

#[test]
fn threads_sharing_one_model_match_one_thread() {
    let loaded = open_model(&default_spec(), 0).unwrap();
    let prompts: Vec<Vec<i32>> = (0..6).map(|i| vec![1 + i, 40 + 3 * i, 7]).collect();
    let parallel = generate_parallel(&loaded.model, &prompts, 8);
    for (p, got) in prompts.iter().zip(parallel) {
        let alone = loaded.model.session().generate_greedy(p, 8, None).unwrap();
        assert_eq!(got.unwrap(), alone, "prompt {p:?}");
    }
}

#[test]
fn prompts_without_a_tokenizer_are_ids() {
    let loaded = open_model(&default_spec(), 0).unwrap();
    assert_eq!(prompt_ids(&loaded, "1, 2,3").unwrap(), [1, 2, 3]);
    let err = prompt_ids(&loaded, "hello").unwrap_err();
    assert!(err.contains("no tokenizer"), "{err}");
    // Out-of-vocabulary ids are an error from the runtime, not a crash.
    let err = stream(&loaded, &[100_000], 2, &mut |_| {}).unwrap_err();
    assert!(err.contains("outside the vocabulary"), "{err}");
}

#[test]
fn binary_streams_then_runs_threads() {
    let out = Command::new(env!("CARGO_BIN_EXE_generate-stream"))
        .args(["--max-tokens", "5", "--threads", "3", "--prompt", "4,5,6"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert_eq!(lines[0].split_whitespace().count(), 5, "{stdout}");
    // Thread 0's prompt is the streamed one: same tokens.
    let streamed: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(lines[1], format!("thread 0: [{}]", streamed.join(", ")));
    assert!(lines[3].starts_with("thread 2: ["), "{stdout}");

    let bad = Command::new(env!("CARGO_BIN_EXE_generate-stream"))
        .args(["no/such/model.toml"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no/such/model.toml"));
}
