//! `sandflow token create|list|revoke`: the tokens `sandflow serve` takes,
//! each scoped to namespaces and a role, kept in the PostgreSQL store (as
//! digests: a token is printed once, when made).

use super::render::say;
use super::worker::pg_store;
use super::{CliError, GlobalArgs, Output, exit, store_error};
use crate::store::tokens::{Role, namespace_name};

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
async fn audit(store: &crate::store::PgStore, action: &str, detail: String) -> Result<(), CliError> {
    let entry = crate::store::tokens::AuditRecord { token: who(), action: action.into(), outcome: "done".into(), detail: Some(detail), ..Default::default() };
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
