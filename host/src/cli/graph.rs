//! `sandflow graph FILE [--format mermaid|dot]`: the DAG, on stdout.

use super::{CliError, Output, exit, workflow_cmd};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum Format {
    Mermaid,
    Dot,
}

#[derive(Debug, clap::Args)]
pub(crate) struct GraphArgs {
    /// The workflow file.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "mermaid")]
    format: Format,
}

pub(crate) fn execute(args: GraphArgs, out: &Output) -> Result<u8, CliError> {
    let plan = workflow_cmd::plan(&args.file, out)?;
    match args.format {
        Format::Mermaid => print!("{}", plan.to_mermaid()),
        Format::Dot => print!("{}", plan.to_dot()),
    }
    Ok(exit::OK)
}
