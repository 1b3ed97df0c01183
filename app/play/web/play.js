// worldstream play page: websocket client, keyboard/gamepad input, canvas, HUD, recording.
// Runs as Gradio's js_on_load (gets `element`); state is exposed on window.worldstream for tests.
(async () => {
  const root = element.querySelector(".ws-root");
  const cfg = JSON.parse(root.dataset.config);
  const $ = (sel) => root.querySelector(sel);
  const canvas = $(".ws-canvas"), ctx = canvas.getContext("2d");
  const stage = $(".ws-stage");
  const status = $(".ws-status"), statusText = $(".ws-status-text");
  const token = new URLSearchParams(location.search).get("token");
  const withToken = (url) => (token ? url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token) : url);
  const KEYS = new Set(cfg.keys);  // key codes the server maps (others are not sent)
  const CONTROL = new Set(["KeyR", "KeyP"]);
  const PREVENT = new Set(["ArrowUp", "ArrowDown", "ArrowLeft", "ArrowRight", "Space"]);
  const state = {
    connected: false, frames: 0, framesDrawn: 0, lastIndex: -1, latencies: [], serverStats: null,
    recordings: [], recording: null, paused: false, errors: [], held: [], gamepad: null, closeReason: null,
  };
  window.worldstream = state;

  const drawTimes = [];  // when frames were drawn (client FPS)
  let ws = null, seq = 0, pendingMeta = null, decoding = false, recStart = 0;
  const held = new Set();
  let pad = null, padKey = "";

  let warming = false, liveText = "live", compute = "";
  function setStatus(kind, text) { status.dataset.state = kind; statusText.textContent = text; }
  function send(obj) { if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(obj)); }
  function sendInput() {
    seq += 1;
    send({ type: "input", seq, ts: performance.now(), keys: [...held], gamepad: pad });
    for (const row of root.querySelectorAll(".ws-keys tr")) {
      row.classList.toggle("ws-held-row", row.dataset.keys.split(" ").some((k) => held.has(k)));
    }
  }

  function connect() {
    const url = new URL("ws", location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    url.search = token ? "?token=" + encodeURIComponent(token) : "";
    setStatus("connecting", "connecting…");
    ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    ws.onopen = () => { state.connected = true; };
    ws.onmessage = (ev) => (typeof ev.data === "string" ? onText(JSON.parse(ev.data)) : onFrame(ev.data));
    ws.onclose = (ev) => {
      state.connected = false;
      state.closeReason = ev.reason || null;
      const why = ev.code === 1013 ? "server full — try again later" : ev.code === 1008 ? "refused: missing or wrong token"
        : "disconnected";
      setStatus("closed", why + " · click Reset to reconnect");
      setRecording(null);
    };
  }

  function onText(msg) {
    if (msg.type === "hello") {
      liveText = "live · " + msg.fps + " FPS target · " + msg.steps + " step" + (msg.steps === 1 ? "" : "s");
      compute = msg.dtype + (msg.int8 === "on" ? "+int8" : "") + " · " + msg.cpu_capability + " · " + msg.threads + " thr";
      $(".ws-s-compute").textContent = compute;
      const scene = $(".ws-scene");
      scene.replaceChildren(...(msg.starts || []).map((name) => new Option(name, name, false, name === msg.start)));
      setStatus("warming", "warming up…");  // until the first frame is drawn
      warming = true;
      if (held.size || pad) sendInput();
    } else if (msg.type === "frame") {
      pendingMeta = msg;
    } else if (msg.type === "stats") {
      state.serverStats = msg;
      if (compute) {  // the step compiling in the background, then swapped in: say which runs
        const c = msg.compile || "";
        $(".ws-s-compute").textContent = compute + (c === "compiling" ? " · compiling…" : c === "compiled" ? " · compiled" : "");
      }
      const ms = msg.ms || {};
      $(".ws-s-fps").textContent = msg.fps.toFixed(1) + " FPS";
      $(".ws-s-model").textContent = ms.model !== undefined ? ms.model.toFixed(1) + " ms" : "–";
      $(".ws-s-decode").textContent = ms.decode !== undefined ? ms.decode.toFixed(1) + " ms" : "–";
      $(".ws-s-jpeg").textContent = ms.jpeg !== undefined ? ms.jpeg.toFixed(2) + " ms" : "–";
      $(".ws-s-queue").textContent = String(msg.queue_depth);
      $(".ws-s-sessions").textContent = msg.sessions + " / " + msg.max_sessions;
      $(".ws-s-frame").textContent = String(msg.frame);
    } else if (msg.type === "recording") {
      if (msg.state === "started") { setRecording(msg.id); } else { setRecording(null); addDownload(msg); }
      if (msg.state === "failed") state.errors.push(msg.message);
    } else if (msg.type === "paused") {
      state.paused = msg.paused;
      $(".ws-pause").textContent = msg.paused ? "Resume" : "Pause";
      setStatus(msg.paused ? "paused" : "live", msg.paused ? "paused" : "live");
    } else if (msg.type === "error") {
      state.errors.push(msg.message);
      if (msg.code) setStatus("error", msg.message);
      else console.warn("worldstream:", msg.message);
    }
  }

  function onFrame(data) {
    const meta = pendingMeta; pendingMeta = null;
    state.frames += 1;
    if (decoding) return;  // drop a frame rather than queue behind a slow decode
    decoding = true;
    createImageBitmap(new Blob([data], { type: "image/jpeg" })).then((bmp) => {
      ctx.drawImage(bmp, 0, 0, canvas.width, canvas.height);
      bmp.close();
      state.framesDrawn += 1;
      if (warming) { warming = false; setStatus("live", liveText); }
      drawTimes.push(performance.now());
      if (meta) {
        state.lastIndex = meta.index;
        state.held = meta.action;
        $(".ws-held").textContent = meta.action.length ? meta.action.join(" + ") : "idle";
        if (meta.seq !== null && meta.ts !== null && meta.seq > 0) {
          state.latencies.push(performance.now() - meta.ts);
          if (state.latencies.length > 200) state.latencies.shift();
        }
      }
    }).catch((e) => state.errors.push("decode: " + e)).finally(() => { decoding = false; });
  }

  function setRecording(id) {
    state.recording = id;
    const btn = $(".ws-record");
    btn.classList.toggle("ws-on", !!id);
    btn.textContent = id ? "■ Stop" : "● Record";
    $(".ws-rec-badge").hidden = !id;
    recStart = performance.now();
  }

  // A stopped recording (or a failed one: its message, and what was kept if anything).
  function addDownload(msg) {
    state.recordings.push(msg);
    $(".ws-downloads").hidden = false;
    const li = document.createElement("li");
    if (msg.url) {
      const a = document.createElement("a");
      a.href = withToken(msg.url);
      a.download = "worldstream-" + msg.id.slice(0, 8) + ".mp4";
      a.textContent = "⬇ " + a.download;
      const info = document.createElement("span");
      info.textContent = msg.seconds.toFixed(1) + " s" + (msg.frames === 0 ? " (empty)" : "");
      li.append(a, info);
    }
    if (msg.message) {
      const why = document.createElement("span");
      why.className = "ws-rec-error";
      why.textContent = msg.message;
      li.append(why);
    }
    $(".ws-list").prepend(li);
  }

  // --- input: keyboard (while the page has focus; not while typing in the seed box)
  const editable = (t) => t && (t.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(t.tagName));
  window.addEventListener("keydown", (e) => {
    if (editable(e.target) || e.metaKey || e.altKey) return;
    if (CONTROL.has(e.code) && !e.repeat && document.activeElement === stage) {
      if (e.code === "KeyR") $(".ws-reset").click(); else $(".ws-pause").click();
      return;
    }
    if (!KEYS.has(e.code) || document.activeElement !== stage) return;
    if (PREVENT.has(e.code)) e.preventDefault();
    if (e.repeat || held.has(e.code)) return;
    held.add(e.code); sendInput();
  }, true);
  window.addEventListener("keyup", (e) => {
    if (held.delete(e.code)) sendInput();
  }, true);
  const releaseAll = () => { if (held.size) { held.clear(); sendInput(); } };
  window.addEventListener("blur", releaseAll);
  stage.addEventListener("blur", releaseAll);
  stage.addEventListener("mousedown", () => stage.focus());
  $(".ws-overlay").addEventListener("click", () => stage.focus());

  // --- input: gamepad (no events: poll every animation frame, send only on change)
  function pollPad() {
    const pads = navigator.getGamepads ? [...navigator.getGamepads()].filter(Boolean) : [];
    const gp = pads[0];
    const on = !!gp;
    const indicator = $(".ws-pad");
    if (String(on) !== indicator.dataset.on) {
      indicator.dataset.on = String(on);
      $(".ws-pad-text").textContent = on ? gp.id.slice(0, 28) : "no gamepad";
    }
    let next = null;
    if (gp) {
      const dz = (v) => (Math.abs(v) < 0.15 ? 0 : Math.round(v * 100) / 100);
      next = { axes: gp.axes.slice(0, 16).map(dz), buttons: gp.buttons.slice(0, 32).map((b) => Math.round(b.value * 100) / 100) };
    }
    const key = JSON.stringify(next);
    if (key !== padKey) { padKey = key; pad = next; state.gamepad = next; sendInput(); }
  }

  // --- HUD
  function hud() {
    const now = performance.now();
    while (drawTimes.length && now - drawTimes[0] > 2000) drawTimes.shift();
    const fps = drawTimes.length > 1 ? (drawTimes.length - 1) / ((drawTimes[drawTimes.length - 1] - drawTimes[0]) / 1000) : 0;
    $(".ws-fps").textContent = fps ? fps.toFixed(1) : "–";
    state.fps = fps;
    const lat = [...state.latencies].sort((a, b) => a - b);
    if (lat.length) {
      const med = lat[Math.floor(lat.length / 2)], p95 = lat[Math.min(lat.length - 1, Math.floor(lat.length * 0.95))];
      $(".ws-lat").textContent = Math.round(med) + " / " + Math.round(p95);
    }
    if (state.recording) {
      const s = Math.floor((now - recStart) / 1000);
      $(".ws-rec-time").textContent = Math.floor(s / 60) + ":" + String(s % 60).padStart(2, "0");
    }
  }
  function loop() { pollPad(); hud(); requestAnimationFrame(loop); }
  requestAnimationFrame(loop);
  setInterval(() => send({ type: "stats" }), 1000);

  // --- buttons
  $(".ws-reset").addEventListener("click", () => {
    if (!ws || ws.readyState > WebSocket.OPEN) { connect(); stage.focus(); return; }
    const v = $(".ws-seed").value.trim();
    const seed = v === "" ? null : Math.max(0, Math.min(2147483647, Math.floor(Number(v))));
    const msg = { type: "reset" };
    if (seed !== null && !Number.isNaN(seed)) msg.seed = seed;
    if ($(".ws-scene").value) msg.start = $(".ws-scene").value;
    send(msg);
    stage.focus();
  });
  $(".ws-scene").addEventListener("change", () => $(".ws-reset").click());  // a new level starts at once
  $(".ws-pause").addEventListener("click", () => { send({ type: "pause", paused: !state.paused }); stage.focus(); });
  $(".ws-record").addEventListener("click", () => { send({ type: "record", on: !state.recording }); stage.focus(); });

  connect();
})();
