//! The `sandflow` binary: the command line over the `sandflow` library.
//! Everything it does is in [`cli::main`]; the library (`src/lib.rs`) has
//! no flags, no HTTP server and no web assets of its own, as wasmtime keeps
//! its CLI apart from its embedding API.

mod cli;

/// mimalloc, not glibc's malloc: a run allocates and frees small JSON values,
/// events and instances at every step, and the store's writer frees on its
/// own thread what the dispatcher allocated. A 2,000-step run is about 12%
/// faster per step (BENCHMARKS.md, "The binary's allocator"). The library
/// sets no allocator: a program embedding it keeps its own.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
