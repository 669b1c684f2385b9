"""Normal chest anatomy: a patient's body parameters and the background drawing of each view.

Frontal images are drawn as displayed: the patient's right on the image left.  ``du`` is the
distance from the midline towards one side; ``side`` is -1 for the patient's right (image left) and
+1 for the patient's left.  Values are attenuation-like: air ~0, soft tissue ~0.55, bone and metal
above; the caller maps them to stored pixel values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from unirg.trainer.synth.draw import Canvas, bezier, smoothstep

MM_PER_IMAGE = 430.0
"""Detector field of view in mm (a 43 cm x 43 cm plate) at any pixel size."""

SIDES = {"right": (-1,), "left": (1,), "bilateral": (-1, 1)}


@dataclass(frozen=True)
class Anatomy:
    """One patient's body; the same for all of their studies."""

    thorax_hw: float  # half width of the rib cage, normalised
    apex_v: float
    dome_v: float  # right hemidiaphragm dome
    dome_gap: float  # left dome this much lower
    cp_drop: float  # costophrenic angle below the dome
    ctr: float  # cardiothoracic ratio, healthy
    mediastinum_hw: float
    carina_v: float
    rib_pitch: float
    soft_tissue: float
    breast: float
    bone: float
    knob: float  # aortic knob prominence
    vessel_seed: int

    @classmethod
    def sample(cls, rng: np.random.Generator, *, sex: str, bmi: float, age: int) -> Anatomy:
        return cls(
            thorax_hw=float(rng.uniform(0.35, 0.40)),
            apex_v=float(rng.uniform(0.10, 0.135)),
            dome_v=float(rng.uniform(0.63, 0.68)),
            dome_gap=float(rng.uniform(0.012, 0.035)),
            cp_drop=float(rng.uniform(0.07, 0.095)),
            ctr=float(rng.uniform(0.40, 0.47)),
            mediastinum_hw=float(rng.uniform(0.05, 0.062)),
            carina_v=float(rng.uniform(0.35, 0.39)),
            rib_pitch=float(rng.uniform(0.056, 0.064)),
            soft_tissue=float(np.clip(0.45 + (bmi - 25) * 0.008, 0.38, 0.6)),
            breast=float(rng.uniform(0.03, 0.08)) if sex == "F" else 0.0,
            bone=float(np.clip(1.15 - age * 0.004, 0.75, 1.1)),
            knob=float(np.clip(0.004 + age * 0.00012 + rng.normal(0, 0.002), 0.002, 0.02)),
            vessel_seed=int(rng.integers(2**31)),
        )


@dataclass
class Pose:
    """Study-specific geometry: the patient's anatomy plus positioning and what findings change."""

    anatomy: Anatomy
    view: str  # "PA" | "AP" | "LAT"
    shift_u: float = 0.0
    shift_v: float = 0.0
    inspiration: float = 0.0  # + = deeper breath (lower domes)
    ctr: float | None = None  # overrides the healthy ratio (cardiomegaly)
    mediastinum_widen: float = 0.0
    dome_raise: dict[int, float] = field(default_factory=dict)  # side -> raise (volume loss)
    fractures: dict[tuple[int, int], tuple[float, bool]] = field(default_factory=dict)  # (side, rib) -> (t, healing)

    # -- frontal geometry ----------------------------------------------------------------------
    @property
    def mid_u(self) -> float:
        return 0.5 + self.shift_u

    @property
    def magnification(self) -> float:
        return 1.12 if self.view == "AP" else 1.04

    def heart_width(self) -> float:
        ctr = self.ctr if self.ctr is not None else self.anatomy.ctr
        if self.view == "AP":
            ctr *= 1.08  # portable AP magnifies the heart
        return ctr * 2 * self.anatomy.thorax_hw

    def dome(self, side: int) -> float:
        a = self.anatomy
        v = a.dome_v + self.shift_v - self.inspiration + (a.dome_gap if side > 0 else 0.0)
        return v - self.dome_raise.get(side, 0.0)

    def lateral(self, v):
        """Distance of the lateral lung border from the midline at height v."""
        a = self.anatomy
        t = np.sqrt(np.clip((v - a.apex_v - self.shift_v) / 0.32, 0.0, 1.0))
        return a.thorax_hw * (0.5 + 0.5 * t)

    def medial(self, v, side: int):
        """Distance of the medial lung border from the midline: the mediastinum above the hila
        (with the aortic knob on the left), the spine behind the heart below them."""
        a = self.anatomy
        upper = a.mediastinum_hw + self.mediastinum_widen
        lower = 0.03
        w = smoothstep(a.carina_v + 0.04, a.carina_v + 0.12, v - self.shift_v)
        m = upper * (1 - w) + lower * w
        if side > 0:
            m = m + a.knob * np.exp(-(((v - self.shift_v - a.carina_v + 0.025) / 0.03) ** 2))
        return m

    def top(self, du):
        a = self.anatomy
        return a.apex_v + self.shift_v + 5.0 * (du - 0.16) ** 2

    def base(self, du, side: int):
        a = self.anatomy
        dome = self.dome(side)
        c = 0.45 * a.thorax_hw
        lat = a.cp_drop * np.clip((du - c) / (a.thorax_hw - c), 0, 1.2) ** 2
        med = 0.25 * a.cp_drop * np.clip((c - du) / c, 0, 1) ** 2
        return dome + lat + med

    def hilum(self, side: int) -> tuple[float, float]:
        return self.mid_u + side * 0.095, self.anatomy.carina_v + self.shift_v + 0.06

    def du(self, canvas: Canvas, side: int) -> np.ndarray:
        return side * (canvas.u - self.mid_u)


