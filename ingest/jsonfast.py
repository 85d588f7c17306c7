"""Numba fast path for the most common batched payload: a JSON array of flat objects of numbers.

``[{"ts": 1700000000000, "water_level": 1.25}, {"ts": ..., "water_level": ...}, ...]``

:func:`parse_flat_arrays` walks the raw bytes of many messages in one call and writes their
readings straight into float64 columns, skipping the Python objects that ``orjson.loads`` and the
per-item loops would build (about two thirds of the decode cost for such messages). It is a
*recogniser*, not a JSON parser: it accepts only a strict, common subset and gives up on a message
(status != 0) at the first thing outside it; the caller then decodes that message on the general
path (orjson), which explains every rejection. So for any message it accepts, the result is
exactly what the general path would produce:

* top level: ``[`` objects ``]`` with JSON whitespace, nothing after the array;
* every object has the same known keys as the first one (in any order), each once, and the same
  number of keys; the profile's timestamp key is in every object;
* keys are plain printable ASCII without escapes; values of known keys are JSON numbers;
  unknown keys may also hold ``true``/``false``/``null`` or plain printable-ASCII strings;
* numbers: integers of up to 18 digits (exact as int64, then rounded to float64 like
  ``float(int)``), and decimals of up to 19 significant digits. A decimal of up to 15 digits with
  an exponent in [-22, 22] is one IEEE multiplication or division by an exact power of ten, which
  is correctly rounded (Clinger's fast path); the others (e.g. ``1.1400000000000001``, the shortest
  text of many computed values) take the Eisel–Lemire method: the 19-digit significand times the
  top 64 bits of 5^q, which is below the exact product by less than one unit of its upper word,
  so the rounding is decided unless the bits below the round bit are all ones or (round bit set)
  all zeros — then it gives up (about 1 number in 250). Either way the value is bit-identical to
  a correctly rounding parser (orjson, Python's ``float``).

Anything else — strings in known keys, nested objects, escapes, non-ASCII, longer mantissas, a
position key, a missing timestamp, duplicate keys — returns a non-zero status for that message.

Rows are written key-major per message (all items of the first key, then the next key), the order
of the general path's column extraction, so downstream order does not depend on which path ran.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

OK = 0
GIVE_UP = 1  # outside the recognised subset: decode on the general path

KEY_TS = -1  # key table code: the profile's timestamp key
KEY_FORBIDDEN = -2  # e.g. a position key: such messages go to the general path

_POW10 = np.array([10.0 ** i for i in range(23)], np.float64)  # all exact in float64

Q_MIN, Q_MAX = -300, 300  # decimal exponents the Eisel-Lemire table covers (others: give up)


def _pow5_table():
    """Top 64 bits of 5^q scaled into [2^127, 2^128), truncated, and b_q = floor(log2(5^q)),
    for q in [Q_MIN, Q_MAX] — exact integer arithmetic."""
    hi = np.empty(Q_MAX - Q_MIN + 1, np.uint64)
    b = np.empty(Q_MAX - Q_MIN + 1, np.int64)
    for i, q in enumerate(range(Q_MIN, Q_MAX + 1)):
        if q >= 0:
            num, den = 5 ** q, 1
        else:
            num, den = 1, 5 ** -q
        bq = num.bit_length() - den.bit_length()  # floor(log2(num/den)) is bq or bq - 1
        if (num << max(0, -bq)) < (den << max(0, bq)):
            bq -= 1
        sh = 127 - bq  # T = floor(num * 2^sh / den) in [2^127, 2^128)
        t = (num << sh) // den if sh >= 0 else num // (den << -sh)
        assert (1 << 127) <= t < (1 << 128), q
        hi[i] = t >> 64
        b[i] = bq
    return hi, b


_POW5_HI, _POW5_B = _pow5_table()
_M32 = np.uint64(0xFFFFFFFF)
_U32 = np.uint64(32)


@njit(cache=True, nogil=True)
def _mul_hi_lo(a, b):
    """64 x 64 -> 128-bit product of two uint64, as (high, low) uint64."""
    a_lo = a & _M32
    a_hi = a >> _U32
    b_lo = b & _M32
    b_hi = b >> _U32
    p0 = a_lo * b_lo
    p1 = a_lo * b_hi
    p2 = a_hi * b_lo
    p3 = a_hi * b_hi
    mid = (p0 >> _U32) + (p1 & _M32) + (p2 & _M32)
    hi = p3 + (p1 >> _U32) + (p2 >> _U32) + (mid >> _U32)
    lo = (mid << _U32) | (p0 & _M32)
    return hi, lo


@njit(cache=True, nogil=True)
def _eisel_lemire(w, q, pow5_hi, pow5_b):
    """w * 10^q (w: nonzero uint64) correctly rounded to float64; ok=False when undecided."""
    if q < Q_MIN or q > Q_MAX:
        return False, 0.0
    lz = 0
    x = w
    for sh in (32, 16, 8, 4, 2, 1):
        if x >> np.uint64(64 - sh) == np.uint64(0):
            x = x << np.uint64(sh)
            lz += sh
    u, _lo = _mul_hi_lo(x, pow5_hi[q - Q_MIN])
    upper = int(u >> np.uint64(63))
    rbits = upper + 9  # bits of u below the 54 kept (53 + the round bit)
    mask = (np.uint64(1) << np.uint64(rbits)) - np.uint64(1)
    rest = u & mask
    m54 = u >> np.uint64(rbits)
    if rest == mask or (rest == np.uint64(0) and (m54 & np.uint64(1)) == np.uint64(1)):
        return False, 0.0  # too close to a rounding boundary (or an exact tie) to decide here
    m53 = (m54 + (m54 & np.uint64(1))) >> np.uint64(1)
    e = 63 + upper - lz + pow5_b[q - Q_MIN] + q
    if m53 == (np.uint64(1) << np.uint64(53)):
        m53 = np.uint64(1) << np.uint64(52)
        e += 1
    if e < -1022 or e > 1023:
        return False, 0.0  # subnormal or overflow: the general path decides
    return True, math.ldexp(float(m53), e - 52)


@njit(cache=True, nogil=True)
def _skip_plain(buf, p, end):
    """Skip an unknown key's non-numeric value: true/false/null or a plain printable-ASCII string.
    Returns the new p, or -1."""
    c = buf[p]
    if c == 34:
        p += 1
        while p < end:
            c = buf[p]
            if c == 34:
                return p + 1
            if c < 32 or c > 126 or c == 92:
                return -1
            p += 1
        return -1
    if c == 116 and p + 4 <= end and buf[p + 1] == 114 and buf[p + 2] == 117 and buf[p + 3] == 101:
        return p + 4
    if c == 110 and p + 4 <= end and buf[p + 1] == 117 and buf[p + 2] == 108 and buf[p + 3] == 108:
        return p + 4
    if c == 102 and p + 5 <= end and buf[p + 1] == 97 and buf[p + 2] == 108 and buf[p + 3] == 115 and buf[p + 4] == 101:
        return p + 5
    return -1


# The hot loop below is one function on purpose: a call between Numba functions costs about
# 20 ns here (more than parsing a short number), so whitespace, keys and numbers are parsed inline.
@njit(cache=True, nogil=True)
def parse_flat_arrays(buf, m_start, m_end, m_vendor, v_k0, v_k1, kbuf, k_off, k_len, k_code,
                      out_ts, out_val, out_spec, out_int, m_row0, m_rows, m_status, tmp_val, tmp_ts, tmp_int,
                      pow10, pow5_hi, pow5_b):
    """Parse messages ``buf[m_start[i]:m_end[i]]`` (key table of vendor ``m_vendor[i]``).
    For each message: ``m_status`` OK or GIVE_UP; when OK its rows are
    ``out_*[m_row0[i] : m_row0[i] + m_rows[i]]``; ``out_int`` says which of the row's timestamp
    (bit 0) and value (bit 1) were JSON integers (for explanations that quote them as sent).
    Returns the total number of rows written."""
    n_msg = m_start.shape[0]
    w = 0
    nkeys = k_code.shape[0]
    slot_of = np.full(nkeys, -1, np.int64)  # key -> column position in the first object
    order = np.empty(nkeys, np.int64)  # column position -> key
    seen = np.zeros(nkeys, np.int64)  # item stamp per key (duplicate detection)
    ten = np.uint64(10)
    for m in range(n_msg):
        m_row0[m] = w
        m_rows[m] = 0
        m_status[m] = GIVE_UP
        v = m_vendor[m]
        k0 = v_k0[v]
        k1 = v_k1[v]
        for k in range(k0, k1):
            slot_of[k] = -1
            seen[k] = -1
        end = m_end[m]
        p = m_start[m]
        while p < end and (buf[p] == 32 or buf[p] == 10 or buf[p] == 13 or buf[p] == 9):
            p += 1
        if p >= end or buf[p] != 91:  # '['
            continue
        p += 1
        while p < end and (buf[p] == 32 or buf[p] == 10 or buf[p] == 13 or buf[p] == 9):
            p += 1
        ncols = 0  # known field keys of the first object
        nkeys_obj = 0  # all keys of the first object
        item = 0
        ok = True
        while ok:  # one object per pass
            if p >= end or buf[p] != 123:  # '{'
                ok = False
                break
            p += 1
            got_keys = 0
            got_cols = 0
            got_ts = False
            while ok:  # one "key": value per pass
                while p < end and (buf[p] == 32 or buf[p] == 10 or buf[p] == 13 or buf[p] == 9):
                    p += 1
                if p >= end or buf[p] != 34:  # '"' (also rejects '{}' and a trailing ',')
                    ok = False
                    break
                p += 1
                ks = p
                while p < end:
                    c = buf[p]
                    if c == 34 or c < 32 or c > 126 or c == 92:
                        break
                    p += 1
                if p >= end or buf[p] != 34:  # control, non-ASCII or an escape in the key
                    ok = False
                    break
                kn = p - ks
                p += 1
                while p < end and (buf[p] == 32 or buf[p] == 10 or buf[p] == 13 or buf[p] == 9):
                    p += 1
                if p >= end or buf[p] != 58:  # ':'
                    ok = False
                    break
                p += 1
                while p < end and (buf[p] == 32 or buf[p] == 10 or buf[p] == 13 or buf[p] == 9):
                    p += 1
                if p >= end:
                    ok = False
                    break
                # which key
                k = -1
                for kk in range(k0, k1):
                    if k_len[kk] == kn:
                        o = k_off[kk]
                        j = 0
                        while j < kn and kbuf[o + j] == buf[ks + j]:
                            j += 1
                        if j == kn:
                            k = kk
                            break
                got_keys += 1
                code = 0
                if k >= 0:
                    code = k_code[k]
                    if code == KEY_FORBIDDEN or seen[k] == item:
                        ok = False
                        break
                    seen[k] = item
                c = buf[p]
                if c == 45 or 48 <= c <= 57:
                    # ---- a JSON number -> x (exact; see the module docstring)
                    neg = False
                    if c == 45:
                        neg = True
                        p += 1
                        if p >= end:
                            ok = False
                            break
                        c = buf[p]
                    mant = np.uint64(0)
                    nd = 0
                    exp10 = 0
                    if c == 48:  # '0'
                        p += 1
                        if p < end and 48 <= buf[p] <= 57:  # leading zero: not JSON
                            ok = False
                            break
                    elif 49 <= c <= 57:
                        while p < end:
                            c = buf[p]
                            if c < 48 or c > 57:
                                break
                            mant = mant * ten + np.uint64(c - 48)
                            nd += 1
                            p += 1
                        if nd > 19:
                            ok = False
                            break
                    else:
                        ok = False
                        break
                    is_int = True
                    if p < end and buf[p] == 46:  # '.'
                        is_int = False
                        p += 1
                        f0 = p
                        while p < end:
                            c = buf[p]
                            if c < 48 or c > 57:
                                break
                            if nd > 0 or c != 48:
                                nd += 1
                            mant = mant * ten + np.uint64(c - 48)
                            p += 1
                        exp10 -= p - f0
                        if p == f0 or nd > 19:
                            ok = False
                            break
                    if p < end and (buf[p] == 101 or buf[p] == 69):  # 'e' 'E'
                        is_int = False
                        p += 1
                        eneg = False
                        if p < end and (buf[p] == 43 or buf[p] == 45):
                            eneg = buf[p] == 45
                            p += 1
                        e0 = p
                        ev = 0
                        while p < end:
                            c = buf[p]
                            if c < 48 or c > 57:
                                break
                            if ev < 100000:
                                ev = ev * 10 + (c - 48)
                            p += 1
                        if p == e0:
                            ok = False
                            break
                        exp10 += -ev if eneg else ev
                    if is_int:
                        if nd > 18:
                            ok = False
                            break
                        im = np.int64(mant)
                        x = float(-im if neg else im)
                    elif mant == np.uint64(0):
                        x = -0.0 if neg else 0.0
                    elif nd <= 15 and -22 <= exp10 <= 22:
                        x = float(mant)
                        if exp10 >= 0:
                            x = x * pow10[exp10]
                        else:
                            x = x / pow10[-exp10]
                        if neg:
                            x = -x
                    else:
                        good, x = _eisel_lemire(mant, exp10, pow5_hi, pow5_b)
                        if not good:
                            ok = False
                            break
                        if neg:
                            x = -x
                    # ---- where it goes
                    if k >= 0:
                        if code == KEY_TS:
                            tmp_ts[item] = x
                            tmp_int[item] = is_int
                            got_ts = True
                        else:
                            sl = slot_of[k]
                            if item == 0:
                                sl = ncols
                                slot_of[k] = sl
                                order[ncols] = k
                                ncols += 1
                            elif sl < 0:
                                ok = False
                                break
                            tmp_val[item * ncols + sl] = x
                            tmp_int[tmp_ts.shape[0] + item * ncols + sl] = is_int
                            got_cols += 1
                else:
                    if k >= 0:  # a known key holds something else than a number
                        ok = False
                        break
                    p = _skip_plain(buf, p, end)
                    if p < 0:
                        ok = False
                        break
                while p < end and (buf[p] == 32 or buf[p] == 10 or buf[p] == 13 or buf[p] == 9):
                    p += 1
                if p < end and buf[p] == 44:  # ','
                    p += 1
                    continue
                if p < end and buf[p] == 125:  # '}'
                    p += 1
                    break
                ok = False
            if not ok:
                break
            if item == 0:
                nkeys_obj = got_keys
                if ncols == 0:
                    ok = False
                    break
            elif got_keys != nkeys_obj or got_cols != ncols:
                ok = False
                break
            if not got_ts:
                ok = False
                break
            item += 1
            while p < end and (buf[p] == 32 or buf[p] == 10 or buf[p] == 13 or buf[p] == 9):
                p += 1
            if p < end and buf[p] == 44:  # ','
                p += 1
                while p < end and (buf[p] == 32 or buf[p] == 10 or buf[p] == 13 or buf[p] == 9):
                    p += 1
                if (item + 1) * ncols > tmp_val.shape[0] or item + 1 > tmp_ts.shape[0]:
                    ok = False
                continue
            if p < end and buf[p] == 93:  # ']'
                p += 1
                while p < end and (buf[p] == 32 or buf[p] == 10 or buf[p] == 13 or buf[p] == 9):
                    p += 1
                if p != end:
                    ok = False
                break
            ok = False
        if not ok:
            continue
        # key-major rows: all items of column 0, then column 1, ...
        n_items = item
        for c in range(ncols):
            spec = k_code[order[c]]
            for i in range(n_items):
                out_ts[w] = tmp_ts[i]
                out_val[w] = tmp_val[i * ncols + c]
                out_spec[w] = spec
                out_int[w] = np.int8(tmp_int[i]) | (np.int8(tmp_int[tmp_ts.shape[0] + i * ncols + c]) << np.int8(1))
                w += 1
        m_rows[m] = w - m_row0[m]
        m_status[m] = OK
    return w


class KeyTable:
    """The vendors' keys in the arrays :func:`parse_flat_arrays` takes."""

    def __init__(self) -> None:
        self.vendor_index: dict[str, int] = {}
        self._keys: list[bytes] = []
        self._codes: list[int] = []
        self._v0: list[int] = []
        self._v1: list[int] = []

    def add_vendor(self, vendor: str, ts_key: str, fields: dict[str, int], forbidden: list[str]) -> None:
        codes: dict[str, int] = dict(fields)
        for k in forbidden:
            codes[k] = KEY_FORBIDDEN
        codes[ts_key] = KEY_FORBIDDEN if ts_key in fields else KEY_TS
        self.vendor_index[vendor] = len(self._v0)
        self._v0.append(len(self._keys))
        for k, code in codes.items():
            self._keys.append(k.encode())
            self._codes.append(code)
        self._v1.append(len(self._keys))

    def freeze(self) -> None:
        self.kbuf = np.frombuffer(b"".join(self._keys) or b"\0", np.uint8).copy()
        self.k_len = np.array([len(k) for k in self._keys], np.int64)
        self.k_off = np.concatenate([[0], np.cumsum(self.k_len)[:-1]]).astype(np.int64) if self._keys else np.zeros(0, np.int64)
        self.k_code = np.array(self._codes, np.int64)
        self.v_k0 = np.array(self._v0, np.int64)
        self.v_k1 = np.array(self._v1, np.int64)


