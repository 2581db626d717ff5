// The web view's pages: plain DOM, no build step, no inline script (the
// server's Content-Security-Policy allows none). A server with a token
// answers `?token=` with a cookie, which every request here then carries.
"use strict";
const sandflow = (() => {
  const api = async (url, options) => {
    const response = await fetch(url, options);
    if (!response.ok) {
      let why = response.statusText;
      try { why = (await response.json()).error || why; } catch (_) { /* not JSON */ }
      throw new Error(why);
    }
    return response;
  };
  const el = (tag, attrs = {}, ...children) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
    }
    for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
    return e;
  };
  const badge = (state) => el("span", { class: "badge s-" + state }, state);
  const problem = (e) => { const p = document.getElementById("problem"); p.textContent = String(e.message || e); p.hidden = false; };
  // A step's attempts; a `forEach` step's items, and its attempts only
  // when retries made more.
  const tries = (s) => s.items == null ? String(s.attempts) : `${s.items} items` + (s.attempts > s.items ? `, ${s.attempts} attempts` : "");
  const took = (ms) => ms < 1 ? Math.round(ms * 1000) + "µs" : ms < 1000 ? ms.toFixed(1) + "ms" : (ms / 1000).toFixed(2) + "s";
  const span = (from, to) => (from && to) ? took(Date.parse(to) - Date.parse(from)) : "";

  async function runsPage() {
    const form = document.getElementById("filters");
    const params = new URLSearchParams(location.search);
    form.namespace.value = params.get("namespace") || "";
    form.workflow.value = params.get("workflow") || "";
    form.status.value = params.get("status") || "";
    const body = document.querySelector("#runs tbody");
    const more = document.getElementById("more");
    let next = null;
    let shortId = 13;
    const load = async (after) => {
      const q = new URLSearchParams({ namespace: form.namespace.value, workflow: form.workflow.value, status: form.status.value, limit: "50" });
      if (after) q.set("after", after);
      try {
        const page = await (await api("/api/runs?" + q)).json();
        // Ids shown as long as they must be to differ (runs started in
        // the same millisecond share their first 13 characters); any
        // unique start works in the CLI (`runs show 01a2…`).
        const ids = [...body.querySelectorAll("tr[data-run]")].map((tr) => tr.dataset.run).concat(page.runs.map((r) => r.id)).sort();
        const common = (a, b) => { let i = 0; while (i < a.length && a[i] === b[i]) i++; return i; };
        shortId = Math.max(shortId, ...ids.slice(1).map((id, i) => common(ids[i], id) + 1));
        for (const r of page.runs) {
          body.append(el("tr", { "data-run": r.id, "data-status": r.status },
            el("td", { class: "id" }, el("a", { href: "/runs/" + r.id, title: r.id }, r.id.slice(0, shortId) + "…")),
            el("td", { class: "namespace" }, r.namespace || "default"),
            el("td", {}, r.workflow),
            el("td", {}, badge(r.status)),
            el("td", {}, String(r.attempt)),
            el("td", { class: "when" }, r.started_at.replace("T", " ").replace("Z", "")),
            el("td", {}, span(r.started_at, r.finished_at)),
            el("td", {}, `${r.succeeded_steps} ok` + (r.failed_steps ? `, ${r.failed_steps} failed` : "") + (r.skipped_steps ? `, ${r.skipped_steps} skipped` : "")),
            el("td", { class: "muted" }, r.error || "")));
        }
        next = page.next;
        more.hidden = !next;
        document.getElementById("empty").hidden = body.children.length > 0;
      } catch (e) { problem(e); }
    };
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const q = new URLSearchParams({ namespace: form.namespace.value, workflow: form.workflow.value, status: form.status.value });
      history.replaceState(null, "", "/?" + q);
      body.replaceChildren();
      load(null);
    });
    more.addEventListener("click", () => load(next));
    await load(null);
  }

  async function runPage() {
    const id = decodeURIComponent(location.pathname.split("/").pop());
    const open = new Set();
    let lastStates = "";
    let drawn = 0;
    const graph = async (run) => {
      const states = run.steps.map((s) => s.step + "=" + s.state).join(",");
      if (states === lastStates) return;
      lastStates = states;
      // Fetches may end out of order: only the latest one's picture is drawn.
      const mine = ++drawn;
      try {
        const svg = await (await api(`/api/runs/${id}/graph.svg`)).text();
        if (mine !== drawn) return;
        document.getElementById("graph").innerHTML = svg;
        document.getElementById("graph-problem").hidden = true;
      } catch (e) {
        if (mine !== drawn) return;
        const p = document.getElementById("graph-problem");
        p.textContent = e.message; p.hidden = false;
      }
    };
    let shape = null;
    // A step's detail row, built off the page and put in once its parts
    // are fetched, in place of the one shown until then (`render` keeps an
    // open step's detail across a redraw, so an open log never blinks out).
    const detail = async (step, row) => {
      const cell = el("td", { colspan: "6" });
      const tr = el("tr", { class: "detail", "data-detail": step.step }, cell);
      if (row.dataset.inGroup) tr.dataset.inGroup = row.dataset.inGroup;
      await fill(step, cell);
      // Closed meanwhile, or a later render drew the table again: that one's
      // detail goes in instead.
      if (!open.has(step.step) || !row.isConnected) return;
      const shown = row.parentNode.querySelector(`tr[data-detail="${CSS.escape(step.step)}"]`);
      if (shown) shown.replaceWith(tr);
      else row.after(tr);
    };
    const fill = async (step, cell) => {
      // A `forEach` step: each item's input and output, folded.
      if (shape && shape.for_each.includes(step.step) && Array.isArray(step.input)) {
        const outputs = Array.isArray(step.output) ? step.output : [];
        cell.append(el("div", { class: "muted" }, `${step.input.length} items`),
          ...step.input.map((input, i) => el("details", { class: "item", "data-item": String(i) },
            el("summary", {}, `item ${i}`),
            el("div", { class: "muted" }, "input"), el("pre", {}, JSON.stringify(input, null, 2)),
            el("div", { class: "muted" }, "output"), el("pre", {}, JSON.stringify(outputs[i] ?? null, null, 2)))));
      }
      try {
        const attempts = await (await api(`/api/runs/${id}/attempts?step=${encodeURIComponent(step.step)}`)).json();
        if (attempts.length) {
          const rows = attempts.map((a) => el("tr", { "data-attempt": String(a.attempt), "data-state": a.state },
            el("td", {}, a.item !== null ? `item ${a.item}, ${a.attempt}` : step.items != null ? `all ${step.items} items` : String(a.attempt)), el("td", {}, badge(a.state)),
            el("td", { class: "when" }, a.recorded_at.replace("T", " ").replace("Z", "")),
            el("td", {}, a.fuel_used === null ? "" : String(a.fuel_used)),
            el("td", { class: a.error_kind ? "problem" : "muted" }, a.error_kind ? `${a.error_kind}: ${a.error_message}` : "")));
          cell.append(el("div", { class: "muted" }, "attempts"),
            el("table", { class: "grid attempts" }, el("thead", {}, el("tr", {}, el("th", {}, "attempt"), el("th", {}, "state"), el("th", {}, "ended"), el("th", {}, "fuel"), el("th", {}, "failure"))), el("tbody", {}, ...rows)));
        }
      } catch (e) { cell.append(el("p", { class: "problem" }, e.message)); }
      if (step.input !== null && step.input !== undefined) cell.append(el("div", { class: "muted" }, "input"), el("pre", { class: "input" }, JSON.stringify(step.input, null, 2)));
      if (step.output !== null && step.output !== undefined) cell.append(el("div", { class: "muted" }, "output"), el("pre", { class: "output" }, JSON.stringify(step.output, null, 2)));
      try {
        const lines = await (await api(`/api/runs/${id}/logs?step=${encodeURIComponent(step.step)}`)).json();
        const count = el("div", { class: "muted" }, `log (${lines.length} lines)`);
        const pre = el("pre", { class: "log" }, lines.map(logLine).join(""));
        // A running step's log grows as it writes (see `follow` below).
        if (step.state === "running") Object.assign(pre.dataset, { follow: step.step, lines: String(lines.length) });
        pre.counter = count;
        cell.append(count, pre);
      } catch (e) { cell.append(el("p", { class: "problem" }, e.message)); }
    };
    const logLine = (l) => `${l.source.padStart(6)} | ${l.text}\n`;
    // The lines running steps wrote since last asked, at the end of their
    // open logs (kept at the bottom when it was there).
    const follow = async () => {
      for (const pre of document.querySelectorAll("pre.log[data-follow]")) {
        try {
          const from = Number(pre.dataset.lines);
          const lines = await (await api(`/api/runs/${id}/logs?step=${encodeURIComponent(pre.dataset.follow)}&from=${from}`)).json();
          if (!lines.length || !pre.isConnected) continue;
          const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
          pre.append(lines.map(logLine).join(""));
          pre.dataset.lines = String(from + lines.length);
          pre.counter.textContent = `log (${from + lines.length} lines)`;
          if (atBottom) pre.scrollTop = pre.scrollHeight;
        } catch (_) { /* the next tick asks again */ }
      }
    };
    // What a waiting step waits for, and until when.
    const waits = (s) => {
      if (s.state !== "waiting") return "";
      const until = s.wake_at ? ` until ${s.wake_at}` : "", timeout = s.wake_at ? ` (timeout ${s.wake_at})` : "";
      const said = { wait: `waits${until}, then runs`, sleep: `sleeps${until}`, signal: `waits for a signal${timeout}`, approval: `waits for approval${timeout}` }[s.wait_kind] || "waits";
      return s.input && s.input.message ? `${said}: ${s.input.message}` : said;
    };
    // Buttons that end a step waiting for a person: approve or reject an
    // approval; send a signal's JSON data.
    const answer = (run, s) => {
      if (run.status !== "running" || s.state !== "waiting" || !["approval", "signal"].includes(s.wait_kind)) return [];
      const out = document.getElementById("action-result");
      const send = async (body) => {
        try {
          const r = await (await api(`/api/runs/${run.id}/steps/${encodeURIComponent(s.step)}/signal`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) })).json();
          out.textContent = r.message;
        } catch (e) { out.textContent = e.message; }
      };
      const button = (label, name, body) => {
        const b = el("button", { "data-signal": name }, label);
        b.addEventListener("click", (ev) => { ev.stopPropagation(); body().then((v) => v && send(v)); });
        return b;
      };
      if (s.wait_kind === "approval") {
        return [" ", button("Approve", "approve", async () => ({ approved: true })), " ", button("Reject", "reject", async () => ({ approved: false }))];
      }
      const data = el("input", { "data-signal-data": s.step, placeholder: '{"ok": true}', size: "16" });
      data.addEventListener("click", (ev) => ev.stopPropagation());
      return [" ", data, " ", button("Send", "send", async () => {
        try { return { data: JSON.parse(data.value) }; } catch (e) { out.textContent = `not JSON: ${e.message}`; return null; }
      })];
    };
    const render = (run, allowActions) => {
      document.title = `${run.workflow} ${run.status} · sandflow`;
      const summary = document.getElementById("summary");
      const dl = el("dl", {},
        el("dt", {}, "workflow"), el("dd", {}, `${run.workflow} (${run.file})`),
        el("dt", {}, "started"), el("dd", {}, run.started_at),
        el("dt", {}, "finished"), el("dd", {}, run.finished_at || "—"),
        el("dt", {}, "input"), el("dd", {}, el("code", {}, JSON.stringify(run.input))));
      if (run.output !== null && run.output !== undefined) dl.append(el("dt", {}, "output"), el("dd", {}, el("code", {}, JSON.stringify(run.output))));
      if (run.error) dl.append(el("dt", {}, "error"), el("dd", { class: "problem" }, run.error));
      if (run.trigger) {
        const tick = run.trigger.scheduled_time ? `, tick ${run.trigger.scheduled_time}` : "";
        dl.append(el("dt", {}, "trigger"), el("dd", { "data-trigger": run.trigger.kind }, `${run.trigger.kind} ${run.trigger.source || ""}${tick}`));
      }
      summary.replaceChildren(el("h1", { "data-status": run.status }, `run ${run.id} `, badge(run.status), ` attempt ${run.attempt}`), dl);
      // With actions off, the buttons are not on the page at all.
      const actions = document.getElementById("actions");
      if (!allowActions) actions?.remove();
      else {
        actions.hidden = false;
        actions.querySelector('[data-action="cancel"]').hidden = run.status !== "running";
        actions.querySelector('[data-action="resume"]').hidden = run.status === "running" || run.status === "completed";
        actions.querySelector('[data-action="retry"]').hidden = run.status === "running";
      }
      const body = document.querySelector("#steps tbody");
      const shownDetails = new Map([...body.querySelectorAll("tr.detail")].map((tr) => [tr.dataset.detail, tr]));
      body.replaceChildren();
      // With Argo-style groups and `finally` steps: a header row per group,
      // which folds the group's rows.
      const groupOf = new Map();
      const groups = shape ? [...shape.groups.map((g, i) => [`group ${i + 1}`, g]), ...(shape.finally.length ? [["finally", shape.finally]] : [])] : [];
      groups.forEach(([name, ids]) => ids.forEach((id) => groupOf.set(id, name)));
      const ordered = groups.length ? [...run.steps].sort((a, b) => groups.findIndex(([, ids]) => ids.includes(a.step)) - groups.findIndex(([, ids]) => ids.includes(b.step))) : run.steps;
      let header = null;
      for (const s of ordered) {
        const group = groupOf.get(s.step);
        if (group && group !== header) {
          header = group;
          const head = el("tr", { class: "group", "data-group": group }, el("td", { colspan: "6" }, "▾ " + group));
          head.addEventListener("click", () => {
            const folded = head.classList.toggle("folded");
            head.firstChild.textContent = (folded ? "▸ " : "▾ ") + group;
            body.querySelectorAll(`tr[data-in-group="${CSS.escape(group)}"]`).forEach((r) => { r.hidden = folded; });
          });
          body.append(head);
        }
        // A running step: how long its attempt has run so far, and where.
        const running = s.state === "running" && s.started_at;
        const why = s.error_kind ? `${s.error_kind}: ${s.error_message}` : running ? `since ${s.started_at}${s.worker ? " on " + s.worker : ""}` : (waits(s) || s.reason || "");
        const row = el("tr", { class: "step", "data-step": s.step, "data-state": s.state, ...(group ? { "data-in-group": group } : {}) },
          el("td", { class: "id" }, s.step), el("td", {}, badge(s.state)), el("td", { class: "attempts" }, tries(s)),
          el("td", running ? { "data-since": s.started_at } : {}, running ? span(s.started_at, new Date().toISOString()) : took(s.duration_ms)),
          el("td", {}, String(s.fuel_used)), el("td", { class: s.error_kind ? "problem" : "muted" }, why, ...(allowActions ? answer(run, s) : [])));
        row.addEventListener("click", () => {
          if (open.has(s.step)) { open.delete(s.step); body.querySelector(`[data-detail="${CSS.escape(s.step)}"]`)?.remove(); }
          else { open.add(s.step); detail(s, row); }
        });
        body.append(row);
        if (open.has(s.step)) {
          const shown = shownDetails.get(s.step);
          if (shown) row.after(shown);
          detail(s, row);
        }
      }
      graph(run);
      timeline(run);
      shownRun = run;
    };
    let shownRun = null;
    // A bar per step from its start to its end (a running one: to now), on
    // one time axis from the run's start: as the CLI's `--timeline`.
    const timeline = (run) => {
      const at = (t) => Date.parse(t);
      const spans = run.steps.map((s) => {
        if (s.state === "running" && s.started_at) return { s, from: at(s.started_at), to: Date.now() };
        if (!s.finished_at || !s.attempts) return null;
        return { s, from: at(s.finished_at) - s.duration_ms, to: at(s.finished_at) };
      }).filter((x) => x && !Number.isNaN(x.from));
      const box = document.getElementById("timeline");
      box.hidden = spans.length === 0;
      if (!spans.length) return;
      const start = Math.min(at(run.started_at), ...spans.map((x) => x.from));
      const end = Math.max(...spans.map((x) => x.to), start + 1);
      const lanes = spans.map(({ s, from, to }) => {
        const bar = el("div", { class: "bar badge s-" + s.state, title: `${s.step}: ${took(to - from)}` });
        bar.style.left = `${(100 * (from - start)) / (end - start)}%`;
        bar.style.width = `${Math.max((100 * (to - from)) / (end - start), 0.2)}%`;
        return el("div", { class: "lane", "data-lane": s.step }, el("span", { class: "name" }, s.step), el("div", { class: "track" }, bar));
      });
      document.getElementById("lanes").replaceChildren(...lanes);
      document.getElementById("scale").replaceChildren(el("span", {}, "0"), el("span", {}, took(end - start)));
    };
    // Running steps' elapsed time, and their bars, ticking.
    setInterval(() => {
      const now = new Date().toISOString();
      document.querySelectorAll("td[data-since]").forEach((td) => { td.textContent = span(td.dataset.since, now); });
      if (shownRun && shownRun.status === "running") { timeline(shownRun); follow(); }
    }, 1000);
    let allowActions = false;
    try {
      const shown = await (await api(`/api/runs/${id}`)).json();
      allowActions = shown.allow_actions;
      shape = shown.shape;
      // `#step=ID` opens that step's detail.
      const wanted = new URLSearchParams(location.hash.slice(1)).get("step");
      if (wanted) open.add(wanted);
      render(shown.run, allowActions);
      // `?live=0`: a snapshot that does not follow the run.
      const follow = new URLSearchParams(location.search).get("live") !== "0";
      if (shown.run.status === "running" && follow) {
        const live = new EventSource(`/api/runs/${id}/events`);
        live.addEventListener("run", (ev) => {
          const run = JSON.parse(ev.data);
          render(run, allowActions);
          if (run.status !== "running") live.close();
        });
      }
    } catch (e) { problem(e); }
    document.querySelectorAll("#actions button").forEach((b) => b.addEventListener("click", async () => {
      const out = document.getElementById("action-result");
      try {
        const r = await (await api(`/api/runs/${id}/${b.dataset.action}`, { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" })).json();
        out.textContent = r.message;
        setTimeout(() => location.reload(), 1200);
      } catch (e) { out.textContent = e.message; }
    }));
  }

  // The workers of a PostgreSQL store: alive or not, what each holds.
  async function workersPage() {
    try {
      const { workers } = await (await api("/api/workers")).json();
      const body = document.querySelector("#workers tbody");
      for (const w of workers) {
        const state = w.alive ? "alive" : w.stopped_at ? "stopped" : "lost";
        body.append(el("tr", { "data-worker": w.name, "data-state": state },
          el("td", { class: "id" }, w.name), el("td", {}, el("span", { class: "badge w-" + state }, state)),
          el("td", {}, String(w.slots)), el("td", {}, String(w.running)), el("td", {}, String(w.runs)),
          el("td", {}, w.labels.join(", ")), el("td", { class: "when" }, w.started_at.replace("T", " ").replace("Z", "")),
          el("td", { class: "when" }, w.seen_at.replace("T", " ").replace("Z", ""))));
      }
      document.getElementById("empty").hidden = workers.length > 0;
    } catch (e) { problem(e); }
  }

  // Schedules (next tick, last tick and its run) and webhooks.
  async function schedulesPage() {
    try {
      const { schedules, webhooks } = await (await api("/api/schedules")).json();
      const link = (id) => id ? el("a", { href: "/runs/" + encodeURIComponent(id) }, id.slice(0, 13)) : "";
      const body = document.querySelector("#schedules tbody");
      for (const s of schedules) {
        const next = s.paused ? el("span", { class: "badge w-stopped" }, "paused") : (s.next_at || "never");
        const last = s.last_tick ? s.last_tick + (s.last_outcome && s.last_outcome !== "started" ? " (" + s.last_outcome + ")" : "") : "";
        body.append(el("tr", { "data-schedule": s.name },
          el("td", { class: "id" }, s.name), el("td", {}, s.namespace), el("td", {}, el("code", {}, s.cron)), el("td", {}, s.timezone),
          el("td", { class: "when" }, next), el("td", { class: "when" }, last), el("td", { class: "id" }, link(s.last_run))));
      }
      const hooks = document.querySelector("#webhooks tbody");
      for (const h of webhooks) {
        hooks.append(el("tr", { "data-webhook": h.name },
          el("td", { class: "id" }, "POST /hooks/" + h.name + (h.paused ? " (paused)" : "")), el("td", {}, h.namespace), el("td", {}, h.workflow),
          el("td", {}, h.secret), el("td", { class: "when" }, h.last_delivery || ""), el("td", { class: "id" }, link(h.last_run))));
      }
      document.getElementById("webhooks").hidden = webhooks.length === 0;
      document.getElementById("empty").hidden = schedules.length + webhooks.length > 0;
    } catch (e) { problem(e); }
  }

  // The audit log: who did what, when, and how it went.
  async function auditPage() {
    try {
      const { entries } = await (await api("/api/audit")).json();
      const body = document.querySelector("#audit tbody");
      for (const a of entries) {
        const run = a.run_id ? el("a", { href: "/runs/" + encodeURIComponent(a.run_id) }, a.run_id.slice(0, 13)) : "";
        body.append(el("tr", { "data-action": a.action, "data-outcome": a.outcome.startsWith("done") ? "done" : "refused" },
          el("td", { class: "when" }, a.at.replace("T", " ").replace("Z", "")), el("td", {}, a.token), el("td", {}, a.namespace || ""),
          el("td", {}, a.action), el("td", { class: "id" }, run), el("td", {}, a.outcome), el("td", {}, a.detail || "")));
      }
      document.getElementById("empty").hidden = entries.length > 0;
    } catch (e) { problem(e); }
  }

  // The view the address names: `/` the runs, `/runs/ID` one run.
  const view = (name) => {
    document.getElementById("view").replaceChildren(document.getElementById(name + "-view").content.cloneNode(true));
  };
  if (location.pathname === "/audit") {
    document.getElementById("where").textContent = "audit";
    view("audit");
    auditPage();
  } else if (location.pathname === "/schedules") {
    document.getElementById("where").textContent = "schedules";
    view("schedules");
    schedulesPage();
  } else if (location.pathname === "/workers") {
    document.getElementById("where").textContent = "workers";
    view("workers");
    workersPage();
  } else if (location.pathname.startsWith("/runs/")) {
    document.getElementById("where").textContent = "run";
    view("run");
    runPage();
  } else {
    document.getElementById("where").textContent = "runs";
    view("runs");
    runsPage();
  }
  return { runsPage, runPage, workersPage, auditPage, schedulesPage };
})();
