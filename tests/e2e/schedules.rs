//! Schedules (`schedules:`, `sandflow schedule`) on a real PostgreSQL
//! server, fired by real `worker --scheduler` processes: each tick once
//! however many schedulers run, `catchup` after a scheduler was down, and
//! the mistakes `validate` names.

use crate::distributed::{Workers, pg};
use crate::support::{PgSchema, example, root, run, sandflow};
use serde_json::Value;
use std::time::{Duration, Instant};

/// A workflow file of `echo` steps with `schedules`.
fn scheduled(dir: &std::path::Path, name: &str, schedules: &str) -> std::path::PathBuf {
    let file = dir.join(format!("{name}.yaml"));
    let text = format!(
        "name: {name}\ncomponents:\n  echo: {{ path: '{}' }}\nschedules:\n{schedules}steps:\n  - {{ id: say, component: echo, input: {{ n: 1, trigger: '{{{{ run.trigger }}}}', at: '{{{{ run.scheduled_time }}}}' }} }}\n",
        example("echo").display()
    );
    std::fs::write(&file, text).unwrap();
    file
}

/// The scheduled times of the runs schedule `name` started, oldest first,
/// as epoch seconds.
fn ticks(schema: &PgSchema, name: &str) -> Vec<i64> {
    schema
        .strings(
            "SELECT CAST(CAST(EXTRACT(EPOCH FROM scheduled_time) AS BIGINT) AS TEXT) FROM runs WHERE trigger_source = $1 AND triggered_by = 'schedule' ORDER BY scheduled_time",
            name,
        )
        .iter()
        .map(|t| t.parse().unwrap())
        .collect()
}

/// Two schedulers (`worker --scheduler`) on one per-second schedule for
/// 30 s: each tick starts exactly one run (counted from the runs), none
/// is lost between the first and the last, and the runs complete.
#[test]
fn a_per_second_schedule_fires_each_tick_once_with_two_schedulers() {
    let Some(schema) = PgSchema::create() else { return };
    let state = tempfile::tempdir().unwrap();
    let file = scheduled(state.path(), "every-second", "  - { name: tick, cron: '* * * * * *', input: { n: 7 } }\n");
    let (code, _, err) = run(pg(&schema, &state).args(["schedule", "add"]).arg(&file));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("schedule every-second/tick: `* * * * * *` (UTC), next at "), "{err}");
    let mut schedulers = Workers::with_args(&schema, &state, 2, "5s", &[], &["--scheduler"]);
    std::thread::sleep(Duration::from_secs(30));
    schedulers.kill_all();
    let fired = ticks(&schema, "every-second/tick");
    assert!(fired.len() >= 28, "30 s of a per-second schedule started {} runs", fired.len());
    let mut distinct = fired.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), fired.len(), "a tick started two runs: {fired:?}");
    assert_eq!(fired.last().unwrap() - fired[0] + 1, fired.len() as i64, "a tick between the first and the last was lost: {fired:?}");
    // Each run got the schedule's input, and the workers ran them.
    let inputs = schema.strings("SELECT DISTINCT input FROM runs WHERE trigger_source = $1", "every-second/tick");
    assert_eq!(inputs.iter().map(|i| serde_json::from_str::<Value>(i).unwrap()).collect::<Vec<_>>(), [serde_json::json!({ "n": 7 })]);
    let done = schema.strings("SELECT CAST(count(*) AS TEXT) FROM runs WHERE trigger_source = $1 AND status = 'completed'", "every-second/tick");
    assert!(done[0].parse::<usize>().unwrap() + 4 >= fired.len(), "{} of {} runs completed", done[0], fired.len());
    // Its steps read what started it: `run.trigger`, `run.scheduled_time`.
    let (id, at) = {
        let done = schema.strings(
            "SELECT id || ' ' || to_char(scheduled_time AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') FROM runs WHERE trigger_source = $1 AND status = 'completed' ORDER BY scheduled_time LIMIT 1",
            "every-second/tick",
        );
        let (id, at) = done[0].split_once(' ').unwrap();
        (id.to_string(), at.to_string())
    };
    let (code, out, err) = run(pg(&schema, &state).args(["--json", "runs", "show", &id]));
    assert_eq!(code, 0, "{err}");
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["steps"][0]["output"], serde_json::json!({ "n": 1, "trigger": "schedule", "at": at }), "{out}");
    assert_eq!(shown["trigger"], serde_json::json!({ "kind": "schedule", "source": "every-second/tick", "scheduled_time": at }), "{out}");
    let (code, out, err) = run(pg(&schema, &state).args(["runs", "show", &id]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("  trigger:  schedule every-second/tick, tick {at}")), "{out}");
    // `schedule list` tells the last tick and its run.
    let (code, out, err) = run(pg(&schema, &state).args(["--json", "schedule", "list"]));
    assert_eq!(code, 0, "{err}");
    let listed: Vec<Value> = serde_json::from_value(serde_json::from_str::<Value>(&out).unwrap()["schedules"].clone()).unwrap();
    assert_eq!(listed.len(), 1, "{out}");
    assert_eq!(listed[0]["name"], "every-second/tick");
    assert_eq!(listed[0]["last_outcome"], "started", "{out}");
}

