//! Event sinks for the terminal: JSON lines (`--json`), plain lines when
//! stderr is not a terminal, and a live view of the steps that redraws in
//! place when it is.

use super::render::say;
use super::render;
use sandflow::exec::core::WaitKind;
use sandflow::exec::{Event, EventSink, StepState};
use serde_json::{Value, json};
use std::io::Write;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use super::Output;
use std::time::Duration;

/// `--json`: every event as one JSON line on stderr, with `ts`; each log
/// line of a finished step as a `log` event (once, as the step ends: the
/// lines a running step writes are for the run store's followers).
pub(crate) struct JsonLines;

impl EventSink for JsonLines {
    fn emit(&self, event: &Event) {
        if let Event::StepLogLine { .. } = event {
            return;
        }
        let mut fields = serde_json::to_value(event).expect("events serialize");
        let name = fields["event"].as_str().unwrap_or_default().to_string();
        if let Value::Object(m) = &mut fields {
            m.remove("event");
            if name == "step_started" {
                m.insert("state".into(), json!("running"));
            }
        }
        if let Event::StepFinished { run_id, step, log, .. } = event {
            for line in &log.lines {
                render::event("log", json!({ "run_id": run_id, "step": step, "source": line.source, "text": line.text }));
            }
        }
        render::event(&name, fields);
    }
}

fn symbol(state: StepState) -> &'static str {
    match state {
        StepState::Pending => "·",
        StepState::Running => "▸",
        StepState::Waiting => "⏸",
        StepState::Succeeded => "✓",
        StepState::Failed => "✗",
        StepState::Skipped => "-",
        StepState::Cancelled => "⊘",
    }
}

/// One line for a finished step.
fn finished_line(step: &str, state: StepState, duration: Duration, fuel: u64, error: Option<&sandflow::failure::StepFailure>, reason: Option<&str>, cached: bool) -> String {
    match (state, error) {
        // A result reused from the cache says whose (its reason).
        (StepState::Succeeded, _) if cached => {
            format!("{} {step} succeeded, {}", symbol(state), reason.unwrap_or_default())
        }
        (StepState::Succeeded, _) => format!("{} {step} succeeded in {} (fuel {fuel})", symbol(state), render::duration(duration)),
        (_, Some(e)) => format!("{} {step} {} ({}) after {}: {}", symbol(state), state.as_str(), e.kind, render::duration(duration), e.message),
        (_, None) => format!("{} {step} {}: {}", symbol(state), state.as_str(), reason.unwrap_or("")),
    }
}

/// One line for a step that waits: [`waits_for`] after its name.
pub(crate) fn waiting_line(run_id: &str, step: &str, kind: WaitKind, until: Option<&str>) -> String {
    format!("⏸ {step} {}", waits_for(run_id, step, kind, until))
}

/// What a waiting step waits for, until when, and how a person ends the
/// wait when one does.
pub(crate) fn waits_for(run_id: &str, step: &str, kind: WaitKind, until: Option<&str>) -> String {
    let by = until.map(|u| format!(" until {u}")).unwrap_or_default();
    let timeout = until.map(|u| format!(" (timeout {u})")).unwrap_or_default();
    match kind {
        WaitKind::Wait => format!("waits{by}, then runs"),
        WaitKind::Sleep => format!("sleeps{by}"),
        WaitKind::Signal => format!("waits for a signal{timeout}: sandflow signal {run_id} {step} --data JSON"),
        WaitKind::Approval => format!("waits for approval{timeout}: sandflow signal {run_id} {step} --approve (or --reject)"),
    }
}

/// The last line of a run: `run ID completed in 1.2s`, with the error if any.
fn run_finished_line(run_id: &str, state: sandflow::exec::RunState, duration: Duration, error: Option<&str>) -> String {
    let line = format!("run {run_id} {} in {}", state.as_str(), render::duration(duration));
    match error {
        Some(e) => format!("{line}: {e}"),
        None => line,
    }
}

/// Plain lines, one per event that matters; for logs and CI.
pub(crate) struct PlainLines {
    pub verbose: bool,
}

