//! The DAG as a standalone SVG picture, drawn without external tools:
//! steps in layers by their longest path from a step with no
//! dependencies, edges as curves from a step to its dependents, `finally`
//! steps in a box of their own below the others.

use super::{Plan, target_label};
use std::fmt::Write as _;

/// The drawing's stylesheet, inline in every SVG; the web view allows
/// exactly this text by its hash in its Content-Security-Policy.
pub const STYLE: &str = "\n\
.step rect { fill: #f6f8fa; stroke: #57606a; stroke-width: 1.2; }\n\
.step .target { fill: #57606a; font-size: 11px; }\n\
.edge { fill: none; stroke: #8c959f; stroke-width: 1.3; }\n\
.finally { fill: none; stroke: #8c959f; stroke-dasharray: 5 4; }\n\
.succeeded rect { fill: #dafbe1; stroke: #1a7f37; }\n\
.failed rect { fill: #ffebe9; stroke: #cf222e; }\n\
.skipped rect { fill: #f6f8fa; stroke: #afb8c1; stroke-dasharray: 4 3; }\n\
.cancelled rect { fill: #fff8c5; stroke: #9a6700; }\n\
.running rect { fill: #ddf4ff; stroke: #0969da; stroke-width: 2; }\n\
.waiting rect { fill: #fbefff; stroke: #8250df; stroke-width: 2; stroke-dasharray: 6 3; }\n\
";

const NODE_H: f64 = 46.0;
const GAP_X: f64 = 28.0;
const GAP_Y: f64 = 54.0;
const MARGIN: f64 = 20.0;
/// Roughly the width of a character of the 13px label font.
const CHAR_W: f64 = 7.4;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

impl Plan {
    /// The DAG as SVG. `class` gives a step an extra CSS class (a run's
    /// view colours steps by state this way); the picture's own style
    /// colours `succeeded`, `failed`, `skipped`, `cancelled`, `running` and
    /// `waiting`.
    pub fn to_svg(&self, class: &dyn Fn(usize) -> Option<String>) -> String {
        self.to_svg_noted(class, &|_| None)
    }

