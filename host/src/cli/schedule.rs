//! `sandflow schedule add|list|pause|resume|remove`: the schedules of a
//! PostgreSQL store, fired by `serve` and `worker --scheduler`, or of a
//! SQLite store, fired by `sandflow scheduler` (one process that also runs
//! what they start).

use super::args::VarArgs;
use super::render::say;
use super::worker::{binding, load_for_submit, namespace_arg, pg_store};
use super::{CliError, GlobalArgs, Output, exit, store_error, workflow_cmd};
use sandflow::store::schedules::{HookListing, ScheduleRecord, ScheduleTemplate, is_webhook};
use std::path::PathBuf;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum ScheduleCommand {
    /// Register the schedules a workflow file's `schedules:` holds, as
    /// WORKFLOW/NAME, and the webhooks of its `triggers:` (POST
    /// /hooks/NAME on `serve`): the file and its components are kept in the store
    /// (as `submit` keeps them), so any scheduler anywhere fires them.
    /// Adding the file again updates them (a schedule whose cron and zone
    /// are unchanged keeps its next tick) and removes the ones it no
    /// longer has.
    #[command(after_help = "Example:\n  sandflow schedule add workflows/schedule.yaml --namespace team-a\n\n\
        `sandflow serve` and `sandflow worker --scheduler` (any number of them) fire the ticks; each tick starts one run, once.")]
    Add(AddArgs),
    /// The schedules (cron, zone, next tick, the last tick's outcome) and
    /// the webhooks (secret, last delivery).
    List {
        /// Only this namespace's.
        #[arg(long, value_name = "NS")]
        namespace: Option<String>,
    },
    /// Stop a schedule's ticks until `resume` (ticks meanwhile are not
    /// caught up), or refuse a webhook's deliveries (503).
    Pause(NameArgs),
    /// Start a paused schedule again, from its next tick (a webhook: take
    /// deliveries again).
    Resume(NameArgs),
    /// Remove a schedule or a webhook (the runs it started stay).
    Remove(NameArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct AddArgs {
    /// The workflow file with `schedules:`.
    #[arg(value_name = "FILE")]
    pub(super) file: PathBuf,
    /// The namespace (tenant) its runs belong to [default: `default`].
    #[arg(long, value_name = "NS")]
    pub(super) namespace: Option<String>,
    /// Most steps of each run running at once across all workers.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub(super) concurrency: Option<u64>,
    /// Run only these steps and every step they depend on.
    #[arg(long, value_name = "STEP[,STEP...]", value_delimiter = ',')]
    pub(super) target: Vec<String>,
    #[command(flatten)]
    pub(super) components: workflow_cmd::ComponentsArg,
    #[command(flatten)]
    pub(super) vars: VarArgs,
    /// Its runs' priority within the namespace.
    #[arg(long, value_name = "N", default_value_t = 0, allow_negative_numbers = true)]
    pub(super) priority: i32,
}

#[derive(Debug, clap::Args)]
pub(crate) struct NameArgs {
    /// The schedule, WORKFLOW/NAME, or the webhook, NAME, as `schedule
    /// list` shows it.
    pub(super) name: String,
    /// Its namespace [default: `default`].
    #[arg(long, value_name = "NS")]
    pub(super) namespace: Option<String>,
}

pub(crate) async fn schedules(command: ScheduleCommand, global: &GlobalArgs, out: &Output) -> Result<u8, CliError> {
    if let sandflow::store::StoreUrl::Sqlite(path) = global.store_url()? {
        return local(command, &path, out).await;
    }
    let store = pg_store(global, "`sandflow schedule`").await?;
    let now = jiff::Timestamp::now();
    match command {
        ScheduleCommand::Add(args) => {
            let (prepared, files) = load_for_submit(&args.file, &args.components, out).await?;
            let wf = &prepared.plan.workflow;
            if wf.schedules.is_empty() && wf.triggers.is_empty() {
                return Err(CliError::invalid(format!(
                    "{} has no `schedules:` and no `triggers:`: add one, e.g.\n  schedules:\n    - cron: \"0 3 * * *\"\n      timezone: Europe/Berlin",
                    args.file.display()
                )));
            }
            // Each schedule's input and the targets, checked as a submit's.
            for s in &wf.schedules {
                sandflow::exec::enter(&prepared, &args.target, &s.input, &Default::default())
                    .map_err(|r| CliError::invalid(format!("schedule `{}`: {r}", s.name)))?;
            }
            let binding = binding(args.concurrency, &args.components, &args.vars, args.namespace.as_deref(), args.priority)?;
            let template = ScheduleTemplate {
                workflow: wf.name.clone(),
                file: args.file.display().to_string(),
                sha256: wf.sha256.clone(),
                targets: args.target.clone(),
                binding,
            };
            let put = store.put_schedules(&template, &files, &wf.schedules, &wf.triggers, now).await.map_err(store_error)?;
            Added::new(put, wf).print(out);
        }
        ScheduleCommand::List { namespace } => {
            let only = namespace.as_deref().map(|ns| namespace_arg(Some(ns))).transpose()?.map(|ns| vec![ns]);
            let schedules = store.schedules(only.as_deref()).await.map_err(store_error)?;
            let hooks = store.hooks(only.as_deref()).await.map_err(store_error)?;
            print_list(&schedules, &hooks, out);
        }
        ScheduleCommand::Pause(args) => toggle(&store, args, true, now, out).await?,
        ScheduleCommand::Resume(args) => toggle(&store, args, false, now, out).await?,
        ScheduleCommand::Remove(args) => {
            let ns = namespace_arg(args.namespace.as_deref())?;
            let removed = match is_webhook(&args.name) {
                true => store.remove_hook(&ns, &args.name).await,
                false => store.remove_schedule(&ns, &args.name).await,
            };
            if !removed.map_err(store_error)? {
                return Err(unknown(&ns, &args.name));
            }
            if !out.quiet {
                say!("schedule {} removed", args.name);
            }
        }
    }
    Ok(exit::OK)
}

/// `sandflow schedule …` on a SQLite store: schedules kept by their file's
/// path, fired by `sandflow scheduler`.
async fn local(command: ScheduleCommand, path: &std::path::Path, out: &Output) -> Result<u8, CliError> {
    let store = sandflow::store::open_sqlite(path).await.map_err(store_error)?;
    let now = jiff::Timestamp::now();
    let only_default = |ns: Option<&str>| match ns {
        None | Some("default") => Ok(()),
        Some(ns) => Err(CliError::invalid(format!("a SQLite store has one namespace, `default`, not `{ns}`: namespaces are PostgreSQL's"))),
    };
    match command {
        ScheduleCommand::Add(args) => {
            only_default(args.namespace.as_deref())?;
            if args.concurrency.is_some() || args.components.file.is_some() || !args.vars.is_empty() || args.priority != 0 {
                return Err(CliError::invalid(
                    "on a SQLite store `schedule add` takes FILE and --target: `sandflow scheduler` runs each tick as `sandflow run FILE` would (the workflow's own `concurrency`)",
                ));
            }
            let (prepared, _) = load_for_submit(&args.file, &args.components, out).await?;
            let wf = &prepared.plan.workflow;
            if wf.schedules.is_empty() {
                return Err(CliError::invalid(format!(
                    "{} has no `schedules:`: add one, e.g.\n  schedules:\n    - cron: \"0 3 * * *\"\n      timezone: Europe/Berlin",
                    args.file.display()
                )));
            }
            for s in &wf.schedules {
                sandflow::exec::enter(&prepared, &args.target, &s.input, &Default::default())
                    .map_err(|r| CliError::invalid(format!("schedule `{}`: {r}", s.name)))?;
            }
            // Kept by path: the scheduler runs the file as it is at each tick.
            let file = std::path::absolute(&args.file).map_err(|e| CliError::invalid(format!("{}: {e}", args.file.display())))?;
            let put = store.put_local_schedules(&wf.name, &file.display().to_string(), &args.target, &wf.schedules, now).await.map_err(store_error)?;
            Added::new(put, wf).print(out);
            if !wf.triggers.is_empty() && !out.quiet {
                say!("note: its webhooks (`triggers:`) are not registered: they need `sandflow serve` on a PostgreSQL store");
            }
            if !out.quiet {
                say!("`sandflow scheduler` fires them (one process, on this store)");
            }
        }
        ScheduleCommand::List { namespace } => {
            only_default(namespace.as_deref())?;
            print_list(&store.local_schedules().await.map_err(store_error)?, &[], out);
        }
        ScheduleCommand::Pause(args) => {
            only_default(args.namespace.as_deref())?;
            local_toggle(&store, &args.name, true, now, out).await?
        }
        ScheduleCommand::Resume(args) => {
            only_default(args.namespace.as_deref())?;
            local_toggle(&store, &args.name, false, now, out).await?
        }
        ScheduleCommand::Remove(args) => {
            only_default(args.namespace.as_deref())?;
            if !store.remove_local_schedule(&args.name).await.map_err(store_error)? {
                return Err(unknown("default", &args.name));
            }
            if !out.quiet {
                say!("schedule {} removed", args.name);
            }
        }
    }
    Ok(exit::OK)
}

async fn local_toggle(store: &sandflow::store::SqliteStore, name: &str, paused: bool, now: jiff::Timestamp, out: &Output) -> Result<(), CliError> {
    if !store.pause_local_schedule(name, paused, now).await.map_err(store_error)? {
        return Err(unknown("default", name));
    }
    if !out.quiet {
        say!("schedule {name} {}", if paused { "paused" } else { "resumed" });
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub(crate) struct SchedulerArgs {
    /// Most steps of each run running at once (default: the workflow's
    /// `concurrency`, else the CPU count).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    concurrency: Option<u64>,
    /// Secrets as `NAME=value` lines; also read from `SANDFLOW_SECRET_<NAME>`.
    #[arg(long, value_name = "FILE")]
    secrets_file: Option<PathBuf>,
}

/// `sandflow scheduler`: fires a SQLite store's schedules and runs what
/// they start, in this process, until SIGINT or SIGTERM. Runs a scheduler
/// left running when it stopped (or was killed) are resumed as it starts.
pub(crate) async fn scheduler(args: SchedulerArgs, global: &GlobalArgs, out: &Output) -> Result<u8, CliError> {
    use sandflow::runs::{Recorder, Settings};
    use std::sync::Arc;
    let sandflow::store::StoreUrl::Sqlite(path) = global.store_url()? else {
        return Err(CliError::invalid(
            "`sandflow scheduler` fires the schedules of a SQLite store in this process; with PostgreSQL, `sandflow serve` and `sandflow worker --scheduler` fire them (any number of them)",
        ));
    };
    let store = Arc::new(sandflow::store::open_sqlite(&path).await.map_err(store_error)?);
    let sandbox = Arc::new(super::new_sandbox(&global.state_dir)?);
    let recorder = Recorder { store: store.clone(), runner: sandbox.clone() };
    let secrets = super::args::read_secrets(args.secrets_file.as_deref())?;
    let settings = Settings { concurrency: args.concurrency.map(|n| n as usize), secrets: secrets.clone(), otlp: global.otlp()?, ..Settings::default() };
    let stop = sandflow::sandbox::CancellationToken::new();
    let watcher = tokio::spawn(super::call::cancel_on_signal(stop.clone()));
    // Runs are cancelled when the scheduler stops: the next one resumes them.
    let runs_cancel = sandflow::sandbox::CancellationToken::new();
    let mut runs = tokio::task::JoinSet::new();
    let quiet = out.quiet;
    let load = |file: String| {
        let (sandbox, quiet_out) = (sandbox.clone(), Output { json: false, quiet: true, verbose: 0 });
        async move { workflow_cmd::load(std::path::Path::new(&file), &Default::default(), &sandbox, &quiet_out).await.map(Arc::new).map_err(|e| e.message) }
    };
    for id in store.runs_left_by_schedules().await.map_err(store_error)? {
        let record = sandflow::store::RunStore::run(store.as_ref(), &id, sandflow::store::RunDetail::Full).await.map_err(store_error)?;
        match load(record.file.clone()).await {
            Ok(prepared) => {
                if !quiet {
                    say!("run {id} (schedule {}) was left running: resuming it", record.trigger.as_ref().and_then(|t| t.source.clone()).unwrap_or_default());
                }
                let (recorder, settings, cancel) = (recorder.clone(), settings.clone(), runs_cancel.child_token());
                runs.spawn(async move {
                    let report = recorder.resume(prepared, &record, settings, Arc::new(sandflow::exec::NoEvents), cancel).await;
                    (record.id.clone(), report.map_err(|e| e.to_string()))
                });
            }
            Err(e) => say!("warning: run {id} was left running, and cannot be resumed: {e}"),
        }
    }
    if !quiet {
        say!("scheduler: firing the schedules of {} (Ctrl-C stops it; its runs are resumed when it starts again)", path.display());
    }
    while !stop.is_cancelled() {
        let now = jiff::Timestamp::now();
        for due in store.due_schedules(now).await.map_err(store_error)? {
            // The file as it is now: a tick runs it as `sandflow run` would.
            let prepared = match load(due.file.clone()).await {
                Ok(p) => sandflow::exec::enter(&p, &due.targets, &due.input, &secrets).map_err(|r| r.to_string()).and_then(|entry| match entry.missing_secrets {
                    Some(d) => Err(d.to_string()),
                    None => Ok(Arc::new(entry.prepared)),
                }),
                Err(e) => Err(e),
            };
            let template = prepared.as_ref().map_err(Clone::clone).map(|p| sandflow::store::NewRun {
                id: String::new(),
                workflow: p.plan.workflow.name.clone(),
                file: due.file.clone(),
                sha256: p.plan.workflow.sha256.clone(),
                input: due.input.clone(),
                targets: due.targets.clone(),
                text: Some(p.plan.workflow.text.clone()),
            });
            for fired in store.fire_local(&due, now, template).await.map_err(store_error)? {
                let (Ok(id), Ok(prepared)) = (&fired.outcome, &prepared) else {
                    if let Err(why) = &fired.outcome {
                        say!("schedule {}: the tick of {}: {why}", fired.schedule, fired.tick);
                    }
                    continue;
                };
                if !quiet {
                    say!("schedule {}: the tick of {} started run {id}", fired.schedule, fired.tick);
                }
                let trigger = sandflow::exec::RunTrigger { kind: Some("schedule".into()), scheduled_time: Some(fired.tick.to_string()) };
                let settings = Settings { trigger, ..settings.clone() };
                let (recorder, prepared, id, input, cancel) = (recorder.clone(), prepared.clone(), id.clone(), due.input.clone(), runs_cancel.child_token());
                runs.spawn(async move {
                    let report = recorder.run_begun(prepared, id.clone(), input, settings, Arc::new(sandflow::exec::NoEvents), cancel).await;
                    (id, Ok(report))
                });
            }
        }
        while let Some(done) = runs.try_join_next() {
            if let Ok((id, report)) = done {
                ended(&id, report, quiet);
            }
        }
        let wait = sandflow::store::schedules::until_next(store.next_local_tick().await.map_err(store_error)?);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => {}
        }
    }
    if !runs.is_empty() && !quiet {
        say!("scheduler: stopping; cancelling its {} running runs (the next `sandflow scheduler` resumes them)", runs.len());
    }
    runs_cancel.cancel();
    while let Some(done) = runs.join_next().await {
        if let Ok((id, report)) = done {
            ended(&id, report, quiet);
        }
    }
    watcher.abort();
    Ok(exit::OK)
}

/// Says how a run the scheduler ran ended.
fn ended(id: &str, report: Result<sandflow::exec::RunReport, String>, quiet: bool) {
    match report {
        Ok(r) if r.state == sandflow::exec::RunState::Completed => {
            if !quiet {
                say!("run {id} completed");
            }
        }
        Ok(r) => say!("run {id} {}: {}", r.state.as_str(), r.error.unwrap_or_default()),
        Err(e) => say!("run {id}: {e}"),
    }
}

/// What `schedule add` registered: what it prints, and (as JSON) what
/// `POST /api/schedules` answers.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct Added {
    schedules: Vec<AddedSchedule>,
    webhooks: Vec<AddedHook>,
    /// The workflow's schedules and webhooks the file no longer has.
    removed: Vec<String>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct AddedSchedule {
    name: String,
    cron: String,
    timezone: String,
    /// Its next tick in its zone (RFC 3339); none while paused.
    next_at: Option<String>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct AddedHook {
    name: String,
    secret: String,
}

impl Added {
    /// What [`sandflow::store::PgStore::put_schedules`] did with a file's
    /// `schedules` and `triggers`.
    pub(super) fn new(put: sandflow::store::schedules::PutSchedules, wf: &sandflow::workflow::Workflow) -> Added {
        Added {
            schedules: put
                .put
                .into_iter()
                .zip(&wf.schedules)
                .map(|((name, next), d)| AddedSchedule {
                    name,
                    cron: d.cron.clone(),
                    timezone: d.timezone.clone(),
                    next_at: next.map(|t| sandflow::store::schedules::in_zone(t, &d.timezone)),
                })
                .collect(),
            webhooks: put.hooks.into_iter().zip(&wf.triggers).map(|(name, d)| AddedHook { name, secret: d.secret.clone() }).collect(),
            removed: put.removed,
        }
    }
}

impl Added {
    fn print(&self, out: &Output) {
        if out.quiet {
            return;
        }
        for s in &self.schedules {
            let next = s.next_at.as_ref().map_or_else(|| "paused".to_string(), |t| format!("next at {t}"));
            say!("schedule {}: `{}` ({}), {next}", s.name, s.cron, s.timezone);
        }
        for AddedHook { name, secret } in &self.webhooks {
            say!("webhook {name}: POST /hooks/{name} on `sandflow serve`, deliveries signed with secret {secret}");
        }
        for name in &self.removed {
            say!("schedule {name}: removed (no longer in the file)");
        }
    }
}

/// `schedule list`: a table, or with `--json` one object of both lists.
fn print_list(schedules: &[ScheduleRecord], hooks: &[HookListing], out: &Output) {
    if out.json {
        let listed = serde_json::json!({ "schedules": schedules, "webhooks": hooks });
        println!("{}", serde_json::to_string_pretty(&listed).expect("records serialize"));
        return;
    }
    println!("{:<12} {:<28} {:<18} {:<16} {:<26} LAST", "NAMESPACE", "SCHEDULE", "CRON", "ZONE", "NEXT");
    for s in schedules {
        let next = if s.paused { "paused".to_string() } else { s.next_at.clone().unwrap_or_else(|| "never".into()) };
        let last = match (&s.last_tick, &s.last_outcome, &s.last_run) {
            (Some(t), _, Some(run)) => format!("{t} run {run}"),
            (Some(t), Some(o), None) => format!("{t} {o}"),
            _ => "-".into(),
        };
        println!("{:<12} {:<28} {:<18} {:<16} {:<26} {last}", s.namespace, s.name, s.cron, s.timezone, next);
    }
    if !hooks.is_empty() {
        println!("\n{:<12} {:<28} {:<24} {:<20} LAST DELIVERY", "NAMESPACE", "WEBHOOK", "WORKFLOW", "SECRET");
        for h in hooks {
            let last = match (&h.last_delivery, &h.last_run) {
                (Some(at), Some(run)) => format!("{at} run {run}"),
                (Some(at), None) => at.clone(),
                _ => "-".into(),
            };
            let name = if h.paused { format!("{} (paused)", h.name) } else { h.name.clone() };
            println!("{:<12} {:<28} {:<24} {:<20} {last}", h.namespace, name, h.workflow, h.secret);
        }
    }
}

/// `sandflow --server URL schedule …`: the same, through the server's API
/// (`/api/schedules`), with the token's rights and namespaces.
pub(super) async fn remote(remote: &super::remote::Remote, command: ScheduleCommand, out: &Output) -> Result<u8, CliError> {
    match command {
        ScheduleCommand::Add(args) => {
            let vars = args.vars.read()?;
            let (_, files) = load_for_submit(&args.file, &args.components, out).await?;
            let hashes: std::collections::BTreeMap<String, String> =
                files.iter().map(|(p, b)| (p.display().to_string(), sandflow::sandbox::sha256_hex(b))).collect();
            let body = serde_json::json!({
                "workflow": args.file.display().to_string(),
                "files": hashes,
                "targets": args.target,
                "vars": vars,
                "concurrency": args.concurrency,
                "components": args.components.file.as_ref().map(|p| p.display().to_string()),
                "namespace": args.namespace,
                "priority": args.priority,
            });
            let answer = remote.post_with_files("/api/schedules", &body, &files, args.namespace.as_deref(), out).await?;
            let added: Added = serde_json::from_value(answer).map_err(|e| CliError { code: exit::FAILED, message: format!("the server answered `schedule add` with what this client cannot read: {e}") })?;
            added.print(out);
        }
        ScheduleCommand::List { namespace } => {
            let path = match &namespace {
                Some(ns) => format!("/api/schedules?namespace={}", super::remote::encode(ns)),
                None => "/api/schedules".to_string(),
            };
            let answer: serde_json::Value = remote.get(&path).await?;
            let schedules: Vec<ScheduleRecord> = serde_json::from_value(answer["schedules"].clone()).unwrap_or_default();
            let hooks: Vec<HookListing> = serde_json::from_value(answer["webhooks"].clone()).unwrap_or_default();
            print_list(&schedules, &hooks, out);
        }
        ScheduleCommand::Pause(args) => act(remote, "pause", args, out).await?,
        ScheduleCommand::Resume(args) => act(remote, "resume", args, out).await?,
        ScheduleCommand::Remove(args) => act(remote, "remove", args, out).await?,
    }
    Ok(exit::OK)
}

/// `pause`, `resume` or `remove` through the API.
async fn act(remote: &super::remote::Remote, action: &str, args: NameArgs, out: &Output) -> Result<(), CliError> {
    let mut path = format!("/api/schedules/{}/{action}", super::remote::encode(&args.name));
    if let Some(ns) = &args.namespace {
        path.push_str(&format!("?namespace={}", super::remote::encode(ns)));
    }
    let answer = remote.post(&path, &serde_json::json!({})).await?;
    if !out.quiet {
        say!("{}", answer["message"].as_str().unwrap_or_default());
    }
    Ok(())
}

async fn toggle(store: &sandflow::store::PgStore, args: NameArgs, paused: bool, now: jiff::Timestamp, out: &Output) -> Result<(), CliError> {
    let ns = namespace_arg(args.namespace.as_deref())?;
    let found = match is_webhook(&args.name) {
        true => store.pause_hook(&ns, &args.name, paused).await,
        false => store.pause_schedule(&ns, &args.name, paused, now).await,
    };
    if !found.map_err(store_error)? {
        return Err(unknown(&ns, &args.name));
    }
    if !out.quiet {
        say!("schedule {} {}", args.name, if paused { "paused" } else { "resumed" });
    }
    Ok(())
}

fn unknown(ns: &str, name: &str) -> CliError {
    let what = if is_webhook(name) { "webhook" } else { "schedule" };
    CliError::invalid(format!("no {what} `{name}` in namespace `{ns}` (see `sandflow schedule list`)"))
}
