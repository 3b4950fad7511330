() => {
  // The page side of the live channel (studio/live.py). Sliders send their values over a
  // WebSocket as they move; frames come back as JPEG and are drawn over the canvas, and the
  // server applies each value to the session (one undo entry per gesture). Their Gradio
  // events fire when a drag ends (`release`; the seed box's on Enter; for the API
  // and the fallback, where this script fires them on every move), and a hidden "sync"
  // button brings the Gradio output up to date after a gesture.
  const L = (window.studioLive = {
    ws: null, key: null, seq: 0, mode: "connecting", sent: new Map(), frames: [],
    errors: [], errorKind: null, cam: null, syncTimer: null, answered: 0, gesture: 0,
    control: null,
  });
  const LATENT = ["seed", "seed-frac", "psi", "cutoff", "dir-0", "dir-1", "dir-2", "dir-3",
                  "dir-4"];
  const $ = (sel) => document.querySelector(sel);

  function setMode(mode, text) {
    L.mode = mode;
    const el = $("#live-status");
    if (el) {
      el.textContent = text;
      el.dataset.mode = mode;
    }
  }

  // ---- connecting ------------------------------------------------------------------------
  function pageBase() {
    const u = new URL(window.location.href);
    u.search = "";
    u.hash = "";
    u.pathname = u.pathname.replace(/[^/]*$/, "");
    return u;
  }

  // On a ZeroGPU Space, GPU calls are charged to the visitor by a token Gradio's client asks
  // huggingface.co for and sends as a header; a browser cannot add headers to a WebSocket,
  // so the page asks the same way and sends it with the key (studio.gpu.set_visitor).
  function zerogpuHeaders() {
    const host = window.location.hostname.endsWith(".hf.space") ? "https://huggingface.co" : null;
    if (!host || window.parent === window || !window.supports_zerogpu_headers) {
      return Promise.resolve(null);
    }
    return new Promise((resolve) => {
      const channel = new MessageChannel();
      channel.port1.onmessage = ({ data }) => { channel.port1.close(); resolve(data); };
      window.parent.postMessage("zerogpu-headers", host, [channel.port2]);
      setTimeout(() => resolve(null), 2000);
    });
  }

  function connect(key) {
    if (L.ws) L.ws.close();
    const url = new URL("live/ws", pageBase());
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (e) {
      setMode("fallback", "Gradio events (live channel unavailable)");
      return;
    }
    ws.binaryType = "arraybuffer";
    L.ws = ws;
    L.inflight = [];
    ws.onopen = () => zerogpuHeaders().then((headers) => ws.send(JSON.stringify({ key, headers })));
    ws.onmessage = (ev) => {
      if (typeof ev.data !== "string") return onFrame(ev.data);
      const m = JSON.parse(ev.data);
      if (m.hello) {
        L.osc = m.osc || null;   // where OSC messages go (studio/osc.py), null when off
        setMode("live", "Live channel (WebSocket)");
        document.dispatchEvent(new CustomEvent("studio-live-hello"));
      }
      if (m.outside !== undefined) scheduleSync();   // OSC moved a field: recipe catches up
      document.dispatchEvent(new CustomEvent("studio-live-message", { detail: m }));
      if (m.played !== undefined) playing(null);
      if (m.dropped !== undefined && L.cam) L.cam.inflight = Math.max(0, L.cam.inflight - 1);
      if (m.error) {
        if (m.kind === 0) answered(m.seq === undefined ? L.seq : m.seq);
        if (m.kind === 0 && L.playing) playing(null);
        L.errors.push(m.error);
        L.errorKind = m.kind;   // the next good frame of this kind clears it
        const el = $("#live-error");
        if (el) el.textContent = m.error;
        if (m.kind === 1 && L.cam) L.cam.inflight = Math.max(0, L.cam.inflight - 1);
      }
      pumpCam();
    };
    ws.onclose = () => {
      if (L.ws !== ws) return;
      L.ws = null;
      setMode("fallback", "Gradio events (live channel unavailable)");
      setTimeout(() => { if (!L.ws && L.key === key) connect(key); }, 5000);
    };
  }

  // The model bar hands each session its key; a new session (a reload) gets a new one.
  setInterval(() => {
    const el = $("#live-key [data-live-key]");
    const key = el && el.dataset.liveKey;
    if (key && key !== L.key) {
      L.key = key;
      connect(key);
    }
  }, 300);
  setMode("connecting", "Connecting the live channel…");

  function open() { return L.ws && L.ws.readyState === 1 && L.mode === "live"; }
  L.open = open;   // for the Performance panel's script (studio/perform.js)

  function send(msg, since) {
    msg.seq = ++L.seq;
    if (msg.g === undefined) msg.g = L.gesture;
    L.sent.set(msg.seq, since || performance.now());
    if (L.sent.size > 500) L.sent.delete(L.sent.keys().next().value);
    L.ws.send(JSON.stringify(msg));
  }

  // Control values wait here, newest per control, while EDITS_IN_FLIGHT are unanswered: the
  // server renders only the newest anyway (latest wins), so a slider moved 60 times a second
  // costs the page and the server one message per frame they can show, not one per move.
  // Two in flight keep the server busy: the next value is there when a frame is done.
  const EDITS_IN_FLIGHT = 2;
  const ANSWER_WAIT_MS = 3000;   // an answer this late is taken as lost
  L.queued = new Map();          // control -> {make, since: moved at, g: gesture}
  L.inflight = [];               // [seq, sent at] of control messages not yet answered

  function queueEdit(control, make) {
    L.queued.delete(control);    // re-added last: controls go out in the order they moved
    L.queued.set(control, { make, since: performance.now(), g: L.gesture });
    pumpEdits();
  }

  function pumpEdits() {
    if (!open()) return;
    const now = performance.now();
    L.inflight = L.inflight.filter(([, at]) => now - at < ANSWER_WAIT_MS);
    while (L.inflight.length < EDITS_IN_FLIGHT && L.queued.size) {
      const [control, q] = L.queued.entries().next().value;
      L.queued.delete(control);
      const msg = q.make();
      if (!msg) continue;
      msg.g = q.g;
      send(msg, q.since);
      L.inflight.push([msg.seq, now]);
    }
  }

  function answered(seq) {  // a frame or an error answers every message up to its seq
    L.answered = Math.max(L.answered, seq);
    L.inflight = L.inflight.filter(([s]) => s > seq);
    pumpEdits();
  }

  // ---- frames ---------------------------------------------------------------------------
  // Frames are decoded with createImageBitmap and drawn on a <canvas>: about half the
  // browser's work per frame of an <img> whose src is a new blob URL each time (that goes
  // through the browser's resource loading), which matters with several live pages open.
  L.overlay = () => overlay();
  function overlay() {
    let el = $("#live-canvas");
    if (el) return el;
    const host = $("#canvas");
    if (!host) return null;
    el = document.createElement("canvas");
    el.id = "live-canvas";
    el.setAttribute("role", "img");
    el.setAttribute("aria-label", "live canvas");
    host.appendChild(el);
    return el;
  }

  const drawn = [0, 0];   // newest sequence number drawn, per kind (decodes may overtake)

  // A JPEG (or the PNG of a rested full frame) as something drawImage takes (and close()
  // frees). WebCodecs' ImageDecoder reads the bytes as they are; a Blob, which browsers
  // without it (or an insecure origin) need, costs Chromium a round trip to its blob
  // registry per frame.
  async function decode(bytes) {
    const type = bytes[0] === 0x89 ? "image/png" : "image/jpeg";
    if (typeof ImageDecoder === "undefined") {
      return createImageBitmap(new Blob([bytes], { type }));
    }
    const decoder = new ImageDecoder({ data: bytes, type });
    try {
      return (await decoder.decode()).image;
    } finally {
      decoder.close();
    }
  }

  async function onFrame(buf) {
    const dv = new DataView(buf);
    const kind = dv.getUint8(0), seq = dv.getUint32(1), renderMs = dv.getFloat32(5);
    const shownRes = dv.getUint16(9);   // 0: the full picture; r: a preview of block r
    const t0 = kind === 0 ? L.sent.get(seq) : L.cam && L.cam.sent.get(seq);
    if (kind === 0) answered(seq);
    if (kind === 1 && L.cam) {
      L.cam.inflight = Math.max(0, L.cam.inflight - 1);
      L.cam.sent.delete(seq);
      pumpCam();
    }
    // A webcam frame that arrives after Stop is not shown.
    const el = kind === 0 ? overlay() : L.cam ? camLayer("#canvas", "canvas", "live-cam-out")
      : null;
    if (!el) return;
    let bitmap;
    try {
      bitmap = await decode(new Uint8Array(buf, 11));
    } catch (e) {
      return;   // a frame that does not decode is skipped; the next one follows
    }
    if (seq < drawn[kind]) return bitmap.close();   // a newer one is on screen
    drawn[kind] = seq;
    const w = bitmap.displayWidth || bitmap.width, h = bitmap.displayHeight || bitmap.height;
    if (el.width !== w || el.height !== h) {   // a VideoFrame or an ImageBitmap
      el.width = w;
      el.height = h;
    }
    if (kind === 1 && !L.cam) return bitmap.close();   // stopped while it decoded
    el.getContext("2d").drawImage(bitmap, 0, 0);
    bitmap.close();
    el.dataset.seq = String(seq);
    el.style.display = "block";
    if (kind === 0) showLabel(shownRes);
    const shown = performance.now();
    L.frames.push({ kind, seq, renderMs, latency: t0 ? shown - t0 : null, shown,
                    preview: shownRes });
    if (L.frames.length > 1000) L.frames.splice(0, 500);
    if (kind === 1) camStats();
    if (L.errorKind === kind) {  // a good frame: the error under the busy line is stale now
      L.errorKind = null;
      const err = $("#live-error");
      if (err) err.textContent = "";
    }
  }

  // Which picture the live canvas shows: a big model's frames while a control moves are the
  // running image of a block (studio/live.py), the full picture once the hand rests.
  function showLabel(res) {
    let el = $("#live-shown");
    if (!el) {
      const host = $("#canvas");
      if (!host) return;
      el = document.createElement("span");
      el.id = "live-shown";
      el.style.cssText = "position:absolute;left:6px;bottom:6px;padding:1px 6px;" +
        "font-size:11px;border-radius:4px;background:rgba(0,0,0,.55);color:#fff;z-index:5";
      host.appendChild(el);
    }
    el.textContent = res ? `preview b${res}` : "full";
    el.dataset.res = String(res);
    el.style.display = "block";
  }

  // A picture the Gradio events put on the canvas (a button, undo, a sync) replaces the
  // live frame: hide the overlay until the next live frame.
  new MutationObserver((records) => {
    for (const r of records) {
      const t = r.target;
      if (t.tagName === "IMG" && t.closest("#canvas")) {
        const el = $("#live-canvas");
        if (el) el.style.display = "none";
        const label = $("#live-shown");
        if (label) label.style.display = "none";
      }
    }
  }).observe(document.body, { subtree: true, attributes: true, attributeFilter: ["src"] });

  // ---- controls -------------------------------------------------------------------------
  function value(id) {
    const host = document.getElementById(id);
    if (!host) return undefined;
    const input = host.querySelector('input[type="range"]') || host.querySelector("input");
    return input ? input.value : undefined;
  }

  // Every latent control's value; `moved` is the one just moved (its box may be ahead of
  // its range while typing).
  function latentValues(movedId, moved) {
    const get = (id) => (id === movedId ? moved : value(id));
    const v = {};
    for (const id of ["seed", "seed-frac", "psi", "cutoff"]) v[id] = get(id);
    v.dir = [0, 1, 2, 3, 4].map((i) => get(`dir-${i}`)).filter((a) => a !== undefined);
    const method = $("#dir-method input:checked");
    if (method) v.method = method.value;
    return v;
  }

  function weightIndex() {
    const radios = [...document.querySelectorAll('#w-list input[type="radio"]')];
    const i = radios.findIndex((r) => r.checked);
    return i < 0 ? null : i;
  }

  // A gesture: the inputs of one control until it is let go (pointerup, change) or rests;
  // the server keeps one undo entry per gesture.
  function endGesture() { L.control = null; }
  document.addEventListener("pointerup", endGesture, true);
  document.addEventListener("change", endGesture, true);

  document.addEventListener("input", (ev) => {
    if (!ev.target || !ev.target.closest) return;
    // The control's own block (its inputs carry ids of their own).
    const block = ev.target.closest('[id^="p-slider-"], #w-amount, ' +
                                    LATENT.map((i) => "#" + i).join(", "));
    const id = block && block.id;
    if (!id) return;
    if (!open()) {
      // The fallback: the control's Gradio event (a slider's `release`, the seed box's
      // `submit`) renders every move, fired after Gradio has read the new value.
      const t = ev.target;
      const fire = id === "seed"
        ? () => t.dispatchEvent(new KeyboardEvent("keypress", { key: "Enter", bubbles: true }))
        : () => t.dispatchEvent(new PointerEvent("pointerup", { bubbles: true }));
      setTimeout(fire);
      return;
    }
    if (L.control !== id) {
      L.gesture += 1;
      L.control = id;
    }
    // The value as typed or dragged now; the message is made when it goes out.
    const moved = ev.target.value;
    if (LATENT.includes(id)) {
      queueEdit("latent", () => ({ kind: "latent", values: latentValues(id, moved) }));
    } else if (id.startsWith("p-slider-")) {
      queueEdit(id, () => ({ kind: "bend", slot: Number(id.slice(9)), value: Number(moved) }));
    } else if (id === "w-amount") {
      queueEdit(id, () => {
        const index = weightIndex();
        return index === null ? null : { kind: "weight", index, value: Number(moved) };
      });
    }
    scheduleSync();
  }, true);

  // When the gesture stops, the Gradio output (its download, the recipe) catches up: 400 ms
  // after the last movement, and not before the channel has sent and answered every value
  // (a frame or an error each). The server applies a value to the session before it
  // answers, so the sync then renders it. A channel that stays silent for 5 s is not waited
  // for.
  L.send = (msg) => send(msg);
  L.scheduleSync = () => scheduleSync();
  function scheduleSync() {
    clearTimeout(L.syncTimer);
    const since = performance.now();
    const tick = () => {
      const waiting = L.queued.size > 0 || L.inflight.length > 0;
      if (open() && waiting && performance.now() - since < 5000) {
        L.syncTimer = setTimeout(tick, 50);
        return;
      }
      endGesture();
      const b = $("#live-sync");
      if (b) b.click();
    };
    L.syncTimer = setTimeout(tick, 400);
  }

  // ---- webcam ---------------------------------------------------------------------------
  const CAM_SIDE = 256;   // frames travel at most this big; the encoder's input is smaller
  const IN_FLIGHT = 2;    // one rendering, one on the way: the server drops the rest

  // The webcam's layers in the canvas column: the translation over the output image
  // (#live-cam-out in #canvas), the camera's picture over Before (#live-cam-video in #before),
  // so both stay in view whichever controls scroll. Made once, on first use.
  function camLayer(host, tag, id) {
    let el = document.getElementById(id);
    if (el) return el;
    const parent = $(host);
    if (!parent) return null;
    el = document.createElement(tag);
    el.id = id;
    if (tag === "video") Object.assign(el, { autoplay: true, playsInline: true, muted: true });
    el.setAttribute("role", "img");
    el.setAttribute("aria-label", tag === "video" ? "camera" : "live translation");
    parent.appendChild(el);
    return el;
  }

  async function startCam() {
    if (L.cam) return stopCam();
    if (!open()) {
      $("#live-cam-stats").textContent = "the live channel is not connected; use the Webcam " +
        "box above instead.";
      return;
    }
    const stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
    const video = camLayer("#before", "video", "live-cam-video");
    video.srcObject = stream;
    await video.play();
    video.style.display = "block";
    const scale = Math.min(1, CAM_SIDE / Math.max(video.videoWidth, video.videoHeight));
    const canvas = document.createElement("canvas");
    canvas.width = Math.round(video.videoWidth * scale);
    canvas.height = Math.round(video.videoHeight * scale);
    const enc = $("#tr-encoder input");
    L.ws.send(JSON.stringify({ kind: "cam", encoder: enc ? enc.value : "" }));
    drawn[1] = 0;   // this run's frames count from 1 again
    L.cam = { stream, video, canvas, ctx: canvas.getContext("2d"), inflight: 0, seq: 0,
              sent: new Map(), on: true };
    $("#live-cam-start").textContent = "Stop live webcam";
    pumpCam();
  }

  // Stopped, the last translated frame and the frame rate would read as still running.
  function stopCam() {
    if (!L.cam) return;
    L.cam.on = false;
    L.cam.stream.getTracks().forEach((t) => t.stop());
    L.cam = null;
    $("#live-cam-start").textContent = "Start live webcam";
    $("#live-cam-stats").textContent = "";
    for (const id of ["live-cam-out", "live-cam-video"]) {
      const el = document.getElementById(id);
      if (el) el.style.display = "none";
    }
  }

  function pumpCam() {
    const c = L.cam;
    if (!c || !c.on || !open()) return;
    while (c.inflight < IN_FLIGHT) {
      c.inflight += 1;
      const seq = ++c.seq;
      c.ctx.drawImage(c.video, 0, 0, c.canvas.width, c.canvas.height);
      c.canvas.toBlob(async (blob) => {
        if (!L.cam || !open()) return;
        const body = new Uint8Array(await blob.arrayBuffer());
        const msg = new Uint8Array(5 + body.length);
        msg[0] = 1;
        new DataView(msg.buffer).setUint32(1, seq);
        msg.set(body, 5);
        c.sent.set(seq, performance.now());
        L.ws.send(msg);
      }, "image/jpeg", 0.85);
    }
  }

  function camStats() {
    const now = performance.now();
    const recent = L.frames.filter((f) => f.kind === 1 && now - f.shown < 2000);
    const lat = recent.map((f) => f.latency).filter((x) => x !== null).sort((a, b) => a - b);
    const fps = recent.length / 2;
    const p50 = lat.length ? lat[Math.floor(lat.length / 2)] : 0;
    const el = $("#live-cam-stats");
    if (el) el.textContent = `${fps.toFixed(1)} frames/s · ${p50.toFixed(0)} ms camera to screen`;
  }

  // ---- play: walks and sweeps on the canvas ----------------------------------------------
  // The Pause glyph is drawn by CSS (.pause-glyph): the emoji showed as a box on systems
  // without an emoji font.
  function playing(what) {
    const was = L.playing;
    L.playing = what;
    for (const b of document.querySelectorAll(".live-play")) {
      b.innerHTML = b.dataset.what === what
        ? '<span class="pause-glyph" aria-hidden="true"></span> Pause'
        : "▶ Play live on the canvas";
    }
    if (was && !what) {
      // Paused or played out: the output below shows the session again (a walk or sweep
      // changes nothing in it), so its frames go, those still on the way included.
      drawn[0] = Math.max(drawn[0], L.seq + 1);
      const el = $("#live-canvas");
      if (el) el.style.display = "none";
    }
  }

  function checked(id) {
    const box = $(`#${id} input[type="checkbox"]`);
    return box ? box.checked : true;
  }

  function play(what) {
    if (!open()) {
      const el = $("#live-error");
      if (el) el.textContent = "playing live needs the live channel; render the video instead.";
      return;
    }
    if (L.playing === what) {
      send({ kind: "stop" });
      return playing(null);
    }
    const text = (id) => { const i = $(`#${id} textarea, #${id} input`); return i ? i.value : ""; };
    const radio = (id) => { const i = $(`#${id} input:checked`); return i ? i.value : ""; };
    const msg = what === "walk"
      ? { kind: "play", what, seeds: text("walk-seeds"), frames: value("walk-frames"),
          fps: value("walk-fps"), loop: checked("walk-loop"), space: radio("walk-space") }
      : { kind: "play", what, param: text("sw-param"), from: text("sw-from"),
          to: text("sw-to"), frames: value("sw-frames"), fps: value("sw-fps"), loop: true };
    send(msg);
    playing(what);
  }

  document.addEventListener("click", (ev) => {
    const btn = ev.target && ev.target.closest && ev.target.closest(".live-play");
    if (btn) return play(btn.dataset.what);
    if (ev.target && ev.target.id === "live-cam-start") {
      startCam().catch((e) => {
        $("#live-cam-stats").textContent = `the camera could not start: ${e.message || e}`;
        L.cam = null;
      });
    }
  });
}
