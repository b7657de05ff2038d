"""A simulated GPU model server: an OpenAI-compatible endpoint whose capacity behaves like a batched GPU engine.

- `slots` requests are served at once (a vLLM engine's concurrent sequences); the rest wait in a FIFO queue.
- A request holds its slot for `ms_per_token` x its output length. The length is drawn from a seeded lognormal
  (median ~300, mean ~400 tokens, capped at `max_tokens_cap`) keyed by the request's content, so the same request
  costs the same on every client and every run: long-tailed, as real generations are.
- Busy slot-seconds are recorded, so utilization = busy slot-seconds / (slots x wall time) of any client's run.

It runs in its own process (`SimulatedGpuServer(...)` as a context manager), so the clients under test do not share
its interpreter. Nothing here touches the project's code: it is the peer both clients are measured against.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MEDIAN_TOKENS = 300
MEAN_TOKENS = 400


@dataclass(frozen=True)
class ServerShape:
    slots: int = 64
    ms_per_token: float = 3.0
    max_tokens_cap: int = 2048
    seed: int = 0


def output_tokens(messages: list, shape: ServerShape) -> int:
    """The seeded lognormal length of this request's answer: median MEDIAN_TOKENS, mean MEAN_TOKENS. Keyed on the
    messages' stripped text, so two clients can send the same workload under different request ids."""
    texts = [m["content"].strip() if isinstance(m.get("content"), str) else m.get("content") for m in messages]
    digest = hashlib.sha256(json.dumps([shape.seed, texts], sort_keys=True).encode()).digest()
    # two uniforms from the digest -> one standard normal (Box-Muller)
    u1 = (int.from_bytes(digest[:8], "big") + 1) / (2**64 + 1)
    u2 = int.from_bytes(digest[8:16], "big") / 2**64
    normal = math.sqrt(-2 * math.log(u1)) * math.cos(2 * math.pi * u2)
    sigma = math.sqrt(2 * math.log(MEAN_TOKENS / MEDIAN_TOKENS))
    return max(1, min(shape.max_tokens_cap, round(MEDIAN_TOKENS * math.exp(sigma * normal))))


class _FifoSlots:
    """A counting semaphore that admits waiters in arrival order, and the slot-seconds it was held."""

    def __init__(self, slots: int):
        self._free, self._waiting = slots, deque()
        self._lock = threading.Lock()
        self.busy_s = 0.0
        self.served = 0

    def acquire(self) -> None:
        with self._lock:
            if self._free and not self._waiting:
                self._free -= 1
                return
            turn = threading.Event()
            self._waiting.append(turn)
        turn.wait()

    def release(self, held_s: float) -> None:
        with self._lock:
            self.busy_s += held_s
            self.served += 1
            if self._waiting:
                self._waiting.popleft().set()  # the slot passes straight to the oldest waiter
            else:
                self._free += 1


def _serve(shape: ServerShape, port_out, stats_in, stats_out) -> None:
    slots = _FifoSlots(shape.slots)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _reply(self, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._reply({"object": "list", "data": [{"id": "simulated-gpu", "object": "model"}]})

        def do_POST(self):
            payload = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            wanted = output_tokens(payload["messages"], shape)
            tokens = min(wanted, int(payload.get("max_tokens") or wanted))
            slots.acquire()
            started = time.perf_counter()
            time.sleep(tokens * shape.ms_per_token / 1000)
            slots.release(time.perf_counter() - started)
            self._reply(
                {
                    "id": "sim",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": "simulated-gpu",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": f"answer of {tokens} tokens"},
                            "finish_reason": "length" if tokens < wanted else "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 100, "completion_tokens": tokens, "total_tokens": 100 + tokens},
                }
            )

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 4096

    server = Server(("127.0.0.1", 0), Handler)
    port_out.send(server.server_address[1])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    while stats_in.recv() is not None:  # any message: report the counters since the last one
        stats_out.send({"busy_slot_s": slots.busy_s, "served": slots.served})
    server.shutdown()


class SimulatedGpuServer:
    """`with SimulatedGpuServer(ServerShape(slots=64)) as server:` ... `server.base_url`, `server.counters()`."""

    def __init__(self, shape: ServerShape):
        self.shape = shape

    def __enter__(self) -> "SimulatedGpuServer":
        context = multiprocessing.get_context("spawn")
        port_in, port_out = context.Pipe(duplex=False)
        self._ask_in, self._ask_out = context.Pipe(duplex=False)
        self._answer_in, self._answer_out = context.Pipe(duplex=False)
        self._process = context.Process(target=_serve, args=(self.shape, port_out, self._ask_in, self._answer_out), daemon=True)
        self._process.start()
        self.base_url = f"http://127.0.0.1:{port_in.recv()}/v1"
        return self

    def counters(self) -> dict:
        """Busy slot-seconds and requests served since the server started."""
        self._ask_out.send(True)
        return self._answer_in.recv()

    def __exit__(self, *exc) -> None:
        self._ask_out.send(None)
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()
