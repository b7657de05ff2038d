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

The stage column times the whole dedup stage on the same rows (banded, incl. components, keepers, Delta commits
and MLflow lineage). Times are wall seconds on this machine; Spark runs local[2].
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
APPROX_JOIN_SIZES = (25_000,)  # Spark's plain join at larger sizes exceeds the benchmark's time budget (see note)
BRUTE_FORCE_SAMPLE = 1_500
SEED = 20261122

_SCAFFOLDS = [
    "find the value of", "what is the", "calculate the", "determine the", "show that", "assuming that",
    "in terms of", "as a function of", "explain why", "how many", "estimate the", "given that", "which of the following",
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
                words += rng.choice(scaffolds).split() + rng.choices(vocabulary, cum_weights=cumulative, k=rng.randint(3, 9))
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


def datasketch_pairs(sets: dict[str, frozenset], params, threshold: float) -> tuple[set, int]:
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
    return {(a, b) for a, b in candidates if _jaccard(sets[a], sets[b]) >= threshold}, len(candidates)


def _spark_pairs(spark, shingled, params, mode: str) -> tuple[set, int]:
    """Candidates of one Spark mode, verified exactly; (verified pairs, candidate count)."""
    from jobs import dedup

    featured = dedup.featurise(shingled, params.ngram)
    model = dedup.minhash_model(featured, params)
    if mode == "banded":
        keys = dedup.key_rows(dedup.band_keys(dedup.signatures(featured, model), shingled, params), True).cache()
        candidates = dedup.candidate_pairs(dedup.band_buckets(keys), 500)
    else:
        candidates = dedup.approx_join_pairs(model, featured, featured, params.threshold)
    candidates = candidates.localCheckpoint()
    verified = dedup.verified_pairs(candidates, shingled, params.threshold).select("a", "b").collect()
    return {(r["a"], r["b"]) for r in verified}, candidates.count()


def _scores(found: set, truth: set) -> dict:
    hits = len(found & truth)
    return {
        "recall": round(hits / len(truth), 4) if truth else 1.0,
        "precision": round(hits / len(found), 4) if found else 1.0,
    }


def _timed(fn, *args):
    started = time.perf_counter()
    result = fn(*args)
    return result, round(time.perf_counter() - started, 1)


def run() -> dict:
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from jobs import dedup
    from jobs.config import load_config
    from jobs.pipeline import run_pipeline
    from jobs.session import get_spark
    from jobs.tables import Lakehouse
    from schemas import status as S
    from schemas.tables import QA_EXTRACTED

    rows_out = []
    with tempfile.TemporaryDirectory(prefix="megascience-bench-") as tmp:
        base = ["run.progress=false", "spark.master=local[2]", "spark.driver_memory=8g", "spark.shuffle_partitions=8"]
        spark = get_spark(load_config("local", [f"lake.root={tmp}/warm", *base]))
        params = dedup.lsh_params(load_config("local", [])["dedup"])
        for size in SIZES:
            questions = generate(size)
            frame = spark.createDataFrame(questions, "qa_id string, question string, standard string")
            shingled = dedup.shingle(frame, params.ngram).where("n_tokens > 0").cache()
            sets = {r["qa_id"]: frozenset(r["shingles"]) for r in shingled.select("qa_id", "shingles").toLocalIterator()}
            truth, truth_s = _timed(exact_pairs, sets, params.threshold)
            if size == SIZES[0]:
                sample = dict(list(sets.items())[:BRUTE_FORCE_SAMPLE])
                assert exact_pairs(sample, params.threshold) == brute_force_pairs(sample, params.threshold)
            result = {"rows": size, "true_pairs": len(truth), "truth_s": truth_s}

            (banded, banded_candidates), result["banded_s"] = _timed(_spark_pairs, spark, shingled, params, "banded")
            result.update({f"banded_{k}": v for k, v in _scores(banded, truth).items()})
            result["banded_candidates"] = banded_candidates

            (sketch, sketch_candidates), result["datasketch_s"] = _timed(datasketch_pairs, sets, params, params.threshold)
            result.update({f"datasketch_{k}": v for k, v in _scores(sketch, truth).items()})
            result["datasketch_candidates"] = sketch_candidates

            if size in APPROX_JOIN_SIZES:
                (approx, approx_candidates), result["approx_join_s"] = _timed(
                    _spark_pairs, spark, shingled, params, "approx_join"
                )
                result.update({f"approx_join_{k}": v for k, v in _scores(approx, truth).items()})
                result["approx_join_candidates"] = approx_candidates
            shingled.unpersist()

            config = load_config("local", [f"lake.root={tmp}/lake_{size}", *base])
            lake = Lakehouse.open(spark, config)
            stamp = time.gmtime()
            extracted = [
                (qa_id, f"c{qa_id}", "b", "physics", standard, text, "", None, "m", S.KEPT, S.REASON_OK, None, "x",
                 time.strftime("%Y-%m-%d %H:%M:%S", stamp))
                for qa_id, text, standard in questions
            ]
            schema = QA_EXTRACTED.schema
            lake.write("qa_extracted", spark.createDataFrame(extracted, schema.simpleString().replace("timestamp", "string"))
                       .withColumn("processed_at", __import__("pyspark.sql.functions", fromlist=["F"]).to_timestamp("processed_at")))
            (_, result["stage_s"]) = _timed(run_pipeline, spark, config, lake, [dedup.STAGE])
            result["stage_kept"] = lake.read("qa_clusters").where("kept").count()
            rows_out.append(result)
            print(result, flush=True)
    headers = list(dict.fromkeys(k for row in rows_out for k in row))
    table = "\n".join(
        ["  ".join(f"{h:>22}" for h in headers)]
        + ["  ".join(f"{str(row.get(h, '-')):>22}" for h in headers) for row in rows_out]
    )
    return {"rows": rows_out, "table": table, "params": {"bands": params.bands, "rows": params.rows}}
