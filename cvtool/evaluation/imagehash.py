"""Image fingerprints and the search for twins, in numpy: exact, perceptual and feature neighbours.

- **Exact**: BLAKE2b of the decoded pixels converted to 8-bit RGB, with the size. Any lossless
  re-encoding (PNG re-saved, BMP, a grayscale PNG of gray RGB pixels) hashes the same; a JPEG of
  the same picture does not (JPEG is lossy), which is what "near" is for.
- **pHash** (64 bits): the image in grayscale, resized to 32×32 (Lanczos), 2-D DCT-II, the 8×8
  lowest frequencies, one bit per coefficient above their median. It is the ImageHash library's
  `phash`, bit for bit (tests/test_audit.py). The first coefficient is the most significant bit.
- **Thumbnail**: the same 32×32 image averaged down to 8×8. On small, centred images (28×28
  Fashion-MNIST) 64 bits only describe the silhouette: 177,334 pairs of different images hashed
  within 4 bits there; requiring the thumbnails to agree too (mean |Δ| ≤ 3 levels) left 352, while
  JPEG re-encodes and small resizes stay below 3 (bench/RESULTS.md).

Near pairs are found by multi-index hashing, never by comparing all pairs: the 64 bits are split
into d + 1 bands (bit b goes to band b mod (d + 1), so each band samples every frequency). Two
hashes within d bits of each other agree exactly on at least one band (pigeonhole), so the
candidates are the pairs that share a band value; each is verified, and kept only in the first
band the two share, so every pair comes out once. Feature neighbours come from blocked products
of L2-normalised rows, one tile at a time. Memory stays linear in the number of images: pairs are
yielded in chunks, and `Components` merges them as they come.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

__all__ = [
    "HASH_BITS",
    "MAX_DISTANCE",
    "Components",
    "Fingerprint",
    "cosine_pairs",
    "fingerprint",
    "hamming",
    "near_pairs",
    "phash",
    "thumbnails",
]

HASH_BITS = 64
MAX_DISTANCE = 10  # beyond it bands have under 6 bits: nearly every pair becomes a candidate
_SIDE = 32  # pHash resize
_LOW = 8  # 8×8 low frequencies; also the thumbnail size
# Unnormalised DCT-II rows, as scipy.fftpack.dct (ImageHash's): only their signs against the
# median matter, so any positive scale gives the same bits.
_DCT = 2 * np.cos(np.pi * np.arange(_LOW)[:, None] * (2 * np.arange(_SIDE)[None, :] + 1) / (2 * _SIDE))


@dataclass(frozen=True)
class Fingerprint:
    """What one decoded image contributes: the exact digest and its 32×32 grayscale version."""

    digest: bytes  # 16 bytes
    gray: np.ndarray  # (32, 32) uint8


def fingerprint(img: Image.Image) -> Fingerprint:
    """Digest of the RGB pixels (size included) and the 32×32 Lanczos grayscale image."""
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{rgb.width}x{rgb.height};".encode())
    h.update(rgb.tobytes())
    gray = rgb.convert("L").resize((_SIDE, _SIDE), Image.Resampling.LANCZOS)
    return Fingerprint(h.digest(), np.asarray(gray, dtype=np.uint8))


def phash(gray: np.ndarray) -> np.ndarray:
    """(N, 32, 32) grayscale → (N,) uint64 perceptual hashes."""
    g = np.asarray(gray, dtype=np.float64).reshape(-1, _SIDE, _SIDE)
    coeffs = (_DCT @ g @ _DCT.T).reshape(len(g), _LOW * _LOW)
    # Rounding noise where the exact coefficient is 0 (flat images): 0, as scipy's DCT gives.
    coeffs[np.abs(coeffs) < 1e-6] = 0.0
    bits = coeffs > np.median(coeffs, axis=1, keepdims=True)
    return np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64)


def thumbnails(gray: np.ndarray) -> np.ndarray:
    """(N, 32, 32) grayscale → (N, 64) float32: means of 4×4 blocks, in grey levels (0-255)."""
    g = np.asarray(gray, dtype=np.float32).reshape(-1, _LOW, _SIDE // _LOW, _LOW, _SIDE // _LOW)
    return g.mean(axis=(2, 4)).reshape(len(g), _LOW * _LOW)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits that differ between uint64 hashes, elementwise."""
    return np.bitwise_count(np.bitwise_xor(a, b)).astype(np.int64)


