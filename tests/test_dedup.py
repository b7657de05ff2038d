"""Dedup: every pure transform on tiny frames, then the stage end to end on Delta (planted pairs, rerun, increments,
partitioning)."""

import random
import re
from dataclasses import replace
from datetime import datetime, timezone

import pandas as pd
import pytest
import yaml
from pyspark.sql import functions as F

from megascience.jobs.pipeline import run_pipeline
from megascience.jobs.platform.config import ConfigError, load_config
from megascience.jobs.platform.settings import KEEPER_RULES, DedupSettings
from megascience.jobs.platform.tables import Lakehouse
from megascience.jobs.stages import dedup
from megascience.schemas import status as S
from megascience.schemas.tables import QA_EXTRACTED
from megascience.udfs.components import split_component
from tests.conftest import ROOT, make_config

SETTINGS = DedupSettings.of(load_config("local", [], environ={}))
PARAMS = dedup.lsh_params(SETTINGS)
PLANTED = yaml.safe_load((ROOT / "conf/sample/planted.yaml").read_text(encoding="utf-8"))["near_duplicates"]


def word_shingles(text: str, n: int = 3) -> set[str]:
    """The reference shingling the stage must agree with (ASCII text: Python's and Java's \\W coincide)."""
    words = [w for w in re.split(r"\W+", text.lower()) if w]
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def jaccard(x: str, y: str) -> float:
    a, b = word_shingles(x), word_shingles(y)
    return len(a & b) / len(a | b)


# --- generated questions with near-duplicates at known Jaccard -----------------------------------------------------

VOCABULARY = [f"w{i}" for i in range(3000)]


def random_question(rng: random.Random, words: int = 42) -> list[str]:
    return rng.sample(VOCABULARY, words)


def substituted(words: list[str], positions: list[int], tag: str) -> str:
    """The question with the words at `positions` replaced: each replacement far from the others and from the ends
    changes 3 of its trigrams, so with k of them J = (m - 3k) / (m + 3k) for m trigrams."""
    changed = list(words)
    for p in positions:
        changed[p] = f"{tag}{p}"
    return " ".join(changed)


def questions_frame(spark, rows, run_id="extract-run"):
    """qa_extracted rows from (qa_id, question, standard[, subject])."""
    stamp = datetime(2026, 11, 1, tzinfo=timezone.utc)
    full = [
        (r[0], f"chunk-{r[0]}", "book-1", r[3] if len(r) > 3 else "physics", r[2], r[1], "an answer", None, "m",
         S.KEPT, S.REASON_OK, None, run_id, stamp)
        for r in rows
    ]
    return spark.createDataFrame(full, QA_EXTRACTED.schema)


# --- shingles, parameters, band keys ------------------------------------------------------------------------------


def test_shingle_normalises_and_handles_short_and_empty_questions(spark):
    questions = spark.createDataFrame(
        [
            ("long", "The cat sat -- on THE mat, the cat sat!"),
            ("short", "Why  so?"),
            ("empty", " ?! -- "),
            ("null", None),
            ("unicode", "Évaluer la somme Σ"),
        ],
        "qa_id string, question string",
    )
    got = {r["qa_id"]: (r["n_tokens"], sorted(r["shingles"])) for r in dedup.shingle(questions, 3).collect()}
    assert got == {
        "long": (9, sorted({"the cat sat", "cat sat on", "sat on the", "on the mat", "the mat the", "mat the cat"})),
        "short": (2, ["why so"]),
        "empty": (0, []),
        "null": (0, []),
        "unicode": (4, ["la somme σ", "évaluer la somme"]),
    }
    assert sorted(got["long"][1]) == sorted(word_shingles("The cat sat -- on THE mat, the cat sat!"))


def test_lsh_params_come_from_datasketchs_optimiser():
    assert (PARAMS.bands, PARAMS.rows) == (21, 3)  # 64 perms weighted to recall: 99.4% of pairs at J=0.6 meet
    paper = dedup.lsh_params(replace(SETTINGS, num_perm=250, false_negative_weight=0.5))
    assert (paper.bands, paper.rows) == (31, 8)  # the paper's parameters for (0.6, 250)
    assert PARAMS.fingerprint != paper.fingerprint
    with pytest.raises(ConfigError, match=r"--set dedup.threshold: dedup.threshold must be in \(0.0, 1.0\], got 1.5"):
        load_config("local", ["dedup.threshold=1.5"], environ={})
    with pytest.raises(ConfigError, match="dedup.keeper_order has unknown newest"):
        load_config("local", ["dedup.keeper_order=[high_standard, newest]"], environ={})
    assert set(dedup.KEEPER_SORTS) == set(KEEPER_RULES)  # every rule the configuration accepts has its sort


