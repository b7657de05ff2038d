"""Typed settings: one frozen dataclass per section of conf/base.yaml, and the checks of its values.

The configuration layer (config.py) checks keys and types against base.yaml; here each section states the ranges
and choices its values must respect. `check_settings` runs every section's checks when the configuration loads, so
a bad value stops the run before any stage, with a message naming the key and where its value came from. A stage
declares its section's class (`Stage.settings`) and reads its values as attributes of `ctx.settings`.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator, Mapping, TypeVar

from megascience.schemas.vocabulary import LEVELS, SUBJECTS

# The choices of settings whose values name a behaviour of the code (the stages import them from here).
LAKE_BACKENDS = ("auto", "delta-rs", "delta-spark")
SPARK_MODES = ("embedded", "cluster", "connect")
ENGINES = ("vllm", "openai")
DEDUP_MODES = ("banded", "approx_join")
KEEPER_RULES = ("high_standard", "longer_question", "shorter_question", "qa_id")
OCR_METHODS = ("auto", "text_layer", "olmocr")
TEXT_ENGINES = ("pdfium", "pypdf", "pdftotext")
CL100K_FALLBACKS = ("extractor", "error")
MIN_CHUNK_TOKENS = 16  # room for the longest single character in any byte-level tokenizer, with margin
MAX_CONTINUATION_ROUNDS = 10
UNPARSED_POLICIES = ("exclude", "keep")
SELECT_METHODS = ("length", "difficulty", "random")
QUOTAS = ("difficulty", "count", "fraction")
UNPARSED_GRADES = ("skip", "zero", "fail")
MANIFEST_FIELDS = ("license", "rights", "access", "source")
MANIFEST_KEYS = ("file_name", "source_uri", "book_id")
PDF_RIGHTS_FIELDS = ("pdf_rights", "pdf_license", "pdf_keywords")
RIGHTS_FIELDS = tuple(f"manifest.{name}" for name in MANIFEST_FIELDS) + PDF_RIGHTS_FIELDS
NO_METADATA_POLICIES = ("keep", "drop", "fail")

Problem = tuple[str, str]  # (key within the section, what is wrong with its value)
S = TypeVar("S", bound="Settings")


# --- checks: each yields a Problem when the value breaks its rule ---------------------------------------------------


def at_least(key: str, value: float, least: float) -> Iterator[Problem]:
    if value < least:
        yield key, f"must be at least {least}, got {value!r}"


def within(key: str, value: float, low: float, high: float, low_open: bool = False) -> Iterator[Problem]:
    if not (low < value if low_open else low <= value) or value > high:
        yield key, f"must be in {'(' if low_open else '['}{low}, {high}], got {value!r}"


def one_of(key: str, value: Any, allowed: tuple[Any, ...]) -> Iterator[Problem]:
    if value not in allowed:
        yield key, f"must be one of {', '.join(map(str, allowed))}, got {value!r}"


def all_of(key: str, values: list[Any], allowed: tuple[Any, ...]) -> Iterator[Problem]:
    unknown = [value for value in values if value not in allowed]
    if unknown:
        yield key, f"has unknown {', '.join(map(str, unknown))}; choose from {', '.join(map(str, allowed))}"


def not_empty(key: str, value: str, what: str) -> Iterator[Problem]:
    if not value:
        yield key, f"must be set: {what}"


# --- the sections ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """A section (or a nested mapping) of the configuration, typed; `problems` lists the values that break its rules."""

    SECTION: ClassVar[str] = ""

    @classmethod
    def of(cls: type[S], config) -> S:
        """This section of a resolved Config (typed once, when the configuration loaded)."""
        return config.sections[cls.SECTION]

    @classmethod
    def from_values(cls: type[S], values: Mapping[str, Any]) -> S:
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for f in dataclasses.fields(cls):
            kind = hints[f.name]
            nested = isinstance(kind, type) and issubclass(kind, Settings)
            kwargs[f.name] = kind.from_values(values[f.name]) if nested else values[f.name]
        return cls(**kwargs)

    def problems(self) -> Iterator[Problem]:
        """Own rules, then those of nested settings (their keys prefixed by the field's name)."""
        yield from self.own_problems()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Settings):
                yield from ((f"{f.name}.{key}", message) for key, message in value.problems())

    def own_problems(self) -> Iterator[Problem]:
        return iter(())


