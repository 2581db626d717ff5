//! Values, references, paths, templates and CEL conditions (SPEC §2.3, §2.4).
//!
//! A workflow value is parsed once into a [`Template`] that knows which steps
//! it references (for the DAG) and is evaluated against a [`Scope`] when its
//! step is about to run:
//!
//! | written | evaluates to |
//! | --- | --- |
//! | `{ $from: { workflow: input }, path: P }` | the run input, or the part at `P` |
//! | `{ $from: { step: ID }, path: P }` | step `ID`'s output, or the part at `P` |
//! | `..., $on_skip: use_default, $default: V` | `V` when `ID` was skipped (or `P` is missing) |
//! | `{ $literal: V }` | `V`, unevaluated |
//! | `{ $input: P }` | StepFlow's spelling of `$from: { workflow: input }, path: P` |
//! | `{ $step: ID, path: P }` | StepFlow's spelling of `$from: { step: ID }, path: P` |
//! | `{ $variable: P, default: V }` | the run variable at `P` (`--var`), or `V` |
//! | `{ $if: C, then: A, else: B }` | `A` when `C` is truthy, else `B` (null if absent); only the branch taken is read |
//! | `{ $coalesce: [A, B, …] }` | the first of them that is neither null nor a skipped step's |
//! | `"{{ EXPR }}"` | the typed result of the CEL expression |
//! | `"Hello {{ EXPR }}!"` | a string; strings inserted as they are, other values as JSON |
//!
//! CEL sees `inputs`, `steps.ID.output` (or `.result`) and `steps.ID.status`,
//! `item` and `index` in a `forEach`, `secrets.NAME`, `run.id`,
//! `run.attempt`, `run.trigger` (`manual`, `schedule`, `webhook`, `retry`)
//! and `run.scheduled_time` (the tick a schedule started it for, RFC 3339;
//! null otherwise), and in `finally` steps `run.status` and `run.failures`.

pub mod path;

use crate::workflow::diagnostic::{Diagnostic, Location};
use crate::workflow::yaml::{Node, location, node_location, scalar_value, to_json};
use cel::common::ast::Expr;
use path::JsonPath;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

/// A value from the workflow file, ready to evaluate.
///
/// Most of a workflow's templates are constants: the expressions and
/// references are boxed so that a template is as small as a JSON value
/// (32 bytes, not 168; a step holds several, and a file thousands).
#[derive(Debug, Clone)]
pub enum Template {
    /// Nothing to evaluate.
    Const(Value),
    /// A list whose items are templates.
    Array(Vec<Template>),
    /// A mapping whose values are templates, in written order.
    Object(Vec<(String, Template)>),
    /// `{ $from: ..., path: ... }`: a value read from the input, a step or a variable.
    From(Box<FromRef>),
    /// A whole-string `{{ EXPR }}`: keeps the result's type.
    Cel(Box<CelExpr>),
    /// A string with `{{ EXPR }}` parts.
    Interpolate(Vec<Piece>),
    /// `{ $if: C, then: A, else: B }`: only the branch taken is evaluated.
    If(Box<IfExpr>),
    /// `{ $coalesce: [A, B, …] }`: the first value that is neither null nor
    /// a skipped step's; items after it are not evaluated.
    Coalesce(Vec<Template>),
}

/// `{ $if: cond, then: …, else: … }` (StepFlow).
#[derive(Debug, Clone)]
pub struct IfExpr {
    /// The condition.
    pub cond: Template,
    /// The value when it holds.
    pub then: Template,
    /// `else`, or null.
    pub otherwise: Template,
}

/// One part of an interpolated string.
#[derive(Debug, Clone)]
pub enum Piece {
    /// Literal text.
    Text(String),
    /// A `{{ EXPR }}`, its value written as text.
    Expr(CelExpr),
}

/// `{ $from: ..., path: ..., $on_skip: use_default, $default: ... }`.
#[derive(Debug, Clone)]
pub struct FromRef {
    /// What it reads.
    pub source: Source,
    /// `path:` within it (none: the whole value).
    pub path: Option<JsonPath>,
    /// `$on_skip: use_default`: a skipped step gives `default` instead of
    /// skipping the consumer.
    pub use_default_on_skip: bool,
    /// `$default`: the value when the path finds nothing (or a skipped step, with `use_default_on_skip`).
    pub default: Option<Value>,
    /// Where it is written.
    pub at: Location,
}

/// Where a `$from` reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `$from: input` (or `$input`): the run's input.
    Input,
    /// `$from: { step: ID }`: a step's output.
    Step(String),
    /// `$variable`: the run's variables (`--var`, `--vars`); the path's
    /// first name is the variable's.
    Variables,
}

/// A compiled CEL expression and the steps it reads.
#[derive(Debug, Clone)]
pub struct CelExpr {
    /// The expression as written.
    pub text: String,
    program: Arc<cel::Program>,
    /// The steps it reads (`steps.ID`).
    pub steps: BTreeSet<String>,
    /// Steps read only as `steps.ID.status`.
    status_only: BTreeSet<String>,
    /// Names read as `secrets.NAME`.
    pub secrets: BTreeSet<String>,
    /// The top-level names it reads (`inputs`, `steps`, `item`, …; not
    /// those a macro like `map(x, …)` binds).
    pub names: BTreeSet<String>,
    /// Which of the names in scope the expression reads: only those are
    /// passed to CEL.
    vars: Vars,
    /// Where it is written.
    pub at: Location,
}

#[derive(Debug, Clone, Copy)]
struct Vars {
    inputs: bool,
    /// `input`: a step's own resolved input (only `cache.key` sees it).
    input: bool,
    steps: bool,
    item: bool,
    index: bool,
    run: bool,
    secrets: bool,
}

/// CEL values of a run's data, converted once per run: the run input and
/// finished steps' outputs never change, and converting a large input for
/// every `forEach` item would make the items quadratic.
#[derive(Default)]
pub struct CelCache {
    inputs: std::sync::OnceLock<cel::Value>,
    steps: std::sync::Mutex<std::collections::HashMap<String, cel::Value>>,
}

impl CelCache {
    fn inputs(&self, v: &Value) -> cel::Value {
        self.inputs.get_or_init(|| to_cel(v)).clone()
    }

    fn step(&self, id: &str, v: &Value) -> cel::Value {
        let mut steps = crate::lock(&self.steps);
        steps.entry(id.to_string()).or_insert_with(|| to_cel(v)).clone()
    }
}

/// A step ID referenced by a template, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRef {
    /// The step's id.
    pub id: String,
    /// Where it is referenced.
    pub at: Location,
    /// A skipped step does not skip the consumer (`$on_skip: use_default`).
    pub tolerates_skip: bool,
}

