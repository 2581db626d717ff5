//! Bounded fuzzing on stable Rust, in CI: every target of
//! `sandflow::fuzzing` gets its committed corpus (`fuzz/corpus/TARGET/`,
//! which includes every input that once crashed it) and the project's own
//! files as seeds, then random mutations of them for a time budget
//! (`SANDFLOW_FUZZ_SECS` per target, default 15). The coverage-guided
//! targets under `fuzz/` run the same functions for longer (`fuzz/run.sh`).
//!
//! A panic is a failure: the input is written to
//! `target/fuzz-failures/TARGET-N` and the test names it.

use crate::support::root;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Tokens the mutator inserts: the syntax each parser cares about.
const DICTIONARY: &[&str] = &[
    "{{", "}}", "{{ ", " }}", "$from", "$literal", "$on_skip", "$default", "path:", "step:", "workflow:", "input",
    "steps.", ".output", "[0]", "[", "]", "{", "}", "\"", "'", ":", ": ", "- ", "\n", "\n  ", "\n    - ", "#", "&a",
    "*a", "!!str", "|", ">", "~", "null", "true", "1e308", "-1", "99999999999999999999", "\u{0}", "\u{feff}", "é",
    "size(", "has(", ".map(x, x)", "==", "&&", "||", "!", "?", "()", ".", "$.", "a.b=", "=", "id:", "needs:",
    "forEach:", "when:", "component:", "/builtin/eval", "timeout: 1s", "quota:", "retry:", "on_error:",
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
}

fn files(dir: &str, ext: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(root().join(dir)) else { return out };
    let mut paths: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
    paths.sort();
    for p in paths {
        if p.is_file() && (ext.is_empty() || p.extension().is_some_and(|e| e == ext)) {
            out.push(std::fs::read(&p).unwrap());
        }
    }
    out
}

fn lines(text: &str) -> Vec<Vec<u8>> {
    text.lines().map(|l| l.as_bytes().to_vec()).collect()
}

/// The committed corpus, then seeds made from the project's own files.
fn seeds(target: &str) -> Vec<Vec<u8>> {
    let mut seeds = files(&format!("fuzz/corpus/{target}"), "");
    seeds.extend(match target {
        "workflow" => [files("workflows", "yaml"), files("workflows/lib", "yaml"), files("tests/ui/invalid", "yaml")].concat(),
        "template" => lines(
            "{ $from: { step: a }, path: text }\n\"{{ steps.a.output.items[1] }}\"\n\"Hello {{ inputs.text }}!\"\n{ $literal: { a: \"{{ x }}\" } }\n[1, \"{{ inputs.n + 1 }}\", { $from: { workflow: input }, path: list[1].a, $on_skip: use_default, $default: 0 }]\n\"{{ secrets.TOKEN }} and {{ item }} at {{ index }}\"\n{ $from: { step: skipped }, $on_skip: use_default, $default: null }",
        ),
        "condition" => lines(
            "steps.a.output.text == \"A\"\n'{{ steps.a.output.text }}' == 'A'\n{{ inputs.n }} > 2 && size(inputs.list) == 2\ninputs.nested.x[0] || false\n!has(inputs.missing)\ninputs.list.map(x, x)",
        ),
        "path" => lines("a.b[1].c\n$.a.b[0]\na[\"b\"]\n$\n[0]\na..b\n$.a[99999999999999999999]"),
        "set" => lines("a=1\nuser.id=42\nuser.tags=[\"a\"]\nn.x=1\n=1\na..b=2\nname=Ada Lovelace\nempty="),
        "component" => [files("components/dist", "wasm"), files("components/dist/hostile", "wasm")]
            .concat()
            .into_iter()
            .filter(|b| b.len() < 300 << 10)
            .collect(),
        other => panic!("no seeds for fuzz target {other}"),
    });
    assert!(!seeds.is_empty(), "{target} has seeds");
    seeds
}

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut data = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(data.len() + 1);
        match rng.below(7) {
            0 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
            1 | 2 => {
                let token = DICTIONARY[rng.below(DICTIONARY.len())];
                data.splice(at..at, token.bytes());
            }
            3 => {
                let end = (at + rng.below(64)).min(data.len());
                data.drain(at..end);
            }
            4 => {
                let end = (at + rng.below(64)).min(data.len());
                let piece = data[at..end].to_vec();
                for _ in 0..1 + rng.below(8) {
                    data.splice(at..at, piece.iter().copied());
                }
            }
            5 => {
                let other = &seeds[rng.below(seeds.len())];
                let from = rng.below(other.len());
                let end = (from + rng.below(256)).min(other.len());
                data.splice(at..at, other[from..end].iter().copied());
            }
            _ => data.truncate(at),
        }
    }
    data
}

fn fuzz(name: &str) {
    let (_, target) = sandflow::fuzzing::TARGETS.iter().find(|(n, _)| *n == name).expect("a target");
    let budget = Duration::from_secs(std::env::var("SANDFLOW_FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(15));
    let seeds = seeds(name);
    let seed = std::env::var("SANDFLOW_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut executions = 0u64;
    let input_of = |i: u64, rng: &mut Rng| if (i as usize) < seeds.len() { seeds[i as usize].clone() } else { mutate(rng, &seeds) };
    while executions < seeds.len() as u64 || started.elapsed() < budget {
        let input = input_of(executions, &mut rng);
        executions += 1;
        if std::panic::catch_unwind(AssertUnwindSafe(|| target(&input))).is_err() {
            let dir = root().join("target/fuzz-failures");
            std::fs::create_dir_all(&dir).unwrap();
            let file = dir.join(format!("{name}-{executions}"));
            std::fs::write(&file, &input).unwrap();
            panic!(
                "fuzz target `{name}` panicked on input {} (replay: add it to fuzz/corpus/{name}/): {:?}",
                file.display(),
                String::from_utf8_lossy(&input[..input.len().min(300)])
            );
        }
    }
    eprintln!("fuzz {name}: {executions} executions in {:.1}s, no crash (SANDFLOW_FUZZ_SEED={seed})", started.elapsed().as_secs_f64());
}

#[test]
fn fuzz_workflow_files() {
    fuzz("workflow");
}

#[test]
fn fuzz_templates() {
    fuzz("template");
}

#[test]
fn fuzz_conditions() {
    fuzz("condition");
}

#[test]
fn fuzz_paths() {
    fuzz("path");
}

#[test]
fn fuzz_set_values() {
    fuzz("set");
}

#[test]
fn fuzz_component_bytes() {
    fuzz("component");
}

#[test]
fn every_fuzz_target_has_a_test_and_a_cargo_fuzz_target() {
    for (name, _) in sandflow::fuzzing::TARGETS {
        let source = std::fs::read_to_string(root().join("tests/e2e/fuzz.rs")).unwrap();
        assert!(source.contains(&format!("fuzz(\"{name}\")")), "no test runs fuzz target {name}");
        assert!(root().join(format!("fuzz/fuzz_targets/{name}.rs")).exists(), "no cargo-fuzz target for {name}");
    }
}
