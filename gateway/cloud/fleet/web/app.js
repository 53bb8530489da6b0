// The fleet console: renders everything in the browser from the fleet REST API (/api/v1).
// Rules: no dependency but Chart.js (served from /vendor/), no inline script (CSP 'self'), no patient
// data ever shown. Every string a person reads is t("English text", {vars}): babel extracts them
// into gateway/cloud/fleet/locale/ (python -m gateway.cloud.fleet.i18n) and /i18n/<lang>.json serves
// the translation. The box list is virtual: fixed row height, only the rows in view are in the DOM,
// pages of rows come sorted and filtered from the server, and a refresh asks only for what changed
// (If-None-Match, and since=<revision>), patching the changed rows in place.
"use strict";

const LANGS = ["en", "zh-CN"];
let lang = localStorage.getItem("mgw-lang") || ((navigator.language || "en").toLowerCase().startsWith("zh") ? "zh-CN" : "en");
if (!LANGS.includes(lang)) lang = "en";
let messages = {};
let me = null; // GET /api/v1/me: {user, role, sites, method, csrf}
const ROW_H = 32, PAGE = 100, OVERSCAN = 10, REFRESH_MS = 5000;
const charts = [];
let timer = null;

function t(msgid, vars) {
  let s = messages[msgid] || msgid;
  for (const [k, v] of Object.entries(vars || {})) s = s.split(`{${k}}`).join(String(v));
  return s;
}

const KINDS = {
  box_offline: () => t("Box offline"), site_offline: () => t("Site offline"), backlog_age: () => t("Backlog too old"),
  disk_full: () => t("Disk nearly full"), cert_expiry: () => t("Certificate expiring"),
  modality_silent: () => t("Modality silent"), quarantine_not_empty: () => t("Quarantine not empty"),
  dead_letters: () => t("Messages set aside"), command_refused: () => t("Command refused by the box"),
};
const kindLabel = (k) => (KINDS[k] ? KINDS[k]() : k);
const SEVERITIES = { critical: () => t("critical"), warning: () => t("warning"), info: () => t("info") };
const sevLabel = (s) => (SEVERITIES[s] ? SEVERITIES[s]() : "");
const STATUSES = { online: () => t("online"), offline: () => t("offline"), degraded: () => t("degraded") };
const statusLabel = (s) => (STATUSES[s] ? STATUSES[s]() : s);
const COUNTS = [
  ["total", () => t("All boxes")], ["online", () => t("Online")], ["offline", () => t("Offline")],
  ["degraded", () => t("Degraded")], ["backlogged", () => t("Backlogged")],
  ["cert_expiring", () => t("Certificate expiring")], ["alerting", () => t("With open alerts")],
];
const GROUPS = [["", () => t("No grouping")], ["site", () => t("Site")], ["region", () => t("Region")],
  ["modality", () => t("Modality")], ["status", () => t("Status")], ["version", () => t("Version")]];
const COLUMNS = [ // key (server sort), label, class
  ["status", () => t("Status"), "c-status"], ["box", () => t("Box"), "c-box"], ["site", () => t("Site"), "c-site"],
  ["region", () => t("Region"), "c-region"], [null, () => t("Modalities"), "c-mod"], ["problems", () => t("Alerts"), "c-alerts"],
  ["backlog", () => t("Backlog"), "c-num"], ["disk", () => t("Disk"), "c-num"], ["cert", () => t("Certificate"), "c-num"],
  ["since", () => t("Since"), "c-since"], ["version", () => t("Version"), "c-ver"]];

// -- helpers --------------------------------------------------------------------------------------
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("data-") || k === "title" || k === "for" || k === "role") node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  return node;
}
function toLogin() {
  location.assign(`/login.html?next=${encodeURIComponent("/" + (location.hash || "#/"))}`); // back to this view
  throw new Error("login needed");
}
const etags = new Map(); // path -> {etag, doc}
// GET a document; with cached=true, send the last ETag and answer {doc, same} (same: 304, nothing changed)
async function api(path, cached) {
  const headers = {};
  const prior = cached ? etags.get(path) : null;
  if (prior) headers["If-None-Match"] = prior.etag;
  const rsp = await fetch(path, { cache: "no-store", headers, credentials: "same-origin" });
  if (rsp.status === 401) toLogin();
  if (rsp.status === 304 && prior) return { doc: prior.doc, same: true };
  if (!rsp.ok) throw new Error(`${path}: HTTP ${rsp.status}`);
  const text = await rsp.text();
  bytes.total += text.length; bytes.last += text.length;
  const doc = JSON.parse(text);
  if (cached && rsp.headers.get("ETag")) etags.set(path, { etag: rsp.headers.get("ETag"), doc });
  return cached ? { doc, same: false } : doc;
}
const bytes = { total: 0, last: 0 }; // characters of API documents received (the bench reads it)
async function post(path, body) {
  const headers = { "Content-Type": "application/json" };
  if (me && me.csrf) headers["X-CSRF-Token"] = me.csrf;
  const rsp = await fetch(path, { method: "POST", headers, body: JSON.stringify(body || {}), credentials: "same-origin" });
  if (rsp.status === 401) toLogin();
  const doc = await rsp.json().catch(() => ({}));
  if (!rsp.ok) throw new Error(doc.error || `${path}: HTTP ${rsp.status}`);
  return doc;
}

