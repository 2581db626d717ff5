//! `sandflow run FILE`: run a workflow; its output as JSON on stdout,
//! progress on stderr.

use super::display::{JsonLines, LiveView, PlainLines};
use super::{CliError, Output, exit, new_sandbox_for, store_error, workflow_cmd};
use crate::exec::{EventSink, Redactor, RunReport, RunState, check_input, check_secrets};
use crate::runs::{Recorder, Settings};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    sandflow run workflows/text-pipeline.yaml --input '{\"text\": \"hello world\"}'\n  \
    sandflow run workflows/etl.yaml --input-file workflows/data/users.json\n  \
    sandflow run workflows/report.yaml --set user.id=42 --set verbose=true")]
pub(crate) struct RunArgs {
    /// The workflow file.
    #[arg(value_name = "FILE")]
    pub(crate) file: PathBuf,
    #[command(flatten)]
    pub(crate) input: InputArgs,
    /// Most steps running at once [default: the workflow's `concurrency`,
    /// else the CPU count; on workers, else only the workers' slots bound it].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) concurrency: Option<u64>,
    /// Secrets as `NAME=value` lines (`#` comments allowed); also read from
    /// `SANDFLOW_SECRET_<NAME>` environment variables.
    #[arg(long, value_name = "FILE")]
    pub(crate) secrets_file: Option<PathBuf>,
    /// With a PostgreSQL store: queue the run, print its id and return
    /// (as `sandflow submit`); workers run it.
    #[arg(long)]
    pub(crate) detach: bool,
    /// With a PostgreSQL store: only follow the run; leave its steps to
    /// `sandflow worker` processes (by default this process works on it too).
    #[arg(long = "no-work")]
    pub(crate) no_work: bool,
    /// Run only these steps and every step they depend on (Argo's
    /// `target`); the others are left out. `finally` steps still run.
    #[arg(long, value_name = "STEP[,STEP...]", value_delimiter = ',')]
    pub(crate) target: Vec<String>,
    #[command(flatten)]
    pub(crate) components: workflow_cmd::ComponentsArg,
    #[command(flatten)]
    pub(crate) vars: VarArgs,
}

/// The run's variables (StepFlow's `$variable`), from flags.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct VarArgs {
    /// Set a variable for `{ $variable: NAME }`: `NAME=value`, the value read
    /// as JSON when it parses and as a string otherwise. A run on workers
    /// keeps them with the run; a run in one process does not record them
    /// (give them again to `resume` and `retry`).
    #[arg(long = "var", value_name = "NAME=VALUE")]
    var: Vec<String>,
    /// Read variables from a JSON or YAML file of `name: value` (`--var` wins).
    #[arg(long = "vars", value_name = "FILE")]
    vars: Option<PathBuf>,
}

impl VarArgs {
    pub(crate) fn read(&self) -> Result<Value, CliError> {
        let mut vars = match &self.vars {
            None => Value::Object(Map::new()),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| CliError::invalid(format!("--vars {}: {e}", path.display())))?;
                let v: Value = serde_json::from_str(&text)
                    .or_else(|_| serde_yaml::from_str(&text))
                    .map_err(|e| CliError::invalid(format!("--vars {}: not valid JSON or YAML: {e}", path.display())))?;
                if !v.is_object() {
                    return Err(CliError::invalid(format!("--vars {}: must be a mapping of names to values", path.display())));
                }
                v
            }
        };
        for assignment in &self.var {
            set_path(&mut vars, assignment).map_err(|e| CliError::invalid(e.replacen("--set", "--var", 1)))?;
        }
        Ok(vars)
    }
}

