"""Stage 6, dedup: near-duplicate questions of `qa_extracted` (kept rows) grouped into clusters, one kept per cluster.

Shingles: the question lowercased, split on non-word characters (Java's Unicode-aware `(?U)\\W+`, empty tokens
dropped), word n-grams (`dedup.ngram`, default 3) as a set. Two questions are near-duplicates when the exact Jaccard
similarity of their shingle sets is at least `dedup.threshold` (0.6).

Candidates (mode `banded`, the default): shingles are hashed to feature indices (HashingTF, binary, 2^30 buckets)
and Spark ML's `MinHashLSH` computes bands x rows hash values; b and r come from datasketch's optimiser for the
threshold and the `dedup.num_perm` budget, weighted towards recall (`dedup.false_negative_weight`) because every
candidate is verified: 21 bands x 3 rows by default, which makes a pair at J=0.6 a candidate 99.4% of the time (the
paper's 31 x 8 of 250 permutations: 41%). A band key is xxhash64(band index, that band's r values): AND within a
band, OR across bands.
Questions sharing a band key are candidate pairs; a band-key bucket with more than `dedup.max_bucket_size` members
pairs each member with its smallest qa_id only (counted and logged), so one bucket cannot make the join quadratic.
Mode `approx_join` takes candidates from `MinHashLSHModel.approxSimilarityJoin` instead (OR over every hash value),
for comparison; it keeps no state, so it re-reads every earlier keeper's text. Either way each candidate is verified
by exact Jaccard on the shingle strings (not on hashed indices), so precision is exact.

Questions with fewer words than one n-gram never reach MinHash: their shingle set is their whole normalised text and
their only band key is its hash, so they are deduplicated by exact normalised match among themselves (reason
`exact_duplicate`). Questions with no word at all become `failed` rows (`empty_question`).

Clusters: connected components of the verified pairs, by min-label propagation in Spark (component = smallest
qa_id). The keeper is the first member in keeper order (`dedup.keeper_order`, default high standard first, then the
smallest qa_id; qa_id always breaks ties); the other members are dropped as its duplicates, with their exact
Jaccard similarity to it. Chaining (a~b~c~d with a and d unlike each other) is allowed within a small component: its
members are one question in a few wordings, and a member below the threshold says so in its detail. A component
larger than `dedup.max_cluster_size` is where chaining goes wrong, so it is logged (progress line, metric) and
re-split greedily in keeper order (udfs.components): the best undecided member is a keeper, the undecided members
with a verified pair to it are its duplicates, repeat. There every dropped question is directly similar (J >=
threshold) to its keeper and no two of the keepers are a verified pair. `max_cluster_size: 1` applies it everywhere.

Incremental: a run takes only kept qa_extracted rows not yet in qa_clusters. The band keys of every kept question
are persisted in `dedup_band_keys`; new questions are paired with new and persisted keys (pairs of two old
questions are never formed again), the old side of each candidate is re-read from qa_extracted for verification,
and only the new questions get rows. Decisions are never revisited: an old keeper stays kept and ranks before every
new question, so a new near-duplicate of it is dropped in its favour (its cluster_size counts the old members too),
and a component that holds two old keepers is re-split as above. A new question similar only to an old dropped one
(and not to that one's keeper) is kept. Keepers whose persisted keys were made with other LSH parameters (or not
written because a run stopped between its two commits) get them recomputed from qa_extracted.

Every step is a function of the rows' contents (ids, ranks, minima, bucket sizes), so partitioning never changes
the result.

`make_stage` makes the stage for other tables: `dedup_external` clusters `external_qa` into `external_clusters`
within each dataset (`scope`: each shingle is prefixed with the row's dataset, so questions of two datasets share
no shingle and are never candidates; similarities within a dataset are unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Callable

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from megascience.jobs.platform.settings import DedupSettings
from megascience.jobs.platform.stage import Stage, StageContext, StageOutcome, commit_rows, table_rows
from megascience.schemas import status as S
from megascience.udfs.components import split_component

# HashingTF index space: below MinHash's prime (2038074743) so indices never alias inside its hash functions.
NUM_FEATURES = 1 << 30
EXACT_BAND = -1  # band index of the single key of a question too short for one n-gram
HIGH_STANDARD = "high"

# One sort per name of settings.KEEPER_RULES.
KEEPER_SORTS: dict[str, Callable[[], Column]] = {
    "high_standard": lambda: F.when(F.col("standard") == HIGH_STANDARD, 0).otherwise(1).asc(),
    "longer_question": lambda: F.col("n_tokens").desc(),
    "shorter_question": lambda: F.col("n_tokens").asc(),
    "qa_id": lambda: F.col("qa_id").asc(),
}


@dataclass(frozen=True)
class LshParams:
    ngram: int
    threshold: float
    bands: int
    rows: int
    seed: int

    @property
    def num_hashes(self) -> int:
        return self.bands * self.rows

    @property
    def fingerprint(self) -> str:
        """What persisted band keys depend on: keys made under another fingerprint are not comparable."""
        return (
            f"ngram={self.ngram};bands={self.bands};rows={self.rows};seed={self.seed};features={NUM_FEATURES};"
            "band_key=xxhash64(band,hash vectors)"
        )


@lru_cache(maxsize=None)
def optimal_bands(threshold: float, num_perm: int, false_negative_weight: float) -> tuple[int, int]:
    """(bands, rows) minimising datasketch's weighted false-positive/false-negative areas for the threshold."""
    from datasketch.lsh import _optimal_param  # the optimiser datasketch.MinHashLSH itself calls

    return _optimal_param(threshold, num_perm, 1.0 - false_negative_weight, false_negative_weight)


