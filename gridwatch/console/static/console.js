// gridwatch console: live updates over server-sent events, a little progressive enhancement.
(function () {
  "use strict";
  var page = document.body.getAttribute("data-page");
  var live = document.getElementById("live");

  function connect(onEvent) {
    if (!window.EventSource) return;
    var es = new EventSource("/events");
    es.onopen = function () { if (live) { live.className = "live on"; live.title = "live updates: connected"; } };
    es.onerror = function () { if (live) { live.className = "live off"; live.title = "live updates: reconnecting"; } };
    es.onmessage = function (m) {
      var ev;
      try { ev = JSON.parse(m.data); } catch (e) { return; }
      onEvent(ev);
    };
    return es;
  }

  function debounce(fn, ms) {
    var t = null, last = 0;
    return function () {
      var now = Date.now();
      if (t) return;
      var wait = Math.max(0, ms - (now - last));
      t = setTimeout(function () { t = null; last = Date.now(); fn(); }, wait);
    };
  }

  function loadCounts() {
    var box = document.getElementById("counts");
    if (!box) return;
    fetch("/api/counts" + location.search, { credentials: "same-origin" }).then(function (r) { return r.json(); }).then(function (c) {
      if (c.error) { box.textContent = c.error; return; }
      box.textContent = "";
      var total = document.createElement("strong");
      total.textContent = (c.total.all || 0) + " matching";
      box.appendChild(total);
      if (c.as_of && Date.now() - c.as_of.ms > 5000) {
        var asof = document.createElement("span");
        asof.className = "muted";
        asof.textContent = "(counted " + new Date(c.as_of.ms).toISOString().substring(11, 19) + " UTC)";
        box.appendChild(asof);
      }
      [["severity", "severity"], ["case_state", "case"], ["sensor_state", "sensor"], ["rule", "rule"]].forEach(function (g) {
        var group = document.createElement("span");
        group.className = "group";
        var label = document.createElement("em");
        label.textContent = g[1] + ":";
        group.appendChild(label);
        Object.keys(c[g[0]] || {}).forEach(function (k) {
          var s = document.createElement("span");
          s.className = "count " + k;
          s.textContent = k.replace("_", " ") + " " + c[g[0]][k];
          group.appendChild(s);
        });
        box.appendChild(group);
      });
    }).catch(function () { box.textContent = ""; });
  }

  if (page === "queue") {
    var rows = document.getElementById("rows");
    var refresh = debounce(function () {
      var before = {};
      rows.querySelectorAll("tr[data-id]").forEach(function (tr) { before[tr.getAttribute("data-id")] = true; });
      fetch("/queue/rows" + location.search, { credentials: "same-origin" }).then(function (r) {
        if (!r.ok) throw new Error(r.status);
        return r.text();
      }).then(function (html) {
        rows.innerHTML = html;  // rendered (and escaped) by the server
        rows.querySelectorAll("tr[data-id]").forEach(function (tr) {
          if (!before[tr.getAttribute("data-id")]) tr.classList.add("fresh");
        });
        loadCounts();
      }).catch(function () {});
    }, 300);
    loadCounts();
    connect(function () { refresh(); });
  } else if (page === "warning") {
    var head = document.querySelector("section.head");
    var id = head && head.getAttribute("data-id");
    connect(function (ev) {
      if (ev.id === id) document.getElementById("changed").hidden = false;
    });
  }

  // keyboard review: j / k move through the queue, Enter opens; on a warning, a acknowledges, u goes back
  var sel = -1;
  document.addEventListener("keydown", function (e) {
    var t = e.target && e.target.tagName;
    if (t === "INPUT" || t === "TEXTAREA" || t === "SELECT" || e.ctrlKey || e.metaKey || e.altKey) return;
    if (page === "queue") {
      var trs = Array.prototype.slice.call(document.querySelectorAll("#rows tr[data-id]"));
      if (!trs.length) return;
      if (e.key === "j" || e.key === "k") {
        sel = Math.max(0, Math.min(trs.length - 1, sel + (e.key === "j" ? 1 : -1)));
        trs.forEach(function (tr, i) { tr.classList.toggle("selected", i === sel); });
        trs[sel].scrollIntoView({ block: "nearest" });
      } else if (e.key === "Enter" && sel >= 0 && trs[sel]) {
        location.href = "/w/" + encodeURIComponent(trs[sel].getAttribute("data-id"));
      }
    } else if (page === "warning") {
      if (e.key === "a") {
        var ack = document.querySelector("form[data-action=acknowledge]");
        if (ack) ack.requestSubmit();
      } else if (e.key === "u") {
        location.href = "/";
      }
    }
  });

  // a submitted action form cannot be sent twice (the server also ignores a repeated action id)
  document.querySelectorAll("form.act").forEach(function (f) {
    f.addEventListener("submit", function () {
      var b = f.querySelector("button");
      setTimeout(function () { if (b) b.disabled = true; }, 0);
    });
  });
})();
