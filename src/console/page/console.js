// The console page: one websocket to Berth's console (Wings' protocol), the
// output in xterm.js, a command line, power buttons and gauges. The token comes
// in the page's URL (?token=) and is taken out of the address bar at once; an
// embedding panel renews it with postMessage({type: "berth-console-token", token})
// when the page tells it {type: "berth-console-token-expiring", id}.
"use strict";
(function () {
  const id = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop() || "");
  let token = new URLSearchParams(location.search).get("token") || "";
  history.replaceState(null, "", location.pathname);

  const $ = (sel) => document.querySelector(sel);
  const term = new Terminal({
    convertEol: true, disableStdin: true, scrollback: 5000, fontSize: 13,
    fontFamily: "ui-monospace, Menlo, Consolas, monospace",
    theme: { background: "#000000" },
  });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open($("#terminal"));
  fit.fit();
  window.addEventListener("resize", () => fit.fit());
  $("#name").textContent = id;

  let ws = null;
  let expired = false;
  let retry = 500;

  function notice(text) {
    const n = $("#notice");
    n.textContent = text || "";
    n.hidden = !text;
  }

  function send(event, ...args) {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ event, args }));
  }

  function status(state) {
    const s = $("#status");
    s.textContent = state;
    s.className = "status " + state;
    $("#start").disabled = state !== "offline";
    $("#stop").disabled = state === "offline";
    $("#restart").disabled = state === "stopping";
  }

  function mib(bytes) {
    return (bytes / 1048576).toFixed(1) + " MiB";
  }

  function stats(text) {
    let s;
    try { s = JSON.parse(text); } catch (_) { return; }
    const limit = s.memory_limit_bytes || 0;
    if (typeof s.memory_bytes === "number") {
      $("#memory").max = limit || 1;
      $("#memory").value = s.memory_bytes;
      $("#memory-text").textContent = mib(s.memory_bytes) + (limit ? " / " + mib(limit) : "");
    } else {
      $("#memory-text").textContent = "– / " + mib(limit) + " (no metrics)";
    }
    if (typeof s.cpu_absolute === "number") {
      $("#cpu").max = s.cpu_limit || 100;
      $("#cpu").value = s.cpu_absolute;
      $("#cpu-text").textContent = s.cpu_absolute.toFixed(1) + " %" + (s.cpu_limit ? " / " + s.cpu_limit + " %" : "");
    }
    const secs = Math.floor((s.uptime || 0) / 1000);
    $("#uptime").textContent = secs ? Math.floor(secs / 3600) + "h " + Math.floor(secs / 60) % 60 + "m " + secs % 60 + "s" : "–";
  }

  const handlers = {
    "auth success": () => { expired = false; retry = 500; notice(""); },
    "status": (state) => status(state),
    "console output": (line) => term.writeln(line),
    "stats": (text) => stats(text),
    "token expiring": () => window.parent.postMessage({ type: "berth-console-token-expiring", id }, "*"),
    "token expired": () => { expired = true; notice("The console token has expired: reload the page from your panel."); },
    "jwt error": (why) => notice("Not allowed: " + why),
    "daemon error": (why) => term.writeln("\x1b[31m[berth] " + why + "\x1b[0m"),
  };

  function connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    ws = new WebSocket(scheme + "//" + location.host + "/api/instances/" + encodeURIComponent(id) + "/ws");
    ws.onopen = () => send("auth", token);
    ws.onmessage = (m) => {
      let frame;
      try { frame = JSON.parse(m.data); } catch (_) { return; }
      const handle = handlers[frame.event];
      if (handle) handle(...(frame.args || []));
    };
    ws.onclose = (e) => {
      status("offline");
      $("#status").textContent = "disconnected";
      if (expired || e.code === 1008) return; // a refused token: reconnecting cannot help
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 10000);
    };
  }

  for (const b of document.querySelectorAll("button[data-action]")) {
    b.addEventListener("click", () => send("set state", b.dataset.action));
  }
  $("#command").addEventListener("submit", (e) => {
    e.preventDefault();
    const line = $("#line").value;
    if (line) send("send command", line);
    $("#line").value = "";
  });
  window.addEventListener("message", (e) => {
    if (e.data && e.data.type === "berth-console-token" && typeof e.data.token === "string") {
      token = e.data.token;
      send("auth", token);
    }
  });

  // What the page shows, for tests and embedding panels.
  window.berthConsole = {
    text() {
      const b = term.buffer.active;
      const lines = [];
      for (let i = 0; i < b.length; i++) lines.push(b.getLine(i).translateToString(true));
      return lines.join("\n");
    },
  };

  if (!token) notice("No token: open this page with ?token=<console token> from your panel.");
  else connect();
})();