def lung_depth(pose: Pose, canvas: Canvas, side: int) -> np.ndarray:
    """Signed distance (normalised units) inside one lung field; positive inside."""
    du = pose.du(canvas, side)
    v = canvas.v
    d = np.minimum(du - pose.medial(v, side), pose.lateral(v) - du)
    d = np.minimum(d, v - pose.top(du))
    return np.minimum(d, pose.base(du, side) - v)


def heart_mask(pose: Pose, canvas: Canvas) -> np.ndarray:
    """The cardiac silhouette (0..1): resting on the left dome, two thirds left of the midline."""
    w = pose.heart_width()
    out = canvas.layer()
    rv = 0.1 + 0.12 * (w - 0.3)
    cv = pose.dome(1) - 0.07
    canvas.ellipse(out, pose.mid_u + 0.17 * w, cv, w / 2, rv, 1.0, edge=0.05, angle=-0.15, op="max")
    return out


def draw_frontal_background(canvas: Canvas, pose: Pose) -> dict:
    """The normal frontal chest.

    Returns ``masks`` (per side: the lung air that is visible, i.e. not hidden by the heart; finding
    layers that replace air with fluid or tissue scale with it) and ``markings`` (the vessel
    pattern, added last so that a pneumothorax can remove it).
    """
    a = pose.anatomy
    img = canvas.img
    u, v = canvas.u, canvas.v
    mid = pose.mid_u
    edge = 2.5 * canvas.px

    # body: neck widening into the shoulders and trunk, thicker in the middle
    hw = 0.1 + (a.thorax_hw + 0.06 + 0.1 * a.soft_tissue - 0.1) * smoothstep(0.0, 0.16 + pose.shift_v, v)
    hw = hw + 0.07 * smoothstep(0.03, 0.12, v) * (1 - smoothstep(0.12, 0.3, v))  # shoulders
    x = np.abs(u - mid) / hw
    body = smoothstep(1.0, 0.97, x) * (0.35 + 0.25 * np.sqrt(np.clip(1 - x**2, 0, 1)))
    img += body * (0.75 + 0.5 * a.soft_tissue)

    # lungs, with the heart silhouette and retrocardiac lung
    masks = {side: smoothstep(0.0, edge, lung_depth(pose, canvas, side)) for side in (-1, 1)}
    heart = heart_mask(pose, canvas)
    lungs = masks[-1] + masks[1]
    air = 0.42 - 0.12 * smoothstep(pose.dome(1) - 0.15, pose.dome(1) + 0.05, v)
    visible = 1 - 0.92 * heart  # lung seen through the heart is mostly hidden
    img -= air * lungs * visible
    img += 0.1 * heart * smoothstep(pose.dome(1) + 0.01, pose.dome(1) - 0.02, v)

    # gastric bubble under the left dome
    canvas.ellipse(img, mid + 0.14, pose.dome(1) + 0.05, 0.05, 0.025, -0.12, edge=0.6)
    # spine, trachea and main bronchi
    spine = smoothstep(0.04, 0.03, np.abs(u - mid)) * (0.05 + 0.02 * (np.cos(2 * np.pi * v / a.rib_pitch) > 0.7))
    img += spine * a.bone
    carina = (mid + 0.003, a.carina_v + pose.shift_v)
    canvas.polyline(img, [(mid, 0.0), carina], 0.016, -0.1)
    for side in (-1, 1):
        canvas.polyline(img, [carina, (mid + side * 0.07, carina[1] + 0.05)], 0.009, -0.08)
    # vessels and hila, inside the lungs only (the patient's own tree, moved with the positioning)
    tree = vessel_tree(a, canvas.rows, canvas.cols)
    markings = np.roll(tree, (round(pose.shift_v * canvas.rows), round(pose.shift_u * canvas.cols)), axis=(0, 1))
    markings *= lungs
    # breasts
    if a.breast:
        for side in (-1, 1):
            canvas.ellipse(img, mid + side * 0.25, pose.dome(side) - 0.01, 0.15, 0.1, a.breast, edge=0.7)
    bones = canvas.layer()
    _ribs_and_shoulders(canvas, pose, bones)
    img += bones * (0.5 + 0.5 * np.clip(lungs, 0, 1))  # bone contrast is highest against lung
    return {"masks": {side: m * visible for side, m in masks.items()}, "markings": markings}