impl CelExpr {
    /// Compiles `text`; the error is a diagnostic at `at`.
    pub fn compile(text: &str, at: &Location) -> Result<Self, Diagnostic> {
        let program = cel::Program::compile(text).map_err(|e| {
            Diagnostic::new(at, format!("invalid expression `{text}`: {}", tidy_parse_error(&e.to_string())))
                .with_hint("expressions are CEL, e.g. `steps.load.output.count > 3`")
        })?;
        let mut steps = BTreeSet::new();
        collect_refs(&program.expression().expr, "steps", &mut steps);
        let status_only = status_only(&program.expression().expr, &steps);
        let mut secrets = BTreeSet::new();
        collect_refs(&program.expression().expr, "secrets", &mut secrets);
        let names = free_names(&program.expression().expr);
        check_names(text, at, &names, &program.references().functions())?;
        let reads = |name: &str| names.contains(name);
        let vars = Vars {
            inputs: reads("inputs"),
            input: reads("input"),
            steps: reads("steps"),
            item: reads("item"),
            index: reads("index"),
            run: reads("run"),
            secrets: reads("secrets"),
        };
        Ok(CelExpr { text: text.to_string(), program: Arc::new(program), steps, status_only, secrets, names, vars, at: at.clone() })
    }

    fn eval(&self, scope: &Scope<'_>) -> Result<Value, EvalError> {
        // CEL's standard library (its functions and their overloads), built
        // once per process: building it for every evaluation was 40% of a
        // `forEach` run's time.
        static STDLIB: std::sync::LazyLock<Arc<cel::Env>> = std::sync::LazyLock::new(|| Arc::new(cel::Env::stdlib()));
        let mut ctx = cel::Context::with_env(STDLIB.clone());
        let v = self.vars;
        if v.steps {
            let mut steps = std::collections::HashMap::new();
            for id in &self.steps {
                let status = scope.outputs.status(id).map(|s| ("status".to_string(), cel::Value::String(Arc::new(s.to_string()))));
                match scope.outputs.lookup(id) {
                    Lookup::Done(out) => {
                        let value = scope.cache.step(id, out);
                        let mut entry: std::collections::HashMap<String, cel::Value> =
                            [("output".to_string(), value.clone()), ("result".to_string(), value)].into();
                        entry.extend(status);
                        steps.insert(id.clone(), cel::Value::Map(entry.into()));
                    }
                    // Only its status is read: no output needed.
                    _ if status.is_some() && self.status_only.contains(id) => {
                        let entry: std::collections::HashMap<String, cel::Value> = status.into_iter().collect();
                        steps.insert(id.clone(), cel::Value::Map(entry.into()));
                    }
                    Lookup::Skipped => return Err(EvalError::Skipped(id.clone())),
                    Lookup::Unknown => {
                        return Err(EvalError::Reference(format!("`{}` reads step `{id}`, which has no output", self.text)));
                    }
                }
            }
            ctx.add_variable_from_value("steps", cel::Value::Map(steps.into()));
        }
        if v.inputs {
            ctx.add_variable_from_value("inputs", scope.cache.inputs(scope.inputs));
        }
        if v.input
            && let Some(input) = scope.step_input
        {
            ctx.add_variable_from_value("input", to_cel(input));
        }
        if v.run {
            let mut run = serde_json::json!({ "id": scope.run_id, "attempt": scope.attempt, "trigger": "manual", "scheduled_time": null });
            if let Value::Object(run) = &mut run {
                for extra in [scope.trigger, scope.ending].into_iter().flatten() {
                    if let Value::Object(fields) = extra {
                        run.extend(fields.clone());
                    }
                }
            }
            ctx.add_variable_from_value("run", to_cel(&run));
        }
        if let Some(item) = scope.item {
            if v.item {
                ctx.add_variable_from_value("item", to_cel(item));
            }
            if v.index {
                ctx.add_variable_from_value("index", cel::Value::Int(scope.index.unwrap_or(0) as i64));
            }
        }
        if v.secrets {
            let secrets: std::collections::HashMap<String, cel::Value> =
                scope.secrets.iter().map(|(k, val)| (k.clone(), cel::Value::String(Arc::new(val.clone())))).collect();
            ctx.add_variable_from_value("secrets", cel::Value::Map(secrets.into()));
        }
        let result = self
            .program
            .execute(&ctx)
            .map_err(|e| EvalError::Expression(format!("`{}` failed: {e}", self.text)))?;
        result
            .json()
            .map_err(|e| EvalError::Expression(format!("`{}` gave a value that is not JSON: {e}", self.text)))
    }
}

/// The names an expression may read (where each may be read is the
/// plan's to check: `item` in a `forEach` step, `input` in `cache.key`).
pub const NAMES: &[&str] = &["inputs", "steps", "item", "index", "run", "secrets", "input"];

/// CEL's functions and macros as sandflow runs them, for suggestions and
/// the README (whether a function exists is asked of CEL itself: see
/// [`known_function`]).
pub const FUNCTIONS: &[&str] = &[
    "size", "contains", "startsWith", "endsWith", "matches", "int", "uint", "double", "string", "bytes", "bool", "type", "dyn", "has", "all",
    "exists", "exists_one", "map", "filter",
];

/// Refuses an expression that reads a name no scope has, or calls a
/// function CEL does not have: they would fail every run, as `reference`.
fn check_names(text: &str, at: &Location, names: &BTreeSet<String>, functions: &[&str]) -> Result<(), Diagnostic> {
    for name in names {
        if !NAMES.contains(&name.as_str()) {
            let mut d = Diagnostic::new(at, format!("`{text}` reads `{name}`, which is not defined"));
            d = match crate::workflow::diagnostic::nearest(name, NAMES.iter().copied()) {
                Some(n) => d.with_hint(format!("did you mean `{n}`?")),
                None => d.with_hint("an expression reads `inputs`, `steps.ID.output`, `run`, `secrets.NAME`, and `item`/`index` in a `forEach` step"),
            };
            return Err(d);
        }
    }
    let mut functions: Vec<&str> = functions.iter().copied().filter(|f| f.chars().next().is_some_and(|c| c.is_ascii_alphabetic()) && !f.contains('.')).collect();
    functions.sort_unstable();
    for f in functions {
        if !known_function(f) {
            let d = Diagnostic::new(at, format!("`{text}` calls `{f}`, which is not a CEL function"));
            return Err(match crate::workflow::diagnostic::nearest(f, FUNCTIONS.iter().copied()) {
                Some(n) => d.with_hint(format!("did you mean `{n}`?")),
                None => d.with_hint(format!("CEL's functions here: {}", FUNCTIONS.join(", "))),
            });
        }
    }
    Ok(())
}

