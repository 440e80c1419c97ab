"""New categories from coarse labels ("all dogs are one class; later we want breeds"): are the features of a
model trained without labels better for fine classes nobody labelled than those of a model trained on
coarse labels?

    python bench/claims/new_categories.py                  # the full version
    python bench/claims/new_categories.py --budget smoke   # minutes, on the shipped sample (the slow test)

1. Without labels: MoCo v2 for as many images as the supervised runs below see (the short run capacity
   shares), and the longer MoCo v2 model of label efficiency (reused when they exist).
2. The same architecture trained from random init on CIFAR-10's two superclasses, animals {bird, cat, deer,
   dog, frog, horse} and vehicles {airplane, automobile, ship, truck} (`recipes/evaluate.py --protocol
   finetune --random_init true --label_map cifar10-animals-vehicles --save_model true`); as a reference,
   the same with the ten fine labels.
3. kNN and the linear protocol of every model (and of random init) on the ten fine classes and on the six
   fine classes within the animals (`--eval_classes cifar10-animals`), confusion matrices as pictures.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.claims.common import (  # noqa: E402
    EQUAL_IMAGES,
    MOCO,
    card_entry,
    finetune,
    headline,
    held,
    linear_flags,
    pct,
    plot_bars,
    plot_confusion,
    precision_of,
    pretrain_moco,
    report_header,
    shared_moco,
    ship_card,
    start,
    summarize,
    write_outputs,
)

TASKS = {  # name: (evaluate.py flags, share of the training images it keeps)
    "10 classes": ([], 1.0),
    "6 animal classes": (["--eval_classes", "cifar10-animals"], 0.6),
}
MODELS = {
    "moco_equal": "MoCo v2, no labels, equal images",
    "moco": "MoCo v2, no labels, longer run",
    "coarse": "supervised, 2 coarse labels",
    "fine": "supervised, 10 fine labels (reference)",
    "random": "random init",
}


def main(argv=None) -> dict:
    claim, runs, data, num_train = start("new_categories", __doc__, argv)
    moco, moco_metrics = shared_moco(runs, data)
    budget = MOCO[claim.budget]
    equal = EQUAL_IMAGES[claim.budget]
    moco_equal, equal_metrics = pretrain_moco(runs, data, budget["backbone"], **equal)

    # Supervised models, trained for as many images as the short MoCo v2 run saw.
    tag = f"-{equal['steps']}x{equal['batch_size']}"
    coarse = finetune(
        runs, moco, data, num_train, random_init=True, tag=f"-coarse{tag}",
        flags=["--label_map", "cifar10-animals-vehicles"], **equal,
    )  # fmt: skip
    fine = finetune(runs, moco, data, num_train, random_init=True, tag=f"-fine{tag}", **equal)
    models = {
        "moco_equal": str(moco_equal),
        "moco": str(moco),
        "coarse": coarse["saved_model"],
        "fine": fine["saved_model"],
        "random": str(moco),
    }

    results: dict[str, dict[str, dict]] = {}
    claim.pictures.mkdir(parents=True, exist_ok=True)
    for key, model in models.items():
        for task, (flags, share) in TASKS.items():
            for protocol in ("knn", "linear"):
                extra = (
                    linear_flags(round(share * num_train), smoke=claim.smoke) if protocol == "linear" else []
                )
                if key == "random":
                    extra += ["--random_init", "true"]
                name = f"nc-{Path(model).parent.name}-{key}-{protocol}-{'all' if not flags else 'animals'}"
                result = runs.evaluate(name, model, data, protocol, *flags, *extra)
                results.setdefault(key, {}).setdefault(task, {})[protocol] = result
                if protocol == "linear":
                    plot_confusion(
                        result,
                        claim.pictures / f"confusion_{key}_{'all' if not flags else 'animals'}.png",
                        f"{MODELS[key]}: linear probe, {task}",
                    )

    table = {
        key: {
            task: {p: r["accuracy"] for p, r in by_protocol.items()} for task, by_protocol in by_task.items()
        }
        for key, by_task in results.items()
    }
    groups = {
        f"{protocol}, {task}": {MODELS[key]: summarize([table[key][task][protocol]]) for key in MODELS}
        for task in TASKS
        for protocol in ("knn", "linear")
    }
    plot_bars(
        groups,
        claim.pictures / "fine_class_accuracy.png",
        "top-1 on the held-out split (%)",
        f"Fine classes from models trained with coarse or no labels ({claim.budget} budget)",
    )

    # Model cards: the MoCo model's and the coarse model's results on the fine classes.
    for key, card_name in (
        ("moco", f"moco-v2-{budget['backbone']}-cifar10-claims"),
        ("coarse", f"supervised-{budget['backbone']}-cifar10-animals-vehicles-claims"),
    ):
        entries = [
            card_entry(r["metric_name"], r["accuracy"])
            for by_protocol in results[key].values()
            for r in by_protocol.values()
        ]
        ship_card(claim, Path(models[key]), card_name, entries)

    every = [
        r for by_task in results.values() for by_protocol in by_task.values() for r in by_protocol.values()
    ]
    payload = {
        "budgets": {
            "pretraining": {**budget, "images_seen": budget["steps"] * budget["batch_size"]},
            "equal_images": {**equal, "images_seen": equal["steps"] * equal["batch_size"]},
        },
        "pretraining_metrics": moco_metrics,
        "equal_images_pretraining_metrics": equal_metrics,
        "coarse_training_accuracy": coarse["accuracy"],
        "fine_training_accuracy": fine["accuracy"],
        "accuracy": table,
        "precision": precision_of(moco_metrics, equal_metrics, coarse, fine, *every),
        "headlines": [
            headline(
                f"New categories, {task} ({'kNN' if protocol == 'knn' else 'linear probe'}): features learnt "
                "without labels beat features learnt from the 2 coarse labels, equal images seen",
                f"{pct(table['moco_equal'][task][protocol])} vs {pct(table['coarse'][task][protocol])} "
                f"({100 * (table['moco_equal'][task][protocol] - table['coarse'][task][protocol]):+.1f})",
                held(table["moco_equal"][task][protocol] - table["coarse"][task][protocol]),
                "new_categories.md",
            )
            for task in TASKS
            for protocol in ("knn", "linear")
        ],
    }
    write_outputs(claim, runs, payload, report(claim, runs, payload))
    return payload


def report(claim, runs, results: dict) -> list[str]:
    table, budgets, metrics = results["accuracy"], results["budgets"], results["pretraining_metrics"]
    pre, sup = budgets["pretraining"], budgets["equal_images"]
    short = results["equal_images_pretraining_metrics"]
    lines = report_header(
        claim, "New categories from coarse labels: MoCo v2 against coarse supervision", runs
    )
    lines += [
        "## Setup",
        "",
        f"- **No labels**: MoCo v2 `{pre['backbone']}` (the demo's settings) for {sup['steps']} steps of batch "
        f"{sup['batch_size']} = {sup['images_seen']:,} images, as many as the supervised runs "
        f"({short.get('train_seconds')} s; the same run as capacity's), and the model of label efficiency, "
        f"{pre['steps']} steps of batch {pre['batch_size']} = {pre['images_seen']:,} images "
        f"({metrics.get('train_seconds')} s).",
        "- **Coarse labels**: the same architecture from random init, trained on two classes, animals {bird, cat, "
        "deer, dog, frog, horse} and vehicles {airplane, automobile, ship, truck} (`recipes/evaluate.py "
        "--protocol finetune --random_init true --label_map cifar10-animals-vehicles --save_model true`), "
        f"{sup['steps']} steps of batch {sup['batch_size']} = {sup['images_seen']:,} images (AdamW, cosine, "
        f"10% warm-up, crop + flip). Its own 2-way accuracy on the held-out split: "
        f"{pct(results['coarse_training_accuracy'])}.",
        f"- **Reference**: the same supervised run with the ten fine labels (10-way accuracy "
        f"{pct(results['fine_training_accuracy'])}); and random init.",
        "- **Evaluation** of the frozen features (`recipes/evaluate.py`): weighted kNN (k=200, T=0.1) and the "
        "linear protocol (validation sweep), on the ten fine classes and on the six fine classes within the "
        "animals (`--eval_classes cifar10-animals`: bank / probe training set and held-out images of those "
        f"classes only). Precision of every run: {results['precision']}.",
        "",
        "## Results",
        "",
        "| model | kNN, 10 classes | linear, 10 classes | kNN, 6 animal classes | linear, 6 animal classes |",
        "|---|---|---|---|---|",
    ]
    for key, label in MODELS.items():
        row = table[key]
        lines.append(
            f"| {label} | {pct(row['10 classes']['knn'])} | {pct(row['10 classes']['linear'])} | "
            f"{pct(row['6 animal classes']['knn'])} | {pct(row['6 animal classes']['linear'])} |"
        )
    lines += [
        "",
        f"![fine-class accuracy]({claim.name}/fine_class_accuracy.png)",
        "",
        "Linear-probe confusion matrices (rows: true class, in % of the class):",
        "",
        "| | 10 classes | 6 animal classes |",
        "|---|---|---|",
    ]
    for key in ("moco_equal", "coarse"):
        lines.append(
            f"| {MODELS[key]} | ![]({claim.name}/confusion_{key}_all.png) | "
            f"![]({claim.name}/confusion_{key}_animals.png) |"
        )
    lines += [
        "",
        f"The other models' matrices are in `{claim.name}/`.",
        "",
        "## Reading",
        "",
        *verdict(table),
    ]
    return lines


def verdict(table: dict) -> list[str]:
    lines = []
    for task in TASKS:
        for protocol in ("knn", "linear"):
            ssl, coarse = table["moco_equal"][task][protocol], table["coarse"][task][protocol]
            fine, random = table["fine"][task][protocol], table["random"][task][protocol]
            gain = ssl - coarse
            lines.append(
                f"- {task}, {'kNN' if protocol == 'knn' else 'linear probe'}: MoCo {pct(ssl)} vs coarse "
                f"supervision {pct(coarse)} at equal images ({100 * gain:+.1f}): **{held(gain)}**; fine "
                f"supervision {pct(fine)}, random init {pct(random)}, the longer MoCo "
                f"{pct(table['moco'][task][protocol])}."
            )
    animals = table["coarse"]["6 animal classes"]["linear"] - table["random"]["6 animal classes"]["linear"]
    lines.append(
        f"- Within the animals, the coarse model's features are {100 * animals:+.1f} points from random init's "
        "(linear probe): labels that never separated the animals "
        + ("still taught features that help to." if animals > 0 else "taught nothing that separates them.")
    )
    return lines


if __name__ == "__main__":
    main()
