// palate label: keyboard shortcuts, click-to-rank and the expiry countdown. The pages work without this file.
(function () {
  "use strict";
  document.documentElement.classList.add("js");
  Array.prototype.forEach.call(document.querySelectorAll("time[datetime]"), function (t) {  // HH:MM UTC -> local time
    var d = new Date(t.getAttribute("datetime"));
    if (!isNaN(d.getTime())) { t.title = t.textContent; t.textContent = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }); }
  });
  var form = document.getElementById("task");
  if (!form) return;
  var task = document.body.dataset.task;
  var started = Date.now();
  form.addEventListener("submit", function () {
    form.elements.duration_ms.value = String(Date.now() - started);
  });

  // The assignment's deadline: the page says when; a warning shows data-warn-before seconds ahead.
  var deadline = document.getElementById("deadline"), warning = document.getElementById("expiry-warning");
  if (deadline && warning) {
    var end = started + Number(deadline.dataset.expiresIn) * 1000, warnBefore = Number(deadline.dataset.warnBefore);
    var tick = function () {
      var left = Math.round((end - Date.now()) / 1000);
      if (left > warnBefore) return;
      warning.hidden = false;
      warning.textContent = left > 0
        ? "This task expires in " + Math.floor(left / 60) + " min " + String(left % 60).padStart(2, "0") + " s: submit or skip it soon."
        : "This task has expired: its item may go to another labeler. Reload for a new task.";
    };
    tick();
    setInterval(tick, 1000);
  }
  function typing(e) {
    var t = e.target && e.target.tagName;
    return t === "TEXTAREA" || t === "INPUT" && e.target.type !== "radio" || t === "SELECT" || t === "SUMMARY";
  }
  function press(button) { if (button) { button.focus(); form.requestSubmit(button); } }

  if (task === "pairwise" || task === "thumbs") {
    document.addEventListener("keydown", function (e) {
      if (typing(e) || e.ctrlKey || e.metaKey || e.altKey) return;
      var key = e.key === "Spacebar" ? " " : e.key;
      var alias = { a: "1", b: "2", t: " ", x: "4", ArrowUp: "1", ArrowDown: "2" };
      key = alias[key] || key;
      var button = form.querySelector('button[data-key="' + (key === " " ? " " : key) + '"]');
      if (button) { e.preventDefault(); press(button); }
    });
  }

  if (task === "ranking") {
    var cards = Array.prototype.slice.call(form.querySelectorAll(".rankable"));
    var order = [];
    if (form.dataset.edit) {  // changing an answer: start from the stored ranking (the rank selects hold it)
      order = cards.slice().sort(function (a, b) {
        return Number(a.querySelector("select").value) - Number(b.querySelector("select").value);
      }).map(function (c) { return Number(c.dataset.pos); });
    }
    var draw = function () {
      cards.forEach(function (c) {
        var pos = Number(c.dataset.pos), place = order.indexOf(pos);
        c.classList.toggle("ranked", place >= 0);
        c.querySelector(".badge").textContent = place >= 0 ? String(place + 1) : "";
        c.setAttribute("aria-pressed", place >= 0 ? "true" : "false");
      });
      form.elements.order.value = order.length === cards.length ? order.join(",") : "";
    };
    var pick = function (pos) {
      if (order.indexOf(pos) < 0) order.push(pos);
      if (order.length === cards.length - 1) {  // the last one is implied
        cards.forEach(function (c) { var p = Number(c.dataset.pos); if (order.indexOf(p) < 0) order.push(p); });
      }
      draw();
    };
    cards.forEach(function (c) {
      c.addEventListener("click", function (e) { if (e.target.tagName !== "SELECT") pick(Number(c.dataset.pos)); });
    });
    document.getElementById("undo").addEventListener("click", function () { order.pop(); draw(); });
    form.addEventListener("submit", function (e) {
      if (order.length !== cards.length) { e.preventDefault(); alert("Rank every response first (click them from best to worst)."); }
    });
    document.addEventListener("keydown", function (e) {
      if (typing(e) || e.ctrlKey || e.metaKey || e.altKey) return;
      var n = Number(e.key);
      if (n >= 1 && n <= cards.length) { e.preventDefault(); pick(n - 1); }
      else if (e.key === "Backspace" || e.key === "u") { e.preventDefault(); order.pop(); draw(); }
      else if (e.key === "Enter") { e.preventDefault(); if (order.length === cards.length) form.requestSubmit(); }
    });
    draw();
  }

  if (task === "rating") {
    var groups = Array.prototype.slice.call(form.querySelectorAll(".likert"));
    var current = 0;
    var mark = function () { groups.forEach(function (g, i) { g.classList.toggle("current", i === current); }); };
    groups.forEach(function (g, i) {
      g.addEventListener("change", function () { current = Math.min(i + 1, groups.length - 1); mark(); });
    });
    document.addEventListener("keydown", function (e) {
      if (typing(e) || e.ctrlKey || e.metaKey || e.altKey) return;
      if (e.key === "Enter") { e.preventDefault(); form.requestSubmit(); return; }
      if (e.key === "ArrowUp" || e.key === "ArrowDown") {
        e.preventDefault(); current = Math.max(0, Math.min(groups.length - 1, current + (e.key === "ArrowUp" ? -1 : 1))); mark(); return;
      }
      var input = groups[current] && groups[current].querySelector('input[value="' + e.key + '"]');
      if (input) {
        e.preventDefault(); input.checked = true;
        input.dispatchEvent(new Event("change", { bubbles: true }));
      }
    });
    mark();
  }
})();
