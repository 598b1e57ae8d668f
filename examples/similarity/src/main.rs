//! `similarity [MINILM_DIR] [SENTENCE …]`
//!
//! Embeds the sentences with all-MiniLM-L6-v2 (the folder given, or
//! `KILN_MINILM_DIR`) and prints their cosine similarities and each one's
//! nearest neighbour:
//!
//! ```sh
//! eval "$(tests/parity/fetch_real.sh)"
//! cargo run --release -p kiln-example-similarity -- "$MINILM_DIR" "A cat sits on the mat." "A kitten rests on a rug." "Stocks fell sharply."
//! ```

use kiln::open::source::{OpenOptions, open};
use kiln_example_similarity::{cosine, embed, minilm_dir, nearest};
use std::path::PathBuf;
use std::process::ExitCode;

const DEFAULT_SENTENCES: [&str; 4] = [
    "A cat sits on the mat.",
    "A kitten is resting on a rug.",
    "The stock market fell sharply today.",
    "Share prices dropped at the close of trading.",
];

fn run() -> Result<(), String> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let dir = match args.first() {
        Some(a) if PathBuf::from(a).is_dir() => PathBuf::from(args.remove(0)),
        _ => minilm_dir().ok_or(
            "give the all-MiniLM-L6-v2 folder as the first argument or in KILN_MINILM_DIR \
             (eval \"$(tests/parity/fetch_real.sh)\" prints it as MINILM_DIR)",
        )?,
    };
    let sentences: Vec<&str> = if args.is_empty() {
        DEFAULT_SENTENCES.to_vec()
    } else {
        args.iter().map(String::as_str).collect()
    };
    let loaded = open(&dir, OpenOptions::default()).map_err(|e| e.to_string())?;
    let v = embed(&loaded, &sentences)?;
    println!("cosine similarity:");
    for (i, a) in v.iter().enumerate() {
        let row: Vec<String> = v.iter().map(|b| format!("{:.4}", cosine(a, b))).collect();
        println!("  [{i}] {}  {}", row.join(" "), sentences[i]);
    }
    for (i, n) in nearest(&v).into_iter().enumerate() {
        if let Some((j, c)) = n {
            println!("nearest to [{i}]: [{j}] ({c:.4})");
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
