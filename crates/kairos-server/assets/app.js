// kairos web UI: plain JavaScript over the server's A1111 API and /v1 endpoints (no build step,
// no CDN). Same-origin requests carry the page's basic-auth credentials.
"use strict";
const $ = (id) => document.getElementById(id);
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"];
const DEFAULT_COMPARE = ["karras", "exponential", "ays", "gits"];
let tab = "generate";
let busy = false;
let initImage = null; // base64 without prefix
let optimized = []; // {label, file}
const gallery = [];

async function api(path, body) {
  const res = await fetch(path, body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  const data = await res.json().catch(() => null);
  if (!res.ok) {
    const detail = data && data.detail ? data.detail : res.statusText;
    const err = new Error(detail);
    err.status = res.status; err.field = data && data.field;
    throw err;
  }
  return data;
}

function setStatus(text, kind) {
  const s = $("status");
  s.textContent = text;
  s.className = "status" + (kind ? " " + kind : "");
}

function option(select, value, label) {
  const o = document.createElement("option");
  o.value = value; o.textContent = label || value;
  select.appendChild(o);
}

async function loadLists() {
  const [models, vaes, loras, samplers, schedulers, options] = await Promise.all([
    api("/sdapi/v1/sd-models"), api("/sdapi/v1/sd-vae"), api("/sdapi/v1/loras"),
    api("/sdapi/v1/samplers"), api("/sdapi/v1/schedulers"), api("/sdapi/v1/options"),
  ]);
  const model = $("model"); model.innerHTML = "";
  if (!models.length) option(model, "", "no checkpoints in --models-dir");
  models.forEach((m) => option(model, m.title, m.model_name));
  const current = (options.sd_model_checkpoint || "").split(" [")[0];
  const match = models.find((m) => m.title.split(" [")[0] === current);
  if (match) model.value = match.title;
  const vae = $("vae"); vae.innerHTML = "";
  option(vae, "Automatic", "Automatic");
  vaes.forEach((v) => option(vae, v.model_name));
  const lora = $("lora"); lora.innerHTML = "";
  option(lora, "", loras.length ? "add a LoRA…" : "no LoRAs in --lora-dir");
  loras.forEach((l) => option(lora, l.name));
  const sampler = $("sampler"); sampler.innerHTML = "";
  samplers.forEach((s) => option(sampler, s.name));
  sampler.value = "DPM++ 2M";
  const sched = $("scheduler"); sched.innerHTML = "";
  schedulers.forEach((s) => option(sched, s.name === "automatic" ? "Automatic" : s.name, s.label === s.name ? s.name : `${s.label} (${s.name})`));
  sched.value = "Automatic";
  const chips = $("schedule-chips"); chips.innerHTML = "";
  schedulers.filter((s) => s.name !== "automatic").forEach((s) => addChip(s.name, DEFAULT_COMPARE.includes(s.name)));
  optimized.forEach((o) => addChip(o.label, true, o));
}

function addChip(name, on, file) {
  const chip = document.createElement("span");
  chip.className = "chip" + (on ? " on" : "");
  chip.textContent = name;
  chip.tabIndex = 0;
  chip.dataset.name = name;
  if (file) chip.dataset.file = "1";
  const toggle = () => chip.classList.toggle("on");
  chip.onclick = toggle;
  chip.onkeydown = (e) => { if (e.key === " " || e.key === "Enter") { e.preventDefault(); toggle(); } };
  $("schedule-chips").appendChild(chip);
}

function requestBody() {
  const body = {
    prompt: $("prompt").value, negative_prompt: $("negative").value,
    sampler_name: $("sampler").value, scheduler: $("scheduler").value,
    steps: +$("steps").value, cfg_scale: +$("cfg").value, seed: +$("seed").value,
    width: +$("width").value, height: +$("height").value, batch_size: +$("batch").value,
    override_settings: { sd_model_checkpoint: $("model").value, sd_vae: $("vae").value },
    override_settings_restore_afterwards: true,
  };
  return body;
}

function showError(e) {
  setStatus((e.field ? e.field + ": " : "") + e.message, "error");
  const field = { width: "width", height: "height", steps: "steps", prompt: "prompt", cfg_scale: "cfg", seed: "seed" }[e.field];
  if (field) $(field).focus();
}

let poll = null;
function startPolling(bar) {
  const img = $("current");
  poll = setInterval(async () => {
    try {
      const p = await api("/sdapi/v1/progress");
      if (!poll) return; // the job ended while this poll was in flight
      $(bar).style.width = `${Math.round(p.progress * 100)}%`;
      if (p.state && p.state.sampling_steps) {
        const eta = p.eta_relative > 0 ? ` · ${p.eta_relative.toFixed(1)} s left` : "";
        setStatus(`${p.textinfo || "working"}${eta}`, "busy");
      }
      if (tab === "generate" && p.current_image) {
        img.src = "data:image/png;base64," + p.current_image;
        img.className = "preview"; img.hidden = false; $("placeholder").hidden = true;
      }
    } catch (_) { /* the next poll retries */ }
  }, 300);
}

function stopPolling(bar) {
  clearInterval(poll); poll = null;
  $(bar).style.width = "0";
}

function setBusy(on) {
  busy = on;
  $("go").disabled = on; $("stop").disabled = !on;
}

async function generate() {
  if (busy) return;
  setBusy(true); setStatus("queued…", "busy");
  startPolling("bar");
  const body = requestBody();
  const path = initImage ? "/sdapi/v1/img2img" : "/sdapi/v1/txt2img";
  if (initImage) { body.init_images = [initImage]; body.denoising_strength = +$("denoise").value; }
  const started = performance.now();
  try {
    const out = await api(path, body);
    const info = JSON.parse(out.info);
    out.images.forEach((b64, i) => addToGallery(b64, info.infotexts[i], body, info.all_seeds[i]));
    if (out.images.length) {
      showImage(out.images[0], info.infotexts[0]);
      setStatus(`done in ${((performance.now() - started) / 1000).toFixed(1)} s · seed ${info.seed}`);
    } else {
      setStatus("stopped");
    }
  } catch (e) {
    showError(e);
  } finally {
    stopPolling("bar"); setBusy(false);
  }
}

function showImage(b64, infotext) {
  const img = $("current");
  img.src = "data:image/png;base64," + b64; img.className = ""; img.hidden = false;
  $("placeholder").hidden = true;
  $("params").textContent = infotext || "";
}

function addToGallery(b64, infotext, body, seed) {
  const entry = { b64, infotext, body: { ...body, seed } };
  gallery.unshift(entry);
  const fig = document.createElement("figure");
  fig.tabIndex = 0;
  fig.title = infotext;
  fig.innerHTML = `<img alt=""><figcaption></figcaption>`;
  fig.querySelector("img").src = "data:image/png;base64," + b64;
  fig.querySelector("figcaption").textContent = `${seed} · ${body.prompt}`;
  const reuse = () => { reuseParams(entry); showImage(b64, infotext); };
  fig.onclick = reuse;
  fig.onkeydown = (e) => { if (e.key === "Enter") reuse(); };
  $("gallery").prepend(fig);
}

function reuseParams({ body }) {
  $("prompt").value = body.prompt; $("negative").value = body.negative_prompt;
  $("sampler").value = body.sampler_name; $("scheduler").value = body.scheduler;
  $("steps").value = body.steps; $("cfg").value = body.cfg_scale; $("seed").value = body.seed;
  $("width").value = body.width; $("height").value = body.height; $("batch").value = body.batch_size;
  if (body.override_settings) { $("model").value = body.override_settings.sd_model_checkpoint; $("vae").value = body.override_settings.sd_vae; }
  setStatus(`parameters of seed ${body.seed} loaded`);
}

async function compare() {
  if (busy) return;
  const chosen = [...document.querySelectorAll(".chip.on")].map((c) => {
    const file = optimized.find((o) => o.label === c.dataset.name && c.dataset.file);
    return file ? { label: file.label, file: file.file } : c.dataset.name;
  });
  const steps = $("step-list").value.split(/[ ,]+/).filter(Boolean).map(Number);
  if (!chosen.length) { setStatus("pick at least one schedule", "error"); return; }
  const body = { ...requestBody(), schedules: chosen, steps, batch_size: 1 };
  if (body.seed < 0) body.seed = Math.floor(Math.random() * 4294967294);
  setBusy(true); setStatus("queued…", "busy");
  startPolling("bar2");
  try {
    const out = await api("/v1/compare", body);
    drawGrid(out);
    // The σ curves the cells of the last column really sampled (the model's own family).
    const last = out.columns.length - 1;
    const curves = out.rows.map((label, i) => ({ schedule: label, sigmas: out.cells[i * out.columns.length + last].sigmas }));
    drawCurves({ schedules: curves, steps: out.columns[last], family: $("model").selectedOptions[0]?.textContent || "" });
    const link = $("download");
    link.href = "data:image/png;base64," + out.grid; link.hidden = false;
    setStatus(`compared ${out.rows.length} schedules × ${out.columns.length} step counts · seed ${out.seed}`);
  } catch (e) {
    showError(e);
  } finally {
    stopPolling("bar2"); setBusy(false);
  }
}

function drawGrid(out) {
  const table = document.createElement("table");
  table.className = "grid-table";
  const head = table.insertRow();
  head.appendChild(document.createElement("th"));
  out.columns.forEach((s) => { const th = document.createElement("th"); th.textContent = `${s} steps`; head.appendChild(th); });
  out.rows.forEach((label, i) => {
    const tr = table.insertRow();
    const th = document.createElement("th");
    th.className = "row"; th.textContent = label; th.style.color = PALETTE[i % PALETTE.length];
    tr.appendChild(th);
    out.columns.forEach((_, j) => {
      const cell = out.cells[i * out.columns.length + j];
      const td = tr.insertCell();
      if (cell.image) {
        const img = document.createElement("img");
        img.src = "data:image/png;base64," + cell.image; img.title = cell.infotext;
        img.onclick = () => window.open().document.write(`<img src="${img.src}" style="image-rendering:pixelated;width:512px">`);
        td.appendChild(img);
      }
    });
  });
  $("grid-view").innerHTML = ""; $("grid-view").appendChild(table);
}

function drawCurves(data) {
  const list = data.schedules || [data];
  const svg = $("curves");
  const W = 360, H = 260, L = 44, R = 10, T = 12, B = 30;
  const all = list.flatMap((s) => s.sigmas.filter((x) => x > 0));
  const lo = Math.log(Math.min(...all)), hi = Math.log(Math.max(...all));
  const x = (k, n) => L + (W - L - R) * k / Math.max(n, 1);
  const y = (s) => T + (H - T - B) * (1 - (Math.log(s) - lo) / Math.max(hi - lo, 1e-6));
  let html = `<line x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}" stroke="#3a4150"/><line x1="${L}" y1="${T}" x2="${L}" y2="${H - B}" stroke="#3a4150"/>`;
  [Math.exp(hi), Math.exp((hi + lo) / 2), Math.exp(lo)].forEach((s) => {
    html += `<text x="${L - 4}" y="${y(s) + 4}" fill="#8b93a1" font-size="10" text-anchor="end">${s.toFixed(s < 1 ? 2 : 1)}</text>`;
  });
  html += `<text x="${(W + L) / 2}" y="${H - 8}" fill="#8b93a1" font-size="10" text-anchor="middle">step (of ${data.steps || list[0].steps}) · log σ</text>`;
  list.forEach((s, i) => {
    const n = s.sigmas.length - 1;
    const pts = s.sigmas.map((v, k) => [k, v]).filter(([, v]) => v > 0).map(([k, v]) => `${x(k, n).toFixed(1)},${y(v).toFixed(1)}`);
    const c = PALETTE[i % PALETTE.length];
    html += `<polyline fill="none" stroke="${c}" stroke-width="2" points="${pts.join(" ")}"/>`;
    pts.forEach((p) => { const [px, py] = p.split(","); html += `<circle cx="${px}" cy="${py}" r="2.2" fill="${c}"/>`; });
  });
  svg.innerHTML = html;
  $("legend").innerHTML = list.map((s, i) => `<span style="--c:${PALETTE[i % PALETTE.length]}">${s.schedule}</span>`).join("");
  $("curve-steps").textContent = `${data.family} · ${data.steps || list[0].steps} steps`;
}

function readImage(file) {
  const reader = new FileReader();
  reader.onload = () => {
    const url = reader.result;
    initImage = url.split(",")[1];
    $("init-preview").src = url;
    $("drop-empty").hidden = true; $("drop-full").hidden = false;
    const img = new Image();
    img.onload = () => {
      $("width").value = Math.max(8, Math.floor(img.width / 8) * 8);
      $("height").value = Math.max(8, Math.floor(img.height / 8) * 8);
    };
    img.src = url;
    $("go").firstChild.textContent = "Generate (img2img) ";
  };
  reader.readAsDataURL(file);
}

function clearInit() {
  initImage = null;
  $("drop-empty").hidden = false; $("drop-full").hidden = true;
  $("go").firstChild.textContent = tab === "compare" ? "Compare " : "Generate ";
}

function dropZone(el, onFile) {
  el.addEventListener("dragover", (e) => { e.preventDefault(); el.classList.add("over"); });
  el.addEventListener("dragleave", () => el.classList.remove("over"));
  el.addEventListener("drop", (e) => {
    e.preventDefault(); el.classList.remove("over");
    if (e.dataTransfer.files.length) onFile(e.dataTransfer.files[0]);
  });
}

function switchTab(name) {
  tab = name;
  document.querySelectorAll(".tab").forEach((t) => t.classList.toggle("active", t.dataset.tab === name));
  $("stage-generate").hidden = name !== "generate";
  $("stage-compare").hidden = name !== "compare";
  $("compare-controls").hidden = name !== "compare";
  $("drop").hidden = name === "compare";
  $("go").firstChild.textContent = name === "compare" ? "Compare " : initImage ? "Generate (img2img) " : "Generate ";
}

function init() {
  document.querySelectorAll(".tab").forEach((t) => (t.onclick = () => switchTab(t.dataset.tab)));
  $("go").onclick = () => (tab === "compare" ? compare() : generate());
  $("stop").onclick = () => api("/sdapi/v1/interrupt", {});
  $("dice").onclick = () => ($("seed").value = -1);
  $("refresh").onclick = async () => {
    await Promise.all([api("/sdapi/v1/refresh-checkpoints", {}), api("/sdapi/v1/refresh-vae", {}), api("/sdapi/v1/refresh-loras", {})]);
    await loadLists(); setStatus("folders rescanned");
  };
  $("lora").onchange = (e) => {
    if (e.target.value) { $("prompt").value += ` <lora:${e.target.value}:0.8>`; e.target.value = ""; $("prompt").focus(); }
  };
  $("denoise").oninput = (e) => ($("denoise-out").textContent = (+e.target.value).toFixed(2));
  $("clear-init").onclick = (e) => { e.stopPropagation(); clearInit(); };
  const drop = $("drop");
  drop.onclick = (e) => { if (!initImage || e.target.id === "init-preview") $("file").click(); };
  drop.onkeydown = (e) => { if (e.key === "Enter") $("file").click(); };
  $("file").onchange = (e) => e.target.files[0] && readImage(e.target.files[0]);
  dropZone(drop, readImage);
  dropZone($("sched-drop"), (file) => file.text().then((text) => {
    try {
      const parsed = JSON.parse(text);
      const label = file.name.replace(/\.json$/, "");
      optimized.push({ label, file: parsed });
      addChip(label, true, parsed);
      setStatus(`added optimized schedule ${label}`);
    } catch (e) { setStatus(`${file.name}: not a schedule file (${e.message})`, "error"); }
  }));
  document.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); $("go").click(); }
    if (e.key === "Escape" && busy) { e.preventDefault(); $("stop").click(); }
    if (e.altKey && e.key === "1") switchTab("generate");
    if (e.altKey && e.key === "2") switchTab("compare");
  });
  loadLists().then(() => setStatus("ready")).catch(showError);
  $("prompt").focus();
}

init();
