"""DPO on Ray Train (paper 3.3 and appendix C.2): a policy trained on the curated preference pairs.

Layout of the work:

* :func:`train_dpo` (driver): reads ``prompt/chosen/rejected`` pairs, turns each HH-RLHF prompt into chat
  messages that fit ``dpo.max_prompt_length`` tokens, and runs a ``TorchTrainer`` whose workers run
  :func:`train_loop_per_worker`. It copies the final adapter to ``<out>/adapter`` and merges it into the weights
  in ``<out>/merged`` (a plain Hugging Face causal LM); with SFT, the SFT model is in ``<out>/sft``.
* :func:`train_loop_per_worker` (Ray Train worker): optional SFT on prompt + chosen (trl ``SFTTrainer``, LoRA merged
  into the weights afterwards), then trl's ``DPOTrainer`` with a fresh LoRA adapter. With LoRA the reference
  policy is the same model with the adapter disabled (trl does this with peft), i.e. the start policy or the SFT
  model. DeepSpeed ZeRO goes to the HF Trainer (``TrainingArguments.deepspeed``) on GPU workers.
* Everything else is plain transformers / trl / peft code.

Resume: the HF checkpoints are reported to Ray Train every epoch (``RayTrainReportCallback``); a relaunched driver
with the same data and settings gets the same run name and the worker resumes the DPO trainer from the latest one.
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from rlthf.config import DPOConfig
from rlthf.core.labels import hash_unit
from rlthf.core.dialogue import chat_messages
from rlthf.models import model_source, untag_gguf

logger = logging.getLogger(__name__)

ADAPTER_DIR, MERGED_DIR, SFT_DIR = "adapter", "merged", "sft"
FINAL_STAGE = "final"  # the metrics key of the report that carries the trained adapter
PAIR_COLUMNS = ("prompt", "chosen", "rejected")


# --------------------------------------------------------------------------------------------- plain model code

def fit_prompt(tokenizer, messages: list[dict], max_tokens: int) -> list[dict]:
    """The latest turns of ``messages`` whose chat-template prompt is at most ``max_tokens`` tokens.

    Drops the oldest turns first (the kept part starts with a user turn); a lone user turn that is still too long
    is cut from the left, so the question next to the answer survives.
    """
    def length(msgs):
        return len(tokenizer.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True,
                                                 return_dict=True)["input_ids"])

    starts = [i for i, m in enumerate(messages) if m["role"] == "user"] or [0]
    for start in starts:
        if length(messages[start:]) <= max_tokens:
            return messages[start:]
    last = dict(messages[starts[-1]])
    ids = tokenizer(last["content"], add_special_tokens=False)["input_ids"]
    overhead = length([{"role": "user", "content": ""}])
    keep = max(1, max_tokens - overhead - 4)
    while keep > 0:
        last["content"] = tokenizer.decode(ids[-keep:])
        if length([last]) <= max_tokens:
            return [last]
        keep -= 8
    raise ValueError(f"the chat template alone takes more than {max_tokens} prompt tokens")


def load_policy(model: str, gguf_file: Optional[str]):
    """The causal LM and its tokenizer (pad token set); a GGUF file is read through its float32 copy."""
    from transformers import AutoModelForCausalLM

    source, kwargs = model_source(model, gguf_file)
    tokenizer = load_tokenizer(model, gguf_file)
    policy = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    if kwargs:  # a GGUF file read as it is (not local, so no float32 copy)
        untag_gguf(policy)
    policy.config.pad_token_id = tokenizer.pad_token_id
    return policy, tokenizer


def load_tokenizer(model: str, gguf_file: Optional[str]):
    from transformers import AutoTokenizer

    source, kwargs = model_source(model, gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def dpo_rows(pairs: pd.DataFrame, tokenizer, max_prompt_length: int) -> pd.DataFrame:
    """trl's conversational preference rows: ``prompt`` (messages, as JSON), ``chosen``/``rejected`` (one
    assistant message each, as JSON). JSON keeps Ray Data's Arrow blocks flat; the worker decodes it."""
    prompts = [json.dumps(fit_prompt(tokenizer, chat_messages(p), max_prompt_length)) for p in pairs["prompt"]]

    def answer(texts):
        return [json.dumps([{"role": "assistant", "content": str(t).strip()}]) for t in texts]

    return pd.DataFrame({"prompt": prompts, "chosen": answer(pairs["chosen"]), "rejected": answer(pairs["rejected"])})


def lora_config(config: dict):
    from peft import LoraConfig, TaskType

    return LoraConfig(task_type=TaskType.CAUSAL_LM, r=config["lora_r"], lora_alpha=config["lora_alpha"],
                      lora_dropout=config["lora_dropout"], target_modules=config["lora_target_modules"])