/// A scheduler killed, then down for an hour (its schedules' next ticks
/// put an hour back, as a scheduler that died an hour ago left them), then
/// started again: each schedule's `catchup` decides what the six missed
/// 10-minute ticks start: none, one (the latest), all six.
#[test]
fn a_scheduler_back_after_an_hour_applies_catchup() {
    let Some(schema) = PgSchema::create() else { return };
    let state = tempfile::tempdir().unwrap();
    let file = scheduled(
        state.path(),
        "tenmin",
        "  - { name: none, cron: '*/10 * * * *', catchup: none }\n  - { name: one, cron: '*/10 * * * *', catchup: one }\n  - { name: all, cron: '*/10 * * * *', catchup: all }\n",
    );
    let (code, _, err) = run(pg(&schema, &state).args(["schedule", "add"]).arg(&file));
    assert_eq!(code, 0, "{err}");
    let mut scheduler = Workers::with_args(&schema, &state, 1, "5s", &[], &["--scheduler"]);
    std::thread::sleep(Duration::from_millis(500));
    scheduler.kill_all();
    // Six missed 10-minute ticks, the latest more than LATE (10 s) ago
    // and the next one not due while the test runs.
    let r = jiff::Timestamp::now().as_second() % 600;
    if !(12..=585).contains(&r) {
        std::thread::sleep(Duration::from_secs(((612 - r) % 600) as u64));
    }
    let now = jiff::Timestamp::now().as_second();
    let latest = now / 600 * 600;
    let first = latest - 5 * 600;
    schema.strings(&format!("UPDATE schedules SET next_at = to_timestamp({first}) WHERE $1 <> ''"), "x");
    let _scheduler = Workers::with_args(&schema, &state, 1, "5s", &[], &["--scheduler"]);
    let began = Instant::now();
    while ticks(&schema, "tenmin/all").len() < 6 && began.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(ticks(&schema, "tenmin/none"), Vec::<i64>::new(), "catchup: none");
    assert_eq!(ticks(&schema, "tenmin/one"), [latest], "catchup: one starts the latest missed tick");
    assert_eq!(ticks(&schema, "tenmin/all"), (0..6).map(|k| first + 600 * k).collect::<Vec<_>>(), "catchup: all");
    // And each goes on from the next tick, in the future.
    let next = schema.strings("SELECT CAST(CAST(EXTRACT(EPOCH FROM next_at) AS BIGINT) AS TEXT) FROM schedules WHERE $1 <> '' ORDER BY name", "x");
    assert_eq!(next, vec![(latest + 600).to_string(); 3]);
}

