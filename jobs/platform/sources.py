"""Records from configured data sources: Hugging Face datasets or local files, each with a field mapping.

Shared by the benchmark items of decontamination (conf/benchmarks.yaml) and the external QA datasets of the
MegaScience mixture (conf/external.yaml). A sources file is a mapping `sources: {name: spec}`; a setting names the
sources a run uses. A spec is either
  file: a path, an fsspec URI, or conf:NAME (a file shipped in the package's conf/ directory), with
        format: jsonl | parquet | csv (default: the file's suffix); or
  hf:   a Hugging Face dataset id, with split, optional configs (each is loaded) and optional revision (needs the
        `datasets` library);
and `fields`, mapping our columns to the source's fields (a dotted name reads nested values: "examples.0.input").
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import PurePosixPath
from typing import Any, Callable, Iterable, Iterator

import pandas as pd
import yaml
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import LongType, StringType, StructField, StructType

from megascience.jobs.platform.config import Config, ConfigError
from megascience.jobs.platform.stage import StageContext
from megascience.schemas import status as S

BUNDLED_PREFIX = "conf:"  # a file shipped in the package's conf/ directory
SOURCE_KEYS = ("file", "format", "hf", "configs", "split", "revision", "fields", "subject_map")
FORMATS = ("jsonl", "parquet", "csv")


class SourceError(ConfigError):
    """A source that is misconfigured or cannot be read; the message names the source."""


@dataclass(frozen=True)
class Catalogue:
    """A kind of source: the config section and keys that pick them, and the columns their fields may map."""

    kind: str  # how messages name one source: "benchmark source", "external dataset"
    section: str  # config section holding the two keys below
    file_key: str  # the key naming the sources file
    names_key: str  # the key listing the sources a run uses
    fields: tuple[str, ...]  # our columns a source may map; `question` is always required

    @property
    def chosen_by(self) -> str:
        return f"{self.section}.{self.names_key}"


@dataclass(frozen=True)
class Source:
    name: str
    catalogue: Catalogue
    fields: dict[str, Any]  # our column -> the source's field (or whatever the catalogue's columns allow)
    file: str = ""
    format: str = ""
    hf: str = ""
    configs: tuple[str, ...] = ()
    split: str = ""
    revision: str = ""
    subject_map: tuple[tuple[str, str], ...] = ()  # the source's subject values (lower case) -> ours

    @property
    def label(self) -> str:
        return f"{self.catalogue.kind} {self.name}"

    def describe(self, config: str | None) -> str:
        """What a row's `source` column holds: the file, or hf:<dataset>[<config>]:<split>."""
        if self.file:
            return self.file
        return f"hf:{self.hf}" + (f"[{config}]" if config else "") + f":{self.split}"


@dataclass(frozen=True)
class Unreadable:
    """A record that could not be parsed (kept as text, so that its failed row has a stable key)."""

    text: str
    problem: str


class MissingField(KeyError):
    def __init__(self, column: str, path: str):
        super().__init__(path)
        self.column, self.path = column, path


# --- configuration -------------------------------------------------------------------------------------------------


def read_bytes(location: str) -> bytes:
    if location.startswith(BUNDLED_PREFIX):
        return resources.files("megascience.conf").joinpath(*location[len(BUNDLED_PREFIX) :].split("/")).read_bytes()
    import fsspec

    with fsspec.open(location, "rb") as handle:
        return handle.read()


