//! Paths into JSON values: `user_id`, `data.items[0].id`, or the same in
//! JSONPath style, `$.data.items[0].id`. Keys with dots or spaces are
//! written `['a key']`.

use serde_json::Value;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
/// One step of a path.
pub enum Segment {
    /// `.name` or `["name"]`: an object's key.
    Key(String),
    /// `[0]`: an array's item.
    Index(usize),
}

/// A parsed path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath {
    text: String,
    segments: Vec<Segment>,
}

impl JsonPath {
    /// Reads a path; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("invalid path `{text}`: {why}");
        let mut rest = text.trim();
        if let Some(r) = rest.strip_prefix('$') {
            rest = r.strip_prefix('.').unwrap_or(r);
        }
        let mut segments = Vec::new();
        let mut expect_key = true;
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix('[') {
                let end = r.find(']').ok_or_else(|| bad("`[` without `]`"))?;
                let inner = r[..end].trim();
                let quoted = inner.len() >= 2
                    && ((inner.starts_with('\'') && inner.ends_with('\'')) || (inner.starts_with('"') && inner.ends_with('"')));
                if quoted {
                    segments.push(Segment::Key(inner[1..inner.len() - 1].to_string()));
                } else {
                    let i = inner.parse::<usize>().map_err(|_| bad("an index must be a whole number, e.g. `[0]`"))?;
                    segments.push(Segment::Index(i));
                }
                rest = &r[end + 1..];
                expect_key = false;
            } else if let Some(r) = rest.strip_prefix('.') {
                if expect_key {
                    return Err(bad("empty name between dots"));
                }
                rest = r;
                expect_key = true;
            } else {
                if !expect_key {
                    return Err(bad("write `.` between names"));
                }
                let end = rest.find(['.', '[']).unwrap_or(rest.len());
                let key = &rest[..end];
                if key.is_empty() {
                    return Err(bad("empty name"));
                }
                segments.push(Segment::Key(key.to_string()));
                rest = &rest[end..];
                expect_key = false;
            }
        }
        if expect_key && !segments.is_empty() {
            return Err(bad("ends with `.`"));
        }
        Ok(JsonPath { text: text.to_string(), segments })
    }

    /// The first name of the path (`$variable`'s variable), if it starts with one.
    pub fn first_key(&self) -> Option<&str> {
        match self.segments.first() {
            Some(Segment::Key(k)) => Some(k),
            _ => None,
        }
    }

    /// The part of `value` at this path.
    pub fn get<'a>(&self, value: &'a Value) -> Option<&'a Value> {
        self.segments.iter().try_fold(value, |v, seg| match (seg, v) {
            (Segment::Key(k), Value::Object(m)) => m.get(k),
            (Segment::Index(i), Value::Array(a)) => a.get(*i),
            _ => None,
        })
    }
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_documented_spelling_finds_the_same_value() {
        let v = json!({"data": {"items": [{"id": 7}], "a key": 1}, "user_id": "u1"});
        for p in ["data.items[0].id", "$.data.items[0].id", "data['items'][0][\"id\"]"] {
            assert_eq!(JsonPath::parse(p).unwrap().get(&v), Some(&json!(7)), "{p}");
        }
        assert_eq!(JsonPath::parse("user_id").unwrap().get(&v), Some(&json!("u1")));
        assert_eq!(JsonPath::parse("data['a key']").unwrap().get(&v), Some(&json!(1)));
        assert_eq!(JsonPath::parse("$").unwrap().get(&v), Some(&v));
        assert_eq!(JsonPath::parse("data.items[3]").unwrap().get(&v), None);
        assert_eq!(JsonPath::parse("user_id.x").unwrap().get(&v), None);
    }

    #[test]
    fn malformed_paths_say_why() {
        for (p, why) in [("a..b", "empty name"), ("a[x]", "whole number"), ("a[0", "without `]`"), ("a.", "ends with"), ("a[0]b", "write `.`")] {
            let e = JsonPath::parse(p).unwrap_err();
            assert!(e.contains(why), "{p}: {e}");
        }
    }
}