let sites = {}; // site -> {region, tz}: times are shown in the site's zone, else the user's
const intlLang = () => (lang === "zh-CN" ? "zh-CN" : "en-GB");
function fmtAbs(s, tz) {
  if (s === null || s === undefined) return t("never");
  // explicit fields: dateStyle/timeStyle refuse to be combined with timeZoneName
  const opts = { year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", timeZoneName: "short" };
  try { return new Intl.DateTimeFormat(intlLang(), tz ? { ...opts, timeZone: tz } : opts).format(new Date(s * 1000)); }
  catch (e) { return new Intl.DateTimeFormat(intlLang(), opts).format(new Date(s * 1000)); } // an unknown zone: the user's
}
function fmtRel(s) {
  if (s === null || s === undefined) return t("never");
  const d = s - Date.now() / 1000, a = Math.abs(d);
  const rtf = new Intl.RelativeTimeFormat(intlLang(), { numeric: "auto", style: "short" });
  if (a < 60) return rtf.format(Math.round(d), "second");
  if (a < 5400) return rtf.format(Math.round(d / 60), "minute");
  if (a < 172800) return rtf.format(Math.round(d / 3600), "hour");
  return rtf.format(Math.round(d / 86400), "day");
}
function when(s, tz) { // relative, with the absolute time (site zone) beside it on hover
  return el("time", { title: fmtAbs(s, tz), "data-at": s ?? "" }, fmtRel(s));
}
// relative times age while their rows stay: each refresh rewrites the ones whose text moved on
function tickTimes(root) {
  for (const n of root.querySelectorAll("time[data-at]")) {
    if (!n.dataset.at) continue;
    const text = fmtRel(Number(n.dataset.at));
    if (n.textContent !== text) n.textContent = text;
  }
}
function fmtDur(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.max(0, seconds);
  if (s < 90) return t("{n} s", { n: Math.round(s) });
  if (s < 5400) return t("{n} min", { n: Math.round(s / 60) });
  if (s < 172800) return t("{n} h", { n: (s / 3600).toFixed(1) });
  return t("{n} d", { n: Math.round(s / 86400) });
}
const fmtBytes = (b) => (b === null || b === undefined ? "–" : b < 1e6 ? `${(b / 1e3).toFixed(0)} kB` : b < 1e9 ? `${(b / 1e6).toFixed(1)} MB` : `${(b / 1e9).toFixed(2)} GB`);
const pct = (x) => (x === null || x === undefined ? "–" : `${(100 * x).toFixed(1)}%`);
function clearCharts() { while (charts.length) charts.pop().destroy(); }
function chart(canvas, config) {
  if (!window.Chart) { canvas.replaceWith(el("p", { class: "error" }, t("Chart.js is missing: run .ci/install"))); return null; }
  config.options = Object.assign({ responsive: true, maintainAspectRatio: false, animation: false }, config.options || {});
  const c = new window.Chart(canvas, config);
  charts.push(c);
  return c;
}
function timeAxis(tz) {
  const f = (v) => { try { return new Intl.DateTimeFormat(intlLang(), { hour: "2-digit", minute: "2-digit", timeZone: tz || undefined }).format(new Date(v * 1000)); } catch (e) { return ""; } };
  return { type: "linear", ticks: { maxTicksLimit: 8, callback: (v) => f(v) } };
}

// -- fleet overview --------------------------------------------------------------------------------
const fleet = { // the list's state: survives refreshes, reset when a filter or the sort changes
  filters: { q: "", site: "", region: "", modality: "", status: "", version: "" }, sort: "problems", order: "asc",
  group: "", total: 0, pages: new Map(), rows: new Map(), nodes: new Map(), root: null, gen: 0,
};
function listQuery(extra) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(fleet.filters)) if (v) p.set(k, v);
  if (fleet.sort !== "problems") p.set("sort", fleet.sort);
  if (fleet.order !== "asc") p.set("order", fleet.order);
  for (const [k, v] of Object.entries(extra || {})) p.set(k, v);
  return p.toString();
}
// the list's query lives in the address (#/?status=offline&site=...): a link or the login's
// return brings the same view back; replaceState, so that filtering adds no history entries
function saveQuery() {
  const p = new URLSearchParams(listQuery(fleet.group ? { group: fleet.group } : {}));
  const hash = `#/${p.toString() ? `?${p}` : ""}`;
  if (location.hash !== hash) history.replaceState(null, "", hash);
}
function loadQuery() {
  const p = new URLSearchParams((location.hash.split("?")[1]) || "");
  for (const k of Object.keys(fleet.filters)) fleet.filters[k] = p.get(k) || "";
  fleet.sort = p.get("sort") || "problems";
  fleet.order = p.get("order") === "desc" ? "desc" : "asc";
  fleet.group = p.get("group") || "";
}
function resetList() {
  saveQuery();
  fleet.gen += 1; // answers to the previous query that are still on their way are dropped
  fleet.pages.clear(); fleet.rows.clear();
  for (const n of fleet.nodes.values()) n.remove();
  fleet.nodes.clear();
  if (fleet.root) fleet.root.scroll.scrollTop = 0;
}

async function fleetView(view) {
  loadQuery();
  const counts = el("div", { id: "counts", class: "counts", role: "toolbar" });
  const search = el("input", { id: "search", type: "search", placeholder: t("Search boxes, sites, versions…"), value: fleet.filters.q });
  const selects = {};
  for (const [key, label] of [["site", t("Site")], ["region", t("Region")], ["modality", t("Modality")], ["version", t("Version")]]) {
    selects[key] = el("select", { id: `f-${key}`, title: label, onchange: (e) => { fleet.filters[key] = e.target.value; resetList(); refreshList(true); } });
  }
  const group = el("select", { id: "group", title: t("Group by"), onchange: (e) => { fleet.group = e.target.value; resetList(); refreshList(true); } },
    GROUPS.map(([k, l]) => el("option", { value: k, selected: k === fleet.group }, k ? t("Group by {what}", { what: l() }) : l())));
  let typing = null;
  search.addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => { fleet.filters.q = search.value.trim(); resetList(); refreshList(true); }, 250);
  });
  const clear = el("button", { type: "button", id: "clear-filters", onclick: () => {
    fleet.filters = { q: "", site: "", region: "", modality: "", status: "", version: "" }; fleet.group = "";
    search.value = ""; group.value = ""; resetList(); refreshList(true);
  } }, t("Clear filters"));
  const head = el("div", { class: "row head" }, COLUMNS.map(([key, label, cls]) => el("span", {
    class: `${cls}${key ? " sortable" : ""}`, "data-sort": key || undefined,
    onclick: key ? () => { fleet.order = fleet.sort === key && fleet.order === "asc" ? "desc" : "asc"; fleet.sort = key; resetList(); refreshList(true); } : undefined,
  }, label())));
  const spacer = el("div", { class: "spacer" });
  const scroll = el("div", { class: "vlist", id: "box-scroll" }, spacer);
  const list = el("div", { id: "boxes", class: "boxes" }, head, scroll);
  const alerts = el("section", { id: "alerts", class: "alerts" }, el("h2", {}, t("Alerts")), el("p", { class: "muted" }, t("Loading…")));
  const total = el("span", { id: "matched", class: "muted" });
  view.replaceChildren(counts, el("div", { class: "filters" }, search, Object.values(selects), group, clear, total),
    el("div", { class: "split" }, el("section", { class: "list" }, list), alerts));
  fleet.root = { counts, selects, head, spacer, scroll, list, alerts, total };
  scroll.addEventListener("scroll", () => { drawWindow(); fetchMissing(); }, { passive: true });
  await refreshFleet(true);
}

async function refreshFleet(first) {
  const overview = api("/api/v1/overview", true);
  const alerts = overview.then(() => refreshAlerts()); // after the sites' time zones are known
  const [ov] = await Promise.all([overview, first ? fetchPage(0, false) : null]);
  if (!ov.same || first) drawOverview(ov.doc); // the sites' time zones, before rows are drawn
  await Promise.all([refreshList(first), alerts]);
}

