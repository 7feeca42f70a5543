"""Canonical JSON (RFC 8785, JCS): one byte string per value, so hashes are reproducible.

An audit entry is hashed into the Merkle tree as bytes. The appliance and an officer's
verifier must produce the same bytes from the same value, on any machine and in any
language, so the encoding is RFC 8785: keys sorted by UTF-16 code units, no whitespace,
minimal string escapes and ECMAScript number formatting. Anything that has no single
JSON form (NaN, integers a double cannot hold exactly, bytes, sets) is refused rather
than silently converted. Strings are not Unicode-normalised: JCS emits them as given.
"""

from __future__ import annotations

import json
import json.encoder
import math
import re
from collections.abc import Callable, Iterable
from decimal import Decimal

from appliance.errors import AuditError, AuditVerifyError

__all__ = ["MAX_CANONICAL_BYTES", "MAX_SAFE_INTEGER", "canonical_json", "parse_canonical"]

MAX_CANONICAL_BYTES = 1 << 20
MAX_SAFE_INTEGER = 2**53 - 1
"""Largest integer every JSON reader (an IEEE double) holds exactly and unambiguously."""

_ESCAPES = {c: f"\\u{c:04x}" for c in range(0x20)}  # RFC 8785 section 3.2.2.2: only these
_ESCAPES.update({ord('"'): '\\"', ord("\\"): "\\\\", 8: "\\b", 12: "\\f", 10: "\\n", 13: "\\r", 9: "\\t"})


def canonical_json(value: object, max_bytes: int = MAX_CANONICAL_BYTES) -> bytes:
    """Return the RFC 8785 encoding of ``value`` (dict, list/tuple, str, int, float, bool, None).

    Raises :class:`AuditError` naming the offending type or value, or when the encoding
    would exceed ``max_bytes``.
    """
    parts: list[str] = []
    try:
        _encode(value, parts)
    except RecursionError as exc:
        raise AuditError("value is nested too deeply to encode as canonical JSON") from exc
    try:
        data = "".join(parts).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise AuditError(f"string contains a lone surrogate at position {exc.start}: not valid Unicode") from exc
    if len(data) > max_bytes:
        raise AuditError(f"canonical JSON is {len(data)} bytes, above the limit of {max_bytes}")
    return data


def parse_canonical(data: bytes, max_bytes: int = MAX_CANONICAL_BYTES) -> object:
    """Parse ``data`` and check it is exactly the canonical encoding of what it holds.

    A verifier must reject an entry whose bytes are not canonical: otherwise two
    different byte strings (and leaf hashes) could stand for the same record.
    """
    if len(data) > max_bytes:
        raise AuditVerifyError(f"entry is {len(data)} bytes, above the limit of {max_bytes}")
    data = bytes(data)
    value = _parse_fast(data)
    return value if value is not _SLOW else _parse_strict(data, max_bytes)


class _NotFast(Exception):
    """Raised inside the fast path for anything it does not decide itself."""


def _refuse_fast(_text: str) -> object:
    raise _NotFast


def _safe_int(text: str) -> int:
    value = int(text)
    if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
        raise _NotFast
    return value


def _c_encoder() -> Callable[[object, int], Iterable[str]] | None:
    """The json module's C encoder: compact, keys sorted, non-ASCII as is (None without the C module)."""
    try:  # arguments: markers, default, encoder, indent, separators, sort_keys, skipkeys, allow_nan
        return json.encoder.c_make_encoder(None, None, json.encoder.c_encode_basestring, None,  # type: ignore
                                           ":", ",", True, False, False)
    except (TypeError, AttributeError):
        return None


_SLOW = object()
_FAST_DECODER = json.JSONDecoder(parse_float=_refuse_fast, parse_int=_safe_int, parse_constant=_refuse_fast)
_FAST_ENCODER = _c_encoder()
_ASTRAL = re.compile(rb"[\xf0-\xff]")  # lead bytes of 4-byte UTF-8: characters beyond U+FFFF


