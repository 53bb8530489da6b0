// The fleet dashboard: renders everything in the browser from the fleet REST API (/api/v1).
// Charts use Chart.js, served by the fleet service from /vendor/ (installed from npm at build
// time). Labels in English and Simplified Chinese. No patient data is ever shown: exams are
// named by the first digits of their keyed study hash.
"use strict";

const I18N = {
  en: {
    title: "Modality gateway fleet", nav_fleet: "Fleet", nav_util: "Utilisation", loading: "Loading…",
    online: "online", offline: "offline", alerts: "Alerts", no_alerts: "No open alerts.", boxes: "Boxes",
    box: "Box", site: "Site", status: "Status", version: "Version", last_seen: "Last seen", backlog: "Backlog",
    oldest: "Oldest unacked", disk: "Disk used", cert: "Certificate", last_study: "Last study", kind: "Alert",
    subject: "Subject", detail: "Detail", raised: "Raised", cleared: "Cleared", turnaround: "Study turnaround",
    studies: "Studies", p50: "p50", p95: "p95", modalities: "Modalities", modality: "Modality", exams: "Exams",
    images: "Images", utilisation: "Utilisation", health: "Health, last 24 h", recent_exams: "Recent exams (no patient data)",
    study: "Study key", start: "Start", duration: "Duration", series: "Series", source: "Source",
    alert_log: "Alert log, 7 days", uptime: "Uptime", reconnects: "Reconnects", cpu: "CPU temperature",
    quarantine: "Quarantine", days: "days", day: "Day", exams_per_hour: "Exams per hour", occupancy: "Table occupancy",
    change: "Patient change (median)", idle: "Idle", idle_gaps: "Idle gaps", outside: "Outside hours",
    timeline: "Busy / idle timeline", open_hours: "Opening hours", updated: "Updated", items: "items",
    backlog_items: "Backlog (items)", oldest_age_min: "Oldest unacked (min)", disk_pct: "Disk used (%)",
    temp_c: "CPU (°C)", closed: "closed", choose: "Choose a modality", busy: "busy", open: "open",
    none: "–", days_left: "days", in_days: "in {n} d", ago: "{n} ago", fleet_counts: "{on} online · {off} offline · {al} alerts",
    box_offline: "Box offline", backlog_age: "Backlog too old", disk_full: "Disk nearly full", cert_expiry: "Certificate expiring",
    modality_silent: "Modality silent", quarantine_not_empty: "Quarantine not empty",
    dead_letters: "Messages set aside",
  },
  zh: {
    title: "影像网关设备总览", nav_fleet: "设备", nav_util: "设备利用率", loading: "加载中…",
    online: "在线", offline: "离线", alerts: "告警", no_alerts: "暂无未处理告警。", boxes: "网关设备",
    box: "设备", site: "站点", status: "状态", version: "版本", last_seen: "最后上报", backlog: "积压",
    oldest: "最早未确认", disk: "磁盘占用", cert: "证书", last_study: "最近检查", kind: "告警",
    subject: "对象", detail: "详情", raised: "产生时间", cleared: "解除时间", turnaround: "检查上传时效",
    studies: "检查数", p50: "中位数", p95: "95 分位", modalities: "检查设备", modality: "设备类型", exams: "检查数",
    images: "图像数", utilisation: "利用率", health: "运行状态（近 24 小时）", recent_exams: "最近检查（不含患者信息）",
    study: "检查标识", start: "开始", duration: "时长", series: "序列", source: "来源",
    alert_log: "告警记录（7 天）", uptime: "运行时间", reconnects: "重连次数", cpu: "CPU 温度",
    quarantine: "隔离区", days: "天", day: "日期", exams_per_hour: "每小时检查数", occupancy: "检查床占用率",
    change: "换人时间（中位数）", idle: "空闲", idle_gaps: "空闲段数", outside: "营业时间外",
    timeline: "忙闲时间轴", open_hours: "营业时间", updated: "更新于", items: "项",
    backlog_items: "积压（项）", oldest_age_min: "最早未确认（分钟）", disk_pct: "磁盘占用（%）",
    temp_c: "CPU（°C）", closed: "休息", choose: "请选择检查设备", busy: "检查中", open: "营业",
    none: "–", days_left: "天", in_days: "{n} 天后", ago: "{n}前", fleet_counts: "在线 {on} · 离线 {off} · 告警 {al}",
    box_offline: "设备离线", backlog_age: "积压过久", disk_full: "磁盘将满", cert_expiry: "证书即将过期",
    modality_silent: "检查设备长时间无检查", quarantine_not_empty: "隔离区非空",
    dead_letters: "消息被搁置",
  },
};

