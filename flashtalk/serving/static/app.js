// FlashTalk live page: upload a portrait, stream PCM over /ws, draw the frames at their timestamps and
// play the audio that drove them. Protocol: flashtalk/serving/protocol.py.
"use strict";

const HEADER = 28; // "FTF1", u32 index, f64 pts, u32 audio bytes, u32 image bytes, u32 flags
const token = new URLSearchParams(location.search).get("token");
const $ = (id) => document.getElementById(id);
const canvas = $("view");
const ctx2d = canvas.getContext("2d");

// What the page has done so far (the browser test reads it).
window.ftStats = { frames: 0, lastIndex: -1, inOrder: true, monotonic: true, ended: false, ready: false,
                   errors: [], events: [], latencyMs: null, fps: null, dropped: 0, missed: 0, budgetMs: null, backend: null, replica: null,
                   refused: null, portraitShown: false };

let ws = null, audioCtx = null, micNode = null, micStream = null;
let demoSpeech = null, clockStart = null, lastPts = -1;
let sentChunks = [], mediaSent = 0, frameTimes = [];  // [media end s, wall s] of each chunk sent; frame arrivals

function status(text) { $("status").textContent = text; }
function notice(text) { const n = $("notice"); n.textContent = text || ""; n.hidden = !text; }
function stat(id, text) { $("stat-" + id).textContent = text; }

// The portrait, before anything streams: the demo's, or the photo picked.
function showPortrait(src) {
  const img = new Image();
  img.onload = () => {
    const s = Math.min(canvas.width / img.width, canvas.height / img.height);
    const w = img.width * s, h = img.height * s;
    ctx2d.fillStyle = "#111"; ctx2d.fillRect(0, 0, canvas.width, canvas.height);
    ctx2d.drawImage(img, (canvas.width - w) / 2, (canvas.height - h) / 2, w, h);
    window.ftStats.portraitShown = true;
  };
  img.src = src;
}

function sendAudio(sock, samples, rate) {
  mediaSent += samples.length / rate;
  sentChunks.push([mediaSent, performance.now() / 1000]);
  if (sentChunks.length > 2000) sentChunks.splice(0, 1000);
  sock.send(samples.buffer);
}

// Latency of a frame: its arrival minus when the chunk completing its audio was sent.
function frameLatency(pts, now) {
  const end = pts + 0.04 - 1e-6;
  for (const [media, wall] of sentChunks) if (media >= end) return now - wall;
  return null;
}

function updateStats(pts) {
  const now = performance.now() / 1000, st = window.ftStats;
  frameTimes.push(now);
  while (frameTimes.length && frameTimes[0] < now - 2) frameTimes.shift();
  st.fps = frameTimes.length / 2;
  const lat = frameLatency(pts, now);
  if (lat !== null) st.latencyMs = Math.round(lat * 1000);
  stat("fps", st.fps.toFixed(1));
  stat("latency", st.latencyMs === null ? "-" : st.latencyMs + " ms");
  stat("frames", st.frames + " / " + st.dropped);
}
// Frames the server rendered after their deadline (audio in + the session's latency budget).
function showMissed() {
  const st = window.ftStats;
  stat("missed", st.missed + (st.budgetMs ? " (budget " + st.budgetMs + " ms)" : ""));
}
function authed(url) { return token ? url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token) : url; }
function headers() { return token ? { Authorization: "Bearer " + token } : {}; }

async function portraitField() {
  const choice = document.querySelector("input[name=portrait]:checked").value;
  const file = $("portrait-file").files[0];
  if (choice !== "file" && !file) return { portrait_id: "demo" };
  if (!file) throw new Error("pick a photo first");
  const resp = await fetch(authed("/portraits"), { method: "POST", body: file, headers: headers() });
  const body = await resp.json();
  if (!resp.ok) throw new Error(body.error || resp.statusText);
  return { portrait_id: body.id };
}

function ensureAudio() {
  if (!audioCtx) audioCtx = new AudioContext();
  return audioCtx;
}

