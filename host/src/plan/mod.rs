//! The resolved, immutable plan of a workflow: its steps as a DAG
//! (petgraph), built and checked with no I/O and nothing async.
//!
//! A step depends on every step it references (in `input`, `when`,
//! `skipIf`, `forEach`), on every step in `needs`, and, with Argo-style
//! groups, on every step of the group before its own. Unknown steps and
//! components, duplicate ids and cycles are all reported at once.

pub mod svg;

use crate::workflow::{Diagnostic, Diagnostics, StepDecl, Target, Workflow, diagnostic::nearest};
use petgraph::graph::{DiGraph, NodeIndex};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

/// A workflow whose steps form a valid DAG.
#[derive(Debug)]
pub struct Plan {
    /// The workflow planned.
    pub workflow: Arc<Workflow>,
    /// Dependencies of each step (indexes into `workflow.steps`), sorted.
    pub deps: Vec<Vec<usize>>,
    /// Steps that depend on each step, sorted.
    pub dependents: Vec<Vec<usize>>,
    /// Step index by id.
    pub index: HashMap<String, usize>,
    /// Edges from each dependency to its dependents.
    pub graph: DiGraph<usize, ()>,
    /// Steps whose failure some `depends` names (`X.failed`,
    /// `X.all_failed`): the failure is handled, so it neither stops new
    /// steps from starting nor fails the run by itself.
    pub handled: Vec<bool>,
    /// The number of steps of `steps`; those of `finally` follow them.
    pub main: usize,
    /// The steps of `steps` each `finally` step names (outputs, statuses,
    /// `depends`): no dependencies, but read when it is decided.
    pub reads_before: Vec<Vec<usize>>,
}

