"""RFC 6962 / RFC 9162 Merkle tree: hashing, proof generation and pure proof verification.

Leaves are hashed as SHA-256(0x00 || entry) and interior nodes as SHA-256(0x01 || l || r).
The distinct prefixes are what stop an interior node being passed off as a leaf.

:class:`MerkleTree` keeps every *complete* aligned subtree: level ``k`` holds, in one
``bytearray``, the hashes of subtrees of 2**k leaves that start at a multiple of 2**k.
That is about two hashes per leaf (64 MB at a million leaves), and it turns the root
of any prefix and any proof into O(log n) lookups plus at most one O(log n) fold for a
partial subtree on the right edge, so nothing recurses and nothing rescans the leaves.

The ``verify_*`` functions take only bytes and integers, do no I/O and raise
:class:`AuditVerifyError` saying what failed. They follow RFC 9162 sections 2.1.3.2 and
2.1.4.2 and agree with transparency-dev/merkle's current verifier (whose vectors the
tests run); in particular a consistency proof from the empty tree (size1 == 0) is
refused as meaningless, and proof hashes must be exactly 32 bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from appliance.errors import AuditError, AuditVerifyError, AuditWriteError

__all__ = [
    "EMPTY_ROOT", "HASH_SIZE", "MerkleTree", "leaf_hash", "node_hash", "root",
    "verify_consistency", "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
_NODE_PREFIX = hashlib.sha256(b"\x01")


def leaf_hash(data: bytes) -> bytes:
    """Hash of a leaf holding ``data``: SHA-256(0x00 || data)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes | bytearray, right: bytes | bytearray) -> bytes:
    """Hash of an interior node: SHA-256(0x01 || left || right)."""
    h = _NODE_PREFIX.copy()
    h.update(left)
    h.update(right)
    return h.digest()


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """Root of the tree over ``leaf_hashes`` (RFC 6962 MTH), computed level by level.

    Pairing neighbours and carrying an odd last node up unchanged gives exactly the
    RFC's split-at-the-largest-power-of-two tree, without recursion.
    """
    level = list(leaf_hashes)
    if not all(isinstance(h, bytes) and len(h) == HASH_SIZE for h in level):
        for i, h in enumerate(level):
            _check_hash(h, f"leaf hash {i}")
    if not level:
        return EMPTY_ROOT
    sha256 = hashlib.sha256
    while len(level) > 1:
        odd = level[-1] if len(level) % 2 else None
        pairs = iter(level)
        level = [sha256(b"\x01" + left + right).digest() for left, right in zip(pairs, pairs)]
        if odd is not None:
            level.append(odd)
    return level[0]