function drawOverview(doc) {
  const r = fleet.root;
  sites = doc.sites;
  const active = fleet.filters.status || "total";
  const countsSig = JSON.stringify([doc.counts, active, lang]);
  if (r.counts.dataset.sig !== countsSig) {
    r.counts.dataset.sig = countsSig;
    r.counts.replaceChildren(...COUNTS.map(([key, label]) => el("button", {
      type: "button", class: `count c-${key}${active === key ? " active" : ""}`, "data-status": key,
      onclick: () => { fleet.filters.status = key === "total" ? "" : key; resetList(); refreshList(true); drawOverview(doc); },
    }, el("b", {}, doc.counts[key]), label())));
  }
  for (const [key, select] of Object.entries(r.selects)) {
    const chosen = fleet.filters[key];
    const sig = JSON.stringify([doc.facets[key], chosen, lang]);
    if (select.dataset.sig === sig) continue; // rebuilding 200 options costs a layout: only when they changed
    select.dataset.sig = sig;
    const label = { site: t("All sites"), region: t("All regions"), modality: t("All modalities"), version: t("All versions") }[key];
    select.replaceChildren(el("option", { value: "" }, label), ...doc.facets[key].filter((f) => f.key).map((f) =>
      el("option", { value: f.key, selected: f.key === chosen }, `${f.key} (${f.count})`)));
  }
}

function visibleRange() {
  const s = fleet.root.scroll;
  const first = Math.max(0, Math.floor(s.scrollTop / ROW_H) - OVERSCAN);
  const last = Math.min(fleet.total, Math.ceil((s.scrollTop + s.clientHeight) / ROW_H) + OVERSCAN);
  return [first, last];
}
function pagesInView() {
  const [a, b] = visibleRange();
  const out = [];
  for (let o = Math.floor(a / PAGE) * PAGE; o < Math.max(b, a + 1); o += PAGE) out.push(o);
  return out;
}
async function fetchPage(offset, refresh) {
  // a refresh asks for the rows of the page changed since the revision it holds, and sends the
  // page's ETag: 304 when nothing in the fleet changed
  const prior = refresh ? fleet.pages.get(offset) : null;
  const gen = fleet.gen;
  const path = `/api/v1/boxes?${listQuery({ offset, limit: PAGE, ...(prior ? { since: prior.revision } : {}) })}`;
  const headers = prior && prior.etag ? { "If-None-Match": prior.etag } : {};
  const rsp = await fetch(path, { cache: "no-store", headers, credentials: "same-origin" });
  if (rsp.status === 401) toLogin();
  if (rsp.status === 304) return false;
  if (!rsp.ok) throw new Error(`${path}: HTTP ${rsp.status}`);
  const text = await rsp.text();
  bytes.total += text.length; bytes.last += text.length;
  const doc = JSON.parse(text);
  if (gen !== fleet.gen) return false;
  for (const row of doc.rows) fleet.rows.set(row.id, row);
  fleet.pages.set(offset, { ids: doc.ids, revision: doc.revision, etag: rsp.headers.get("ETag") });
  fleet.total = doc.total;
  return true;
}
let fetching = false;
async function fetchMissing() {
  if (fetching || fleet.group) return;
  const missing = pagesInView().filter((o) => !fleet.pages.has(o) && o < Math.max(fleet.total, 1));
  if (!missing.length) return;
  fetching = true;
  try { for (const o of missing) await fetchPage(o, false); } finally { fetching = false; }
  drawWindow();
}

async function refreshList(first) {
  const r = fleet.root;
  if (!r) return;
  if (fleet.group) { await drawGroups(); return; }
  r.list.classList.remove("grouped");
  r.scroll.querySelectorAll(".row.group").forEach((n) => n.remove());
  if (first) { if (!fleet.pages.has(0)) await fetchPage(0, false); }
  else {
    const inView = pagesInView();
    for (const o of [...fleet.pages.keys()]) if (!inView.includes(o)) fleet.pages.delete(o); // refetched when scrolled to
    for (const o of inView) await fetchPage(o, fleet.pages.has(o));
  }
  r.spacer.style.height = `${fleet.total * ROW_H}px`;
  r.total.textContent = t("{n} boxes match", { n: fleet.total });
  for (const [key] of COLUMNS) {
    const span = r.head.querySelector(`[data-sort="${key}"]`);
    if (span) { span.classList.toggle("sorted", key === fleet.sort); span.classList.toggle("desc", fleet.order === "desc"); }
  }
  drawWindow();
  await fetchMissing();
}

function rowAt(index) {
  const page = fleet.pages.get(Math.floor(index / PAGE) * PAGE);
  if (!page) return null;
  const id = page.ids[index % PAGE];
  return id === undefined ? null : fleet.rows.get(id);
}
function drawWindow() {
  const r = fleet.root;
  if (!r || fleet.group) return;
  const [a, b] = visibleRange();
  const keep = new Set();
  for (let i = a; i < b; i++) {
    const row = rowAt(i);
    if (!row) continue;
    keep.add(row.id);
    let node = fleet.nodes.get(row.id);
    const sig = JSON.stringify(row);
    if (!node) { node = el("div", { class: "row" }); fleet.nodes.set(row.id, node); r.scroll.append(node); }
    if (node.dataset.sig !== sig) { fillRow(node, row); node.dataset.sig = sig; }
    const top = `${i * ROW_H}px`;
    if (node.style.top !== top) node.style.top = top;
  }
  for (const [id, node] of fleet.nodes) if (!keep.has(id)) { node.remove(); fleet.nodes.delete(id); }
  if (keep.size && !performance.getEntriesByName("mgw-list-drawn").length) { // for bench/console.py
    performance.mark("mgw-list-drawn");
    requestAnimationFrame(() => setTimeout(() => performance.mark("mgw-list-painted")));
  }
}
function fillRow(node, row) {
  const tz = (sites[row.site] || {}).tz;
  node.className = `row sev-${row.sev || "none"}${row.muted ? " muted-row" : ""}`;
  node.dataset.box = row.id;
  node.replaceChildren(
    el("span", { class: "c-status", "data-status": row.status }, el("i", { class: `dot ${row.status}` }), statusLabel(row.status)),
    el("span", { class: "c-box" }, el("a", { href: `#/box/${encodeURIComponent(row.id)}` }, row.id)),
    el("span", { class: "c-site", title: row.site }, row.site),
    el("span", { class: "c-region" }, row.region || "–"),
    el("span", { class: "c-mod" }, row.mod.join(" ") || "–"),
    el("span", { class: "c-alerts" }, row.alerts.map((k) => el("span", { class: `tag sev-${row.sev}` }, kindLabel(k))),
      row.flags.includes("backlogged") && !row.alerts.includes("backlog_age") ? el("span", { class: "tag" }, t("Backlogged")) : null),
    el("span", { class: "c-num" }, row.backlog === null ? "–" : t("{n} items", { n: row.backlog }),
      row.oldest_min ? el("small", {}, ` · ${fmtDur(row.oldest_min * 60)}`) : null),
    el("span", { class: "c-num" }, row.disk === null ? "–" : `${row.disk}%`),
    el("span", { class: "c-num" }, row.cert_days === null ? "–" : t("{n} d", { n: row.cert_days })),
    el("span", { class: "c-since" }, when(row.status === "offline" ? row.seen : row.since, tz)),
    el("span", { class: "c-ver" }, row.ver || "–"));
}

