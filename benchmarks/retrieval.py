"""Retrieval speed and quality of the embedded store, against exact numpy and qdrant-client's
local mode, and of the neighbors stage's exact and IVF-PQ searches, all measured in this run on the
same clustered vectors.

    python benchmarks/retrieval.py [--points 100000] [--dim 512] [-k 19] [--quantization int8]
                                   [--ef 64 128] [--neighbors-only] [--nprobe 16 64] [--rerank 4 16]
                                   [--store-only]

Prints progress, then one JSON object as the last line: points, k, p50_ms, p99_ms, recall,
build_s, disk_gb, rss_added_gb, numpy_exact_p50_ms, qdrant_local_p50_ms (these left out with
--neighbors-only; they are for the first --ef, and edge_ef<N>_p50_ms, _p99_ms and _recall for
each), neighbors_qps, ivfpq_build_s, and ivfpq_nprobe<N>_rerank<R>_qps and _recall
for each --nprobe and --rerank (these left out with --store-only).
qdrant-client's local mode is left out above 200,000 points, where it takes minutes a query.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil

from rdm.artifacts.clip import ClipCard
from rdm.config import StoreParams
from rdm.retrieval.approximate import IvfPq, build_index, recall_at_k, search_index
from rdm.retrieval.backends import open_store
from rdm.retrieval.neighbors import exact_neighbors
from rdm.retrieval.server import ServerStore
from rdm.retrieval.store import VectorStore


def clustered(points: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(10, points // 100), dim))
    vectors = centres[rng.integers(0, len(centres), points)] + 0.5 * rng.normal(size=(points, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def latencies_ms(search: Callable[[np.ndarray], object], queries: np.ndarray) -> np.ndarray:
    times = []
    for q in queries:
        started = time.perf_counter()
        search(q)
        times.append((time.perf_counter() - started) * 1000)
    return np.array(times)


def fill(store: VectorStore, vectors: np.ndarray, card: ClipCard) -> float:
    ids = [f"{i:064x}" for i in range(len(vectors))]
    started = time.perf_counter()
    store.ensure("bench", card)
    store.upsert("bench", ids, vectors, [{"id": i} for i in ids])
    store.finish("bench")
    return time.perf_counter() - started


def main() -> None:
    args = parse_args()
    data = clustered(args.points + args.queries, args.dim)
    database, queries = data[: args.points], data[args.points :]
    card = ClipCard(model="bench", source="random", embed_dim=args.dim, fingerprint="bench")
    result: dict[str, float] = {"points": args.points, "k": args.k}
    if not args.neighbors_only:
        truth = np.argsort(-(queries @ database.T), axis=1)[:, : args.k]
        edge_ms, recall, edge = measure_edge(
            database, queries, truth, card, args.k, args.quantization, args.ef
        )
        numpy_ms = measure_numpy_exact(database, queries, args.k)
        if args.points <= 200_000:
            local_ms = measure_qdrant_local(database, queries[: args.local_queries], card, args.k)
            result["qdrant_local_p50_ms"] = round(float(np.percentile(local_ms, 50)), 4)
        result |= {
            "p50_ms": round(float(np.percentile(edge_ms, 50)), 4),
            "p99_ms": round(float(np.percentile(edge_ms, 99)), 4),
            "recall": round(recall, 4),
            **edge,
            "numpy_exact_p50_ms": round(float(np.percentile(numpy_ms, 50)), 4),
        }
    if not args.store_only:
        neighbors_qps, exact = measure_neighbors(database, args.neighbor_queries, args.k)
        result |= {"neighbors_qps": round(neighbors_qps, 1)} | measure_ivfpq(
            database, exact, args.k, args.nprobe, args.rerank
        )
    print(json.dumps(result))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("-k", type=int, default=19)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--local-queries", type=int, default=20, help="qdrant-client local mode is slow")
    parser.add_argument("--neighbor-queries", type=int, default=10_000)
    parser.add_argument("--quantization", choices=["none", "int8"], default="none", help="the store's")
    parser.add_argument(
        "--ef", type=int, nargs="+", default=[StoreParams().hnsw_ef], help="the store's HNSW search breadth"
    )
    parser.add_argument(
        "--neighbors-only", action="store_true", help="only the neighbors stage's searches (no store)"
    )
    parser.add_argument("--nprobe", type=int, nargs="+", default=[32], help="IVF-PQ lists searched per query")
    parser.add_argument("--rerank", type=int, nargs="+", default=[4], help="IVF-PQ candidates per neighbour")
    parser.add_argument("--store-only", action="store_true", help="only the store (no neighbors stage)")
    return parser.parse_args()


def measure_edge(
    database: np.ndarray,
    queries: np.ndarray,
    truth: np.ndarray,
    card: ClipCard,
    k: int,
    quantization: str,
    efs: list[int],
) -> tuple[np.ndarray, float, dict[str, float]]:
    """The embedded store's warm latencies (ms per query) and recall@k against the exact `truth` at
    the first of `efs`, its build time, size on disk, the resident memory the open store added to this
    process, and latency and recall at every ef (one build serves them all: ef is a search setting)."""
    points, dim = database.shape
    measured: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        params = StoreParams(backend="edge", path=folder, exact_below=10_000, quantization=quantization)
        before = psutil.Process().memory_info().rss
        with open_store(params) as edge:
            build_s = fill(edge, database, card)
            edge.query("bench", queries[:1], k)  # open for searching, as a reader would
            added_gb = (psutil.Process().memory_info().rss - before) / 1e9
            disk_gb = sum(p.stat().st_blocks * 512 for p in Path(folder).rglob("*") if p.is_file()) / 1e9
            print(
                f"edge ({quantization}): upsert + HNSW build of {points} x {dim} in {build_s:.1f} s, "
                f"{disk_gb:.2f} GB on disk, {added_gb:.2f} GB resident added"
            )
            cold_ms = latencies_ms(lambda q: edge.query("bench", q[None], k), queries)
            print(f"edge: first, cold pass p50 {np.percentile(cold_ms, 50):.3f} ms")
            for ef in efs:
                edge.params = params.model_copy(update={"hnsw_ef": ef})  # read at every query
                ef_ms = latencies_ms(lambda q: edge.query("bench", q[None], k), queries)  # warm
                hits = [edge.query("bench", q[None], k)[0] for q in queries]
                found = [{int(h.id, 16) for h in row} for row in hits]
                ef_recall = float(
                    np.mean([len(f & set(t.tolist())) / k for f, t in zip(found, truth, strict=True)])
                )
                print(
                    f"edge ef {ef}: p50 {np.percentile(ef_ms, 50):.3f} ms, "
                    f"p99 {np.percentile(ef_ms, 99):.3f} ms, recall@{k} {ef_recall:.4f}"
                )
                measured |= {
                    f"edge_ef{ef}_p50_ms": round(float(np.percentile(ef_ms, 50)), 4),
                    f"edge_ef{ef}_p99_ms": round(float(np.percentile(ef_ms, 99)), 4),
                    f"edge_ef{ef}_recall": round(ef_recall, 4),
                }
                if ef == efs[0]:
                    edge_ms, recall = ef_ms, ef_recall
    return (
        edge_ms,
        recall,
        {"build_s": round(build_s, 1), "disk_gb": round(disk_gb, 2), "rss_added_gb": round(added_gb, 2)}
        | measured,
    )


def measure_numpy_exact(database: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Latencies (ms per query) of an exact top-k in numpy, after a warm-up pass."""

    def numpy_exact(q: np.ndarray) -> np.ndarray:
        scores = database @ q
        top = np.argpartition(-scores, k)[:k]
        return top[np.argsort(-scores[top])]

    latencies_ms(numpy_exact, queries)
    numpy_ms = latencies_ms(numpy_exact, queries)
    print(f"numpy exact: p50 {np.percentile(numpy_ms, 50):.3f} ms")
    return numpy_ms


