//! The workflow file as a tree of YAML nodes that remember where they were
//! written, and the conversion of YAML scalars to JSON values.
//!
//! The tree is built here from yaml-rust2's events: mappings are vectors
//! searched in order, not hash maps of separately allocated entries, which
//! halves the time to read a 10,000-step file (see BENCHMARKS.md).
//!
//! Scalars follow the YAML 1.2 core schema: unquoted `null`, `~` and empty
//! are null; `true`/`false` booleans; decimal, `0x` and `0o` integers and
//! decimal floats are numbers; everything else, and anything quoted, is a
//! string. (So `on: yes` is the string "yes", not a boolean.)

use super::diagnostic::{Diagnostic, Location};
use serde_json::{Map, Number, Value};
use std::collections::HashSet;
use std::hash::BuildHasher as _;
use std::path::Path;
use std::sync::Arc;
use yaml_rust2::parser::Event;
use yaml_rust2::scanner::TScalarStyle;

/// Parses `text` (the contents of `file`) into a tree of nodes. A YAML
/// syntax error, an anchor, a tag or a duplicate key is one diagnostic at
/// its position.
pub fn parse(file: &Arc<Path>, text: &str) -> Result<Node, Diagnostic> {
    let mut loader = Loader { open: Vec::new(), root: None, problem: None, hasher: Default::default() };
    let mut parser = yaml_rust2::parser::Parser::new_from_str(text);
    if let Err(e) = parser.load(&mut loader, false) {
        return Err(Diagnostic::new(&location(file, mark(*e.marker())), format!("invalid YAML: {}", e.info())));
    }
    match (loader.problem, loader.root) {
        (Some((at, message)), _) => Err(Diagnostic::new(&location(file, at), message)),
        (None, Some(root)) => Ok(root),
        (None, None) => unreachable!("the end of the stream sets the root"),
    }
}

/// Where a node starts.
pub fn location(file: &Arc<Path>, at: Mark) -> Location {
    Location { file: file.clone(), line: at.line, column: at.column }
}

pub fn node_location(file: &Arc<Path>, node: &Node) -> Location {
    location(file, node.at())
}

/// Where a node starts in the file: 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub line: usize,
    pub column: usize,
}

/// A node of the document, with where it was written.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Scalar(Scalar),
    Mapping(Mapping),
    Sequence(Sequence),
}

/// A scalar as written, before any typing (see [`scalar_value`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Scalar {
    text: String,
    /// Written unquoted, so the core schema types it; quoted scalars stay strings.
    plain: bool,
    at: Mark,
}

/// A mapping's entries in the order written. Its keys are unique (the
/// loader refuses duplicates); lookups are linear, which is faster than
/// hashing for the handful of keys a workflow's mappings have.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapping {
    entries: Vec<(Scalar, Node)>,
    at: Mark,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sequence {
    items: Vec<Node>,
    at: Mark,
}

impl Node {
    pub fn at(&self) -> Mark {
        match self {
            Node::Scalar(s) => s.at,
            Node::Mapping(m) => m.at,
            Node::Sequence(s) => s.at,
        }
    }

