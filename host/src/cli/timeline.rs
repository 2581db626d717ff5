//! `runs show ID --timeline`: a text Gantt chart of a run's steps, each a
//! bar from its start to its end on one time axis.

use sandflow::store::RunRecord;
use std::time::{Duration, SystemTime};

/// Columns of the time axis.
const WIDTH: usize = 48;

fn time(text: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(text.trim_end_matches('Z')).ok()
}

/// The chart; steps in the order the store lists them (a running step's
/// bar goes from its attempt's start to now; a step that has not started
/// has none).
pub(crate) fn render(run: &RunRecord) -> String {
    let Some(start) = time(&run.started_at) else { return format!("run {}: its start time `{}` cannot be read\n", run.id, run.started_at) };
    // Each ended step: its start (its end less its duration) and end.
    let spans: Vec<Option<(Duration, Duration)>> = run
        .steps
        .iter()
        .map(|s| {
            if s.state == "running" {
                let from = time(s.started_at.as_deref()?)?.duration_since(start).unwrap_or_default();
                return Some((from, SystemTime::now().duration_since(start).unwrap_or_default()));
            }
            let end = time(s.finished_at.as_deref()?)?.duration_since(start).unwrap_or_default();
            let took = Duration::from_secs_f64(s.duration_ms.max(0.0) / 1000.0);
            Some((end.saturating_sub(took), end))
        })
        .collect();
    let run_end = run.finished_at.as_deref().and_then(time).and_then(|t| t.duration_since(start).ok());
    let total = spans.iter().flatten().map(|(_, e)| *e).chain(run_end).max().unwrap_or_default().max(Duration::from_millis(1));
    let name_width = run.steps.iter().map(|s| s.step.chars().count()).max().unwrap_or(4).max(4);
    let column = |t: Duration| ((t.as_secs_f64() / total.as_secs_f64()) * WIDTH as f64).floor().min((WIDTH - 1) as f64) as usize;
    let mut out = format!("run {} ({}, attempt {}): {}\n", run.id, run.status, run.attempt, super::render::duration(total));
    let scale = format!("0{:>w$}", super::render::duration(total), w = WIDTH - 1);
    out.push_str(&format!("  {:<name_width$} |{scale}|\n", "step"));
    for (s, span) in run.steps.iter().zip(&spans) {
        let mut bar = vec![' '; WIDTH];
        let mark = match s.state.as_str() {
            "succeeded" => '█',
            "failed" => '▒',
            "cancelled" => '░',
            _ => '·',
        };
        if let Some((from, to)) = span {
            let (a, b) = (column(*from), column(*to));
            for c in &mut bar[a..=b.max(a)] {
                *c = mark;
            }
        }
        let took = match span {
            Some((from, to)) if s.state == "running" => super::render::duration(to.saturating_sub(*from)),
            Some(_) => super::render::duration(Duration::from_secs_f64(s.duration_ms.max(0.0) / 1000.0)),
            None => String::new(),
        };
        out.push_str(&format!("  {:<name_width$} |{}| {} {took}\n", s.step, bar.into_iter().collect::<String>(), s.state));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandflow::store::StepRecord;

    fn step(id: &str, state: &str, finished: &str, ms: f64) -> StepRecord {
        StepRecord {
            step: id.into(),
            state: state.into(),
            attempts: 1,
            items: None,
            finished_at: Some(finished.into()),
            duration_ms: ms,
            fuel_used: 0,
            error_kind: None,
            error_message: None,
            reason: None,
            output: None,
            run_attempt: 1,
            input: None,
            started_at: None,
            worker: None,
            wake_at: None,
            wait_kind: None,
        }
    }

    #[test]
    fn bars_sit_where_each_step_ran() {
        let run = RunRecord {
            namespace: "default".into(),
            id: "r1".into(),
            workflow: "w".into(),
            file: "w.yaml".into(),
            sha256: String::new(),
            input: serde_json::json!({}),
            status: "failed".into(),
            attempt: 1,
            started_at: "2026-11-26T10:00:00.000Z".into(),
            finished_at: Some("2026-11-26T10:00:04.000Z".into()),
            output: None,
            error: None,
            targets: Vec::new(),
            trigger: None,
            steps: vec![
                step("fetch", "succeeded", "2026-11-26T10:00:02.000Z", 2000.0),
                step("parse", "failed", "2026-11-26T10:00:04.000Z", 2000.0),
                step("after", "skipped", "2026-11-26T10:00:04.000Z", 0.0),
            ],
        };
        let chart = render(&run);
        let lines: Vec<&str> = chart.lines().collect();
        assert_eq!(lines[0], "run r1 (failed, attempt 1): 4.00s");
        let bar = |line: &str| line.split('|').nth(1).unwrap().to_string();
        assert_eq!(bar(lines[2]), format!("{}{}", "█".repeat(25), " ".repeat(23)), "{chart}");
        assert_eq!(bar(lines[3]), format!("{}{}", " ".repeat(24), "▒".repeat(24)), "{chart}");
        assert_eq!(bar(lines[4]), format!("{}·", " ".repeat(47)), "{chart}");
        assert!(lines[3].ends_with("| failed 2.00s"), "{chart}");
    }
}
