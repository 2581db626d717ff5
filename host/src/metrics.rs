//! Metrics in the Prometheus text exposition format (version 0.0.4), for
//! `sandflow serve`'s `/metrics` (what the run store holds) and `sandflow
//! worker --metrics` (what the worker did). Plain data in, text out.

use std::fmt::Write as _;

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds (seconds) of step duration histograms' buckets.
pub const DURATION_BUCKETS: [f64; 14] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// How a metric family behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (`_total`).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations in buckets (`_bucket`, `_count`, `_sum`).
    Histogram,
}

/// A histogram's state: how many observations fell at or under each
/// bound of [`DURATION_BUCKETS`] (cumulative), all of them, and their sum.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// Observations at or under each bound, cumulative.
    pub buckets: [u64; DURATION_BUCKETS.len()],
    /// All observations.
    pub count: u64,
    /// Their sum.
    pub sum: f64,
}

impl Histogram {
    /// Counts one observation of `seconds`.
    pub fn observe(&mut self, seconds: f64) {
        for (bucket, bound) in self.buckets.iter_mut().zip(DURATION_BUCKETS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }
}

/// One sample's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A counter's or a gauge's value.
    Number(f64),
    /// A histogram's buckets, count and sum.
    Histogram(Histogram),
}

/// A metric family: its samples, each with its labels.
#[derive(Debug, Clone)]
pub struct Family {
    /// Its name (`sandflow_runs_total`).
    pub name: &'static str,
    /// Its `# HELP` text.
    pub help: &'static str,
    /// Its `# TYPE`.
    pub kind: Kind,
    /// Each sample's labels (name, value) and value.
    pub samples: Vec<(Vec<(&'static str, String)>, Value)>,
}

impl Family {
    /// A family with no samples yet.
    pub fn new(name: &'static str, kind: Kind, help: &'static str) -> Family {
        Family { name, help, kind, samples: Vec::new() }
    }

    /// Adds a sample with `labels`.
    pub fn with(mut self, labels: &[(&'static str, &str)], value: Value) -> Family {
        self.samples.push((labels.iter().map(|(k, v)| (*k, v.to_string())).collect(), value));
        self
    }

    /// Adds a number with `labels`.
    pub fn number(self, labels: &[(&'static str, &str)], n: impl Into<f64>) -> Family {
        self.with(labels, Value::Number(n.into()))
    }
}

/// The text of `families`: `# HELP`, `# TYPE`, then each sample.
pub fn render(families: &[Family]) -> String {
    let mut out = String::new();
    for family in families {
        let kind = match family.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let _ = writeln!(out, "# HELP {} {}", family.name, family.help.replace('\\', "\\\\").replace('\n', "\\n"));
        let _ = writeln!(out, "# TYPE {} {kind}", family.name);
        for (labels, value) in &family.samples {
            match value {
                Value::Number(n) => line(&mut out, family.name, "", labels, None, *n),
                Value::Histogram(h) => {
                    for (bound, count) in DURATION_BUCKETS.iter().zip(h.buckets) {
                        line(&mut out, family.name, "_bucket", labels, Some(&number(*bound)), count as f64);
                    }
                    line(&mut out, family.name, "_bucket", labels, Some("+Inf"), h.count as f64);
                    line(&mut out, family.name, "_sum", labels, None, h.sum);
                    line(&mut out, family.name, "_count", labels, None, h.count as f64);
                }
            }
        }
    }
    out
}

fn line(out: &mut String, name: &str, suffix: &str, labels: &[(&'static str, String)], le: Option<&str>, value: f64) {
    out.push_str(name);
    out.push_str(suffix);
    let all: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).chain(le.map(|le| ("le", le))).collect();
    if !all.is_empty() {
        out.push('{');
        for (i, (k, v)) in all.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let v = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
            let _ = write!(out, "{k}=\"{v}\"");
        }
        out.push('}');
    }
    let _ = writeln!(out, " {}", number(value));
}

/// A number as the format writes it (`+Inf`, `NaN`, integers without `.0`).
fn number(n: f64) -> String {
    if n.is_nan() {
        "NaN".into()
    } else if n.is_infinite() {
        if n > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else {
        format!("{n}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_as_the_text_format() {
        let mut h = Histogram::default();
        h.observe(0.003);
        h.observe(0.7);
        let text = render(&[
            Family::new("sandflow_runs", Kind::Gauge, "Runs by state.").number(&[("state", "completed")], 3).number(&[("state", "fa\"il\\ed\n")], 1),
            Family::new("sandflow_step_duration_seconds", Kind::Histogram, "Step durations.").with(&[], Value::Histogram(h)),
        ]);
        assert!(text.starts_with("# HELP sandflow_runs Runs by state.\n# TYPE sandflow_runs gauge\nsandflow_runs{state=\"completed\"} 3\n"), "{text}");
        assert!(text.contains("sandflow_runs{state=\"fa\\\"il\\\\ed\\n\"} 1\n"), "{text}");
        assert!(text.contains("sandflow_step_duration_seconds_bucket{le=\"0.005\"} 1\n"), "{text}");
        assert!(text.contains("sandflow_step_duration_seconds_bucket{le=\"0.5\"} 1\n"), "{text}");
        assert!(text.contains("sandflow_step_duration_seconds_bucket{le=\"1\"} 2\n"), "{text}");
        assert!(text.contains("sandflow_step_duration_seconds_bucket{le=\"+Inf\"} 2\nsandflow_step_duration_seconds_sum 0.703\nsandflow_step_duration_seconds_count 2\n"), "{text}");
    }
}
