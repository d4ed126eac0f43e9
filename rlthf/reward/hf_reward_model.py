"""A Hugging Face sequence-classification model for the ``encoder_head`` reward: a backbone's mean-pooled,
L2-normalised embedding and the Bradley-Terry head, one logit per text (``num_labels=1``).

This file is self-contained (torch and transformers only): :mod:`rlthf.reward.export` copies it next to the
weights as ``modeling_rlthf_reward.py`` and names it in ``config.json``'s ``auto_map``, so that
``AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)`` loads it without rlthf.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


class MeanPoolingRewardModel(PreTrainedModel):
    """``logits[:, 0] = head(normalize(mean over unmasked tokens of encoder(text).last_hidden_state))``.

    The config is the backbone's own, with ``num_labels=1``, ``rlthf_head`` ('linear' or 'mlp') and
    ``rlthf_head_hidden``. Weights: ``encoder.*`` (the backbone) and ``head.*``.
    """

    config_class = PretrainedConfig
    base_model_prefix = "encoder"
    # attention is the backbone's: whatever it supports, this wrapper does
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True

    def __init__(self, config):
        super().__init__(config)
        self.encoder = AutoModel.from_config(config)
        dim = config.hidden_size
        if config.rlthf_head == "linear":
            self.head = nn.Linear(dim, 1)
        else:
            self.head = nn.Sequential(nn.Linear(dim, config.rlthf_head_hidden), nn.GELU(),
                                      nn.Linear(config.rlthf_head_hidden, 1))
        self.post_init()

    def _init_weights(self, module):
        pass  # every weight comes from the export; nothing here is trained from scratch

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        encoded = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            encoded["token_type_ids"] = token_type_ids
        hidden = self.encoder(**encoded).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        pooled = nn.functional.normalize(pooled, dim=-1)
        return SequenceClassifierOutput(logits=self.head(pooled))
