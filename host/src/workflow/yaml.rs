//! The workflow file as a tree of YAML nodes that remember where they were
//! written, and the conversion of YAML scalars to JSON values.
//!
//! Scalars follow the YAML 1.2 core schema: unquoted `null`, `~` and empty
//! are null; `true`/`false` booleans; decimal, `0x` and `0o` integers and
//! decimal floats are numbers; everything else, and anything quoted, is a
//! string. (So `on: yes` is the string "yes", not a boolean.)

use super::diagnostic::{Diagnostic, Location};
use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::{Node, Span};
use serde_json::{Map, Number, Value};
use std::path::Path;
use std::sync::Arc;

/// Parses `text` (the contents of `file`). A YAML syntax error is one
/// diagnostic at its position.
pub fn parse(file: &Arc<Path>, text: &str) -> Result<Node, Diagnostic> {
    // `prevent_coercion` marks quoted scalars, which stay strings.
    let options = marked_yaml::LoaderOptions::default().error_on_duplicate_keys(true).prevent_coercion(true);
    marked_yaml::parse_yaml_with_options(0, text, options).map_err(|e| {
        use marked_yaml::LoadError as E;
        let (marker, what) = match &e {
            E::TopLevelMustBeMapping(m) => (*m, "the top level of a workflow must be a mapping of keys".to_string()),
            E::TopLevelMustBeSequence(m) => (*m, "expected a sequence at the top level".to_string()),
            E::UnexpectedAnchor(m) => (*m, "YAML anchors and aliases (`&x`, `*x`) are not supported".to_string()),
            E::MappingKeyMustBeScalar(m) => (*m, "mapping keys must be plain strings".to_string()),
            E::UnexpectedTag(m) => (*m, "YAML tags (`!tag`) are not supported".to_string()),
            E::ScanError(m, s) => (*m, format!("invalid YAML: {}", s.info())),
            E::DuplicateKey(d) => {
                let m = d.key.span().start().copied().unwrap_or_else(|| marked_yaml::Marker::new(0, 0, 1, 1));
                (m, format!("duplicate key `{}`", d.key.as_str()))
            }
        };
        Diagnostic::new(&Location { file: file.clone(), line: marker.line().max(1), column: marker.column().max(1) }, what)
    })
}

/// Where a node starts.
pub fn location(file: &Arc<Path>, span: &Span) -> Location {
    match span.start() {
        Some(m) => Location { file: file.clone(), line: m.line().max(1), column: m.column().max(1) },
        None => Location::file_start(file),
    }
}

pub fn node_location(file: &Arc<Path>, node: &Node) -> Location {
    location(file, node.span())
}

/// A scalar as JSON, by the core schema (see the module docs).
pub fn scalar_value(s: &MarkedScalarNode) -> Value {
    let text = s.as_str();
    if !s.may_coerce() {
        return Value::String(text.to_string());
    }
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Some(n) = parse_int(text) {
        return Value::Number(n);
    }
    if looks_like_float(text)
        && let Ok(f) = text.parse::<f64>()
        && let Some(n) = Number::from_f64(f)
    {
        return Value::Number(n);
    }
    Value::String(text.to_string())
}

fn parse_int(text: &str) -> Option<Number> {
    let (neg, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let magnitude = if let Some(hex) = digits.strip_prefix("0x") {
        u64::from_str_radix(hex, 16).ok()?
    } else if let Some(oct) = digits.strip_prefix("0o") {
        u64::from_str_radix(oct, 8).ok()?
    } else if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse::<u64>().ok()?
    } else {
        return None;
    };
    if neg {
        i64::try_from(magnitude).ok().map(|m| Number::from(-m))
    } else {
        Some(Number::from(magnitude))
    }
}

fn looks_like_float(text: &str) -> bool {
    let t = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (mantissa, exp) = match t.find(['e', 'E']) {
        Some(i) => (&t[..i], Some(&t[i + 1..])),
        None => (t, None),
    };
    let mantissa_ok = {
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        (!int.is_empty() || !frac.is_empty())
            && int.bytes().all(|b| b.is_ascii_digit())
            && frac.bytes().all(|b| b.is_ascii_digit())
    };
    let exp_ok = exp.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit())
    });
    mantissa_ok && exp_ok
}

/// Any node as plain JSON (no evaluation).
pub fn to_json(node: &Node) -> Value {
    match node {
        Node::Scalar(s) => scalar_value(s),
        Node::Sequence(seq) => Value::Array(seq.iter().map(to_json).collect()),
        Node::Mapping(map) => Value::Object(mapping_to_json(map)),
    }
}

fn mapping_to_json(map: &MarkedMappingNode) -> Map<String, Value> {
    map.iter().map(|(k, v)| (k.as_str().to_string(), to_json(v))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(text: &str) -> Value {
        let file: Arc<Path> = Arc::from(Path::new("t.yaml"));
        to_json(&parse(&file, text).unwrap())
    }

    #[test]
    fn scalars_follow_the_core_schema() {
        let v = doc("a: 1\nb: -2\nc: 1.5\nd: true\ne: ~\nf:\ng: '1'\nh: yes\ni: 10s\nj: 0x1F\nk: \"true\"\nl: 5000000000\nm: 1e3\n");
        assert_eq!(
            v,
            json!({"a": 1, "b": -2, "c": 1.5, "d": true, "e": null, "f": null, "g": "1", "h": "yes",
                   "i": "10s", "j": 31, "k": "true", "l": 5000000000u64, "m": 1000.0})
        );
    }

    #[test]
    fn syntax_errors_and_duplicate_keys_have_positions() {
        let file: Arc<Path> = Arc::from(Path::new("t.yaml"));
        let e = parse(&file, "a: 1\na: 2\n").unwrap_err();
        assert_eq!((e.location.line, e.message.as_str()), (2, "duplicate key `a`"));
        let e = parse(&file, "a: [1, 2\n").unwrap_err();
        assert!(e.message.starts_with("invalid YAML"), "{e}");
    }
}
