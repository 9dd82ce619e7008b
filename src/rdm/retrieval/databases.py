"""Retrieval databases made elsewhere, brought into collections: `.npz` files in the layout of the
databases released with CompVis' RDMs (ArtBench, one file per style): `embedding` (N, D) CLIP image
vectors, `img_id` (N,) and, for patch databases, `patch_coords` (N, 4).

Each file becomes one collection, `<prefix><file stem>` (with the default prefix `style-`, a style the
sampler can swap in by name), filled through a revision like every other collection. The vectors must
come from the CLIP the collection is declared with: a file of another dimension is refused before
anything is written. Files are read without pickle, so a database can never run code.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rdm.artifacts.clip import ClipCard
from rdm.retrieval.store import CollectionError, VectorStore, ids_digest

UPSERT_BATCH = 5000


@dataclass(frozen=True)
class Database:
    name: str
    """The file's stem: the style it holds."""
    ids: list[str]
    """One per row: the image id, with the patch coordinates for patch databases."""
    vectors: np.ndarray
    """(N, D) float32, L2-normalised."""
    payloads: list[dict[str, Any]]


def database_files(source: Path) -> Iterator[tuple[str, bytes]]:
    """(stem, bytes) of every `.npz` in a folder or a `.zip`, sorted by name."""
    if source.is_dir():
        for path in sorted(source.glob("*.npz")):
            yield path.stem, path.read_bytes()
    elif zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as archive:
            for member in sorted(n for n in archive.namelist() if n.endswith(".npz")):
                yield Path(member).stem, archive.read(member)
    else:
        raise CollectionError(f"{source}: not a folder of .npz databases nor a .zip of them")


def read_database(name: str, data: bytes, where: str) -> Database:
    """One `.npz` database; `where` names it in errors."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except ValueError as error:  # object arrays need pickle, which is never allowed
        raise CollectionError(f"{where}: unreadable without pickle ({error}); refused") from None
    missing = {"embedding", "img_id"} - arrays.keys()
    if missing:
        raise CollectionError(f"{where}: no {sorted(missing)} array; a database holds embedding and img_id")
    vectors = np.asarray(arrays["embedding"], dtype=np.float32)  # (N, D)
    image_ids = [str(i) for i in arrays["img_id"]]
    if vectors.ndim != 2 or len(vectors) != len(image_ids):
        raise CollectionError(
            f"{where}: embedding is {vectors.shape}, expected (N, D) for {len(image_ids)} ids"
        )
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    coords = arrays.get("patch_coords")
    payloads = [
        {"img_id": image_id, "style": name, "split": "imported", "source": where}
        | ({} if coords is None else {"patch_coords": [int(c) for c in coords[n]]})
        for n, image_id in enumerate(image_ids)
    ]
    ids = [
        image_id if coords is None else f"{image_id}@{','.join(map(str, p['patch_coords']))}"
        for image_id, p in zip(image_ids, payloads, strict=True)
    ]
    if len(set(ids)) != len(ids):
        raise CollectionError(f"{where}: {len(ids) - len(set(ids))} rows repeat an id; refused")
    return Database(name, ids, vectors, [p | {"id": i} for p, i in zip(payloads, ids, strict=True)])


def import_databases(store: VectorStore, source: Path, card: ClipCard, prefix: str) -> dict[str, int]:
    """Every database of `source` into collection `<prefix><stem>`, which then holds exactly its rows;
    returns points by collection. A database already imported as is publishes nothing."""
    counts: dict[str, int] = {}
    for stem, data in database_files(source):
        database = read_database(stem, data, f"{source}:{stem}.npz")
        if database.vectors.shape[1] != card.embed_dim:
            raise CollectionError(
                f"{source}:{stem}.npz holds {database.vectors.shape[1]}-d vectors, but CLIP {card.model} "
                f"[{card.fingerprint}] makes {card.embed_dim}-d ones; nothing was written. Give the CLIP "
                "folder the database was made with (`--clip`)"
            )
        name = f"{prefix}{stem}"
        counts[name] = _fill(store, name, database, card)
    return counts


def _fill(store: VectorStore, name: str, database: Database, card: ClipCard) -> int:
    if store.exists(name) and store.published_digest(name) == ids_digest(set(database.ids)):
        store.check(store.info(name), card)
        return len(database.ids)
    with store.revision(name, card) as draft:
        stale = sorted(store.ids(draft.name) - set(database.ids))
        store.delete(draft.name, stale)
        for start in range(0, len(database.ids), UPSERT_BATCH):
            rows = slice(start, start + UPSERT_BATCH)
            store.upsert(draft.name, database.ids[rows], database.vectors[rows], database.payloads[rows])
        draft.changed = True
    return len(database.ids)
