"""Parsing recipe settings: typed dataclasses filled from a YAML file and `--field value` overrides.

Parsing is transformers' `HfArgumentParser` (so `--help`, anywhere on the command line, lists every
setting with the help text written next to it). Two additions:

- `--config FILE.yaml` gives values first; the command line overrides them.
- The model's own settings are one nested section, `model:` in YAML and `--model.NAME value` on the command
  line, handed as is to the model config's preset (`MoCoConfig.v2(**args.model)`): they are declared once,
  in the config class, and checked against it here. A model setting given at the top level (the flat
  spelling of sslhub 0.1, e.g. `--temperature 0.1`) still works and warns.

Values on the command line and in `--model.NAME` are read as YAML scalars (`null`, `true`, `1e-4`,
`[0.5, 0.5, 0.5]`, `{img_size: 32}`).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, ClassVar

import yaml
from transformers import HfArgumentParser

MODEL_SECTION = "model"

# ----------------------------------------------------------------------------------------------------------
# Types
# ----------------------------------------------------------------------------------------------------------


def _convert(name: str, value: Any, annotation: Any) -> Any:
    """`value` (as YAML parsed it) as the annotated type, or a ValueError naming the setting."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for candidate in (a for a in args if a is not type(None)):
            try:
                return _convert(name, value, candidate)
            except ValueError as error:
                errors.append(str(error))
        raise ValueError(errors[0])
    if annotation is Any:
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{name} expects true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValueError(f"{name} expects an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e30" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError(f"{name} expects a number, got {value!r}")
    if annotation is str:
        if isinstance(value, bool):  # YAML 1.1 reads no/yes/off/on as booleans
            raise ValueError(f"{name} expects a string, got {value!r}: quote the value in the YAML file")
        if isinstance(value, (list, dict)):
            raise ValueError(f"{name} expects a string, got {value!r}")
        return str(value)
    if list in (annotation, origin) or tuple in (annotation, origin):
        if isinstance(value, (list, tuple)):
            inner = args[0] if args and args[-1] is not Ellipsis or len(args) == 2 else Any
            return [_convert(name, item, inner) for item in value]
        raise ValueError(f"{name} expects a list, got {value!r}")
    if dict in (annotation, origin):
        if isinstance(value, dict):
            return value
        raise ValueError(f"{name} expects a mapping, got {value!r}")
    raise ValueError(f"{name} expects {annotation}, got {value!r}")


def _read_value(raw: str) -> Any:
    """A command-line value read as YAML; `no`/`yes`/`on`/`off` stay strings (`--mixed_precision no`)."""
    value = yaml.safe_load(raw)
    if isinstance(value, bool) and raw.strip().lower() not in ("true", "false"):
        return raw
    return value


def _recipe_types(cls: type) -> dict[str, Any]:
    return {name: hint for name, hint in typing.get_type_hints(cls).items() if name in _field_names(cls)}


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def model_fields(config_class: type) -> dict[str, Any]:
    """The settings a model config declares (its own and its sslhub bases'), with their types."""
    hints: dict[str, Any] = {}
    for klass in reversed(config_class.__mro__):
        if not klass.__module__.startswith("sslhub"):
            continue
        namespace = vars(sys.modules[klass.__module__])
        for name, annotation in vars(klass).get("__annotations__", {}).items():
            hint = eval(annotation, namespace) if isinstance(annotation, str) else annotation  # noqa: S307
            if typing.get_origin(hint) is not ClassVar:
                hints[name] = hint
    return hints


def model_field_help(config_class: type) -> dict[str, str]:
    """The first line of each field's entry in the Google-style docstrings of the config and its sslhub
    bases (`name: text` or `name_a / name_b: text`, indented by eight spaces)."""
    helps: dict[str, str] = {}
    for klass in config_class.__mro__:
        if not klass.__module__.startswith("sslhub"):
            continue
        for match in re.finditer(r"^ {8}([\w /]+?):\s+(.+)$", klass.__doc__ or "", flags=re.MULTILINE):
            for name in match.group(1).split("/"):
                helps.setdefault(name.strip(), match.group(2).strip())
    return helps


# ----------------------------------------------------------------------------------------------------------
# Parsing
# ----------------------------------------------------------------------------------------------------------


def _suggest(name: str, known: list[str], prefix: str = "--") -> str:
    close = difflib.get_close_matches(name, known, n=3)
    return f"; did you mean {', '.join(prefix + c for c in close)}?" if close else ""


class _ModelSection:
    """The `model` section of a recipe: checks names and types against the model config class."""

    def __init__(self, cls: type) -> None:
        self.config_class = getattr(cls, "model_config", None)
        self.fields = model_fields(self.config_class) if self.config_class else {}
        self.recipe_fields = set(_field_names(cls))
        self.set_by_recipe = set(getattr(cls, "model_fields_set_by_recipe", ()))
        self.legacy = dict(getattr(cls, "legacy_model_names", {}))

    def flat_name(self, name: str) -> str | None:
        """The model field a top-level name stands for (old flat spelling), or None."""
        if name in self.legacy:
            return self.legacy[name]
        if name in self.fields and name not in self.recipe_fields and name not in self.set_by_recipe:
            return name
        return None

    def check(self, values: dict[str, Any], where: str) -> dict[str, Any]:
        if not isinstance(values, dict):
            raise SystemExit(f"error: the model section in {where} must be a mapping, got {values!r}")
        if self.config_class is None and values:
            raise SystemExit(f"error: this recipe has no model section ({where})")
        checked = {}
        allowed = [n for n in self.fields if n not in self.set_by_recipe]
        for name, value in values.items():
            if name in self.set_by_recipe:
                raise SystemExit(f"error: model.{name} in {where} is set by the recipe; leave it out")
            if name not in self.fields:
                hint = _suggest(name, allowed, prefix="--model.")
                raise SystemExit(f"error: unknown model setting {name!r} in {where}{hint} (see --help)")
            try:
                checked[name] = _convert(f"model.{name}", value, self.fields[name])
            except ValueError as error:
                raise SystemExit(f"error: {error} ({where})") from None
        return checked

    def epilog(self) -> str:
        if self.config_class is None:
            return ""
        helps = model_field_help(self.config_class)
        lines = [
            f"model settings ({self.config_class.__name__}; `model:` in YAML, --model.NAME VALUE on the "
            "command line; unset ones keep the preset's value):"
        ]
        for name in self.fields:
            if name not in self.set_by_recipe:
                lines.append(f"  --model.{name:<28} {helps.get(name, '')}")
        return "\n".join(lines)


def _split_argv(argv: list[str], section: bool) -> tuple[str | None, dict[str, str], list[str]]:
    """Take `--config FILE` (and with a model `section`, `--model.NAME VALUE` and `--model MAPPING`) out of
    argv; the rest goes to argparse. A whole `--model` mapping comes back under the name `""`."""
    config, dotted, rest = None, {}, []
    index = 0
    while index < len(argv):
        token = argv[index]
        name, has_inline, inline = token.partition("=")
        is_model = section and (name == f"--{MODEL_SECTION}" or name.startswith(f"--{MODEL_SECTION}."))
        if name == "--config" or is_model:
            if has_inline:
                value = inline
            elif index + 1 < len(argv) and not argv[index + 1].startswith("--"):
                index += 1
                value = argv[index]
            elif name == "--config":
                raise SystemExit("error: --config needs a YAML file")
            else:
                value = "true"  # a bare flag switches a boolean on
            if name == "--config":
                config = value
            else:
                dotted[name[len(MODEL_SECTION) + 3 :]] = value  # "" for the whole mapping
        else:
            rest.append(token)
        index += 1
    return config, dotted, rest


def _flag_name(token: str) -> str | None:
    if not token.startswith("--") or token == "--":
        return None
    return token[2:].partition("=")[0].replace("-", "_")


def _warn_renamed(old: str, new: str) -> None:
    print(f"warning: the setting {old} is now called {new}", file=sys.stderr)


def _warn_flat(name: str, model_name: str) -> None:
    print(
        f"warning: {name} is a model setting: write --model.{model_name} on the command line, "
        f"or put it under `model:` in YAML",
        file=sys.stderr,
    )


def build_parser(cls: type, with_config_flag: bool = False) -> HfArgumentParser:
    """The `HfArgumentParser` of a recipe's settings, with the model section's fields in its help."""
    doc = (cls.__doc__ or cls.__name__).strip().splitlines()[0]
    parser = HfArgumentParser(
        cls,
        description=f"{doc} Settings: defaults, then --config FILE.yaml, then --NAME VALUE overrides.",
        epilog=_ModelSection(cls).epilog(),
        formatter_class=_HelpFormatter,
    )
    if with_config_flag:  # for --help; parsing takes --config out of the command line first
        parser.add_argument("--config", metavar="FILE.yaml", help="read settings from a YAML file first")
    hints = _recipe_types(cls)
    for action in parser._actions:  # values are YAML: `null` for None, lists and mappings in one token
        if isinstance(action, argparse._StoreAction) and action.dest in hints:
            action.type = _typed_reader(action.dest, hints[action.dest])
            if action.nargs == "+":
                action.nargs = None
    return parser


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after each help line; the model section's list keeps its line breaks."""


def _typed_reader(name: str, annotation: Any):
    def read(raw: str) -> Any:
        try:
            return _convert(f"--{name}", _read_value(raw), annotation)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    read.__name__ = getattr(annotation, "__name__", str(annotation))
    return read


def parse_args(cls: type, argv: list[str] | None = None):
    """Build the recipe settings `cls` from its defaults, `--config X.yaml`, then command-line overrides.

    Unknown or badly typed settings end the program with a message that names them (and close matches).
    `--help` (anywhere) prints every setting with its help line, including the model section's.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(token in ("-h", "--help") for token in argv):
        build_parser(cls, with_config_flag=True).parse_args(["--help"])  # exits
    section = _ModelSection(cls)
    has_section = section.config_class is not None
    config_file, dotted, rest = _split_argv(argv, has_section)
    recipe_names = _field_names(cls)
    hints = _recipe_types(cls)
    model: dict[str, Any] = {}
    defaults: dict[str, Any] = {}

    if config_file is not None:
        if not Path(config_file).is_file():
            raise SystemExit(f"error: --config {config_file}: no such file")
        try:
            loaded = yaml.safe_load(Path(config_file).read_text()) or {}
        except yaml.YAMLError as error:
            raise SystemExit(f"error: {config_file} is not valid YAML: {error}") from None
        if not isinstance(loaded, dict):
            raise SystemExit(f"error: {config_file} must hold a mapping of settings")
        if has_section:
            model.update(section.check(loaded.pop(MODEL_SECTION, None) or {}, config_file))
        renamed = getattr(cls, "renamed_settings", {})
        for name, value in loaded.items():
            if name in renamed:
                _warn_renamed(name, renamed[name])
                name = renamed[name]
            flat = section.flat_name(name)
            if flat is not None:
                _warn_flat(name, flat)
                model.update(section.check({flat: value}, config_file))
            elif name not in recipe_names:
                raise SystemExit(
                    f"error: unknown setting {name!r} in {config_file}{_suggest(name, recipe_names)} (see --help)"
                )
            else:
                try:
                    defaults[name] = _convert(name, value, hints[name])
                except ValueError as error:
                    raise SystemExit(f"error: {error} ({config_file})") from None

    renamed = getattr(cls, "renamed_settings", {})
    for position, token in enumerate(rest):
        old = _flag_name(token)
        if old in renamed:
            _warn_renamed(old, renamed[old])
            rest[position] = token.replace(token[2:].partition("=")[0], renamed[old], 1)

    # Flat spellings of model settings on the command line move to the model section.
    remaining: list[str] = []
    index = 0
    while index < len(rest):
        token, name = rest[index], _flag_name(rest[index])
        flat = section.flat_name(name) if name and name not in recipe_names else None
        if flat is None:
            if name is not None and name not in recipe_names:
                known = recipe_names + [f"model.{n}" for n in section.fields]
                raise SystemExit(f"error: unknown setting --{name}{_suggest(name, known)} (see --help)")
            remaining.append(token)
            index += 1
            continue
        _warn_flat(name, flat)
        _, has_inline, inline = token.partition("=")
        if has_inline:
            raw = inline
        elif index + 1 < len(rest) and not rest[index + 1].startswith("--"):
            index += 1
            raw = rest[index]
        else:
            raw = "true"
        model.update(section.check({flat: _read_value(raw)}, "the command line"))
        index += 1

    if has_section:  # the whole --model mapping, then --model.NAME values
        if "" in dotted:
            model.update(section.check(_read_value(dotted.pop("")), "--model"))
        model.update(section.check({k: _read_value(v) for k, v in dotted.items()}, "the command line"))
        defaults[MODEL_SECTION] = model

    parser = build_parser(cls)
    parser.set_defaults(**defaults)
    try:  # the dataclass checks its settings as it is built (`__post_init__`)
        (args,) = parser.parse_args_into_dataclasses(args=remaining, look_for_args_file=False)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    return args


def saved_model_config(name_or_path: str, config_class: type) -> dict[str, Any]:
    """The config of a saved model (`init_from`: a folder or Hub id), read without loading its weights.

    Raises:
        ValueError: naming what is wrong when the config cannot be read or belongs to another family.
    """
    from ..data.loading import check_path_or_hub_id

    try:
        check_path_or_hub_id(name_or_path)
    except FileNotFoundError as error:
        raise ValueError(f"init_from: {error}") from None
    try:
        values, _ = config_class.get_config_dict(name_or_path)
    except OSError as error:
        raise ValueError(f"init_from={name_or_path!r} cannot be read: {error}") from None
    if "model_type" not in values:
        raise ValueError(
            f"init_from={name_or_path!r} has no model config (config.json without model_type): pass a folder "
            "saved by save_pretrained, a recipe's final folder or checkpoints/step_N, or a Hub id"
        )
    if values.get("model_type") != config_class.model_type:
        raise ValueError(
            f"init_from={name_or_path!r} is a {values.get('model_type')!r} model; this recipe continues "
            f"{config_class.model_type!r} models"
        )
    return values