class MerkleTree:
    """An append-only tree of leaf hashes that answers roots and proofs for any prefix."""

    def __init__(self) -> None:
        self._levels: list[bytearray] = [bytearray()]

    @classmethod
    def from_leaf_hashes(cls, leaf_hashes: Iterable[bytes]) -> MerkleTree:
        """Rebuild a tree (for instance from the log's stored leaf hashes) in one pass per level."""
        tree = cls()
        leaves = tree._levels[0]
        for i, h in enumerate(leaf_hashes):
            _check_hash(h, f"leaf hash {i}", AuditWriteError)
            leaves += h
        below = memoryview(leaves)
        while len(below) >= 2 * HASH_SIZE:
            above = bytearray()
            for off in range(0, len(below) - 2 * HASH_SIZE + 1, 2 * HASH_SIZE):
                hasher = _NODE_PREFIX.copy()
                hasher.update(below[off : off + 2 * HASH_SIZE])
                above += hasher.digest()
            tree._levels.append(above)
            below = memoryview(above)
        return tree

    @property
    def size(self) -> int:
        """Number of leaves."""
        return len(self._levels[0]) // HASH_SIZE

    def append(self, leaf: bytes) -> int:
        """Add a leaf hash (not the entry itself); return its index."""
        _check_hash(leaf, "leaf hash", AuditWriteError)
        index = self.size
        self._levels[0] += leaf
        level, count = 0, index + 1
        while count % 2 == 0:  # this leaf completed a subtree one level up
            below = self._levels[level]
            if level + 1 == len(self._levels):
                self._levels.append(bytearray())
            self._levels[level + 1] += node_hash(below[-2 * HASH_SIZE : -HASH_SIZE], below[-HASH_SIZE:])
            level, count = level + 1, count // 2
        return index

    def leaf(self, index: int) -> bytes:
        """The leaf hash at ``index``."""
        if not 0 <= index < self.size:
            raise AuditError(f"no leaf {index} in a tree of size {self.size}")
        return self._node(0, index)

    def root(self, size: int | None = None) -> bytes:
        """Root of the first ``size`` leaves (default: all of them)."""
        size = self.size if size is None else size
        self._check_size(size, "tree size")
        return self._range_hash(0, size) if size else EMPTY_ROOT

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Audit path (RFC 9162 section 2.1.3.1) of leaf ``index`` in the tree of ``size`` leaves."""
        size = self.size if size is None else size
        self._check_size(size, "tree size")
        if not 0 <= index < size:
            raise AuditError(f"no leaf {index} in a tree of size {size}")
        return self._path(0, index, size)

    def consistency_proof(self, size1: int, size2: int | None = None) -> list[bytes]:
        """Proof (RFC 9162 section 2.1.4.1) that the tree of ``size1`` leaves is a prefix of ``size2``."""
        size2 = self.size if size2 is None else size2
        self._check_size(size2, "tree size")
        if not 0 < size1 <= size2:
            raise AuditError(f"no consistency proof from size {size1} to size {size2}: need 0 < size1 <= size2")
        if size1 == size2:
            return []
        # The largest complete subtree ending at size1, then its path up to the root of size2.
        level = (size1 & -size1).bit_length() - 1
        index = (size1 - 1) >> level
        proof = self._path(level, index, size2)
        return proof if index == 0 else [self._node(level, index), *proof]

    # -- internals ---------------------------------------------------------------------

    def _check_size(self, size: int, what: str) -> None:
        if not 0 <= size <= self.size:
            raise AuditError(f"{what} {size} is outside the tree of {self.size} leaves")

    def _node(self, level: int, index: int) -> bytes:
        return bytes(self._levels[level][index * HASH_SIZE : (index + 1) * HASH_SIZE])

    def _range_hash(self, start: int, end: int) -> bytes:
        """MTH of leaves [start, end) where start is aligned to the subtree containing them."""
        parts = []
        while start < end:
            level = (end - start).bit_length() - 1  # largest complete subtree that fits
            parts.append(self._node(level, start >> level))
            start += 1 << level
        acc = parts.pop()
        while parts:
            acc = node_hash(parts.pop(), acc)
        return acc

    def _path(self, level: int, index: int, size: int) -> list[bytes]:
        """Sibling hashes from node (level, index) up to the root of the tree of ``size`` leaves."""
        last = (size - 1) >> level
        inner = (index ^ last).bit_length()  # levels below where our path meets the right edge
        proof = []
        for d in range(inner):
            sibling, at = (index >> d) ^ 1, level + d
            proof.append(self._range_hash(sibling << at, min((sibling + 1) << at, size)))
        node, at = index >> inner, level + inner
        while node:  # on the right edge only left siblings exist, and they are complete
            if node & 1:
                proof.append(self._node(at, node - 1))
            node, at = node >> 1, at + 1
        return proof


def verify_inclusion(leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``size`` leaves with ``root``."""
    if not 0 <= index < size:
        raise AuditVerifyError(f"inclusion: leaf index {index} is not inside a tree of size {size}")
    _check_hash(leaf_hash, "inclusion: leaf hash", AuditVerifyError)
    _check_proof(proof, _inclusion_length(index, size), "inclusion")
    fn, sn, r = index, size - 1, leaf_hash  # RFC 9162 section 2.1.3.2
    for p in proof:
        if sn == 0:
            raise AuditVerifyError("inclusion: proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise AuditVerifyError("inclusion: proof is shorter than the path to the root")
    if r != root:
        raise AuditVerifyError(f"inclusion: leaf {index} does not lead to the root of the tree of size {size}")


def verify_consistency(size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes) -> None:
    """Check that the tree of ``size1`` leaves (``root1``) is a prefix of the tree of ``size2`` (``root2``)."""
    if not 0 <= size1 <= size2:
        raise AuditVerifyError(f"consistency: size1 {size1} is not between 0 and size2 {size2}")
    if size1 == 0:
        raise AuditVerifyError("consistency: a proof from the empty tree (size1 = 0) is meaningless")
    if size1 == size2:
        if proof:
            raise AuditVerifyError(f"consistency: sizes are equal ({size1}) but the proof is not empty")
        if root1 != root2:
            raise AuditVerifyError(f"consistency: two different roots for the same size {size1}")
        return
    _check_proof(proof, _consistency_length(size1, size2), "consistency")
    path = list(proof)
    if size1 & (size1 - 1) == 0:  # RFC 9162 section 2.1.4.2
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise AuditVerifyError("consistency: proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise AuditVerifyError("consistency: proof is shorter than the path to the root")
    if fr != root1:
        raise AuditVerifyError(f"consistency: proof does not lead to root1 of the tree of size {size1}")
    if sr != root2:
        raise AuditVerifyError(f"consistency: proof does not lead to root2 of the tree of size {size2}")


def _inclusion_length(index: int, size: int) -> int:
    inner = (index ^ (size - 1)).bit_length()
    return inner + (index >> inner).bit_count()


def _consistency_length(size1: int, size2: int) -> int:
    shift = (size1 & -size1).bit_length() - 1
    length = _inclusion_length(size1 - 1, size2) - shift
    return length if size1 == 1 << shift else length + 1


def _check_proof(proof: Sequence[bytes], want: int, what: str) -> None:
    if len(proof) != want:
        raise AuditVerifyError(f"{what}: proof has {len(proof)} hashes, expected {want}")
    for i, h in enumerate(proof):
        _check_hash(h, f"{what}: proof hash {i}", AuditVerifyError)


def _check_hash(h: object, what: str, error: type[AuditError] = AuditError) -> None:
    if not isinstance(h, (bytes, bytearray)) or len(h) != HASH_SIZE:
        got = f"{len(h)} bytes" if isinstance(h, (bytes, bytearray)) else type(h).__name__
        raise error(f"{what} is {got}, expected {HASH_SIZE} bytes")
