// The playground page: a live view of a local rumor cluster (or of the
// simulator), talking only to the playground's own JSON API (/api/...).
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import "./style.css";

const $ = (sel, root = document) => root.querySelector(sel);
const el = (tag, attrs = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(e.dataset, v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) e.append(c);
  return e;
};
const SVG = "http://www.w3.org/2000/svg";
const svg = (tag, attrs = {}) => {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
};

async function api(path, body) {
  const init = body === undefined ? {} : { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) };
  const r = await fetch(path, init);
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(data.error || `${r.status} ${r.statusText}`);
  return data;
}

// One colour per worker, stable by name.
const PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"];
const colour = (name) => {
  const n = parseInt((name.match(/(\d+)$/) || [0, 0])[1], 10);
  return PALETTE[(n + PALETTE.length - 1) % PALETTE.length];
};

function toast(msg, bad = false) {
  const t = el("div", { class: bad ? "toast bad" : "toast" }, msg);
  document.body.append(t);
  setTimeout(() => t.remove(), bad ? 6000 : 3000);
}

api("/api/info")
  .then((info) => (info.mode === "sim" ? startSim(info.sim) : startCluster(info)))
  .catch((e) => $("#app").replaceChildren(el("p", { class: "bad" }, `The playground does not answer: ${e.message}`)));

// ---------------------------------------------------------------- cluster

