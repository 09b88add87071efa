"use strict";
// The fleet page: the fleet view inlined in the page (or, failing that, /api/fleet) paints it at once; then live views
// from /api/events (server-sent events). Everything is drawn here from those views; no framework, no CDN.
// Device text only ever reaches the DOM as text (textContent, attributes), never as HTML.
const STATES = ["idle", "queued", "in_progress", "succeeded", "failed", "timed_out", "rejected", "canceled", "removed", "offline"];
const COLORS = {
  idle: "#cfd4dc", queued: "#9bb7e0", in_progress: "#3a7bd5", succeeded: "#2ea043", failed: "#d73a49",
  timed_out: "#8b1a2b", rejected: "#f08c3a", canceled: "#e3b341", removed: "#b39ddb", offline: "#1d232b",
};
let selected = null;
let last = null;

function el(tag, attrs = {}, text = "") {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text) e.textContent = text;
  return e;
}

function time(t) {
  return t ? new Date(t * 1000).toLocaleTimeString() : "never";
}

function legend() {
  const box = document.getElementById("legend");
  for (const s of STATES) {
    const item = el("span", { "data-legend": s });
    item.appendChild(el("i", { class: "s-" + s }));
    item.appendChild(document.createTextNode(s.replace("_", " ")));
    box.appendChild(item);
  }
  // beside the states, not one of them: a striped tile is a stand-in (a host process of another platform runs it)
  const standIn = el("div", { id: "legend-stand-in", class: "dim" }, "striped tiles: stand-ins (a process of another platform runs a host build of the same candidate)");
  standIn.hidden = true;
  box.after(standIn);
}

function progressChart(history, total) {
  // counts over time as stacked areas, one per status
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 600 60");
  svg.setAttribute("preserveAspectRatio", "none");
  if (history.length < 2 || !total) return svg;
  const t0 = history[0].t, t1 = history[history.length - 1].t || t0 + 1;
  const x = (t) => ((t - t0) / Math.max(t1 - t0, 1e-9)) * 600;
  let below = history.map(() => 0);
  for (const status of ["succeeded", "in_progress", "queued", "failed", "timed_out", "rejected", "canceled", "removed"]) {
    const above = history.map((p, i) => below[i] + (p.counts[status.toUpperCase()] || 0));
    if (above.every((v, i) => v === below[i])) continue;
    const top = history.map((p, i) => `${x(p.t)},${60 - (above[i] / total) * 60}`);
    const bottom = history.map((p, i) => `${x(p.t)},${60 - (below[i] / total) * 60}`).reverse();
    const poly = document.createElementNS(ns, "polygon");
    poly.setAttribute("points", top.concat(bottom).join(" "));
    poly.setAttribute("fill", COLORS[status] || "#999");
    poly.setAttribute("data-status", status);
    svg.appendChild(poly);
    below = above;
  }
  return svg;
}

function drawDeployments(deployments) {
  const box = document.getElementById("deployments");
  box.replaceChildren();
  if (!deployments.length) box.appendChild(el("p", { class: "dim" }, "no deployment yet"));
  for (const d of deployments.slice().reverse()) {
    const card = el("div", { class: "deployment", "data-deployment": d.id, "data-status": d.status });
    const head = el("div", { class: "head" });
    head.appendChild(el("b", {}, d.name || d.target));
    head.appendChild(el("span", { class: "status" }, d.status));
    head.appendChild(el("span", { class: "dim" }, `${d.target} · created ${time(d.createdAt)}`));
    head.appendChild(el("code", { class: "id", "data-id": d.id }, d.id));
    card.appendChild(head);
    const components = el("ul", { class: "components" });
    for (const c of d.components) {
      const li = el("li", { "data-component": c.name, "data-version": c.version });
      li.appendChild(el("span", { class: "component" }, c.name));
      li.appendChild(el("span", { class: "version" }, c.version));
      components.appendChild(li);
    }
    if (!d.components.length) components.appendChild(el("li", { class: "dim" }, "no components (removes what it deployed)"));
    card.appendChild(components);
    const counts = Object.entries(d.counts).map(([k, v]) => `${k.toLowerCase()} ${v}`).join(" · ");
    const replaced = d.replacedBy ? ` — replaced by ${d.replacedBy.slice(0, 8)}` : "";
    card.appendChild(el("div", { class: "counts" }, `${counts || "no executions"}${d.reason ? " — " + d.reason : ""}${replaced}`));
    const bar = el("div", { class: "bar" });
    for (const [status, n] of Object.entries(d.counts)) {
      const seg = el("span", { class: "s-" + status.toLowerCase(), title: `${status} ${n}` });
      seg.style.width = (100 * n) / Math.max(d.total, 1) + "%";
      bar.appendChild(seg);
    }
    card.appendChild(bar);
    card.appendChild(progressChart(d.history, d.total));
    box.appendChild(card);
  }
}

function setTile(tile, d) {
  tile.dataset.state = d.state;
  tile.className = "tile s-" + d.state + (d.standIn ? " stand-in" : "");
  tile.title = `${d.thing}: ${d.state.replace("_", " ")}` + (d.standIn ? ` (stand-in on ${d.standIn})` : "");
}

