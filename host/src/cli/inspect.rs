//! `sandflow component inspect FILE.wasm`: what a component is, what it
//! needs and what it offers, without running its `run`.

use super::render::say;
use super::{CliError, Output, exit, new_quick_sandbox};
use sandflow::sandbox::{ComponentInfo, sha256_hex};
use serde_json::json;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub(crate) struct InspectArgs {
    /// The component (.wasm) to inspect.
    #[arg(value_name = "FILE.wasm")]
    file: PathBuf,
}

pub(crate) async fn execute(args: InspectArgs, state_dir: &std::path::Path, out: &Output) -> Result<u8, CliError> {
    let origin = args.file.display().to_string();
    let bytes = std::fs::read(&args.file).map_err(|e| CliError::invalid(format!("{origin}: cannot read the file: {e}")))?;
    if let Err(kind) = sandflow::sandbox::check_component_header(&bytes) {
        return Err(CliError::invalid(format!("{origin}: {kind}")));
    }
    let decoded = sandflow::sandbox::decode_world(&bytes).map_err(|e| CliError::invalid(format!("{origin}: cannot decode its WIT world: {e}")))?;
    let sandbox = new_quick_sandbox(state_dir, 2)?;

    // Any valid component is shown; one that is not a usable step is shown
    // with the reason, which is what an author came to find out.
    let (step, problem) = match sandbox.load_bytes(&origin, &bytes) {
        Ok(c) => (Some(c), None),
        Err(e) if e.kind.is_not_a_step() => (None, Some(e)),
        Err(e) => return Err(CliError::invalid(e.to_string())),
    };
    let info: Option<ComponentInfo> = match &step {
        Some(c) => sandbox.describe(c).await.map_err(|f| CliError {
            code: exit::FAILED,
            message: format!("{origin}: {}", f.message),
        })?,
        None => None,
    };

    if out.json {
        let doc = json!({
            "file": origin,
            "size": bytes.len(),
            "sha256": sha256_hex(&bytes),
            "step": problem.is_none(),
            "problem": problem.as_ref().map(|p| p.kind.to_string()),
            "needs_http_grant": step.as_ref().is_some_and(|c| c.http_import().is_some()),
            "imports": decoded.imports,
            "exports": decoded.exports,
            "describe": info,
            "wit": decoded.wit,
        });
        println!("{}", super::render::json_pretty(&doc));
    } else {
        println!("{origin}");
        println!("  size:    {} bytes", bytes.len());
        println!("  sha256:  {}", sha256_hex(&bytes));
        match (&step, &problem) {
            (Some(c), _) => {
                let describe = if c.has_describe() { "run, describe" } else { "run" };
                println!("  step:    yes (exports {describe})");
                if let Some(import) = c.http_import() {
                    println!("  needs:   an HTTP grant (it imports {import}): `grants.http.allow`, or `--allow-http HOST` with call");
                }
            }
            (None, Some(p)) => println!("  step:    no: {}", p.kind),
            (None, None) => unreachable!("either loaded or failed"),
        }
        println!("  imports:");
        for name in &decoded.imports {
            println!("    {name}");
        }
        println!("  exports:");
        for name in &decoded.exports {
            println!("    {name}");
        }
        if let Some(info) = &info {
            println!("  name:    {} {}", info.name, info.version);
            if !info.description.is_empty() {
                println!("  about:   {}", info.description);
            }
            if let Some(s) = &info.input_schema {
                println!("  input schema:  {s}");
            }
            if let Some(s) = &info.output_schema {
                println!("  output schema: {s}");
            }
        }
        println!("\nWIT world:\n");
        for line in decoded.wit.lines() {
            println!("  {line}");
        }
    }
    if let Some(p) = problem
        && !out.quiet
    {
        say!("note: {origin} is not a sandflow step ({}), so `sandflow call` and `run` refuse it", p.kind.reason());
    }
    Ok(exit::OK)
}
