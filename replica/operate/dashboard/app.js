// pgml-replica dashboard: polls the sidecar's /status and renders it. No framework, no
// network beyond the sidecar; values are written with textContent only (table names and
// error texts are data, never markup).
"use strict";

const POLL_MS = 2000;
const HISTORY = 150;             // points per sparkline (5 minutes at 2 s)
const history = { seconds: [], bytes: [] };

const WAL_STATUS_TEXT = {
  reserved: "the slot's WAL is within max_wal_size",
  extended: "the slot holds WAL beyond max_wal_size, still within max_slot_wal_keep_size",
  unreserved: "the slot holds more WAL than max_slot_wal_keep_size allows: " +
    "it will be invalidated at the next checkpoint unless the sidecar catches up",
  lost: "the slot was invalidated: a new snapshot is needed",
};
const WAL_STATUS_CLASS = { reserved: "good", extended: "warn", unreserved: "warn", lost: "bad" };

function $(id) { return document.getElementById(id); }

function setText(id, value) {
  const el = $(id);
  if (el) el.textContent = value === undefined || value === null ? "–" : String(value);
}

function groupDigits(n) {
  // Locale-free thousands separators, so the page reads the same everywhere.
  const s = String(Math.round(Number(n)));
  return s.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
}

function humanBytes(n) {
  if (n === undefined || n === null) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = Number(n), i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return (i === 0 ? String(v) : v.toFixed(1)) + " " + units[i];
}

function humanSeconds(s) {
  if (s === undefined || s === null) return "–";
  s = Number(s);
  if (s < 120) return s.toFixed(s < 10 ? 2 : 1);
  return s.toFixed(0);
}

function badge(id, text, cls) {
  const el = $(id);
  el.textContent = text;
  el.className = "badge " + (cls || "");
}

function pushHistory(key, value) {
  const h = history[key];
  h.push(Number(value) || 0);
  if (h.length > HISTORY) h.shift();
}

function drawSpark(svgId, values) {
  const svg = $(svgId);
  const line = svg.querySelector("polyline");
  const area = svg.querySelector("polygon");
  // y runs from 0 (bottom) to the highest value kept, so a flat line means a steady lag
  const max = Math.max(...values, 1e-9);
  const step = values.length > 1 ? 300 / (values.length - 1) : 0;
  const pts = values.map((v, i) => (i * step).toFixed(1) + "," + (38 - (v / max) * 34).toFixed(1));
  line.setAttribute("points", pts.join(" "));
  area.setAttribute("points", pts.length ? "0,40 " + pts.join(" ") + " " +
                    ((values.length - 1) * step).toFixed(1) + ",40" : "");
  svg.dataset.points = String(values.length);
}

// Row counts per table from the database-backed part of /status (replica/status.py):
// tables = {"schema.table": {source_rows, target_rows, synced, ...}}; a plain
// row_counts = {"schema.table": n} is read as target rows.
function rowCounts(s) {
  const out = {};
  if (s.tables && typeof s.tables === "object" && !Array.isArray(s.tables)) {
    for (const [name, t] of Object.entries(s.tables)) {
      out[name] = (t && typeof t === "object") ? t : { target_rows: t };
    }
  }
  for (const [name, n] of Object.entries(s.row_counts || {})) {
    out[name] = Object.assign(out[name] || {}, { target_rows: n });
  }
  return out;
}

function count(v) {
  return v === undefined || v === null ? "–" : groupDigits(v);
}