def lsh_params(settings: DedupSettings) -> LshParams:
    bands, rows = optimal_bands(settings.threshold, settings.num_perm, settings.false_negative_weight)
    return LshParams(settings.ngram, settings.threshold, bands, rows, settings.seed)


def keeper_order(rules: list[str]) -> list[Column]:
    """Sort order of a component's members: old keepers first, then the configured rules (dedup.keeper_order, its
    names checked when the configuration loads), then qa_id."""
    return [F.col("is_new").asc(), *(KEEPER_SORTS[rule]() for rule in rules), F.col("qa_id").asc()]


# --- transform (pure DataFrame -> DataFrame) -----------------------------------------------------------------------


def unclustered(extracted: DataFrame, clusters: DataFrame) -> DataFrame:
    """Kept extracted questions that have no row in qa_clusters yet."""
    return extracted.where(F.col("status") == S.KEPT).join(clusters.select("qa_id"), "qa_id", "left_anti")


def shingle(questions: DataFrame, ngram: int, scope: str | None = None) -> DataFrame:
    """Adds n_tokens and shingles: the word n-gram set, or [normalised text] under n words, or [] with no word.

    With a `scope` column, each shingle is prefixed with the row's value of it: rows of two scopes share none.
    """
    tokens = F.filter(F.split(F.lower(F.coalesce(F.col("question"), F.lit(""))), r"(?U)\W+"), lambda t: t != "")
    n_tokens = F.size("tokens")
    starts = F.sequence(F.lit(0), F.greatest(n_tokens - ngram, F.lit(0)))
    ngrams = F.array_distinct(F.transform(starts, lambda i: F.array_join(F.slice("tokens", i + 1, ngram), " ")))
    shingles = (
        F.when(n_tokens >= ngram, ngrams)
        .when(n_tokens > 0, F.array(F.array_join("tokens", " ")))
        .otherwise(F.array().cast("array<string>"))
    )
    if scope:
        shingles = F.transform(shingles, lambda s: F.concat_ws("\u241f", F.col(scope), s))
    with_tokens = questions.withColumn("tokens", tokens)
    return with_tokens.withColumns({"n_tokens": n_tokens, "shingles": shingles}).drop("tokens")


def has_ngrams(ngram: int) -> Column:
    return F.col("n_tokens") >= ngram


def featurise(shingled: DataFrame, ngram: int) -> DataFrame:
    """Rows with at least one n-gram, with their shingles hashed to a binary sparse vector (`features`).

    Shorter rows are left out: MinHashLSH throws on an all-zero vector.
    """
    from pyspark.ml.feature import HashingTF

    hashing = HashingTF(inputCol="shingles", outputCol="features", binary=True, numFeatures=NUM_FEATURES)
    return hashing.transform(shingled.where(has_ngrams(ngram)))


