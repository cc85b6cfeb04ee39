// A run's page: kept up to date by the server's events (/api/run/ID/events), which send
// only what changed. Any key may be missing (an older or half-written status file): each
// panel shows what is there and hides itself otherwise. Values go in as text, never HTML.
"use strict";

const RUN = document.querySelector('meta[name="satlab-run"]').content;
const CSRF = document.querySelector('meta[name="satlab-csrf"]').content;
const PLOT_CONFIG = {displaylogo: false, responsive: true};
const page = {methods: [], metrics: {}, view: {}, revision: 0};

const $ = (id) => document.getElementById(id);
const isNum = (v) => typeof v === "number" && isFinite(v);
const list = (v) => (Array.isArray(v) ? v : []);
const obj = (v) => (v && typeof v === "object" && !Array.isArray(v) ? v : {});
const str = (v) => (typeof v === "string" ? v : v == null ? "" : String(v));
// Plotly reads a few tags in its labels: names from the run's files are escaped into text
const plain = (v) => str(v).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
const show = (id, yes) => { $(id).hidden = !yes; };
const fmt = (v, digits = 3) => (isNum(v) ? Number(v.toPrecision(digits)).toString() : "–");

function layout(title, extra = {}) {
  return Object.assign({
    title: {text: title, font: {size: 13}, x: 0.01, xanchor: "left", y: 0.98, yanchor: "top"},
    margin: {l: 60, r: 20, t: 50, b: 45},
    legend: {orientation: "h", y: -0.18},
    datarevision: page.revision,
    uirevision: "keep", // zoom and pan survive updates
  }, extra);
}

function plot(id, traces, lay) {
  Plotly.react($(id), traces, lay, PLOT_CONFIG);
}

function safely(what, fn) {
  try {
    fn();
  } catch (err) { // one broken panel must not take the page down
    console.error(`satlab view: ${what}:`, err);
  }
}

// --- training curves ---------------------------------------------------------------

const COLUMNS = ["x", "epoch", "step", "loss", "accuracy", "rig_queries", "rig_seconds", "wall_seconds"];

function mergeMetrics(changes) {
  for (const [method, cols] of Object.entries(obj(changes))) {
    const have = page.metrics[method];
    const start = isNum(cols.start) ? cols.start : 0;
    if (!have || start === 0 || start !== have.x.length) {
      page.metrics[method] = Object.fromEntries(COLUMNS.map((c) => [c, list(cols[c]).slice()]));
    } else {
      for (const c of COLUMNS) have[c].push(...list(cols[c]));
    }
  }
}

function drawMetrics() {
  const methods = page.methods.filter((m) => page.metrics[m]);
  for (const m of Object.keys(page.metrics)) if (!methods.includes(m)) methods.push(m);
  for (const [id, column, title, axis] of [
    ["loss-plot", "loss", "training loss", "loss"],
    ["accuracy-plot", "accuracy", "training accuracy (batch)", "accuracy"],
  ]) {
    const traces = methods.map((m) => ({
      type: "scatter", mode: "lines", name: plain(m),
      x: page.metrics[m].x, y: page.metrics[m][column],
      customdata: page.metrics[m].epoch,
      hovertemplate: `${plain(m)}: step %{x} (epoch %{customdata}) ${axis} %{y}<extra></extra>`,
    }));
    const empty = traces.length ? [] : [{text: "no metrics yet", showarrow: false, xref: "paper",
      yref: "paper", x: 0.5, y: 0.5, font: {size: 14, color: "#57606a"}}];
    plot(id, traces, layout(title, {xaxis: {title: {text: "step"}}, yaxis: {title: {text: axis}},
      annotations: empty}));
  }
}

// --- status: header, rig, controls, readout, knobs, instruments, commands ------------

function drawHeader(view) {
  const status = obj(view.status);
  const state = str(view.state) || "unknown";
  const badge = $("state");
  badge.textContent = state;
  badge.className = `state ${state}`;
  const parts = [];
  if (status.method) parts.push(`${status.method}${status.estimator ? ` (${status.estimator})` : ""}`);
  if (isNum(status.epoch)) {
    parts.push(`epoch ${status.epoch + 1}${isNum(status.epochs) ? `/${status.epochs}` : ""}`);
  }
  if (isNum(status.step)) { // the last step done, counted from 0: shown counted from 1
    parts.push(`step ${status.step + 1}${isNum(status.steps_per_epoch) ? `/${status.steps_per_epoch}` : ""}`);
  }
  if (isNum(status.loss)) parts.push(`loss ${fmt(status.loss, 4)}`);
  if (isNum(status.accuracy)) parts.push(`accuracy ${(100 * status.accuracy).toFixed(1)}%`);
  if (isNum(status.rig_queries)) parts.push(`${status.rig_queries} rig queries`);
  if (isNum(status.rig_seconds)) parts.push(`${fmt(status.rig_seconds)} s at the rig`);
  if (isNum(status.wall_seconds)) parts.push(`${fmt(status.wall_seconds)} s wall`);
  if (isNum(status.updated)) parts.push(`updated ${ago(status.updated)}`);
  $("progress").textContent = parts.join(" · ");
  $("note").textContent = str(view.note);
  show("note", Boolean(view.note));
  $("error").textContent = status.error ? `error: ${status.error}` : "";
  show("error", Boolean(status.error));
  const stop = $("stop");
  stop.hidden = !view.can_stop;
  if (!view.can_stop) {
    stop.disabled = false;
    const result = $("stop-result");
    if (result.textContent.startsWith("stop requested")) result.textContent = `stopped on request (${state})`;
  }
}

