"""Near-duplicate detection: our banded MinHashLSH vs Spark's plain approxSimilarityJoin vs datasketch in one process.

Question sets are generated: scaffolding phrases shared across questions ("find the value of", ...) between
content words drawn from a Zipf vocabulary, so unrelated questions overlap a little, as real ones do; about 10% of
the rows are edited copies (word substitutions, some of copies, some exact) of earlier rows, so their Jaccard
similarities spread over 0.3-1.0. The three methods get the same shingle sets (the stage's own shingling, done
once in Spark and not timed); each ends with exact Jaccard verification, so the comparison is about candidates:
how many, how fast, how many true pairs they miss.

Ground truth: every pair with exact Jaccard >= threshold, by an exact prefix-filtering all-pairs join (tokens
ordered rarest first; two sets with J >= t must share a token within their first |x| - ceil(t|x|) + 1), checked
against brute force on a sample. Recall = found true pairs / true pairs; precision = found true pairs / reported
pairs (exact verification makes it 1.0); candidates = pairs each method had to verify.

The stage row times the whole dedup stage on the same rows (banded, incl. components, keepers, Delta commits and
MLflow lineage). Times are wall seconds on this machine; Spark runs local[2]; each row records the load average
when it started. Spark's plain approxSimilarityJoin runs at the smallest size only: its OR-join grows
superlinearly (about 130 s at 25k rows here) and larger sizes would not fit the benchmark's ~15 minutes.
"""

from __future__ import annotations

import math
import os
import random
import tempfile
import time
from collections import defaultdict
from itertools import accumulate, combinations

SIZES = (25_000, 50_000, 100_000, 200_000)
APPROX_JOIN_SIZES = (25_000,)  # Spark's plain join at larger sizes exceeds the benchmark's time budget
BRUTE_FORCE_SAMPLE = 2_000
WARM_UP = 5_000
SPARK_SETTINGS = ("run.progress=false", "spark.master=local[2]", "spark.driver_memory=8g", "spark.shuffle_partitions=8")
SEED = 20261122
NOTE = (
    "recall/precision against every pair with exact Jaccard >= threshold (prefix-filtered all-pairs join, checked by "
    "brute force on a sample); candidates = pairs verified (approx_join: pairs Spark returned after its own distance "
    "filter); seconds = wall time from the shingled rows (datasketch: one Python process, one core; Spark: local[2]); "
    "the stage row is the whole dedup stage incl. components, keepers, Delta commits and MLflow; load_before = the "
    "machine's 1-minute load average when the method started (other work shares these 2 cores)"
)

_SCAFFOLDS = [
    "find the value of", "what is the", "calculate the", "determine the", "show that", "assuming that",
    "in terms of", "as a function of", "explain why", "how many", "estimate the", "given that",
    "which of the following",
    "what happens to the", "derive an expression for", "compute the", "at what rate", "prove that the",
    "under the assumption that", "express your answer in", "with respect to", "what is the probability that",
]


def _word(rank: int) -> str:
    syllables = ("ka", "to", "ri", "ne", "su", "mo", "la", "pe", "vi", "do", "gu", "che")
    out = []
    rank += 1
    while rank:
        rank, digit = divmod(rank, len(syllables))
        out.append(syllables[digit])
    return "".join(out)


def generate(size: int, seed: int = SEED) -> list[tuple[str, str, str]]:
    """(qa_id, question, standard) rows: originals plus ~10% edited copies of earlier rows."""
    rng = random.Random(seed)
    vocabulary = [_word(i) for i in range(30_000)]
    cumulative = list(accumulate(1.0 / (i + 1) for i in range(len(vocabulary))))  # Zipf: a few words are everywhere
    scaffolds = _SCAFFOLDS + [" ".join(rng.sample(vocabulary[:300], 3)) for _ in range(200)]
    texts: list[list[str]] = []
    for n in range(size):
        if n > 100 and rng.random() < 0.1:
            words = list(texts[rng.randrange(n - 100, n) if rng.random() < 0.5 else rng.randrange(n)])
            for _ in range(rng.choice((0, 1, 1, 2, 2, 3, 3, 4, 5, 6, 8))):  # 0 edits: an exact copy
                words[rng.randrange(len(words))] = rng.choices(vocabulary, cum_weights=cumulative)[0]
        else:
            words = []
            for _ in range(rng.randint(2, 5)):
                content = rng.choices(vocabulary, cum_weights=cumulative, k=rng.randint(3, 9))
                words += rng.choice(scaffolds).split() + content
        texts.append(words)
    return [(f"q{n:07d}", " ".join(words), "high" if n % 7 == 0 else "low") for n, words in enumerate(texts)]


