"""Numba kernels that write numbers as ASCII straight into a preallocated uint8 buffer.

Floats: Schubfach (R. Giulietti, "The Schubfach way to render doubles", 2020). For a double
`v = c * 2**q` it picks `k` so that the rounding interval around `v` is at least one and less
than ten units of `10**k` wide, scales `v` and the interval ends by a 126-bit approximation of
`10**-k` (round to odd keeps the comparisons exact), and takes the shortest decimal inside the
interval, the closest one when several have that length. The digits are therefore the ones
Python's `repr` writes, and the layout below copies `repr`'s too: positional notation for
1e-4 <= |v| < 1e16, an exponent otherwise (`0.0001`, `1234.5`, `2.0`, `1e-05`, `1e+16`).

Kernels take float64 values as their int64 bit patterns (callers view the array), so sign,
exponent and significand are read without float arithmetic. Nothing here validates: the
wrappers in `osteotel.floatfmt` and `osteotel.store.lineproto` do. Non-finite values are written
as JSON's extensions `NaN`, `Infinity` and `-Infinity`, which line protocol callers refuse first.
"""

# Kernels take their arrays and scalars positionally: that is the numba calling convention.
# ruff: noqa: PLR0917

import numpy as np
import numpy.typing as npt
from numba import njit

__all__ = [
    "BOOL_WIDTH",
    "FLOAT_WIDTH",
    "INT_WIDTH",
    "KIND_BOOL",
    "KIND_FLOAT",
    "KIND_INT",
]

FLOAT_WIDTH = 24
"""Longest float text, bytes: `-2.2250738585072014e-308`."""
INT_WIDTH = 20
"""Longest int64 text, bytes: `-9223372036854775808`."""
BOOL_WIDTH = 5
"""Longest bool text, bytes: `false`."""

KIND_FLOAT = 0
KIND_INT = 1
KIND_BOOL = 2

# IEEE 754 binary64: 52 stored significand bits, exponent bias 1023, so v = c * 2**q with
# q = biased_exponent - 1075 for normal numbers and q = -1074 for subnormals.
_SIGNIFICAND_BITS = 52
_EXPONENT_MASK = 0x7FF
_HIDDEN_BIT = 1 << 52
_FRACTION_MASK = (1 << 52) - 1
_Q_MIN = -1074
_Q_SHIFT = 1075

# floor(q * log10(2)), floor(q * log10(2) + log10(3/4)) and floor(e * log2(10)) as a multiply
# and shift (constants from the Schubfach paper; checked against exact rationals for
# |q| <= 1100 and |e| <= 400, which covers every double).
_LOG10_2_NUM = 661_971_961_083
_LOG10_3_4_NUM = -274_743_187_321
_LOG10_SHIFT = 41
_LOG2_10_NUM = 913_124_641_741
_LOG2_SHIFT = 38


def _floor_log10_pow2(q: int) -> int:
    return (q * _LOG10_2_NUM) >> _LOG10_SHIFT


def _floor_log10_three_quarters_pow2(q: int) -> int:
    return (q * _LOG10_2_NUM + _LOG10_3_4_NUM) >> _LOG10_SHIFT


def _floor_log2_pow10(e: int) -> int:
    return (e * _LOG2_10_NUM) >> _LOG2_SHIFT


