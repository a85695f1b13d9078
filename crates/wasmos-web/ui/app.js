// The Wasmos web UI: one page, its views drawn from the client API (POST /api/v1/client) and
// kept live by the event stream (GET /api/v1/events). Text from the cluster is only ever set
// as text (never parsed as HTML): task names, arguments and logs come from tenants.
"use strict";

const main = document.getElementById("main");
const banner = document.getElementById("banner");
let me = { identity: "", operator: false };
let refreshView = null;
let refreshTimer = null;
let stopView = null;

// h("td", {class: "x"}, "text", child...): an element; strings become text nodes.
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    // Through the CSSOM: the page's policy refuses style attributes.
    else if (k === "style") {
      for (const decl of String(v).split(";")) {
        const at = decl.indexOf(":");
        if (at > 0) el.style.setProperty(decl.slice(0, at).trim(), decl.slice(at + 1).trim());
      }
    } else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const svgNs = "http://www.w3.org/2000/svg";
function s(tag, attrs, ...children) {
  const el = document.createElementNS(svgNs, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

function showError(message) {
  banner.textContent = message;
  banner.hidden = !message;
}

class ApiError extends Error {}

async function api(req) {
  const resp = await fetch("/api/v1/client", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(req),
  });
  let body = null;
  try {
    body = await resp.json();
  } catch (e) {
    throw new ApiError(`the API answered ${resp.status} without JSON`);
  }
  if (body && body.Error) throw new ApiError(body.Error.message);
  if (body && body.NotLeader) throw new ApiError("this master does not lead; try again in a moment");
  if (!resp.ok) throw new ApiError(body && body.error ? body.error : `the API answered ${resp.status}`);
  return body;
}

// Formatting.
// Network bandwidth (the custom resource `net`, bytes per second) of a resources object.
const netOf = (r) => (r && r.scalars && r.scalars.net) || 0;
const cores = (m) => (m / 1000).toFixed(m % 1000 ? 2 : 0);
function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${v.toFixed(v >= 10 || i === 0 ? 0 : 1)} ${units[i]}`;
}
function ago(ms) {
  if (!ms) return "-";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.round(s / 60)}m ago`;
  if (s < 86400) return `${Math.round(s / 3600)}h ago`;
  return `${Math.round(s / 86400)}d ago`;
}
const taskName = (id) => `t-${id}`;
// A result's bytes as text when they are UTF-8, else their size.
function utf8(bytes) {
  try { return new TextDecoder("utf-8", { fatal: true }).decode(new Uint8Array(bytes)); } catch { return `(${bytes.length} bytes)`; }
}
function stateCell(state) {
  const name = typeof state === "string" ? state : (Object.keys(state || {})[0] || "unknown");
  return h("span", { class: `state ${name.toLowerCase()}` }, name.toLowerCase());
}
function jobState(state) {
  if (typeof state === "string") return stateCell(state);
  const [k, v] = Object.entries(state)[0];
  return h("span", {}, stateCell(k), " ", h("span", { class: "muted" }, String(v)));
}

// A bar of `total`: used from the left, then offered, with reserved hatched over it.
function bar(total, used, offered, reserved) {
  const pct = (x) => (total > 0 ? Math.min(100, (100 * x) / total) : 0);
  const u = pct(used);
  const o = pct(offered);
  return h("div", { class: "bar", title: `used ${used}, offered ${offered}, reserved ${reserved} of ${total}` },
    h("span", { class: "used", style: `width:${u}%` }),
    h("span", { class: "offered", style: `left:${u}%;width:${Math.min(o, 100 - u)}%` }),
    h("span", { class: "reserved", style: `left:0;width:${pct(reserved)}%` }));
}

function table(headers, rows, empty) {
  if (!rows.length) return h("p", { class: "muted" }, empty || "Nothing to show.");
  return h("table", {}, h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))),
    h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c) => h("td", {}, c))))));
}

function link(href, text) {
  return h("a", { href }, text);
}

// Views. Each draws into `main` and returns what it needs redrawn on events (or nothing).