@lru_cache(maxsize=4)
def vessel_tree(anatomy: Anatomy, rows: int, cols: int) -> np.ndarray:
    """Hila, branching vessels and parenchymal texture of a patient, unpositioned (cached: the same
    for all of a patient's frontal images; callers must not modify it)."""
    canvas = Canvas(rows, cols)
    pose = Pose(anatomy, "PA")
    out = canvas.layer()
    rng = np.random.default_rng(anatomy.vessel_seed)
    for side in (-1, 1):
        hu, hv = pose.hilum(side)
        canvas.ellipse(out, hu, hv, 0.035, 0.055, 0.06, edge=0.9)
        for k in range(9):
            ang = math.radians(-75 + k * 18 + rng.normal(0, 5))
            start = (hu + side * rng.uniform(0, 0.02), hv + rng.uniform(-0.03, 0.03))
            _vessel(canvas, out, start, side, ang, rng, length=rng.uniform(0.16, 0.26), width=0.0055)
    out += 0.015 * canvas.low_freq_noise(rng, 40)
    out.flags.writeable = False
    return out


def _vessel(canvas: Canvas, out, start, side, ang, rng, *, length, width, depth=0):
    """A tapering, gently curving vessel with side branches (one level)."""
    pts = [start]
    u, v = start
    steps = 4
    for _ in range(steps):
        ang += rng.normal(0, 0.18)
        u, v = u + side * math.cos(ang) * length / steps, v + math.sin(ang) * length / steps
        pts.append((u, v))
    widths = [max(width * (1 - 0.2 * k), 0.8 * canvas.px) for k in range(steps)]
    canvas.polyline(out, pts, widths, 0.07 - 0.02 * depth, edge_px=1.0, op="max")
    if depth < 1:
        for k in (1, 2):
            _vessel(canvas, out, pts[k], side, ang + rng.choice([-1, 1]) * rng.uniform(0.35, 0.7), rng,
                    length=length * 0.45, width=widths[k] * 0.6, depth=depth + 1)


def rib_line(pose: Pose, side: int, rib: int):
    """Posterior rib `rib` (1..10): (g, u0, u1, t_of_u) with v = g(u) over u0..u1.

    t = 0 at the spine and 1 at the lateral chest wall.
    """
    a = pose.anatomy
    v0 = a.apex_v + pose.shift_v - 0.035 + (rib - 1) * a.rib_pitch
    span = a.thorax_hw * 1.02 - 0.035

    def t_of_u(u):
        return (side * (u - pose.mid_u) - 0.035) / span

    def g(u):
        t = t_of_u(u)
        return v0 + 0.018 * t + 0.085 * t * t

    ends = sorted((pose.mid_u + side * 0.035, pose.mid_u + side * (0.035 + span)))
    return g, ends[0], ends[1], t_of_u


