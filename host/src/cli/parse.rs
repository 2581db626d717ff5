//! Reading the command line. clap's derive builds every subcommand's
//! arguments, and copies the global flags into each, to parse one: about
//! half a millisecond of a `sandflow call`'s few (BENCHMARKS.md, "Where a
//! `sandflow call` spends its time"). The commands that scripts, CI and a
//! plugin author's loop run over and over are parsed by a command holding
//! the global flags and the one subcommand named. Anything else (another
//! subcommand, `--help`, `--version`, a flag this scan does not know, any
//! error) goes through the whole command, so what a user sees never
//! depends on which path parsed: the lean path only ever returns what the
//! whole command would (pinned by the tests below).

use super::{Cli, GlobalArgs, call, graph, run, runs, signal, test_cmd, validate, worker};
use clap::{Args, Parser};
use std::ffi::OsString;

/// Parses `args` (the first is the program name) as the whole command would.
pub(super) fn parse(args: Vec<OsString>) -> Result<Cli, clap::Error> {
    match lean(&args) {
        Some(cli) => Ok(cli),
        None => Cli::try_parse_from(args),
    }
}

/// The subcommands parsed without building the others, each as the derive
/// names it, with the function that gives it its arguments.
const LEAN: [(&str, fn(clap::Command) -> clap::Command); 10] = [
    ("run", run::RunArgs::augment_args),
    ("call", call::CallArgs::augment_args),
    ("validate", validate::ValidateArgs::augment_args),
    ("test", test_cmd::TestArgs::augment_args),
    ("graph", graph::GraphArgs::augment_args),
    ("submit", worker::SubmitArgs::augment_args),
    ("cancel", runs::CancelArgs::augment_args),
    ("signal", signal::SignalArgs::augment_args),
    ("resume", runs::ResumeArgs::augment_args),
    ("retry", runs::RetryArgs::augment_args),
];

/// The subcommand `name` of [`LEAN`], built alone.
fn lean_subcommand(name: &str) -> Option<clap::Command> {
    LEAN.iter().find(|(lean, _)| *lean == name).map(|&(name, augment)| augment(clap::Command::new(name)))
}

/// `args` parsed by the global flags and the subcommand they name, when
/// that subcommand is one of [`LEAN`] and the parse succeeds
/// with no help or version asked for.
fn lean(args: &[OsString]) -> Option<Cli> {
    let top = GlobalArgs::augment_args(clap::Command::new("sandflow"));
    let name = subcommand_named(&top, args)?;
    if args.iter().any(|a| a == "--help" || a == "-h") {
        return None;
    }
    let mut command = top.subcommand(lean_subcommand(name)?).subcommand_required(true);
    let mut matches = command.try_get_matches_from_mut(args).ok()?;
    <Cli as clap::FromArgMatches>::from_arg_matches_mut(&mut matches).ok()
}