def keyed(spark, rows, params=PARAMS):
    """{qa_id: band_keys} of (qa_id, question) rows through shingle -> featurise -> MinHashLSH -> band keys."""
    shingled = dedup.shingle(spark.createDataFrame(rows, "qa_id string, question string"), params.ngram)
    featured = dedup.featurise(shingled, params.ngram)
    signed = dedup.signatures(featured, dedup.minhash_model(featured, params))
    return {r["qa_id"]: list(r["band_keys"]) for r in dedup.band_keys(signed, shingled, params).collect()}


def test_band_keys_one_per_band_equal_for_equal_sets_and_exact_for_short_questions(spark):
    rng = random.Random(1)
    base, other = random_question(rng), random_question(rng)
    keys = keyed(
        spark,
        [
            ("a", " ".join(base)),
            ("a_copy", " ".join(base).upper() + " ?"),  # same shingle set
            ("b", " ".join(other)),
            ("near", substituted(base, [20], "x")),  # J = 37/43
            ("short", "Define entropy."),
            ("short_copy", "define   ENTROPY"),
            ("short_other", "Define enthalpy."),
            ("empty", "??"),
        ],
    )
    assert "empty" not in keys  # never reaches MinHash
    assert len(keys["a"]) == PARAMS.bands and len(set(keys["a"])) == PARAMS.bands
    assert keys["a"] == keys["a_copy"]
    assert not set(keys["a"]) & set(keys["b"])
    assert 0 < len(set(keys["a"]) & set(keys["near"])) < PARAMS.bands
    assert len(keys["short"]) == 1 and keys["short"] == keys["short_copy"] != keys["short_other"]
    assert not set(keys["short"]) & set(keys["a"])


# --- candidates and verification ----------------------------------------------------------------------------------


def key_frame(spark, rows):
    return spark.createDataFrame(rows, "qa_id string, band_key long, is_new boolean")


def pairs_of(df):
    return sorted((r["a"], r["b"]) for r in df.collect())


def test_candidate_pairs_share_a_key_involve_a_new_row_and_bound_large_buckets(spark):
    keys = key_frame(
        spark,
        [
            ("a", 1, True), ("b", 1, True), ("a", 2, True), ("b", 2, True),  # same pair in two bands: once
            ("old1", 3, False), ("old2", 3, False), ("c", 3, True),  # old-old pair never formed again
            ("lonely", 4, True),
            *[(f"m{i}", 5, i % 2 == 0) for i in range(6)],  # a bucket of 6 > max 4: pairs with its anchor m0 only
            *[(f"n{i}", 6, i > 0) for i in range(5)],  # anchor n0 is old: its pairs still count (the others are new)
        ],
    )
    buckets = dedup.band_buckets(keys)
    assert {r["band_key"]: r["bucket_size"] for r in buckets.collect()} == {1: 2, 2: 2, 3: 3, 5: 6, 6: 5}
    assert {r["band_key"]: r["anchor"] for r in buckets.collect()} == {1: "a", 2: "a", 3: "c", 5: "m0", 6: "n0"}
    assert pairs_of(dedup.candidate_pairs(buckets, max_bucket_size=4)) == sorted(
        [("a", "b"), ("c", "old1"), ("c", "old2")]
        + [("m0", f"m{i}") for i in range(1, 6)]
        + [("n0", f"n{i}") for i in range(1, 5)]
    )
    # one more old row in bucket 6 with the smallest id: old-old anchor pairs are skipped, old-new ones kept
    more = keys.union(key_frame(spark, [("m", 6, False)]))
    within_6 = [p for p in pairs_of(dedup.candidate_pairs(dedup.band_buckets(more), 4)) if p[0] in ("m", "n0")]
    assert within_6 == [("m", f"n{i}") for i in range(1, 5)]


def test_verified_pairs_keep_exact_jaccard_at_or_above_the_threshold(spark):
    shingled = spark.createDataFrame(
        [("a", ["1", "2", "3", "4"]), ("b", ["1", "2", "3", "5"]), ("c", ["1", "2", "6", "7"]), ("d", ["1", "2", "3"])],
        "qa_id string, shingles array<string>",
    )
    candidates = spark.createDataFrame([("a", "b"), ("a", "c"), ("a", "d"), ("b", "d")], "a string, b string")
    got = {(r["a"], r["b"]): r["similarity"] for r in dedup.verified_pairs(candidates, shingled, 0.6).collect()}
    assert got == {("a", "b"): 0.6, ("a", "d"): 0.75, ("b", "d"): 0.75}  # a~c is 2/6


