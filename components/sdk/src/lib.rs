//! Write a sandflow workflow step in Rust.
//!
//! A step takes one JSON input and returns one JSON output. With this crate it
//! is a type that implements [`Step`] over your own serde types, and one line
//! that exports it:
//!
//! ```ignore
//! use sandflow_sdk::{Error, Step};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Deserialize)]
//! struct Input { text: String }
//!
//! #[derive(Serialize)]
//! struct Output { text: String }
//!
//! struct Shout;
//!
//! impl Step for Shout {
//!     type Input = Input;
//!     type Output = Output;
//!     fn run(input: Input) -> Result<Output, Error> {
//!         Ok(Output { text: input.text.to_uppercase() })
//!     }
//! }
//!
//! sandflow_sdk::export_step!(Shout);
//! ```
//!
//! Build it with `cargo build --target wasm32-wasip2 --release` and run it
//! with `sandflow call target/wasm32-wasip2/release/NAME.wasm --input '{"text":"hi"}'`.
//!
//! The host gives the step nothing it was not granted. What it can use:
//! [`log`] lines, run-scoped key-value [`state`], content-addressed [`blobs`],
//! its static [`config`], clocks, random, and `println!`/`eprintln!` (captured
//! into the step's log).

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Re-exported so steps can build JSON (and JSON Schemas) without another dependency.
pub use serde_json;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "described-step",
        pub_export_macro: true,
        export_macro_name: "__export_step_bindings",
        default_bindings_module: "sandflow_sdk::bindings",
    });
}

use bindings::sandflow::step as wit;

/// A step failure: a message for a person, and whether a retry may help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    message: String,
    retryable: bool,
}

impl Error {
    /// A failure that a retry may fix (a busy or flaky resource). The
    /// workflow's `retry` policy decides whether the host tries again.
    pub fn new(message: impl std::fmt::Display) -> Self {
        Error { message: message.to_string(), retryable: true }
    }

    /// A failure no retry can fix, such as bad input: the host does not retry.
    pub fn permanent(message: impl std::fmt::Display) -> Self {
        Error { message: message.to_string(), retryable: false }
    }

    /// The message given when the error was made.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the host may retry the step after this error.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// What a step says about itself beyond its crate name and version. Every
/// field is optional; schemas are checked by the host when present.
#[derive(Debug, Clone, Default)]
pub struct Describe {
    /// One or two sentences on what the step does.
    pub description: String,
    /// JSON Schema every input must satisfy, checked before the step runs.
    pub input_schema: Option<serde_json::Value>,
    /// JSON Schema every output satisfies, checked after the step returns.
    pub output_schema: Option<serde_json::Value>,
}

/// A workflow step: one input in, one output (or an [`Error`]) out.
pub trait Step {
    /// The step's input, deserialized from the JSON the workflow passes. A
    /// value that does not fit fails the step with a permanent error.
    type Input: DeserializeOwned;
    /// The step's output, serialized to JSON for the steps that follow.
    type Output: Serialize;

    /// Runs the step once. Each call gets a fresh instance: nothing in
    /// memory survives from one call to the next (use [`state`] for that).
    fn run(input: Self::Input) -> Result<Self::Output, Error>;

    /// Describes the step. The name and version come from the crate.
    fn describe() -> Describe {
        Describe::default()
    }
}

/// Exports a [`Step`] implementation as the component's `run` and `describe`.
/// Use it once per component crate.
#[macro_export]
macro_rules! export_step {
    ($step:ty) => {
        #[doc(hidden)]
        pub struct __SandflowExport;

        impl $crate::bindings::Guest for __SandflowExport {
            fn run(
                input: ::std::string::String,
            ) -> ::std::result::Result<
                ::std::string::String,
                $crate::bindings::sandflow::step::types::StepError,
            > {
                $crate::__private::run::<$step>(&input)
            }

            fn describe() -> $crate::bindings::sandflow::step::types::Metadata {
                $crate::__private::describe::<$step>(
                    env!("CARGO_PKG_NAME"),
                    env!("CARGO_PKG_VERSION"),
                )
            }
        }

        $crate::bindings::__export_step_bindings!(__SandflowExport);
    };
}

#[doc(hidden)]
pub mod __private {
    use super::*;

    pub fn run<S: Step>(input: &str) -> Result<String, wit::types::StepError> {
        let input: S::Input = serde_json::from_str(input)
            .map_err(|e| to_wit(Error::permanent(format!("invalid input: {e}"))))?;
        let output = S::run(input).map_err(to_wit)?;
        serde_json::to_string(&output)
            .map_err(|e| to_wit(Error::permanent(format!("could not serialize the output: {e}"))))
    }

    pub fn describe<S: Step>(name: &str, version: &str) -> wit::types::Metadata {
        let d = S::describe();
        wit::types::Metadata {
            name: name.to_string(),
            version: version.to_string(),
            description: d.description,
            input_schema: d.input_schema.map(|s| s.to_string()),
            output_schema: d.output_schema.map(|s| s.to_string()),
        }
    }

    fn to_wit(e: Error) -> wit::types::StepError {
        wit::types::StepError { message: e.message, retryable: e.retryable }
    }
}

/// Lines for the step's log (kept with the run; see `sandflow runs logs`).
pub mod log {
    use super::wit::log::{Level, log};

    /// Logs at trace level.
    pub fn trace(message: impl AsRef<str>) {
        log(Level::Trace, message.as_ref());
    }
    /// Logs at debug level.
    pub fn debug(message: impl AsRef<str>) {
        log(Level::Debug, message.as_ref());
    }
    /// Logs at info level.
    pub fn info(message: impl AsRef<str>) {
        log(Level::Info, message.as_ref());
    }
    /// Logs at warn level.
    pub fn warn(message: impl AsRef<str>) {
        log(Level::Warn, message.as_ref());
    }
    /// Logs at error level.
    pub fn error(message: impl AsRef<str>) {
        log(Level::Error, message.as_ref());
    }
}

/// Key-value state shared by the steps of one workflow run.
pub mod state {
    use super::*;

    /// The value stored under `key`, if any.
    pub fn get<T: DeserializeOwned>(key: &str) -> Result<Option<T>, Error> {
        match wit::state::get(key) {
            None => Ok(None),
            Some(json) => serde_json::from_str(&json)
                .map(Some)
                .map_err(|e| Error::permanent(format!("state key `{key}` holds another type: {e}"))),
        }
    }

    /// Stores `value` under `key` for the steps that run after this one.
    pub fn set<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<(), Error> {
        let json = serde_json::to_string(value)
            .map_err(|e| Error::permanent(format!("could not serialize state `{key}`: {e}")))?;
        wit::state::set(key, &json).map_err(Error::permanent)
    }
}

/// Content-addressed blobs: large or binary data, passed between steps by id.
pub mod blobs {
    use super::*;

    /// Stores `data` and returns its id (the hex SHA-256 of the bytes).
    pub fn put(data: &[u8]) -> Result<String, Error> {
        wit::blobs::put(data).map_err(Error::permanent)
    }

    /// The bytes stored under `id`, if any.
    pub fn get(id: &str) -> Option<Vec<u8>> {
        wit::blobs::get(id)
    }
}

/// The component's static configuration from the workflow file, as `T`.
/// `T` is deserialized from `null` when no configuration was given, so an
/// `Option` or a struct with `#[serde(default)]` fields works well.
pub fn config<T: DeserializeOwned>() -> Result<T, Error> {
    let json = wit::config::get();
    serde_json::from_str(&json).map_err(|e| Error::permanent(format!("invalid config: {e}")))
}
