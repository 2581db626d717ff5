//! The deployment in deploy/: its systemd units pass `systemd-analyze
//! verify`, and the commands they start, run as written (state dirs and
//! ports aside), make a working service: a client with no database
//! credentials runs a workflow through `serve`, and the unit's worker runs
//! its steps.

use crate::support::{PgSchema, read_until, root, run, sandflow};
use std::process::{Command, Stdio};

/// A unit file with the binary this test built in place of the installed one.
fn unit(name: &str, dir: &std::path::Path) -> (std::path::PathBuf, String) {
    let text = std::fs::read_to_string(root().join("deploy/systemd").join(name)).unwrap();
    let text = text.replace("/usr/local/bin/sandflow", env!("CARGO_BIN_EXE_sandflow"));
    let path = dir.join(name);
    std::fs::write(&path, &text).unwrap();
    (path, text)
}

/// The arguments of a unit's `ExecStart`, `%i` and `%H` expanded.
fn exec_start(text: &str) -> Vec<String> {
    let line = text.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("an ExecStart line");
    line.split_whitespace().skip(1).map(|a| a.replace("%i", "1").replace("%H", "host")).collect()
}

/// Reads `child`'s stderr until a line containing `wanted`; returns it.
fn wait_for_line(child: &mut std::process::Child, wanted: &str) -> String {
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let line = read_until(&mut stderr, |l| l.contains(wanted));
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    line
}

#[test]
fn the_systemd_units_verify_and_their_commands_make_a_working_service() {
    let dir = tempfile::tempdir().unwrap();
    let mut texts = Vec::new();
    for name in ["sandflow-serve.service", "sandflow-worker@.service"] {
        let (path, text) = unit(name, dir.path());
        // A template is verified as an instance of it.
        let path = match name.contains('@') {
            true => {
                let instance = dir.path().join(name.replace('@', "@1"));
                std::fs::copy(&path, &instance).unwrap();
                instance
            }
            false => path,
        };
        match Command::new("systemd-analyze").arg("verify").arg(&path).output() {
            Ok(out) => {
                let said = String::from_utf8_lossy(&out.stderr);
                assert!(out.status.success() && said.trim().is_empty(), "{name}: {said}");
            }
            Err(e) => {
                crate::support::skipping("systemd", &format!("systemd-analyze cannot be run ({e}); Debian's systemd package has it"));
            }
        }
        texts.push(text);
    }
    let Some(schema) = PgSchema::create() else { return };
    let (serve_args, worker_args) = (exec_start(&texts[0]), exec_start(&texts[1]));
    let place = |args: Vec<String>, state: &std::path::Path| -> Vec<String> {
        args.into_iter()
            .map(|a| if a.starts_with("/var/lib/sandflow") { state.display().to_string() } else { a })
            .map(|a| if a.starts_with("127.0.0.1:") { "127.0.0.1:0".to_string() } else { a })
            .map(|a| if a.starts_with("https://runs.example.com") { "http://localhost".to_string() } else { a })
            .map(|a| if a == "/etc/sandflow/secrets" { state.join("secrets").display().to_string() } else { a })
            .collect()
    };
    let (serve_state, worker_state, client_state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    std::fs::create_dir(worker_state.path().join("secrets")).unwrap();
    let spawn = |args: Vec<String>, token: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sandflow"));
        cmd.args(args).env("SANDFLOW_STORE", &schema.url).current_dir(root()).stdout(Stdio::null()).stderr(Stdio::piped());
        if let Some(t) = token {
            cmd.env("SANDFLOW_TOKEN", t);
        }
        crate::web::Reaped(cmd.spawn().unwrap())
    };
    let mut server = spawn(place(serve_args, serve_state.path()), Some("deploy-admin"));
    let line = wait_for_line(&mut server.0, "serving");
    let addr = line.trim().rsplit("http://").next().unwrap().trim_end_matches('/').to_string();
    let mut worker = spawn(place(worker_args, worker_state.path()), None);
    wait_for_line(&mut worker.0, "is waiting for steps");
    let (code, out, err) = run(sandflow(&client_state)
        .env_remove("SANDFLOW_STORE")
        .args(["--server", &format!("http://{addr}"), "--token", "deploy-admin", "run", "workflows/diamond.yaml", "--input", r#"{"text": "Deployed"}"#]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap(), serde_json::json!({"text": "DEPLOYED / deployed"}));
}