@dataclass(frozen=True)
class LakeSettings(Settings):
    SECTION: ClassVar[str] = "lake"
    root: str
    backend: str
    catalog: str
    schema: str

    def own_problems(self) -> Iterator[Problem]:
        yield from one_of("backend", self.backend, LAKE_BACKENDS)
        yield from not_empty("root", self.root, "the folder or URI that holds the tables")
        if bool(self.catalog) != bool(self.schema):
            yield "catalog", "and lake.schema must be set together (Unity Catalog placement) or both be empty"


@dataclass(frozen=True)
class SparkSettings(Settings):
    SECTION: ClassVar[str] = "spark"
    mode: str
    master: str
    remote: str
    connect_upload_code: bool
    app_name: str
    delta_packages: bool
    driver_memory: str
    shuffle_partitions: int
    arrow_batch_rows: int
    conf: dict[str, Any]

    def own_problems(self) -> Iterator[Problem]:
        yield from one_of("mode", self.mode, SPARK_MODES)
        yield from at_least("shuffle_partitions", self.shuffle_partitions, 1)
        yield from at_least("arrow_batch_rows", self.arrow_batch_rows, 1)


@dataclass(frozen=True)
class MlflowSettings(Settings):
    SECTION: ClassVar[str] = "mlflow"
    tracking_uri: str
    experiment: str
    artifact_location: str

    def own_problems(self) -> Iterator[Problem]:
        yield from not_empty("experiment", self.experiment, "the MLflow experiment the runs are logged to")


@dataclass(frozen=True)
class ManifestFields(Settings):
    key: str
    license: str
    rights: str
    access: str
    source: str


@dataclass(frozen=True)
class CopyrightSettings(Settings):
    manifest: str
    manifest_key: str
    manifest_fields: ManifestFields
    exclude_rights_patterns: list[str]
    rights_fields: list[str]
    license_allowlist: list[str]
    license_fields: list[str]
    no_metadata: str
    respect_pdf_permissions: bool

    def own_problems(self) -> Iterator[Problem]:
        yield from all_of("rights_fields", self.rights_fields, RIGHTS_FIELDS)
        yield from all_of("license_fields", self.license_fields, RIGHTS_FIELDS)
        yield from one_of("manifest_key", self.manifest_key, MANIFEST_KEYS)
        yield from one_of("no_metadata", self.no_metadata, NO_METADATA_POLICIES)
        if self.manifest:
            yield from not_empty("manifest_fields.key", self.manifest_fields.key, "the manifest's key column")
        for i, pattern in enumerate(self.exclude_rights_patterns):
            try:
                re.compile(pattern)
            except re.error as err:
                yield f"exclude_rights_patterns[{i}]", f"is not a regular expression ({err}): {pattern!r}"


@dataclass(frozen=True)
class IngestSettings(Settings):
    SECTION: ClassVar[str] = "ingest"
    sources: list[str]
    pattern: str
    max_file_mb: int
    copyright: CopyrightSettings

    def own_problems(self) -> Iterator[Problem]:
        yield from at_least("max_file_mb", self.max_file_mb, 1)
        yield from not_empty("pattern", self.pattern, "the file name pattern of the books (e.g. *.pdf)")


