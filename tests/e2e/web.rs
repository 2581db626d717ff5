//! `sandflow serve`: its JSON API and live feed over real HTTP, and its
//! pages in a real browser (Debian's headless Chromium, which `.ci/run`
//! installs; without it the browser tests fail, unless
//! `SANDFLOW_SKIP=browser` says to skip them).

use crate::support::{example, hostile, newest_run, root, run, sandflow};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A child process killed when dropped.
pub(crate) struct Reaped(pub(crate) Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `sandflow serve` on a free loopback port; returns it and its address.
pub(crate) fn serve(state: &tempfile::TempDir, extra: &[&str]) -> (Reaped, String) {
    let mut child = Reaped(
        sandflow(state).args(["serve", "--listen", "127.0.0.1:0"]).args(extra).stderr(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap(),
    );
    let mut line = String::new();
    let mut stderr = BufReader::new(child.0.stderr.take().unwrap());
    stderr.read_line(&mut line).unwrap();
    // What it says later (warnings while its store is away) is read, not
    // left to a closed pipe.
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    let addr = line.trim().rsplit("http://").next().unwrap().trim_end_matches('/').to_string();
    assert!(addr.starts_with("127.0.0.1:"), "{line}");
    (child, addr)
}

/// One HTTP/1.1 request; returns the status and the body.
pub(crate) fn http(addr: &str, method: &str, path: &str, headers: &[&str]) -> (u16, String) {
    let (status, _, body) = http_full(addr, method, path, headers);
    (status, body)
}

/// One HTTP/1.1 request (`Host: ADDR` unless `headers` has a `Host`);
/// returns the status, the headers (lowercase names) and the body.
pub(crate) fn http_full(addr: &str, method: &str, path: &str, headers: &[&str]) -> (u16, String, String) {
    http_with_body(addr, method, path, headers, b"")
}

/// [`http_full`], sending `body`.
pub(crate) fn http_with_body(addr: &str, method: &str, path: &str, headers: &[&str], body: &[u8]) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    let mut extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    if !headers.iter().any(|h| h.to_ascii_lowercase().starts_with("host:")) {
        extra.push_str(&format!("Host: {addr}\r\n"));
    }
    write!(stream, "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n{extra}\r\n", body.len()).unwrap();
    // A server that refuses early may close before it has read it all
    // (then the read may end in a reset after its answer).
    let _ = stream.write_all(body);
    let mut bytes = Vec::new();
    if let Err(e) = stream.read_to_end(&mut bytes) {
        assert!(!bytes.is_empty(), "{method} {path}: no answer: {e}");
    }
    let response = String::from_utf8(bytes).expect("a UTF-8 answer");
    let status = response.split(' ').nth(1).unwrap().parse().unwrap();
    let (head, body) = response.split_once("\r\n\r\n").map(|(h, b)| (h.to_string(), b.to_string())).unwrap_or_default();
    let head = head.lines().skip(1).map(|l| match l.split_once(':') {
        Some((name, value)) => format!("{}:{value}\n", name.to_ascii_lowercase()),
        None => format!("{l}\n"),
    });
    (status, head.collect(), body)
}

/// The value of header `name` (lowercase) in `headers` from [`http_full`].
fn header<'a>(headers: &'a str, name: &str) -> Option<&'a str> {
    headers.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')).map(str::trim)
}

/// What the pages send with an action: a JSON body, from their own origin.
fn own_action(addr: &str) -> [String; 3] {
    ["Content-Type: application/json".into(), format!("Origin: http://{addr}"), "Sec-Fetch-Site: same-origin".into()]
}