let lang = localStorage.getItem("mgw-lang") || ((navigator.language || "en").toLowerCase().startsWith("zh") ? "zh" : "en");
const t = (key, vars) => {
  let s = (I18N[lang] && I18N[lang][key]) || I18N.en[key] || key;
  for (const [k, v] of Object.entries(vars || {})) s = s.replace(`{${k}}`, v);
  return s;
};
const charts = [];
let timer = null;

// -- helpers --------------------------------------------------------------------------------------
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else if (k.startsWith("data-")) node.setAttribute(k, v); else node[k] = v;
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  return node;
}
async function api(path) {
  const rsp = await fetch(path, { cache: "no-store" });
  if (!rsp.ok) throw new Error(`${path}: HTTP ${rsp.status}`);
  return rsp.json();
}
const fmtTime = (s) => s ? new Date(s * 1000).toLocaleString(lang === "zh" ? "zh-CN" : "en-GB") : t("none");
const fmtClock = (s) => new Date(s * 1000).toLocaleTimeString(lang === "zh" ? "zh-CN" : "en-GB", { hour: "2-digit", minute: "2-digit" });
function fmtAge(seconds) {
  if (seconds === null || seconds === undefined) return t("none");
  const s = Math.max(0, seconds);
  const txt = s < 90 ? `${Math.round(s)} s` : s < 5400 ? `${Math.round(s / 60)} min` : s < 172800 ? `${(s / 3600).toFixed(1)} h` : `${Math.round(s / 86400)} d`;
  return txt;
}
const fmtBytes = (b) => b === null || b === undefined ? t("none") : b < 1e6 ? `${(b / 1e3).toFixed(0)} kB` : b < 1e9 ? `${(b / 1e6).toFixed(1)} MB` : `${(b / 1e9).toFixed(2)} GB`;
const pct = (x) => x === null || x === undefined ? t("none") : `${(100 * x).toFixed(1)}%`;
function clearCharts() { while (charts.length) charts.pop().destroy(); }
function chart(canvas, config) {
  if (!window.Chart) { canvas.replaceWith(el("p", { class: "error" }, "Chart.js missing: run .ci/install")); return; }
  config.options = Object.assign({ responsive: true, maintainAspectRatio: false, animation: false }, config.options || {});
  charts.push(new window.Chart(canvas, config));
}
const fmtClockS = (s) => new Date(s * 1000).toLocaleTimeString(lang === "zh" ? "zh-CN" : "en-GB");
// Linear axis of Unix seconds; seconds shown when the axis spans under 20 minutes.
const timeAxis = { type: "linear", ticks: { maxTicksLimit: 8,
  callback: (v, i, ticks) => (ticks[ticks.length - 1].value - ticks[0].value < 1200 ? fmtClockS(v) : fmtClock(v)) } };

const sortState = {}; // table id -> {key, asc}: the operator's sort survives the 5 s refresh
function sortable(table, rows, columns, render) {
  const saved = sortState[table.id] || {};
  let key = saved.key ?? null, asc = saved.asc ?? true;
  const head = el("tr", {}, columns.map((c) => el("th", { class: c.num ? "num" : "", onclick: () => {
    asc = key === c.key ? !asc : true; key = c.key; sortState[table.id] = { key, asc }; draw();
  } }, t(c.label))));
  const body = el("tbody");
  table.append(el("thead", {}, head), body);
  function draw() {
    const sorted = key === null ? rows : [...rows].sort((a, b) => {
      const x = columns.find((c) => c.key === key).value(a), y = columns.find((c) => c.key === key).value(b);
      return (x > y ? 1 : x < y ? -1 : 0) * (asc ? 1 : -1);
    });
    [...head.children].forEach((th, i) => { th.classList.toggle("sorted", columns[i].key === key); th.classList.toggle("asc", asc); });
    body.replaceChildren(...sorted.map(render));
  }
  draw();
}