/// Pause stops a schedule's ticks, resume starts it again from its next
/// tick (the paused ones are not caught up), remove ends it; and adding
/// the file again without a schedule removes that one.
#[test]
fn pause_resume_and_remove_a_schedule() {
    let Some(schema) = PgSchema::create() else { return };
    let state = tempfile::tempdir().unwrap();
    let file = scheduled(state.path(), "pausing", "  - { name: fast, cron: '* * * * * *' }\n  - { name: slow, cron: '@daily' }\n");
    let (code, _, err) = run(pg(&schema, &state).args(["schedule", "add"]).arg(&file));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(pg(&schema, &state).args(["schedule", "pause", "pausing/fast"]));
    assert_eq!(code, 0, "{err}");
    let _scheduler = Workers::with_args(&schema, &state, 1, "5s", &[], &["--scheduler"]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(ticks(&schema, "pausing/fast"), Vec::<i64>::new(), "paused");
    let (code, out, _) = run(pg(&schema, &state).args(["schedule", "list"]));
    assert_eq!(code, 0);
    assert!(out.lines().any(|l| l.contains("pausing/fast") && l.contains("paused")), "{out}");
    let resumed = jiff::Timestamp::now().as_second();
    let (code, _, err) = run(pg(&schema, &state).args(["schedule", "resume", "pausing/fast"]));
    assert_eq!(code, 0, "{err}");
    std::thread::sleep(Duration::from_secs(3));
    let fired = ticks(&schema, "pausing/fast");
    assert!(!fired.is_empty() && fired[0] >= resumed, "resumed from its next tick: {fired:?} (resumed at {resumed})");
    let (code, _, err) = run(pg(&schema, &state).args(["schedule", "remove", "pausing/fast"]));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(pg(&schema, &state).args(["schedule", "remove", "pausing/fast"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no schedule `pausing/fast` in namespace `default`"), "{err}");
    // The file without `slow`: adding it again removes it.
    scheduled(state.path(), "pausing", "  - { name: other, cron: '@hourly' }\n");
    let (code, _, err) = run(pg(&schema, &state).args(["schedule", "add"]).arg(&file));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("schedule pausing/slow: removed (no longer in the file)"), "{err}");
    let (_, out, _) = run(pg(&schema, &state).args(["--json", "schedule", "list"]));
    let names: Vec<String> = serde_json::from_str::<Value>(&out).unwrap()["schedules"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(names, ["pausing/other"]);
}

/// `validate` names each schedule mistake at its place.
#[test]
fn validate_names_schedule_mistakes_at_their_place() {
    let state = tempfile::tempdir().unwrap();
    let file = scheduled(
        state.path(),
        "wrong",
        "  - { cron: '61 * * * *' }\n  - { cron: '0 3 * * *', timezone: Mars/Olympus }\n  - { cron: '0 0 30 2 *' }\n  - { cron: '@daily', catchup: sometimes }\n  - { timezone: UTC }\n",
    );
    let (code, _, err) = run(sandflow(&state).arg("validate").arg(&file));
    assert_eq!(code, 2, "{err}");
    let at = |line: usize| format!("wrong.yaml:{line}:");
    for (line, says) in [
        (5, "`cron`: the minute field: 61 is out of range (0-59)"),
        (6, "unknown time zone `Mars/Olympus`"),
        (7, "never fires"),
        (8, "`catchup: sometimes`: one of none, one, all"),
        (9, "a schedule needs `cron`"),
    ] {
        assert!(err.lines().any(|l| l.contains(&at(line)) && l.contains(says)), "line {line}: {says}\n{err}");
    }
    // A webhook without a secret, or reading a step.
    let hooks = state.path().join("hooks.yaml");
    std::fs::write(
        &hooks,
        format!(
            "name: hooks\ncomponents:\n  echo: {{ path: '{}' }}\ntriggers:\n  - {{ webhook: open }}\n  - {{ webhook: late, secret: S, input: '{{{{ steps.say.output }}}}' }}\n  - {{ webhook: 'bad/name', secret: S }}\nsteps:\n  - {{ id: say, component: echo, input: {{}} }}\n",
            example("echo").display()
        ),
    )
    .unwrap();
    let (code, _, err) = run(sandflow(&state).arg("validate").arg(&hooks));
    assert_eq!(code, 2, "{err}");
    for (line, says) in [(5, "webhook `open` has no `secret`"), (6, "a webhook's `input` reads step `say`"), (7, "webhook name `bad/name`")] {
        assert!(err.lines().any(|l| l.contains(&format!("hooks.yaml:{line}:")) && l.contains(says)), "line {line}: {says}\n{err}");
    }
    // On the SQLite store, `schedule add` keeps it for `sandflow scheduler`,
    // and says what it does not keep there.
    let ok = scheduled(state.path(), "fine", "  - { cron: '@daily', timezone: Europe/Berlin }\n");
    let (code, _, err) = run(sandflow(&state).arg("validate").arg(&ok));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(sandflow(&state).args(["schedule", "add"]).arg(&ok));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("schedule fine/1: `@daily` (Europe/Berlin), next at ") && err.contains("`sandflow scheduler` fires them"), "{err}");
    let (code, _, err) = run(sandflow(&state).args(["schedule", "add", "--namespace", "team-a"]).arg(&ok));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("namespaces are PostgreSQL's"), "{err}");
    let (code, _, err) = run(sandflow(&state).args(["--store", "postgres://nobody@127.0.0.1:1/x", "scheduler"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("`sandflow worker --scheduler` fire them"), "{err}");
}

/// The example, `workflows/nightly.yaml`: registered from the repository
/// as the README says, it is listed with its next tick at 02:30 Berlin
/// time, and `overlap: skip` holds a tick while its previous run runs.
#[test]
fn the_nightly_example_registers_and_skips_a_tick_while_its_run_runs() {
    let Some(schema) = PgSchema::create() else { return };
    let state = tempfile::tempdir().unwrap();
    let (code, _, err) = run(pg(&schema, &state).current_dir(root()).args(["schedule", "add", "workflows/nightly.yaml", "--namespace", "team-a"]));
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(pg(&schema, &state).args(["--json", "schedule", "list", "--namespace", "team-a"]));
    assert_eq!(code, 0, "{err}");
    let listed: Vec<Value> = serde_json::from_value(serde_json::from_str::<Value>(&out).unwrap()["schedules"].clone()).unwrap();
    assert_eq!((listed[0]["name"].as_str(), listed[0]["timezone"].as_str(), listed[0]["overlap"].as_str()), (Some("nightly/report"), Some("Europe/Berlin"), Some("skip")));
    let next = listed[0]["next_at"].as_str().unwrap();
    assert!(next.contains("T02:30:00+01:00") || next.contains("T02:30:00+02:00") || next.contains("T03:30:00+02:00"), "{next}");
    // Ticks every second from now on, fired by `serve` (which runs no
    // steps): the first one's run stays running, so the next are skipped.
    let now = jiff::Timestamp::now().as_second();
    schema.strings(&format!("UPDATE schedules SET next_at = to_timestamp({}), cron = '* * * * * *', timezone = 'UTC' WHERE $1 <> ''", now - 1), "x");
    let _server = crate::web::serve(&state, &["--store", &schema.url]);
    let began = Instant::now();
    while schema.strings("SELECT outcome FROM schedule_ticks WHERE name = $1", "nightly/report").len() < 3 && began.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let outcomes = schema.strings("SELECT outcome FROM schedule_ticks WHERE name = $1 ORDER BY tick", "nightly/report");
    assert_eq!(outcomes[0], "started", "{outcomes:?}");
    assert!(outcomes[1..].iter().all(|o| o.starts_with("skipped: its run ") && o.ends_with("is still running (overlap: skip)")), "{outcomes:?}");
    assert_eq!(ticks(&schema, "nightly/report").len(), 1);
    let ns = schema.strings("SELECT namespace FROM runs WHERE trigger_source = $1", "nightly/report");
    assert_eq!(ns, ["team-a"]);
    // The web view's schedules page shows it, its last tick skipped.
    if let Some(chromium) = crate::web::chromium() {
        let page = crate::web::dom(&chromium, &format!("http://{}/schedules", _server.1));
        assert!(page.contains(r#"data-schedule="nightly/report""#), "{page}");
        assert!(page.contains("(skipped: its run "), "{page}");
    }
}

/// Run by hand, the same workflow reads `run.trigger` `manual` and no
/// scheduled time; a retry's attempt reads `retry`.
#[test]
fn run_trigger_is_manual_by_hand_and_retry_on_a_retry() {
    let state = tempfile::tempdir().unwrap();
    let file = scheduled(state.path(), "by-hand", "  - { cron: '@daily' }\n");
    let (code, out, err) = run(sandflow(&state).arg("run").arg(&file));
    assert_eq!(code, 0, "{err}");
    let output: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(output, serde_json::json!({ "n": 1, "trigger": "manual", "at": null }));
    let id = crate::support::newest_run(sandflow(&state));
    let (code, out, err) = run(sandflow(&state).args(["retry", &id, "--from", "say"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["trigger"], "retry", "{out}");
}

/// One delivery to `POST /hooks/NAME` with curl; returns the status and
/// the body.
fn curl(addr: &str, hook: &str, headers: &[String], body: &[u8]) -> (u16, Value) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body");
    std::fs::write(&file, body).unwrap();
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-s", "-o", "-", "-w", "\n%{http_code}", "-X", "POST", "--data-binary"]).arg(format!("@{}", file.display()));
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd.arg(format!("http://{addr}/hooks/{hook}")).output().expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.trim().parse().unwrap(), serde_json::from_str(body).unwrap_or(Value::String(body.to_string())))
}

fn hmac_hex(secret: &str, message: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    ring::hmac::sign(&key, message).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Webhooks: deliveries sent with curl, good (GitHub's signature and the
/// plain timestamped one), badly signed, unsigned, stale, replayed,
/// oversize, not JSON, and with an input the workflow refuses: exactly the
/// good ones start runs, each with its input made from the request, and a
/// replay answers with the run it started before.
#[test]
fn webhook_deliveries_start_runs_only_when_signed_once_and_well_formed() {
    let Some(schema) = PgSchema::create() else { return };
    let state = tempfile::tempdir().unwrap();
    let file = state.path().join("deploy.yaml");
    std::fs::write(
        &file,
        format!(
            "name: deploy\ninput:\n  type: object\n  properties: {{ ref: {{ type: string }} }}\n  required: [ref]\ncomponents:\n  echo: {{ path: '{}' }}\n\
             triggers:\n  - webhook: deploy\n    secret: DEPLOY_HOOK\n    input: {{ ref: '{{{{ inputs.body.ref }}}}', event: \"{{{{ inputs.headers['x-github-event'] }}}}\" }}\n\
             steps:\n  - {{ id: say, component: echo, input: {{ ref: '{{{{ inputs.ref }}}}', trigger: '{{{{ run.trigger }}}}' }} }}\n",
            example("echo").display()
        ),
    )
    .unwrap();
    let (code, _, err) = run(pg(&schema, &state).args(["schedule", "add"]).arg(&file));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("webhook deploy: POST /hooks/deploy"), "{err}");
    let secrets = state.path().join("serve.env");
    std::fs::write(&secrets, "DEPLOY_HOOK=s3cret\n").unwrap();
    // A server with a token: deliveries need none (their signature is it).
    let (_server, addr) =
        crate::web::serve(&state, &["--store", &schema.url, "--token", "admin-token", "--max-hook-body", "64KiB", "--secrets-file", secrets.to_str().unwrap()]);
    let json = "Content-Type: application/json".to_string();
    let github = |body: &[u8], secret: &str, id: &str| {
        vec![json.clone(), format!("X-Hub-Signature-256: sha256={}", hmac_hex(secret, body)), format!("X-GitHub-Delivery: {id}"), "X-GitHub-Event: push".into()]
    };
    let push = br#"{"ref": "main", "pusher": "ada"}"#;
    let (status, first) = curl(&addr, "deploy", &github(push, "s3cret", "d-1"), push);
    assert_eq!(status, 201, "{first}");
    // The same delivery again: nothing new, the run it started.
    let (status, again) = curl(&addr, "deploy", &github(push, "s3cret", "d-1"), push);
    assert_eq!((status, &again["id"], &again["duplicate"]), (200, &first["id"], &Value::Bool(true)), "{again}");
    for (headers, body, want, says) in [
        (github(push, "wrong", "d-2"), &push[..], 401, "does not match"),
        (vec![json.clone()], &push[..], 401, "must be signed"),
        (github(b"tampered", "s3cret", "d-3"), &push[..], 401, "does not match"),
        (github(push, "s3cret", "d-4").into_iter().skip(1).chain(["Content-Type: text/plain".to_string()]).collect(), &push[..], 415, "must be JSON"),
        (github(b"{not json", "s3cret", "d-5"), &b"{not json"[..], 400, "not JSON"),
        (github(br#"{"pusher": "no ref"}"#, "s3cret", "d-6"), &br#"{"pusher": "no ref"}"#[..], 422, "cannot be made from this delivery"),
    ] {
        let (status, answer) = curl(&addr, "deploy", &headers, body);
        assert_eq!(status, want, "{says}: {answer}");
        assert!(answer["error"].as_str().unwrap_or("").contains(says), "{says}: {answer}");
    }
    let big = format!(r#"{{"ref": "main", "pad": "{}"}}"#, "x".repeat(100 * 1024));
    let (status, answer) = curl(&addr, "deploy", &github(big.as_bytes(), "s3cret", "d-7"), big.as_bytes());
    assert_eq!(status, 413, "{answer}");
    let (status, _) = curl(&addr, "nope", &github(push, "s3cret", "d-8"), push);
    assert_eq!(status, 404);
    // The plain form: timestamped; a stale one and a replay start nothing.
    let now = jiff::Timestamp::now().as_second();
    let tag = br#"{"ref": "v2"}"#;
    let plain = |t: i64| {
        let mac = hmac_hex("s3cret", &[format!("{t}.").as_bytes(), &tag[..]].concat());
        vec![json.clone(), format!("X-Sandflow-Signature: t={t},v1={mac}"), "X-GitHub-Event: tag".to_string()]
    };
    let (status, second) = curl(&addr, "deploy", &plain(now), tag);
    assert_eq!(status, 201, "{second}");
    let (status, replay) = curl(&addr, "deploy", &plain(now), tag);
    assert_eq!((status, &replay["id"]), (200, &second["id"]), "{replay}");
    let (status, stale) = curl(&addr, "deploy", &plain(now - 1000), tag);
    assert_eq!(status, 401, "{stale}");
    // Exactly the two good deliveries started runs, with their inputs.
    let inputs = schema.strings("SELECT input FROM runs WHERE triggered_by = 'webhook' AND trigger_source = $1 ORDER BY seq", "deploy");
    let inputs: Vec<Value> = inputs.iter().map(|i| serde_json::from_str(i).unwrap()).collect();
    assert_eq!(inputs, [serde_json::json!({ "ref": "main", "event": "push" }), serde_json::json!({ "ref": "v2", "event": "tag" })]);
    // A worker runs them; their steps read `run.trigger`.
    let _workers = Workers::start(&schema, &state, 1, "5s");
    let (code, _, err) = run(pg(&schema, &state).args(["runs", "follow", first["id"].as_str().unwrap()]));
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(pg(&schema, &state).args(["--json", "runs", "show", first["id"].as_str().unwrap()]));
    assert_eq!(code, 0, "{err}");
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["steps"][0]["output"], serde_json::json!({ "ref": "main", "trigger": "webhook" }), "{out}");
    assert_eq!(shown["trigger"], serde_json::json!({ "kind": "webhook", "source": "deploy" }), "{out}");
    if let Some(chromium) = crate::web::chromium() {
        let page = crate::web::dom(&chromium, &format!("http://{addr}/runs/{}?token=admin-token", first["id"].as_str().unwrap()));
        assert!(page.contains(r#"data-trigger="webhook""#) && page.contains("webhook deploy"), "{page}");
    }
    // Listed, with its last delivery; a paused hook refuses deliveries.
    let (_, out, _) = run(pg(&schema, &state).args(["--json", "schedule", "list"]));
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed["webhooks"][0]["name"], "deploy", "{out}");
    assert_eq!(listed["webhooks"][0]["secret"], "DEPLOY_HOOK", "{out}");
    // The API and the web view list it (with the token; the secret by name).
    let (status, body) = crate::web::http(&addr, "GET", "/api/schedules", &["Authorization: Bearer admin-token"]);
    assert_eq!(status, 200, "{body}");
    let listed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((listed["webhooks"][0]["name"].as_str(), listed["webhooks"][0]["last_run"].as_str()), (Some("deploy"), second["id"].as_str()), "{body}");
    assert!(!body.contains("s3cret"), "{body}");
    if let Some(chromium) = crate::web::chromium() {
        let page = crate::web::dom(&chromium, &format!("http://{addr}/schedules?token=admin-token"));
        assert!(page.contains(r#"data-webhook="deploy""#) && page.contains("POST /hooks/deploy"), "{page}");
    }
    let (code, _, err) = run(pg(&schema, &state).args(["schedule", "pause", "deploy"]));
    assert_eq!(code, 0, "{err}");
    let (status, _) = curl(&addr, "deploy", &github(push, "s3cret", "d-9"), push);
    assert_eq!(status, 503);
}

/// A webhook of another namespace is checked with that namespace's
/// secret (`serve --secrets-dir DIR/NS.env`), not the default one's; past
/// the namespace's runs in flight a delivery is refused with 429 and
/// starts nothing.
#[test]
fn a_namespace_s_webhook_uses_its_own_secret_and_its_run_limit() {
    let Some(schema) = PgSchema::create() else { return };
    let state = tempfile::tempdir().unwrap();
    let (code, _, err) = run(pg(&schema, &state).current_dir(root()).args(["schedule", "add", "workflows/on-push.yaml", "--namespace", "team-a"]));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(pg(&schema, &state).args(["namespace", "set", "team-a", "--max-runs", "1"]));
    assert_eq!(code, 0, "{err}");
    let dir = state.path().join("secrets");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("default.env"), "PUSH_HOOK=the-default-one\n").unwrap();
    std::fs::write(dir.join("team-a.env"), "PUSH_HOOK=team-a-s\n").unwrap();
    let (_server, addr) = crate::web::serve(&state, &["--store", &schema.url, "--secrets-dir", dir.to_str().unwrap()]);
    let send = |secret: &str, id: &str, body: &[u8]| {
        let headers = vec!["Content-Type: application/json".to_string(), format!("X-Hub-Signature-256: sha256={}", hmac_hex(secret, body)), format!("X-GitHub-Delivery: {id}")];
        curl(&addr, "on-push", &headers, body)
    };
    let body = br#"{"ref": "refs/heads/main"}"#;
    assert_eq!(send("the-default-one", "1", body).0, 401, "the default namespace's secret is not team-a's");
    let (status, first) = send("team-a-s", "2", body);
    assert_eq!(status, 201, "{first}");
    // No worker runs it: team-a has its one run in flight.
    let (status, refused) = send("team-a-s", "3", br#"{"ref": "refs/heads/dev"}"#);
    assert_eq!(status, 429, "{refused}");
    assert!(refused["error"].as_str().unwrap().contains("namespace `team-a` has 1 run(s) in flight"), "{refused}");
    let runs = schema.strings("SELECT namespace FROM runs WHERE trigger_source = $1", "on-push");
    assert_eq!(runs, ["team-a"]);
}

/// `overlap: cancel_previous`: each tick cancels the schedule's run still
/// running and starts its own, so runs of a slow workflow end cancelled
/// one after another and only the newest is left running.
#[test]
fn overlap_cancel_previous_cancels_the_running_run_at_each_tick() {
    let Some(schema) = PgSchema::create() else { return };
    let state = tempfile::tempdir().unwrap();
    let file = state.path().join("slow.yaml");
    std::fs::write(
        &file,
        format!(
            "name: slow\ncomponents:\n  sleep: {{ path: '{}' }}\nschedules:\n  - {{ name: s, cron: '*/2 * * * * *', overlap: cancel_previous }}\nsteps:\n  - {{ id: nap, component: sleep, input: {{ ms: 30000 }}, timeout: 60s }}\n",
            crate::support::hostile("sleep").display()
        ),
    )
    .unwrap();
    let (code, _, err) = run(pg(&schema, &state).args(["schedule", "add"]).arg(&file));
    assert_eq!(code, 0, "{err}");
    let _workers = Workers::with_args(&schema, &state, 1, "5s", &[], &["--scheduler"]);
    let began = Instant::now();
    let states = || schema.strings("SELECT status FROM runs WHERE trigger_source = $1 ORDER BY scheduled_time", "slow/s");
    while states().iter().filter(|s| *s == "cancelled").count() < 2 && began.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let seen = states();
    assert!(seen.iter().filter(|s| *s == "cancelled").count() >= 2, "{seen:?}");
    assert!(seen.iter().filter(|s| *s == "running").count() <= 2, "at most the newest (and one being cancelled) run: {seen:?}");
    assert_eq!(seen.last().map(String::as_str), Some("running"), "{seen:?}");
    assert!(!seen.iter().any(|s| s == "completed" || s == "failed"), "{seen:?}");
}

/// A SQLite store's schedules, fired by `sandflow scheduler`: a
/// per-second schedule starts one run per tick, each with its tick; the
/// scheduler is killed with runs in flight, its schedule put an hour back
/// (as a scheduler dead for an hour leaves it), and started again: the
/// runs it left are resumed and complete, and `catchup: one` starts none
/// of the hour's missed ticks, since ticks on time follow them.
#[test]
fn a_sqlite_scheduler_fires_each_tick_once_resumes_what_it_left_and_catches_up() {
    let state = tempfile::tempdir().unwrap();
    let file = state.path().join("ticker.yaml");
    std::fs::write(
        &file,
        "name: ticker\nschedules:\n  - { name: every-second, cron: '* * * * * *', catchup: one, input: { text: tick } }\nsteps:\n  - { id: nap, component: /builtin/sleep, input: { duration: 2s } }\noutput: { text: '{{ inputs.text }}', trigger: '{{ run.trigger }}', at: '{{ run.scheduled_time }}' }\n",
    )
    .unwrap();
    let (code, _, err) = run(sandflow(&state).args(["schedule", "add"]).arg(&file));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("schedule ticker/every-second: `* * * * * *` (UTC), next at "), "{err}");
    let (code, out, err) = run(sandflow(&state).args(["schedule", "list"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ticker/every-second"), "{out}");
    let db = || rusqlite::Connection::open(state.path().join("sandflow.db")).unwrap();
    let scheduler = || {
        sandflow(&state).args(["scheduler"]).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap()
    };
    let mut first = scheduler();
    std::thread::sleep(Duration::from_millis(3500));
    let _ = first.kill();
    let _ = first.wait();
    let count = |sql: &str| -> i64 { db().query_row(sql, [], |r| r.get(0)).unwrap() };
    let (runs, ticks) = (count("SELECT count(*) FROM runs WHERE triggered_by = 'schedule'"), count("SELECT count(DISTINCT scheduled_time) FROM runs WHERE triggered_by = 'schedule'"));
    assert!(runs >= 2, "{runs} runs in 3.5 s of a per-second schedule");
    assert_eq!(runs, ticks, "each tick started one run");
    let left = count("SELECT count(*) FROM runs WHERE triggered_by = 'schedule' AND status = 'running'");
    assert!(left >= 1, "the kill left runs running (each takes 2 s)");
    // An hour down: the schedule's next tick an hour back.
    let hour_ago = jiff::Timestamp::now().as_second() - 3600;
    db().execute("UPDATE schedules SET next_at = ?1", [hour_ago as f64]).unwrap();
    let restarted = jiff::Timestamp::now();
    let mut second = scheduler();
    std::thread::sleep(Duration::from_millis(1500));
    let (code, _, err) = run(sandflow(&state).args(["schedule", "pause", "ticker/every-second"]));
    assert_eq!(code, 0, "{err}");
    let since = Instant::now();
    while count("SELECT count(*) FROM runs WHERE status = 'running'") > 0 {
        assert!(since.elapsed() < Duration::from_secs(30), "runs still running");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = second.kill();
    let _ = second.wait();
    let statuses: Vec<(String, u32, String)> = {
        let conn = db();
        let mut q = conn.prepare("SELECT status, attempt, scheduled_time FROM runs WHERE triggered_by = 'schedule' ORDER BY scheduled_time").unwrap();
        q.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().map(Result::unwrap).collect()
    };
    assert!(statuses.iter().all(|(s, ..)| s == "completed"), "{statuses:?}");
    assert_eq!(statuses.iter().filter(|(_, attempt, _)| *attempt == 2).count() as i64, left, "the runs it left were resumed: {statuses:?}");
    // Missed: more than LATE (10 s) before the restart. With `catchup:
    // one` the latest missed tick runs only when no tick on time follows
    // it; a per-second schedule always has one: none of the hour's 3,600
    // missed ticks started a run, the ticks on time did.
    let late = restarted.as_second() - 10;
    let at = |t: &str| t.parse::<jiff::Timestamp>().unwrap().as_second();
    let hour = statuses.iter().filter(|(_, _, t)| at(t) < late && at(t) >= hour_ago).count();
    assert_eq!(hour, 0, "catchup: one with ticks on time: {statuses:?}");
    assert!(statuses.iter().any(|(_, attempt, t)| *attempt == 1 && at(t) >= late && at(t) >= restarted.as_second() - 1), "ticks on time after the restart: {statuses:?}");
    // Its run read the schedule's input and what started it.
    let (code, out, err) = run(sandflow(&state).args(["--json", "runs", "list", "--limit", "1"]));
    assert_eq!(code, 0, "{err}");
    let id = serde_json::from_str::<Value>(&out).unwrap()[0]["id"].as_str().unwrap().to_string();
    let (code, out, err) = run(sandflow(&state).args(["--json", "runs", "show", &id]));
    assert_eq!(code, 0, "{err}");
    let record: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(record["output"]["text"], "tick", "{record:#}");
    assert_eq!(record["output"]["trigger"], "schedule");
    assert_eq!(record["trigger"]["source"], "ticker/every-second");
    assert_eq!(record["output"]["at"], record["trigger"]["scheduled_time"]);
    // The web view lists it (paused), with its last tick and run.
    let (_server, addr) = crate::web::serve(&state, &[]);
    let (status, body) = crate::web::http(&addr, "GET", "/api/schedules", &[]);
    assert_eq!(status, 200, "{body}");
    let listed: Value = serde_json::from_str(&body).unwrap();
    let s = &listed["schedules"][0];
    assert_eq!((s["name"].as_str(), s["paused"].as_bool(), s["last_outcome"].as_str()), (Some("ticker/every-second"), Some(true), Some("started")), "{listed:#}");
}