async function drawGroups() {
  const r = fleet.root;
  const { doc, same } = await api(`/api/v1/boxes?${listQuery({ group: fleet.group })}`, true);
  if (same && r.scroll.querySelector(".row.group")) return; // 304: the groups shown are current
  for (const n of fleet.nodes.values()) n.remove();
  fleet.nodes.clear();
  fleet.total = doc.total;
  r.list.classList.add("grouped");
  r.spacer.style.height = "0px";
  r.total.textContent = t("{n} boxes match", { n: doc.total });
  const nodes = doc.groups.map((g) => el("div", { class: `row group sev-${g.sev || "none"}`, "data-group": g.key, onclick: () => {
    if (fleet.group === "status") fleet.filters.status = g.key; else fleet.filters[fleet.group] = g.key;
    fleet.group = ""; document.getElementById("group").value = ""; resetList(); refreshList(true);
  } }, el("span", { class: "c-box" }, g.key || t("(none)")),
  el("span", {}, t("{n} boxes", { n: g.count })), el("span", {}, t("{n} offline", { n: g.offline })),
  el("span", {}, t("{n} with alerts", { n: g.alerting })), el("span", {}, sevLabel(g.sev))));
  r.scroll.querySelectorAll(".row.group").forEach((n) => n.remove());
  r.scroll.append(...nodes);
}

// -- alerts ----------------------------------------------------------------------------------------
let alertsSig = "";
let alertState = sessionStorage.getItem("mgw-alert-state") || "open";
const ALERT_STATES = [["open", () => t("Open")], ["unacked", () => t("Not acknowledged")],
  ["acked", () => t("Acknowledged")], ["resolved", () => t("Resolved, last 7 days")]];
async function refreshAlerts() {
  const box = fleet.root && fleet.root.alerts;
  if (!box) return;
  const { doc, same } = await api(`/api/v1/alerts/grouped?state=${alertState}`, true);
  if (same && alertsSig) return; // 304: nothing new to show
  const sig = JSON.stringify(doc.alerts);
  if (sig === alertsSig) return;
  if (box.querySelector("form.ack")) return; // the operator is typing a note: a later refresh draws
  alertsSig = sig;
  // keyed by alert id: an unchanged alert keeps its element (and what is expanded in it)
  let list = box.querySelector("ul.alert-list");
  if (!list) {
    list = el("ul", { class: "alert-list" });
    const which = el("select", { id: "alert-state", title: t("Which alerts"), onchange: (e) => {
      alertState = e.target.value; sessionStorage.setItem("mgw-alert-state", alertState);
      alertsSig = ""; list.replaceChildren(); refreshAlerts();
    } }, ALERT_STATES.map(([k, l]) => el("option", { value: k, selected: k === alertState }, l())));
    box.replaceChildren(el("h2", {}, t("Alerts"), " ", el("span", { class: "muted count" }), " ", which), list,
      el("p", { class: "muted none" }, t("No alerts.")));
  }
  box.querySelector("h2 .count").textContent = `(${doc.alerts.length})`;
  box.querySelector("p.none").hidden = doc.alerts.length > 0;
  const old = new Map([...list.children].map((n) => [n.dataset.alert, n]));
  let at = list.firstChild;
  for (const a of doc.alerts) {
    const asig = JSON.stringify(a);
    let node = old.get(String(a.id));
    old.delete(String(a.id));
    if (!node || node.dataset.sig !== asig) {
      const fresh = alertItem(a);
      fresh.dataset.sig = asig;
      if (node) { if (node === at) at = fresh; node.replaceWith(fresh); }
      node = fresh;
    }
    if (node !== at) list.insertBefore(node, at); else at = at.nextSibling;
  }
  for (const n of old.values()) n.remove();
}
// The service writes an alert's detail in English with Unix times (core/fleet.py evaluate, core/alerts.py):
// each known form is shown translated, with times human-readable; anything else as it came.
const DETAILS = [
  [/^offline since (\d+)$/, (m, tz) => t("offline since {when}", { when: fmtAbs(Number(m[1]), tz) })],
  [/^oldest unacknowledged item (\d+) min old$/, (m) => t("oldest undelivered item {n} min old", { n: m[1] })],
  [/^disk ([\d.]+)% used$/, (m) => t("disk {percent}% used", { percent: m[1] })],
  [/^certificate expires in (-?[\d.]+) days$/, (m) => t("certificate expires in {n} days", { n: m[1] })],
  [/^(\d+) items quarantined$/, (m) => t("{n} items quarantined", { n: m[1] })],
  [/^no study for ([\d.]+) opening hours$/, (m) => t("no study for {n} opening hours", { n: m[1] })],
  [/^(\d+) messages set aside \(last: ([^:]+): (.*)\)$/s, (m) => t("{n} messages set aside (last: {reason}: {detail})", { n: m[1], reason: m[2], detail: m[3] })],
  [/^(\d+) boxes offline: (.*)$/s, (m) => t("{n} boxes offline: {boxes}", { n: m[1], boxes: m[2] })],
];
function detailText(detail, tz) {
  for (const [re, fmt] of DETAILS) { const m = re.exec(detail); if (m) return fmt(m, tz); }
  return detail;
}

function alertItem(a) {
  const tz = (sites[a.site || a.subject] || {}).tz;
  const where = a.box_id ? el("a", { href: `#/box/${encodeURIComponent(a.box_id)}` }, a.box_id) : el("b", {}, a.subject);
  const marks = [];
  if (a.suppressed_by.startsWith("maintenance")) marks.push(el("span", { class: "mark" }, t("maintenance window")));
  else if (a.suppressed_by) marks.push(el("span", { class: "mark" }, t("silenced")));
  const resolved = a.cleared_at !== null ? el("div", { class: "resolved" }, t("Resolved {when}", { when: fmtAbs(a.cleared_at, tz) })) : null;
  const ack = a.acked_at
    ? el("div", { class: "acked", "data-acked": "1" }, t("Acknowledged by {who} at {when}", { who: a.acked_by, when: fmtAbs(a.acked_at, tz) }),
      a.ack_note ? el("q", {}, a.ack_note) : null)
    : el("button", { type: "button", class: "ack-btn", onclick: (e) => ackForm(e.target, a) }, t("Acknowledge"));
  const children = a.children.length ? el("details", {}, el("summary", {}, t("{n} boxes", { n: a.children.length })),
    el("ul", {}, a.children.map((c) => el("li", {}, el("a", { href: `#/box/${encodeURIComponent(c.box_id)}` }, c.box_id), " ",
      el("span", { class: "muted" }, t("since {when}", { when: fmtAbs(c.raised_at, tz) })))))) : null;
  return el("li", { class: `alert sev-${a.severity}`, "data-alert": a.id, "data-kind": a.kind },
    el("div", { class: "alert-head" }, el("span", { class: `sev sev-${a.severity}` }, sevLabel(a.severity)),
      el("b", {}, kindLabel(a.kind)), " ", where, a.site && a.box_id ? el("span", { class: "muted" }, ` · ${a.site}`) : null, marks),
    el("div", { class: "muted" }, a.cleared_at === null
      ? t("first seen {first}, still holds", { first: fmtAbs(a.raised_at, tz) })
      : t("first seen {first}, last seen {last}", { first: fmtAbs(a.raised_at, tz), last: fmtAbs(a.last_seen, tz) })),
    el("div", { class: "detail" }, detailText(a.detail, tz)), resolved, ack, children);
}
function ackForm(button, a) {
  const note = el("input", { type: "text", name: "note", maxLength: 1000, placeholder: t("Note (what you are doing about it)") });
  const form = el("form", { class: "ack", onsubmit: async (e) => {
    e.preventDefault();
    try {
      await post(`/api/v1/alerts/${a.id}/ack`, { note: note.value });
      form.remove();
      alertsSig = "";
      await refreshAlerts();
    } catch (err) { form.append(el("span", { class: "error" }, String(err.message || err))); }
  } }, note, el("button", { type: "submit" }, t("Confirm")), el("button", { type: "button", onclick: () => { form.remove(); button.hidden = false; alertsSig = ""; } }, t("Cancel")));
  button.hidden = true;
  button.after(form);
  note.focus();
}

