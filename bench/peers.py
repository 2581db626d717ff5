"""The measurements of bench/peers.sh (see there), printed as one markdown
table with ratios. Every figure is a median over --rounds rounds."""

import argparse
import collections
import json
import os
import platform
import sys
import statistics
import subprocess
import tempfile
import time
import urllib.request

from wide import write as write_wide

N = 2000

p = argparse.ArgumentParser()
for flag in ["--sandflow", "--wasmtime", "--stepflow", "--component", "--scratch"]:
    p.add_argument(flag, required=True)
p.add_argument("--rounds", type=int, default=5)
args = p.parse_args()
component = os.path.abspath(args.component)
state = tempfile.mkdtemp(dir=args.scratch)


def wall(cmd, **kw):
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    return time.perf_counter() - t


def median(f, rounds=None):
    return statistics.median(f() for _ in range(rounds or args.rounds))


def workflow(n):
    return write_wide(args.scratch, component, n)


# --- sandflow run: per step, concurrency 1 and 2 ---
# And what two cores can give trivial steps with nothing shared: two
# processes of half the steps each at once (concurrency 1, a store each). A
# process at concurrency 1 already keeps more than one core busy (its store
# writes on a thread of their own). Every figure here is taken in turn,
# round after round, so that the machine's drift falls on all alike.
one, wide, half = workflow(1), workflow(N), workflow(N // 2)
sandflow = [args.sandflow, "--state-dir", state]
other_state = tempfile.mkdtemp(dir=args.scratch)
halves = [sandflow + ["run", "-q", "--concurrency", "1", half], [args.sandflow, "--state-dir", other_state, "run", "-q", "--concurrency", "1", half]]
for d in (state, other_state):
    wall([args.sandflow, "--state-dir", d, "run", "-q", one])  # compile and cache the component


def halves_at_once():
    t = time.perf_counter()
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for cmd in halves]
    assert all(p.wait() == 0 for p in procs)
    return time.perf_counter() - t


turns = collections.defaultdict(list)
for _ in range(args.rounds):
    for c in (1, 2):
        turns[("one", c)].append(wall(sandflow + ["run", "-q", "--concurrency", str(c), one]))
        turns[("wide", c)].append(wall(sandflow + ["run", "-q", "--concurrency", str(c), wide]))
    turns["halves"].append(halves_at_once())
t = {k: statistics.median(v) for k, v in turns.items()}
per_step = {c: (t[("wide", c)] - t[("one", c)]) / (N - 1) for c in (1, 2)}
trivial_ceiling = (t[("wide", 1)] - t[("one", 1)]) / (t["halves"] - t[("one", 1)])
startup = median(lambda: wall(sandflow + ["run", "-q", one]), max(args.rounds, 10))

# --- two cores on real work: CPU-bound steps, and what the machine allows ---
# `spin` with {iterations: n} (components/dist/hostile/spin.wasm) burns about
# 1 ms of CPU per step here. The machine's own ceiling: the same component
# in two `wasmtime run` processes at once against one after the other.
spin = os.path.join(os.path.dirname(component), "hostile", "spin.wasm")
BUSY, ITERATIONS = 1000, 750_000
busy = os.path.join(args.scratch, "busy.yaml")
with open(busy, "w") as out:
    out.write(f"name: busy\ncomponents:\n  spin: {{ path: '{spin}' }}\nsteps:\n")
    for i in range(BUSY):
        out.write(f"  - {{ id: s{i}, component: spin, input: {{ iterations: {ITERATIONS} }} }}\n")
    out.write("output: { done: true }\n")
wall(sandflow + ["run", "-q", busy])
t_busy = {c: median(lambda: wall(sandflow + ["run", "-q", "--concurrency", str(c), busy])) for c in (1, 2)}
long_spin = [args.wasmtime, "run", "--invoke", 'run("{\\"iterations\\": 400000000}")', spin]


