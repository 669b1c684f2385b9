"""DICOM pixels -> 8-bit PIL image a vision-language processor can take.

Steps, in DICOM's display order (PS3.3 C.11): decode (any transfer syntax pydicom
has a plugin for: uncompressed, RLE, JPEG baseline/lossless, JPEG-LS, JPEG 2000),
first frame of a multi-frame image, Modality LUT (rescale or LUT sequence),
VOI LUT (LUT sequence, else the first window, else a 0.5-99.5 percentile window),
inversion of MONOCHROME1, 8 bits, then geometry: the aspect ratio is kept and the
longest side is resized to ``size`` (UniRG-CXR uses 512), padded to a square by
default. The processor of each model family does its own final resize.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut

__all__ = ["PixelDataError", "dataset_to_array", "dataset_to_image", "fit_image", "window"]

Fit = Literal["pad", "longest"]


class PixelDataError(ValueError):
    """The dataset has no pixel data that can be decoded into a grey-scale image."""


def _first_frame(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if frames > 1:
        arr = arr[0]
    if samples > 1:  # colour (e.g. a scanned film): luminance, already display-ready
        rgb = arr.astype(np.float64)[..., :3]
        arr = rgb @ np.array([0.299, 0.587, 0.114])
    return arr


def window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Apply a VOI window; returns floats in ``[0, 1]`` (PS3.3 C.11.2.1.2).

    >>> window(np.array([0.0, 50.0, 100.0]), center=50, width=100, function="LINEAR_EXACT").tolist()
    [0.0, 0.5, 1.0]
    """
    x = values.astype(np.float64)
    function = (function or "LINEAR").upper()
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((x - center) / width + 0.5, 0.0, 1.0)
    if width <= 1:  # LINEAR needs width >= 1; a width of 1 is a threshold
        return (x > center - 0.5).astype(np.float64)
    return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _stretch(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if not high > low:
        return np.zeros(values.shape, dtype=np.float64)
    return np.clip((values.astype(np.float64) - low) / (high - low), 0.0, 1.0)


def _voi_lut(values: np.ndarray, ds: Dataset) -> np.ndarray:
    """First VOI LUT of the VOI LUT Sequence, scaled to ``[0, 1]`` by the LUT's own range.

    Done here rather than with ``pydicom.pixels.apply_voi``: pydicom 3.0.2 indexes an
    8-bit LUT with a ``uint8`` array, so LUTs with more than 256 entries come out wrong.
    """
    item = ds.VOILUTSequence[0]
    entries, first_mapped, _bits = (int(v) for v in item.LUTDescriptor)
    entries = entries or 65536
    data = item.LUTData
    if isinstance(data, bytes):  # OW: 16-bit words in the dataset's byte order
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        little = syntax.is_little_endian if syntax is not None and syntax.is_transfer_syntax else True
        lut = np.frombuffer(data, dtype="<u2" if little else ">u2")[:entries]
    else:
        lut = np.asarray(data if isinstance(data, (list, tuple, MultiValue)) else [data], dtype=np.float64)
    index = np.clip(np.round(values).astype(np.int64) - first_mapped, 0, len(lut) - 1)
    return _stretch(lut.astype(np.float64)[index], float(lut.min()), float(lut.max()))


def _first_number(value: object) -> float | None:
    if value is None:
        return None
    try:
        return float(value[0] if hasattr(value, "__len__") and not isinstance(value, str) else value)
    except (TypeError, ValueError, IndexError):
        return None


def dataset_to_array(ds: Dataset, *, percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """Decode and window ``ds``; returns a 2-D ``uint8`` array, white = dense (bone).

    Raises
    ------
    PixelDataError
        When ``ds`` has no pixel data, or it cannot be decoded.
    """
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise PixelDataError(f"dataset {ds.get('SOPInstanceUID', '?')} has no pixel data")
    try:
        raw = ds.pixel_array
    except Exception as exc:  # pydicom raises several types for unsupported syntaxes
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "?")
        raise PixelDataError(f"cannot decode pixel data (transfer syntax {syntax}): {exc}") from exc
    arr = _first_frame(np.asarray(raw), ds)
    if arr.ndim != 2:
        raise PixelDataError(f"expected a 2-D image, got pixel array of shape {arr.shape}")

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if int(ds.get("SamplesPerPixel", 1) or 1) > 1:
        unit = _stretch(arr, 0.0, 255.0)
    else:
        values = apply_modality_lut(arr, ds).astype(np.float64)
        center = _first_number(ds.get("WindowCenter"))
        width = _first_number(ds.get("WindowWidth"))
        if ds.get("VOILUTSequence"):
            unit = _voi_lut(values, ds)
        elif center is not None and width is not None and width > 0:
            unit = window(values, center, width, str(ds.get("VOILUTFunction", "LINEAR")))
        else:
            low, high = np.percentile(values, percentiles)
            unit = _stretch(values, float(low), float(high))
        if photometric == "MONOCHROME1":
            unit = 1.0 - unit
    return np.round(unit * 255.0).astype(np.uint8)


def fit_image(image: Image.Image, size: int, fit: Fit = "pad") -> Image.Image:
    """Resize so the longest side is ``size``, keeping the aspect ratio; ``fit="pad"`` pads
    the short side (black, centred) to a ``size`` square.

    >>> fit_image(Image.new("L", (200, 100)), 64).size
    (64, 64)
    >>> fit_image(Image.new("L", (200, 100)), 64, fit="longest").size
    (64, 32)
    """
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    if fit not in ("pad", "longest"):
        raise ValueError(f"fit must be 'pad' or 'longest', got {fit!r}")
    width, height = image.size
    scale = size / max(width, height)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if new_size != image.size:
        image = image.resize(new_size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    if fit == "longest" or new_size == (size, size):
        return image
    canvas = Image.new(image.mode, (size, size), 0)
    canvas.paste(image, ((size - new_size[0]) // 2, (size - new_size[1]) // 2))
    return canvas


def dataset_to_image(
    ds: Dataset | str | Path,
    *,
    size: int | None = 512,
    fit: Fit = "pad",
    mode: Literal["RGB", "L"] = "RGB",
) -> Image.Image:
    """A DICOM image (dataset or file path) as a windowed 8-bit PIL image.

    Parameters
    ----------
    ds : Dataset or path
        The image.
    size : int or None
        Longest side after resizing; ``None`` keeps the native size.
    fit : {"pad", "longest"}
        ``"pad"`` gives a ``size`` x ``size`` square (UniRG-CXR), ``"longest"`` only
        resizes the longest side.
    mode : {"RGB", "L"}
        Grey values replicated to RGB (what most processors expect) or single channel.
    """
    if not isinstance(ds, Dataset):
        ds = dcmread(ds)
    image = Image.fromarray(dataset_to_array(ds))  # uint8 2-D -> mode "L"
    if size is not None:
        image = fit_image(image, size, fit)
    return image.convert(mode) if mode != "L" else image