def measure_qdrant_local(database: np.ndarray, queries: np.ndarray, card: ClipCard, k: int) -> np.ndarray:
    """Latencies (ms per query) of qdrant-client's local (in-memory) mode, for comparison."""
    local = ServerStore(StoreParams(backend="server"), ":memory:", None)
    local_build_s = fill(local, database, card)
    local_ms = latencies_ms(lambda q: local.query("bench", q[None], k), queries)
    local.close()
    print(f"qdrant-client local mode: upload {local_build_s:.1f} s, p50 {np.percentile(local_ms, 50):.1f} ms")
    return local_ms


def measure_neighbors(database: np.ndarray, queries: int, k: int) -> tuple[float, np.ndarray]:
    """Queries per second of the neighbors stage's exact search, the first `queries` vectors against
    all, and its answer (Q, k)."""
    bulk = database[:queries]
    started = time.perf_counter()
    found = exact_neighbors(bulk, database, k, duplicate_threshold=0.999, batch_size=1024)
    neighbors_qps = len(bulk) / (time.perf_counter() - started)
    print(f"neighbors (exact torch matmul): {neighbors_qps:.0f} queries/s against {len(database)}")
    return neighbors_qps, found.indices


def measure_ivfpq(
    database: np.ndarray, exact: np.ndarray, k: int, nprobes: list[int], reranks: list[int]
) -> dict[str, float]:
    """The neighbors stage's IVF-PQ search at its defaults but nprobe and rerank: index build time,
    then per setting the search's queries per second (the index memory-mapped, candidates re-scored
    exactly) and recall@k against the exact answer for the same queries."""
    started = time.perf_counter()
    index = build_index(database, IvfPq(), progress=True)
    result: dict[str, float] = {"ivfpq_build_s": round(time.perf_counter() - started, 1)}
    print(f"neighbors (ivfpq): index of {len(database)} built in {result['ivfpq_build_s']} s")
    for nprobe, rerank in itertools.product(nprobes, reranks):
        settings = IvfPq(nprobe=nprobe, rerank=rerank)
        started = time.perf_counter()
        found = search_index(index, database[: len(exact)], database, k, settings, 0.999)
        qps = len(exact) / (time.perf_counter() - started)
        recall = recall_at_k(found.indices, exact)
        print(
            f"neighbors (ivfpq, nprobe {nprobe}, rerank {rerank}): {qps:.0f} queries/s, "
            f"recall@{k} {recall:.4f}"
        )
        name = f"ivfpq_nprobe{nprobe}_rerank{rerank}"
        result |= {f"{name}_qps": round(qps, 1), f"{name}_recall": round(recall, 4)}
    return result


if __name__ == "__main__":
    main()
