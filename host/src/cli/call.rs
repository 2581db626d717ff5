//! `sandflow call FILE.wasm --input JSON`: run one component once, print
//! its output on stdout, its log and a summary on stderr.

use super::render::say;
use super::{CliError, Output, exit, new_quick_sandbox, render};
use sandflow::failure::{FailureKind, StepFailure};
use sandflow::sandbox::{AllowedHost, CancellationToken, DirGrant, Grants, HttpGrant, Limits, QuotaKind, StepRequest};
use sandflow::units::{parse_duration, parse_size};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, clap::Args)]
#[command(after_help = after_help())]
pub(crate) struct CallArgs {
    /// The component (.wasm) to run.
    #[arg(value_name = "FILE.wasm")]
    file: PathBuf,
    /// The input, as JSON [default: null].
    #[arg(long, value_name = "JSON", conflicts_with = "input_file")]
    input: Option<String>,
    /// Read the input (JSON) from a file; `-` reads stdin.
    #[arg(long, value_name = "FILE")]
    input_file: Option<PathBuf>,
    /// The component's static config, as JSON.
    #[arg(long, value_name = "JSON")]
    config: Option<String>,
    /// Fuel budget (about one unit per wasm instruction) [default: 10000000000].
    #[arg(long, value_name = "N")]
    fuel: Option<u64>,
    /// Wall-clock deadline, e.g. `500ms`, `2s`, `1m30s` [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Memory cap, e.g. `64MiB` [default: 128MiB].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    memory: Option<u64>,
    /// Output size cap, e.g. `1MiB` [default: 4MiB].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_output: Option<u64>,
    /// Set a quota on what the component may make the host hold, e.g.
    /// `blob_bytes=16MiB` or `state_keys=100` (repeatable; see below).
    #[arg(long = "quota", value_name = "KEY=VALUE", value_parser = parse_quota)]
    quotas: Vec<(QuotaKind, u64)>,
    /// Pass this host environment variable through (repeatable).
    #[arg(long = "allow-env", value_name = "NAME")]
    allow_env: Vec<String>,
    /// Grant a host directory: `HOST:GUEST` (read-only) or `HOST:GUEST:rw` (repeatable).
    #[arg(long = "dir", value_name = "HOST:GUEST[:rw]", value_parser = parse_dir_grant)]
    dirs: Vec<DirGrant>,
    /// Let the component send HTTP requests to this host (wasi:http):
    /// `HOST`, `HOST:PORT` or `https://HOST[:PORT]`; `*.example.com` for
    /// subdomains (repeatable). Without it, a component that imports
    /// wasi:http does not run.
    #[arg(long = "allow-http", value_name = "HOST")]
    allow_http: Vec<AllowedHost>,
    /// Timeout of each HTTP request (connect, first byte, between bytes).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s", requires = "allow_http")]
    http_timeout: Duration,
    /// Most bytes of one HTTP response body.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "4MiB", requires = "allow_http")]
    http_max_response: u64,
}

fn after_help() -> String {
    let quotas: Vec<String> =
        QuotaKind::ALL.iter().map(|&k| format!("{} [{}]", k.key(), k.format(sandflow::sandbox::Quota::ATTEMPT.get(k)))).collect();
    format!(
        "Examples:\n  \
        sandflow call components/dist/text.wasm --input '{{\"op\":\"upper\",\"text\":\"hi\"}}'\n  \
        sandflow call my.wasm --input-file in.json --fuel 1000000 --timeout 2s --memory 32MiB\n  \
        sandflow call my.wasm --dir ./data:/data --allow-env LANG\n  \
        sandflow call fetch.wasm --allow-http api.example.com --allow-http 127.0.0.1:8080\n  \
        sandflow call my.wasm --quota blob_bytes=16MiB --quota state_keys=100\n\n\
        Quotas, with their defaults (as a workflow step's `quota:`): {}.\n\n\
        A component of 1 MiB or more (a Python or JavaScript step) that this machine has not \
        compiled before runs on quickly compiled code (Winch) at its first call, while optimized \
        code is compiled in the background, at the lowest priority, for the calls after.",
        quotas.join(", ")
    )
}

/// Reads `KEY=VALUE` of `--quota`.
pub(crate) fn parse_quota(text: &str) -> Result<(QuotaKind, u64), String> {
    let keys = || QuotaKind::ALL.map(QuotaKind::key).join(", ");
    let (key, value) = text.split_once('=').ok_or_else(|| format!("`{text}`: write KEY=VALUE, e.g. `blob_bytes=16MiB`"))?;
    let kind = QuotaKind::from_key(key.trim()).ok_or_else(|| format!("unknown quota `{key}`; known: {}", keys()))?;
    Ok((kind, kind.parse_value(value)?))
}

