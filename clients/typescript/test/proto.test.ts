// The checked-in generated code matches proto/, and proto/ matches the
// gateway's edge.proto when this package sits in the rumor tree.

import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { delimiter, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

// build/test/ -> the package root
const root = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const generated = "src/gen/rumor/edge/v1/edge_pb.ts";
const copy = join(root, "proto/rumor/edge/v1/edge.proto");
const upstream = resolve(root, "../../crates/proto/proto/rumor/edge/v1/edge.proto");

test("src/gen is what `npm run generate` makes from proto/", () => {
  const out = mkdtempSync(join(tmpdir(), "rumor-gen-"));
  try {
    // buf finds protoc-gen-es on PATH, as under `npm run generate`.
    const bin = join(root, "node_modules/.bin");
    execFileSync(join(bin, "buf"), ["generate", "-o", out], {
      cwd: root,
      stdio: "pipe",
      env: { ...process.env, PATH: `${bin}${delimiter}${process.env["PATH"] ?? ""}` },
    });
    assert.equal(
      readFileSync(join(out, generated), "utf8"),
      readFileSync(join(root, generated), "utf8"),
      "the generated code is stale: run `npm run generate`",
    );
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});

test(
  "proto/ is a copy of the gateway's edge.proto",
  { skip: existsSync(upstream) ? false : `no ${upstream} here (the package is not inside the rumor tree)` },
  () => {
    assert.equal(
      readFileSync(copy, "utf8"),
      readFileSync(upstream, "utf8"),
      "proto/ differs from the gateway's: copy it over and run `npm run generate`",
    );
  },
);