def _parse_fast(data: bytes) -> object:
    """The common case at C speed; ``_SLOW`` for anything else, which the strict path then decides.

    Accepts only when the value holds no float (the float parser sends any to the
    strict path), every integer is within ±(2**53 - 1) (likewise the int parser), no
    character lies beyond U+FFFF (so sorting keys by code point, as the json module
    does, is the same as sorting by UTF-16 code units), and the json module's compact,
    sorted, non-ASCII-escaping encoding of the value is exactly ``data``. For such
    values that encoding is byte for byte :func:`canonical_json`'s (same string
    escapes, same integer form), so acceptance here is acceptance there. A duplicate
    key cannot slip through: the parsed object keeps one member per key, so its
    encoding has fewer members than ``data`` and the strict path then names the key.
    """
    if _FAST_ENCODER is None or not (data.isascii() or _ASTRAL.search(data) is None):
        return _SLOW
    try:
        value, _end = _FAST_DECODER.raw_decode(data.decode("utf-8"))
        if "".join(_FAST_ENCODER(value, 0)).encode("utf-8") == data:
            return value
    except (_NotFast, ValueError, TypeError, RecursionError):  # UnicodeError, JSONDecodeError: ValueError
        pass
    return _SLOW


def _parse_strict(data: bytes, max_bytes: int) -> object:
    try:
        text = bytes(data).decode("utf-8")
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except UnicodeDecodeError as exc:
        raise AuditVerifyError(f"entry is not valid UTF-8 (byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise AuditVerifyError(f"entry is not JSON: {exc.msg} at position {exc.pos}") from exc
    except ValueError as exc:  # e.g. an integer literal beyond Python's digit limit
        raise AuditVerifyError(f"entry is not canonical JSON: {exc}") from exc
    except RecursionError as exc:
        raise AuditVerifyError("entry is nested too deeply") from exc
    except AuditError as exc:
        raise AuditVerifyError(f"entry is not canonical JSON: {exc}") from exc
    try:
        again = canonical_json(value, max_bytes)
    except AuditError as exc:
        raise AuditVerifyError(f"entry is not canonical JSON: {exc}") from exc
    if again != bytes(data):
        at = next((i for i, (a, b) in enumerate(zip(again, data)) if a != b), min(len(again), len(data)))
        raise AuditVerifyError(f"entry is not canonical JSON (first difference at byte {at})")
    return value


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, val in pairs:
        if key in out:
            raise AuditError(f"duplicate key {key!r}")
        out[key] = val
    return out


def _no_constant(name: str) -> object:
    raise AuditError(f"{name} is not a JSON number")


def _encode(value: object, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(_string(value))
    elif isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise AuditError(f"integer {value} is outside ±(2**53 - 1) and has no exact JSON number")
        out.append(int.__repr__(value))
    elif isinstance(value, float):
        out.append(_number(value))
    elif isinstance(value, dict):
        keys = list(value)
        for key in keys:
            if not isinstance(key, str):
                raise AuditError(f"object key {key!r} is a {type(key).__name__}, not a str")
        out.append("{")
        for i, key in enumerate(sorted(keys, key=_utf16_units)):
            out.append("," if i else "")
            out.append(_string(key))
            out.append(":")
            _encode(value[key], out)
        out.append("}")
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for i, item in enumerate(value):
            out.append("," if i else "")
            _encode(item, out)
        out.append("]")
    else:
        raise AuditError(f"cannot encode a {type(value).__name__} as canonical JSON")


def _utf16_units(key: str) -> bytes:
    """Sort key: big-endian UTF-16 bytes compare exactly like UTF-16 code unit sequences."""
    return key.encode("utf-16-be", "surrogatepass")


def _string(s: str) -> str:
    return '"' + s.translate(_ESCAPES) + '"'


def _number(x: float) -> str:
    """ECMAScript Number.prototype.toString for a finite double (ECMA-262 Number::toString)."""
    if not math.isfinite(x):
        raise AuditError(f"{x} is not a JSON number (NaN and Infinity have no JSON form)")
    if x == 0:
        return "0"  # also -0.0
    if x < 0:
        return "-" + _number(-x)
    # repr() gives the shortest digits that round-trip, which is what ECMAScript requires.
    _, digit_tuple, exponent = Decimal(float.__repr__(x)).as_tuple()
    digits = "".join(map(str, digit_tuple)).rstrip("0")
    exponent = int(exponent) + len(digit_tuple) - len(digits)  # account for the stripped zeros
    k = len(digits)
    n = exponent + k  # the value is 0.<digits> * 10**n
    if k <= n <= 21:
        return digits + "0" * (n - k)
    if 0 < n <= 21:
        return digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return "0." + "0" * -n + digits
    e = n - 1
    mantissa = digits if k == 1 else digits[0] + "." + digits[1:]
    return f"{mantissa}e{'+' if e >= 0 else '-'}{abs(e)}"
