//! Tenants, in the PostgreSQL store: `sandflow token create|list|revoke`,
//! the tokens `sandflow serve` takes, each scoped to namespaces and a role
//! (kept as digests: a token is printed once, when made); and `sandflow
//! namespace set|list`, each namespace's limits and what it uses.

use super::render::say;
use super::worker::pg_store;
use super::{CliError, GlobalArgs, Output, exit, store_error};
use sandflow::store::tokens::{NamespaceLimits, Role, namespace_name};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum TokenCommand {
    /// Make a token and print it (once: the store keeps only digests of it).
    #[command(after_help = "Roles: viewer reads runs, their steps, logs and events; operator also cancels, resumes and retries \
        them; submitter also submits runs. A token sees only the runs of its namespaces: another namespace's run is \
        `404` to it, as if it did not exist.\n\nExample:\n  \
        sandflow token create ci-team-a --namespace team-a --role submitter")]
    Create {
        /// Its name, shown in `token list` and in what it did.
        name: String,
        /// A namespace whose runs it sees (repeatable, or comma-separated).
        #[arg(long = "namespace", value_name = "NS", required = true, value_delimiter = ',')]
        namespaces: Vec<String>,
        /// What it may do: viewer, operator or submitter.
        #[arg(long, value_name = "ROLE", value_parser = Role::parse)]
        role: Role,
    },
    /// Every token: name, namespaces, role, when made, when revoked.
    List,
    /// Revoke a token: every request with it is refused from then on.
    Revoke {
        name: String,
    },
}

