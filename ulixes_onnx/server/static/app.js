// The page of `ulixes-onnx serve`: sends each photo to the API, follows its job, shows the result.
// Plain JavaScript, no build step and no third-party code: the page must work offline.
"use strict";

const UPLOADS_AT_ONCE = 2; // the server cloaks one photo at a time; more would only wait in its queue
const POLL_MS = 400;
const results = []; // {name, blob} of every cloaked photo, for "download all"
const waiting = [];
let uploading = 0;
let modelInfo = [];

document.addEventListener("DOMContentLoaded", () => {
  loadModels();
  const input = document.getElementById("files");
  input.addEventListener("change", () => { addFiles(input.files); input.value = ""; });
  const drop = document.getElementById("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    addFiles(event.dataTransfer.files);
  });
  document.getElementById("download-all").addEventListener("click", downloadAll);
  document.getElementById("target").addEventListener("input", showTargetHint);
  document.getElementById("level").addEventListener("change", showTargetHint);
});

async function loadModels() {
  const box = document.getElementById("models");
  try {
    modelInfo = (await getJson("/v1/models")).models;
  } catch (error) {
    box.textContent = `cannot list the models: ${error.message}`;
    return;
  }
  box.textContent = "";
  for (const model of modelInfo) {
    const label = document.createElement("label");
    const check = document.createElement("input");
    check.type = "checkbox";
    check.value = model.name;
    check.checked = model.default && model.built;
    check.disabled = !model.built;
    check.addEventListener("change", showTargetHint);
    label.append(check, ` ${model.name}`);
    if (!model.built) label.append(` (not built: ulixes-onnx models build ${model.name})`);
    label.title = model.description;
    box.append(label);
  }
  showTargetHint();
}

function chosenModels() {
  return [...document.querySelectorAll("#models input:checked")].map((check) => check.value);
}

function showTargetHint() {
  const chosen = modelInfo.filter((model) => chosenModels().includes(model.name));
  const level = document.getElementById("level").value;
  document.getElementById("target-hint").textContent = chosen
    .map((m) => `${m.name}: threshold ${m.threshold}, target at ${level} ${m.targets[level]} (${m.metric})`)
    .join("; ");
}

function addFiles(files) {
  for (const file of files) {
    const card = newCard(file);
    waiting.push({ file, card, settings: currentSettings() });
  }
  pump();
}

function currentSettings() {
  return {
    models: chosenModels().join(","),
    target: document.getElementById("target").value.trim(),
    level: document.getElementById("level").value,
    minQuality: document.getElementById("min-quality").value,
  };
}

function pump() {
  while (uploading < UPLOADS_AT_ONCE && waiting.length) {
    const next = waiting.shift();
    uploading += 1;
    process(next).finally(() => { uploading -= 1; pump(); });
  }
}

function newCard(file) {
  const card = document.getElementById("photo-template").content.firstElementChild.cloneNode(true);
  card.querySelector(".name").textContent = file.name;
  document.getElementById("photos").append(card);
  return card;
}

function setStatus(card, text, kind, progress) {
  const status = card.querySelector(".status");
  status.textContent = text;
  status.className = `status ${kind || ""}`;
  card.dataset.status = kind || "working";
  if (progress !== undefined) card.querySelector(".progress").value = progress;
}

async function process({ file, card, settings }) {
  try {
    const job = await upload(file, card, settings);
    const done = await follow(job, card);
    const blob = await fetchResult(done);
    show(card, file, done, blob);
  } catch (error) {
    setStatus(card, "failed", "failed", 100);
    const message = card.querySelector(".error");
    message.textContent = error.message;
    message.hidden = false;
  }
}

// POST /v1/cloak?wait=false; a busy server (503) is asked again after its Retry-After.
async function upload(file, card, settings) {
  for (;;) {
    const form = new FormData();
    form.append("photo", file, file.name);
    if (settings.models) form.append("models", settings.models);
    if (settings.target) form.append("target", settings.target);
    form.append("level", settings.level);
    form.append("min_quality", settings.minQuality);
    const reply = await send(form, (fraction) => setStatus(card, `uploading ${Math.round(fraction * 100)} %`, "", fraction * 20));
    if (reply.status === 202) return reply.body;
    if (reply.status !== 503) throw new Error(reply.body.error || `HTTP ${reply.status}`);
    const seconds = Number(reply.retryAfter) || 2;
    setStatus(card, `server busy, retrying in ${seconds} s`, "", 0);
    await sleep(seconds * 1000);
  }
}

