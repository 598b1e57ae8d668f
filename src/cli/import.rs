//! `kiln import CONFIG [-o OUT.toml]`: a Hugging Face transformers
//! `config.json` (or a checkpoint directory holding one) → a kiln spec with
//! every value resolved, under a header listing the HF class defaults the
//! import relied on.

use super::CliError;
use clap::ValueEnum;
use kiln_compiler::import::{ImportOptions, import_path};
use kiln_compiler::spec::HeadKind;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, ValueEnum)]
enum Head {
    /// Vocabulary logits (decoders, encoder-decoders).
    Lm,
    /// BERT-style masked-LM head (BERT, RoBERTa, DistilBERT).
    Mlm,
    /// BERT's pooler (BERT, RoBERTa).
    Pooler,
    /// Masked mean of the final hidden states (sentence embeddings).
    MeanPool,
    /// The final hidden states only.
    None,
}

impl From<Head> for HeadKind {
    fn from(h: Head) -> HeadKind {
        match h {
            Head::Lm => HeadKind::Lm,
            Head::Mlm => HeadKind::Mlm,
            Head::Pooler => HeadKind::Pooler,
            Head::MeanPool => HeadKind::MeanPool,
            Head::None => HeadKind::None,
        }
    }
}

#[derive(clap::Args)]
pub struct Args {
    /// A transformers config.json, or a directory containing one.
    #[arg(required_unless_present = "list")]
    config: Option<PathBuf>,
    /// List the families kiln reads (shipped, from the family folder, and
    /// given with --family): their model_types, heads and files.
    #[arg(long)]
    list: bool,
    /// Write the spec to this file (atomically) instead of standard output.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// The spec's name (default: the checkpoint directory's name, else the file's stem).
    #[arg(long)]
    name: Option<String>,
    /// The head (default: the one the config's `architectures` entry names,
    /// else the family's default: the pooler for BERT/RoBERTa, none for
    /// DistilBERT, the LM head otherwise).
    #[arg(long, value_enum)]
    head: Option<Head>,
}

pub fn run(a: Args) -> Result<(), CliError> {
    if a.list {
        return list();
    }
    let Some(config) = a.config else {
        return Err(CliError::Usage(
            "give a config.json (or its folder), or --list".into(),
        ));
    };
    let opts = ImportOptions {
        name: a.name,
        head: a.head.map(HeadKind::from),
        tensors: None,
    };
    let text = import_path(&config, &opts)?.to_toml();
    match &a.output {
        None => {
            out!("{text}");
            Ok(())
        }
        Some(out) => write_atomically(out, text.as_bytes()).map_err(|source| CliError::Write {
            path: out.clone(),
            message: "cannot write the spec",
            source,
        }),
    }
}

/// `kiln import --list` and `kiln check --supported`: one line per family
/// (the last one of a name wins), then the GGUF architectures.
pub(super) fn list() -> Result<(), CliError> {
    let all = kiln_compiler::import::all_families()?;
    let mut shown: Vec<&str> = Vec::new();
    out!(
        "{:<12} {:<34} {:<28} file\n",
        "family",
        "model_types",
        "heads"
    );
    for f in all.iter().rev() {
        if shown.contains(&f.name.as_str()) {
            continue;
        }
        shown.push(&f.name);
    }
    shown.reverse();
    for name in shown {
        let f = all.iter().rev().find(|f| f.name == name).expect("listed");
        out!(
            "{:<12} {:<34} {:<28} {}\n",
            f.name,
            f.model_types.join(", "),
            f.head_kinds().join(", "),
            f.origin.display()
        );
    }
    out!(
        "\nGGUF `general.architecture` values: {}\n",
        kiln_open::gguf::supported_archs()
    );
    out!(
        "family folders: {}\n",
        kiln_compiler::import::family_search_dirs()
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    );
    Ok(())
}

/// Write `bytes` to `out` through a temporary file in the same directory and
/// a rename, so `out` is either untouched or complete.
fn write_atomically(out: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let Some(name) = out.file_name() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a file path",
        ));
    };
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, out));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kiln-import-cli-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("tmp dir");
        d
    }

    #[test]
    fn writes_whole_file_and_replaces_old_one() {
        let d = tmp("replace");
        let out = d.join("spec.toml");
        std::fs::write(&out, "old").expect("write");
        write_atomically(&out, b"new contents").expect("writes");
        assert_eq!(std::fs::read_to_string(&out).expect("read"), "new contents");
        let left: Vec<_> = std::fs::read_dir(&d).expect("dir").collect();
        assert_eq!(left.len(), 1, "no temporary file left behind");
    }

    #[test]
    fn failed_write_leaves_nothing() {
        let d = tmp("fail");
        // The target is a directory: the rename fails, the temporary is removed.
        let out = d.join("taken");
        std::fs::create_dir_all(out.join("inside")).expect("dir");
        assert!(write_atomically(&out, b"x").is_err());
        let left: Vec<_> = std::fs::read_dir(&d).expect("dir").collect();
        assert_eq!(left.len(), 1, "only the pre-existing directory");
        // Missing parent directory.
        assert!(write_atomically(&d.join("no/such/dir/spec.toml"), b"x").is_err());
    }

    #[test]
    fn import_error_writes_nothing() {
        let d = tmp("error");
        let cfg = d.join("config.json");
        std::fs::write(
            &cfg,
            r#"{"model_type": "gpt2", "scale_attn_by_inverse_layer_idx": true}"#,
        )
        .expect("write");
        let out = d.join("out.toml");
        let e = run(Args {
            config: Some(d.clone()),
            list: false,
            output: Some(out.clone()),
            name: None,
            head: None,
        })
        .unwrap_err();
        assert!(matches!(e, CliError::Import(_)), "{e:?}");
        assert!(
            e.to_string()
                .contains("config.json: error: `scale_attn_by_inverse_layer_idx` = true"),
            "{e}"
        );
        assert!(!out.exists());
    }

    #[test]
    fn imports_directory_to_file() {
        let d = tmp("ok");
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        std::fs::copy(root.join("tests/import/gpt2.json"), d.join("config.json")).expect("copy");
        let out = d.join("gpt2.toml");
        run(Args {
            config: Some(d.clone()),
            list: false,
            output: Some(out.clone()),
            name: Some("gpt2".into()),
            head: Some(Head::Lm),
        })
        .expect("imports");
        let rs = kiln_compiler::spec::load(&out).expect("loads");
        assert_eq!(
            rs,
            kiln_compiler::spec::load_shipped("gpt2").expect("shipped")
        );
    }
}
