//! `sandflow graph FILE|RUN_ID [--format mermaid|dot|svg]`: the DAG, on
//! stdout: of a workflow file, or of a recorded run (from the workflow it
//! recorded; as SVG, each step coloured by its state).

use super::{CliError, GlobalArgs, Output, exit, store_error, workflow_cmd};
use sandflow::store::RunDetail;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum Format {
    Mermaid,
    Dot,
    /// A standalone picture, drawn without external tools.
    Svg,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Given a run id instead of a file, draws the workflow that run recorded (whatever became of its file \
    since), limited to its --target steps; as SVG, each step coloured by its state.\n\nExamples:\n  \
    sandflow graph workflows/etl.yaml\n  sandflow graph --format svg RUN_ID > run.svg")]
pub(crate) struct GraphArgs {
    /// The workflow file, or the id of a recorded run.
    #[arg(value_name = "FILE|RUN_ID")]
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

pub(crate) async fn execute(args: GraphArgs, global: &GlobalArgs, out: &Output) -> Result<u8, CliError> {
    if !args.file.exists() && !args.file.to_string_lossy().contains(['/', '.']) {
        return run_graph(&args, global).await;
    }
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

/// `graph RUN_ID`: the DAG of the workflow a recorded run ran.
async fn run_graph(args: &GraphArgs, global: &GlobalArgs) -> Result<u8, CliError> {
    let id = args.file.to_string_lossy();
    if !args.target.is_empty() || args.components.file.is_some() {
        return Err(CliError::invalid("--target and --components apply to a workflow file; a run is drawn as it ran"));
    }
    let store = global.open_store().await?;
    let id = super::run_id(store.as_ref(), &id).await?;
    let run = store.run(&id, RunDetail::Steps).await.map_err(store_error)?;
    let plan = sandflow::runs::recorded_plan(store.as_ref(), &run)
        .await
        .map_err(|why| CliError { code: exit::FAILED, message: format!("the graph of run {id} cannot be drawn: {why}") })?;
    match args.format {
        Format::Mermaid => print!("{}", plan.to_mermaid()),
        Format::Dot => print!("{}", plan.to_dot()),
        Format::Svg => print!("{}", sandflow::runs::run_svg(&plan, &run)),
    }
    Ok(exit::OK)
}
