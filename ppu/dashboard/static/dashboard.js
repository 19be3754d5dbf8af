// PPU dashboard: renders the snapshots the server pushes over SSE. No framework, no network but ours.
"use strict";
(function () {
  const boot = window.PPU_BOOT || {};
  let snap = boot.state || {};
  let user = boot.user || null;
  let picked = null;           // the campaign the person chose (kept across snapshots)
  let offset = 0;              // server clock minus ours, so waits keep ticking between snapshots
  const $ = (id) => document.getElementById(id);
  const esc = (v) => String(v == null ? "" : v).replace(/[&<>"']/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  const short = (id) => esc(String(id || "").slice(0, 10));

  function dur(s) {
    if (s == null || isNaN(s)) return "–";
    if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + " s";
    if (s < 3600) return (s / 60).toFixed(1) + " min";
    if (s < 86400) return (s / 3600).toFixed(1) + " h";
    return (s / 86400).toFixed(1) + " d";
  }
  const pct = (x) => Math.round(100 * (x || 0)) + "%";
  const num = (v) => (v == null ? "–" : Math.abs(v) >= 100 ? v.toFixed(1) : v.toPrecision(3));

  // ---- header ---------------------------------------------------------------------------------
  function header() {
    const c = $("conn");
    const up = snap.connected !== false && Object.keys(snap).length > 0;
    c.className = "conn " + (up ? "up" : "down");
    $("conn-text").textContent = up ? "live · " + (snap.address || "") : "orchestrator unreachable";
    const t = snap.tasks || {};
    const keys = ["pending", "ready", "running", "needs_review", "succeeded", "failed"];
    $("counts").innerHTML = keys.filter((k) => t[k]).map((k) =>
      `<span><b>${t[k]}</b>${esc(k.replace("_", " "))}</span>`).join("") +
      (snap.workers != null ? `<span><b>${snap.workers}</b>workers</span>` : "");
    $("who").innerHTML = user ? `acting as <b>dashboard:${esc(user)}</b>` : "read-only";
    const b = $("banner");
    if (snap.connected === false) {
      b.hidden = false; b.className = "banner bad";
      b.textContent = "Cannot reach the orchestrator: " + (snap.error || "") + " — showing the last known state.";
    } else if (!user) {
      b.hidden = false; b.className = "banner";
      b.textContent = "Read-only view. To approve or review, open the URL that `ppu dashboard` printed (it carries ?token=…).";
    } else { b.hidden = true; }
  }
  function clock() {
    const d = new Date();
    $("clock").textContent = d.toLocaleTimeString([], { hour12: false });
  }

  // ---- backends -------------------------------------------------------------------------------
  function backends() {
    const rows = snap.backends || [];
    const busy = rows.filter((b) => b.state === "busy").length;
    $("backends-sub").textContent = `${rows.length} registered · ${busy} busy`;
    $("backends").innerHTML = rows.map((b) => {
      const cur = (b.current || []).map((t) =>
        `<div><span class="st-${esc(t.state)}">●</span> ${esc(t.capability)} <span class="mono">${short(t.task_id)}</span>` +
        (t.campaign ? ` <span class="meta">${esc(t.campaign)}</span>` : "") +
        (t.progress != null ? ` <b>${pct(t.progress)}</b>` : "") +
        (t.waiting ? ` <span class="pill warn">${esc(t.waiting)}</span>` : "") + "</div>").join("") ||
        '<span class="idle">idle</span>';
      const fault = b.fault ? `<span class="pill ${esc(b.fault)}">${esc(b.fault)}</span>` : "";
      const fails = b.failures ? `<span class="pill bad" title="failed tasks seen">${b.failures} failed</span>` : "";
      return `<div class="card s-${esc(b.state)}" data-backend="${esc(b.name)}" data-state="${esc(b.state)}">
        <div class="top"><span class="name" title="${esc(b.name)}">${esc(b.name)}</span>
          <span>${fault}${fails}<span class="pill ${esc(b.state)}">${esc(b.state)}</span></span></div>
        <div class="meta">${esc(b.kind)} · ${b.used}/${b.slots} slot${b.slots === 1 ? "" : "s"} · busy <b>${pct(b.busy_share)}</b> of the timeline · ${esc((b.capabilities || []).join(", "))}</div>
        <div class="bar" title="share of the timeline window this backend was busy"><i style="width:${pct(b.busy_share)}"></i></div>
        <div class="current">${cur}</div></div>`;
    }).join("") || '<div class="empty">no backend registered yet</div>';
  }

  // ---- timeline (Gantt) -----------------------------------------------------------------------
  function gantt() {
    const g = snap.gantt;
    if (!g) { $("gantt").innerHTML = ""; return; }
    const names = Object.keys(g.rows);
    const W = Math.max(600, $("gantt").clientWidth || 900), L = 150, R = 52, rowH = 22, top = 4;
    const H = top + names.length * rowH + 20;
    const span = Math.max(1e-6, g.t1 - g.t0);
    const x = (t) => L + ((t - g.t0) / span) * (W - L - R);
    let out = `<svg width="${W}" height="${H}" role="img" aria-label="busy timeline">`;
    names.forEach((n, i) => {
      const y = top + i * rowH;
      out += `<rect x="${L}" y="${y + 3}" width="${W - L - R}" height="${rowH - 6}" fill="#1d252e"/>`;
      out += `<text class="lbl" x="${L - 8}" y="${y + rowH / 2 + 4}" text-anchor="end">${esc(n.slice(0, 20))}</text>`;
      for (const [s, e, kind] of g.rows[n]) {
        const w = Math.max(1.5, x(e) - x(s));
        out += `<rect x="${x(s).toFixed(1)}" y="${y + 3}" width="${w.toFixed(1)}" height="${rowH - 6}" rx="2"
          fill="${kind === "busy" ? "#58a6ff" : "#2f81f7"}" opacity="${kind === "busy" ? 1 : 0.8}"><title>${esc(n)}: ${dur(e - s)}</title></rect>`;
      }
      out += `<text class="lbl" x="${W - 4}" y="${y + rowH / 2 + 4}" text-anchor="end">${pct((g.share || {})[n])}</text>`;
    });
    const ticks = 6;
    for (let k = 0; k <= ticks; k++) {
      const t = g.t0 + (span * k) / ticks, xx = x(t);
      out += `<line x1="${xx}" x2="${xx}" y1="${top}" y2="${H - 16}" stroke="#26313d"/>`;
      out += `<text x="${xx}" y="${H - 3}" text-anchor="middle">${k === ticks ? "now" : "−" + dur(g.t1 - t)}</text>`;
    }
    $("gantt").innerHTML = out + "</svg>";
    $("gantt-sub").textContent = `busy time per device, last ${dur(span)} (right: share busy)`;
  }

  // ---- queues ---------------------------------------------------------------------------------
  function queues() {
    const rows = snap.queues || [];
    $("queues").innerHTML = rows.length ? `<table><tr><th>capability</th><th class="num">waiting</th>
      <th class="num">approval</th><th class="num">running</th><th class="num">review</th>
      <th class="num">oldest wait</th><th class="num">mean wait</th></tr>` + rows.map((q) =>
      `<tr class="${q.oldest_wait_s > 300 ? "stale" : ""}"><td>${esc(q.capability)}</td><td class="num">${q.waiting}</td>
       <td class="num">${q.approval || ""}</td><td class="num">${q.running || ""}</td><td class="num">${q.review || ""}</td>
       <td class="num wait">${dur(q.oldest_wait_s)}</td><td class="num">${dur(q.mean_wait_s)}</td></tr>`).join("") + "</table>"
      : '<div class="empty">nothing queued</div>';
  }

  // ---- approvals and reviews ------------------------------------------------------------------
  function attention() {
    const a = snap.approvals || [], r = snap.reviews || [];
    $("attn-count").textContent = a.length + r.length ? String(a.length + r.length) : "";
    const dis = user ? "" : " disabled title=\"read-only: open the dashboard URL with its token\"";
    let html = "";
    if (a.length) {
      html += `<div class="sub">waiting for approval</div><table><tr><th>task</th><th>capability</th><th>what</th>
        <th class="num">waited</th><th></th></tr>` + a.map((t) =>
        `<tr data-task="${esc(t.task_id)}" data-kind="approval"><td class="mono">${short(t.task_id)}</td>
         <td>${esc(t.capability)}${t.campaign ? `<div class="meta">${esc(t.campaign)}</div>` : ""}</td>
         <td>${esc(t.inputs_short)}<div class="why">${esc(t.reason)}</div>
             <div class="meta">${esc((t.backends || []).join(", "))}${t.expected_duration_s != null ? " · ~" + dur(t.expected_duration_s) : ""}</div></td>
         <td class="num">${dur(t.waiting_s)}</td>
         <td style="white-space:nowrap"><button class="go" data-action="approve" data-id="${esc(t.task_id)}"${dis}>Approve</button>
         <button class="no" data-action="reject" data-id="${esc(t.task_id)}"${dis}>Reject</button></td></tr>`).join("") + "</table>";
    }
    if (r.length) {
      html += `<div class="sub">interrupted physical tasks (needs review)</div><table><tr><th>task</th><th>capability</th>
        <th>why</th><th></th></tr>` + r.map((t) =>
        `<tr data-task="${esc(t.task_id)}" data-kind="review"><td class="mono">${short(t.task_id)}</td>
         <td>${esc(t.capability)}<div class="meta">${esc(t.backend || "")}</div></td>
         <td class="why">${esc(t.why || "")}${t.last_progress ? `<div class="meta">last: ${pct(t.last_progress.fraction)} ${esc(t.last_progress.message)}</div>` : ""}</td>
         <td style="white-space:nowrap"><button data-action="retry" data-id="${esc(t.task_id)}"${dis}>Retry</button>
         <button class="no" data-action="fail" data-id="${esc(t.task_id)}"${dis}>Fail</button>
         <button data-action="result" data-id="${esc(t.task_id)}"${dis}>Enter result</button></td></tr>`).join("") + "</table>";
    }
    $("attention").innerHTML = html || '<div class="empty">nothing waits for a person</div>';
  }

  async function act(action, id) {
    const body = {};
    if (action === "reject" || action === "fail") {
      const why = window.prompt(`Why ${action} ${id}? (kept in the audit log)`);
      if (why === null) return;
      body.reason = why;
    } else if (action === "result") {
      const text = window.prompt(`Outputs of ${id} as JSON, e.g. {"sample_id": "s1", "mass_mg": 9.8}`);
      if (text === null) return;
      try { body.outputs = JSON.parse(text); } catch (e) { toast("not valid JSON: " + e.message); return; }
    }
    const res = await fetch(`/api/tasks/${encodeURIComponent(id)}/${action}`, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    const data = await res.json().catch(() => ({}));
    if (res.ok) toast(`${action}: ${id} (as ${data.actor})`);
    else toast(`${action} failed: ${data.message || res.status}${data.hint ? " — " + data.hint : ""}`);
  }
  document.addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-action]");
    if (b && !b.disabled) { b.disabled = true; act(b.dataset.action, b.dataset.id).finally(() => { b.disabled = false; }); }
  });
  function toast(text) {
    const t = document.createElement("div");
    t.className = "toast"; t.textContent = text; document.body.appendChild(t);
    setTimeout(() => t.remove(), 4000);
  }

  // ---- campaign -------------------------------------------------------------------------------
  function campaign() {
    const cs = snap.campaigns || [];
    const pick = $("campaign-pick");
    const names = cs.map((c) => c.name);
    if (pick.dataset.names !== names.join("\n")) {
      pick.dataset.names = names.join("\n");
      pick.innerHTML = names.map((n) => `<option>${esc(n)}</option>`).join("");
    }
    if (!picked || !names.includes(picked)) picked = names[names.length - 1] || null;
    if (picked) pick.value = picked;
    const c = cs.find((x) => x.name === picked);
    if (!c) { $("campaign").innerHTML = '<div class="empty">no campaign yet</div>'; $("objective").textContent = ""; return; }
    $("objective").textContent = `objective: ${c.maximize ? "max" : "min"} ${c.objective}`;
    const live = c.in_flight || [];
    $("campaign").innerHTML = `<div class="cols"><div>
        <div><span class="best">${num(c.best)}</span> <span class="meta">best so far · ${c.points.length} measured</span></div>
        ${chart(c)}</div><div>
        <div class="sub">candidates in flight (${live.length})</div>${live.length ? `<table><tr><th>task</th><th>step · candidate</th><th>state</th><th>where</th></tr>` +
          live.slice(0, 14).map((t) => `<tr><td class="mono">${short(t.task_id)}</td><td>${esc(t.capability)}<div class="meta">${esc(t.inputs_short)}</div></td>
            <td class="st-${esc(t.state)}">${t.waiting_approval ? "approval" : esc(t.state.replace("_", " "))}</td><td>${esc(t.backend || "queue")}</td>
            </tr>`).join("") + "</table>" : '<div class="empty">none</div>'}
        <div class="sub">samples (${c.samples.length})</div>${c.samples.length ? `<table><tr><th>sample</th><th>state</th><th>location</th><th class="num">measured</th></tr>` +
          c.samples.slice(-12).reverse().map((s) => `<tr><td class="mono">${esc(s.id)}</td><td>${esc(s.state)}</td>
            <td>${esc(s.device || "?")}${s.slot != null ? " / " + esc(s.slot) : ""}</td><td class="num">${s.measurements}</td></tr>`).join("") + "</table>"
          : '<div class="empty">none made yet</div>'}
      </div></div>`;
  }
  function chart(c) {
    const pts = c.points, W = 440, H = 220, L = 46, R = 16, T = 10, B = 26;
    if (!pts.length) return `<svg width="${W}" height="${H}"><text x="${W / 2}" y="${H / 2}" text-anchor="middle">no measurement yet</text></svg>`;
    const vals = pts.map((p) => p.value);
    let lo = Math.min(...vals), hi = Math.max(...vals);
    if (hi - lo < 1e-9) { lo -= 1; hi += 1; }
    const pad = (hi - lo) * 0.08; lo -= pad; hi += pad;
    const x = (i) => L + (pts.length === 1 ? 0.5 : i / (pts.length - 1)) * (W - L - R);
    const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
    let s = `<svg viewBox="0 0 ${W} ${H}" width="100%" role="img" aria-label="best so far">`;
    for (let k = 0; k <= 4; k++) {
      const v = lo + ((hi - lo) * k) / 4;
      s += `<line x1="${L}" x2="${W - R}" y1="${y(v)}" y2="${y(v)}" stroke="#26313d"/><text x="${L - 5}" y="${y(v) + 4}" text-anchor="end">${num(v)}</text>`;
    }
    s += `<text x="${(L + W) / 2}" y="${H - 4}" text-anchor="middle">experiment # (1–${pts.length})</text>`;
    let d = "";
    pts.forEach((p, i) => { d += (i ? ` H${x(i).toFixed(1)} V${y(p.best).toFixed(1)}` : `M${x(i).toFixed(1)} ${y(p.best).toFixed(1)}`); });
    s += `<path d="${d}" fill="none" stroke="#3fb950" stroke-width="2.5"/>`;
    pts.forEach((p, i) => {
      s += `<circle cx="${x(i).toFixed(1)}" cy="${y(p.value).toFixed(1)}" r="3.5" fill="#58a6ff"><title>${esc(p.label)}: ${num(p.value)}</title></circle>`;
    });
    return s + "</svg>";
  }
  $("campaign-pick").addEventListener("change", (ev) => { picked = ev.target.value; campaign(); });

  // ---- activity -------------------------------------------------------------------------------
  function activity() {
    const evs = snap.events || [];
    $("activity").innerHTML = evs.length ? "<table>" + evs.map((e) =>
      `<tr><td class="mono">${new Date(e.at * 1000).toLocaleTimeString([], { hour12: false })}</td><td class="mono">${short(e.task_id)}</td>
       <td>${esc(e.capability || "")}</td><td class="st-${esc(e.dst)}">${esc(e.dst)}</td><td>${esc(e.backend || "")}</td>
       <td class="meta">${esc(e.reason || "")}</td></tr>`).join("") + "</table>" : '<div class="empty">no activity since the dashboard started</div>';
  }

  function render() {
    if (snap.now) offset = snap.now * 1000 - Date.now();
    header(); backends(); gantt(); queues(); attention(); campaign(); activity();
    document.body.dataset.rendered = String((Number(document.body.dataset.rendered) || 0) + 1);
  }

  function connect() {
    const es = new EventSource("/api/stream");
    es.addEventListener("state", (ev) => { snap = JSON.parse(ev.data); render(); });
    es.addEventListener("open", () => { $("conn").classList.add("up"); });
    es.addEventListener("error", () => { $("conn").className = "conn down"; $("conn-text").textContent = "dashboard server unreachable, retrying"; });
  }
  render(); clock(); setInterval(clock, 1000); connect();
  window.addEventListener("resize", gantt);
  void offset;
})();