function send(form, onProgress) {
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    request.open("POST", "/v1/cloak?wait=false");
    request.responseType = "json";
    request.upload.onprogress = (event) => { if (event.lengthComputable) onProgress(event.loaded / event.total); };
    request.onload = () => resolve({
      status: request.status,
      body: request.response || {},
      retryAfter: request.getResponseHeader("Retry-After"),
    });
    request.onerror = () => reject(new Error("the server cannot be reached"));
    request.send(form);
  });
}

async function follow(job, card) {
  const started = Date.now();
  for (;;) {
    if (job.status === "done") return job;
    if (job.status === "failed" || job.status === "cancelled") throw new Error(job.error || job.status);
    if (job.status === "queued") {
      setStatus(card, `queued (${job.position} in line)`, "", 25);
    } else {
      const seconds = (Date.now() - started) / 1000;
      // Cloaking reports no progress of its own: the bar creeps towards 95 % as time passes.
      setStatus(card, `cloaking… ${seconds.toFixed(0)} s`, "", 30 + 65 * (1 - Math.exp(-seconds / 8)));
    }
    await sleep(POLL_MS);
    job = await getJson(job.links.self);
  }
}

async function fetchResult(job) {
  // The server deletes the result once it is downloaded: from here on the page holds the only copy.
  const reply = await fetch(job.links.result);
  if (!reply.ok) throw new Error((await reply.json()).error || `HTTP ${reply.status}`);
  return reply.blob();
}

function show(card, file, job, blob) {
  const report = job.result;
  const protectedAll = report.status === "protected";
  setStatus(card, report.status, protectedAll ? "protected" : "not-protected", 100);
  card.querySelector(".progress").hidden = true;
  const cloakedUrl = URL.createObjectURL(blob);
  results.push({ name: report.filename, blob });
  document.getElementById("download-all").disabled = false;

  const result = card.querySelector(".result");
  result.hidden = false;
  const link = card.querySelector(".download");
  link.href = cloakedUrl;
  link.download = report.filename;

  const compare = card.querySelector(".compare");
  const before = card.querySelector(".before");
  const after = card.querySelector(".after");
  const slider = card.querySelector(".slider");
  const reveal = () => { after.style.clipPath = `inset(0 0 0 ${slider.value}%)`; };
  slider.addEventListener("input", reveal);
  reveal();
  card.querySelector(".show-boxes").addEventListener("change", (event) => {
    compare.classList.toggle("no-boxes", !event.target.checked);
  });
  after.addEventListener("load", () => drawBoxes(card, after.naturalWidth, after.naturalHeight, report.faces));
  after.addEventListener("error", () => {
    card.querySelector(".viewport").hidden = true;
    card.querySelector(".preview-note").hidden = false;
  });
  before.src = URL.createObjectURL(file);
  after.src = cloakedUrl;

  const rows = card.querySelector(".faces tbody");
  for (const face of report.faces) rows.append(faceRow(face));
  if (!report.faces.length) rows.append(row(["no face found"]));
  const notes = card.querySelector(".notes");
  for (const note of report.notes) notes.append(Object.assign(document.createElement("li"), { textContent: note }));
}

function drawBoxes(card, width, height, faces) {
  const svg = card.querySelector(".boxes");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const ns = "http://www.w3.org/2000/svg";
  for (const face of faces) {
    const [x0, y0, x1, y1] = face.box;
    const rect = document.createElementNS(ns, "rect");
    Object.entries({ x: x0, y: y0, width: x1 - x0, height: y1 - y0 }).forEach(([k, v]) => rect.setAttribute(k, v));
    rect.setAttribute("class", face.protected ? "protected" : "unprotected");
    const label = document.createElementNS(ns, "text");
    label.setAttribute("x", x0 + 3);
    label.setAttribute("y", Math.max(14, y0 - 4));
    label.textContent = `face ${face.index + 1}`;
    svg.append(rect, label);
  }
}