/// The subcommand `args` name: the first argument that is neither a
/// global flag nor a global flag's value. `None` at anything else first
/// (`--version`, `--help`, `--`, a flag that is not global).
fn subcommand_named<'a>(top: &clap::Command, args: &'a [OsString]) -> Option<&'a str> {
    let mut rest = args.iter().skip(1);
    while let Some(arg) = rest.next() {
        let arg = arg.to_str()?;
        if let Some(long) = arg.strip_prefix("--") {
            let (name, value) = match long.split_once('=') {
                Some((name, _)) => (name, true),
                None => (long, false),
            };
            let flag = top.get_arguments().find(|a| a.get_long() == Some(name))?;
            if flag.get_action().takes_values() && !value {
                rest.next()?;
            }
        } else if let Some(shorts) = arg.strip_prefix('-') {
            // Only clusters of global switches (`-q`, `-vv`).
            let switch = |c: char| top.get_arguments().any(|a| a.get_short() == Some(c) && !a.get_action().takes_values());
            if shorts.is_empty() || !shorts.chars().all(switch) {
                return None;
            }
        } else {
            return Some(arg);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    /// Each lean subcommand has the arguments the whole command gives it,
    /// and the same settings on each.
    #[test]
    fn lean_subcommands_are_the_whole_commands_own() {
        let mut whole = Cli::command();
        whole.build();
        for (name, _) in LEAN {
            let mut lean = GlobalArgs::augment_args(clap::Command::new("sandflow")).subcommand(lean_subcommand(name).unwrap());
            lean.build();
            // `--help` differs (its text says whether there is a long help)
            // and is never parsed by the lean command.
            let describe = |c: &clap::Command| {
                let mut args: Vec<String> = c.get_arguments().filter(|a| a.get_id() != "help").map(|a| format!("{a:?}")).collect();
                args.sort();
                (args, format!("{:?}", c.get_groups().collect::<Vec<_>>()))
            };
            let lean_sub = lean.find_subcommand(name).unwrap();
            let whole_sub = whole.find_subcommand(name).unwrap_or_else(|| panic!("`{name}` is not a subcommand"));
            let (lean_args, whole_args) = (describe(lean_sub), describe(whole_sub));
            let differ: Vec<_> = lean_args.0.iter().filter(|a| !whole_args.0.contains(a)).collect();
            assert!(differ.is_empty(), "`{name}`: the lean command's {differ:#?}\nthe whole's: {:#?}", whole_args.0.iter().filter(|a| !lean_args.0.contains(a)).collect::<Vec<_>>());
            assert_eq!(lean_args, whole_args, "`{name}`'s arguments");
        }
        // Every subcommand the whole command has that is not lean is parsed by it.
        assert!(lean_subcommand("worker").is_none() && lean_subcommand("runs").is_none());
    }

    /// What the lean path parses is exactly what the whole command parses.
    #[test]
    fn lean_parses_as_the_whole_command_does() {
        let cases: &[&[&str]] = &[
            &["sandflow", "call", "echo.wasm", "--input", "{}"],
            &["sandflow", "-q", "call", "echo.wasm", "--input={\"n\":1}", "--fuel", "10", "--quota", "state_keys=3"],
            &["sandflow", "--state-dir", "/tmp/s", "--json", "run", "wf.yaml", "--set", "a=1", "--var", "b=2"],
            &["sandflow", "run", "wf.yaml", "--state-dir=/tmp/s", "-vv", "--concurrency", "3"],
            &["sandflow", "--store", "sqlite:x.db", "validate", "a.yaml", "b.yaml"],
            &["sandflow", "test", "wf.yaml"],
            &["sandflow", "graph", "--format", "dot", "wf.yaml"],
            &["sandflow", "--server", "http://127.0.0.1:7878", "--token", "t", "submit", "wf.yaml"],
            &["sandflow", "cancel", "01ARZ3NDEKTSV4RRFFQ69G5FAV"],
            &["sandflow", "signal", "01ARZ3NDEKTSV4RRFFQ69G5FAV", "wait", "--approve"],
            &["sandflow", "resume", "01ARZ3NDEKTSV4RRFFQ69G5FAV"],
            &["sandflow", "retry", "01ARZ3NDEKTSV4RRFFQ69G5FAV", "--from", "load"],
        ];
        for case in cases {
            let args = os(case);
            let lean = lean(&args).unwrap_or_else(|| panic!("{case:?} took the whole command's path"));
            let whole = Cli::try_parse_from(&args).unwrap();
            assert_eq!(format!("{lean:?}"), format!("{whole:?}"), "{case:?}");
        }
    }

    /// Help, versions, errors and other subcommands go through the whole
    /// command, so their messages are its own.
    #[test]
    fn the_rest_takes_the_whole_command() {
        let cases: &[&[&str]] = &[
            &["sandflow"],
            &["sandflow", "--version"],
            &["sandflow", "--help"],
            &["sandflow", "call", "--help"],
            &["sandflow", "call", "-h"],
            &["sandflow", "help", "call"],
            &["sandflow", "cal", "echo.wasm"],
            &["sandflow", "call"],
            &["sandflow", "call", "echo.wasm", "--no-such-flag"],
            &["sandflow", "--no-such-flag", "call", "echo.wasm"],
            &["sandflow", "-x", "call", "echo.wasm"],
            &["sandflow", "--state-dir"],
            &["sandflow", "runs", "list"],
            &["sandflow", "worker"],
        ];
        for case in cases {
            assert!(lean(&os(case)).is_none(), "{case:?} took the lean path");
        }
        // And `parse` still reports the whole command's error.
        let error = parse(os(&["sandflow", "call", "echo.wasm", "--fule", "3"])).unwrap_err();
        assert!(error.to_string().contains("--fuel"), "{error}");
    }
}