def parse(payloads: list[bytes], vendors: np.ndarray, table: KeyTable):
    """Run :func:`parse_flat_arrays` over ``payloads``. Returns
    (status, row0, rows, ts, val, spec, is_int) — the row arrays trimmed to what was written."""
    n = len(payloads)
    lens = np.fromiter(map(len, payloads), np.int64, n)
    ends = np.cumsum(lens)
    starts = ends - lens
    buf = np.frombuffer(b"".join(payloads), np.uint8)
    total = int(ends[-1]) if n else 0
    longest = int(lens.max()) if n else 0
    cap = total // 4 + 1  # every value takes at least 4 bytes ("k":1)
    out_ts = np.empty(cap, np.float64)
    out_val = np.empty(cap, np.float64)
    out_spec = np.empty(cap, np.int32)
    out_int = np.empty(cap, np.int8)
    row0 = np.empty(n, np.int64)
    rows = np.empty(n, np.int64)
    status = np.empty(n, np.int8)
    tmp_val = np.empty(longest // 4 + 1, np.float64)
    tmp_ts = np.empty(longest // 7 + 1, np.float64)  # every object takes at least 7 bytes ({"t":1})
    tmp_int = np.empty(tmp_ts.shape[0] + tmp_val.shape[0], np.bool_)
    w = parse_flat_arrays(buf, starts, ends, vendors, table.v_k0, table.v_k1, table.kbuf, table.k_off,
                          table.k_len, table.k_code, out_ts, out_val, out_spec, out_int, row0, rows, status,
                          tmp_val, tmp_ts, tmp_int, _POW10, _POW5_HI, _POW5_B)
    return status, row0, rows, out_ts[:w], out_val[:w], out_spec[:w], out_int[:w]
