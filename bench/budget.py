"""Where a `sandflow run`'s CPU time goes, part by part (issue 12).

`perf record` with DWARF call graphs samples a 2,000-step wide workflow of
`echo` (a few runs, concurrency 1) and a 1-step one (many runs). Each sample
goes to the deepest part of sandflow on its stack (a sample in `malloc`
under a step's instantiation is the step's), and each part's share is scaled
to the run's CPU time measured by `perf stat`. Run by `bench/budget.sh`.
"""

import argparse
import collections
import os
import re
import subprocess

from wide import write as write_wide

p = argparse.ArgumentParser()
p.add_argument("--sandflow", required=True)
p.add_argument("--component", required=True)
p.add_argument("--scratch", required=True)
args = p.parse_args()
sandflow = os.path.abspath(args.sandflow)
component = os.path.abspath(args.component)
state = os.path.join(args.scratch, "state")

# Parts, each with the frames that mark it: a frame that contains one of the
# strings (or, with a leading "=", equals it). The deepest marked frame of a
# stack names the sample's part.
PARTS = [
    ("process start: exec", ["__x64_sys_execve"]),
    ("process start: dynamic loader", ["_dl_start", "_dl_relocate_object", "dl_main", "_dl_sysdep_start"]),
    ("process start: arguments (clap)", ["clap_builder::", "clap::"]),
    ("threads: start and exit", ["__do_sys_clone3", "stack_overflow::imp", "__malloc_arena_thread_freeres"]),
    ("parse + plan the workflow", ["workflow::load", "exec::prepare::parse_file", "Parsed::read", "plan::Plan::new", "workflow::yaml", "workflow::parse"]),
    ("make the sandbox (engine, linker)", ["=sandflow::sandbox::Sandbox::new", "cli::new_sandbox_for"]),
    ("load the component (artifact cache)", ["prepare::load_component", "StepRunner>::load", "Sandbox::load_bytes"]),
    ("open the store", ["SqliteStore::open_file", "store::open"]),
    ("step: instantiate + call + drop (the floor's work)", ["Sandbox::in_fresh_store", "Sandbox as sandflow::exec::runner::StepRunner>::run", "wasmtime_internal_fiber", "wasm["]),
    ("step: around the sandbox (attempts, input)", ["exec::attempts", "exec::execute", "exec::run_step", "exec::prepare::resolve"]),
    ("dispatcher (decide, settle, emit events)", ["exec::dispatch", "exec::Book::"]),
    ("run output (build, print)", ["core::run_output", "print_end", "run::finish"]),
    ("close the store (checkpoint)", ["sqlite3Close", "drop_in_place<rusqlite::Connection>", "sqlite3WalClose"]),
    ("store: fsync (what makes a run durable)", ["__x64_sys_fsync"]),
    ("tear down the sandbox", ["drop_in_place<sandflow::sandbox::Sandbox>", "drop_in_place<wasmtime::engine"]),
    ("process exit", ["do_exit", "exit_mmap", "__GI_exit", "_exit"]),
]
# Stacks with none of the frames above.
WRITER = ["sqlite3", "rusqlite", "__libc_pwrite", "humantime", "BlockingTask"]
LEAVES = ["malloc", "free", "memmove", "memcmp", "memset", "unlink_chunk", "exc_page_fault", "realloc"]


def marks(frame, pattern):
    return frame == pattern[1:] if pattern.startswith("=") else pattern in frame


def part(frames):
    """The part of a stack, its frames from the root to the leaf."""
    found = None
    for f in frames:
        for name, patterns in PARTS:
            if any(marks(f, pat) for pat in patterns):
                found = name
    if found:
        return found
    joined = ";".join(frames)
    # The store's writer is a blocking task; its deep SQLite stacks are
    # often cut short by the unwinder.
    if any(w in joined for w in WRITER):
        return "store writer (SQLite, a thread of its own)"
    if len(frames) <= 3 and frames and any(leaf in frames[-1] for leaf in LEAVES):
        return "allocator and copies (callers lost by the unwinder)"
    if "tokio::" in joined:
        return "tokio (scheduling, parking)"
    return "kernel and other"


def stacks(data, comms):
    """Folded stacks (root first) of the samples of `comms` in `data`."""
    text = subprocess.run(
        ["perf", "script", "-i", data, "--no-inline", "--comm", ",".join(comms), "-F", "comm,ip,sym"],
        check=True, capture_output=True, text=True, stdin=subprocess.DEVNULL,
    ).stdout
    out, frames = [], None
    for line in text.splitlines():
        if not line.strip():
            if frames is not None:
                out.append(frames[::-1])
            frames = None
        elif not line.startswith("\t"):
            frames = []
        elif frames is not None:
            fields = line.strip().split(None, 1)
            frames.append(re.sub(r"\+0x[0-9a-f]+$", "", fields[1] if len(fields) > 1 else "?"))
    if frames is not None:
        out.append(frames[::-1])
    return out


def cpu_ms(cmd, runs):
    """Mean CPU time (task-clock) of `cmd` over `runs` runs, in ms."""
    err = subprocess.run(["perf", "stat", "-x,", "-e", "task-clock", "-r", str(runs)] + cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True).stderr
    return float(next(line for line in err.splitlines() if "task-clock" in line).split(",")[0])


def workflow(n):
    return write_wide(args.scratch, component, n)


def budget(title, path, runs, steps):
    cmd = [sandflow, "--state-dir", state, "run", "-q", "--concurrency", "1", path]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)  # the component compiled and cached
    cpu = cpu_ms(cmd, runs)
    data = os.path.join(args.scratch, "perf.data")
    loop = " ".join(f"{arg!r}" for arg in cmd)
    subprocess.run(["perf", "record", "-q", "-F", "15000", "-g", "--call-graph", "dwarf,16384", "-o", data, "--", "sh", "-c", f"for i in $(seq {runs}); do {loop} >/dev/null; done"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples = stacks(data, [os.path.basename(sandflow), "tokio-rt-worker", "sandflow-epoch"])
    counts = collections.Counter(part(s) for s in samples)
    total = sum(counts.values())
    unit = "µs per step" if steps > 1 else "ms"
    print(f"\n{title}: {cpu:.1f} ms of CPU per run (perf stat, {runs} runs), {total:,} samples\n")
    print(f"| part | share | {unit} |")
    print("| --- | ---: | ---: |")
    for name, n in counts.most_common():
        share = n / total
        value = cpu * share * 1000 / steps if steps > 1 else cpu * share
        print(f"| {name} | {100 * share:.1f}% | {value:.2f} |")


budget("`sandflow run` of 2,000 `echo` steps, concurrency 1", workflow(2000), 4, 2000)
budget("`sandflow run` of 1 `echo` step", workflow(1), 40, 1)
