//! Secret values never leave a run in clear: every string of every event
//! (log lines, errors, outputs), the report's errors, and what the CLI
//! prints have them replaced by `***`.
//!
//! A step's output is recorded masked too, so a resume cannot read the
//! values back from the store. Instead the masking of an output is
//! described by [`SecretSpans`] (where each `***` is and which secret it
//! stood for, never the value), recorded beside it; [`unmask`] puts the
//! current values back, so a resumed run gets exactly what an uninterrupted
//! one would.

use super::event::{Event, EventSink, SinkError};
use crate::failure::StepFailure;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What a secret value is replaced with.
pub const MASK: &str = "***";

/// Replaces secret values with `***`.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    /// (value, name), longest value first, so a secret containing another
    /// is masked whole.
    values: Vec<(String, String)>,
}

/// Where secrets were masked in a value: enough to put them back, nothing
/// that reveals them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretSpans {
    /// Each string that had a secret masked.
    pub strings: Vec<MaskedString>,
    /// A secret was masked inside an object key: the value cannot be put
    /// back exactly (masked keys may collide), so a resume runs the step again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub in_keys: bool,
}

impl SecretSpans {
    /// The JSON text the run store keeps.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("spans serialize")
    }
}

/// One masked string of a value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaskedString {
    /// Its JSON Pointer (RFC 6901) in the masked value.
    pub at: String,
    /// Each `***` in the masked string: its byte offset, and the name of
    /// the secret it stands for.
    pub spans: Vec<(usize, String)>,
}

impl Redactor {
    /// Masks the values of `secrets` (empty values are not secrets).
    pub fn new(secrets: &BTreeMap<String, String>) -> Self {
        let mut values: Vec<(String, String)> =
            secrets.iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| (v.clone(), k.clone())).collect();
        values.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.cmp(b)));
        values.dedup_by(|a, b| a.0 == b.0);
        Redactor { values }
    }

    /// Whether there is nothing to mask.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// `s` with each secret value replaced by `***`.
    pub fn text(&self, s: &str) -> String {
        self.text_spans(s).0
    }

    /// `s` masked, and where each mask is (byte offset in the masked text,
    /// secret name).
    fn text_spans(&self, s: &str) -> (String, Vec<(usize, String)>) {
        if !self.values.iter().any(|(v, _)| s.contains(v.as_str())) {
            return (s.to_string(), Vec::new());
        }
        let mut out = String::with_capacity(s.len());
        let mut spans = Vec::new();
        let mut rest = s;
        while let Some(c) = rest.chars().next() {
            match self.values.iter().find(|(v, _)| rest.starts_with(v.as_str())) {
                Some((v, name)) => {
                    spans.push((out.len(), name.clone()));
                    out.push_str(MASK);
                    rest = &rest[v.len()..];
                }
                None => {
                    out.push(c);
                    rest = &rest[c.len_utf8()..];
                }
            }
        }
        (out, spans)
    }

    /// `v` masked; `v` itself when there are no secrets to mask.
    pub fn value<'a>(&self, v: &'a Value) -> std::borrow::Cow<'a, Value> {
        match self.is_empty() {
            true => std::borrow::Cow::Borrowed(v),
            false => std::borrow::Cow::Owned(self.value_spans(v).0),
        }
    }

    /// `v` masked, and where (`None` if nothing was).
    pub fn value_spans(&self, v: &Value) -> (Value, Option<SecretSpans>) {
        if self.is_empty() {
            return (v.clone(), None);
        }
        let mut spans = SecretSpans::default();
        let masked = self.mask_at(v, &mut String::new(), &mut spans);
        let any = !spans.strings.is_empty() || spans.in_keys;
        (masked, any.then_some(spans))
    }

    fn mask_at(&self, v: &Value, at: &mut String, spans: &mut SecretSpans) -> Value {
        match v {
            Value::String(s) => {
                let (text, found) = self.text_spans(s);
                if !found.is_empty() {
                    spans.strings.push(MaskedString { at: at.clone(), spans: found });
                }
                Value::String(text)
            }
            Value::Array(a) => Value::Array(
                a.iter()
                    .enumerate()
                    .map(|(i, x)| {
                        let len = at.len();
                        at.push_str(&format!("/{i}"));
                        let masked = self.mask_at(x, at, spans);
                        at.truncate(len);
                        masked
                    })
                    .collect(),
            ),
            Value::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, x)| {
                        let key = self.text(k);
                        spans.in_keys |= key != *k;
                        let len = at.len();
                        at.push('/');
                        at.push_str(&key.replace('~', "~0").replace('/', "~1"));
                        let masked = self.mask_at(x, at, spans);
                        at.truncate(len);
                        (key, masked)
                    })
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    /// `f` with its message masked.
    pub fn failure(&self, f: &StepFailure) -> StepFailure {
        StepFailure { message: self.text(&f.message), ..f.clone() }
    }

    /// `e` with every text it carries masked (log lines, errors, outputs, inputs).
    pub fn event(&self, e: &Event) -> Event {
        let mut e = e.clone();
        match &mut e {
            Event::RunStarted { .. } | Event::StepStarted { .. } | Event::StepRestored { .. } => {}
            Event::StepRetrying { error, .. } => *error = self.failure(error),
            Event::StepFinished { error, reason, input, output, output_secrets, log, .. } => {
                *error = error.as_ref().map(|f| self.failure(f));
                *reason = reason.as_deref().map(|r| self.text(r));
                *input = input.as_ref().map(|v| std::sync::Arc::new(self.value(v).into_owned()));
                if let Some(v) = output {
                    let (masked, spans) = self.value_spans(v);
                    *output = Some(std::sync::Arc::new(masked));
                    *output_secrets = spans;
                }
                for line in &mut log.lines {
                    line.text = self.text(&line.text);
                }
            }
            Event::StepWarning { message, .. } => *message = self.text(message),
            Event::StepLogLine { line, .. } => line.text = self.text(&line.text),
            Event::StepWaiting { input, .. } => *input = input.as_ref().map(|v| std::sync::Arc::new(self.value(v).into_owned())),
            Event::RunFinished { output, error, .. } => {
                *output = output.as_ref().map(|v| std::sync::Arc::new(self.value(v).into_owned()));
                *error = error.as_deref().map(|m| self.text(m));
            }
        }
        e
    }
}

