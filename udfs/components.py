"""Splitting one near-duplicate component into clusters without chaining, on executors (applyInPandas body).

Greedy in keeper order: the best-ranked undecided member becomes a keeper and every undecided member with a
verified pair to it becomes its duplicate; repeat until every member is decided. So each dropped member is
directly similar to its own keeper, no two keepers share a verified pair, and the result depends only on the
ranks and the edges (never on row order within the batch).
"""

from __future__ import annotations

import pandas as pd

SPLIT_COLUMNS = ["qa_id", "keeper"]


def split_component(members: pd.DataFrame) -> pd.DataFrame:
    """(qa_id, keeper_rank, neighbours) rows of one component -> (qa_id, keeper) for each of them."""
    ordered = members.sort_values("keeper_rank", kind="stable")
    keeper_of: dict[str, str] = {}
    neighbours_of = dict(zip(ordered["qa_id"], ordered["neighbours"]))
    for qa_id in ordered["qa_id"]:
        if qa_id in keeper_of:
            continue
        keeper_of[qa_id] = qa_id
        for neighbour in neighbours_of[qa_id]:
            keeper_of.setdefault(neighbour, qa_id)
    return pd.DataFrame({"qa_id": list(keeper_of), "keeper": list(keeper_of.values())}, columns=SPLIT_COLUMNS)