def _jaccard(x: frozenset, y: frozenset) -> float:
    return len(x & y) / len(x | y)


def exact_pairs(sets: dict[str, frozenset], threshold: float) -> set[tuple[str, str]]:
    """Every pair with Jaccard >= threshold (exact: prefix filtering, then verification)."""
    frequency: dict[str, int] = defaultdict(int)
    for shingles in sets.values():
        for s in shingles:
            frequency[s] += 1
    postings: dict[str, list[str]] = defaultdict(list)
    for qa_id, shingles in sets.items():
        ordered = sorted(shingles, key=lambda s: (frequency[s], s))
        for s in ordered[: len(ordered) - math.ceil(threshold * len(ordered)) + 1]:
            postings[s].append(qa_id)
    candidates = {(min(a, b), max(a, b)) for ids in postings.values() for a, b in combinations(ids, 2)}
    return {(a, b) for a, b in candidates if _jaccard(sets[a], sets[b]) >= threshold}


def brute_force_pairs(sets: dict[str, frozenset], threshold: float) -> set[tuple[str, str]]:
    return {(a, b) for a, b in combinations(sorted(sets), 2) if _jaccard(sets[a], sets[b]) >= threshold}


def datasketch_pairs(sets: dict[str, frozenset], params) -> tuple[set, int]:
    """datasketch MinHash + MinHashLSH with the same bands x rows, then exact verification (one process)."""
    from datasketch import MinHash, MinHashLSH

    ids = list(sets)
    signatures = MinHash.bulk([[s.encode() for s in sets[i]] for i in ids], num_perm=params.num_hashes)
    lsh = MinHashLSH(num_perm=params.num_hashes, params=(params.bands, params.rows))
    with lsh.insertion_session() as session:
        for qa_id, signature in zip(ids, signatures):
            session.insert(qa_id, signature, check_duplication=False)
    candidates = {
        (min(qa_id, other), max(qa_id, other))
        for qa_id, signature in zip(ids, signatures)
        for other in lsh.query(signature)
        if other != qa_id
    }
    return {(a, b) for a, b in candidates if _jaccard(sets[a], sets[b]) >= params.threshold}, len(candidates)


def _spark_pairs(shingled, settings, mode: str) -> tuple[set, int]:
    """Candidates of one Spark mode, verified exactly; (verified pairs, candidate count)."""
    from megascience.jobs.stages import dedup

    params = dedup.lsh_params(settings)
    featured = dedup.featurise(shingled, params.ngram)
    model = dedup.minhash_model(featured, params)
    if mode == "banded":  # cached where the stage caches: the buckets feed a self-join and the anchor pairs
        keys = dedup.key_rows(dedup.band_keys(dedup.signatures(featured, model), shingled, params), True)
        buckets = dedup.band_buckets(keys).cache()
        candidates = dedup.candidate_pairs(buckets, settings.max_bucket_size).localCheckpoint()
        buckets.unpersist()
    else:
        candidates = dedup.approx_join_pairs(model, featured, featured, params.threshold).localCheckpoint()
    verified = dedup.verified_pairs(candidates, shingled, params.threshold).select("a", "b").toArrow()
    return set(zip(verified["a"].to_pylist(), verified["b"].to_pylist())), candidates.count()


def _timed(fn, *args):
    started = time.perf_counter()
    result = fn(*args)
    return result, round(time.perf_counter() - started, 1)


def _extracted(frame):
    """qa_extracted rows for the stage run: every generated question kept."""
    from pyspark.sql import functions as F

    from megascience.schemas import status as S

    nothing = F.lit(None).cast("string")
    return frame.select(
        "qa_id",
        F.concat(F.lit("chunk-"), "qa_id").alias("chunk_id"),
        F.lit("book").alias("book_id"),
        F.lit("physics").alias("subject"),
        "standard",
        "question",
        F.lit("").alias("answer"),
        nothing.alias("call_id"),
        F.lit("generated").alias("model"),
        F.lit(S.KEPT).alias("status"),
        F.lit(S.REASON_OK).alias("reason"),
        nothing.alias("detail"),
        F.lit("benchmark").alias("run_id"),
        F.current_timestamp().alias("processed_at"),
    )