/// Whether CEL, as sandflow runs it, has a function `name`. Asked of the
/// library itself (once per name): called with no arguments, as a function
/// and as a method of a value of each type, an unknown name is
/// "undeclared" every time, a known one fails only on its arguments.
pub fn known_function(name: &str) -> bool {
    static KNOWN: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, bool>>> = std::sync::LazyLock::new(Default::default);
    if let Some(&known) = crate::lock(&KNOWN).get(name) {
        return known;
    }
    let env = Arc::new(cel::Env::stdlib());
    let ctx = cel::Context::with_env(env);
    let receivers = ["", "''.", "[].", "{}.", "(1).", "(1u).", "(1.5).", "true.", "b''.", "null."];
    let known = receivers.iter().any(|r| match cel::Program::compile(&format!("{r}{name}()")) {
        Ok(p) => p.execute(&ctx).err().is_none_or(|e| !e.to_string().starts_with("Undeclared reference")),
        Err(_) => false,
    });
    crate::lock(&KNOWN).insert(name.to_string(), known);
    known
}

/// The names `expr` reads that no macro binds (`x` in `l.map(x, x + 1)`).
fn free_names(expr: &Expr) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    visit_scoped(expr, &mut Vec::new(), &mut |e, bound| {
        if let Expr::Ident(name) = e
            && !name.starts_with('@')
            && !bound.contains(name)
        {
            out.insert(name.clone());
        }
    });
    out
}

/// The first line of a CEL parse error, without the parser's list of
/// expected tokens: `syntax error at column 11: mismatched input '<EOF>'`.
fn tidy_parse_error(raw: &str) -> String {
    let first = raw.lines().next().unwrap_or("").trim();
    let first = first.strip_prefix("ERROR: ").unwrap_or(first);
    let (column, rest) = match first.strip_prefix("<input>:").and_then(|r| r.split_once(": ")) {
        Some((pos, rest)) => (pos.split(':').nth(1).map(str::to_string), rest),
        None => (None, first),
    };
    let rest = rest.strip_prefix("Syntax error: ").unwrap_or(rest);
    let rest = rest.split(" expecting ").next().unwrap_or(rest).trim();
    match column {
        Some(c) => format!("syntax error at column {c}: {rest}"),
        None => format!("syntax error: {rest}"),
    }
}

/// JSON as a CEL value. Whole numbers become `int` when they fit (so
/// `count + 1` works: CEL does not mix `int` and `uint`), else `uint`.
fn to_cel(v: &Value) -> cel::Value {
    match v {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => cel::Value::Int(i),
            (None, Some(u)) => cel::Value::UInt(u),
            _ => cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(a) => cel::Value::List(Arc::new(a.iter().map(to_cel).collect())),
        Value::Object(m) => {
            let map: std::collections::HashMap<String, cel::Value> = m.iter().map(|(k, v)| (k.clone(), to_cel(v))).collect();
            cel::Value::Map(map.into())
        }
    }
}

/// Finds `ROOT.NAME` (and `ROOT["NAME"]`) in an expression, e.g. the
/// steps (`steps.load`) or secrets (`secrets.TOKEN`) it reads.
fn collect_refs(expr: &Expr, root: &str, out: &mut BTreeSet<String>) {
    visit(expr, &mut |e| {
        if let Some(id) = root_field(e, root) {
            out.insert(id.to_string());
        }
    });
}

/// `NAME` when `e` is `ROOT.NAME` or `ROOT["NAME"]`.
fn root_field<'e>(e: &'e Expr, root: &str) -> Option<&'e str> {
    match e {
        Expr::Select(sel) => match &sel.operand.expr {
            Expr::Ident(name) if name == root => Some(&sel.field),
            _ => None,
        },
        Expr::Call(call) if call.func_name == "_[_]" => match call.args.as_slice() {
            [target, key] => match (&target.expr, &key.expr) {
                (Expr::Ident(name), Expr::Literal(cel::common::ast::LiteralValue::String(id))) if name == root => Some(&**id),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

/// Steps the expression reads only as `steps.ID.status`: it may read
/// them whether or not they have an output.
fn status_only(expr: &Expr, steps: &BTreeSet<String>) -> BTreeSet<String> {
    let mut reads: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    visit(expr, &mut |e| {
        if let Some(id) = root_field(e, "steps") {
            reads.entry(id).or_default().0 += 1;
        }
        if let Expr::Select(sel) = e
            && sel.field == "status"
            && let Some(id) = root_field(&sel.operand.expr, "steps")
        {
            reads.entry(id).or_default().1 += 1;
        }
    });
    steps.iter().filter(|id| reads.get(id.as_str()).is_some_and(|(all, status)| all == status)).cloned().collect()
}

/// Calls `f` on `expr` and every expression inside it.
fn visit<'e>(expr: &'e Expr, f: &mut dyn FnMut(&'e Expr)) {
    visit_scoped(expr, &mut Vec::new(), &mut |e, _| f(e));
}

/// [`visit`], telling `f` the names the macros around each expression
/// bind (`x` inside `l.map(x, x + 1)`).
fn visit_scoped<'e>(expr: &'e Expr, bound: &mut Vec<String>, f: &mut dyn FnMut(&'e Expr, &[String])) {
    f(expr, bound);
    match expr {
        Expr::Select(sel) => visit_scoped(&sel.operand.expr, bound, f),
        Expr::Call(call) => {
            if let Some(t) = &call.target {
                visit_scoped(&t.expr, bound, f);
            }
            for a in &call.args {
                visit_scoped(&a.expr, bound, f);
            }
        }
        Expr::Comprehension(c) => {
            visit_scoped(&c.iter_range.expr, bound, f);
            visit_scoped(&c.accu_init.expr, bound, f);
            let outer = bound.len();
            bound.push(c.iter_var.clone());
            bound.extend(c.iter_var2.clone());
            bound.push(c.accu_var.clone());
            for e in [&c.loop_cond, &c.loop_step, &c.result] {
                visit_scoped(&e.expr, bound, f);
            }
            bound.truncate(outer);
        }
        Expr::List(list) => list.elements.iter().for_each(|e| visit_scoped(&e.expr, bound, f)),
        Expr::Map(map) => {
            for entry in &map.entries {
                if let cel::common::ast::EntryExpr::MapEntry(e) = &entry.expr {
                    visit_scoped(&e.key.expr, bound, f);
                    visit_scoped(&e.value.expr, bound, f);
                }
            }
        }
        Expr::Struct(st) => {
            for entry in &st.entries {
                if let cel::common::ast::EntryExpr::StructField(fl) = &entry.expr {
                    visit_scoped(&fl.value.expr, bound, f);
                }
            }
        }
        _ => {}
    }
}

/// What a step ID resolves to while a run is in progress.
pub enum Lookup<'a> {
    /// It ended with this output.
    Done(&'a Value),
    /// It was skipped (or ended without an output).
    Skipped,
    /// It has not ended, or no step has this id.
    Unknown,
}

/// The outputs of the steps that have finished.
pub trait Outputs {
    /// What step `id` resolves to now.
    fn lookup(&self, id: &str) -> Lookup<'_>;

    /// How step `id` ended (`steps.ID.status`), where that is known.
    fn status(&self, _id: &str) -> Option<&str> {
        None
    }
}

impl<V: std::borrow::Borrow<Value>> Outputs for BTreeMap<String, Option<V>> {
    fn lookup(&self, id: &str) -> Lookup<'_> {
        match self.get(id) {
            Some(Some(v)) => Lookup::Done(v.borrow()),
            Some(None) => Lookup::Skipped,
            None => Lookup::Unknown,
        }
    }
}

/// Everything a template may read.
pub struct Scope<'a> {
    /// `inputs`: the run's input.
    pub inputs: &'a Value,
    /// CEL conversions shared by the run's evaluations.
    pub cache: &'a CelCache,
    /// `steps.ID.output`: the ended steps' outputs.
    pub outputs: &'a dyn Outputs,
    /// `item`: the `forEach` item.
    pub item: Option<&'a Value>,
    /// `index`: the `forEach` item's index.
    pub index: Option<usize>,
    /// `run.id`.
    pub run_id: &'a str,
    /// `run.attempt`: 1, plus one per resume.
    pub attempt: u32,
    /// `secrets.NAME`.
    pub secrets: &'a BTreeMap<String, String>,
    /// For `finally` steps: `{status, failures}`, merged into `run`.
    pub ending: Option<&'a Value>,
    /// For `cache.key`: the step's resolved input, as `input`.
    pub step_input: Option<&'a Value>,
    /// The run's variables (`$variable`): an object, or null when none.
    pub variables: &'a Value,
    /// What started the run: `{trigger, scheduled_time}`, merged into
    /// `run` (none: `manual`, no time).
    pub trigger: Option<&'a Value>,
}

/// Why a template could not be evaluated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvalError {
    /// It reads a step that was skipped: the consumer is skipped too.
    Skipped(String),
    /// A reference or path did not resolve (failure kind `reference`).
    Reference(String),
    /// A CEL expression failed to evaluate.
    Expression(String),
}

