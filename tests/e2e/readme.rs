//! Every shell command the READMEs show runs as written: each ```sh block
//! of README.md (from the repository's root) and components/README.md (in
//! a scratch directory) is run by bash with `sandflow` on PATH, stopping at
//! the first command that fails. A block is left out only when the line
//! before it says why (`<!-- readme-test: not run: REASON -->`); the test
//! prints each one it leaves out.

use crate::support::{PgSchema, root};
use std::path::Path;
use std::process::{Command, Stdio};

/// A ```sh block: where it starts, its text, and why it is not run.
struct Block {
    line: usize,
    text: String,
    not_run: Option<String>,
}

fn blocks(doc: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut lines = doc.lines().enumerate().peekable();
    let mut previous = "";
    while let Some((n, line)) = lines.next() {
        if line.trim() == "```sh" {
            let not_run = previous.trim().strip_prefix("<!-- readme-test: not run:").and_then(|r| r.strip_suffix("-->")).map(|r| r.trim().to_string());
            let mut text = String::new();
            for (_, l) in lines.by_ref() {
                if l.trim() == "```" {
                    break;
                }
                text.push_str(l);
                text.push('\n');
            }
            out.push(Block { line: n + 1, text, not_run });
        }
        previous = line;
    }
    out
}

#[test]
fn every_readme_command_runs_as_written() {
    let schema = PgSchema::create();
    let bin = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_sandflow"), bin.path().join("sandflow")).unwrap();
    let path = format!("{}:{}", bin.path().display(), std::env::var("PATH").unwrap_or_default());
    let (mut ran, mut left_out) = (0, 0);
    let repository = root();
    for (doc, in_root) in [("README.md", true), ("components/README.md", false)] {
        for block in blocks(&std::fs::read_to_string(root().join(doc)).unwrap()) {
            let at = format!("{doc}:{}", block.line);
            if let Some(why) = &block.not_run {
                eprintln!("notice: {at} is not run: {why}");
                left_out += 1;
                continue;
            }
            let mut script = block.text.replace("cargo run -q -- ", "sandflow ").replace("cargo run -- ", "sandflow ");
            if script.contains("postgres://") {
                let Some(schema) = &schema else {
                    eprintln!("notice: {at} is not run: no PostgreSQL (SANDFLOW_SKIP=postgres)");
                    left_out += 1;
                    continue;
                };
                script = script.replace("postgres://postgres@127.0.0.1:5432/sandflow", &schema.url);
            }
            let scratch = tempfile::tempdir().unwrap();
            let dir: &Path = if in_root { &repository } else { scratch.path() };
            let state = tempfile::tempdir().unwrap();
            // Background jobs (`sandflow worker &`) end with the block.
            let script = format!("set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n{script}");
            let out = Command::new("bash")
                .arg("-c")
                .arg(&script)
                .current_dir(dir)
                .env("PATH", &path)
                .env("SANDFLOW_STATE_DIR", state.path())
                .env_remove("SANDFLOW_STORE")
                .stdin(Stdio::null())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{at}: the block failed ({}):\n{}\n--- stdout\n{}\n--- stderr\n{}",
                out.status,
                block.text,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            ran += 1;
        }
    }
    eprintln!("{ran} README blocks ran, {left_out} not run (each said why above)");
    assert!(ran >= 8, "only {ran} blocks ran");
}

#[test]
fn the_quick_start_prints_what_the_readme_shows() {
    let doc = std::fs::read_to_string(root().join("README.md")).unwrap();
    let start = doc.find("## Quick start").unwrap();
    let command = blocks(&doc[start..]).into_iter().next().unwrap().text.replace("cargo run -- ", "");
    let shown = doc[start..].split("```json\n").nth(1).and_then(|j| j.split("```").next()).unwrap();
    let state = tempfile::tempdir().unwrap();
    let args = shell_words(&command);
    let (code, out, err) = crate::support::run(crate::support::sandflow(&state).args(&args));
    assert_eq!(code, 0, "{err}");
    let (out, shown): (serde_json::Value, serde_json::Value) = (serde_json::from_str(&out).unwrap(), serde_json::from_str(shown).unwrap());
    assert_eq!(out, shown, "the quick start's output is not what README.md shows");
}

/// `run FILE --input '…'` as the shell splits it (single quotes only).
fn shell_words(line: &str) -> Vec<String> {
    let (mut words, mut word, mut quoted) = (Vec::new(), String::new(), false);
    for c in line.trim().chars() {
        match c {
            '\'' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}