/// The run input, from flags.
#[derive(Debug, clap::Args)]
pub(crate) struct InputArgs {
    /// The run input, as JSON [default: {}].
    #[arg(long, value_name = "JSON", conflicts_with = "input_file")]
    input: Option<String>,
    /// Read the run input (JSON or YAML) from a file; `-` reads stdin.
    #[arg(long, value_name = "FILE")]
    input_file: Option<PathBuf>,
    /// Set one input field: `key=value`, the value read as JSON when it
    /// parses (`3`, `true`, `[1]`) and as a string otherwise; `a.b=1` sets a nested key.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

impl InputArgs {
    pub(crate) fn read(&self) -> Result<Value, CliError> {
        let mut input = match (&self.input, &self.input_file) {
            (Some(text), _) => serde_json::from_str(text).map_err(|e| CliError::invalid(format!("--input is not valid JSON: {e}")))?,
            (None, Some(path)) => {
                let text = if path == Path::new("-") {
                    std::io::read_to_string(std::io::stdin())
                } else {
                    std::fs::read_to_string(path)
                }
                .map_err(|e| CliError::invalid(format!("--input-file {}: {e}", path.display())))?;
                serde_json::from_str(&text)
                    .or_else(|_| serde_yaml::from_str(&text))
                    .map_err(|e| CliError::invalid(format!("--input-file {}: not valid JSON or YAML: {e}", path.display())))?
            }
            (None, None) => Value::Object(Map::new()),
        };
        for assignment in &self.set {
            set_path(&mut input, assignment).map_err(CliError::invalid)?;
        }
        Ok(input)
    }
}

/// Applies one `--set a.b=value`.
pub(crate) fn set_path(input: &mut Value, assignment: &str) -> Result<(), String> {
    let (key, raw) = assignment.split_once('=').ok_or_else(|| format!("--set `{assignment}`: write KEY=VALUE"))?;
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(format!("--set `{assignment}`: the key must be a name or a dotted path like `a.b`"));
    }
    let value = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()));
    let mut cur = input;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        if !cur.is_object() {
            if cur.is_null() {
                *cur = Value::Object(Map::new());
            } else {
                return Err(format!("--set `{assignment}`: `{}` is not an object", parts[..i].join(".")));
            }
        }
        let map = cur.as_object_mut().expect("made an object above");
        if i == parts.len() - 1 {
            map.insert(part.to_string(), value);
            return Ok(());
        }
        cur = map.entry(part.to_string()).or_insert(Value::Null);
    }
    Ok(())
}

/// Secrets from `SANDFLOW_SECRET_<NAME>` and a `NAME=value` file.
pub(crate) fn read_secrets(file: Option<&Path>) -> Result<BTreeMap<String, String>, CliError> {
    let mut secrets: BTreeMap<String, String> = std::env::vars()
        .filter_map(|(k, v)| k.strip_prefix("SANDFLOW_SECRET_").map(|n| (n.to_string(), v)))
        .collect();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|e| CliError::invalid(format!("--secrets-file {}: {e}", path.display())))?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line.split_once('=').ok_or_else(|| {
                CliError::invalid(format!("--secrets-file {}:{}: write NAME=value", path.display(), n + 1))
            })?;
            secrets.insert(k.trim().to_string(), v.trim().to_string());
        }
    }
    Ok(secrets)
}

pub(crate) fn sink(out: &Output) -> Arc<dyn EventSink> {
    if out.json {
        Arc::new(JsonLines)
    } else if out.quiet {
        Arc::new(crate::exec::NoEvents)
    } else if std::io::stderr().is_terminal() && out.verbose == 0 {
        Arc::new(LiveView::new())
    } else {
        Arc::new(PlainLines { verbose: out.verbose > 0 })
    }
}

