// The bftnet dashboard: draws the state the server pushes over
// server-sent events (/api/stream), and runs controls through
// /api/control. No framework, no build step: plain DOM and SVG.
"use strict";

const BEHAVIOURS = ["honest", "silent", "equivocate", "bad-signature", "wrong-digest", "corrupt",
  "replay", "forge-certificate", "slow:200", "flood", "lie-to-clients", "fake-checkpoint", "censor",
  "starve", "omit-prepared", "stale-prepared", "worst-new-view", "withhold", "random"];
const SVG = "http://www.w3.org/2000/svg";

let page = null;           // the last state
const seen = new Set();    // event seqs shown

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function slug(text) {
  return text.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "");
}

function show(value) {
  return value === null || value === undefined ? "-" : String(value);
}

// ---- state ----

function render(state) {
  page = state;
  $("view").textContent = show(state.view) + (state.changing_view ? " (changing)" : "");
  $("primary").textContent = show(state.primary);
  $("height").textContent = show(state.height);
  const last = state.series[state.series.length - 1];
  $("rate").textContent = last ? last.rate.toFixed(1) : "-";
  $("size").textContent = `n = ${state.n}, f = ${state.f}, quorum 2f+1 = ${state.quorum}`;
  renderRing(state);
  renderNodes(state);
  renderNetwork(state);
  renderCharts(state.series);
  renderLessons(state.lessons);
  fillSelect($("node-select"), state.nodes.map((n) => String(n.id)));
}

function position(i, n) {
  const angle = -Math.PI / 2 + (2 * Math.PI * i) / n;
  return [180 + 100 * Math.cos(angle), 152 + 100 * Math.sin(angle)];
}

function renderRing(state) {
  const ring = $("ring");
  ring.replaceChildren();
  const n = state.nodes.length;
  const cut = new Set(state.network.links.filter((l) => l.cut).map((l) => `${l.from}-${l.to}`));
  for (let a = 0; a < n; a++) {
    for (let b = a + 1; b < n; b++) {
      const [x1, y1] = position(a, n);
      const [x2, y2] = position(b, n);
      const ab = cut.has(`${a}-${b}`), ba = cut.has(`${b}-${a}`);
      const downEnd = !state.nodes[a].running || !state.nodes[b].running;
      let cls = "link", stroke = "#9aa3b5", dash = "";
      if (ab || ba) { stroke = ab && ba ? "#c43c3c" : "#d9822b"; dash = "6 5"; cls = "link cut"; }
      const line = svg("line", { x1, y1, x2, y2, stroke, "stroke-width": ab || ba ? 2.5 : 2,
        "stroke-dasharray": dash, opacity: downEnd ? 0.3 : 1, class: cls, "data-link": `${a}-${b}` });
      ring.append(line);
      if (ab || ba) {
        // A cross on the cut, nearer the receiving end of a one-way cut.
        const at = ab && ba ? 0.5 : ab ? 0.7 : 0.3;
        const mx = x1 + (x2 - x1) * at, my = y1 + (y2 - y1) * at;
        ring.append(svg("circle", { cx: mx, cy: my, r: 9, fill: "#fff", stroke, "stroke-width": 2 }));
        for (const [dx, dy] of [[4, 4], [4, -4]]) {
          ring.append(svg("line", { x1: mx - dx, y1: my - dy, x2: mx + dx, y2: my + dy, stroke, "stroke-width": 2.5 }));
        }
      }
    }
  }
  state.nodes.forEach((node, i) => {
    const [x, y] = position(i, n);
    const fill = !node.running ? "#c43c3c" : node.behaviour !== "honest" ? "#d9822b" : "#2e9b5f";
    if (node.role === "primary") {
      ring.append(svg("circle", { cx: x, cy: y, r: 31, fill: "none", stroke: "#2f6fd6", "stroke-width": 4 }));
    }
    ring.append(svg("circle", { cx: x, cy: y, r: 25, fill, opacity: node.running ? 1 : 0.55 }));
    ring.append(svg("text", { x, y: y + 6, "text-anchor": "middle", fill: "#fff", "font-size": 18,
      "font-weight": "bold" }, String(node.id)));
    const label = node.running ? (node.role === "primary" ? "primary" : node.behaviour !== "honest" ? node.behaviour : "") : "DOWN";
    ring.append(svg("text", { x, y: y + (y > 152 ? 48 : -37), "text-anchor": "middle",
      fill: node.role === "primary" ? "#2f6fd6" : fill }, label));
  });
  if (!state.network.proxy_running) {
    ring.append(svg("text", { x: 180, y: 155, "text-anchor": "middle", fill: "#c43c3c" }, "fault proxy DOWN"));
  }
}

