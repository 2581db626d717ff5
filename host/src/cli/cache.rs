//! `sandflow cache list|clear`: the memoized step results (`cache:`) in
//! the run store.

use super::render::say;
use super::{CliError, GlobalArgs, Output, exit, store_error};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum CacheCommand {
    /// Every stored result, newest first: workflow, step, component, the
    /// run that stored it, when it expires.
    List,
    /// Drop stored results (all of them, or only the expired ones), so the
    /// steps run again.
    Clear {
        /// Only the entries whose `ttl` has passed.
        #[arg(long)]
        expired: bool,
    },
}

pub(crate) async fn execute(command: CacheCommand, global: &GlobalArgs, out: &Output) -> Result<u8, CliError> {
    let store = global.open_store().await?;
    match command {
        CacheCommand::List => {
            let entries = store.memo_list().await.map_err(store_error)?;
            if out.json {
                println!("{}", serde_json::to_string_pretty(&entries).expect("entries serialize"));
                return Ok(exit::OK);
            }
            if entries.is_empty() {
                say!("no cached results in {}", store.location());
            }
            for e in entries {
                let until = if e.expired { format!("expired {}", e.expires_at) } else { format!("until {}", e.expires_at) };
                println!(
                    "{}  {}/{}  component {}  from run {}  {} bytes  {until}",
                    &e.key[..12],
                    e.workflow,
                    e.step,
                    &e.component[..12.min(e.component.len())],
                    e.run_id,
                    e.output_bytes
                );
            }
        }
        CacheCommand::Clear { expired } => {
            let n = store.memo_clear(expired).await.map_err(store_error)?;
            if !out.quiet {
                say!("dropped {n} cached result{}", if n == 1 { "" } else { "s" });
            }
        }
    }
    Ok(exit::OK)
}
