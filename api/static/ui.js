// radflow UI: a little vanilla JS over the JSON API (no build, no CDN). Every read is a GET of
// the API and every action its POST/PUT, so the page shows exactly what the API answers,
// refusals included (409 {"detail": reason}).
"use strict";

// every request carries this header: the API refuses a change made with the session cookie
// without it (a cross-site form cannot set a header), see api/authz.py
const CSRF = { "X-Requested-With": "radflow" };

// ---- shared ------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

function describe(detail, fallback) {
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) return detail.map((d) => [...(d.loc || []).slice(1), d.msg].join(": ")).join("; ");
  return detail ? JSON.stringify(detail) : fallback;
}

async function api(method, path, body) {
  const options = { method, headers: { Accept: "application/json", ...CSRF } };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, options);
  } catch (error) {
    throw new ApiError(0, `radflow did not answer (${error.message})`);
  }
  let data = null;
  try {
    data = await response.json();
  } catch (_) {
    data = null;
  }
  if (response.status === 401) {
    // the session ended (signed out elsewhere, expired): sign in again and come back here
    window.location.assign(`/ui/login?next=${encodeURIComponent(window.location.pathname + window.location.search)}`);
  }
  if (!response.ok) throw new ApiError(response.status, describe(data && data.detail, response.statusText));
  return data;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function pad(n) {
  return String(n).padStart(2, "0");
}

function parseInstant(value) {
  if (!value) return null;
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? null : date;
}