/// The id of the first run the server lists, once there is one (a run
/// another process just started).
fn first_run(addr: &str) -> String {
    let since = Instant::now();
    loop {
        let runs = get_json(addr, "/api/runs");
        if let Some(id) = runs["runs"][0]["id"].as_str() {
            return id.to_string();
        }
        assert!(since.elapsed() < Duration::from_secs(30), "no run: {runs}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn get_json(addr: &str, path: &str) -> Value {
    let (status, body) = http(addr, "GET", path, &[]);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

/// A store with a completed, a failed and a running run; returns the
/// running run's process and the three ids.
fn three_runs(state: &tempfile::TempDir, wait_ms: u64) -> (Reaped, [String; 3]) {
    let (code, _, err) = run(sandflow(state).args(["-q", "run", "workflows/diamond.yaml", "--input", r#"{"text": " Hello World "}"#]));
    assert_eq!(code, 0, "{err}");
    let completed = newest_run(sandflow(state));
    let (code, _, _) = run(sandflow(state).args(["-q", "run", "workflows/argo-exit-handler.yaml"]));
    assert_eq!(code, 1);
    let failed = newest_run(sandflow(state));
    let flow = state.path().join("slow.yaml");
    std::fs::write(
        &flow,
        format!(
            "name: slow\ncomponents:\n  sleep: {{ path: {} }}\n  echo: {{ path: {} }}\nsteps:\n  - {{ id: first, component: echo, input: go }}\n  - {{ id: wait, component: sleep, needs: [first], input: {{ ms: {wait_ms} }}, timeout: 120s }}\n",
            hostile("sleep").display(),
            example("echo").display()
        ),
    )
    .unwrap();
    let mut running = Reaped(sandflow(state).args(["--json", "run"]).arg(&flow).stderr(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap());
    let mut id = String::new();
    for line in BufReader::new(running.0.stderr.take().unwrap()).lines() {
        let e: Value = serde_json::from_str(&line.unwrap()).unwrap_or_default();
        if e["event"] == "run_started" {
            id = e["run_id"].as_str().unwrap().to_string();
        }
        if e["event"] == "step_started" && e["step"] == "wait" {
            break;
        }
    }
    (running, [completed, failed, id])
}

#[test]
fn the_api_pages_filters_and_follows_runs_and_guards_actions_and_tokens() {
    let state = tempfile::tempdir().unwrap();
    let (_running, [completed, failed, running]) = three_runs(&state, 60_000);
    let (_server, addr) = serve(&state, &[]);

    let all = get_json(&addr, "/api/runs");
    let ids: Vec<&str> = all["runs"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [running.as_str(), failed.as_str(), completed.as_str()], "newest first");
    assert_eq!(all["next"], Value::Null);
    let failed_only = get_json(&addr, "/api/runs?status=failed");
    assert_eq!(failed_only["runs"].as_array().unwrap().len(), 1);
    assert_eq!(failed_only["runs"][0]["id"], failed.as_str());
    assert_eq!(get_json(&addr, "/api/runs?workflow=diamond")["runs"][0]["id"], completed.as_str());
    // Pages of one, following the cursor, list every run once.
    let mut paged = Vec::new();
    let mut after = String::new();
    loop {
        let page = get_json(&addr, &format!("/api/runs?limit=1&after={after}"));
        paged.extend(page["runs"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_string()));
        match page["next"].as_str() {
            Some(next) => after = next.to_string(),
            None => break,
        }
    }
    assert_eq!(paged, ids);

    let shown = get_json(&addr, &format!("/api/runs/{failed}"));
    assert_eq!(shown["run"]["status"], "failed");
    assert_eq!(shown["allow_actions"], false);
    let (status, svg) = http(&addr, "GET", &format!("/api/runs/{failed}/graph.svg"), &[]);
    assert_eq!(status, 200);
    assert!(svg.contains(r#"<g class="step failed" data-step="intentional-fail">"#), "{svg}");
    assert_eq!(http(&addr, "GET", "/api/runs/nope", &[]).0, 404);
    // The graph comes from the workflow the run recorded: its file may go.
    std::fs::remove_file(state.path().join("slow.yaml")).unwrap();
    let (status, svg) = http(&addr, "GET", &format!("/api/runs/{running}/graph.svg"), &[]);
    assert_eq!(status, 200, "{svg}");
    assert!(svg.contains(r#"<g class="step running" data-step="wait">"#), "{svg}");
    assert!(get_json(&addr, &format!("/api/runs/{running}"))["shape"].is_object(), "the page's shape too");
    let attempts = get_json(&addr, &format!("/api/runs/{failed}/attempts?step=intentional-fail"));
    assert_eq!(attempts.as_array().unwrap().len(), 1, "{attempts}");
    assert_eq!((attempts[0]["state"].as_str(), attempts[0]["error_kind"].as_str()), (Some("failed"), Some("component")), "{attempts}");
    assert!(attempts[0]["fuel_used"].as_u64().is_some_and(|f| f > 0), "each attempt's fuel: {attempts}");
    let (status, body) = http(&addr, "POST", &format!("/api/runs/{running}/cancel"), &own_action(&addr).each_ref().map(String::as_str));
    assert_eq!(status, 403, "actions are off by default: {body}");
    assert!(body.contains("actions are off"), "{body}");

    // The live feed: the running run now, then again when it changes.
    let mut feed = TcpStream::connect(&addr).unwrap();
    write!(feed, "GET /api/runs/{running}/events HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut feed = BufReader::new(feed);
    let next_run = |feed: &mut BufReader<TcpStream>| -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut line = String::new();
        while Instant::now() < deadline {
            line.clear();
            feed.read_line(&mut line).unwrap();
            if let Some(data) = line.strip_prefix("data: ") {
                return serde_json::from_str(data).unwrap();
            }
        }
        panic!("no event in 20s");
    };
    assert_eq!(next_run(&mut feed)["status"], "running");
    let (_actor, actor_addr) = serve(&state, &["--allow-actions"]);
    let (status, body) = http(&actor_addr, "POST", &format!("/api/runs/{running}/cancel"), &own_action(&actor_addr).each_ref().map(String::as_str));
    assert_eq!(status, 200, "{body}");
    let mut seen = next_run(&mut feed);
    while seen["status"] == "running" {
        seen = next_run(&mut feed);
    }
    assert_eq!(seen["status"], "cancelled");

    // With a token, every request must carry it.
    let (_guarded, guarded) = serve(&state, &["--token", "s3cret"]);
    assert_eq!(http(&guarded, "GET", "/api/runs", &[]).0, 401);
    assert_eq!(http(&guarded, "GET", "/", &[]).0, 401);
    assert_eq!(http(&guarded, "GET", "/api/runs", &["Authorization: Bearer s3cret"]).0, 200);
    assert_eq!(http(&guarded, "GET", "/api/runs?token=s3cret", &[]).0, 200);
    assert_eq!(http(&guarded, "GET", "/api/runs?token=s3creT", &[]).0, 401);
}

/// What a hostile web page could do to `serve --allow-actions`, each
/// tried as its browser would send it: no cross-site request changes a
/// run (form posts, `Origin: null`, a cross-site fetch), no page on
/// another name reads one (DNS rebinding), no page frames it, and the
/// token a page was opened with becomes a cookie the attacker's requests
/// do not carry.
#[test]
fn a_hostile_page_cannot_act_rebind_or_frame() {
    let state = tempfile::tempdir().unwrap();
    let (_running, [completed, failed, running]) = three_runs(&state, 60_000);
    let (_server, addr) = serve(&state, &["--allow-actions"]);
    let status_of = |id: &str| get_json(&addr, &format!("/api/runs/{id}"))["run"].clone();
    let cancel = format!("/api/runs/{running}/cancel");
    let retry = format!("/api/runs/{failed}/retry");
    // Cross-site: each is refused and changes nothing.
    let hostile: &[&[&str]] = &[
        &["Origin: http://evil.example", "Content-Type: application/x-www-form-urlencoded"],
        &["Origin: null", "Content-Type: text/plain"],
        &["Origin: http://evil.example", "Content-Type: application/json"],
        &["Sec-Fetch-Site: cross-site", "Content-Type: application/json"],
        &["Sec-Fetch-Site: same-site", "Content-Type: application/json"],
        &[&format!("Origin: http://{addr}.evil.example"), "Content-Type: application/json"],
        &["Content-Type: multipart/form-data; boundary=x"],
        &[],
    ];
    for headers in hostile {
        for path in [&cancel, &retry] {
            let (status, body) = http(&addr, "POST", path, headers);
            assert_eq!(status, 403, "{path} {headers:?}: {body}");
        }
    }
    assert_eq!(status_of(&running)["status"], "running");
    assert_eq!((status_of(&failed)["status"].clone(), status_of(&failed)["attempt"].clone()), (Value::from("failed"), Value::from(1)));
    // DNS rebinding: a page on another name reads nothing, on any route.
    for path in ["/", "/api/runs", &format!("/api/runs/{completed}"), &format!("/api/runs/{running}/events"), "/assets/app.js"] {
        let (status, body) = http(&addr, "GET", path, &["Host: evil.example"]);
        assert_eq!(status, 421, "{path}: {body}");
        assert!(!body.contains(&completed), "{path}: {body}");
        let port = addr.rsplit(':').next().unwrap();
        assert_eq!(http(&addr, "GET", path, &[&format!("Host: evil.example:{port}")]).0, 421, "{path}");
    }
    let port = addr.rsplit(':').next().unwrap();
    assert_eq!(http(&addr, "GET", "/api/runs", &[&format!("Host: localhost:{port}")]).0, 200);
    // No framing, and a policy the pages keep, on every answer.
    for (path, headers) in [("/", vec![]), ("/api/runs", vec![]), ("/assets/app.js", vec![]), ("/api/runs", vec!["Host: evil.example"])] {
        let (_, head, _) = http_full(&addr, "GET", path, &headers);
        assert_eq!(header(&head, "x-frame-options"), Some("DENY"), "{path}: {head}");
        let csp = header(&head, "content-security-policy").unwrap_or_default();
        assert!(csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self';"), "{path}: {csp}");
    }
    // A SQLite store has no workers: the API says why.
    let (status, body) = http(&addr, "GET", "/api/workers", &[]);
    assert!(status == 404 && body.contains("there are no workers"), "{status} {body}");
    // The pages' own request goes through.
    let (status, body) = http(&addr, "POST", &cancel, &own_action(&addr).each_ref().map(String::as_str));
    assert_eq!(status, 200, "{body}");

    // A configured public name is this server's, and its origin may act.
    let (_public, public_addr) = serve(&state, &["--allow-actions", "--public-url", "https://runs.example.com"]);
    assert_eq!(http(&public_addr, "GET", "/api/runs", &["Host: runs.example.com"]).0, 200);
    let (status, body) = http(
        &public_addr,
        "POST",
        &format!("/api/runs/{completed}/cancel"),
        &["Host: runs.example.com", "Origin: https://runs.example.com", "Content-Type: application/json"],
    );
    assert_eq!(status, 409, "past the guard, refused as not running: {body}");

    // The token: `?token=` on a page becomes a cookie, and the address
    // loses it; the cookie (not a guess) opens the rest.
    let (_guarded, guarded) = serve(&state, &["--token", "s3cret"]);
    let (status, head, _) = http_full(&guarded, "GET", &format!("/runs/{completed}?token=s3cret&live=0"), &[]);
    assert_eq!(status, 303, "{head}");
    assert_eq!(header(&head, "location"), Some(format!("/runs/{completed}?live=0").as_str()), "{head}");
    let cookie = header(&head, "set-cookie").unwrap().to_string();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict") && !cookie.contains("s3cret"), "{cookie}");
    let session = cookie.split(';').next().unwrap();
    assert_eq!(http(&guarded, "GET", "/assets/app.js", &[&format!("Cookie: {session}")]).0, 200);
    assert_eq!(http(&guarded, "GET", "/api/runs", &[&format!("Cookie: theme=dark; {session}")]).0, 200);
    assert_eq!(http(&guarded, "GET", "/api/runs", &["Cookie: sandflow_session=00"]).0, 401);
    assert_eq!(http(&guarded, "GET", "/api/runs", &["Cookie: sandflow_session=s3cret"]).0, 401);
}

#[test]
fn listening_beyond_loopback_without_a_token_warns() {
    let state = tempfile::tempdir().unwrap();
    let mut child =
        Reaped(sandflow(&state).args(["serve", "--listen", "0.0.0.0:0"]).stderr(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap());
    let mut stderr = BufReader::new(child.0.stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    assert!(first.starts_with("warning: listening on 0.0.0.0:0 with no authentication"), "{first}");
    assert!(first.contains("set --token (or SANDFLOW_TOKEN)"), "{first}");
}

/// Debian's Chromium, if installed.
pub(crate) fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("SANDFLOW_CHROMIUM").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if path.exists() {
        return Some(path);
    }
    crate::support::skipping("browser", &format!("no Chromium at {} (Debian's `chromium`; SANDFLOW_CHROMIUM names another)", path.display()));
    None
}

/// Loads `url` in headless Chromium; returns the DOM once its scripts ran.
pub(crate) fn dom(chromium: &Path, url: &str) -> String {
    let out = std::process::Command::new(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--virtual-time-budget=5000", "--dump-dom", url])
        .stderr(Stdio::null())
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

/// Saves a screenshot of `url` as `name` under target/screenshots/ (and
/// under `SANDFLOW_SCREENSHOTS`, when set: the README's come from there).
fn screenshot(chromium: &Path, url: &str, name: &str) {
    let dir = std::env::var_os("SANDFLOW_SCREENSHOTS").map(PathBuf::from).unwrap_or_else(|| root().join("target/screenshots"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(name);
    let status = std::process::Command::new(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1200,760", "--virtual-time-budget=5000"])
        .arg(format!("--screenshot={}", file.display()))
        .arg(url)
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success() && file.metadata().map(|m| m.len() > 1000).unwrap_or(false), "no screenshot at {}", file.display());
}

#[test]
fn the_pages_show_runs_and_step_states_in_a_real_browser() {
    let Some(chromium) = chromium() else { return };
    let state = tempfile::tempdir().unwrap();
    // `wait` runs long enough for the pages and screenshots below, then
    // ends while a page follows it.
    let (_running, [completed, failed, running]) = three_runs(&state, 45_000);
    let (_server, addr) = serve(&state, &["--allow-actions"]);

    let runs = dom(&chromium, &format!("http://{addr}/"));
    for (id, status) in [(&completed, "completed"), (&failed, "failed"), (&running, "running")] {
        assert!(runs.contains(&format!(r#"data-run="{id}" data-status="{status}""#)), "{id} {status}: {runs}");
    }
    let filtered = dom(&chromium, &format!("http://{addr}/?status=failed"));
    assert!(filtered.contains(&format!(r#"data-run="{failed}""#)) && !filtered.contains(&format!(r#"data-run="{completed}""#)), "{filtered}");

    let page = dom(&chromium, &format!("http://{addr}/runs/{failed}"));
    assert!(page.contains(r#"data-status="failed""#), "{page}");
    for (step, state) in [("intentional-fail", "failed"), ("send-email", "succeeded"), ("celebrate", "skipped"), ("cry", "succeeded")] {
        assert!(page.contains(&format!(r#"data-step="{step}" data-state="{state}""#)), "{step} {state}: {page}");
    }
    assert!(page.contains(r#"<g class="step failed" data-step="intentional-fail">"#), "the graph is drawn, coloured by state: {page}");

    // `?live=0`: the page as it is now (a followed page keeps loading).
    // The running step is listed, in the table and the graph, once its
    // start is recorded.
    let since = std::time::Instant::now();
    while !get_json(&addr, &format!("/api/runs/{running}"))["run"]["steps"].as_array().unwrap().iter().any(|s| s["step"] == "wait" && s["state"] == "running") {
        assert!(since.elapsed() < std::time::Duration::from_secs(10), "`wait` was never recorded running");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let now = dom(&chromium, &format!("http://{addr}/runs/{running}?live=0"));
    assert!(now.contains(r#"data-status="running""#), "{now}");
    assert!(now.contains(r#"data-step="first" data-state="succeeded""#), "{now}");
    let view = now.split(r#"<main id="view">"#).nth(1).unwrap();
    assert!(view.contains(r#"data-action="cancel""#), "actions are on: {view}");
    assert!(now.contains(r#"data-step="wait" data-state="running""#), "the running step is listed while it runs: {now}");
    assert!(now.contains("data-since="), "with the time its attempt started: {now}");
    assert!(now.contains(r#"<g class="step running" data-step="wait">"#), "{now}");

    screenshot(&chromium, &format!("http://{addr}/"), "runs.png");
    screenshot(&chromium, &format!("http://{addr}/runs/{failed}"), "run-failed.png");
    screenshot(&chromium, &format!("http://{addr}/runs/{running}?live=0"), "run-running.png");

    // Opened while the run runs, the page follows it to its end without a
    // reload (the DOM is read once the live feed closes).
    let (status, _) = http(&addr, "GET", &format!("/api/runs/{running}"), &[]);
    assert_eq!(status, 200);
    assert_eq!(get_json(&addr, &format!("/api/runs/{running}"))["run"]["status"], "running", "the run ended too soon for this check");
    let followed = dom(&chromium, &format!("http://{addr}/runs/{running}"));
    assert!(followed.contains(r#"data-status="completed""#), "{followed}");
    assert!(followed.contains(r#"data-step="wait" data-state="succeeded""#), "{followed}");
}

#[test]
fn groups_finally_steps_and_for_each_items_fold_in_a_real_browser() {
    let Some(chromium) = chromium() else { return };
    let state = tempfile::tempdir().unwrap();
    let (code, _, err) = run(sandflow(&state).args(["-q", "run", "workflows/foreach.yaml", "--input", r#"{"words": ["alpha", "beta", "gamma"]}"#]));
    assert_eq!(code, 0, "{err}");
    let foreach = newest_run(sandflow(&state));
    let (code, _, err) = run(sandflow(&state).args(["-q", "run", "workflows/groups.yaml", "--input", r#"{"values": [3, 1, 2]}"#]));
    assert_eq!(code, 0, "{err}");
    let groups = newest_run(sandflow(&state));
    run(sandflow(&state).args(["-q", "run", "workflows/argo-exit-handler.yaml"]));
    let finally = newest_run(sandflow(&state));
    let (_server, addr) = serve(&state, &[]);

    // `#step=ID` opens a step: a `forEach` step lists its items, folded.
    let page = dom(&chromium, &format!("http://{addr}/runs/{foreach}#step=shout"));
    for i in 0..3 {
        assert!(page.contains(&format!(r#"<details class="item" data-item="{i}"><summary>item {i}</summary>"#)), "item {i}: {page}");
    }
    assert!(page.contains("1: beta!"), "an item's output: {page}");
    // Items are not attempts: the step made 3 items, each in 1 attempt.
    assert!(page.contains(r#"data-step="shout" data-state="succeeded"><td class="id">shout</td><td><span class="badge s-succeeded">succeeded</span></td><td class="attempts">3 items</td>"#), "{page}");
    assert!(page.contains("<td>all 3 items</td>"), "the step's attempts row: {page}");
    let page = dom(&chromium, &format!("http://{addr}/runs/{groups}"));
    for (group, step) in [("group 1", "save-values"), ("group 2", "read-label"), ("group 3", "stats")] {
        assert!(page.contains(&format!(r#"<tr class="group" data-group="{group}">"#)), "{group}: {page}");
        assert!(page.contains(&format!(r#"data-step="{step}" data-state="succeeded" data-in-group="{group}""#)), "{step}: {page}");
    }
    let page = dom(&chromium, &format!("http://{addr}/runs/{finally}"));
    assert!(page.contains(r#"<tr class="group" data-group="finally">"#), "{page}");
    assert!(page.contains(r#"data-step="cry" data-state="succeeded" data-in-group="finally""#), "{page}");
    let view = page.split(r#"<main id="view">"#).nth(1).and_then(|v| v.split("</main>").next()).unwrap();
    assert!(view.contains(r#"data-step="cry""#) && !view.contains("data-action="), "actions are off: no buttons at all: {view}");
    // The workers page of a SQLite store says why it has none.
    let page = dom(&chromium, &format!("http://{addr}/workers"));
    assert!(page.contains("there are no workers (a PostgreSQL store has them)"), "{page}");
}

/// With a token, the address a user is given (`/?token=T`) opens the
/// pages in a browser: the runs, a run with its graph, all loaded with the
/// cookie the token became; Chromium reports no Content-Security-Policy
/// violation on them (scripts, styles, the graph's inline style).
#[test]
fn a_token_address_opens_the_pages_in_a_real_browser_under_the_policy() {
    let Some(chromium) = chromium() else { return };
    let state = tempfile::tempdir().unwrap();
    let (code, _, err) = run(sandflow(&state).args(["-q", "run", "workflows/diamond.yaml", "--input", r#"{"text": "Hi"}"#]));
    assert_eq!(code, 0, "{err}");
    let id = newest_run(sandflow(&state));
    let (_server, addr) = serve(&state, &["--token", "s3 cret&x"]);
    let token = "s3%20cret%26x";
    let runs = dom(&chromium, &format!("http://{addr}/?token={token}"));
    assert!(runs.contains(&format!(r#"data-run="{id}" data-status="completed""#)), "{runs}");
    let out = std::process::Command::new(&chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--virtual-time-budget=5000", "--enable-logging=stderr", "--v=0", "--dump-dom"])
        .arg(format!("http://{addr}/runs/{id}?token={token}"))
        .output()
        .unwrap();
    let (page, log) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(page.contains(r#"data-step="upper" data-state="succeeded""#), "{page}");
    assert!(page.contains(r#"<g class="step succeeded" data-step="upper">"#), "the graph: {page}");
    // Each node says how long its step took; the timeline draws a bar per
    // step that ran, on one axis.
    assert!(page.contains(">text · "), "durations on the graph's nodes: {page}");
    for step in ["split", "upper", "lower", "join"] {
        assert!(page.contains(&format!(r#"<div class="lane" data-lane="{step}">"#)), "{step}'s lane: {page}");
    }
    assert!(page.contains(r#"class="bar badge s-succeeded""#), "{page}");
    assert!(!log.contains("Content Security Policy"), "a CSP violation: {log}");
}

/// Headless Chromium driven over the DevTools protocol on a pipe
/// (`--remote-debugging-pipe`: commands on its fd 3, answers on its fd 4,
/// each a JSON text ended by a NUL): a test clicks as a user does.
pub(crate) struct Browser {
    child: Reaped,
    to: std::fs::File,
    from: BufReader<std::fs::File>,
    session: String,
    next: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Opens `url` in a fresh headless Chromium. Unsafe only to hand the
    /// child its ends of two pipes (libc calls between fork and exec, and
    /// files made of the fds `pipe2` returned, each owned once).
    #[allow(unsafe_code)]
    pub(crate) fn open(chromium: &Path, url: &str) -> Browser {
        use std::os::fd::{FromRawFd, RawFd};
        use std::os::unix::process::CommandExt;
        let pipe = || {
            let mut fds: [RawFd; 2] = [0; 2];
            // SAFETY: `fds` has room for the two fds pipe2 writes.
            assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
            fds
        };
        let (commands, answers) = (pipe(), pipe());
        let profile = tempfile::tempdir().unwrap();
        let mut cmd = std::process::Command::new(chromium);
        cmd.args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--remote-debugging-pipe", "--window-size=1200,800"])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let (read_end, write_end) = (commands[0], answers[1]);
        // In the child: its end of each pipe at fd 3 and fd 4 (moved out
        // of the way first, so neither dup2 overwrites the other).
        unsafe {
            cmd.pre_exec(move || {
                let r = libc::fcntl(read_end, libc::F_DUPFD, 10);
                let w = libc::fcntl(write_end, libc::F_DUPFD, 10);
                if r < 0 || w < 0 || libc::dup2(r, 3) < 0 || libc::dup2(w, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = Reaped(cmd.spawn().expect("chromium starts"));
        unsafe {
            libc::close(read_end);
            libc::close(write_end);
        }
        let (to, from) = unsafe { (std::fs::File::from_raw_fd(commands[1]), std::fs::File::from_raw_fd(answers[0])) };
        let mut b = Browser { child, to, from: BufReader::new(from), session: String::new(), next: 0, _profile: profile };
        let target = b.call("Target.createTarget", serde_json::json!({ "url": url }));
        let attached = b.call("Target.attachToTarget", serde_json::json!({ "targetId": target["targetId"], "flatten": true }));
        b.session = attached["sessionId"].as_str().expect("a session").to_string();
        b
    }

    /// Sends one command (on the page's session once attached) and returns
    /// its result; events in between are read and dropped.
    fn call(&mut self, method: &str, params: Value) -> Value {
        let answer = self.answer(method, params);
        assert!(answer.get("error").is_none(), "{method}: {answer}");
        answer["result"].clone()
    }

    /// [`Browser::call`]'s whole answer, an error included.
    fn answer(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut message = serde_json::json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            message["sessionId"] = Value::String(self.session.clone());
        }
        self.to.write_all(message.to_string().as_bytes()).unwrap();
        self.to.write_all(b"\0").unwrap();
        loop {
            let mut bytes = Vec::new();
            let n = self.from.read_until(0, &mut bytes).unwrap();
            assert!(n > 0, "chromium closed its pipe (exit: {:?})", self.child.0.try_wait());
            bytes.pop();
            let answer: Value = serde_json::from_slice(&bytes).unwrap();
            if answer["id"] == id {
                return answer;
            }
        }
    }

    /// Evaluates `expression` in the page (a promise is awaited); its value.
    pub(crate) fn eval(&mut self, expression: &str) -> Value {
        let params = serde_json::json!({ "expression": expression, "awaitPromise": true, "returnByValue": true });
        // Until the page has loaded, it has no context to evaluate in.
        let since = Instant::now();
        let result = loop {
            let answer = self.answer("Runtime.evaluate", params.clone());
            match answer.get("error") {
                None => break answer["result"].clone(),
                Some(e) if e["message"].as_str().is_some_and(|m| m.contains("context")) && since.elapsed() < Duration::from_secs(30) => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Some(e) => panic!("{expression}: {e}"),
            }
        };
        assert!(result.get("exceptionDetails").is_none(), "{expression}: {result:#}");
        result["result"]["value"].clone()
    }

    /// Saves what the page shows now as `name` (PNG), where [`screenshot`]
    /// saves: the page may go on loading (a live run's feed), which a
    /// screenshot taken on the command line would wait for.
    pub(crate) fn screenshot(&mut self, name: &str, from: Option<(&str, u32)>) {
        // From element `from` down (1200 wide, as tall as it says), or the window.
        let mut params = serde_json::json!({ "format": "png" });
        if let Some((selector, height)) = from {
            let script = format!("(() => {{ const r = document.querySelector({}).getBoundingClientRect(); return r.top + window.scrollY; }})()", serde_json::to_string(selector).unwrap());
            let top = self.eval(&script).as_f64().expect("the element is on the page");
            params["clip"] = serde_json::json!({ "x": 0, "y": (top - 24.0).max(0.0), "width": 1200, "height": height, "scale": 1 });
            params["captureBeyondViewport"] = Value::Bool(true);
        }
        let shot = self.call("Page.captureScreenshot", params);
        let bytes = base64_decode(shot["data"].as_str().expect("a PNG"));
        assert!(bytes.starts_with(b"\x89PNG"), "not a PNG");
        let dir = std::env::var_os("SANDFLOW_SCREENSHOTS").map(PathBuf::from).unwrap_or_else(|| root().join("target/screenshots"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }

    /// Waits (in the page, up to 30 s) for `selector`, then clicks it.
    pub(crate) fn click(&mut self, selector: &str) {
        let script = format!(
            "new Promise((ok, no) => {{ const t0 = Date.now(); const look = () => {{ const e = document.querySelector({sel}); \
             if (e) {{ e.click(); ok(true); }} else if (Date.now() - t0 > 30000) no(new Error('no ' + {sel} + ' in: ' + document.body.innerText.slice(0, 3000))); \
             else setTimeout(look, 100); }}; look(); }})",
            sel = serde_json::to_string(selector).unwrap()
        );
        self.eval(&script);
    }

    /// Waits (in the page, up to 30 s) until `selector`'s text contains `text`; the text.
    pub(crate) fn text_of(&mut self, selector: &str, text: &str) -> String {
        let script = format!(
            "new Promise((ok, no) => {{ const t0 = Date.now(); const look = () => {{ const e = document.querySelector({sel}); \
             if (e && e.textContent.includes({text})) ok(e.textContent); else if (Date.now() - t0 > 30000) no(new Error('not there: ' + (e ? e.textContent : 'nothing'))); \
             else setTimeout(look, 100); }}; look(); }})",
            sel = serde_json::to_string(selector).unwrap(),
            text = serde_json::to_string(text).unwrap()
        );
        self.eval(&script).as_str().unwrap_or_default().to_string()
    }
}

/// Standard base64 (the DevTools protocol's screenshots).
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let digits: Vec<u8> = text.bytes().filter(|c| *c != b'=' && !c.is_ascii_whitespace()).map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, d)| n | (u32::from(*d) << (18 - 6 * i)));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

/// An approval approved in the web view: the run's page shows the waiting
/// step with what it asks and its buttons; clicking Approve in Chromium
/// ends the step (the run's own process sees the signal) and the run
/// completes; the same page then has no buttons.
#[test]
fn an_approval_is_approved_with_a_click_in_a_real_browser() {
    let Some(chromium) = chromium() else { return };
    let state = tempfile::tempdir().unwrap();
    let child = sandflow(&state).args(["-q", "run", "workflows/release.yaml", "--set", "version=v7"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let (_server, addr) = serve(&state, &["--allow-actions"]);
    let id = first_run(&addr);
    let mut browser = Browser::open(&chromium, &format!("http://{addr}/runs/{id}"));
    let asked = browser.text_of(r#"tr[data-step="approve"][data-state="waiting"]"#, "Ship v7?");
    assert!(asked.contains("waits for approval (timeout "), "{asked}");
    // The graph colours it as waiting (it is fetched after the table is
    // drawn: wait for it); the picture shows its row and buttons.
    browser.text_of(r#"g.step.waiting[data-step="approve"]"#, "");
    assert_eq!(browser.eval(r#"document.querySelectorAll('g.step.waiting[data-step="approve"]').length"#), 1);
    browser.screenshot("run-waiting.png", Some(("#timeline", 300)));
    browser.click(r#"tr[data-step="approve"] button[data-signal="approve"]"#);
    let said = browser.text_of("#action-result", "signal sent");
    assert_eq!(said, "signal sent to step `approve` of run ".to_string() + &id);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let output: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(output["approved"], true, "{output}");
    // Approved by whoever the server took the browser for: no token, `anyone`.
    assert!(output["announced"].as_str().unwrap().ends_with("approved by anyone"), "{output}");
    // The page follows the run to its end: the step succeeded, no buttons.
    browser.text_of(r#"h1[data-status="completed"]"#, "completed");
    let buttons = browser.eval(r#"document.querySelectorAll('button[data-signal]').length"#);
    assert_eq!(buttons, 0);
}

/// A run watched in the web view as it runs: the running step's row says
/// how long it has run, its open log grows line by line while its state is
/// still `running`, the timeline draws a bar per step, and the page follows
/// the run to its end, all without a reload.
#[test]
fn a_running_steps_log_grows_on_its_page_and_the_run_ends_there() {
    let Some(chromium) = chromium() else { return };
    let state = tempfile::tempdir().unwrap();
    let flow = state.path().join("watch.yaml");
    std::fs::write(
        &flow,
        format!(
            "name: watch\ncomponents:\n  sleep: {{ path: {} }}\n  echo: {{ path: {} }}\nsteps:\n  - {{ id: fetch, component: echo, input: go }}\n  - {{ id: crunch, component: sleep, needs: [fetch], input: {{ lines: 8, ms: 700 }} }}\n  - {{ id: index, component: sleep, needs: [fetch], input: {{ ms: 1500 }} }}\n  - {{ id: publish, component: echo, needs: [crunch, index], input: done }}\n",
            hostile("sleep").display(),
            example("echo").display()
        ),
    )
    .unwrap();
    // (The run ends in seconds whatever happens here.)
    let child = sandflow(&state).args(["-q", "run"]).arg(&flow).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let (_server, addr) = serve(&state, &[]);
    let id = first_run(&addr);
    // `#step=crunch` opens the step's detail, log included.
    let mut browser = Browser::open(&chromium, &format!("http://{addr}/runs/{id}#step=crunch"));
    let log = r#"pre.log[data-follow="crunch"]"#;
    browser.text_of(log, "line 2 of 8");
    // Set once the page runs (not on the blank page before it): a reload
    // would lose it.
    browser.eval("window.loadedOnce = true");
    // The table is drawn again on every change of the run (`index` ends
    // while `crunch` runs, then `crunch` ends): the open log stays on the
    // page throughout, never gone while its detail is fetched again.
    browser.eval(
        "window.redraws = 0; window.logGone = 0; new MutationObserver(() => { window.redraws++; \
         if (!document.querySelector('tr[data-detail=\"crunch\"] pre.log')) window.logGone++; }).observe(document.querySelector('#steps tbody'), { childList: true })",
    );
    let running = r#"tr[data-step="crunch"][data-state="running"]"#;
    let seen = browser.eval(&format!(
        "(() => {{ const row = document.querySelector({running:?}); return {{ running: !!row, since: row && row.querySelector('td[data-since]').textContent, \
         lines: document.querySelector({log:?}).dataset.lines }}; }})()"
    ));
    assert_eq!(seen["running"], true, "the log was read while the step ran: {seen}");
    let elapsed = seen["since"].as_str().unwrap();
    assert!(elapsed.ends_with('s') && elapsed.chars().next().unwrap().is_ascii_digit(), "elapsed time on its row: {seen}");
    let before: usize = seen["lines"].as_str().unwrap().parse().unwrap();
    assert!((2..8).contains(&before), "{seen}");
    let later = browser.text_of(log, "line 5 of 8");
    assert!(browser.eval(&format!("!!document.querySelector({running:?})")) == true, "still running with more lines: {later}");
    assert!(later.contains("stdout | line 1 of 8\n"), "{later}");
    // A picture of the run mid-flight: a step done, one running, and the
    // open log of it as it grows.
    browser.screenshot("run-live.png", Some(("#timeline", 460)));
    // The run ends on the same page: every step's state, the full log, no reload.
    browser.text_of(r#"h1[data-status="completed"]"#, "completed");
    let done = browser.text_of(r#"tr[data-detail="crunch"] pre.log"#, "line 8 of 8");
    assert_eq!(done.matches("line ").count(), 8, "each line once: {done}");
    assert_eq!(browser.eval("window.loadedOnce === true"), true, "the page was not reloaded");
    let redraws = browser.eval("[window.redraws, window.logGone]");
    assert!(redraws[0].as_u64().unwrap() >= 2 && redraws[1] == 0, "[redraws, times the open log was gone]: {redraws}");
    let states = browser.eval("[...document.querySelectorAll('tr.step')].map((r) => r.dataset.step + '=' + r.dataset.state).sort().join(' ')");
    assert_eq!(states, "crunch=succeeded fetch=succeeded index=succeeded publish=succeeded");
    // The timeline: a bar per step, `crunch` the longest.
    let bars = browser.eval("[...document.querySelectorAll('#lanes .lane')].map((l) => l.dataset.lane + ':' + parseFloat(l.querySelector('.bar').style.width).toFixed(0)).join(' ')");
    let bars = bars.as_str().unwrap();
    let widths: BTreeMap<&str, f64> = bars.split(' ').map(|b| b.split_once(':').unwrap()).map(|(s, w)| (s, w.parse().unwrap())).collect();
    assert_eq!(widths.keys().copied().collect::<Vec<_>>(), ["crunch", "fetch", "index", "publish"], "{bars}");
    assert!(widths.iter().all(|(s, w)| *s == "crunch" || *w < widths["crunch"]), "{bars}");
    browser.screenshot("run-timeline.png", Some(("#timeline", 300)));
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}
