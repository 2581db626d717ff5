//! The `sandflow` binary: everything happens in [`sandflow::cli::main`].

fn main() -> std::process::ExitCode {
    sandflow::cli::main()
}