def parse_source(name: str, spec: Any, where: str, catalogue: Catalogue) -> Source:
    """One entry of a sources file, checked: exactly one of file and hf, known keys and fields, a question field."""
    if not isinstance(spec, dict):
        raise SourceError(f"{where}: source {name} must be a mapping, got {spec!r}")
    unknown = sorted(set(spec) - set(SOURCE_KEYS))
    fields = spec.get("fields") or {}
    problems = [f"unknown key(s) {unknown} (known: {', '.join(SOURCE_KEYS)})"] if unknown else []
    if bool(spec.get("file")) == bool(spec.get("hf")):
        problems.append("give exactly one of file and hf")
    if not isinstance(fields, dict) or "question" not in fields:
        problems.append("fields must be a mapping that names the question field")
    elif sorted(set(fields) - set(catalogue.fields)):
        unknown_fields = sorted(set(fields) - set(catalogue.fields))
        problems.append(f"unknown field(s) {unknown_fields} (known: {', '.join(catalogue.fields)})")
    file_format = spec.get("format") or PurePosixPath(str(spec.get("file", ""))).suffix.lstrip(".").lower()
    if spec.get("file") and file_format not in FORMATS:
        problems.append(f"format must be one of {', '.join(FORMATS)} (or a file with that suffix), got {file_format!r}")
    if spec.get("hf") and not spec.get("split"):
        problems.append("a Hugging Face source needs a split")
    subject_map = spec.get("subject_map") or {}
    if not isinstance(subject_map, dict) or not all(isinstance(v, str) for v in subject_map.values()):
        problems.append("subject_map must map the source's subject values to ours")
    if problems:
        raise SourceError(f"{where}: source {name}: " + "; ".join(problems))
    return Source(
        name=name,
        catalogue=catalogue,
        fields=dict(fields),
        file=str(spec.get("file") or ""),
        format=file_format if spec.get("file") else "",
        hf=str(spec.get("hf") or ""),
        configs=tuple(str(c) for c in spec.get("configs") or ()),
        split=str(spec.get("split") or ""),
        subject_map=tuple(sorted((str(k).strip().lower(), v) for k, v in subject_map.items())) if isinstance(subject_map, dict) else (),
        revision=str(spec.get("revision") or ""),
    )


def configured_sources(config: Config, catalogue: Catalogue) -> list[Source]:
    """The sources the catalogue's setting names, parsed from its sources file."""
    settings = config[catalogue.section]
    location = settings[catalogue.file_key]
    setting = f"{catalogue.section}.{catalogue.file_key}"
    try:
        document = yaml.safe_load(read_bytes(location))
    except (OSError, yaml.YAMLError) as err:
        raise SourceError(f"{setting} {location}: {type(err).__name__}: {err}") from None
    sources = document.get("sources") if isinstance(document, dict) else None
    if not isinstance(sources, dict):
        raise SourceError(f"{setting} {location}: expected a mapping `sources: {{name: ...}}`")
    unknown = [name for name in settings[catalogue.names_key] if name not in sources]
    if unknown:
        raise SourceError(
            f"{catalogue.chosen_by}: {', '.join(unknown)} not in {location} (its sources: {', '.join(sources)})"
        )
    return [parse_source(name, sources[name], location, catalogue) for name in settings[catalogue.names_key]]


# --- extract -------------------------------------------------------------------------------------------------------


def file_records(data: bytes, file_format: str) -> Iterator[tuple[str, Any]]:
    """(where, record) of each record of a jsonl, parquet or csv file; an unparseable jsonl line is `Unreadable`."""
    if file_format == "jsonl":
        # lines split as bytes: str.splitlines would also cut at U+2028 and other separators JSON strings may hold
        for number, raw in enumerate(data.splitlines(), start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield f"line {number}", Unreadable(raw.decode("utf-8", "replace"), f"not UTF-8: {err}")
                continue
            if line.strip():
                try:
                    yield f"line {number}", json.loads(line)
                except json.JSONDecodeError as err:
                    yield f"line {number}", Unreadable(line, f"not JSON: {err}")
    elif file_format == "parquet":
        import pyarrow.parquet as pq

        for number, record in enumerate(pq.read_table(io.BytesIO(data)).to_pylist(), start=1):
            yield f"row {number}", record
    else:
        for number, record in enumerate(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))), start=2):
            yield f"line {number}", record


def hf_records(source: Source) -> Iterator[tuple[str | None, str, Any]]:
    """(config, where, record) of every configured config of a Hugging Face dataset."""
    try:
        import datasets
    except ImportError:
        raise SourceError(
            f"{source.label} is the Hugging Face dataset {source.hf}: loading it needs the `datasets` "
            "library, which is not installed here (pip install datasets). Or save the split as a jsonl/parquet/csv "
            f"file and give the source `file:` instead, or leave {source.name} out of {source.catalogue.chosen_by}."
        ) from None
    for config in source.configs or (None,):
        try:
            rows = datasets.load_dataset(source.hf, config, split=source.split, revision=source.revision or None)
        except Exception as err:  # hub, network, gating and schema errors all mean: this source cannot be read
            raise SourceError(
                f"{source.label}: cannot load {source.describe(config)}: {type(err).__name__}: {err}"
            ) from None
        for number, record in enumerate(rows, start=1):
            yield config, f"{config + ' ' if config else ''}row {number}", record