def test_approx_join_finds_the_same_verified_pairs_as_banding(spark):
    rng = random.Random(2)
    bases = [random_question(rng) for _ in range(6)]
    rows = [(f"q{i}", " ".join(words)) for i, words in enumerate(bases)]
    rows += [("q0_near", substituted(bases[0], [10, 25], "x")), ("q1_near", substituted(bases[1], [12], "y"))]
    rows += [("q2_far", substituted(bases[2], [6, 12, 18, 24, 30], "z"))]  # J = 25/55
    shingled = dedup.shingle(spark.createDataFrame(rows, "qa_id string, question string"), 3).cache()
    featured = dedup.featurise(shingled, 3)
    model = dedup.minhash_model(featured, PARAMS)
    keys = dedup.key_rows(dedup.band_keys(dedup.signatures(featured, model), shingled, PARAMS), True)
    banded = dedup.candidate_pairs(dedup.band_buckets(keys), 100)
    approx = dedup.approx_join_pairs(model, featured, featured, PARAMS.threshold)
    verified = [pairs_of(dedup.verified_pairs(c, shingled, 0.6)) for c in (banded, approx)]
    assert verified[0] == verified[1] == [("q0", "q0_near"), ("q1", "q1_near")]


# --- components, keepers, anti-chaining -----------------------------------------------------------------------------


def edges_frame(spark, pairs):
    return spark.createDataFrame([(a, b) for a, b in pairs], "a string, b string")


def test_connected_components_label_each_vertex_with_its_components_minimum(spark):
    chain = [(f"c{i:02d}", f"c{i + 1:02d}") for i in range(24)]  # long chain: needs the pointer jumps
    pairs = [("b", "a"), ("c", "b"), ("x", "y")] + list(reversed(chain))
    got = {r["qa_id"]: r["component"] for r in dedup.connected_components(edges_frame(spark, pairs)).collect()}
    assert got == {"a": "a", "b": "a", "c": "a", "x": "x", "y": "x", **{f"c{i:02d}": "c00" for i in range(25)}}
    assert dedup.connected_components(edges_frame(spark, [])).count() == 0


def members_frame(spark, rows):
    """(qa_id, component, is_new, standard, n_tokens)."""
    return spark.createDataFrame(rows, "qa_id string, component string, is_new boolean, standard string, n_tokens int")


def keepers(spark, members, pairs, rules=("high_standard", "qa_id"), max_cluster_size=50):
    ranked = dedup.rank_members(members_frame(spark, members), dedup.keeper_order(list(rules)))
    decided = dedup.choose_keepers(ranked, edges_frame(spark, pairs), max_cluster_size)
    return {r["qa_id"]: r["keeper"] for r in decided.collect()}


def test_keeper_rule_high_standard_first_then_smallest_qa_id_and_configurable(spark):
    members = [
        ("a", "a", True, "low", 30), ("b", "a", True, "high", 10), ("c", "a", True, "high", 50),
        ("d", "d", True, "low", 20), ("e", "d", True, "low", 40),
        ("s", "s", True, "low", 5),
    ]
    pairs = [("a", "b"), ("b", "c"), ("d", "e")]
    assert keepers(spark, members, pairs) == {"a": "b", "b": "b", "c": "b", "d": "d", "e": "d", "s": "s"}
    by_length = keepers(spark, members, pairs, rules=["longer_question"])
    assert by_length == {"a": "c", "b": "c", "c": "c", "d": "e", "e": "e", "s": "s"}


def test_earlier_keepers_stay_kept(spark):
    members = [
        ("k1", "k1", False, "low", 30), ("n1", "k1", True, "high", 30),  # a new high-standard copy of an old keeper
        ("k2", "k2", False, "low", 30), ("k3", "k2", False, "low", 30), ("n2", "k2", True, "high", 30),
    ]
    pairs = [("k1", "n1"), ("k2", "n2"), ("k3", "n2")]  # n2 bridges two old keepers: both stay kept
    assert keepers(spark, members, pairs) == {"k1": "k1", "n1": "k1", "k2": "k2", "k3": "k3", "n2": "k2"}