// -- fleet overview --------------------------------------------------------------------------------
async function fleetView(view) {
  const [fleet, alerts, turnaround, modalities] = await Promise.all([
    api("/api/v1/boxes"), api("/api/v1/alerts"), api("/api/v1/turnaround?days=7"), api("/api/v1/modalities")]);
  const now = fleet.now;
  const on = fleet.boxes.filter((b) => b.online).length;
  document.getElementById("summary").textContent = t("fleet_counts", { on, off: fleet.boxes.length - on, al: alerts.alerts.length });

  const alertTable = el("table", { id: "alerts" });
  if (alerts.alerts.length) {
    sortable(alertTable, alerts.alerts, [
      { key: "raised_at", label: "raised", value: (a) => a.raised_at },
      { key: "box_id", label: "box", value: (a) => a.box_id },
      { key: "kind", label: "kind", value: (a) => a.kind },
      { key: "subject", label: "subject", value: (a) => a.subject },
      { key: "detail", label: "detail", value: (a) => a.detail },
    ], (a) => el("tr", { "data-alert": a.kind, class: "alert-row" }, el("td", {}, fmtTime(a.raised_at)),
      el("td", {}, el("a", { href: `#/box/${a.box_id}` }, a.box_id)), el("td", {}, t(a.kind)), el("td", {}, a.subject),
      el("td", {}, a.detail)));
  }
  const boxTable = el("table", { id: "boxes" });
  sortable(boxTable, fleet.boxes, [
    { key: "alerts", label: "alerts", value: (b) => -b.alerts.length },
    { key: "box_id", label: "box", value: (b) => b.box_id },
    { key: "site", label: "site", value: (b) => b.site },
    { key: "online", label: "status", value: (b) => b.online },
    { key: "last_seen", label: "last_seen", value: (b) => b.last_seen },
    { key: "backlog", label: "backlog", num: true, value: (b) => (b.backlog || {}).items || 0 },
    { key: "oldest", label: "oldest", num: true, value: (b) => (b.backlog || {}).oldest_unacked_age_s || 0 },
    { key: "disk", label: "disk", num: true, value: (b) => (b.disk || {}).used_percent || 0 },
    { key: "cert", label: "cert", num: true, value: (b) => b.cert_not_after || 0 },
    { key: "last_study", label: "last_study", value: (b) => Math.max(0, ...Object.values(b.last_study || {})) },
    { key: "version", label: "version", value: (b) => b.version },
  ], (b) => el("tr", { "data-box": b.box_id, class: b.alerts.length ? "alert-row" : "" },
    el("td", {}, b.alerts.map((k) => el("span", { class: "tag" }, t(k)))),
    el("td", {}, el("a", { href: `#/box/${b.box_id}` }, b.box_id)),
    el("td", {}, b.site),
    el("td", { "data-status": b.online ? "online" : "offline" }, el("span", { class: `dot ${b.online ? "online" : "offline"}` }), t(b.online ? "online" : "offline")),
    el("td", {}, t("ago", { n: fmtAge(now - b.last_seen) })),
    el("td", { class: "num" }, b.backlog ? `${b.backlog.items} · ${fmtBytes(b.backlog.bytes)}` : t("none")),
    el("td", { class: "num" }, fmtAge((b.backlog || {}).oldest_unacked_age_s)),
    el("td", { class: "num" }, b.disk ? `${b.disk.used_percent.toFixed(1)}%` : t("none")),
    el("td", { class: "num" }, b.cert_not_after ? t("in_days", { n: Math.floor((b.cert_not_after - now) / 86400) }) : t("none")),
    el("td", { class: "wrap" }, Object.entries(b.last_study || {}).map(([m, w]) => `${m} ${t("ago", { n: fmtAge(now - w) })}`).join(", ") || t("none")),
    el("td", {}, b.version)));

  const taTable = el("table", { id: "turnaround" });
  sortable(taTable, turnaround.sites, [
    { key: "site", label: "site", value: (s) => s.site },
    { key: "studies", label: "studies", num: true, value: (s) => s.studies },
    { key: "p50_s", label: "p50", num: true, value: (s) => s.p50_s },
    { key: "p95_s", label: "p95", num: true, value: (s) => s.p95_s },
  ], (s) => el("tr", { "data-site": s.site }, el("td", {}, s.site), el("td", { class: "num" }, s.studies),
    el("td", { class: "num" }, fmtAge(s.p50_s)), el("td", { class: "num" }, fmtAge(s.p95_s))));

  const modTable = el("table", { id: "modalities" });
  sortable(modTable, modalities.modalities, [
    { key: "box_id", label: "box", value: (m) => m.box_id },
    { key: "modality", label: "modality", value: (m) => m.modality },
    { key: "exams", label: "exams", num: true, value: (m) => m.exams },
    { key: "images", label: "images", num: true, value: (m) => m.images },
    { key: "last", label: "last_study", value: (m) => m.last_exam_end },
  ], (m) => el("tr", {}, el("td", {}, m.box_id),
    el("td", {}, el("a", { href: `#/utilisation/${m.box_id}/${encodeURIComponent(m.modality)}` }, m.modality)),
    el("td", { class: "num" }, m.exams), el("td", { class: "num" }, m.images), el("td", {}, fmtTime(m.last_exam_end))));

  view.replaceChildren(
    el("section", {}, el("h2", {}, t("alerts")), alerts.alerts.length ? alertTable : el("p", { class: "muted" }, t("no_alerts"))),
    el("section", {}, el("h2", {}, t("boxes")), boxTable),
    el("section", {}, el("h2", {}, `${t("turnaround")} (7 ${t("days")})`), taTable),
    el("section", {}, el("h2", {}, t("modalities")), modTable));
}