async function viewCluster() {
  const [{ Cluster: c }, { Agents: agents }, { Tasks: live }] = await Promise.all([
    api("ClusterStatus"),
    api("ListAgents"),
    api({ ListTasks: { filter: { states: ["Staging", "Starting", "Running"], after: null, limit: 1000 } } }),
  ]);
  const active = agents.filter((a) => a.state === "Active").length;
  const last = c.last_log_index || 0;
  main.replaceChildren(
    h("h1", {}, "Cluster"),
    h("div", { class: "cards" },
      h("div", { class: "card" }, h("b", {}, c.leader === null ? "none" : `master ${c.leader}`), "leader"),
      h("div", { class: "card" }, h("b", {}, c.term), "term"),
      h("div", { class: "card" }, h("b", {}, `${active}/${agents.length}`), "agents active"),
      h("div", { class: "card" }, h("b", {}, live.length), "tasks live")),
    h("h2", {}, "Masters"),
    table(["id", "address", "voter", "replicated to", "lag"], c.members.map((m) => [
      h("span", {}, String(m.id), m.id === c.leader ? h("span", { class: "state leader" }, " leader") : ""),
      h("span", { class: "mono" }, m.addr),
      m.voter ? "yes" : "learner",
      m.matched === null ? "-" : String(m.matched),
      m.matched === null ? "-" : `${Math.max(0, last - m.matched)} entries`,
    ])),
    h("p", { class: "muted" }, `Answered by master ${c.node} (${c.state}); last log index ${last}, applied ${c.last_applied || 0}.`));
}

async function viewAgents() {
  const [{ Agents: agents }, { Tasks: live }] = await Promise.all([
    api("ListAgents"),
    api({ ListTasks: { filter: { states: ["Starting", "Running"], after: null, limit: 1000 } } }),
  ]);
  // Only the tasks the viewer may see: a tenant counts its own. One page of them: past it
  // the counts are a floor, and the page says so.
  const partial = live.length >= 1000;
  const on = {};
  for (const t of live) if (t.agent) (on[t.agent] = on[t.agent] || []).push(t.id);
  const running = (id) => {
    const ids = on[id] || [];
    if (!ids.length) return "none";
    return h("span", {}, `${ids.length}: `, ...ids.slice(0, 5).flatMap((t, i) => [i ? ", " : "", link(`#/task/${t}`, taskName(t))]),
      ids.length > 5 ? ", ..." : "");
  };
  const sum = (m) => Object.values(m || {}).reduce((a, r) => a + r.cpu_millis, 0);
  const sumMem = (m) => Object.values(m || {}).reduce((a, r) => a + r.mem_bytes, 0);
  main.replaceChildren(h("h1", {}, "Agents"),
    partial ? h("p", { class: "muted" }, "Running tasks: the first 1000 counted; there are more.") : "",
    table(
    ["agent", "state", "OS", "CPU", "memory", "network", "running tasks", "attributes", "last heartbeat"],
    agents.map((a) => [
      h("span", { class: "mono" }, a.id),
      a.draining ? h("span", {}, stateCell(a.state), " ", stateCell("Draining")) : stateCell(a.state),
      `${a.attributes.os || "?"}/${a.attributes.arch || "?"}`,
      h("div", {}, bar(a.total.cpu_millis, a.used.cpu_millis, a.offered.cpu_millis, sum(a.reserved)),
        h("span", { class: "barlabel" }, `${cores(a.used.cpu_millis)} used, ${cores(a.offered.cpu_millis)} offered of ${cores(a.total.cpu_millis)} cores`)),
      h("div", {}, bar(a.total.mem_bytes, a.used.mem_bytes, a.offered.mem_bytes, sumMem(a.reserved)),
        h("span", { class: "barlabel" }, `${bytes(a.used.mem_bytes)} used of ${bytes(a.total.mem_bytes)}`)),
      netOf(a.total) ? `${bytes(netOf(a.used))}/s used of ${bytes(netOf(a.total))}/s` : "not managed",
      running(a.id),
      h("span", { class: "mono" }, Object.entries(a.attributes).map(([k, v]) => `${k}=${v}`).join(" ")),
      ago(a.last_seen_ms),
    ]), "No agents registered."));
}

async function viewRoles() {
  const { Roles: roles } = await api("ListRoles");
  main.replaceChildren(h("h1", {}, "Roles"), table(
    ["role", "weight", "DRF share", "holds (CPU, memory)", "offered", "guarantee", "limit", "frameworks"],
    roles.map((r) => [
      h("span", { class: "mono" }, r.role),
      (r.weight_milli / 1000).toString(),
      h("div", {}, bar(1e6, r.share_ppm, 0, 0), h("span", { class: "barlabel" }, `${(r.share_ppm / 1e4).toFixed(1)} %`)),
      `${cores(r.allocated.cpu_millis)} cores, ${bytes(r.allocated.mem_bytes)}`,
      `${cores(r.offered.cpu_millis)} cores`,
      `${cores(r.guarantee.cpu_millis)} cores, ${bytes(r.guarantee.mem_bytes)}`,
      r.limit ? `${cores(r.limit.cpu_millis)} cores, ${bytes(r.limit.mem_bytes)}` : "none",
      String(r.frameworks),
    ]), "No roles yet."));
}

