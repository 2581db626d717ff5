//! YAML nodes → [`Workflow`], reporting every problem with its place.
//! Unknown keys are errors that name the nearest known key.

use super::wait;
use super::diagnostic::{Diagnostic, Location, nearest};
use super::depends::Depends;
use super::model::*;
use super::yaml::{location, node_location, scalar_value, to_json};
use crate::expr::{self, Template};
use crate::sandbox::{AllowedHost, HttpGrant, QuotaKind};
use crate::units::{parse_duration, parse_size};
use super::yaml::{Mapping, Node};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub(super) const WORKFLOW_KEYS: &[&str] = &[
    "name", "description", "input", "defaults", "timeout", "concurrency", "fail_fast", "quota", "components", "steps", "finally",
    "finally_timeout", "output", "test", "schedules", "triggers",
    // StepFlow's (its `schemas/flow.json`, and older spellings).
    "schema", "schemas", "inputSchema", "outputSchema", "input_schema", "output_schema", "version", "examples", "metadata", "variables",
];
/// Keys only StepFlow flows have: a file with one is read as a StepFlow
/// flow, whose steps run only when the output needs them (see [`Workflow::lazy`]).
const STEPFLOW_WORKFLOW_KEYS: &[&str] =
    &["schema", "schemas", "inputSchema", "outputSchema", "input_schema", "output_schema", "version", "examples", "metadata", "variables"];
const STEPFLOW_STEP_KEYS: &[&str] =
    &["mustExecute", "must_execute", "onError", "skip_if", "inputSchema", "outputSchema", "input_schema", "output_schema", "metadata"];
/// Value forms only StepFlow flows use.
const STEPFLOW_VALUE_KEYS: &[&str] = &["$input", "$step", "$variable", "$if", "$coalesce"];
pub(super) const DEFAULTS_KEYS: &[&str] = &["timeout", "fuel", "memory", "retry", "quota", "cache"];
pub(super) const CACHE_KEYS: &[&str] = &["ttl", "key"];
pub(super) const RETRY_KEYS: &[&str] = &["max_attempts", "backoff", "delay", "max_delay"];
pub(super) const COMPONENT_KEYS: &[&str] = &["path", "sha256", "config", "grants"];
pub(super) const GRANTS_KEYS: &[&str] = &["env", "dirs", "http"];
pub(super) const HTTP_KEYS: &[&str] = &["allow", "max_response", "timeout"];
pub(super) const DIR_KEYS: &[&str] = &["host", "guest", "mode"];
pub(super) const STEP_KEYS: &[&str] = &[
    "id", "component", "workflow", "input", "needs", "depends", "when", "skipIf", "forEach", "concurrency", "retry",
    "timeout", "fuel", "memory", "quota", "cache", "on_error", "runs_on", "wait",
    // StepFlow's; the schemas and metadata are read and ignored.
    "skip_if", "mustExecute", "must_execute", "onError", "inputSchema", "outputSchema", "input_schema", "output_schema", "metadata",
];
/// How long `finally` steps may take unless `finally_timeout` says.
pub const DEFAULT_FINALLY_TIMEOUT: Duration = Duration::from_secs(60);
pub(super) const ON_ERROR_KEYS: &[&str] = &["action", "default_output", "defaultValue", "default_value", "maxRetries", "max_retries"];
/// StepFlow's `onError: { action: retry }` without `maxRetries`.
const STEPFLOW_DEFAULT_RETRIES: u64 = 3;
/// `config`/`configFile` are StepFlow's test configuration; sandflow binds
/// components with `--components FILE` instead.
pub(super) const TEST_KEYS: &[&str] = &["cases", "config", "configFile", "config_file"];
pub(super) const TRIGGER_KEYS: &[&str] = &["webhook", "secret", "input"];
pub(super) const SCHEDULE_KEYS: &[&str] = &["name", "cron", "timezone", "input", "catchup", "overlap"];
pub(super) const CASE_KEYS: &[&str] = &["name", "description", "input", "target", "output", "outcome", "error", "signals"];

/// The parsing context: the file, and the problems found so far.
pub(super) struct Cx {
    pub file: Arc<Path>,
    pub dir: PathBuf,
    pub diags: Vec<Diagnostic>,
}

impl Cx {
    fn at(&self, node: &Node) -> Location {
        node_location(&self.file, node)
    }

    fn error(&mut self, node: &Node, message: impl Into<String>) {
        let at = self.at(node);
        self.diags.push(Diagnostic::new(&at, message));
    }

    fn error_hint(&mut self, node: &Node, message: impl Into<String>, hint: impl Into<String>) {
        let at = self.at(node);
        self.diags.push(Diagnostic::new(&at, message).with_hint(hint));
    }