// -- one box ------------------------------------------------------------------------------------------
async function boxView(view, boxId) {
  const b = await api(`/api/v1/boxes/${encodeURIComponent(boxId)}`);
  const reports = (await api(`/api/v1/boxes/${encodeURIComponent(boxId)}/commissioning`)).reports;
  const cfg = b.config, tz = cfg.tz, s = b.series;
  const card = (label, value) => el("div", { class: "card" }, label, el("b", {}, value));
  const certDays = b.cert_not_after ? Math.floor((b.cert_not_after - Date.now() / 1000) / 86400) : null;
  const plots = [
    ["backlog", t("Backlog (items)"), "line", s.backlog_items],
    ["oldest", t("Oldest undelivered (min)"), "line", s.oldest_age_s.map(([x, y]) => [x, y === null ? null : y / 60])],
    ["throughput", t("Images delivered per hour"), "bar", s.images_delivered_per_hour],
    ["turnaround", t("Study turnaround (s)"), "scatter", s.turnaround_s],
    ["exams", t("Exams per hour"), "bar", s.exams_per_hour],
    ["disk", t("Disk used (%)"), "line", s.disk_used_percent],
  ].map(([id, label, type, data]) => ({ id, label, type, data, canvas: el("canvas", { id: `chart-${id}` }) }));
  const cfgRows = [
    [t("Software version"), cfg.version || "–"], [t("Site"), cfg.site], [t("Region"), cfg.region || "–"],
    [t("Time zone"), cfg.tz || t("the browser's")], [t("Opening hours"), cfg.opening_hours.join(", ")],
    [t("Turnaround target"), fmtDur(cfg.turnaround_target_s)], [t("Modalities"), cfg.modalities.join(" ") || "–"],
    [t("Uplink connected"), cfg.uplink_connected === null || cfg.uplink_connected === undefined ? "–" : cfg.uplink_connected ? t("yes") : t("no")],
    [t("Uptime"), fmtDur(cfg.uptime_s)], [t("Reconnects"), cfg.reconnects ?? "–"],
    [t("Exam records not yet acknowledged"), cfg.utilisation_unacked ?? "–"], [t("Exam records dropped"), cfg.exams_dropped ?? "–"],
    [t("Quarantined items"), cfg.quarantine_items ?? "–"], [t("Last heartbeat"), fmtAbs(cfg.heartbeat_at, tz)],
    [t("Configuration version"), cfg.config_version ?? "–"],
    [t("Remote commands"), cfg.commands ? t("last seq {seq}: {ok} succeeded, {failed} failed, {refused} refused", { seq: cfg.commands.last_seq ?? 0, ok: cfg.commands.succeeded ?? 0, failed: cfg.commands.failed ?? 0, refused: cfg.commands.refused ?? 0 }) : "–"],
  ];
  const errors = el("table", { id: "last-errors" }, el("thead", {}, el("tr", {}, el("th", {}, t("When")), el("th", {}, t("What")), el("th", {}, t("Detail")))),
    el("tbody", {}, [
      ...b.dead_letters.map((d) => ({ at: d.at, what: t("Message set aside: {reason}", { reason: d.reason }), detail: d.detail })),
      ...b.alert_log.map((a) => ({ at: a.raised_at, what: kindLabel(a.kind), detail: a.cleared_at ? t("{detail} (resolved {when})", { detail: detailText(a.detail, tz), when: fmtRel(a.cleared_at) }) : detailText(a.detail, tz) })),
    ].sort((x, y) => y.at - x.at).slice(0, 30).map((e) => el("tr", {}, el("td", {}, when(e.at, tz)), el("td", {}, e.what), el("td", { class: "wrap" }, e.detail)))));
  const exams = el("table", { id: "recent-exams" }, el("thead", {}, el("tr", {}, [t("Start"), t("Modality"), t("Study key"), t("Images"), t("Source"), t("Turnaround")].map((h) => el("th", {}, h)))),
    el("tbody", {}, b.recent_exams.slice().reverse().map((e) => el("tr", {}, el("td", {}, fmtAbs(e.start, tz)), el("td", {}, e.modality),
      el("td", { class: "muted" }, e.study_key), el("td", { class: "num" }, e.images), el("td", {}, e.source),
      el("td", { class: "num" }, e.turnaround_s === null ? "–" : fmtDur(e.turnaround_s))))));
  view.replaceChildren(
    el("h2", {}, el("i", { class: `dot ${b.online ? "online" : "offline"}` }), `${b.box_id} · ${b.site} · `,
      el("span", { id: "box-status", "data-status": b.online ? "online" : "offline" }, statusLabel(b.online ? "online" : "offline"))),
    el("div", { class: "cards" }, card(t("Version"), b.version || "–"), card(t("Backlog"), b.backlog ? t("{n} items", { n: b.backlog.items }) : "–"),
      card(t("Oldest undelivered"), fmtDur((b.backlog || {}).oldest_unacked_age_s)), card(t("Disk used"), b.disk ? `${b.disk.used_percent.toFixed(1)}%` : "–"),
      card(t("Certificate expires"), certDays === null ? "–" : t("in {n} days ({date})", { n: certDays, date: fmtAbs(b.cert_not_after, tz) })),
      card(t("Last seen"), when(b.last_seen, tz))),
    el("p", {}, el("a", { href: `#/commands/${encodeURIComponent(b.box_id)}`, id: "box-commands" }, t("Remote commands and configuration versions"))),
    el("section", {}, el("h2", {}, t("Last 24 hours")), el("div", { class: "charts" }, plots.map((p) => el("div", { class: "chart", "data-chart": p.id }, p.canvas)))),
    el("section", {}, el("h2", {}, t("Last errors")), errors),
    el("section", { class: "cfg" }, el("h2", {}, t("Configuration and software")),
      el("table", { id: "box-config" }, el("tbody", {}, cfgRows.map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, v))))),
      el("p", { class: "muted" }, t("The box reports no AE title, destinations or spool limits in its heartbeat."))),
    el("section", {}, el("h2", {}, t("Recent exams (no patient data)")), exams),
    el("section", {}, el("h2", {}, t("Commissioning reports")), reports.length ? commissioningList(reports, tz) : el("p", { class: "muted" }, t("No commissioning report yet."))));
  for (const p of plots) {
    const data = p.data.filter(([, y]) => y !== null).map(([x, y]) => ({ x, y }));
    p.canvas.dataset.points = String(data.length);
    const x = Object.assign(timeAxis(tz), { min: b.now - 86400, max: b.now }); // the same day on every chart
    chart(p.canvas, { type: p.type, data: { datasets: [{ label: p.label, data, pointRadius: p.type === "line" ? 1.5 : 3, borderWidth: 2, backgroundColor: "#0969da", borderColor: "#0969da" }] },
      options: { parsing: true, scales: { x, y: { beginAtZero: true } } } });
  }
}

