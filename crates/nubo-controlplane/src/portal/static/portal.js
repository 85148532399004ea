// Nubo portal: small progressive enhancements. Every page works without
// this script; with it, parts marked data-live refresh themselves.
//
//   data-live="URL" data-every="MS"  replace the element's contents with
//                                    the HTML fragment at URL every MS ms
//   data-scroll="bottom"             keep a console scrolled to its end
//   data-confirm="Question?"         ask before posting a form
//   data-autosubmit                  submit the form when a select changes
//   data-back                        a link that goes back in history
"use strict";

(function () {
  function atBottom(el) {
    return el.scrollHeight - el.scrollTop - el.clientHeight < 24;
  }

  function scrollTargets(root) {
    var list = [];
    if (root.matches && root.matches("[data-scroll=bottom]")) list.push(root);
    root.querySelectorAll("[data-scroll=bottom]").forEach(function (el) { list.push(el); });
    return list;
  }

  function refresh(el) {
    var url = el.getAttribute("data-live");
    if (!url || document.hidden) return Promise.resolve();
    var pinned = scrollTargets(el).map(atBottom);
    return fetch(url, { credentials: "same-origin", headers: { "X-Requested-With": "nubo-portal" } })
      .then(function (r) {
        // Signed out or session expired: the page itself will say so.
        if (r.status === 401 || r.redirected) { window.location.reload(); return null; }
        return r.ok ? r.text() : null;
      })
      .then(function (html) {
        if (html === null || html === el.innerHTML) return;
        el.innerHTML = html;
        el.setAttribute("data-refreshed", String(Date.now()));
        scrollTargets(el).forEach(function (t, i) {
          if (pinned[i] !== false) t.scrollTop = t.scrollHeight;
        });
      })
      .catch(function () { /* the server is restarting: try again next round */ });
  }

  function start(el) {
    var every = parseInt(el.getAttribute("data-every") || "5000", 10);
    if (!(every >= 500)) every = 5000;
    var busy = false;
    window.setInterval(function () {
      if (busy) return;
      busy = true;
      refresh(el).then(function () { busy = false; }, function () { busy = false; });
    }, every);
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-live]").forEach(start);
    document.querySelectorAll("[data-scroll=bottom]").forEach(function (el) { el.scrollTop = el.scrollHeight; });
    document.querySelectorAll("select[data-autosubmit]").forEach(function (sel) {
      sel.addEventListener("change", function () { if (sel.form) sel.form.submit(); });
    });
    document.querySelectorAll("a[data-back]").forEach(function (a) {
      a.addEventListener("click", function (e) {
        if (window.history.length > 1) { e.preventDefault(); window.history.back(); }
      });
    });
  });

  // Confirmation for dangerous buttons; forms inside live regions are
  // replaced as they refresh, so listen on the document.
  document.addEventListener("submit", function (e) {
    var q = e.target.getAttribute && e.target.getAttribute("data-confirm");
    if (q && !window.confirm(q)) e.preventDefault();
  }, true);
})();