function ago(seconds) {
  const s = Math.max(0, Date.now() / 1000 - seconds);
  return s < 90 ? `${Math.round(s)} s ago` : s < 5400 ? `${Math.round(s / 60)} min ago`
    : new Date(seconds * 1000).toLocaleString();
}

function drawLayers(layers) {
  const named = layers.map((l, i) => plain(l.name || `layer ${i}`));
  const queries = layers.map((l) => (isNum(l.queries) ? l.queries : null));
  const seconds = layers.map((l) => (isNum(l.rig_seconds) ? l.rig_seconds : null));
  plot("layers-plot", [
    {type: "bar", name: "rig queries", x: named, y: queries, xaxis: "x", yaxis: "y"},
    {type: "bar", name: "rig seconds", x: named, y: seconds, xaxis: "x2", yaxis: "y2"},
  ], layout("rig queries and rig time per layer", {
    grid: {rows: 1, columns: 2, pattern: "independent"},
    yaxis: {title: {text: "queries"}}, yaxis2: {title: {text: "s"}},
  }));
  const powered = layers.filter((l) => l.power && (isNum(l.power.used) || isNum(l.power.budget)));
  show("power-plot", powered.length > 0);
  if (powered.length) {
    const unit = plain(powered[0].power.unit || "W");
    const names = powered.map((l, i) => plain(l.name || `layer ${i}`));
    const used = powered.map((l) => (isNum(l.power.used) ? l.power.used : null));
    const budget = powered.map((l) => (isNum(l.power.budget) ? l.power.budget : null));
    const colours = powered.map((l) => (isNum(l.power.used) && isNum(l.power.budget)
      && l.power.used > 0.9 * l.power.budget ? "#c62828" : "#2e7d32"));
    plot("power-plot", [
      {type: "bar", name: "budget", x: names, y: budget, marker: {color: "#d0d4da"}},
      {type: "bar", name: "in use", x: names, y: used, marker: {color: colours}, width: 0.4},
    ], layout(`power in use vs budget (${unit})`, {barmode: "overlay", yaxis: {title: {text: unit}}}));
  }
}


function drawControls(layers) {
  const box = $("controls");
  const shown = layers.filter((l) => l.controls && list(l.controls.fraction).length);
  while (box.children.length > shown.length) {
    Plotly.purge(box.lastChild);
    box.lastChild.remove();
  }
  shown.forEach((l, i) => {
    let div = box.children[i];
    if (!div) {
      div = document.createElement("div");
      div.className = "plot";
      div.id = `controls-${i}`;
      box.append(div);
    }
    const c = l.controls;
    const f = list(c.fraction);
    const [rows, cols] = isNum(c.rows) && isNum(c.cols) && c.rows * c.cols === f.length
      ? [c.rows, c.cols] : [1, f.length];
    const z = Array.from({length: rows}, (_, r) => f.slice(r * cols, (r + 1) * cols));
    const atLimit = f.filter((v) => isNum(v) && (v <= 0.001 || v >= 0.999)).length;
    const unit = plain(l.unit || "");
    const range = isNum(c.lower) && isNum(c.upper) ? ` in [${fmt(c.lower)}, ${fmt(c.upper)}] ${unit}` : "";
    const span = isNum(c.min) && isNum(c.max) ? `; now ${fmt(c.min)} … ${fmt(c.max)} ${unit}` : "";
    plot(div.id, [{
      type: "heatmap", z, zmin: 0, zmax: 1, colorscale: "Viridis",
      colorbar: {title: {text: "0: lower<br>1: upper"}, thickness: 12},
      hovertemplate: "row %{y}, col %{x}: %{z:.3f} of the range<extra></extra>",
    }], layout(`${plain(l.name || `layer ${i}`)}: ${plain(l.quantity || "controls")}${range}`
      + `${span}<br><sub>${atLimit} of ${f.length} at a limit</sub>`, {
      yaxis: {autorange: "reversed", title: {text: "row"}}, xaxis: {title: {text: "column"}},
      margin: {l: 50, r: 20, t: 60, b: 45},
    }));
  });
  show("controls-section", shown.length > 0);
}

