// The sharqd dashboard: reads the public JSON API every few seconds and
// draws tables and an SVG chart.  No library, no build step.
"use strict";

const params = new URLSearchParams(location.search);
const REFRESH_MS = 1000 * (Number(params.get("refresh")) || 5);
const SVG = "http://www.w3.org/2000/svg";
const SERIES = [["enqueued", "enqueue_counts"], ["dequeued", "dequeue_counts"],
                ["finished", "finish_counts"]];
const typeInHash = () => decodeURIComponent((location.hash.match(/type=([^&]+)/) || [])[1] || "");
let selected = typeInHash();
let refreshes = 0;

const $ = (selector) => document.querySelector(selector);

// With [auth] on, the API wants a token: the page asks for one when an
// answer is 401 and keeps it for this browser tab only (sessionStorage).
const TOKEN_KEY = "sharqd-token";

function api(path, options = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = token ? {...options.headers, Authorization: `Bearer ${token}`} : options.headers;
  return fetch(new URL("../" + path, location.href), {...options, headers}).then(async (response) => {
    const body = await response.json().catch(() => ({}));
    if (response.status === 401) askForToken(token ? "That token was refused." : "");
    if (!response.ok) {
      throw new Error(body.message || `${path} answered ${response.status}`);
    }
    return body;
  });
}

function askForToken(why) {
  const form = $("#login");
  if (!form.hidden) return;
  $("#login-why").textContent = why;
  form.hidden = false;
  $("#token").focus();
}

function useToken(event) {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("#token").value.trim());
  $("#token").value = "";
  $("#login").hidden = true;
  refresh();
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function number(n) {
  return Number(n).toLocaleString("en-US");
}

function duration(seconds) {
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 120) return `${seconds.toFixed(1)} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

function showError(message) {
  const box = $("#error");
  box.hidden = !message;
  box.textContent = message || "";
}

// ---- health

async function health() {
  const h = await api("health/");
  const state = $("#redis-state");
  state.className = "pill " + (h.redis.reachable ? "up" : "down");
  state.textContent = h.redis.reachable
    ? `Redis ${h.redis.address} up (${h.redis.version})`
    : `Redis ${h.redis.address} unreachable`;
  state.title = h.redis.message || "";
  $("#version").textContent = h.version;
  $("#workers").textContent = h.workers;
  $("#uptime").textContent = duration(h.uptime_seconds);
  return h.redis.reachable;
}

// ---- queue types

function types(list) {
  const body = $("#types tbody");
  body.replaceChildren();
  $("#no-types").hidden = list.length > 0;
  if (!list.some((t) => t.queue_type === selected)) {
    selected = list.length ? list[0].queue_type : "";
  }
  for (const t of list) {
    const row = body.insertRow();
    row.dataset.type = t.queue_type;
    row.classList.toggle("selected", t.queue_type === selected);
    cell(row, t.queue_type);
    cell(row, number(t.pending), "n").dataset.field = "pending";
    cell(row, number(t.active), "n").dataset.field = "active";
    cell(row, number(t.ready_queues), "n").dataset.field = "ready";
    const dead = cell(row, number(t.dead_letters), "n" + (t.dead_letters ? " warn" : ""));
    dead.dataset.field = "dead";
    cell(row, t.ready_queues ? duration(t.oldest_ready_age_seconds) : "–", "n")
      .dataset.field = "wait";
    row.addEventListener("click", () => select(t.queue_type));
  }
  for (const name of document.querySelectorAll(".type-name")) {
    name.textContent = selected || "…";
  }
}

function select(queueType) {
  selected = queueType;
  history.replaceState(null, "", "#type=" + encodeURIComponent(queueType));
  refresh();
}

// ---- the chart

function chart(metrics) {
  const svg = $("#rates");
  svg.replaceChildren();
  const minutes = Object.keys(metrics.enqueue_counts).map(Number).sort((a, b) => a - b);
  const values = SERIES.map(([, key]) => minutes.map((m) => (metrics[key] || {})[m] || 0));
  const top = niceMax(Math.max(5, ...values.flat()));
  // draw in the element's own pixels, so text keeps its size at any width
  const width = Math.max(320, Math.round(svg.getBoundingClientRect().width) || 760);
  const height = 220;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const [left, right, upper, lower] = [48, width - 16, 12, height - 30];
  const x = (i) => left + (right - left) * i / Math.max(1, minutes.length - 1);
  const y = (v) => lower - (lower - upper) * v / top;
  for (let k = 0; k <= 5; k++) {
    const v = top * k / 5;
    add(svg, "line", {x1: left, x2: right, y1: y(v), y2: y(v), class: "grid"});
    add(svg, "text", {x: left - 8, y: y(v) + 4, "text-anchor": "end", class: "axis"},
        number(Math.round(v)));
  }
  minutes.forEach((m, i) => {
    const t = new Date(m);
    const label = `${String(t.getHours()).padStart(2, "0")}:${String(t.getMinutes()).padStart(2, "0")}`;
    add(svg, "text", {x: x(i), y: lower + 20, "text-anchor": "middle", class: "axis"}, label);
  });
  SERIES.forEach(([name], s) => {
    const points = values[s].map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`);
    add(svg, "path", {d: "M" + points.join(" L"), class: "series " + name,
                      "data-series": name, "data-values": values[s].join(",")});
    values[s].forEach((v, i) => {
      const dot = add(svg, "circle", {cx: x(i), cy: y(v), r: 2.6, class: name});
      add(dot, "title", {}, `${name}: ${v}`);
    });
  });
}