    /// `node` as a mapping whose keys are all in `known`.
    fn mapping<'n>(&mut self, node: &'n Node, what: &str, known: &[&str]) -> Option<&'n Mapping> {
        let Some(map) = node.as_mapping() else {
            self.error(node, format!("{what} must be a mapping of keys"));
            return None;
        };
        for (key, _) in map.iter() {
            if !known.contains(&key.as_str()) {
                let at = location(&self.file, key.at());
                let mut d = Diagnostic::new(&at, format!("unknown key `{}` in {what}", key.as_str()));
                d = match nearest(key.as_str(), known.iter().copied()) {
                    Some(n) => d.with_hint(format!("did you mean `{n}`?")),
                    None => d.with_hint(format!("known keys: {}", known.join(", "))),
                };
                self.diags.push(d);
            }
        }
        Some(map)
    }

    fn string(&mut self, node: &Node, what: &str) -> Option<String> {
        match node.as_scalar().map(scalar_value) {
            Some(Value::String(s)) => Some(s),
            _ => {
                self.error(node, format!("{what} must be a string"));
                None
            }
        }
    }

    fn uint(&mut self, node: &Node, what: &str, min: u64) -> Option<u64> {
        match node.as_scalar().map(scalar_value).and_then(|v| v.as_u64()) {
            Some(n) if n >= min => Some(n),
            _ => {
                self.error(node, format!("{what} must be a whole number, at least {min}"));
                None
            }
        }
    }

    fn boolean(&mut self, node: &Node, what: &str) -> Option<bool> {
        match node.as_scalar().map(scalar_value) {
            Some(Value::Bool(b)) => Some(b),
            _ => {
                self.error(node, format!("{what} must be true or false"));
                None
            }
        }
    }

    fn duration(&mut self, node: &Node, what: &str) -> Option<Duration> {
        let text = match node.as_scalar().map(scalar_value) {
            Some(Value::String(s)) => s,
            Some(Value::Number(n)) => {
                self.error_hint(node, format!("{what}: `{n}` has no unit"), format!("write e.g. `{n}s` or `{n}ms`"));
                return None;
            }
            _ => {
                self.error(node, format!("{what} must be a duration such as `30s`"));
                return None;
            }
        };
        parse_duration(&text).map_err(|e| self.error(node, format!("{what}: {e}"))).ok()
    }

    fn size(&mut self, node: &Node, what: &str) -> Option<u64> {
        let text = match node.as_scalar().map(scalar_value) {
            Some(Value::Number(n)) if n.as_u64().is_some() => return n.as_u64(),
            Some(Value::String(s)) => s,
            _ => {
                self.error(node, format!("{what} must be a size such as `64MiB`"));
                return None;
            }
        };
        parse_size(&text).map_err(|e| self.error(node, format!("{what}: {e}"))).ok()
    }

    fn template(&mut self, node: &Node) -> Template {
        expr::parse(node, &self.file, &mut self.diags)
    }

    fn resolve(&self, path: &str) -> PathBuf {
        self.dir.join(path)
    }
}

/// Parses a workflow document (already read and YAML-parsed).
pub(super) fn workflow(cx: &mut Cx, root: &Node, sha256: String, text: Arc<str>) -> Option<Workflow> {
    let map = cx.mapping(root, "the workflow", WORKFLOW_KEYS)?;
    let get = |k: &str| map.get_node(k);

    let stem = cx.file.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "workflow".into());
    let name = get("name").and_then(|n| cx.string(n, "`name`")).unwrap_or(stem);
    let description = get("description").and_then(|n| cx.string(n, "`description`"));
    // The run input's schema: `input`, or StepFlow's `inputSchema`,
    // `input_schema` or `schemas.properties.input`.
    let schemas_input = get("schemas").and_then(|n| n.as_mapping()).and_then(|m| m.get_mapping("properties")).and_then(|m| m.get_node("input"));
    let input_schema = ["input", "inputSchema", "input_schema"].into_iter().find_map(get).or(schemas_input).filter(|n| !is_null(n)).map(|n| {
        let schema = to_json(n);
        if let Err(e) = jsonschema::validator_for(&schema) {
            cx.error(n, format!("`input` is not a valid JSON Schema: {e}"));
        }
        schema
    });
    let defaults = get("defaults")
        .and_then(|n| cx.mapping(n, "`defaults`", DEFAULTS_KEYS).map(|m| settings(cx, m)))
        .unwrap_or_default();
    let timeout = get("timeout").and_then(|n| cx.duration(n, "`timeout`"));
    let concurrency = get("concurrency").and_then(|n| cx.uint(n, "`concurrency`", 1)).map(|n| n as usize);
    let run_quota = get("quota").map(|n| quota(cx, n, true)).unwrap_or_default();
    let components = get("components").map(|n| components(cx, n)).unwrap_or_default();
    let fail_fast = get("fail_fast").and_then(|n| cx.boolean(n, "`fail_fast`")).unwrap_or(true);
    let finally_timeout = get("finally_timeout").and_then(|n| cx.duration(n, "`finally_timeout`")).unwrap_or(DEFAULT_FINALLY_TIMEOUT);
    let mut steps = match get("steps") {
        Some(n) => steps(cx, n, false),
        None => {
            cx.diags.push(
                Diagnostic::new(&Location::file_start(&cx.file), "the workflow has no `steps`")
                    .with_hint("add `steps:` with at least one `- id: ..., component: ...`"),
            );
            Vec::new()
        }
    };
    if let Some(n) = get("finally") {
        steps.extend(self::steps(cx, n, true));
    }
    let output = get("output").map(|n| cx.template(n));
    let tests = get("test").filter(|n| !is_null(n)).map(|n| tests(cx, n)).unwrap_or_default();
    let schedules = get("schedules").filter(|n| !is_null(n)).map(|n| schedules(cx, n, input_schema.as_ref())).unwrap_or_default();
    let triggers = get("triggers").filter(|n| !is_null(n)).map(|n| triggers(cx, n)).unwrap_or_default();
    let lazy = map.iter().any(|(k, _)| STEPFLOW_WORKFLOW_KEYS.contains(&k.as_str()))
        || [get("steps"), get("output")].into_iter().flatten().any(has_stepflow_forms);
    Some(Workflow {
        file: cx.file.clone(),
        dir: cx.dir.clone(),
        sha256,
        text,
        name,
        description,
        input_schema,
        defaults,
        timeout,
        concurrency,
        fail_fast,
        finally_timeout,
        quota: run_quota,
        components,
        steps,
        output,
        tests,
        schedules,
        triggers,
        lazy,
    })
}

