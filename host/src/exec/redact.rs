//! Secret values never leave a run in clear: every string of every event
//! (log lines, errors, outputs), the report's errors, and what the CLI
//! prints have them replaced by `***`.

use super::event::{Event, EventSink, SinkError};
use crate::failure::StepFailure;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Replaces secret values with `***`.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    /// Longest first, so a secret containing another is masked whole.
    values: Vec<String>,
}

impl Redactor {
    pub fn new(secrets: &BTreeMap<String, String>) -> Self {
        let mut values: Vec<String> = secrets.values().filter(|v| !v.is_empty()).cloned().collect();
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        Redactor { values }
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    pub fn text(&self, s: &str) -> String {
        let mut out = s.to_string();
        for v in &self.values {
            if out.contains(v.as_str()) {
                out = out.replace(v.as_str(), "***");
            }
        }
        out
    }

    pub fn value(&self, v: &Value) -> Value {
        match v {
            Value::String(s) => Value::String(self.text(s)),
            Value::Array(a) => Value::Array(a.iter().map(|x| self.value(x)).collect()),
            Value::Object(m) => Value::Object(m.iter().map(|(k, x)| (self.text(k), self.value(x))).collect()),
            other => other.clone(),
        }
    }

    pub fn failure(&self, f: &StepFailure) -> StepFailure {
        StepFailure { message: self.text(&f.message), ..f.clone() }
    }

    pub fn event(&self, e: &Event) -> Event {
        let mut e = e.clone();
        match &mut e {
            Event::RunStarted { .. } | Event::StepStarted { .. } | Event::StepRestored { .. } => {}
            Event::StepRetrying { error, .. } => *error = self.failure(error),
            Event::StepFinished { error, reason, output, log, .. } => {
                *error = error.as_ref().map(|f| self.failure(f));
                *reason = reason.as_deref().map(|r| self.text(r));
                *output = output.as_ref().map(|v| self.value(v));
                for line in &mut log.lines {
                    line.text = self.text(&line.text);
                }
            }
            Event::StepWarning { message, .. } => *message = self.text(message),
            Event::RunFinished { output, error, .. } => {
                *output = output.as_ref().map(|v| self.value(v));
                *error = error.as_deref().map(|m| self.text(m));
            }
        }
        e
    }
}

/// Passes events on with secrets masked.
pub(crate) struct RedactingSink {
    pub(crate) inner: Arc<dyn EventSink>,
    pub(crate) redactor: Redactor,
}

impl EventSink for RedactingSink {
    fn emit(&self, event: &Event) {
        self.inner.emit(&self.redactor.event(event));
    }

    fn barrier(&self) -> Result<(), SinkError> {
        self.inner.barrier()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_occurrence_is_masked_longest_first() {
        let r = Redactor::new(&BTreeMap::from([
            ("A".to_string(), "hunter2".to_string()),
            ("B".to_string(), "hunter2-extra".to_string()),
            ("EMPTY".to_string(), String::new()),
        ]));
        assert_eq!(r.text("pw=hunter2 and hunter2-extra!"), "pw=*** and ***!");
        assert_eq!(r.value(&json!({"k": ["x hunter2"], "hunter2": 1})), json!({"k": ["x ***"], "***": 1}));
        assert!(Redactor::new(&BTreeMap::new()).is_empty());
    }
}
