() => {
  // The Performance panel (studio/tabs/perform.py): how to reach this session over OSC
  // (studio/osc.py); the page's own sources come through the same live channel.
  const L = window.studioLive;
  const $ = (sel) => document.querySelector(sel);

  function showOsc() {
    const el = $("#perf-osc");
    if (!el || !L) return;
    if (L.mode !== "live") {
      el.textContent = "OSC needs the live channel, which is not connected.";
    } else if (!L.osc) {
      el.textContent = "OSC is off on this server (STUDIO_OSC; always off on a Space).";
    } else {
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
}