/// Who makes and revokes tokens, for the audit log: this machine's user.
fn who() -> String {
    format!("cli:{}", std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".into()))
}

/// Notes a token action in the audit log.
async fn audit(store: &sandflow::store::PgStore, action: &str, detail: String) -> Result<(), CliError> {
    let entry = sandflow::store::tokens::AuditRecord { token: who(), action: action.into(), outcome: "done".into(), detail: Some(detail), ..Default::default() };
    store.audit(&entry).await.map_err(store_error)
}

pub(crate) async fn execute(command: TokenCommand, global: &GlobalArgs, out: &Output) -> Result<u8, CliError> {
    let store = pg_store(global, "`sandflow token`").await?;
    match command {
        TokenCommand::Create { name, namespaces, role } => {
            if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.') {
                return Err(CliError::invalid(format!("`{name}` is not a token name: 1 to 64 letters, digits, `-`, `_` and `.`")));
            }
            let namespaces = namespaces.iter().map(|n| namespace_name(n)).collect::<Result<Vec<_>, _>>().map_err(|e| CliError::invalid(format!("--namespace: {e}")))?;
            match store.create_token(&name, &namespaces, role).await.map_err(store_error)? {
                Some(token) => {
                    audit(&store, "token create", format!("{name} ({}, namespaces {})", role.as_str(), namespaces.join(", "))).await?;
                    if !out.quiet {
                        say!("token `{name}` ({}, namespaces {}): keep it now, it is not shown again", role.as_str(), namespaces.join(", "));
                    }
                    println!("{token}");
                    Ok(exit::OK)
                }
                None => Err(CliError::invalid(format!("there is already a token named `{name}` (revoked ones keep their names): choose another name"))),
            }
        }
        TokenCommand::List => {
            let tokens = store.tokens().await.map_err(store_error)?;
            if out.json {
                println!("{}", serde_json::to_string_pretty(&tokens).expect("records serialize"));
            } else if tokens.is_empty() {
                say!("no tokens yet: `sandflow token create NAME --namespace NS --role ROLE` makes one");
            } else {
                println!("{:<24} {:<10} {:<22} {:<22} NAMESPACES", "NAME", "ROLE", "CREATED", "REVOKED");
                for t in tokens {
                    println!("{:<24} {:<10} {:<22} {:<22} {}", t.name, t.role.as_str(), t.created_at, t.revoked_at.as_deref().unwrap_or("-"), t.namespaces.join(","));
                }
            }
            Ok(exit::OK)
        }
        TokenCommand::Revoke { name } => match store.revoke_token(&name).await.map_err(store_error)? {
            true => {
                audit(&store, "token revoke", name.clone()).await?;
                if !out.quiet {
                    say!("token `{name}` is revoked: requests with it are refused from now on");
                }
                Ok(exit::OK)
            }
            false => Err(CliError::invalid(format!("no token `{name}` in force (see `sandflow token list`)"))),
        },
    }
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum NamespaceCommand {
    /// Set a namespace's limits. Going over one is refused (429 through
    /// `serve`), and nothing of what was refused is recorded.
    #[command(after_help = "Example:\n  sandflow namespace set team-a --max-runs 100 --max-stored 2GiB --max-steps 16")]
    Set {
        name: String,
        /// Most runs in flight at once (`none`: no limit); a submit past it is refused.
        #[arg(long, value_name = "N|none", value_parser = limit_count)]
        max_runs: Option<Limit>,
        /// Most bytes of files (workflows, components) kept for it (`none`: no limit); an upload past it is refused.
        #[arg(long, value_name = "SIZE|none", value_parser = limit_size)]
        max_stored: Option<Limit>,
        /// Most attempts of its runs running at once across every worker (`none`: no limit); more wait, ready, until one ends.
        #[arg(long, value_name = "N|none", value_parser = limit_steps)]
        max_steps: Option<Limit>,
    },
    /// Every namespace: its limits, its runs in flight, its steps running and the bytes kept for it.
    List,
}

/// A limit as given: a number, or `none` (no limit).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limit(Option<u64>);

fn limit_count(text: &str) -> Result<Limit, String> {
    match text {
        "none" => Ok(Limit(None)),
        n => n.parse::<u64>().map(|n| Limit(Some(n))).map_err(|_| format!("`{n}` is not a number (or `none`)")),
    }
}

fn limit_steps(text: &str) -> Result<Limit, String> {
    match limit_count(text)? {
        Limit(Some(0)) => Err("a namespace needs at least 1 step at a time (to stop new runs, set --max-runs 0)".into()),
        limit => Ok(limit),
    }
}

fn limit_size(text: &str) -> Result<Limit, String> {
    match text {
        "none" => Ok(Limit(None)),
        n => sandflow::units::parse_size(n).map(|n| Limit(Some(n))).map_err(|e| e.to_string()),
    }
}

pub(crate) async fn namespaces(command: NamespaceCommand, global: &GlobalArgs, out: &Output) -> Result<u8, CliError> {
    let store = pg_store(global, "`sandflow namespace`").await?;
    match command {
        NamespaceCommand::Set { name, max_runs, max_stored, max_steps } => {
            let limits = NamespaceLimits { max_runs: max_runs.map(|l| l.0), max_stored: max_stored.map(|l| l.0), max_steps: max_steps.map(|l| l.0) };
            let name = namespace_name(&name).map_err(CliError::invalid)?;
            if limits.max_runs.is_none() && limits.max_stored.is_none() && limits.max_steps.is_none() {
                return Err(CliError::invalid("say what to set: --max-runs N, --max-stored SIZE and/or --max-steps N (`none` for no limit)"));
            }
            store.set_namespace(&name, &limits).await.map_err(store_error)?;
            let count = |n: u64| n.to_string();
            let detail = format!(
                "{name}: max runs {}, max stored {}, max steps {}",
                shown(limits.max_runs, count),
                shown(limits.max_stored, sandflow::units::format_size),
                shown(limits.max_steps, count)
            );
            let entry = sandflow::store::tokens::AuditRecord { token: who(), namespace: Some(name.clone()), action: "namespace set".into(), outcome: "done".into(), detail: Some(detail), ..Default::default() };
            store.audit(&entry).await.map_err(store_error)?;
            if !out.quiet {
                say!("namespace `{name}` set");
            }
        }
        NamespaceCommand::List => {
            let namespaces = store.namespaces().await.map_err(store_error)?;
            if out.json {
                println!("{}", serde_json::to_string_pretty(&namespaces).expect("records serialize"));
            } else {
                println!("{:<24} {:>8} {:>9} {:>6} {:>9} {:>12} {:>12}", "NAMESPACE", "RUNNING", "MAX RUNS", "STEPS", "MAX STEPS", "STORED", "MAX STORED");
                for n in namespaces {
                    let or_none = |v: Option<String>| v.unwrap_or_else(|| "-".into());
                    println!(
                        "{:<24} {:>8} {:>9} {:>6} {:>9} {:>12} {:>12}",
                        n.name,
                        n.running,
                        or_none(n.max_runs.map(|m| m.to_string())),
                        n.steps_running,
                        or_none(n.max_steps.map(|m| m.to_string())),
                        sandflow::units::format_size(n.stored),
                        or_none(n.max_stored.map(sandflow::units::format_size))
                    );
                }
            }
        }
    }
    Ok(exit::OK)
}

/// A limit as set: `as it was`, `none`, or its value.
fn shown(limit: Option<Option<u64>>, text: impl Fn(u64) -> String) -> String {
    match limit {
        None => "unchanged".into(),
        Some(None) => "none".into(),
        Some(Some(n)) => text(n),
    }
}