def _band_masks(max_distance: int) -> list[np.uint64]:
    bands = max_distance + 1
    masks = [0] * bands
    for bit in range(HASH_BITS):  # bit 0 is the most significant (the first DCT coefficient)
        masks[bit % bands] |= 1 << (HASH_BITS - 1 - bit)
    return [np.uint64(m) for m in masks]


def near_pairs(
    hashes: np.ndarray, max_distance: int, chunk: int = 1 << 20
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Every pair (i < j) of `hashes` within `max_distance` bits, once, as (i, j, distance) chunks.

    Exactly the pairs an all-pairs comparison finds (tests/test_audit.py), without forming them:
    the candidates are the pairs in the same bucket of some band.
    """
    if not 0 <= max_distance <= MAX_DISTANCE:
        raise ValueError(f"max_distance must be in [0, {MAX_DISTANCE}], got {max_distance}")
    h = np.asarray(hashes, dtype=np.uint64)
    masks = _band_masks(max_distance)
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    pending = 0
    for b, mask in enumerate(masks):
        keys = h & mask
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        sizes = np.diff(np.r_[starts, len(h)])
        bucket_size = np.repeat(sizes, sizes)
        position = np.arange(len(h)) - np.repeat(starts, sizes)  # rank inside its bucket
        live = np.flatnonzero(bucket_size > 1)
        offset = 1
        # Pair each element with the one `offset` places later in its bucket: all pairs of a
        # bucket of m come out in m - 1 rounds, each round one vector operation.
        while len(live):
            live = live[position[live] + offset < bucket_size[live]]
            if not len(live):
                break
            a, c = order[live], order[live + offset]
            x = h[a] ^ h[c]
            keep = np.bitwise_count(x) <= max_distance
            for earlier in masks[:b]:  # found already in the first band they share
                keep &= (x & earlier) != 0
            if keep.any():
                a, c, x = a[keep], c[keep], x[keep]
                found.append((np.minimum(a, c), np.maximum(a, c), np.bitwise_count(x).astype(np.int64)))
                pending += len(x)
                if pending >= chunk:
                    yield _concat(found)
                    found, pending = [], 0
            offset += 1
    if found:
        yield _concat(found)


def cosine_pairs(
    features: np.ndarray, threshold: float, block: int = 2048
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Every pair (i < j) of rows with cosine similarity ≥ `threshold`, as (i, j, similarity) chunks.

    One block×block tile of the similarity matrix exists at a time (16 MiB at the default).
    Rows of zeros have no direction and pair with nothing.
    """
    x = np.asarray(features, dtype=np.float32).reshape(len(features), -1)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    n = len(x)
    for r0 in range(0, n, block):
        rows = x[r0 : r0 + block]
        out: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for c0 in range(r0, n, block):
            sim = rows @ x[c0 : c0 + block].T
            i, j = np.nonzero(sim >= threshold)
            i, j = i + r0, j + c0
            keep = i < j  # the upper triangle: each pair once, never an image with itself
            if keep.any():
                out.append((i[keep], j[keep], sim[i[keep] - r0, j[keep] - c0].astype(np.float64)))
        if out:
            yield _concat(out)


def _concat(
    parts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    i, j, v = (np.concatenate(col) for col in zip(*parts, strict=True))
    return i, j, v


class Components:
    """Connected components of n items under pairs merged in chunks (union-find, vectorised)."""

    def __init__(self, n: int):
        self._root = np.arange(n)

    def merge(self, i: np.ndarray, j: np.ndarray) -> None:
        """Join the components of i[k] and j[k] for every k."""
        root = self._root
        while len(i):
            ri, rj = self._find(i), self._find(j)
            differ = ri != rj
            if not differ.any():
                return
            lo, hi = np.minimum(ri, rj)[differ], np.maximum(ri, rj)[differ]
            # Hook each larger root under the smallest root it meets; a root hooked twice in one
            # round keeps one of its partners, the rest are joined in the next round.
            np.minimum.at(root, hi, lo)
            i, j = i[differ], j[differ]

    def _find(self, items: np.ndarray) -> np.ndarray:
        root = self._root
        r = root[items]
        while True:
            up = root[r]
            if np.array_equal(up, r):
                root[items] = r  # path compression: the next find is one step
                return r
            r = up

    def labels(self) -> np.ndarray:
        """(n,) the smallest item of each item's component."""
        root = self._root
        while True:
            up = root[root]
            if np.array_equal(up, root):
                return root.copy()
            root[:] = up