def minhash_model(featured: DataFrame, params: LshParams):
    """Spark ML's MinHashLSH with bands x rows hash functions; fitting reads no rows (the seed makes them)."""
    from pyspark.ml.feature import MinHashLSH

    lsh = MinHashLSH(inputCol="features", outputCol="hashes", numHashTables=params.num_hashes, seed=params.seed)
    return lsh.fit(featured)


def signatures(featured: DataFrame, model) -> DataFrame:
    """(qa_id, hashes): the model's bands x rows hash values, each a one-element vector, in the model's order."""
    return model.transform(featured.select("qa_id", "features")).select("qa_id", "hashes")


def band_keys(signed: DataFrame, shingled: DataFrame, params: LshParams) -> DataFrame:
    """(qa_id, band_keys) of every question with words.

    Signed questions get xxhash64(band, its r hash values) per band, hashing the model's one-element vectors as they
    are (unpacking them into numbers first doubled the cost); questions under n words, never signed, get one key,
    the hash of their normalised text, so they meet only exact copies.
    """
    # One expression per band, not a lambda: Spark inlines the MinHash computation into a lambda and would redo it
    # for every band; several references make the optimiser compute it once.
    rows = params.rows
    per_band = F.array(*(F.xxhash64(F.lit(b), F.slice("hashes", b * rows + 1, rows)) for b in range(params.bands)))
    short = shingled.where((F.col("n_tokens") > 0) & ~has_ngrams(params.ngram)).select(
        "qa_id", F.array(F.xxhash64(F.lit(EXACT_BAND), F.element_at("shingles", 1))).alias("band_keys")
    )
    return signed.select("qa_id", per_band.alias("band_keys")).union(short)


def key_rows(keyed: DataFrame, is_new: bool) -> DataFrame:
    """(qa_id, band_key, is_new), one row per band key."""
    return keyed.select("qa_id", F.explode("band_keys").alias("band_key"), F.lit(is_new).alias("is_new"))


def band_buckets(keys: DataFrame) -> DataFrame:
    """Members of band keys held by more than one question.

    `keys` is (qa_id, band_key, is_new); the result adds bucket_size, anchor (the bucket's smallest qa_id) and
    anchor_is_new. Counting by the long key first keeps the string aggregates to the few shared keys.
    """
    # One shuffle by band key serves the count, the semi-join and the window (and keeps Spark from pushing the
    # semi-join into the branches of a union of key sources, a plan its planner then rejects).
    keys = keys.repartition("band_key")
    shared = keys.groupBy("band_key").count().where(F.col("count") > 1).select("band_key")
    bucket = Window.partitionBy("band_key")
    return keys.join(shared, "band_key", "left_semi").withColumns(
        {
            "bucket_size": F.count("*").over(bucket),
            "anchor": F.min("qa_id").over(bucket),
            "anchor_is_new": F.min_by("is_new", "qa_id").over(bucket),
        }
    )


def candidate_pairs(buckets: DataFrame, max_bucket_size: int) -> DataFrame:
    """(a, b), a < b, pairs sharing a band key, at least one of them new.

    Buckets up to max_bucket_size give all their pairs; a larger bucket pairs each member with its anchor only, so
    its cost stays linear (exact copies, the usual cause, are all found that way).
    """
    small = buckets.where(F.col("bucket_size") <= max_bucket_size).select("band_key", "qa_id", "is_new")
    x, y = small.alias("x"), small.alias("y")
    within_small = x.join(
        y,
        (F.col("x.band_key") == F.col("y.band_key"))
        & (F.col("x.qa_id") < F.col("y.qa_id"))
        & (F.col("x.is_new") | F.col("y.is_new")),
    ).select(F.col("x.qa_id").alias("a"), F.col("y.qa_id").alias("b"))
    to_anchor = buckets.where(
        (F.col("bucket_size") > max_bucket_size)
        & (F.col("qa_id") != F.col("anchor"))
        & (F.col("is_new") | F.col("anchor_is_new"))
    ).select(F.col("anchor").alias("a"), F.col("qa_id").alias("b"))
    return within_small.union(to_anchor).dropDuplicates(["a", "b"])