impl Plan {
    /// Plans `workflow`, or reports every problem found.
    pub fn new(workflow: Workflow) -> Result<Plan, Diagnostics> {
        let mut diags = Vec::new();
        let steps = &workflow.steps;
        let mut index: HashMap<String, usize> = HashMap::with_capacity(steps.len());
        for (i, s) in steps.iter().enumerate() {
            if let Some(&first) = index.get(&s.id) {
                diags.push(
                    Diagnostic::new(&s.at, format!("duplicate step id `{}`", s.id))
                        .with_hint(format!("the first is at line {}", steps[first].at.line)),
                );
            } else {
                index.insert(s.id.clone(), i);
            }
        }
        let ids = || index.keys().map(String::as_str);
        let unknown_step = |what: String, id: &str, at: &crate::workflow::Location| {
            let mut d = Diagnostic::new(at, format!("{what} step `{id}`, which does not exist"));
            if let Some(n) = nearest(id, ids()) {
                d = d.with_hint(format!("did you mean `{n}`?"));
            }
            d
        };

        let main = steps.iter().position(|s| s.finally).unwrap_or(steps.len());
        let mut deps: Vec<Vec<usize>> = vec![Vec::new(); steps.len()];
        let mut handled = vec![false; steps.len()];
        let mut reads_before: Vec<Vec<usize>> = vec![Vec::new(); steps.len()];
        for (i, s) in steps.iter().enumerate() {
            // A `finally` step runs after every step of `steps` has ended:
            // what it reads of them is no dependency. A step of `steps`
            // cannot read a `finally` step, which runs after it.
            if let Some(key) = s.settings.cache.as_ref().and_then(|c| c.key.as_ref()) {
                for r in key.step_refs() {
                    diags.push(
                        Diagnostic::new(&r.at, format!("`cache.key` of step `{}` reads step `{}`", s.id, r.id))
                            .with_hint("a key reads `input`, the step's resolved input (put what it needs of other steps there), and `secrets`"),
                    );
                }
            }
            diags.extend(misplaced_names(s));
            let mut depend = |what: &str, id: &str, at: &crate::workflow::Location| match index.get(id) {
                Some(&d) if d >= main && i < main => diags.push(
                    Diagnostic::new(at, format!("step `{}` {what} `finally` step `{id}`, which runs after every step of `steps`", s.id))
                        .with_hint("only a `finally` step may depend on a `finally` step"),
                ),
                Some(&d) if d < main && i >= main => reads_before[i].push(d),
                Some(&d) => deps[i].push(d),
                None => diags.push(unknown_step(format!("step `{}` {what}", s.id), id, at)),
            };
            for r in step_refs(s) {
                depend("reads", &r.id, &r.at);
            }

            for (id, at) in &s.needs {
                depend("needs", id, at);
            }
            if let Some(dep) = &s.depends {
                for (id, cond) in dep.refs() {
                    depend("depends on", id, &dep.at);
                    if cond.handles_failure()
                        && let Some(&d) = index.get(id)
                    {
                        handled[d] = true;
                    }
                }
            }
            if let Target::Named(name) = &s.target
                && !workflow.components.contains_key(name)
            {
                let mut d = Diagnostic::new(&s.target_at, format!("step `{}` uses component `{name}`, which is not in `components`", s.id));
                d = match nearest(name, workflow.components.keys().map(String::as_str)) {
                    Some(n) => d.with_hint(format!("did you mean `{n}`?")),
                    None => d.with_hint("declare it under `components:`, or give a `.wasm` path or `/builtin/NAME`"),
                };
                diags.push(d);
            }
        }
        for case in &workflow.tests {
            for (id, at) in &case.target {
                match index.get(id) {
                    Some(&i) if i >= main => diags.push(Diagnostic::new(at, format!("test case `{}` targets `finally` step `{id}`; targets are steps of `steps`", case.name))),
                    Some(_) => {}
                    None => diags.push(unknown_step(format!("test case `{}` targets", case.name), id, at)),
                }
            }
        }
        if let Some(output) = &workflow.output {
            for r in output.step_refs() {
                if !index.contains_key(&r.id) {
                    diags.push(unknown_step("`output` reads".to_string(), &r.id, &r.at));
                }
            }
        }
        // Argo-style groups: each group waits for the whole group before it.
        if steps.iter().any(|s| s.group.is_some()) {
            let mut by_group: Vec<Vec<usize>> = Vec::new();
            for (i, s) in steps.iter().enumerate().take(main) {
                let g = s.group.unwrap_or(0);
                if by_group.len() <= g {
                    by_group.resize(g + 1, Vec::new());
                }
                by_group[g].push(i);
            }
            let groups: Vec<&Vec<usize>> = by_group.iter().filter(|g| !g.is_empty()).collect();
            for pair in groups.windows(2) {
                for &i in pair[1] {
                    deps[i].extend(pair[0].iter().copied());
                }
            }
        }
        for d in deps.iter_mut().chain(reads_before.iter_mut()) {
            d.sort_unstable();
            d.dedup();
        }

        let mut graph = DiGraph::with_capacity(steps.len(), deps.iter().map(Vec::len).sum());
        let nodes: Vec<NodeIndex> = (0..steps.len()).map(|i| graph.add_node(i)).collect();
        let mut dependents = vec![Vec::new(); steps.len()];
        for (i, ds) in deps.iter().enumerate() {
            for &d in ds {
                graph.add_edge(nodes[d], nodes[i], ());
                dependents[d].push(i);
            }
        }
        for scc in petgraph::algo::tarjan_scc(&graph) {
            let cyclic = scc.len() > 1 || deps[graph[scc[0]]].contains(&graph[scc[0]]);
            if cyclic {
                let mut members: Vec<usize> = scc.iter().map(|n| graph[*n]).collect();
                members.sort_unstable();
                let names: Vec<String> = members.iter().map(|&i| format!("`{}`", steps[i].id)).collect();
                let first = &steps[members[0]];
                let message = if members.len() == 1 {
                    format!("step `{}` depends on itself", first.id)
                } else {
                    format!("steps {} depend on each other in a cycle", names.join(", "))
                };
                diags.push(Diagnostic::new(&first.at, message).with_hint("remove one of the references or `needs` entries in the cycle"));
            }
        }

        if !diags.is_empty() {
            return Err(Diagnostics { file: workflow.file.to_path_buf(), problems: diags }.sorted());
        }
        Ok(Plan { workflow: Arc::new(workflow), deps, dependents, index, graph, handled, main, reads_before })
    }

