//! The `sandflow` binary: the command line over the `sandflow` library.
//! Everything it does is in [`cli::main`]; the library (`src/lib.rs`) has
//! no flags, no HTTP server and no web assets of its own, as wasmtime keeps
//! its CLI apart from its embedding API.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
