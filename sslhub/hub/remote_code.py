"""Remote code: the modeling files and `auto_map` that load a folder with `trust_remote_code=True`.

transformers copies a modeling file and the files it imports through single-dot relative imports,
flattened by name, next to the weights; a published sslhub model so loads where sslhub is not installed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import transformers
from transformers import PretrainedConfig

from ..models.modeling_common import code_files
from .folders import load_sslhub_config, read_json

# Auto classes whose sslhub registrations are exported as remote code (`auto_map` in config.json).
_AUTO_CLASSES = ("AutoModel", "AutoModelForPreTraining", "AutoModelForImageClassification")


def remote_code_files(
    config: PretrainedConfig | type[PretrainedConfig],
) -> tuple[dict[str, Path], dict[str, str]]:
    """The source files and the `auto_map` that make a config's models loadable with remote code.

    Args:
        config: an sslhub config (or its class) registered with transformers' Auto classes.

    Returns:
        `(files, auto_map)`: file name -> source path of the configuration and modeling modules and
        everything they import with single-dot relative imports; Auto class name -> `module.Class`.

    Raises:
        ValueError: a module imports the sslhub package (absolutely or with `..`), which remote code lacks.
    """
    config_class = config if isinstance(config, type) else type(config)
    classes = {"AutoConfig": config_class}
    for auto_name in _AUTO_CLASSES:
        try:
            classes[auto_name] = getattr(transformers, auto_name)._model_mapping[config_class]
        except KeyError:
            continue
    files: dict[str, Path] = {}
    auto_map: dict[str, str] = {}
    for auto_name, cls in classes.items():
        module_file = Path(sys.modules[cls.__module__].__file__)
        auto_map[auto_name] = f"{module_file.stem}.{cls.__name__}"
        for file in code_files(module_file):
            files[file.name] = file
    for name, file in files.items():
        for line in file.read_text(encoding="utf-8").splitlines():
            if re.match(r"\s*(from\s+sslhub\b|import\s+sslhub\b|from\s+\.\.)", line):
                raise ValueError(
                    f"{name} cannot be used as remote code: `{line.strip()}` needs the sslhub package; "
                    "model-side modules must import each other with `from .module import name`"
                )
    return files, auto_map


def config_with_auto_map(folder: Path, auto_map: dict[str, str]) -> str:
    """The text of a folder's `config.json` with `auto_map` set (keys sorted, as `add_remote_code` writes it)."""
    config_dict = read_json(folder / "config.json") | {"auto_map": auto_map}
    return json.dumps(config_dict, indent=2, sort_keys=True) + "\n"


def add_remote_code(folder: str | os.PathLike) -> list[Path]:
    """Make a saved sslhub folder loadable with `trust_remote_code=True` where sslhub is not installed.

    Copies the configuration/modeling modules and their relative imports (flattened, as transformers
    expects) next to the weights and writes `auto_map` into `config.json`. With sslhub installed,
    `AutoModel.from_pretrained(folder)` keeps using the installed classes.

    Args:
        folder: the saved sslhub model folder.

    Returns:
        The files written.
    """
    folder = Path(folder)
    files, auto_map = remote_code_files(load_sslhub_config(folder))
    written = []
    for name, source in files.items():
        shutil.copyfile(source, folder / name)
        written.append(folder / name)
    config_file = folder / "config.json"
    config_file.write_text(config_with_auto_map(folder, auto_map), encoding="utf-8")
    return [*written, config_file]