    pub fn as_scalar(&self) -> Option<&Scalar> {
        match self {
            Node::Scalar(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_mapping(&self) -> Option<&Mapping> {
        match self {
            Node::Mapping(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_sequence(&self) -> Option<&Sequence> {
        match self {
            Node::Sequence(s) => Some(s),
            _ => None,
        }
    }
}

impl Scalar {
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Unquoted: `1`, `true` and `~` are typed; `'1'` is a string.
    pub fn may_coerce(&self) -> bool {
        self.plain
    }

    pub fn at(&self) -> Mark {
        self.at
    }
}

impl Mapping {
    pub fn get_node(&self, key: &str) -> Option<&Node> {
        self.entries.iter().find(|(k, _)| k.text == key).map(|(_, v)| v)
    }

    pub fn get_scalar(&self, key: &str) -> Option<&Scalar> {
        self.get_node(key).and_then(Node::as_scalar)
    }

    pub fn get_mapping(&self, key: &str) -> Option<&Mapping> {
        self.get_node(key).and_then(Node::as_mapping)
    }

    /// The entries in the order written.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&Scalar, &Node)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn at(&self) -> Mark {
        self.at
    }
}

impl Sequence {
    pub fn iter(&self) -> std::slice::Iter<'_, Node> {
        self.items.iter()
    }

    pub fn at(&self) -> Mark {
        self.at
    }
}

/// Builds the tree from yaml-rust2's events. The first problem stops the
/// building (the parser still reads to the end of the document).
struct Loader {
    open: Vec<Open>,
    root: Option<Node>,
    problem: Option<(Mark, String)>,
    hasher: std::hash::RandomState,
}

/// A collection whose end has not been read yet.
enum Open {
    /// `key`: read, its value not yet. `hashes`: of the keys, once the
    /// mapping is too large to search for a duplicate.
    Mapping { at: Mark, entries: Vec<(Scalar, Node)>, key: Option<Scalar>, hashes: HashSet<u64> },
    Sequence { at: Mark, items: Vec<Node> },
}

const NO_ANCHORS: &str = "YAML anchors and aliases (`&x`, `*x`) are not supported";

/// Whether `entries` has the key `key`.
fn has_key(entries: &[(Scalar, Node)], key: &str) -> bool {
    entries.iter().any(|(k, _)| k.text == key)
}

/// Mappings up to this many keys are searched for a duplicate key; larger
/// ones keep a set of their keys' hashes, so a file of 100,000 keys is not
/// quadratic.
const SEARCHED_KEYS: usize = 16;

fn mark(m: yaml_rust2::scanner::Marker) -> Mark {
    Mark { line: m.line().max(1), column: m.col() + 1 }
}

impl Loader {
    fn fail(&mut self, at: Mark, message: &str) {
        self.problem.get_or_insert((at, message.to_string()));
        self.open.clear();
    }

    /// Anchors and tags are refused; a collection may not be a key.
    fn may_start(&mut self, at: Mark, anchor: usize, tag: bool, collection: bool) -> bool {
        if anchor != 0 {
            self.fail(at, NO_ANCHORS);
        } else if tag {
            self.fail(at, "YAML tags (`!tag`) are not supported");
        } else if collection && matches!(self.open.last(), Some(Open::Mapping { key: None, .. })) {
            self.fail(at, "mapping keys must be plain strings");
        }
        self.problem.is_none()
    }

    /// A complete node: a key or value of the open mapping, an item of the
    /// open sequence, or the document.
    fn add(&mut self, node: Node) {
        let duplicate = match self.open.last_mut() {
            Some(Open::Mapping { key: key @ None, .. }) => {
                match node {
                    Node::Scalar(s) => *key = Some(s),
                    // A collection as a key is refused where it starts.
                    _ => unreachable!("checked by may_start"),
                }
                return;
            }
            Some(Open::Mapping { entries, key, hashes, .. }) => {
                let key = key.take().expect("matched above");
                let found = if entries.len() < SEARCHED_KEYS {
                    has_key(entries, &key.text)
                } else {
                    if hashes.is_empty() {
                        hashes.extend(entries.iter().map(|(k, _)| self.hasher.hash_one(&k.text)));
                    }
                    !hashes.insert(self.hasher.hash_one(&key.text)) && has_key(entries, &key.text)
                };
                if !found {
                    entries.push((key, node));
                    return;
                }
                key
            }
            Some(Open::Sequence { items, .. }) => {
                items.push(node);
                return;
            }
            None => {
                match node {
                    Node::Mapping(_) => self.root = Some(node),
                    other => self.fail(other.at(), "the top level of a workflow must be a mapping of keys"),
                }
                return;
            }
        };
        self.fail(duplicate.at, &format!("duplicate key `{}`", duplicate.text));
    }
}

impl yaml_rust2::parser::MarkedEventReceiver for Loader {
    fn on_event(&mut self, event: Event, at: yaml_rust2::scanner::Marker) {
        if self.problem.is_some() {
            return;
        }
        let at = mark(at);
        let (anchor, tag, collection) = match &event {
            Event::Scalar(_, _, anchor, tag) => (*anchor, tag.is_some(), false),
            Event::MappingStart(anchor, tag) | Event::SequenceStart(anchor, tag) => (*anchor, tag.is_some(), true),
            _ => (0, false, false),
        };
        if !self.may_start(at, anchor, tag, collection) {
            return;
        }
        match event {
            Event::Scalar(text, style, ..) => self.add(Node::Scalar(Scalar { text, plain: style == TScalarStyle::Plain, at })),
            Event::MappingStart(..) => self.open.push(Open::Mapping { at, entries: Vec::new(), key: None, hashes: HashSet::new() }),
            Event::SequenceStart(..) => self.open.push(Open::Sequence { at, items: Vec::new() }),
            Event::MappingEnd | Event::SequenceEnd => {
                let node = match self.open.pop() {
                    Some(Open::Mapping { at, entries, .. }) => Node::Mapping(Mapping { entries, at }),
                    Some(Open::Sequence { at, items }) => Node::Sequence(Sequence { items, at }),
                    None => unreachable!("the parser balances starts and ends"),
                };
                self.add(node);
            }
            Event::Alias(_) => self.fail(at, NO_ANCHORS),
            // An empty document is an empty mapping.
            Event::StreamEnd if self.root.is_none() => self.root = Some(Node::Mapping(Mapping { entries: Vec::new(), at })),
            _ => {}
        }
    }
}

/// A scalar as JSON, by the core schema (see the module docs).
pub fn scalar_value(s: &Scalar) -> Value {
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

fn mapping_to_json(map: &Mapping) -> Map<String, Value> {
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

    fn problem(text: &str) -> (usize, usize, String) {
        let file: Arc<Path> = Arc::from(Path::new("t.yaml"));
        let e = parse(&file, text).unwrap_err();
        (e.location.line, e.location.column, e.message)
    }

    #[test]
    fn anchors_tags_collection_keys_and_a_top_level_not_a_mapping_are_refused_where_written() {
        let anchors = "YAML anchors and aliases (`&x`, `*x`) are not supported";
        assert_eq!(problem("a: &x 1\nb: 2\n"), (1, 7, anchors.into()));
        assert_eq!(problem("a:\n  - &x {k: 1}\n"), (2, 8, anchors.into()));
        assert_eq!(problem("a: !!str 1\n"), (1, 10, "YAML tags (`!tag`) are not supported".into()));
        assert_eq!(problem("? [1, 2]\n: 3\n"), (1, 3, "mapping keys must be plain strings".into()));
        assert_eq!(problem("- 1\n- 2\n"), (1, 1, "the top level of a workflow must be a mapping of keys".into()));
        assert_eq!(problem("just text\n"), (1, 1, "the top level of a workflow must be a mapping of keys".into()));
    }

    #[test]
    fn a_duplicate_key_is_found_in_a_large_mapping_at_its_second_place() {
        let mut text: String = (0..100).map(|i| format!("k{i}: {i}\n")).collect();
        text.push_str("k42: again\n");
        assert_eq!(problem(&text), (101, 1, "duplicate key `k42`".into()));
        let nested = "outer:\n  inner: {a: 1, b: 2, a: 3}\n";
        assert_eq!(problem(nested), (2, 23, "duplicate key `a`".into()));
    }

    #[test]
    fn nodes_keep_their_places_and_mappings_their_order() {
        let file: Arc<Path> = Arc::from(Path::new("t.yaml"));
        let root = parse(&file, "z: 1\nsteps:\n  - id: a\n    input: { n: '2' }\na: [x, y]\n").unwrap();
        let map = root.as_mapping().unwrap();
        assert_eq!(map.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["z", "steps", "a"]);
        let step = map.get_node("steps").and_then(Node::as_sequence).unwrap().iter().next().unwrap().as_mapping().unwrap();
        assert_eq!(step.get_node("id").map(Node::at), Some(Mark { line: 3, column: 9 }));
        let n = step.get_mapping("input").unwrap().get_scalar("n").unwrap();
        assert_eq!((n.at(), n.may_coerce(), scalar_value(n)), (Mark { line: 4, column: 17 }, false, json!("2")));
        assert_eq!(to_json(map.get_node("a").unwrap()), json!(["x", "y"]));
        assert_eq!(to_json(&parse(&file, "# only a comment\n").unwrap()), json!({}), "an empty document is an empty mapping");
    }
}
