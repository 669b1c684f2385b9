"""Procedural chest radiographs: normal anatomy plus a visible structure for each finding.

``render_view`` returns attenuation-like floats; ``to_stored`` maps them to the unsigned integers a
modality stores (MONOCHROME2: bright = dense, MONOCHROME1 inverted).  Laterality follows the
displayed convention: the patient's right is on the image left of a frontal view.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy.ndimage import gaussian_filter

from unirg.trainer.synth.anatomy import (
    MM_PER_IMAGE,
    SIDES,
    Anatomy,
    Pose,
    draw_frontal_background,
    draw_lateral_background,
    lung_depth,
)
from unirg.trainer.synth.draw import Canvas, bezier, smoothstep
from unirg.trainer.synth.patients import Finding

ZONES = {"upper": (0.0, 0.3), "mid": (0.3, 0.62), "lower": (0.62, 1.0)}  # fraction of lung height


def make_pose(anatomy: Anatomy, findings: Iterable[Finding], view: str, rng: np.random.Generator,
              *, portable: bool = False) -> Pose:
    """Positioning of one image and the geometry the findings change (heart, mediastinum, domes, ribs)."""
    pose = Pose(anatomy, view, shift_u=float(rng.normal(0, 0.006)), shift_v=float(rng.normal(0, 0.006)),
                inspiration=float(rng.normal(0, 0.01)) - (0.03 if portable else 0.0))
    for f in findings:
        if not f.present:
            continue
        e = f.extent
        if f.observation == "Cardiomegaly":
            pose.ctr = 0.52 + 0.17 * e
        elif f.observation == "Enlarged Cardiomediastinum":
            pose.mediastinum_widen = 0.02 + 0.05 * e
        elif f.observation == "Atelectasis" and f.extent >= 0.7:
            for side in SIDES[f.laterality]:
                pose.dome_raise[side] = 0.035
        elif f.observation == "Fracture":
            frng = np.random.default_rng(f.detail["seed"])
            for side in SIDES[f.laterality]:
                for rib in f.detail["ribs"]:
                    where = float(frng.uniform(0.6, 0.88))
                    pose.fractures[(side, min(rib, 10))] = (where, f.detail.get("healing", False))
    return pose


def render_view(anatomy: Anatomy, findings: Iterable[Finding], view: str, size: int,
                rng: np.random.Generator, *, portable: bool = False) -> np.ndarray:
    """One image (rows = columns = `size`) as float32 attenuation, roughly 0 (air) to 1.3 (metal)."""
    findings = [f for f in findings if f.present]
    pose = make_pose(anatomy, findings, view, rng, portable=portable)
    canvas = Canvas(size, size)
    if view == "LAT":
        _lateral(canvas, pose, findings)
    else:
        _frontal(canvas, pose, findings)
    return gaussian_filter(canvas.img, 0.6 * size / 512, truncate=3.0)  # detector unsharpness


# -- frontal -----------------------------------------------------------------------------------
def _frontal(canvas: Canvas, pose: Pose, findings: list[Finding]) -> None:
    bg = draw_frontal_background(canvas, pose)
    masks, markings = bg["masks"], bg["markings"]
    img = canvas.img
    keep_markings = np.ones_like(img)
    for f in findings:
        frng = np.random.default_rng(f.detail.get("seed", 0))
        obs = f.observation
        sides = SIDES.get(f.laterality, ())
        for side in sides:
            mask = masks[side]
            if obs == "Pleural Effusion":
                _effusion(canvas, pose, side, f.extent, mask)
            elif obs == "Pneumothorax":
                keep_markings *= 1 - _pneumothorax(canvas, pose, side, f.extent, mask)
            elif obs in ("Consolidation", "Lung Opacity"):
                _airspace(canvas, pose, side, f, mask, frng)
            elif obs == "Atelectasis":
                _atelectasis(canvas, pose, side, f, mask, frng)
            elif obs == "Lung Lesion":
                _lesion(canvas, pose, side, f, frng)
            elif obs == "Pleural Other":
                _pleural_other(canvas, pose, side, f, mask, frng)
        if obs == "Edema":
            _edema(canvas, pose, f.extent, masks, frng)
        elif obs == "Support Devices":
            for device in f.detail["devices"]:
                _device(canvas, pose, device)
    img += markings * keep_markings


def _lung_v(pose: Pose, side: int, frac: float) -> float:
    """Height at a fraction of the lung's height (0 apex, 1 dome)."""
    top = pose.anatomy.apex_v + pose.shift_v
    return top + frac * (pose.dome(side) - top)


