// The console's remote commands (docs/operations.md, "Remote operations"): per box its commands with their
// states, a form to issue one, bundle downloads, configuration versions and the diff of two; and the wave
// rollouts. Loaded after app.js and uses its helpers (t, el, api, post, fmtAbs, when). Times are shown in the
// user's time zone (the browser's). The table refreshes every few seconds; the forms are never redrawn
// under the user's hands. Every string a person reads is t("English text"), extracted with app.js's.
"use strict";

const COMMAND_STATES = {
  pending: () => t("pending"), delivered: () => t("delivered"), running: () => t("running"),
  succeeded: () => t("succeeded"), failed: () => t("failed"), refused: () => t("refused"), expired: () => t("expired"),
  waiting: () => t("waiting"), stopped: () => t("stopped"),
};
const commandState = (s) => (COMMAND_STATES[s] ? COMMAND_STATES[s]() : s);
const COMMAND_KINDS = [
  ["echo", () => t("C-ECHO the modality")], ["bundle", () => t("Diagnostic bundle")],
  ["quarantine", () => t("Quarantine: list, replay or drop")], ["resend", () => t("Resend a study")],
  ["renew", () => t("Renew the certificate")], ["restart", () => t("Restart the edge service")],
  ["config", () => t("Change the configuration")], ["update", () => t("Software update")],
];
const kindName = (k) => { const f = COMMAND_KINDS.find(([key]) => key === k); return f ? f[1]() : k; };

function commandResult(c) {
  if (c.state === "refused") return t("refused by the box: {reason}", { reason: c.reason || c.message });
  const parts = Object.entries(c.detail || {}).map(([k, v]) => `${k}=${v}`);
  if (c.message) parts.unshift(c.message);
  return parts.join(", ");
}

function commandRows(doc) {
  return doc.commands.map((c) => el("tr", { "data-command": c.id, "data-state": c.state },
    el("td", { class: "num" }, c.seq), el("td", {}, kindName(c.kind)),
    el("td", { class: `cmd-state s-${c.state}` }, commandState(c.state)),
    el("td", {}, fmtAbs(c.issued_at)), el("td", {}, fmtAbs(c.updated_at)), el("td", {}, c.issued_by),
    el("td", { class: "wrap" }, commandResult(c)),
    el("td", {}, c.bundle ? el("a", { href: `/api/v1/commands/${encodeURIComponent(c.id)}/bundle`, class: "bundle" }, t("Download bundle")) : "")));
}

function argFields(kind) {
  const field = (name, label, attrs) => el("label", {}, label, " ", el("input", { name, ...(attrs || {}) }));
  if (kind === "bundle") return [field("log_lines", t("Log lines"), { type: "number", min: 1, max: 20000, value: 2000 })];
  if (kind === "resend") return [field("study_instance_uid", t("Study Instance UID")), field("accession", t("or accession number"))];
  if (kind === "quarantine") {
    return [el("label", {}, t("Action"), " ", el("select", { name: "action" }, ["list", "replay", "drop"].map((a) => el("option", { value: a }, a)))),
      field("item", t("Item"), { type: "number", min: 1 })];
  }
  if (kind === "restart") return [field("service", t("Service"), { value: "edge", readOnly: true })];
  if (kind === "config") return [el("label", { class: "block" }, t("Configuration (TOML)"), el("textarea", { name: "document", rows: 8, cols: 80 }))];
  if (kind === "update") return [field("url", t("Bundle URL (https)")), field("sha256", "SHA-256"), field("version", t("Version"))];
  return [];
}

function argsOf(form, kind) {
  const value = (n) => (form.elements[n] ? form.elements[n].value.trim() : "");
  if (kind === "bundle") return { log_lines: Number(value("log_lines")) };
  if (kind === "resend") return value("study_instance_uid") ? { study_instance_uid: value("study_instance_uid") } : { accession: value("accession") };
  if (kind === "quarantine") return value("action") === "list" ? { action: "list" } : { action: value("action"), item: Number(value("item")) };
  if (kind === "restart") return { service: "edge" };
  if (kind === "config") return { document: form.elements.document.value };
  if (kind === "update") return { url: value("url"), sha256: value("sha256"), version: value("version") };
  return {};
}

