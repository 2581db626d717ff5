//! `sandflow component inspect FILE.wasm`: what a component is, what it
//! needs and what it offers, without running its `run`.

use super::{CliError, Output, exit, new_sandbox};
use crate::sandbox::{ComponentInfo, sha256_hex};
use serde_json::json;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub(crate) struct InspectArgs {
    /// The component (.wasm) to inspect.
    #[arg(value_name = "FILE.wasm")]
    file: PathBuf,
}

/// The component's WIT world, decoded from its binary.
fn wit_world(bytes: &[u8]) -> Result<String, String> {
    let decoded = wit_component::decode(bytes).map_err(|e| format!("{e:#}"))?;
    let wit_parser::decoding::DecodedWasm::Component(resolve, world) = decoded else {
        return Err("a WIT package, not a component".into());
    };
    let package = resolve.worlds[world].package.ok_or("the world has no package")?;
    let mut printer = wit_component::WitPrinter::default();
    printer.emit_docs(false);
    printer.print(&resolve, package, &[]).map_err(|e| format!("{e:#}"))?;
    Ok(printer.output.to_string())
}

pub(crate) async fn execute(args: InspectArgs, state_dir: &std::path::Path, out: &Output) -> Result<u8, CliError> {
    let origin = args.file.display().to_string();
    let bytes = std::fs::read(&args.file).map_err(|e| CliError::invalid(format!("{origin}: cannot read the file: {e}")))?;
    if let Err(kind) = crate::sandbox::check_component_header(&bytes) {
        return Err(CliError::invalid(format!("{origin}: {kind}")));
    }
    let wit = wit_world(&bytes).map_err(|e| CliError::invalid(format!("{origin}: cannot decode its WIT world: {e}")))?;
    let sandbox = new_sandbox(state_dir)?;

    // A component that is not a usable step is still shown, then reported.
    let (step, problem) = match sandbox.load_bytes(&origin, &bytes) {
        Ok(c) => (Some(c), None),
        Err(e) => (None, Some(e)),
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
            "imports": step.as_ref().map(|c| c.imports().to_vec()),
            "exports": step.as_ref().map(|c| c.exports().to_vec()),
            "describe": info,
            "wit": wit,
        });
        println!("{}", serde_json::to_string_pretty(&doc).expect("a Value always serializes"));
    } else {
        println!("{origin}");
        println!("  size:    {} bytes", bytes.len());
        println!("  sha256:  {}", sha256_hex(&bytes));
        match (&step, &problem) {
            (Some(c), _) => {
                let describe = if c.has_describe() { "run, describe" } else { "run" };
                println!("  step:    yes (exports {describe})");
                println!("  imports:");
                for name in c.imports() {
                    println!("    {name}");
                }
            }
            (None, Some(p)) => println!("  step:    no: {}", p.kind),
            (None, None) => unreachable!("either loaded or failed"),
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
        for line in wit.lines() {
            println!("  {line}");
        }
    }
    match problem {
        Some(p) => Err(CliError::invalid(p.to_string())),
        None => Ok(exit::OK),
    }
}
