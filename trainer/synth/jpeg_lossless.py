"""A small JPEG Lossless (Process 14, first-order prediction, SV1) encoder in numpy.

pydicom has no encoder for 1.2.840.10008.1.2.4.70, and GDCM's writes a 16-bit sample precision
into the frame header whatever Bits Stored is (it follows Bits Allocated).  This one writes
precision = Bits Stored, an optimal Huffman table for the image (ITU T.81 Annex K.2) and no
restart markers.  Checked by decoding with pylibjpeg-libjpeg and GDCM in the tests.
"""

from __future__ import annotations

import numpy as np


def encode_sv1(arr: np.ndarray, precision: int) -> bytes:
    """Encode a 2-D unsigned image whose values fit in `precision` (2..16) bits."""
    if arr.ndim != 2:
        raise ValueError(f"arr must be 2-D, got shape {arr.shape}")
    if not 2 <= precision <= 16:
        raise ValueError(f"precision must be 2..16, got {precision}")
    rows, cols = arr.shape
    x = arr.astype(np.int32)
    if x.min() < 0 or x.max() >= 1 << precision:
        raise ValueError(f"values must be in 0..{(1 << precision) - 1}")
    pred = np.empty_like(x)
    pred[0, 0] = 1 << (precision - 1)
    pred[0, 1:] = x[0, :-1]  # first line: left neighbour
    pred[1:, 0] = x[:-1, 0]  # first column: the sample above
    pred[1:, 1:] = x[1:, :-1]  # SV1: left neighbour (Ra)
    diff = ((x - pred + 0x8000) & 0xFFFF) - 0x8000  # modulo 2**16, signed
    diff = diff.ravel()
    ssss = _BIT_LENGTH[np.abs(diff)]  # difference category; 16 for -32768
    extra_len = np.where(ssss == 16, 0, ssss)
    extra = np.where(diff < 0, diff + (1 << extra_len) - 1, diff) & ((1 << extra_len) - 1)

    bits, huffval = _huffman_table(np.bincount(ssss, minlength=17))
    code, size = _canonical_codes(bits, huffval)
    length = size[ssss] + extra_len
    value = (code[ssss] << extra_len) | extra
    data = _pack(value, length)

    header = bytearray(b"\xff\xd8")
    header += b"\xff\xc3" + _u16(11) + bytes([precision]) + _u16(rows) + _u16(cols) + b"\x01\x01\x11\x00"
    header += b"\xff\xc4" + _u16(2 + 1 + 16 + len(huffval)) + b"\x00" + bytes(bits[1:17]) + bytes(huffval)
    header += b"\xff\xda" + _u16(8) + b"\x01\x01\x00" + b"\x01\x00\x00"  # Ss = 1 (predictor), Se = 0, Al = 0
    return bytes(header) + data + b"\xff\xd9"


_BIT_LENGTH = np.frexp(np.arange(1 << 16 | 1, dtype=np.float64))[1].astype(np.int64)


def _u16(v: int) -> bytes:
    return int(v).to_bytes(2, "big")


def _huffman_table(freq: np.ndarray) -> tuple[list[int], list[int]]:
    """BITS (index 1..16: number of codes of each length) and HUFFVAL, per T.81 Annex K.2."""
    n = len(freq)
    f = [int(v) for v in freq] + [1]  # the reserved all-ones code point
    codesize = [0] * (n + 1)
    others = [-1] * (n + 1)
    while True:
        live = [i for i in range(n + 1) if f[i] > 0]
        if len(live) < 2:
            break
        v1 = min(live, key=lambda i: (f[i], -i))
        v2 = min((i for i in live if i != v1), key=lambda i: (f[i], -i))
        f[v1] += f[v2]
        f[v2] = 0
        for v in (v1, v2):
            codesize[v] += 1
            while others[v] != -1:
                v = others[v]
                codesize[v] += 1
        tail = v1
        while others[tail] != -1:
            tail = others[tail]
        others[tail] = v2
    bits = [0] * 33
    for cs in codesize:
        if cs:
            bits[cs] += 1
    i = 32
    while i > 16:  # Annex K.3: limit code lengths to 16
        if bits[i] > 0:
            j = i - 2
            while bits[j] == 0:
                j -= 1
            bits[i] -= 2
            bits[i - 1] += 1
            bits[j + 1] += 2
            bits[j] -= 1
        else:
            i -= 1
    i = 16
    while bits[i] == 0:
        i -= 1
    bits[i] -= 1  # drop the reserved code point
    huffval = sorted((i for i in range(n) if codesize[i]), key=lambda i: (codesize[i], i))
    return bits[:17], huffval


def _canonical_codes(bits: list[int], huffval: list[int]) -> tuple[np.ndarray, np.ndarray]:
    code = np.zeros(17, np.int64)
    size = np.zeros(17, np.int64)
    c, k = 0, 0
    for length in range(1, 17):
        for _ in range(bits[length]):
            code[huffval[k]], size[huffval[k]] = c, length
            c += 1
            k += 1
        c <<= 1
    return code, size


def _pack(value: np.ndarray, length: np.ndarray) -> bytes:
    """Concatenate big-endian bit strings, pad with 1s, stuff 0x00 after every 0xFF."""
    offset = np.cumsum(length) - length
    total = int(offset[-1] + length[-1]) if len(length) else 0
    nbytes = (total + 7) // 8
    # each code (<= 31 bits) lies in its 32-bit word and, at most, the next one
    word, pos = offset >> 5, offset & 31
    first = np.minimum(length, 32 - pos)
    spill = length - first
    head = (value >> spill) << (32 - pos - first)
    tail = (value & ((1 << spill) - 1)) << (32 - spill)
    nwords = int(word[-1]) + 2 if len(word) else 1
    words = np.bincount(word, weights=head, minlength=nwords) + np.bincount(word + 1, weights=tail, minlength=nwords)
    out = np.frombuffer(words.astype(np.uint32).astype(">u4").tobytes(), np.uint8)[:nbytes].copy()
    if total % 8:
        out[-1] |= (1 << (8 - total % 8)) - 1
    ff = np.flatnonzero(out == 0xFF)
    if len(ff):
        out = np.insert(out, ff + 1, 0)
    return out.tobytes()