def source_records(source: Source) -> Iterator[tuple[str | None, str, Any]]:
    """(config, where, record) of every record of the source; SourceError when it cannot be read at all."""
    if source.hf:
        yield from hf_records(source)
        return
    try:
        data = read_bytes(source.file)
    except OSError as err:
        raise SourceError(f"{source.label}: cannot read {source.file}: {type(err).__name__}: {err}") from None
    try:
        for where, record in file_records(data, source.format):
            yield None, where, record
    except UnicodeDecodeError as err:
        raise SourceError(f"{source.label}: {source.file} is not UTF-8 text: {err}") from None


def loaded_schema(*columns: str) -> StructType:
    """A loaded record before its key and run columns: `columns`, `raw` (the record as read: a failed row's key),
    the outcome, and `position` (its place in the run's reading order: of two records with one key, the first wins)."""
    names = (*columns, "raw", "status", "reason", "detail")
    return StructType([StructField(name, StringType()) for name in names] + [StructField("position", LongType())])


def loaded_rows(
    ctx: StageContext, chosen: list[Source], rows_of: Callable[[Source], Iterable[dict]], schema: StructType
) -> DataFrame:
    """The rows of every chosen source (`rows_of` maps one source's records) as a DataFrame of `schema` (a
    loaded_schema), numbered in reading order. Records are read on the driver."""
    records = [{**row, "position": n} for n, row in enumerate(row for source in chosen for row in rows_of(source))]
    names = ", ".join(source.name for source in chosen) or "none"
    ctx.progress(f"{len(records)} records from {len(chosen)} source(s): {names}")
    ctx.recorder.counts(records_read=len(records))
    return ctx.spark.createDataFrame(pd.DataFrame(records, columns=schema.names), schema)


def first_read(keyed: DataFrame, key: str) -> DataFrame:
    """Loaded rows, one per `key`: the one read first; `raw` is dropped (it served as a key)."""
    first = Window.partitionBy(key).orderBy("position")
    return keyed.withColumn("_copy", F.row_number().over(first)).where(F.col("_copy") == 1).drop("_copy", "raw")


# --- transform: one record's fields (pure) ---------------------------------------------------------------------------


def lookup(record: Any, column: str, path: str) -> Any:
    """The field's value; a dotted path ("examples.0.input") reads nested values. MissingField if a step is absent."""
    if path in record:
        return record[path]
    value = record
    for step in str(path).split("."):
        if isinstance(value, dict) and step in value:
            value = value[step]
        elif isinstance(value, (list, tuple)) and str(step).isdigit() and int(step) < len(value):
            value = value[int(step)]
        else:
            raise MissingField(column, path)
    return value


def text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value).strip()


def raw_text(record: Any) -> str:
    """The record as read, as stable text: the key material of a failed row."""
    if isinstance(record, Unreadable):
        return record.text
    return json.dumps(record, sort_keys=True, ensure_ascii=False, default=str)


def failed_row(row: dict, record: Any, where: str, reason: str, problem: str) -> dict:
    """`row` as a failed row: the reason, where in the source and what went wrong, and the raw record (its key)."""
    return {**row, "status": S.FAILED, "reason": reason, "detail": f"{where}: {problem}", "raw": raw_text(record)}


def record_problem(record: Any) -> str | None:
    """Why a record cannot be mapped at all (unparseable, or not an object); None when it can."""
    if isinstance(record, Unreadable):
        return record.problem
    if not isinstance(record, dict):
        return f"not a JSON object: {str(record)[:80]}"
    return None


def mapped_texts(record: dict, fields: dict[str, Any], required: tuple[str, ...]) -> dict[str, str | None]:
    """Our column -> the text of its mapped field. MissingField when a field is absent, or when a required one
    (`required`) is empty (its path then reads "empty")."""
    values = {column: text(lookup(record, column, path)) for column, path in fields.items()}
    for column in required:
        if column in values and not values[column]:
            raise MissingField(column, "")
    return values


def missing_detail(err: MissingField, fields: dict[str, Any]) -> str:
    """'no field 'q' (the question)' or 'empty question (field 'q')'."""
    if err.path:
        return f"no field {err.path!r} (the {err.column})"
    return f"empty {err.column} (field {fields[err.column]!r})"
