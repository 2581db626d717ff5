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
//!
//! With [`super::QuickCompile`], a sandbox also starts a child that outlives
//! it: a component compiled quickly with Winch for this process is compiled
//! with Cranelift in the background, at the lowest CPU priority, into the
//! artifact cache, so the processes after this one run optimized code
//! ([`optimize_in_background`]).

use super::LoadErrorKind;
use super::engine::Compiler;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How a sandbox compiles components it does not trust: in a child process
/// (`program` with `args`, then the options of a [`ChildCompile`] as
/// [`ChildCompile::args`] writes them), within `time` and `memory`.
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

/// What a compiling child process is asked to do: the options of its
/// command line (the CLI's hidden `compile-component`). It reads the
/// component on stdin.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChildCompile {
    /// Compile for an engine that initializes memory copy-on-write (as the
    /// sandbox's does): `--memory-init-cow`.
    pub memory_init_cow: bool,
    /// Compile with Winch rather than Cranelift: `--winch`.
    pub winch: bool,
    /// Write the code as an artifact at this path (the artifact cache's
    /// format) instead of to stdout, at the lowest CPU priority: a
    /// background compile. `--into PATH`.
    pub into: Option<PathBuf>,
    /// With `into`: the quickly compiled artifact to delete once the
    /// optimized one is in place. `--replaces PATH`.
    pub replaces: Option<PathBuf>,
}

impl ChildCompile {
    /// Its options as command-line arguments.
    pub fn args(&self) -> Vec<OsString> {
        let mut args = Vec::new();
        if self.memory_init_cow {
            args.push("--memory-init-cow".into());
        }
        if self.winch {
            args.push("--winch".into());
        }
        for (flag, path) in [("--into", &self.into), ("--replaces", &self.replaces)] {
            if let Some(path) = path {
                args.extend([OsString::from(flag), path.clone().into_os_string()]);
            }
        }
        args
    }

    fn compiler(&self) -> Compiler {
        if self.winch { Compiler::Winch } else { Compiler::Cranelift }
    }
}

/// The child's exit code for a component that is not valid: its stderr
/// says why.
const INVALID: i32 = 3;

/// Compiles `bytes` in a child process under `limits`; returns the
/// compiled code (for [`wasmtime::component::Component::deserialize`]).
pub(crate) fn in_child(limits: &CompileLimits, options: &ChildCompile, bytes: &[u8]) -> Result<Vec<u8>, LoadErrorKind> {
    let mut command = Command::new(&limits.program);
    command.args(&limits.args).args(options.args());
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

/// The child's side of a sandbox's compile in a child process: reads a
/// component from stdin, compiles it for an engine like the sandbox's (as
/// `options` say) and writes the compiled code to stdout, or as an
/// artifact to `options.into`. Returns the exit code: 0 compiled, 3 not a
/// valid component (said on stderr), 1 anything else.
pub fn compile_child(options: &ChildCompile) -> u8 {
    if options.into.is_some() {
        // A background compile yields the CPU to everything else, and
        // gives up after BACKGROUND_CPU of it (no one waits for it).
        let cpu = libc::rlimit { rlim_cur: BACKGROUND_CPU.as_secs() as libc::rlim_t, rlim_max: BACKGROUND_CPU.as_secs() as libc::rlim_t };
        // SAFETY: setpriority and setrlimit on this process with plain values.
        #[allow(unsafe_code)]
        unsafe {
            libc::setpriority(libc::PRIO_PROCESS, 0, 19);
            libc::setrlimit(libc::RLIMIT_CPU, &cpu);
        }
        // Where the kernel schedules each session as a group
        // (`sched_autogroup_enabled`), a process's priority only ranks it
        // within its session's group, and groups share the CPU as equals:
        // a compile left alone in its session would take half of a busy
        // machine. Its session's group goes last too (`sched(7)`).
        let _ = std::fs::write("/proc/self/autogroup", "19");
    }
    let code = compile_stdin(options);
    if let Some(into) = &options.into {
        // Done or failed, the next process may try again.
        let _ = std::fs::remove_file(pending_path(into));
    }
    code
}

fn compile_stdin(options: &ChildCompile) -> u8 {
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut bytes) {
        eprintln!("cannot read the component: {e}");
        return 1;
    }
    let engine = match super::engine::compiling_engine(options.memory_init_cow, options.compiler()) {
        Ok(engine) => engine,
        Err(e) => {
            eprintln!("cannot set up the compiler: {e:#}");
            return 1;
        }
    };
    let code = match engine.precompile_component(&bytes) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{e:#}");
            return INVALID as u8;
        }
    };
    let written = match &options.into {
        None => std::io::stdout().lock().write_all(&code),
        Some(into) => super::cache::write_artifact(into, code).map(|()| {
            if let Some(quick) = &options.replaces {
                let _ = std::fs::remove_file(quick);
            }
        }),
    };
    match written {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("cannot hand back the compiled code: {e}");
            1
        }
    }
}

/// The file that says a background compile into `artifact` is under way.
fn pending_path(artifact: &Path) -> PathBuf {
    let mut name = artifact.file_name().unwrap_or_default().to_os_string();
    name.push(".pending");
    artifact.with_file_name(name)
}

/// The CPU time a background compile may take (Cranelift compiles an
/// 18 MB Python component in 8-16 s of wall time on two cores).
const BACKGROUND_CPU: Duration = Duration::from_secs(10 * 60);

/// A background compile older than this is taken to have died (killed
/// with the machine, say): the next process starts another.
const PENDING_STALE: Duration = Duration::from_secs(15 * 60);

/// Starts a detached child process (`program` with `args`) that compiles
/// `bytes` with Cranelift into the artifact `into`, then deletes the
/// quickly compiled artifact `replaces`; unless one is under way already.
/// It outlives this process (its own session: a Ctrl-C or the terminal's
/// closing does not reach it) and runs at the lowest CPU priority.
/// Failing to start it is not an error: the next process tries again.
pub(crate) fn optimize_in_background(program: &Path, args: &[OsString], memory_init_cow: bool, bytes: &[u8], into: &Path, replaces: &Path) {
    let pending = pending_path(into);
    let under_way = std::fs::metadata(&pending).and_then(|m| m.modified()).is_ok_and(|at| at.elapsed().is_ok_and(|age| age < PENDING_STALE));
    if under_way || into.exists() {
        return;
    }
    if let Some(dir) = into.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Err(e) = std::fs::write(&pending, std::process::id().to_string()) {
        tracing::warn!("cannot start compiling {} in the background: {e}", into.display());
        return;
    }
    let options = ChildCompile { memory_init_cow, winch: false, into: Some(into.to_path_buf()), replaces: Some(replaces.to_path_buf()) };
    let mut command = Command::new(program);
    command.args(args).args(options.args()).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::null());
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: setsid is async-signal-safe and touches no memory.
        #[allow(unsafe_code)]
        unsafe {
            command.pre_exec(|| {
                // A session of its own: no terminal's Ctrl-C or hang-up
                // reaches it, and (where the kernel groups a session's
                // processes for scheduling) a group of its own, which the
                // child then puts last ([`compile_child`]).
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            tracing::warn!("cannot start compiling {} in the background ({}): {e}", into.display(), program.display());
            let _ = std::fs::remove_file(&pending);
            return;
        }
    };
    // The child reads all of stdin before compiling: this returns as soon
    // as it has the bytes (a few milliseconds for 18 MB).
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(bytes);
    }
    // Reaped when it ends, if this process is still there.
    std::thread::spawn(move || child.wait());
}
