//! Durable waits: `wait:` before a step, and the builtins that only wait
//! (`/builtin/sleep`, `/builtin/signal`, `/builtin/approval`). What their
//! fields mean is said once, here: `validate` checks what a file writes
//! literally, and the run checks what templates give (a bad value fails
//! the step, never a silent wait).

use super::model::Builtin;
use jiff::Timestamp;
use serde_json::Value;

/// The keys of `wait:` and of `/builtin/sleep`'s input: exactly one.
pub const WAIT_KEYS: &[&str] = &["duration", "until"];
/// The keys of `/builtin/signal`'s input.
pub const SIGNAL_KEYS: &[&str] = &["name", "timeout", "schema", "message"];
/// The keys of `/builtin/approval`'s input.
pub const APPROVAL_KEYS: &[&str] = &["message", "approvers", "timeout"];

/// The keys `builtin`'s input may have (none for builtins that do not wait).
pub fn keys(builtin: Builtin) -> Option<&'static [&'static str]> {
    match builtin {
        Builtin::Sleep => Some(WAIT_KEYS),
        Builtin::Signal => Some(SIGNAL_KEYS),
        Builtin::Approval => Some(APPROVAL_KEYS),
        _ => None,
    }
}

/// A length of time: `30s`, `1h30m`, `250ms`, or seconds as a number.
pub fn duration(value: &Value, what: &str) -> Result<std::time::Duration, String> {
    match value {
        Value::String(s) => crate::units::parse_duration(s).map_err(|e| format!("{what}: {e}")),
        Value::Number(n) => n
            .as_f64()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .and_then(|s| std::time::Duration::try_from_secs_f64(s).ok())
            .ok_or_else(|| format!("{what} must be a length of time such as `30s` or `2h`, or seconds (not negative)")),
        _ => Err(format!("{what} must be a length of time such as `30s` or `2h`")),
    }
}

/// An RFC 3339 time with its offset (`2026-12-24T09:00:00+01:00`).
pub fn instant(value: &Value, what: &str) -> Result<Timestamp, String> {
    let text = value.as_str().ok_or_else(|| format!("{what} must be an RFC 3339 time such as `2026-12-24T09:00:00Z`"))?;
    text.parse::<Timestamp>()
        .map_err(|e| format!("{what} `{text}` is not an RFC 3339 time with an offset (such as `2026-12-24T09:00:00Z`): {e}"))
}

/// The instant `d` (given as `what`) after `now`.
pub fn after(now: Timestamp, d: std::time::Duration, what: &str) -> Result<Timestamp, String> {
    let span = jiff::SignedDuration::try_from(d).map_err(|e| format!("{what} is too long: {e}"))?;
    now.checked_add(span).map_err(|e| format!("{what} is too long: {e}"))
}

/// One field of `wait:` (or `/builtin/sleep`'s input), with `now`: a
/// `duration` must read as one; an `until` must be a time not in the past.
pub fn check_wait_field(key: &str, value: &Value, now: Timestamp) -> Result<(), String> {
    match key {
        "duration" => duration(value, "`duration`").map(drop),
        "until" => {
            let at = instant(value, "`until`")?;
            match at < now {
                true => Err(format!("`until` {at} is in the past: the step would never wait")),
                false => Ok(()),
            }
        }
        _ => Ok(()),
    }
}

/// When a timer set at `now` by `spec` (`{duration}` or `{until}`) wakes.
pub fn wake_time(spec: &Value, what: &str, now: Timestamp) -> Result<Timestamp, String> {
    let Some(map) = spec.as_object() else {
        return Err(format!("{what} must be `{{duration: 30s}}` or `{{until: 2026-12-24T09:00:00Z}}`"));
    };
    if let Some(k) = map.keys().find(|k| !WAIT_KEYS.contains(&k.as_str())) {
        return Err(format!("{what} has an unknown key `{k}` (duration or until)"));
    }
    match (map.get("duration"), map.get("until")) {
        (Some(d), None) => {
            let what = format!("{what}'s `duration`");
            after(now, duration(d, &what)?, &what)
        }
        (None, Some(u)) => {
            check_wait_field("until", u, now).map_err(|e| format!("{what}: {e}"))?;
            instant(u, "`until`")
        }
        (Some(_), Some(_)) => Err(format!("{what} has both `duration` and `until`; keep one")),
        (None, None) => Err(format!("{what} needs `duration` or `until`")),
    }
}

/// One field of a signal's or an approval's input.
pub fn check_signal_field(builtin: Builtin, key: &str, value: &Value) -> Result<(), String> {
    let name = builtin.name();
    match key {
        "timeout" => duration(value, "`timeout`").map(drop),
        "name" | "message" if !value.is_string() => Err(format!("/builtin/{name}'s `{key}` must be a string")),
        "schema" => match value.is_object() {
            true => jsonschema::validator_for(value).map(drop).map_err(|e| format!("/builtin/{name}'s `schema` is not a valid JSON Schema: {e}")),
            false => Err(format!("/builtin/{name}'s `schema` must be a JSON Schema (an object)")),
        },
        "approvers" => match value.as_array() {
            Some(list) if list.iter().all(Value::is_string) => Ok(()),
            _ => Err("/builtin/approval's `approvers` must be a list of token names or roles".into()),
        },
        _ => Ok(()),
    }
}

