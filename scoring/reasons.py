"""The nightly reasons (models.yaml `batch.explain`): which rows a shard explains, and their top-k contributions
as rows of the model's reasons table (scoring/store.py `ensure_reasons_table`).

A shard cannot write its reasons while its predictions COPY is open (one COPY per connection, and the reasons
must be in the same transaction to stay atomic with the scores), so they are spooled to a temporary file and
COPYed after the predictions: memory stays bounded by the chunk size, whatever the day's size.

Rows explained: `all` explains every chunk as it is scored; `top: N` keeps the shard's N highest scores (with
their encoded rows, N x features floats) while streaming and explains them once at the end; the swap then
trims the union of the shards' candidates to the day's N (batch_sql.keep_top_reasons).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np

from scoring.scorer import Contributions, Scorer
from scoring.spec import ExplainConfig, ModelSpec

SPOOL_BLOCK = 1 << 20  # bytes per COPY write when the spool is sent


def _escape(text: str) -> str:
    """A value for COPY's text format."""
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def reason_lines(keys: np.ndarray, contributions: Contributions, top_k: int) -> str:
    """COPY text lines (key, rank, feature, value, category, contribution), rank 1 = largest |contribution|."""
    spec = contributions.spec
    names = [_escape(n) for n in spec.feature_names]
    categories = [[_escape(c) for c in f.categories] if f.type == "category" else None for f in spec.features]
    order = contributions.ranked(top_k)
    lines = []
    matrix, values = contributions.matrix, contributions.values
    for i, key in enumerate(keys.tolist()):
        for rank, j in enumerate(order[i].tolist(), start=1):
            seen = float(matrix[i, j])
            if seen != seen:
                value, category = "\\N", "\\N"
            else:
                value = repr(seen)
                category = categories[j][int(seen)] if categories[j] is not None else "\\N"
            lines.append(f"{key}\t{rank}\t{names[j]}\t{value}\t{category}\t{float(values[i, j])!r}\n")
    return "".join(lines)


class TopScores:
    """The N highest scores seen so far (ties: lower key first) with their keys and encoded rows."""

    def __init__(self, n: int, n_features: int) -> None:
        self.n = n
        self.keys = np.empty(0, dtype=np.int64)
        self.scores = np.empty(0, dtype=np.float32)
        self.matrix = np.empty((0, n_features), dtype=np.float32)

    def add(self, keys: np.ndarray, scores: np.ndarray, matrix: np.ndarray) -> None:
        keys = np.concatenate([self.keys, keys.astype(np.int64)])
        scores = np.concatenate([self.scores, scores])
        matrix = np.concatenate([self.matrix, matrix])
        if len(keys) > self.n:
            keep = np.lexsort((keys, -scores.astype(np.float64)))[:self.n]
            keys, scores, matrix = keys[keep], scores[keep], matrix[keep]
        self.keys, self.scores, self.matrix = keys, scores, matrix


class ReasonSpool:
    """One shard's reasons: explained per chunk (`all`) or at the end (`top`), spooled to a temporary file."""

    def __init__(self, scorer: Scorer, config: ExplainConfig) -> None:
        self.scorer = scorer
        self.config = config
        self.file: BinaryIO = tempfile.TemporaryFile(prefix="reasons-")  # noqa: SIM115 (closed by close())
        self.top = None if config.all_rows else TopScores(config.top, len(scorer.spec.features))
        self.explained = 0

    @property
    def spec(self) -> ModelSpec:
        return self.scorer.spec

    def _explain(self, keys: np.ndarray, matrix: np.ndarray) -> None:
        if len(keys):
            contributions = self.scorer.contributions(matrix, self.config.method)
            self.file.write(reason_lines(keys, contributions, self.config.top_k).encode())
            self.explained += len(keys)

    def add(self, keys: np.ndarray, scores: np.ndarray, matrix: np.ndarray) -> None:
        """A scored chunk (the valid rows' keys, scores and encoded matrix)."""
        if self.top is None:
            self._explain(keys, matrix)
        else:
            self.top.add(keys, scores, matrix)

    def blocks(self) -> Iterator[bytes]:
        """The spooled COPY data (explaining the kept top rows first)."""
        if self.top is not None:
            self._explain(self.top.keys, self.top.matrix)
            self.top = None
        self.file.seek(0)
        while block := self.file.read(SPOOL_BLOCK):
            yield block

    def close(self) -> None:
        self.file.close()