def training_args(config: dict, output_dir: str, **kw) -> dict:
    """The HF ``TrainingArguments`` shared by the SFT and DPO steps."""
    per_device = config["batch_size"] // config["num_workers"]
    return dict(output_dir=output_dir, per_device_train_batch_size=per_device, gradient_accumulation_steps=1,
                warmup_steps=float(config["warmup_ratio"]), lr_scheduler_type="linear", logging_steps=1,
                report_to="none", use_cpu=not config["use_gpu"], bf16=config["bf16"], seed=config["seed"],
                deepspeed=config["deepspeed"] if config["use_gpu"] else None, dataloader_num_workers=0,
                # recomputing activations saves GPU memory; a CPU worker has memory to spare and time to save
                gradient_checkpointing=config["use_gpu"], disable_tqdm=True, **kw)


def sft(model, tokenizer, rows, config: dict, output_dir: str):
    """SFT on prompt + chosen (trl ``SFTTrainer``, loss on the completion only); returns the merged model."""
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(**training_args(config, output_dir, learning_rate=config["sft_learning_rate"],
                                     num_train_epochs=config["sft_epochs"], save_strategy="no"),
                     max_length=config["max_length"], completion_only_loss=True)
    dataset = rows.map(lambda r: {"prompt": r["prompt"], "completion": r["chosen"]},
                       remove_columns=["chosen", "rejected"])
    peft = lora_config(config) if config["lora_r"] else None
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft)
    trainer.train()
    model = trainer.model
    return model.merge_and_unload() if peft is not None else model


# ------------------------------------------------------------------------------------------- Ray Train worker

def train_loop_per_worker(config: dict) -> None:
    """Ray Train worker: [SFT,] then DPO with trl; rank 0 reports the final adapter with ``stage: final``.

    ``config`` holds the fields of :class:`~rlthf.config.DPOConfig` plus ``seed`` and ``total_pairs``.
    """
    import datasets
    import torch
    import ray.train
    from ray.train.huggingface.transformers import RayTrainReportCallback, prepare_trainer
    from trl import DPOConfig as TRLDPOConfig
    from trl import DPOTrainer

    torch.set_num_threads(config["cpus_per_worker"])
    torch.manual_seed(config["seed"])
    rank = ray.train.get_context().get_world_rank()
    records = []
    for batch in ray.train.get_dataset_shard("train").iter_batches(batch_size=1024, batch_format="pandas"):
        records.extend(batch.to_dict("records"))
    rows = datasets.Dataset.from_list([{k: json.loads(r[k]) for k in PAIR_COLUMNS} for r in records])
    model, tokenizer = load_policy(config["model"], config["gguf_file"])
    work = Path(tempfile.mkdtemp(prefix="rlthf-dpo-"))

    sft_dir = None
    if config["sft_epochs"]:
        model = sft(model, tokenizer, rows, config, str(work / "sft_trainer"))
        sft_dir = work / SFT_DIR
        model.save_pretrained(sft_dir)
        tokenizer.save_pretrained(sft_dir)

    args = TRLDPOConfig(**training_args(config, str(work / "dpo_trainer"), learning_rate=config["learning_rate"],
                                        num_train_epochs=config["epochs"], max_steps=config["max_steps"] or -1,
                                        save_strategy="epoch", save_total_limit=1),
                        beta=config["beta"], max_length=config["max_length"])
    trainer = DPOTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer,
                         peft_config=lora_config(config) if config["lora_r"] else None,
                         callbacks=[RayTrainReportCallback()])
    trainer = prepare_trainer(trainer)
    resume = ray.train.get_checkpoint()
    if resume is not None:
        with resume.as_directory() as ckpt:
            trainer.train(resume_from_checkpoint=str(Path(ckpt) / RayTrainReportCallback.CHECKPOINT_NAME))
    else:
        trainer.train()

    history = [h for h in trainer.state.log_history if "loss" in h]
    metrics = {"stage": FINAL_STAGE, "steps": trainer.state.global_step,
               "first_loss": history[0]["loss"] if history else float("nan"),
               "last_loss": history[-1]["loss"] if history else float("nan"),
               "last_reward_accuracy": history[-1].get("rewards/accuracies", float("nan")) if history else float("nan"),
               "last_reward_margin": history[-1].get("rewards/margins", float("nan")) if history else float("nan")}
    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="rlthf-dpo-final-") as tmp:
        trainer.model.save_pretrained(Path(tmp) / ADAPTER_DIR)  # the adapter only (or the whole model, no LoRA)
        tokenizer.save_pretrained(Path(tmp) / ADAPTER_DIR)
        if sft_dir is not None:
            shutil.copytree(sft_dir, Path(tmp) / SFT_DIR)
        (Path(tmp) / "log_history.json").write_text(json.dumps(trainer.state.log_history))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


# ------------------------------------------------------------------------------------------------- the driver

