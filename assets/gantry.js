// Gantry's pages work without this file; it adds live updates to a running run's page and
// checks the run form in the browser before the server checks it again.
"use strict";

// Lines kept per step log in the page while following; older ones are dropped from the top.
const MAX_LINES = 5000;

function follow(root) {
  const runId = root.dataset.run;
  let url = "/runs/" + encodeURIComponent(runId) + "/events";
  if (root.dataset.cursor) url += "?after=" + encodeURIComponent(root.dataset.cursor);
  const source = new EventSource(url);
  source.addEventListener("log", (e) => {
    const data = JSON.parse(e.data);
    const pre = document.querySelector('pre[data-step-log="' + data.step + '"]');
    if (!pre) return;
    const stick = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    const span = document.createElement("span");
    span.className = "line " + data.stream;
    span.id = "s" + data.step + "-" + data.anchor;
    const link = document.createElement("a");
    link.className = "ll";
    link.title = "link to this line";
    link.href = pre.dataset.logPage + "?at=" + data.chunk + "#" + data.anchor;
    link.textContent = "#";
    // The server sends the line escaped, with colour spans of its own only.
    span.innerHTML = data.html;
    span.insertBefore(link, span.firstChild);
    pre.appendChild(span);
    pre.appendChild(document.createTextNode("\n"));
    while (pre.childNodes.length > 2 * MAX_LINES) {
      pre.removeChild(pre.firstChild);
      pre.removeChild(pre.firstChild);
    }
    if (stick) pre.scrollTop = pre.scrollHeight;
  });
  source.addEventListener("step", (e) => {
    const data = JSON.parse(e.data);
    document.querySelectorAll('[data-step-state="' + data.index + '"]').forEach((badge) => {
      badge.textContent = data.state;
      badge.className = "badge " + data.state;
    });
    if (data.duration) {
      document.querySelectorAll('[data-step-duration="' + data.index + '"]').forEach((d) => {
        d.textContent = data.duration;
      });
    }
  });
  source.addEventListener("run", (e) => {
    const data = JSON.parse(e.data);
    const badge = document.getElementById("run-status");
    if (badge) {
      badge.textContent = data.status;
      badge.className = "badge " + data.status;
    }
  });
  source.addEventListener("end", () => {
    source.close();
    // The finished page has what only the end gives (outputs, publications, the rerun button).
    window.location.reload();
  });
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) source.close();
    else if (source.readyState === EventSource.CLOSED) window.location.reload();
  });
}

function checkForm(form) {
  form.addEventListener("submit", (e) => {
    let first = null;
    form.querySelectorAll("input, select").forEach((input) => {
      const out = document.getElementById("e-" + input.name);
      if (!out) return;
      const field = input.closest(".field");
      if (input.checkValidity()) {
        out.textContent = "";
        field.classList.remove("has-error");
      } else {
        out.textContent = input.validationMessage;
        field.classList.add("has-error");
        if (!first) first = input;
      }
    });
    if (first) {
      e.preventDefault();
      first.focus();
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const run = document.getElementById("run");
  if (run && run.dataset.live === "true") follow(run);
  const form = document.getElementById("runform");
  if (form) checkForm(form);
});