def _effusion(canvas: Canvas, pose: Pose, side: int, extent: float, mask: np.ndarray) -> None:
    """Dependent fluid: blunts the costophrenic angle, meniscus rising laterally, hides the dome."""
    a = pose.anatomy
    h = 0.025 + 0.3 * extent
    cp = pose.dome(side) + a.cp_drop
    du = pose.du(canvas, side)
    t = np.clip(du / a.thorax_hw, 0, 1.2)
    surface = cp - h - (0.03 + 0.08 * extent) * t**2 + 0.02 * (1 - t)
    fluid = smoothstep(surface - 0.004, surface + 0.04, canvas.v)
    canvas.img += 0.42 * fluid * mask


def _pneumothorax(canvas: Canvas, pose: Pose, side: int, extent: float, mask: np.ndarray) -> np.ndarray:
    """Air between chest wall and a visible visceral pleural line; no lung markings there."""
    top = pose.anatomy.apex_v + pose.shift_v
    reach = 0.12 + 0.5 * extent  # how far down the rim of air goes
    d0 = 0.012 + 0.09 * extent  # rim width at the apex
    depth = lung_depth(pose, canvas, side)
    along = np.clip((canvas.v - top) / reach, 0, 1)
    rim = d0 * (1 - 0.75 * along) * smoothstep(1.0, 0.85, along)
    air = smoothstep(0.0015, -0.0015, depth - rim) * mask
    line = smoothstep(0.0035, 0.0, np.abs(depth - rim)) * mask * (rim > 0.004)
    collapsed = mask * (1 - air) * smoothstep(0.3, 1.0, extent)
    canvas.img += -0.05 * air + 0.12 * line + 0.06 * collapsed
    return air


def _lobe_box(pose: Pose, side: int, lobe: str | None, zone: str | None):
    """(du range, v range) of a lobe or a zone on one side."""
    a = pose.anatomy
    fissure = a.carina_v + pose.shift_v + 0.07
    top = a.apex_v + pose.shift_v
    dome = pose.dome(side)
    if lobe in ("RUL", "LUL"):
        return (0.06, a.thorax_hw * 0.9), (top + 0.02, fissure if lobe == "RUL" else fissure + 0.08)
    if lobe == "RML":
        return (0.04, a.thorax_hw * 0.55), (fissure, dome - 0.02)
    if lobe in ("RLL", "LLL"):
        return (0.05, a.thorax_hw * 0.95), (fissure + 0.06, dome + a.cp_drop * 0.7)
    f0, f1 = ZONES[zone or "lower"]
    return (0.05, a.thorax_hw * 0.95), (_lung_v(pose, side, f0), _lung_v(pose, side, f1))


def _airspace(canvas: Canvas, pose: Pose, side: int, f: Finding, mask: np.ndarray, rng) -> None:
    """Consolidation (dense, lobar, air bronchograms) or patchy lung opacity."""
    consolidation = f.observation == "Consolidation"
    (d0, d1), (v0, v1) = _lobe_box(pose, side, f.detail.get("lobe"), f.detail.get("zone"))
    lay = canvas.layer()
    n = 3 + int(5 * f.extent)
    for _ in range(n):
        cu = pose.mid_u + side * rng.uniform(d0 + 0.03, d1 - 0.03)
        cv = rng.uniform(v0 + 0.02, v1 - 0.01)
        r = (0.03 + 0.05 * f.extent) * rng.uniform(0.7, 1.2)
        canvas.ellipse(lay, cu, cv, r * 1.3, r, 1.0, edge=0.6 if consolidation else 0.9, op="max")
    if consolidation and f.extent >= 0.7:  # lobar: dense, bounded by the lobe
        np.maximum(lay, _lobe_fill(canvas, pose, side, f.detail.get("lobe", "RLL")), out=lay)
    lay *= mask * (0.75 + 0.25 * canvas.low_freq_noise(rng, 48))
    amp = (0.24 + 0.14 * f.extent) if consolidation else (0.12 + 0.1 * f.extent)
    canvas.img += amp * np.clip(lay, 0, 1)
    if consolidation:  # air bronchograms
        bron = canvas.layer()
        hu, hv = pose.hilum(side)
        for _ in range(3):
            end = (pose.mid_u + side * rng.uniform(d0 + 0.05, d1), rng.uniform(v0, v1))
            canvas.polyline(bron, bezier((hu, hv), ((hu + end[0]) / 2, end[1]), end, 8), 0.0025, 1.0)
        canvas.img -= 0.06 * np.clip(bron, 0, 1) * np.clip(lay * 2, 0, 1)