def _shingled(spark, size: int, params):
    """The generated questions, their shingled frame (cached) and {qa_id: shingle set} for the one-process methods."""
    from megascience.jobs.stages import dedup

    frame = spark.createDataFrame(generate(size), "qa_id string, question string, standard string")
    shingled = dedup.shingle(frame, params.ngram).where("n_tokens > 0").cache()
    columns = shingled.select("qa_id", "shingles").toArrow()
    return frame, shingled, dict(zip(columns["qa_id"].to_pylist(), map(frozenset, columns["shingles"].to_pylist())))


def measure(spark, root: str, size: int, settings, with_approx_join: bool) -> list[dict]:
    """One row per method at this size: recall, precision, candidates verified, wall seconds."""
    from megascience.jobs.pipeline import run_pipeline
    from megascience.jobs.platform.config import load_config
    from megascience.jobs.platform.tables import Lakehouse
    from megascience.jobs.stages import dedup

    params = dedup.lsh_params(settings)
    frame, shingled, sets = _shingled(spark, size, params)
    truth, truth_s = _timed(exact_pairs, sets, params.threshold)
    methods = [
        ("banded (ours)", _spark_pairs, shingled, settings, "banded"),
        ("datasketch", datasketch_pairs, sets, params),
    ]
    if with_approx_join:
        methods.append(("approx_join (Spark)", _spark_pairs, shingled, settings, "approx_join"))
    rows = []
    for name, method, *args in methods:
        load = os.getloadavg()[0]
        (found, candidates), seconds = _timed(method, *args)
        hits = len(found & truth)
        rows.append(
            {
                "rows": size,
                "method": name,
                "true_pairs": len(truth),
                "recall": round(hits / len(truth), 4),
                "precision": round(hits / len(found), 4) if found else 1.0,
                "candidates": candidates,
                "seconds": seconds,
                "load_before": round(load, 1),
            }
        )
    shingled.unpersist()

    config = load_config("local", [f"lake.root={root}/lake_{size}", *SPARK_SETTINGS])
    lake = Lakehouse.open(spark, config)
    lake.write("qa_extracted", _extracted(frame))
    load = os.getloadavg()[0]
    [report], seconds = _timed(run_pipeline, spark, config, lake, [dedup.STAGE])
    outcome = report.outcome
    rows.append(
        {
            "rows": size,
            "method": "dedup stage (banded)",
            "true_pairs": len(truth),
            "kept": outcome.rows_kept,
            "dropped": outcome.rows_dropped,
            "seconds": seconds,
            "load_before": round(load, 1),
        }
    )
    rows.append({"rows": size, "method": "ground truth (exact)", "true_pairs": len(truth), "seconds": truth_s})
    return rows


def _table(rows: list[dict]) -> str:
    headers = list(dict.fromkeys(k for row in rows for k in row))
    width = {h: max(len(h), *(len(str(row.get(h, ""))) for row in rows)) for h in headers}
    lines = ["  ".join(f"{h:>{width[h]}}" for h in headers)]
    lines += ["  ".join(f"{str(row.get(h, '')):>{width[h]}}" for h in headers) for row in rows]
    return "\n".join(lines)


def run() -> dict:
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from megascience.jobs.platform.config import load_config
    from megascience.jobs.platform.session import get_spark
    from megascience.jobs.platform.settings import DedupSettings
    from megascience.jobs.stages import dedup

    settings = DedupSettings.of(load_config("local", []))
    params = dedup.lsh_params(settings)
    rows = []
    with tempfile.TemporaryDirectory(prefix="megascience-bench-") as root:
        spark = get_spark(load_config("local", [f"lake.root={root}", *SPARK_SETTINGS]))
        _, sample, sample_sets = _shingled(spark, BRUTE_FORCE_SAMPLE, params)  # the truth join vs brute force
        assert exact_pairs(sample_sets, params.threshold) == brute_force_pairs(sample_sets, params.threshold)
        sample.unpersist()
        measure(spark, root, WARM_UP, settings, with_approx_join=True)  # JIT, MLflow store: not per-row costs
        for size in SIZES:
            rows += measure(spark, root, size, settings, with_approx_join=size in APPROX_JOIN_SIZES)
            print(_table([row for row in rows if row["rows"] == size]), flush=True)
    return {
        "rows": rows,
        "table": _table(rows),
        "params": {"bands": params.bands, "rows": params.rows, "threshold": params.threshold, "ngram": params.ngram},
        "note": NOTE,
    }