function onFrame(buf) {
  const view = new DataView(buf);
  const magic = String.fromCharCode(...new Uint8Array(buf, 0, 4));
  if (magic !== "FTF1") { window.ftStats.errors.push("bad frame magic"); return; }
  const index = view.getUint32(4, true), pts = view.getFloat64(8, true);
  const nAudio = view.getUint32(16, true), nImage = view.getUint32(20, true);
  const st = window.ftStats;
  if (index <= st.lastIndex) st.inOrder = false;
  if (pts <= lastPts) st.monotonic = false;
  st.lastIndex = index; lastPts = pts; st.frames += 1;
  updateStats(pts);
  const image = new Blob([new Uint8Array(buf, HEADER + nAudio, nImage)], { type: "image/jpeg" });
  const pcm = new Int16Array(buf.slice(HEADER, HEADER + nAudio));
  const now = performance.now() / 1000;
  if (clockStart === null || clockStart + pts < now - 0.5) clockStart = now - pts + 0.1;
  const due = clockStart + pts;
  playPcm(pcm, due - now);
  createImageBitmap(image).then((bitmap) => {
    setTimeout(() => { ctx2d.drawImage(bitmap, 0, 0, canvas.width, canvas.height); bitmap.close(); },
               Math.max(0, (due - performance.now() / 1000) * 1000));
  }, (err) => st.errors.push("image: " + err));
}

function playPcm(pcm, delay) {
  if (!audioCtx || audioCtx.state !== "running" || micNode) return; // no echo of the microphone
  const buffer = audioCtx.createBuffer(1, pcm.length, 16000);
  const ch = buffer.getChannelData(0);
  for (let i = 0; i < pcm.length; i++) ch[i] = pcm[i] / 32768;
  const src = audioCtx.createBufferSource();
  src.buffer = buffer; src.connect(audioCtx.destination);
  src.start(audioCtx.currentTime + Math.max(0, delay));
}

async function connect(sampleRate) {
  stopAll();
  const start = Object.assign({ type: "start", sample_rate: sampleRate, format: "f32le", video: "jpeg",
                                pace: $("pace").value, controls: currentControls() }, await portraitField());
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const sock = new WebSocket(authed(scheme + location.host + "/ws"));
  sock.binaryType = "arraybuffer";
  ws = sock; clockStart = null; lastPts = -1; sentChunks = []; mediaSent = 0; frameTimes = [];
  notice("");
  Object.assign(window.ftStats, { frames: 0, lastIndex: -1, inOrder: true, monotonic: true, ended: false, ready: false,
                                  dropped: 0, missed: 0, refused: null });
  await new Promise((resolve, reject) => {
    sock.onopen = () => sock.send(JSON.stringify(start));
    sock.onmessage = (ev) => {
      if (typeof ev.data !== "string") { onFrame(ev.data); return; }
      const msg = JSON.parse(ev.data);
      window.ftStats.events.push(msg.type);
      const st = window.ftStats;
      if (msg.type === "ready") {
        Object.assign(st, { ready: true, backend: msg.backend, replica: msg.replica || "-" });
        stat("backend", msg.backend); stat("replica", st.replica); stat("lookahead", msg.lookahead_ms + " ms");
        st.budgetMs = msg.budget_ms; showMissed();
        status("streaming (" + msg.backend + ")"); resolve();
      } else if (msg.type === "end" || msg.type === "interrupted") {
        st.dropped = msg.dropped || 0; stat("frames", st.frames + " / " + st.dropped);
        st.missed = msg.missed || 0; showMissed();
        if (msg.type === "end") { st.ended = true; st.endFrames = msg.frames; st.framesAtEnd = st.frames; status("speech done: " + msg.frames + " frames"); }
      } else if (msg.type === "error") { st.lastError = msg.reason; status("error: " + msg.reason); }
    };
    sock.onerror = () => reject(new Error("WebSocket error"));
    sock.onclose = (ev) => {
      const st = window.ftStats;
      if (ev.code === 1013) {  // the server (or every replica) is full, or draining
        st.refused = st.lastError || ev.reason || "server full";
        notice("The server is busy: " + st.refused + ". Try again in a moment.");
        status("refused");
        if (!st.ready) reject(new Error("refused: " + st.refused));
        return;
      }
      if (st.lastError) { st.errors.push(st.lastError); notice("Session closed: " + st.lastError); }
      if (!st.ready) reject(new Error("closed: " + (st.lastError || ev.reason || ev.code)));
    };
  });
  return sock;
}