// -- one box ------------------------------------------------------------------------------------------
async function boxView(view, boxId) {
  const b = await api(`/api/v1/boxes/${encodeURIComponent(boxId)}`);
  const now = Date.now() / 1000;
  const card = (label, value) => el("div", { class: "card" }, t(label), el("b", {}, value));
  const canvases = ["backlog_items", "oldest_age_min", "disk_pct", "temp_c"].map((k) => [k, el("canvas", {})]);
  const exams = el("table", { id: "recent-exams" });
  sortable(exams, b.recent_exams.slice().reverse(), [
    { key: "start", label: "start", value: (e) => e.start },
    { key: "modality", label: "modality", value: (e) => e.modality },
    { key: "study_key", label: "study", value: (e) => e.study_key },
    { key: "duration", label: "duration", num: true, value: (e) => e.end - e.start },
    { key: "images", label: "images", num: true, value: (e) => e.images },
    { key: "series", label: "series", num: true, value: (e) => e.series },
    { key: "source", label: "source", value: (e) => e.source },
    { key: "turnaround", label: "turnaround", num: true, value: (e) => e.turnaround_s ?? 1e12 },
  ], (e) => el("tr", {}, el("td", {}, fmtTime(e.start)), el("td", {}, e.modality), el("td", { class: "muted" }, e.study_key),
    el("td", { class: "num" }, fmtAge(e.end - e.start)), el("td", { class: "num" }, e.images), el("td", { class: "num" }, e.series),
    el("td", {}, e.source), el("td", { class: "num" }, e.turnaround_s === null ? t("none") : fmtAge(e.turnaround_s))));
  const log = el("table", { id: "alert-log" });
  sortable(log, b.alert_log, [
    { key: "raised_at", label: "raised", value: (a) => a.raised_at },
    { key: "kind", label: "kind", value: (a) => a.kind },
    { key: "detail", label: "detail", value: (a) => a.detail },
    { key: "cleared_at", label: "cleared", value: (a) => a.cleared_at || 1e12 },
  ], (a) => el("tr", {}, el("td", {}, fmtTime(a.raised_at)), el("td", {}, t(a.kind)), el("td", {}, a.detail), el("td", {}, fmtTime(a.cleared_at))));
  view.replaceChildren(
    el("h2", {}, el("span", { class: `dot ${b.online ? "online" : "offline"}` }), `${b.box_id} · ${b.site} · `,
      el("span", { id: "box-status", "data-status": b.online ? "online" : "offline" }, t(b.online ? "online" : "offline"))),
    el("div", { class: "cards" }, card("version", b.version || t("none")), card("uptime", fmtAge(b.uptime_s)),
      card("backlog", b.backlog ? `${b.backlog.items} ${t("items")}` : t("none")), card("oldest", fmtAge((b.backlog || {}).oldest_unacked_age_s)),
      card("disk", b.disk ? `${b.disk.used_percent.toFixed(1)}%` : t("none")), card("cpu", b.cpu_temp_c === null ? t("none") : `${b.cpu_temp_c} °C`),
      card("cert", b.cert_not_after ? t("in_days", { n: Math.floor((b.cert_not_after - now) / 86400) }) : t("none")),
      card("reconnects", b.reconnects ?? t("none")), card("quarantine", b.quarantine_items ?? t("none"))),
    el("section", {}, el("h2", {}, t("health")), el("div", { class: "charts" }, canvases.map(([, c]) => el("div", { class: "chart" }, c)))),
    el("section", {}, el("h2", {}, t("recent_exams")), exams),
    el("section", {}, el("h2", {}, t("alert_log")), log));
  const h = b.history;
  const series = {
    backlog_items: h.map((s) => ({ x: s.at, y: s.backlog_items })),
    oldest_age_min: h.map((s) => ({ x: s.at, y: s.oldest_age_s === null ? 0 : s.oldest_age_s / 60 })),
    disk_pct: h.map((s) => ({ x: s.at, y: s.disk_used_percent })),
    temp_c: h.map((s) => ({ x: s.at, y: s.cpu_temp_c })),
  };
  for (const [key, canvas] of canvases) {
    chart(canvas, { type: "line", data: { datasets: [{ label: t(key), data: series[key], pointRadius: 0, borderWidth: 2 }] },
      options: { scales: { x: timeAxis, y: { beginAtZero: true } } } });
  }
}