fn is_null(node: &Node) -> bool {
    node.as_scalar().is_some_and(|s| scalar_value(s) == Value::Null)
}

/// Whether a node is or holds a StepFlow-only step key or value form.
fn has_stepflow_forms(node: &Node) -> bool {
    match node {
        Node::Scalar(_) => false,
        Node::Sequence(seq) => seq.iter().any(has_stepflow_forms),
        Node::Mapping(map) => map.iter().any(|(k, v)| {
            STEPFLOW_VALUE_KEYS.contains(&k.as_str()) || STEPFLOW_STEP_KEYS.contains(&k.as_str()) || has_stepflow_forms(v)
        }),
    }
}

fn settings(cx: &mut Cx, map: &Mapping) -> StepSettings {
    StepSettings {
        timeout: map.get_node("timeout").and_then(|n| cx.duration(n, "`timeout`")),
        fuel: map.get_node("fuel").and_then(|n| cx.uint(n, "`fuel`", 1)),
        memory: map.get_node("memory").and_then(|n| cx.size(n, "`memory`")),
        retry: map.get_node("retry").and_then(|n| retry(cx, n)),
        quota: map.get_node("quota").map(|n| quota(cx, n, false)).unwrap_or_default(),
        cache: map.get_node("cache").and_then(|n| {
            let m = cx.mapping(n, "`cache`", CACHE_KEYS)?;
            let Some(ttl) = m.get_node("ttl") else {
                cx.error_hint(n, "`cache` needs `ttl`: how long a stored result is reused", "e.g. `cache: { ttl: 24h }`");
                return None;
            };
            let key = m.get_node("key").map(|k| cx.template(k));
            cx.duration(ttl, "`cache.ttl`").map(|ttl| CacheSpec { ttl, key })
        }),
    }
}

/// `quota: { blob_bytes: 64MiB, state_keys: 100, ... }`: per attempt, or
/// (`per_run`) the whole run's at the top level.
fn quota(cx: &mut Cx, node: &Node, per_run: bool) -> QuotaSettings {
    let mut q = QuotaSettings::default();
    let keys: Vec<&str> = QuotaKind::ALL.iter().map(|k| k.key()).collect();
    let what = if per_run { "the run's `quota`" } else { "`quota`" };
    let Some(map) = cx.mapping(node, what, &keys) else { return q };
    for (key, value) in map.iter() {
        let Some(kind) = QuotaKind::from_key(key.as_str()) else { continue };
        if per_run && !kind.per_run() {
            let at = location(&cx.file, key.at());
            cx.diags.push(
                Diagnostic::new(&at, format!("`{}` is a quota per attempt, not per run", kind.key()))
                    .with_hint("set it under `defaults.quota` or on a step"),
            );
            continue;
        }
        let name = format!("`quota.{}`", kind.key());
        let v = if kind.is_size() { cx.size(value, &name) } else { cx.uint(value, &name, 0) };
        if let Some(v) = v {
            q.set(kind, v);
        }
    }
    q
}

fn retry(cx: &mut Cx, node: &Node) -> Option<RetryPolicy> {
    let map = cx.mapping(node, "`retry`", RETRY_KEYS)?;
    let d = RetryPolicy::default();
    let backoff = match map.get_node("backoff") {
        None => d.backoff,
        Some(n) => match cx.string(n, "`backoff`").as_deref() {
            Some("none") => Backoff::None,
            Some("linear") => Backoff::Linear,
            Some("exponential") => Backoff::Exponential,
            Some(other) => {
                cx.error(n, format!("unknown backoff `{other}`; use none, linear or exponential"));
                d.backoff
            }
            None => d.backoff,
        },
    };
    Some(RetryPolicy {
        max_attempts: map.get_node("max_attempts").and_then(|n| cx.uint(n, "`max_attempts`", 1)).map_or(1, |n| n.min(u32::MAX as u64) as u32),
        backoff,
        delay: map.get_node("delay").and_then(|n| cx.duration(n, "`delay`")).unwrap_or(d.delay),
        max_delay: map.get_node("max_delay").and_then(|n| cx.duration(n, "`max_delay`")).unwrap_or(d.max_delay),
    })
}

/// A components file: `components:` and nothing else.
pub(super) fn components_file(cx: &mut Cx, root: &Node) -> BTreeMap<String, ComponentDecl> {
    let Some(map) = cx.mapping(root, "a components file", &["components"]) else { return BTreeMap::new() };
    match map.get_node("components") {
        Some(n) => components(cx, n),
        None => {
            cx.error_hint(root, "the components file has no `components:`", "e.g. `components: { /mock/echo: { path: mock.wasm, config: {} } }`");
            BTreeMap::new()
        }
    }
}

fn components(cx: &mut Cx, node: &Node) -> BTreeMap<String, ComponentDecl> {
    let Some(map) = node.as_mapping() else {
        cx.error(node, "`components` must map names to components, e.g. `upper: { path: upper.wasm }`");
        return BTreeMap::new();
    };
    let mut out = BTreeMap::new();
    for (key, value) in map.iter() {
        let name = key.as_str().to_string();
        let what = format!("component `{name}`");
        let Some(c) = cx.mapping(value, &what, COMPONENT_KEYS) else { continue };
        let Some(path) = c.get_node("path").and_then(|n| cx.string(n, &format!("`path` of {what}"))) else {
            if c.get_node("path").is_none() {
                cx.error_hint(value, format!("{what} has no `path`"), "e.g. `path: ../components/dist/text.wasm`");
            }
            continue;
        };
        let sha256 = c.get_node("sha256").and_then(|n| {
            // Raw text: an all-digit hash must not be read as a number.
            let Some(s) = n.as_scalar().map(|s| s.as_str().to_lowercase()) else {
                cx.error(n, "`sha256` must be 64 hex digits (see `sandflow component inspect`)");
                return None;
            };
            if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
                Some(s)
            } else {
                cx.error(n, "`sha256` must be 64 hex digits (see `sandflow component inspect`)");
                None
            }
        });
        let config = c.get_node("config").map(to_json).unwrap_or(Value::Null);
        let grants = c.get_node("grants").map(|n| grants(cx, n, &what)).unwrap_or_default();
        let at = location(&cx.file, key.at());
        out.insert(name.clone(), ComponentDecl { name, path: cx.resolve(&path), sha256, config, grants, at });
    }
    out
}