impl std::fmt::Display for EvalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EvalError::Skipped(id) => write!(f, "step `{id}` was skipped"),
            EvalError::Reference(m) | EvalError::Expression(m) => f.write_str(m),
        }
    }
}

impl Template {
    /// Evaluates the template.
    pub fn eval(&self, scope: &Scope<'_>) -> Result<Value, EvalError> {
        match self {
            Template::Const(v) => Ok(v.clone()),
            Template::Array(items) => items.iter().map(|t| t.eval(scope)).collect::<Result<_, _>>().map(Value::Array),
            Template::Object(entries) => entries
                .iter()
                .map(|(k, t)| t.eval(scope).map(|v| (k.clone(), v)))
                .collect::<Result<Map<_, _>, _>>()
                .map(Value::Object),
            Template::From(r) => r.eval(scope),
            Template::Cel(e) => e.eval(scope),
            Template::Interpolate(pieces) => {
                let mut out = String::new();
                for piece in pieces {
                    match piece {
                        Piece::Text(t) => out.push_str(t),
                        Piece::Expr(e) => out.push_str(&display(&e.eval(scope)?)),
                    }
                }
                Ok(Value::String(out))
            }
            Template::If(e) => match truthy(&e.cond.eval(scope)?) {
                true => e.then.eval(scope),
                false => e.otherwise.eval(scope),
            },
            Template::Coalesce(items) => {
                for item in items {
                    match item.eval(scope) {
                        Ok(Value::Null) | Err(EvalError::Skipped(_)) => {}
                        other => return other,
                    }
                }
                Ok(Value::Null)
            }
        }
    }

    /// Every step this template reads.
    pub fn step_refs(&self) -> Vec<StepRef> {
        let mut out = Vec::new();
        self.collect(&mut out);
        out
    }

    fn collect(&self, out: &mut Vec<StepRef>) {
        match self {
            Template::Const(_) => {}
            Template::Array(items) => items.iter().for_each(|t| t.collect(out)),
            Template::Object(entries) => entries.iter().for_each(|(_, t)| t.collect(out)),
            Template::From(r) => {
                if let Source::Step(id) = &r.source {
                    out.push(StepRef { id: id.clone(), at: r.at.clone(), tolerates_skip: r.use_default_on_skip });
                }
            }
            Template::Cel(e) => e.collect(out),
            Template::Interpolate(pieces) => pieces.iter().for_each(|p| {
                if let Piece::Expr(e) = p {
                    e.collect(out)
                }
            }),
            Template::If(e) => {
                e.cond.collect(out);
                // A branch may never be read: what it reads being skipped
                // matters only if it is (the evaluation says so then).
                let start = out.len();
                e.then.collect(out);
                e.otherwise.collect(out);
                out[start..].iter_mut().for_each(|r| r.tolerates_skip = true);
            }
            Template::Coalesce(items) => {
                let start = out.len();
                items.iter().for_each(|t| t.collect(out));
                out[start..].iter_mut().for_each(|r| r.tolerates_skip = true);
            }
        }
    }

    /// Every CEL expression in this template.
    pub fn expressions(&self) -> Vec<&CelExpr> {
        let mut out = Vec::new();
        self.collect_exprs(&mut out);
        out
    }

    fn collect_exprs<'a>(&'a self, out: &mut Vec<&'a CelExpr>) {
        match self {
            Template::Const(_) | Template::From(_) => {}
            Template::Array(items) => items.iter().for_each(|t| t.collect_exprs(out)),
            Template::Object(entries) => entries.iter().for_each(|(_, t)| t.collect_exprs(out)),
            Template::Cel(e) => out.push(&**e),
            Template::Interpolate(pieces) => out.extend(pieces.iter().filter_map(|p| match p {
                Piece::Expr(e) => Some(e),
                Piece::Text(_) => None,
            })),
            Template::If(e) => [&e.cond, &e.then, &e.otherwise].into_iter().for_each(|t| t.collect_exprs(out)),
            Template::Coalesce(items) => items.iter().for_each(|t| t.collect_exprs(out)),
        }
    }

    /// Whether evaluating needs anything at all.
    pub fn is_const(&self) -> bool {
        matches!(self, Template::Const(_))
    }
}