def _powers_of_ten() -> tuple[int, npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    """g = floor(10**e * 2**(125 - floor(log2(10**e)))) + 1 for every e = -k the kernel needs,
    split into its high and low 63 bits; 2**125 <= g < 2**126. Exact big-integer arithmetic."""
    q_all = range(_Q_MIN, _EXPONENT_MASK - _Q_SHIFT + 1)
    ks = {_floor_log10_pow2(q) for q in q_all} | {
        _floor_log10_three_quarters_pow2(q) for q in q_all
    }
    e_min, e_max = -max(ks), -min(ks)
    high = np.empty(e_max - e_min + 1, dtype=np.uint64)
    low = np.empty(e_max - e_min + 1, dtype=np.uint64)
    for index, e in enumerate(range(e_min, e_max + 1)):
        shift = 125 - _floor_log2_pow10(e)
        if e >= 0:
            scaled = 10**e << shift if shift >= 0 else (10**e) >> -shift
        else:
            scaled = (1 << shift) // 10**-e
        g = scaled + 1
        high[index] = g >> 63
        low[index] = g & ((1 << 63) - 1)
    return e_min, high, low


_E_MIN, _G_HIGH, _G_LOW = _powers_of_ten()

_U1 = np.uint64(1)
_U32 = np.uint64(32)
_U63 = np.uint64(63)
_M32 = np.uint64(0xFFFF_FFFF)
_M63 = np.uint64((1 << 63) - 1)

_ZERO = ord("0")
_DOT = ord(".")
_MINUS = ord("-")
_PLUS = ord("+")
_E = ord("e")
_NAN = np.frombuffer(b"NaN", dtype=np.uint8)
_INFINITY = np.frombuffer(b"Infinity", dtype=np.uint8)
_TRUE = np.frombuffer(b"true", dtype=np.uint8)
_FALSE = np.frombuffer(b"false", dtype=np.uint8)
_SPACE = ord(" ")
_POW10 = np.array([10**i for i in range(19)], dtype=np.int64)
_DIGIT_PAIRS = np.frombuffer("".join(f"{i:02d}" for i in range(100)).encode(), dtype=np.uint8)
_NEWLINE = ord("\n")
_NS_PER_S = 1_000_000_000
_INT_SUFFIX = ord("i")

# Positional notation while the decimal point is within these bounds (Python's repr rule).
_DECPT_MIN_EXCLUSIVE = -4
_DECPT_MAX = 16


@njit(cache=True)
def _mul_128(a: np.uint64, b: np.uint64) -> tuple[np.uint64, np.uint64]:
    # Four 32x32-bit products: no step overflows 64 bits, so numpy scalars (NUMBA_DISABLE_JIT)
    # give the same result without overflow warnings.
    a_lo = a & _M32
    a_hi = a >> _U32
    b_lo = b & _M32
    b_hi = b >> _U32
    p0 = a_lo * b_lo
    p1 = a_lo * b_hi
    p2 = a_hi * b_lo
    p3 = a_hi * b_hi
    mid = (p0 >> _U32) + (p1 & _M32) + (p2 & _M32)
    high = p3 + (p1 >> _U32) + (p2 >> _U32) + (mid >> _U32)
    low = ((mid & _M32) << _U32) | (p0 & _M32)
    return high, low


@njit(cache=True)
def _round_to_odd(g_high: np.uint64, g_low: np.uint64, cp: int) -> int:
    # floor(g * cp / 2**127), with its lowest bit set when the remainder is not zero.
    cp_u = np.uint64(cp)
    x_high, _ = _mul_128(g_low, cp_u)
    y_high, y_low = _mul_128(g_high, cp_u)
    z = (y_low >> _U1) + x_high
    vbp = y_high + (z >> _U63)
    # Through int64 first: numba mixes uint64 with int64 into float64, which would lose bits.
    return int(np.int64(vbp | (((z & _M63) + _M63) >> _U63)))


@njit(cache=True)
def _shortest(c: int, q: int, regular: bool) -> tuple[int, int]:
    """Shortest decimal f * 10**k in the rounding interval of c * 2**q (c > 0), closest to it."""
    odd = c & 1
    cb = c << 2
    cbr = cb + 2
    if regular:
        cbl = cb - 2
        k = (q * _LOG10_2_NUM) >> _LOG10_SHIFT
    else:
        # c is a power of two above the smallest normal: the gap below is half the gap above.
        cbl = cb - 1
        k = (q * _LOG10_2_NUM + _LOG10_3_4_NUM) >> _LOG10_SHIFT
    h = q + ((-k * _LOG2_10_NUM) >> _LOG2_SHIFT) + 2
    g_high = _G_HIGH[-k - _E_MIN]
    g_low = _G_LOW[-k - _E_MIN]
    # v, and the interval ends, in units of 10**k / 4.
    vb = _round_to_odd(g_high, g_low, cb << h)
    vbl = _round_to_odd(g_high, g_low, cbl << h)
    vbr = _round_to_odd(g_high, g_low, cbr << h)
    # Interval ends count only when c is even (round half to even on parsing).
    vbl += odd
    vbr -= odd
    s = vb >> 2
    # One digit fewer: the interval is narrower than 10 units, so at most one multiple of 10.
    sp10 = 10 * (s // 10)
    tp10 = sp10 + 10
    upin = vbl <= sp10 << 2
    wpin = tp10 << 2 <= vbr
    if upin != wpin:
        return (sp10 if upin else tp10), k
    t = s + 1
    uin = vbl <= s << 2
    win = t << 2 <= vbr
    if uin != win:
        return (s if uin else t), k
    # Both neighbours lie inside: take the closer one, the even one on a tie.
    cmp = vb - ((s + t) << 1)
    return (s if cmp < 0 or (cmp == 0 and (s & 1) == 0) else t), k


@njit(cache=True)
def _decimal(bits: int) -> tuple[int, int]:
    """Digits f and exponent e (no trailing zeros in f) of a finite, nonzero |v| = f * 10**e."""
    biased = (bits >> _SIGNIFICAND_BITS) & _EXPONENT_MASK
    fraction = bits & _FRACTION_MASK
    if biased == 0:
        f, e = _shortest(fraction, _Q_MIN, True)
    else:
        c = fraction | _HIDDEN_BIT
        shift = _Q_SHIFT - biased
        if 0 < shift <= _SIGNIFICAND_BITS and ((c >> shift) << shift) == c:
            # An integer below 2**53: its own digits are the shortest.
            f, e = c >> shift, 0
        else:
            f, e = _shortest(c, biased - _Q_SHIFT, fraction != 0 or biased == 1)
    # Trailing zeros off, eight at a time first: a short decimal (150.23) comes out of
    # Schubfach with up to 16 digits, most of them zeros.
    while f % 100_000_000 == 0:
        f //= 100_000_000
        e += 8
    if f % 10_000 == 0:
        f //= 10_000
        e += 4
    if f % 100 == 0:
        f //= 100
        e += 2
    if f % 10 == 0:
        f //= 10
        e += 1
    return f, e


@njit(cache=True)
def _digit_count(f: int) -> int:
    # Comparisons with a table, no division: 1 for 0..9, 19 for 10**18 and above.
    n = 1
    while n < _POW10.size and f >= _POW10[n]:
        n += 1
    return n


@njit(cache=True)
def _put_digits(f: int, n: int, out: npt.NDArray[np.uint8], pos: int) -> None:
    # The n digits of f (f >= 0) at out[pos:pos + n], written from the last, two per division.
    end = pos + n
    while f >= 100:
        pair = (f % 100) << 1
        f //= 100
        end -= 2
        out[end] = _DIGIT_PAIRS[pair]
        out[end + 1] = _DIGIT_PAIRS[pair + 1]
    if f >= 10:
        pair = f << 1
        end -= 2
        out[end] = _DIGIT_PAIRS[pair]
        out[end + 1] = _DIGIT_PAIRS[pair + 1]
    else:
        end -= 1
        out[end] = _ZERO + f
    # Leading zeros when n asks for more digits than f has (the exponent's `05`).
    while end > pos:
        end -= 1
        out[end] = _ZERO


@njit(cache=True)
def _put_word(word: npt.NDArray[np.uint8], out: npt.NDArray[np.uint8], pos: int) -> int:
    for i in range(word.size):
        out[pos + i] = word[i]
    return pos + word.size


@njit(cache=True)
def _put_float(bits: int, out: npt.NDArray[np.uint8], pos: int) -> int:
    """Write the float64 with bit pattern `bits` at out[pos:]; return the position after it."""
    biased = (bits >> _SIGNIFICAND_BITS) & _EXPONENT_MASK
    fraction = bits & _FRACTION_MASK
    if biased == _EXPONENT_MASK and fraction != 0:
        return _put_word(_NAN, out, pos)
    if bits < 0:
        out[pos] = _MINUS
        pos += 1
    if biased == _EXPONENT_MASK:
        return _put_word(_INFINITY, out, pos)
    if biased == 0 and fraction == 0:
        out[pos] = _ZERO
        out[pos + 1] = _DOT
        out[pos + 2] = _ZERO
        return pos + 3
    f, e = _decimal(bits)
    n = _digit_count(f)
    decpt = n + e  # v = 0.d1 d2 ... dn * 10**decpt
    if decpt <= _DECPT_MIN_EXCLUSIVE or decpt > _DECPT_MAX:
        # d1[.d2...dn]e(+|-)xx: digits written one place right, then d1 moved before the dot.
        _put_digits(f, n, out, pos + 1)
        out[pos] = out[pos + 1]
        if n > 1:
            out[pos + 1] = _DOT
            pos += n + 1
        else:
            pos += 1
        out[pos] = _E
        exponent = decpt - 1
        if exponent < 0:
            out[pos + 1] = _MINUS
            exponent = -exponent
        else:
            out[pos + 1] = _PLUS
        width = 2 if exponent < 100 else 3
        _put_digits(exponent, width, out, pos + 2)
        return pos + 2 + width
    if decpt <= 0:
        # 0.000ddd
        out[pos] = _ZERO
        out[pos + 1] = _DOT
        for i in range(-decpt):
            out[pos + 2 + i] = _ZERO
        pos += 2 - decpt
        _put_digits(f, n, out, pos)
        return pos + n
    if decpt >= n:
        # ddd000.0
        _put_digits(f, n, out, pos)
        pos += n
        for _ in range(decpt - n):
            out[pos] = _ZERO
            pos += 1
        out[pos] = _DOT
        out[pos + 1] = _ZERO
        return pos + 2
    # ddd.ddd: the digits after the point are written one place right, then the dot goes in.
    _put_digits(f, n, out, pos + 1)
    for i in range(decpt):
        out[pos + i] = out[pos + 1 + i]
    out[pos + decpt] = _DOT
    return pos + n + 1


@njit(cache=True)
def _put_int(value: int, out: npt.NDArray[np.uint8], pos: int) -> int:
    """Write an int64 in decimal at out[pos:]; return the position after it."""
    if value < 0:
        out[pos] = _MINUS
        pos += 1
        # -(value + 1) cannot overflow, even for the smallest int64; the last digit is fixed up.
        magnitude = -(value + 1)
        last = magnitude % 10 + 1
        head = magnitude // 10
        if last == 10:
            last = 0
            head += 1
        if head == 0:
            out[pos] = _ZERO + last
            return pos + 1
        n = _digit_count(head)
        _put_digits(head, n, out, pos)
        out[pos + n] = _ZERO + last
        return pos + n + 1
    n = _digit_count(value)
    _put_digits(value, n, out, pos)
    return pos + n


@njit(cache=True)
def _format_floats(
    bits: npt.NDArray[np.int64], separator: npt.NDArray[np.uint8], out: npt.NDArray[np.uint8]
) -> int:
    """Write every value, separated by `separator`, into `out`; return the bytes used."""
    pos = 0
    for i in range(bits.size):
        if i > 0:
            pos = _put_word(separator, out, pos)
        pos = _put_float(bits[i], out, pos)
    return pos


@njit(cache=True)
def _format_ints(
    values: npt.NDArray[np.int64], separator: npt.NDArray[np.uint8], out: npt.NDArray[np.uint8]
) -> int:
    """Write every value, separated by `separator`, into `out`; return the bytes used."""
    pos = 0
    for i in range(values.size):
        if i > 0:
            pos = _put_word(separator, out, pos)
        pos = _put_int(values[i], out, pos)
    return pos


@njit(cache=True)
def _array_lines(
    prefixes: npt.NDArray[np.uint8],
    prefix_starts: npt.NDArray[np.int64],
    segment_ends: npt.NDArray[np.int64],
    keys: npt.NDArray[np.uint8],
    key_starts: npt.NDArray[np.int64],
    kinds: npt.NDArray[np.int64],
    rows: npt.NDArray[np.int64],
    float_bits: npt.NDArray[np.int64],
    ints: npt.NDArray[np.int64],
    bools: npt.NDArray[np.bool_],
    ts_ns: npt.NDArray[np.int64],
    out: npt.NDArray[np.uint8],
    line_ends: npt.NDArray[np.int64],
) -> int:
    """Write one line protocol line per timestamp into `out`; return the bytes used.

    The timestamps come in segments, one series each: segment s holds timestamps
    segment_ends[s - 1]:segment_ends[s] (from 0 for the first), its lines start with the
    prefix prefixes[prefix_starts[s]:prefix_starts[s + 1]], and line_ends[s] gets the position
    in `out` after its last line. Field j has its key text (`,` before all but the first, `=`
    after) at keys[key_starts[j]:key_starts[j + 1]], its kind in kinds[j] and its values in
    row rows[j] of the matrix for that kind.
    """
    pos = 0
    n_fields = kinds.size
    i = 0
    last_seconds, seconds_at, seconds_width = -1, 0, 0
    for s in range(segment_ends.size):
        prefix_start = prefix_starts[s]
        prefix_end = prefix_starts[s + 1]
        while i < segment_ends[s]:
            for b in range(prefix_start, prefix_end):
                out[pos] = prefixes[b]
                pos += 1
            for j in range(n_fields):
                for b in range(key_starts[j], key_starts[j + 1]):
                    out[pos] = keys[b]
                    pos += 1
                kind = kinds[j]
                if kind == KIND_FLOAT:
                    pos = _put_float(float_bits[rows[j], i], out, pos)
                elif kind == KIND_INT:
                    pos = _put_int(ints[rows[j], i], out, pos)
                    out[pos] = _INT_SUFFIX
                    pos += 1
                elif bools[rows[j], i]:
                    pos = _put_word(_TRUE, out, pos)
                else:
                    pos = _put_word(_FALSE, out, pos)
            out[pos] = _SPACE
            pos += 1
            t_ns = ts_ns[i]
            if t_ns >= _NS_PER_S:
                # Whole seconds, then nine digits of nanoseconds: a series' lines mostly share
                # their seconds, whose digits are copied from the line that wrote them last.
                seconds = t_ns // _NS_PER_S
                if seconds != last_seconds:
                    seconds_width = _digit_count(seconds)
                    _put_digits(seconds, seconds_width, out, pos)
                    last_seconds, seconds_at = seconds, pos
                else:
                    for b in range(seconds_width):
                        out[pos + b] = out[seconds_at + b]
                pos += seconds_width
                _put_digits(t_ns - seconds * _NS_PER_S, 9, out, pos)
                pos += 9
            else:
                pos = _put_int(t_ns, out, pos)
            out[pos] = _NEWLINE
            pos += 1
            i += 1
        line_ends[s] = pos
    return pos
