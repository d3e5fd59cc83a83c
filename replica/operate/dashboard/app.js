// pgml-replica dashboard: polls the sidecar's /status and renders it. No framework, no
// network beyond the sidecar; values are written with textContent only (table names and
// error texts are data, never markup).
"use strict";

const POLL_MS = 2000;
const ML_POLL_MS = 5000;
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

function humanDuration(s) {
  if (s === undefined || s === null) return "–";
  s = Math.round(Number(s));
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
  return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
}

// good below half the bound, warn up to it, bad above: the same bound /readyz and the
// alert rules use, so the colour agrees with what pages someone
function level(value, bound) {
  if (value === undefined || value === null || !(bound > 0)) return "";
  const v = Number(value);
  return v > bound ? "bad" : v > bound / 2 ? "warn" : "good";
}

function setLevel(id, cls) {
  const el = $(id);
  el.className = "level " + (cls || "");
  el.dataset.level = cls || "";
}

const WAL_ALERT_BYTES = 5 * 1024 ** 3;  // PgmlReplicaWalRetainedHigh when nothing bounds it

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
    // an estimate (pg_stat_user_tables.n_live_tup) is marked "~", never shown as a count
    const src = "source_rows" in rows ? count(rows.source_rows)
      : "source_rows_estimate" in rows ? "~" + count(rows.source_rows_estimate) : "–";
    const tgt = "target_rows" in rows ? count(rows.target_rows)
      : "target_rows_estimate" in rows ? "~" + count(rows.target_rows_estimate) : "–";
    const cells = [name, groupDigits(ops.insert || 0), groupDigits(ops.update || 0),
                   groupDigits(ops.delete || 0), groupDigits(ops.truncate || 0), src, tgt];
    for (const v of cells) {
      const td = document.createElement("td");
      td.textContent = v;
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }
}

// History per --history table (api.history_view): versions and bytes recorded by this
// process, what Postgres and the Parquet segment hold now, compactions seen
function renderHistory(s) {
  const h = s.history || {};
  const names = Object.keys(h).sort();
  $("history-card").hidden = names.length === 0;
  const body = $("history-tables");
  body.replaceChildren();
  for (const name of names) {
    const t = h[name] || {};
    const tr = document.createElement("tr");
    const id = "history-" + name.replace(/[^A-Za-z0-9_-]/g, "_") + "-";
    tr.id = id + "row";
    const stored = (v, b) => v === undefined ? "–" : "~" + groupDigits(v) + " · " + humanBytes(b);
    cell(tr, id + "name", name);
    cell(tr, id + "versions", groupDigits(t.versions_recorded || 0));
    cell(tr, id + "bytes", humanBytes(t.bytes_recorded || 0));
    cell(tr, id + "postgres", stored(t.versions_postgres, t.bytes_postgres));
    cell(tr, id + "parquet", t.versions_parquet === undefined ? "–"
      : groupDigits(t.versions_parquet) + " · " + humanBytes(t.bytes_parquet));
    cell(tr, id + "compactions", groupDigits(t.compactions || 0));
    cell(tr, id + "last-compaction", t.last_compaction
      ? when(new Date(t.last_compaction * 1000).toISOString().replace("Z", "+00:00")) : "never");
    body.appendChild(tr);
  }
}

function renderCopy(s) {
  const c = s.copy;
  $("copy-summary").hidden = !c;
  if (!c) return;
  setText("copy-rows", groupDigits(c.rows) + " / " + (c.total_is_estimate ? "~" : "") +
          groupDigits(c.total));
  setText("copy-rate", groupDigits(c.rows_per_second));
  // no ETA once the rows pass the (reltuples) estimate: the real total is not known
  setText("copy-eta", c.done ? "done" : c.eta_seconds === null || c.eta_seconds === undefined
    ? "unknown" : humanDuration(c.eta_seconds));
}

