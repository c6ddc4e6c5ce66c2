// The playground in a real browser: Debian's chromium, driven by
// playwright-core, against `rumor playground` running a real local cluster
// (separate `rumor node` processes), then against its simulator mode.
//
//   node e2e/playground.mjs            (from crates/rumor/web; scripts/playground-e2e runs it)
//
// Environment: RUMOR_BIN (the rumor binary; default target/debug/rumor of
// the workspace), CHROMIUM (default /usr/bin/chromium), E2E_OUT (where the
// screenshots go; default target/playground-e2e of the workspace).
import { spawn, execFileSync } from "node:child_process";
import { request } from "node:http";
import { mkdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../../../..");
const rumor = process.env.RUMOR_BIN || join(root, "target/debug/rumor");
const out = process.env.E2E_OUT || join(root, "target/playground-e2e");
mkdirSync(out, { recursive: true });

const log = (...a) => console.log("playground-e2e:", ...a);
const started = [];
let failed = false;

function check(ok, what) {
  if (!ok) throw new Error(`check failed: ${what}`);
  log(`ok: ${what}`);
}

// Starts `rumor playground ARGS` and waits for the line with its URL.
function playground(args) {
  return new Promise((resolveStart, reject) => {
    const p = spawn(rumor, ["playground", "--addr", "127.0.0.1:0", ...args], { stdio: ["ignore", "pipe", "pipe"] });
    started.push(p);
    let buf = "";
    const timer = setTimeout(() => reject(new Error(`rumor playground ${args.join(" ")} printed no URL within 90 s:\n${buf}`)), 90_000);
    p.stdout.on("data", (d) => {
      buf += d;
      const m = buf.match(/playground listening (http:\/\/\S+)/);
      if (m) {
        clearTimeout(timer);
        resolveStart({ proc: p, url: m[1], addr: new URL(m[1]).host });
      }
    });
    p.stderr.on("data", (d) => process.env.E2E_VERBOSE && process.stderr.write(d));
    p.on("exit", (code) => reject(new Error(`rumor playground exited (${code}):\n${buf}`)));
  });
}

// `rumor playground SUBCOMMAND...` against the playground at `addr`.
const cli = (addr, ...args) => execFileSync(rumor, ["playground", "--addr", addr, ...args], { encoding: "utf8", timeout: 120_000 });

// A raw HTTP request, with a Host header of our choosing; its status.
function httpStatus(url, method, headers = {}) {
  return new Promise((resolveStatus, reject) => {
    const req = request(url, { method, headers }, (res) => {
      res.resume();
      resolveStatus(res.statusCode);
    });
    req.on("error", reject);
    req.end();
  });
}

async function until(what, limitMs, fn) {
  const deadline = Date.now() + limitMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${limitMs} ms waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function stop(p) {
  if (p.exitCode !== null) return;
  const exited = new Promise((r) => p.once("exit", r));
  p.kill("SIGTERM");
  const t = setTimeout(() => p.kill("SIGKILL"), 20_000);
  await exited;
  clearTimeout(t);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});

// A page at `url`; an error in its scripts fails the run.
async function open(url, viewport) {
  const page = await browser.newPage({ viewport });
  page.on("pageerror", (e) => {
    failed = true;
    log(`page error: ${e.message}`);
  });
  await page.goto(url);
  return page;
}

try {
  // ------------------------------------------------ a real local cluster
  const pg = await playground(["--workers", "5"]);
  log(`cluster playground at ${pg.url}`);
  const page = await open(pg.url, { width: 1400, height: 1300 });

  const names = ["gateway-1", "forward-1", "worker-1", "worker-2", "worker-3", "worker-4", "worker-5"];
  const status = (name) => page.getAttribute(`[data-node="${name}"]`, "data-status").catch(() => null);
  await until("every node listed and alive in the gateway's view", 60_000, async () => {
    const s = await Promise.all(names.map(status));
    return s.every((x) => x === "alive");
  });
  check(true, `the page lists all ${names.length} nodes, each alive`);
  await until("every node computing the same ring", 30_000, async () => ((await page.textContent("#agree")) || "").includes("same ring"));
  check((await page.locator("#ring-legend li").count()) === 5, "the ring shows five workers");
  // Another site can neither post a form to the API nor reach it under a
  // rebound name.
  check((await httpStatus(`${pg.url}api/workers`, "POST")) === 415, "a POST that is not JSON is refused (415)");
  check((await httpStatus(`${pg.url}api/state`, "GET", { Host: "attacker.example" })) === 403, "a request for another host name is refused (403)");

  // A chat message gets its reply, named after the worker that owns the key.
  await page.fill("#chat-key", "chat-1");
  await page.fill("#chat-text", "hello mesh");
  await page.click("#chat-send");
  const worker = await until("a reply naming its worker", 60_000, () => page.getAttribute(".msg.reply[data-worker]", "data-worker").catch(() => null));
  const replyText = await page.textContent(".msg.reply[data-worker]");
  check(replyText.includes("hello mesh"), `the echo reply came back: ${JSON.stringify(replyText)}`);
  await page.fill("#owner-key", "chat-1");
  await page.click("#owner-go");
  const owner = await until("the key's owner", 10_000, () => page.getAttribute("#owner-out", "data-owner").catch(() => null));
  check(owner === worker, `the worker that answered (${worker}) is the key's owner on the ring (${owner})`);

  // A gossip message reaches every node.
  await page.click("#gossip-create");
  await until("gossip receipts", 30_000, () => page.getAttribute("#gossip-result", "data-received").catch(() => null));
  const received = Number(await page.getAttribute("#gossip-result", "data-received"));
  const nodes = Number(await page.getAttribute("#gossip-result", "data-nodes"));
  const gossipText = await page.textContent("#gossip-result");
  check(received === 7 && nodes === 7, `the gossip message reached ${received} of ${nodes} nodes: ${gossipText}`);
  check((await page.locator("#gossip-chart canvas").count()) > 0, "the spread is plotted against the prediction");
  await page.screenshot({ path: join(out, "cluster-gossip.png"), fullPage: true });

  // A kill turns the node suspect, then dead, in the gateway's view.
  const victim = names.includes(worker) && worker !== "worker-3" ? "worker-3" : "worker-2";
  await page.click(`[data-node="${victim}"] button[data-action="kill"]`);
  const seen = new Set();
  await until(`${victim} dead in the gateway's view`, 60_000, async () => {
    const s = await status(victim);
    if (s) seen.add(s);
    return s === "dead";
  });
  check(seen.has("suspect"), `${victim} went suspect before dead (seen: ${[...seen].join(", ")})`);
  check((await page.getAttribute(`[data-node="${victim}"]`, "data-process")) === "killed", `${victim}'s process is shown killed`);
  await page.screenshot({ path: join(out, "cluster-dead.png"), fullPage: true });

  // The subcommands do what the buttons do.
  const st = cli(pg.addr, "status");
  check(st.includes(victim) && /dead/.test(st.split("\n").find((l) => l.includes(victim))), "`rumor playground status` shows it dead too");
  cli(pg.addr, "restart", victim);
  await until(`${victim} alive again after restart`, 60_000, async () => (await status(victim)) === "alive");
  check(true, `${victim} restarted from the command line is alive on the page`);
  cli(pg.addr, "isolate", "worker-4");
  await until("worker-4 shown cut off", 10_000, async () => ((await page.textContent('[data-node="worker-4"] .flags')) || "").includes("cut off"));
  await until("worker-4 suspect or dead once cut off", 60_000, async () => ["suspect", "dead"].includes(await status("worker-4")));
  cli(pg.addr, "repair", "worker-4");
  await until("worker-4 alive after repair", 60_000, async () => (await status("worker-4")) === "alive");
  check(true, "a node cut off turns suspect and comes back alive when repaired");
  // A slowed link (1.5 s: its acks arrive after the LAN probe period of 1 s
  // has ended) gets the node suspected; restored, it is alive.
  await page.click('[data-node="worker-5"] button[data-action="slow"]');
  await until("worker-5 shown slowed", 10_000, async () => ((await page.textContent('[data-node="worker-5"] .flags')) || "").includes("link +1500 ms"));
  await until("worker-5 suspect or dead with a slow link", 60_000, async () => ["suspect", "dead"].includes(await status("worker-5")));
  await page.click('[data-node="worker-5"] button[data-action="unslow"]');
  await until("worker-5 alive once its link is restored", 60_000, async () => (await status("worker-5")) === "alive");
  check(true, "a node whose link is slowed turns suspect, and alive again once restored");
  // Add a worker: it joins and takes a share of the ring; rotate the gossip
  // key under it; remove it: it leaves gracefully.
  await page.click("#add-worker");
  await until("worker-6 alive", 60_000, async () => (await status("worker-6")) === "alive");
  await until("the ring over six workers", 10_000, async () => (await page.locator("#ring-legend li").count()) === 6);
  check(true, "an added worker joins and takes its share of the ring");
  await page.click("#rotate-key");
  await until("the rotation noted", 30_000, async () => ((await page.textContent("#actions")) || "").includes("rotated the gossip key"));
  await new Promise((r) => setTimeout(r, 3000));
  const afterRotation = await Promise.all([...names, "worker-6"].map(status));
  check(afterRotation.every((x) => x === "alive"), `every node stays alive across a key rotation (${afterRotation.join(", ")})`);
  await page.click('[data-node="worker-6"] button[data-action="stop"]');
  await until("worker-6 left", 30_000, async () => (await status("worker-6")) === "left");
  check(true, "a removed worker leaves gracefully (left, not dead)");
  const sent = cli(pg.addr, "send", "--key", "chat-1", "from the cli");
  check(sent.includes("from the cli") && sent.includes(worker), `\`rumor playground send\` is answered by ${worker}: ${sent.trim()}`);
  await page.screenshot({ path: join(out, "cluster.png"), fullPage: false });
  await page.close();
  await stop(pg.proc);
  check(pg.proc.exitCode === 0, `the playground stopped its cluster and exited 0 (${pg.proc.exitCode})`);
  // The bracket keeps pgrep from matching the shell that runs it.
  const leftover = execFileSync("sh", ["-c", `pgrep -f '[r]umor-playground-${pg.proc.pid}/' || true`], { encoding: "utf8" }).trim();
  check(leftover === "", `no node process outlives the playground${leftover ? `: ${leftover}` : ""}`);

  // ------------------------------------------------ the simulator
  const sim = await playground(["--sim", "--nodes", "300", "--seed", "7"]);
  log(`simulator playground at ${sim.url}`);
  const sp = await open(sim.url, { width: 1300, height: 1000 });
  await until("frame 0 drawn", 30_000, async () => (await sp.getAttribute("#sim-time", "data-frame")) === "0");
  await sp.click("#sim-step");
  await until("frame 1 after one step", 30_000, async () => (await sp.getAttribute("#sim-time", "data-frame")) === "1");
  await sp.click("#sim-step");
  await until("frame 2 after two steps", 30_000, async () => (await sp.getAttribute("#sim-time", "data-frame")) === "2");
  check(true, "the simulator steps one frame at a time");
  check((await sp.getAttribute("#sim-canvas", "data-states")) === "300", "every simulated node is drawn");
  await sp.click("#sim-play");
  await until("the simulation plays until the crashed node is dead everywhere", 180_000, async () => /every node sees n\d+ dead/.test(await sp.textContent("#sim-events")));
  await sp.click("#sim-play");
  const events = await sp.textContent("#sim-events");
  check(events.includes("converged"), "the simulation converges");
  check(events.includes("every node has the gossip message"), "the simulated gossip message reaches every node");
  await sp.screenshot({ path: join(out, "sim.png"), fullPage: false });
  // Scrubbing back shows an earlier frame again.
  await sp.$eval("#sim-scrub", (e) => {
    e.value = "5";
    e.dispatchEvent(new Event("input"));
  });
  await until("frame 5 after scrubbing back", 10_000, async () => (await sp.getAttribute("#sim-time", "data-frame")) === "5");
  check(true, "the time scrubber goes back to an earlier frame");
  await sp.close();
  await stop(sim.proc);
  check(!failed, "no error on either page");
  log(`screenshots in ${out}`);
} catch (e) {
  failed = true;
  log(`FAILED: ${e.message}`);
} finally {
  await browser.close();
  for (const p of started) await stop(p);
}
process.exit(failed ? 1 : 0);
