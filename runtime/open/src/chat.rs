//! Chat templates: the Jinja template a model carries (GGUF
//! `tokenizer.chat_template`, or `chat_template` in a HF folder's
//! `tokenizer_config.json` / `chat_template.jinja`), rendered with
//! minijinja the way transformers' `apply_chat_template` renders it:
//! `trim_blocks` and `lstrip_blocks` on, loop controls, Python string
//! methods (`.strip()`, `.startswith()`, …), `raise_exception`,
//! `strftime_now`, and a `tojson` that writes what Python's `json.dumps`
//! writes. The context has `messages`, `add_generation_prompt` and the
//! special tokens as text (`bos_token`, `eos_token`).
//!
//! Where generation stops is read off the template itself
//! ([`ChatTemplate::end_tokens`]): the special token it writes right after an
//! assistant message (`<|im_end|>`, `<|eot_id|>`, `</s>`, …).
//!
//! ```
//! use kiln_open::chat::{ChatTemplate, Message};
//! let t = ChatTemplate::new(
//!     "{% for m in messages %}<|{{ m.role }}|>{{ m.content | trim }}<|end|>\n{% endfor %}\
//!      {% if add_generation_prompt %}<|assistant|>{% endif %}",
//!     "example",
//!     "<s>",
//!     "</s>",
//! )?;
//! let text = t.render(&[Message::new("user", " Hi! ")], true)?;
//! assert_eq!(text, "<|user|>Hi!<|end|>\n<|assistant|>");
//! # Ok::<(), kiln_open::chat::ChatError>(())
//! ```

use crate::tokenizer::Tokenizer;
use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error as JinjaError, ErrorKind};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant` (templates may accept others, such as `tool`).
    pub role: String,
    /// The message text.
    pub content: String,
}

impl Message {
    /// A message from `role`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Why a chat template could not be compiled or rendered.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// The template is not valid Jinja (or uses something minijinja lacks).
    #[error("{origin}: the chat template does not compile: {message}")]
    Syntax {
        /// Where the template came from (`FILE: tokenizer.chat_template`).
        origin: String,
        /// minijinja's message, with the template line.
        message: String,
    },
    /// Rendering failed: the template raised (`raise_exception`, for
    /// example "Conversation roles must alternate") or hit an error.
    #[error("{origin}: the chat template failed: {message}")]
    Render {
        /// Where the template came from.
        origin: String,
        /// What the template or minijinja said.
        message: String,
    },
}

/// A compiled chat template and the special-token text it is rendered with.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    origin: String,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("origin", &self.origin)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

impl Clone for ChatTemplate {
    fn clone(&self) -> Self {
        ChatTemplate::new(
            self.source(),
            &self.origin,
            &self.bos_token,
            &self.eos_token,
        )
        .expect("a template that compiled once compiles again")
    }
}

const NAME: &str = "chat_template";

impl ChatTemplate {
    /// Compile `source`. `origin` names it in errors (a file and key);
    /// `bos_token` / `eos_token` are the texts the template sees under
    /// those names.
    pub fn new(
        source: &str,
        origin: &str,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<Self, ChatError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        // jinja2 keeps no trailing newline either; HF templates rely on it.
        env.set_keep_trailing_newline(false);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| ChatError::Syntax {
                origin: origin.to_string(),
                message: describe(&e),
            })?;
        Ok(ChatTemplate {
            env,
            source: source.to_string(),
            origin: origin.to_string(),
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    /// The template text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Where the template came from (for messages).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The conversation as the prompt text the model was trained on; with
    /// `add_generation_prompt`, ending where the assistant's reply begins.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        let fail = |e: JinjaError| ChatError::Render {
            origin: self.origin.clone(),
            message: describe(&e),
        };
        let t = self.env.get_template(NAME).map_err(fail)?;
        t.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        })
        .map_err(fail)
    }

    /// The token ids that end an assistant turn, read off the template: it
    /// renders a conversation whose reply is a marker and looks at what the
    /// template writes right after the reply. The special tokens written
    /// there (before any ordinary text) are the turn's end — `<|im_end|>`
    /// for ChatML, `<|eot_id|>` for Llama 3, `</s>` for Llama 2. Empty when
    /// the template writes no special token there (generation then stops at
    /// the tokenizer's end-of-sequence tokens only).
    pub fn end_tokens(&self, tok: &Tokenizer) -> Result<Vec<u32>, ChatError> {
        const MARK: &str = "KILNREPLYMARK";
        let convo = [
            Message::new("user", "Hi"),
            Message::new("assistant", MARK),
            Message::new("user", "Bye"),
        ];
        // Templates that insist on ending with a user turn accept this
        // three-message conversation; try two messages when it fails.
        let text = match self.render(&convo, false) {
            Ok(t) if t.contains(MARK) => t,
            _ => self.render(&convo[..2], false)?,
        };
        let Some(at) = text.find(MARK) else {
            return Ok(Vec::new());
        };
        let after = &text[at + MARK.len()..];
        let ids = tok.encode_raw(after).map_err(|e| ChatError::Render {
            origin: self.origin.clone(),
            message: format!("cannot tokenize what the template writes after a reply: {e}"),
        })?;
        let mut ends = Vec::new();
        for id in ids {
            if tok.is_special(id) {
                ends.push(id);
            } else if !tok.decode_raw(&[id]).is_ok_and(|s| s.trim().is_empty()) {
                break;
            }
        }
        // Only the first special token ends the turn (`<|im_end|>` of
        // `<|im_end|>\n<|im_start|>user`); later ones open the next.
        ends.truncate(1);
        Ok(ends)
    }
}

fn describe(e: &JinjaError) -> String {
    let mut s = e.to_string();
    if let Some(line) = e.line() {
        let _ = write!(s, " (template line {line})");
    }
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        let _ = write!(s, ": {inner}");
        src = inner.source();
    }
    s
}

/// `raise_exception(msg)`: what HF templates call to refuse a conversation.
fn raise_exception(msg: String) -> Result<Value, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
}

/// `strftime_now(format)`: the current local date and time, as Python's
/// `datetime.now().strftime(format)` (Llama 3.1's template prints the date).
fn strftime_now(format: String) -> Result<String, JinjaError> {
    use chrono::format::{Item, StrftimeItems};
    let items: Vec<Item> = StrftimeItems::new(&format).collect();
    if items.contains(&Item::Error) {
        return Err(JinjaError::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: bad format {format:?}"),
        ));
    }
    Ok(chrono::Local::now()
        .format_with_items(items.into_iter())
        .to_string())
}

/// `tojson(indent=None)`: JSON as Python's `json.dumps(x, ensure_ascii=False,
/// indent=indent)` writes it — `", "` and `": "` between items without an
/// indent, no HTML escaping (minijinja's own `tojson` escapes `<`, `>`, `&`).
fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, JinjaError> {
    let indent: Option<usize> = kwargs.get("indent")?;
    // transformers' own filter also takes separators and sort_keys; sort
    // keys is the one templates use.
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_json(&mut out, value, indent, 0, sort_keys.unwrap_or(false))?;
    Ok(Value::from_safe_string(out))
}

fn write_json(
    out: &mut String,
    v: &Value,
    indent: Option<usize>,
    depth: usize,
    sort: bool,
) -> Result<(), JinjaError> {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', n * depth));
        }
    };
    let sep = if indent.is_some() { "," } else { ", " };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if let Ok(i) = i64::try_from(v.clone()) {
                let _ = write!(out, "{i}");
            } else {
                let f = f64::try_from(v.clone()).unwrap_or(f64::NAN);
                out.push_str(&python_float(f));
            }
        }
        ValueKind::String => json_string(out, v.as_str().unwrap_or_default()),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                write_json(out, item, indent, depth + 1, sort)?;
            }
            newline(out, depth);
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if sort {
                keys.sort();
            }
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                match k.as_str() {
                    Some(s) => json_string(out, s),
                    None => json_string(out, &k.to_string()),
                }
                out.push_str(": ");
                write_json(out, &v.get_item(k)?, indent, depth + 1, sort)?;
            }
            newline(out, depth);
            out.push('}');
        }
        _ => json_string(out, &v.to_string()),
    }
    Ok(())
}