/// Puts the current secret values back into a masked value. `None` when it
/// cannot be done exactly (a secret in a key, a secret no longer set, or
/// spans that do not fit the value): the step must run again instead.
pub fn unmask(masked: &Value, spans: &SecretSpans, secrets: &BTreeMap<String, String>) -> Option<Value> {
    if spans.in_keys {
        return None;
    }
    let mut value = masked.clone();
    for s in &spans.strings {
        let Some(Value::String(text)) = value.pointer_mut(&s.at) else { return None };
        let mut out = String::with_capacity(text.len());
        let mut from = 0;
        for (at, name) in &s.spans {
            if *at < from || text.get(*at..*at + MASK.len()) != Some(MASK) {
                return None;
            }
            out.push_str(&text[from..*at]);
            out.push_str(secrets.get(name)?);
            from = at + MASK.len();
        }
        out.push_str(&text[from..]);
        *text = out;
    }
    Some(value)
}

/// Passes events on with secrets masked.
pub(crate) struct RedactingSink {
    pub(crate) inner: Arc<dyn EventSink>,
    pub(crate) redactor: Redactor,
}

#[async_trait::async_trait]
impl EventSink for RedactingSink {
    fn emit(&self, event: &Event) {
        self.inner.emit(&self.redactor.event(event));
    }

    async fn barrier(&self) -> Result<(), SinkError> {
        self.inner.barrier().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_masked_value_is_put_back_exactly_with_the_current_secrets() {
        let secrets = BTreeMap::from([("TOKEN".to_string(), "s3cr3t".to_string()), ("USER".to_string(), "ada".to_string())]);
        let r = Redactor::new(&secrets);
        let original = json!({"token": "s3cr3t", "list": [1, "x ada y s3cr3t ***"], "a/b": {"c": "ada"}, "plain": "***"});
        let (masked, spans) = r.value_spans(&original);
        assert_eq!(masked, json!({"token": "***", "list": [1, "x *** y *** ***"], "a/b": {"c": "***"}, "plain": "***"}));
        let spans = spans.unwrap();
        assert!(!serde_json::to_string(&spans).unwrap().contains("s3cr3t"), "spans never hold a value");
        assert_eq!(unmask(&masked, &spans, &secrets), Some(original.clone()));
        let rotated = BTreeMap::from([("TOKEN".to_string(), "new".to_string()), ("USER".to_string(), "ada".to_string())]);
        assert_eq!(unmask(&masked, &spans, &rotated).unwrap()["token"], "new", "the current value is put back");
        assert_eq!(unmask(&masked, &spans, &BTreeMap::new()), None, "a secret no longer set: run the step again");
        assert_eq!(r.value_spans(&json!({"plain": 1})).1, None);
        let (masked, spans) = r.value_spans(&json!({"s3cr3t": 1}));
        assert_eq!(unmask(&masked, &spans.unwrap(), &secrets), None, "a secret in a key cannot be put back");
    }

    #[test]
    fn every_occurrence_is_masked_longest_first() {
        let r = Redactor::new(&BTreeMap::from([
            ("A".to_string(), "hunter2".to_string()),
            ("B".to_string(), "hunter2-extra".to_string()),
            ("EMPTY".to_string(), String::new()),
        ]));
        assert_eq!(r.text("pw=hunter2 and hunter2-extra!"), "pw=*** and ***!");
        assert_eq!(*r.value(&json!({"k": ["x hunter2"], "hunter2": 1})), json!({"k": ["x ***"], "***": 1}));
        assert!(Redactor::new(&BTreeMap::new()).is_empty());
    }

    #[test]
    fn a_line_a_running_step_writes_is_masked_as_it_is_told() {
        let r = Redactor::new(&BTreeMap::from([("TOKEN".to_string(), "s3cr3t".to_string())]));
        let line = crate::sandbox::LogLine { source: crate::sandbox::LogSource::Stdout, text: "using s3cr3t now".into() };
        let told = Event::StepLogLine { run_id: "r".into(), step: "s".into(), attempt: 1, item: None, seq: 0, line };
        let Event::StepLogLine { line, .. } = r.event(&told) else { panic!("the same event") };
        assert_eq!(line.text, "using *** now");
    }
}
