"use strict";
// The fleet page: one snapshot from /api/fleet, then live snapshots from /api/events (server-sent events).
// Everything is drawn here from those snapshots; no framework, no CDN.
const STATES = ["idle", "queued", "in_progress", "succeeded", "failed", "timed_out", "rejected", "canceled", "offline"];
const COLORS = { queued: "#9bb7e0", in_progress: "#3a7bd5", succeeded: "#2ea043", failed: "#d73a49", timed_out: "#a22", canceled: "#e3b341" };
let selected = null;
let last = null;

function el(tag, attrs = {}, text = "") {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text) e.textContent = text;
  return e;
}

function legend() {
  const box = document.getElementById("legend");
  for (const s of STATES) {
    const item = el("span");
    item.appendChild(el("i", { class: "s-" + s }));
    item.appendChild(document.createTextNode(s.replace("_", " ")));
    box.appendChild(item);
  }
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
  for (const status of ["succeeded", "in_progress", "queued", "failed", "timed_out", "canceled"]) {
    const above = history.map((p, i) => below[i] + (p.counts[status] || 0));
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
    const total = Object.values(d.counts).reduce((a, b) => a + b, 0);
    const card = el("div", { class: "deployment", "data-deployment": d.id, "data-status": d.status });
    const counts = Object.entries(d.counts).map(([k, v]) => `${k.toLowerCase()} ${v}`).join(" · ");
    card.appendChild(el("div", {}, `${d.target} — ${d.status} — ${counts || "no executions"}${d.reason ? " — " + d.reason : ""}`));
    const bar = el("div", { class: "bar" });
    for (const [status, n] of Object.entries(d.counts)) {
      const seg = el("span", { class: "s-" + status.toLowerCase(), title: `${status} ${n}` });
      seg.style.width = (100 * n) / Math.max(total, 1) + "%";
      bar.appendChild(seg);
    }
    card.appendChild(bar);
    card.appendChild(progressChart(d.history, total));
    box.appendChild(card);
  }
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
  if (existing.length === expected && box.dataset.groups === [...byGroup.keys()].join("|")) {
    const index = new Map(devices.map((d) => [d.thing, d]));
    for (const tile of existing) {
      const d = index.get(tile.dataset.thing);
      if (d && tile.dataset.state !== d.state) {
        tile.dataset.state = d.state;
        tile.className = "tile s-" + d.state;
        tile.title = `${d.thing}: ${d.state}`;
      }
    }
    return;
  }
  box.replaceChildren();
  box.dataset.groups = [...byGroup.keys()].join("|");
  for (const [group, members] of [...byGroup.entries()].sort()) {
    const section = el("div", { class: "group", "data-group": group });
    section.appendChild(el("h3", {}, `${group} (${members.length})`));
    section.appendChild(el("div", { class: "dim telemetry", "data-group-telemetry": group }, ""));
    const tiles = el("div", { class: "tiles" });
    for (const d of members) {
      const tile = el("div", { class: "tile s-" + d.state, "data-thing": d.thing, "data-state": d.state, title: `${d.thing}: ${d.state}` });
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
  const seen = d.lastSeen ? new Date(d.lastSeen * 1000).toLocaleTimeString() : "never";
  const rows = [["thing", d.thing], ["state", d.state], ["groups", d.groups.join(", ")], ["deployment", d.deployment || "-"],
    ["connected", d.connected === null || d.connected === undefined ? "unknown" : String(d.connected)], ["last seen", seen]];
  for (const [k, v] of Object.entries(d.telemetry || {})) rows.push([k, typeof v === "object" ? JSON.stringify(v) : String(v)]);
  const table = el("table", { id: "device-detail" });
  for (const [k, v] of rows) { const tr = el("tr"); tr.appendChild(el("th", {}, k)); tr.appendChild(el("td", {}, v)); table.appendChild(tr); }
  box.appendChild(table);
}

function drawFailures(failures) {
  const body = document.querySelector("#failures tbody");
  body.replaceChildren();
  for (const f of failures) {
    const tr = el("tr");
    for (const v of [f.thing, (f.deployment || "").slice(0, 8), f.status, f.error || "-", (f.cause || "").slice(0, 200)]) tr.appendChild(el("td", {}, v));
    body.appendChild(tr);
  }
}

function draw(snap) {
  last = snap;
  const connected = snap.devices.filter((d) => d.connected).length;
  document.getElementById("summary").textContent =
    `${snap.devices.length} devices, ${connected} connected, ${snap.groups.length} groups, ${snap.deployments.length} deployments`;
  drawDeployments(snap.deployments);
  drawDevices(snap.devices);
  drawDetail();
  drawFailures(snap.failures);
  for (const t of snap.telemetry || []) {
    const line = document.querySelector(`[data-group-telemetry="${CSS.escape(t.group)}"]`);
    if (line) line.textContent = t.reporting
      ? `${t.readings} readings: local ${t.local}, cloud ${t.cloud}, none ${t.none} · pending ${t.pending} · uplink ${t.uplinkMessages} msgs` +
        (Object.keys(t.fallbackErrors).length ? ` · fallback errors ${JSON.stringify(t.fallbackErrors)}` : "")
      : "no telemetry yet";
  }
  document.body.dataset.updated = String(snap.t);
}

legend();
fetch("/api/fleet").then((r) => r.json()).then(draw);
const events = new EventSource("/api/events");
events.onopen = () => { document.getElementById("live").dataset.live = "true"; };
events.onerror = () => { document.getElementById("live").dataset.live = "false"; };
events.onmessage = (e) => draw(JSON.parse(e.data));