def _lobe_fill(canvas: Canvas, pose: Pose, side: int, lobe: str) -> np.ndarray:
    """Where a whole lobe projects on a frontal view (before masking with the lung)."""
    a = pose.anatomy
    fissure = a.carina_v + pose.shift_v + 0.07
    v, du = canvas.v, pose.du(canvas, side)
    if lobe == "RUL":  # sharp lower border: the horizontal fissure
        return smoothstep(fissure + 0.003, fissure - 0.003, v) * np.ones_like(du)
    if lobe == "LUL":  # fades towards the base
        return smoothstep(pose.dome(side) - 0.05, fissure - 0.02, v) * np.ones_like(du)
    if lobe == "RML":  # beside the right heart border, fading laterally
        return smoothstep(fissure - 0.01, fissure + 0.01, v) * smoothstep(a.thorax_hw * 0.6, a.thorax_hw * 0.3, du)
    return smoothstep(fissure, pose.dome(side) - 0.08, v) * np.ones_like(du)  # lower lobes


def _edema(canvas: Canvas, pose: Pose, extent: float, masks: dict, rng) -> None:
    """Perihilar haze (batwing when severe) and Kerley B lines at the lung bases."""
    lay = canvas.layer()
    for side in (-1, 1):
        hu, hv = pose.hilum(side)
        s = 0.06 + 0.1 * extent
        canvas.gauss(lay, hu + side * 0.03, hv + 0.02, s, s * 1.3, 0.05 + 0.2 * extent)
        if extent > 0.2:
            kerley = canvas.layer()
            lat = float(pose.lateral(pose.dome(side)))
            for _ in range(int(4 + 16 * extent)):
                vv = rng.uniform(pose.dome(side) - 0.17, pose.dome(side) - 0.02)
                uu = pose.mid_u + side * (lat - rng.uniform(0.004, 0.012))
                length = rng.uniform(0.015, 0.03)
                canvas.polyline(kerley, [(uu, vv), (uu - side * length, vv + rng.normal(0, 0.002))], 0.0016, 1.0)
            lay += 0.09 * np.clip(kerley, 0, 1)
    canvas.img += lay * (masks[-1] + masks[1])


def _atelectasis(canvas: Canvas, pose: Pose, side: int, f: Finding, mask: np.ndarray, rng) -> None:
    """Plate-like lines (mild), a wedge (moderate) or lower-lobe collapse behind the heart (severe)."""
    zone = f.detail.get("zone", "lower")
    dome = pose.dome(side)
    lay = canvas.layer()
    if f.extent < 0.4 or not f.certain:
        for _ in range(1 + int(rng.integers(0, 3))):
            v0 = dome - (0.04 if zone == "lower" else 0.16) - rng.uniform(0, 0.06)
            u0 = pose.mid_u + side * rng.uniform(0.1, 0.2)
            length = rng.uniform(0.08, 0.14)
            canvas.polyline(lay, [(u0, v0), (u0 + side * length, v0 + rng.uniform(-0.015, 0.02))],
                            0.003 + 0.003 * f.extent, 1.0)
        canvas.img += 0.16 * np.clip(lay, 0, 1) * mask
    elif f.extent < 0.7:
        cu = pose.mid_u + side * 0.2
        canvas.ellipse(lay, cu, dome - 0.05, 0.1, 0.03, 1.0, edge=0.6, angle=side * 0.25)
        canvas.img += 0.17 * lay * mask
    else:
        pts = [(pose.mid_u + side * 0.03, pose.hilum(side)[1] + 0.04), (pose.mid_u + side * 0.14, dome + 0.01),
               (pose.mid_u + side * 0.03, dome + 0.01)]
        canvas.polyline(lay, pts + [pts[0]], 0.03, 1.0)
        canvas.ellipse(lay, pose.mid_u + side * 0.07, dome - 0.05, 0.05, 0.09, 1.0, edge=0.5, op="max")
        canvas.img += 0.25 * np.clip(lay, 0, 1) * mask


