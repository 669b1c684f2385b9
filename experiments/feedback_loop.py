"""The feedback loop on a simulated site (issue 12; run it with ``experiments/feedback_loop.sh``).

Every step is the real command, as a site would run it:

1. ``unirg-trainer synth``: a fresh testbed (patients the demo model never saw); its institution C patients
   are the site, split in two batches of patients;
2. ``unirg-trainer publish`` the current model (default the demo model, var/models/unirg-demo) into the
   site's publish directory, and ``unirg listen --model PUBLISH_DIR`` (in-process worker, hot reload);
3. batch 1: the images go in by C-STORE (pynetdicom, each file in its own transfer syntax) and are
   drafted; then the signed final report SRs arrive by C-STORE and the capture pairs them;
4. ``unirg-trainer export`` (de-identified) -> ``unirg-trainer sft --base MODEL --data EXPORT`` ->
   ``unirg-trainer publish``: the running worker swaps the new version in;
5. batch 2: images, drafts by the new version, finals;
6. control: a second site drafts batch 2 with the old model (same studies, so the comparison is paired);
7. ``unirg feedback --json`` of both sites -> ``OUT/results.md``: agreement (share of the CheXpert-14
   observations on which draft and final agree) by batch and model version with 95% bootstrap CIs over
   patients, and the paired difference new - old on batch 2. Honest: if it does not improve, it says so.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / ".venv" / "bin"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(REPO / "var" / "experiments" / "feedback-loop"))
    p.add_argument("--model", default=str(REPO / "var" / "models" / "unirg-demo"), help="The site's current model.")
    p.add_argument("--patients", type=int, default=90, help="Testbed patients (a third at institution C).")
    p.add_argument("--seed", type=int, default=11, help="Testbed seed (the demo model's testbed uses 0).")
    p.add_argument("--sft-steps", type=int, default=80)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-boot", type=int, default=2000)
    p.add_argument("--timeout", type=float, default=900, help="Seconds to wait for drafts or pairs of a batch.")
    p.add_argument("--quick", action="store_true", help="Smoke run: fewer patients and steps.")
    args = p.parse_args(argv)
    if args.quick:
        args.patients, args.sft_steps = min(args.patients, 24), min(args.sft_steps, 6)
    return args


def run(*cmd: str, log: Path | None = None, env: dict | None = None) -> str:
    print("$", " ".join(cmd[:1] + tuple(c if len(c) < 80 else "..." for c in cmd[1:])), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if log is not None:
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}\n")
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return proc.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Site:
    """One ``unirg listen`` (in-process worker) on a data dir, with its model."""

    def __init__(self, data_dir: Path, model: Path, logs: Path) -> None:
        self.data_dir, self.model, self.port = data_dir, model, free_port()
        data_dir.mkdir(parents=True, exist_ok=True)
        self.log = open(logs / f"listen-{data_dir.name}.log", "a", encoding="utf-8")
        self.proc = subprocess.Popen(
            [str(BIN / "unirg"), "listen", "--port", str(self.port), "--data-dir", str(data_dir),
             "--model", str(model)], stdout=self.log, stderr=subprocess.STDOUT)
        self._wait_port()

    def _wait_port(self, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise SystemExit(f"unirg listen exited ({self.proc.returncode}); see {self.log.name}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.5)
        raise SystemExit(f"unirg listen did not open port {self.port}")

    def send(self, files: list[Path]) -> None:
        from unirg.plugin.demo import c_store

        for i in range(0, len(files), 50):
            chunk = files[i:i + 50]
            stored = c_store(chunk, self.port, called="UNIRG", calling="SITE_CR")
            if stored != len(chunk):
                raise SystemExit(f"only {stored} of {len(chunk)} instances stored")

    def status(self) -> dict:
        return json.loads(run(str(BIN / "unirg"), "status", "--data-dir", str(self.data_dir), "--json"))

    def pairs(self) -> list[dict]:
        out = run(str(BIN / "unirg"), "feedback", "--data-dir", str(self.data_dir), "--json")
        return [r for r in map(json.loads, out.splitlines()) if "summary" not in r]

    def wait(self, what: str, done, timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise SystemExit(f"unirg listen exited ({self.proc.returncode}); see {self.log.name}")
            if done():
                return
            time.sleep(3)
        raise SystemExit(f"timed out waiting for {what} in {self.data_dir}")

    def batch(self, studies: list[dict], root: Path, timeout: float) -> None:
        """Images in, drafts out, then the signed finals in and paired."""
        before = self.status()["queue"]["done"]
        uids = {s["study_uid"] for s in studies}
        self.send([root / img["path"] for s in studies for img in s["images"]])

        def drafted() -> bool:
            q = self.status()["queue"]
            if q["failed"]:
                raise SystemExit(f"{q['failed']} drafts failed: see `unirg status --data-dir {self.data_dir}`")
            return q["done"] - before >= len(studies) and not (q["queued"] or q["in_flight"] or q["retrying"])

        self.wait("drafts", drafted, timeout)
        self.send([root / s["report_sr"] for s in studies])
        self.wait("pairs", lambda: uids <= {p["study_uid"] for p in self.pairs()}, timeout)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def bootstrap_ci(groups: list[list[float]], n_boot: int, seed: int = 0) -> tuple[float, float, float]:
    """Mean of all values and the 95% percentile CI, resampling patients (``groups``)."""
    flat = [v for g in groups for v in g]
    rng, means = random.Random(seed), []
    for _ in range(n_boot):
        sample = [v for g in rng.choices(groups, k=len(groups)) for v in g]
        means.append(sum(sample) / len(sample))
    means.sort()
    return sum(flat) / len(flat), means[int(0.025 * n_boot)], means[int(0.975 * n_boot) - 1]


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"{out} exists: remove it (or pass --out) for a fresh run")
    logs = out / "logs"
    logs.mkdir(parents=True)
    trainer, unirg = str(BIN / "unirg-trainer"), str(BIN / "unirg")
    base = Path(args.model)
    if not (base / "unirg-model.json").is_file():
        raise SystemExit(f"no model at {base}: run scripts/build-demo-model.sh (or pass --model)")
    t0 = time.monotonic()

    # 1. the site's studies: institution C of a fresh testbed, two batches of patients
    run(trainer, "synth", "--out", str(out / "testbed"), "--patients", str(args.patients), "--seed", str(args.seed),
        "--size", "128", "--workers", "1", log=logs / "commands.log")
    records = [json.loads(line) for line in (out / "testbed" / "manifest.jsonl").read_text().splitlines()]
    site = [r for r in records if r["institution"] == "C"]
    patients = sorted({r["patient_id"] for r in site})
    first = set(patients[: len(patients) // 2])
    batch1 = [r for r in site if r["patient_id"] in first]
    batch2 = [r for r in site if r["patient_id"] not in first]
    print(f"site: {len(site)} institution C studies of {len(patients)} patients; batch 1 {len(batch1)}, "
          f"batch 2 {len(batch2)}", flush=True)

    # 2.-5. the loop on a running listener with a publish directory
    publish = out / "site" / "models"
    run(trainer, "publish", "--model", str(base), "--to", str(publish), log=logs / "commands.log")
    old_version = json.loads((publish / "current.json").read_text()).get("version")
    listener = Site(out / "site", publish, logs)
    try:
        listener.batch(batch1, out / "testbed", args.timeout)
        print(f"batch 1 drafted and paired ({time.monotonic() - t0:.0f} s)", flush=True)
        seed_env = {"UNIRG_EXPORT_SEED": f"feedback-loop-{args.seed}"}
        print(run(trainer, "export", "--data-dir", str(out / "site"), "--out", str(out / "export"),
                  log=logs / "commands.log", env=seed_env).strip(), flush=True)
        new_version = "site-sft-1"
        print(run(trainer, "sft", "--data", str(out / "export"), "--base", str(base), "--full", "--institutions",
                  "all", "--max-steps", str(args.sft_steps), "--lr", str(args.lr), "--batch-size", "4",
                  "--eval-fraction", "0", "--save-steps", "0", "--threads", str(args.threads), "--seed", "0",
                  "--out", str(out / "runs" / new_version), "--version", new_version,
                  log=logs / "commands.log").strip(), flush=True)
        run(trainer, "publish", "--model", str(out / "runs" / new_version), "--to", str(publish),
            log=logs / "commands.log")
        time.sleep(5)  # the worker swaps the new version in between jobs
        listener.batch(batch2, out / "testbed", args.timeout)
        print(f"batch 2 drafted and paired ({time.monotonic() - t0:.0f} s)", flush=True)
        site_pairs = listener.pairs()
    finally:
        listener.stop()

    # 6. control: the old model on batch 2
    control = Site(out / "control", base, logs)
    try:
        control.batch(batch2, out / "testbed", args.timeout)
        control_pairs = control.pairs()
    finally:
        control.stop()

    # 7. the table
    patient_of = {r["study_uid"]: r["patient_id"] for r in records}
    b1, b2 = {r["study_uid"] for r in batch1}, {r["study_uid"] for r in batch2}

    def row(name: str, pairs: list[dict], studies: set[str]) -> tuple[str, str, int, tuple]:
        chosen = [p for p in pairs if p["study_uid"] in studies]
        versions = sorted({p["model_version"] for p in chosen})
        by_patient: dict[str, list[float]] = {}
        for p in chosen:
            by_patient.setdefault(patient_of[p["study_uid"]], []).append(p["label_agreement"])
        return name, ", ".join(versions), len(chosen), bootstrap_ci(list(by_patient.values()), args.n_boot)

    rows = [row("batch 1, current model", site_pairs, b1), row("batch 2, after the loop", site_pairs, b2),
            row("batch 2, control (old model)", control_pairs, b2)]
    new = {p["study_uid"]: p["label_agreement"] for p in site_pairs if p["study_uid"] in b2}
    old = {p["study_uid"]: p["label_agreement"] for p in control_pairs if p["study_uid"] in b2}
    diff: dict[str, list[float]] = {}
    for uid in sorted(new.keys() & old.keys()):
        diff.setdefault(patient_of[uid], []).append(new[uid] - old[uid])
    d_mean, d_low, d_high = bootstrap_ci(list(diff.values()), args.n_boot)
    verdict = ("improved" if d_low > 0 else "got worse" if d_high < 0 else
               "did not change significantly (the CI includes 0)")
    lines = ["# Feedback loop on a simulated site (institution C of the testbed)", "",
             f"Testbed seed {args.seed}, {args.patients} patients; site: {len(site)} institution C studies, "
             f"batch 1 {len(batch1)} / batch 2 {len(batch2)} studies. Current model `{base.name}` "
             f"(version {old_version}); SFT on the de-identified export of batch 1: {args.sft_steps} steps, "
             f"lr {args.lr}, full fine-tuning; published as `{new_version}`. Agreement: share of the CheXpert-14 "
             "observations on which draft and signed final agree (`unirg feedback`); 95% CIs by patient "
             f"bootstrap ({args.n_boot} resamples). Wall time {time.monotonic() - t0:.0f} s.", "",
             "| studies | model version(s) | n | agreement [95% CI] |", "|---|---|---:|---|"]
    for name, versions, n, (mean, low, high) in rows:
        lines.append(f"| {name} | {versions} | {n} | {mean:.3f} [{low:.3f}, {high:.3f}] |")
    lines += ["", f"Paired on batch 2 (after - control, {sum(map(len, diff.values()))} studies): "
              f"{d_mean:+.3f} [{d_low:+.3f}, {d_high:+.3f}]: the loop {verdict}."]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
