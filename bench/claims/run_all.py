"""The four claim experiments in order, then the README's results section proposed from their results.json.

    python bench/claims/run_all.py                  # the full versions (about 2.5 hours on 2 shared cores)
    python bench/claims/run_all.py --budget smoke   # each in minutes, on the shipped sample
    python bench/claims/run_all.py --render         # only README_RESULTS.md from the results already there

Label efficiency first: it trains the MoCo v2 model that new categories and compression reuse (finished
runs in the work folder are reused by every script). Capacity last: it is the most expensive, and what a
shortened session leaves out. Other flags (--workdir, --seeds, --threads, --out) go to every script.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.claims import capacity, compression, label_efficiency, new_categories  # noqa: E402
from bench.claims.common import machine_line, parse_claim  # noqa: E402

EXPERIMENTS = (label_efficiency, new_categories, compression, capacity)
NAMES = ("label_efficiency", "new_categories", "compression", "capacity")


def render(out: Path) -> Path:
    """README_RESULTS.md: the headline of every finished experiment, where a claim did not hold included."""
    rows, missing, commands, machine, precisions = [], [], [], None, set()
    for name in NAMES:
        path = out / name / "results.json"
        if not path.exists():
            missing.append(name)
            continue
        results = json.loads(path.read_text())
        rows += results.get("headlines", [])
        commands.append(f"`{results['command']}`")
        machine = machine or results["machine"]
        precisions.update(results.get("precision", "").split("/") if results.get("precision") else [])
    held = [r for r in rows if r["held"].startswith("yes")]
    failed = [r for r in rows if not r["held"].startswith("yes")]
    lines = [
        "## Results: the case for self-supervision, measured",
        "",
        "sslhub exists because labels are costly and features learnt without them transfer. Four experiments "
        "test that on CIFAR-10 at CPU-sized budgets (2 shared cores; `bench/claims/`), each one command that "
        "reruns it: " + ", ".join(commands) + ".",
        "",
        f"**What held** ({len(held)} of {len(rows)}): "
        + ("; ".join(f"{r['claim'].split(':')[0]}: {r['result']}" for r in held) or "none")
        + ".",
        "",
        f"**What did not hold at these budgets** ({len(failed)} of {len(rows)}): "
        + ("; ".join(f"{r['claim'].split(':')[0]}: {r['result']} ({r['held']})" for r in failed) or "none")
        + ".",
        "",
        "| claim | measured (held-out top-1) | held? | report |",
        "|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['claim']} | {row['result']} | {row['held']} | [bench/claims/{row['report']}]"
            f"(bench/claims/{row['report']}) |"
        )
    lines += [
        "",
        "Mean ± standard deviation over seeds where a claim was repeated (n = seeds), else one seed. Budgets "
        "are minutes per run, far below the papers' (a ResNet-18 MoCo v2 reaches 80%+ kNN on CIFAR-10 after "
        "200 epochs; these models saw a few epochs): the numbers say what self-supervision gives at this "
        "scale, not at convergence.",
    ]
    if machine:
        lines += ["", machine_line(machine)]
    if precisions:
        lines += ["", f"Precision (`--mixed_precision auto`): {'/'.join(sorted(precisions))}."]
    if missing:
        lines += ["", f"Not run yet: {', '.join(missing)}."]
    path = out / "README_RESULTS.md"
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")
    return path


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--render" in argv:
        argv.remove("--render")
        claim = parse_claim("run_all", __doc__, argv)
        render(claim.out)
        return
    for experiment in EXPERIMENTS:
        experiment.main(argv)
    render(parse_claim("run_all", __doc__, argv).out)


if __name__ == "__main__":
    main()
