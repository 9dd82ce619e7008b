"""The `embed` stage's CLIP vectors on disk, one folder per split, written in chunks so that a killed
run resumes where it stopped.

Layout: `<folder>/meta.json` (the CLIP they came from) and `chunk-NNNNN.npz` files, each holding
`ids` (N,) and `vectors` (N, D) float32, each written atomically. Vectors from another CLIP are
never mixed in: a folder made with another model is emptied first.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from rdm.artifacts.clip import ClipCard
from rdm.errors import UserError
from rdm.files import atomic_write_bytes


class VectorChunks:
    """One split's vectors, opened for writing: a folder of another CLIP's vectors is emptied."""

    def __init__(self, folder: Path, card: ClipCard) -> None:
        self.folder = folder
        self.card = card
        meta = folder / "meta.json"
        if meta.is_file() and json.loads(meta.read_text()).get("fingerprint") != card.fingerprint:
            shutil.rmtree(folder)  # embeddings of another CLIP: useless for this one
        folder.mkdir(parents=True, exist_ok=True)
        meta.write_text(json.dumps(asdict(card), indent=2) + "\n")

    def _chunks(self) -> list[Path]:
        return sorted(self.folder.glob("chunk-*.npz"))

    def read_all(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids (N,), vectors (N, D)) over all chunks, first occurrence of each id kept."""
        ids, vectors = [], []
        for chunk in self._chunks():
            with np.load(chunk) as data:
                ids.append(data["ids"])
                vectors.append(data["vectors"])
        if not ids:
            return np.empty(0, dtype=str), np.empty((0, self.card.embed_dim), dtype=np.float32)
        all_ids, all_vectors = np.concatenate(ids), np.concatenate(vectors)
        _, first = np.unique(all_ids, return_index=True)
        first.sort()
        return all_ids[first], all_vectors[first]

    def known_ids(self) -> set[str]:
        return {str(i) for i in self.read_all()[0]}

    def append(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        chunks = self._chunks()
        number = int(chunks[-1].stem.split("-")[1]) + 1 if chunks else 0
        buffer = io.BytesIO()
        np.savez(buffer, ids=np.asarray(ids, dtype=str), vectors=np.asarray(vectors, dtype=np.float32))
        atomic_write_bytes(self.folder / f"chunk-{number:05d}.npz", buffer.getvalue())

    def vectors_for(self, ids: Sequence[str]) -> np.ndarray:
        """(len(ids), D) vectors in the order of `ids`; every id must have been embedded."""
        stored_ids, stored = self.read_all()
        position = {str(i): n for n, i in enumerate(stored_ids)}
        missing = [i for i in ids if i not in position]
        if missing:
            raise UserError(
                f"{self.folder}: {len(missing)} images have no embedding (e.g. {missing[0]}); "
                "run `dvc repro embed-training embed-styles` (or `rdm embed`)"
            )
        return stored[[position[i] for i in ids]]

    def vectors_to_file(self, ids: Sequence[str], path: Path) -> np.ndarray:
        """(len(ids), D) vectors in the order of `ids`, copied chunk by chunk into the `.npy` file
        `path` and returned memory-mapped: a split larger than memory never lies in it whole."""
        position = {str(i): n for n, i in enumerate(ids)}
        out = np.lib.format.open_memmap(
            path, mode="w+", dtype=np.float32, shape=(len(ids), self.card.embed_dim)
        )
        filled = np.zeros(len(ids), dtype=bool)
        for chunk in self._chunks():
            with np.load(chunk) as data:
                rows = np.array([position.get(str(i), -1) for i in data["ids"]], dtype=np.int64)
                wanted = (rows >= 0) & ~filled[np.maximum(rows, 0)]  # first occurrence, as read_all
                out[rows[wanted]] = data["vectors"][wanted]
                filled[rows[wanted]] = True
        out.flush()
        del out
        if not filled.all():
            missing = ids[int(np.argmin(filled))]
            raise UserError(
                f"{self.folder}: {int((~filled).sum())} images have no embedding (e.g. {missing}); "
                "run `dvc repro embed-training embed-styles` (or `rdm embed`)"
            )
        return np.load(path, mmap_mode="r")


def read_vectors(folder: Path, card: ClipCard, ids: Sequence[str]) -> np.ndarray:
    """(len(ids), D) vectors of `ids` from a folder of this CLIP's vectors, read only: unlike
    VectorChunks it never empties a folder of another CLIP's vectors, but says so."""
    meta = folder / "meta.json"
    if not meta.is_file() or json.loads(meta.read_text()).get("fingerprint") != card.fingerprint:
        raise UserError(
            f"{folder}: no embeddings of CLIP {card.model}; run `dvc repro embed-training embed-styles`"
        )
    return VectorChunks(folder, card).vectors_for(list(ids))