impl EventSink for PlainLines {
    fn emit(&self, event: &Event) {
        let line = match event {
            // `-v` prints a step's log as it ends, with its result.
            Event::StepLogLine { .. } => return,
            Event::RunStarted { run_id, workflow, steps } => format!("run {run_id}: {workflow} ({steps} steps)"),
            Event::StepStarted { step, attempt, item, worker, .. } => {
                // A step on a worker (`runs follow`, a run on PostgreSQL)
                // is told as it starts, and where: it may run for long.
                if !self.verbose && *attempt == 1 && worker.is_none() {
                    return;
                }
                let item = item.map(|i| format!(" item {i}")).unwrap_or_default();
                let on = worker.as_ref().map(|w| format!(" on {w}")).unwrap_or_default();
                format!("  ▸ {step}{item} attempt {attempt} started{on}")
            }
            Event::StepRetrying { step, attempt, item, error, delay, .. } => {
                let item = item.map(|i| format!(" item {i}")).unwrap_or_default();
                format!("  ↻ {step}{item} attempt {attempt} failed ({}): {}; retrying in {}", error.kind, error.message, render::duration(*delay))
            }
            Event::StepFinished { step, state, duration, fuel_used, error, reason, log, cached, .. } => {
                let mut out = format!("  {}", finished_line(step, *state, *duration, *fuel_used, error.as_ref(), reason.as_deref(), *cached));
                if self.verbose {
                    for l in &log.lines {
                        out.push_str(&format!("\n      {} | {}", l.source.as_str(), l.text));
                    }
                }
                out
            }
            Event::StepWarning { message, .. } => format!("  warning: {message}"),
            Event::StepRestored { step, .. } => format!("  ↺ {step} restored from the earlier attempt"),
            Event::StepWaiting { run_id, step, kind, until, .. } => format!("  {}", waiting_line(run_id, step, *kind, until.as_deref())),
            Event::RunFinished { run_id, state, duration, error, .. } => run_finished_line(run_id, *state, *duration, error.as_deref()),
        };
        say!("{line}");
    }
}

/// A table of steps redrawn in place on a terminal: running steps with
/// their elapsed time, finished ones with duration and fuel, and a summary.
pub(crate) struct LiveView {
    state: std::sync::Arc<Mutex<Live>>,
}

struct Live {
    header: String,
    /// Every step seen so far: id, state, display line.
    rows: Vec<(String, StepState, String)>,
    /// When each running step started, for its elapsed time.
    started: std::collections::HashMap<String, std::time::Instant>,
    drawn: usize,
    /// Set while a run is going: the ticker redraws elapsed times.
    active: bool,
}

/// Most step rows shown; older finished ones scroll into the summary.
const MAX_ROWS: usize = 15;