def lesion_size_mm(extent: float) -> float:
    return round(6 + 50 * extent**1.5, 0)


def _lesion(canvas: Canvas, pose: Pose, side: int, f: Finding, rng) -> None:
    """A round nodule or lobulated mass; calcified ones are small, dense and sharp."""
    (d0, d1), (v0, v1) = _lobe_box(pose, side, None, f.detail.get("zone"))
    px, py = f.detail.get("pos", (0.5, 0.5))
    cu = pose.mid_u + side * (0.08 + px * (pose.anatomy.thorax_hw * 0.85 - 0.08))
    cv = v0 + py * (v1 - v0)
    r = lesion_size_mm(f.extent) / 2 / MM_PER_IMAGE * pose.magnification
    if f.detail.get("calcified"):
        canvas.ellipse(canvas.img, cu, cv, r * 0.8, r * 0.8, 0.45, edge=0.15)
        return
    wobble = [(3, 0.08 * f.extent, rng.uniform(0, 6.3)), (5, 0.05 * f.extent, rng.uniform(0, 6.3))]
    canvas.ellipse(canvas.img, cu, cv, r, r * 0.95, 0.24, edge=0.3, wobble=wobble)


def _pleural_other(canvas: Canvas, pose: Pose, side: int, f: Finding, mask: np.ndarray, rng) -> None:
    """Pleural thickening along the lateral wall, or calcified plaques on the wall and the dome."""
    depth = lung_depth(pose, canvas, side)
    lower = smoothstep(_lung_v(pose, side, 0.25), _lung_v(pose, side, 0.45), canvas.v)
    if f.detail.get("kind") == "thickening":
        width = 0.006 + 0.014 * f.extent
        du = pose.du(canvas, side)
        lateral = smoothstep(0.5 * pose.anatomy.thorax_hw, 0.7 * pose.anatomy.thorax_hw, du)
        canvas.img += 0.22 * smoothstep(width, width * 0.5, depth) * mask * lower * lateral
        return
    lay = canvas.layer()
    for _ in range(2 + int(4 * f.extent)):
        vv = rng.uniform(_lung_v(pose, side, 0.35), pose.dome(side))
        uu = pose.mid_u + side * float(pose.lateral(vv) - 0.006)
        canvas.ellipse(lay, uu, vv, 0.006, 0.03, 1.0, edge=0.3, op="max")
    cu = pose.mid_u + side * 0.2
    canvas.ellipse(lay, cu, pose.dome(side) - 0.003, 0.05, 0.005, 1.0, edge=0.3, op="max")
    canvas.img += 0.22 * lay


