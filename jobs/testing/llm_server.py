"""A scripted OpenAI-compatible HTTP server for tests: a stand-in for a remote LLM endpoint.

The last user message picks the behaviour: `[429-once]` answers 429 the first time then succeeds, `[500]` always
fails, `[slow]` sleeps longer than the client's timeout, `[malformed]` returns a body that is not JSON; anything
else succeeds with `{"answer": "<message upper-cased>"}`, unless a `respond` hook is given: it sees each request
payload and returns the answer's text, a list of texts (one per sample of an n > 1 request), a dict {"content",
"finish_reason"}, an HTTP status code to fail with, or None for the default answer. Every request is recorded.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


class _WideServer(ThreadingHTTPServer):
    # clients keep hundreds of requests in flight (llm.openai.max_concurrency): the default backlog of 5 connections
    # would refuse most of them, where a real model server (uvicorn: 2048) queues them
    request_queue_size = 2048
    daemon_threads = True


class ScriptedLLMServer:
    def __init__(
        self,
        model: str = "scripted-model",
        delay_s: float = 0.0,
        slow_s: float = 3.0,
        respond: Callable[[dict], str | dict | int | None] | None = None,
    ):
        self.model, self.delay_s, self.slow_s, self.respond = model, delay_s, slow_s, respond
        self.requests: list[dict] = []
        self.authorizations: set[str] = set()  # the Authorization headers seen (the API key the client sent)
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, code: int, body: bytes, content_type: str = "application/json"):
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout): nothing to answer
                    pass

            def do_GET(self):
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, json.dumps({"object": "list", "data": [{"id": server.model, "object": "model"}]}).encode())
                else:
                    self._send(404, b"{}")

            def do_POST(self):
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    server.authorizations.add(self.headers.get("Authorization", ""))
                self._send(*server.answer(payload))

        self.httpd = _WideServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @staticmethod
    def prompt_text(payload: dict) -> str:
        content = payload["messages"][-1]["content"]
        if isinstance(content, list):
            return " ".join(part.get("text", "") for part in content if part.get("type") == "text")
        return content

    def answer(self, payload: dict) -> tuple[int, bytes]:
        text = self.prompt_text(payload)
        with self._lock:
            self.requests.append(payload)
            self.counts[text] += 1
            seen = self.counts[text]
        time.sleep(self.delay_s)
        if "[429-once]" in text and seen == 1:
            return 429, json.dumps({"error": {"message": "rate limited", "type": "rate_limit"}}).encode()
        if "[500]" in text:
            return 500, json.dumps({"error": {"message": "internal error", "type": "server_error"}}).encode()
        if "[slow]" in text:
            time.sleep(self.slow_s)
        if "[malformed]" in text:
            return 200, b'{"id": "x", "choices": [ {"truncated'
        n = payload.get("n") or 1
        scripted = self.respond(payload) if self.respond else None
        if isinstance(scripted, int):  # the hook asks for an HTTP error
            return scripted, json.dumps({"error": {"message": f"scripted {scripted}", "type": "server_error"}}).encode()
        finish_reason = "stop"
        if isinstance(scripted, dict):  # {"content": ..., "finish_reason": "length"}: an answer cut off
            scripted, finish_reason = scripted["content"], scripted["finish_reason"]
        content = json.dumps({"answer": text.upper()}) if scripted is None else scripted
        contents = content if isinstance(content, list) else [content] * n  # a list: one answer per sample
        body = {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": 0,
            "model": payload["model"],
            "choices": [
                {"index": i, "message": {"role": "assistant", "content": c}, "finish_reason": finish_reason}
                for i, c in enumerate(contents)
            ],
            "usage": {"prompt_tokens": len(text.split()), "completion_tokens": 3 * n, "total_tokens": len(text.split()) + 3 * n},
        }
        return 200, json.dumps(body).encode()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def olmocr_answer(natural_text: str | None, rotation_valid: bool = True, rotation_correction: int = 0) -> str:
    """An answer in olmOCR's output format: YAML front matter, then the page's natural text."""
    front_matter = (
        f"---\nprimary_language: en\nis_rotation_valid: {rotation_valid}\nrotation_correction: {rotation_correction}\n"
        "is_table: false\nis_diagram: false\n---\n"
    )
    return front_matter + (natural_text or "")
