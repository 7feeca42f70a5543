"""The local Chroma vector index (PersistentClient, telemetry off, embeddings supplied).

Chroma never computes embeddings here (that would fetch a model from a hub): every
vector comes from the runtime engine. The knowledge base keeps one collection per
access-label partition; this module is the thin, tested door to Chroma itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["VectorIndex", "VectorHit"]

BATCH = 2000


@dataclass(frozen=True)
class VectorHit:
    id: str
    distance: float
    document: str
    metadata: dict


class VectorIndex:
    def __init__(self, path: Path) -> None:
        import chromadb
        from chromadb.config import Settings

        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.client = chromadb.PersistentClient(
            path=str(path), settings=Settings(anonymized_telemetry=False, allow_reset=False)
        )
        self._collections: dict[str, object] = {}

    def close(self) -> None:
        """Release this client's hold on Chroma's shared system (stopped when the process's last client closes)."""
        self._collections.clear()
        self.client.close()  # type: ignore[attr-defined]  # typed ClientAPI; PersistentClient's Client has close()

    def collection(self, name: str):  # noqa: ANN201 - chromadb's Collection type
        if name not in self._collections:
            self._collections[name] = self.client.get_or_create_collection(
                name, embedding_function=None, configuration={"hnsw": {"space": "cosine"}}
            )
        return self._collections[name]

    def upsert(self, name: str, ids: Sequence[str], embeddings: Sequence[Sequence[float]],
               documents: Sequence[str] | None = None, metadatas: Sequence[dict] | None = None) -> None:
        col = self.collection(name)
        for s in range(0, len(ids), BATCH):
            col.upsert(ids=list(ids[s : s + BATCH]), embeddings=[list(e) for e in embeddings[s : s + BATCH]],
                       documents=list(documents[s : s + BATCH]) if documents else None,
                       metadatas=list(metadatas[s : s + BATCH]) if metadatas else None)

    def delete(self, name: str, ids: Sequence[str]) -> None:
        if name not in self.names():
            return
        col = self.collection(name)
        for s in range(0, len(ids), BATCH):
            col.delete(ids=list(ids[s : s + BATCH]))

    def query(self, name: str, embedding: Sequence[float], k: int = 10) -> list[VectorHit]:
        res = self.collection(name).query(query_embeddings=[list(embedding)], n_results=k,
                                          include=["distances", "documents", "metadatas"])
        n = len(res["ids"][0])
        docs = (res.get("documents") or [[None] * n])[0]
        metas = (res.get("metadatas") or [[None] * n])[0]
        return [
            VectorHit(id=i, distance=float(d), document=doc or "", metadata=dict(m or {}))
            for i, d, doc, m in zip(res["ids"][0], res["distances"][0], docs, metas, strict=True)
        ]

    def nearest(self, name: str, embedding: Sequence[float], k: int) -> list[tuple[str, float]]:
        """Ids and cosine distances only: the fast path retrieval uses."""
        res = self.collection(name).query(query_embeddings=[list(embedding)], n_results=k, include=["distances"])
        return list(zip(res["ids"][0], (float(d) for d in res["distances"][0]), strict=True))

    def vectors(self, name: str, ids: Sequence[str]) -> dict[str, list[float]]:
        """The stored embeddings of ``ids`` (those present)."""
        if not ids or name not in self.names():
            return {}
        res = self.collection(name).get(ids=list(ids), include=["embeddings"])
        return {i: [float(x) for x in e] for i, e in zip(res["ids"], res["embeddings"], strict=True)}

    def ids(self, name: str) -> set[str]:
        col = self.collection(name)
        out: set[str] = set()
        total = col.count()
        for offset in range(0, total, BATCH):
            out.update(col.get(include=[], limit=BATCH, offset=offset)["ids"])
        return out

    def count(self, name: str) -> int:
        return self.collection(name).count()

    def names(self) -> list[str]:
        return sorted(c.name for c in self.client.list_collections())
