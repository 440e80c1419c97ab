"""Label efficiency: with few labels, does a model pre-trained without labels beat the same network trained
from random init on those labels?

    python bench/claims/label_efficiency.py                  # the full version (see the report for its time)
    python bench/claims/label_efficiency.py --budget smoke   # minutes, on the shipped sample (the slow test)

1. MoCo v2 pre-trains without labels on the training split (`recipes/pretrain_moco.py`, the demo's
   settings; shared with new categories and compression: one model for all three).
2. For each label fraction (1%, 10%, 100%; class-balanced, drawn with the seed; every seed of `--seeds` at
   1% and 10%, the first at 100%), `recipes/evaluate.py` on the held-out split:
   - fine-tuning of the MoCo model and supervised training of the same architecture from random init:
     the same loop, optimizer, augmentation, steps and batch (`--protocol finetune`, `--random_init`);
   - the linear protocol (validation sweep) on the frozen MoCo features and on random-init features.
3. Accuracy against labelled images (log scale), mean and spread over seeds; `label_efficiency.md`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.claims.common import (  # noqa: E402
    FINETUNE,
    MOCO,
    card_entry,
    finetune,
    headline,
    held,
    linear_flags,
    pct,
    plot_curves,
    precision_of,
    report_header,
    shared_moco,
    ship_card,
    start,
    summarize,
    write_outputs,
)

FRACTIONS = (0.01, 0.1, 1.0)
METHODS = {
    "finetune": "MoCo v2, fine-tuned",
    "supervised": "supervised from random init",
    "linear": "MoCo v2, linear probe",
    "random_linear": "random init, linear probe",
}


def main(argv=None) -> dict:
    claim, runs, data, num_train = start("label_efficiency", __doc__, argv)
    moco, moco_metrics = shared_moco(runs, data)

    raw: dict[str, dict[float, list[dict]]] = {method: {} for method in METHODS}
    for fraction in FRACTIONS:
        seeds = claim.seeds if fraction < 1 else claim.seeds[:1]
        for seed in seeds:
            print(f"  {fraction:.0%} labels, seed {seed}", flush=True)
            raw["finetune"].setdefault(fraction, []).append(
                finetune(runs, moco, data, num_train, fraction, seed)
            )
            raw["supervised"].setdefault(fraction, []).append(
                finetune(runs, moco, data, num_train, fraction, seed, random_init=True)
            )
            labelled = round(fraction * num_train)
            for method, random_init in (("linear", False), ("random_linear", True)):
                name = f"{method}-{moco.parent.name}-f{fraction:g}-s{seed}"
                raw[method].setdefault(fraction, []).append(
                    runs.evaluate(
                        name,
                        moco,
                        data,
                        "linear",
                        *linear_flags(labelled, smoke=claim.smoke),
                        "--label_fraction",
                        fraction,
                        "--seed",
                        seed,
                        "--random_init",
                        str(random_init).lower(),
                    )  # fmt: skip
                )

    # Numbers: mean and spread over seeds at each fraction; the labelled images each fraction gave.
    table = {
        method: {
            f"{fraction:g}": {
                **summarize([r["accuracy"] for r in results]),
                "labelled_images": results[0]["num_train"],
                "seeds": [r["config"]["seed"] for r in results],
            }
            for fraction, results in by_fraction.items()
        }
        for method, by_fraction in raw.items()
    }
    gains = {
        key: table["finetune"][key]["mean"] - table["supervised"][key]["mean"] for key in table["finetune"]
    }
    every = [r for by_fraction in raw.values() for results in by_fraction.values() for r in results]

    # Pictures: accuracy against labelled images, both protocols of both models.
    claim.pictures.mkdir(parents=True, exist_ok=True)
    series = {
        label: [(table[method][key]["labelled_images"], table[method][key]) for key in table[method]]
        for method, label in METHODS.items()
    }
    plot_curves(
        series,
        claim.pictures / "accuracy_vs_labels.png",
        "labelled training images (log scale)",
        "top-1 on the held-out split (%)",
        f"Label efficiency, {MOCO[claim.budget]['backbone']} on CIFAR-10 ({claim.budget} budget)",
        styles={METHODS["linear"]: "--o", METHODS["random_linear"]: "--s"},
    )

    # Model card of the MoCo model: the means over seeds.
    entries = []
    for method, protocol in (("finetune", "fine-tuning top-1"), ("linear", "linear probe top-1")):
        for key, row in table[method].items():
            seeds = f"mean of {row['n']} seeds" if row["n"] > 1 else "one seed"
            entries.append(card_entry(f"{protocol}, {100 * float(key):g}% labels ({seeds})", row["mean"]))
    ship_card(claim, moco, f"moco-v2-{MOCO[claim.budget]['backbone']}-cifar10-claims", entries)

    results = {
        "budgets": {
            "pretraining": {
                **MOCO[claim.budget],
                "images_seen": MOCO[claim.budget]["steps"] * MOCO[claim.budget]["batch_size"],
            },
            "finetune": FINETUNE[claim.budget],
            "fractions": list(FRACTIONS),
            "seeds": claim.seeds,
        },
        "pretraining_metrics": moco_metrics,
        "accuracy": table,
        "finetune_gain_over_supervised": gains,
        "precision": precision_of(moco_metrics, *every),
        "headlines": headlines(table, gains),
    }
    write_outputs(claim, runs, results, report(claim, runs, results, every))
    return results


def report(claim, runs, results: dict, every: list[dict]) -> list[str]:
    budgets, table = results["budgets"], results["accuracy"]
    pre, metrics = budgets["pretraining"], results["pretraining_metrics"]
    ft = budgets["finetune"]
    seconds = {
        kind: [r["seconds"] for r in runs.records if r["name"].startswith(kind)]
        for kind in ("finetune", "supervised", "linear", "random_linear")
    }
    lines = report_header(
        claim, "Label efficiency: MoCo v2 against supervised training from random init", runs
    )
    lines += [
        "## Setup",
        "",
        f"- **Pre-training without labels**: MoCo v2 `{pre['backbone']}` at 32x32 (the demo's settings: batch "
        f"{pre['batch_size']}, lr 0.06 per 256, wd 5e-4, queue 4096, T 0.2, m 0.99, batched augmentation), "
        f"{pre['steps']} steps = {pre['images_seen']:,} images seen ({metrics.get('epochs')} epochs of the training "
        f"split), {metrics.get('train_seconds')} s at {metrics.get('images_per_second')} images/s, "
        f"precision {metrics.get('mixed_precision')} ({metrics.get('precision_reason')}).",
        f"- **Labels**: class-balanced {', '.join(f'{100 * f:g}%' for f in budgets['fractions'])} of the training "
        f"split (`--label_fraction`, drawn with the seed: both models of a seed get the same images); seeds "
        f"{budgets['seeds']} at 1% and 10%, seed {budgets['seeds'][0]} at 100%.",
        f"- **Fine-tuning vs supervised from scratch, equal budgets**: `recipes/evaluate.py --protocol finetune` "
        f"with `--random_init false|true`: {ft['steps']} steps of batch {ft['batch_size']} "
        f"({ft['steps'] * ft['batch_size']:,} images seen) whatever the fraction, AdamW lr {ft['learning_rate']:g} "
        "per 256, wd 0.05, cosine with 10% warm-up, RandomResizedCrop(scale 0.3-1) + flip; "
        f"{_mean_seconds(seconds['finetune'])} per run.",
        "- **Linear probes**: `--protocol linear` (a class-balanced 10% of the labelled images chooses lr and wd "
        "from a 5 x 4 grid, the best is retrained on all of them) on frozen features of the MoCo model and of "
        f"the same network at random init; {_mean_seconds(seconds['linear'] + seconds['random_linear'])} per run.",
        f"- **Scored on** the held-out split ({every[0]['num_eval']:,} images, top-1). Precision of every run: "
        f"{results['precision']}.",
        "",
        "## Results",
        "",
        "| labels | labelled images | MoCo v2 fine-tuned | supervised from random init | gain | MoCo v2 linear | random-init linear |",
        "|---|---|---|---|---|---|---|",
    ]
    for key in table["finetune"]:
        row = {m: table[m][key] for m in table}
        lines.append(
            f"| {100 * float(key):g}% | {row['finetune']['labelled_images']:,} | {pct(row['finetune'])} | "
            f"{pct(row['supervised'])} | {100 * results['finetune_gain_over_supervised'][key]:+.1f} | "
            f"{pct(row['linear'])} | {pct(row['random_linear'])} |"
        )
    lines += [
        "",
        "Mean ± sample standard deviation over seeds (n = seeds); every seed's value is in `results.json`.",
        "",
        f"![accuracy against labelled images]({claim.name}/accuracy_vs_labels.png)",
        "",
        "## Reading",
        "",
        *verdict(table, results["finetune_gain_over_supervised"]),
    ]
    return lines


def _mean_seconds(values: list[float]) -> str:
    return f"{sum(values) / len(values):.0f} s" if values else "n/a"


def headlines(table: dict, gains: dict) -> list[dict]:
    rows = []
    for key, gain in gains.items():
        ssl, sup = table["finetune"][key], table["supervised"][key]
        rows.append(
            headline(
                f"Label efficiency, {100 * float(key):g}% labels ({ssl['labelled_images']:,} images): fine-tuning "
                "the MoCo model beats the same network trained from random init (equal steps)",
                f"{pct(ssl)} vs {pct(sup)} ({100 * gain:+.1f})",
                held(gain, max(ssl["std"], sup["std"]), ssl["n"]),
                "label_efficiency.md",
            )
        )
    return rows


def verdict(table: dict, gains: dict) -> list[str]:
    """What the numbers say, claim by claim, including where a claim did not hold."""
    lines = [f"- {row['claim']}: {row['result']}: **{row['held']}**." for row in headlines(table, gains)]
    keys = list(gains)
    if len(keys) > 1:
        shrinking = gains[keys[0]] > gains[keys[-1]]
        lines.append(
            f"- The gain {'shrinks' if shrinking else 'does not shrink'} as labels grow "
            f"({100 * gains[keys[0]]:+.1f} at {100 * float(keys[0]):g}% -> {100 * gains[keys[-1]]:+.1f} at "
            f"{100 * float(keys[-1]):g}%)"
            + (": the self-supervised start matters most when labels are few." if shrinking else ".")
        )
    for key in table["linear"]:
        lin, rnd = table["linear"][key], table["random_linear"][key]
        lines.append(
            f"- Linear probe, {100 * float(key):g}% labels: MoCo features {pct(lin)} vs random features {pct(rnd)} "
            f"({100 * (lin['mean'] - rnd['mean']):+.1f})."
        )
    return lines


if __name__ == "__main__":
    main()
