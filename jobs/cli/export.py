"""`megascience export`: one pinned version of a gold table -> files to train on, and a dataset card.

    <out>/README.md                                   the dataset card (Hugging Face front matter: the parquet files)
    <out>/data/train-00000-of-0000N.parquet           every column of the table, rows in qa_id order
    <out>/data/train-00000-of-0000N.jsonl             the same rows as JSON lines
    <out>/llamafactory/dataset_info.json              LLaMA-Factory entries <table>_alpaca and <table>_sharegpt
    <out>/llamafactory/<table>_alpaca/*.jsonl         {"instruction": question, "input": "", "output": answer}
    <out>/llamafactory/<table>_sharegpt/*.jsonl       {"conversations": [{"from": "human", ...}, {"from": "gpt", ...}]}
    <out>/plots/funnel_per_subject.png, answer_length.png

The files are written by Spark (shards of export.rows_per_file rows, in qa_id ranges) and renamed, so no file is
collected on the driver. The card names the table, its version and the run that wrote it; it gives the counts per
subject and per source, the curation funnel (jobs/cli/funnel.py, over the lake as it is now) beside the paper's, the
corpus yield, LLM calls and tokens per role, the mixture per source and subject, and the mean answer length in
tokens with the tokenizer that counted them (the chunk stage's, chunk.tokenizer).

The paper's ablations can be exported too (`--subset`, named in the card, from the current table versions):
`selection:<length|difficulty|random>` is the mixture as one selection method would make it (every
textbook_reasoning row and the external questions that method selected, with the dataset's own responses: only the
chosen method's picks are re-annotated), and `unrefined` the extraction's pairs as dedup kept them, before refine.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from megascience.jobs.cli.funnel import (
    corpus_yield,
    external_funnel_from_lake,
    funnel_from_lake,
    mixture_per_subject,
    paper_comparison,
    stages_by_role,
)
from megascience.jobs.platform.config import Config
from megascience.jobs.platform.llm import llm_usage
from megascience.jobs.platform.settings import ExportSettings, LakeSettings
from megascience.jobs.platform.tables import Lakehouse, TableError
from megascience.jobs.stages.chunk import resolve_tokenizer, token_count
from megascience.schemas import status as S

SUBSET_UNREFINED = "unrefined"
SUBSET_SELECTION = "selection:"  # + a method

HISTOGRAM_BIN_TOKENS = 64


@dataclass(frozen=True)
class Export:
    directory: Path
    table: str
    version: int | None  # None for a subset
    rows: int
    files: tuple[Path, ...]


# --- transforms (pure) ----------------------------------------------------------------------------------------------


def alpaca_rows(gold: DataFrame) -> DataFrame:
    return gold.select(
        F.col("question").alias("instruction"), F.lit("").alias("input"), F.col("answer").alias("output"), "qa_id"
    )


def sharegpt_rows(gold: DataFrame) -> DataFrame:
    turn = lambda speaker, column: F.struct(F.lit(speaker).alias("from"), F.col(column).alias("value"))  # noqa: E731
    return gold.select(F.array(turn("human", "question"), turn("gpt", "answer")).alias("conversations"), "qa_id")


def dataset_info(name: str) -> dict:
    """LLaMA-Factory's data/dataset_info.json entries for the two layouts (file_name: a folder of .jsonl shards)."""
    return {
        f"{name}_alpaca": {
            "file_name": f"{name}_alpaca",
            "formatting": "alpaca",
            "columns": {"prompt": "instruction", "query": "input", "response": "output"},
        },
        f"{name}_sharegpt": {
            "file_name": f"{name}_sharegpt",
            "formatting": "sharegpt",
            "columns": {"messages": "conversations"},
            "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"},
        },
    }


def counts_by(gold: DataFrame, column: str) -> list[tuple[str, int]]:
    rows = gold.groupBy(column).count().orderBy(F.desc("count"), column).collect()
    return [(row[column] if row[column] is not None else "(none)", row["count"]) for row in rows]


# --- writing --------------------------------------------------------------------------------------------------------


def write_shards(rows: DataFrame, directory: Path, fmt: str, shards: int) -> list[Path]:
    """`rows` as `shards` files train-<i>-of-<n>.<parquet|jsonl> in qa_id ranges, each sorted by qa_id, without
    Spark's part-file names and marker files (LLaMA-Factory reads every file of a folder)."""
    extension = "parquet" if fmt == "parquet" else "jsonl"
    staging = directory.parent / f".{directory.name}.{extension}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob(f"train-*.{extension}"):  # an earlier export into the same folder
        stale.unlink()
    ordered = rows.repartitionByRange(shards, "qa_id").sortWithinPartitions("qa_id")
    if fmt == "parquet":
        ordered.write.parquet(str(staging))
    else:  # JSON lines; nulls written as null so that every record has every field
        ordered.write.option("ignoreNullFields", "false").json(str(staging))
    parts = sorted(p for p in staging.iterdir() if p.name.startswith("part-") and p.stat().st_size > 0)
    written = []
    for i, part in enumerate(parts):
        target = directory / f"train-{i:05d}-of-{len(parts):05d}.{extension}"
        part.rename(target)
        written.append(target)
    shutil.rmtree(staging)
    return written