impl CelExpr {
    fn collect(&self, out: &mut Vec<StepRef>) {
        out.extend(self.steps.iter().map(|id| StepRef { id: id.clone(), at: self.at.clone(), tolerates_skip: false }));
    }

    /// Evaluates to a boolean, as `when` needs.
    pub fn eval_bool(&self, scope: &Scope<'_>) -> Result<bool, EvalError> {
        match self.eval(scope)? {
            Value::Bool(b) => Ok(b),
            other => Err(EvalError::Expression(format!("`{}` gave {other}, not true or false", self.text))),
        }
    }
}

impl FromRef {
    fn eval(&self, scope: &Scope<'_>) -> Result<Value, EvalError> {
        let (whole, what) = match &self.source {
            Source::Input => (scope.inputs, "the run input".to_string()),
            Source::Variables => {
                let path = self.path.as_ref().expect("a `$variable` has a path");
                return match path.get(scope.variables) {
                    Some(v) => Ok(v.clone()),
                    None => self.default.clone().ok_or_else(|| {
                        let name = path.first_key().unwrap_or_default();
                        EvalError::Reference(format!(
                            "variable `{path}` is not set: pass `--var {name}=VALUE` (or `--vars FILE`), or give the reference a `default`"
                        ))
                    }),
                };
            }
            Source::Step(id) => match scope.outputs.lookup(id) {
                Lookup::Done(v) => (v, format!("the output of step `{id}`")),
                Lookup::Skipped if self.use_default_on_skip => return Ok(self.default.clone().unwrap_or(Value::Null)),
                Lookup::Skipped => return Err(EvalError::Skipped(id.clone())),
                Lookup::Unknown => return Err(EvalError::Reference(format!("step `{id}` has no output"))),
            },
        };
        let Some(path) = &self.path else { return Ok(whole.clone()) };
        match path.get(whole) {
            Some(v) => Ok(v.clone()),
            None => match &self.default {
                Some(d) => Ok(d.clone()),
                None => Err(EvalError::Reference(format!("{what} has nothing at path `{path}`; add `$default` to allow that"))),
            },
        }
    }
}

/// Whether a value counts as true (`skipIf`, `$if`): null, false, 0, and
/// empty strings, lists and objects do not.
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// How a value is inserted into a string: strings as they are, whole
/// numbers without a fraction, everything else as JSON.
pub fn display(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// Parses a workflow value into a template, adding problems to `diags`.
pub fn parse(node: &Node, file: &Arc<Path>, diags: &mut Vec<Diagnostic>) -> Template {
    let at = node_location(file, node);
    match node {
        Node::Scalar(s) => match scalar_value(s) {
            Value::String(text) if text.contains("{{") => parse_string(&text, &at, diags),
            v => Template::Const(v),
        },
        Node::Sequence(seq) => {
            let items: Vec<Template> = seq.iter().map(|n| parse(n, file, diags)).collect();
            collapse_array(items)
        }
        Node::Mapping(map) => {
            if map.get_node("$literal").is_some() {
                if map.len() > 1 {
                    diags.push(Diagnostic::new(&at, "`$literal` must be the only key of its mapping"));
                }
                return Template::Const(to_json(map.get_node("$literal").expect("checked above")));
            }
            if let Some(from) = map.get_node("$from") {
                return parse_from(map, from, file, &at, diags);
            }
            if let Some(t) = parse_stepflow(map, file, &at, diags) {
                return t;
            }
            for (k, _) in map.iter() {
                if k.as_str().starts_with('$') {
                    let mut d = Diagnostic::new(&location(file, k.at()), format!("unknown key `{}`", k.as_str()));
                    if let Some(n) = crate::workflow::diagnostic::nearest(k.as_str(), REFERENCE_KEYS) {
                        d = d.with_hint(format!("did you mean `{n}`?"));
                    } else {
                        d = d.with_hint(format!(
                            "keys starting with `$` are {}; write `{{ $literal: ... }}` to pass one through",
                            REFERENCE_KEYS.map(|k| format!("`{k}`")).join(", ")
                        ));
                    }
                    diags.push(d);
                }
            }
            let entries: Vec<(String, Template)> =
                map.iter().map(|(k, v)| (k.as_str().to_string(), parse(v, file, diags))).collect();
            collapse_object(entries)
        }
    }
}

/// The keys that make a mapping a reference or an expression.
const REFERENCE_KEYS: [&str; 7] = ["$from", "$literal", "$input", "$step", "$variable", "$if", "$coalesce"];

/// Reports keys of a reference mapping other than `allowed`.
fn only_keys(map: &crate::workflow::yaml::Mapping, allowed: &[&str], what: &str, file: &Arc<Path>, diags: &mut Vec<Diagnostic>) {
    for (k, _) in map.iter() {
        if !allowed.contains(&k.as_str()) {
            let mut d = Diagnostic::new(&location(file, k.at()), format!("unknown key `{}` in {what}", k.as_str()));
            d = match crate::workflow::diagnostic::nearest(k.as_str(), allowed.iter().copied()) {
                Some(n) => d.with_hint(format!("did you mean `{n}`?")),
                None => d.with_hint(format!("its keys are {}", allowed.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", "))),
            };
            diags.push(d);
        }
    }
}

/// A path written in a reference, or a diagnostic.
fn parse_path(node: &Node, file: &Arc<Path>, diags: &mut Vec<Diagnostic>) -> Option<JsonPath> {
    match node.as_scalar() {
        Some(s) => JsonPath::parse(s.as_str()).map_err(|e| diags.push(Diagnostic::new(&node_location(file, node), e))).ok(),
        None => {
            diags.push(Diagnostic::new(&node_location(file, node), "a path must be a string such as `data.items[0].id`"));
            None
        }
    }
}

