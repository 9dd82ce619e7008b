"""Retrieval databases made elsewhere, brought into collections: `.npz` files in the layout of the
databases released with CompVis' RDMs: `embedding` (N, D) CLIP image vectors, `img_id` (N,) and, for
patch databases, `patch_coords` (N, 4). The RDMs' database builder saves a database as parts
`<rows>x<dim>-part_<i>.npz` in a folder named for it (`artbench-surrealism/`, `openimages/`); any
other `.npz` is a database of its own, named by its stem.

Each database becomes one collection, `<prefix><name>` (with the default prefix `style-`, a style the
sampler can swap in by name), filled through a revision like every other collection. The vectors must
come from the CLIP the collection is declared with: a file of another dimension is refused before
anything is written. Files are read without pickle, so a database can never run code.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rdm.artifacts.clip import ClipCard
from rdm.retrieval.store import CollectionError, VectorStore, ids_digest

UPSERT_BATCH = 5000
PART = re.compile(r"^\d+x\d+-part_\d+$")
"""The database builder's name for one chunk of a database; the chunks' folder names the database."""


@dataclass(frozen=True)
class Database:
    name: str
    """The file's stem: the style it holds."""
    ids: list[str]
    """One per row: the image id, with the patch coordinates for patch databases."""
    vectors: np.ndarray
    """(N, D) float32, L2-normalised; each row's own length is its payload's `norm` (models conditioned
    on raw vectors, the RDM repo's, get it back)."""
    payloads: list[dict[str, Any]]


def database_files(source: Path) -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    """(name, [(where, bytes) of each part]) of every database in a folder or a `.zip`, by name."""
    if source.is_dir():
        members = sorted(path.relative_to(source).as_posix() for path in source.rglob("*.npz"))
        yield from _by_database(source, members, lambda member: (source / member).read_bytes())
    elif zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as archive:
            members = sorted(name for name in archive.namelist() if name.endswith(".npz"))
            yield from _by_database(source, members, archive.read)
    else:
        raise CollectionError(f"{source}: not a folder of .npz databases nor a .zip of them")


def _by_database(
    source: Path, members: list[str], read: Callable[[str], bytes]
) -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    named: dict[str, list[str]] = {}
    for member in members:
        path = Path(member)
        named.setdefault(path.parent.name if PART.match(path.stem) else path.stem, []).append(member)
    for name, parts in named.items():
        folders = {Path(part).parent for part in parts}
        if len(folders) > 1:  # two files of one stem, or parts in two folders of one name
            raise CollectionError(
                f"{source}: {', '.join(parts)} would all become database {name!r}; name each file "
                "for its database, or keep a database's <rows>x<dim>-part_<i>.npz parts in one folder"
            )
    for name, parts in sorted(named.items()):
        yield name, [(f"{source}:{member}", read(member)) for member in parts]


def read_database(name: str, data: bytes, where: str) -> Database:
    """One `.npz` database (or part of one); `where` names it in errors."""
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
    norms = np.linalg.norm(vectors, axis=1)  # (N,)
    vectors /= np.maximum(norms, 1e-12)[:, None]
    coords = arrays.get("patch_coords")
    if coords is not None and len(coords) != len(image_ids):
        raise CollectionError(f"{where}: patch_coords has {len(coords)} rows for {len(image_ids)} ids")
    patches = [None] * len(image_ids) if coords is None else [[int(c) for c in row] for row in coords]
    payloads: list[dict[str, Any]] = [
        {"img_id": image_id, "style": name, "split": "imported", "source": where, "norm": float(norms[n])}
        | ({} if patch is None else {"patch_coords": patch})
        for n, (image_id, patch) in enumerate(zip(image_ids, patches, strict=True))
    ]
    ids = [
        image_id if patch is None else f"{image_id}@{','.join(map(str, patch))}"
        for image_id, patch in zip(image_ids, patches, strict=True)
    ]
    if len(set(ids)) != len(ids):
        raise CollectionError(f"{where}: {len(ids) - len(set(ids))} rows repeat an id; refused")
    return Database(name, ids, vectors, [p | {"id": i} for p, i in zip(payloads, ids, strict=True)])


def import_databases(store: VectorStore, source: Path, card: ClipCard, prefix: str) -> dict[str, int]:
    """Every database of `source` into collection `<prefix><stem>`, which then holds exactly its rows;
    returns points by collection. A database already imported as is publishes nothing."""
    counts: dict[str, int] = {}
    for stem, parts in database_files(source):
        database = concatenate([read_database(stem, data, where) for where, data in parts])
        if database.vectors.shape[1] != card.embed_dim:
            raise CollectionError(
                f"{parts[0][0]} holds {database.vectors.shape[1]}-d vectors, but CLIP {card.model} "
                f"[{card.fingerprint}] makes {card.embed_dim}-d ones; nothing was written. Give the CLIP "
                "folder the database was made with (`--clip`)"
            )
        name = f"{prefix}{stem}"
        counts[name] = _fill(store, name, database, card)
    return counts


def concatenate(parts: list[Database]) -> Database:
    """The parts of one database as one; an id in two parts is refused."""
    if len(parts) == 1:
        return parts[0]
    ids = [i for part in parts for i in part.ids]
    if len(set(ids)) != len(ids):
        raise CollectionError(f"database {parts[0].name}: its parts repeat {len(ids) - len(set(ids))} ids")
    dims = {part.vectors.shape[1] for part in parts}
    if len(dims) > 1:
        raise CollectionError(
            f"database {parts[0].name}: its parts hold vectors of {sorted(dims)} dimensions"
        )
    return Database(
        parts[0].name, ids, np.concatenate([p.vectors for p in parts]), [r for p in parts for r in p.payloads]
    )


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