/// Python's `repr(float)` for JSON: `1.0`, `0.5`, `1e-07`, `NaN`.
fn python_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let s = format!("{f:?}");
    // Rust's Debug prints `1e-7` where Python prints `1e-07`.
    match s.split_once('e') {
        Some((m, e)) => {
            let (sign, digits) = match e.strip_prefix('-') {
                Some(d) => ("-", d),
                None => ("+", e),
            };
            format!("{m}e{sign}{digits:0>2}")
        }
        None => s,
    }
}

fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(src: &str) -> ChatTemplate {
        ChatTemplate::new(src, "test", "<s>", "</s>").unwrap()
    }

    #[test]
    fn tojson_writes_python_json() {
        let tpl = t("{{ x | tojson }}|{{ x | tojson(indent=2) }}");
        let out = tpl
            .env
            .render_str(
                tpl.source(),
                minijinja::context! { x => serde_json::json!({"a": [1, 2.5, "<&>"], "b": null, "c": {}}) },
            )
            .unwrap();
        assert_eq!(
            out,
            "{\"a\": [1, 2.5, \"<&>\"], \"b\": null, \"c\": {}}|{\n  \"a\": [\n    1,\n    2.5,\n    \"<&>\"\n  ],\n  \"b\": null,\n  \"c\": {}\n}"
        );
    }

    #[test]
    fn python_floats() {
        assert_eq!(python_float(1.0), "1.0");
        assert_eq!(python_float(1e-7), "1e-07");
        assert_eq!(python_float(1e22), "1e+22");
        assert_eq!(python_float(0.1), "0.1");
    }

    #[test]
    fn raise_exception_is_a_render_error() {
        let tpl = t(
            "{% if messages[0].role != 'user' %}{{ raise_exception('roles must alternate') }}{% endif %}",
        );
        let err = tpl
            .render(&[Message::new("assistant", "x")], false)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("test: the chat template failed"), "{err}");
        assert!(err.contains("roles must alternate"), "{err}");
    }

    #[test]
    fn syntax_errors_name_the_origin_and_line() {
        let err = ChatTemplate::new("ok\n{% if %}", "f.gguf: tokenizer.chat_template", "", "")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("f.gguf: tokenizer.chat_template: the chat template does not compile"),
            "{err}"
        );
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn python_string_methods_and_loop_controls() {
        let tpl = t(
            "{% for m in messages %}{% if m.content.startswith('skip') %}{% continue %}{% endif %}{{ m.content.strip().upper() }};{% endfor %}",
        );
        let msgs = [
            Message::new("user", " a "),
            Message::new("user", "skip me"),
            Message::new("user", "b"),
        ];
        assert_eq!(tpl.render(&msgs, false).unwrap(), "A;B;");
    }

    #[test]
    fn trim_and_lstrip_blocks_as_jinja2() {
        // trim_blocks drops the newline after a tag, lstrip_blocks the
        // indentation before one; the final newline of the template goes.
        let tpl = t(
            "{% for m in messages %}\n    {% if true %}\n[{{ m.content }}]\n    {% endif %}\n{% endfor %}\n",
        );
        assert_eq!(
            tpl.render(
                &[Message::new("user", "x"), Message::new("user", "y")],
                false
            )
            .unwrap(),
            "[x]\n[y]\n"
        );
    }
}