fn grants(cx: &mut Cx, node: &Node, what: &str) -> GrantsDecl {
    let Some(map) = cx.mapping(node, &format!("`grants` of {what}"), GRANTS_KEYS) else { return GrantsDecl::default() };
    let env = match map.get_node("env") {
        None => Vec::new(),
        Some(Node::Sequence(seq)) => seq.iter().filter_map(|n| cx.string(n, "an `env` grant")).collect(),
        Some(n) => {
            cx.error(n, "`env` must be a list of variable names, e.g. `[LANG, TZ]`");
            Vec::new()
        }
    };
    let dirs = match map.get_node("dirs") {
        None => Vec::new(),
        Some(Node::Sequence(seq)) => seq
            .iter()
            .filter_map(|n| {
                let m = cx.mapping(n, "a `dirs` grant", DIR_KEYS)?;
                let host = m.get_node("host").and_then(|h| cx.string(h, "`host`"));
                let guest = m.get_node("guest").and_then(|g| cx.string(g, "`guest`"));
                let writable = match m.get_node("mode") {
                    None => false,
                    Some(mode) => match cx.string(mode, "`mode`").as_deref() {
                        Some("ro") => false,
                        Some("rw") => true,
                        _ => {
                            cx.error(mode, "`mode` is `ro` (read-only, the default) or `rw`");
                            false
                        }
                    },
                };
                match (host, guest) {
                    (Some(host), Some(guest)) if guest.starts_with('/') => {
                        Some(DirDecl { host: cx.resolve(&host), guest, writable, at: cx.at(n) })
                    }
                    (Some(_), Some(_)) => {
                        cx.error(n, "`guest` must be an absolute path such as `/data`");
                        None
                    }
                    _ => {
                        cx.error_hint(n, "a `dirs` grant needs `host` and `guest`", "e.g. `{ host: ./data, guest: /data, mode: ro }`");
                        None
                    }
                }
            })
            .collect(),
        Some(n) => {
            cx.error(n, "`dirs` must be a list of `{ host, guest, mode }`");
            Vec::new()
        }
    };
    let http = map.get_node("http").and_then(|n| http_grant(cx, n));
    GrantsDecl { env, dirs, http }
}

/// `grants.http`: `{ allow: [HOST, ...], max_response?, timeout? }`.
fn http_grant(cx: &mut Cx, node: &Node) -> Option<HttpGrant> {
    let map = cx.mapping(node, "the `http` grant", HTTP_KEYS)?;
    let hint = "e.g. `allow: [api.example.com, \"127.0.0.1:8080\"]`";
    let allow = match map.get_node("allow") {
        Some(Node::Sequence(seq)) => seq
            .iter()
            .filter_map(|n| {
                let text = cx.string(n, "an allowed host")?;
                text.parse::<AllowedHost>().map_err(|e| cx.error(n, e)).ok()
            })
            .collect(),
        Some(n) => {
            cx.error_hint(n, "`allow` must be a list of hosts", hint);
            return None;
        }
        None => {
            cx.error_hint(node, "the `http` grant needs `allow`: the hosts the component may reach", hint);
            return None;
        }
    };
    let mut grant = HttpGrant::new(allow);
    if let Some(n) = map.get_node("max_response") {
        grant.max_response = cx.size(n, "`max_response`")?;
    }
    if let Some(n) = map.get_node("timeout") {
        grant.timeout = cx.duration(n, "`timeout`")?;
    }
    Some(grant)
}

/// `steps:` (or, `finally`, the steps of `finally:`).
fn steps(cx: &mut Cx, node: &Node, finally: bool) -> Vec<StepDecl> {
    let Some(seq) = node.as_sequence() else {
        match finally {
            false => cx.error(node, "`steps` must be a list of steps (or a list of lists of steps)"),
            true => cx.error(node, "`finally` must be a list of steps"),
        }
        return Vec::new();
    };
    if finally {
        return seq.iter().filter_map(|n| step(cx, n, None, true)).collect();
    }
    let grouped = seq.iter().any(|n| n.as_sequence().is_some());
    // A step is large: growing the list by doubling copied every step
    // again at each growth (a tenth of parsing a 2,000-step file).
    let mut out = Vec::with_capacity(if grouped { seq.iter().filter_map(Node::as_sequence).map(|g| g.iter().len()).sum() } else { seq.iter().len() });
    if grouped {
        for (g, group) in seq.iter().enumerate() {
            match group.as_sequence() {
                Some(inner) => out.extend(inner.iter().filter_map(|n| step(cx, n, Some(g), false))),
                None => cx.error_hint(
                    group,
                    "mixed step groups and steps: every entry of `steps` must be a list when one is",
                    "wrap this step in a list of its own: `- [ { id: ..., component: ... } ]`",
                ),
            }
        }
    } else {
        out.extend(seq.iter().filter_map(|n| step(cx, n, None, false)));
    }
    out
}

