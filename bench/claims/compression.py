"""Compression: can a big self-supervised model be distilled into a small student that beats the same student
trained with MoCo directly, at equal student steps?

    python bench/claims/compression.py                  # the full version
    python bench/claims/compression.py --budget smoke   # minutes, on the shipped sample (the slow test)

1. Teacher: the MoCo v2 model of label efficiency (the largest the CPU budget allows, see the report);
   for `kl`, which needs class logits, the same model fine-tuned on all labels (label efficiency's 100% run).
2. Student `test_resnet` (0.37M parameters), every run the same steps and batch (`recipes/distill.py`):
   `seed`, `compress_1q`, `compress_2q`, `cluster`, `mse`, `kl`; and MoCo v2 from scratch
   (`recipes/pretrain_moco.py`). Seed 0 for all; the best label-free loss and MoCo again with every seed.
3. kNN (k=200, T=0.1) of every student on the held-out split, the linear protocol for the repeated ones.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.claims.common import (  # noqa: E402
    CIFAR_MEAN,
    CIFAR_STD,
    MOCO,
    Runs,
    card_entry,
    finetune,
    headline,
    held,
    linear_flags,
    parameters,
    pct,
    plot_bars,
    precision_of,
    pretrain_moco,
    report_header,
    shared_moco,
    ship_card,
    start,
    summarize,
    write_outputs,
)

STUDENT = "test_resnet"
BUDGET = {"smoke": dict(steps=20, batch_size=64), "full": dict(steps=200, batch_size=256)}
LOSSES = ("seed", "compress_1q", "compress_2q", "cluster", "mse", "kl")
# CompRess (and its regression / clustering baselines) distil the backbone feature; SEED the projection;
# Hinton's KD the class logits.
TEACHER_OUTPUT = {"seed": "projection", "compress_1q": "pooled", "compress_2q": "pooled", "mse": "pooled"}
TEACHER_OUTPUT.update(cluster="pooled", kl="logits")
QUEUE_LOSSES = ("seed", "compress_1q", "compress_2q")


def distill(runs: Runs, data: str, teacher: Path, loss: str, seed: int) -> Path:
    budget = BUDGET[runs.claim.budget]
    flags = [
        "--dataset", data, "--split", "train", "--teacher", teacher, "--teacher_output", TEACHER_OUTPUT[loss],
        "--model.backbone", STUDENT, "--model.loss", loss, "--model.image_size", 32,
        "--model.image_mean", CIFAR_MEAN, "--model.image_std", CIFAR_STD,
        "--max_steps", budget["steps"], "--batch_size", budget["batch_size"], "--seed", seed,
        "--learning_rate", 0.06, "--weight_decay", 5e-4, "--batched_augmentation", "true",
        "--knn_steps", 0, "--save_steps", budget["steps"], "--save_total_limit", 1, "--num_workers", 1,
        "--report_to", "tensorboard",
    ]  # fmt: skip
    if loss in QUEUE_LOSSES:
        flags += ["--model.queue_size", 4096]
    name = f"student-{STUDENT}-{loss}-{budget['steps']}x{budget['batch_size']}-s{seed}"
    return runs.recipe(name, "distill.py", *flags) / "final"


def main(argv=None) -> dict:
    claim, runs, data, num_train = start("compression", __doc__, argv)
    budget = BUDGET[claim.budget]
    teacher, teacher_metrics = shared_moco(runs, data)
    classifier = Path(finetune(runs, teacher, data, num_train, 1.0, claim.seeds[0])["saved_model"])

    def knn(name: str, model: Path) -> dict:
        return runs.evaluate(f"knn-{name}", model, data, "knn")

    def student(method: str, seed: int) -> Path:
        if method == "moco":
            return pretrain_moco(runs, data, STUDENT, **budget, seed=seed)[0]
        return distill(runs, data, classifier if method == "kl" else teacher, method, seed)

    scores: dict[str, dict[int, dict]] = {}
    folders: dict[str, dict[int, Path]] = {}
    first = claim.seeds[0]
    for method in ("moco", *LOSSES):
        folders.setdefault(method, {})[first] = folder = student(method, first)
        scores.setdefault(method, {})[first] = knn(folder.parent.name, folder)
    label_free = [loss for loss in LOSSES if loss != "kl"]
    winner = max(label_free, key=lambda loss: scores[loss][first]["accuracy"])
    print(f"  best label-free loss at seed {first}: {winner}", flush=True)
    linear = {}
    for method in ("moco", winner):
        for seed in claim.seeds:
            if seed not in folders[method]:
                folders[method][seed] = folder = student(method, seed)
                scores[method][seed] = knn(folder.parent.name, folder)
            folder = folders[method][seed]
            linear.setdefault(method, {})[seed] = runs.evaluate(
                f"linear-{folder.parent.name}",
                folder,
                data,
                "linear",
                *linear_flags(num_train, smoke=claim.smoke),
            )
    teacher_knn = knn(teacher.parent.name, teacher)

    table = {
        method: summarize([r["accuracy"] for r in by_seed.values()]) for method, by_seed in scores.items()
    }
    linear_table = {
        method: summarize([r["accuracy"] for r in by_seed.values()]) for method, by_seed in linear.items()
    }
    claim.pictures.mkdir(parents=True, exist_ok=True)
    plot_bars(
        {"kNN top-1": {("MoCo v2 from scratch" if m == "moco" else m): s for m, s in table.items()}},
        claim.pictures / "students_knn.png",
        "kNN top-1 on the held-out split (%)",
        f"`{STUDENT}` students, {budget['steps']} steps of batch {budget['batch_size']} each",
        reference=(f"teacher MoCo v2 {MOCO[claim.budget]['backbone']}", teacher_knn["accuracy"]),
    )
    plot_bars(
        {
            "linear probe top-1": {
                ("MoCo v2 from scratch" if m == "moco" else m): s for m, s in linear_table.items()
            }
        },
        claim.pictures / "students_linear.png",
        "linear probe top-1 on the held-out split (%)",
        f"MoCo v2 from scratch vs {winner}, {len(claim.seeds)} seeds",
    )
    winner_folder = folders[winner][first]
    ship_card(  # the shipped model's own numbers (its seed); the claim's page has the mean over seeds
        claim,
        winner_folder,
        f"student-{STUDENT}-{winner.replace('_', '-')}-cifar10-claims",
        [
            card_entry("kNN top-1 (k=200, T=0.1)", scores[winner][first]["accuracy"]),
            card_entry("linear probe top-1", linear[winner][first]["accuracy"]),
        ],
    )
    every = [r for by_seed in scores.values() for r in by_seed.values()]
    every += [r for by_seed in linear.values() for r in by_seed.values()]
    students = [f for by_seed in folders.values() for f in by_seed.values()]
    student_metrics = {f.parent.name: json.loads((f.parent / "metrics.json").read_text()) for f in students}
    results = {
        "budgets": {**budget, "images_seen": budget["steps"] * budget["batch_size"], "seeds": claim.seeds},
        "teacher": {
            "model": str(teacher),
            "backbone": MOCO[claim.budget]["backbone"],
            "parameters": parameters(MOCO[claim.budget]["backbone"]),
            "knn": teacher_knn["accuracy"],
            "pretraining_metrics": teacher_metrics,
            "kl_teacher": str(classifier),
        },
        "winner": winner,
        "knn": table,
        "linear": linear_table,
        "student_parameters": parameters(STUDENT),
        "student_train_seconds": {name: m.get("train_seconds") for name, m in student_metrics.items()},
        "precision": precision_of(teacher_metrics, *student_metrics.values(), *every),
    }
    gain = table[winner]["mean"] - table["moco"]["mean"]
    results["headlines"] = [
        headline(
            f"Compression: a `{STUDENT}` student distilled from MoCo v2 `{MOCO[claim.budget]['backbone']}` "
            f"(best label-free loss, `{winner}`) beats the same student trained with MoCo, equal student steps",
            f"kNN {pct(table[winner])} vs {pct(table['moco'])} ({100 * gain:+.1f})",
            held(
                gain,
                max(table[winner]["std"], table["moco"]["std"]),
                min(table[winner]["n"], table["moco"]["n"]),
            ),
            "compression.md",
        )
    ]
    write_outputs(claim, runs, results, report(claim, runs, results))
    return results


def report(claim, runs, results: dict) -> list[str]:
    budgets, teacher, table, linear = (
        results["budgets"],
        results["teacher"],
        results["knn"],
        results["linear"],
    )
    winner = results["winner"]
    lines = report_header(claim, f"Compression: distilling MoCo v2 into a `{STUDENT}` student", runs)
    pre = teacher["pretraining_metrics"]
    lines += [
        "## Setup",
        "",
        f"- **Teacher**: the MoCo v2 `{teacher['backbone']}` of label efficiency ({teacher['parameters'] / 1e6:.2f}M "
        f"parameters, {teacher['parameters'] / results['student_parameters']:.0f}x the student; kNN "
        f"{pct(teacher['knn'])}; {pre.get('steps')} steps, {pre.get('train_seconds')} s). It is the "
        "largest teacher this budget allows: on this shared 2-core CPU a MoCo step of `resnet34` ran at about "
        "100-135 images/s against 275-340 for `resnet10t`, so a bigger teacher would have been trained on a "
        "fraction of the images and been weaker (see capacity). For `kl` (Hinton KD, which needs class "
        "logits) the teacher is the same model fine-tuned on all labels (label efficiency's 100% run): that "
        "student learns from labels through its teacher, so it is not counted among the label-free losses.",
        f"- **Students**: `{STUDENT}` ({results['student_parameters'] / 1e6:.2f}M parameters) at 32x32, each {budgets['steps']} steps of batch "
        f"{budgets['batch_size']} ({budgets['images_seen']:,} images), SGD lr 0.06 per 256, wd 5e-4, cosine, "
        "batched MoCo v2 augmentation; queue 4096 for SEED and CompRess; k-means clusters: one per 80 images. "
        "MoCo v2 from scratch with the demo's settings for the same steps and batch.",
        f"- **Seeds**: {budgets['seeds'][0]} for every loss; the best label-free loss at that seed "
        f"(`{winner}`) and MoCo from scratch with seeds {budgets['seeds']} (the winner was chosen on the held-out "
        "split at the first seed, so its other seeds are the unbiased ones).",
        "- **Scored** by weighted kNN (k=200, T=0.1, bank = the training split) and, for the repeated runs, the "
        f"linear protocol, on the held-out split. Precision of every run: {results['precision']}.",
        "",
        "## Results",
        "",
        "| student | loss | kNN top-1 | linear probe top-1 |",
        "|---|---|---|---|",
    ]
    for method, s in table.items():
        label = (
            "MoCo v2 from scratch"
            if method == "moco"
            else "distilled" + (" (teacher saw labels)" if method == "kl" else "")
        )
        lines.append(
            f"| {label} | {method if method != 'moco' else 'InfoNCE'} | {pct(s)} | {pct(linear[method]) if method in linear else '-'} |"
        )
    lines += [
        f"| teacher, MoCo v2 `{teacher['backbone']}` | InfoNCE | {pct(teacher['knn'])} | - |",
        "",
        f"![kNN of the students]({claim.name}/students_knn.png) ![linear probe]({claim.name}/students_linear.png)",
        "",
        "## Reading",
        "",
    ]
    lines += [f"- {row['claim']}: {row['result']}: **{row['held']}**." for row in results["headlines"]]
    if winner in linear and "moco" in linear:
        lines.append(
            f"- Linear probe: `{winner}` {pct(linear[winner])} against MoCo from scratch {pct(linear['moco'])} "
            f"({100 * (linear[winner]['mean'] - linear['moco']['mean']):+.1f})."
        )
    beaten = [m for m in table if m not in ("moco", winner) and table[m]["mean"] > table["moco"]["mean"]]
    behind = [m for m in table if m not in ("moco", winner) and table[m]["mean"] <= table["moco"]["mean"]]
    lines.append(
        f"- At seed {budgets['seeds'][0]}, also above MoCo from scratch: {', '.join(beaten) or 'none'}; at or "
        f"below it: {', '.join(behind) or 'none'}."
    )
    return lines


if __name__ == "__main__":
    main()