impl LiveView {
    pub(crate) fn new() -> Self {
        let state = std::sync::Arc::new(Mutex::new(Live {
            header: String::new(),
            rows: Vec::new(),
            started: Default::default(),
            drawn: 0,
            active: false,
        }));
        // Redraw twice a second so running steps show their elapsed time.
        let weak = std::sync::Arc::downgrade(&state);
        let _ = std::thread::Builder::new().name("sandflow-live".into()).spawn(move || {
            while let Some(state) = weak.upgrade() {
                {
                    let mut live = super::lock(&state);
                    if live.active {
                        live.redraw(None);
                    }
                }
                drop(state);
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        LiveView { state }
    }
}

impl Live {
    fn set(&mut self, step: &str, state: StepState, line: String) {
        match self.rows.iter_mut().find(|(s, _, _)| s == step) {
            Some(row) => (row.1, row.2) = (state, line),
            None => self.rows.push((step.to_string(), state, line)),
        }
    }

    fn redraw(&mut self, footer: Option<String>) {
        // The whole frame is built first and written at once: a kill never
        // leaves half a frame, and the terminal never shows one.
        let mut frame = String::new();
        if self.drawn > 0 {
            frame.push_str(&format!("\x1b[{}A", self.drawn));
        }
        let is_running = |st: &StepState| *st == StepState::Running;
        let running: Vec<String> = self
            .rows
            .iter()
            .filter(|r| is_running(&r.1))
            .map(|r| match self.started.get(&r.0) {
                Some(t) => format!("{} {}", r.2, render::duration(t.elapsed())),
                None => r.2.clone(),
            })
            .collect();
        let done: Vec<&String> = self.rows.iter().filter(|r| !is_running(&r.1)).map(|r| &r.2).collect();
        let room = MAX_ROWS.saturating_sub(running.len());
        let shown = done[done.len().saturating_sub(room)..].iter().copied().chain(running.iter());
        let mut lines = vec![self.header.clone()];
        lines.extend(shown.map(|l| format!("  {l}")));
        let count = |st: StepState| self.rows.iter().filter(|r| r.1 == st).count();
        let waiting = match count(StepState::Waiting) {
            0 => String::new(),
            w => format!("{w} waiting · "),
        };
        let (r, s, f, k, c) = (
            count(StepState::Running),
            count(StepState::Succeeded),
            count(StepState::Failed),
            count(StepState::Skipped),
            count(StepState::Cancelled),
        );
        lines.push(format!("  {r} running · {waiting}{s} succeeded · {f} failed · {k} skipped · {c} cancelled"));
        if let Some(f) = footer {
            lines.push(f);
        }
        for l in &lines {
            frame.push_str("\x1b[2K");
            // What steps said (their failures) is shown, never obeyed.
            let l = render::printable(l);
            frame.push_str(&l);
            frame.push('\n');
        }
        // Lines left over from a taller previous frame.
        for _ in lines.len()..self.drawn {
            frame.push_str("\x1b[2K\n");
        }
        self.drawn = lines.len().max(self.drawn);
        let _ = std::io::stderr().lock().write_all(frame.as_bytes());
    }
}

impl EventSink for LiveView {
    fn emit(&self, event: &Event) {
        let mut live = super::lock(&self.state);
        match event {
            Event::RunStarted { run_id, workflow, steps } => {
                live.header = format!("run {run_id}: {workflow} ({steps} steps)");
                live.active = true;
                live.redraw(None);
            }
            Event::StepStarted { step, attempt, item, .. } => {
                let item = item.map(|i| format!(" item {i}")).unwrap_or_default();
                let again = if *attempt > 1 { format!(" (attempt {attempt})") } else { String::new() };
                live.started.entry(step.clone()).or_insert_with(std::time::Instant::now);
                live.set(step, StepState::Running, format!("▸ {step}{item} running{again}"));
                live.redraw(None);
            }
            Event::StepRetrying { step, attempt, error, delay, .. } => {
                live.set(step, StepState::Running, format!("▸ {step} attempt {attempt} failed ({}); retrying in {}", error.kind, render::duration(*delay)));
                live.redraw(None);
            }
            Event::StepFinished { step, state, duration, fuel_used, error, reason, cached, .. } => {
                live.set(step, *state, finished_line(step, *state, *duration, *fuel_used, error.as_ref(), reason.as_deref(), *cached));
                live.redraw(None);
            }
            Event::StepRestored { step, .. } => {
                live.set(step, StepState::Succeeded, format!("↺ {step} restored from the earlier attempt"));
                live.redraw(None);
            }
            Event::StepWaiting { run_id, step, kind, until, .. } => {
                live.set(step, StepState::Waiting, waiting_line(run_id, step, *kind, until.as_deref()));
                live.redraw(None);
            }
            Event::StepLogLine { .. } => {}
            Event::StepWarning { message, .. } => {
                live.redraw(None);
                drop(live);
                say!("warning: {message}");
                super::lock(&self.state).drawn = 0;
            }
            Event::RunFinished { run_id, state, duration, error, .. } => {
                let footer = run_finished_line(run_id, *state, *duration, error.as_deref());
                live.active = false;
                live.redraw(Some(footer));
            }
        }
    }
}

/// How a run's progress is shown: JSON lines (`--json`), nothing (`-q`),
/// a live view on a terminal, plain lines otherwise.
pub(crate) fn sink(out: &Output) -> Arc<dyn EventSink> {
    if out.json {
        Arc::new(JsonLines)
    } else if out.quiet {
        Arc::new(sandflow::exec::NoEvents)
    } else if std::io::stderr().is_terminal() && out.verbose == 0 {
        Arc::new(LiveView::new())
    } else {
        Arc::new(PlainLines { verbose: out.verbose > 0 })
    }
}