def approx_join_pairs(model, new_featured: DataFrame, all_featured: DataFrame, threshold: float) -> DataFrame:
    """(a, b), a < b: Spark's approxSimilarityJoin of the new rows with all rows (OR over every hash value)."""
    # Spark keeps distances strictly below its threshold and measures them on hashed features; the margin keeps
    # pairs at exactly the threshold, and exact verification follows anyway.
    joined = model.approxSimilarityJoin(
        new_featured.select("qa_id", "features"), all_featured.select("qa_id", "features"), 1.0 - threshold + 1e-9
    )
    ids = F.col("datasetA.qa_id"), F.col("datasetB.qa_id")
    return joined.select(F.least(*ids).alias("a"), F.greatest(*ids).alias("b")).where("a != b").dropDuplicates()


def with_jaccard(pairs: DataFrame, shingled: DataFrame, left: str, right: str) -> DataFrame:
    """Adds `similarity`: exact Jaccard of the shingle sets of the rows named by columns `left` and `right`."""
    sets = shingled.select("qa_id", "shingles")
    joined = pairs.join(sets.withColumnsRenamed({"qa_id": left, "shingles": "_left"}), left).join(
        sets.withColumnsRenamed({"qa_id": right, "shingles": "_right"}), right
    )
    similarity = F.size(F.array_intersect("_left", "_right")) / F.size(F.array_union("_left", "_right"))
    return joined.withColumn("similarity", similarity.cast("double")).drop("_left", "_right")


def verified_pairs(candidates: DataFrame, shingled: DataFrame, threshold: float) -> DataFrame:
    """(a, b, similarity) of the candidates whose exact Jaccard reaches the threshold."""
    return with_jaccard(candidates, shingled, "a", "b").where(F.col("similarity") >= threshold)


def connected_components(edges: DataFrame) -> DataFrame:
    """(qa_id, component) for every vertex of the (a, b) edges; component = the smallest qa_id connected to it.

    Min-label propagation with pointer jumping: each round a vertex takes the smallest label among itself and its
    neighbours, then the label of its label. Labels only decrease, so the loop ends; it ends when a round changes
    nothing, which holds only when each component carries its minimum. Labels are materialised every round (the
    convergence check is an action anyway), which also keeps the lineage one round long.
    """
    links = (
        edges.select(F.col("a").alias("qa_id"), F.col("b").alias("other"))
        .union(edges.select(F.col("b").alias("qa_id"), F.col("a").alias("other")))
        .cache()
    )
    labels = (
        links.groupBy("qa_id").agg(F.min("other").alias("other"))
        .select("qa_id", F.least("qa_id", "other").alias("component"))
        .localCheckpoint()
    )
    while True:
        offered = (
            links.join(labels.withColumnsRenamed({"qa_id": "other", "component": "offered"}), "other")
            .groupBy("qa_id")
            .agg(F.min("offered").alias("offered"))
        )
        spread = labels.join(offered, "qa_id").select("qa_id", F.least("component", "offered").alias("component"))
        x, parent = spread.alias("x"), spread.alias("parent")
        jumped = (
            x.join(parent, F.col("x.component") == F.col("parent.qa_id"))
            .select(F.col("x.qa_id"), F.least("x.component", "parent.component").alias("component"))
            .localCheckpoint()
        )
        changed = jumped.join(labels.withColumnRenamed("component", "before"), "qa_id").where("component != before")
        done = changed.isEmpty()
        labels = jumped
        if done:
            links.unpersist()
            return labels


def rank_members(members: DataFrame, order: list[Column]) -> DataFrame:
    """Adds keeper_rank (1 = keeper), component_size and old_keepers (how many old keepers the component holds).

    `members` is (qa_id, component, is_new, standard, n_tokens); the old members of a run are earlier keepers.
    """
    component = Window.partitionBy("component")
    return members.withColumns(
        {
            "keeper_rank": F.row_number().over(component.orderBy(*order)),
            "component_size": F.count("*").over(component),
            "old_keepers": F.sum((~F.col("is_new")).cast("int")).over(component),
        }
    )


def needs_split(max_cluster_size: int) -> Column:
    """Components not collapsed onto one keeper: too large (chaining), or holding two old keepers (both stay kept)."""
    return (F.col("component_size") > max_cluster_size) | (F.col("old_keepers") > 1)


