// Switchboard console: the live parts of the server-rendered pages.
// Plain JavaScript, no dependencies. Reads go to the real /v1 API with the
// session cookie (EventSource for streams); writes send the session's CSRF
// token in X-CSRF-Token.
"use strict";

(function () {
  const body = document.body;
  const csrf = body.dataset.csrf || "";
  const $ = (sel, root) => (root || document).querySelector(sel);

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function fmtTime(s) {
    const d = new Date(s);
    return isNaN(d) ? s : d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "");
  }

  // The database banner: shown while the console's own JSON endpoints say
  // the database is unreachable.
  function dbBanner(msg) {
    const b = $("#banner-db");
    if (!b) return;
    if (msg) { b.textContent = msg; b.hidden = false; } else { b.hidden = true; }
  }

  // live opens an EventSource and shows #banner-live after repeated
  // errors; the browser reconnects by itself (with Last-Event-ID).
  let liveErrors = 0;
  function live(url, handlers, names) {
    const es = new EventSource(url);
    const banner = $("#banner-live");
    es.onopen = () => { liveErrors = 0; if (banner) banner.hidden = true; };
    es.onerror = () => {
      liveErrors++;
      if (liveErrors >= 2 && banner && es.readyState !== EventSource.CLOSED) banner.hidden = false;
    };
    for (const name of names) {
      es.addEventListener(name, (ev) => {
        liveErrors = 0;
        if (banner) banner.hidden = true;
        let data = null;
        try { data = JSON.parse(ev.data); } catch (e) { data = ev.data; }
        (handlers[name] || handlers["*"])(data, name, ev);
      });
    }
    return es;
  }

  async function api(method, url, payload) {
    const opts = { method, headers: { "X-CSRF-Token": csrf, "Accept": "application/json" }, credentials: "same-origin" };
    if (payload !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(payload);
    }
    const resp = await fetch(url, opts);
    let data = null;
    try { data = await resp.json(); } catch (e) { /* an empty or non-JSON body */ }
    if (!resp.ok) {
      const why = data && (data.detail || data.title || data.error) || resp.statusText;
      throw new Error(resp.status + ": " + why);
    }
    return data;
  }

  // ---- Overview ----
  function overview() {
    if (!$("#online-count")) return; // a key without the read scope: no fleet to show
    async function refresh() {
      try {
        const resp = await fetch("/console/api/overview", { credentials: "same-origin" });
        if (resp.status === 401) { location.href = "/sign-in"; return; }
        const o = await resp.json();
        if (!resp.ok) { dbBanner(o.error); return; }
        dbBanner("");
        $("#online-count").textContent = o.online;
        $("#offline-count").textContent = o.offline;
        $("#jobs-running").textContent = o.jobs_running;
        $("#empty-devices").hidden = o.devices > 0;
        const regions = $("#regions tbody");
        regions.replaceChildren();
        for (const r of o.regions || []) {
          const tr = el("tr", { "data-region": r.region });
          tr.append(el("td", {}, r.region), el("td", {}, r.online));
          regions.append(tr);
        }
        if (!regions.children.length) {
          const tr = el("tr", { "class": "none" }); tr.append(el("td", { colspan: "2" }, "No device is online.")); regions.append(tr);
        }
        const nodes = $("#nodes tbody");
        nodes.replaceChildren();
        for (const n of o.nodes || []) {
          const tr = el("tr", { "data-node": n.id });
          tr.append(el("td", {}, n.id), el("td", {}, n.region), el("td", {}, n.sessions),
            el("td", {}, n.lease_expires_in >= 0 ? "expires in " + Math.round(n.lease_expires_in) + " s" : "lapsed"));
          nodes.append(tr);
        }
        if (!nodes.children.length) {
          const tr = el("tr", { "class": "none" }); tr.append(el("td", { colspan: "4" }, "No connection node is running: start one with switchboard conn.")); nodes.append(tr);
        }
      } catch (e) {
        dbBanner("The console cannot reach the edge: " + e.message + ", retrying");
      }
    }
    async function stats() {
      try {
        const resp = await fetch("/console/api/stats", { credentials: "same-origin" });
        const s = await resp.json();
        if (!resp.ok) { dbBanner(s.error); return; }
        const b = s.buckets || [];
        chart($("#chart-rate"), b, [{ key: "per_second", cls: "s1", label: "commands/s" }]);
        chart($("#chart-latency"), b, [{ key: "avg_ms", cls: "s1", label: "avg ms" }, { key: "p95_ms", cls: "s2", label: "p95 ms" }]);
      } catch (e) { /* the overview's refresh reports the outage */ }
    }
    refresh(); stats();
    setInterval(refresh, 5000);
    setInterval(stats, 15000); // the stats query reads more rows: less often
  }

  // chart draws a small line chart of buckets into box as inline SVG.
  const SVG = "http://www.w3.org/2000/svg";
  function chart(box, buckets, series) {
    const W = 300, H = 100, P = 4;
    let max = 0;
    for (const b of buckets) for (const s of series) max = Math.max(max, b[s.key] || 0);
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 " + W + " " + (H + 14));
    svg.setAttribute("role", "img");
    const n = Math.max(buckets.length - 1, 1);
    for (const s of series) {
      const pts = buckets.map((b, i) => {
        const x = P + (W - 2 * P) * i / n;
        const y = H - P - (max > 0 ? (H - 2 * P) * (b[s.key] || 0) / max : 0);
        return x.toFixed(1) + "," + y.toFixed(1);
      });
      const line = document.createElementNS(SVG, "polyline");
      line.setAttribute("points", pts.join(" "));
      line.setAttribute("class", "line " + s.cls);
      svg.append(line);
    }
    const axis = document.createElementNS(SVG, "line");
    axis.setAttribute("x1", P); axis.setAttribute("x2", W - P);
    axis.setAttribute("y1", H - P); axis.setAttribute("y2", H - P);
    axis.setAttribute("class", "axis");
    svg.append(axis);
    const last = buckets[buckets.length - 1] || {};
    const text = document.createElementNS(SVG, "text");
    text.setAttribute("x", P); text.setAttribute("y", H + 12);
    text.setAttribute("class", "legend");
    // The legend names each line in its colour.
    text.append("max " + (max >= 10 ? Math.round(max) : max.toFixed(2)) + " · now ");
    series.forEach((s, i) => {
      const span = document.createElementNS(SVG, "tspan");
      span.setAttribute("class", "key " + s.cls);
      span.textContent = (i > 0 ? ", " : "") + s.label + " " + (last[s.key] || 0).toFixed(s.key === "per_second" ? 2 : 0);
      text.append(span);
    });
    svg.append(text);
    box.replaceChildren(svg);
  }

  // ---- Device ----
  function device() {
    const root = $("#device-root");
    if (!root) return;
    const id = root.dataset.device;
    const enc = encodeURIComponent(id);
    const list = $("#events");
    const state = $("#events-state");
    if (list.children.length) state.textContent = "live";

    // SSE names each event after the device's event name, and
    // EventSource hands named events only to listeners of that name:
    // listen to the names this device used before, and the usual ones;
    // a look at the history every 10 s shows any event of a new name and
    // listens for that name from then on.
    const names = new Set(["telemetry", "alert", "event", "status", "message"]);
    for (const n of (root.dataset.eventNames || "").split(",")) if (n) names.add(n);
    const handlers = {
      "*": (ev) => {
        if (!ev || typeof ev !== "object" || list.querySelector('[data-event-id="' + ev.id + '"]')) return;
        const li = el("li", { "data-event-id": String(ev.id) });
        li.append(el("b", {}, ev.name), document.createTextNode(" "),
          el("time", { datetime: ev.received_at }, fmtTime(ev.received_at)), document.createTextNode(" "),
          el("code", {}, JSON.stringify(ev.data)));
        list.prepend(li);
        while (list.children.length > 200) list.lastElementChild.remove();
        state.textContent = "live";
        updateLatest(ev);
      },
    };
    const es = live("/v1/devices/" + enc + "/events", handlers, names);
    setInterval(async () => {
      let page;
      try { page = await api("GET", "/v1/devices/" + enc + "/events?limit=20"); } catch (e) { return; }
      for (const ev of (page.events || []).slice().reverse()) {
        if (!names.has(ev.name)) {
          names.add(ev.name);
          es.addEventListener(ev.name, (m) => handlers["*"](JSON.parse(m.data)));
          handlers["*"](ev);
        }
      }
    }, 10000);

    function updateLatest(ev) {
      const tbody = $("#latest tbody");
      const none = tbody.querySelector("tr.none");
      if (none) none.remove();
      let tr = tbody.querySelector('tr[data-event="' + CSS.escape(ev.name) + '"]');
      if (!tr) { tr = el("tr", { "data-event": ev.name }); tbody.append(tr); }
      const code = el("code", {}, JSON.stringify(ev.data));
      const val = el("td"); val.append(code);
      const t = el("td"); t.append(el("time", { datetime: ev.received_at }, fmtTime(ev.received_at)));
      tr.replaceChildren(el("td", {}, ev.name), val, t);
    }

    const form = $("#command");
    if (form) commandConsole(form, id, root.dataset.connected === "yes");
    const desired = $("#desired-form");
    if (desired) desiredForm(desired);
  }

  // desiredForm checks the merge patch before the form is sent, as the
  // server does again: JSON, and an object. Otherwise the form is not
  // sent, and #desired-error says why.
  function desiredForm(form) {
    const box = $("#desired-error");
    const text = $("#desired-patch");
    form.addEventListener("submit", (e) => {
      const why = mergePatchProblem(text.value.trim());
      if (!why) return;
      e.preventDefault();
      box.textContent = "Not sent: " + why;
      box.hidden = false;
      text.focus();
    });
  }

  function mergePatchProblem(s) {
    if (!s) return "type a merge patch: a JSON object, such as {\"target_celsius\": 21}.";
    let v;
    try { v = JSON.parse(s); } catch (err) { return "not valid JSON: " + err.message; }
    if (v === null || typeof v !== "object" || Array.isArray(v)) {
      return "a merge patch is a JSON object ({\"key\": value, \"old_key\": null}), not " + (Array.isArray(v) ? "an array" : v === null ? "null" : "a " + typeof v) + ".";
    }
    return "";
  }

  function commandConsole(form, id, online) {
    const argsError = $("#args-error");
    const status = $("#command-status");
    const summary = $("#command-summary");
    const steps = $("#command-steps");
    const result = $("#command-result");
    let stream = null;
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const name = $("#command-name").value.trim();
      let args;
      try {
        args = JSON.parse($("#command-args").value || "{}");
        if (args === null || typeof args !== "object" || Array.isArray(args)) throw new Error("args must be a JSON object, like {\"celsius\": 21.5}");
      } catch (err) {
        argsError.textContent = "Args are not valid JSON: " + err.message;
        argsError.hidden = false;
        return;
      }
      argsError.hidden = true;
      if (stream) stream.close();
      status.hidden = false;
      steps.replaceChildren();
      result.textContent = "";
      summary.textContent = "Sending…";
      $("#send").disabled = true;
      let cmd;
      try {
        cmd = await api("POST", "/v1/devices/" + encodeURIComponent(id) + "/commands", { name, args });
      } catch (err) {
        summary.textContent = "Not sent: " + err.message;
        $("#send").disabled = false;
        return;
      }
      $("#send").disabled = false;
      summary.textContent = "Accepted; waiting for the device…";
      addRecent(cmd);
      const final = { reply: true, failed: true, expired: true, cancelled: true };
      stream = live("/v1/commands/" + cmd.id + "/events", {
        "*": (c, step) => {
          if (!steps.querySelector('[data-step="' + step + '"]')) {
            const li = el("li", { "data-step": step }, step + " · " + c.status);
            steps.append(li);
          }
          result.textContent = JSON.stringify(c, null, 2);
          if (c.status === "pending") {
            summary.textContent = "pending: queued until " + fmtTime(c.expires_at) + (online ? "" : " (the device is offline)");
          } else {
            summary.textContent = c.status + (c.error ? ": " + c.error : "");
          }
          const row = document.querySelector('tr[data-command="' + c.id + '"]');
          if (row) {
            row.querySelector(".cmd-status").textContent = c.status;
            row.querySelector(".cmd-error").textContent = c.error || "";
            row.querySelector(".cmd-attempts").textContent = c.attempts;
          }
          if (final[step]) stream.close();
        },
      }, ["accepted", "delivered", "reply", "failed", "expired", "cancelled"]);
    });
  }

  function addRecent(c) {
    const tbody = $("#commands tbody");
    if (!tbody) return;
    const none = tbody.querySelector("tr.none");
    if (none) none.remove();
    const tr = el("tr", { "data-command": c.id });
    const st = el("td", { "class": "cmd-status" }, c.status);
    const id = el("td"); id.append(el("code", {}, c.id));
    const t = el("td"); t.append(el("time", { datetime: c.created_at }, fmtTime(c.created_at)));
    tr.append(el("td", {}, c.name), st, el("td", { "class": "cmd-error" }, c.error || ""), el("td", { "class": "cmd-attempts" }, c.attempts), t, id);
    tbody.prepend(tr);
  }

  // ---- Jobs ----
  function jobs() {
    const form = $("#new-job");
    if (!form) return;
    const errBox = $("#job-error");
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      errBox.hidden = true;
      const kind = $("#target-kind").value;
      const value = $("#target-value").value.trim();
      let args;
      try {
        args = JSON.parse($("#job-args").value || "{}");
      } catch (err) {
        errBox.textContent = "Args are not valid JSON: " + err.message;
        errBox.hidden = false;
        return;
      }
      const target = kind === "all" ? { all: true } : { [kind]: value };
      if (kind !== "all" && !value) {
        errBox.textContent = "Give the " + (kind === "label" ? "label selector (room=kitchen)" : "region") + " to target.";
        errBox.hidden = false;
        return;
      }
      $("#start-job").disabled = true;
      try {
        const body = { name: $("#job-name").value.trim(), args, target, rate: Number($("#job-rate").value || 10) };
        const title = $("#job-title").value.trim(), description = $("#job-description").value.trim();
        if (title) body.title = title;
        if (description) body.description = description;
        const attempts = Number($("#job-attempts").value || 1);
        if (attempts > 1) body.retry = { max_attempts: attempts };
        // datetime-local is the browser's local time; the API wants RFC 3339.
        const startAt = $("#job-start-at").value;
        if (startAt) body.start_at = new Date(startAt).toISOString();
        const job = await api("POST", "/v1/jobs", body);
        location.href = "/jobs/" + job.id;
      } catch (err) {
        errBox.textContent = "The job was not started: " + err.message;
        errBox.hidden = false;
        $("#start-job").disabled = false;
      }
    });
  }

  function job() {
    const root = $("#job-root");
    if (!root) return;
    const id = root.dataset.job;
    const cancel = $("#cancel-job");
    const liveNote = $("#job-live");
    const active = (status) => status === "running" || status === "scheduled";
    const rendered = JSON.stringify(JSON.parse(root.dataset.errors || "[]"));
    function showErrors(errors) {
      const tbody = $("#job-errors tbody");
      tbody.replaceChildren();
      for (const e of errors) {
        const tr = el("tr");
        tr.append(el("td", { "class": "error-text" }, e.error), el("td", {}, e.count));
        tbody.append(tr);
      }
      if (!errors.length) {
        const tr = el("tr", { "class": "none" }); tr.append(el("td", { colspan: "2" }, "No failure yet.")); tbody.append(tr);
      }
      // The grouped commands are the page's: say when a reload would change them.
      $("#failures-stale").hidden = JSON.stringify(errors) === rendered;
    }
    function show(j) {
      $("#job-status").textContent = j.status;
      const c = j.counts || {};
      for (const k of ["unsent", "pending", "delivered", "done", "failed", "expired", "cancelled", "retrying"]) {
        const td = root.querySelector('td[data-count="' + k + '"]');
        if (td && c[k] !== undefined) td.textContent = c[k];
      }
      if (c.retried !== undefined) $("#job-retried").textContent = c.retried;
      const p = $("#job-progress");
      p.max = j.total;
      p.value = (c.done || 0) + (c.failed || 0) + (c.expired || 0) + (c.cancelled || 0);
      const sc = j.state_counts; // a state job's, instead of counts
      if (sc) {
        for (const td of root.querySelectorAll("td[data-state-count]")) {
          const v = sc[td.dataset.stateCount];
          if (v !== undefined) td.textContent = v;
        }
        p.value = (sc.patched || 0) + (sc.unchanged || 0) + (sc.gone || 0) + (sc.too_large || 0);
      }
      cancel.hidden = !active(j.status);
      liveNote.textContent = active(j.status) ? "live" : "";
      showErrors(j.errors || []);
    }
    if (active($("#job-status").textContent)) {
      const es = live("/v1/jobs/" + id, {
        "*": (j, name) => { show(j); if (name !== "progress") es.close(); },
      }, ["progress", "done", "done_with_failures", "cancelled", "aborted"]);
    }
    cancel.addEventListener("click", async () => {
      cancel.disabled = true;
      try {
        show(await api("POST", "/v1/jobs/" + id + "/cancel"));
      } catch (err) {
        const box = $("#job-error");
        box.textContent = "Not cancelled: " + err.message;
        box.hidden = false;
      }
      cancel.disabled = false;
    });
  }

  const pages = { overview, device, jobs, job };
  const page = pages[body.dataset.page];
  if (page) page();
})();