/// The whole input of a builtin that waits, as a run gives it.
pub fn check_input(builtin: Builtin, input: &Value, now: Timestamp) -> Result<(), String> {
    let Some(keys) = keys(builtin) else { return Ok(()) };
    let name = builtin.name();
    let empty = serde_json::Map::new();
    let map = match input {
        Value::Object(m) => m,
        Value::Null => &empty,
        _ => return Err(format!("/builtin/{name}'s input must be an object ({})", keys.join(", "))),
    };
    if let Some(k) = map.keys().find(|k| !keys.contains(&k.as_str())) {
        return Err(format!("/builtin/{name} has no input `{k}` (it takes {})", keys.join(", ")));
    }
    match builtin {
        Builtin::Sleep => wake_time(input, "/builtin/sleep's input", now).map(drop),
        _ => {
            if builtin == Builtin::Approval && !map.contains_key("message") {
                return Err("/builtin/approval needs `message`: what the approver is asked".into());
            }
            map.iter().try_for_each(|(k, v)| check_signal_field(builtin, k, v))
        }
    }
}

/// The data a signal to a waiting `builtin` step (recorded with `input`)
/// gives: a signal step's must match its `schema`, if it has one; an
/// approval's is `{approved: true|false, comment?}`.
pub fn accept(builtin: Builtin, input: &Value, data: Value) -> Result<Value, String> {
    match builtin {
        Builtin::Approval => {
            let ok = data.get("approved").is_some_and(Value::is_boolean)
                && data.as_object().is_some_and(|m| m.keys().all(|k| k == "approved" || k == "comment"))
                && data.get("comment").is_none_or(|c| c.is_string() || c.is_null());
            match ok {
                true => Ok(data),
                false => Err("an approval takes `{\"approved\": true|false, \"comment\": \"...\"}` (use --approve or --reject)".into()),
            }
        }
        _ => {
            let Some(schema) = input.get("schema") else { return Ok(data) };
            let validator = jsonschema::validator_for(schema).map_err(|e| format!("the step's `schema` is not a valid JSON Schema: {e}"))?;
            match crate::sandbox::schema_problems(&validator, &data, 10) {
                None => Ok(data),
                Some(problems) => Err(format!("the data does not match the step's `schema`: {problems}")),
            }
        }
    }
}

/// Whether a caller known by `names` (its token's name and role) may
/// approve an approval step with `input`: anyone when it names no
/// `approvers`.
pub fn may_approve(input: &Value, names: &[&str]) -> bool {
    match input.get("approvers").and_then(Value::as_array) {
        None => true,
        Some(list) => list.iter().filter_map(Value::as_str).any(|a| names.contains(&a)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn wake_times_are_a_duration_from_now_or_a_time_not_past() {
        let now: Timestamp = "2026-12-05T10:00:00Z".parse().unwrap();
        assert_eq!(wake_time(&json!({"duration": "90s"}), "wait", now).unwrap().to_string(), "2026-12-05T10:01:30Z");
        assert_eq!(wake_time(&json!({"duration": 2}), "wait", now).unwrap().to_string(), "2026-12-05T10:00:02Z");
        assert_eq!(wake_time(&json!({"until": "2026-12-05T12:00:00+01:00"}), "wait", now).unwrap().to_string(), "2026-12-05T11:00:00Z");
        let past = wake_time(&json!({"until": "2026-12-05T09:00:00Z"}), "wait", now).unwrap_err();
        assert!(past.contains("is in the past"), "{past}");
        let both = wake_time(&json!({"duration": "1s", "until": "2027-01-01T00:00:00Z"}), "wait", now).unwrap_err();
        assert!(both.contains("keep one"), "{both}");
        let bad = wake_time(&json!({"duration": "soon"}), "wait", now).unwrap_err();
        assert!(bad.contains("`duration`"), "{bad}");
        let zoneless = wake_time(&json!({"until": "2027-01-01T00:00:00"}), "wait", now).unwrap_err();
        assert!(zoneless.contains("with an offset"), "{zoneless}");
    }

    #[test]
    fn signal_and_approval_inputs_are_checked() {
        let now = Timestamp::now();
        assert!(check_input(Builtin::Signal, &json!({"name": "go", "timeout": "1h", "schema": {"type": "object"}}), now).is_ok());
        assert!(check_input(Builtin::Signal, &Value::Null, now).is_ok());
        let schema = check_input(Builtin::Signal, &json!({"schema": {"type": 12}}), now).unwrap_err();
        assert!(schema.contains("not a valid JSON Schema"), "{schema}");
        let message = check_input(Builtin::Approval, &json!({"timeout": "1d"}), now).unwrap_err();
        assert!(message.contains("needs `message`"), "{message}");
        let unknown = check_input(Builtin::Approval, &json!({"message": "ok?", "approver": ["ops"]}), now).unwrap_err();
        assert!(unknown.contains("no input `approver`"), "{unknown}");
    }

    #[test]
    fn signals_are_accepted_by_schema_and_approvals_by_shape_and_approvers() {
        let input = json!({"schema": {"type": "object", "required": ["ok"]}});
        assert_eq!(accept(Builtin::Signal, &input, json!({"ok": 1})).unwrap(), json!({"ok": 1}));
        let bad = accept(Builtin::Signal, &input, json!({"nope": 1})).unwrap_err();
        assert!(bad.contains("does not match the step's `schema`"), "{bad}");
        assert!(accept(Builtin::Approval, &Value::Null, json!({"approved": false, "comment": "no"})).is_ok());
        assert!(accept(Builtin::Approval, &Value::Null, json!({"approved": "yes"})).is_err());
        let gated = json!({"message": "ship?", "approvers": ["alice", "operator"]});
        assert!(may_approve(&gated, &["bob", "operator"]));
        assert!(!may_approve(&gated, &["bob", "viewer"]));
        assert!(may_approve(&json!({"message": "ship?"}), &["anyone"]));
    }
}