/// StepFlow's value expressions: `$input`, `$step`, `$variable`, `$if`,
/// `$coalesce` (its `schemas/flow.json`). `None`: the mapping is none of them.
fn parse_stepflow(map: &crate::workflow::yaml::Mapping, file: &Arc<Path>, at: &Location, diags: &mut Vec<Diagnostic>) -> Option<Template> {
    let from = |source, path, default| Template::From(Box::new(FromRef { source, path, use_default_on_skip: false, default, at: at.clone() }));
    if let Some(p) = map.get_node("$input") {
        only_keys(map, &["$input"], "an `$input` reference", file, diags);
        // `$input: "$"` (or "") is the whole input.
        return Some(parse_path(p, file, diags).map_or(Template::Const(Value::Null), |path| from(Source::Input, Some(path), None)));
    }
    if let Some(id) = map.get_node("$step") {
        only_keys(map, &["$step", "path"], "a `$step` reference", file, diags);
        let Some(id) = id.as_scalar().map(|s| s.as_str().to_string()) else {
            diags.push(Diagnostic::new(&node_location(file, id), "`$step` must be a step id, e.g. `$step: load`"));
            return Some(Template::Const(Value::Null));
        };
        let path = map.get_node("path").and_then(|p| parse_path(p, file, diags));
        return Some(from(Source::Step(id), path, None));
    }
    if let Some(p) = map.get_node("$variable") {
        only_keys(map, &["$variable", "default"], "a `$variable` reference", file, diags);
        let path = parse_path(p, file, diags)?;
        if path.first_key().is_none() {
            diags.push(Diagnostic::new(&node_location(file, p), "`$variable` must start with the variable's name, e.g. `$variable: api_key`"));
            return Some(Template::Const(Value::Null));
        }
        return Some(from(Source::Variables, Some(path), map.get_node("default").map(to_json)));
    }
    if let Some(cond) = map.get_node("$if") {
        only_keys(map, &["$if", "then", "else"], "an `$if` expression", file, diags);
        let Some(then) = map.get_node("then") else {
            diags.push(Diagnostic::new(at, "`$if` needs `then` (and may have `else`)").with_hint("e.g. `{ $if: { $input: fast }, then: a, else: b }`"));
            return Some(Template::Const(Value::Null));
        };
        let cond = parse(cond, file, diags);
        let then = parse(then, file, diags);
        let otherwise = map.get_node("else").map_or(Template::Const(Value::Null), |n| parse(n, file, diags));
        return Some(Template::If(Box::new(IfExpr { cond, then, otherwise })));
    }
    if let Some(items) = map.get_node("$coalesce") {
        only_keys(map, &["$coalesce"], "a `$coalesce` expression", file, diags);
        let Some(seq) = items.as_sequence() else {
            diags.push(Diagnostic::new(&node_location(file, items), "`$coalesce` must be a list of values, the first not null is taken"));
            return Some(Template::Const(Value::Null));
        };
        return Some(Template::Coalesce(seq.iter().map(|n| parse(n, file, diags)).collect()));
    }
    None
}

fn collapse_array(items: Vec<Template>) -> Template {
    if items.iter().all(Template::is_const) {
        Template::Const(Value::Array(items.into_iter().map(|t| match t { Template::Const(v) => v, _ => unreachable!() }).collect()))
    } else {
        Template::Array(items)
    }
}

fn collapse_object(entries: Vec<(String, Template)>) -> Template {
    if entries.iter().all(|(_, t)| t.is_const()) {
        Template::Const(Value::Object(
            entries.into_iter().map(|(k, t)| (k, match t { Template::Const(v) => v, _ => unreachable!() })).collect(),
        ))
    } else {
        Template::Object(entries)
    }
}

fn parse_from(
    map: &crate::workflow::yaml::Mapping,
    from: &Node,
    file: &Arc<Path>,
    at: &Location,
    diags: &mut Vec<Diagnostic>,
) -> Template {
    const KEYS: [&str; 6] = ["$from", "path", "$on_skip", "$default", "onSkip", "on_skip"];
    only_keys(map, &KEYS, "a `$from` reference", file, diags);
    let from_at = node_location(file, from);
    let source = match from.as_mapping().map(|m| (m.get_scalar("workflow"), m.get_scalar("step"), m.len())) {
        Some((Some(w), None, 1)) if w.as_str() == "input" => Some(Source::Input),
        Some((None, Some(s), 1)) => Some(Source::Step(s.as_str().to_string())),
        _ => {
            diags.push(
                Diagnostic::new(&from_at, "`$from` must be `{ workflow: input }` or `{ step: ID }`")
                    .with_hint("e.g. `$from: { step: load }, path: data.items`"),
            );
            None
        }
    };
    let path = map.get_node("path").and_then(|p| parse_path(p, file, diags));
    let mut use_default_on_skip = match map.get_node("$on_skip") {
        None => false,
        Some(Node::Scalar(s)) if s.as_str() == "use_default" => true,
        Some(other) => {
            diags.push(Diagnostic::new(&node_location(file, other), "`$on_skip` takes one value: `use_default`"));
            false
        }
    };
    // StepFlow's older spelling: `onSkip: { action: useDefault, defaultValue: V }`
    // (V null when absent) or `{ action: skip }`.
    let mut stepflow_default = None;
    if let Some(on_skip) = map.get_node("onSkip").or_else(|| map.get_node("on_skip")) {
        let keys = ["action", "defaultValue", "default_value"];
        match on_skip.as_mapping() {
            Some(m) => {
                only_keys(m, &keys, "`onSkip`", file, diags);
                match m.get_scalar("action").map(|a| a.as_str()) {
                    Some("useDefault" | "use_default") => {
                        use_default_on_skip = true;
                        stepflow_default = Some(m.get_node("defaultValue").or_else(|| m.get_node("default_value")).map_or(Value::Null, to_json));
                    }
                    Some("skip") => {}
                    _ => diags.push(Diagnostic::new(&node_location(file, on_skip), "`onSkip` needs `action: useDefault` or `action: skip`")),
                }
            }
            None => diags.push(Diagnostic::new(&node_location(file, on_skip), "`onSkip` must be a mapping such as `{ action: useDefault, defaultValue: null }`")),
        }
    }
    let default = map.get_node("$default").map(to_json).or(stepflow_default);
    if use_default_on_skip && default.is_none() {
        diags.push(Diagnostic::new(at, "`$on_skip: use_default` needs a `$default` value"));
    }
    match source {
        Some(source) => Template::From(Box::new(FromRef { source, path, use_default_on_skip, default, at: at.clone() })),
        None => Template::Const(Value::Null),
    }
}