function startCluster(info) {
  $("#info").append(
    el("span", {}, `preset ${info.preset}`),
    el("span", {}, `event log: ${info.log}`),
    info.backend ? el("span", {}, `model: ${info.backend}`) : el("span", {}, "workers echo"),
  );
  const app = $("#app");
  app.replaceChildren();

  const viewSelect = el("select", { id: "view", title: "Whose view of the cluster to show" });
  const nodesGrid = el("div", { id: "nodes", class: "nodes" });
  const agree = el("span", { id: "agree", class: "pill" });
  const nodesPanel = el(
    "section",
    { class: "panel wide" },
    el("h2", {}, "Nodes ", el("small", {}, "as ", viewSelect, " sees them "), agree),
    nodesGrid,
    el(
      "div",
      { class: "row" },
      el("button", { id: "add-worker", onclick: () => act(api("/api/workers", {}), "worker added") }, "Add a worker"),
      el("button", { id: "rotate-key", onclick: () => act(api("/api/keys/rotate", {}), "gossip key rotated") }, "Rotate the gossip key"),
    ),
  );

  const ringSvg = svg("svg", { viewBox: "-110 -110 220 220", id: "ring", class: "ring" });
  const ringLegend = el("ul", { class: "legend", id: "ring-legend" });
  const ownerKey = el("input", { id: "owner-key", value: "chat-1", placeholder: "conversation key" });
  const ownerOut = el("span", { id: "owner-out" });
  const ringPanel = el(
    "section",
    { class: "panel" },
    el("h2", {}, "The ring ", el("small", {}, "each worker's share of the key space")),
    el("div", { class: "ring-box" }, ringSvg, ringLegend),
    el(
      "form",
      { class: "row", onsubmit: (e) => (e.preventDefault(), owner()) },
      ownerKey,
      el("button", { id: "owner-go" }, "Who owns it?"),
      ownerOut,
    ),
  );

  const flowSvg = svg("svg", { viewBox: "0 0 400 220", id: "flows", class: "flows" });
  const flowList = el("ul", { class: "log", id: "flow-list" });
  const flowPanel = el("section", { class: "panel" }, el("h2", {}, "Messages ", el("small", {}, "gateway to worker")), flowSvg, flowList);

  const chatKey = el("input", { id: "chat-key", value: "chat-1", placeholder: "conversation key" });
  const chatText = el("input", { id: "chat-text", placeholder: "say something", class: "grow" });
  const transcript = el("div", { id: "transcript", class: "transcript" });
  const chatPanel = el(
    "section",
    { class: "panel" },
    el("h2", {}, "Chat ", el("small", {}, "through the gateway's client edge")),
    transcript,
    el("form", { class: "row", onsubmit: (e) => (e.preventDefault(), chat()) }, chatKey, chatText, el("button", { id: "chat-send" }, "Send")),
  );

  const gossipFrom = el("select", { id: "gossip-from" });
  const gossipText = el("input", { id: "gossip-text", value: "hello, cluster", class: "grow" });
  const gossipChart = el("div", { id: "gossip-chart" });
  const gossipResult = el("div", { id: "gossip-result", class: "muted" }, "Create a gossip message to time its spread.");
  const gossipPanel = el(
    "section",
    { class: "panel" },
    el("h2", {}, "Gossip ", el("small", {}, "time to reach every node, against the simulator's prediction")),
    el("form", { class: "row", onsubmit: (e) => (e.preventDefault(), gossip()) }, gossipFrom, gossipText, el("button", { id: "gossip-create" }, "Create gossip message")),
    gossipResult,
    gossipChart,
  );

  const actions = el("ul", { class: "log", id: "actions" });
  const actionsPanel = el("section", { class: "panel" }, el("h2", {}, "What happened"), actions);

  app.append(nodesPanel, chatPanel, ringPanel, flowPanel, gossipPanel, actionsPanel);

  let state = null;
  let seenFlows = -1;
  let accepted = {};

  async function act(promise, ok) {
    try {
      await promise;
      toast(ok);
    } catch (e) {
      toast(e.message, true);
    }
    refresh();
  }
  const nodeAct = (name, action, q = "") => act(api(`/api/nodes/${encodeURIComponent(name)}/${action}${q}`, {}), `${name}: ${action}`);

  function card(n) {
    const running = n.process === "running";
    const buttons = [];
    if (running) {
      buttons.push(el("button", { class: "danger", dataset: { action: "kill" }, onclick: () => nodeAct(n.name, "kill") }, "Kill"));
      buttons.push(
        n.isolated
          ? el("button", { dataset: { action: "repair" }, onclick: () => nodeAct(n.name, "repair") }, "Repair")
          : el("button", { dataset: { action: "isolate" }, onclick: () => nodeAct(n.name, "isolate") }, "Cut off"),
      );
      buttons.push(
        n.delay_ms > 0
          ? el("button", { dataset: { action: "unslow" }, onclick: () => nodeAct(n.name, "slow", "?ms=0") }, "Unslow")
          : el("button", { dataset: { action: "slow" }, title: `Delay its gossip by ${info.slow_ms} ms`, onclick: () => nodeAct(n.name, "slow") }, "Slow link"),
      );
      if (n.role === "worker") buttons.push(el("button", { dataset: { action: "stop" }, onclick: () => nodeAct(n.name, "stop") }, "Remove"));
    } else {
      buttons.push(el("button", { dataset: { action: "restart" }, onclick: () => nodeAct(n.name, "restart") }, "Restart"));
    }
    const flags = [];
    if (n.isolated) flags.push("cut off");
    if (n.delay_ms > 0) flags.push(`link +${n.delay_ms} ms`);
    if (!running) flags.push(`process ${n.process}`);
    return el(
      "div",
      { class: `node ${n.status} ${running ? "" : "down"}`, dataset: { node: n.name, status: n.status, process: n.process } },
      el("div", { class: "node-head" }, el("b", {}, n.name), el("span", { class: `badge ${n.status}` }, n.status)),
      el("div", { class: "muted" }, n.role, n.role === "worker" && n.accepted != null ? ` · ${n.accepted} messages` : "", n.incarnation != null ? ` · inc ${n.incarnation}` : ""),
      el("div", { class: "flags" }, flags.join(" · ")),
      el("div", { class: "buttons" }, buttons),
    );
  }

  function drawRing(ring) {
    ringSvg.replaceChildren();
    ringLegend.replaceChildren();
    if (!ring || !ring.workers.length) {
      ringSvg.append(svg("circle", { r: 80, fill: "none", stroke: "#ccc", "stroke-width": 30 }));
      return;
    }
    let a = -Math.PI / 2;
    for (const w of ring.workers) {
      const sweep = Math.max(w.share, 0.0001) * 2 * Math.PI;
      const [x0, y0, x1, y1] = [Math.cos(a) * 80, Math.sin(a) * 80, Math.cos(a + sweep) * 80, Math.sin(a + sweep) * 80];
      const large = sweep > Math.PI ? 1 : 0;
      const path = svg("path", { d: `M ${x0} ${y0} A 80 80 0 ${large} 1 ${x1} ${y1}`, fill: "none", stroke: colour(w.name), "stroke-width": 30 });
      path.append(Object.assign(svg("title"), { textContent: `${w.name}: ${(w.share * 100).toFixed(1)}%` }));
      ringSvg.append(path);
      a += sweep;
      ringLegend.append(el("li", { dataset: { worker: w.name } }, el("i", { style: `background:${colour(w.name)}` }), `${w.name} ${(w.share * 100).toFixed(1)}%`));
    }
    const label = svg("text", { "text-anchor": "middle", y: 5, class: "ring-label" });
    label.textContent = `${ring.workers.length} workers`;
    ringSvg.append(label);
  }

  // The gateway on the left, workers on the right; a dot runs along a line
  // for each message a worker accepted since the last look.
  function drawFlows(nodes) {
    const workers = nodes.filter((n) => n.role === "worker");
    const gateways = nodes.filter((n) => n.role === "gateway");
    flowSvg.replaceChildren();
    const gy = 110;
    const pos = {};
    workers.forEach((w, i) => (pos[w.name] = 20 + (i + 0.5) * (180 / Math.max(workers.length, 1))));
    for (const g of gateways) {
      flowSvg.append(svg("circle", { cx: 40, cy: gy, r: 16, class: `dot ${g.status}` }));
      const t = svg("text", { x: 40, y: gy + 32, "text-anchor": "middle" });
      t.textContent = g.name;
      flowSvg.append(t);
    }
    for (const w of workers) {
      const y = pos[w.name];
      flowSvg.append(svg("line", { x1: 56, y1: gy, x2: 290, y2: y, class: "wire" }));
      flowSvg.append(svg("circle", { cx: 300, cy: y, r: 10, fill: colour(w.name), class: `dot ${w.status}` }));
      const t = svg("text", { x: 315, y: y + 4 });
      t.textContent = w.accepted != null ? `${w.name} · ${w.accepted}` : w.name;
      flowSvg.append(t);
      const before = accepted[w.name];
      if (before != null && w.accepted != null && w.accepted > before) {
        for (let k = 0; k < Math.min(w.accepted - before, 5); k++) pulse(y, colour(w.name), k * 120);
      }
      if (w.accepted != null) accepted[w.name] = w.accepted;
    }
    function pulse(y, fill, delay) {
      const c = svg("circle", { r: 5, fill, cx: 56, cy: gy });
      flowSvg.append(c);
      const t0 = performance.now() + delay;
      const step = (now) => {
        const f = Math.min(Math.max((now - t0) / 500, 0), 1);
        c.setAttribute("cx", 56 + f * (290 - 56));
        c.setAttribute("cy", gy + f * (y - gy));
        if (f < 1) requestAnimationFrame(step);
        else c.remove();
      };
      requestAnimationFrame(step);
    }
  }

  function render(s) {
    state = s;
    // The view selector keeps the current choice.
    const names = s.nodes.map((n) => n.name);
    for (const sel of [viewSelect, gossipFrom]) {
      const current = sel.value || (sel === viewSelect ? s.view : "");
      if ([...sel.options].map((o) => o.value).join() !== names.join()) {
        sel.replaceChildren(...names.map((n) => el("option", { value: n }, n)));
      }
      if (current && names.includes(current)) sel.value = current;
    }
    nodesGrid.replaceChildren(...s.nodes.map(card));
    nodesGrid.dataset.view = s.view;
    nodesGrid.dataset.viewAnswers = s.view_answers;
    agree.textContent = s.rings_agree ? "every node computes the same ring" : "nodes disagree about the ring";
    agree.className = `pill ${s.rings_agree ? "ok" : "warn"}`;
    if (!s.view_answers) agree.textContent = `${s.view} does not answer`;
    const age = Date.now() - s.t;
    if (age > 2000) {
      agree.textContent = `as of ${(age / 1000).toFixed(0)} s ago (an action is running)`;
      agree.className = "pill warn";
    }
    drawRing(s.ring);
    drawFlows(s.nodes);
    if (s.sent !== seenFlows) {
      seenFlows = s.sent;
      flowList.replaceChildren(
        ...s.flows
          .slice()
          .reverse()
          .map((f) => el("li", {}, `${f.key} → ${f.gateway} → `, el("b", { style: `color:${colour(f.worker)}` }, f.worker), ` (${f.ms} ms)`)),
      );
    }
    actions.replaceChildren(
      ...s.actions
        .slice()
        .reverse()
        .map((a) => el("li", {}, el("time", {}, new Date(a.t).toLocaleTimeString()), " ", a.text)),
    );
  }

  async function refresh() {
    try {
      render(await api(`/api/state?view=${encodeURIComponent(viewSelect.value || "")}`));
      document.body.classList.remove("offline");
    } catch (e) {
      document.body.classList.add("offline");
    }
  }
  viewSelect.addEventListener("change", refresh);
  setInterval(refresh, 300);
  refresh();

  async function owner() {
    try {
      const r = await api(`/api/owner?key=${encodeURIComponent(ownerKey.value)}&view=${encodeURIComponent(viewSelect.value)}`);
      ownerOut.replaceChildren(el("b", { style: `color:${colour(r.owner || "")}` }, r.owner || "nobody"), ` (as ${r.view} sees the ring)`);
      ownerOut.dataset.owner = r.owner || "";
    } catch (e) {
      toast(e.message, true);
    }
  }

  async function chat() {
    const key = chatKey.value.trim();
    const text = chatText.value.trim();
    if (!key || !text) return;
    chatText.value = "";
    const mine = el("div", { class: "msg mine" }, el("small", {}, key), text);
    const pending = el("div", { class: "msg reply pending" }, "…");
    transcript.append(mine, pending);
    transcript.scrollTop = transcript.scrollHeight;
    try {
      const r = await api("/api/send", { key, text });
      pending.classList.remove("pending");
      pending.dataset.worker = r.reply.worker;
      pending.replaceChildren(
        el("small", {}, "answered by ", el("b", { style: `color:${colour(r.reply.worker)}` }, r.reply.worker), ` via ${r.gateway} in ${r.ms} ms`),
        r.reply.text,
      );
    } catch (e) {
      pending.classList.replace("pending", "failed");
      pending.textContent = `failed: ${e.message}`;
    }
    transcript.scrollTop = transcript.scrollHeight;
  }

  let chart = null;
  async function gossip() {
    gossipResult.textContent = "waiting for every node…";
    try {
      const g = await api("/api/gossip", { from: gossipFrom.value, text: gossipText.value });
      const last = g.receipts.length ? g.receipts[g.receipts.length - 1].ms : 0;
      gossipResult.dataset.received = g.receipts.length;
      gossipResult.dataset.nodes = g.nodes;
      gossipResult.replaceChildren(
        el("b", {}, `${g.receipts.length} of ${g.nodes} nodes`),
        ` had ${g.origin}#${g.seq} after ${last} ms`,
        g.missing.length ? ` (not: ${g.missing.join(", ")})` : "",
        el("ul", { class: "receipts" }, g.receipts.map((r) => el("li", { dataset: { node: r.node } }, `${r.node} ${r.ms} ms`))),
      );
      plotGossip(g);
    } catch (e) {
      gossipResult.textContent = `failed: ${e.message}`;
    }
  }

  function plotGossip(g) {
    // x: ms after creation; y: nodes that have it. This cluster's receipts
    // and the simulator's (the mean time of the k-th receipt over 21 seeds
    // of a cluster this size), both as step lines.
    const lastReal = g.receipts.length ? g.receipts[g.receipts.length - 1].ms : 0;
    const lastPredicted = g.prediction.length ? g.prediction[g.prediction.length - 1] : 0;
    const horizon = Math.max(lastReal, lastPredicted, 10) * 1.15;
    const xs = [];
    for (let k = 0; k <= 200; k++) xs.push((horizon * k) / 200);
    const real = xs.map((t) => g.receipts.filter((r) => r.ms <= t).length);
    const predicted = xs.map((t) => g.prediction.filter((p) => p <= t).length);
    const stepped = uPlot.paths.stepped({ align: 1 });
    const opts = {
      width: Math.min(gossipPanel.clientWidth - 24, 560),
      height: 220,
      scales: { x: { time: false }, y: { range: [0, g.nodes] } },
      axes: [{ label: "ms after it was created" }, { label: "nodes that have it" }],
      series: [
        {},
        { label: "this cluster", stroke: "#e15759", width: 2, paths: stepped },
        { label: "simulator (mean of 21 seeds)", stroke: "#4e79a7", width: 2, dash: [6, 4], paths: stepped },
      ],
    };
    if (chart) chart.destroy();
    chart = new uPlot(opts, [xs, real, predicted], gossipChart);
  }
}