/// Reads `HOST:GUEST`, `HOST:GUEST:ro` or `HOST:GUEST:rw`.
pub(crate) fn parse_dir_grant(text: &str) -> Result<DirGrant, String> {
    let (rest, writable) = match text.rsplit_once(':') {
        Some((rest, "rw")) => (rest, true),
        Some((rest, "ro")) => (rest, false),
        _ => (text, false),
    };
    match rest.rsplit_once(':') {
        Some((host, guest)) if !host.is_empty() && guest.starts_with('/') => {
            Ok(DirGrant { host: PathBuf::from(host), guest: guest.to_string(), writable })
        }
        _ => Err(format!(
            "`{text}`: write HOST:GUEST or HOST:GUEST:rw, with GUEST an absolute path, e.g. `./data:/data`"
        )),
    }
}

fn read_input(args: &CallArgs) -> Result<Value, CliError> {
    let (text, what) = match (&args.input, &args.input_file) {
        (Some(text), _) => (text.clone(), "--input".to_string()),
        (None, Some(path)) if path == Path::new("-") => {
            let text = std::io::read_to_string(std::io::stdin())
                .map_err(|e| CliError::invalid(format!("--input-file -: cannot read stdin: {e}")))?;
            (text, "stdin".to_string())
        }
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| CliError::invalid(format!("--input-file {}: {e}", path.display())))?;
            (text, path.display().to_string())
        }
        (None, None) => return Ok(Value::Null),
    };
    serde_json::from_str(&text).map_err(|e| CliError::invalid(format!("{what} is not valid JSON: {e}")))
}

fn limits(args: &CallArgs) -> Limits {
    let d = Limits::default();
    Limits {
        fuel: args.fuel.unwrap_or(d.fuel),
        timeout: args.timeout.unwrap_or(d.timeout),
        memory: args.memory.unwrap_or(d.memory),
        max_output: args.max_output.map_or(d.max_output, |s| usize::try_from(s).unwrap_or(usize::MAX)),
        quota: args.quotas.iter().fold(d.quota, |mut q, &(kind, value)| {
            q.set(kind, value);
            q
        }),
    }
}

pub(crate) async fn execute(args: CallArgs, state_dir: &Path, out: &Output) -> Result<u8, CliError> {
    let input = read_input(&args)?;
    let config = match &args.config {
        Some(text) => serde_json::from_str(text)
            .map_err(|e| CliError::invalid(format!("--config is not valid JSON: {e}")))?,
        None => Value::Null,
    };
    let env = args
        .allow_env
        .iter()
        .filter_map(|name| match std::env::var(name) {
            Ok(v) => Some((name.clone(), v)),
            Err(_) => {
                tracing::warn!("--allow-env {name}: not set here, so the component will not see it");
                None
            }
        })
        .collect();
    let http = (!args.allow_http.is_empty()).then(|| {
        Arc::new(HttpGrant { allow: args.allow_http.clone(), max_response: args.http_max_response, timeout: args.http_timeout })
    });
    let request = StepRequest {
        input,
        config,
        limits: limits(&args),
        grants: Grants { env, dirs: args.dirs.clone(), http },
        ..StepRequest::new(Value::Null)
    };

    // Listen for SIGINT/SIGTERM before the (possibly slow) compile, so an
    // early Ctrl-C still ends with exit 130 rather than the default kill.
    let cancel = CancellationToken::new();
    let watcher = tokio::spawn(cancel_on_signal(cancel.clone()));
    // A large component called for the first time runs on quickly
    // compiled code while optimized code is made in the background.
    let sandbox = new_quick_sandbox(state_dir, 2)?;
    let name = args.file.display().to_string();
    let component = match sandbox.load_file(&args.file) {
        Ok(c) => c,
        // Asking for an import nobody grants is the step's failure (kind
        // `instantiate`), not a usage error.
        Err(e) if e.kind.is_ungranted() => {
            let failure = StepFailure::new(FailureKind::Instantiate, e.kind.to_string());
            return Ok(report_failure(out, &sandflow::exec::new_run_id(), &name, &failure, None));
        }
        Err(e) => return Err(CliError::invalid(e.to_string())),
    };

    let max_log = request.limits.quota.log;
    // A call is a one-step run: its --json lines carry a run id like any run's.
    let run_id = sandflow::exec::new_run_id();
    if out.json {
        render::event("step_started", json!({ "run_id": run_id, "step": name, "state": "running", "attempt": 1 }));
    }
    let outcome = sandbox.run(&component, request, &cancel).await;
    watcher.abort();

    render::step_log(out, &run_id, &name, &outcome.log, max_log);
    match &outcome.result {
        Ok(output) => {
            println!("{}", super::render::json_pretty(output));
            if out.json {
                render::event(
                    "step_finished",
                    json!({
                        "run_id": run_id, "step": name, "state": "succeeded", "attempt": 1,
                        "duration_ms": outcome.duration.as_secs_f64() * 1000.0,
                        "fuel_used": outcome.fuel_used,
                        "compiler": component.compiler().as_str(),
                    }),
                );
            } else if !out.quiet {
                let quick = match component.compiler() {
                    sandflow::sandbox::Compiler::Winch => ", on quickly compiled code: later calls use optimized code",
                    sandflow::sandbox::Compiler::Cranelift => "",
                };
                say!("succeeded in {} (fuel used: {}{quick})", render::duration(outcome.duration), outcome.fuel_used);
            }
            Ok(exit::OK)
        }
        Err(failure) => Ok(report_failure(out, &run_id, &name, failure, Some(&outcome))),
    }
}