fn is_valid_id(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn step(cx: &mut Cx, node: &Node, group: Option<usize>, finally: bool) -> Option<StepDecl> {
    let map = cx.mapping(node, "a step", STEP_KEYS)?;
    let step_at = cx.at(node);
    let Some(id_node) = map.get_node("id") else {
        cx.diags.push(Diagnostic::new(&step_at, "a step has no `id`").with_hint("add `id: some-name` (letters, digits, `_`, `-`; case counts)"));
        return None;
    };
    let id = cx.string(id_node, "a step `id`")?;
    let at = cx.at(id_node);
    if !is_valid_id(&id) {
        cx.error_hint(id_node, format!("invalid step id `{id}`"), "ids use letters, digits, `_` and `-`; case counts: `A` and `a` are two steps");
    }
    let what = format!("step `{id}`");
    let target = match (map.get_node("component"), map.get_node("workflow")) {
        (Some(c), None) => cx.string(c, "`component`").map(|s| (component_target(cx, c, &s), cx.at(c))),
        (None, Some(w)) => cx.string(w, "`workflow`").map(|s| (Target::Workflow(cx.resolve(&s)), cx.at(w))),
        (Some(_), Some(w)) => {
            cx.error(w, format!("{what} has both `component` and `workflow`; keep one"));
            None
        }
        (None, None) => {
            cx.diags.push(
                Diagnostic::new(&at, format!("{what} has neither `component` nor `workflow`"))
                    .with_hint("add `component: NAME` (from `components:`), a `.wasm` path, or `/builtin/NAME`"),
            );
            None
        }
    };
    let input = map.get_node("input").map(|n| cx.template(n)).unwrap_or(Template::Const(Value::Null));
    let needs = match map.get_node("needs") {
        None => Vec::new(),
        Some(Node::Sequence(seq)) => seq.iter().filter_map(|n| cx.string(n, "a `needs` entry").map(|s| (s, cx.at(n)))).collect(),
        Some(n @ Node::Scalar(_)) => cx.string(n, "`needs`").map(|s| vec![(s, cx.at(n))]).unwrap_or_default(),
        Some(n) => {
            cx.error(n, "`needs` must be a list of step ids");
            Vec::new()
        }
    };
    let depends = map.get_node("depends").and_then(|n| {
        let Some(Value::String(text)) = n.as_scalar().map(scalar_value) else {
            cx.error(n, "`depends` must be an expression over step ids, such as `build && (test.failed || test.skipped)`");
            return None;
        };
        let at = cx.at(n);
        Depends::parse(&text, &at).map_err(|d| cx.diags.push(d)).ok().map(Box::new)
    });
    let when = map.get_node("when").and_then(|n| {
        let text = match n.as_scalar().map(scalar_value) {
            Some(Value::String(s)) => s,
            Some(Value::Bool(b)) => b.to_string(),
            _ => {
                cx.error(n, "`when` must be an expression such as `steps.check.output.ok`");
                return None;
            }
        };
        let at = cx.at(n);
        expr::parse_condition(&text, &at).map_err(|d| cx.diags.push(d)).ok().map(Box::new)
    });
    let skip_if = map.get_node("skipIf").or_else(|| map.get_node("skip_if")).map(|n| cx.template(n));
    // StepFlow writes `mustExecute: null` for the default.
    let must_execute =
        map.get_node("mustExecute").or_else(|| map.get_node("must_execute")).filter(|n| !is_null(n)).and_then(|n| cx.boolean(n, "`mustExecute`")).unwrap_or(false);
    let for_each = map.get_node("forEach").map(|n| cx.template(n));
    let concurrency = map.get_node("concurrency").and_then(|n| cx.uint(n, "`concurrency`", 1)).map(|n| n as usize);
    if concurrency.is_some() && for_each.is_none() {
        cx.error(map.get_node("concurrency").expect("checked"), format!("`concurrency` on {what} needs `forEach`"));
    }
    let mut settings = settings(cx, map);
    let (on_error, retries) = map.get_node("on_error").or_else(|| map.get_node("onError")).filter(|n| !is_null(n)).map(|n| on_error(cx, n)).unwrap_or_default();
    if let Some(retries) = retries {
        if settings.retry.is_some() {
            let n = map.get_node("retry").expect("retry is set");
            cx.error_hint(n, format!("{what} has both `retry` and `onError: {{ action: retry }}`"), "keep one");
        }
        let max_attempts = retries.saturating_add(1).min(u32::MAX as u64) as u32;
        settings.retry = Some(RetryPolicy { max_attempts, ..RetryPolicy::default() });
    }
    let runs_on = match map.get_node("runs_on") {
        None => Vec::new(),
        Some(n @ Node::Scalar(_)) => cx.string(n, "`runs_on`").into_iter().collect(),
        Some(Node::Sequence(seq)) => seq.iter().filter_map(|n| cx.string(n, "a `runs_on` label")).collect(),
        Some(n) => {
            cx.error(n, "`runs_on` must be a worker label or a list of them, such as `[gpu]`");
            Vec::new()
        }
    };
    if let Some(bad) = runs_on.iter().find(|l| !is_valid_id(l)) {
        let n = map.get_node("runs_on").expect("checked");
        cx.error_hint(n, format!("invalid worker label `{bad}`"), "labels use letters, digits, `_` and `-`");
    }
    if let Some(n) = map.get_node("cache")
        && let Some((Target::Builtin(_) | Target::Workflow(_), _)) = &target
    {
        cx.error_hint(
            n,
            format!("{what} cannot be cached: only component steps are (builtins and nested workflows run every time)"),
            "remove `cache`, or set it under `defaults` (where it applies to component steps only)",
        );
    }
    let wait = map.get_node("wait").map(|n| {
        if let Some((Target::Builtin(b), _)) = &target
            && b.waits()
        {
            cx.error_hint(n, format!("{what} is /builtin/{} and has `wait`", b.name()), "give its time in its `input`, or use /builtin/sleep as a step of its own");
        }
        wait_key(cx, n);
        cx.template(n)
    });
    if let Some((Target::Builtin(b), _)) = &target
        && b.waits()
    {
        if let Some(n) = map.get_node("forEach") {
            cx.error_hint(n, format!("{what} is /builtin/{} and has `forEach`", b.name()), "a step waits once: wait before the step with `wait:`, or give each item a step");
        }
        waiting_input(cx, map.get_node("input"), *b, &what, &at);
    }
    // A step whose target is broken is kept (the problem is already
    // reported) so that references to it are not reported as unknown.
    let (target, target_at) = target.unwrap_or((Target::Builtin(Builtin::Eval), at.clone()));
    Some(StepDecl {
        id,
        at,
        target,
        target_at,
        input,
        needs,
        depends,
        when,
        skip_if,
        for_each,
        concurrency,
        settings,
        on_error,
        runs_on,
        wait,
        group,
        finally,
        must_execute,
    })
}

/// `node` as a value when nothing in it is evaluated (no `{{ }}`, no `$` form).
fn literal(node: &Node) -> Option<Value> {
    fn plain(v: &Value) -> bool {
        match v {
            Value::String(s) => !s.contains("{{"),
            Value::Array(a) => a.iter().all(plain),
            Value::Object(m) => m.iter().all(|(k, v)| !k.starts_with('$') && plain(v)),
            _ => true,
        }
    }
    let v = to_json(node);
    plain(&v).then_some(v)
}

/// `wait: { duration | until }`: what is written literally is checked now.
fn wait_key(cx: &mut Cx, node: &Node) {
    let Some(map) = cx.mapping(node, "`wait`", wait::WAIT_KEYS) else { return };
    time_fields(cx, node, map, "`wait`", "e.g. `wait: { duration: 1h }` or `wait: { until: \"{{ inputs.at }}\" }`");
}

/// A time written as `{duration | until}` in `map` (of `node`), as `what`
/// names it: exactly one, and what is written literally checked now.
fn time_fields(cx: &mut Cx, node: &Node, map: &Mapping, what: &str, example: &str) {
    match (map.get_node("duration"), map.get_node("until")) {
        (Some(_), Some(u)) => cx.error_hint(u, format!("{what} has both `duration` and `until`"), "keep one"),
        (None, None) => cx.error_hint(node, format!("{what} needs `duration` or `until`"), example),
        _ => {}
    }
    let now = jiff::Timestamp::now();
    for (key, value) in map.iter() {
        if let Some(v) = literal(value)
            && let Err(e) = wait::check_wait_field(key.as_str(), &v, now)
        {
            cx.error(value, format!("{what}: {e}"));
        }
    }
}

/// The input of a builtin that waits: its keys, and what is written literally.
fn waiting_input(cx: &mut Cx, node: Option<&Node>, builtin: Builtin, what: &str, at: &Location) {
    let keys = wait::keys(builtin).expect("a builtin that waits");
    let name = builtin.name();
    let Some(node) = node.filter(|n| !is_null(n)) else {
        match builtin {
            Builtin::Signal => {}
            _ => cx.diags.push(Diagnostic::new(at, format!("{what} is /builtin/{name} and has no `input`"))),
        }
        return;
    };
    let Some(map) = node.as_mapping() else {
        if literal(node).is_some() {
            cx.error(node, format!("/builtin/{name}'s input must be a mapping ({})", keys.join(", ")));
        }
        return;
    };
    let map = cx.mapping(node, &format!("/builtin/{name}'s input"), keys).unwrap_or(map);
    if builtin == Builtin::Sleep {
        return time_fields(cx, node, map, "/builtin/sleep", "e.g. `input: { duration: 1h }`");
    }
    if builtin == Builtin::Approval && map.get_node("message").is_none() {
        cx.error_hint(node, "/builtin/approval needs `message`", "say what the approver is asked, e.g. `message: Deploy to production?`");
    }
    for (key, value) in map.iter() {
        if let Some(v) = literal(value)
            && let Err(e) = wait::check_signal_field(builtin, key.as_str(), &v)
        {
            cx.error(value, e);
        }
    }
}

fn component_target(cx: &mut Cx, node: &Node, text: &str) -> Target {
    if let Some(name) = text.strip_prefix("/builtin/") {
        return match Builtin::ALL.iter().find(|(n, _)| *n == name) {
            Some((_, b)) => Target::Builtin(*b),
            None => {
                let names = Builtin::ALL.map(|(n, _)| n);
                let hint = match nearest(name, names) {
                    Some(n) => format!("did you mean `/builtin/{n}`?"),
                    None => format!("builtins: {}", names.map(|n| format!("/builtin/{n}")).join(", ")),
                };
                cx.error_hint(node, format!("unknown builtin `{text}`"), hint);
                Target::Builtin(Builtin::Eval)
            }
        };
    }
    if text.ends_with(".wasm") {
        return Target::Path(cx.resolve(text));
    }
    // StepFlow's older `plugin://component` is its `/plugin/component`.
    if let Some((plugin, rest)) = text.split_once("://")
        && !plugin.is_empty()
        && !plugin.contains('/')
    {
        return Target::Named(format!("/{plugin}/{rest}"));
    }
    Target::Named(text.to_string())
}

/// `on_error` (or StepFlow's `onError`), and the retries StepFlow's
/// `action: retry` asks for.
fn on_error(cx: &mut Cx, node: &Node) -> (OnError, Option<u64>) {
    let Some(map) = cx.mapping(node, "`on_error`", ON_ERROR_KEYS) else { return Default::default() };
    let default = ["default_output", "defaultValue", "default_value"].into_iter().find_map(|k| map.get_node(k)).map(to_json);
    let mut retries = None;
    let action = match map.get_node("action") {
        None => ErrorAction::Fail,
        Some(n) => match cx.string(n, "`action`").as_deref() {
            Some("fail") => ErrorAction::Fail,
            // StepFlow's `useDefault`: the step's output is `defaultValue` (or null).
            Some("continue" | "useDefault" | "use_default") => ErrorAction::Continue,
            Some("skip") => ErrorAction::Skip,
            // StepFlow's `retry`: `maxRetries` more attempts, then the step fails.
            Some("retry") => {
                let n = map.get_node("maxRetries").or_else(|| map.get_node("max_retries"));
                retries = Some(n.and_then(|n| cx.uint(n, "`maxRetries`", 0)).unwrap_or(STEPFLOW_DEFAULT_RETRIES));
                ErrorAction::Fail
            }
            _ => {
                cx.error_hint(n, "unknown `action`", "`action` is `fail`, `continue`, `skip`, or StepFlow's `useDefault` or `retry`");
                ErrorAction::Fail
            }
        },
    };
    (OnError { action, default_output: default }, retries)
}

/// StepFlow's expected result, `{ outcome: success, result: V }` or
/// `{ outcome: failed, error: … }` (only the outcome of a failure is
/// compared), or the older `{ outcome: skipped }`. `None`: `node` is an
/// expected output of sandflow's own form.
fn stepflow_result(node: &Node) -> Option<Expectation> {
    let map = node.as_mapping()?;
    let outcome = map.get_scalar("outcome")?.as_str().to_string();
    let others: Vec<&str> = map.iter().map(|(k, _)| k.as_str()).filter(|k| *k != "outcome").collect();
    let expect = match (outcome.as_str(), others.as_slice()) {
        ("success", ["result"]) => Expectation::Output(to_json(map.get_node("result").expect("listed"))),
        ("success", []) => Expectation::Output(Value::Null),
        ("failed", [] | ["error"]) => Expectation::Failed,
        // sandflow has no skipped run: one whose output reads a skipped
        // step completes with a null output.
        ("skipped", []) => Expectation::Skipped,
        _ => return None,
    };
    Some(expect)
}

/// `triggers:`: each webhook named (as a URL's last part, once) and given
/// the secret its deliveries are signed with; its input reads the request
/// only.
fn triggers(cx: &mut Cx, node: &Node) -> Vec<TriggerDecl> {
    let Some(seq) = node.as_sequence() else {
        cx.error_hint(node, "`triggers` must be a list", "e.g. `triggers: [{ webhook: deploy, secret: DEPLOY_HOOK }]`");
        return Vec::new();
    };
    let mut names = std::collections::BTreeSet::new();
    seq.iter()
        .filter_map(|n| {
            let m = cx.mapping(n, "a trigger", TRIGGER_KEYS)?;
            let Some(hook) = m.get_node("webhook") else {
                cx.error_hint(n, "a trigger needs `webhook`: the name in its URL, `POST /hooks/NAME`", "e.g. `- { webhook: deploy, secret: DEPLOY_HOOK }`");
                return None;
            };
            let webhook = cx.string(hook, "`webhook`")?;
            if webhook.is_empty() || webhook.len() > 64 || !webhook.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.') {
                cx.error(hook, format!("webhook name `{webhook}`: use up to 64 letters, digits, `-`, `_` and `.` (it is the URL's last part)"));
                return None;
            }
            if !names.insert(webhook.clone()) {
                cx.error(hook, format!("two triggers are webhook `{webhook}`"));
            }
            let Some(secret) = m.get_node("secret").and_then(|s| cx.string(s, "`secret`")) else {
                cx.error_hint(
                    hook,
                    format!("webhook `{webhook}` has no `secret`: deliveries must be signed (HMAC-SHA256), or anyone could start runs"),
                    "add `secret: NAME`, a secret `serve` holds (SANDFLOW_SECRET_NAME, or NAME=... in its --secrets-dir's NAMESPACE.env)",
                );
                return None;
            };
            let input = m.get_node("input").map(|i| {
                let template = cx.template(i);
                if let Some(r) = template.step_refs().first() {
                    cx.error_hint(i, format!("a webhook's `input` reads step `{}`: it is made from the request, before any step runs", r.id), "read `inputs.body.FIELD` or `inputs.headers['x-name']`");
                }
                template
            });
            Some(TriggerDecl { webhook, secret, input })
        })
        .collect()
}

