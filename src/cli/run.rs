#[derive(clap::Args)]
pub struct Args {}
pub fn run(_a: Args) -> Result<(), String> { Err("not yet".into()) }
