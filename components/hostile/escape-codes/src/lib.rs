//! Hostile: writes terminal control sequences where a person reads them —
//! stdout, stderr, the `log` import and its error message: clear the screen,
//! move the cursor, set the clipboard (OSC 52), ring the bell, overwrite the
//! line (`\r`), and a C1 control (U+009B, CSI on some terminals). Expected:
//! the step fails (kind `component`) and the host shows each control
//! character escaped (`\x1b`), never sends it to a terminal.
use sandflow_sdk::{Error, Step, log};
use serde_json::Value;

struct EscapeCodes;

impl Step for EscapeCodes {
    type Input = Value;
    type Output = Value;
    fn run(_: Value) -> Result<Value, Error> {
        println!("\x1b[2J\x1b[1;1Hscreen cleared\x07");
        eprintln!("\x1b]52;c;cHduZWQ=\x07clipboard set");
        log::warn("\roverwritten \u{9b}31m line");
        Err(Error::permanent("\x1b[32m✓ all good\x1b[0m"))
    }
}

sandflow_sdk::export_step!(EscapeCodes);