def test_chained_component_over_the_cap_is_resplit_by_direct_pairs(spark):
    # a~b~c~d verified, a and d unlike each other (no pair): collapsed, d would be a "duplicate" of a
    members = [(q, "a", True, "low", 30) for q in "abcd"]
    pairs = [("a", "b"), ("b", "c"), ("c", "d")]
    assert keepers(spark, members, pairs, max_cluster_size=50) == {"a": "a", "b": "a", "c": "a", "d": "a"}
    assert keepers(spark, members, pairs, max_cluster_size=3) == {"a": "a", "b": "a", "c": "c", "d": "c"}
    # the greedy split follows keeper order, not names: with c high standard, c keeps b and d, a stays alone
    ranked_c = [(q, "a", True, "high" if q == "c" else "low", 30) for q in "abcd"]
    assert keepers(spark, ranked_c, pairs, max_cluster_size=3) == {"a": "a", "b": "c", "c": "c", "d": "c"}


def test_split_component_ignores_row_order():
    members = pd.DataFrame(
        {
            "qa_id": ["d", "b", "a", "c"],
            "keeper_rank": [4, 2, 1, 3],
            "neighbours": [["c"], ["c", "a"], ["b"], ["d", "b"]],
        }
    )
    expected = {"a": "a", "b": "a", "c": "c", "d": "c"}
    for order in ([0, 1, 2, 3], [2, 3, 1, 0]):
        got = split_component(members.iloc[order].reset_index(drop=True))
        assert dict(zip(got["qa_id"], got["keeper"])) == expected


def test_cluster_rows_outcomes_similarities_sizes_and_details(spark):
    questions = spark.createDataFrame(
        [("k", "high", 10), ("d", "low", 10), ("c", "low", 10), ("s1", "low", 2), ("s2", "low", 2), ("e", "low", 0),
         ("n", "low", 10)],
        "qa_id string, standard string, n_tokens int",
    ).withColumn("subject", F.lit("physics"))
    decided = spark.createDataFrame(
        [("k", "k"), ("d", "k"), ("c", "k"), ("s1", "s1"), ("s2", "s1"), ("n", "old"), ("old", "old")],
        "qa_id string, keeper string",
    )
    shingled = spark.createDataFrame(
        [("k", ["1", "2", "3", "4"]), ("d", ["1", "2", "3", "5"]), ("c", ["1", "6", "7", "8"]), ("s1", ["why"]),
         ("s2", ["why"]), ("e", []), ("n", ["9"]), ("old", ["9"])],
        "qa_id string, shingles array<string>",
    )
    existing = spark.createDataFrame([("old", 3)], "cluster_id string, existing long")
    rows = dedup.cluster_rows(questions, decided, shingled, existing, PARAMS, "run-1", datetime(2026, 11, 2))
    got = {r["qa_id"]: r.asDict() for r in rows.collect()}
    assert set(got) == {"k", "d", "c", "s1", "s2", "e", "n"}  # earlier members get no row
    fields = ("status", "reason", "kept", "cluster_id", "cluster_size", "duplicate_of")
    view = {q: tuple(r[f] for f in fields) for q, r in got.items()}
    assert view == {
        "k": (S.KEPT, S.REASON_OK, True, "k", 3, None),
        "d": (S.DROPPED, S.REASON_NEAR_DUPLICATE, False, "k", 3, "k"),
        "c": (S.DROPPED, S.REASON_NEAR_DUPLICATE, False, "k", 3, "k"),
        "s1": (S.KEPT, S.REASON_OK, True, "s1", 2, None),
        "s2": (S.DROPPED, S.REASON_EXACT_DUPLICATE, False, "s1", 2, "s1"),
        "e": (S.FAILED, S.REASON_EMPTY_QUESTION, False, None, None, None),
        "n": (S.DROPPED, S.REASON_NEAR_DUPLICATE, False, "old", 4, "old"),  # 3 earlier members + itself
    }
    assert {q: r["similarity"] for q, r in got.items() if r["similarity"] is not None} == pytest.approx(
        {"d": 0.6, "c": 1 / 7, "s2": 1.0, "n": 1.0}
    )
    assert got["k"]["detail"] == "keeper of 3 questions" and got["s1"]["detail"] == "keeper of 2 questions"
    assert got["d"]["detail"] == "Jaccard 0.600 with k on word 3-grams"
    assert got["c"]["detail"] == "in the cluster of k through other members (Jaccard 0.143 to it)"
    assert got["s2"]["detail"].startswith("same normalised text as s1")
    assert all(r["run_id"] == "run-1" and r["subject"] == "physics" for r in got.values())


