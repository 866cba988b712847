// Cube dashboard: keeps the server-rendered page current from /api/stream (server-sent
// events). Text from the cluster is only ever set with textContent, never as markup.
"use strict";
(function () {
  const page = document.body.dataset.page;
  const live = document.getElementById("live");

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== undefined && v !== null) e.setAttribute(k, v);
    }
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function badge(state, text) { return el("span", { class: "badge " + state }, text || state); }
  // A task whose node is silent is of unknown state (the manager marks it node_unreachable).
  function shownState(t) {
    const active = t.state === "scheduled" || t.state === "running";
    return t.node_unreachable && active ? "unknown (node unreachable)" : t.state;
  }
  function short(id) { return String(id).slice(0, 8); }
  function bytes(n) {
    const units = ["B", "Ki", "Mi", "Gi", "Ti"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? n.toFixed(0) : n.toFixed(1)) + units[i];
  }
  function age(iso) {
    if (!iso) return "-";
    const s = Math.max(0, Math.floor((Date.now() - Date.parse(iso)) / 1000));
    if (s < 120) return s + "s";
    if (s < 7200) return Math.floor(s / 60) + "m";
    if (s < 172800) return Math.floor(s / 3600) + "h";
    return Math.floor(s / 86400) + "d";
  }
  function bar(label, reserved, used, total) {
    const pct = (v) => total > 0 ? Math.min(100, Math.max(0, v / total * 100)) : 0;
    const b = el("div", { class: "bar", title: label });
    b.appendChild(el("div", { class: "fill", style: "width:" + pct(reserved).toFixed(1) + "%" }));
    b.appendChild(el("div", { class: "used", style: "left:" + pct(used).toFixed(1) + "%" }));
    b.appendChild(el("span", {}, label));
    return b;
  }

  // ---- overview ----
  function nodeRow(n) {
    const tr = el("tr", { "data-node": n.name });
    tr.appendChild(el("td", {}, n.name));
    const st = el("td"); st.appendChild(badge(n.state)); tr.appendChild(st);
    const cpu = el("td");
    cpu.appendChild(bar(n.cpu_allocated.toFixed(1) + "/" + n.cores + " cores reserved, " +
      (n.cpu_usage * 100).toFixed(0) + "% busy", n.cpu_allocated, n.cpu_usage * n.cores, n.cores));
    tr.appendChild(cpu);
    const mem = el("td");
    mem.appendChild(bar(bytes(n.memory_allocated) + "/" + bytes(n.memory) + " reserved, " +
      bytes(n.memory_used) + " used", n.memory_allocated, n.memory_used, n.memory));
    tr.appendChild(mem);
    tr.appendChild(el("td", { class: "num" }, String(n.task_count)));
    tr.appendChild(el("td", {}, age(n.last_heartbeat) + " ago"));
    return tr;
  }
  function renderNodes(nodes) {
    const body = document.getElementById("nodes");
    if (!body) return;
    body.replaceChildren(...nodes.map(nodeRow));
    const none = document.getElementById("no-nodes");
    if (none) none.hidden = nodes.length > 0;
  }
  function managerRow(m) {
    const tr = el("tr", { "data-manager": m.id, "data-role": m.role });
    const role = el("td"); role.appendChild(badge(m.role)); tr.appendChild(role);
    tr.appendChild(el("td", { class: "num" }, m.epoch === undefined || m.epoch === null ? "-" : String(m.epoch)));
    tr.appendChild(el("td", { class: "mono", title: m.id }, short(m.id)));
    tr.appendChild(el("td", {}, m.host));
    tr.appendChild(el("td", { class: "num" }, String(m.pid)));
    tr.appendChild(el("td", { class: "age", "data-time": m.since }, age(m.since)));
    tr.appendChild(el("td", { class: "num" }, String(m.terms || 0)));
    return tr;
  }
  // The same words as the server's first rendering (pages/overview.rs, managers_summary).
  function managersSummary(managers) {
    const n = managers.filter((m) => m.role === "standby").length;
    const standbys = n === 0 ? "no standby" : n === 1 ? "1 standby" : n + " standbys";
    const leader = managers.find((m) => m.role === "leader");
    if (leader) {
      const epoch = leader.epoch === undefined || leader.epoch === null ? "-" : String(leader.epoch);
      return "leader " + leader.host + " (pid " + leader.pid + ") at epoch " + epoch + "; " + standbys;
    }
    if (managers.length === 0) return "no manager answers";
    return "no leader answers (a standby takes over when the lease expires); " + standbys;
  }
  function renderManagers(managers) {
    const body = document.getElementById("managers");
    if (!body) return;
    body.replaceChildren(...managers.map(managerRow));
    const summary = document.getElementById("managers-summary");
    if (summary) summary.textContent = managersSummary(managers);
  }
  function taskCells(tr, t) {
    const a = el("a", { href: "/tasks/" + t.id }, short(t.id));
    const id = el("td", { class: "mono" }); id.appendChild(a);
    const state = el("td", { class: "state" }); state.appendChild(badge(t.state, shownState(t)));
    tr.replaceChildren(id, el("td", { class: "name" }, t.name || short(t.id)), state,
      el("td", { class: "worker" }, t.worker || "-"), el("td", { class: "image" }, t.image),
      el("td", { class: "age", "data-time": t.submitted_at }, age(t.submitted_at)));
  }
  function count(state, delta) {
    const c = document.querySelector('[data-count="' + state + '"] .count');
    if (c) c.textContent = String(Math.max(0, Number(c.textContent) + delta));
  }
  // The last known state of every task seen, so that the counts by state stay right for
  // tasks whose row is not on the page (filtered out, or beyond the list's length). A task
  // never seen may be new or merely off the page: then the counts are fetched anew, and
  // changes that arrive while a fetch is due or under way are left to it (or to another).
  const known = new Map();
  document.querySelectorAll("tr[data-task]").forEach((tr) => known.set(tr.dataset.task, tr.dataset.state));
  let recount = null, fetching = false, again = false;
  function refreshCounts() {
    if (fetching) { again = true; return; }
    if (recount) return;
    recount = setTimeout(() => {
      recount = null;
      fetching = true;
      fetch("/api/tasks?limit=0").then((r) => r.ok ? r.json() : null).then((l) => {
        if (!l || !l.counts) return;
        document.querySelectorAll("[data-count]").forEach((a) => {
          const c = a.querySelector(".count");
          if (c) c.textContent = String(l.counts[a.dataset.count] || 0);
        });
      }).catch(() => {}).finally(() => {
        fetching = false;
        if (again) { again = false; refreshCounts(); }
      });
    }, 300);
  }
  // The last version of each task seen, for its status steps below.
  const seen = new Map();
  // That a task runs, and how healthy it is, is its worker's report, not a Task DB write: the
  // journal says it, and the task seen last is shown with it (the task page reads the task
  // again from the manager, which has the container and start time too).
  const STATUS_KINDS = ["running", "starting", "healthy", "unhealthy"];
  function onStatus(e) {
    if (!e.task_id || !STATUS_KINDS.includes(e.kind)) return;
    const box = document.getElementById("task");
    if (page === "task" && box && box.dataset.task === e.task_id) {
      fetch("/api/tasks/" + e.task_id).then((r) => r.ok ? r.json() : null)
        .then((t) => { if (t) onTaskDetail(t); }).catch(() => {});
    }
    const last = seen.get(e.task_id);
    if (page !== "overview" || !last) return;
    const t = Object.assign({}, last);
    if (e.kind === "running") {
      t.state = "running";
      if (e.worker) t.worker = e.worker;
    } else {
      t.health = e.kind;
    }
    onTask(t);
    if (t.service) onServiceChange(t.service);
  }
  function onTask(t) {
    seen.set(t.id, t);
    const table = document.querySelector("table.tasks");
    if (!table) return;
    const body = document.getElementById("tasks");
    let tr = body.querySelector('tr[data-task="' + t.id + '"]');
    const before = known.get(t.id);
    known.set(t.id, t.state);
    if (before === undefined || recount || fetching) {
      if (before !== t.state) refreshCounts();
    } else if (before !== t.state) {
      count(before, -1);
      count(t.state, +1);
    }
    const wantState = table.dataset.filterState, wantNode = table.dataset.filterNode;
    const matches = (!wantState || wantState === t.state) && (!wantNode || wantNode === t.worker);
    if (!matches) { if (tr) tr.remove(); return; }
    if (!tr) {
      tr = el("tr", { "data-task": t.id, class: "new" });
      body.insertBefore(tr, body.firstChild);
    }
    tr.dataset.state = t.state;
    taskCells(tr, t);
  }
  function journalRow(e) {
    const tr = el("tr");
    tr.appendChild(el("td", { class: "mono" }, new Date(e.time).toISOString().slice(11, 23)));
    tr.appendChild(el("td", {}, e.kind));
    const task = el("td", { class: "mono" });
    if (e.task_id) task.appendChild(el("a", { href: "/tasks/" + e.task_id }, short(e.task_id)));
    else task.textContent = "-";
    tr.appendChild(task);
    tr.appendChild(el("td", {}, e.worker || "-"));
    tr.appendChild(el("td", {}, e.message));
    return tr;
  }
  function onJournal(e) {
    const body = document.getElementById("journal");
    if (!body) return;
    if (page === "task" && e.task_id !== document.getElementById("task").dataset.task) return;
    if (page === "service" && e.service !== serviceName()) return;
    const tr = journalRow(e);
    tr.className = "new";
    body.insertBefore(tr, body.firstChild);
    while (body.children.length > 200) body.lastChild.remove();
  }

  // ---- task page ----
  function onTaskDetail(t) {
    const box = document.getElementById("task");
    if (!box || box.dataset.task !== t.id) return;
    const changed = box.dataset.state !== t.state;
    box.dataset.state = t.state;
    const st = document.getElementById("task-state");
    st.className = "badge " + t.state;
    st.textContent = shownState(t);
    const set = (k, v) => {
      const dd = box.querySelector('dd[data-field="' + k + '"]');
      if (dd) dd.textContent = v === undefined || v === null || v === "" ? "-" : String(v);
    };
    set("worker", t.worker);
    set("restarts", t.restart_count);
    set("health", t.health);
    set("started", t.start_time);
    set("finished", t.finish_time);
    set("exit code", t.exit_code);
    set(t.state === "pending" ? "waiting because" : "error", t.error);
    if (t.state === "completed") { const b = document.getElementById("stop"); if (b) b.remove(); }
    if (changed) refreshLog();
  }
  function refreshLog() {
    const box = document.getElementById("task");
    const log = document.getElementById("log");
    if (!box || !log) return;
    fetch("/api/tasks/" + box.dataset.task + "/logs").then((r) => r.ok ? r.json() : null).then((l) => {
      if (!l || !l.kept) return;
      let pre = log;
      if (log.tagName !== "PRE") {
        pre = el("pre", { id: "log", "data-kept": "true" });
        log.replaceWith(pre);
      }
      pre.textContent = l.text;
      pre.scrollTop = pre.scrollHeight;
    }).catch(() => {});
  }
  const stop = document.getElementById("stop");
  if (stop) {
    stop.addEventListener("click", () => {
      const id = document.getElementById("task").dataset.task;
      stop.disabled = true;
      fetch("/api/tasks/" + id + "/stop", {
        method: "POST", headers: { "Content-Type": "application/json" },
      }).then((r) => r.json()).then((b) => {
        if (b.error) { stop.disabled = false; alert(b.error); }
      });
    });
  }
  if (page === "task") {
    setInterval(() => {
      const s = document.getElementById("task").dataset.state;
      if (s === "running" || s === "scheduled") refreshLog();
    }, 3000);
  }

  // ---- services (overview section and a service's page) ----
  // A change to a service or one of its copies fetches the service(s) anew, a moment later;
  // changes that arrive meanwhile, or while a fetch is under way, are left to it (or to one
  // more). The counts (desired, running, healthy) are the manager's, not the browser's.
  function debounced(load) {
    let timer = null, busy = false, again = false;
    function run() {
      if (busy) { again = true; return; }
      if (timer) return;
      timer = setTimeout(() => {
        timer = null;
        busy = true;
        load().catch(() => {}).finally(() => {
          busy = false;
          if (again) { again = false; run(); }
        });
      }, 300);
    }
    return run;
  }
  // The same words as the server's first rendering (pages/service.rs: service_state, service_message,
  // rollout_text, state_badge).
  function serviceState(s) {
    if (s.removed) return "removed";
    if (s.finished) return "finished";
    return s.rollout ? s.rollout.state : "-";
  }
  function serviceMessage(s) { return s.finished || (s.rollout && s.rollout.message) || "-"; }
  function rolloutText(s) {
    const r = s.rollout;
    if (!r) return "-";
    return r.from === undefined || r.from === null ? String(r.to) : r.from + " \u2192 " + r.to;
  }
  function stateBadge(state) { return badge(String(state).split(/\s+/)[0], String(state)); }
  function serviceRow(st) {
    const s = st.service;
    const tr = el("tr", { "data-service": s.name, "data-state": serviceState(s) });
    const name = el("td", { class: "name" });
    name.appendChild(el("a", { href: "/services/" + encodeURIComponent(s.name) }, s.name));
    const rollout = el("td", { class: "rollout" }); rollout.appendChild(stateBadge(serviceState(s)));
    tr.replaceChildren(name, el("td", { class: "kind" }, s.kind),
      el("td", { class: "num desired" }, String(st.desired)),
      el("td", { class: "num running" }, String(st.running)),
      el("td", { class: "num healthy" }, String(st.healthy)),
      el("td", { class: "num version" }, String(s.version)), rollout,
      el("td", { class: "message" }, serviceMessage(s)));
    return tr;
  }
  function renderServices(list) {
    const body = document.getElementById("services");
    if (!body || !Array.isArray(list)) return;
    body.replaceChildren(...list.map(serviceRow));
    const none = document.getElementById("no-services");
    if (none) none.hidden = list.length > 0;
  }
  const refreshServices = debounced(() =>
    fetch("/api/services").then((r) => r.ok ? r.json() : null).then(renderServices));

  function serviceName() {
    const box = document.getElementById("service");
    return box ? box.dataset.service : null;
  }
  function taskLink(id) {
    const td = el("td", { class: "mono" });
    td.appendChild(el("a", { href: "/tasks/" + id }, short(id)));
    return td;
  }
  function copyRow(c) {
    const tr = el("tr", { "data-task": c.task_id, "data-state": c.state });
    const state = el("td", { class: "state" }); state.appendChild(stateBadge(c.state));
    if (c.stopping) state.appendChild(document.createTextNode(" (stopping)"));
    tr.replaceChildren(taskLink(c.task_id), el("td", { class: "name" }, c.name),
      el("td", { class: "num version" }, String(c.version)), state,
      el("td", { class: "node" }, c.node || "-"), el("td", { class: "healthy" }, c.healthy ? "yes" : "no"));
    return tr;
  }
  function endpointRow(e) {
    const ports = Object.entries(e.ports || {}).map(([c, h]) => h + "\u2192" + c);
    const tr = el("tr", { "data-task": e.task_id });
    tr.replaceChildren(taskLink(e.task_id), el("td", { class: "node" }, e.node),
      el("td", { class: "address mono" }, e.address), el("td", { class: "num version" }, String(e.version)),
      el("td", { class: "ports mono" }, ports.length ? ports.join(" ") : "-"));
    return tr;
  }
  function versionRow(v, current) {
    const tr = el("tr", { "data-version": v.version });
    tr.replaceChildren(el("td", { class: "num" }, v.version + (v.version === current ? " (current)" : "")),
      el("td", { class: "mono" }, new Date(v.created_at).toISOString().slice(0, 19).replace("T", " ")),
      el("td", { class: "image" }, v.template.image), el("td", {}, v.failed ? "failed" : v.good ? "good" : "-"));
    return tr;
  }
  function renderService(st) {
    const box = document.getElementById("service");
    if (!box || !st || !st.service || st.service.name !== box.dataset.service) return;
    const s = st.service;
    const state = serviceState(s);
    box.dataset.state = state;
    const badgeEl = document.getElementById("service-state");
    badgeEl.className = "badge " + state;
    badgeEl.textContent = state;
    const set = (k, v) => {
      const dd = box.querySelector('dd[data-field="' + k + '"]');
      if (dd) dd.textContent = v === undefined || v === null || v === "" ? "-" : String(v);
    };
    set("desired", st.desired);
    set("running", st.running);
    set("healthy", st.healthy);
    set("completed", st.completed);
    set("failed", st.failed);
    set("version", s.version);
    set("rollout", rolloutText(s));
    set("message", serviceMessage(s));
    set("updated", s.updated_at);
    const current = (s.versions || []).find((v) => v.version === s.version);
    if (current) {
      set("image", current.template.image);
      set("command", (current.template.cmd || []).join(" "));
    }
    document.getElementById("copies").replaceChildren(...(st.copies || []).map(copyRow));
    document.getElementById("endpoints").replaceChildren(...(st.endpoints || []).map(endpointRow));
    document.getElementById("versions").replaceChildren(
      ...(s.versions || []).slice().reverse().map((v) => versionRow(v, s.version)));
  }
  const refreshService = debounced(() =>
    fetch("/api/services/" + encodeURIComponent(serviceName())).then((r) => r.ok ? r.json() : null)
      .then(renderService));
  // Service `name` (or one of its copies) changed.
  function onServiceChange(name) {
    if (page === "overview") refreshServices();
    if (page === "service" && name === serviceName()) refreshService();
  }

  // ---- the stream ----
  function connect() {
    const source = new EventSource("/api/stream");
    source.onopen = () => {
      live.textContent = "live";
      live.className = "live on";
      document.body.dataset.live = "connected";
      // What changed between the page's rendering and now (or while reconnecting).
      if (page === "overview") refreshServices();
      if (page === "service") refreshService();
    };
    source.onerror = () => {
      live.textContent = "reconnecting…";
      live.className = "live off";
      document.body.dataset.live = "disconnected";
    };
    source.addEventListener("task", (m) => {
      const t = JSON.parse(m.data);
      if (page === "overview") onTask(t);
      if (page === "task") onTaskDetail(t);
      if (t.service) onServiceChange(t.service);
    });
    source.addEventListener("service", (m) => onServiceChange(JSON.parse(m.data).name));
    source.addEventListener("service-gone", (m) => onServiceChange(JSON.parse(m.data)));
    source.addEventListener("journal", (m) => {
      const e = JSON.parse(m.data);
      onJournal(e);
      onStatus(e);
    });
    source.addEventListener("nodes", (m) => { if (page === "overview") renderNodes(JSON.parse(m.data)); });
    source.addEventListener("managers", (m) => { if (page === "overview") renderManagers(JSON.parse(m.data)); });
  }
  connect();
  // ---- charts (overview): drawn on the server, fetched anew as often as it samples; the
  // picture shown changes only once the new one has loaded ----
  const charts = document.getElementById("charts");
  if (charts) {
    const every = Math.max(1000, Number(charts.dataset.every) || 10000);
    setInterval(() => {
      charts.querySelectorAll("img[data-chart]").forEach((img) => {
        const next = new Image();
        next.onload = () => { img.src = next.src; };
        next.src = "/charts/" + encodeURIComponent(img.dataset.chart) + "?at=" + Date.now();
      });
    }, every);
  }
  setInterval(() => {
    document.querySelectorAll("td.age[data-time]").forEach((td) => { td.textContent = age(td.dataset.time); });
  }, 5000);
})();
