"""The claim experiments (`bench/claims/`): each smoke version runs as one command on the shipped sample and
writes its report, results.json and pictures, with sane numbers (not that self-supervision wins: smoke
budgets are far too small for that). The helpers that decide whether a claim held are checked directly."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench.claims.common import HELD_OUT, SPLIT_FOLDER, card_entry, held, linear_flags, ship_card, summarize

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


def test_summary_and_verdicts():
    summary = summarize([0.4, 0.5, 0.6])
    assert summary["mean"] == pytest.approx(0.5) and summary["std"] == pytest.approx(0.1)
    assert (summary["min"], summary["max"], summary["n"]) == (0.4, 0.6, 3)
    assert summarize([0.3])["std"] == 0.0
    assert held(0.05, spread=0.01, seeds=3) == "yes"
    assert held(0.05, spread=0.03, seeds=3) == "not established"
    assert held(0.05) == "yes (one seed)"
    assert held(0.005) == "not established (one seed, under a point)"  # within one seed's noise
    assert held(0.0) == held(-0.02, spread=0.01, seeds=3) == "no"
    # the linear protocol's epochs: 100 on a few labels, fewer (at least 30) on many
    assert linear_flags(400)[:2] == ["--epochs", 100] and linear_flags(40_000)[:2] == ["--epochs", 30]


def test_records_name_the_repositorys_files_relative_to_it():
    from bench.common import REPOSITORY, repository_relative

    record = {
        "command": [
            str(REPOSITORY / "recipes" / "evaluate.py"),
            "--output_dir",
            REPOSITORY / "outputs" / "run",
        ],
        "data": "/elsewhere/cifar10/train.parquet",
        "nested": [{"model": str(REPOSITORY / "outputs" / "run" / "final"), "seeds": [0, 1], "top1": 0.5}],
        "relative": "model_cards/moco",
    }
    assert repository_relative(record) == {
        "command": ["recipes/evaluate.py", "--output_dir", "outputs/run"],
        "data": "/elsewhere/cifar10/train.parquet",  # outside the repository: where it was
        "nested": [{"model": "outputs/run/final", "seeds": [0, 1], "top1": 0.5}],
        "relative": "model_cards/moco",
    }
    # the committed records name no checkout of the repository
    records = [*(ROOT / "bench").glob("*.json"), *(ROOT / "bench" / "claims").glob("*/results.json")]
    assert len(records) > 5

    def absolute_strings(value):
        if isinstance(value, dict):
            return [s for item in value.values() for s in absolute_strings(item)]
        if isinstance(value, list):
            return [s for item in value for s in absolute_strings(item)]
        return [value] if isinstance(value, str) and os.path.isabs(value) else []

    for record_file in records:
        named = absolute_strings(json.loads(record_file.read_text()))
        assert not [s for s in named if any(f"/{folder}/" in s for folder in ("recipes", "outputs", "bench"))]


def test_shipped_card_names_the_held_out_split_one_way(tmp_path):
    from huggingface_hub import ModelCard

    from sslhub import StudentConfig, StudentModel
    from sslhub.hub import write_model_card

    folder = tmp_path / "final"
    config = StudentConfig(backbone="test_resnet", loss="mse", teacher_dim=16, image_size=32)
    StudentModel(config).save_pretrained(folder)
    # As a recipe writes it: the claims' data named by its folder, whose `test` split is the held-out one.
    local = {**card_entry("fine-tuning top-1", 0.88), "dataset_name": SPLIT_FOLDER, "dataset_split": "test"}
    local["dataset_type"] = SPLIT_FOLDER
    write_model_card(folder, model_name="m", family="supervised", paper=None, eval_results=[local])
    ship_card(SimpleNamespace(smoke=True), folder, "shipped", [card_entry("kNN top-1 (k=200, T=0.1)", 0.4)])
    card = ModelCard.load(folder / "README.md")
    results = {
        (r.dataset_name, r.dataset_split, r.metric_name, r.metric_value) for r in card.data.eval_results
    }
    assert results == {
        (HELD_OUT, "train, held-out 10k", "fine-tuning top-1", 0.88),
        (HELD_OUT, "train, held-out 10k", "kNN top-1 (k=200, T=0.1)", 0.4),
    }
    assert SPLIT_FOLDER not in card.text and card.data.model_name == "shipped"
    assert "self-supervised-learning" not in card.data.tags  # trained from random init on labels


def _run(name: str, tmp_path: Path, *flags: str) -> tuple[dict, str, Path]:
    work, out = tmp_path / "work", tmp_path / "out"
    command = [sys.executable, str(ROOT / "bench" / "claims" / f"{name}.py"), "--budget", "smoke"]
    command += ["--workdir", str(work), "--out", str(out), *flags]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads((out / name / "results.json").read_text())
    report = (out / f"{name}.md").read_text()
    assert results["budget"] == "smoke" and results["claim"] == name
    assert f"python bench/claims/{name}.py --budget smoke" in report  # the command that reproduces it
    assert results["machine"]["cpu_count"] >= 1 and results["runs"]
    assert all(run["seconds"] > 0 for run in results["runs"])
    pictures = re.findall(r"\]\(([^)]+\.png)\)", report)
    assert pictures
    for picture in pictures:  # every picture the report shows exists
        assert (out / picture).read_bytes()[:8] == PNG, picture
    assert set(results["precision"].split("/")) <= {"bf16", "no", "fp16"}
    for row in results["headlines"]:
        assert row["held"].split(" ")[0] in ("yes", "no", "not") and row["report"] == f"{name}.md"
    return results, report, work


def _is_accuracy(value) -> bool:
    return isinstance(value, float) and 0.0 <= value <= 1.0


@pytest.mark.slow
def test_label_efficiency_smoke(tmp_path):
    results, report, _ = _run("label_efficiency", tmp_path, "--seeds", "0,1")
    table = results["accuracy"]
    assert set(table) == {"finetune", "supervised", "linear", "random_linear"}
    for method in table.values():
        assert list(method) == ["0.01", "0.1", "1"]
        assert [row["n"] for row in method.values()] == [2, 2, 1]  # seeds at 1% and 10%, one at 100%
        assert [row["labelled_images"] for row in method.values()] == [50, 500, 5000]
        assert all(_is_accuracy(v) for row in method.values() for v in row["values"])
    assert len(results["headlines"]) == 3 and "| 1% | 50 |" in report
    # A second run reuses every finished run and gives the same numbers.
    again, _, _ = _run("label_efficiency", tmp_path, "--seeds", "0,1")
    assert all(run["reused"] for run in again["runs"]) and again["accuracy"] == table


@pytest.mark.slow
def test_new_categories_smoke(tmp_path):
    results, report, work = _run("new_categories", tmp_path)
    table = results["accuracy"]
    assert set(table) == {"moco_equal", "moco", "coarse", "fine", "random"}
    for by_task in table.values():
        assert set(by_task) == {"10 classes", "6 animal classes"}
        assert all(_is_accuracy(v) for by_protocol in by_task.values() for v in by_protocol.values())
    assert _is_accuracy(results["coarse_training_accuracy"])
    # The coarse model is a 2-class classifier whose card holds its scores on the fine classes.
    (card,) = work.glob("runs/supervised-*-coarse-*/final/README.md")
    assert "classes bird/cat/deer/dog/frog/horse" in card.read_text()
    assert "self-supervised-learning" not in card.read_text().split("---")[1]  # supervised from random init
    config = json.loads((card.parent / "config.json").read_text())
    assert config["id2label"] == {"0": "vehicle", "1": "animal"}


@pytest.mark.slow
def test_capacity_smoke(tmp_path):
    results, report, _ = _run("capacity", tmp_path, "--seeds", "0")
    rows = results["backbones"]
    assert list(rows) == ["resnet10t", "resnet18", "resnet34"]
    sizes = [row["parameters"] for row in rows.values()]
    assert sizes == sorted(sizes) and sizes[0] > 1e6
    for row in rows.values():
        assert _is_accuracy(row["ssl_linear"]) and _is_accuracy(row["supervised"])
        assert row["gain"] == pytest.approx(row["ssl_linear"] - row["supervised"])
        assert row["moco_images_per_second"] > 0
    assert results["budgets"]["images_seen"] == 4 * 32


@pytest.mark.slow
def test_compression_smoke(tmp_path):
    results, report, work = _run("compression", tmp_path, "--seeds", "0,1")
    table = results["knn"]
    assert set(table) == {"moco", "seed", "compress_1q", "compress_2q", "cluster", "mse", "kl"}
    winner = results["winner"]
    assert winner not in ("moco", "kl")  # the winner is a label-free loss
    assert table[winner]["n"] == table["moco"]["n"] == 2 and set(results["linear"]) == {"moco", winner}
    assert all(_is_accuracy(v) for row in table.values() for v in row["values"])
    assert _is_accuracy(results["teacher"]["knn"])
    assert results["teacher"]["kl_teacher"].endswith("final")
    # The shipped student's card holds its own numbers (seed 0), not the mean over seeds.
    (card,) = work.glob(f"runs/student-*-{winner}-*-s0/final/README.md")
    from huggingface_hub import ModelCard

    scores = {r.metric_name: r.metric_value for r in ModelCard.load(card).data.eval_results}
    assert scores["kNN top-1 (k=200, T=0.1)"] == round(table[winner]["values"][0], 4)