// -- commissioning reports (signed by the box; verified by the fleet on arrival) -------------------------
const OUTCOME_TEXT = { ok: () => t("passed"), FAIL: () => t("failed"), skipped: () => t("not applicable"),
  manual: () => t("manual check not attested"), confirmed: () => t("attested by the engineer") };
const RESULT_TEXT = { PASSED: () => t("PASSED"), FAILED: () => t("FAILED"), INCOMPLETE: () => t("INCOMPLETE") };
const CHECK_NAMES = { configuration: () => t("configuration"), certificate: () => t("certificate"),
  "clock-skew": () => t("clock skew"), broker: () => t("broker (mutual TLS)"), "echo-to-modality": () => t("C-ECHO to the modality"),
  "echo-to-box": () => t("C-ECHO to this box"), "modality-echo": () => t("C-ECHO from the modality console"),
  "end-to-end": () => t("test object end to end"), "test-study": () => t("test study from the modality") };
const checkLabel = (c) => (CHECK_NAMES[c.key] ? CHECK_NAMES[c.key]() : c.name);
const resultLabel = (r) => (RESULT_TEXT[r] ? RESULT_TEXT[r]() : r);
function fmtFull(s, tz) { // to the second, in the site's zone: a report's times
  const opts = { year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short" };
  try { return new Intl.DateTimeFormat(intlLang(), tz ? { ...opts, timeZone: tz } : opts).format(new Date(s * 1000)); }
  catch (e) { return new Intl.DateTimeFormat(intlLang(), opts).format(new Date(s * 1000)); }
}
const pdfHref = (id) => `/api/v1/commissioning/${encodeURIComponent(id)}/pdf?lang=${encodeURIComponent(lang)}`;
function commissioningList(reports, tz) {
  return el("table", { id: "commissioning" }, el("thead", {}, el("tr", {}, [t("Started"), t("Result"), t("Engineer"), t("Report"), ""].map((h) => el("th", {}, h)))),
    el("tbody", {}, reports.map((r) => el("tr", { "data-report": r.report_id },
      el("td", {}, fmtFull(r.started_at, tz)), el("td", { class: `result-${r.result}` }, resultLabel(r.result)), el("td", {}, r.engineer),
      el("td", {}, el("a", { href: `#/commissioning/${encodeURIComponent(r.report_id)}` }, t("View and print"))),
      el("td", {}, el("a", { href: pdfHref(r.report_id) }, "PDF"))))));
}
async function commissioningView(view, reportId) {
  const r = await api(`/api/v1/commissioning/${encodeURIComponent(reportId)}`);
  const d = r.document, tz = r.tz;
  const sig = Array.from(atob(r.signature).slice(0, 8), (c) => c.charCodeAt(0).toString(16).padStart(2, "0")).join("");
  const fields = [
    [t("Box"), d.box_id], [t("Site"), r.site], [t("Engineer"), d.engineer], [t("Modality"), d.modality || "–"],
    [t("Make"), d.modality_make || "–"], [t("Model"), d.modality_model || "–"], [t("AE title"), d.modality_ae || "–"],
    [t("Address"), d.modality_address || "–"], [t("Started"), fmtFull(d.started_at, tz)], [t("Finished"), fmtFull(d.finished_at, tz)],
    [t("Time zone"), tz || t("the browser's")], [t("Software version"), d.software], [t("Report"), d.report_id]];
  const checks = el("table", { id: "report-checks" }, el("thead", {}, el("tr", {}, [t("Time"), t("Check"), t("Outcome"), t("Detail")].map((h) => el("th", {}, h)))),
    el("tbody", {}, d.checks.map((c) => el("tr", { "data-check": c.key, "data-outcome": c.outcome },
      el("td", {}, fmtFull(c.started_at, tz)), el("td", {}, c.manual ? checkLabel(c) + " (" + t("manual") + ")" : checkLabel(c)),
      el("td", { class: `outcome-${c.outcome}` }, OUTCOME_TEXT[c.outcome] ? OUTCOME_TEXT[c.outcome]() : c.outcome),
      el("td", { class: "wrap" }, c.detail)))));
  view.replaceChildren(el("article", { class: "report", id: "commissioning-report", "data-result": d.result },
    el("h2", { id: "report-title" }, t("Commissioning report")),
    el("p", { class: "no-print" }, el("button", { type: "button", id: "report-print", onclick: () => window.print() }, t("Print")), " ",
      el("a", { id: "report-pdf", href: pdfHref(d.report_id) }, "PDF"), " ",
      el("a", { href: `#/box/${encodeURIComponent(d.box_id)}` }, t("Back to the box"))),
    el("table", { id: "report-fields" }, el("tbody", {}, fields.map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, v))))),
    checks,
    el("p", { id: "report-result", class: `verdict result-${d.result}` }, t("Result: {result}", { result: resultLabel(d.result) })),
    el("p", { class: "muted" }, t("Signed by the box's key; the signature and certificate verified against the fleet CA when received ({when}). Signature {sig}…",
      { when: fmtFull(r.received_at, tz), sig }))));
}