// ---------------------------------------------------------------- simulator

function startSim(sim) {
  $("#info").append(el("span", {}, `simulator: ${sim.nodes} nodes, seed ${sim.seed}, preset ${sim.preset}`), el("span", {}, `as ${sim.observer} sees them`));
  const app = $("#app");
  app.replaceChildren();
  const canvas = el("canvas", { id: "sim-canvas", width: 720, height: 480 });
  const time = el("span", { id: "sim-time", class: "pill" }, "0.0 s");
  const counts = el("div", { id: "sim-counts", class: "muted" });
  const scrub = el("input", { id: "sim-scrub", type: "range", min: 0, max: 0, value: 0, class: "grow" });
  const play = el("button", { id: "sim-play" }, "Play");
  const step = el("button", { id: "sim-step" }, "Step");
  const back = el("button", { id: "sim-back" }, "Back");
  const events = el("ul", { class: "log", id: "sim-events" });
  const chartBox = el("div", { id: "sim-chart" });
  app.append(
    el(
      "section",
      { class: "panel wide" },
      el("h2", {}, "Simulated cluster ", el("small", {}, "deterministic: the same seed replays the same run")),
      el("div", { class: "row" }, play, back, step, scrub, time),
      counts,
      canvas,
      el("div", { class: "legend-row" }, ...["observer", "alive", "suspect", "dead", "left", "unknown"].map((s) => el("span", {}, el("i", { class: `sw ${s}` }), s)), el("span", {}, el("i", { class: "sw has" }), "has the gossip message"), el("span", {}, el("i", { class: "sw crashed" }), "process crashed")),
    ),
    el("section", { class: "panel" }, el("h2", {}, "What happens"), events),
    el("section", { class: "panel" }, el("h2", {}, "Gossip message ", el("small", {}, "nodes that have it")), chartBox),
  );

  const frames = [];
  let current = 0;
  let playing = false;
  let known = sim.frames;
  const COLOURS = { o: "#222", a: "#59a14f", s: "#edc948", d: "#e15759", l: "#9c755f", u: "#ddd" };

  async function frame(k) {
    if (!frames[k]) frames[k] = await api(`/api/sim/frames/${k}`);
    return frames[k];
  }

  function draw(f) {
    const ctx = canvas.getContext("2d");
    const n = f.states.length;
    const cols = Math.ceil(Math.sqrt((n * canvas.width) / canvas.height));
    const size = canvas.width / cols;
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    const down = new Set(f.down);
    const tally = { o: 0, a: 0, s: 0, d: 0, l: 0, u: 0 };
    for (let i = 0; i < n; i++) {
      const ch = f.states[i];
      const st = ch.toLowerCase();
      tally[st]++;
      const x = (i % cols) * size + size / 2;
      const y = Math.floor(i / cols) * size + size / 2;
      ctx.beginPath();
      ctx.arc(x, y, Math.max(size * 0.38, 1), 0, 2 * Math.PI);
      ctx.fillStyle = COLOURS[st];
      ctx.fill();
      if (ch !== st) {
        ctx.lineWidth = Math.max(size * 0.12, 1);
        ctx.strokeStyle = "#4e79a7";
        ctx.stroke();
      }
      if (down.has(i)) {
        ctx.strokeStyle = "#000";
        ctx.lineWidth = 1.5;
        ctx.beginPath();
        ctx.moveTo(x - size * 0.35, y - size * 0.35);
        ctx.lineTo(x + size * 0.35, y + size * 0.35);
        ctx.stroke();
      }
    }
    time.textContent = `${(f.t_ms / 1000).toFixed(1)} s`;
    time.dataset.frame = f.frame;
    canvas.dataset.frame = f.frame;
    canvas.dataset.states = f.states.length;
    counts.textContent = `frame ${f.frame} · alive ${tally.a} · suspect ${tally.s} · dead ${tally.d} · left ${tally.l} · unknown ${tally.u} · gossip message at ${f.receivers} nodes · ${f.converged ? "converged" : "not converged"}`;
  }

  async function show(k) {
    k = Math.max(0, Math.min(k, sim.max_frames - 1));
    const f = await frame(k);
    current = k;
    if (k + 1 > known) known = k + 1;
    scrub.max = known - 1;
    scrub.value = k;
    draw(f);
    updateEvents();
    plot();
  }

  let lastEvents = 0;
  async function updateEvents() {
    if (current + 1 < known && lastEvents) return;
    const i = await api("/api/info");
    sim = i.sim;
    if (sim.events.length === lastEvents) return;
    lastEvents = sim.events.length;
    events.replaceChildren(
      ...sim.events.map((e) =>
        el("li", {}, el("a", { href: "#", onclick: (ev) => (ev.preventDefault(), stop(), show(e.frame)) }, `${(e.t_ms / 1000).toFixed(1)} s`), " ", e.text),
      ),
    );
  }

  let chart = null;
  let plotted = -1;
  function plot() {
    const have = frames.filter(Boolean);
    if (have.length === plotted || have.length < 2) return;
    plotted = have.length;
    const xs = have.map((f) => f.t_ms / 1000);
    const ys = have.map((f) => f.receivers);
    if (!chart) {
      chart = new uPlot(
        { width: 480, height: 200, scales: { x: { time: false }, y: { range: [0, sim.nodes] } }, axes: [{ label: "simulated seconds" }, {}], series: [{}, { label: "nodes with the message", stroke: "#4e79a7", width: 2 }] },
        [xs, ys],
        chartBox,
      );
    } else chart.setData([xs, ys]);
  }

  function stop() {
    playing = false;
    play.textContent = "Play";
  }
  async function loop() {
    while (playing) {
      const started = performance.now();
      await show(current + 1);
      if (current >= sim.max_frames - 1) stop();
      await new Promise((r) => setTimeout(r, Math.max(0, 100 - (performance.now() - started))));
    }
  }
  play.addEventListener("click", () => {
    playing = !playing;
    play.textContent = playing ? "Pause" : "Play";
    if (playing) loop();
  });
  step.addEventListener("click", () => (stop(), show(current + 1)));
  back.addEventListener("click", () => (stop(), show(current - 1)));
  scrub.addEventListener("input", () => (stop(), show(Number(scrub.value))));
  show(0);
}