def _device(canvas: Canvas, pose: Pose, d: dict) -> None:
    """Tubes, lines and a pacemaker as bright radiopaque shapes."""
    a = pose.anatomy
    mid, carina = pose.mid_u, a.carina_v + pose.shift_v
    cm = 10.0 / MM_PER_IMAGE * pose.magnification
    img = canvas.img
    kind = d["kind"]
    if kind == "ett":
        tip = (mid + 0.004, carina - d.get("tip_cm", 4.0) * cm)
        canvas.polyline(img, [(mid - 0.003, 0.0), tip], 0.009, 0.12, profile="tube")
        canvas.polyline(img, [(mid - 0.009, 0.0), (tip[0] - 0.006, tip[1])], 0.0018, 0.3)
    elif kind == "ngt":
        dome = pose.dome(1)
        pts = [(mid - 0.01, 0.0), (mid + 0.005, carina), (mid + 0.02, dome - 0.06)] + \
            bezier((mid + 0.02, dome - 0.06), (mid + 0.05, dome + 0.06), (mid + 0.15, dome + 0.07), 10)[1:]
        canvas.polyline(img, pts, 0.0032, 0.35, gaps=[(0.97, 0.01)])
    elif kind in ("cvc", "port"):
        s = -1 if d["side"] == "right" else 1
        tip = (mid - 0.035, carina + 0.04)
        if kind == "port":
            res = (mid + s * 0.22, a.apex_v + 0.11)
            canvas.ellipse(img, *res, 0.02, 0.017, 0.6, edge=0.2)
            pts = bezier(res, (mid + s * 0.08, a.apex_v + 0.03), (mid - 0.045, carina - 0.03), 10) + [tip]
        elif d.get("route") == "subclavian":
            pts = bezier((mid + s * 0.27, a.apex_v + 0.03), (mid + s * 0.1, a.apex_v + 0.02),
                         (mid - 0.045, carina - 0.03), 10) + [tip]
        else:
            pts = [(mid + s * 0.1, 0.0)] + bezier((mid + s * 0.085, a.apex_v + 0.02), (mid + s * 0.02, a.apex_v + 0.06),
                                                  (mid - 0.045, carina - 0.03), 10) + [tip]
        canvas.polyline(img, pts, 0.0035, 0.4)
    elif kind == "pacemaker":
        s = -1 if d["side"] == "right" else 1
        gen = (mid + s * 0.26, a.apex_v + 0.07)
        canvas.ellipse(img, *gen, 0.04, 0.03, 0.85, edge=0.1)
        canvas.ellipse(img, gen[0] + s * 0.01, gen[1] - 0.01, 0.012, 0.01, -0.2, edge=0.3)
        targets = [(mid - 0.06, pose.dome(-1) - 0.1), (mid + 0.07, pose.dome(1) - 0.03)][: d.get("leads", 2)]
        for tu, tv in targets:
            pts = bezier(gen, (mid + s * 0.05, a.apex_v + 0.04), (mid - 0.045, carina), 10) + \
                bezier((mid - 0.045, carina), (mid - 0.05, tv - 0.05), (tu, tv), 8)[1:]
            canvas.polyline(img, pts, 0.0028, 0.5)
            canvas.ellipse(img, tu, tv, 0.006, 0.006, 0.4, edge=0.3)
    elif kind == "chest_tube":
        s = -1 if d["side"] == "right" else 1
        lat = float(pose.lateral(pose.dome(s) - 0.08))
        pts = bezier((mid + s * (lat + 0.06), pose.dome(s) - 0.02), (mid + s * (lat - 0.02), pose.dome(s) - 0.1),
                     (mid + s * 0.17, a.apex_v + 0.06), 14)
        canvas.polyline(img, pts, 0.0065, 0.16, profile="tube")
        canvas.polyline(img, pts, 0.0018, 0.3, gaps=[(0.8, 0.02), (0.9, 0.02)])
    else:
        raise ValueError(f"unknown device kind {kind!r}")


