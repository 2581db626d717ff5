//! Hostile: makes the host hold ever more through its imports, which the
//! memory cap and fuel do not see. Input `{ "bomb": WHAT }`:
//!
//! - `blobs`: puts distinct 8 MiB blobs in a loop;
//! - `state`: sets 512 KiB values under ever-new keys;
//! - `log`: `{ "lines": N }` log lines, empty and 4 KiB ones alternately,
//!   then succeeds (the log is capped, never a failure);
//! - `handles`: creates pollables and never drops them;
//! - `all`: blobs, state and log lines in one loop.
//!
//! Every error a host import returns is ignored, as a careless or hostile
//! guest would. Expected: kind `quota` for all but `log`, long before the
//! deadline; `log` succeeds with its log capped.
use sandflow_sdk::{Error, Step, blobs, log, state};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
struct Input {
    bomb: String,
    lines: Option<u64>,
}

/// A buffer whose first 8 bytes are `n`, so each blob is distinct.
fn distinct(buf: &mut [u8], n: u64) {
    buf[..8].copy_from_slice(&n.to_le_bytes());
}

struct HostBomb;

impl Step for HostBomb {
    type Input = Input;
    type Output = Value;
    fn run(input: Input) -> Result<Value, Error> {
        let mut blob = vec![0x5a; 8 << 20];
        let value = "x".repeat(512 << 10);
        let mut n: u64 = 0;
        match input.bomb.as_str() {
            "blobs" => loop {
                n += 1;
                distinct(&mut blob, n);
                let _ = blobs::put(&blob);
            },
            "state" => loop {
                n += 1;
                let _ = state::set(&format!("key-{n}"), &value);
            },
            "log" => {
                let big = "y".repeat(4096);
                for i in 0..input.lines.unwrap_or(1_000_000) {
                    log::info(if i % 2 == 0 { "" } else { big.as_str() });
                }
                Ok(json!({ "logged": input.lines }))
            }
            "handles" => {
                let mut held = Vec::new();
                loop {
                    held.push(wasi::clocks::monotonic_clock::subscribe_duration(1_000_000_000));
                }
            }
            "all" => loop {
                n += 1;
                distinct(&mut blob, n);
                let _ = blobs::put(&blob);
                let _ = state::set(&format!("key-{n}"), &value);
                log::warn("");
            },
            other => Err(Error::permanent(format!("unknown bomb `{other}`"))),
        }
    }
}

sandflow_sdk::export_step!(HostBomb);