// -- utilisation ------------------------------------------------------------------------------------
async function utilisationView(view, boxId, modality) {
  if (!boxId) {
    const m = await api("/api/v1/modalities");
    view.replaceChildren(el("h2", {}, t("choose")), el("ul", {}, m.modalities.map((x) => el("li", {},
      el("a", { href: `#/utilisation/${x.box_id}/${encodeURIComponent(x.modality)}` }, `${x.box_id} · ${x.modality} (${x.exams})`)))));
    return;
  }
  const days = Number(sessionStorage.getItem("mgw-days") || 14);
  const u = await api(`/api/v1/utilisation?box=${encodeURIComponent(boxId)}&modality=${encodeURIComponent(modality)}&days=${days}`);
  const picker = el("select", { onchange: (e) => { sessionStorage.setItem("mgw-days", e.target.value); render(); } },
    [7, 14, 30, 90].map((n) => el("option", { value: n, selected: n === days }, `${n} ${t("days")}`)));
  const daySel = el("select", { id: "day", onchange: () => drawTimeline() },
    u.days.slice().reverse().map((d) => el("option", { value: d.day }, d.day)));
  const perDay = el("canvas", {}), occ = el("canvas", {}), line = el("canvas", {});
  const table = el("table", { id: "utilisation" });
  sortable(table, u.days.slice().reverse(), [
    { key: "day", label: "day", value: (d) => d.day },
    { key: "exams", label: "exams", num: true, value: (d) => d.exams },
    { key: "images", label: "images", num: true, value: (d) => d.images },
    { key: "eph", label: "exams_per_hour", num: true, value: (d) => d.exams_per_hour },
    { key: "occ", label: "occupancy", num: true, value: (d) => d.occupancy },
    { key: "chg", label: "change", num: true, value: (d) => d.patient_change_median_s ?? 1e9 },
    { key: "idle", label: "idle", num: true, value: (d) => d.idle_hours },
    { key: "gaps", label: "idle_gaps", num: true, value: (d) => d.idle_gaps },
    { key: "out", label: "outside", num: true, value: (d) => d.exams_outside_hours },
  ], (d) => el("tr", { "data-day": d.day }, el("td", {}, d.day, d.open ? "" : ` (${t("closed")})`), el("td", { class: "num" }, d.exams),
    el("td", { class: "num" }, d.images), el("td", { class: "num" }, d.exams_per_hour.toFixed(2)), el("td", { class: "num" }, pct(d.occupancy)),
    el("td", { class: "num" }, fmtAge(d.patient_change_median_s)), el("td", { class: "num" }, `${d.idle_hours.toFixed(1)} h`),
    el("td", { class: "num" }, d.idle_gaps), el("td", { class: "num" }, d.exams_outside_hours)));
  view.replaceChildren(
    el("h2", {}, `${t("utilisation")}: ${u.box_id} · ${u.modality} `, picker,
      el("span", { class: "muted" }, ` ${t("open_hours")} ${u.opening_hours} (UTC${u.utc_offset_minutes >= 0 ? "+" : ""}${u.utc_offset_minutes / 60})`)),
    el("div", { class: "charts" }, el("div", { class: "chart" }, perDay), el("div", { class: "chart" }, occ)),
    el("section", {}, el("h2", {}, t("timeline"), " ", daySel), el("div", { class: "chart" }, line)),
    el("section", {}, table));
  const labels = u.days.map((d) => d.day.slice(5));
  chart(perDay, { type: "bar", data: { labels, datasets: [
    { label: t("exams_per_hour"), data: u.days.map((d) => d.exams_per_hour), backgroundColor: "#0969da" }] } });
  chart(occ, { type: "line", data: { labels, datasets: [
    { label: `${t("occupancy")} (%)`, data: u.days.map((d) => 100 * d.occupancy), borderColor: "#1a7f37", fill: false }] },
    options: { scales: { y: { beginAtZero: true, max: 100 } } } });
  let timeline = null;
  function drawTimeline() {
    const d = u.days.find((x) => x.day === daySel.value) || u.days[u.days.length - 1];
    if (timeline) { timeline.destroy(); charts.splice(charts.indexOf(timeline), 1); }
    const data = d.busy.map(([s, e]) => ({ x: [s, e], y: t("busy") }));
    if (d.window) data.push({ x: d.window, y: t("open") });
    const edges = data.flatMap((p) => p.x);
    const lo = Math.min(...edges), hi = Math.max(...edges);
    chart(line, { type: "bar", data: { datasets: [{ label: d.day, data, borderSkipped: false, grouped: false,
      backgroundColor: (c) => c.raw && c.raw.y === t("busy") ? "#cf222e" : "#8c959f" }] },
      options: { indexAxis: "y", scales: { x: Object.assign({}, timeAxis, isFinite(lo) ? { min: lo - 600, max: hi + 600 } : {}) } } });
    timeline = charts[charts.length - 1];
  }
  drawTimeline();
  function render() { route(); }
}

// -- routing --------------------------------------------------------------------------------------------
async function route() {
  clearTimeout(timer);
  const view = document.getElementById("view");
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  document.querySelectorAll("[data-i18n]").forEach((n) => { n.textContent = t(n.dataset.i18n); });
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
  document.getElementById("lang").textContent = lang === "zh" ? "English" : "中文";
  try {
    clearCharts();
    if (parts[0] === "box" && parts[1]) await boxView(view, parts[1]);
    else if (parts[0] === "utilisation") await utilisationView(view, parts[1], parts[2]);
    else await fleetView(view);
    document.getElementById("error").textContent = "";
    document.getElementById("updated").textContent = `${t("updated")} ${new Date().toLocaleTimeString()}`;
    document.body.dataset.loaded = "1";
  } catch (err) {
    document.getElementById("error").textContent = String(err);
  }
  if (parts[0] !== "utilisation") timer = setTimeout(route, 5000);
}

window.addEventListener("hashchange", route);
document.getElementById("lang").addEventListener("click", () => {
  lang = lang === "zh" ? "en" : "zh";
  localStorage.setItem("mgw-lang", lang);
  route();
});
route();