def choose_keepers(ranked: DataFrame, edges: DataFrame, max_cluster_size: int) -> DataFrame:
    """(qa_id, keeper) for every ranked member: rank 1 of its component, or the greedy split of udfs.components."""
    collapsed = ranked.where(~needs_split(max_cluster_size)).select(
        "qa_id", F.min_by("qa_id", "keeper_rank").over(Window.partitionBy("component")).alias("keeper")
    )
    neighbours = (
        edges.select("a", "b")
        .union(edges.select("b", "a"))
        .groupBy(F.col("a").alias("qa_id"))
        .agg(F.collect_list("b").alias("neighbours"))
    )
    split = (
        ranked.where(needs_split(max_cluster_size))
        .join(neighbours, "qa_id")
        .select("component", "qa_id", "keeper_rank", "neighbours")
        .groupBy("component")
        .applyInPandas(split_component, "qa_id string, keeper string")
    )
    return collapsed.union(split)


def cluster_rows(
    questions: DataFrame,
    decided: DataFrame,
    shingled: DataFrame,
    existing_sizes: DataFrame,
    params: LshParams,
    run_id: str,
    processed_at,
) -> DataFrame:
    """qa_clusters rows of the new questions.

    questions: (qa_id, standard, subject, n_tokens) of the new rows; decided: (qa_id, keeper) for rows with words;
    shingled: shingles of every row involved; existing_sizes: (cluster_id, existing) members already in qa_clusters.
    """
    decided_new = decided.join(questions.select("qa_id"), "qa_id")
    similarity = with_jaccard(decided_new.where("qa_id != keeper"), shingled, "qa_id", "keeper").select(
        "qa_id", "similarity"
    )
    sizes = (
        decided_new.groupBy(F.col("keeper").alias("cluster_id"))
        .count()
        .join(existing_sizes, "cluster_id", "left")
        .select("cluster_id", (F.col("count") + F.coalesce("existing", F.lit(0))).cast("int").alias("cluster_size"))
    )
    rows = (
        questions.join(decided_new, "qa_id", "left")
        .join(similarity, "qa_id", "left")
        .withColumn("cluster_id", F.col("keeper"))
        .join(sizes, "cluster_id", "left")
    )
    empty = F.col("n_tokens") == 0
    keeper = F.col("qa_id") == F.col("keeper")
    exact = F.col("n_tokens") < params.ngram
    chained = F.col("similarity") < params.threshold
    to_keeper = ("keeper", "similarity")
    detail = (
        F.when(empty, F.lit("the question has no word characters"))
        .when(keeper, F.when(F.col("cluster_size") > 1, F.format_string("keeper of %d questions", "cluster_size")))
        .when(exact, F.format_string(f"same normalised text as %s (under {params.ngram} words: exact match)", "keeper"))
        .when(chained, F.format_string("in the cluster of %s through other members (Jaccard %.3f to it)", *to_keeper))
        .otherwise(F.format_string(f"Jaccard %.3f with %s on word {params.ngram}-grams", "similarity", "keeper"))
    )
    return rows.select(
        "qa_id",
        "cluster_id",
        "cluster_size",
        F.coalesce(keeper, F.lit(False)).alias("kept"),
        F.when(~keeper, F.col("keeper")).alias("duplicate_of"),
        "similarity",
        "standard",
        "subject",
        F.when(empty, F.lit(S.FAILED)).when(keeper, F.lit(S.KEPT)).otherwise(F.lit(S.DROPPED)).alias("status"),
        F.when(empty, F.lit(S.REASON_EMPTY_QUESTION))
        .when(keeper, F.lit(S.REASON_OK))
        .when(exact, F.lit(S.REASON_EXACT_DUPLICATE))
        .otherwise(F.lit(S.REASON_NEAR_DUPLICATE))
        .alias("reason"),
        detail.alias("detail"),
        F.lit(run_id).alias("run_id"),
        F.lit(processed_at).cast("timestamp").alias("processed_at"),
    )