def pair():
    t = time.perf_counter()
    procs = [subprocess.Popen(long_spin, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
    assert all(p.wait() == 0 for p in procs)
    return time.perf_counter() - t


ceiling = 2 * median(lambda: wall(long_spin), 3) / median(pair, 3)

# --- forEach over 100,000 items: peak memory; the store afterwards ---
big = os.path.join(args.scratch, "foreach.yaml")
with open(big, "w") as out:
    out.write(f"name: foreach\ncomponents:\n  echo: {{ path: '{component}' }}\nsteps:\n")
    out.write("  - { id: each, component: echo, forEach: '{{ inputs.items }}', input: { n: '{{ item }}', i: '{{ index }}' } }\n")
    out.write("output: { done: true }\n")
items = os.path.join(args.scratch, "items.json")
with open(items, "w") as out:
    json.dump({"items": list(range(100_000))}, out)
rss_probe = "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
t = time.perf_counter()
foreach_rss = int(subprocess.run([sys.executable, "-c", rss_probe] + sandflow + ["run", "-q", big, "--input-file", items], check=True, capture_output=True, text=True).stdout) / 1024
foreach_time = time.perf_counter() - t
# A run of 100,000 steps in the store: `runs list` and `runs show` of it.
wide_big = workflow(100_000)
wall(sandflow + ["run", "-q", wide_big])
newest = subprocess.run(sandflow + ["runs", "list", "--limit", "1"], check=True, capture_output=True, text=True).stdout
big_run = newest.splitlines()[1].split()[0]
t_list = median(lambda: wall(sandflow + ["runs", "list"]))
t_show = median(lambda: wall(sandflow + ["runs", "show", big_run]))

# --- the library's floor, from the in-process benchmark ---
floor = float(os.environ["FLOOR_US"]) / 1e6

# --- wasmtime-py: a Python loop, same work per step ---
py_loop = """
import json, sys, time, wasmtime
from wasmtime import component as wc
engine = wasmtime.Engine()
comp = wc.Component.from_file(engine, sys.argv[1])
linker = wc.Linker(engine)
linker.add_wasip2()
linker.define_unknown_imports_as_traps(comp)
def one():
    store = wasmtime.Store(engine)
    store.set_wasi(wasmtime.WasiConfig())
    run = linker.instantiate(store, comp).get_func(store, "run")
    run(store, json.dumps({"n": 1}))
    run.post_return(store)
for _ in range(20):
    one()
n = int(sys.argv[2]); t = time.perf_counter()
for _ in range(n):
    one()
print((time.perf_counter() - t) / n)
"""
py = median(lambda: float(subprocess.run([os.path.join(args.scratch, "venv/bin/python"), "-c", py_loop, component, "500"], check=True, capture_output=True, text=True).stdout))

# --- StepFlow: its server, a wide flow of in-process mock steps ---
config = os.path.join(args.scratch, "stepflow-config.yml")
with open(config, "w") as out:
    out.write(
        "plugins:\n  mock:\n    type: mock\n    components:\n      /echo:\n        input_schema: {}\n        output_schema: {}\n"
        "        behaviors:\n          x: { outcome: success, result: { output: x } }\nroutes:\n  \"/mock\":\n    - plugin: mock\n"
    )
port = 7849
server = subprocess.Popen([args.stepflow, "--port", str(port), "--config", config, "--log-level", "error"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def post(path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1{path}", data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    return json.loads(urllib.request.urlopen(req).read())


try:
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/health")
            break
        except OSError:
            time.sleep(0.1)

    def flow(n):
        steps = [{"id": f"s{i}", "component": "/mock/echo", "input": "x"} for i in range(n)]
        body = {"schema": "https://stepflow.org/schemas/v1/flow.json", "name": f"wide-{n}", "steps": steps, "output": {s["id"]: {"$step": s["id"]} for s in steps}}
        return post("/flows", {"flow": body})["flowId"]

    def run_flow(flow_id):
        t = time.perf_counter()
        r = post("/runs", {"flowId": flow_id, "input": [{}], "wait": True})
        assert r["results"][0]["status"] == 2, r
        return time.perf_counter() - t

    f_one, f_wide = flow(1), flow(N)
    run_flow(f_one), run_flow(f_wide)
    stepflow = (median(lambda: run_flow(f_wide)) - median(lambda: run_flow(f_one))) / (N - 1)
finally:
    server.terminate()

# --- one process per step: sandflow call against wasmtime run --invoke ---
invoke = 'run("{\\"n\\": 1}")'
wall([args.wasmtime, "run", "--invoke", invoke, component])
wall(sandflow + ["call", component, "--input", '{"n": 1}'])
t_wasmtime = median(lambda: wall([args.wasmtime, "run", "--invoke", invoke, component]), max(args.rounds, 10))
t_call = median(lambda: wall(sandflow + ["-q", "call", component, "--input", '{"n": 1}']), max(args.rounds, 10))

# --- a step per language: per call in a 200-item forEach (issue 29) ---
# Each component's step over 200 items at concurrency 1, the compiled
# artifact cached: the step's own duration (instantiate + call per item,
# as the run's `step_finished` event says) over 200. The three take turns.
dist = os.path.dirname(component)
languages = {
    "Python": ("textstats", '{ text: "It works. It really works!", top: 3 }', ", config: { stopwords: [the, a] }"),
    "JavaScript": ("template", '{ template: { $literal: "# {{ t }}" }, data: { t: hi } }', ""),
    "Rust": ("text", "{ op: upper, text: hi }", ""),
}
ITEMS = 200
per_call_files = {}
for lang, (name, step_input, config) in languages.items():
    path = os.path.join(args.scratch, f"per-call-{name}.yaml")
    with open(path, "w") as f:
        f.write(
            f"name: per-call-{name}\ncomponents:\n  c: {{ path: {os.path.join(dist, name + '.wasm')}{config} }}\n"
            f"steps:\n  - id: each\n    component: c\n    concurrency: 1\n    forEach: {list(range(ITEMS))}\n    input: {step_input}\n"
        )
    per_call_files[lang] = path
    wall(sandflow + ["-q", "run", path])  # compile and cache


def per_call(path):
    out = subprocess.run(sandflow + ["-q", "run", "--json", path], check=True, capture_output=True, text=True).stderr
    for line in out.splitlines():
        event = json.loads(line)
        if event.get("event") == "step_finished" and event.get("step") == "each":
            return event["duration_ms"] / 1e3 / ITEMS
    raise SystemExit(f"{path}: no step_finished event")


samples = collections.defaultdict(list)
for _ in range(args.rounds):
    for lang, path in per_call_files.items():
        samples[lang].append(per_call(path))
call_of = {lang: statistics.median(v) for lang, v in samples.items()}

us = lambda s: f"{s * 1e6:.1f} µs"
ms = lambda s: f"{s * 1e3:.1f} ms"
cpu = os.cpu_count()
print(f"# sandflow beside its peers ({platform.machine()}, {cpu} cores, {platform.python_implementation()} {platform.python_version()}; medians of {args.rounds} rounds)\n")
print("| figure | value | ratio | target |")
print("| --- | ---: | ---: | --- |")
print(f"| `sandflow run`, concurrency 1, per step | {us(per_step[1])} | {per_step[1] / floor:.2f}× the floor | ≤ 1.3× |")
print(f"| `sandflow run`, concurrency 2, per step | {us(per_step[2])} | {per_step[1] / per_step[2]:.2f}× faster than 1 | ≥ 1.5× (trivial steps) |")
print(f"| what two cores give trivial steps with nothing shared: two processes of {N // 2:,} steps at once against one of {N:,} (concurrency 1 each) | | {trivial_ceiling:.2f}× | |")
print(f"| instantiate + call in-process (the floor) | {us(floor)} | 1 | |")
print(f"| orchestration per step (`run` at concurrency 1 less the floor) | {us(max(per_step[1] - floor, 0))} | {max(per_step[1] - floor, 0) / stepflow:.1f}× StepFlow's per step | ≤ StepFlow's |")
print(f"| StepFlow 0.13 server, in-process mock steps, per step | {us(stepflow)} | | |")
print(f"| wasmtime-py 48, Python loop, per step | {us(py)} | {py / per_step[1]:.2f}× `sandflow run`'s | ≥ 5× |")
print(f"| `sandflow call` of one step, wall | {ms(t_call)} | {t_call / t_wasmtime:.2f}× `wasmtime run --invoke` | ≤ 0.5× |")
print(f"| `wasmtime run --invoke` 49, wall | {ms(t_wasmtime)} | | |")
print(f"| `sandflow run` of a 1-step workflow, wall (startup) | {ms(startup)} | | ≤ 5 ms |")
print(f"| 1,000 CPU-bound steps (~1 ms each), concurrency 1 | {ms(t_busy[1])} | | |")
print(f"| the same, concurrency 2 | {ms(t_busy[2])} | {t_busy[1] / t_busy[2]:.2f}× faster than 1 | ≥ 1.8× |")
print(f"| the machine's own ceiling: two `wasmtime run` of `spin` at once against one after the other | | {ceiling:.2f}× | |")
print(f"| forEach over 100,000 items of `echo`: peak RSS | {foreach_rss:.0f} MiB | in {foreach_time:.1f} s | ≤ 200 MiB |")
print(f"| `runs list` with a 100,000-step run in the store | {ms(t_list)} | | < 100 ms |")
print(f"| `runs show` of that run | {ms(t_show)} | | < 100 ms |")
print(f"| Python step (`textstats`, componentize-py) per call, {ITEMS}-item forEach | {ms(call_of['Python'])} | {call_of['Python'] / call_of['Rust']:.0f}× the Rust step's | ≤ 1 ms |")
print(f"| JavaScript step (`template`, componentize-js) per call, {ITEMS}-item forEach | {ms(call_of['JavaScript'])} | {call_of['JavaScript'] / call_of['Rust']:.0f}× the Rust step's | ≤ 0.25 ms |")
print(f"| Rust step (`text`) per call, {ITEMS}-item forEach | {us(call_of['Rust'])} | 1 | |")