/// Parses a string with `{{ ... }}` parts.
fn parse_string(text: &str, at: &Location, diags: &mut Vec<Diagnostic>) -> Template {
    let trimmed = text.trim();
    if let Some(inner) = trimmed.strip_prefix("{{").and_then(|t| t.strip_suffix("}}"))
        && !inner.contains("{{")
        && !inner.contains("}}")
    {
        return match CelExpr::compile(inner.trim(), at) {
            Ok(e) => Template::Cel(Box::new(e)),
            Err(d) => {
                diags.push(d);
                Template::Const(Value::Null)
            }
        };
    }
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        if start > 0 {
            pieces.push(Piece::Text(rest[..start].to_string()));
        }
        let Some(len) = rest[start + 2..].find("}}") else {
            diags.push(Diagnostic::new(at, format!("`{{{{` without a closing `}}}}` in `{text}`")));
            return Template::Const(Value::String(text.to_string()));
        };
        let inner = rest[start + 2..start + 2 + len].trim();
        match CelExpr::compile(inner, at) {
            Ok(e) => pieces.push(Piece::Expr(e)),
            Err(d) => diags.push(d),
        }
        rest = &rest[start + 2 + len + 2..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.to_string()));
    }
    Template::Interpolate(pieces)
}

/// A `when` condition: CEL, where `{{ E }}` stands for `(E)` and a quoted
/// `'{{ E }}'` for `string(E)` (SPEC §2.4). Values are never pasted into
/// the expression as text.
pub fn parse_condition(text: &str, at: &Location) -> Result<CelExpr, Diagnostic> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start + 2..].find("}}") else {
            return Err(Diagnostic::new(at, format!("`{{{{` without a closing `}}}}` in `{text}`")));
        };
        let inner = rest[start + 2..start + 2 + len].trim();
        let before = &rest[..start];
        let after = &rest[start + 2 + len + 2..];
        let quote = before.chars().last().filter(|c| *c == '\'' || *c == '"');
        if let Some(q) = quote
            && after.starts_with(q)
        {
            out.push_str(&before[..before.len() - 1]);
            out.push_str(&format!("string({inner})"));
            rest = &after[1..];
        } else {
            out.push_str(before);
            out.push_str(&format!("({inner})"));
            rest = after;
        }
    }
    out.push_str(rest);
    let mut expr = CelExpr::compile(&out, at)?;
    expr.text = text.to_string();
    Ok(expr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn template(yaml: &str) -> Template {
        let file: Arc<Path> = Arc::from(Path::new("t.yaml"));
        let node = crate::workflow::yaml::parse(&file, &format!("v: {yaml}\n")).unwrap();
        let mut diags = Vec::new();
        let t = parse(node.as_mapping().unwrap().get_node("v").unwrap(), &file, &mut diags);
        assert!(diags.is_empty(), "{diags:?}");
        t
    }

    fn eval(t: &Template, outputs: &BTreeMap<String, Option<Value>>) -> Result<Value, EvalError> {
        let inputs = json!({"user_id": "u1", "n": 3, "name": "Ada"});
        let secrets = BTreeMap::from([("TOKEN".to_string(), "s3cr3t".to_string())]);
        t.eval(&Scope { inputs: &inputs, cache: &CelCache::default(), outputs, item: None, index: None, run_id: "r1", attempt: 1, secrets: &secrets, ending: None, step_input: None, variables: &Value::Null, trigger: None })
    }

    fn outputs() -> BTreeMap<String, Option<Value>> {
        BTreeMap::from([
            ("stats".to_string(), Some(json!({"count": 36, "mean": 2.0, "items": [{"id": "a"}]}))),
            ("gone".to_string(), None),
        ])
    }

    #[test]
    fn from_references_read_input_and_step_outputs() {
        let o = outputs();
        assert_eq!(eval(&template("{ $from: { workflow: input }, path: user_id }"), &o), Ok(json!("u1")));
        assert_eq!(eval(&template("{ $from: { step: stats }, path: '$.items[0].id' }"), &o), Ok(json!("a")));
        assert_eq!(eval(&template("{ $from: { step: stats } }"), &o).unwrap()["count"], json!(36));
        let missing = eval(&template("{ $from: { step: stats }, path: nope }"), &o).unwrap_err();
        assert!(matches!(missing, EvalError::Reference(m) if m.contains("nothing at path `nope`")));
        assert_eq!(eval(&template("{ $from: { step: stats }, path: nope, $default: 0 }"), &o), Ok(json!(0)));
    }

    #[test]
    fn skipped_steps_skip_unless_use_default() {
        let o = outputs();
        assert_eq!(eval(&template("{ $from: { step: gone } }"), &o), Err(EvalError::Skipped("gone".into())));
        let t = template("{ $from: { step: gone }, $on_skip: use_default, $default: [] }");
        assert_eq!(eval(&t, &o), Ok(json!([])));
        assert!(t.step_refs()[0].tolerates_skip);
    }

    #[test]
    fn stepflow_references_read_input_steps_and_variables() {
        let o = outputs();
        assert_eq!(eval(&template("{ $input: user_id }"), &o), Ok(json!("u1")));
        assert_eq!(eval(&template("{ $input: '$' }"), &o).unwrap()["n"], json!(3));
        assert_eq!(eval(&template("{ $step: stats, path: '$.items[0].id' }"), &o), Ok(json!("a")));
        assert_eq!(eval(&template("{ $step: stats }"), &o).unwrap()["count"], json!(36));
        assert_eq!(eval(&template("{ $step: gone }"), &o), Err(EvalError::Skipped("gone".into())));
        let vars = json!({"model": {"name": "m1"}});
        let secrets = BTreeMap::new();
        let (inputs, cache) = (json!({}), CelCache::default());
        let scope = Scope { inputs: &inputs, cache: &cache, outputs: &o, item: None, index: None, run_id: "r", attempt: 1, secrets: &secrets, ending: None, step_input: None, variables: &vars, trigger: None };
        assert_eq!(template("{ $variable: model.name }").eval(&scope), Ok(json!("m1")));
        assert_eq!(template("{ $variable: temperature, default: 0.5 }").eval(&scope), Ok(json!(0.5)));
        let missing = template("{ $variable: api_key }").eval(&scope).unwrap_err();
        assert!(matches!(&missing, EvalError::Reference(m) if m.contains("variable `api_key` is not set: pass `--var api_key=VALUE`")), "{missing:?}");
    }

    #[test]
    fn if_and_coalesce_read_only_what_they_take() {
        let o = outputs();
        // The branch not taken reads a step that has no output: not an error.
        let t = template("{ $if: { $input: n }, then: { $step: stats, path: count }, else: { $step: nowhere } }");
        assert_eq!(eval(&t, &o), Ok(json!(36)));
        let t = template("{ $if: '{{ inputs.n > 5 }}', then: 1 }");
        assert_eq!(eval(&t, &o), Ok(Value::Null));
        // Branches tolerate a skipped step: whether it matters is known only when read.
        assert!(t.step_refs().iter().all(|r| r.tolerates_skip));
        let t = template("{ $coalesce: [ { $step: gone }, { $input: missing_is_an_error_only_if_reached, }, 1 ] }");
        assert!(matches!(eval(&t, &o), Err(EvalError::Reference(_))));
        let t = template("{ $coalesce: [ { $step: gone }, null, { $step: stats, path: count }, { $step: nowhere } ] }");
        assert_eq!(eval(&t, &o), Ok(json!(36)));
        assert_eq!(eval(&template("{ $coalesce: [ null, { $step: gone } ] }"), &o), Ok(Value::Null));
    }

    #[test]
    fn older_stepflow_on_skip_gives_a_default() {
        let o = outputs();
        let t = template("{ $from: { step: gone }, path: x, onSkip: { action: useDefault, defaultValue: it was skipped } }");
        assert_eq!(eval(&t, &o), Ok(json!("it was skipped")));
        let t = template("{ $from: { step: gone }, on_skip: { action: use_default } }");
        assert_eq!(eval(&t, &o), Ok(Value::Null));
        let t = template("{ $from: { step: gone }, onSkip: { action: skip } }");
        assert_eq!(eval(&t, &o), Err(EvalError::Skipped("gone".into())));
    }

    #[test]
    fn malformed_stepflow_forms_are_reported_where_written() {
        let file: Arc<Path> = Arc::from(Path::new("t.yaml"));
        for (yaml, want) in [
            ("{ $if: true }", "`$if` needs `then`"),
            ("{ $coalesce: 3 }", "`$coalesce` must be a list"),
            ("{ $step: a, pth: x }", "unknown key `pth` in a `$step` reference"),
            ("{ $variable: '[0]' }", "must start with the variable's name"),
            ("{ $inptu: x }", "did you mean `$input`?"),
        ] {
            let node = crate::workflow::yaml::parse(&file, &format!("v: {yaml}\n")).unwrap();
            let mut diags = Vec::new();
            parse(node.as_mapping().unwrap().get_node("v").unwrap(), &file, &mut diags);
            let text: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
            assert!(text.iter().any(|t| t.contains(want)), "{yaml}: {text:?}");
        }
    }

    #[test]
    fn whole_string_templates_keep_their_type_and_interpolation_makes_strings() {
        let o = outputs();
        assert_eq!(eval(&template("'{{ steps.stats.output.count + 1 }}'"), &o), Ok(json!(37)));
        assert_eq!(eval(&template("'{{ inputs.n > 2 }}'"), &o), Ok(json!(true)));
        assert_eq!(
            eval(&template("'Hi {{ inputs.name }}: {{ steps.stats.result.count }} items, mean {{ steps.stats.output.mean }}'"), &o),
            Ok(json!("Hi Ada: 36 items, mean 2"))
        );
        assert_eq!(eval(&template("'{{ run.id }}/{{ secrets.TOKEN }}'"), &o), Ok(json!("r1/s3cr3t")));
        assert_eq!(eval(&template("{ $literal: '{{ not evaluated }}' }"), &o), Ok(json!("{{ not evaluated }}")));
    }

    #[test]
    fn step_references_are_found_everywhere() {
        let t = template("{ a: [ '{{ steps.x.output }}', { $from: { step: y } } ], b: 'n={{ size(steps[\"z\"].output) }}', c: '{{ [1].map(v, steps.w.output + v) }}' }");
        let ids: BTreeSet<String> = t.step_refs().into_iter().map(|r| r.id).collect();
        assert_eq!(ids, BTreeSet::from(["w".into(), "x".into(), "y".into(), "z".into()]));
    }

    #[test]
    fn secret_references_are_found() {
        let t = template("{ a: '{{ secrets.TOKEN }}', b: 'x {{ secrets[\"API_KEY\"] + inputs.name }}' }");
        let names: BTreeSet<&String> = t.expressions().into_iter().flat_map(|e| e.secrets.iter()).collect();
        assert_eq!(names, BTreeSet::from([&"API_KEY".to_string(), &"TOKEN".to_string()]));
    }

    #[test]
    fn conditions_accept_template_forms_without_pasting_values() {
        let file: Arc<Path> = Arc::from(Path::new("t.yaml"));
        let at = Location::file_start(&file);
        let o = BTreeMap::from([("classify".to_string(), Some(json!({"content": "urgent' || true || '"})))]);
        let secrets = BTreeMap::new();
        let inputs = json!({});
        let cache = CelCache::default();
        let scope = Scope { inputs: &inputs, cache: &cache, outputs: &o, item: None, index: None, run_id: "r", attempt: 1, secrets: &secrets, ending: None, step_input: None, variables: &Value::Null, trigger: None };
        // An injection attempt in the value stays a value.
        let c = parse_condition("'{{steps.classify.result.content}}' == 'urgent'", &at).unwrap();
        assert_eq!(c.eval_bool(&scope), Ok(false));
        let c = parse_condition("{{ size(steps.classify.output.content) }} > 3", &at).unwrap();
        assert_eq!(c.eval_bool(&scope), Ok(true));
        assert!(parse_condition("steps.classify.output ==", &at).is_err());
    }
}
#[cfg(test)]
mod names_tests {
    use super::*;

