// Runs a command with RUMOR_EDGE_URL pointing at the fake gateway, e.g.
//   node build/test/support/with-fake-gateway.js node --test build/test/e2e.test.js
// This only checks the end-to-end tests themselves (that they are sound and
// pass against something that follows protocol.md); it proves nothing about
// the real gateway.

import { spawn } from "node:child_process";
import { FakeGateway } from "./fake-gateway.js";

const [command, ...args] = process.argv.slice(2);
if (!command) {
  console.error("usage: with-fake-gateway <command> [args...]");
  process.exit(2);
}
const gw = await FakeGateway.start({ chunkDelayMs: 20 });
console.log(`# fake gateway at ${gw.url}`);
const child = spawn(command, args, { stdio: "inherit", env: { ...process.env, RUMOR_EDGE_URL: gw.url } });
const code = await new Promise<number>((resolve) => child.on("exit", (c, signal) => resolve(c ?? (signal ? 1 : 0))));
await gw.close();
process.exit(code);