// -- utilisation ------------------------------------------------------------------------------------
async function utilisationView(view, boxId, modality) {
  if (!boxId) {
    const [m, ta] = await Promise.all([api("/api/v1/modalities"), api("/api/v1/turnaround?days=7")]);
    const turnaround = el("table", { id: "turnaround" }, el("thead", {}, el("tr", {},
      [t("Site"), t("Studies"), t("p50"), t("p95"), t("Turnaround target")].map((h) => el("th", {}, h)))),
    el("tbody", {}, ta.sites.map((x) => el("tr", { "data-site": x.site, class: x.over_target ? "over" : "" }, el("td", {}, x.site),
      el("td", { class: "num" }, x.studies), el("td", { class: "num" }, fmtDur(x.p50_s)), el("td", { class: "num" }, fmtDur(x.p95_s)),
      el("td", { class: "num" }, fmtDur(x.target_s))))));
    view.replaceChildren(el("section", {}, el("h2", {}, t("Study turnaround, last 7 days")), turnaround),
      el("section", {}, el("h2", {}, t("Choose a modality")), el("ul", {}, m.modalities.map((x) => el("li", {},
        el("a", { href: `#/utilisation/${encodeURIComponent(x.box_id)}/${encodeURIComponent(x.modality)}` }, `${x.box_id} · ${x.modality} (${x.exams})`))))));
    return;
  }
  const days = Number(sessionStorage.getItem("mgw-days") || 14);
  const u = await api(`/api/v1/utilisation?box=${encodeURIComponent(boxId)}&modality=${encodeURIComponent(modality)}&days=${days}`);
  const picker = el("select", { onchange: (e) => { sessionStorage.setItem("mgw-days", e.target.value); route(); } },
    [7, 14, 30, 90].map((n) => el("option", { value: n, selected: n === days }, t("{n} days", { n }))));
  const daySel = el("select", { id: "day", onchange: () => drawTimeline() }, u.days.slice().reverse().map((d) => el("option", { value: d.day }, d.day)));
  const perDay = el("canvas", {}), occ = el("canvas", {}), line = el("canvas", {});
  const heads = [t("Day"), t("Exams"), t("Images"), t("Exams per hour"), t("Table occupancy"), t("Patient change (median)"), t("Idle"), t("Idle gaps"), t("Outside hours")];
  const table = el("table", { id: "utilisation" }, el("thead", {}, el("tr", {}, heads.map((h) => el("th", {}, h)))),
    el("tbody", {}, u.days.slice().reverse().map((d) => el("tr", { "data-day": d.day }, el("td", {}, d.day, d.open ? "" : " ", d.open ? "" : t("(closed)")),
      el("td", { class: "num" }, d.exams), el("td", { class: "num" }, d.images), el("td", { class: "num" }, d.exams_per_hour.toFixed(2)),
      el("td", { class: "num" }, pct(d.occupancy)), el("td", { class: "num" }, fmtDur(d.patient_change_median_s)),
      el("td", { class: "num" }, t("{n} h", { n: d.idle_hours.toFixed(1) })), el("td", { class: "num" }, d.idle_gaps), el("td", { class: "num" }, d.exams_outside_hours)))));
  const offset = `UTC${u.utc_offset_minutes >= 0 ? "+" : ""}${u.utc_offset_minutes / 60}`;
  view.replaceChildren(
    el("h2", {}, t("Utilisation: {box} · {modality}", { box: u.box_id, modality: u.modality }), " ", picker,
      el("span", { class: "muted" }, " ", t("Opening hours {hours} ({offset})", { hours: u.opening_hours, offset }))),
    el("div", { class: "charts" }, el("div", { class: "chart" }, perDay), el("div", { class: "chart" }, occ)),
    el("section", {}, el("h2", {}, t("Busy / idle timeline"), " ", daySel), el("div", { class: "chart" }, line)),
    el("section", {}, table));
  const labels = u.days.map((d) => d.day.slice(5));
  chart(perDay, { type: "bar", data: { labels, datasets: [{ label: t("Exams per hour"), data: u.days.map((d) => d.exams_per_hour), backgroundColor: "#0969da" }] } });
  chart(occ, { type: "line", data: { labels, datasets: [{ label: t("Table occupancy (%)"), data: u.days.map((d) => 100 * d.occupancy), borderColor: "#1a7f37", fill: false }] },
    options: { scales: { y: { beginAtZero: true, max: 100 } } } });
  let timeline = null;
  function drawTimeline() {
    const d = u.days.find((x) => x.day === daySel.value) || u.days[u.days.length - 1];
    if (timeline) { timeline.destroy(); charts.splice(charts.indexOf(timeline), 1); }
    const busy = t("busy"), open = t("open");
    const data = d.busy.map(([s, e]) => ({ x: [s, e], y: busy }));
    if (d.window) data.push({ x: d.window, y: open });
    const edges = data.flatMap((p) => p.x);
    const lo = Math.min(...edges), hi = Math.max(...edges);
    timeline = chart(line, { type: "bar", data: { datasets: [{ label: d.day, data, borderSkipped: false, grouped: false,
      backgroundColor: (c) => (c.raw && c.raw.y === busy ? "#cf222e" : "#8c959f") }] },
      options: { indexAxis: "y", scales: { x: Object.assign({}, timeAxis(""), isFinite(lo) ? { min: lo - 600, max: hi + 600 } : {}) } } });
  }
  drawTimeline();
}

// -- frame: language, user, routing, refresh ------------------------------------------------------------
// The audit log (admins): newest first, filtered by actor and action, a page at a time, and its export.
const AUDIT_PAGE = 100;
async function auditView(view, params) {
  const q = new URLSearchParams({ limit: String(AUDIT_PAGE) });
  for (const k of ["actor", "action", "before"]) if (params.get(k)) q.set(k, params.get(k));
  const doc = await api(`/api/v1/audit?${q}`);
  const go = (changes) => {
    const next = new URLSearchParams(params);
    for (const [k, v] of Object.entries(changes)) { if (v) next.set(k, v); else next.delete(k); }
    location.hash = `#/audit/${next}`;
  };
  const actor = el("input", { id: "audit-actor", type: "search", value: params.get("actor") || "", placeholder: t("Who") });
  const action = el("input", { id: "audit-action", type: "search", value: params.get("action") || "", placeholder: t("Action") });
  const form = el("form", { id: "audit-filter", onsubmit: (e) => { e.preventDefault(); go({ actor: actor.value.trim(), action: action.value.trim(), before: "" }); } },
    actor, " ", action, " ", el("button", { type: "submit" }, t("Filter")), " ",
    el("a", { id: "audit-export", href: "/api/v1/audit/export?format=csv", download: "mgw-audit.csv" }, t("Export CSV")), " ",
    el("a", { href: "/api/v1/audit/export?format=jsonl", download: "mgw-audit.jsonl" }, t("Export JSON lines")));
  const heads = [t("When"), t("Who"), t("How"), t("From"), t("Action"), t("Target"), t("Outcome"), t("Detail")];
  const table = el("table", { id: "audit" }, el("thead", {}, el("tr", {}, heads.map((h) => el("th", {}, h)))),
    el("tbody", {}, doc.entries.map((r) => el("tr", { "data-audit": r.id, class: r.outcome === "ok" ? "" : "over" },
      el("td", {}, fmtAbs(r.at)), el("td", {}, r.actor || t("(unknown)")), el("td", {}, r.method), el("td", {}, r.address),
      el("td", {}, r.action), el("td", {}, r.target), el("td", {}, ({ ok: t("ok"), refused: t("refused"), failed: t("failed") })[r.outcome] || r.outcome),
      el("td", { class: "detail" }, r.detail)))));
  const more = doc.next === null ? null : el("button", { id: "audit-older", type: "button", onclick: () => go({ before: String(doc.next) }) }, t("Older entries"));
  view.replaceChildren(el("h2", {}, t("Audit log")), form, doc.entries.length ? table : el("p", {}, t("No entries.")), more);
}