function issueForm(boxId, onIssued) {
  const fields = el("span", { class: "args" });
  const note = el("span", { id: "issue-note", class: "muted" });
  const kind = el("select", { name: "kind", id: "issue-kind", onchange: () => fields.replaceChildren(...argFields(kind.value)) },
    COMMAND_KINDS.map(([k, label]) => el("option", { value: k }, label())));
  const form = el("form", { id: "issue-form", class: "filters", onsubmit: async (e) => {
    e.preventDefault();
    note.className = "muted";
    try {
      const c = await post(`/api/v1/boxes/${encodeURIComponent(boxId)}/commands`, { kind: kind.value, args: argsOf(form, kind.value) });
      note.textContent = c.commands
        ? t("{count} resend command(s) queued, one per study archived from this box with that accession number.", { count: c.commands.length })
        : t("Command {seq} queued: it is signed and sent while the box is online.", { seq: c.seq });
      onIssued();
    } catch (err) { note.className = "error"; note.textContent = String(err.message || err); }
  } }, kind, fields, el("button", { type: "submit", id: "issue-submit" }, t("Issue")), note);
  return form;
}

async function configSection(boxId) {
  const doc = await api(`/api/v1/boxes/${encodeURIComponent(boxId)}/config-versions`);
  const out = el("pre", { id: "config-diff", class: "diff" });
  const options = () => [el("option", { value: 0 }, t("(empty)")), ...doc.versions.map((v) => el("option", { value: v.version }, v.version))];
  const from = el("select", { name: "from" }, options()), to = el("select", { name: "to" }, options());
  if (doc.versions.length) to.value = doc.versions[0].version;
  if (doc.versions.length > 1) from.value = doc.versions[1].version;
  const form = el("form", { class: "filters", onsubmit: async (e) => {
    e.preventDefault();
    try {
      const d = await api(`/api/v1/boxes/${encodeURIComponent(boxId)}/config-diff?from=${from.value}&to=${to.value}`);
      out.textContent = d.diff || t("No difference.");
    } catch (err) { out.textContent = String(err.message || err); }
  } }, t("From"), from, t("to"), to, el("button", { type: "submit" }, t("Show the difference")));
  return el("section", { id: "config-versions" }, el("h2", {}, t("Configuration versions")),
    el("p", {}, t("The box reports version {n}.", { n: doc.reported })),
    doc.versions.length ? el("table", {}, el("thead", {}, el("tr", {}, [t("Version"), t("State"), t("Sent"), t("By")].map((h) => el("th", {}, h)))),
      el("tbody", {}, doc.versions.map((v) => el("tr", { "data-version": v.version }, el("td", { class: "num" }, v.version),
        el("td", {}, commandState(v.state)), el("td", {}, fmtAbs(v.at)), el("td", {}, v.issued_by))))) : el("p", { class: "muted" }, t("No configuration sent yet.")),
    me && me.role === "admin" && doc.versions.length ? [form, out] : null);
}

async function refreshCommands(boxId) {
  const body = document.getElementById("commands-body");
  if (!body) return;
  const doc = await api(`/api/v1/boxes/${encodeURIComponent(boxId)}/commands`);
  body.replaceChildren(...commandRows(doc));
  const key = document.getElementById("box-key");
  if (key) key.hidden = doc.has_key;
}

