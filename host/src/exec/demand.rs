//! StepFlow's execution rule, for StepFlow flows ([`Workflow::lazy`]): a
//! step runs only when something that runs needs it. The output needs the
//! steps it reads, each needed step needs the steps its values read, and
//! `mustExecute` steps (and `finally` steps) are needed whatever reads
//! them. Reading is lazy where a value says so: an `$if` needs its
//! condition first and then only the branch it takes; a `$coalesce` needs
//! its items one at a time until one is not null.
//!
//! [`demand`] is a pure function of what is known of the run so far; the
//! dispatcher asks it again whenever a step ends. A step that is
//! [`Demand::needed`] may start once its dependencies have ended; one that
//! is not even [`Demand::possible`] never will be needed (conditions only
//! ever resolve), so it ends as skipped, which releases whatever waits on it.
//!
//! [`Workflow::lazy`]: crate::workflow::Workflow::lazy

use super::core::{Ended, RunFacts};
use crate::expr::{EvalError, Source, Template, truthy};
use crate::plan::Plan;
use serde_json::Value;

/// Which steps a lazy run needs, as far as is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Demand {
    /// Needed: it runs once its dependencies have ended.
    pub needed: Vec<bool>,
    /// Needed, or may be once a condition is known. A step that is not is
    /// never needed.
    pub possible: Vec<bool>,
}

/// Why a step that a lazy run never needed did not run.
pub const NOT_NEEDED: &str =
    "not needed: nothing the output reads uses it (a StepFlow flow runs only what its output needs; `mustExecute: true` runs a step anyway)";

/// What the run needs, given the steps that have ended (`ended`).
pub fn demand(facts: &RunFacts<'_>, ended: &Ended<'_>) -> Demand {
    let plan = ended.plan;
    let n = plan.workflow.steps.len();
    let mut walk = Walk { plan, facts, ended, needed: vec![false; n], possible: vec![false; n], stack: Vec::new() };
    if let Some(output) = &plan.workflow.output {
        walk.template(output, true);
    } else {
        // The default output is that of the steps nothing depends on.
        for i in plan.sinks() {
            walk.mark(i, true);
        }
    }
    for (i, s) in plan.workflow.steps.iter().enumerate() {
        if s.must_execute || s.finally {
            walk.mark(i, true);
        }
    }
    while let Some((i, definite)) = walk.stack.pop() {
        walk.step(i, definite);
    }
    Demand { needed: walk.needed, possible: walk.possible }
}

struct Walk<'a> {
    plan: &'a Plan,
    facts: &'a RunFacts<'a>,
    ended: &'a Ended<'a>,
    needed: Vec<bool>,
    possible: Vec<bool>,
    /// Steps newly marked, whose values are still to be walked.
    stack: Vec<(usize, bool)>,
}

