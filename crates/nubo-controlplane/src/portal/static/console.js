// The portal's serial console: an xterm.js terminal joined to the
// instance's console websocket. Binary messages are the guest's bytes;
// text messages are the server's notices (ready, read-only, closed).
(function () {
  "use strict";
  var el = document.getElementById("terminal");
  var status = document.getElementById("console-status");
  if (!el || !status) return;
  if (typeof window.Terminal !== "function") {
    status.textContent = "The terminal library did not load: run scripts/web-assets.sh and start the server with --web-assets DIR.";
    return;
  }
  var term = new window.Terminal({ cursorBlink: true, rows: 30, cols: 100, scrollback: 2000 });
  term.open(el);
  var scheme = location.protocol === "https:" ? "wss:" : "ws:";
  var ws = new WebSocket(scheme + "//" + location.host + el.dataset.ws);
  ws.binaryType = "arraybuffer";
  var encoder = new TextEncoder();
  ws.onmessage = function (ev) {
    if (typeof ev.data === "string") {
      try {
        var n = JSON.parse(ev.data);
        status.textContent = n.message;
        status.dataset.event = n.event;
        el.dataset.writable = String(n.writable);
      } catch (e) { /* not a notice: ignore */ }
      return;
    }
    term.write(new Uint8Array(ev.data));
  };
  ws.onclose = function (ev) {
    status.dataset.event = "closed";
    status.textContent = "Disconnected" + (ev.reason ? ": " + ev.reason : "") + ". Reload the page to connect again.";
  };
  term.onData(function (d) {
    if (ws.readyState === WebSocket.OPEN) ws.send(encoder.encode(d));
  });
  term.focus();
})();
