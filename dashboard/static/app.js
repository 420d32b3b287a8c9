// The Conveyor dashboard's script: keeps each page live from the server's event streams and
// sends the actions. Plain JavaScript, no build step; the pages read right without it.
"use strict";

(() => {
  const body = document.body;
  const page = body.dataset.page;
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const HISTORY = 60;

  const $ = (selector, root = document) => root.querySelector(selector);
  const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));
  const setText = (element, text) => {
    if (element && element.textContent !== String(text)) element.textContent = String(text);
  };

  // Outcome messages.

  let flashTimer = null;
  function flash(message, kind) {
    const box = $("#flash");
    box.textContent = message;
    box.className = `flash shown ${kind}`;
    clearTimeout(flashTimer);
    if (kind === "ok") flashTimer = setTimeout(() => box.classList.remove("shown"), 8000);
  }

  // Live connection state and the broker banner.

  function live(state) {
    body.dataset.live = state;
    setText($("#live-text"), state === "connected" ? "live" : state);
  }

  function brokerUp(up, error) {
    body.dataset.broker = up ? "up" : "down";
    $("#banner").hidden = up;
    if (!up) setText($("#banner-text"), error || "");
  }

  function showBroker(broker) {
    if (!broker) return;
    $("#broker").hidden = false;
    for (const [key, value] of Object.entries(broker)) {
      setText($(`[data-broker="${key}"]`), value);
    }
  }

  function follow(url, onMessage) {
    const source = new EventSource(url);
    source.onmessage = (event) => {
      onMessage(JSON.parse(event.data));
      live("connected");
    };
    source.onerror = () => {
      if (body.dataset.live === "connected") live("reconnecting");
    };
    return source;
  }

  // Sparklines: jobs a second finished (dark) and added (light), the last HISTORY updates.

  const histories = new Map();

  function remember(queue) {
    let history = histories.get(queue.name);
    if (queue.history) {
      history = queue.history.slice(-HISTORY);
    } else if (history && queue.point) {
      history.push(queue.point);
      if (history.length > HISTORY) history.shift();
    } else {
      history = queue.point ? [queue.point] : [];
    }
    histories.set(queue.name, history);
    return history;
  }

  const SVG = "http://www.w3.org/2000/svg";
  function drawSparkline(svg, history) {
    const width = 120, height = 28, pad = 2;
    const peak = Math.max(1e-9, ...history.flatMap(([added, done]) => [added, done]));
    const step = width / (HISTORY - 1);
    const start = width - step * (history.length - 1);
    const y = (value) => (height - pad - (value / peak) * (height - 2 * pad)).toFixed(1);
    const line = (index) => history.map((point, i) => `${(start + i * step).toFixed(1)},${y(point[index])}`).join(" ");
    const base = document.createElementNS(SVG, "line");
    base.setAttribute("x1", "0");
    base.setAttribute("x2", String(width));
    base.setAttribute("y1", String(height - pad));
    base.setAttribute("y2", String(height - pad));
    base.setAttribute("class", "base");
    svg.replaceChildren(base);
    if (history.length < 2) return;
    const area = document.createElementNS(SVG, "polygon");
    area.setAttribute("points", `${start.toFixed(1)},${height} ${line(1)} ${width},${height}`);
    area.setAttribute("class", "area");
    const added = document.createElementNS(SVG, "polyline");
    added.setAttribute("points", line(0));
    added.setAttribute("class", "added");
    const done = document.createElementNS(SVG, "polyline");
    done.setAttribute("points", line(1));
    done.setAttribute("class", "done");
    svg.append(area, added, done);
    const last = history[history.length - 1];
    svg.setAttribute("aria-label", `${last[1].toFixed(1)} jobs/s finished, ${last[0].toFixed(1)} added`);
  }

  // Overview: one row per queue, new queues added as they appear.

  function pausedBadge(cell, paused) {
    const word = paused ? "paused" : "running";
    let badge = $(".badge", cell);
    if (!badge) {
      badge = document.createElement("span");
      cell.replaceChildren(badge);
    }
    badge.className = `badge ${word}`;
    setText(badge, word);
  }

  function queueRow(name) {
    const row = document.createElement("tr");
    row.dataset.queue = name;
    const link = document.createElement("a");
    link.href = `/queues/${encodeURIComponent(name)}`;
    link.textContent = name;
    const first = document.createElement("td");
    first.className = "name";
    first.append(link);
    row.append(first);
    for (const state of ["waiting", "active", "delayed", "completed", "failed", "workers"]) {
      const cell = document.createElement("td");
      cell.className = "num";
      cell.dataset.count = state;
      row.append(cell);
    }
    for (const kind of ["added", "completed", "failed"]) {
      const cell = document.createElement("td");
      cell.className = "num";
      cell.dataset.rate = kind;
      row.append(cell);
    }
    const spark = document.createElement("td");
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("class", "sparkline");
    svg.setAttribute("viewBox", "0 0 120 28");
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("role", "img");
    spark.append(svg);
    const state = document.createElement("td");
    state.dataset.field = "paused";
    row.append(spark, state);
    return row;
  }

  function showCounts(root, queue) {
    for (const [state, count] of Object.entries(queue.counts)) {
      for (const cell of $$(`[data-count="${state}"]`, root)) setText(cell, count);
    }
  }

  function overview(snapshot) {
    const tbody = $("#queues tbody");
    const rows = new Map($$("tr[data-queue]", tbody).map((row) => [row.dataset.queue, row]));
    for (const queue of snapshot.queues) {
      let row = rows.get(queue.name);
      if (!row) {
        row = queueRow(queue.name);
        const after = $$("tr[data-queue]", tbody).find((r) => r.dataset.queue > queue.name);
        tbody.insertBefore(row, after || null);
      }
      showCounts(row, queue);
      $('[data-count="failed"]', row).classList.toggle("bad", queue.counts.failed > 0);
      for (const [kind, text] of Object.entries(queue.rates_text)) {
        setText($(`[data-rate="${kind}"]`, row), text);
      }
      pausedBadge($('[data-field="paused"]', row), queue.paused);
      drawSparkline($("svg.sparkline", row), remember(queue));
    }
    setText($("#queue-count"), $$("tr[data-queue]", tbody).length);
    $("#no-queues").hidden = snapshot.queues.length > 0 || rows.size > 0;
  }

  // Queue page: its counts, state, rates and latency.

  function queuePage(snapshot) {
    const queue = snapshot.queues.find((q) => q.name === body.dataset.queue);
    if (!queue) return;
    showCounts(document, queue);
    showPaused(queue.paused);
    for (const [kind, windows] of Object.entries(queue.rates)) {
      for (const [window, text] of Object.entries(windows)) {
        setText($(`[data-rate="${kind}-${window}"]`), text);
      }
    }
    for (const [key, text] of Object.entries(queue.latency)) {
      setText($(`[data-latency="${key}"]`), text);
    }
    drawSparkline($("svg.sparkline"), remember(queue));
  }

  function showPaused(paused) {
    const badge = $("#paused-state");
    badge.className = `badge ${paused ? "paused" : "running"}`;
    setText(badge, paused ? "paused" : "running");
    $("#pause").hidden = paused;
    $("#resume").hidden = !paused;
  }

  async function refreshJobs() {
    const response = await fetch(location.href, { headers: { Accept: "text/html" } });
    if (!response.ok) return;
    const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
    const section = $("#jobs-section", fresh);
    if (section) $("#jobs-section").replaceWith(section);
  }

  // Workers page: the table rebuilt from each snapshot.

  function cell(field, text, numeric) {
    const td = document.createElement("td");
    td.dataset.field = field;
    if (numeric) td.className = "num";
    td.textContent = String(text);
    return td;
  }

  function workersPage(snapshot) {
    const tbody = $("#workers tbody");
    const rows = snapshot.workers.map((w) => {
      const row = document.createElement("tr");
      row.dataset.worker = w.id;
      const queues = cell("queues", "");
      for (const s of w.queues) {
        const chip = document.createElement("a");
        chip.className = "chip";
        chip.href = `/queues/${encodeURIComponent(s.queue)}`;
        chip.textContent = `${s.queue} `;
        const small = document.createElement("small");
        small.textContent = `${s.held}/${s.window}`;
        chip.append(small);
        queues.append(chip);
      }
      const connected = cell("connected", w.connected);
      connected.title = w.connected_for;
      row.append(cell("name", w.name), cell("host", w.host), cell("pid", w.pid, true), queues,
        cell("window", w.window, true), cell("held", w.held, true), connected,
        cell("last_heard", w.last_heard), cell("address", w.address), cell("user", w.user));
      return row;
    });
    tbody.replaceChildren(...rows);
    setText($("#worker-count"), rows.length);
    $("#no-workers").hidden = rows.length > 0;
  }

  // Job page: the record and the timeline, live.

  const jobFields = {
    "job-name": (job) => job.name || "-",
    "job-attempts": (job) => job.attempts_text,
    "job-progress": (job) => job.progress || "-",
    "job-priority": (job) => job.priority,
    "job-key": (job) => job.key || "-",
    "job-created": (job) => job.created,
    "job-run-at": (job) => (job.state === "delayed" ? job.run : "-"),
    "job-finished": (job) => job.finished,
    "job-data": (job) => job.data,
    "job-result": (job) => job.result,
    "job-error-type": (job) => job.error_type,
    "job-error-message": (job) => job.error_message,
    "job-traceback": (job) => job.traceback,
  };

  function showJob(job) {
    const state = $("#job-state");
    state.className = `badge state-${job.state}`;
    setText(state, job.state);
    for (const [id, value] of Object.entries(jobFields)) setText($(`#${id}`), value(job));
    const bar = $("#job-progress-bar");
    bar.hidden = job.progress_percent === null;
    if (job.progress_percent !== null) bar.value = job.progress_percent;
    $("#result-card").hidden = job.state !== "completed";
    $("#error-card").hidden = !job.error_type;
    $("#retry").hidden = job.state !== "failed";
    $("#promote").hidden = job.state !== "delayed";
    $("#remove").hidden = job.state === "active";
  }

  const shownEvents = new Set();
  function addEvent(event) {
    // Two streams overlap for a moment after an action (see followJob): an event both send
    // is shown once.
    const key = `${event.kind}|${event.at}|${event.attempt}`;
    if (shownEvents.has(key)) return;
    shownEvents.add(key);
    const item = document.createElement("li");
    item.className = event.kind;
    const when = document.createElement("span");
    when.className = "when";
    when.textContent = event.time;
    const what = document.createElement("b");
    what.textContent = event.attempt ? `${event.what} (attempt ${event.attempt})` : event.what;
    const detail = document.createElement("span");
    detail.className = "detail";
    detail.textContent = event.detail;
    item.append(when, " ", what, " ", detail);
    $("#timeline").append(item);
  }

  let jobSource = null;
  function followJob() {
    // A new stream starts with the job's record as it is now; the old one is closed only once
    // the new one has answered, so that no event between the two is missed.
    const previous = jobSource;
    const source = follow(`/jobs/${body.dataset.job}/events`, (message) => {
      if (previous && previous.readyState !== EventSource.CLOSED) previous.close();
      switch (message.type) {
        case "job":
          brokerUp(true);
          showJob(message.job);
          break;
        case "event":
          addEvent(message.event);
          break;
        case "gone":
          setText($("#job-state"), "removed");
          $("#job-state").className = "badge state-removed";
          for (const id of ["retry", "promote", "remove"]) $(`#${id}`).hidden = true;
          source.close();
          break;
        case "down":
          brokerUp(false, message.message);
          break;
        case "error":
          flash(message.message, "bad");
          source.close();
          break;
      }
    });
    jobSource = source;
  }

  // Actions: a confirmation first for destructive ones, then a POST carrying the CSRF token.

  async function post(url, payload) {
    let response;
    try {
      response = await fetch(url, {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-Conveyor-CSRF": csrf },
        body: JSON.stringify(payload || {}),
      });
    } catch (error) {
      return { ok: false, message: `The dashboard cannot be reached: ${error.message}` };
    }
    try {
      return await response.json();
    } catch {
      return { ok: false, message: `HTTP ${response.status}` };
    }
  }

  function confirmed(button) {
    const dialog = $("#confirm");
    setText($("#confirm-title"), button.textContent.replace("…", "").trim() + "?");
    setText($("#confirm-text"), button.dataset.confirm);
    const fields = $("#confirm-fields");
    fields.replaceChildren();
    if (button.dataset.fields) fields.append($(`#${button.dataset.fields}-fields`).content.cloneNode(true));
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => {
        if (dialog.returnValue !== "yes") return resolve(null);
        const values = {};
        for (const input of $$("select, input", fields)) values[input.name] = input.value;
        resolve(values);
      }, { once: true });
      dialog.returnValue = "";
      dialog.showModal();
    });
  }

  async function act(button) {
    let payload = {};
    if (button.dataset.confirm) {
      payload = await confirmed(button);
      if (payload === null) return;
    }
    const action = button.dataset.action;
    const url = page === "job"
      ? `/jobs/${body.dataset.job}/${action}`
      : `/queues/${encodeURIComponent(body.dataset.queue)}/${action}`;
    button.disabled = true;
    const answer = await post(url, payload);
    button.disabled = false;
    flash(answer.message, answer.ok ? "ok" : "bad");
    if (!answer.ok) return;
    if (page === "job") {
      followJob();  // the stream starts with the job's record as it is now
    } else {
      if (action === "pause" || action === "resume") showPaused(action === "pause");
      refreshJobs();
    }
  }

  for (const button of $$("button[data-action]")) {
    button.addEventListener("click", () => act(button));
  }

  // Which page is this?

  const onSnapshot = {
    overview,
    queue: queuePage,
    workers: workersPage,
  }[page];
  if (onSnapshot) {
    follow("/events", (snapshot) => {
      brokerUp(snapshot.up, snapshot.error);
      if (!snapshot.up) return;
      showBroker(snapshot.broker);
      onSnapshot(snapshot);
    });
  } else if (page === "job") {
    followJob();
  } else if (page === "error" && !$("#banner").hidden) {
    // The broker was down when the page was made: load it again once it is back.
    follow("/events", (snapshot) => {
      if (snapshot.up) location.reload();
    });
  }
})();