// The chart's top: 5, 10, 20, 50, 100, ... (five whole-number steps).
function niceMax(value) {
  const step = Math.pow(10, Math.floor(Math.log10(value)));
  for (const m of [1, 2, 5, 10]) {
    if (m * step >= value && m * step >= 5) return m * step;
  }
  return 10 * step;
}

function add(parent, tag, attributes, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  parent.appendChild(node);
  return node;
}

// ---- the selected type: busiest queues and dead letters

function queues(answer) {
  const body = $("#queues tbody");
  body.replaceChildren();
  $("#no-queues").hidden = answer.queues.length > 0;
  const now = Date.now();
  for (const q of answer.queues) {
    const row = body.insertRow();
    row.dataset.queue = q.queue_id;
    cell(row, q.queue_id);
    cell(row, number(q.pending), "n").dataset.field = "pending";
    cell(row, number(q.active), "n").dataset.field = "active";
    cell(row, q.interval ? `${number(q.interval)} ms` : "0", "n");
    cell(row, q.ready_at === null ? "–"
      : q.ready_at <= now ? "ready now" : "in " + duration((q.ready_at - now) / 1000))
      .dataset.field = "next";
  }
}

function deadLetters(answer) {
  const body = $("#dead tbody");
  body.replaceChildren();
  $("#no-dead").hidden = answer.dead_letters.length > 0;
  $("#dead-total").textContent = answer.total ? `(${number(answer.total)})` : "";
  for (const d of answer.dead_letters) {
    const row = body.insertRow();
    row.dataset.job = d.job_id;
    cell(row, d.queue_id);
    cell(row, d.job_id);
    cell(row, new Date(d.failed_at).toLocaleTimeString()).title = d.reason;
    cell(row, JSON.stringify(d.payload), "payload").title = JSON.stringify(d.payload);
    const actions = row.insertCell();
    const path = `deadletters/${encodeURIComponent(selected)}/` +
      `${encodeURIComponent(d.queue_id)}/${encodeURIComponent(d.job_id)}/`;
    button(actions, "retry", "Retry", () => api(path + "retry/", {method: "POST"}));
    button(actions, "delete", "Delete", () => api(path, {method: "DELETE"}));
  }
}

function button(parent, className, label, action) {
  const b = document.createElement("button");
  b.className = className;
  b.textContent = label;
  b.addEventListener("click", async () => {
    b.disabled = true;
    try {
      await action();
      showError("");
    } catch (e) {
      showError(e.message);
    }
    refresh();
  });
  parent.appendChild(b);
}

// ---- refresh loop

let running = null;
let again = false;  // asked for while running: run once more after

async function refresh() {
  if (running) {
    again = true;
    return running;
  }
  running = (async () => {
    try {
      if (await health()) {
        const [typeList, metrics] = await Promise.all([api("queues/"), api("metrics/")]);
        types(typeList.queue_types);
        chart(metrics);
        if (selected) {
          const t = encodeURIComponent(selected);
          const [top, dead] = await Promise.all([
            api(`queues/${t}/?sort=pending&limit=50`), api(`deadletters/${t}/?limit=50`)]);
          queues(top);
          deadLetters(dead);
        }
        showError("");
      } else {
        showError("Redis is not reachable: the figures below are from the last refresh.");
      }
    } catch (e) {
      showError(e.message);
    }
    refreshes += 1;
    document.body.dataset.refreshes = refreshes;
    $("#refreshed").textContent = "updated " + new Date().toLocaleTimeString() +
      ` · every ${REFRESH_MS / 1000} s`;
  })();
  try {
    await running;
  } finally {
    running = null;
  }
  if (again) {
    again = false;
    await refresh();
  }
}

$("#login").addEventListener("submit", useToken);
window.addEventListener("hashchange", () => {
  if (typeInHash() && typeInHash() !== selected) select(typeInHash());
});
refresh();
setInterval(refresh, REFRESH_MS);
