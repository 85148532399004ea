// The portal's graphical console: noVNC, admitted by a single-use ticket
// the page asks for (POST .../console/vnc-ticket with the session's CSRF
// token), over the control plane's websocket relay.
import RFB from "/ui/vendor/@novnc/novnc/core/rfb.js";

const el = document.getElementById("screen");
const status = document.getElementById("console-status");
const cad = document.getElementById("ctrl-alt-del");

async function connect() {
  const resp = await fetch(el.dataset.ticket, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: "csrf=" + encodeURIComponent(el.dataset.csrf),
    credentials: "same-origin",
  });
  if (!resp.ok) {
    status.textContent = "cannot get a ticket for the graphical console (HTTP " + resp.status + "): reload the page; " +
      "the graphical console needs the member role and a running instance";
    return;
  }
  const body = await resp.json();
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const rfb = new RFB(el, scheme + "//" + location.host + el.dataset.ws + "?ticket=" + encodeURIComponent(body.ticket));
  rfb.scaleViewport = true;
  rfb.addEventListener("connect", () => {
    status.textContent = "Connected.";
    status.dataset.event = "ready";
  });
  rfb.addEventListener("disconnect", (e) => {
    status.dataset.event = "closed";
    status.textContent = (e.detail.clean ? "Disconnected." : "The connection broke.") + " Reload the page to connect again.";
  });
  cad.addEventListener("click", () => rfb.sendCtrlAltDel());
  cad.disabled = false;
}

if (el && status && cad) {
  connect().catch((e) => { status.textContent = "cannot open the graphical console: " + e; });
}