# -- lateral -----------------------------------------------------------------------------------
def _lateral(canvas: Canvas, pose: Pose, findings: list[Finding]) -> None:
    """A simpler left lateral: fluid in the posterior sulcus, lobes, nodules and devices."""
    bg = draw_lateral_background(canvas, pose)
    lung = bg["lung"]
    img = canvas.img
    a = pose.anatomy
    dome = pose.dome(1)
    for f in findings:
        rng = np.random.default_rng(f.detail.get("seed", 0))
        obs, e = f.observation, f.extent
        if obs == "Pleural Effusion":
            surface = dome + 0.1 - 0.25 * e - 0.06 * smoothstep(0.4, 0.85, canvas.u)
            fluid = smoothstep(surface - 0.005, surface + 0.04, canvas.v) * smoothstep(0.35, 0.5, canvas.u)
            img += 0.3 * fluid * lung
        elif obs in ("Consolidation", "Lung Opacity", "Atelectasis"):
            lobe = f.detail.get("lobe", "")
            zone = f.detail.get("zone", "lower")
            if lobe.endswith("UL") or zone == "upper":
                cu, cv = 0.5, a.apex_v + 0.12
            elif lobe == "RML" or zone == "mid":
                cu, cv = 0.35, a.carina_v + 0.14
            else:
                cu, cv = 0.66, dome - 0.02
            lay = canvas.layer()
            r = 0.04 + 0.06 * e
            canvas.ellipse(lay, cu, cv, r * 1.2, r, 1.0, edge=0.7, angle=rng.uniform(-0.5, 0.5))
            amp = {"Consolidation": 0.22, "Lung Opacity": 0.1, "Atelectasis": 0.12}[obs]
            img += amp * lay * lung
        elif obs == "Edema":
            canvas.gauss(img, 0.52, a.carina_v + 0.08, 0.08 + 0.1 * e, 0.1 + 0.1 * e, 0.04 + 0.14 * e)
        elif obs == "Lung Lesion":
            r = lesion_size_mm(e) / 2 / MM_PER_IMAGE * 1.1
            (_, _), (v0, v1) = _lobe_box(pose, -1, None, f.detail.get("zone"))
            cv = v0 + f.detail.get("pos", (0.5, 0.5))[1] * (v1 - v0)
            canvas.ellipse(img, 0.3 + 0.4 * f.detail.get("pos", (0.5, 0.5))[0], cv, r, r, 0.2, edge=0.3)
        elif obs == "Support Devices":
            for d in f.detail["devices"]:
                _lateral_device(canvas, pose, d)
        # cardiomegaly and a wide mediastinum are drawn through the pose (heart width)


def _lateral_device(canvas: Canvas, pose: Pose, d: dict) -> None:
    a, img, dome = pose.anatomy, canvas.img, pose.dome(1)
    kind = d["kind"]
    if kind == "ett":
        tip = (0.5, a.carina_v - d.get("tip_cm", 4) * 0.025)
        canvas.polyline(img, [(0.44, 0.0), tip], 0.008, 0.12, profile="tube")
    elif kind == "ngt":
        canvas.polyline(img, [(0.5, 0.0), (0.58, a.carina_v), (0.6, dome), (0.45, dome + 0.08)], 0.003, 0.3)
    elif kind == "pacemaker":
        canvas.ellipse(img, 0.2, a.apex_v + 0.08, 0.02, 0.04, 0.8, edge=0.1)
        canvas.polyline(img, [(0.2, a.apex_v + 0.08), (0.45, a.carina_v), (0.3, dome - 0.05)], 0.0028, 0.45)
    elif kind in ("cvc", "port"):
        canvas.polyline(img, [(0.35, a.apex_v), (0.45, a.carina_v + 0.03)], 0.003, 0.3)
    elif kind == "chest_tube":
        canvas.polyline(img, [(0.7, dome), (0.55, a.apex_v + 0.08)], 0.006, 0.15, profile="tube")


# -- stored values -----------------------------------------------------------------------------
def to_stored(att: np.ndarray, *, bits_stored: int, photometric: str, rng: np.random.Generator) -> np.ndarray:
    """Map attenuation to unsigned stored values with quantum noise; MONOCHROME1 inverts."""
    maxval = (1 << bits_stored) - 1
    x = np.clip(att, 0.0, 1.3) / 1.3
    x = x + 0.006 * rng.standard_normal(x.shape, dtype=np.float32)
    x = np.clip(x, 0.0, 1.0) ** 0.9
    stored = np.rint(maxval * (0.03 + 0.92 * x)).astype(np.uint16)
    if photometric == "MONOCHROME1":
        stored = (maxval - stored).astype(np.uint16)
    return stored


def brightness(stored: np.ndarray, *, bits_stored: int, photometric: str) -> np.ndarray:
    """Displayed brightness 0..1 (dense = bright) whatever the photometric interpretation."""
    x = stored.astype(np.float32) / ((1 << bits_stored) - 1)
    return 1.0 - x if photometric == "MONOCHROME1" else x