    fn compile(text: &str) -> Result<CelExpr, String> {
        let file: Arc<Path> = Arc::from(Path::new("t.yaml"));
        CelExpr::compile(text, &Location::file_start(&file)).map_err(|d| d.to_string())
    }

    #[test]
    fn the_function_list_names_only_functions_cel_has() {
        let macros = ["has", "all", "exists", "exists_one", "map", "filter"];
        for f in FUNCTIONS.iter().filter(|f| !macros.contains(f)) {
            assert!(known_function(f), "{f}");
        }
        for f in ["join", "lowerAscii", "timestamp", "max"] {
            assert!(!known_function(f), "{f}");
        }
    }

    #[test]
    fn unknown_names_and_functions_are_refused_with_a_suggestion() {
        let e = compile("inputs.words.join(' ')").unwrap_err();
        assert!(e.contains("`inputs.words.join(' ')` calls `join`, which is not a CEL function") && e.contains("size, contains"), "{e}");
        let e = compile("inputs.name.startswith('a')").unwrap_err();
        assert!(e.contains("calls `startswith`") && e.contains("did you mean `startsWith`?"), "{e}");
        let e = compile("inpts.x").unwrap_err();
        assert!(e.contains("`inpts.x` reads `inpts`, which is not defined") && e.contains("did you mean `inputs`?"), "{e}");
        // Names a macro binds are its own; known functions and names pass.
        for ok in ["inputs.words.map(w, w + '!')", "inputs.xs.exists(x, x.startsWith('a')) && size(steps.a.output) > 0", "run.attempt > 1 && secrets.T != ''", "int(item) + index", "has(inputs.x)"] {
            compile(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }
}
