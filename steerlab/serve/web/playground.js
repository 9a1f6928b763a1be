// The steering playground: the loaded vectors as controls, the same prompt answered unsteered
// and steered side by side (streamed), a multiplier sweep, and each request "copied as" code.
// Everything goes through the server's own API (/v1/models, /v1/chat/completions), so the
// page checks nothing the API does not: its error messages are shown as they come.
"use strict";

const API = "../v1";
let model = null;

const $ = (id) => document.getElementById(id);

function showError(message) {
  $("error").textContent = message || "";
}

async function apiError(response) {
  try {
    const body = await response.json();
    return body.error && body.error.message ? body.error.message : response.statusText;
  } catch (err) {
    return `${response.status} ${response.statusText}`;
  }
}

// An element with attributes and children (text children are set as text, never parsed as
// HTML: vector and condition names come from the server's command line).
function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value !== false && value !== undefined) node.setAttribute(key, value === true ? "" : value);
  }
  node.append(...children);
  return node;
}

function choices(className, label, options) {
  return el("select", { class: className, "aria-label": label },
    ...options.map(([value, text]) => el("option", { value }, text)));
}

function vectorControls(name, info, range) {
  const slider = el("input", { type: "range", class: "multiplier", min: String(range[0]),
    max: String(range[1]), step: "0.5", value: "0", "aria-label": `multiplier of ${name}` });
  const shown = el("output", {}, "0");
  slider.addEventListener("input", () => { shown.value = slider.value; });
  const conditions = Object.keys(model.steering.conditions).map((c) => [c, c]);
  return el("fieldset", { class: "vector", "data-vector": name },
    el("legend", {}, `${name} (${info.method}, layers ${info.layers.join(", ")})`),
    el("label", {}, "Multiplier ", slider, shown),
    el("label", {}, "Layers ", el("input", { class: "layers", placeholder: info.layers.join(","),
      size: "8", "aria-label": `layers of ${name}` })),
    el("label", {}, "Norm ratio ", el("input", { class: "norm-ratio", type: "number", min: "0",
      step: "0.01", placeholder: "none", disabled: !info.norm_ratio,
      "aria-label": `norm ratio of ${name}` })),
    el("label", {}, "Positions ", choices("positions", `positions of ${name}`,
      [["all", "all"], ["prompt", "prompt"], ["generated", "generated"]])),
    el("label", {}, "Intervention ", choices("intervention", `intervention of ${name}`,
      [["add", "add"], ["ablate", "ablate"], ["angular", "angular"]])),
    el("label", {}, "Condition ", choices("condition", `condition of ${name}`,
      [["", "none"], ...conditions])));
}

// The steering terms the controls describe: every vector with a multiplier other than 0 (an
// ablation counts from its strength), exactly as the API's `steering` field takes them.
function steeringTerms() {
  const terms = [];
  for (const box of document.querySelectorAll(".vector")) {
    const multiplier = Number(box.querySelector(".multiplier").value);
    if (multiplier === 0) continue;
    const term = { vector: box.dataset.vector, multiplier };
    const layers = box.querySelector(".layers").value.trim();
    if (layers) term.layers = layers.split(",").map((x) => Number(x.trim()));
    const ratio = box.querySelector(".norm-ratio").value.trim();
    if (ratio) term.norm_ratio = Number(ratio);
    const positions = box.querySelector(".positions").value;
    if (positions !== "all") term.positions = positions;
    const intervention = box.querySelector(".intervention").value;
    if (intervention !== "add") term.intervention = intervention;
    const condition = box.querySelector(".condition").value;
    if (condition) term.condition = condition;
    terms.push(term);
  }
  return terms;
}

function requestBody(steering) {
  const temperature = Number($("temperature").value);
  const body = {
    model: model.id,
    messages: [{ role: "user", content: $("prompt").value }],
    max_tokens: Number($("max-tokens").value),
    temperature,
  };
  if (temperature > 0) body.seed = Number($("seed").value);
  if (steering && steering.length) body.steering = steering;
  return body;
}

// One streamed completion into `target`; resolves with the full text.
async function stream(body, target) {
  target.textContent = "";
  const response = await fetch(`${API}/chat/completions`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ ...body, stream: true }),
  });
  if (!response.ok) throw new Error(await apiError(response));
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      if (!event.startsWith("data: ")) continue;
      const data = event.slice(6);
      if (data === "[DONE]") continue;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
      if (delta && delta.content) target.textContent += delta.content;
    }
  }
  target.dataset.done = "true";
  return target.textContent;
}

