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

  // Durations arrive in nanoseconds (Go's time.Duration).
  function ms(ns) { return ns ? (ns / 1e6).toFixed(1) + " ms" : "–"; }

  function renderStatus(st) {
    text("active", st.active || "none");
    text("term", st.term);
    text("leader", st.leader || "none");
    text("sas", st.sas);
    text("replay", st.replay_states);
    text("node", st.node + " (" + st.raft_state + ")");
    const body = document.querySelector("#members tbody");
    body.replaceChildren();
    for (const m of st.members || []) {
      const tr = document.createElement("tr");
      tr.dataset.node = m.id;
      cell(tr, m.id);
      cell(tr, m.role || "?");
      cell(tr, m.priority, "num");
      cell(tr, m.leader ? "leader" : (m.voter ? "voter" : "non-voter"));
      cell(tr, m.active ? "active" : "", m.active ? "ok" : "");
      cell(tr, m.healthy ? "healthy" : "unhealthy", m.healthy ? "ok" : "bad");
      const obs = (m.observations || []).map(o => o.observer + ":" + (o.healthy ? "up" : "down")).join(" ");
      cell(tr, obs || "–");
      cell(tr, m.address);
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
      const t = h.timings || {};
      cell(tr, h.term, "num");
      cell(tr, h.from || "–");
      cell(tr, h.to);
      const why = cell(tr, (h.reason || "").replaceAll("_", " "), "reason");
      if (h.detail) why.title = h.detail;
      cell(tr, h.result + (h.error ? ": " + h.error : ""), h.result === "completed" ? "ok" : (h.result === "failed" ? "bad" : ""));
      for (const p of ["detect", "elect", "claim", "install", "move", "total"]) cell(tr, ms(t[p]), "num");
      cell(tr, h.sas, "num");
      cell(tr, h.claimed_at ? new Date(h.claimed_at).toISOString() : "");
      body.appendChild(tr);
    }
  }

  async function refresh() {
    const err = document.getElementById("error");
    try {
      const [st, hist] = await Promise.all([get("/v1/status"), get("/v1/history")]);
      renderStatus(st);
      renderHistory(hist);
      err.hidden = true;
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