# --- the stage -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DedupTables:
    """The tables of one dedup stage: its questions, its clusters, its band keys; `scope` optionally names a column of
    `source` within whose values questions are compared."""

    source: str
    clusters: str
    band_keys: str
    scope: str | None = None

    def questions(self, rows: DataFrame, ngram: int) -> DataFrame:
        """Shingled (qa_id, standard, subject, question[, scope]) of source rows; standard is null where the source
        has none."""
        standard = F.col("standard") if "standard" in rows.columns else F.lit(None).cast("string").alias("standard")
        columns = ["qa_id", standard, "subject", "question", *([self.scope] if self.scope else [])]
        return shingle(rows.select(*columns), ngram, self.scope)


@dataclass
class _DedupRun:
    """One run's settings, inputs and the frames it caches (released together at the end)."""

    ctx: StageContext
    tables: DedupTables
    settings: DedupSettings
    params: LshParams
    extracted: DataFrame
    cached: list[DataFrame] = field(default_factory=list)

    def keep(self, df: DataFrame) -> DataFrame:
        self.cached.append(df.cache())
        return df

    def release(self) -> None:
        for df in self.cached:
            df.unpersist()

    def questions(self, ids: DataFrame) -> DataFrame:
        """Shingled source questions of the given qa_ids (earlier questions are re-read, never stored twice)."""
        return self.tables.questions(self.extracted.join(ids, "qa_id"), self.params.ngram)

    def candidates(self, new, keyed_new, keyed_old, model, old_keepers) -> DataFrame:
        """Candidate pairs of the configured mode, each with at least one new question."""
        ngram, threshold = self.params.ngram, self.params.threshold
        if self.settings.mode == "approx_join":
            new_features = featurise(new, ngram).select("qa_id", "features")
            old_features = featurise(self.questions(old_keepers), ngram).select("qa_id", "features")
            return approx_join_pairs(model, new_features, new_features.union(old_features), threshold)
        buckets = self.keep(band_buckets(key_rows(keyed_new, True).union(key_rows(keyed_old, False))))
        anchors = buckets.where(F.col("qa_id") == F.col("anchor"))
        paired = "members paired with the smallest qa_id"
        self.log_oversized(anchors, "bucket_size", "max_bucket_size", "buckets", paired)
        return candidate_pairs(buckets, self.settings.max_bucket_size)

    def log_oversized(self, groups: DataFrame, size: str, setting: str, kind: str, handling: str) -> None:
        """Progress line and metrics for the groups (one row each) whose `size` column exceeds dedup.<setting>."""
        cap = getattr(self.settings, setting)
        [(count, largest)] = groups.where(F.col(size) > cap).agg(F.count("*"), F.max(size)).collect()
        if count:
            self.ctx.progress(f"{count} {kind} over dedup.{setting}={cap} (largest {largest}): {handling}")
        self.ctx.recorder.counts(**{f"oversized_{kind}": count, f"largest_oversized_{kind}": largest or 0})

    def cluster_rows(self, new: DataFrame, candidates: DataFrame, clusters: DataFrame) -> DataFrame:
        """qa_clusters rows of the new questions, from their candidate pairs."""
        candidates = candidates.localCheckpoint()
        ids = candidates.select(F.col("a").alias("qa_id")).union(candidates.select(F.col("b").alias("qa_id")))
        old = self.questions(ids.distinct().join(new.select("qa_id"), "qa_id", "left_anti"))
        involved = self.keep(new.withColumn("is_new", F.lit(True)).unionByName(old.withColumn("is_new", F.lit(False))))
        edges = verified_pairs(candidates, involved, self.params.threshold).localCheckpoint()
        pairs = {"candidate_pairs": candidates.count(), "verified_pairs": edges.count()}
        self.ctx.progress(f"{pairs['candidate_pairs']} candidate pairs, {pairs['verified_pairs']} verified")
        self.ctx.recorder.counts(**pairs)

        members = (
            involved.where(F.col("n_tokens") > 0)
            .join(connected_components(edges), "qa_id", "left")
            .where(F.col("is_new") | F.col("component").isNotNull())
            .select("qa_id", F.coalesce("component", "qa_id").alias("component"), "is_new", "standard", "n_tokens")
        )
        ranked = self.keep(rank_members(members, keeper_order(self.settings.keeper_order)))
        firsts = ranked.where(F.col("keeper_rank") == 1)
        self.log_oversized(firsts, "component_size", "max_cluster_size", "components", "re-split by verified pairs")

        existing = (
            clusters.where(F.col("cluster_id").isNotNull()).groupBy("cluster_id").agg(F.count("*").alias("existing"))
        )
        return cluster_rows(
            new.select("qa_id", "standard", "subject", "n_tokens"),
            choose_keepers(ranked, edges, self.settings.max_cluster_size),
            involved,
            existing,
            self.params,
            self.ctx.run_id,
            self.ctx.started_at,
        )