@dataclass(frozen=True)
class VllmSettings(Settings):
    dtype: str
    max_model_len: int
    tensor_parallel_size: int
    gpu_memory_utilization: float
    kv_cache_memory_gb: float
    enforce_eager: bool
    seed: int
    max_num_seqs: int
    queue_factor: float
    structured_outputs_backend: str
    disable_any_whitespace: bool
    in_process: bool
    cache_root: str

    def own_problems(self) -> Iterator[Problem]:
        yield from at_least("max_model_len", self.max_model_len, 1)
        yield from at_least("tensor_parallel_size", self.tensor_parallel_size, 1)
        yield from within("gpu_memory_utilization", self.gpu_memory_utilization, 0.0, 1.0, low_open=True)
        yield from at_least("kv_cache_memory_gb", self.kv_cache_memory_gb, 0.0)
        yield from at_least("max_num_seqs", self.max_num_seqs, 0)  # 0: vLLM's default
        yield from at_least("queue_factor", self.queue_factor, 1.0)


@dataclass(frozen=True)
class OpenAISettings(Settings):
    base_url: str
    api_key_env: str
    max_concurrency: int
    timeout_s: float
    max_retries: int
    json_schema: bool

    def own_problems(self) -> Iterator[Problem]:
        yield from at_least("max_concurrency", self.max_concurrency, 1)
        yield from within("timeout_s", self.timeout_s, 0.0, 86400.0, low_open=True)
        yield from at_least("max_retries", self.max_retries, 0)


@dataclass(frozen=True)
class RoleSettings(Settings):
    engine: str
    model: str
    base_url: str
    temperature: float
    top_p: float
    max_tokens: int
    n: int
    seed: int

    def own_problems(self) -> Iterator[Problem]:
        yield from one_of("engine", self.engine, ("", *ENGINES))  # empty: llm.default_engine
        yield from within("temperature", self.temperature, 0.0, 2.0)
        yield from within("top_p", self.top_p, 0.0, 1.0, low_open=True)
        yield from at_least("max_tokens", self.max_tokens, 1)
        yield from at_least("n", self.n, 1)


@dataclass(frozen=True)
class LlmSettings(Settings):
    SECTION: ClassVar[str] = "llm"
    default_engine: str
    default_model: str
    fallback_model: str
    smoke_fallback: bool
    smoke_model_dir: str
    cache: bool
    engine_partitions: int
    chunk_rows: int
    chunk_seconds: float
    commit_interval_s: float
    staging_dir: str
    gpus_per_task: int
    vllm: VllmSettings
    openai: OpenAISettings
    roles: dict[str, RoleSettings]

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> LlmSettings:
        roles = {name: RoleSettings.from_values(role) for name, role in values["roles"].items()}
        return dataclasses.replace(super().from_values({**values, "roles": {}}), roles=roles)

    def own_problems(self) -> Iterator[Problem]:
        yield from one_of("default_engine", self.default_engine, ENGINES)
        yield from at_least("engine_partitions", self.engine_partitions, 1)
        yield from at_least("chunk_rows", self.chunk_rows, 1)
        yield from at_least("chunk_seconds", self.chunk_seconds, 0.1)
        yield from at_least("commit_interval_s", self.commit_interval_s, 0.1)
        yield from at_least("gpus_per_task", self.gpus_per_task, 0)
        for name, role in self.roles.items():
            yield from ((f"roles.{name}.{key}", message) for key, message in role.problems())


@dataclass(frozen=True)
class RunSettings(Settings):
    SECTION: ClassVar[str] = "run"
    progress: bool


@dataclass(frozen=True)
class DedupSettings(Settings):
    SECTION: ClassVar[str] = "dedup"
    ngram: int
    threshold: float
    num_perm: int
    false_negative_weight: float
    mode: str
    seed: int
    max_bucket_size: int
    max_cluster_size: int
    keeper_order: list[str]

    def own_problems(self) -> Iterator[Problem]:
        yield from at_least("ngram", self.ngram, 1)
        yield from within("threshold", self.threshold, 0.0, 1.0, low_open=True)
        yield from at_least("num_perm", self.num_perm, 1)
        yield from within("false_negative_weight", self.false_negative_weight, 0.0, 1.0, low_open=True)
        yield from one_of("mode", self.mode, DEDUP_MODES)
        yield from at_least("max_bucket_size", self.max_bucket_size, 2)
        yield from at_least("max_cluster_size", self.max_cluster_size, 2)
        yield from all_of("keeper_order", self.keeper_order, KEEPER_RULES)