function copyAs(body) {
  const json = JSON.stringify(body, null, 2);
  const steering = body.steering || [];
  $("copy-openai").textContent =
    `client.chat.completions.create(\n    model=${JSON.stringify(body.model)},\n` +
    `    messages=${JSON.stringify(body.messages)},\n    max_tokens=${body.max_tokens}, ` +
    `temperature=${body.temperature},\n    extra_body={"steering": ${JSON.stringify(steering)}})`;
  const first = steering[0];
  $("copy-cli").textContent = first
    ? `steerlab generate ${JSON.stringify(body.messages[0].content)} --model ${model.id} ` +
      `--vector <${first.vector}'s file> --multiplier ${first.multiplier}` +
      (first.layers ? ` --layers ${first.layers.join(",")}` : "") +
      (first.norm_ratio ? ` --norm-ratio ${first.norm_ratio}` : "") +
      (first.positions ? ` --positions ${first.positions}` : "") +
      (first.intervention ? ` --intervention ${first.intervention}` : "") +
      (first.condition ? ` --condition <${first.condition}'s file>` : "") +
      ` --max-new-tokens ${body.max_tokens}` +
      (steering.length > 1 ? "   # the CLI takes one vector; the others are in the request" : "")
    : `steerlab generate ${JSON.stringify(body.messages[0].content)} --model ${model.id}`;
  $("copy-python").textContent =
    "import steerlab\nfrom steerlab.steering.setting import Composition, SteeringSetting\n" +
    `model = steerlab.load_model(${JSON.stringify(model.id)})\n` +
    steering.map((t, i) => `v${i} = steerlab.SteeringVector.load("<${t.vector}'s file>")`).join("\n") +
    "\nsteering = Composition((" + steering.map((t, i) =>
      `SteeringSetting(v${i}, ${t.multiplier}` +
      (t.layers ? `, layers=${JSON.stringify(t.layers)}` : "") +
      (t.norm_ratio ? `, norm_ratio=${t.norm_ratio}` : "") +
      (t.positions ? `, positions="${t.positions}"` : "") +
      (t.intervention ? `, intervention="${t.intervention}"` : "") +
      (t.condition ? `, condition=steerlab.Condition.load("<${t.condition}'s file>")` : "") +
      ")").join(", ") +
    (steering.length === 1 ? ",))" : "))") +
    `\nwith steering.apply(model):\n    print(steerlab.generate(model, ` +
    `[${JSON.stringify(body.messages[0].content)}], ${body.max_tokens})[0])\n\n# request body:\n${json}`;
}

async function sideBySide() {
  showError("");
  const steering = steeringTerms();
  const steered = requestBody(steering);
  $("steering-used").textContent = JSON.stringify(steering, null, 2);
  copyAs(steered);
  for (const id of ["unsteered", "steered"]) delete $(id).dataset.done;
  try {
    await Promise.all([stream(requestBody([]), $("unsteered")), stream(steered, $("steered"))]);
  } catch (err) {
    showError(err.message);
  }
}

async function sweep() {
  showError("");
  const box = document.querySelector(".vector");
  if (!box) return showError("no vector is loaded to sweep");
  const multipliers = $("sweep-multipliers").value.split(",").map((x) => Number(x.trim()));
  if (multipliers.some((m) => Number.isNaN(m))) return showError("sweep multipliers: not numbers");
  const slider = box.querySelector(".multiplier");
  const kept = slider.value;
  const bodies = multipliers.map((m) => {
    slider.value = m;
    return requestBody(steeringTerms());
  });
  slider.value = kept;
  const table = $("sweep-table");
  const rows = table.querySelector("tbody");
  rows.textContent = "";
  table.hidden = false;
  const cells = multipliers.map((m) => {
    const row = rows.insertRow();
    row.insertCell().textContent = String(m);
    const cell = row.insertCell();
    cell.className = "sweep-reply";
    return cell;
  });
  try {  // sent together: the server batches what it can
    await Promise.all(bodies.map((body, i) => stream(body, cells[i])));
  } catch (err) {
    showError(err.message);
  }
}

async function start() {
  const response = await fetch(`${API}/models`);
  if (!response.ok) return showError(await apiError(response));
  model = (await response.json()).data[0];
  $("model").textContent = `model ${model.id}`;
  const vectors = Object.entries(model.steering.vectors);
  $("no-vectors").hidden = vectors.length > 0;
  for (const [name, info] of vectors) {
    $("vectors").append(vectorControls(name, info, model.steering.multiplier_range));
  }
  $("generate").addEventListener("click", sideBySide);
  $("sweep").addEventListener("click", sweep);
  document.body.dataset.ready = "true";
}

start();