    /// Reads and plans the workflow at `path`, the file's problems and the
    /// plan's in one report.
    pub fn load(path: &std::path::Path) -> Result<Plan, Diagnostics> {
        Plan::load_with(path, None)
    }

    /// [`Plan::load`], with a components file's components bound
    /// (`--components`; see [`Workflow::bind`]).
    pub fn load_with(path: &std::path::Path, components: Option<&std::path::Path>) -> Result<Plan, Diagnostics> {
        let (wf, mut problems) = crate::workflow::load_partial_with(path, components);
        let fail = |problems| Diagnostics { file: path.to_path_buf(), problems }.sorted();
        let Some(wf) = wf else { return Err(fail(problems)) };
        match Plan::new(wf) {
            Ok(plan) if problems.is_empty() => Ok(plan),
            Ok(_) => Err(fail(problems)),
            Err(d) => {
                problems.extend(d.problems);
                Err(fail(problems))
            }
        }
    }

    /// The plan of only the steps `targets` name and every step they
    /// depend on (Argo's `target`; `sandflow run --target`), and which steps
    /// it keeps: the others are left out, not skipped. `finally` steps stay,
    /// except those that read a step left out (and those that depend on
    /// them). The workflow's `output:` may read steps left out, so the run
    /// output is that of the kept steps nothing depends on.
    pub fn targeted(&self, targets: &[String]) -> Result<(Plan, Vec<bool>), String> {
        let steps = &self.workflow.steps;
        let mut keep = vec![false; steps.len()];
        let mut stack = Vec::new();
        for t in targets {
            match self.index.get(t.as_str()) {
                Some(&i) if i < self.main => stack.push(i),
                Some(_) => return Err(format!("--target: `{t}` is a `finally` step; targets are steps of `steps` (`finally` steps run anyway)")),
                None => {
                    let hint = nearest(t, steps[..self.main].iter().map(|s| s.id.as_str())).map(|n| format!(" (did you mean `{n}`?)")).unwrap_or_default();
                    return Err(format!("--target: the workflow has no step `{t}`{hint}"));
                }
            }
        }
        while let Some(i) = stack.pop() {
            if !std::mem::replace(&mut keep[i], true) {
                stack.extend(&self.deps[i]);
            }
        }
        // Until nothing changes: a `finally` step may need one written after it.
        let mut changed = true;
        while changed {
            changed = false;
            for i in self.main..steps.len() {
                if !keep[i] && self.reads_before[i].iter().chain(&self.deps[i]).all(|&d| keep[d]) {
                    keep[i] = true;
                    changed = true;
                }
            }
        }
        let mut wf = Workflow::clone(&self.workflow);
        wf.steps = steps.iter().zip(&keep).filter(|(_, k)| **k).map(|(s, _)| s.clone()).collect();
        wf.output = None;
        let plan = Plan::new(wf).map_err(|d| format!("--target: {d}"))?;
        Ok((plan, keep))
    }

    /// Every `secrets.NAME` the workflow's values read, with where.
    pub fn secret_refs(&self) -> Vec<(String, crate::workflow::Location)> {
        let wf = &self.workflow;
        let mut exprs: Vec<&crate::expr::CelExpr> = Vec::new();
        for s in &wf.steps {
            exprs.extend(s.input.expressions());
            exprs.extend(s.when.as_deref());
            for t in [&s.skip_if, &s.for_each].into_iter().flatten() {
                exprs.extend(t.expressions());
            }
        }
        if let Some(o) = &wf.output {
            exprs.extend(o.expressions());
        }
        exprs.into_iter().flat_map(|e| e.secrets.iter().map(|n| (n.clone(), e.at.clone()))).collect()
    }

    /// The steps of `steps` nothing depends on: together, the default run
    /// output.
    pub fn sinks(&self) -> Vec<usize> {
        (0..self.main).filter(|&i| self.dependents[i].is_empty()).collect()
    }