function renderNodes(state) {
  const box = $("nodes");
  box.replaceChildren();
  for (const node of state.nodes) {
    const classes = ["node", node.role === "primary" ? "primary" : "",
      !node.running ? "down" : "", node.behaviour !== "honest" ? "liar" : ""].filter(Boolean);
    const card = el("div", { class: classes.join(" "), "data-id": node.id, "data-role": node.role });
    const title = el("div", { class: "title" });
    title.append(el("span", {}, `node ${node.id}`), el("span", { class: "role" },
      node.in_view_change ? "changing view" : node.role));
    card.append(title);
    const dl = el("dl");
    const rows = [
      ["state", node.running ? (node.answering ? (node.has_quorum === false ? "up, no quorum" : "up") : "no answer") : "down"],
      ["view", show(node.view)],
      ["height", show(node.height)],
      ["behaviour", node.behaviour],
      ["pending", show(node.pending_requests)],
      ["evidence", show(node.evidence) + (node.culprits.length ? ` (against ${node.culprits.join(", ")})` : "")],
    ];
    for (const [key, value] of rows) dl.append(el("dt", {}, key), el("dd", { "data-field": key }, value));
    card.append(dl);
    box.append(card);
  }
}

function renderNetwork(state) {
  const net = state.network;
  const parts = [];
  parts.push(net.partition ? `partition ${net.partition} (dashed: cut links)` : "no partition");
  parts.push(net.delay_ms || net.jitter_ms ? `delay ${net.delay_ms} ms (+0..${net.jitter_ms})` : "no added delay");
  parts.push(net.loss_percent ? `loss ${net.loss_percent}%` : "no loss");
  if (state.extra_load) parts.push(`extra load ${state.extra_load} tx/s`);
  $("network").textContent = parts.join(" · ");
}

function chart(target, series, lines, unit) {
  const box = $(target);
  box.replaceChildren();
  const width = 420, height = 120, left = 44, bottom = 16, top = 6;
  // The last 5 minutes, or less while there is less to show (at least 30 s).
  const end = series.length ? series[series.length - 1].at_ms : Date.now();
  const span = Math.min(300000, Math.max(30000, series.length ? end - series[0].at_ms : 0));
  const start = end - span;
  let max = 0;
  for (const point of series) for (const line of lines) max = Math.max(max, point[line.key] || 0);
  max = max > 0 ? max * 1.15 : 1;
  const x = (t) => left + ((t - start) / span) * (width - left - 4);
  const y = (v) => top + (1 - v / max) * (height - top - bottom);
  for (const fraction of [0, 0.5, 1]) {
    const value = max * fraction;
    box.append(svg("line", { x1: left, x2: width, y1: y(value), y2: y(value), stroke: "#e3e6ee" }));
    box.append(svg("text", { x: left - 4, y: y(value) + 4, "text-anchor": "end", fill: "#687085", "font-size": 10 },
      value >= 100 ? value.toFixed(0) : value.toFixed(1)));
  }
  const ago = span >= 120000 ? `-${Math.round(span / 60000)} min` : `-${Math.round(span / 1000)} s`;
  box.append(svg("text", { x: left, y: height - 2, fill: "#687085", "font-size": 10 }, ago));
  box.append(svg("text", { x: width - 2, y: height - 2, "text-anchor": "end", fill: "#687085", "font-size": 10 }, "now"));
  for (const line of lines) {
    const points = series.filter((p) => p[line.key] !== null && p[line.key] !== undefined && p.at_ms >= start)
      .map((p) => `${x(p.at_ms).toFixed(1)},${y(p[line.key]).toFixed(1)}`);
    if (points.length) {
      box.append(svg("polyline", { points: points.join(" "), fill: "none", stroke: line.color, "stroke-width": 1.8 }));
    }
  }
  box.setAttribute("aria-label", unit);
}