/// `schedules:`: each cron expression parsed and shown to fire, each time
/// zone known, each input checked against the workflow's `input` schema.
fn schedules(cx: &mut Cx, node: &Node, input_schema: Option<&Value>) -> Vec<ScheduleDecl> {
    let Some(seq) = node.as_sequence() else {
        cx.error_hint(node, "`schedules` must be a list", "e.g. `schedules: [{ cron: \"0 3 * * *\", timezone: Europe/Berlin }]`");
        return Vec::new();
    };
    let mut names = std::collections::BTreeSet::new();
    seq.iter()
        .enumerate()
        .filter_map(|(i, n)| {
            let m = cx.mapping(n, "a schedule", SCHEDULE_KEYS)?;
            let name = m.get_node("name").and_then(|v| cx.string(v, "`name`")).unwrap_or_else(|| (i + 1).to_string());
            if !names.insert(name.clone()) {
                cx.error(m.get_node("name").unwrap_or(n), format!("two schedules are named `{name}`"));
            }
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.') {
                cx.error(m.get_node("name").unwrap_or(n), format!("schedule name `{name}`: use letters, digits, `-`, `_` and `.`"));
            }
            let Some(cron_node) = m.get_node("cron") else {
                cx.error_hint(n, "a schedule needs `cron`", "e.g. `cron: \"0 3 * * *\"` (03:00 every day; six fields put seconds first)");
                return None;
            };
            let cron = cx.string(cron_node, "`cron`")?;
            let parsed = match crate::cron::Cron::parse(&cron) {
                Ok(c) => c,
                Err(e) => {
                    cx.error_hint(cron_node, format!("`cron`: {e}"), "five fields: minute hour day-of-month month day-of-week, e.g. `*/5 * * * *`");
                    return None;
                }
            };
            let timezone = match m.get_node("timezone") {
                None => "UTC".to_string(),
                Some(tz) => {
                    let zone = cx.string(tz, "`timezone`")?;
                    if jiff::tz::TimeZone::get(&zone).is_err() {
                        cx.error_hint(tz, format!("unknown time zone `{zone}`"), "an IANA name, e.g. `Europe/Berlin`, `America/New_York` or `UTC`");
                        return None;
                    }
                    zone
                }
            };
            let zone = jiff::tz::TimeZone::get(&timezone).ok()?;
            if parsed.next_after(jiff::Timestamp::now(), &zone).is_none() {
                cx.error_hint(cron_node, format!("`cron: {cron}` never fires (no date matches it)"), "check the day of month against the month, e.g. `30 2` is February 30th");
                return None;
            }
            let input = m.get_node("input").map(to_json).unwrap_or_else(|| Value::Object(Default::default()));
            if let Some(schema) = input_schema
                && let Ok(validator) = jsonschema::validator_for(schema)
                && let Some(e) = validator.iter_errors(&input).next()
            {
                let at = m.get_node("input").unwrap_or(n);
                cx.error_hint(at, format!("this schedule's `input` does not match the workflow's `input` schema: {e}"), "each run it starts is checked the same way");
            }
            fn choice<T: Copy>(cx: &mut Cx, m: &Mapping, key: &str, options: &[(&str, T)]) -> Option<T> {
                let n = m.get_node(key)?;
                let text = cx.string(n, &format!("`{key}`"))?;
                match options.iter().find(|(k, _)| *k == text) {
                    Some((_, v)) => Some(*v),
                    None => {
                        let known: Vec<&str> = options.iter().map(|(k, _)| *k).collect();
                        cx.error(n, format!("`{key}: {text}`: one of {}", known.join(", ")));
                        None
                    }
                }
            }
            let catchup = choice(cx, m, "catchup", &Catchup::ALL).unwrap_or_default();
            let overlap = choice(cx, m, "overlap", &Overlap::ALL).unwrap_or_default();
            Some(ScheduleDecl { name, cron, parsed, timezone, input, catchup, overlap })
        })
        .collect()
}