    /// [`Plan::to_svg`], with a note after a step's component (a run's
    /// view: how long it took).
    pub fn to_svg_noted(&self, class: &dyn Fn(usize) -> Option<String>, note: &dyn Fn(usize) -> Option<String>) -> String {
        let steps = &self.workflow.steps;
        let n = steps.len();
        // Layer: the longest path from a step with no dependencies; `finally`
        // steps are laid out below every step of `steps`.
        let mut layer = vec![0usize; n];
        for i in self.topological() {
            layer[i] = self.deps[i].iter().map(|&d| layer[d] + 1).max().unwrap_or(0);
        }
        let main_layers = layer[..self.main].iter().max().map_or(0, |l| l + 1);
        for l in &mut layer[self.main..] {
            *l += main_layers;
        }
        let layers = layer.iter().max().map_or(0, |l| l + 1);
        let mut rows: Vec<Vec<usize>> = vec![Vec::new(); layers];
        for (i, &l) in layer.iter().enumerate() {
            rows[l].push(i);
        }
        // Order each layer by the mean position of its dependencies (one
        // barycentre pass), which removes most crossings of a typical DAG.
        let mut pos = vec![0f64; n];
        for row in &mut rows {
            row.sort_by(|&a, &b| {
                let mean = |i: usize| match self.deps[i].as_slice() {
                    [] => i as f64,
                    ds => ds.iter().map(|&d| pos[d]).sum::<f64>() / ds.len() as f64,
                };
                mean(a).total_cmp(&mean(b)).then(a.cmp(&b))
            });
            for (k, &i) in row.iter().enumerate() {
                pos[i] = k as f64;
            }
        }
        let label = |i: usize| {
            let target = target_label(&steps[i]);
            (steps[i].id.clone(), note(i).map_or_else(|| target.clone(), |n| format!("{target} · {n}")))
        };
        let width_of = |i: usize| {
            let (id, target) = label(i);
            (id.chars().count().max(target.chars().count()) as f64 * CHAR_W + 24.0).max(110.0)
        };
        let row_width = |row: &Vec<usize>| row.iter().map(|&i| width_of(i)).sum::<f64>() + GAP_X * row.len().saturating_sub(1) as f64;
        let widest = rows.iter().map(row_width).fold(0f64, f64::max);
        let finally_gap = if self.main < n { 26.0 } else { 0.0 };
        let mut at = vec![(0f64, 0f64, 0f64); n];
        for (l, row) in rows.iter().enumerate() {
            let mut x = MARGIN + (widest - row_width(row)) / 2.0;
            let y = MARGIN + l as f64 * (NODE_H + GAP_Y) + if l >= main_layers { finally_gap } else { 0.0 };
            for &i in row {
                let w = width_of(i);
                at[i] = (x, y, w);
                x += w + GAP_X;
            }
        }
        let total_w = widest + 2.0 * MARGIN;
        let total_h = MARGIN * 2.0 + layers as f64 * NODE_H + layers.saturating_sub(1) as f64 * GAP_Y + finally_gap;

        let mut out = String::new();
        let _ = write!(
            out,
            r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {total_w:.0} {total_h:.0}" width="{total_w:.0}" height="{total_h:.0}" font-family="ui-monospace, SFMono-Regular, Menlo, monospace" font-size="13">
<title>{title}</title>
<style>{STYLE}</style>
<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#8c959f"/></marker></defs>
"##,
            title = escape(&self.workflow.name),
        );
        if self.main < n {
            let y = MARGIN + main_layers as f64 * (NODE_H + GAP_Y) + finally_gap - 22.0;
            let h = total_h - y - MARGIN / 2.0;
            let _ = writeln!(
                out,
                r##"<rect class="finally" x="{:.1}" y="{y:.1}" width="{:.1}" height="{h:.1}" rx="6"/><text x="{:.1}" y="{:.1}" fill="#57606a" font-size="11">finally</text>"##,
                MARGIN / 2.0,
                total_w - MARGIN,
                MARGIN / 2.0 + 6.0,
                y + 13.0
            );
        }
        for (i, ds) in self.deps.iter().enumerate() {
            for &d in ds {
                let (fx, fy, fw) = at[d];
                let (tx, ty, tw) = at[i];
                let (x1, y1, x2, y2) = (fx + fw / 2.0, fy + NODE_H, tx + tw / 2.0, ty);
                let mid = (y1 + y2) / 2.0;
                let _ = writeln!(
                    out,
                    r#"<path class="edge" d="M {x1:.1} {y1:.1} C {x1:.1} {mid:.1}, {x2:.1} {mid:.1}, {x2:.1} {y2:.1}" marker-end="url(#arrow)"/>"#
                );
            }
        }
        for (i, &(x, y, w)) in at.iter().enumerate() {
            let (id, target) = label(i);
            let extra = class(i).map(|c| format!(" {}", escape(&c))).unwrap_or_default();
            let _ = writeln!(
                out,
                r#"<g class="step{extra}" data-step="{id}"><rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{NODE_H}" rx="5"/><text x="{cx:.1}" y="{ty:.1}" text-anchor="middle">{id}</text><text class="target" x="{cx:.1}" y="{ty2:.1}" text-anchor="middle">{target}</text></g>"#,
                id = escape(&id),
                target = escape(&target),
                cx = x + w / 2.0,
                ty = y + 19.0,
                ty2 = y + 35.0,
            );
        }
        out.push_str("</svg>\n");
        out
    }

    /// Step indexes with every dependency before its dependents.
    pub(crate) fn topological(&self) -> Vec<usize> {
        match petgraph::algo::toposort(&self.graph, None) {
            Ok(order) => order.into_iter().map(|node| self.graph[node]).collect(),
            Err(_) => unreachable!("a plan has no cycle"),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::plan::Plan;

    #[test]
    fn steps_sit_in_layers_below_what_they_depend_on() {
        let text = "name: d <&>\nsteps:\n  - { id: a, component: x.wasm }\n  - { id: b, component: x.wasm, needs: [a] }\n  - { id: c, component: x.wasm, needs: [a] }\n  - { id: d, component: x.wasm, needs: [b, c] }\nfinally:\n  - { id: f, component: /builtin/eval }\n";
        let wf = crate::workflow::load_str("d.yaml".as_ref(), text).unwrap();
        let plan = Plan::new(wf).unwrap();
        let svg = plan.to_svg(&|i| (i == 3).then(|| "failed".to_string()));
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.contains("<title>d &lt;&amp;&gt;</title>"), "names are escaped");
        let y = |id: &str| -> f64 {
            let g = svg.split(&format!("data-step=\"{id}\"")).nth(1).unwrap();
            g.split("y=\"").nth(1).unwrap().split('"').next().unwrap().parse().unwrap()
        };
        assert!(y("a") < y("b") && y("b") == y("c") && y("c") < y("d") && y("d") < y("f"));
        assert_eq!(svg.matches("class=\"edge\"").count(), 4);
        assert!(svg.contains("<g class=\"step failed\" data-step=\"d\">"));
        assert!(svg.contains("class=\"finally\""));
    }
}