    /// The DAG as a Mermaid flowchart; `finally` steps in a box of their
    /// own, after the others.
    pub fn to_mermaid(&self) -> String {
        let mut out = String::from("flowchart TD\n");
        let node = |s: &StepDecl| format!("{}[\"{}<br/><small>{}</small>\"]", node_id(&s.id), s.id, target_label(s).replace('"', "'"));
        for s in &self.workflow.steps[..self.main] {
            let _ = writeln!(out, "    {}", node(s));
        }
        if self.main < self.workflow.steps.len() {
            out.push_str("    subgraph finally\n");
            for s in &self.workflow.steps[self.main..] {
                let _ = writeln!(out, "        {}", node(s));
            }
            out.push_str("    end\n");
        }
        for (i, ds) in self.deps.iter().enumerate() {
            for &d in ds {
                let _ = writeln!(out, "    {} --> {}", node_id(&self.workflow.steps[d].id), node_id(&self.workflow.steps[i].id));
            }
        }
        out
    }

    /// The DAG in Graphviz DOT.
    pub fn to_dot(&self) -> String {
        let mut out = format!("digraph {:?} {{\n    rankdir=TB;\n    node [shape=box];\n", self.workflow.name);
        let node = |s: &StepDecl| format!("{:?} [label={:?}];", s.id, format!("{}\n{}", s.id, target_label(s)));
        for s in &self.workflow.steps[..self.main] {
            let _ = writeln!(out, "    {}", node(s));
        }
        if self.main < self.workflow.steps.len() {
            out.push_str("    subgraph cluster_finally {\n        label=\"finally\";\n");
            for s in &self.workflow.steps[self.main..] {
                let _ = writeln!(out, "        {}", node(s));
            }
            out.push_str("    }\n");
        }
        for (i, ds) in self.deps.iter().enumerate() {
            for &d in ds {
                let _ = writeln!(out, "    {:?} -> {:?};", self.workflow.steps[d].id, self.workflow.steps[i].id);
            }
        }
        out.push_str("}\n");
        out
    }
}

/// Names a step's expressions read where they are not defined: `input`
/// (the step's own resolved input) outside `cache.key`, `item` and
/// `index` in a step without `forEach`. CEL would fail the step as
/// `reference` at run time.
fn misplaced_names(s: &StepDecl) -> Vec<Diagnostic> {
    let mut exprs: Vec<&crate::expr::CelExpr> = s.input.expressions();
    exprs.extend(s.when.as_deref());
    for t in [&s.skip_if, &s.for_each].into_iter().flatten() {
        exprs.extend(t.expressions());
    }
    let mut out = Vec::new();
    for e in exprs {
        if e.names.contains("input") {
            out.push(
                Diagnostic::new(&e.at, format!("`{}` reads `input`, which is not defined here", e.text))
                    .with_hint("did you mean `inputs`? `input` is a step's own resolved input, read only by `cache.key`"),
            );
        }
        if s.for_each.is_none()
            && let Some(name) = ["item", "index"].into_iter().find(|n| e.names.contains(*n))
        {
            out.push(
                Diagnostic::new(&e.at, format!("`{}` reads `{name}`, which only a step with `forEach` has", e.text))
                    .with_hint(format!("add `forEach:` to step `{}`, or read the value another way", s.id)),
            );
        }
    }
    out
}

/// Every step a step's values read.
pub fn step_refs(s: &StepDecl) -> Vec<crate::expr::StepRef> {
    let mut refs = s.input.step_refs();
    if let Some(w) = &s.when {
        refs.extend(w.steps.iter().map(|id| crate::expr::StepRef { id: id.clone(), at: w.at.clone(), tolerates_skip: false }));
    }
    for t in [&s.skip_if, &s.for_each].into_iter().flatten() {
        refs.extend(t.step_refs());
    }
    refs
}

/// Mermaid node ids may not contain `-`.
fn node_id(id: &str) -> String {
    format!("s_{}", id.replace('-', "_h_"))
}

fn target_label(s: &StepDecl) -> String {
    let file = |p: &std::path::Path| p.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default();
    match &s.target {
        Target::Named(n) => n.clone(),
        Target::Path(p) => file(p),
        Target::Builtin(b) => format!("/builtin/{}", b.name()),
        Target::Workflow(p) => format!("workflow {}", file(p)),
    }
}
