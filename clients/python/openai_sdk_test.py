#!/usr/bin/env python3
"""Checks a rumor gateway's OpenAI-compatible API with the official `openai`
Python package: one non-streaming and one streaming chat completion, each
with its own `prompt_cache_key` (rumor's conversation key). The gateway's
workers must run the echo processor, so each reply must hold the prompt.

Usage:
    RUMOR_EDGE_URL=http://127.0.0.1:8080 python3 openai_sdk_test.py

Needs only the standard library and `openai` (e.g. in a virtualenv:
`python3 -m venv /tmp/venv && /tmp/venv/bin/pip install openai`).
Optional: RUMOR_EDGE_TOKEN, a credential if the edge requires one; the URL
must be on this machine (loopback) unless RUMOR_E2E_ALLOW_REMOTE=1.

Exit status: 0 when both calls passed, 1 when one failed, 2 when the setup
is wrong (no RUMOR_EDGE_URL, no `openai` package).
"""

import ipaddress
import os
import sys
import time
import urllib.parse
import uuid
from typing import NoReturn


def fail_setup(message: str) -> NoReturn:
    print(f"setup: {message}", file=sys.stderr)
    sys.exit(2)


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def conversation(name: str) -> str:
    return f"e2e-py/{name}/{int(time.time() * 1000)}-{uuid.uuid4().hex[:8]}"


def main() -> int:
    edge = os.environ.get("RUMOR_EDGE_URL", "").rstrip("/")
    if not edge:
        fail_setup("RUMOR_EDGE_URL is not set (e.g. RUMOR_EDGE_URL=http://127.0.0.1:8080)")
    host = urllib.parse.urlsplit(edge).hostname or ""
    if not loopback(host) and os.environ.get("RUMOR_E2E_ALLOW_REMOTE") != "1":
        fail_setup(f"RUMOR_EDGE_URL points at {host}, not this machine; set RUMOR_E2E_ALLOW_REMOTE=1 to allow it")
    try:
        from openai import OpenAI
    except ImportError:
        fail_setup("the `openai` package is not installed (pip install openai)")

    client = OpenAI(
        base_url=f"{edge}/v1",
        api_key=os.environ.get("RUMOR_EDGE_TOKEN") or "rumor-e2e",
        max_retries=0,
        timeout=60,
    )
    model = "default"
    try:
        models = client.models.list()
        if models.data:
            model = models.data[0].id
    except Exception as e:  # the chat calls below are what is tested
        print(f"note: GET /v1/models failed ({e}); using model {model!r}")

    failures = []

    def check(name, fn):
        try:
            fn()
            print(f"ok   {name}")
        except Exception as e:
            failures.append(name)
            print(f"FAIL {name}: {type(e).__name__}: {e}")

    def non_streaming():
        prompt = f"python plain {uuid.uuid4()}"
        completion = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": prompt}],
            prompt_cache_key=conversation("openai-plain"),
        )
        assert completion.object == "chat.completion", completion.object
        content = completion.choices[0].message.content or ""
        assert prompt in content, f"the echo does not hold the prompt: {content!r}"

    def streaming():
        prompt = f"python stream {uuid.uuid4()}"
        stream = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": prompt}],
            prompt_cache_key=conversation("openai-stream"),
            stream=True,
        )
        content, chunks, finish = "", 0, None
        for chunk in stream:
            chunks += 1
            assert chunk.object == "chat.completion.chunk", chunk.object
            if chunk.choices:
                content += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
        assert chunks >= 2, f"only {chunks} chunks"
        assert prompt in content, f"the echo does not hold the prompt: {content!r}"
        assert finish == "stop", f"finish_reason {finish!r}"

    check("chat.completions.create (not streaming)", non_streaming)
    check("chat.completions.create (streaming)", streaming)
    print(f"{2 - len(failures)} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