fn tests(cx: &mut Cx, node: &Node) -> Vec<TestCase> {
    let Some(map) = cx.mapping(node, "`test`", TEST_KEYS) else { return Vec::new() };
    let Some(cases) = map.get_node("cases") else { return Vec::new() };
    let Some(seq) = cases.as_sequence() else {
        cx.error(cases, "`cases` must be a list");
        return Vec::new();
    };
    seq.iter()
        .enumerate()
        .filter_map(|(i, n)| {
            let m = cx.mapping(n, "a test case", CASE_KEYS)?;
            let name = m.get_node("name").and_then(|v| cx.string(v, "`name`")).unwrap_or_else(|| format!("case {}", i + 1));
            let input = m.get_node("input").map(to_json).unwrap_or(Value::Null);
            let target = match m.get_node("target") {
                None => Vec::new(),
                Some(n @ Node::Scalar(_)) => cx.string(n, "`target`").map(|s| vec![(s, cx.at(n))]).unwrap_or_default(),
                Some(Node::Sequence(seq)) => seq.iter().filter_map(|n| cx.string(n, "a `target` step").map(|s| (s, cx.at(n)))).collect(),
                Some(n) => {
                    cx.error(n, "`target` must be a step id or a list of them");
                    Vec::new()
                }
            };
            let expect = match (m.get_node("output"), m.get_node("outcome"), m.get_node("error")) {
                (Some(o), None, None) => stepflow_result(o).unwrap_or_else(|| Expectation::Output(to_json(o))),
                (None, Some(o), None) => match cx.string(o, "`outcome`").as_deref() {
                    Some("failed") => Expectation::Failed,
                    _ => {
                        cx.error_hint(o, "`outcome` can only be `failed`", "to expect success, give the expected `output`");
                        return None;
                    }
                },
                (None, None, Some(e)) => Expectation::Error(cx.string(e, "`error`")?),
                _ => {
                    cx.error_hint(n, format!("test case `{name}` needs exactly one of `output`, `outcome` and `error`"), "e.g. `output: { text: HI }`");
                    return None;
                }
            };
            // What signals the case's run gets: by step, each step's data
            // (an approval's `{approved, comment?}`).
            let signals = match m.get_node("signals") {
                None => Vec::new(),
                Some(Node::Mapping(map)) => map.iter().map(|(k, v)| (k.as_str().to_string(), to_json(v), location(&cx.file, k.at()))).collect(),
                Some(n) => {
                    cx.error_hint(n, "`signals` must map step ids to the data each is sent", "e.g. `signals: { approve: { approved: true } }`");
                    Vec::new()
                }
            };
            Some(TestCase { name, input, target, expect, signals, at: cx.at(n) })
        })
        .collect()
}
