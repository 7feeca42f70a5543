"""The local Chroma vector index (PersistentClient, telemetry off, embeddings supplied).

Chroma never computes embeddings here (that would fetch a model from a hub): every
vector comes from the runtime engine. One collection per access-label partition is the
knowledge base's job; this module is the thin, tested door to Chroma itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["VectorIndex", "VectorHit"]


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

    def collection(self, name: str):  # noqa: ANN201 - chromadb's Collection type
        return self.client.get_or_create_collection(
            name, embedding_function=None, configuration={"hnsw": {"space": "cosine"}}
        )

    def upsert(self, name: str, ids: Sequence[str], embeddings: Sequence[Sequence[float]],
               documents: Sequence[str], metadatas: Sequence[dict] | None = None) -> None:
        self.collection(name).upsert(ids=list(ids), embeddings=[list(e) for e in embeddings],
                                     documents=list(documents), metadatas=list(metadatas) if metadatas else None)

    def query(self, name: str, embedding: Sequence[float], k: int = 10) -> list[VectorHit]:
        res = self.collection(name).query(query_embeddings=[list(embedding)], n_results=k)
        metas = res.get("metadatas") or [[{}] * len(res["ids"][0])]
        return [
            VectorHit(id=i, distance=float(d), document=doc or "", metadata=dict(m or {}))
            for i, d, doc, m in zip(res["ids"][0], res["distances"][0], res["documents"][0], metas[0], strict=True)
        ]

    def count(self, name: str) -> int:
        return self.collection(name).count()

    def names(self) -> list[str]:
        return sorted(c.name for c in self.client.list_collections())
