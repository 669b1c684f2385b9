"""``unirg-trainer synth``: write the synthetic chest X-ray testbed."""

from __future__ import annotations

import os
import time
from collections import Counter

import click

from unirg.trainer.synth.generate import MAX_SIZE, MIN_SIZE, generate_testbed


@click.command("synth")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output folder (DIR/manifest.jsonl, DIR/<PatientID>/<Accession>/*.dcm).")
@click.option("--patients", default=20, show_default=True, type=click.IntRange(min=1),
              help="Number of synthetic patients (1 to 6 studies each).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="Seed: the same seed gives the same manifest and pixels.")
@click.option("--size", default=512, show_default=True, type=click.IntRange(MIN_SIZE, MAX_SIZE),
              help="Rows and columns of each image (e.g. 3000 for benchmarks).")
@click.option("--workers", default=0, show_default=True, type=click.IntRange(min=0),
              help="Worker processes (0: one per CPU, at most 8).  The output does not depend on it.")
def synth(out_dir: str, patients: int, seed: int, size: int, workers: int) -> None:
    """Write synthetic patients with prior studies at three institutions: DX/CR images in six
    lossless transfer syntaxes, a signed report SR per study and DIR/manifest.jsonl."""
    workers = workers or min(os.cpu_count() or 1, 8)
    start = time.monotonic()
    records = generate_testbed(out_dir, patients, seed, size, workers=workers)
    seconds = time.monotonic() - start
    images = [img for r in records for img in r["images"]]
    sites = Counter(r["institution"] for r in records)
    click.echo(
        f"{patients} patients, {len(records)} studies, {len(images)} images "
        f"({', '.join(f'{k}: {v}' for k, v in sorted(sites.items()))}) in {seconds:.1f} s -> {out_dir}"
    )