const PAGE = 50;
const STATES = ["Staging", "Starting", "Running", "Finished", "Failed", "Killed", "Lost", "Error"];

async function viewTasks(params) {
  const state = params.get("state") || "";
  const q = (params.get("q") || "").toLowerCase();
  const after = params.get("after");
  const filter = { states: state ? [state] : [], after: after ? Number(after) : null, limit: PAGE };
  const { Tasks: tasks } = await api({ ListTasks: { filter } });
  const shown = q ? tasks.filter((t) => `${taskName(t.id)} ${t.spec.name} ${t.owner} ${t.spec.role || ""}`.toLowerCase().includes(q)) : tasks;
  const go = (next) => {
    const p = new URLSearchParams({ state, q, ...next });
    for (const [k, v] of [...p.entries()]) if (!v) p.delete(k);
    location.hash = `#/tasks?${p}`;
  };
  const select = h("select", { id: "state-filter", onchange: (e) => go({ state: e.target.value }) },
    h("option", { value: "" }, "any state"), STATES.map((x) => h("option", { value: x, selected: x === state }, x.toLowerCase())));
  const search = h("input", { id: "task-search", type: "search", placeholder: "search this page", value: q });
  search.addEventListener("change", (e) => go({ q: e.target.value, after: after || "" }));
  const last = tasks.length ? tasks[tasks.length - 1].id : null;
  main.replaceChildren(
    h("h1", {}, "Tasks"),
    h("div", { class: "controls" }, select, search),
    table(["task", "name", "state", "agent", "role", "owner", "CPU", "memory", "updated"], shown.map((t) => [
      link(`#/task/${t.id}`, taskName(t.id)),
      t.spec.name,
      h("span", {}, stateCell(t.status.state), t.status.reason ? h("span", { class: "muted" }, ` (${t.status.reason})`) : ""),
      t.agent || "-",
      t.spec.role || "-",
      h("span", { class: "mono" }, t.owner),
      cores(t.spec.resources.cpu_millis),
      bytes(t.spec.resources.mem_bytes),
      ago(t.updated_ms),
    ]), "No tasks."),
    h("div", { class: "pager" },
      after ? h("button", { onclick: () => go({}) }, "first page") : "",
      tasks.length === PAGE && last !== null ? h("button", { id: "next-page", onclick: () => go({ after: String(last) }) }, "next page") : ""));
}

function spark(points, label, fmt) {
  const w = 260;
  const ht = 48;
  const max = Math.max(1, ...points);
  const coords = points.map((v, i) => `${(i / Math.max(1, points.length - 1)) * w},${ht - (v / max) * (ht - 4) - 2}`).join(" ");
  return h("div", {}, h("div", { class: "barlabel" }, `${label}: ${points.length ? fmt(points[points.length - 1]) : "-"}`),
    (() => {
      const svg = s("svg", { class: "spark", width: w, height: ht, viewBox: `0 0 ${w} ${ht}` });
      if (points.length > 1) svg.append(s("polyline", { points: coords, fill: "none", stroke: "#3b4cca", "stroke-width": 1.5 }));
      return svg;
    })());
}