function clock(date) {
  return `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
}

function localTime(value, withSeconds) {
  const date = parseInstant(value);
  if (!date) return value || "";
  const day = `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}`;
  const time = withSeconds ? clock(date) : `${pad(date.getHours())}:${pad(date.getMinutes())}`;
  const today = new Date();
  return date.toDateString() === today.toDateString() ? time : `${day} ${time}`;
}

function age(value) {
  const date = parseInstant(value);
  if (!date) return "";
  const minutes = Math.max(0, Math.round((Date.now() - date.getTime()) / 60000));
  if (minutes < 60) return `${minutes} min ago`;
  const hours = Math.floor(minutes / 60);
  return hours < 48 ? `${hours} h ${minutes % 60} min ago` : `${Math.floor(hours / 24)} days ago`;
}

function localizeTimes(root) {
  for (const node of (root || document).querySelectorAll("time[datetime]")) {
    const iso = node.getAttribute("datetime");
    if (parseInstant(iso)) {
      node.title = iso;
      node.textContent = localTime(iso, true);
    }
  }
}

function personName(xpn) {
  const parts = String(xpn || "").split("^").map((p) => p.trim());
  const rest = parts.slice(1, 3).filter(Boolean).join(" ");
  return parts[0] && rest ? `${parts[0]}, ${rest}` : parts[0] || rest;
}

function isLive(expiresAt) {
  const date = parseInstant(expiresAt);
  return Boolean(date) && date.getTime() > Date.now();
}

// the API says whether a claim is live by its own clock; the browser's is the fallback
function claimLive(reading) {
  if (!reading || !reading.claimed_by) return false;
  return typeof reading.claim_active === "boolean" ? reading.claim_active : isLive(reading.claim_expires_at);
}

// The read models follow the event store a moment behind an action's answer: poll until they
// show it (or give up quietly and let the periodic refresh catch up).
async function until(read, shows, tries = 20) {
  for (let i = 0; i < tries; i += 1) {
    const value = await read();
    if (shows(value)) return value;
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  return null;
}

// ---- who am I: the signed-in user, as the server rendered the page (the API acts as them) ----

function currentUser() {
  return (document.body.dataset.user || "").trim();
}

function setupWhoAmI(_onChange) {}

function requireUser() {
  const user = currentUser();
  if (!user) {
    flash("Sign in first.");
    return null;
  }
  return user;
}

let flashTimer = null;

// the API's reasons carry ISO instants ("claimed by x until 2026-...+00:00"): show local times
function readable(message) {
  return String(message).replace(/\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)/g, (iso) => localTime(iso));
}

function flash(message, kind) {
  const box = document.getElementById("flash");
  box.textContent = readable(message);
  box.className = `flash ${kind || "error"}`;
  box.hidden = false;
  clearTimeout(flashTimer);
  if (kind === "info") flashTimer = setTimeout(() => (box.hidden = true), 5000);
}

function clearFlash() {
  document.getElementById("flash").hidden = true;
}

// ---- reading worklist ----------------------------------------------------------------------

function readingPage() {
  const body = document.getElementById("worklist-rows");
  const updated = document.getElementById("wl-updated");
  let items = [];
  let loading = false;

  async function load() {
    if (loading) return;
    loading = true;
    const query = new URLSearchParams();
    for (const [key, value] of new URLSearchParams(location.search)) if (value) query.set(key, value);
    try {
      const data = await api("GET", `/api/reading/worklist?${query}`);
      items = data.items || [];
      render();
      updated.textContent = `updated ${clock(new Date())}`;
    } catch (error) {
      body.replaceChildren(el("tr", { class: "placeholder" }, el("td", { colspan: 8, text: `Worklist unavailable: ${error.message}` })));
    } finally {
      loading = false;
    }
  }

  function claimCell(item, me) {
    const live = claimLive(item);
    if (!live) return el("span", { class: "muted", text: "not claimed" });
    const mine = item.claimed_by === me;
    return el("span", { class: `badge ${mine ? "claimed-me" : "claimed-other"}`, "data-claimed-by": item.claimed_by },
      `${mine ? "claimed by you" : `claimed by ${item.claimed_by}`} until ${localTime(item.claim_expires_at)}`);
  }

  function flags(item) {
    const out = [];
    if (item.turnaround_breached) out.push(el("span", { class: "badge breach", title: `due ${item.turnaround_due_at || ""}` }, "SLA breached"));
    else if (item.turnaround_due_at) out.push(el("span", { class: "muted" }, `due ${localTime(item.turnaround_due_at)}`));
    if (item.critical) {
      const label = typeof item.critical === "string" ? `critical · ${item.critical}` : "critical";
      out.push(el("span", { class: "badge critical" }, label));
    }
    if (item.report_status) out.push(el("span", { class: `badge status status-${item.report_status}` }, item.report_status));
    return el("div", { class: "flags" }, out);
  }

  function priors(item) {
    const list = item.priors || [];
    if (!list.length) return el("span", { class: "muted", text: "none" });
    return el("details", { class: "priors" },
      el("summary", {}, `${list.length} prior${list.length > 1 ? "s" : ""}`),
      list.map((p) => el("div", { class: "prior" },
        el("a", {
          // a study the PACS holds without an exam here has no exam page: its index entry
          href: p.kind === "study"
            ? `/api/studies/${encodeURIComponent(p.study_instance_uid)}`
            : `/ui/exams/${encodeURIComponent(p.accession)}`,
        }, (p.procedure && (p.procedure.text || p.procedure.code)) || p.accession || "study"),
        ` ${p.modality || ""} · ${localTime(p.completed_at) || "not completed"} · ${p.report_status || p.state || ""}`,
        p.impression ? el("div", { class: "impression" }, p.impression) : null)));
  }

  function row(item, me) {
    const live = claimLive(item);
    const mine = live && item.claimed_by === me;
    const href = `/ui/exams/${encodeURIComponent(item.accession)}`;
    const procedure = item.procedure || {};
    const patient = item.patient || {};
    return el("tr", { "data-accession": item.accession, class: item.priority === "STAT" ? "is-stat" : "" },
      el("td", { "data-label": "Priority" }, el("span", { class: `badge prio prio-${item.priority}` }, item.priority)),
      el("td", { "data-label": "Patient" },
        el("div", { class: "patient-name" }, personName(patient.name)),
        el("div", { class: "muted" }, patient.id || "")),
      el("td", { "data-label": "Procedure" },
        el("a", { href }, procedure.text || procedure.code || item.accession),
        el("div", { class: "muted" }, [item.accession, item.modality, item.body_part, item.referring_service].filter(Boolean).join(" · "))),
      el("td", { "data-label": "Completed" },
        el("div", { class: "nowrap" }, localTime(item.completed_at)),
        el("div", { class: "muted" }, age(item.completed_at))),
      el("td", { "data-label": "Reading", class: "claim-cell" }, claimCell(item, me)),
      el("td", { "data-label": "Flags" }, flags(item)),
      el("td", { "data-label": "Priors" }, priors(item)),
      el("td", {}, el("div", { class: "row-actions" },
        mine
          ? el("button", { type: "button", class: "small secondary", "data-action": "release", onclick: () => act("release", item) }, "Release")
          : el("button", { type: "button", class: "small", "data-action": "claim", onclick: () => act("claim", item) }, "Claim"),
        el("a", { class: "button small secondary", href }, "Open"))));
  }

  function render() {
    const me = currentUser();
    if (!items.length) {
      body.replaceChildren(el("tr", { class: "placeholder" }, el("td", { colspan: 8, text: "Nothing awaits a report." })));
      return;
    }
    body.replaceChildren(...items.map((item) => row(item, me)));
  }

  async function act(action, item) {
    const user = requireUser();
    if (!user) return;
    const payload = action === "claim" ? { user } : { user, reason: "released from the reading worklist" };
    let done = false;
    try {
      const answer = await api("POST", `/api/exams/${encodeURIComponent(item.accession)}/reading/${action}`, payload);
      const reading = (answer && answer.reading) || {};
      flash(action === "claim"
        ? `Claimed ${item.accession}${reading.claim_expires_at ? ` until ${localTime(reading.claim_expires_at)}` : ""}.`
        : `Released ${item.accession}.`, "info");
      done = true;
    } catch (error) {
      flash(`Could not ${action} ${item.accession}: ${error.message.replace(`exam ${item.accession}: `, "")}`);
    }
    if (!done) return load();
    await until(async () => {
      await load();
      return items.find((i) => i.accession === item.accession);
    }, (now) => !now || (action === "claim" ? now.claimed_by === user : now.claimed_by !== user));
  }

  setupWhoAmI(render);
  load();
  setInterval(load, 20000);
}

// ---- exam page: banner, reading, report editor, deliveries, timeline ------------------------

function examPage() {
  const accession = document.body.dataset.accession;
  const code = document.body.dataset.procedureCode;
  const base = `/api/exams/${encodeURIComponent(accession)}`;
  const form = document.getElementById("report-form");
  const sectionsBox = document.getElementById("sections");
  const addendumBox = document.getElementById("addendum-box");
  const saveState = document.getElementById("save-state");
  const criticalBox = document.getElementById("critical");
  let report = { status: "", revisions: [], draft: null, critical: {} };
  let lastSaved = null; // JSON of the sections last saved (or loaded)
  let saveTimer = null;
  let saving = Promise.resolve();
  let busy = false;
  let deliveriesTimer = null;
  let fastUntil = 0;

  function textareas() {
    return [...form.querySelectorAll("textarea")];
  }

  function sections() {
    const out = {};
    for (const area of textareas()) out[area.name] = area.value;
    return out;
  }

  function ensureSection(name) {
    if (form.querySelector(`textarea[name="${CSS.escape(name)}"]`)) return;
    const label = name.charAt(0).toUpperCase() + name.slice(1).replace(/_/g, " ");
    sectionsBox.append(el("label", { class: "section", "data-section": name }, label,
      el("textarea", { name, rows: 3, oninput: scheduleSave })));
  }

  function fillEditor(values) {
    for (const area of textareas()) area.value = values[area.name] || "";
    lastSaved = JSON.stringify(sections());
  }

  async function template() {
    let tpl = report.template;
    if (!tpl || !Object.keys(tpl).length) {
      try {
        tpl = await api("GET", `/api/reporting/templates/${encodeURIComponent(code)}`);
      } catch (_) {
        tpl = {};
      }
    }
    const out = {};
    for (const [key, value] of Object.entries((tpl && tpl.sections) || tpl || {})) if (typeof value === "string") out[key] = value;
    return out;
  }

  function baseRevision() {
    const issued = (report.revisions || []).filter((r) => r.kind !== "addendum");
    return issued.length ? issued[issued.length - 1] : null;
  }

  async function loadReport(refill) {
    report = await fetchReport();
    if (refill) {
      const tpl = await template();
      Object.keys(tpl).forEach(ensureSection);
      const draft = report.draft && report.draft.sections && Object.keys(report.draft.sections).length ? report.draft.sections : null;
      const last = baseRevision();
      Object.keys((draft || (last && last.sections)) || {}).filter((k) => k !== "addendum").forEach(ensureSection);
      fillEditor(draft || (last && last.sections) || tpl);
      if (draft && report.draft.author) saveState.textContent = `draft by ${report.draft.author}`;
    }
    renderReport();
  }

  function renderReport() {
    const status = report.status || "";
    const statusBadge = document.getElementById("report-status");
    statusBadge.textContent = status || "not started";
    statusBadge.className = `badge status status-${status || "none"}`;
    const final = status === "final";
    const enabled = { preliminary: !final, final: !final, addendum: final, correction: final };
    for (const button of form.querySelectorAll("button[data-kind]")) button.disabled = busy || !enabled[button.dataset.kind];
    addendumBox.hidden = !final;
    document.getElementById("signed-hint").hidden = !final;
    renderClaim(report);
    setState(report.exam_state);
    renderPriorImpressions(report.priors || []);
    renderCritical(report.critical || {});
    renderRevisions(report.revisions || []);
  }

  function renderClaim(reading) {
    const me = currentUser();
    const holder = reading.claimed_by;
    const expires = reading.claim_expires_at;
    const live = claimLive(reading);
    const node = document.getElementById("claim-state");
    node.textContent = live
      ? `${holder === me ? "Claimed by you" : `Claimed by ${holder}`} until ${localTime(expires)}`
      : "Not claimed";
    node.className = `claim badge ${live ? (holder === me ? "claimed-me" : "claimed-other") : ""}`;
    document.getElementById("claim").disabled = busy || (live && holder === me);
    document.getElementById("release").disabled = busy || !(live && holder === me);
  }

  function renderCritical(critical) {
    const panel = document.getElementById("critical-panel");
    const state = critical.state || "";
    panel.hidden = !state;
    if (!state) return;
    const contacts = critical.contacts || [];
    const contact = contacts[critical.level || 0] || {};
    const text = document.getElementById("critical-state");
    if (state === "awaiting") {
      text.textContent = critical.exhausted
        ? "Nobody acknowledged: every contact was tried."
        : `Awaiting acknowledgement from ${contact.name || "the referring physician"}${critical.ack_due_at ? ` by ${localTime(critical.ack_due_at)}` : ""}.`;
    } else {
      text.textContent = `Acknowledged${critical.acknowledged_by ? ` by ${critical.acknowledged_by}` : ""}.`;
    }
    document.getElementById("ack").disabled = busy || state !== "awaiting";
  }

  function renderPriorImpressions(priors) {
    for (const prior of priors) {
      const item = document.querySelector(`#priors li[data-accession="${CSS.escape(prior.accession)}"]`);
      if (!item || !prior.impression) continue;
      const box = item.querySelector(".impression") || item.appendChild(el("div", { class: "impression" }));
      box.textContent = prior.impression;
    }
  }

  function renderRevisions(revisions) {
    const list = document.getElementById("revisions");
    if (!revisions.length) {
      list.replaceChildren(el("li", { class: "muted", text: "None yet." }));
      return;
    }
    list.replaceChildren(...revisions.slice().reverse().map((r) => el("li", { "data-kind": r.kind, "data-revision": r.revision },
      el("strong", {}, `${r.kind} (OBR-25 ${r.result_status})`),
      ` by ${r.author} at ${localTime(r.signed_at, true)}`,
      r.critical ? el("span", { class: "badge critical" }, "critical") : null,
      el("pre", {}, r.text || ""))));
  }

  function setState(state) {
    if (!state) return;
    const badge = document.getElementById("exam-state");
    badge.textContent = state;
    badge.className = `badge state state-${state}`;
  }

  function setBusy(value) {
    busy = value;
    renderReport();
  }

  // autosave: a debounced PUT of the draft; "saved hh:mm:ss" when the API confirms
  function scheduleSave() {
    clearTimeout(saveTimer);
    saveState.textContent = "editing…";
    saveTimer = setTimeout(() => {
      saveTimer = null;
      saving = saving.then(saveDraft);
    }, 1200);
  }

  async function saveDraft() {
    const current = sections();
    const snapshot = JSON.stringify(current);
    if (snapshot === lastSaved) {
      saveState.textContent = saveState.textContent === "editing…" ? "" : saveState.textContent;
      return;
    }
    const user = currentUser();
    if (!user) {
      saveState.textContent = "not saved: enter your name under “Who am I”";
      return;
    }
    saveState.textContent = "saving…";
    try {
      const answer = await api("PUT", base + "/report/draft", { user, sections: current });
      lastSaved = snapshot;
      saveState.textContent = `saved ${clock(new Date())}`;
      const reading = (answer && answer.reading) || {};
      if (reading.claimed_by !== undefined) renderClaim(reading);
    } catch (error) {
      saveState.textContent = `not saved: ${error.message}`;
      flash(`Draft not saved: ${error.message}`);
    }
  }

  async function flushSave() {
    if (saveTimer) {
      clearTimeout(saveTimer);
      saveTimer = null;
      saving = saving.then(saveDraft);
    }
    await saving;
  }

  async function fetchReport() {
    try {
      return await api("GET", base + "/report");
    } catch (error) {
      if (error.status !== 404) flash(`Report unavailable: ${error.message}`);
      return { status: "", revisions: [], draft: null, critical: null };
    }
  }

  // an action, then the page once the read model shows its effect (`shows(report)`)
  async function action(label, method, path, payload, shows, after) {
    setBusy(true);
    clearFlash();
    let done = false;
    try {
      const answer = await api(method, path, payload);
      setState(answer && answer.state);
      flash(label, "info");
      done = true;
      await until(fetchReport, (r) => shows(r, answer || {}));
      if (after) await after(answer);
    } catch (error) {
      flash(`Refused: ${error.message.replace(`exam ${accession}: `, "")}`);
    } finally {
      busy = false;
      if (!done || !after) await loadReport(false);
      else renderReport();
      await refreshTimeline();
    }
  }

  async function issue(kind) {
    const user = requireUser();
    if (!user) return;
    await flushSave();
    const all = sections();
    const addendum = (all.addendum || "").trim();
    delete all.addendum;
    const payload = { user, sections: kind === "addendum" ? { addendum } : all, critical: criticalBox.checked };
    const labels = { preliminary: "Preliminary report issued.", final: "Final report signed.", addendum: "Addendum signed.", correction: "Correction signed." };
    const before = (report.revisions || []).length;
    await action(labels[kind], "POST", `${base}/report/${kind}`, payload, (r, answer) => (r.revisions || []).length > before && (!answer.state || r.exam_state === answer.state), async () => {
      criticalBox.checked = false;
      await loadReport(true);
      fastUntil = Date.now() + 60000;
      refreshDeliveries();
    });
  }

  async function refreshTimeline() {
    try {
      const response = await fetch(`/ui/exams/${encodeURIComponent(accession)}/timeline`);
      if (!response.ok) return;
      const box = document.getElementById("timeline");
      box.innerHTML = await response.text();
      localizeTimes(box);
    } catch (_) {
      /* the next action refreshes it */
    }
  }

  async function deliveries() {
    try {
      const data = await api("GET", base + "/deliveries");
      return data.deliveries || data.items || data.messages || (Array.isArray(data) ? data : []);
    } catch (error) {
      if (error.status !== 404) throw error;
      const data = await api("GET", `/api/hl7/outbound?accession=${encodeURIComponent(accession)}`);
      return data.messages || [];
    }
  }

  async function refreshDeliveries() {
    clearTimeout(deliveriesTimer);
    let rows = [];
    try {
      rows = await deliveries();
      renderDeliveries(rows);
    } catch (_) {
      /* shown as it was; tried again below */
    }
    const pending = rows.some((r) => r.status === "queued");
    deliveriesTimer = setTimeout(refreshDeliveries, pending || Date.now() < fastUntil ? 1500 : 15000);
  }

  function renderDeliveries(rows) {
    const body = document.getElementById("deliveries");
    if (!rows.length) {
      body.replaceChildren(el("tr", {}, el("td", { colspan: 3, class: "muted", text: "Nothing sent yet." })));
      return;
    }
    body.replaceChildren(...rows.map((r) => {
      const type = r.message_type || r.type || "";
      const status = r.result_status || r.order_status || "";
      const ack = /(?:^|[\r\n])MSA\|([A-Z]{2})/.exec(r.last_ack || "");
      const tries = r.attempts === 1 ? "1 attempt" : `${r.attempts ?? 0} attempts`;
      const at = localTime(r.finished_at || r.last_attempt_at || r.created_at, true);
      return el("tr", { "data-destination": r.destination, "data-status": r.status, "data-type": type },
        el("td", {}, r.destination),
        el("td", {}, el("span", { class: "nowrap" }, type, status ? ` ${status}` : ""),
          el("div", { class: "muted fine" }, r.control_id || "")),
        el("td", { title: r.last_ack || r.last_error || "" },
          el("span", { class: `delivery-${r.status}` }, r.status),
          el("div", { class: "muted fine" }, [tries, at, ack ? `ACK ${ack[1]}` : ""].filter(Boolean).join(" · ")),
          r.last_error ? el("div", { class: "delivery-error fine" }, r.last_error) : null));
    }));
  }

  for (const area of textareas()) area.addEventListener("input", scheduleSave);
  for (const button of form.querySelectorAll("button[data-kind]")) button.addEventListener("click", () => issue(button.dataset.kind));
  form.addEventListener("submit", (event) => event.preventDefault());
  document.getElementById("claim").addEventListener("click", () => {
    const user = requireUser();
    if (user) action("Claimed.", "POST", `${base}/reading/claim`, { user }, (r) => r.claimed_by === user);
  });
  document.getElementById("release").addEventListener("click", () => {
    const user = requireUser();
    if (user) action("Released.", "POST", `${base}/reading/release`, { user, reason: "released from the exam page" }, (r) => r.claimed_by !== user);
  });
  document.getElementById("ack").addEventListener("click", () => {
    const user = requireUser();
    if (user) action("Critical result acknowledged.", "POST", `${base}/report/critical/acknowledge`, { user, note: document.getElementById("ack-note").value },
      (r) => !r.critical || r.critical.state !== "awaiting");
  });
  // leaving with an autosave pending: send it anyway (keepalive outlives the page)
  window.addEventListener("pagehide", () => {
    const user = currentUser();
    if (!saveTimer || !user || JSON.stringify(sections()) === lastSaved) return;
    fetch(base + "/report/draft", {
      method: "PUT", keepalive: true, headers: { "Content-Type": "application/json", ...CSRF },
      body: JSON.stringify({ user, sections: sections() }),
    });
  });

  setupWhoAmI(renderReport);
  loadReport(true);
  refreshDeliveries();
  setInterval(() => loadReport(false), 20000);
}

localizeTimes(document);
if (document.body.dataset.page === "reading") readingPage();
else if (document.body.dataset.page === "exam") examPage();
else setupWhoAmI(() => {});