function renderSnapshot(snap) {
  const box = $("snapshot");
  box.replaceChildren();
  const names = Object.keys(snap || {}).sort();
  $("snapshot-empty").hidden = names.length > 0;
  for (const name of names) {
    const t = snap[name] || {};
    const rows = Number(t.rows || 0), total = Math.max(Number(t.total || 0), rows);
    const ratio = t.done ? 1 : total > 0 ? Math.min(0.99, rows / total) : 0;
    const est = t.total_is_estimate && !t.done;
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
    text.textContent = groupDigits(rows) +
      (total > 0 ? " / " + (est ? "~" : "") + groupDigits(total) : "") +
      " rows (" + (ratio * 100).toFixed(0) + "%)" + (est ? " est." : "");
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
  setText("lag-bound", known(s.max_lag_seconds) ? s.max_lag_seconds : null);
  setLevel("lag-seconds", level(s.lag_seconds, s.max_lag_seconds));
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
  const keep = s.max_slot_wal_keep_size_bytes;
  const walBound = keep > 0 ? keep : WAL_ALERT_BYTES;
  setText("wal-bound", keep > 0 ? humanBytes(keep) + " (max_slot_wal_keep_size)"
          : humanBytes(WAL_ALERT_BYTES) + " (the alert's threshold" +
            (keep === -1 ? "; max_slot_wal_keep_size is unlimited)" : ")"));
  setLevel("wal-retained-human", ws === "lost" ? "bad" : level(retained, walBound));

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
  setText("rows-note", s.row_counts === "estimate"
    ? "~ rows on source/target are the statistics' estimates (n_live_tup); " +
      "`pgml-replica status --exact` counts them" : "");
  renderHistory(s);
  renderCopy(s);
  renderSnapshot(s.snapshot);
  renderErrors(s);
  setText("updated", "updated " + new Date().toLocaleTimeString());
}

function cell(tr, id, value, cls) {
  const td = document.createElement("td");
  if (id) td.id = id;
  if (cls) td.className = cls;
  td.textContent = value === undefined || value === null ? "–" : String(value);
  tr.appendChild(td);
}

function metricText(k) {
  if (!k || !k.name) return "–";
  return k.name + " = " + (k.value === null || k.value === undefined ? "–"
    : Number(k.value).toPrecision(4)) + (k.higher_is_better ? " ↑" : " ↓");
}

function when(iso) {
  // UTC, as stored: the same text an operator reads in psql
  return iso ? iso.replace("T", " ").replace(/\.\d+/, "").replace("+00:00", " UTC") : "–";
}

function renderMl(m) {
  setText("ml-error", m.available ? "" : "ML view: " + (m.error || "unavailable"));
  $("ml-empty").hidden = !(m.available && m.installed);  // "no projects" only when known
  if (!m.available) return;
  if (!m.installed) {
    setText("ml-error", "pgml is not installed on the ML replica");
    return;
  }
  const dev = m.device || {};
  badge("ml-device", dev.gpu === true ? "GPU (CUDA)" : dev.gpu === false ? "CPU" : "unknown",
        dev.gpu === true ? "good" : dev.gpu === false ? "" : "warn");
  $("ml-device").title = (dev.providers || []).join(", ") || dev.error || "";
  setText("ml-last-trained", when(m.last_trained_at));
  setText("ml-version", m.version);
  const projects = m.projects || [];
  $("ml-empty").hidden = projects.length > 0;
  const body = $("ml-projects");
  body.replaceChildren();
  for (const p of projects) {
    const d = p.deployed || {};
    const tr = document.createElement("tr");
    const id = "ml-" + p.name.replace(/[^A-Za-z0-9_-]/g, "_") + "-";
    tr.id = id + "row";
    cell(tr, id + "name", p.name);
    cell(tr, id + "task", p.task);
    cell(tr, id + "model", p.deployed ? "#" + d.model_id : "none deployed");
    cell(tr, id + "algorithm", d.algorithm);
    cell(tr, id + "runtime", d.runtime === "onnx" ? "ONNX" : d.runtime === "python" ? "Python" : d.runtime);
    cell(tr, id + "device", d.device);
    cell(tr, id + "metric", p.deployed ? metricText(d.key_metric) : null);
    cell(tr, id + "deployed", when(d.deployed_at));
    cell(tr, id + "trained", when(p.last_trained_at));
    cell(tr, id + "models", p.models);
    body.appendChild(tr);
  }
  const hist = $("ml-history");
  hist.replaceChildren();
  for (const h of m.deployments || []) {
    const tr = document.createElement("tr");
    tr.id = "ml-deployment-" + h.id;
    cell(tr, null, when(h.deployed_at));
    cell(tr, null, h.project);
    cell(tr, null, "#" + h.model_id);
    cell(tr, null, h.algorithm);
    cell(tr, null, (h.runtime === "onnx" ? "ONNX" : "Python") + " / " + h.device);
    cell(tr, null, h.strategy);
    cell(tr, null, metricText(h.key_metric));
    hist.appendChild(tr);
  }
}

async function pollMl() {
  try {
    const resp = await fetch("ml", { cache: "no-store" });
    if (!resp.ok) throw new Error("HTTP " + resp.status);
    renderMl(await resp.json());
  } catch (err) {
    renderMl({ available: false, error: err.message || String(err) });
  } finally {
    setTimeout(pollMl, ML_POLL_MS);
  }
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
pollMl();
