"""The ``lora`` reward backend: LoRA fine-tuning of a sequence-classification model on Ray Train.

Layout of the work:

* ``LoraReward.train`` (driver): reads the training pairs once, checks the labels, carves the validation pairs
  by id, and runs a ``TorchTrainer`` whose workers run :func:`train_loop_per_worker` (DDP over gloo on CPU, NCCL on
  GPU, or DeepSpeed when ``reward.deepspeed`` is set on GPU workers). Rank 0 reports a checkpoint every epoch; the
  best one by validation loss is copied to ``<out_dir>/model`` and described in ``<out_dir>/rlthf_checkpoint.json``.
* ``LoraReward.score`` (driver): ``map_batches`` over the pairs with :class:`LoraScorer`, a callable class that
  loads the merged model once per actor.
* Everything in between is plain torch / transformers / peft code that never imports Ray.

The reward is read the way the Hugging Face ``*ForSequenceClassification`` head reads its logit: an encoder
(BERT, MiniLM) pools the first token (``[CLS]``), a decoder (Llama, Qwen) takes the last non-pad token, found with
``config.pad_token_id``. Texts are padded on the right and truncated from the left (the response, at the end of
the text, survives), in training and in scoring alike.

A driver relaunched on the same ``out_dir`` with the same data and settings resumes the Ray Train run from its
latest checkpoint (the run name carries a fingerprint of both); so does a worker-group restart inside one run
(a dead worker or node: up to ``reward.max_failures`` restarts, ``FailureConfig``). Checkpoints go to
``reward.storage_path`` (s3://, gs:// or a shared filesystem on a multi-node cluster) or into ``out_dir``.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from rlthf.cluster.train import fit_torch_trainer
from rlthf.config import RewardConfig
from rlthf.core.labels import PAIR_TEXT
from rlthf.models import resolve_model
from rlthf.reward.common import (
    bradley_terry_loss,
    chosen_rejected,
    pack_checkpoint,
    read_meta,
    reward_text,
    unpack_checkpoint,
    validation_mask,
    warmup_linear,
    write_meta,
)

logger = logging.getLogger(__name__)

MODEL_DIR = "model"  # under out_dir: adapter (LoRA weights + score head), adapter config, tokenizer
TRAIN_STATE = "train_state.json"  # in each Ray Train checkpoint: epoch and the metrics history so far
OPTIMIZER_STATE = "optimizer.pt"  # in each Ray Train checkpoint: optimizer and scheduler (DDP path only)
SCORE_COLUMNS = list(PAIR_TEXT)
TRAIN_COLUMNS = SCORE_COLUMNS + ["label"]
HEAD_NAMES = ("score", "classifier")  # the new head of HF's *ForSequenceClassification models
DRIVER_ONLY = ("max_failures", "storage_path", "cache_dir")  # RewardConfig fields the workers never read


# --------------------------------------------------------------------------------------------- plain model code

def load_tokenizer(path: str):
    """The tokenizer of ``path`` with a pad token (eos if it has none), right padding, left truncation."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"{path}: the tokenizer has neither a pad token nor an eos token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    tokenizer.truncation_side = "left"
    return tokenizer


def load_base_model(path: str, tokenizer):
    """The backbone with a new one-output head (``num_labels=1``), its ``pad_token_id`` set so a decoder's head
    finds the last non-pad token."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def head_name(model) -> str:
    """Name of the sequence-classification head (``score`` for decoders, ``classifier`` for encoders)."""
    import torch

    for name in HEAD_NAMES:
        if isinstance(getattr(model, name, None), torch.nn.Module):
            return name
    raise ValueError(f"{type(model).__name__}: no sequence-classification head named one of {HEAD_NAMES}")


def new_lora_model(base, *, r: int, alpha: int, dropout: float, target_modules: Optional[list[str]]):
    """Wrap ``base`` in LoRA adapters; the new head is fully trained and saved with the adapter
    (``modules_to_save``), or a reload would get a random head back."""
    from peft import LoraConfig, TaskType, get_peft_model

    head = head_name(base)
    lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=r, lora_alpha=alpha, lora_dropout=dropout,
                      target_modules=target_modules, modules_to_save=[head])
    model = get_peft_model(base, lora)
    if not any(p.requires_grad for n, p in model.named_parameters() if f"{head}." in n):
        raise RuntimeError(f"the reward head {head!r} is not trainable after wrapping in LoRA")
    return model


def encode_pairs(tokenizer, chosen, rejected, max_length: int, device=None) -> dict:
    """Collate a batch of B pairs into one forward of 2B rows.

    Returns ``{"input_ids": LongTensor[2B, T], "attention_mask": LongTensor[2B, T]}`` where rows ``0 .. B-1``
    are the chosen texts and rows ``B .. 2B-1`` the rejected texts of the same pairs, in the same order
    (row ``i`` and row ``B + i`` are one pair). Each text is truncated from the left to ``max_length`` tokens
    and right-padded to the longest row of the batch.
    """
    return encode_texts(tokenizer, list(chosen) + list(rejected), max_length, device)


def encode_texts(tokenizer, texts, max_length: int, device=None) -> dict:
    enc = tokenizer([str(t) for t in texts], truncation=True, max_length=max_length, padding=True,
                    return_tensors="pt")
    out = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if device is not None:
        out = {k: v.to(device) for k, v in out.items()}
    return out


def rewards_of(model, encoded: dict):
    """One reward per row: the head's single logit, as float32."""
    return model(**encoded).logits[:, 0].float()