def run(ctx: StageContext, tables: DedupTables) -> StageOutcome:
    settings = ctx.settings
    params = lsh_params(settings)
    extracted = ctx.read_input(tables.source)
    clusters = ctx.read_input(tables.clusters)
    old_keepers = clusters.where("kept").select("qa_id")
    stored_keys = (
        ctx.read_input(tables.band_keys)
        .where(F.col("lsh_params") == params.fingerprint)
        .join(old_keepers, "qa_id")
        .select("qa_id", "band_keys")
    )
    dedup_run = _DedupRun(ctx, tables, settings, params, extracted)
    try:
        return _process(dedup_run, clusters, old_keepers, stored_keys)
    finally:
        dedup_run.release()


def _process(dedup_run: _DedupRun, clusters: DataFrame, old_keepers: DataFrame, stored_keys: DataFrame) -> StageOutcome:
    """Cluster the new questions, give earlier keepers missing band keys theirs, commit both tables."""
    ctx, params, keep, tables = dedup_run.ctx, dedup_run.params, dedup_run.keep, dedup_run.tables
    new = keep(tables.questions(unclustered(dedup_run.extracted, clusters), params.ngram))
    unkeyed = keep(dedup_run.questions(old_keepers.join(stored_keys, "qa_id", "left_anti")))
    new_count, unkeyed_count = new.count(), unkeyed.count()
    ctx.progress(
        f"{new_count} new questions; LSH {params.bands} bands x {params.rows} rows ({dedup_run.settings.mode})"
        + (f"; {unkeyed_count} earlier keepers get band keys for these parameters" if unkeyed_count else "")
    )
    ctx.recorder.counts(lsh_bands=params.bands, lsh_rows=params.rows)
    if new_count == 0 and unkeyed_count == 0:
        return StageOutcome(0, 0, 0, 0, None)

    featured_new = featurise(new, params.ngram)
    model = minhash_model(featured_new, params)
    keyed_new = keep(band_keys(signatures(featured_new, model), new, params))
    keyed_unkeyed = keep(band_keys(signatures(featurise(unkeyed, params.ngram), model), unkeyed, params))
    outcome = StageOutcome(new_count, 0, 0, 0, None)
    if new_count:
        candidates = dedup_run.candidates(new, keyed_new, keyed_unkeyed.union(stored_keys), model, old_keepers)
        outcome = commit_rows(ctx, tables.clusters, dedup_run.cluster_rows(new, candidates, clusters), new_count)
    # after the clusters: keys of a run stopped in between are missing, and the next run computes them (unkeyed)
    written = ctx.lake.read_or_empty(tables.clusters).where(F.col("kept") & (F.col("run_id") == ctx.run_id))
    to_store = keyed_new.join(written.select("qa_id"), "qa_id").union(keyed_unkeyed)
    keys_table = tables.band_keys
    rows = table_rows(ctx, keys_table, to_store, lsh_params=F.lit(params.fingerprint))
    ctx.commit(keys_table, rows, update_matched=True)  # other parameters' keys are replaced
    return outcome


DESCRIPTION = "near-duplicate questions (word 3-gram MinHash LSH, banded, exact Jaccard >= 0.6) clustered, one kept"


def make_stage(
    name: str, source: str, clusters: str, band_keys: str, scope: str | None = None, description: str = DESCRIPTION
) -> Stage:
    """A dedup stage over `source` (kept rows with qa_id, subject, question and optionally standard), writing
    `clusters` and `band_keys` (tables of qa_clusters' and dedup_band_keys' shapes)."""
    return Stage(
        name=name,
        inputs=(source, clusters, band_keys),
        output=clusters,
        settings=DedupSettings,
        run=partial(run, tables=DedupTables(source, clusters, band_keys, scope)),
        description=description,
        side_outputs=(band_keys,),
    )


STAGE = make_stage("dedup", source="qa_extracted", clusters="qa_clusters", band_keys="dedup_band_keys")