def _save_plot(path: Path, size: tuple[float, float], draw) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    draw(ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_funnel(funnel_rows: list[dict], steps: list[str], path: Path) -> None:
    subjects = [r["subject"] for r in funnel_rows if r["subject"] != "total"]
    width = 0.8 / max(len(steps), 1)

    def draw(ax):
        for i, step in enumerate(steps):
            values = [next(r[step] for r in funnel_rows if r["subject"] == s) for s in subjects]
            ax.bar([x + i * width for x in range(len(subjects))], values, width, label=step)
        ax.set_xticks([x + width * (len(steps) - 1) / 2 for x in range(len(subjects))], subjects)
        ax.set_ylabel("QA pairs")
        ax.set_title("TextbookReasoning funnel per subject")
        if steps:  # under the axis, clear of the bars
            ax.legend(fontsize="small", ncols=len(steps), loc="upper center", bbox_to_anchor=(0.5, -0.1))

    _save_plot(path, (max(8, 1.2 * len(subjects) + 2), 4.5), draw)


def plot_lengths(bins: list[tuple[int, int]], tokenizer: str, path: Path) -> None:
    def draw(ax):
        ax.bar([b * HISTOGRAM_BIN_TOKENS for b, _ in bins], [n for _, n in bins], width=HISTOGRAM_BIN_TOKENS, align="edge")
        ax.set_xlabel(f"answer tokens ({tokenizer})")
        ax.set_ylabel("rows")
        ax.set_title("Answer length")

    _save_plot(path, (7, 4), draw)


def _markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass(frozen=True)
class CardFacts:
    table: str
    version: int | None  # None for a subset (made from several tables)
    location: str
    made_by: str
    rows: int
    subjects: list[tuple[str, int]]
    sources: list[tuple[str, int]] | None  # None for a table without a source column (textbook_reasoning)
    funnels: list[tuple[str, DataFrame | None]]  # (title, funnel table of jobs/cli/funnel.py)
    mean_tokens: float | None
    tokenizer: str
    beside_the_paper: list[tuple[str, list[dict]]] = ()
    subset: str | None = None  # what a subset export holds, in a sentence


def _funnel_markdown(funnel: DataFrame | None) -> str:
    if funnel is None:
        return "(not in the lake)"
    return _markdown_table(funnel.columns, [list(row) for row in funnel.collect()])


def dataset_card(facts: CardFacts) -> str:
    table, version = facts.table, facts.version
    mean_text = f"{facts.mean_tokens:.1f}" if facts.mean_tokens is not None else "n/a"
    sources = (
        _markdown_table(["source", "rows"], [list(x) for x in facts.sources])
        if facts.sources is not None
        else f"All rows come from {table}."
    )
    funnels = "\n\n".join(f"{title}:\n\n{_funnel_markdown(funnel)}" for title, funnel in facts.funnels)
    paper = "\n\n".join(
        f"{title}:\n\n" + (_markdown_table(list(rows[0]), [list(r.values()) for r in rows]) if rows else "(not in the lake)")
        for title, rows in facts.beside_the_paper
    )
    if facts.subset:
        heading = f"# {table}"
        provenance = f"{facts.subset} Made from {facts.location}."
    else:
        heading = f"# {table} (Delta version {version})"
        provenance = f"Exported from the Delta table `{table}` at version {version} ({facts.location}), written by {facts.made_by}."
    return f"""---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*.parquet
language:
- en
task_categories:
- question-answering
- text-generation
---

{heading}

{provenance}
{facts.rows} rows with the columns `question`, `answer`, `subject`, `reference_answer`{"" if facts.sources is None else ", `source`"}
and the pipeline's lineage columns (`qa_id`, ...). Curated by the megascience pipeline after "MegaScience: Pushing
the Frontiers of Post-Training Datasets for Science Reasoning" (arXiv 2507.16812).

## Files

- `data/train-*.parquet` and `data/train-*.jsonl`: every column, rows in `qa_id` order.
- `llamafactory/`: `{table}_alpaca` (instruction / input / output) and `{table}_sharegpt` (conversations) as JSON
  lines, with their entries in `llamafactory/dataset_info.json`.
- `plots/funnel_per_subject.png`, `plots/answer_length.png`.

```python
from datasets import load_dataset
rows = load_dataset("parquet", data_files="data/train-*.parquet", split="train")
```

LLaMA-Factory: copy the two folders into its `data/` directory and add the entries of `llamafactory/dataset_info.json`
to its `data/dataset_info.json` (or pass `dataset_dir: <this folder>/llamafactory`), then train with
`dataset: {table}_sharegpt` (or `{table}_alpaca`).

## Rows per subject

{_markdown_table(["subject", "rows"], [list(x) for x in facts.subjects])}

## Rows per source

{sources}

## Curation funnel (kept rows at each step, from the lake at export time)

{funnels}

![funnel per subject](plots/funnel_per_subject.png)

## Beside the paper

{paper}

## Answer length

Mean answer length: {mean_text} tokens (tokenizer: {facts.tokenizer}).

![answer length histogram](plots/answer_length.png)
"""


def answer_lengths(gold: DataFrame, config: Config) -> tuple[float | None, list[tuple[int, int]], str]:
    """Mean answer tokens, the histogram bins (bin, rows) and the tokenizer's name (the chunk stage's)."""
    spec, _ = resolve_tokenizer(config, lambda message: None)
    tokens = gold.select(token_count(F.col("answer"), spec).alias("tokens")).cache()
    try:
        mean = tokens.agg(F.avg("tokens")).first()[0]
        per_bin = tokens.groupBy(F.floor(F.col("tokens") / HISTOGRAM_BIN_TOKENS).alias("bin")).count().orderBy("bin")
        return mean, [(r["bin"], r["count"]) for r in per_bin.collect()], spec.label
    finally:
        tokens.unpersist()


def beside_the_paper(lake: Lakehouse, config: Config, textbook_funnel: DataFrame | None) -> list[tuple[str, list[dict]]]:
    """The tables that set the run beside the paper: kept shares per step, corpus yield, LLM usage, the mixture."""
    funnel_rows = [r.asDict() for r in textbook_funnel.collect()] if textbook_funnel is not None else []
    mean_tokens = answer_lengths(lake.read("textbook_reasoning"), config)[0] if lake.exists("textbook_reasoning") else None
    usage = llm_usage(lake.read("llm_calls"), stages_by_role()) if lake.exists("llm_calls") else None
    mixture = mixture_per_subject(lake)
    return [
        ("Share of the extracted pairs kept at each step, ours and the paper's (%)", paper_comparison(funnel_rows)),
        ("Corpus yield (books = the books classify kept; mean answer tokens of textbook_reasoning)", corpus_yield(lake, mean_tokens)),
        ("LLM calls and tokens per role", [r.asDict() for r in usage.collect()] if usage is not None else []),
        ("The megascience mixture per source and subject", [r.asDict() for r in mixture.collect()] if mixture is not None else []),
    ]


def subset_rows(lake: Lakehouse, subset: str) -> tuple[DataFrame, str, str]:
    """(rows, what they are, the table versions they come from) of an ablation subset."""
    def need(*tables: str) -> str:
        missing = [t for t in tables if not lake.exists(t)]
        if missing:
            raise TableError(f"subset {subset} needs {', '.join(missing)}: run the pipeline through them first")
        return ", ".join(f"{t} v{lake.version(t)}" for t in tables)

    if subset == SUBSET_UNREFINED:
        versions = need("qa_extracted", "qa_clusters")
        keepers = lake.read("qa_clusters").where(F.col("status") == S.KEPT).select("qa_id")
        pairs = lake.read("qa_extracted").join(keepers, "qa_id").select(
            "question", "answer", "subject", F.lit(None).cast("string").alias("reference_answer"), "qa_id", "book_id", "chunk_id", "standard"
        )
        return pairs, "The refinement ablation: the extracted pairs as dedup kept them, before refine, check_reasoning, filter and decontamination (no reference answers).", versions
    if subset.startswith(SUBSET_SELECTION):
        from megascience.jobs.platform.settings import SELECT_METHODS as METHODS

        method = subset[len(SUBSET_SELECTION) :]
        if method not in METHODS:
            raise TableError(f"subset {subset}: the method must be one of {', '.join(METHODS)}")
        versions = need("textbook_reasoning", "selection_scores", "external_decontaminated")
        scores = lake.read("selection_scores").where(F.col("method") == method)
        datasets = {r["dataset"] for r in lake.read("selection_scores").select("dataset").distinct().collect()}
        unscored = sorted(datasets - {r["dataset"] for r in scores.select("dataset").distinct().collect()})
        if unscored:
            raise TableError(f"subset {subset}: {', '.join(unscored)} not scored by {method}; rerun select with select.score_all_methods=true")
        picked = scores.where(F.col("selected")).select("qa_id", F.coalesce("reference_answer", F.lit(None).cast("string")).alias("_extracted"))
        questions = lake.read("external_decontaminated").where(F.col("status") == S.KEPT).join(picked, "qa_id")
        external = questions.select(
            "question",
            F.col("response").alias("answer"),
            "subject",
            F.coalesce(F.nullif(F.trim("reference_answer"), F.lit("")), "_extracted").alias("reference_answer"),
            F.col("dataset").alias("source"),
            "qa_id",
        )
        textbook = lake.read("textbook_reasoning").select(
            "question", "answer", "subject", "reference_answer", F.lit("textbook_reasoning").alias("source"), "qa_id"
        )
        what = (
            f"The selection ablation, method {method}: every textbook_reasoning row and the external questions {method} "
            "selected within each dataset's quota, with the dataset's own responses as answers (not re-annotated)."
        )
        return textbook.unionByName(external).withColumn("selection_method", F.lit(method)), what, versions
    raise TableError(f"unknown subset {subset!r}: {SUBSET_UNREFINED} or {SUBSET_SELECTION}<length|difficulty|random>")


def export_table(
    lake: Lakehouse,
    config: Config,
    table: str = "megascience",
    version: int | None = None,
    out: str | None = None,
    subset: str | None = None,
) -> Export:
    """Write the files and the card of `table` at `version` (default: its current version), or of an ablation
    `subset` (from the current table versions)."""
    if subset:
        gold, what, versions = subset_rows(lake, subset)
        name = f"megascience_{subset.replace(':', '_')}"
        directory = Path(out or ExportSettings.of(config).dir or Path(LakeSettings.of(config).root) / "exports" / name).resolve()
        return _export(lake, config, gold.cache(), name, None, directory, versions, "", what)
    if not lake.exists(table):
        raise TableError(f"table {table} does not exist yet: run the pipeline through its stage first")
    history = lake.history(table)
    version = history[0].version if version is None else version
    entry = next((h for h in history if h.version == version), None)
    if entry is None:
        raise TableError(f"{table} has no version {version} (versions {history[-1].version}..{history[0].version})")
    default = Path(LakeSettings.of(config).root) / "exports" / f"{table}-v{version}"
    directory = Path(out or ExportSettings.of(config).dir or default).resolve()
    made_by = entry.user_metadata.get("mlflow_run_id")
    made_by = f"MLflow run {made_by}" if made_by else "a commit without an MLflow run"
    return _export(lake, config, lake.as_of(table, version).cache(), table, version, directory, lake.location(table), made_by, None)


def _export(
    lake: Lakehouse, config: Config, gold: DataFrame, table: str, version: int | None, directory: Path, location: str, made_by: str, subset: str | None
) -> Export:
    try:
        count = gold.count()
        shards = max(1, math.ceil(count / ExportSettings.of(config).rows_per_file))
        files = write_shards(gold, directory / "data", "parquet", shards)
        files += write_shards(gold, directory / "data", "json", shards)
        llamafactory = directory / "llamafactory"
        files += write_shards(alpaca_rows(gold), llamafactory / f"{table}_alpaca", "json", shards)
        files += write_shards(sharegpt_rows(gold), llamafactory / f"{table}_sharegpt", "json", shards)
        (llamafactory / "dataset_info.json").write_text(json.dumps(dataset_info(table), indent=2) + "\n")

        mean_tokens, bins, tokenizer = answer_lengths(gold, config)
        textbook_funnel = funnel_from_lake(lake)
        plots = directory / "plots"
        plots.mkdir(parents=True, exist_ok=True)
        funnel_rows = [r.asDict() for r in textbook_funnel.collect()] if textbook_funnel is not None else []
        steps = [c for c in textbook_funnel.columns if c != "subject" and not c.startswith("high_")] if funnel_rows else []
        plot_funnel(funnel_rows, steps, plots / "funnel_per_subject.png")
        plot_lengths(bins, tokenizer, plots / "answer_length.png")
        facts = CardFacts(
            table=table,
            version=version,
            location=location,
            made_by=made_by,
            rows=count,
            subjects=counts_by(gold, "subject"),
            sources=counts_by(gold, "source") if "source" in gold.columns else None,
            funnels=[
                ("TextbookReasoning, QA pairs per subject", textbook_funnel),
                ("External datasets, questions per dataset", external_funnel_from_lake(lake)),
            ],
            mean_tokens=mean_tokens,
            tokenizer=tokenizer,
            beside_the_paper=beside_the_paper(lake, config, textbook_funnel),
            subset=subset,
        )
        (directory / "README.md").write_text(dataset_card(facts))
        files += [plots / "funnel_per_subject.png", plots / "answer_length.png", directory / "README.md"]
        return Export(directory, table, version, count, tuple(files))
    finally:
        gold.unpersist()