function renderTables(s) {
  const body = $("tables");
  const applied = s.rows_applied || {};
  const counts = rowCounts(s);
  const names = new Set([...(Array.isArray(s.tables) ? s.tables : []),
                         ...Object.keys(applied), ...Object.keys(counts)]);
  body.replaceChildren();
  for (const name of [...names].sort()) {
    const ops = applied[name] || {};
    const rows = counts[name] || {};
    const tr = document.createElement("tr");
    const cells = [name, groupDigits(ops.insert || 0), groupDigits(ops.update || 0),
                   groupDigits(ops.delete || 0), groupDigits(ops.truncate || 0),
                   count(rows.source_rows), count(rows.target_rows)];
    for (const v of cells) {
      const td = document.createElement("td");
      td.textContent = v;
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }
}

function renderSnapshot(snap) {
  const box = $("snapshot");
  box.replaceChildren();
  const names = Object.keys(snap || {}).sort();
  $("snapshot-empty").hidden = names.length > 0;
  for (const name of names) {
    const t = snap[name] || {};
    const rows = Number(t.rows || 0), total = Number(t.total || 0);
    const ratio = total > 0 ? Math.min(1, rows / total) : (t.done ? 1 : 0);
    const row = document.createElement("div");
    row.className = "snap-row";
    const label = document.createElement("span");
    label.className = "snap-name";
    label.textContent = name;
    const bar = document.createElement("progress");
    bar.max = 1;
    bar.value = ratio;
    const text = document.createElement("span");
    text.className = "snap-text";
    text.textContent = groupDigits(rows) + (total > 0 ? " / " + groupDigits(total) : "") +
      " rows (" + (ratio * 100).toFixed(0) + "%)";
    row.append(label, bar, text);
    box.appendChild(row);
  }
}

function renderErrors(s) {
  setText("error", s.error || "");
  // status_error (the database view failed), source_error / target_error (a side unreachable)
  const queryErrors = Object.keys(s).filter((k) => k.endsWith("_error") && s[k]).sort()
    .map((k) => k.replace(/_error$/, "") + ": " + s[k]);
  setText("query-errors", queryErrors.join("\n"));
  const list = $("errors-by-kind");
  list.replaceChildren();
  const kinds = Object.entries(s.errors_by_kind || {}).filter(([, n]) => n > 0);
  for (const [kind, n] of kinds.sort()) {
    const li = document.createElement("li");
    li.textContent = kind + ": " + groupDigits(n);
    list.appendChild(li);
  }
  $("no-errors").hidden = Boolean(s.error || queryErrors.length || kinds.length);
}

function renderWaiting(s) {
  // phase waiting_for_transactions: which source sessions hold the sidecar up (activity.py)
  const w = s.waiting;
  $("waiting").hidden = !w;
  if (!w) return;
  setText("waiting-what", (w.what === "slot" ? "Creating the slot" : "The " + w.what) +
    " has waited " + humanSeconds(w.seconds) + " s for these source sessions to end " +
    "(commit or roll them back):");
  const list = $("waiting-blockers");
  list.replaceChildren();
  for (const b of w.blockers || []) {
    const li = document.createElement("li");
    li.textContent = "pid " + b.pid + " · " + (b.user || "?") + " · " + (b.application || "") +
      " · " + (b.state || "") + " · transaction " +
      (b.transaction_seconds === null ? "–" : humanSeconds(b.transaction_seconds) + " s") +
      " · " + b.query;
    list.appendChild(li);
  }
}

function slotName(s) {
  if (s.slot && typeof s.slot === "object") return s.slot.slot_name || s.slot.name;
  return s.slot_name || s.slot;
}

function render(s) {
  setText("slot", slotName(s));
  setText("publication", s.publication);
  badge("phase", s.phase || "unknown",
        { streaming: "good", failed: "bad", reconnecting: "warn", copying: "info" }[s.phase]);
  badge("ready", s.ready ? "ready" : "not ready", s.ready ? "good" : "warn");
  setText("not-ready", s.not_ready_reason ? "not ready: " + s.not_ready_reason : "");
  renderWaiting(s);

  const known = (v) => v !== undefined && v !== null;
  setText("lag-seconds", humanSeconds(s.lag_seconds));
  setText("lag-bytes", known(s.lag_bytes) ? groupDigits(s.lag_bytes) : null);
  setText("lag-bytes-human", known(s.lag_bytes) ? humanBytes(s.lag_bytes) : null);
  pushHistory("seconds", s.lag_seconds);
  pushHistory("bytes", s.lag_bytes);
  drawSpark("spark-seconds", history.seconds);
  drawSpark("spark-bytes", history.bytes);
  setText("lag-seconds-peak", humanSeconds(Math.max(...history.seconds)));

  const ws = s.wal_status || null;
  badge("wal-status", ws || "unknown", WAL_STATUS_CLASS[ws]);
  setText("wal-status-text", ws ? WAL_STATUS_TEXT[ws] || "" : "");
  $("slot-lost").hidden = ws !== "lost";
  document.body.classList.toggle("lost", ws === "lost");
  const retained = s.retained_wal_bytes;
  setText("wal-retained", retained === undefined || retained === null ? null : groupDigits(retained));
  setText("wal-retained-human", retained === undefined || retained === null ? null : humanBytes(retained));

  setText("received-lsn", s.received_lsn);
  setText("applied-lsn", s.applied_lsn);
  setText("flushed-lsn", s.flushed_lsn);
  setText("confirmed-flush-lsn", s.confirmed_flush_lsn);
  setText("current-lsn", s.current_lsn);
  const active = s.active ?? s.slot_active;
  setText("slot-active", known(active) ? (active ? "yes" : "no") : null);
  setText("source-connected", s.source_connected ? "connected" : "disconnected");
  setText("target-connected", s.target_connected ? "connected" : "disconnected");
  setText("transactions-applied", groupDigits(s.transactions_applied || 0));
  setText("uptime", s.uptime_seconds === undefined ? null : humanSeconds(s.uptime_seconds) + " s");

  renderTables(s);
  renderSnapshot(s.snapshot);
  renderErrors(s);
  setText("updated", "updated " + new Date().toLocaleTimeString());
}

async function poll() {
  try {
    const resp = await fetch("status", { cache: "no-store" });
    if (!resp.ok) throw new Error("HTTP " + resp.status);
    render(await resp.json());
    $("unreachable").hidden = true;
  } catch (err) {
    setText("unreachable-why", err.message || String(err));
    $("unreachable").hidden = false;
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
