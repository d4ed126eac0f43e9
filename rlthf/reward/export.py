"""A reward checkpoint as a Hugging Face sequence-classification model (``num_labels=1``), for RLHF trainers that
take a reward model by path (trl's PPO/RLOO ``reward_model``, or anything that calls
``AutoModelForSequenceClassification.from_pretrained`` and reads ``logits[:, 0]``).

- ``lora``: the adapter merged into the backbone; a plain ``*ForSequenceClassification`` model.
- ``encoder_head``: the backbone and the head in :class:`~rlthf.reward.hf_reward_model.MeanPoolingRewardModel`,
  shipped as remote code (``trust_remote_code=True``), since no stock class mean-pools and normalises. Only the
  default features export (the last layer, mean-pooled and normalised, cut from the left, not standardised):
  a tokenizer cannot cut at the prompt/response boundary, and the wrapper pools only the last layer.

The tokenizer is saved with ``truncation_side="left"`` and ``model_max_length`` set to the reward's
``max_length``, so ``tokenizer(prompt + response, truncation=True)`` reads the text the way rlthf's scorers do.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from rlthf.models import resolve_model
from rlthf.reward.common import read_meta

REMOTE_CODE = "modeling_rlthf_reward.py"


def export_reward_model(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Write the reward model of an rlthf reward ``checkpoint`` as a Hugging Face model folder; returns it."""
    meta = read_meta(checkpoint)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty")
    exporters = {"lora": _export_lora, "encoder_head": _export_encoder_head}
    if meta.get("backend") not in exporters:
        raise ValueError(f"{checkpoint}: cannot export a {meta.get('backend')!r} reward checkpoint; "
                         f"one of {sorted(exporters)}")
    exporters[meta["backend"]](Path(checkpoint), meta, out_dir)
    return out_dir


def _save_tokenizer(tokenizer, max_length: int, out_dir: Path) -> None:
    tokenizer.truncation_side = "left"
    tokenizer.model_max_length = max_length
    tokenizer.save_pretrained(out_dir)


def _export_lora(checkpoint: Path, meta: dict, out_dir: Path) -> None:
    from peft import PeftModel

    from rlthf.reward.lora import MODEL_DIR, load_base_model, load_tokenizer

    tokenizer = load_tokenizer(str(checkpoint / MODEL_DIR))
    base = load_base_model(resolve_model(meta["model"]), tokenizer)
    merged = PeftModel.from_pretrained(base, checkpoint / MODEL_DIR).merge_and_unload()
    merged.save_pretrained(out_dir)
    _save_tokenizer(tokenizer, int(meta["max_length"]), out_dir)


def _export_encoder_head(checkpoint: Path, meta: dict, out_dir: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    from rlthf.reward.encoder_head import HEAD_FILE, checkpoint_features, load_head_state
    from rlthf.reward.hf_reward_model import MeanPoolingRewardModel

    features = checkpoint_features(meta)
    if not features.is_default or meta.get("standardize"):
        raise ValueError(
            f"{checkpoint}: only an encoder_head on the default features exports as a Hugging Face model "
            f"(reward.layers [last], reward.pooling mean, reward.normalize true, reward.truncation left, "
            f"reward.gguf_file null, reward.standardize false); this one has {features} and "
            f"standardize={bool(meta.get('standardize'))}")
    path = resolve_model(meta["model"])
    backbone = AutoModel.from_pretrained(path)
    config = backbone.config
    config.num_labels = 1
    config.rlthf_head, config.rlthf_head_hidden = meta["head"], int(meta["head_hidden"])
    config.architectures = ["MeanPoolingRewardModel"]
    config.auto_map = {"AutoModelForSequenceClassification": f"{REMOTE_CODE[:-3]}.MeanPoolingRewardModel"}
    model = MeanPoolingRewardModel(config)
    model.encoder.load_state_dict(backbone.state_dict())
    model.head.load_state_dict(load_head_state((checkpoint / HEAD_FILE).read_bytes()))
    model.save_pretrained(out_dir)
    shutil.copy(Path(__file__).with_name("hf_reward_model.py"), out_dir / REMOTE_CODE)
    _save_tokenizer(AutoTokenizer.from_pretrained(path), int(meta["max_length"]), out_dir)
