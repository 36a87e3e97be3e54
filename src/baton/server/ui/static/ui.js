// Baton web UI: the little the pages do in the browser. Everything works without it except live log streaming.
(function () {
  "use strict";

  // Times: shown in UTC by the server, rewritten to the viewer's time zone (the UTC value stays in the title).
  function localTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (el) {
      if (el.dataset.local) return;
      var when = new Date(el.getAttribute("datetime"));
      if (isNaN(when)) return;
      var short = el.closest(".log-line") !== null;
      el.textContent = short ? when.toLocaleTimeString() : when.toLocaleString();
      el.dataset.local = "1";
    });
    root.querySelectorAll("text.x-tick[data-utc]").forEach(function (el) {
      var when = new Date(el.dataset.utc);
      if (!isNaN(when)) el.textContent = when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    });
  }

  // Buttons that ask first (Cancel, Revoke, Pause).
  document.addEventListener("submit", function (event) {
    var button = event.submitter || event.target.querySelector("button[data-confirm]");
    if (button && button.dataset.confirm && !window.confirm(button.dataset.confirm)) event.preventDefault();
  }, true);

  // Logs: filter by level and text, and stream new lines (server-sent events) while the run goes on.

  function logFilter() {
    var level = Number((document.getElementById("log-level") || {}).value || 0);
    var text = ((document.getElementById("log-search") || {}).value || "").toLowerCase();
    return function (line) {
      var message = line.querySelector(".msg");
      line.hidden = Number(line.dataset.level) < level || (text !== "" && message.textContent.toLowerCase().indexOf(text) < 0);
    };
  }

  function applyFilter() {
    var apply = logFilter();
    document.querySelectorAll("#logs .log-line").forEach(apply);
  }

  function logLine(entry) {
    var line = document.createElement("div");
    line.className = "log-line lv-" + entry.level;
    line.dataset.level = entry.level;
    var time = document.createElement("time");
    time.setAttribute("datetime", entry.timestamp);
    time.title = entry.timestamp + " (UTC)";
    time.textContent = new Date(entry.timestamp).toLocaleTimeString();
    time.dataset.local = "1";
    var level = document.createElement("span");
    level.className = "lvl";
    level.textContent = entry.level_name || String(entry.level);
    var message = document.createElement("span");
    message.className = "msg";
    message.textContent = entry.message;
    line.append(time, " ", level, " ", message);
    return line;
  }

  function streamLogs() {
    var box = document.getElementById("logs");
    if (!box || !window.EventSource) return;
    if (box.dataset.complete === "true") return;  // the run is over and every line is on the page
    var status = document.getElementById("log-status");
    // After the last line the page holds; a reconnect resumes after the last line received (Last-Event-ID).
    var source = new EventSource(box.dataset.stream + "?after=" + encodeURIComponent(box.dataset.after || "0"));
    if (status) status.textContent = "live";
    var apply = logFilter();
    source.addEventListener("log", function (event) {
      var empty = document.getElementById("logs-empty");
      if (empty) empty.remove();
      var atBottom = box.scrollTop + box.clientHeight >= box.scrollHeight - 20;
      var line = logLine(JSON.parse(event.data));
      apply(line);
      box.appendChild(line);
      box.dataset.after = event.lastEventId;
      if (atBottom) box.scrollTop = box.scrollHeight;
    });
    source.addEventListener("end", function (event) {
      source.close();
      var reason = JSON.parse(event.data).reason;
      if (status) status.textContent = reason === "final" ? "" : "stopped: " + reason;
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    localTimes(document);
    ["log-level", "log-search"].forEach(function (id) {
      var input = document.getElementById(id);
      if (input) input.addEventListener("input", applyFilter);
    });
    streamLogs();
  });
  // Parts htmx swaps in (live run state, the runs list) get local times too.
  document.addEventListener("htmx:afterSwap", function (event) { localTimes(event.target); });
  document.addEventListener("htmx:afterSettle", function (event) { localTimes(event.target); });
})();