async function viewTask(id) {
  const logBox = h("pre", { class: "log", id: "log" });
  const aborter = new AbortController();
  // Redrawn until a draw shows the task ended.
  let shownEnded = false;
  const draw = async () => {
    // Usage over time is the leader's, from the agents' heartbeats; a task that never ran
    // for one has none.
    // A refused usage read (the tenant's read rate) leaves the rest of the page standing.
    const [{ Task: t }, usage] = await Promise.all([api({ GetTask: { id } }),
      api({ TaskUsage: { id } }).catch(() => null)]);
    const samples = (usage && usage.Usage && usage.Usage.samples) || [];
    const latest = samples.length ? samples[samples.length - 1] : null;
    const spec = t.spec;
    const done = ["Finished", "Failed", "Killed", "Lost", "Error"].includes(t.status.state);
    shownEnded = done;
    const kill = !done ? h("button", { class: "danger", onclick: async () => {
      try { await api({ KillTask: { id } }); } catch (e) { showError(e.message); }
    } }, "kill") : "";
    const kv = (pairs) => h("dl", { class: "kv" }, pairs.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
    main.replaceChildren(
      h("h1", {}, `Task ${taskName(id)} `, stateCell(t.status.state), " ", kill),
      kv([
        ["name", spec.name],
        ["owner", h("span", { class: "mono" }, t.owner)],
        ["role", spec.role || "-"],
        ["agent", t.agent || "-"],
        ["progress", t.progress ? `${(t.progress.permille / 10).toFixed(1)} % ${t.progress.message}` : "-"],
        ["reason", t.status.reason || "-"],
        ["message", t.status.message || "-"],
        ["exit code", t.status.exit_code === null ? "-" : String(t.status.exit_code)],
        ["bundle", h("span", { class: "mono" }, spec.bundle)],
        ["args", h("span", { class: "mono" }, JSON.stringify(spec.args))],
        ["environment", h("span", { class: "mono" }, spec.env.map(([k, v]) => `${k}=${v}`).join(" ") || "-")],
        ["secrets", spec.secret_env.length ? spec.secret_env.map((x) => `${x.name}=(hidden)`).join(" ") : "-"],
        ["requested", `${cores(spec.resources.cpu_millis)} cores, ${bytes(spec.resources.mem_bytes)}${netOf(spec.resources) ? `, ${bytes(netOf(spec.resources))}/s network` : ""}, timeout ${spec.timeout_ms / 1000}s`],
        ["using now", !done && latest ? `${cores(latest.cpu_millis)} cores, ${bytes(latest.mem_bytes)}` : "-"],
        ["used in all", done ? `${(t.status.cpu_ms / 1000).toFixed(3)} s CPU, peak ${bytes(t.status.peak_mem_bytes)}` : "- (told when it ends)"],
        ["submitted", ago(t.submitted_ms)],
        ["results", t.status.results.length ? h("span", {}, t.status.results.map((r) => h("div", { class: "mono" },
          `${r.name} = ${utf8(r.value)}`))) : "-"],
        ["outputs", t.status.outputs.length ? h("span", {}, t.status.outputs.map((o) => h("div", {},
          h("a", { href: `/api/v1/blobs/${o.blob}?name=${encodeURIComponent(o.path)}`, download: o.path }, o.path), ` ${bytes(o.size)}`))) : "-"],
        ["files", (t.status.files || []).length ? h("span", {}, t.status.files.map((f) => h("div", {},
          h("a", { href: `/api/v1/blobs/${f.blob}?name=${encodeURIComponent(f.name)}`, download: f.name }, f.name), ` ${bytes(f.size)}`))) : "-"],
      ]),
      h("h2", {}, "CPU and memory ", h("span", { class: "muted" }, samples.length ? `(the last ${ago(samples[0].at_ms).replace(" ago", "")}, one point per heartbeat)` : "(no samples: the task has not run for a heartbeat)")),
      h("div", { class: "cards", id: "usage" },
        spark(samples.map((x) => x.cpu_millis), "CPU", (v) => `${cores(v)} cores`),
        spark(samples.map((x) => x.mem_bytes), "memory", bytes)),
      h("h2", {}, "Output ", h("span", { class: "muted" }, done ? "" : "(live)")),
      logBox);
  };
  await draw();
  // The log tail streams while the page is open; redraws keep the same box.
  (async () => {
    try {
      const resp = await fetch(`/api/v1/tasks/${id}/logs?follow=true`, { signal: aborter.signal });
      if (!resp.ok || !resp.body) {
        logBox.append(h("span", { class: "stderr" }, `cannot read the output: ${resp.status}`));
        return;
      }
      const reader = resp.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let nl;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (!line) continue;
          const msg = JSON.parse(line);
          if (msg.text !== undefined) {
            logBox.append(h("span", { class: msg.stream === "stderr" ? "stderr" : "" }, msg.text));
            // The tail, not the whole output: a chatty task must not fill the browser.
            while (logBox.childNodes.length > 5000) logBox.firstChild.remove();
            logBox.scrollTop = logBox.scrollHeight;
          } else if (msg.error) {
            logBox.append(h("span", { class: "stderr" }, msg.error));
          }
        }
      }
    } catch (e) {
      if (e.name !== "AbortError") logBox.append(h("span", { class: "stderr" }, `output stream ended: ${e.message}`));
    }
  })();
  stopView = () => aborter.abort();
  return async () => {
    if (!shownEnded) await draw();
  };
}