@dataclass(frozen=True)
class OcrSettings(Settings):
    SECTION: ClassVar[str] = "ocr"
    method: str
    method_by_subject: dict[str, str]
    text_engine: str
    pages_per_task: int
    min_chars: int
    min_printable_ratio: float
    min_letter_ratio: float
    math_min_lines: int
    math_min_line_ratio: float
    blank_max_ink_ratio: float
    target_longest_image_dim: int
    rotation_retries: int

    def own_problems(self) -> Iterator[Problem]:
        yield from one_of("method", self.method, OCR_METHODS)
        for subject, method in self.method_by_subject.items():
            yield from one_of(f"method_by_subject.{subject}", method, OCR_METHODS)
        yield from one_of("text_engine", self.text_engine, TEXT_ENGINES)
        yield from at_least("pages_per_task", self.pages_per_task, 1)
        yield from at_least("min_chars", self.min_chars, 0)
        yield from within("min_printable_ratio", self.min_printable_ratio, 0.0, 1.0)
        yield from within("min_letter_ratio", self.min_letter_ratio, 0.0, 1.0)
        yield from at_least("math_min_lines", self.math_min_lines, 0)
        yield from within("math_min_line_ratio", self.math_min_line_ratio, 0.0, 1.0)
        if not 0.0 <= self.blank_max_ink_ratio < 1.0:
            yield "blank_max_ink_ratio", f"must be in [0, 1), got {self.blank_max_ink_ratio!r}"
        yield from at_least("target_longest_image_dim", self.target_longest_image_dim, 64)
        yield from at_least("rotation_retries", self.rotation_retries, 0)


@dataclass(frozen=True)
class ClassifySettings(Settings):
    SECTION: ClassVar[str] = "classify"
    before_ocr: bool
    prompt: str
    first_pages: int
    page_images: bool
    max_page_chars: int
    keep_levels: list[str]
    keep_subjects: list[str]
    labels_file: str

    def own_problems(self) -> Iterator[Problem]:
        yield from at_least("first_pages", self.first_pages, 1)
        yield from at_least("max_page_chars", self.max_page_chars, 0)
        yield from all_of("keep_levels", self.keep_levels, LEVELS)
        yield from all_of("keep_subjects", self.keep_subjects, SUBJECTS)
        yield from not_empty("prompt", self.prompt, "the name of a prompt in conf/prompts/")


@dataclass(frozen=True)
class ChunkSettings(Settings):
    SECTION: ClassVar[str] = "chunk"
    max_tokens: int
    tokenizer: str
    if_cl100k_missing: str

    def own_problems(self) -> Iterator[Problem]:
        yield from at_least("max_tokens", self.max_tokens, MIN_CHUNK_TOKENS)
        yield from not_empty("tokenizer", self.tokenizer, "cl100k, extractor, or a tokenizer directory or hub id")
        yield from one_of("if_cl100k_missing", self.if_cl100k_missing, CL100K_FALLBACKS)


@dataclass(frozen=True)
class ExtractSettings(Settings):
    SECTION: ClassVar[str] = "extract"
    continuation_rounds: int
    continuation_prompt: str

    def own_problems(self) -> Iterator[Problem]:
        yield from within("continuation_rounds", self.continuation_rounds, 0, MAX_CONTINUATION_ROUNDS)
        yield from not_empty("continuation_prompt", self.continuation_prompt, "the name of a prompt in conf/prompts/")


@dataclass(frozen=True)
class DecontaminationSettings(Settings):
    SECTION: ClassVar[str] = "decontamination"
    sources_file: str
    benchmarks: list[str]
    embedding_model: str
    device: str
    batch_size: int
    embed_partitions: int
    top_k: int
    cosine_floor: float
    unparsed: str
    prompt: str

    def own_problems(self) -> Iterator[Problem]:
        yield from not_empty("embedding_model", self.embedding_model, "a sentence-transformers model id or folder")
        yield from at_least("batch_size", self.batch_size, 1)
        yield from at_least("embed_partitions", self.embed_partitions, 0)  # 0: sized from the number of texts
        yield from at_least("top_k", self.top_k, 1)
        yield from within("cosine_floor", self.cosine_floor, 0.0, 1.0)  # 0: off
        yield from one_of("unparsed", self.unparsed, UNPARSED_POLICIES)


