//! `text`: everyday string operations.
//!
//! | `op` | input | output |
//! | --- | --- | --- |
//! | `upper`, `lower`, `title`, `trim` | `{text}` | `{text}` |
//! | `count` | `{text}` | `{chars, words, lines}` |
//! | `split` | `{text, sep?}` (default: whitespace) | `{parts}` |
//! | `template` | `{template, vars}`: `{name}` in the template is replaced by `vars.name` | `{text}` |

use sandflow_sdk::{Describe, Error, Step};
use serde::Deserialize;
use serde_json::{Map, Value, json};

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum Input {
    Upper { text: String },
    Lower { text: String },
    Title { text: String },
    Trim { text: String },
    Count { text: String },
    Split { text: String, sep: Option<String> },
    Template { template: String, #[serde(default)] vars: Map<String, Value> },
}

struct Text;

impl Step for Text {
    type Input = Input;
    type Output = Value;

    fn run(input: Input) -> Result<Value, Error> {
        Ok(match input {
            Input::Upper { text } => json!({ "text": text.to_uppercase() }),
            Input::Lower { text } => json!({ "text": text.to_lowercase() }),
            Input::Title { text } => json!({ "text": title_case(&text) }),
            Input::Trim { text } => json!({ "text": text.trim() }),
            Input::Count { text } => json!({
                "chars": text.chars().count(),
                "words": text.split_whitespace().count(),
                "lines": text.lines().count(),
            }),
            Input::Split { text, sep } => {
                let parts: Vec<&str> = match sep.as_deref() {
                    None | Some("") => text.split_whitespace().collect(),
                    Some(sep) => text.split(sep).collect(),
                };
                json!({ "parts": parts })
            }
            Input::Template { template, vars } => json!({ "text": render(&template, &vars)? }),
        })
    }

    fn describe() -> Describe {
        Describe {
            description: "String operations: upper, lower, title, trim, count, split, template."
                .into(),
            input_schema: Some(json!({
                "type": "object",
                "required": ["op"],
                "properties": {
                    "op": { "enum": ["upper", "lower", "title", "trim", "count", "split", "template"] }
                }
            })),
            output_schema: Some(json!({ "type": "object" })),
        }
    }
}

fn title_case(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at_word_start = true;
    for c in text.chars() {
        if at_word_start && c.is_alphabetic() {
            out.extend(c.to_uppercase());
        } else {
            out.extend(c.to_lowercase());
        }
        at_word_start = c.is_whitespace();
    }
    out
}

/// Replaces `{name}` with `vars.name` (strings as they are, other values as
/// JSON). `{{` and `}}` stand for literal braces.
fn render(template: &str, vars: &Map<String, Value>) -> Result<String, Error> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
        } else if tail.starts_with('}') {
            return Err(Error::permanent("template: unmatched `}` (write `}}` for a literal brace)"));
        } else {
            let end = tail
                .find('}')
                .ok_or_else(|| Error::permanent("template: `{` without a closing `}`"))?;
            let name = tail[1..end].trim();
            match vars.get(name) {
                Some(Value::String(s)) => out.push_str(s),
                Some(v) => out.push_str(&v.to_string()),
                None => {
                    return Err(Error::permanent(format!(
                        "template: no variable `{name}` in `vars`"
                    )));
                }
            }
            rest = &tail[end + 1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

sandflow_sdk::export_step!(Text);