def test_unclustered_takes_kept_questions_without_a_cluster_row(spark):
    extracted = spark.createDataFrame(
        [("a", S.KEPT), ("b", S.KEPT), ("c", S.DROPPED)], "qa_id string, status string"
    )
    clusters = spark.createDataFrame([("a",)], "qa_id string")
    assert [r["qa_id"] for r in dedup.unclustered(extracted, clusters).collect()] == ["b"]


# --- the stage ---------------------------------------------------------------------------------------------------


def run_dedup(spark, lake_root, *overrides):
    config = make_config(lake_root, *overrides)
    lake = Lakehouse.open(spark, config)
    [report] = run_pipeline(spark, config, lake, [dedup.STAGE])
    return lake, report


def test_stage_without_extracted_questions_is_a_no_op(spark, lake_root):
    lake, report = run_dedup(spark, lake_root)
    assert report.outcome.commit is None and report.outcome.rows_in == 0
    assert not lake.exists("qa_clusters") and not lake.exists("dedup_band_keys")


def corpus(rng: random.Random):
    """Question rows and the expected clusters (sets of qa_ids that must end up together)."""
    rows, expected = [], []
    for pair in PLANTED:  # the sample corpus's near-duplicates, b as high standard
        rows += [(f"{pair['id']}a", pair["a"]["text"], "low"), (f"{pair['id']}b", pair["b"]["text"], "high")]
        expected.append({f"{pair['id']}a", f"{pair['id']}b"})
    spread = [8, 14, 20, 26, 32]
    for k in range(1, 5):  # k substitutions in 40 trigrams: J = 0.86, 0.74, 0.63 (duplicates), 0.54 (not)
        words = random_question(rng)
        rows += [(f"g{k}base", " ".join(words), "low"), (f"g{k}var", substituted(words, spread[:k], "v"), "low")]
        expected += [{f"g{k}base", f"g{k}var"}] if k < 4 else [{f"g{k}base"}, {f"g{k}var"}]
    rows += [(f"solo{i}", " ".join(random_question(rng)), "low") for i in range(20)]
    expected += [{f"solo{i}"} for i in range(20)]
    rows += [("short1", "Why?", "low"), ("short2", "why", "high"), ("short3", "Why not?", "low")]
    expected += [{"short1", "short2"}, {"short3"}]
    rows += [("blank", " -- ", "low")]
    return rows, expected


def clusters_by_id(lake):
    return {r["qa_id"]: r.asDict() for r in lake.read("qa_clusters").collect()}


def groups(rows):
    found: dict[str, set[str]] = {}
    for qa_id, row in rows.items():
        if row["cluster_id"] is not None:
            found.setdefault(row["cluster_id"], set()).add(qa_id)
    return sorted(found.values(), key=sorted)


@pytest.fixture(scope="module")
def first_run(spark, tmp_path_factory):
    """The stage once over the corpus (one input file, the session's shuffle partitions): its lake and rows."""
    lake_root = tmp_path_factory.mktemp("dedup") / "lake"
    rows, expected = corpus(random.Random(7))
    Lakehouse.open(spark, make_config(lake_root)).write("qa_extracted", questions_frame(spark, rows))
    lake, report = run_dedup(spark, lake_root)
    return lake_root, rows, expected, report, clusters_by_id(lake)


