//! `sandflow graph FILE [--format mermaid|dot|svg]`: the DAG, on stdout.

use super::{CliError, Output, exit, workflow_cmd};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum Format {
    Mermaid,
    Dot,
    /// A standalone picture, drawn without external tools.
    Svg,
}

#[derive(Debug, clap::Args)]
pub(crate) struct GraphArgs {
    /// The workflow file.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "mermaid")]
    format: Format,
    /// Only these steps and every step they depend on, as `run --target`.
    #[arg(long, value_name = "STEP[,STEP...]", value_delimiter = ',')]
    target: Vec<String>,
    #[command(flatten)]
    components: workflow_cmd::ComponentsArg,
}

pub(crate) fn execute(args: GraphArgs, out: &Output) -> Result<u8, CliError> {
    let mut plan = workflow_cmd::plan(&args.file, &args.components, out)?;
    if !args.target.is_empty() {
        plan = plan.targeted(&args.target).map_err(CliError::invalid)?.0;
    }
    match args.format {
        Format::Mermaid => print!("{}", plan.to_mermaid()),
        Format::Dot => print!("{}", plan.to_dot()),
        Format::Svg => print!("{}", plan.to_svg(&|_| None)),
    }
    Ok(exit::OK)
}
