//! Compiling untrusted components in a child process, under limits.
//!
//! Cranelift cannot be interrupted, and how long and how much memory it
//! takes is the component's to choose: a component built to be slow or
//! huge to compile would hold a worker's thread (and its memory) for as
//! long as it likes. With [`CompileLimits`], a [`super::Sandbox`] compiles
//! each component it has not compiled before in a process of its own (the
//! program the limits name, which calls [`compile_child`]): its address
//! space is capped (`RLIMIT_AS`), its CPU time too (a backstop), it dies
//! with its parent, and it is killed at the wall-clock limit. It returns
//! the compiled code on stdout; the sandbox loads it (wasmtime checks that
//! it was compiled for a compatible engine) and caches it as it caches
//! what it compiles itself.

use super::LoadErrorKind;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How a sandbox compiles components it does not trust: in a child process
/// (`program` with `args`, then `--memory-init-cow` when the sandbox's
/// engine initializes memory copy-on-write), within `time` and `memory`.
#[derive(Debug, Clone)]
pub struct CompileLimits {
    /// The program to run (this sandflow binary).
    pub program: PathBuf,
    /// Its arguments, before the component's path.
    pub args: Vec<OsString>,
    /// Wall-clock time a compile may take.
    pub time: Duration,
    /// Address space the compiling process may map, in bytes.
    pub memory: u64,
}

/// The child's exit code for a component that is not valid: its stderr
/// says why.
const INVALID: i32 = 3;

/// Compiles `bytes` in a child process under `limits`; returns the
/// compiled code (for [`wasmtime::component::Component::deserialize`]).
pub(crate) fn in_child(limits: &CompileLimits, memory_init_cow: bool, bytes: &[u8]) -> Result<Vec<u8>, LoadErrorKind> {
    let mut command = Command::new(&limits.program);
    command.args(&limits.args);
    if memory_init_cow {
        command.arg("--memory-init-cow");
    }
    command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let (memory, cpu) = (limits.memory, limits.time.as_secs().saturating_mul(crate::exec::cpu_count() as u64).saturating_add(1));
    #[allow(unsafe_code)]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: between fork and exec the closure only calls
        // async-signal-safe functions (setrlimit, prctl) on plain values.
        unsafe {
            command.pre_exec(move || {
                let cap = |resource, value: u64| {
                    let limit = libc::rlimit { rlim_cur: value as libc::rlim_t, rlim_max: value as libc::rlim_t };
                    match libc::setrlimit(resource, &limit) {
                        0 => Ok(()),
                        _ => Err(std::io::Error::last_os_error()),
                    }
                };
                cap(libc::RLIMIT_AS, memory)?;
                cap(libc::RLIMIT_CPU, cpu)?;
                // A compile outlives no worker.
                #[cfg(target_os = "linux")]
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
    }
    let mut child = command.spawn().map_err(|e| LoadErrorKind::Invalid(format!("cannot start the compiling process {}: {e}", limits.program.display())))?;
    let (mut stdin, mut stdout, mut stderr) = (child.stdin.take().expect("piped"), child.stdout.take().expect("piped"), child.stderr.take().expect("piped"));
    std::thread::scope(|scope| {
        // A child that dies early closes its stdin: the write then fails,
        // and its exit says why.
        scope.spawn(move || {
            let _ = stdin.write_all(bytes);
        });
        let code = scope.spawn(move || {
            let mut code = Vec::new();
            let _ = stdout.read_to_end(&mut code);
            code
        });
        let said = scope.spawn(move || {
            let mut said = Vec::new();
            let _ = (&mut stderr).take(64 << 10).read_to_end(&mut said);
            String::from_utf8_lossy(&said).trim().to_string()
        });
        let deadline = Instant::now() + limits.time;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => return Err(LoadErrorKind::Invalid(format!("waiting for the compiling process failed: {e}"))),
            }
        };
        let (code, said) = (code.join().unwrap_or_default(), said.join().unwrap_or_default());
        let took_too_long = || {
            LoadErrorKind::CompileLimit(format!(
                "compiling it took longer than {} (the limit this worker sets: --compile-time); a component that takes this long to compile is refused",
                crate::units::format_duration(limits.time)
            ))
        };
        let Some(status) = status else { return Err(took_too_long()) };
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(0), _) if !code.is_empty() => Ok(code),
            (Some(INVALID), _) => Err(LoadErrorKind::Invalid(said)),
            (_, Some(libc::SIGXCPU)) => Err(took_too_long()),
            _ if said.contains("memory allocation") || said.contains("out of memory") || status.signal() == Some(libc::SIGABRT) || status.signal() == Some(libc::SIGSEGV) => {
                Err(LoadErrorKind::CompileLimit(format!(
                    "compiling it needed more than {} of memory (the limit this worker sets: --compile-memory); a component that needs this much to compile is refused",
                    crate::units::format_size(limits.memory)
                )))
            }
            _ => Err(LoadErrorKind::Invalid(format!("the compiling process failed ({status}): {said}"))),
        }
    })
}

/// The child's side of a sandbox's compile in a child process: reads a component from stdin,
/// compiles it for an engine like the sandbox's (`memory_init_cow` as its
/// is) and writes the compiled code to stdout. Returns the exit code: 0
/// compiled, 3 not a valid component (said on stderr), 1 anything else.
pub fn compile_child(memory_init_cow: bool) -> u8 {
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut bytes) {
        eprintln!("cannot read the component: {e}");
        return 1;
    }
    let engine = match super::engine::compiling_engine(memory_init_cow) {
        Ok(engine) => engine,
        Err(e) => {
            eprintln!("cannot set up the compiler: {e:#}");
            return 1;
        }
    };
    match engine.precompile_component(&bytes) {
        Ok(code) => match std::io::stdout().lock().write_all(&code) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("cannot hand back the compiled code: {e}");
                1
            }
        },
        Err(e) => {
            eprintln!("{e:#}");
            INVALID as u8
        }
    }
}