function drawDevices(devices) {
  const byGroup = new Map();
  for (const d of devices) for (const g of d.groups.length ? d.groups : ["(no group)"]) {
    if (!byGroup.has(g)) byGroup.set(g, []);
    byGroup.get(g).push(d);
  }
  const box = document.getElementById("groups");
  // update tiles in place when the same devices are shown, so 1,000 tiles don't flicker
  const existing = box.querySelectorAll(".tile");
  const expected = [...byGroup.values()].reduce((a, b) => a + b.length, 0);
  if (existing.length === expected && box.dataset.groups === JSON.stringify([...byGroup.keys()])) {
    const index = new Map(devices.map((d) => [d.thing, d]));
    for (const tile of existing) {
      const d = index.get(tile.dataset.thing);
      if (d && tile.dataset.state !== d.state) setTile(tile, d);
    }
    return;
  }
  box.replaceChildren();
  box.dataset.groups = JSON.stringify([...byGroup.keys()]);
  for (const [group, members] of [...byGroup.entries()].sort()) {
    const section = el("div", { class: "group", "data-group": group });
    section.appendChild(el("h3", {}, `${group} (${members.length})`));
    section.appendChild(el("div", { class: "dim telemetry", "data-group-telemetry": group }, ""));
    const tiles = el("div", { class: "tiles" });
    for (const d of members) {
      const tile = el("div", { "data-thing": d.thing }, d.thing);
      setTile(tile, d);
      tile.addEventListener("click", () => { selected = d.thing; drawDetail(); });
      tiles.appendChild(tile);
    }
    section.appendChild(tiles);
    box.appendChild(section);
  }
}

function drawDetail() {
  const box = document.getElementById("detail");
  const d = last && selected ? last.devices.find((x) => x.thing === selected) : null;
  box.replaceChildren();
  if (!d) { box.appendChild(el("p", { class: "dim" }, "select a device")); return; }
  const t = d.telemetry;
  const rows = [["thing", d.thing], ["state", d.state], ["groups", d.groups.join(", ") || "-"],
    ["platform", Object.values(d.platform).join(" / ") || "-"],
    ["stand-in", d.standIn ? `yes: a ${d.standIn} process runs a host build of the same candidate` : "no"],
    ["last execution", d.lastStatus || "-"],
    ["deployment", d.deploymentId || "-"],
    ["connected", d.connected === null || d.connected === undefined ? "unknown" : String(d.connected)],
    ["last seen (MQTT)", time(d.lastSeen)], ["last telemetry", time(d.lastTelemetryAt)]];
  if (t.windows || t.uplinkMessages) {
    rows.push(["readings", String(t.readings)], ["answered local / cloud / none", `${t.local} / ${t.cloud} / ${t.none}`],
      ["fallback errors", Object.entries(t.fallbackErrors).map(([k, n]) => `${k} ${n}`).join(", ") || "none"],
      ["breaker", t.breaker || "-"], ["component pending (its own outbox)", String(t.componentPending)],
      ["uplink messages", String(t.uplinkMessages)], ["windows", String(t.windows)]);
  }
  const table = el("table", { id: "device-detail" });
  for (const [k, v] of rows) { const tr = el("tr"); tr.appendChild(el("th", {}, k)); tr.appendChild(el("td", {}, v)); table.appendChild(tr); }
  box.appendChild(table);
}

function drawFailures(id, failures) {
  const body = document.querySelector(`#${id} tbody`);
  body.replaceChildren();
  for (const f of failures) {
    const tr = el("tr", { "data-thing": f.thing, "data-deployment": f.deploymentId });
    for (const v of [f.thing, f.deploymentId.slice(0, 8), f.status, f.errorCode || "-", (f.cause || "").slice(0, 600), time(f.failedAt)]) {
      tr.appendChild(el("td", {}, v));
    }
    body.appendChild(tr);
  }
  document.getElementById(id).hidden = !failures.length;
}

function draw(view) {
  last = view;
  const note = document.getElementById("legend-stand-in");
  if (note) note.hidden = !view.devices.some((d) => d.standIn);
  const connected = view.devices.filter((d) => d.connected).length;
  document.getElementById("summary").textContent =
    `${view.devices.length} devices, ${connected} connected, ${view.groups.length} groups, ${view.deployments.length} deployments`;
  drawDeployments(view.deployments);
  drawDevices(view.devices);
  drawDetail();
  drawFailures("failures", view.failures);
  drawFailures("inactive-failures", view.inactiveFailures);
  document.getElementById("no-failures").hidden = view.failures.length > 0;
  for (const t of view.telemetry) {
    const line = document.querySelector(`[data-group-telemetry="${CSS.escape(t.group)}"]`);
    if (line) line.textContent = t.reporting
      ? `${t.readings} readings: local ${t.local}, cloud ${t.cloud}, none ${t.none} · component pending ${t.componentPending}` +
        ` · uplink ${t.uplinkMessages} msgs` +
        (Object.keys(t.fallbackErrors).length ? ` · fallback errors ${Object.entries(t.fallbackErrors).map(([k, n]) => `${k} ${n}`).join(", ")}` : "")
      : "no telemetry yet";
  }
  document.body.dataset.updated = String(view.generatedAt);
}

function listen() {
  const events = new EventSource("/api/events");
  events.onopen = () => { document.getElementById("live").dataset.live = "true"; };
  events.onerror = () => { document.getElementById("live").dataset.live = "false"; };
  events.onmessage = (e) => draw(JSON.parse(e.data));
}

legend();
const initial = document.getElementById("fleet-initial");
if (initial && initial.textContent.trim()) {
  draw(JSON.parse(initial.textContent));  // the first paint: no request, no waiting for the stream
  document.body.dataset.firstPaint = "inline";
  listen();
} else {
  fetch("/api/fleet").then((r) => r.json()).then((view) => { draw(view); document.body.dataset.firstPaint = "fetch"; }).finally(listen);
}
