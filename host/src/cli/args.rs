//! Flags several commands share: a run's input (`--input`, `--input-file`,
//! `--set`), its variables (`--var`, `--vars`) and secrets
//! (`SANDFLOW_SECRET_<NAME>`, `--secrets-file`).

use super::CliError;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The run's variables (StepFlow's `$variable`), from flags.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct VarArgs {
    /// Set a variable for `{ $variable: NAME }`: `NAME=value`, the value read
    /// as JSON when it parses and as a string otherwise. A run on workers
    /// keeps them with the run (those given to its `resume` or `retry`
    /// replace them); a run in one process does not record them (give them
    /// again to `resume` and `retry`).
    #[arg(long = "var", value_name = "NAME=VALUE")]
    var: Vec<String>,
    /// Read variables from a JSON or YAML file of `name: value` (`--var` wins).
    #[arg(long = "vars", value_name = "FILE")]
    vars: Option<PathBuf>,
}

impl VarArgs {
    /// Whether no variable was given.
    pub(crate) fn is_empty(&self) -> bool {
        self.var.is_empty() && self.vars.is_none()
    }

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
            sandflow::runs::set_path(&mut vars, assignment).map_err(|e| CliError::invalid(e.replacen("--set", "--var", 1)))?;
        }
        Ok(vars)
    }
}

/// Where a run in a PostgreSQL store runs (`run`, `retry`, `resume`): on
/// workers, and by default in this process too, which follows it.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub(crate) struct WorkArgs {
    /// With a PostgreSQL store: queue the run, print its id and return
    /// (as `sandflow submit`); workers run it.
    #[arg(long)]
    pub(crate) detach: bool,
    /// With a PostgreSQL store: only follow the run; leave its steps to
    /// `sandflow worker` processes (by default this process works on it too,
    /// and on no other run).
    #[arg(long = "no-work")]
    pub(crate) no_work: bool,
}

impl WorkArgs {
    /// Refuses the flags for a run in this process (a SQLite store).
    pub(crate) fn local(&self) -> Result<(), CliError> {
        match (self.detach, self.no_work) {
            (false, false) => Ok(()),
            (detach, _) => Err(CliError::invalid(format!(
                "{} needs a PostgreSQL run store that workers share: pass --store postgres://USER@HOST/DATABASE (or set SANDFLOW_STORE)",
                if detach { "--detach" } else { "--no-work" }
            ))),
        }
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
            sandflow::runs::set_path(&mut input, assignment).map_err(CliError::invalid)?;
        }
        Ok(input)
    }
}

/// Secrets from `SANDFLOW_SECRET_<NAME>` and a `NAME=value` file.
pub(crate) fn read_secrets(file: Option<&Path>) -> Result<BTreeMap<String, String>, CliError> {
    let mut secrets: BTreeMap<String, String> = std::env::vars()
        .filter_map(|(k, v)| k.strip_prefix("SANDFLOW_SECRET_").map(|n| (n.to_string(), v)))
        .collect();
    if let Some(path) = file {
        secrets.extend(secrets_file("--secrets-file", path)?);
    }
    Ok(secrets)
}

/// A secrets file's `NAME=value` lines (`#` comments allowed); `flag`
/// names where it came from in errors.
pub(crate) fn secrets_file(flag: &str, path: &Path) -> Result<BTreeMap<String, String>, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| CliError::invalid(format!("{flag} {}: {e}", path.display())))?;
    let mut secrets = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line.split_once('=').ok_or_else(|| CliError::invalid(format!("{flag} {}:{}: write NAME=value", path.display(), n + 1)))?;
        secrets.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(secrets)
}

/// `--secrets-dir DIR`: each namespace's secrets, from `DIR/NAMESPACE.env`.
pub(crate) fn secrets_dir(dir: &Path) -> Result<BTreeMap<String, BTreeMap<String, String>>, CliError> {
    let entries = std::fs::read_dir(dir).map_err(|e| CliError::invalid(format!("--secrets-dir {}: {e}", dir.display())))?;
    let mut namespaces = BTreeMap::new();
    for entry in entries {
        let path = entry.map_err(|e| CliError::invalid(format!("--secrets-dir {}: {e}", dir.display())))?.path();
        let (Some(stem), Some("env")) = (path.file_stem().and_then(|s| s.to_str()), path.extension().and_then(|e| e.to_str())) else { continue };
        let namespace = sandflow::store::tokens::namespace_name(stem).map_err(|e| CliError::invalid(format!("--secrets-dir {}: {e} (each file is NAMESPACE.env)", path.display())))?;
        namespaces.insert(namespace, secrets_file("--secrets-dir", &path)?);
    }
    Ok(namespaces)
}

/// Every namespace's secrets a process holds (a worker's, `serve`'s for
/// webhooks): the `default` namespace's are SANDFLOW_SECRET_* variables,
/// `file`'s and `DIR/default.env`'s; each other namespace's, `DIR/NS.env`'s.
pub(crate) fn namespace_secrets(file: Option<&Path>, dir: Option<&Path>) -> Result<BTreeMap<String, BTreeMap<String, String>>, CliError> {
    let mut namespaces = match dir {
        Some(dir) => secrets_dir(dir)?,
        None => BTreeMap::new(),
    };
    let mut default = read_secrets(file)?;
    default.extend(namespaces.remove(sandflow::store::DEFAULT_NAMESPACE).unwrap_or_default());
    namespaces.insert(sandflow::store::DEFAULT_NAMESPACE.to_string(), default);
    Ok(namespaces)
}