impl Walk<'_> {
    fn has_ended(&self, i: usize) -> bool {
        (self.ended.outcome)(i).is_some()
    }

    /// Marks step `i` needed (`definite`) or possibly needed.
    fn mark(&mut self, i: usize, definite: bool) {
        if definite && !self.needed[i] {
            self.needed[i] = true;
            self.possible[i] = true;
            self.stack.push((i, true));
        } else if !self.possible[i] {
            self.possible[i] = true;
            self.stack.push((i, false));
        }
    }

    fn mark_id(&mut self, id: &str, definite: bool) {
        if let Some(&i) = self.plan.index.get(id) {
            self.mark(i, definite);
        }
    }

    /// What step `i` needs in turn: the steps its values read, `needs` and
    /// `depends`. Once it has ended, it needs nothing more.
    fn step(&mut self, i: usize, definite: bool) {
        if self.has_ended(i) {
            return;
        }
        let decl = &self.plan.workflow.steps[i];
        for (id, _) in &decl.needs {
            self.mark_id(id, definite);
        }
        if let Some(d) = &decl.depends {
            for (id, _) in d.refs() {
                self.mark_id(id, definite);
            }
        }
        if decl.group.is_some() {
            for &d in &self.plan.deps[i] {
                self.mark(d, definite);
            }
        }
        if let Some(when) = &decl.when {
            for id in &when.steps {
                self.mark_id(id, definite);
            }
        }
        if let Some(t) = &decl.for_each {
            self.template(t, definite);
        }
        // `skipIf` is decided before the input is read: a step it skips
        // needs nothing its input reads.
        let mut input_definite = definite;
        if let Some(skip_if) = &decl.skip_if {
            self.template(skip_if, definite);
            match self.resolve(skip_if) {
                Some(Ok(v)) if truthy(&v) => return,
                Some(_) => {}
                None => input_definite = false,
            }
        }
        self.template(&decl.input, input_definite);
    }

    /// The value of `t` if every step it reads has ended; `None` if not yet.
    fn resolve(&self, t: &Template) -> Option<Result<Value, EvalError>> {
        let refs = t.step_refs();
        let all_ended = refs.iter().all(|r| self.plan.index.get(&r.id).is_some_and(|&i| self.has_ended(i)));
        all_ended.then(|| t.eval(&self.facts.scope(self.ended, None)))
    }

    /// Marks what evaluating `t` reads, taking the lazy forms into account.
    fn template(&mut self, t: &Template, definite: bool) {
        match t {
            Template::Const(_) => {}
            Template::Array(items) => items.iter().for_each(|t| self.template(t, definite)),
            Template::Object(entries) => entries.iter().for_each(|(_, t)| self.template(t, definite)),
            Template::From(r) => {
                if let Source::Step(id) = &r.source {
                    self.mark_id(id, definite);
                }
            }
            Template::Cel(_) | Template::Interpolate(_) => {
                for r in t.step_refs() {
                    self.mark_id(&r.id, definite);
                }
            }
            Template::If(e) => {
                self.template(&e.cond, definite);
                match self.resolve(&e.cond) {
                    Some(Ok(v)) => self.template(if truthy(&v) { &e.then } else { &e.otherwise }, definite),
                    // The consumer fails when it is decided; what its
                    // branches read does not matter then.
                    Some(Err(_)) => {}
                    None => {
                        self.template(&e.then, false);
                        self.template(&e.otherwise, false);
                    }
                }
            }
            Template::Coalesce(items) => {
                let mut definite = definite;
                for item in items {
                    self.template(item, definite);
                    match self.resolve(item) {
                        Some(Ok(Value::Null) | Err(EvalError::Skipped(_))) => {}
                        // Found (or failed): the items after it are not read.
                        Some(_) => break,
                        // Not known yet: the items after it may be read.
                        None => definite = false,
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::StepState;
    use crate::exec::core::Outcome;
    use crate::expr::CelCache;
    use serde_json::json;
    use std::collections::BTreeMap;

    const FLOW: &str = r#"
schema: https://stepflow.org/schemas/v1/flow.json
steps:
  - id: cond
    component: /builtin/eval
  - id: yes
    component: /builtin/eval
  - id: no
    component: /builtin/eval
    input: { from: { $step: deep } }
  - id: deep
    component: /builtin/eval
  - id: first
    component: /builtin/eval
  - id: second
    component: /builtin/eval
  - id: side
    component: /builtin/eval
    mustExecute: true
    skipIf: { $input: quiet }
    input: { x: { $step: side_input } }
  - id: side_input
    component: /builtin/eval
  - id: unused
    component: /builtin/eval
output:
  pick: { $if: { $step: cond, path: ok }, then: { $step: yes }, else: { $step: no } }
  any: { $coalesce: [ { $step: first }, { $step: second } ] }
"#;

    /// The steps `needed` and `possible` (only) for run `input`, once the
    /// steps in `ended` have ended with those outputs (`None`: skipped).
    fn ask(input: Value, ended: &[(&str, Option<Value>)]) -> (Vec<String>, Vec<String>) {
        let wf = crate::workflow::load_str(std::path::Path::new("flow.yaml"), FLOW).unwrap();
        assert!(wf.lazy);
        let plan = Plan::new(wf).unwrap();
        let outputs: BTreeMap<String, Option<Value>> = ended.iter().map(|(id, v)| (id.to_string(), v.clone())).collect();
        let outcome = |i: usize| {
            let id = &plan.workflow.steps[i].id;
            outputs.get(id).map(|v| Outcome { state: if v.is_some() { StepState::Succeeded } else { StepState::Skipped }, blocks: false, items: None })
        };
        let (secrets, cel) = (BTreeMap::new(), CelCache::default());
        let facts = RunFacts { input: &input, run_id: "r", attempt: 1, secrets: &secrets, cel: &cel, limit: 4, ending: None, variables: &Value::Null, trigger: None };
        let ended = Ended { plan: &plan, outputs: &outputs, outcome: &outcome, finally: false };
        let d = demand(&facts, &ended);
        let ids = |f: &dyn Fn(usize) -> bool| (0..d.needed.len()).filter(|&i| f(i)).map(|i| plan.workflow.steps[i].id.clone()).collect();
        (ids(&|i| d.needed[i]), ids(&|i| d.possible[i] && !d.needed[i]))
    }

    #[test]
    fn an_if_needs_its_condition_then_only_the_branch_it_takes() {
        let (needed, maybe) = ask(json!({"quiet": false}), &[]);
        assert_eq!(needed, ["cond", "first", "side", "side_input"]);
        assert_eq!(maybe, ["yes", "no", "deep", "second"]);
        // The condition is known: `no` (and `deep`, which only it reads) never will be.
        let (needed, maybe) = ask(json!({"quiet": false}), &[("cond", Some(json!({"ok": true})))]);
        assert_eq!(needed, ["cond", "yes", "first", "side", "side_input"]);
        assert_eq!(maybe, ["second"]);
        let (needed, _) = ask(json!({"quiet": false}), &[("cond", Some(json!({"ok": false})))]);
        assert!(needed.contains(&"no".to_string()) && needed.contains(&"deep".to_string()), "{needed:?}");
    }

    #[test]
    fn a_coalesce_needs_its_items_one_at_a_time() {
        let (needed, maybe) = ask(json!({"quiet": false}), &[("first", Some(json!(1)))]);
        assert!(!needed.contains(&"second".to_string()) && !maybe.contains(&"second".to_string()));
        for first in [None, Some(Value::Null)] {
            let (needed, _) = ask(json!({"quiet": false}), &[("first", first)]);
            assert!(needed.contains(&"second".to_string()), "{needed:?}");
        }
    }

    #[test]
    fn a_step_skipped_by_skip_if_needs_nothing_its_input_reads() {
        let (needed, maybe) = ask(json!({"quiet": true}), &[]);
        assert!(needed.contains(&"side".to_string()));
        assert!(!needed.contains(&"side_input".to_string()) && !maybe.contains(&"side_input".to_string()), "{needed:?} {maybe:?}");
        assert!(!needed.contains(&"unused".to_string()) && !maybe.contains(&"unused".to_string()));
    }
}
