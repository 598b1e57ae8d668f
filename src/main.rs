//! The `kiln` command line: check, compile and run transformer specs.

mod cli;

use clap::Parser;
use std::process::ExitCode;

/// Die quietly on a closed pipe (`kiln compile … | head`), like other Unix
/// tools, instead of panicking in `print!`: Rust ignores SIGPIPE by default,
/// so a write to a closed pipe is an error that `print!` turns into a panic.
#[cfg(unix)]
fn default_sigpipe() {
    const SIGPIPE: i32 = 13; // Linux and macOS
    const SIG_DFL: usize = 0;
    unsafe extern "C" {
        fn signal(signum: i32, handler: usize) -> usize;
    }
    // SAFETY: restores the default disposition of one signal at start-up,
    // before any other thread exists.
    unsafe {
        signal(SIGPIPE, SIG_DFL);
    }
}

fn main() -> ExitCode {
    #[cfg(unix)]
    default_sigpipe();
    let args = cli::Cli::parse();
    match cli::dispatch(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            match e {
                // 128 + SIGINT, as shells report an interrupted command.
                cli::CliError::Interrupted { .. } => ExitCode::from(130),
                _ => ExitCode::FAILURE,
            }
        }
    }
}
