() => {
  // The Performance panel (studio/tabs/perform.py). Every source here ends as a "source"
  // message on the live channel (studio/live.js, studio/sources.py): the server plays the
  // recipe's mappings (ranges, curves, smoothing) through the channel's edit path.
  // - Web MIDI: control changes, notes and pitch bend; "learn" binds the last one moved (or
  //   a key pressed) to the slider clicked next.
  // - The microphone: loudness, bass / mid / treble energy and onsets, computed here with
  //   an AnalyserNode, sent at frame rate (never the audio itself).
  // - Keys: with "Keys play" on, a key drives its mappings (1 held, 0 released);
  //   Shift+1..9 saves the current state, 1..9 jumps back to it.
  // - Full window (Fullscreen API) with the sources' meters; the recorder.
  const L = window.studioLive;
  const $ = (sel) => document.querySelector(sel);
  const P = (window.studioPerform = {
    midi: null, mic: null, learning: false, last: null, queue: [], meters: new Map(),
    sources: new Map(), recording: false, sent: 0, performance: null,
  });
  const FRAME_MS = 1000 / 30;     // source messages go at most this often (and the mic)
  const MAX_EVENTS = 256;         // studio/sources.py MAX_EVENTS

  function status(text) {
    const el = $("#perf-status");
    if (el) el.textContent = text;
  }
  const live = () => L && L.open && L.open();

  // ---- OSC ------------------------------------------------------------------------------
  function showOsc() {
    const el = $("#perf-osc");
    if (!el || !L) return;
    if (!live()) {
      el.textContent = "OSC needs the live channel, which is not connected.";
    } else if (!L.osc) {
      el.textContent = "OSC is off on this server (STUDIO_OSC; always off on a Space).";
    } else if (el.dataset.key !== L.key) {
      el.innerHTML = "";
      const code = (t) => { const c = document.createElement("code"); c.textContent = t; return c; };
      el.append("OSC: send UDP to ", code(L.osc), " at ",
                code(`/studio/${L.key}/<field path> <number>`), " (e.g. ",
                code(`/studio/${L.key}/latent/psi 0.5`), ") or ",
                code(`/studio/${L.key}/map/<mapping name> <number>`), ".");
      el.dataset.key = L.key;
    }
  }
  document.addEventListener("studio-live-hello", showOsc);
  setInterval(showOsc, 2000);   // a reconnect or a fallback changes what it says

  // ---- source events -> the channel ----------------------------------------------------
  function label(ev) {
    if (ev.kind === "midi") {
      return ev.type === "pitchbend" ? `pitch bend ch${ev.channel + 1}`
        : `${ev.type === "cc" ? "CC" : "note"} ${ev.number} ch${ev.channel + 1}`;
    }
    return ev.kind === "audio" ? `mic ${ev.feature}` : `key ${ev.key}`;
  }

  function level(ev) {   // 0..1 for the meter
    if (ev.kind === "midi") return ev.value / (ev.type === "pitchbend" ? 16383 : 127);
    return Math.max(0, Math.min(1, ev.value));
  }

  function emit(ev, learnable = true) {
    const { value, ...source } = ev;   // eslint-disable-line no-unused-vars
    if (learnable) P.last = source;
    P.meters.set(label(ev), level(ev));
    P.sources.set(label(ev), source);
    P.queue.push(ev);
    if (P.queue.length > MAX_EVENTS) P.queue.splice(0, P.queue.length - MAX_EVENTS);
    if (!P.flushTimer) P.flushTimer = setTimeout(flush, 0);
  }

  function flush() {
    P.flushTimer = null;
    if (!P.queue.length) return;
    if (!live()) { P.queue = []; return; }
    L.send({ kind: "source", events: P.queue });
    P.queue = [];
    P.sent += 1;
    drawMeters();
  }

  // One row per source seen: its name and a bar; a click on a row starts learn with that
  // source (how a microphone feature gets mapped).
  function drawMeters() {
    const el = $("#perf-meters");
    if (!el) return;
    for (const [name, v] of P.meters) {
      let bar = el.querySelector(`[data-source="${CSS.escape(name)}"]`);
      if (!bar) {
        const span = document.createElement("span");
        span.textContent = name;
        span.dataset.learn = name;
        bar = document.createElement("div");
        bar.className = "perf-meter";
        bar.dataset.source = bar.dataset.learn = name;
        bar.append(document.createElement("i"));
        el.append(span, bar);
      }
      bar.firstChild.style.width = `${(v * 100).toFixed(1)}%`;
      bar.dataset.level = v.toFixed(3);
    }
  }
  document.addEventListener("click", (ev) => {
    const row = ev.target.closest && ev.target.closest("#perf-meters [data-learn]");
    if (!row || !P.sources.has(row.dataset.learn)) return;
    P.last = P.sources.get(row.dataset.learn);
    setLearning(true);
  });

  // ---- Web MIDI -------------------------------------------------------------------------
  function midiEvent(data) {
    const type = data[0] & 0xf0, channel = data[0] & 0x0f;
    if (type === 0xb0) return { kind: "midi", type: "cc", channel, number: data[1], value: data[2] };
    if (type === 0x90) return { kind: "midi", type: "note", channel, number: data[1], value: data[2] };
    if (type === 0x80) return { kind: "midi", type: "note", channel, number: data[1], value: 0 };
    if (type === 0xe0) return { kind: "midi", type: "pitchbend", channel, value: data[1] | (data[2] << 7) };
    return null;   // clock, aftertouch, sysex: not sources
  }

  function attachMidi(access) {
    const names = [];
    for (const input of access.inputs.values()) {
      input.onmidimessage = (e) => {
        const ev = e.data && e.data.length >= 2 ? midiEvent(e.data) : null;
        if (ev) emit(ev);
      };
      names.push(input.name || "MIDI input");
    }
    status(names.length ? `MIDI: ${names.join(", ")}` : "MIDI: no input is connected yet.");
  }

  async function startMidi() {
    if (typeof navigator.requestMIDIAccess !== "function") {
      status("This browser has no Web MIDI (Chromium, Chrome, Edge and Opera have it; " +
             "Firefox and Safari do not): use OSC, the microphone or keys here.");
      return;
    }
    try {
      P.midi = await navigator.requestMIDIAccess();
    } catch (e) {
      status(`MIDI was not allowed: ${e.message || e}`);
      return;
    }
    attachMidi(P.midi);
    P.midi.onstatechange = () => attachMidi(P.midi);
    $("#perf-midi").dataset.on = "1";
  }

  // ---- the microphone -------------------------------------------------------------------
  const BANDS = { bass: [20, 250], mid: [250, 4000], treble: [4000, 16000] };
  const clamp01 = (x) => Math.max(0, Math.min(1, x));

  // Features of one analyser frame: loudness from the waveform's RMS (-60..0 dBFS -> 0..1),
  // each band's mean magnitude (-90..-20 dB -> 0..1), onsets by spectral flux above 1.5x
  // its running mean (at most one every 100 ms).
  function features(m) {
    const an = m.analyser;
    an.getFloatTimeDomainData(m.wave);
    let sum = 0;
    for (const x of m.wave) sum += x * x;
    const rms = Math.sqrt(sum / m.wave.length);
    const out = { loudness: clamp01((20 * Math.log10(rms + 1e-9) + 60) / 60) };
    an.getFloatFrequencyData(m.spectrum);
    const hz = m.ctx.sampleRate / an.fftSize;
    let flux = 0;
    for (let i = 0; i < m.spectrum.length; i++) {
      const mag = Math.pow(10, m.spectrum[i] / 20);
      flux += Math.max(0, mag - m.prev[i]);
      m.prev[i] = mag;
    }
    for (const [band, [lo, hi]] of Object.entries(BANDS)) {
      let s = 0, n = 0;
      for (let i = Math.ceil(lo / hz); i <= Math.min(m.spectrum.length - 1, hi / hz); i++) {
        s += Math.pow(10, m.spectrum[i] / 20);
        n += 1;
      }
      out[band] = clamp01((20 * Math.log10(s / Math.max(n, 1) + 1e-9) + 90) / 70);
    }
    const now = performance.now();
    const onset = flux > 1.5 * m.fluxMean + 1e-4 && now - m.lastOnset > 100;
    if (onset) m.lastOnset = now;
    m.fluxMean = 0.9 * m.fluxMean + 0.1 * flux;
    out.onset = onset ? 1 : 0;
    return out;
  }

  async function startMic() {
    if (P.mic) return stopMic();
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      status("This page cannot use a microphone here (it needs https or localhost).");
      return;
    }
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false } });
    const ctx = new AudioContext();
    await ctx.resume();
    const analyser = ctx.createAnalyser();
    analyser.fftSize = 2048;
    analyser.smoothingTimeConstant = 0.3;
    ctx.createMediaStreamSource(stream).connect(analyser);
    const m = { stream, ctx, analyser, wave: new Float32Array(analyser.fftSize),
                spectrum: new Float32Array(analyser.frequencyBinCount),
                prev: new Float32Array(analyser.frequencyBinCount), fluxMean: 0, lastOnset: 0 };
    m.timer = setInterval(() => {
      const f = features(m);
      P.features = f;
      for (const [feature, value] of Object.entries(f)) {
        emit({ kind: "audio", feature, value }, false);
      }
    }, FRAME_MS);
    P.mic = m;
    $("#perf-mic").textContent = "Stop microphone";
    $("#perf-mic").dataset.on = "1";
    status("Microphone: its loudness, bass, mid, treble and onsets go to the server at " +
           "30 a second (the sound itself stays here).");
  }

  function stopMic() {
    const m = P.mic;
    if (!m) return;
    clearInterval(m.timer);
    m.stream.getTracks().forEach((t) => t.stop());
    m.ctx.close();
    P.mic = null;
    $("#perf-mic").textContent = "Start microphone";
    $("#perf-mic").dataset.on = "0";
  }

  // ---- learn ----------------------------------------------------------------------------
  const MAPPABLE = '#psi, #seed-frac, [id^="dir-"]:not(#dir-method), [id^="p-slider-"], #w-amount';

  function setLearning(on) {
    P.learning = on;
    document.body.classList.toggle("perf-learning", on);
    $("#perf-learn").dataset.on = on ? "1" : "0";
    if (on) status(P.last ? `Learn: click the slider for ${label(P.last)}.`
      : "Learn: move a MIDI control or press a key, then click a slider.");
  }

  function learnTarget(block) {
    const id = block.id;
    if (id === "psi") return { target: "latent.psi" };
    if (id === "seed-frac") return { target: "latent.seed" };
    // The slider's number: the server finds (or makes) its DirectionEdit.
    if (id.startsWith("dir-")) return { direction: Number(id.slice(4)) };
    if (id.startsWith("p-slider-")) return { slot: Number(id.slice(9)) };
    const radios = [...document.querySelectorAll('#w-list input[type="radio"]')];
    return { weight: radios.findIndex((r) => r.checked) };
  }

  function learn(block) {
    const range = block.querySelector('input[type="range"]');
    const name = label(P.last).replace(/[^A-Za-z0-9_-]+/g, "-").slice(0, 64);
    const msg = { kind: "learn", event: P.last, name, ...learnTarget(block) };
    if (range && block.id !== "seed-frac") msg.out = [Number(range.min), Number(range.max)];
    L.send(msg);
    status(`Mapped ${label(P.last)} to ${block.id}.`);
    setLearning(false);
    L.scheduleSync();
  }

  // A click on a slider while learning binds it and does not move it.
  document.addEventListener("pointerdown", (ev) => {
    if (!P.learning || !ev.target.closest) return;
    const block = ev.target.closest(MAPPABLE);
    if (!block) return;
    ev.preventDefault();
    ev.stopPropagation();
    if (!P.last) return status("Learn: first move a MIDI control or press a key.");
    if (!live()) return status("Learn needs the live channel, which is not connected.");
    learn(block);
  }, true);

  // ---- keys -----------------------------------------------------------------------------
  function typing(t) {
    return t && (t.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(t.tagName));
  }

  function onKey(ev, down) {
    const box = $("#perf-keys");
    if (!(box && box.checked) || typing(ev.target) || ev.ctrlKey || ev.metaKey || ev.altKey) {
      return;
    }
    const digit = /^Digit([1-9])$/.exec(ev.code);
    if (digit && down) {
      if (!live()) return;
      L.send({ kind: "state", n: Number(digit[1]), save: ev.shiftKey });
      status(ev.shiftKey ? `State ${digit[1]} saved.` : `State ${digit[1]}.`);
      if (!ev.shiftKey) L.scheduleSync();
    } else if (!digit && !(down && ev.repeat)) {
      emit({ kind: "key", key: ev.key.length === 1 ? ev.key.toLowerCase() : ev.key,
             value: down ? 1 : 0 });
    } else {
      return;
    }
    ev.preventDefault();
  }
  document.addEventListener("keydown", (ev) => onKey(ev, true));
  document.addEventListener("keyup", (ev) => onKey(ev, false));

  // ---- full window ----------------------------------------------------------------------
  function enterStage() {
    if ($("#perf-stage")) return leaveStage();
    const canvas = L.overlay();
    if (!canvas) return;
    const stage = document.createElement("div");
    stage.id = "perf-stage";
    stage.title = "Esc or a click leaves the full window";
    P.canvasHome = canvas.parentElement;
    stage.append(canvas, $("#perf-meters"));
    canvas.style.display = "block";
    document.body.append(stage);
    stage.addEventListener("click", leaveStage);
    if (stage.requestFullscreen) stage.requestFullscreen().catch(() => {});
  }

  function leaveStage() {
    const stage = $("#perf-stage");
    if (!stage) return;
    const canvas = stage.querySelector("canvas");
    if (canvas && P.canvasHome) P.canvasHome.append(canvas);
    const panel = $("#perf-panel");
    const meters = stage.querySelector("#perf-meters");
    if (meters && panel) panel.insertBefore(meters, $("#perf-recorded"));
    stage.remove();
    if (document.fullscreenElement) document.exitFullscreen().catch(() => {});
  }
  document.addEventListener("fullscreenchange", () => {
    if (!document.fullscreenElement) leaveStage();
  });
  document.addEventListener("keydown", (ev) => { if (ev.key === "Escape") leaveStage(); });

  // ---- the recorder ---------------------------------------------------------------------
  function record() {
    if (!live()) return status("Recording needs the live channel, which is not connected.");
    P.recording = !P.recording;
    L.ws.send(JSON.stringify({ kind: "record", on: P.recording }));
    const b = $("#perf-record");
    b.textContent = P.recording ? "■ Stop recording" : "● Record";
    b.dataset.on = P.recording ? "1" : "0";
    if (P.recording) $("#perf-recorded").textContent = "Recording…";
  }

  document.addEventListener("studio-live-message", (e) => {
    const r = e.detail && e.detail.recorded;
    if (!r) return;
    P.recording = false;
    P.performance = r.performance;
    const b = $("#perf-record");
    if (b) { b.textContent = "● Record"; b.dataset.on = "0"; }
    const el = $("#perf-recorded");
    if (!el) return;
    const url = URL.createObjectURL(new Blob([JSON.stringify(r.performance)],
                                              { type: "application/json" }));
    const a = document.createElement("a");
    a.href = url;
    a.download = "performance.json";
    a.textContent = "Save the performance (.json)";
    el.replaceChildren(`Recorded ${r.seconds.toFixed(1)} s, ${r.events} changes. `, a,
                       " · render it to mp4 below.");
  });

  // The panel floats (studio/tabs/perform.py); a button after the intro line opens it
  // (in the page's flow: a floating button would cover controls other tests click).
  function placeOpener() {
    const intro = $("#intro");
    if (!intro || $("#perf-open")) return;
    const b = document.createElement("button");
    b.id = "perf-open";
    b.textContent = "Perform: OSC, MIDI, microphone, keys…";
    b.title = "Play the canvas: OSC, MIDI, microphone, keys, full window, recorder";
    (intro.querySelector("p:last-of-type") || intro).append(" ", b);
  }
  placeOpener();
  setInterval(placeOpener, 1000);   // the intro may be drawn after this script runs

  document.addEventListener("click", (ev) => {
    const id = ev.target && ev.target.id;
    if (id === "perf-open" || id === "perf-close") {
      $("#perf-acc").classList.toggle("perf-open", id === "perf-open");
      showOsc();
    } else if (id === "perf-midi") startMidi();
    else if (id === "perf-mic") startMic().catch((e) => status(`The microphone could not start: ${e.message || e}`));
    else if (id === "perf-learn") setLearning(!P.learning);
    else if (id === "perf-full") enterStage();
    else if (id === "perf-record") record();
  });
}
