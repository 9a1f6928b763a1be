// The runs page: every run directory under the server's runs folder with its status, its
// report opened in place, and one item's records across arms side by side.
"use strict";

const $ = (id) => document.getElementById(id);
let opened = null;

async function get(path) {
  const response = await fetch(path);
  const data = await response.json();
  if (!response.ok) throw new Error(data.error ? data.error.message : response.statusText);
  return data;
}

function open(name) {
  opened = name;
  $("opened").hidden = false;
  $("opened-title").textContent = `Report: ${name}`;
  $("report").src = `../runs/${encodeURIComponent(name)}/view/`;
  $("item").hidden = true;
}

async function showItem(event) {
  event.preventDefault();
  $("error").textContent = "";
  try {
    const data = await get(`../runs/${encodeURIComponent(opened)}/item/` +
                           encodeURIComponent($("item-id").value.trim()));
    const table = $("item");
    const fields = [...new Set(data.records.flatMap((r) => Object.keys(r)))];
    table.tHead.textContent = "";
    const head = table.tHead.insertRow();
    for (const field of fields) {
      const th = document.createElement("th");
      th.scope = "col";
      th.textContent = field;
      head.append(th);
    }
    const body = table.tBodies[0];
    body.textContent = "";
    for (const record of data.records) {
      const row = body.insertRow();
      for (const field of fields) {
        const value = record[field];
        row.insertCell().textContent = value === undefined ? "" :
          typeof value === "string" ? value : JSON.stringify(value);
      }
    }
    table.hidden = false;
    table.dataset.count = String(data.records.length);
    if (!data.records.length) $("error").textContent = `no record of item ${data.item_id}`;
    if (data.unreadable) {
      $("error").textContent += ` (${data.unreadable} line(s) of this run's records could not be read)`;
    }
  } catch (err) {
    $("error").textContent = err.message;
  }
}

async function start() {
  try {
    const data = await get("../runs/list");
    $("root").textContent = data.root;
    const body = $("runs").tBodies[0];
    for (const run of data.runs) {
      const row = body.insertRow();
      row.dataset.run = run.name;
      for (const text of [run.name, run.command || "-", String(run.records),
                          run.stages.join(", ") || "-", run.status]) {
        row.insertCell().textContent = text;
      }
      const cell = row.insertCell();
      if (run.report) {
        const button = document.createElement("button");
        button.type = "button";
        button.textContent = `open ${run.report}`;
        button.addEventListener("click", () => open(run.name));
        cell.append(button);
      } else {
        cell.textContent = "none yet";
      }
    }
  } catch (err) {
    $("error").textContent = err.message;
  }
  $("item-form").addEventListener("submit", showItem);
  document.body.dataset.ready = "true";
}

start();
