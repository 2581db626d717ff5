//! `json`: reshape JSON values.
//!
//! | `op` | input | output |
//! | --- | --- | --- |
//! | `pick` | `{value, fields: ["a", "b.c"]}` | an object with just those (dotted) fields |
//! | `merge` | `{values: [objects]}` | one object; later values win, nested objects merge |
//! | `filter` | `{items: [objects], field, equals}` | `{items}` whose `field` equals `equals` |
//! | `get` | `{value, path: "a.b"}` | the value at the dotted path (error if missing) |

use sandflow_sdk::{Describe, Error, Step};
use serde::Deserialize;
use serde_json::{Map, Value, json};

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum Input {
    Pick { value: Value, fields: Vec<String> },
    Merge { values: Vec<Value> },
    Filter { items: Vec<Value>, field: String, equals: Value },
    Get { value: Value, path: String },
}

struct Json;

impl Step for Json {
    type Input = Input;
    type Output = Value;

    fn run(input: Input) -> Result<Value, Error> {
        match input {
            Input::Pick { value, fields } => {
                let mut out = Value::Object(Map::new());
                for field in &fields {
                    if let Some(v) = lookup(&value, field) {
                        insert(&mut out, field, v.clone());
                    }
                }
                Ok(out)
            }
            Input::Merge { values } => {
                let mut out = Value::Object(Map::new());
                for v in values {
                    if !v.is_object() {
                        return Err(Error::permanent(format!("merge: every value must be an object, got {v}")));
                    }
                    merge(&mut out, v);
                }
                Ok(out)
            }
            Input::Filter { items, field, equals } => {
                let items: Vec<Value> =
                    items.into_iter().filter(|it| lookup(it, &field) == Some(&equals)).collect();
                Ok(json!({ "items": items }))
            }
            Input::Get { value, path } => lookup(&value, &path)
                .cloned()
                .ok_or_else(|| Error::permanent(format!("get: no value at `{path}`"))),
        }
    }

    fn describe() -> Describe {
        Describe {
            description: "Reshape JSON: pick fields, merge objects, filter arrays, get a path.".into(),
            input_schema: Some(json!({
                "type": "object",
                "required": ["op"],
                "properties": { "op": { "enum": ["pick", "merge", "filter", "get"] } }
            })),
            output_schema: None,
        }
    }
}

/// The value at a dotted path; a numeric segment indexes an array.
fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |v, seg| match v {
        Value::Object(m) => m.get(seg),
        Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

fn insert(out: &mut Value, path: &str, v: Value) {
    let mut cur = out;
    let mut segs = path.split('.').peekable();
    while let Some(seg) = segs.next() {
        let map = cur.as_object_mut().expect("pick builds objects only");
        if segs.peek().is_none() {
            map.insert(seg.to_string(), v);
            return;
        }
        cur = map.entry(seg).or_insert_with(|| Value::Object(Map::new()));
    }
}

fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(&k) {
                    Some(existing) if existing.is_object() && v.is_object() => merge(existing, v),
                    _ => {
                        a.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

sandflow_sdk::export_step!(Json);