def pair_loss(model, tokenizer, batch: dict, max_length: int, device=None):
    """Bradley-Terry loss and reward margins (chosen - rejected) of a batch with prompt/response_a/response_b/label."""
    chosen, rejected = chosen_rejected(batch["prompt"], batch["response_a"], batch["response_b"], batch["label"])
    rewards = rewards_of(model, encode_pairs(tokenizer, chosen, rejected, max_length, device))
    n = len(chosen)
    return bradley_terry_loss(rewards[:n], rewards[n:]), (rewards[:n] - rewards[n:]).detach()


def evaluate(model, tokenizer, batches, max_length: int, device=None) -> tuple[float, float]:
    """Mean Bradley-Terry loss and accuracy (margin > 0) over all pairs of ``batches``."""
    import torch

    was_training = model.training
    model.eval()
    total_loss, correct, n = 0.0, 0, 0
    with torch.no_grad():
        for batch in batches:
            loss, margin = pair_loss(model, tokenizer, batch, max_length, device)
            total_loss += float(loss) * len(margin)
            correct += int((margin > 0).sum())
            n += len(margin)
    model.train(was_training)
    if n == 0:
        raise RuntimeError("the validation set is empty")
    return total_loss / n, correct / n


# ------------------------------------------------------------------------------------------- Ray Train worker

def train_loop_per_worker(config: dict) -> None:
    """Ray Train worker: LoRA reward training with DDP (or DeepSpeed), one report per epoch.

    ``config`` holds the fields of :class:`~rlthf.config.RewardConfig` plus ``seed``, ``per_worker_batch``,
    ``total_steps`` and ``base_model`` (resolved path). Rank 0 attaches a checkpoint (adapter + head, tokenizer,
    epoch, history, optimizer) to its report; a restarted worker group resumes from ``ray.train.get_checkpoint()``.
    """
    import torch
    import ray.train
    import ray.train.torch

    torch.set_num_threads(config["cpus_per_worker"])
    rank = ray.train.get_context().get_world_rank()
    torch.manual_seed(config["seed"])
    tokenizer = load_tokenizer(config["base_model"])
    device = ray.train.torch.get_device()

    resume = ray.train.get_checkpoint()
    model, start_epoch, history, optimizer_state = _start_model(config, tokenizer, resume)

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=config["learning_rate"], weight_decay=config["weight_decay"])
    total, ratio = config["total_steps"], config["warmup_ratio"]

    def make_scheduler(opt):
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: warmup_linear(step, total, ratio))

    engine = None
    if config["deepspeed"] and config["use_gpu"]:
        engine = _deepspeed_engine(model, optimizer, make_scheduler, config)
        module, step_model, scheduler = engine.module, engine, None
    else:
        scheduler = make_scheduler(optimizer)
        if optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state["optimizer"])
            scheduler.load_state_dict(optimizer_state["scheduler"])
        step_model = ray.train.torch.prepare_model(model)  # DDP when more than one worker
        module = model  # the unwrapped peft model: evaluation and saving

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    for epoch in range(start_epoch, config["epochs"] + 1):
        torch.manual_seed(config["seed"] * 100_003 + epoch * 101 + rank)  # dropout; reproducible on resume
        batches = train_shard.iter_batches(batch_size=config["per_worker_batch"], batch_format="numpy",
                                           local_shuffle_buffer_size=4 * config["per_worker_batch"],
                                           local_shuffle_seed=config["seed"] * 1_000 + epoch)
        train_loss = _train_epoch(step_model, engine, optimizer, scheduler, tokenizer, batches, config, device)
        val_batches = val_shard.iter_batches(batch_size=config["score_batch_size"], batch_format="numpy")
        val_loss, val_accuracy = evaluate(module, tokenizer, val_batches, config["max_length"], device)
        # `resumed`: this epoch ran in a worker group restored from a checkpoint (a relaunch or a restart)
        metrics = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_accuracy": val_accuracy,
                   "resumed": resume is not None}
        history.append(metrics)
        _report(metrics, module, tokenizer, optimizer, scheduler, history, rank, zero3=_is_zero3(engine))