async function commandsView(view, boxId) {
  const doc = await api(`/api/v1/boxes/${encodeURIComponent(boxId)}/commands`);
  const heads = [t("Seq"), t("Command"), t("State"), t("Issued"), t("Last change"), t("By"), t("Result"), t("Bundle")];
  view.replaceChildren(
    el("h2", {}, el("a", { href: `#/box/${encodeURIComponent(boxId)}` }, boxId), " · ", t("Remote commands")),
    el("p", { id: "box-key", class: "muted", hidden: doc.has_key }, t("The box has not announced its inbound key yet: commands wait for its next birth.")),
    me && me.role !== "viewer" ? issueForm(boxId, () => refreshCommands(boxId)) : el("p", { class: "muted" }, t("Viewers read commands; an operator or admin issues them.")),
    el("section", {}, el("table", { id: "commands" }, el("thead", {}, el("tr", {}, heads.map((h) => el("th", {}, h)))),
      el("tbody", { id: "commands-body" }, commandRows(doc)))),
    await configSection(boxId));
  document.getElementById("issue-kind")?.dispatchEvent(new Event("change"));
}

// -- rollouts ---------------------------------------------------------------------------------------------
function rolloutTable(r) {
  return el("table", { class: "rollout", "data-rollout": r.id, "data-state": r.state },
    el("caption", {}, t("Rollout {id}: {kind}, {state}, {issued} of {total} issued", { id: r.id, kind: kindName(r.kind), state: commandState(r.state), issued: r.issued, total: r.total }),
      r.detail ? ` — ${r.detail}` : ""),
    el("thead", {}, el("tr", {}, [t("Wave"), t("Box"), t("State"), t("Last change")].map((h) => el("th", {}, h)))),
    el("tbody", {}, r.boxes.map((b) => el("tr", { "data-box": b.box_id, "data-state": b.state },
      el("td", { class: "num" }, b.wave === 0 ? t("canary") : b.wave), el("td", {}, el("a", { href: `#/commands/${encodeURIComponent(b.box_id)}` }, b.box_id)),
      el("td", { class: `cmd-state s-${b.state}` }, commandState(b.state)), el("td", {}, b.updated_at ? fmtAbs(b.updated_at) : "–")))));
}

function rolloutForm(onStarted) {
  const note = el("span", { class: "muted" });
  const kind = el("select", { name: "kind", onchange: () => fields.replaceChildren(...argFields(kind.value)) },
    ["config", "update"].map((k) => el("option", { value: k }, kindName(k))));
  const fields = el("span", { class: "args" }, argFields("config"));
  const form = el("form", { id: "rollout-form", class: "filters", onsubmit: async (e) => {
    e.preventDefault();
    const group = form.elements.group.value.trim();
    const body = { kind: kind.value, args: argsOf(form, kind.value), canary: Number(form.elements.canary.value), wave_size: Number(form.elements.wave.value) };
    if (group.includes(",") || group.includes(" ")) body.boxes = group.split(/[\s,]+/).filter(Boolean); else body.site = group;
    try { const r = await post("/api/v1/rollouts", body); note.className = "muted"; note.textContent = t("Rollout {id} started.", { id: r.id }); onStarted(); }
    catch (err) { note.className = "error"; note.textContent = String(err.message || err); }
  } }, kind, el("label", {}, t("Site, or boxes separated by commas"), " ", el("input", { name: "group", required: true })),
  el("label", {}, t("Canary"), " ", el("input", { name: "canary", type: "number", min: 1, max: 10, value: 1 })),
  el("label", {}, t("Wave size"), " ", el("input", { name: "wave", type: "number", min: 1, max: 100, value: 5 })),
  fields, el("button", { type: "submit" }, t("Start the rollout")), note);
  return form;
}

async function refreshRollouts() {
  const list = document.getElementById("rollouts");
  if (!list) return;
  const doc = await api("/api/v1/rollouts");
  list.replaceChildren(...(doc.rollouts.length ? doc.rollouts.map(rolloutTable) : [el("p", { class: "muted" }, t("No rollout yet."))]));
}

async function rolloutsView(view) {
  view.replaceChildren(el("h2", {}, t("Rollouts")),
    el("p", { class: "muted" }, t("A configuration or update goes to the canary first, then in waves; the rollout stops at the first box that does not succeed.")),
    me && me.role === "admin" ? rolloutForm(refreshRollouts) : null, el("section", { id: "rollouts" }));
  await refreshRollouts();
}