def read_preference_pairs(path: str | Path, max_pairs: Optional[int], seed: int) -> pd.DataFrame:
    """``prompt/chosen/rejected`` pairs of a parquet file (curated.parquet or any such file); with ``max_pairs``,
    the first N by a seeded hash of the pair id (or of the row when there is no id), so label sets of the same
    corpus keep the same pairs."""
    df = pd.read_parquet(path)
    missing = [c for c in PAIR_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: lacks column(s) {missing}; DPO needs prompt, chosen, rejected")
    ids = df["id"].astype(str) if "id" in df.columns else pd.Series(np.arange(len(df))).astype(str)
    df = df.assign(_order=hash_unit(seed, "dpo", ids)).sort_values("_order", kind="stable").drop(columns="_order")
    if max_pairs is not None:
        df = df.iloc[:max_pairs]
    if len(df) < 2:
        raise ValueError(f"{path}: {len(df)} preference pairs; DPO needs at least 2")
    return df.reset_index(drop=True)


def train_dpo(pairs: pd.DataFrame, config: DPOConfig, out_dir: str | Path, *, seed: int) -> dict:
    """Train a DPO policy on ``pairs`` (prompt/chosen/rejected) on Ray Train; returns its description, also written
    to ``<out_dir>/dpo.json``. A finished ``out_dir`` is returned as it is."""
    import ray.data
    from ray.train import CheckpointConfig

    from rlthf.cluster.train import fit_torch_trainer
    from rlthf.rundir import atomic_write_json

    out_dir = Path(out_dir).resolve()
    info_path = out_dir / "dpo.json"
    if info_path.exists():
        return json.loads(info_path.read_text())
    tokenizer = load_tokenizer(config.model, config.gguf_file)
    rows = dpo_rows(pairs, tokenizer, config.max_prompt_length)
    loop_config = {**{f: getattr(config, f) for f in config.__dataclass_fields__}, "seed": seed,
                   "total_pairs": len(rows)}
    result = fit_torch_trainer(
        train_loop_per_worker, loop_config, what="DPO training", rows=rows, name_prefix="dpo",
        storage_path=str(out_dir / "ray_train"), num_workers=config.num_workers, use_gpu=config.use_gpu,
        cpus_per_worker=config.cpus_per_worker, checkpoint_config=CheckpointConfig(num_to_keep=None),
        datasets={"train": ray.data.from_pandas(rows)},
        datasets_to_split=[])  # every worker reads all pairs; the HF Trainer's distributed sampler gives each its part
    final = [(c, m) for c, m in (result.best_checkpoints or []) if m.get("stage") == FINAL_STAGE]
    if not final:
        raise RuntimeError(f"DPO training reported no final adapter (run folder {result.path})")
    checkpoint, metrics = final[-1]
    out_dir.mkdir(parents=True, exist_ok=True)
    with checkpoint.as_directory() as ckpt:
        for name in (ADAPTER_DIR, SFT_DIR):
            shutil.rmtree(out_dir / name, ignore_errors=True)
            if (Path(ckpt) / name).exists():
                shutil.copytree(Path(ckpt) / name, out_dir / name)
        shutil.copy(Path(ckpt) / "log_history.json", out_dir / "log_history.json")
    has_sft = (out_dir / SFT_DIR).exists()
    reference = str(out_dir / SFT_DIR) if has_sft else config.model
    merge_policy(out_dir / ADAPTER_DIR, out_dir / MERGED_DIR, base=reference,
                 gguf_file=None if has_sft else config.gguf_file, lora=config.lora_r is not None)
    info = {"pairs": len(rows), "policy": str(out_dir / MERGED_DIR), "adapter": str(out_dir / ADAPTER_DIR),
            "reference": {"model": reference, "gguf_file": None if has_sft else config.gguf_file},
            **{k: metrics[k] for k in metrics if k != "stage"}}
    atomic_write_json(info_path, info)
    return info


def merge_policy(adapter_dir: Path, merged_dir: Path, *, base: str, gguf_file: Optional[str], lora: bool) -> None:
    """Write the trained policy as one Hugging Face model: the base weights with the adapter merged in."""
    shutil.rmtree(merged_dir, ignore_errors=True)
    if not lora:  # full fine-tuning saved the whole model already
        shutil.copytree(adapter_dir, merged_dir)
        return
    from peft import PeftModel

    model, tokenizer = load_policy(base, gguf_file)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(merged_dir)
    tokenizer.save_pretrained(merged_dir)


def run_dpo(config, echo=print) -> dict:
    """`rlthf dpo`: DPO on ``dpo.pairs`` (default: the run's curated.parquet) into ``dpo.output``."""
    from rlthf.cluster.session import init_ray

    d = config.dpo
    pairs_path = d.pairs or str(Path(config.output_dir) / "curated.parquet")
    if not Path(pairs_path).exists():
        raise FileNotFoundError(f"dpo.pairs: {pairs_path} does not exist (run `rlthf run` first, or set dpo.pairs)")
    pairs = read_preference_pairs(pairs_path, d.max_pairs, config.seed)
    init_ray(config.ray)
    out = d.output or str(Path(config.output_dir) / "dpo")
    info = train_dpo(pairs, d, out, seed=config.seed)
    echo(f"dpo: {info['pairs']} pairs, {info['steps']} steps, loss {info['first_loss']:.4f} -> "
         f"{info['last_loss']:.4f}; policy -> {info['policy']}")
    return info