function dag(groups) {
  if (!groups.length) return h("p", { class: "muted" }, "No groups.");
  // Layers by longest path from a group with no dependencies.
  const depth = {};
  const byName = Object.fromEntries(groups.map((g) => [g.name, g]));
  const d = (name, seen) => {
    if (depth[name] !== undefined) return depth[name];
    if (seen.has(name)) return 0;
    seen.add(name);
    const deps = (byName[name] && byName[name].depends_on) || [];
    depth[name] = deps.length ? 1 + Math.max(...deps.map((x) => d(x, seen))) : 0;
    return depth[name];
  };
  groups.forEach((g) => d(g.name, new Set()));
  const layers = [];
  groups.forEach((g) => { (layers[depth[g.name]] = layers[depth[g.name]] || []).push(g); });
  const bw = 150;
  const bh = 44;
  const gapX = 60;
  const gapY = 16;
  const pos = {};
  layers.forEach((layer, i) => layer.forEach((g, j) => { pos[g.name] = { x: 10 + i * (bw + gapX), y: 10 + j * (bh + gapY) }; }));
  const width = 20 + layers.length * (bw + gapX);
  const height = 20 + Math.max(...layers.map((l) => l.length)) * (bh + gapY);
  const svg = s("svg", { class: "dag", id: "dag", width, height, viewBox: `0 0 ${width} ${height}` });
  groups.forEach((g) => (g.depends_on || []).forEach((dep) => {
    if (!pos[dep]) return;
    svg.append(s("line", { x1: pos[dep].x + bw, y1: pos[dep].y + bh / 2, x2: pos[g.name].x, y2: pos[g.name].y + bh / 2 }));
  }));
  groups.forEach((g) => {
    const p = pos[g.name];
    svg.append(s("rect", { x: p.x, y: p.y, width: bw, height: bh, rx: 5 }),
      s("text", { x: p.x + 8, y: p.y + 17 }, g.name),
      s("text", { x: p.x + 8, y: p.y + 34 }, `${g.done}/${g.count} done, ${g.running} running`));
  });
  return svg;
}

async function viewJobs() {
  const { Jobs: jobs } = await api({ ListJobs: { after: null } });
  main.replaceChildren(h("h1", {}, "Jobs and services"), table(
    ["job", "name", "kind", "state", "progress", "owner", "submitted"],
    jobs.map((j) => {
      const count = j.groups.reduce((a, g) => a + g.count, 0);
      const done = j.groups.reduce((a, g) => a + g.done, 0);
      return [link(`#/job/${j.id}`, `job-${j.id}`), j.name, j.kind.toLowerCase(), jobState(j.state),
        h("div", {}, bar(count, done, 0, 0), h("span", { class: "barlabel" }, `${done}/${count} done`)),
        h("span", { class: "mono" }, j.owner), ago(j.submitted_ms)];
    }), "No jobs."));
}

async function viewJob(id) {
  const { Jobs: jobs } = await api({ GetJob: { id } });
  const j = jobs && jobs[0];
  if (!j) throw new ApiError(`no job job-${id}`);
  main.replaceChildren(
    h("h1", {}, `Job job-${j.id}: ${j.name} `, jobState(j.state)),
    h("h2", {}, "Graph"),
    dag(j.groups),
    h("h2", {}, "Groups"),
    table(["group", "count", "pending", "running", "done", "progress", "failed (retries)", "lost", "reads"], j.groups.map((g) => [
      g.name, String(g.count), String(g.pending), String(g.running),
      h("div", {}, bar(g.count, g.done, 0, 0), h("span", { class: "barlabel" }, String(g.done))),
      `${((g.progress_permille || 0) / 10).toFixed(1)} %`,
      String(g.failed), String(g.lost), (g.depends_on || []).join(", ") || "-"])),
    h("h2", {}, "Results"),
    table(["index", "task", "files"], j.results.map(([i, t, files]) => [String(i), link(`#/task/${t}`, taskName(t)),
      h("span", {}, files.map((o) => h("div", {},
        h("a", { href: `/api/v1/blobs/${o.blob}?name=${encodeURIComponent(o.path)}`, download: o.path }, o.path), ` ${bytes(o.size)}`)))]),
    j.state === "Running" ? "No results yet." : "No results."));
}