def _ribs_and_shoulders(canvas: Canvas, pose: Pose, img: np.ndarray) -> None:
    a = pose.anatomy
    bone = a.bone
    mid = pose.mid_u
    for side in (-1, 1):
        for rib in range(1, 11):
            g, u0, u1, t_of_u = rib_line(pose, side, rib)
            hw = 0.0075 + 0.0006 * rib
            frac = pose.fractures.get((side, rib))
            if frac is None:
                canvas.band(img, g, u0, u1, hw, 0.1 * bone, profile="cortex")
            else:  # a gap, the lateral fragment displaced, callus when healing
                t, healing = frac
                step = 0.007
                fu = mid + side * (0.035 + t * (a.thorax_hw * 1.02 - 0.035))

                def broken(u, g=g, t_of_u=t_of_u, t=t):
                    return g(u) + step * (t_of_u(u) > t)

                canvas.band(img, broken, u0, u1, hw, 0.1 * bone, profile="cortex", gaps=[(fu, 0.012)])
                if healing:
                    canvas.ellipse(img, fu, float(g(np.float32(fu))) + step / 2, 0.016, 0.012, 0.09 * bone, edge=0.5)
            # anterior rib: from the lateral wall down towards the sternum, fainter
            lu = mid + side * (a.thorax_hw * 1.02)
            lv = float(g(np.float32(lu)))
            reach = a.thorax_hw * 0.78

            def anterior(u, lu=lu, lv=lv, reach=reach, side=side):
                s_ = np.clip(side * (lu - u) / reach, 0, 1)
                return lv - 0.01 + 0.11 * s_**1.3

            au0, au1 = sorted((lu, lu - side * reach))
            canvas.band(img, anterior, au0, au1, hw * 1.3, 0.035 * bone)
        # clavicle
        cm = (mid + side * 0.035, a.apex_v + pose.shift_v + 0.03)
        cl = (mid + side * 0.3, a.apex_v + pose.shift_v - 0.035)
        canvas.polyline(img, bezier(cm, (mid + side * 0.17, a.apex_v + pose.shift_v + 0.005), cl, 10),
                        0.011, 0.13 * bone, profile="cortex")
        # humeral head and scapula
        canvas.ellipse(img, mid + side * (a.thorax_hw + 0.1), a.apex_v + pose.shift_v - 0.02, 0.06, 0.065,
                       0.18 * bone, edge=0.15)
        scap_u = a.thorax_hw - (0.04 if pose.view == "AP" else -0.02)
        canvas.ellipse(img, mid + side * scap_u, a.apex_v + 0.15, 0.05, 0.15, 0.04 * bone, edge=0.6)


def draw_lateral_background(canvas: Canvas, pose: Pose) -> dict:
    """The normal left lateral: anterior on the image left, spine on the right."""
    a = pose.anatomy
    img = canvas.img
    u, v = canvas.u, canvas.v
    sv = pose.shift_v
    # body outline: front and back walls
    front = 0.12 + 0.04 * (1 - smoothstep(0.0, 0.3, v))
    back = 0.9 - 0.03 * (1 - smoothstep(0.0, 0.3, v))
    body = smoothstep(front, front + 0.02, u) * smoothstep(back, back - 0.02, u)
    img += body * (0.7 + 0.4 * a.soft_tissue)
    # lung: retrosternal to the posterior sulcus, diaphragm sloping down posteriorly
    lung_front = 0.2 + 0.06 * (1 - smoothstep(a.apex_v, 0.3, v))
    lung_back = 0.82 - 0.08 * (1 - smoothstep(a.apex_v, 0.35, v))
    dia = pose.dome(1) - 0.02 + 0.14 * smoothstep(0.3, 0.85, u)
    top = a.apex_v + sv + 2.2 * (u - 0.5) ** 2
    depth = np.minimum(np.minimum(u - lung_front, lung_back - u), np.minimum(v - top, dia - v))
    lung = smoothstep(0.0, 3 * canvas.px, depth)
    heart = canvas.layer()
    w = pose.heart_width() / (0.9 * 2 * a.thorax_hw)
    canvas.ellipse(heart, 0.2 + 0.16 * w, pose.dome(1) - 0.07, 0.16 * w, 0.15, 1.0, edge=0.05, op="max")
    img -= 0.38 * lung * (1 - 0.8 * heart)
    img += 0.04 * heart
    # spine: vertebral bodies with disc spaces
    for k in range(14):
        cv = 0.06 + k * 0.068 + sv
        canvas.ellipse(img, 0.8, cv, 0.045, 0.028, 0.12 * a.bone, edge=0.2)
    # sternum, trachea, hilum, faint posterior ribs
    canvas.polyline(img, [(0.19, 0.2 + sv), (0.205, 0.55 + sv)], 0.008, 0.09 * a.bone)
    carina = (0.52, a.carina_v + sv)
    canvas.polyline(img, [(0.44, 0.0), carina], 0.014, -0.09)
    canvas.ellipse(img, 0.52, a.carina_v + 0.07 + sv, 0.05, 0.06, 0.07, edge=0.8)
    for rib in range(2, 11):
        v0 = a.apex_v + sv + rib * a.rib_pitch * 0.9
        canvas.polyline(img, [(0.9, v0 - 0.04), (0.55, v0 + 0.06)], 0.007, 0.03 * a.bone)
    return {"lung": lung, "heart": heart, "diaphragm": dia}