// the archive's versions of one instance (operator, admin): the UID stays in the form, never in the
// address (history) nor in the table; the page shows boxes, times, sizes and digests, no patient data
async function versionsView(view) {
  const uid = el("input", { id: "versions-uid", type: "search", size: 64, maxLength: 64, autocomplete: "off",
    placeholder: t("SOP Instance UID") });
  const out = el("div", { id: "versions-result" });
  const show = async (e) => {
    e.preventDefault();
    const value = uid.value.trim();
    if (!/^[0-9]+(\.[0-9]+)*$/.test(value)) { out.replaceChildren(el("p", { class: "error" }, t("A UID is digits and dots."))); return; }
    const doc = await api(`/api/v1/archive/versions?${new URLSearchParams({ sop_instance_uid: value })}`);
    const heads = [t("Archived"), t("Box"), t("Site"), t("Bytes"), t("SHA-256"), t("State")];
    const rows = doc.versions.map((v) => el("tr", { class: v.current ? "current" : "" },
      el("td", {}, fmtAbs(v.stored_at, v.time_zone)),
      el("td", {}, el("a", { href: `#/box/${encodeURIComponent(v.box_id)}` }, v.box_id)), el("td", {}, v.site),
      el("td", { class: "c-num" }, String(v.size)), el("td", {}, el("code", {}, v.sha256.slice(0, 12))),
      el("td", {}, v.current ? t("current") : t("superseded {time}", { time: fmtAbs(v.superseded_at, v.time_zone) }))));
    out.replaceChildren(doc.versions.length
      ? el("table", { id: "versions" }, el("thead", {}, el("tr", {}, heads.map((h) => el("th", {}, h)))), el("tbody", {}, rows))
      : el("p", {}, t("The archive holds no version of this instance from your sites.")));
  };
  const form = el("form", { id: "versions-form", onsubmit: (e) => show(e).catch((err) => {
    document.getElementById("error").textContent = String(err.message || err); }) },
    uid, " ", el("button", { type: "submit" }, t("Show versions")));
  view.replaceChildren(el("h2", {}, t("Archived versions")),
    el("p", {}, t("An instance sent again with other bytes is kept as a new version; the current one is in force.")),
    form, out);
}

function drawFrame() {
  document.documentElement.lang = lang;
  document.title = t("mgw fleet");
  document.getElementById("title").textContent = t("Modality gateway fleet");
  document.getElementById("nav-fleet").textContent = t("Fleet");
  document.getElementById("nav-util").textContent = t("Utilisation");
  const navAudit = document.getElementById("nav-audit");
  navAudit.textContent = t("Audit log");
  navAudit.hidden = !(me && me.role === "admin");
  const navVersions = document.getElementById("nav-versions");
  navVersions.textContent = t("Versions");
  navVersions.hidden = !(me && (me.role === "admin" || me.role === "operator"));
  document.getElementById("nav-rollouts").textContent = t("Rollouts");
  document.getElementById("lang").textContent = lang === "zh-CN" ? "English" : "中文";
  const logout = document.getElementById("logout");
  logout.textContent = t("Log out");
  logout.hidden = !me;
  const roles = { viewer: t("viewer"), operator: t("operator"), admin: t("admin") };
  document.getElementById("user").textContent = me ? `${me.user} · ${roles[me.role] || me.role}` : "";
}
async function loadLanguage() {
  messages = lang === "en" ? {} : (await api(`/i18n/${lang}.json`)).messages;
}
async function loadMe() {
  const rsp = await fetch("/api/v1/me", { cache: "no-store", credentials: "same-origin" });
  if (rsp.status === 401) toLogin();
  if (!rsp.ok) throw new Error(`/api/v1/me: HTTP ${rsp.status}`);
  me = await rsp.json();
}

let current = "";
let routing = false; // one route() at a time: a second would draw its page over the first's
let routeAgain = false;
let redraw = false;
async function route() {
  if (routing) { routeAgain = true; return; }
  routing = true;
  try {
    do {
      routeAgain = false;
      await routeOnce();
    } while (routeAgain);
  } finally {
    routing = false;
  }
}
async function routeOnce() {
  clearTimeout(timer);
  if (redraw) { redraw = false; current = ""; }
  bytes.last = 0;
  const view = document.getElementById("view");
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  const page = parts[0] === "box" && parts[1] ? "box" : parts[0] === "commissioning" && parts[1] ? "commissioning"
    : parts[0] === "commands" && parts[1] ? "commands" // commands.js
    : ["utilisation", "audit", "versions", "rollouts"].includes(parts[0]) ? parts[0] : "fleet";
  if (page !== current) drawFrame();
  try {
    if (page === "fleet" && current === "fleet" && fleet.root && view.contains(fleet.root.list)) {
      const t0 = performance.now();
      await refreshFleet(false);
      tickTimes(view);
      document.body.dataset.refreshMs = String(performance.now() - t0);
    } else if (page === current && page === "commands" && document.getElementById("commands-body")) {
      await refreshCommands(parts[1]); // the table only: the issue form stays as the user left it
    } else if (page === current && page === "rollouts" && document.getElementById("rollouts")) {
      await refreshRollouts();
    } else {
      clearCharts();
      fleet.root = null; fleet.nodes.clear(); alertsSig = ""; fleet.pages.clear(); fleet.rows.clear();
      if (page === "box") await boxView(view, parts[1]);
      else if (page === "commissioning") await commissioningView(view, parts[1]);
      else if (page === "utilisation") await utilisationView(view, parts[1], parts[2]);
      else if (page === "audit") await auditView(view, new URLSearchParams(parts.slice(1).join("/")));
      else if (page === "versions") await versionsView(view);
      else if (page === "commands") await commandsView(view, parts[1]);
      else if (page === "rollouts") await rolloutsView(view);
      else await fleetView(view);
    }
    current = page;
    document.getElementById("error").textContent = "";
    const updated = document.getElementById("updated"); // its own layer: the text changes every refresh
    updated.textContent = t("Updated {time}", { time: new Date().toLocaleTimeString(intlLang()) });
    document.body.dataset.loaded = "1";
    document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes || 0) + 1);
    document.body.dataset.bytes = String(bytes.last);
  } catch (err) {
    document.getElementById("error").textContent = String(err.message || err);
  }
  if (!["utilisation", "audit", "commissioning", "versions"].includes(page)) timer = setTimeout(route, REFRESH_MS);
}
function navigate() { redraw = true; route(); }

async function start() {
  document.getElementById("lang").addEventListener("click", async () => {
    lang = lang === "zh-CN" ? "en" : "zh-CN";
    localStorage.setItem("mgw-lang", lang);
    await loadLanguage();
    navigate();
  });
  document.getElementById("logout").addEventListener("click", async () => {
    try { await post("/auth/logout", {}); } finally { location.assign("/login.html"); }
  });
  try { await loadMe(); await loadLanguage(); } catch (err) { document.getElementById("error").textContent = String(err.message || err); }
  // Only now: a view drawn before the user is known would leave out what their role may do, and
  // the refreshes after it redraw the tables, not the forms. route() reads the hash as it is now.
  window.addEventListener("hashchange", navigate);
  route();
}
start();