function faceRow(face) {
  const distances = document.createElement("div");
  for (const [name, model] of Object.entries(face.models)) {
    const line = document.createElement("div");
    line.className = "model";
    line.dataset.model = name;
    line.dataset.distance = model.distance;
    line.dataset.threshold = model.threshold;
    const scale = Math.max(model.distance, model.threshold) * 1.25;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.innerHTML = "<span></span><i></i>";
    bar.firstChild.style.width = `${(100 * model.distance) / scale}%`;
    bar.lastChild.style.left = `${(100 * model.threshold) / scale}%`;
    line.append(`${name}: ${model.distance.toFixed(3)} / ${model.threshold.toFixed(3)} `, bar);
    distances.append(line);
  }
  const visibility = [`DSSIM ${face.dssim.toFixed(4)}`];
  // Measurements added to the face report later (e.g. SSIMULACRA2) are shown when present.
  for (const [key, value] of Object.entries(face)) {
    if (/ssimulacra/i.test(key) && typeof value === "number") visibility.push(`SSIMULACRA2 ${value.toFixed(1)}`);
  }
  const tr = row([`${face.index + 1}`, face.protected ? "yes" : "no", face.why, distances, visibility.join(", ")]);
  tr.children[1].className = face.protected ? "yes" : "no";
  tr.dataset.protected = face.protected;
  return tr;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    td.append(cell);
    tr.append(td);
  }
  return tr;
}

async function downloadAll() {
  const archive = await zipStored(results);
  const link = document.createElement("a");
  link.href = URL.createObjectURL(archive);
  link.download = "cloaked-photos.zip";
  document.body.append(link);
  link.click();
  link.remove();
}

// A zip archive of stored (uncompressed) entries: photos are compressed already.
const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

function crc32(bytes) {
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

async function zipStored(entries) {
  const encoder = new TextEncoder();
  const now = new Date();
  const time = (now.getHours() << 11) | (now.getMinutes() << 5) | (now.getSeconds() >> 1);
  const date = ((now.getFullYear() - 1980) << 9) | ((now.getMonth() + 1) << 5) | now.getDate();
  const used = new Set();
  const body = [];
  const directory = [];
  let offset = 0;
  for (const entry of entries) {
    const name = encoder.encode(uniqueName(entry.name, used));
    const data = new Uint8Array(await entry.blob.arrayBuffer());
    const crc = crc32(data);
    // Fields shared by the local header (from offset 4) and the central directory entry (from 6).
    const common = [[20, 2], [0x0800, 2], [0, 2], [time, 2], [date, 2], [crc, 4], [data.length, 4],
      [data.length, 4], [name.length, 2], [0, 2]];
    body.push(record(0x04034b50, common), name, data);
    directory.push(record(0x02014b50, [[20, 2], ...common, [0, 2], [0, 2], [0, 2], [0, 4], [offset, 4]]), name);
    offset += 30 + name.length + data.length;
  }
  const size = directory.reduce((sum, part) => sum + part.byteLength, 0);
  const end = record(0x06054b50, [[0, 2], [0, 2], [entries.length, 2], [entries.length, 2], [size, 4], [offset, 4], [0, 2]]);
  return new Blob([...body, ...directory, end], { type: "application/zip" });
}

function record(signature, fields) {
  const view = new DataView(new ArrayBuffer(4 + fields.reduce((sum, [, width]) => sum + width, 0)));
  view.setUint32(0, signature, true);
  let at = 4;
  for (const [value, width] of fields) {
    if (width === 2) view.setUint16(at, value, true); else view.setUint32(at, value, true);
    at += width;
  }
  return view;
}

function uniqueName(name, used) {
  let candidate = name;
  const dot = name.lastIndexOf(".");
  for (let n = 2; used.has(candidate); n++) {
    candidate = dot > 0 ? `${name.slice(0, dot)} (${n})${name.slice(dot)}` : `${name} (${n})`;
  }
  used.add(candidate);
  return candidate;
}

async function getJson(url) {
  const reply = await fetch(url);
  const body = await reply.json();
  if (!reply.ok) throw new Error(body.error || `HTTP ${reply.status}`);
  return body;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
