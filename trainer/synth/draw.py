"""Vectorised 2-D drawing on a float image in normalised coordinates.

``u`` runs left to right and ``v`` top to bottom, both 0..1 over the image.  Every primitive works
only inside its own bounding box, so drawing cost follows the size of the shape, not the image.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

Point = tuple[float, float]


def smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    """0 below `e0`, 1 above `e1` (or the reverse when e0 > e1), smooth in between."""
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


class Canvas:
    """A float32 image plus its normalised pixel-centre coordinates."""

    def __init__(self, rows: int, cols: int):
        self.rows, self.cols = rows, cols
        self.img = np.zeros((rows, cols), np.float32)
        self.u = ((np.arange(cols, dtype=np.float32) + 0.5) / cols)[None, :]
        self.v = ((np.arange(rows, dtype=np.float32) + 0.5) / rows)[:, None]
        self.px = 1.0 / max(rows, cols)  # one pixel in normalised units

    def layer(self) -> np.ndarray:
        return np.zeros_like(self.img)

    def roi(self, u0: float, u1: float, v0: float, v1: float):
        """Slices and coordinate grids of the box [u0,u1]x[v0,v1] (clipped), or None if empty."""
        c0, c1 = max(0, int(u0 * self.cols) - 1), min(self.cols, int(math.ceil(u1 * self.cols)) + 1)
        r0, r1 = max(0, int(v0 * self.rows) - 1), min(self.rows, int(math.ceil(v1 * self.rows)) + 1)
        if c1 <= c0 or r1 <= r0:
            return None
        return (slice(r0, r1), slice(c0, c1)), self.u[:, c0:c1], self.v[r0:r1, :]

    # -- shapes ---------------------------------------------------------------------------------
    def ellipse(self, out: np.ndarray, cu: float, cv: float, ru: float, rv: float, amp: float,
                edge: float = 0.3, angle: float = 0.0, wobble: Sequence[tuple[int, float, float]] = (),
                op: str = "add") -> None:
        """Soft ellipse; `edge` is the fraction of the radius over which it fades out.

        `wobble` = [(k, amplitude, phase)] lobulates the outline by 1 + sum(a*sin(k*theta + phase)).
        """
        grow = 1.0 + sum(abs(a) for _, a, _ in wobble)
        r = max(ru, rv) * grow
        box = self.roi(cu - r, cu + r, cv - r, cv + r)
        if box is None:
            return
        sl, U, V = box
        du, dv = U - cu, V - cv
        if angle:
            c, s = math.cos(angle), math.sin(angle)
            du, dv = du * c + dv * s, -du * s + dv * c
        rr = np.sqrt((du / ru) ** 2 + (dv / rv) ** 2)
        if wobble:
            theta = np.arctan2(dv / rv, du / ru)
            rr = rr / (1.0 + sum(a * np.sin(k * theta + p) for k, a, p in wobble))
        val = amp * smoothstep(1.0, 1.0 - edge, rr)
        _apply(out, sl, val, op)

    def gauss(self, out: np.ndarray, cu: float, cv: float, su: float, sv: float, amp: float) -> None:
        box = self.roi(cu - 3 * su, cu + 3 * su, cv - 3 * sv, cv + 3 * sv)
        if box is None:
            return
        sl, U, V = box
        out[sl] += amp * np.exp(-0.5 * (((U - cu) / su) ** 2 + ((V - cv) / sv) ** 2))

    def polyline(self, out: np.ndarray, points: Sequence[Point], half_width: float | Sequence[float], amp: float,
                 profile: str = "flat", edge_px: float = 1.2, gaps: Sequence[tuple[float, float]] = (),
                 op: str = "add") -> None:
        """A thick line through `points`, merged with max() so joints are not counted twice.

        profile "flat": uniform; "tube": brighter walls (a hollow tube seen side-on);
        "cortex": a bone with brighter cortical margins.  `gaps` = [(position 0..1 along the
        line, length)] leave holes (side holes, a fracture).  op "max" merges with what `out` holds.
        `half_width` may be one value per segment (a tapering vessel).
        """
        pts = np.asarray(points, np.float32)
        total = float(np.sum(np.hypot(*np.diff(pts, axis=0).T))) or 1.0
        edge = edge_px * self.px
        widths = np.broadcast_to(np.asarray(half_width, np.float32), (len(pts) - 1,))
        r = float(widths.max()) + edge
        whole = self.roi(float(pts[:, 0].min()) - r, float(pts[:, 0].max()) + r,
                         float(pts[:, 1].min()) - r, float(pts[:, 1].max()) + r)
        if whole is None:
            return
        (rows, cols), _, _ = whole
        lay = np.zeros((rows.stop - rows.start, cols.stop - cols.start), np.float32)
        run = 0.0
        for (u0, v0), (u1, v1), half_width in zip(pts[:-1], pts[1:], widths.tolist()):
            seg = math.hypot(u1 - u0, v1 - v0)
            r = half_width + edge
            box = self.roi(min(u0, u1) - r, max(u0, u1) + r, min(v0, v1) - r, max(v0, v1) + r)
            if box is None or seg == 0:
                run += seg
                continue
            (rs, cs), U, V = box
            du, dv = (u1 - u0) / seg, (v1 - v0) / seg
            t = np.clip((U - u0) * du + (V - v0) * dv, 0.0, seg)
            d = np.hypot(U - (u0 + t * du), V - (v0 + t * dv))
            w = smoothstep(half_width + edge, half_width, d)
            if profile == "tube":
                w = w * (0.55 + 0.45 * np.clip(d / half_width, 0, 1) ** 2)
            elif profile == "cortex":
                w = w * (0.75 + 0.25 * np.clip(d / half_width, 0, 1) ** 4)
            for pos, length in gaps:
                along = (run + t) / total
                w = w * smoothstep(0.0, edge / total + 1e-6, np.abs(along - pos) - length / 2)
            local = lay[rs.start - rows.start:rs.stop - rows.start, cs.start - cols.start:cs.stop - cols.start]
            np.maximum(local, w, out=local)
            run += seg
        _apply(out, (rows, cols), amp * lay, op)

    def band(self, out: np.ndarray, g: Callable[[np.ndarray], np.ndarray], u0: float, u1: float,
             half_width: float, amp: float, *, profile: str = "flat",
             gaps: Sequence[tuple[float, float]] = ()) -> None:
        """A thick curve v = g(u) for u0 <= u <= u1, drawn in one pass (g must accept arrays).

        The distance to the curve is the vertical distance times the cosine of its slope, good
        for gently curving shapes such as ribs.  `gaps` = [(u, half length in u)] cut it.
        """
        us = np.linspace(u0, u1, 17, dtype=np.float32)
        vs = g(us)
        edge = 1.2 * self.px
        r = half_width + edge
        box = self.roi(u0, u1, float(vs.min()) - r, float(vs.max()) + r)
        if box is None:
            return
        sl, U, V = box
        eps = 1e-3
        slope = (g(U + eps) - g(U - eps)) / (2 * eps)
        d = np.abs(V - g(U)) / np.sqrt(1 + slope * slope)
        w = smoothstep(half_width + edge, half_width, d) * smoothstep(u0, u0 + edge, U) * smoothstep(u1, u1 - edge, U)
        if profile == "cortex":
            w = w * (0.75 + 0.25 * np.clip(d / half_width, 0, 1) ** 4)
        for gu, glen in gaps:
            w = w * smoothstep(glen, glen + edge, np.abs(U - gu))
        out[sl] += amp * w

    def curve(self, out: np.ndarray, f: Callable[[float], Point], t0: float, t1: float, half_width: float,
              amp: float, n: int = 24, **kw) -> None:
        """A polyline through f(t) for n+1 values of t in [t0, t1]."""
        ts = np.linspace(t0, t1, n + 1)
        self.polyline(out, [f(float(t)) for t in ts], half_width, amp, **kw)

    def low_freq_noise(self, rng: np.random.Generator, cells: int = 24) -> np.ndarray:
        """Smooth noise in about [-1, 1] with `cells` features across the image (bilinear upsampling)."""
        g = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32) / 1.5
        return np.asarray(Image.fromarray(g, mode="F").resize((self.cols, self.rows), Image.BILINEAR))


def _apply(out: np.ndarray, sl, val: np.ndarray, op: str) -> None:
    if op == "add":
        out[sl] += val
    elif op == "max":
        np.maximum(out[sl], val, out=out[sl])
    else:
        raise ValueError(f"op must be 'add' or 'max', not {op!r}")


def bezier(p0: Point, p1: Point, p2: Point, n: int = 12) -> list[Point]:
    """Points on the quadratic Bezier curve p0 -> p2 pulled towards p1."""
    t = np.linspace(0, 1, n + 1)[:, None]
    a, b, c = (np.asarray(p, np.float32) for p in (p0, p1, p2))
    pts = (1 - t) ** 2 * a + 2 * (1 - t) * t * b + t**2 * c
    return [tuple(map(float, p)) for p in pts]