function renderCharts(series) {
  chart("rate-chart", series, [{ key: "rate", color: "#2e9b5f" }], "tx/s");
  chart("latency-chart", series, [{ key: "p50_ms", color: "#2f6fd6" }, { key: "p99_ms", color: "#d9822b" }], "ms");
}

function renderLessons(lessons) {
  const list = $("lessons");
  list.replaceChildren();
  for (const lesson of lessons) {
    const item = el("li", { "data-concept": slug(lesson.concept) });
    item.append(el("span", { class: `concept ${slug(lesson.concept)}` }, lesson.concept), document.createTextNode(lesson.text));
    list.append(item);
  }
}

function fillSelect(select, values) {
  const current = [...select.options].map((o) => o.value).join(",");
  if (current === values.join(",")) return;
  const chosen = select.value;
  select.replaceChildren(...values.map((v) => el("option", { value: v }, v)));
  if (values.includes(chosen)) select.value = chosen;
}

// ---- events ----

function time(ms) {
  return new Date(ms).toLocaleTimeString([], { hour12: false });
}

function addEvent(event) {
  if (seen.has(event.seq)) return;
  seen.add(event.seq);
  const item = el("li", { class: `event ${event.kind}`, "data-kind": event.kind, "data-seq": event.seq });
  item.append(el("span", { class: "time" }, time(event.at_ms)), el("span", { class: "kind" }, event.kind.replace(/-/g, " ")),
    el("span", {}, event.detail));
  if (event.concept) item.append(el("div", { class: "concept" }, event.concept));
  if (event.command) item.append(el("code", {}, "$ " + event.command));
  const list = $("timeline");
  // Newest first; events arrive in seq order, but the backlog may repeat.
  const after = [...list.children].find((child) => Number(child.dataset.seq) < event.seq);
  list.insertBefore(item, after || null);
  while (list.children.length > 400) list.lastChild.remove();
}

// ---- controls ----

async function control(request) {
  const out = $("console");
  out.textContent = `running ${request.action} …`;
  try {
    const answer = await fetch("/api/control", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(request),
    });
    const reply = await answer.json();
    out.textContent = (reply.command ? `$ ${reply.command}\n` : "") + reply.output + (reply.ok ? "" : "\n(failed)");
  } catch (error) {
    out.textContent = `no answer from the dashboard: ${error}`;
  }
}

function wireControls() {
  fillSelect($("behaviour-select"), BEHAVIOURS);
  $("behaviour-select").value = "equivocate";
  for (const button of document.querySelectorAll("#controls button")) {
    button.addEventListener("click", () => {
      const node = Number($("node-select").value);
      switch (button.dataset.action) {
        case "kill": return control({ action: "kill", node });
        case "restart": return control({ action: "restart", node });
        case "restart-as": return control({ action: "restart", node, behaviour: $("behaviour-select").value });
        case "partition": return control({ action: "partition", spec: $("spec").value });
        case "heal": return control({ action: "heal" });
        case "load-start": return control({ action: "load-start", rate: Number($("load-rate").value) });
        case "load-stop": return control({ action: "load-stop" });
      }
    });
  }
}

// ---- connection ----

function connect() {
  const source = new EventSource("/api/stream");
  source.addEventListener("open", () => {
    $("connection").textContent = "live";
    $("connection").className = "online";
  });
  source.addEventListener("error", () => {
    $("connection").textContent = "reconnecting…";
    $("connection").className = "offline";
  });
  source.addEventListener("state", (message) => render(JSON.parse(message.data)));
  source.addEventListener("event", (message) => addEvent(JSON.parse(message.data)));
}

// `?poll=MS` asks for state and events every MS milliseconds instead of
// holding a stream open: for proxies that buffer streams, and for headless
// browsers whose virtual clock stops while any request is open.
async function poll(interval) {
  try {
    const [state, events] = await Promise.all([
      fetch("/api/state").then((r) => r.json()), fetch("/api/events").then((r) => r.json())]);
    if (state.nodes) render(state);
    events.forEach(addEvent);
    $("connection").textContent = `polling every ${interval} ms`;
    $("connection").className = "online";
  } catch (error) {
    $("connection").textContent = "no answer";
    $("connection").className = "offline";
  }
  setTimeout(() => poll(interval), interval);
}

wireControls();
const pollEvery = Number(new URLSearchParams(location.search).get("poll"));
if (pollEvery > 0) poll(Math.max(pollEvery, 200)); else connect();