def _start_model(config: dict, tokenizer, resume):
    """A fresh LoRA model at epoch 1, or the one in ``resume`` (Ray Train's checkpoint) at its next epoch; also the
    metrics history so far and the optimizer state (None when there is none)."""
    import torch

    if resume is None:
        model = new_lora_model(load_base_model(config["base_model"], tokenizer), r=config["lora_r"],
                               alpha=config["lora_alpha"], dropout=config["lora_dropout"],
                               target_modules=config["lora_target_modules"])
        return model, 1, [], None
    from peft import PeftModel

    with resume.as_directory() as ckpt_dir:
        ckpt_dir = Path(ckpt_dir)
        model = PeftModel.from_pretrained(load_base_model(config["base_model"], tokenizer), ckpt_dir,
                                          is_trainable=True)
        state = json.loads((ckpt_dir / TRAIN_STATE).read_text())
        optimizer_state = None
        if (ckpt_dir / OPTIMIZER_STATE).exists():
            optimizer_state = torch.load(ckpt_dir / OPTIMIZER_STATE, map_location="cpu", weights_only=True)
    return model, state["epoch"] + 1, state["history"], optimizer_state


def _train_epoch(model, engine, optimizer, scheduler, tokenizer, batches, config: dict, device) -> float:
    """One pass over this worker's shard; returns the mean training loss over all workers."""
    import torch
    import torch.distributed as dist

    model.train()
    total, steps = 0.0, 0
    for batch in batches:
        loss, _ = pair_loss(model, tokenizer, batch, config["max_length"], device)
        if engine is not None:
            engine.backward(loss)
            engine.step()  # optimizer, lr scheduler and zero_grad
        else:
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        total += loss.item()
        steps += 1
    stats = torch.tensor([total, float(steps)], dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(stats)
    return float(stats[0] / max(stats[1], 1.0))


def _report(metrics, module, tokenizer, optimizer, scheduler, history, rank: int, *, zero3: bool) -> None:
    """Report ``metrics`` from every worker; rank 0 attaches the checkpoint."""
    import torch
    import ray.train

    state_dict = _gathered_state_dict(module) if zero3 else None  # collective: every rank takes part
    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="rlthf-lora-") as tmp:
        module.save_pretrained(tmp, state_dict=state_dict)  # LoRA weights + the head (modules_to_save)
        tokenizer.save_pretrained(tmp)
        Path(tmp, TRAIN_STATE).write_text(json.dumps({"epoch": metrics["epoch"], "history": history}))
        if scheduler is not None:
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
                       Path(tmp, OPTIMIZER_STATE))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


# ------------------------------------------------------------------------------- DeepSpeed (GPU workers only)

def _deepspeed_engine(model, optimizer, make_scheduler, config: dict):
    """``deepspeed.initialize`` with our AdamW and warm-up schedule; the config's batch keys default to ours.

    The engine steps the scheduler in ``engine.step()``. Resuming restores the adapter and the epoch but not the
    optimizer state on this path.
    """
    import deepspeed  # lazily: an optional GPU dependency

    ds_config = dict(config["deepspeed"])
    ds_config.setdefault("train_micro_batch_size_per_gpu", config["per_worker_batch"])
    ds_config.setdefault("gradient_accumulation_steps", 1)
    ds_config.pop("train_batch_size", None)  # derived from the two above and the world size
    if "optimizer" in ds_config or "scheduler" in ds_config:
        raise ValueError("reward.deepspeed: leave out 'optimizer' and 'scheduler'; the reward config sets them")
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=[p for p in model.parameters() if p.requires_grad],
        optimizer=optimizer,
        lr_scheduler=make_scheduler,
        config=ds_config,
    )
    return engine


