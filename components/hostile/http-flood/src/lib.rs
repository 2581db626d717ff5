//! Hostile: sends HTTP requests to `input.url` in a loop, forever, ignoring
//! every answer. Expected: past the per-attempt `http_requests` quota the
//! host refuses further requests and the step fails with kind `quota`.
use sandflow_sdk::{Error, Step};
use serde_json::Value;
use wasip2::http::outgoing_handler;
use wasip2::http::types::{Fields, OutgoingRequest, Scheme};

struct HttpFlood;

impl Step for HttpFlood {
    type Input = Value;
    type Output = Value;
    fn run(input: Value) -> Result<Value, Error> {
        let authority = input["authority"].as_str().unwrap_or("127.0.0.1:9").to_string();
        loop {
            let request = OutgoingRequest::new(Fields::new());
            let _ = request.set_scheme(Some(&Scheme::Http));
            let _ = request.set_authority(Some(&authority));
            let _ = request.set_path_with_query(Some("/"));
            if let Ok(pending) = outgoing_handler::handle(request, None) {
                pending.subscribe().block();
                let _ = pending.get();
            }
        }
    }
}

sandflow_sdk::export_step!(HttpFlood);
