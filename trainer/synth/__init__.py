"""The synthetic chest X-ray testbed (``unirg-trainer synth``).

``generate_testbed(out_dir, patients, seed, size=512)`` writes DICOM studies at three institutions,
a signed report SR per study and ``manifest.jsonl`` (format in docs/design.md) and returns the
manifest records; ``load_manifest(out_dir)`` reads them back.
"""

from unirg.trainer.synth.generate import generate_testbed, load_manifest

__all__ = ["generate_testbed", "load_manifest"]
