//! Chat templates and conversations: kiln's minijinja rendering against
//! transformers' `apply_chat_template` (fixture written by
//! tests/parity/chat_templates.py), the templates real models carry (the
//! SmolLM2 GGUF's; a HF folder's `tokenizer_config.json` and
//! `chat_template.jinja`), the end-of-turn tokens read off them, multi-turn
//! KV-cache reuse, and the `generate --chat` and `chat` commands.

mod common;

use common::real::{minilm_dir, smollm2_gguf};
use kiln_open::chat::{ChatTemplate, Message};
use kiln_open::conversation::{Conversation, Stopped, generate_text, render_ids};
use kiln_open::source::{OpenOptions, open};
use kiln_open::tokenizer::Tokenizer;
use kiln_runtime::Precision;
use kiln_runtime::session::GenerateOptions;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

fn fixture() -> serde_json::Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/parity/chat/expected.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn messages(v: &serde_json::Value) -> Vec<Message> {
    serde_json::from_value(v.clone()).unwrap()
}

#[test]
fn templates_render_exactly_as_transformers_apply_chat_template() {
    let fx = fixture();
    let (bos, eos) = (
        fx["bos_token"].as_str().unwrap(),
        fx["eos_token"].as_str().unwrap(),
    );
    let cases = fx["cases"].as_array().unwrap();
    assert!(cases.len() >= 30, "{} cases", cases.len());
    let mut refused = 0;
    for case in cases {
        let name = case["template"].as_str().unwrap();
        let source = fx["templates"][name].as_str().unwrap();
        let t = ChatTemplate::new(source, name, bos, eos).unwrap();
        let msgs = messages(&case["messages"]);
        let gen_prompt = case["add_generation_prompt"].as_bool().unwrap();
        let got = t.render(&msgs, gen_prompt);
        match (case.get("rendered"), case.get("error")) {
            (Some(want), _) => {
                assert_eq!(
                    got.as_deref().unwrap_or_else(|e| panic!("{name}: {e}")),
                    want.as_str().unwrap(),
                    "{name}, {} messages, add_generation_prompt={gen_prompt}",
                    msgs.len()
                );
            }
            (None, Some(err)) => {
                refused += 1;
                let e = got.expect_err(name).to_string();
                assert!(e.contains(err.as_str().unwrap()), "{name}: {e} vs {err}");
            }
            _ => panic!("case without rendered or error"),
        }
    }
    assert!(refused >= 1, "the fixture has a refused conversation");
}

#[test]
fn smollm2_gguf_carries_its_template_and_ends_turns_at_im_end() {
    let Some(path) = smollm2_gguf() else { return };
    let file = kiln_open::gguf::GgufFile::open(&path).unwrap();
    let tok = file.tokenizer().unwrap().into_tokenizer();
    let t = tok
        .chat_template()
        .unwrap()
        .expect("the Instruct GGUF has a template");
    assert!(
        t.origin().ends_with(": tokenizer.chat_template"),
        "{}",
        t.origin()
    );
    // The same template text transformers rendered in the fixture.
    assert_eq!(
        t.source(),
        fixture()["templates"]["smollm2"].as_str().unwrap()
    );
    let im_end = tok.inner().token_to_id("<|im_end|>").unwrap();
    assert_eq!(t.end_tokens(&tok).unwrap(), vec![im_end]);
    // Special tokens written by the template encode whole, and no BOS is
    // added to the rendered text.
    let ids = render_ids(&t, &tok, &[Message::new("user", "Hi")]).unwrap();
    let im_start = tok.inner().token_to_id("<|im_start|>").unwrap() as i32;
    assert_eq!(ids[0], im_start);
    assert_eq!(ids.iter().filter(|&&i| i == im_start).count(), 3);
    assert_eq!(ids.iter().filter(|&&i| i == im_end as i32).count(), 2);
}

#[test]
fn a_hf_folder_template_comes_from_tokenizer_config_or_chat_template_jinja() {
    let Some(dir) = minilm_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        dir.join("tokenizer.json"),
        tmp.path().join("tokenizer.json"),
    )
    .unwrap();
    // transformers' named-template list; bos/eos as added-token objects.
    let config = serde_json::json!({
        "bos_token": {"content": "[CLS]"},
        "eos_token": "[SEP]",
        "chat_template": [
            {"name": "tool_use", "template": "wrong"},
            {"name": "default", "template": "{{ bos_token }}{% for m in messages %}{{ m.role }}: {{ m.content }}{{ eos_token }}{% endfor %}"}
        ]
    });
    let cfg = tmp.path().join("tokenizer_config.json");
    std::fs::write(&cfg, config.to_string()).unwrap();
    let tok = Tokenizer::from_file(&tmp.path().join("tokenizer.json")).unwrap();
    let t = tok.chat_template().unwrap().unwrap();
    assert_eq!(t.origin(), format!("{}: chat_template", cfg.display()));
    let text = t.render(&[Message::new("user", "hello")], false).unwrap();
    assert_eq!(text, "[CLS]user: hello[SEP]");
    // [SEP] follows a reply: it ends the turn.
    let sep = tok.inner().token_to_id("[SEP]").unwrap();
    assert_eq!(t.end_tokens(&tok).unwrap(), vec![sep]);

    // No template in the config: chat_template.jinja beside it.
    std::fs::write(&cfg, r#"{"eos_token": "[SEP]"}"#).unwrap();
    let jinja = tmp.path().join("chat_template.jinja");
    std::fs::write(
        &jinja,
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}\n",
    )
    .unwrap();
    let tok = Tokenizer::from_file(&tmp.path().join("tokenizer.json")).unwrap();
    let t = tok.chat_template().unwrap().unwrap();
    assert_eq!(t.origin(), jinja.display().to_string());
    assert_eq!(
        t.render(&[Message::new("user", "x")], true).unwrap(),
        "<user>x"
    );
    assert_eq!(t.end_tokens(&tok).unwrap(), Vec::<u32>::new());

    // A template that does not compile names its file and line.
    std::fs::write(&jinja, "ok\n{% for m in messages %}").unwrap();
    let tok = Tokenizer::from_file(&tmp.path().join("tokenizer.json")).unwrap();
    let e = tok.chat_template().unwrap_err().to_string();
    assert!(
        e.starts_with(&format!(
            "{}: the chat template does not compile",
            jinja.display()
        )),
        "{e}"
    );
    assert!(e.contains("line"), "{e}");
}

