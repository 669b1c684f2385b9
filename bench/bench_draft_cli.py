"""Studies per second of ``unirg draft``: many studies in one process vs one process per study.

    .venv/bin/python bench/bench_draft_cli.py [--data TESTBED] [--studies 8] [--model var/models/unirg-demo]
        [--batch-size 4] [--max-new-tokens 64] [--threads N]

Both runs are real ``unirg draft`` processes on the same studies with ``--priors-from`` the testbed
(so each study gets its prior as in production): N processes (each: interpreter start, imports, model
load, prior index, one draft) against one process drafting all N (one model load, batched generation).
Studies come from a synthetic testbed (``--data DIR``, else a small one generated into a temporary
folder): every study with a frontal image, most recent first. Prints wall time, studies/s and the ratio,
and the one-process run with ``--batch-size 1`` to show what batching adds to the single model load.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
UNIRG = Path(sys.executable).with_name("unirg")


def _study_dirs(data: Path, count: int) -> list[Path]:
    from unirg.trainer.synth import load_manifest

    records = [r for r in load_manifest(data) if any(i["view"] in ("PA", "AP") for i in r["images"])]
    records.sort(key=lambda r: (r["study_date"], r["study_time"]), reverse=True)
    return [(data / r["report_sr"]).parent for r in records[:count]]


def _run(args: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run([str(UNIRG), "draft", *args], capture_output=True, text=True, env=env)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"unirg draft failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return took


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="a synthetic testbed (default: generate one)")
    parser.add_argument("--studies", type=int, default=8)
    parser.add_argument("--model", type=Path, default=REPO / "var" / "models" / "unirg-demo")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, help="OMP/torch threads per process (default: torch's)")
    args = parser.parse_args(argv)
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-draft-") as tmp:
        data = args.data
        if data is None:
            from unirg.trainer.synth import generate_testbed

            data = Path(tmp) / "testbed"
            generate_testbed(data, patients=max(4, args.studies), seed=0, size=128)
        studies = _study_dirs(data, args.studies)
        common = ["--model", str(args.model), "--priors-from", str(data), "--max-new-tokens", str(args.max_new_tokens)]
        _run([str(studies[0]), "--out", f"{tmp}/warm", *common], env)  # warm the file cache, not timed
        per_process = sum(_run([str(s), "--out", f"{tmp}/single", *common], env) for s in studies)
        together = _run([*map(str, studies), "--out", f"{tmp}/many", "--batch-size", str(args.batch_size),
                         *common], env)
        unbatched = _run([*map(str, studies), "--out", f"{tmp}/unbatched", "--batch-size", "1", *common], env)
        singles, many = len(list(Path(tmp, "single").glob("*.dcm"))), len(list(Path(tmp, "many").glob("*.dcm")))
    n = len(studies)
    print(f"unirg draft, {n} studies, model {args.model.name}, max_new_tokens {args.max_new_tokens}, "
          f"batch size {args.batch_size}, {os.cpu_count()} CPUs")
    print(f"  one process per study: {per_process:7.1f} s  {n / per_process:6.2f} studies/s  "
          f"({per_process / n:.1f} s/study, {singles} SRs)")
    print(f"  all in one process:    {together:7.1f} s  {n / together:6.2f} studies/s  "
          f"({together / n:.1f} s/study, {many} SRs)")
    print(f"  one process, batch 1:  {unbatched:7.1f} s  {n / unbatched:6.2f} studies/s  "
          f"({unbatched / n:.1f} s/study)")
    print(f"  ratio (one process / one per study): {per_process / together:.2f}x "
          f"(of which batching: {unbatched / together:.2f}x)")


if __name__ == "__main__":
    main()