function drawDetectors(detectors) {
  const entries = Object.entries(detectors).filter(([, d]) => list(d.values).length);
  show("detectors-plot", entries.length > 0);
  if (!entries.length) return false;
  const unit = plain(entries[0][1].unit || "W");
  plot("detectors-plot", entries.map(([name, d]) => ({
    type: "bar", name: plain(name), x: list(d.values).map((_, i) => i), y: list(d.values),
  })), layout(`last detector readings (${unit})`, {
    xaxis: {title: {text: "channel"}, dtick: 1}, yaxis: {title: {text: unit}, exponentformat: "SI"},
  }));
  return true;
}

function drawKnobs(layers) {
  const knobs = [];
  layers.forEach((l, i) => list(l.knobs).forEach((k) => knobs.push({layer: l.name || `layer ${i}`, ...k})));
  show("knobs-section", knobs.length > 0);
  if (!knobs.length) return;
  const labels = knobs.map((k) => plain(`${k.layer}: ${str(k.positioner)} ${str(k.axis)}`));
  const travel = knobs.map((k) => (list(k.travel).length === 2 ? k.travel : [null, null]));
  plot("knobs-plot", [
    {type: "bar", orientation: "h", name: "travel", y: labels, base: travel.map((t) => t[0]),
      x: travel.map((t) => (isNum(t[0]) && isNum(t[1]) ? t[1] - t[0] : null)),
      marker: {color: "#d0d4da"}, hoverinfo: "skip"},
    {type: "scatter", mode: "markers", name: "position", y: labels,
      x: knobs.map((k) => (isNum(k.position) ? k.position : null)),
      marker: {size: 12, color: "#0b5cad", symbol: "diamond"}},
  ], layout("alignment knobs: position within their travel", {
    margin: {l: 220, r: 20, t: 40, b: 45}, xaxis: {title: {text: "position"}},
  }));
}

function fillTable(id, rows, columns, rowClass) {
  const body = document.querySelector(`#${id} tbody`);
  body.replaceChildren();
  for (const row of rows) {
    const tr = body.insertRow();
    if (rowClass && rowClass(row)) tr.className = rowClass(row);
    for (const column of columns) tr.insertCell().textContent = column(row);
  }
}

function drawInstruments(instruments) {
  const rows = Object.entries(instruments);
  show("instruments-section", rows.length > 0);
  fillTable("instruments", rows, [([n]) => n, ([, i]) => str(i.identity), ([, i]) => str(i.fault)],
    ([, i]) => (i.fault ? "fault" : ""));
}

function drawCommands(commands) {
  show("commands-section", commands.length > 0);
  const time = (c) => (isNum(c.time) ? new Date(c.time * 1000).toLocaleTimeString(undefined, {
    hour12: false, hour: "2-digit", minute: "2-digit", second: "2-digit", fractionalSecondDigits: 3,
  }) : "");
  fillTable("commands", commands, [time, (c) => str(c.instrument), (c) => str(c.action),
    (c) => str(c.value)]);
}

function drawStatus(view) {
  page.view = view;
  const status = obj(view.status);
  const layers = list(status.layers).map(obj);
  safely("header", () => drawHeader(view));
  safely("layers", () => { show("rig", layers.length > 0); if (layers.length) drawLayers(layers); });
  safely("controls", () => drawControls(layers));
  let readout = false;
  safely("detectors", () => { readout = drawDetectors(obj(status.detectors)); });
  show("readout", readout || !$("camera").hidden);
  safely("knobs", () => drawKnobs(layers));
  safely("instruments", () => drawInstruments(obj(status.instruments)));
  safely("commands", () => drawCommands(list(status.commands).map(obj)));
}

// --- camera frame with its detector regions ----------------------------------------------

