// Blind rating: one pair at a time for the rater this link belongs to. The server holds the
// key and every verdict given so far, so reopening the link resumes where the rater stopped.
"use strict";

const token = new URLSearchParams(location.search).get("token") || "";
const API = `../rating/${encodeURIComponent(token)}`;
const $ = (id) => document.getElementById(id);
let current = null;
let busy = false;

async function call(path, body) {
  const response = await fetch(`${API}/${path}`, body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  const data = await response.json();
  if (!response.ok) throw new Error(data.error ? data.error.message : response.statusText);
  return data;
}

function show(state) {
  current = state.next;
  $("progress").textContent = `${state.done} / ${state.total} rated (${state.rater})`;
  document.body.dataset.done = String(state.done);
  $("pair").hidden = current === null;
  $("finished").hidden = current !== null;
  $("undo").disabled = state.last === null;
  if (current) {
    $("question").textContent = current.question;
    $("answer-1").textContent = current.answer_1;
    $("answer-2").textContent = current.answer_2;
    $("comment").value = "";
  }
  document.body.dataset.ready = "true";
}

async function act(path, body) {
  if (busy) return;
  busy = true;
  $("error").textContent = "";
  try {
    show(await call(path, body));
  } catch (err) {
    $("error").textContent = err.message;
  } finally {
    busy = false;
  }
}

function choose(choice) {
  if (!current) return;
  act("verdict", { pair_id: current.pair_id, preferred: choice, comment: $("comment").value });
}

for (const button of document.querySelectorAll("[data-choice]")) {
  button.addEventListener("click", () => choose(button.dataset.choice));
}
$("undo").addEventListener("click", () => act("undo", {}));
document.addEventListener("keydown", (event) => {
  if (event.target === $("comment") || event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key.toLowerCase();
  if (key === "1" || key === "2") choose(key);
  else if (key === "t") choose("tie");
  else if (key === "u") act("undo", {});
});

call("state").then(show).catch((err) => { $("error").textContent = err.message; });