fn report_failure(
    out: &Output,
    run_id: &str,
    name: &str,
    failure: &StepFailure,
    outcome: Option<&sandflow::sandbox::StepOutcome>,
) -> u8 {
    let cancelled = failure.kind == FailureKind::Cancelled;
    if out.json {
        render::event(
            "step_finished",
            json!({
                "run_id": run_id,
                "step": name,
                "state": if cancelled { "cancelled" } else { "failed" },
                "attempt": 1,
                "duration_ms": outcome.map(|o| o.duration.as_secs_f64() * 1000.0),
                "fuel_used": outcome.map(|o| o.fuel_used),
                "error": render::failure_json(failure),
            }),
        );
    } else {
        let after = outcome.map(|o| format!(" after {}", render::duration(o.duration))).unwrap_or_default();
        say!("error: {name} failed ({}){after}: {}", failure.kind, failure.message);
    }
    if cancelled { exit::CANCELLED } else { exit::FAILED }
}

/// Cancels `token` on SIGINT or SIGTERM.
pub(crate) fn cancel_on_signal(token: CancellationToken) -> impl Future<Output = ()> + Send + 'static {
    cancel_on_signals(vec![token])
}

/// How an in-process run is interrupted: the first SIGINT or SIGTERM
/// cancels the run (its `finally` steps still run, and a signal while they
/// run interrupts them), a second interrupts the `finally` steps. Returns
/// the run's token, the `finally` steps' token, and the watching task.
pub(crate) fn run_interrupts() -> (CancellationToken, CancellationToken, tokio::task::JoinHandle<()>) {
    let (cancel, skip_finally) = (CancellationToken::new(), CancellationToken::new());
    let watcher = tokio::spawn(cancel_on_signals(vec![cancel.clone(), skip_finally.clone()]));
    (cancel, skip_finally, watcher)
}

/// Cancels each token of `tokens` on a SIGINT or SIGTERM of its own: the
/// first signal the first token, the second the second, and so on. The
/// handlers are in place when this returns, not when the future is first
/// polled, so a signal that comes before the task first runs is not missed.
fn cancel_on_signals(tokens: Vec<CancellationToken>) -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let signals = {
        use tokio::signal::unix::{SignalKind, signal};
        signal(SignalKind::interrupt()).and_then(|int| Ok((int, signal(SignalKind::terminate())?)))
    };
    async move {
        #[cfg(unix)]
        {
            let Ok((mut int, mut term)) = signals else { return };
            for token in &tokens {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                token.cancel();
            }
        }
        #[cfg(not(unix))]
        for token in &tokens {
            let _ = tokio::signal::ctrl_c().await;
            token.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_grants_read_only_by_default() {
        let g = parse_dir_grant("./data:/data").unwrap();
        assert_eq!((g.host, g.guest.as_str(), g.writable), (PathBuf::from("./data"), "/data", false));
        assert!(parse_dir_grant("/tmp/x:/out:rw").unwrap().writable);
        assert!(!parse_dir_grant("/tmp/x:/out:ro").unwrap().writable);
    }

    #[test]
    fn quotas_are_key_value_with_sizes_or_counts() {
        assert_eq!(parse_quota("blob_bytes=16MiB"), Ok((QuotaKind::BlobBytes, 16 << 20)));
        assert_eq!(parse_quota("state_keys=100"), Ok((QuotaKind::StateKeys, 100)));
        assert!(parse_quota("blob=1").unwrap_err().contains("known: blob_bytes, blobs"));
        assert!(parse_quota("blobs").unwrap_err().contains("KEY=VALUE"));
        assert!(parse_quota("blobs=many").is_err());
    }

    #[test]
    fn dir_grants_need_an_absolute_guest_path() {
        for bad in ["./data", "./data:data", ":/data", "./data:/data:rx"] {
            let e = parse_dir_grant(bad).unwrap_err();
            assert!(e.contains("HOST:GUEST"), "{bad}: {e}");
        }
    }
}