def _is_zero3(engine) -> bool:
    return engine is not None and engine.zero_optimization_stage() == 3


def _gathered_state_dict(module) -> dict:
    """Under ZeRO-3 the trainable parameters are partitioned: gather them (on every rank) to save the adapter."""
    import deepspeed

    params = [p for p in module.parameters() if p.requires_grad]
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()
                if ("lora_" in k or "modules_to_save" in k) and v.numel() > 0}


# ----------------------------------------------------------------------------------------------- Ray Data scorer

class LoraScorer:
    """Ray Data callable class: rewards of both responses of each pair.

    Loads the base model and the adapter of a :meth:`LoraReward.train` output directory once, merges the adapter
    into the weights and scores in eval mode. Works on a plain ``dict`` of numpy arrays too.
    """

    def __init__(self, checkpoint: str | None = None, num_threads: Optional[int] = None, device: str = "cpu",
                 packed=None):
        import torch
        from peft import PeftModel

        if num_threads is not None:
            torch.set_num_threads(num_threads)
        if packed is not None:  # (:func:`pack_checkpoint`'s bytes, or their object ref: no path of the driver's)
            import ray

            self.unpacked = tempfile.TemporaryDirectory(prefix="rlthf-lora-")
            unpack_checkpoint(ray.get(packed) if isinstance(packed, ray.ObjectRef) else packed, self.unpacked.name)
            checkpoint = self.unpacked.name
        meta = read_meta(checkpoint)
        model_dir = Path(checkpoint) / MODEL_DIR
        self.max_length = int(meta["max_length"])
        self.device = torch.device(device)
        self.tokenizer = load_tokenizer(str(model_dir))
        base = load_base_model(resolve_model(meta["model"]), self.tokenizer)
        self.model = PeftModel.from_pretrained(base, model_dir).merge_and_unload().to(self.device).eval()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        texts_a = [reward_text(p, r) for p, r in zip(batch["prompt"], batch["response_a"])]
        texts_b = [reward_text(p, r) for p, r in zip(batch["prompt"], batch["response_b"])]
        n = len(texts_a)
        if n == 0:
            rewards = np.zeros(0, dtype=np.float64)
        else:
            with torch.no_grad():
                encoded = encode_texts(self.tokenizer, texts_a + texts_b, self.max_length, self.device)
                rewards = rewards_of(self.model, encoded).double().cpu().numpy()
        return {"id": np.asarray(batch["id"]), "reward_a": rewards[:n], "reward_b": rewards[n:2 * n]}


# ------------------------------------------------------------------------------------------------- the backend

