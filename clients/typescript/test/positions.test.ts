import { test } from "node:test";
import assert from "node:assert/strict";
import { RumorError, checkConversation, errorCodeName, formatPosition, parsePosition, proto, seenAlready } from "@rumor/client";

test("positions format and parse back (epochs may contain colons)", () => {
  for (const p of [
    { epoch: "worker-2@1700000000000", seq: 17n },
    { epoch: "a:b:c", seq: 0n },
    { epoch: "", seq: 18446744073709551615n },
  ]) {
    assert.deepEqual(parsePosition(formatPosition(p)), p);
  }
  for (const bad of ["", "nocolon", "e:", "e:-1", "e:1.5", "e:18446744073709551616", "e:x"]) {
    assert.equal(parsePosition(bad), undefined, bad);
  }
});

test("only positions of one epoch compare", () => {
  assert.equal(seenAlready({ epoch: "a", seq: 3n }, { epoch: "a", seq: 3n }), true);
  assert.equal(seenAlready({ epoch: "a", seq: 2n }, { epoch: "a", seq: 3n }), true);
  assert.equal(seenAlready({ epoch: "a", seq: 4n }, { epoch: "a", seq: 3n }), false);
  assert.equal(seenAlready({ epoch: "b", seq: 1n }, { epoch: "a", seq: 3n }), false);
  assert.equal(seenAlready({ epoch: "a", seq: 1n }, undefined), false);
});

test("error codes by short name; unknown values", () => {
  assert.equal(errorCodeName(proto.ErrorCode.CANCELLED), "CANCELLED");
  assert.equal(errorCodeName(proto.ErrorCode.TOO_MANY_IN_FLIGHT), "TOO_MANY_IN_FLIGHT");
  assert.equal(errorCodeName(999), "UNKNOWN");
});

test("conversation keys: 1 to 1024 bytes, no control characters", () => {
  checkConversation("user-1/chat");
  checkConversation("é".repeat(512));
  for (const bad of ["", "é".repeat(513), "a\nb", "a\u0000", "tab\there", "del\u007f"]) {
    assert.throws(() => checkConversation(bad), (e: unknown) => e instanceof RumorError && e.code === "INVALID_ARGUMENT");
  }
});