def test_stage_clusters_planted_duplicates_reruns_and_increments(spark, first_run):
    lake_root, rows, expected, report, got = first_run
    for pair in PLANTED:
        assert jaccard(pair["a"]["text"], pair["b"]["text"]) >= 0.6
    assert [round(jaccard(rows[i][1], rows[i + 1][1]), 2) for i in range(12, 20, 2)] == [0.86, 0.74, 0.63, 0.54]
    lake = Lakehouse.open(spark, make_config(lake_root))
    assert set(got) == {r[0] for r in rows}
    assert groups(got) == sorted((g for g in expected if g != {"blank"}), key=sorted)
    assert (report.outcome.rows_in, report.outcome.rows_failed) == (len(rows), 1)
    assert report.outcome.rows_dropped == 6 + 3 + 1

    for pair in PLANTED:  # b is high standard: kept; a dropped with its exact similarity
        a, b = got[f"{pair['id']}a"], got[f"{pair['id']}b"]
        assert (b["status"], b["kept"], b["duplicate_of"], b["cluster_size"]) == (S.KEPT, True, None, 2)
        assert (a["status"], a["reason"], a["duplicate_of"]) == (S.DROPPED, S.REASON_NEAR_DUPLICATE, b["qa_id"])
        assert a["similarity"] == pytest.approx(jaccard(pair["a"]["text"], pair["b"]["text"]))
    assert got["g1var"]["duplicate_of"] == "g1base" and got["g4var"]["kept"] and got["g4base"]["kept"]
    assert (got["short1"]["reason"], got["short1"]["duplicate_of"]) == (S.REASON_EXACT_DUPLICATE, "short2")
    assert got["short3"]["kept"] and got["solo3"]["cluster_size"] == 1
    blank = got["blank"]
    assert (blank["status"], blank["reason"]) == (S.FAILED, S.REASON_EMPTY_QUESTION)
    assert (blank["kept"], blank["cluster_id"]) == (False, None)
    keys = {r["qa_id"] for r in lake.read("dedup_band_keys").collect()}
    assert keys == {q for q, r in got.items() if r["kept"]}

    # a rerun finds nothing new and commits nothing
    _, again = run_dedup(spark, lake_root)
    assert again.outcome.commit is None and again.outcome.rows_in == 0
    assert lake.version("qa_clusters") == 0 and lake.version("dedup_band_keys") == 0

    # new questions: only they are processed; a high-standard near-duplicate of an old (low) keeper is dropped
    g2 = dict((r[0], r[1]) for r in rows)["g2base"].split()
    added = [
        ("a_new_copy", substituted(g2, [38], "n"), "high"),  # J 0.86 to g2base (old keeper, low standard)
        ("fresh", " ".join(random_question(random.Random(99))), "low"),
        ("short4", "WHY NOT", "high"),
    ]
    lake.write("qa_extracted", questions_frame(spark, added, run_id="extract-run-2"))
    lake, third = run_dedup(spark, lake_root)
    assert third.outcome.rows_in == 3 and third.outcome.commit.rows_written == 3
    after = clusters_by_id(lake)
    assert {q: r for q, r in after.items() if q in got} == got  # earlier rows untouched
    new_copy = after["a_new_copy"]
    assert (new_copy["status"], new_copy["duplicate_of"], new_copy["cluster_size"]) == (S.DROPPED, "g2base", 3)
    assert after["fresh"]["kept"]
    assert (after["short4"]["reason"], after["short4"]["duplicate_of"]) == (S.REASON_EXACT_DUPLICATE, "short3")
    assert {r["qa_id"] for r in lake.read("dedup_band_keys").collect()} == keys | {"fresh"}

    # other LSH parameters and the approx_join mode: earlier keepers get new band keys, decisions stay
    g3 = dict((r[0], r[1]) for r in rows)["g3base"].split()
    lake.write("qa_extracted", questions_frame(spark, [("late_copy", substituted(g3, [2], "n"), "high")]))
    lake, fourth = run_dedup(spark, lake_root, "dedup.seed=7", "dedup.mode=approx_join")
    assert fourth.outcome.rows_in == 1 and fourth.outcome.rows_dropped == 1
    assert clusters_by_id(lake)["late_copy"]["duplicate_of"] == "g3base"
    reseeded = dedup.lsh_params(replace(SETTINGS, seed=7)).fingerprint
    stored = {r["qa_id"]: r["lsh_params"] for r in lake.read("dedup_band_keys").collect()}
    assert stored == {q: reseeded for q in keys | {"fresh"}}


def test_same_clusters_whatever_the_partitioning(spark, tmp_path, first_run):
    _, rows, _, _, baseline = first_run
    lake = Lakehouse.open(spark, make_config(tmp_path / "lake"))
    shuffled = random.Random(3).sample(rows, len(rows))
    for part in range(3):  # three files in another order: other input partitions
        lake.write("qa_extracted", questions_frame(spark, shuffled[part::3]))
    previous = spark.conf.get("spark.sql.shuffle.partitions")
    spark.conf.set("spark.sql.shuffle.partitions", "7")
    try:
        run_dedup(spark, tmp_path / "lake")
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", previous)
    assert previous != "7"
    decisions = ("cluster_id", "cluster_size", "kept", "duplicate_of", "similarity", "status", "reason", "detail")
    again = clusters_by_id(lake)
    assert {q: [r[c] for c in decisions] for q, r in again.items()} == {
        q: [r[c] for c in decisions] for q, r in baseline.items()
    }
