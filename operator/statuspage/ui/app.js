// Handoff status page: fetches the agent's API and renders it. Every value
// is set with textContent, never parsed as HTML.
"use strict";

(function () {
  const REFRESH_MS = 3000;
  const token = new URLSearchParams(location.hash.slice(1)).get("token");

  async function get(path) {
    const headers = { "Accept": "application/json" };
    if (token) headers["Authorization"] = "Bearer " + token;
    const resp = await fetch(path, { headers, cache: "no-store" });
    if (!resp.ok) {
      let msg = resp.status + " " + resp.statusText;
      try { msg += ": " + (await resp.json()).error; } catch (e) { /* not JSON */ }
      throw new Error(path + ": " + msg);
    }
    return resp.json();
  }

  function text(id, v) { document.getElementById(id).textContent = v; }

  function cell(tr, v, cls) {
    const td = document.createElement("td");
    td.textContent = v === undefined || v === null ? "" : String(v);
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }

  // Durations arrive in milliseconds (the API's *_ms fields).
  function ms(v) { return v ? v.toFixed(1) + " ms" : "–"; }
  function words(reason) { return (reason || "").replaceAll("_", " "); }

  function renderFlap(f) {
    const el = document.getElementById("flap");
    if (!f || !f.flapping) { el.hidden = true; return; }
    const reasons = Object.entries(f.reasons || {}).sort((a, b) => b[1] - a[1]).map(([r, n]) => words(r) + " " + n).join(", ");
    el.textContent = "Flapping: " + f.unplanned + " unplanned takeovers in the last " + Math.round(f.window_ms / 60000) +
      " minutes (" + reasons + "), since " + new Date(f.since).toISOString();
    el.hidden = false;
  }

  function renderStatus(st) {
    text("active", st.active || "none");
    const a = st.assignment || {};
    text("active-why", a.reason ? words(a.reason) : "");
    text("term", st.term);
    text("leader", st.leader || "none");
    text("sas", st.sas);
    text("replay", st.replay_states);
    text("node", st.node + " (" + st.raft_state + ")");
    text("version", st.version || "");
    renderFlap(st.flap);
    const body = document.querySelector("#members tbody");
    body.replaceChildren();
    for (const m of st.members || []) {
      const tr = document.createElement("tr");
      tr.dataset.node = m.id;
      cell(tr, m.id);
      cell(tr, m.role || "?");
      cell(tr, m.priority, "num opt");
      cell(tr, m.leader ? "leader" : (m.voter ? "voter" : "non-voter"));
      cell(tr, m.active ? "active" : "", m.active ? "ok" : "");
      cell(tr, m.healthy ? "healthy" : "unhealthy", m.healthy ? "ok" : "bad");
      const obs = (m.observations || []).map(o => o.observer + ":" + (o.healthy ? "up" : "down")).join(" ");
      cell(tr, obs || "–", "opt");
      cell(tr, m.version || "–", "opt");
      cell(tr, m.address, "opt");
      body.appendChild(tr);
    }
  }

  function renderHistory(hist) {
    const body = document.querySelector("#history tbody");
    body.replaceChildren();
    document.getElementById("history-empty").hidden = hist.length > 0;
    for (const h of hist.slice().reverse()) {
      const tr = document.createElement("tr");
      tr.dataset.term = h.term;
      const t = h.timings_ms || {};
      cell(tr, h.term, "num");
      cell(tr, h.from || "–");
      cell(tr, h.to);
      const why = cell(tr, words(h.reason), "reason");
      if (h.detail) {
        const small = document.createElement("small");
        small.textContent = h.detail;
        why.appendChild(small);
      }
      cell(tr, h.result + (h.error ? ": " + h.error : ""), h.result === "completed" ? "ok" : (h.result === "failed" ? "bad" : ""));
      for (const p of ["detect", "elect", "claim", "install", "move"]) cell(tr, ms(t[p]), "num opt");
      cell(tr, ms(t.total), "num");
      cell(tr, h.sas, "num opt");
      cell(tr, h.claimed_at ? new Date(h.claimed_at).toISOString() : "", "opt");
      body.appendChild(tr);
    }
  }

  // fits records whether the page is wider than the window (it must not
  // be: tables scroll in their own boxes); the browser test reads it.
  function fits() {
    const over = document.documentElement.scrollWidth - document.documentElement.clientWidth;
    document.body.dataset.overflowPx = String(Math.max(0, over));
  }

  async function refresh() {
    const err = document.getElementById("error");
    try {
      const [st, hist] = await Promise.all([get("/v1/status"), get("/v1/history")]);
      renderStatus(st);
      renderHistory(hist);
      err.hidden = true;
      fits();
      document.body.dataset.state = "ready";
      text("updated", "updated " + new Date().toISOString());
    } catch (e) {
      err.textContent = String(e.message || e);
      err.hidden = false;
      document.body.dataset.state = "error";
    }
  }

  refresh();
  setInterval(refresh, REFRESH_MS);
})();