function currentControls() {
  return { yaw: +$("yaw").value, pitch: +$("pitch").value, expression_scale: +$("expression_scale").value };
}

async function decodeFile(blob) {
  const ctx = ensureAudio();
  return ctx.decodeAudioData(await blob.arrayBuffer());
}

async function playFile() {
  try {
    const file = $("audio-file").files[0] || demoSpeech;
    if (!file) throw new Error("pick an audio file (or the demo speech) first");
    status("decoding audio...");
    const audio = await decodeFile(file);
    const rate = audio.sampleRate, mono = new Float32Array(audio.length);
    for (let c = 0; c < audio.numberOfChannels; c++) {
      const data = audio.getChannelData(c);
      for (let i = 0; i < data.length; i++) mono[i] += data[i] / audio.numberOfChannels;
    }
    const sock = await connect(rate);
    const step = Math.round(rate * 0.04), fast = $("pace").value === "fast";
    for (let i = 0; i < mono.length && sock.readyState === WebSocket.OPEN; i += step) {
      sendAudio(sock, mono.slice(i, i + step), rate);
      if (!fast) await new Promise((r) => setTimeout(r, 40));
    }
    if (sock.readyState === WebSocket.OPEN) sock.send(JSON.stringify({ type: "end" }));
  } catch (err) {
    if (!window.ftStats.refused) { window.ftStats.errors.push(String(err.message || err)); status("error: " + (err.message || err)); }
  }
}

async function toggleMic() {
  if (micNode) { stopAll(); return; }
  try {
    const ctx = ensureAudio();
    micStream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const sock = await connect(ctx.sampleRate);
    const source = ctx.createMediaStreamSource(micStream);
    micNode = ctx.createScriptProcessor(2048, 1, 1);
    micNode.onaudioprocess = (ev) => {
      if (sock.readyState === WebSocket.OPEN) sendAudio(sock, new Float32Array(ev.inputBuffer.getChannelData(0)), ctx.sampleRate);
    };
    source.connect(micNode); micNode.connect(ctx.destination);
    $("mic").textContent = "Microphone off";
  } catch (err) {
    window.ftStats.errors.push(String(err.message || err)); status("microphone: " + (err.message || err));
  }
}

function stopAll() {
  if (micNode) { micNode.disconnect(); micNode = null; $("mic").textContent = "Microphone"; }
  if (micStream) { micStream.getTracks().forEach((t) => t.stop()); micStream = null; }
  if (ws && ws.readyState <= WebSocket.OPEN) ws.close();
  ws = null;
}

function send(msg) { if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(msg)); }

$("play").addEventListener("click", playFile);
$("mic").addEventListener("click", toggleMic);
$("interrupt").addEventListener("click", () => { send({ type: "interrupt" }); clockStart = null; });
$("stop").addEventListener("click", () => { stopAll(); status("stopped"); });
$("demo-audio").addEventListener("click", async () => {
  const resp = await fetch("/assets/speech.ogg");
  demoSpeech = await resp.blob();
  status("demo speech loaded");
});
$("portrait-file").addEventListener("change", () => {
  const file = $("portrait-file").files[0];
  if (file) { document.querySelector("input[name=portrait][value=file]").checked = true; showPortrait(URL.createObjectURL(file)); }
});
for (const input of document.querySelectorAll("input[name=portrait]")) {
  input.addEventListener("change", () => {
    const file = $("portrait-file").files[0];
    showPortrait(input.value === "file" && file ? URL.createObjectURL(file) : "/assets/portrait.jpg");
  });
}
showPortrait("/assets/portrait.jpg");
for (const id of ["yaw", "pitch", "expression_scale"]) {
  $(id).addEventListener("change", () => send({ type: "controls", controls: currentControls() }));
}
