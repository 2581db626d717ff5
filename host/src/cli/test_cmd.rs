//! `sandflow test FILE...`: runs each workflow's `test.cases` and prints a
//! line per case and a summary line `N passed, N failed`.

use super::render::say;
use super::{CliError, Output, exit, new_quick_sandbox, new_sandbox, render, workflow_cmd};
use sandflow::exec::{Executor, NoEvents, Redactor, Refusal, RunOptions, RunReport, RunState, check_secrets, enter};
use sandflow::sandbox::CancellationToken;
use sandflow::workflow::Expectation;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, clap::Args)]
pub(crate) struct TestArgs {
    /// Workflow files whose `test.cases` to run.
    #[arg(value_name = "FILE", required = true)]
    files: Vec<PathBuf>,
    /// Secrets as `NAME=value` lines; also read from `SANDFLOW_SECRET_<NAME>`.
    #[arg(long, value_name = "FILE")]
    secrets_file: Option<PathBuf>,
    #[command(flatten)]
    components: workflow_cmd::ComponentsArg,
    #[command(flatten)]
    vars: super::args::VarArgs,
    /// Compile a large component not compiled before quickly (Winch: 5-6×
    /// faster to compile, its code 10-40% slower, its fuel ~1% apart) and
    /// optimize it in the background for later runs, as `call` does;
    /// `sandflow dev` asks for this.
    #[arg(long)]
    quick_compile: bool,
}

/// A test case's `signals`: each step that waits for one gets its data at
/// once, sent by `test`.
struct CaseSignals(Vec<(String, Value)>);

#[async_trait::async_trait]
impl sandflow::exec::Mailbox for CaseSignals {
    async fn signals(&self, _run: &str, steps: &[String]) -> Result<Vec<(String, sandflow::exec::core::Signal)>, String> {
        let sent = self.0.iter().filter(|(step, _)| steps.contains(step));
        Ok(sent.map(|(step, data)| (step.clone(), sandflow::exec::core::Signal { data: data.clone(), by: "test".into(), at: sandflow::store::now() })).collect())
    }
}

/// Whether a case's run matched its expectation; the message says how not.
fn judge(expect: &Expectation, input_error: Option<&str>, report: Option<&RunReport>) -> Result<(), String> {
    let error = input_error.map(str::to_string).or_else(|| report.and_then(|r| r.error.clone()));
    let state = report.map_or(RunState::Failed, |r| r.state);
    match expect {
        Expectation::Output(want) => match (state, report.and_then(|r| r.output.as_ref())) {
            (RunState::Completed, Some(got)) if got == want => Ok(()),
            (RunState::Completed, got) => Err(format!(
                "output differs\n      expected: {}\n      got:      {}",
                want,
                got.map_or("nothing".into(), Value::to_string)
            )),
            (state, _) => Err(format!("expected output {want}, but the run {}: {}", state.as_str(), error.unwrap_or_default())),
        },
        Expectation::Skipped => match (state, report.and_then(|r| r.output.as_ref())) {
            (RunState::Completed, Some(Value::Null)) => Ok(()),
            (RunState::Completed, got) => Err(format!(
                "expected the output to be skipped (null), got {}",
                got.map_or("nothing".into(), Value::to_string)
            )),
            (state, _) => Err(format!("expected a skipped output, but the run {}: {}", state.as_str(), error.unwrap_or_default())),
        },
        Expectation::Failed => match state {
            RunState::Failed => Ok(()),
            other => Err(format!("expected the run to fail, but it {}", other.as_str())),
        },
        Expectation::Error(text) => match (state, &error) {
            (RunState::Failed, Some(e)) if e.contains(text.as_str()) => Ok(()),
            (RunState::Failed, e) => Err(format!("expected an error containing {text:?}, got {:?}", e.clone().unwrap_or_default())),
            (other, _) => Err(format!("expected an error containing {text:?}, but the run {}", other.as_str())),
        },
    }
}

pub(crate) async fn execute(args: TestArgs, state_dir: &Path, out: &Output) -> Result<u8, CliError> {
    let secrets = super::args::read_secrets(args.secrets_file.as_deref())?;
    let variables = args.vars.read()?;
    let redactor = Redactor::new(&secrets);
    let sandbox = Arc::new(match args.quick_compile {
        true => new_quick_sandbox(state_dir, sandflow::sandbox::SandboxConfig::default().max_instances)?,
        false => new_sandbox(state_dir)?,
    });
    let executor = Executor::new(sandbox.clone(), Arc::new(NoEvents));
    let (mut passed, mut failed) = (0usize, 0usize);
    for file in &args.files {
        let prepared = match workflow_cmd::load(file, &args.components, &sandbox, out).await {
            Ok(p) => Arc::new(p),
            Err(e) => {
                render::error_line(out, &e.message);
                failed += 1;
                continue;
            }
        };
        if let Err(d) = check_secrets(&prepared.plan, &secrets) {
            let e = workflow_cmd::report(out, d);
            render::error_line(out, &e.message);
            failed += 1;
            continue;
        }
        let cases = prepared.plan.workflow.tests.clone();
        if cases.is_empty() && !out.json {
            say!("{}: no test cases", file.display());
        }
        for case in cases {
            let targets: Vec<String> = case.target.iter().map(|(id, _)| id.clone()).collect();
            // The secrets were looked up for the whole workflow above.
            let (entry, input_error) = match enter(&prepared, &targets, &case.input, &secrets) {
                Ok(entry) => (Some(entry), None),
                Err(Refusal::Input(e)) => (None, Some(e)),
                Err(e @ Refusal::Target(_)) => return Err(CliError::invalid(e.to_string())),
            };
            let report = match entry {
                None => None,
                Some(entry) => {
                    if let Some((step, _, at)) = case.signals.iter().find(|(step, ..)| !prepared.plan.index.contains_key(step)) {
                        return Err(CliError::invalid(format!("{at}: test case `{}` signals step `{step}`, which the workflow does not have", case.name)));
                    }
                    let mailbox = Arc::new(CaseSignals(case.signals.iter().map(|(step, data, _)| (step.clone(), data.clone())).collect()));
                    let options = RunOptions { secrets: secrets.clone(), variables: variables.clone(), mailbox: Some(mailbox), ..RunOptions::default() };
                    let targeted = Arc::new(entry.prepared);
                    let mut report = executor.run(targeted, case.input.clone(), options, CancellationToken::new()).await;
                    // Expected outputs are compared as a user sees them: masked.
                    report.output = report.output.map(|o| redactor.value(&o).into_owned());
                    Some(report)
                }
            };
            let verdict = judge(&case.expect, input_error.as_deref(), report.as_ref());
            if out.json {
                render::event(
                    "test_case",
                    json!({ "file": file.display().to_string(), "case": case.name, "passed": verdict.is_ok(), "error": verdict.as_ref().err() }),
                );
            } else {
                match &verdict {
                    Ok(()) => println!("  ✓ {}: {}", file.display(), case.name),
                    Err(why) => println!("  ✗ {}: {}: {}", file.display(), case.name, super::render::printable(why)),
                }
            }
            if verdict.is_ok() { passed += 1 } else { failed += 1 }
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(if failed == 0 { exit::OK } else { exit::FAILED })
}