@dataclass(frozen=True)
class ExternalSettings(Settings):
    SECTION: ClassVar[str] = "external"
    sources_file: str
    datasets: list[str]


@dataclass(frozen=True)
class DifficultySettings(Settings):
    max_mean: float
    min_mean: float
    unparsed_grades: str
    min_grades: int

    def own_problems(self) -> Iterator[Problem]:
        yield from within("min_mean", self.min_mean, 0.0, 10.0)
        yield from within("max_mean", self.max_mean, self.min_mean, 10.0)
        yield from one_of("unparsed_grades", self.unparsed_grades, UNPARSED_GRADES)
        yield from at_least("min_grades", self.min_grades, 0)  # 0: no minimum


@dataclass(frozen=True)
class SelectSettings(Settings):
    SECTION: ClassVar[str] = "select"
    datasets: dict[str, str]
    default_method: str
    score_all_methods: bool
    quota: str
    quota_count: int
    quota_fraction: float
    seed: int
    difficulty: DifficultySettings

    def method_of(self, dataset: str) -> str:
        return self.datasets.get(dataset, self.default_method)

    def own_problems(self) -> Iterator[Problem]:
        yield from one_of("default_method", self.default_method, SELECT_METHODS)
        for dataset, method in self.datasets.items():
            yield from one_of(f"datasets.{dataset}", method, SELECT_METHODS)  # a typo must not silently mean random
        yield from one_of("quota", self.quota, QUOTAS)
        yield from at_least("quota_count", self.quota_count, 0)
        yield from within("quota_fraction", self.quota_fraction, 0.0, 1.0)


@dataclass(frozen=True)
class AnnotateSettings(Settings):
    SECTION: ClassVar[str] = "annotate"
    max_answer_tokens: int

    def own_problems(self) -> Iterator[Problem]:
        yield from at_least("max_answer_tokens", self.max_answer_tokens, 1)


@dataclass(frozen=True)
class ExportSettings(Settings):
    SECTION: ClassVar[str] = "export"
    dir: str
    rows_per_file: int

    def own_problems(self) -> Iterator[Problem]:
        yield from at_least("rows_per_file", self.rows_per_file, 1)


SECTIONS: tuple[type[Settings], ...] = (
    LakeSettings, SparkSettings, MlflowSettings, IngestSettings, LlmSettings, RunSettings, DedupSettings,
    OcrSettings, ClassifySettings, ChunkSettings, ExtractSettings, DecontaminationSettings, ExternalSettings,
    SelectSettings, AnnotateSettings, ExportSettings,
)


def typed_sections(values: Mapping[str, Any]) -> dict[str, Settings]:
    """Section name -> its typed settings, from the resolved values (keys and types already checked)."""
    return {section.SECTION: section.from_values(values[section.SECTION]) for section in SECTIONS}


def setting_problems(sections: Mapping[str, Settings], sources: Mapping[str, str]) -> list[str]:
    """Every value of every section that breaks its rules, as `<where it was set>: <section.key> <what is wrong>`."""
    found = []
    for name, settings in sections.items():
        for key, message in settings.problems():
            dotted = f"{name}.{key}"
            found.append(f"{source_of(dotted, sources)}: {dotted} {message}")
    return found


def source_of(dotted: str, sources: Mapping[str, str]) -> str:
    """Where a value was set: its own key's layer, else that of the map holding it (an open map is set whole)."""
    while dotted:
        if dotted in sources:
            return sources[dotted]
        dotted = dotted.split("[")[0] if "[" in dotted else dotted.rpartition(".")[0]
    return "conf/base.yaml"
