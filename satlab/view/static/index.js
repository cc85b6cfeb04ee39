// The index: the runs' table, refreshed every 2 s. Every value goes in as text, never as HTML.
"use strict";

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function ago(seconds) {
  if (typeof seconds !== "number") return "";
  const s = Date.now() / 1000 - seconds;
  if (s < 90) return `${Math.max(0, Math.round(s))} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 172800) return `${Math.round(s / 3600)} h ago`;
  return new Date(seconds * 1000).toLocaleDateString();
}

function render(data) {
  const runs = Array.isArray(data.runs) ? data.runs : [];
  const body = document.querySelector("#runs tbody");
  body.replaceChildren();
  for (const run of runs) {
    const row = body.insertRow();
    const link = document.createElement("a");
    link.href = `/run/${encodeURIComponent(run.id)}`;
    link.textContent = run.id;
    row.insertCell().append(link);
    cell(row, (run.methods || []).join(", "));
    const state = cell(row, "");
    const badge = document.createElement("span");
    badge.className = `state ${run.state || ""}`;
    badge.textContent = run.state || "unknown";
    state.append(badge);
    if (run.note) state.title = run.note;
    const when = cell(row, ago(run.updated));
    if (typeof run.updated === "number") when.title = new Date(run.updated * 1000).toLocaleString();
    const acc = Object.entries(run.accuracy || {})
      .map(([m, a]) => `${m} ${(100 * a).toFixed(2)}%`).join(", ");
    cell(row, acc, "num");
  }
  document.getElementById("empty").hidden = runs.length > 0;
}

async function refresh() {
  const note = document.getElementById("note");
  try {
    const response = await fetch("/api/runs", {credentials: "same-origin"});
    if (!response.ok) throw new Error(`the server answered ${response.status}`);
    render(await response.json());
    note.hidden = true;
  } catch (err) {
    note.textContent = `cannot reach the server (${err.message}); retrying`;
    note.hidden = false;
  }
}

refresh();
setInterval(refresh, 2000);