pub(crate) async fn execute(args: RunArgs, global: &super::GlobalArgs, out: &Output) -> Result<u8, CliError> {
    let url = global.store_url()?;
    match &url {
        crate::store::StoreUrl::Postgres(_) => {
            return super::worker::run_queued(&args, global, out).await;
        }
        crate::store::StoreUrl::Sqlite(_) if args.detach || args.no_work => {
            let flag = if args.detach { "--detach" } else { "--no-work" };
            return Err(CliError::invalid(format!(
                "{flag} needs a PostgreSQL run store that workers share: pass --store postgres://USER@HOST/DATABASE (or set SANDFLOW_STORE)"
            )));
        }
        crate::store::StoreUrl::Sqlite(_) => {}
    }
    // A store that exists opens (SQLite reads its schema) while the
    // workflow is read and its sandbox made; a problem with the workflow is
    // still the one reported first. A new one is made only for a run that
    // starts: a mistyped file name leaves no state dir behind.
    let early = match &url {
        crate::store::StoreUrl::Sqlite(path) if path.exists() => {
            let url = url.clone();
            Some(tokio::spawn(async move { crate::store::open(&url).await }))
        }
        _ => None,
    };
    let (cancel, skip_finally, watcher) = super::call::run_interrupts();
    let input = args.input.read()?;
    let secrets = read_secrets(args.secrets_file.as_deref())?;
    let variables = args.vars.read()?;
    let parsed = workflow_cmd::parse(&args.file, &args.components).await?;
    // The pool holds what this run can use at once, not the 256 slots a
    // server needs: fewer slots to set up and tear down.
    let concurrency = args.concurrency.map(|n| n as usize);
    let steps = parsed.workflow().and_then(|wf| crate::exec::steps_at_once(wf, concurrency));
    let sandbox = Arc::new(new_sandbox_for(&global.state_dir, crate::sandbox::SandboxConfig::pool_for(steps))?);
    let prepared = workflow_cmd::prepare(parsed, &sandbox, out).await?;
    let prepared = Arc::new(prepared.target(&args.target).map_err(CliError::invalid)?);
    check_input(&prepared.plan.workflow, &input).map_err(CliError::invalid)?;
    check_secrets(&prepared.plan, &secrets).map_err(|d| workflow_cmd::report(out, d))?;
    let redactor = Redactor::new(&secrets);
    let store = match early {
        Some(opening) => opening.await.map_err(|e| CliError { code: exit::FAILED, message: format!("opening the run store failed: {e}") })?,
        None => crate::store::open(&url).await,
    };
    let recorder = Recorder { store: store.map_err(store_error)?, runner: sandbox };
    let settings = Settings {
        concurrency,
        secrets,
        skip_finally,
        targets: args.target.clone(),
        rerun: Default::default(),
        variables,
        otlp: global.otlp()?,
    };
    let report = recorder.start(prepared, &args.file, input, settings, sink(out), cancel).await.map_err(store_error)?;
    watcher.abort();
    Ok(finish(&report, &redactor, out))
}

/// Prints a finished run's output (masked) and returns the exit code.
/// Shared by `run` and `resume`.
pub(crate) fn finish(report: &RunReport, redactor: &Redactor, out: &Output) -> u8 {
    if let Some(message) = &report.unrecorded {
        // The display has shown the run's end; this says it is not on disk.
        super::render::error_line(out, message);
    }
    print_end(report.state, report.output.as_ref(), redactor)
}

/// Prints a run's output (masked) and returns the exit code of its state.
/// Shared by every command that ends with a run's end.
pub(crate) fn print_end(state: RunState, output: Option<&Value>, redactor: &Redactor) -> u8 {
    if let Some(output) = output {
        // What is printed is a log too: secret values are masked here as well.
        println!("{}", serde_json::to_string_pretty(&*redactor.value(output)).expect("a Value always serializes"));
    }
    match state {
        RunState::Completed => exit::OK,
        RunState::Cancelled => exit::CANCELLED,
        _ => exit::FAILED,
    }
}

#[cfg(test)]
mod tests {
    use super::set_path;
    use serde_json::json;

    #[test]
    fn set_reads_json_values_and_nested_keys() {
        let mut v = json!({});
        for a in ["n=3", "ok=true", "list=[1]", "name=Ada Lovelace", "user.id=42", "user.tags=[\"a\"]", "empty="] {
            set_path(&mut v, a).unwrap();
        }
        assert_eq!(v, json!({"n": 3, "ok": true, "list": [1], "name": "Ada Lovelace", "user": {"id": 42, "tags": ["a"]}, "empty": ""}));
        assert!(set_path(&mut v, "n.x=1").unwrap_err().contains("`n` is not an object"));
        assert!(set_path(&mut v, "novalue").is_err());
        assert!(set_path(&mut v, "a..b=1").is_err());
    }
}
