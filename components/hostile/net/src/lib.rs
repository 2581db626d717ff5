//! Hostile: opens a TCP connection through `wasi:sockets`. The host links
//! sockets (CPython imports them) but denies every socket, connection and
//! name lookup. Expected: the connect fails ("Permission denied"), so the
//! step fails with its own error, kind `component`.
use sandflow_sdk::{Error, Step};
use serde_json::{Value, json};

struct Net;

impl Step for Net {
    type Input = Value;
    type Output = Value;
    fn run(_: Value) -> Result<Value, Error> {
        match std::net::TcpStream::connect("127.0.0.1:9") {
            Ok(_) => Ok(json!({ "connected": true })),
            Err(e) => Err(Error::permanent(format!("connect failed: {e}"))),
        }
    }
}

sandflow_sdk::export_step!(Net);
