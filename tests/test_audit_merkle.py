"""Audit verification building blocks: canonical JSON, the RFC 6962 tree, signed checkpoints.

The Merkle verifiers are checked against every transparency-dev/merkle vector in
``shared/vectors/merkle`` and against the RFC's recursive definitions; checkpoints
against the golang.org/x/mod/sumdb/note reference key and signature.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import re
import stat
import struct
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.audit.canonical import canonical_json, parse_canonical
from appliance.audit.checkpoint import (
    Checkpoint,
    Signer,
    Verifier,
    generate_key,
    key_id,
    load_signer,
    open_checkpoint,
    same_tree,
    verifier_from_vkey,
)
from appliance.audit.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    leaf_hash,
    node_hash,
    root,
    verify_consistency,
    verify_inclusion,
)
from appliance.errors import (
    AuditError,
    AuditVerifyError,
    AuditWriteError,
    CheckpointError,
)

VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors" / "merkle"
INCLUSION = sorted((VECTORS / "inclusion").rglob("*.json"))
CONSISTENCY = sorted((VECTORS / "consistency").rglob("*.json"))
# A missing vector directory must fail the run, not turn into an empty (skipped) parameter set.
MISSING = [VECTORS / "missing.json"]
b64 = base64.b64decode


# == canonical JSON (RFC 8785) ===========================================================


def test_rfc8785_example_from_section_3_2_2() -> None:
    value = {
        "numbers": [333333333.33333329, 1e30, 4.50, 2e-3, 0.000000000000000000000000001],
        "string": "\u20ac$\u000f\u000aA'\u0042\u0022\u005c\\\"/",
        "literals": [None, True, False],
    }
    want = '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
    want += '"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    assert canonical_json(value) == want.encode()


def test_keys_sort_by_utf16_code_units() -> None:
    # RFC 8785 section 3.2.3: the emoji (surrogates D83D DE00) sorts before U+FB33.
    value = {"\u20ac": 0, "\r": 0, "\ufb33": 0, "1": 0, "\U0001f600": 0, "\u0080": 0, "\u00f6": 0}
    keys = list(json.loads(canonical_json(value)))
    assert keys == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]


@pytest.mark.parametrize(("bits", "text"), [
    # RFC 8785 appendix B, IEEE-754 bit patterns and their required serialisation.
    ("0000000000000000", "0"),
    ("8000000000000000", "0"),
    ("0000000000000001", "5e-324"),
    ("8000000000000001", "-5e-324"),
    ("7fefffffffffffff", "1.7976931348623157e+308"),
    ("ffefffffffffffff", "-1.7976931348623157e+308"),
    ("4340000000000000", "9007199254740992"),
    ("c340000000000000", "-9007199254740992"),
    ("4430000000000000", "295147905179352830000"),
    ("44b52d02c7e14af5", "9.999999999999997e+22"),
    ("44b52d02c7e14af6", "1e+23"),
    ("44b52d02c7e14af7", "1.0000000000000001e+23"),
    ("444b1ae4d6e2ef4e", "999999999999999700000"),
    ("444b1ae4d6e2ef4f", "999999999999999900000"),
    ("444b1ae4d6e2ef50", "1e+21"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
    ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("41b3de4355555553", "333333333.3333332"),
    ("41b3de4355555554", "333333333.33333325"),
    ("41b3de4355555555", "333333333.3333333"),
    ("41b3de4355555556", "333333333.3333334"),
    ("41b3de4355555557", "333333333.33333343"),
    ("becbf647612f3696", "-0.0000033333333333333333"),
    ("43143ff3c1cb0959", "1424953923781206.2"),
])
def test_rfc8785_number_serialisation(bits: str, text: str) -> None:
    (x,) = struct.unpack(">d", bytes.fromhex(bits))
    assert canonical_json(x) == text.encode()


@pytest.mark.parametrize(("value", "text"), [
    (1e21, "1e+21"), (1e20, "100000000000000000000"), (1e-7, "1e-7"), (1e-6, "0.000001"),
    (123456789012345680000.0, "123456789012345680000"), (1.0, "1"), (-1.5, "-1.5"), (0.1, "0.1"),
    (2**53 - 1, "9007199254740991"), (-(2**53 - 1), "-9007199254740991"), (0, "0"), (-7, "-7"),
    (True, "true"), (False, "false"), (None, "null"), ((1, "a"), '[1,"a"]'), ({}, "{}"), ([], "[]"),
])
def test_scalars_and_tuples(value: object, text: str) -> None:
    assert canonical_json(value) == text.encode()


def test_string_escapes_are_only_the_mandatory_ones() -> None:
    controls = "".join(chr(c) for c in range(0x20))
    want = '"\\u0000\\u0001\\u0002\\u0003\\u0004\\u0005\\u0006\\u0007\\b\\t\\n\\u000b\\f\\r\\u000e\\u000f'
    want += "".join(f"\\u{c:04x}" for c in range(0x10, 0x20)) + '"'
    assert canonical_json(controls) == want.encode()
    literal = "/ \x7f \u2028 é \U0001f600 <>&'"
    assert canonical_json(literal) == ('"' + literal + '"').encode()
    assert canonical_json('"\\') == b'"\\"\\\\"'


@pytest.mark.parametrize(("value", "message"), [
    (math.nan, "nan is not a JSON number"),
    (math.inf, "inf is not a JSON number"),
    (-math.inf, "inf is not a JSON number"),
    (2**53, "outside"),
    (-(2**53), "outside"),
    (10**30, "outside"),
    (b"raw", "cannot encode a bytes"),
    ({1, 2}, "cannot encode a set"),
    (Decimal("1.5"), "cannot encode a Decimal"),
    (object(), "cannot encode a object"),
    ({1: "a"}, "object key 1 is a int"),
    ({"a": [{"b": {3.5}}]}, "cannot encode a set"),
    ("\ud800", "lone surrogate"),
])
def test_values_without_one_json_form_are_refused(value: object, message: str) -> None:
    with pytest.raises(AuditError, match=message):
        canonical_json(value)


def test_size_limit() -> None:
    assert canonical_json("x" * 8, max_bytes=10) == b'"xxxxxxxx"'
    with pytest.raises(AuditError, match="11 bytes, above the limit of 10"):
        canonical_json("x" * 9, max_bytes=10)
    with pytest.raises(AuditVerifyError, match="above the limit"):
        parse_canonical(b'"' + b"x" * 20 + b'"', max_bytes=10)


def test_parse_canonical_round_trip() -> None:
    value = {"b": [1, 2.5, "é\n"], "a": None, "c": {"z": True, "y": 1e-7}}
    data = canonical_json(value)
    assert parse_canonical(data) == value


@pytest.mark.parametrize(("data", "message"), [
    (b'{"a": 1}', "not canonical"),
    (b'{"b":1,"a":2}', "not canonical"),
    (b"1.0", "not canonical"),
    (b"1E+21", "not canonical"),
    (b'"\\u0041"', "not canonical"),
    (b'"\\/"', "not canonical"),
    (b'"a"\n', "not canonical"),
    (b"\xef\xbb\xbf1", "not JSON"),
    (b'{"a":1,"a":1}', "duplicate key 'a'"),
    (b"NaN", "NaN is not a JSON number"),
    (b"1e400", "not a JSON number"),
    (b"12345678901234567890", "outside"),
    (b"9" * 5000, "not canonical JSON"),
    (b'"\\ud800"', "lone surrogate"),
    (b'"\xff"', "not valid UTF-8"),
    (b"[1,", "not JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
])
def test_parse_canonical_rejects(data: bytes, message: str) -> None:
    with pytest.raises(AuditVerifyError, match=message):
        parse_canonical(data)


# == Merkle tree: transparency-dev/merkle vectors ========================================


def test_vector_directories_are_not_empty() -> None:
    assert len(INCLUSION) > 0, f"no inclusion vectors under {VECTORS}"
    assert len(CONSISTENCY) > 0, f"no consistency vectors under {VECTORS}"


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(VECTORS)) for p in paths]


@pytest.mark.parametrize("path", INCLUSION or MISSING, ids=_ids(INCLUSION or MISSING))
def test_inclusion_vector(path: Path) -> None:
    v = json.loads(path.read_text())
    args = (b64(v["leafHash"]), v["leafIdx"], v["treeSize"], [b64(p) for p in v["proof"] or []], b64(v["root"]))
    if v["wantErr"]:
        with pytest.raises(AuditVerifyError):
            verify_inclusion(*args)
    else:
        verify_inclusion(*args)


@pytest.mark.parametrize("path", CONSISTENCY or MISSING, ids=_ids(CONSISTENCY or MISSING))
def test_consistency_vector(path: Path) -> None:
    v = json.loads(path.read_text())
    args = (v["size1"], v["size2"], [b64(p) for p in v["proof"] or []], b64(v["root1"]), b64(v["root2"]))
    if v["wantErr"]:
        with pytest.raises(AuditVerifyError):
            verify_consistency(*args)
    else:
        verify_consistency(*args)


# == Merkle tree: against the RFC's recursive definitions ================================


def _k(n: int) -> int:
    """Largest power of two smaller than n (RFC 6962 section 2.1)."""
    return 1 << ((n - 1).bit_length() - 1)


def _mth(leaves: list[bytes]) -> bytes:
    if len(leaves) <= 1:
        return leaves[0] if leaves else EMPTY_ROOT
    k = _k(len(leaves))
    return node_hash(_mth(leaves[:k]), _mth(leaves[k:]))


def _path(m: int, leaves: list[bytes]) -> list[bytes]:
    if len(leaves) == 1:
        return []
    k = _k(len(leaves))
    if m < k:
        return [*_path(m, leaves[:k]), _mth(leaves[k:])]
    return [*_path(m - k, leaves[k:]), _mth(leaves[:k])]


def _subproof(m: int, leaves: list[bytes], complete: bool) -> list[bytes]:
    if m == len(leaves):
        return [] if complete else [_mth(leaves)]
    k = _k(len(leaves))
    if m <= k:
        return [*_subproof(m, leaves[:k], complete), _mth(leaves[k:])]
    return [*_subproof(m - k, leaves[k:], False), _mth(leaves[:k])]


LEAVES = [leaf_hash(b"entry %d" % i) for i in range(300)]
TREE = MerkleTree.from_leaf_hashes(LEAVES)


def test_roots_and_proofs_equal_the_rfc_definitions() -> None:
    for n in range(40):
        assert TREE.root(n) == root(LEAVES[:n]) == _mth(LEAVES[:n])
        for i in range(n):
            assert TREE.inclusion_proof(i, n) == _path(i, LEAVES[:n])
        for m in range(1, n + 1):
            assert TREE.consistency_proof(m, n) == _subproof(m, LEAVES[:n], True)


def test_known_roots() -> None:
    assert root([]) == hashlib.sha256(b"").digest()
    assert leaf_hash(b"") == hashlib.sha256(b"\x00").digest()
    assert root([leaf_hash(b"")]).hex() == "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"


def test_appending_and_rebuilding_agree() -> None:
    grown = MerkleTree()
    for i, h in enumerate(LEAVES):
        assert grown.append(h) == i
        assert grown.root() == TREE.root(i + 1)
    assert grown.size == TREE.size == 300
    rebuilt = MerkleTree.from_leaf_hashes(iter(LEAVES[:77]))
    rebuilt.append(LEAVES[77])  # a rebuilt tree keeps growing
    assert rebuilt.root() == TREE.root(78) and rebuilt.leaf(77) == LEAVES[77]


def test_large_tree_root_needs_no_recursion() -> None:
    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(2**16 + 3)]
    tree = MerkleTree.from_leaf_hashes(leaves)
    assert tree.root() == root(leaves)
    verify_inclusion(leaves[40000], 40000, len(leaves), tree.inclusion_proof(40000), tree.root())


def test_tree_refuses_bad_arguments() -> None:
    with pytest.raises(AuditWriteError, match="expected 32 bytes"):
        MerkleTree().append(b"short")
    with pytest.raises(AuditError, match="no leaf 5 in a tree of size 5"):
        TREE.inclusion_proof(5, 5)
    with pytest.raises(AuditError, match="outside the tree of 300 leaves"):
        TREE.root(301)
    with pytest.raises(AuditError, match="need 0 < size1 <= size2"):
        TREE.consistency_proof(0, 10)
    with pytest.raises(AuditError, match="need 0 < size1 <= size2"):
        TREE.consistency_proof(11, 10)
    with pytest.raises(AuditError, match="expected 32 bytes"):
        root([b"x" * 31])
    with pytest.raises(AuditError, match="no leaf 300 in a tree of size 300"):
        TREE.leaf(300)


@settings(max_examples=60, deadline=None)
@given(size=st.integers(1, 300), seed=st.binary(max_size=8))
def test_every_inclusion_proof_verifies(size: int, seed: bytes) -> None:
    leaves = [leaf_hash(seed + i.to_bytes(2, "big")) for i in range(size)]
    tree = MerkleTree.from_leaf_hashes(leaves)
    for i in range(size):
        verify_inclusion(leaves[i], i, size, tree.inclusion_proof(i), tree.root())


@settings(max_examples=60, deadline=None)
@given(size2=st.integers(1, 300), data=st.data())
def test_every_consistency_proof_verifies(size2: int, data: st.DataObject) -> None:
    size1 = data.draw(st.integers(1, size2))
    proof = TREE.consistency_proof(size1, size2)
    verify_consistency(size1, size2, proof, TREE.root(size1), TREE.root(size2))


@settings(max_examples=200, deadline=None)
@given(size=st.integers(1, 300), data=st.data())
def test_flipping_any_byte_of_an_inclusion_proof_or_root_fails(size: int, data: st.DataObject) -> None:
    index = data.draw(st.integers(0, size - 1))
    proof, good_root = TREE.inclusion_proof(index, size), TREE.root(size)
    blobs = [*proof, good_root]
    which = data.draw(st.integers(0, len(blobs) - 1))
    at, bit = data.draw(st.integers(0, 31)), data.draw(st.integers(0, 7))
    bad = bytearray(blobs[which])
    bad[at] ^= 1 << bit
    blobs[which] = bytes(bad)
    with pytest.raises(AuditVerifyError):
        verify_inclusion(LEAVES[index], index, size, blobs[:-1], blobs[-1])


@settings(max_examples=200, deadline=None)
@given(size2=st.integers(2, 300), data=st.data())
def test_flipping_any_byte_of_a_consistency_proof_or_root_fails(size2: int, data: st.DataObject) -> None:
    size1 = data.draw(st.integers(1, size2 - 1))
    blobs = [*TREE.consistency_proof(size1, size2), TREE.root(size1), TREE.root(size2)]
    which = data.draw(st.integers(0, len(blobs) - 1))
    at, bit = data.draw(st.integers(0, 31)), data.draw(st.integers(0, 7))
    bad = bytearray(blobs[which])
    bad[at] ^= 1 << bit
    blobs[which] = bytes(bad)
    with pytest.raises(AuditVerifyError):
        verify_consistency(size1, size2, blobs[:-2], blobs[-2], blobs[-1])


def test_interior_node_cannot_pose_as_a_leaf() -> None:
    h = LEAVES[:4]
    n01, n23 = node_hash(h[0], h[1]), node_hash(h[2], h[3])
    root4 = root(h)
    # Arithmetically, n01 is "leaf 0 of a 2-leaf tree" with the same root...
    assert node_hash(n01, n23) == root4
    # ...but a leaf is hashed from its entry with the 0x00 prefix, and the entry that an
    # attacker would need (h0 || h1) hashes to something else.
    with pytest.raises(AuditVerifyError, match="does not lead to the root"):
        verify_inclusion(leaf_hash(h[0] + h[1]), 0, 2, [n23], root4)
    # Without the prefixes the same forgery works: that is what the prefixes prevent.
    def sha(data: bytes) -> bytes:
        return hashlib.sha256(data).digest()

    e = [b"e0", b"e1", b"e2", b"e3"]
    p01, p23 = sha(sha(e[0]) + sha(e[1])), sha(sha(e[2]) + sha(e[3]))
    forged_entry = sha(e[0]) + sha(e[1])  # claimed to be leaf 0 of a 2-leaf tree
    assert sha(sha(forged_entry) + p23) == sha(p01 + p23)


@pytest.mark.parametrize(("args", "message"), [
    ((LEAVES[0], 3, 3, [], EMPTY_ROOT), "leaf index 3 is not inside a tree of size 3"),
    ((LEAVES[0], 0, 0, [], EMPTY_ROOT), "not inside a tree of size 0"),
    ((b"x", 0, 1, [], LEAVES[0]), "leaf hash is 1 bytes"),
    ((LEAVES[0], 0, 2, [], TREE.root(2)), "proof has 0 hashes, expected 1"),
    ((LEAVES[0], 0, 2, [LEAVES[1], LEAVES[1]], TREE.root(2)), "proof has 2 hashes, expected 1"),
    ((LEAVES[0], 0, 2, [b""], TREE.root(2)), "proof hash 0 is 0 bytes"),
    ((LEAVES[0], 0, 2, [LEAVES[2]], TREE.root(2)), "leaf 0 does not lead to the root"),
])
def test_inclusion_failures_say_what_failed(args: tuple, message: str) -> None:
    with pytest.raises(AuditVerifyError, match=message):
        verify_inclusion(*args)


@pytest.mark.parametrize(("args", "message"), [
    ((5, 4, [], TREE.root(5), TREE.root(4)), "size1 5 is not between 0 and size2 4"),
    ((0, 4, [], EMPTY_ROOT, TREE.root(4)), "from the empty tree"),
    ((4, 4, [LEAVES[0]], TREE.root(4), TREE.root(4)), "sizes are equal .4. but the proof is not empty"),
    ((4, 4, [], TREE.root(4), TREE.root(3)), "two different roots for the same size 4"),
    ((3, 7, [], TREE.root(3), TREE.root(7)), "proof has 0 hashes, expected 4"),
    ((3, 7, TREE.consistency_proof(3, 7), TREE.root(4), TREE.root(7)), "does not lead to root1"),
    ((3, 7, TREE.consistency_proof(3, 7), TREE.root(3), TREE.root(6)), "does not lead to root2"),
])
def test_consistency_failures_say_what_failed(args: tuple, message: str) -> None:
    with pytest.raises(AuditVerifyError, match=message):
        verify_consistency(*args)


# == checkpoints (C2SP tlog-checkpoint in signed notes) ==================================

# The reference key and signature from golang.org/x/mod/sumdb/note's tests.
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_TEXT = b"If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
GO_SIG = "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="
ORIGIN = "appliance.example/audit"


def _signer(name: str = ORIGIN, seed: int = 1) -> Signer:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Signer(name, Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32))


SIGNER = _signer()
CHECKPOINT = Checkpoint(ORIGIN, 300, TREE.root())


def test_sign_and_open_round_trip() -> None:
    note = CHECKPOINT.sign(SIGNER)
    b64_root = base64.b64encode(TREE.root()).decode()
    assert re.fullmatch(
        rf"{ORIGIN}\n300\n{re.escape(b64_root)}\n\n\u2014 {ORIGIN} [A-Za-z0-9+/]{{91}}=\n", note.decode()
    )
    assert open_checkpoint(note, SIGNER.verifier) == CHECKPOINT
    assert open_checkpoint(note, SIGNER.verifier, origin=ORIGIN) == CHECKPOINT
    with pytest.raises(CheckpointError, match="is for log"):
        open_checkpoint(note, SIGNER.verifier, origin="other.example/log")


def test_key_id_known_answer() -> None:
    public = SIGNER.verifier.public_key
    want = hashlib.sha256(ORIGIN.encode() + b"\x0a" + b"\x01" + public).digest()[:4]
    assert key_id(ORIGIN, public) == SIGNER.key_id == want
    note = CHECKPOINT.sign(SIGNER)
    assert b64(note.decode().rsplit(" ", 1)[1])[:4] == want
    # the Go reference key: its published key ID c74f20a3 is what the definition gives
    go_public = b64(GO_VKEY.split("+", 2)[2])[1:]
    assert hashlib.sha256(b"PeterNeumann\n\x01" + go_public).digest()[:4].hex() == "c74f20a3"
    assert key_id("PeterNeumann", go_public).hex() == "c74f20a3"


def test_go_reference_key_and_signature(tmp_path: Path) -> None:
    key_file = tmp_path / "skey"
    key_file.write_text(GO_SKEY + "\n")
    key_file.chmod(0o600)
    signer = load_signer(key_file)
    assert signer.vkey == GO_VKEY == verifier_from_vkey(GO_VKEY).vkey
    assert base64.b64encode(signer.key_id + signer.sign(GO_TEXT)).decode() == GO_SIG
    # the Go note verifies, then is refused because its text is not a checkpoint
    go_note = GO_TEXT + f"\n\u2014 PeterNeumann {GO_SIG}\n".encode()
    with pytest.raises(CheckpointError, match="tree size"):
        open_checkpoint(go_note, verifier_from_vkey(GO_VKEY))


def test_vkey_round_trip_and_manglings() -> None:
    vkey = SIGNER.vkey
    assert vkey.startswith(f"{ORIGIN}+{SIGNER.key_id.hex()}+")
    again = verifier_from_vkey(vkey)
    assert (again.name, again.public_key, again.key_id) == (ORIGIN, SIGNER.verifier.public_key, SIGNER.key_id)
    name, hex_id, key = vkey.split("+", 2)
    for bad in [f"{name}+{hex_id}", f"{name}+00000000+{key}", f"other+{hex_id}+{key}", f"{name}+{hex_id}+{key[:-4]}",
                f"{name}+{hex_id.upper()}+{key}", f"{name}+{hex_id}+B{key[1:]}", f"+{hex_id}+{key}"]:
        with pytest.raises(CheckpointError):
            verifier_from_vkey(bad)


def _tamper(note: bytes, old: bytes, new: bytes) -> bytes:
    assert note.count(old) >= 1
    return note.replace(old, new, 1)


def test_tampering_with_any_part_is_rejected() -> None:
    note = CHECKPOINT.sign(SIGNER)
    body, sig_line = note.split(b"\n\n")
    other_root = base64.b64encode(TREE.root(299))
    sig_b64 = sig_line.split(b" ")[-1].strip()
    sig = b64(sig_b64)
    flipped = base64.b64encode(sig[:10] + bytes([sig[10] ^ 1]) + sig[11:])
    for bad in [
        _tamper(note, ORIGIN.encode(), b"appliance.example/audiT"),
        _tamper(note, b"\n300\n", b"\n301\n"),
        _tamper(note, base64.b64encode(TREE.root()), other_root),
        body + b"\n\n" + sig_line.replace(sig_b64, flipped),
    ]:
        with pytest.raises(CheckpointError, match="does not verify"):
            open_checkpoint(bad, SIGNER.verifier)


def test_unknown_key_is_not_enough() -> None:
    stranger = _signer(seed=2)  # same name, different key: a different key ID
    with pytest.raises(CheckpointError, match=f"not signed by {ORIGIN}"):
        open_checkpoint(CHECKPOINT.sign(stranger), SIGNER.verifier)
    witness = _signer("witness.example/w1", seed=3)
    both = CHECKPOINT.sign(witness) + CHECKPOINT.sign(SIGNER).split(b"\n\n")[1]
    assert open_checkpoint(both, SIGNER.verifier) == CHECKPOINT  # unknown signatures are ignored


@pytest.mark.parametrize(("note", "message"), [
    (CHECKPOINT.sign(SIGNER).replace(b"audit\n", b"audit\r\n", 1), "control character U\\+000D"),
    (CHECKPOINT.sign(SIGNER).replace(b"appliance", b"app\x1bliance", 1), "control character U\\+001B"),
    (CHECKPOINT.sign(SIGNER).replace(b"appliance", b"app\tliance", 1), "control character U\\+0009"),
    (CHECKPOINT.sign(SIGNER).replace(b"appliance", b"app\x00liance", 1), "control character U\\+0000"),
    (CHECKPOINT.sign(SIGNER).replace(b"appliance", "app\u0085liance".encode(), 1), "control character U\\+0085"),
    (CHECKPOINT.sign(SIGNER).replace(b"appliance", b"app\xffliance", 1), "not valid UTF-8"),
    (CHECKPOINT.sign(SIGNER).replace(b"\n\n", b"\n", 1), "no blank line"),
    (CHECKPOINT.sign(SIGNER) + b"\n", "no blank line"),
    (CHECKPOINT.sign(SIGNER)[:-1], "no blank line"),
    (CHECKPOINT.sign(SIGNER).replace("\u2014 ".encode(), b"- ", 1), "signature line 1 is not"),
    (CHECKPOINT.sign(SIGNER).replace(f"{ORIGIN} ".encode(), f"{ORIGIN}  ".encode(), 1), "signature line 1 is not"),
    (CHECKPOINT.sign(SIGNER)[:-3] + b"!=\n", "signature 1 is not valid base64"),
    (CHECKPOINT.sign(SIGNER) + "\u2014 x AAAA\n".encode(), "signature 2 is too short"),
    (CHECKPOINT.sign(SIGNER) + "\u2014 x AAAAAA==\n".encode() * 100, "more than 100"),
])
def test_malformed_notes_are_rejected(note: bytes, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        open_checkpoint(note, SIGNER.verifier)


@pytest.mark.parametrize(("body", "message"), [
    (f"{ORIGIN}\n0300\n{{root}}\n", "without leading zeros"),
    (f"{ORIGIN}\n+300\n{{root}}\n", "without leading zeros"),
    (f"{ORIGIN}\n３00\n{{root}}\n", "without leading zeros"),
    (f"{ORIGIN}\n300\n{{root}}=\n", "not valid base64"),
    (f"{ORIGIN}\n300\nAAAA\n", "root hash is 3 bytes"),
    ("\n300\n{root}\n", "origin '' must be"),
    (f"{ORIGIN}\n300\n", "needs origin, tree size and root"),
    (f"{ORIGIN}\n300\n{{root}}\n\nextension\n", "extension line '' must be"),
])
def test_bodies_are_parsed_strictly_after_the_signature(body: str, message: str) -> None:
    text = body.replace("{root}", base64.b64encode(TREE.root()).decode()).encode()
    sig = base64.b64encode(SIGNER.key_id + SIGNER.sign(text)).decode()
    with pytest.raises(CheckpointError, match=message):
        open_checkpoint(text + f"\n\u2014 {ORIGIN} {sig}\n".encode(), SIGNER.verifier)


def test_extension_lines_are_allowed_and_kept() -> None:
    cp = Checkpoint(ORIGIN, 3, TREE.root(3), ("ext one",))
    assert open_checkpoint(cp.sign(SIGNER), SIGNER.verifier) == cp


def test_size_limit_on_notes() -> None:
    note = CHECKPOINT.sign(SIGNER)
    assert open_checkpoint(note, SIGNER.verifier, max_bytes=len(note)) == CHECKPOINT
    with pytest.raises(CheckpointError, match="above the limit"):
        open_checkpoint(note, SIGNER.verifier, max_bytes=len(note) - 1)


def test_checkpoint_values_are_validated() -> None:
    with pytest.raises(CheckpointError, match="root hash is 3 bytes"):
        Checkpoint(ORIGIN, 1, b"abc")
    with pytest.raises(CheckpointError, match="origin"):
        Checkpoint("two\nlines", 1, EMPTY_ROOT)
    with pytest.raises(CheckpointError, match="tree size -1"):
        Checkpoint(ORIGIN, -1, EMPTY_ROOT)
    with pytest.raises(CheckpointError, match="key name"):
        Verifier("has space", bytes(32))
    with pytest.raises(CheckpointError, match="key name"):
        Verifier("a+b", bytes(32))


def test_same_size_different_roots_is_a_fork() -> None:
    a = Checkpoint(ORIGIN, 10, TREE.root(10))
    forked = Checkpoint(ORIGIN, 10, root([leaf_hash(b"forged %d" % i) for i in range(10)]))
    # each is individually valid...
    assert open_checkpoint(a.sign(SIGNER), SIGNER.verifier) == a
    assert open_checkpoint(forked.sign(SIGNER), SIGNER.verifier) == forked
    # ...but together they prove the log forked
    with pytest.raises(AuditVerifyError, match="forked: two different roots signed for size 10"):
        same_tree(a, forked)
    same_tree(a, a)
    with pytest.raises(AuditVerifyError, match="sizes are equal .10. but the proof is not empty"):
        same_tree(a, a, [TREE.root(10)])


def test_same_tree_across_sizes() -> None:
    old, new = Checkpoint(ORIGIN, 10, TREE.root(10)), Checkpoint(ORIGIN, 25, TREE.root(25))
    same_tree(old, new, TREE.consistency_proof(10, 25))
    same_tree(Checkpoint(ORIGIN, 0, EMPTY_ROOT), new)
    with pytest.raises(AuditVerifyError, match="does not lead to root2"):
        same_tree(old, Checkpoint(ORIGIN, 25, TREE.root(24)), TREE.consistency_proof(10, 25))
    with pytest.raises(CheckpointError, match="shrank from 25 to 10"):
        same_tree(new, old)
    with pytest.raises(CheckpointError, match="different logs"):
        same_tree(old, Checkpoint("other", 25, TREE.root(25)), TREE.consistency_proof(10, 25))
    with pytest.raises(AuditVerifyError, match="empty-tree root"):
        same_tree(Checkpoint(ORIGIN, 0, TREE.root(1)), new)


# -- key files ---------------------------------------------------------------------------


def test_generated_key_file_is_private(tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "audit.key"
    signer = generate_key(key_file, ORIGIN)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    assert [p.name for p in key_file.parent.iterdir()] == ["audit.key"]  # no temp file left
    loaded = load_signer(key_file)
    assert (loaded.name, loaded.vkey) == (ORIGIN, signer.vkey)
    assert open_checkpoint(CHECKPOINT.sign(loaded), verifier_from_vkey(signer.vkey)) == CHECKPOINT
    with pytest.raises(AuditError, match="already exists"):
        generate_key(key_file, ORIGIN)


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    key_file = tmp_path / "audit.key"
    generate_key(key_file, ORIGIN)
    key_file.chmod(0o644)
    with pytest.raises(AuditError, match=f"mode 0644, readable by others: run chmod 600 {key_file}"):
        load_signer(key_file)
    key_file.chmod(0o640)
    with pytest.raises(AuditError, match="chmod 600"):
        load_signer(key_file)


def test_bad_key_files_are_refused(tmp_path: Path) -> None:
    key_file = tmp_path / "audit.key"
    with pytest.raises(AuditError, match="cannot open key file"):
        load_signer(key_file)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, GO_SKEY.replace("c74f20a3", "c74f20a4").encode())
    os.close(fd)
    with pytest.raises(AuditError, match="key ID c74f20a4 does not match"):
        load_signer(key_file)
    key_file.write_text("-----BEGIN PRIVATE KEY-----\n")
    with pytest.raises(AuditError, match="does not start with PRIVATE"):
        load_signer(key_file)
    link = tmp_path / "link.key"
    link.symlink_to(key_file)
    with pytest.raises(AuditError, match="cannot open key file"):
        load_signer(link)


def test_a_key_created_by_another_process_meanwhile_is_never_replaced(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Two first starts at once: the one that checks first but writes second must not
    replace the other's key (it used to rename over it), and the log ends up on the winner's key."""
    import appliance.audit.log as log_module
    from appliance.audit.log import AuditLog

    root = tmp_path / "audit"
    root.mkdir(mode=0o700)
    key_file = root / "log.key"
    winner: list = []
    real = log_module.generate_key

    def racing(path: Path, name: str):  # noqa: ANN202
        winner.append(real(path, "other-process.local/audit"))  # lands between our check and our write
        return real(path, name)

    monkeypatch.setattr(log_module, "generate_key", racing)
    log = AuditLog(root, durable=False)
    try:
        assert log.signer.vkey == winner[0].vkey and log.origin == "other-process.local/audit"
        assert load_signer(key_file).vkey == winner[0].vkey
        assert sorted(p.name for p in root.iterdir() if p.name.startswith(".log.key")) == []  # no temp left
    finally:
        log.close()
