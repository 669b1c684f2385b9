"""Studies per second: batched vs one-at-a-time generation, same model, same studies.

    .venv/bin/python bench/bench_generation.py [--model var/models/unirg-demo] [--studies 16]
        [--batch-size 8] [--max-new-tokens 128] [--threads 2] [--device cpu|cuda]

Studies come from a synthetic testbed (``--data DIR``, else a small one generated into a
temporary folder) and go through the plugin's own preparation
(:func:`unirg.plugin.pipeline.prepare_study`: view selection, the most recent prior and
its report, pixels). Pixel decoding and model loading are not timed; one warm-up call
runs first. Greedy decoding; a batch runs until its longest draft ends, so the gain
depends on how much the drafts' lengths differ. Prints studies/s for both, the ratio,
and how many batched drafts equal the one-at-a-time ones (left padding can change the
last bits of a float and, rarely, a greedy choice).

Without ``--model`` the demo model is used when it exists, else a tiny random Qwen3-VL
(timing only: its text is noise).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _studies(data: Path, count: int):
    import pydicom

    from unirg.plugin.pipeline import StudySkipped, prepare_study
    from unirg.trainer.synth import load_manifest

    records = load_manifest(data)
    by_uid = {record["study_uid"]: record for record in records}

    def objects(record):
        paths = [image["path"] for image in record["images"]] + [record["report_sr"]]
        return [pydicom.dcmread(data / path) for path in paths]

    prepared = []
    for record in records:
        prior = by_uid.get(record.get("prior_study_uid") or "")
        try:
            prepared.append(prepare_study(objects(record), [objects(prior)] if prior else []).study_input)
        except StudySkipped:
            continue
        if len(prepared) == count:
            break
    return prepared


def _timed(model, studies, generation) -> tuple[float, list]:
    start = time.perf_counter()
    drafts = model.draft(studies, generation)
    return time.perf_counter() - start, drafts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model directory (default: the demo model, else a tiny random one)")
    parser.add_argument("--data", type=Path, help="testbed directory (default: generate a small one)")
    parser.add_argument("--studies", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default=None)
    parser.add_argument("--repeats", type=int, default=1, help="time each mode this many times, keep the best")
    args = parser.parse_args(argv)

    import torch

    from unirg.model import GenerationConfig, load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        data = args.data
        if data is None:
            from unirg.trainer.synth import generate_testbed

            data = Path(scratch) / "testbed"
            generate_testbed(data, patients=max(4, args.studies // 2), seed=0, size=256)
        model_path = args.model or REPO / "var" / "models" / "unirg-demo"
        note = ""
        if not (model_path / "config.json").is_file():
            if args.model:
                print(f"no model at {model_path}", file=sys.stderr)
                return 2
            from unirg.trainer.tiny_models import build_tiny_qwen3_vl

            model_path = build_tiny_qwen3_vl(Path(scratch) / "tiny", image_size=128)
            note = " (tiny random model: the demo model is not built)"
        model = load_model(model_path, device=args.device)
        studies = _studies(Path(data), args.studies)
        if len(studies) < args.studies:
            print(f"only {len(studies)} studies available", file=sys.stderr)
        single = GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=1)
        batched = GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
        model.draft(studies[: min(2, len(studies))], batched)  # warm-up
        one_s, one = min((_timed(model, studies, single) for _ in range(args.repeats)), key=lambda r: r[0])
        batch_s, many = min((_timed(model, studies, batched) for _ in range(args.repeats)), key=lambda r: r[0])

    n = len(studies)
    same = sum(a.raw_text == b.raw_text for a, b in zip(one, many, strict=True))
    tokens = sum(len(model.processor.tokenizer(d.raw_text)["input_ids"]) for d in one)
    device = str(model.device) + (f", {torch.get_num_threads()} threads" if model.device.type == "cpu" else "")
    if model.device.type == "cuda":
        device += f", {torch.cuda.get_device_name(model.device)}"
    print(f"model: {model.info.name} {model.info.version}{note}; device: {device}")
    print(f"studies: {n} (with prior: {sum(s.has_prior for s in studies)}), greedy, max_new_tokens "
          f"{args.max_new_tokens}, {tokens / n:.0f} generated tokens per study on average")
    print(f"one at a time : {n / one_s:8.2f} studies/s  ({one_s:.2f} s)")
    print(f"batched (x{args.batch_size:<3}): {n / batch_s:8.2f} studies/s  ({batch_s:.2f} s)")
    print(f"ratio batched / one-at-a-time: {one_s / batch_s:.2f}x; identical drafts: {same}/{n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
