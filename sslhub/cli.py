"""What the `sslhub` command does: one function per subcommand (convert, push, card, embed, info, zoo,
export). The command line itself is parsed in `sslhub_cli`, which imports this module only to run a command."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path


def _convert(args: argparse.Namespace) -> int:
    from .hub.convert import convert_checkpoint
    from .hub.zoo import convert_zoo_model, zoo_entry

    options = dict(
        arch=args.arch,
        backbone=args.backbone,
        backbone_kwargs=json.loads(args.backbone_kwargs) if args.backbone_kwargs else None,
        image_size=args.image_size,
    )
    if not Path(args.checkpoint).exists():  # not a file: a name of the zoo
        try:
            entry = zoo_entry(args.checkpoint)
        except ValueError as error:
            raise ValueError(f"no file {args.checkpoint!r}, and {error}") from None
        out = convert_zoo_model(
            entry.name, args.output_dir, force=args.force, progress=not args.quiet, **options
        )
        print(f"{entry.name} is ready in {out}")
        print(f"  load it:    AutoModel.from_pretrained({str(out)!r})  (after `import sslhub`)")
        print(f"  publish it: sslhub push {out} --repo-id ORG/{entry.name}")
        return 0
    if args.output_dir is None:
        raise ValueError(f"converting the file {args.checkpoint} needs an OUTPUT_DIR")
    out = convert_checkpoint(
        args.checkpoint, args.output_dir, model_name=args.name, license=args.license, **options
    )
    print(f"wrote {out} (MoCoModel, image processor, remote code, README.md)")
    return 0


def _push(args: argparse.Namespace) -> int:
    from .hub.publish import hub_endpoint, push_to_hub

    plan = push_to_hub(
        args.folder,
        args.repo_id,
        private=args.private,
        token=args.token,
        include_timm=args.include_timm,
        timm_repo_id=args.timm_repo_id,
        dry_run=args.dry_run,
        commit_message=args.message,
    )
    skipped = plan.pop("skipped")
    verb = "would upload" if args.dry_run else "uploaded"
    for repo_id, files in plan.items():
        print(f"{verb} to {hub_endpoint()}/{repo_id}:")
        for name in files:
            print(f"  {name}")
    for line in skipped:
        print(f"skipped {line}")
    return 0


def _card(args: argparse.Namespace) -> int:
    from huggingface_hub import ModelCard

    from .hub.cards import card_provenance, merge_eval_results, update_card_eval_results, write_model_card

    folder = Path(args.folder)
    results = _read_results(Path(args.results)) if args.results else []
    if args.name or not (folder / "README.md").is_file():
        kept: dict = {}
        if (folder / "README.md").is_file():  # a rewrite keeps the results and the provenance of the card
            old = ModelCard.load(folder / "README.md")
            results = merge_eval_results(old.data.eval_results or [], results)
            kept = card_provenance(old.text)
            kept.update(base_model=old.data.base_model, datasets=old.data.datasets or [])
        if not (args.name and args.family):
            raise ValueError("a new card needs --name and --family (and usually --paper)")
        training = json.loads(Path(args.training_summary).read_text()) if args.training_summary else None
        write_model_card(
            folder,
            model_name=args.name,
            family=args.family,
            paper=args.paper,
            base_model=args.base_model or kept.get("base_model"),
            datasets=args.dataset or kept.get("datasets", []),
            reproduce_command=args.reproduce or kept.get("reproduce_command"),
            training_summary=training or kept.get("training_summary"),
            eval_results=results,
            limitations=args.limitations,
            license=args.license,
            repo_id=args.repo_id,
        )
    elif results:
        update_card_eval_results(folder, results)
    else:
        raise ValueError(
            f"{folder / 'README.md'} exists: pass --results to merge, or --name ... to rewrite it"
        )
    if args.copy_to:
        Path(args.copy_to).parent.mkdir(parents=True, exist_ok=True)
        Path(args.copy_to).write_text((folder / "README.md").read_text())
    print(f"wrote {folder / 'README.md'}" + (f" and {args.copy_to}" if args.copy_to else ""))
    return 0


def _read_results(path: Path) -> list[dict]:
    """Evaluation results for a card: a JSON list of entries (`dataset_name`, `metric_name`, `metric_value`,
    ...), or the `results.json` of `recipes/evaluate.py` (its `model_index` entries)."""
    data = json.loads(path.read_text())
    if isinstance(data, dict) and isinstance(data.get("model_index"), list):
        return data["model_index"]
    if not isinstance(data, list) or not all(isinstance(entry, dict) for entry in data):
        raise ValueError(
            f"{path}: expected a JSON list of results (dicts with dataset_name, dataset_type, dataset_split, "
            "metric_type, metric_name, metric_value) or a results.json written by recipes/evaluate.py"
        )
    return data


def _embed(args: argparse.Namespace) -> int:
    from .embed import embed_dataset

    run = embed_dataset(
        args.model,
        args.data,
        args.output,
        split=args.split,
        image_column=args.image_column,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        precision=args.precision,
        device=args.device,
        shard_size=args.shard_size,
        resume=args.resume,
        output_key=args.output_key,
        progress=not args.quiet,
    )
    for name in run.unreadable:
        print(f"skipped unreadable image {name}", file=sys.stderr)
    files = run.files[0] if len(run.files) == 1 else f"{len(run.files)} files {run.files[0].name} ..."
    print(f"wrote {files}: {run.rows} embeddings of size {run.dim}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from .hub.folders import describe_model

    info = describe_model(args.model)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    labels = [
        ("format", "format"),
        ("model type", "model_type"),
        ("family", "family"),
        ("version", "version"),
        ("class", "model_class"),
        ("backbone", "backbone"),
        ("backbone kwargs", "backbone_kwargs"),
        ("small-input stem", "small_input_stem"),
        ("parameters", "num_parameters"),
        ("embedding size", "embedding_size"),
        ("outputs", "outputs"),
        ("image size", "image_size"),
        ("crop pct", "crop_pct"),
        ("mean", "image_mean"),
        ("std", "image_std"),
        ("remote code", "remote_code"),
        ("path", "path"),
    ]
    for label, key in labels:
        if info.get(key) is not None:
            value = f"{info[key]:,}" if key == "num_parameters" else info[key]
            print(f"{label + ':':18}{value}")
    print("files:")
    for name in info["files"]:
        print(f"  {name}")
    results = info.get("eval_results")
    if results:
        print("evaluation results:")
        for r in results:
            split = f" [{r['dataset_split']}]" if r.get("dataset_split") else ""
            print(f"  {r['dataset_name']}{split} {r['metric_name'] or r['metric_type']}: {r['metric_value']}")
    return 0


def _zoo_show(entry) -> None:
    """Print one zoo entry, its sources and how to load it (`sslhub zoo show NAME`)."""
    from .hub.zoo import zoo_cache_dir

    print(entry.name)
    rows = [
        ("method", entry.method),
        ("backbone (timm)", entry.backbone),
        ("training data", f"{entry.data}, {entry.epochs:g} epochs"),
        ("weights", entry.url and entry.url + (f" (MD5 {entry.md5_prefix}...)" if entry.md5_prefix else "")),
        ("hub id", entry.hub_id or "none published yet"),
        ("license", entry.license),
        ("notes", entry.notes or None),
    ]
    for label, value in rows:
        if value:
            print(f"  {label + ':':17}{value}")
    print("  reported by the authors (not measured by sslhub):" if entry.url else "  measured here:")
    for r in entry.results:
        print(f"    {r.metric}: {r.value:g}% on {r.dataset} [{r.split}]")
        print(f"      source: {r.source} <{r.source_url}>")
    if entry.url or entry.hub_id:
        folder = zoo_cache_dir() / "models" / entry.name
        print("how to load it:")
        if entry.url:
            print(f"  sslhub convert {entry.name}    # download, check, convert into {folder}")
        snippet = f'AutoModel.from_pretrained("{entry.hub_id or folder}")'
        print(f"  python -c 'import sslhub; from transformers import AutoModel; {snippet}'")
        print(f'  or in Python, in one step: model = sslhub.from_zoo("{entry.name}")')
    else:
        print("how to get it (not published yet):")
        print(f"  {entry.train_command}    # its card: {entry.card}")


def _zoo(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from .hub.zoo import list_models, markdown_table, reported_scores, zoo_entry

    def as_json(entry) -> dict:
        return {**asdict(entry), "filename": entry.filename}

    if args.zoo_command == "show":
        entry = zoo_entry(args.name)
        if args.json:
            print(json.dumps(as_json(entry), indent=2))
        else:
            _zoo_show(entry)
        return 0
    entries = list_models(method=args.method, backbone=args.backbone)
    if not entries:
        raise ValueError(f"no model matches --method {args.method} --backbone {args.backbone}")
    if args.json:
        print(json.dumps([as_json(e) for e in entries], indent=2))
        return 0
    if args.markdown:
        print(markdown_table(entries))
        return 0
    header = ("name", "method", "backbone", "data", "epochs", "reported top-1, % (split)", "get it")
    rows = [
        (
            e.name,
            e.method,
            e.backbone,
            e.dataset_id,
            f"{e.epochs:g}",
            reported_scores(e),
            e.hub_id or (f"sslhub convert {e.name}" if e.url else "train it (see `show`)"),
        )
        for e in entries
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    print(f"\n{len(rows)} models; `sslhub zoo show NAME` for the sources and how to load one.")
    return 0


def _export_timm(args: argparse.Namespace) -> int:
    from .hub.timm_export import export_timm

    out = export_timm(args.model, args.output_dir, license=args.license, source_repo_id=args.source_repo_id)
    print(f"wrote {out}: load with timm.create_model('local-dir:{out}', pretrained=True)")
    return 0


def _export_onnx(args: argparse.Namespace) -> int:
    from .hub.onnx_export import DEFAULT_OPSET, check_onnx, export_onnx, load_model

    model = load_model(args.model)
    opset = args.opset or DEFAULT_OPSET
    try:
        out = export_onnx(model, args.output_path, output=args.output, opset=opset, exporter=args.exporter)
        if args.no_check:
            print(f"wrote {out} (input pixel_values, output {args.output}, opset {opset})")
            return 0
        difference = check_onnx(model, out, output=args.output)
    except (ImportError, RuntimeError) as error:
        print(f"sslhub export onnx: error: {error}", file=sys.stderr)
        return 1
    print(
        f"wrote {out} (input pixel_values, output {args.output}, opset {opset}); ONNX Runtime vs "
        f"PyTorch on a batch of 3: max abs difference {difference:.1e}"
    )
    if difference > args.atol:
        print(f"sslhub export onnx: error: the difference exceeds --atol {args.atol:g}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `sslhub` command (`sslhub_cli.main`): the parser lives there, so that `--help` and
    `--version` answer without importing torch."""
    import sslhub_cli

    return sslhub_cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