function drawFrame(frame) {
  const camera = $("camera");
  camera.hidden = !frame || !frame.url;
  show("readout", !camera.hidden || !$("detectors-plot").hidden);
  if (camera.hidden) return;
  const img = $("frame");
  const regions = list(frame.regions).filter((r) => list(r).length === 4 && r.every(isNum));
  const outline = () => {
    const rows = isNum(frame.rows) ? frame.rows : img.naturalHeight;
    const cols = isNum(frame.cols) ? frame.cols : img.naturalWidth;
    const svg = $("regions");
    svg.setAttribute("viewBox", `0 0 ${cols || 1} ${rows || 1}`);
    svg.replaceChildren();
    regions.forEach(([r0, c0, r1, c1], i) => {
      const rect = document.createElementNS("http://www.w3.org/2000/svg", "rect");
      rect.setAttribute("x", c0);
      rect.setAttribute("y", r0);
      rect.setAttribute("width", Math.max(c1 - c0, 0));
      rect.setAttribute("height", Math.max(r1 - r0, 0));
      const label = document.createElementNS("http://www.w3.org/2000/svg", "text");
      label.setAttribute("x", c0);
      label.setAttribute("y", r0 - 1);
      label.setAttribute("font-size", Math.max((rows || 100) / 40, 2));
      label.textContent = String(i);
      svg.append(rect, label);
    });
  };
  img.onload = outline;
  if (img.getAttribute("src") !== frame.url) img.src = frame.url;
  else outline();
  const size = isNum(frame.rows) && isNum(frame.cols) ? ` (${frame.rows}×${frame.cols} px)` : "";
  $("camera-caption").textContent = `${str(frame.instrument) || "camera"}: last frame${size}, `
    + `${regions.length} detector regions`;
}

// --- results: summaries and plots ---------------------------------------------------

function drawResults(summaries, images) {
  if (summaries !== undefined) page.summaries = obj(summaries);
  if (images !== undefined) page.images = list(images);
  const rows = Object.entries(obj(page.summaries)).filter(([, s]) => s);
  fillTable("summaries", rows, [
    ([m]) => m, ([, s]) => str(s.estimator),
    ([, s]) => (isNum(s.test_accuracy) ? `${(100 * s.test_accuracy).toFixed(2)}%` : ""),
    ([, s]) => str(s.test_images), ([, s]) => str(s.rig_queries),
    ([, s]) => (isNum(s.rig_seconds) ? `${fmt(s.rig_seconds)} s` : ""),
    ([, s]) => (isNum(s.wall_seconds) ? `${fmt(s.wall_seconds)} s` : ""),
  ]);
  const box = $("images");
  if (images !== undefined) {
    box.replaceChildren(...list(page.images).filter((i) => i && i.url).map((i) => {
      const figure = document.createElement("figure");
      const img = document.createElement("img");
      img.src = i.url;
      img.alt = str(i.name);
      const caption = document.createElement("figcaption");
      caption.textContent = str(i.name);
      figure.append(img, caption);
      return figure;
    }));
  }
  show("results", rows.length > 0 || box.children.length > 0);
}

// --- events -------------------------------------------------------------------------------

function apply(change) {
  page.revision += 1;
  if (change.reset) page.metrics = {};
  if (Array.isArray(change.methods)) page.methods = change.methods.map(str);
  if (change.metrics || change.reset || change.methods) {
    mergeMetrics(change.metrics);
    safely("metrics", drawMetrics);
  }
  if (change.status) drawStatus(obj(change.status));
  if ("frame" in change) safely("camera", () => drawFrame(change.frame));
  if ("summaries" in change || "images" in change) {
    safely("results", () => drawResults(change.summaries, change.images));
  }
}

function connect() {
  const source = new EventSource(`/api/run/${encodeURIComponent(RUN)}/events`);
  source.addEventListener("update", (event) => {
    let change;
    try {
      change = JSON.parse(event.data);
    } catch (err) {
      console.error("satlab view: an unreadable event", err);
      return;
    }
    apply(obj(change));
  });
  source.onopen = () => show("connection", false);
  source.onerror = () => {
    $("connection").textContent = "connection to the server lost; reconnecting…";
    show("connection", true);
  };
}

async function stop() {
  const button = $("stop");
  const ok = window.confirm(`Stop run ${RUN} at its next step (or, while it evaluates, at the `
    + "next evaluation point)?\n\nThe rig is put in its safe state and the checkpoint is kept: "
    + "satlab train --resume continues the run.");
  if (!ok) return;
  button.disabled = true;
  const result = $("stop-result");
  try {
    const response = await fetch(`/api/run/${encodeURIComponent(RUN)}/stop`, {
      method: "POST", credentials: "same-origin", headers: {"X-Satlab-CSRF": CSRF},
    });
    const body = await response.json().catch(() => ({}));
    result.textContent = response.ok ? "stop requested: the run stops at its next step "
      + "(or, while it evaluates, at the next evaluation point)"
      : `not stopped: ${str(body.error) || response.status}`;
    if (!response.ok) button.disabled = false;
  } catch (err) {
    result.textContent = `not stopped: ${err.message}`;
    button.disabled = false;
  }
}

$("stop").addEventListener("click", stop);
setInterval(() => { // "updated N s ago"
  if (page.view.state !== undefined) safely("header", () => drawHeader(page.view));
}, 1000);
connect();