class LoraReward:
    """LoRA fine-tuning of ``reward.model`` with a Bradley-Terry loss on Ray Train."""

    name = "lora"

    def __init__(self, config: RewardConfig):
        self.config = config

    def train(self, train, out_dir: Path, *, seed: int) -> Path:
        """Train on ``train`` (rows ``id, prompt, response_a, response_b, label``), keep the best epoch by
        validation loss in ``out_dir/model`` and describe it in ``out_dir``'s meta file. Returns ``out_dir``."""
        import ray.data
        from ray.train import CheckpointConfig

        cfg = self.config
        out_dir = Path(out_dir).resolve()
        # Read everything on the driver before the workers take their CPUs: the datasets handed to Ray Train are
        # then in-memory and need no read tasks, which could not be scheduled on a small cluster (ray#44687).
        df = train.to_pandas()
        if "row" in df.columns:  # rows that streamed in no set order, and the order they were given in
            df = df.sort_values("row", kind="stable")
        missing = [c for c in TRAIN_COLUMNS if c not in df.columns]
        if missing:
            raise ValueError(f"training pairs lack column(s) {missing}; got {list(df.columns)}")
        df = df[TRAIN_COLUMNS].astype({c: str for c in TRAIN_COLUMNS})
        chosen_rejected(df["prompt"], df["response_a"], df["response_b"], df["label"])  # fails on a bad label
        is_val = validation_mask(df["id"], cfg.val_fraction, seed)
        train_df = df[~is_val].sample(frac=1.0, random_state=seed).reset_index(drop=True)
        val_df = df[is_val].reset_index(drop=True)
        if len(train_df) < cfg.num_workers:
            raise ValueError(f"{len(train_df)} training pairs cannot be split across {cfg.num_workers} workers")

        per_worker = max(1, cfg.batch_size // cfg.num_workers)
        rows_per_worker = len(train_df) // cfg.num_workers  # streaming_split(equal=True) gives each this many
        steps_per_epoch = math.ceil(rows_per_worker / per_worker)
        loop_config = {  # where and how often to retry are no part of the run: left out of its fingerprint
            **{f.name: getattr(cfg, f.name) for f in cfg.__dataclass_fields__.values() if f.name not in DRIVER_ONLY},
            "seed": seed,
            "base_model": resolve_model(cfg.model),
            "per_worker_batch": per_worker,
            "total_steps": steps_per_epoch * cfg.epochs,
        }
        result = fit_torch_trainer(
            train_loop_per_worker, loop_config, what="LoRA reward training", rows=df, name_prefix="lora",
            storage_path=cfg.storage_path or str(out_dir / "ray_train"), num_workers=cfg.num_workers,
            use_gpu=cfg.use_gpu, cpus_per_worker=cfg.cpus_per_worker, max_failures=cfg.max_failures,
            checkpoint_config=CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="val_loss",
                                               checkpoint_score_order="min"),
            datasets={"train": ray.data.from_pandas(train_df), "val": ray.data.from_pandas(val_df)},
            datasets_to_split=["train"])

        best_ckpt, best = min(result.best_checkpoints or [], key=lambda cm: cm[1]["val_loss"],
                              default=(None, None))
        if best_ckpt is None:
            raise RuntimeError(f"LoRA reward training reported no checkpoint (run folder {result.path})")
        with result.checkpoint.as_directory() as latest_dir:  # the latest holds the whole history
            history = json.loads((Path(latest_dir) / TRAIN_STATE).read_text())["history"]
        model_dir = out_dir / MODEL_DIR
        if model_dir.exists():
            shutil.rmtree(model_dir)
        with best_ckpt.as_directory() as best_dir:
            shutil.copytree(best_dir, model_dir, ignore=shutil.ignore_patterns(TRAIN_STATE, OPTIMIZER_STATE))
        write_meta(out_dir, backend=self.name, model=cfg.model, max_length=cfg.max_length,
                   best_epoch=int(best["epoch"]), best_val_loss=float(best["val_loss"]),
                   val_accuracy=float(best["val_accuracy"]), train_pairs=len(train_df), val_pairs=len(val_df),
                   history=history)
        return out_dir

    def score(self, pairs, checkpoint: Path):
        """Rewards of both responses: a Ray Dataset with exactly ``id, reward_a, reward_b`` (float64)."""
        import ray
        import ray.data

        meta = read_meta(checkpoint)
        if meta.get("backend") != self.name:
            raise ValueError(f"{checkpoint}: a {meta.get('backend')!r} checkpoint, not a {self.name!r} one")
        missing = [c for c in SCORE_COLUMNS if c not in pairs.schema().names]
        if missing:
            raise ValueError(f"pairs to score lack column(s) {missing}")
        cfg = self.config
        size = cfg.score_concurrency
        if not cfg.use_gpu:
            # One CPU per actor, and leave one CPU free so the tasks feeding the actors can run (ray#44687).
            spare = int(ray.cluster_resources().get("CPU", 1)) - 1
            if size > max(1, spare):
                logger.warning("reward.score_concurrency=%d leaves no CPU for Ray Data tasks; using %d",
                               size, max(1, spare))
                size = max(1, spare)
        pairs = pairs.select_columns(SCORE_COLUMNS)
        if size > 1:  # a pandas frame is one block, which only one actor would get: cut it into batch-sized blocks
            pairs = pairs.repartition(target_num_rows_per_block=cfg.score_batch_size)
        return pairs.map_batches(
            LoraScorer,
            # the adapter through Ray's object store: an actor on another node has no path of this one
            fn_constructor_kwargs={"packed": ray.put(pack_checkpoint(checkpoint, MODEL_DIR)), "num_threads": 1,
                                   "device": "cuda" if cfg.use_gpu else "cpu"},
            compute=ray.data.ActorPoolStrategy(size=size),  # `concurrency=` is deprecated in Ray 2.60
            batch_size=cfg.score_batch_size,
            batch_format="numpy",
            num_cpus=1,
            num_gpus=1 if cfg.use_gpu else 0,
            udf_modifying_row_count=False,
        )
