"""Which vector store a run opens: Qdrant Edge in-process, or a Qdrant server, chosen by configuration."""

from __future__ import annotations

import os

from rdm.config import StoreParams
from rdm.retrieval.store import CollectionError, VectorStore


def open_store(params: StoreParams) -> VectorStore:
    """The backend named by RDM_STORE_BACKEND or `store.backend`: configuration, never code, chooses it."""
    backend = os.environ.get("RDM_STORE_BACKEND") or params.backend
    if backend not in ("edge", "server"):
        raise CollectionError(f"RDM_STORE_BACKEND={backend!r}: expected 'edge' or 'server'")
    if backend == "edge":
        from rdm.retrieval.edge import EdgeStore

        return EdgeStore(params)
    from rdm.retrieval.server import ServerStore

    url = params.url or os.environ.get("QDRANT_URL")
    if not url:
        raise CollectionError("store.backend is 'server' but neither store.url nor QDRANT_URL is set")
    api_key = params.api_key.get_secret_value() if params.api_key else os.environ.get("QDRANT_API_KEY")
    return ServerStore(params, url, api_key)