#[test]
fn a_second_turn_reuses_the_cache_and_answers_as_a_fresh_session_would() {
    let Some(path) = smollm2_gguf() else { return };
    let opts = OpenOptions {
        precision: Precision::F32,
        ..OpenOptions::default()
    };
    let loaded = open(&path, opts).unwrap();
    let tok = loaded.tokenizer.as_ref().unwrap();
    let mut conv = Conversation::new(&loaded.model, tok, None, None).unwrap();
    let gen_opts = GenerateOptions {
        max_new_tokens: 12,
        ..GenerateOptions::default()
    };
    let mut streamed = String::new();
    let first = conv
        .reply("What is the capital of France?", &gen_opts, &[], &mut |p| {
            streamed.push_str(p);
            true
        })
        .unwrap();
    assert_eq!(streamed, first.text);
    assert!(first.text.contains("Paris"), "{:?}", first.text);
    assert_eq!(first.fed_tokens, first.prompt_tokens);
    let second = conv
        .reply("And of Italy?", &gen_opts, &[], &mut |_| true)
        .unwrap();
    // Only the new turn was fed: the cache held the first prompt and reply.
    assert!(
        second.fed_tokens < 20 && second.prompt_tokens > first.prompt_tokens + first.tokens.len(),
        "fed {} of {}",
        second.fed_tokens,
        second.prompt_tokens
    );
    assert_eq!(conv.history().len(), 4);
    assert_eq!(conv.history()[3].content, second.text);
    // A fresh session fed the whole rendered conversation says the same.
    let ids = render_ids(conv.template(), tok, &conv.history()[..3]).unwrap();
    assert_eq!(ids.len(), second.prompt_tokens);
    let mut session = loaded.model.session();
    let mut fresh_opts = gen_opts.clone();
    fresh_opts.stop_tokens = conv.stop_tokens().to_vec();
    let (text, _, _) =
        generate_text(&mut session, tok, &ids, &fresh_opts, &[], &mut |_| true).unwrap();
    assert_eq!(text, second.text);
    // Stop strings end the reply before the string.
    conv.reset();
    assert!(conv.history().is_empty());
    let r = conv
        .reply(
            "What is the capital of France?",
            &gen_opts,
            &["Paris".to_string()],
            &mut |_| true,
        )
        .unwrap();
    assert_eq!(r.stopped, Stopped::StopText);
    assert!(
        !r.text.contains("Paris") && r.text.len() < first.text.len(),
        "{:?}",
        r.text
    );
}

fn kiln() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
}

#[test]
fn generate_chat_renders_the_template_and_stops_at_the_end_of_turn() {
    let Some(path) = smollm2_gguf() else { return };
    let out = kiln()
        .arg("generate")
        .arg(&path)
        .args([
            "--chat",
            "--system",
            "You are terse.",
            "--prompt",
            "Hi there!",
        ])
        .args(["--max-tokens", "48", "--format", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let fx = fixture();
    let case = (fx["cases"].as_array().unwrap().iter())
        .find(|c| {
            c["template"] == "smollm2"
                && c["add_generation_prompt"] == true
                && c["messages"][0]["content"] == "You are terse."
        })
        .unwrap();
    // The fixture's user message has surrounding spaces; ChatML keeps them.
    let want = case["rendered"]
        .as_str()
        .unwrap()
        .replace("  Hi there!  ", "Hi there!");
    assert_eq!(v["prompt_text"], want);
    assert_eq!(v["stopped"], "stop_token", "{v}");
    assert_eq!(
        v["tokens"].as_array().unwrap().last().unwrap(),
        2,
        "ends at <|im_end|>"
    );
    assert!(!v["text"].as_str().unwrap().contains("<|im_end|>"));

    // Without a tokenizer there is no chat, and the error says what to give.
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny/gpt2.toml");
    let out = kiln()
        .arg("generate")
        .arg(&spec)
        .args(["--chat", "--prompt", "hi"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--chat needs a tokenizer"), "{err}");
}

#[test]
fn chat_answers_each_line_and_resets_on_request() {
    let Some(path) = smollm2_gguf() else { return };
    let mut child = kiln()
        .arg("chat")
        .arg(&path)
        .args(["--max-tokens", "24", "--precision", "f32"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"What is the capital of France?\n/reset\nWhat is the capital of \\\nFrance?\n/exit\nignored\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let replies: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(replies.len(), 2, "{text:?}");
    // After /reset the same question (continued over two lines, so its
    // text differs by a newline) starts from an empty history.
    assert!(
        replies[0].contains("Paris") || replies[1].contains("Paris"),
        "{text:?}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("(conversation reset)"));

    // A template file that does not compile is named with its line.
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("t.jinja");
    std::fs::write(&bad, "{% if %}").unwrap();
    let out = kiln()
        .arg("chat")
        .arg(&path)
        .arg("--chat-template")
        .arg(&bad)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}: the chat template does not compile",
            bad.display()
        )),
        "{err}"
    );
}
