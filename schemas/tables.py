"""Schemas of every Delta table, enforced by the table layer on each write.

A `TableSpec` names a table, its Spark schema, the key columns a merge matches on, and what one row holds. A table
with a `precedence` is append-only: rows are only ever appended, a key may be written more than once, and every read
resolves each key to its first row by `precedence` (SQL expressions, each sorted descending).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from pyspark.sql.types import (
    ArrayType,
    BooleanType,
    DoubleType,
    IntegerType,
    LongType,
    MapType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)


@dataclass(frozen=True)
class TableSpec:
    name: str
    schema: StructType
    keys: tuple[str, ...]
    description: str
    precedence: tuple[str, ...] = ()

    @property
    def append_only(self) -> bool:
        return bool(self.precedence)

    def renamed(self, name: str, description: str) -> TableSpec:
        """A table of the same shape under another name (the external datasets' copies of a stage's tables)."""
        return replace(self, name=name, description=description)


def _fields(*fields: tuple) -> StructType:
    """(name, type[, nullable]) tuples -> StructType; columns are nullable unless said otherwise."""
    return StructType([StructField(f[0], f[1], f[2] if len(f) > 2 else True) for f in fields])


# Every row of every table says which stage run made it and what became of it.
_ROW_OUTCOME = (
    ("status", StringType(), False),
    ("reason", StringType(), False),
    ("detail", StringType()),
    ("run_id", StringType(), False),
    ("processed_at", TimestampType(), False),
)

BOOKS = TableSpec(
    name="books",
    keys=("book_id",),
    description="One row per distinct PDF (book_id = sha256 of its bytes): file facts, PDF metadata, copyright verdict.",
    schema=_fields(
        ("book_id", StringType(), False),
        ("source_uri", StringType(), False),
        ("file_name", StringType(), False),
        ("size_bytes", LongType(), False),
        ("page_count", IntegerType()),
        ("encrypted", BooleanType()),
        ("text_extraction_allowed", BooleanType()),
        ("pdf_title", StringType()),
        ("pdf_author", StringType()),
        ("pdf_subject", StringType()),
        ("pdf_keywords", StringType()),
        ("pdf_rights", StringType()),
        ("pdf_license", StringType()),
        ("pdf_metadata", MapType(StringType(), StringType())),
        ("manifest_rights", MapType(StringType(), StringType())),  # the rights manifest's row: license, rights, access, source
        ("rights_field", StringType()),  # the field whose value decided the copyright verdict (e.g. manifest.access)
        ("rights_value", StringType()),  # ... and that value
        *_ROW_OUTCOME,
    ),
)

PAGES = TableSpec(
    name="pages",
    keys=("book_id", "page_number"),
    description=(
        "One row per page of every kept book: its text and the path that made it (the PDF text layer, or the "
        "olmOCR vision model for pages whose text layer fails the quality checks)."
    ),
    schema=_fields(
        ("book_id", StringType(), False),
        ("page_number", IntegerType(), False),  # 1-based, as in the PDF
        ("text", StringType()),  # null unless kept (a dropped blank page has "")
        ("char_count", IntegerType()),
        ("method", StringType(), False),  # text_layer (also blank pages, found without a model) | olmocr
        ("model", StringType()),  # the OCR model, or the text-layer engine (pdfium | pypdf | pdftotext)
        ("llm_call_id", StringType()),  # the llm_calls row whose answer was used (olmocr)
        ("rotation", IntegerType()),  # degrees the page image was turned for that answer (olmocr)
        ("primary_language", StringType()),  # olmOCR's front matter
        ("is_table", BooleanType()),
        ("is_diagram", BooleanType()),
        *_ROW_OUTCOME,
    ),
)

BOOK_LABELS = TableSpec(
    name="book_labels",
    keys=("book_id",),
    description=(
        "Subject and academic level of every kept book, from the classifier model or a user label file; "
        "keep = a kept subject at university level or above."
    ),
    schema=_fields(
        ("book_id", StringType(), False),
        ("subject", StringType()),  # math | physics | chemistry | biology | medicine | cs | economics | other
        ("level", StringType()),  # primary_school | high_school | undergraduate | graduate | research
        ("keep", BooleanType()),  # null for failed rows
        ("label_source", StringType(), False),  # model | override
        ("llm_call_id", StringType()),
        ("model", StringType()),
        *_ROW_OUTCOME,
    ),
)

CHUNKS = TableSpec(
    name="chunks",
    keys=("chunk_id",),
    description=(
        "Each kept book's text (its kept pages joined by a blank line) cut into chunks of at most chunk.max_tokens "
        "tokens at newlines, without overlap: a book's chunks in order concatenate to exactly its text. "
        "chunk_id = sha256 of book_id, chunk index and text."
    ),
    schema=_fields(
        ("chunk_id", StringType(), False),
        ("book_id", StringType(), False),
        ("subject", StringType()),
        ("chunk_index", IntegerType()),  # 0-based position in the book; null for a failed row
        ("first_page", IntegerType()),
        ("last_page", IntegerType()),
        ("token_count", IntegerType()),
        ("text", StringType()),
        ("tokenizer", StringType(), False),  # e.g. tiktoken:cl100k_base or transformers:<model>
        *_ROW_OUTCOME,
    ),
)

QA_EXTRACTED = TableSpec(
    name="qa_extracted",
    keys=("qa_id",),
    description=(
        "Question/answer pairs extracted from chunks by the high- and low-standard prompts "
        "(qa_id = hash of chunk_id and the normalised question)."
    ),
    schema=_fields(
        ("qa_id", StringType(), False),
        ("chunk_id", StringType(), False),
        ("book_id", StringType(), False),
        ("subject", StringType()),
        ("standard", StringType(), False),  # high | low
        ("question", StringType()),
        ("answer", StringType()),
        ("call_id", StringType()),  # the llm_calls row that produced the pair
        ("model", StringType()),
        *_ROW_OUTCOME,
    ),
)

LLM_CALLS = TableSpec(
    name="llm_calls",
    keys=("call_id",),
    description=(
        "Every LLM call: the audit trail and the request cache. call_id = sha256 of (model, messages, sampling, "
        "JSON schema). Append-only (engine tasks write chunks of calls as they complete, committed as blind "
        "appends): a failed call retried later is written again, and a read gives each call_id its successful "
        "row if it has one, else its latest."
    ),
    precedence=("status = 'ok'", "processed_at", "run_id"),
    schema=_fields(
        ("call_id", StringType(), False),
        ("role", StringType(), False),
        ("model", StringType(), False),
        ("engine", StringType(), False),
        ("sampling", StringType(), False),  # JSON: temperature, top_p, max_tokens, n, seed
        ("json_schema", StringType()),
        ("prompt", StringType(), False),  # JSON chat messages; inline images replaced by their sha256
        ("outputs", ArrayType(StringType())),
        ("finish_reasons", ArrayType(StringType())),
        ("status", StringType(), False),  # ok | error
        ("error", StringType()),
        ("prompt_tokens", IntegerType()),
        ("cached_prompt_tokens", IntegerType()),  # prompt tokens the engine's prefix cache served
        ("completion_tokens", IntegerType()),
        ("latency_s", DoubleType()),
        ("run_id", StringType(), False),
        ("processed_at", TimestampType(), False),
    ),
)

QA_CLUSTERS = TableSpec(
    name="qa_clusters",
    keys=("qa_id",),
    description=(
        "Near-duplicate clusters of the kept extracted questions: one row per question, kept = the cluster's keeper "
        "(cluster_id = the keeper's qa_id); dropped rows name the keeper and their Jaccard similarity to it."
    ),
    schema=_fields(
        ("qa_id", StringType(), False),
        ("cluster_id", StringType()),  # null for failed rows (empty question)
        ("cluster_size", IntegerType()),  # members when this row was written, earlier runs' members included
        ("kept", BooleanType(), False),
        ("duplicate_of", StringType()),  # the keeper's qa_id; null for keepers
        ("similarity", DoubleType()),  # exact Jaccard of the shingle sets to the keeper; null for keepers
        ("standard", StringType()),
        ("subject", StringType()),
        *_ROW_OUTCOME,
    ),
)

DEDUP_BAND_KEYS = TableSpec(
    name="dedup_band_keys",
    keys=("qa_id",),
    description=(
        "MinHash LSH band keys of every kept question (dedup's state for incremental runs), with the LSH parameters "
        "they were made with."
    ),
    schema=_fields(
        ("qa_id", StringType(), False),
        ("band_keys", ArrayType(LongType()), False),
        ("lsh_params", StringType(), False),
        ("run_id", StringType(), False),
        ("processed_at", TimestampType(), False),
    ),
)

# The columns every curated QA row carries forward, so that each stage needs only the table before it.
_QA_ROW = (
    ("qa_id", StringType(), False),
    ("chunk_id", StringType(), False),
    ("book_id", StringType(), False),
    ("subject", StringType()),
    ("standard", StringType(), False),
    ("question", StringType()),
    ("answer", StringType()),
)

QA_REFINED = TableSpec(
    name="qa_refined",
    keys=("qa_id",),
    description=(
        "Dedup keepers rewritten with their source chunk: a self-contained question and a verified answer with "
        "clear steps and \\boxed{} final answers; dropped when a field is empty or the text talks about its source."
    ),
    schema=_fields(*_QA_ROW, ("call_id", StringType()), ("model", StringType()), *_ROW_OUTCOME),
)

QA_REASONED = TableSpec(
    name="qa_reasoned",
    keys=("qa_id",),
    description=(
        "Refined pairs after the reasoning check: answers judged to show no reasoning are replaced by a step-by-step "
        "answer generated from the question alone (distilled = true)."
    ),
    schema=_fields(
        *_QA_ROW,
        ("reasoning_verdict", StringType()),  # yes | no | null when the judge failed
        ("distilled", BooleanType()),
        ("judge_call_id", StringType()),
        ("distill_call_id", StringType()),
        ("model", StringType()),  # the model that wrote the answer now held (the distiller's when distilled)
        *_ROW_OUTCOME,
    ),
)

QA_FILTERED = TableSpec(
    name="qa_filtered",
    keys=("qa_id",),
    description=(
        "Pairs after the quality filter: dropped when the answer contradicts itself, the question depends on "
        "material that is not there (figures, tables, numbered equations) or the answer is missing or invalid."
    ),
    schema=_fields(
        *_QA_ROW,
        ("self_contradictory", BooleanType()),
        ("missing_material", BooleanType()),
        ("answer_valid", BooleanType()),
        ("call_id", StringType()),  # null when a rule decided without the model
        *_ROW_OUTCOME,
    ),
)

BENCHMARKS = TableSpec(
    name="benchmarks",
    keys=("item_key",),
    description=(
        "Benchmark items training questions are checked against, from the sources of decontamination.sources_file "
        "(Hugging Face datasets or local files). question holds the item's text with its answer options appended. "
        "item_key = sha256 of benchmark, subset, split and that text (of the raw record for a failed row)."
    ),
    schema=_fields(
        ("item_key", StringType(), False),
        ("benchmark", StringType(), False),
        ("subset", StringType()),
        ("split", StringType()),
        ("item_id", StringType()),  # the source's id, else the first 16 hex digits of item_key; null if unreadable
        ("question", StringType()),
        ("answer", StringType()),
        ("source", StringType(), False),  # the file or hf:<dataset>[<config>]:<split> the row came from
        *_ROW_OUTCOME,
    ),
)

CONTAMINATION = TableSpec(
    name="contamination",
    keys=("qa_id", "benchmark", "item_id"),
    description=(
        "One row per (training question, benchmark item) candidate pair: the top_k most similar items of every "
        "benchmark by exact cosine of normalised sentence embeddings. Pairs ranked within top_k over all benchmarks "
        "(and at or above the cosine floor) get the judge's verdict; the others are recorded with verdict skipped."
    ),
    schema=_fields(
        ("qa_id", StringType(), False),
        ("benchmark", StringType(), False),
        ("item_id", StringType(), False),
        ("benchmark_rank", IntegerType(), False),  # 1 = the item of this benchmark most similar to the question
        ("rank", IntegerType(), False),  # place among all the question's candidates when the pair was found
        ("cosine", DoubleType(), False),
        ("verdict", StringType()),  # yes | no | unparsed | skipped; null when the judge call failed
        ("embedding_model", StringType(), False),
        ("judge_model", StringType()),
        ("call_id", StringType()),  # the llm_calls row of the verdict
        *_ROW_OUTCOME,
    ),
)

# What decontamination adds to each question it decides.
_DECONTAMINATION = (
    ("contaminated", BooleanType()),  # null when the verdicts do not decide it (failed rows)
    ("matched_items", ArrayType(_fields(("benchmark", StringType()), ("item_id", StringType()), ("cosine", DoubleType())))),
    ("benchmarks_checked", ArrayType(StringType())),
    ("pairs_judged", IntegerType()),
    ("pairs_unparsed", IntegerType()),
)

QA_DECONTAMINATED = TableSpec(
    name="qa_decontaminated",
    keys=("qa_id",),
    description=(
        "Filtered pairs after decontamination: dropped when the judge found any benchmark item to be the same "
        "problem; failed while verdicts are missing (judge errors) or unparsed (decontamination.unparsed)."
    ),
    schema=_fields(*_QA_ROW, *_DECONTAMINATION, *_ROW_OUTCOME),
)

# --- the external QA datasets of the MegaScience mixture (NaturalReasoning, Nemotron-Science, ...) ------------------

_EXTERNAL_ROW = (
    ("qa_id", StringType(), False),
    ("dataset", StringType(), False),  # the source's name in external.sources_file
    ("source", StringType(), False),  # the file or hf:<dataset>[<config>]:<split> the row came from
    ("source_id", StringType()),  # the record's id field if mapped, else its place in the source ("line 12")
    ("subject", StringType()),
    ("question", StringType()),
    ("reference_answer", StringType()),
    ("response", StringType()),
)

EXTERNAL_QA = TableSpec(
    name="external_qa",
    keys=("qa_id",),
    description=(
        "Questions of public QA datasets (Hugging Face datasets or local files, external.sources_file) with their "
        "reference answers and responses when the source has them. qa_id = sha256 of the dataset and the "
        "normalised question (of the raw record for a failed row)."
    ),
    schema=_fields(*_EXTERNAL_ROW, *_ROW_OUTCOME),
)

EXTERNAL_CLUSTERS = QA_CLUSTERS.renamed(
    "external_clusters",
    "Near-duplicate clusters of the kept external questions, within each dataset (dedup's rules; standard is null).",
)

EXTERNAL_BAND_KEYS = DEDUP_BAND_KEYS.renamed(
    "external_band_keys", "MinHash LSH band keys of every kept external question (dedup_external's state)."
)

EXTERNAL_CONTAMINATION = CONTAMINATION.renamed(
    "external_contamination",
    "One row per (external question, benchmark item) candidate pair, with the judge's verdict (as contamination).",
)

EXTERNAL_DECONTAMINATED = TableSpec(
    name="external_decontaminated",
    keys=("qa_id",),
    description=(
        "Deduplicated external questions after decontamination: dropped when the judge found any benchmark item to "
        "be the same problem; failed while verdicts are missing or unparsed (as qa_decontaminated)."
    ),
    schema=_fields(*_EXTERNAL_ROW, *_DECONTAMINATION, *_ROW_OUTCOME),
)

QA_REFERENCE = TableSpec(
    name="qa_reference",
    keys=("qa_id",),
    description=(
        "The short final answer of every curated pair: the last \\boxed{}, else an explicit final-answer line, "
        "else the reference_extractor model's reading of the answer; null (kept, reason no_reference_answer) when "
        "there is none."
    ),
    schema=_fields(
        *_QA_ROW,
        ("reference_answer", StringType()),
        ("reference_method", StringType()),  # boxed | final_answer_line | model
        ("call_id", StringType()),
        *_ROW_OUTCOME,
    ),
)

TEXTBOOK_REASONING = TableSpec(
    name="textbook_reasoning",
    keys=("qa_id",),
    description=(
        "The gold TextbookReasoning table: question, answer, subject, reference_answer exactly as the public "
        "dataset, plus lineage back to the book, chunk and pages. Rewritten only when the curated set changes."
    ),
    schema=_fields(
        ("question", StringType(), False),
        ("answer", StringType(), False),
        ("subject", StringType(), False),
        ("reference_answer", StringType()),  # null when the answer reaches no short final answer (kept, as in the paper)
        ("qa_id", StringType(), False),
        ("book_id", StringType(), False),
        ("chunk_id", StringType(), False),
        ("first_page", IntegerType()),
        ("last_page", IntegerType()),
        ("standard", StringType(), False),
        ("run_id", StringType(), False),  # the publish run that wrote this snapshot
    ),
)

# --- the MegaScience mixture: selection, new solutions, the gold mixture ---------------------------------------------

SELECTION_SCORES = TableSpec(
    name="selection_scores",
    keys=("dataset", "method", "qa_id"),
    description=(
        "One row per (external dataset, selection method, question): the method's score (length: answer tokens; "
        "difficulty: mean 0-10 grade of the student's samples; random: a seeded hash in [0, 1)), whether the question "
        "falls within the dataset's quota under that method, and the outcome. kept = selected by the method the "
        "dataset is configured with (select.datasets)."
    ),
    schema=_fields(
        ("qa_id", StringType(), False),
        ("dataset", StringType(), False),
        ("method", StringType(), False),  # length | difficulty | random
        ("chosen", BooleanType(), False),  # this is the dataset's configured method
        ("score", DoubleType()),  # null when the method could not score the question (failed rows)
        ("selected", BooleanType(), False),  # within the quota under this method
        ("answer_tokens", IntegerType()),  # length: tokens of the answerer's answer
        ("tokenizer", StringType()),  # length: what counted them, e.g. tiktoken:cl100k_base
        ("samples", IntegerType()),  # difficulty: student answers graded
        ("grades", ArrayType(IntegerType())),  # difficulty: one 0-10 grade per sample, null where unparsed
        ("grades_unparsed", IntegerType()),
        ("reference_answer", StringType()),  # difficulty: the short answer graded against
        ("reference_method", StringType()),  # difficulty: source | boxed | final_answer_line | model (from the response)
        ("answer_call_id", StringType()),  # the answerer's or the student's llm_calls row
        ("grade_call_ids", ArrayType(StringType())),  # the grader's llm_calls rows, in sample order
        *_ROW_OUTCOME,
    ),
)

EXTERNAL_ANNOTATED = TableSpec(
    name="external_annotated",
    keys=("qa_id",),
    description=(
        "Selected external questions with a new concise step-by-step solution from the annotator; dropped when the "
        "solution is over annotate.max_answer_tokens or no reference answer can be had. reference_answer is the "
        "source's, else the new solution's last \\boxed{} (or final-answer line)."
    ),
    schema=_fields(
        ("qa_id", StringType(), False),
        ("dataset", StringType(), False),
        ("source", StringType(), False),
        ("source_id", StringType()),
        ("subject", StringType()),
        ("subject_source", StringType()),  # dataset (its own field, mapped) | model (the classifier on the question)
        ("subject_call_id", StringType()),
        ("question", StringType()),
        ("answer", StringType()),
        ("reference_answer", StringType()),
        ("reference_method", StringType()),  # source | boxed | final_answer_line
        ("answer_tokens", IntegerType()),
        ("tokenizer", StringType()),
        ("call_id", StringType()),
        ("model", StringType()),
        *_ROW_OUTCOME,
    ),
)

MEGASCIENCE = TableSpec(
    name="megascience",
    keys=("qa_id",),
    description=(
        "The gold MegaScience mixture: question, answer, subject, reference_answer, source as the public dataset "
        "(every textbook_reasoning row, source textbook_reasoning; the selected, re-annotated external questions, "
        "source = their dataset), plus lineage. Rewritten only when its content changes."
    ),
    schema=_fields(
        ("question", StringType(), False),
        ("answer", StringType(), False),
        ("subject", StringType(), False),  # the dataset's own (mapped) or the classifier's reading of the question
        ("reference_answer", StringType()),  # null when no short answer could be had (kept, as in the paper)
        ("source", StringType(), False),  # textbook_reasoning | the external dataset's name
        ("qa_id", StringType(), False),
        ("source_uri", StringType()),  # external: the file or hf:<dataset>[<config>]:<split>; null for textbook rows
        ("source_id", StringType()),  # external: the record's id; textbook: the book_id
        ("selection_method", StringType(), False),  # all (textbook) | length | difficulty | random
        ("run_id", StringType(), False),  # the mix run that wrote this snapshot
    ),
)

TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in (
        BOOKS,
        PAGES,
        BOOK_LABELS,
        CHUNKS,
        QA_EXTRACTED,
        LLM_CALLS,
        QA_CLUSTERS,
        DEDUP_BAND_KEYS,
        QA_REFINED,
        QA_REASONED,
        QA_FILTERED,
        BENCHMARKS,
        CONTAMINATION,
        QA_DECONTAMINATED,
        QA_REFERENCE,
        TEXTBOOK_REASONING,
        EXTERNAL_QA,
        EXTERNAL_CLUSTERS,
        EXTERNAL_BAND_KEYS,
        EXTERNAL_CONTAMINATION,
        EXTERNAL_DECONTAMINATED,
        SELECTION_SCORES,
        EXTERNAL_ANNOTATED,
        MEGASCIENCE,
    )
}


def table_spec(name: str) -> TableSpec:
    try:
        return TABLES[name]
    except KeyError:
        raise KeyError(f"unknown table {name!r}; known tables: {', '.join(sorted(TABLES))}") from None