async function viewFrameworks() {
  const { Frameworks: fws } = await api("ListFrameworks");
  // Sessions and offers are the leader's to tell; a stale answer has none.
  const offers = (o) => o === null ? "?" : o.outstanding === 0 ? "none"
    : `${o.outstanding}: ${cores(o.offered.cpu_millis)} cores, ${bytes(o.offered.mem_bytes)}`;
  main.replaceChildren(h("h1", {}, "Frameworks"), table(
    ["framework", "name", "role", "owner", "job", "live tasks", "subscribed", "outstanding offers", "registered"],
    fws.map((f) => [`fw-${f.id}`, f.name, f.role, h("span", { class: "mono" }, f.owner),
      f.job === null ? "-" : link(`#/job/${f.job}`, `job-${f.job}`), String(f.live_tasks),
      f.offers === null ? "?" : f.offers.subscribed ? "yes" : "no", offers(f.offers), ago(f.registered_ms)]),
    "No frameworks."));
}

async function viewAudit() {
  const { Audit: a } = await api({ ListAudit: { filter: { after: 0, since_ms: Date.now() - 3600e3, identity: null, action: null } } });
  const entries = a.entries.slice(-200).reverse();
  main.replaceChildren(h("h1", {}, "Audit log ", h("span", { class: "muted" }, "(the last hour, newest first)")), table(
    ["time", "identity", "peer", "channel", "action", "object", "result"],
    entries.map((e) => [new Date(e.at_ms).toISOString(), h("span", { class: "mono" }, e.identity), e.peer, e.channel,
      e.action, h("span", { class: "mono" }, e.object || "-"), e.result]), "No entries."));
}

const views = {
  cluster: { title: "Cluster", draw: viewCluster },
  agents: { title: "Agents", draw: viewAgents },
  roles: { title: "Roles", draw: viewRoles },
  tasks: { title: "Tasks", draw: viewTasks },
  jobs: { title: "Jobs", draw: viewJobs },
  frameworks: { title: "Frameworks", draw: viewFrameworks },
  audit: { title: "Audit", draw: viewAudit, operators: true },
};

function drawNav(current) {
  const nav = document.getElementById("nav");
  nav.replaceChildren(...Object.entries(views)
    .filter(([, v]) => !v.operators || me.operator)
    .map(([k, v]) => h("a", { href: `#/${k}`, class: k === current ? "on" : null }, v.title)));
}

async function route() {
  if (stopView) { stopView(); stopView = null; }
  refreshView = null;
  const [path, query] = (location.hash.slice(2) || "cluster").split("?");
  const params = new URLSearchParams(query || "");
  const [name, arg] = path.split("/");
  const nav = name === "task" ? "tasks" : name === "job" ? "jobs" : name;
  drawNav(nav);
  let draw;
  if (name === "task" && /^\d+$/.test(arg || "")) draw = () => viewTask(Number(arg));
  else if (name === "job" && /^\d+$/.test(arg || "")) draw = () => viewJob(Number(arg));
  else if (views[name]) draw = () => views[name].draw(params);
  else draw = async () => { main.replaceChildren(h("h1", {}, "Not found"), h("p", {}, "No such page.")); };
  try {
    const again = await draw();
    showError("");
    refreshView = typeof again === "function" ? again : draw;
  } catch (e) {
    main.replaceChildren(h("h1", {}, "Cannot show this page"));
    showError(e.message);
  }
}

function scheduleRefresh() {
  if (refreshTimer || !refreshView) return;
  refreshTimer = setTimeout(async () => {
    refreshTimer = null;
    const again = refreshView;
    if (!again) return;
    try { await again(); showError(""); } catch (e) { showError(e.message); }
  }, 250);
}

// Live updates: any event the caller may see redraws the page shown.
function follow(from) {
  const live = document.getElementById("live");
  const src = new EventSource(`/api/v1/events?follow=true&index=${from}`);
  src.addEventListener("events", (m) => {
    live.classList.add("on");
    const frame = JSON.parse(m.data);
    const events = (frame.Events && frame.Events.events) || [];
    if (events.length) scheduleRefresh();
  });
  src.onerror = () => live.classList.remove("on");
}

async function start() {
  try {
    const resp = await fetch("/api/v1/whoami");
    if (resp.ok) me = await resp.json();
    document.getElementById("whoami").textContent = me.identity;
  } catch (e) {
    showError(`cannot reach the API: ${e.message}`);
  }
  window.addEventListener("hashchange", route);
  await route();
  try {
    const { Cluster: c } = await api("ClusterStatus");
    follow((c.last_applied || 0) + 1);
  } catch (e) {
    showError(e.message);
  }
  // Ages and live figures move on even without events.
  setInterval(scheduleRefresh, 5000);
}

start();
