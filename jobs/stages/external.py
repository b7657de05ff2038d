"""MegaScience part 2 after ingest_external: the textbook pairs' dedup and decontamination stages, made for the
external datasets' tables by the stages' own factories.

- dedup_external: near-duplicates within each dataset (dedup's MinHash LSH, scoped by dataset) -> external_clusters;
- decontaminate_external: the kept, deduplicated questions searched against the benchmarks and judged ->
  external_contamination;
- drop_contaminated_external: the decisions -> external_decontaminated.
"""

from __future__ import annotations

from megascience.jobs.stages import decontaminate, dedup, drop_contaminated
from megascience.jobs.stages.decontaminate import DecontaminationTables

DEDUP = dedup.make_stage(
    "dedup_external",
    source="external_qa",
    clusters="external_clusters",
    band_keys="external_band_keys",
    scope="dataset",
    description="near-duplicate questions within each external dataset (dedup's MinHash LSH + exact Jaccard), one kept",
)

EXTERNAL_TABLES = DecontaminationTables(
    questions=("external_qa", "external_clusters"), pairs="external_contamination", decided="external_decontaminated"
)
DECONTAMINATE = decontaminate.make_stage("decontaminate_external", EXTERNAL_TABLES)
DROP_CONTAMINATED = drop_contaminated.make_stage("drop_contaminated_external", EXTERNAL_TABLES)
