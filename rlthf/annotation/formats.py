"""Exchange an annotation batch with the tools labeling teams use: Label Studio and Argilla.

``rlthf annotate export`` writes the pairs of the open request that still need answers; ``rlthf annotate import
--format labelstudio|argilla`` reads the tool's export back through the same checks as a jsonl import
(:func:`rlthf.annotation.importing.check_answers`). Each pair's two responses go out in a seeded random order (``shown``,
kept in the task or record), so a tool's left/right or response_1/response_2 maps back to ``a``/``b``.

Label Studio: a JSON list of tasks ``{"data": {"pair_id", "iteration", "shown", "dialogue", "left", "right"}}``
and a labeling config with the ``<Pairwise>`` tag; its JSON export adds ``annotations[].result[]`` with
``{"type": "pairwise", "value": {"selected": "left" | "right"}}``. Exports have been seen without the pairwise
result (label-studio#3927, #4699): such an annotation counts as unanswered, not as an error, so the pair stays
open instead of the whole import failing.

Argilla (v2, the ``argilla`` extra): the folder that ``rg.Dataset.to_disk`` writes (``.argilla/settings.json``,
``.argilla/dataset.json``, ``records.json``), built from the SDK's own ``Settings`` and ``Record`` objects, and
read back with ``rg.Record.from_dict``; a team loads it with ``rg.Dataset.from_disk`` and exports answers with
``dataset.to_disk`` (or ``dataset.records.to_json``).
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Callable, Iterator

from rlthf.annotation.store import (SHOWN_ORDERS, Answer, InvalidAnswer, answers_needed, open_iteration, read_answer_records, request_path)
from rlthf.core.dialogue import dialogue_turns
from rlthf.core.labels import hash_unit
from rlthf.rundir import atomic_write_json, atomic_write_text, read_jsonl


LABELSTUDIO_CONFIG = """\
<View>
  <Header value="The dialogue so far"/>
  <Paragraphs name="dialogue" value="$dialogue" layout="dialogue" nameKey="author" textKey="text"/>
  <Header value="Which response is better?"/>
  <Pairwise name="preference" toName="left,right"/>
  <View style="display: grid; grid-template-columns: 1fr 1fr; column-gap: 1em">
    <Text name="left" value="$left"/>
    <Text name="right" value="$right"/>
  </View>
  <TextArea name="comment" toName="left" placeholder="Comment (optional)" maxSubmissions="1" editable="true"/>
</View>
"""


def export_request(run_dir: str | Path, format: str, out: str | Path) -> list[str]:
    """Write the open request's pairs that still need answers for ``format`` (``labelstudio``, ``argilla``) at
    ``out``; return what was written, one line per file, for the person at the terminal."""
    iteration = open_iteration(run_dir)
    standing = read_answer_records(run_dir, iteration)
    needed = answers_needed(run_dir, iteration)
    pairs = [r for r in read_jsonl(request_path(run_dir, iteration))
             if len(standing.get(r["id"], [])) < needed[r["id"]]]
    shown = dict(zip([p["id"] for p in pairs], _shown_orders(iteration, [p["id"] for p in pairs])))
    if format == "labelstudio":
        return export_labelstudio(pairs, shown, iteration, out)
    if format == "argilla":
        overlap = max((needed[p["id"]] for p in pairs), default=1)
        return export_argilla(pairs, shown, iteration, out, min_submitted=overlap)
    raise ValueError(f"unknown export format {format!r}; expected labelstudio or argilla")


def _shown_orders(iteration: int, ids: list[str]) -> list[str]:
    """A seeded coin per pair: the same export twice shows the same order."""
    return ["ba" if u < 0.5 else "ab" for u in hash_unit(iteration, "exchange-shown", ids)]


def _ordered(pair: dict, shown: str) -> tuple[str, str]:
    return (pair["response_a"], pair["response_b"]) if shown == "ab" else (pair["response_b"], pair["response_a"])


# --- Label Studio ---------------------------------------------------------------------------------------------

def export_labelstudio(pairs: list[dict], shown: dict[str, str], iteration: int, out: str | Path) -> list[str]:
    out = Path(out)
    tasks = []
    for pair in pairs:
        left, right = _ordered(pair, shown[pair["id"]])
        dialogue = [{"author": speaker or "Prompt", "text": text} for speaker, text in dialogue_turns(pair["prompt"])]
        tasks.append({"data": {"pair_id": pair["id"], "iteration": iteration, "shown": shown[pair["id"]],
                               "dialogue": dialogue, "left": left, "right": right}})
    config_path = out.with_suffix(".xml")
    atomic_write_json(out, tasks)
    atomic_write_text(config_path, LABELSTUDIO_CONFIG)
    return [f"{out}: {len(tasks)} Label Studio tasks of iteration {iteration} (import them into the project)",
            f"{config_path}: the labeling config (Settings > Labeling Interface > Code)"]


def read_labelstudio_answers(path: str | Path) -> list[Answer]:
    """The answers in Label Studio's JSON export of tasks made by :func:`export_labelstudio`.

    An annotation that was cancelled (skipped) or has no pairwise result is no answer. Several annotations of a
    task are several people's answers. ``completed_by`` names the annotator (``labelstudio:<user id>``, or the
    e-mail when the export expands the user).
    """
    answers = []
    for position, task, bad in _json_objects(path, "task"):
        data = task.get("data")
        if not isinstance(data, dict):
            raise bad("data", "missing" if data is None else f"expected an object, got {type(data).__name__}")
        pid, shown = data.get("pair_id"), data.get("shown")
        if not isinstance(pid, str) or not pid:
            raise bad("data.pair_id", "missing" if pid is None else f"expected a pair id, got {pid!r}")
        if shown not in SHOWN_ORDERS:
            raise bad("data.shown", f"expected 'ab' or 'ba' (the order rlthf exported), got {shown!r}")
        annotations = task.get("annotations", [])
        if not isinstance(annotations, list):
            raise bad("annotations", f"expected a list, got {type(annotations).__name__}")
        for j, annotation in enumerate(annotations):
            where = f"annotations[{j}]"
            if not isinstance(annotation, dict):
                raise bad(where, f"expected an object, got {type(annotation).__name__}")
            if annotation.get("was_cancelled"):
                continue
            result = annotation.get("result", [])
            if not isinstance(result, list) or not all(isinstance(r, dict) for r in result):
                raise bad(f"{where}.result", "expected a list of objects")
            pairwise = [r for r in result if r.get("type") == "pairwise"]
            if not pairwise:
                continue  # seen in real exports: the choice went missing, so the pair is still open
            if len(pairwise) > 1:
                raise bad(f"{where}.result", f"{len(pairwise)} pairwise results in one annotation")
            value = pairwise[0].get("value")
            selected = value.get("selected") if isinstance(value, dict) else None
            if selected not in ("left", "right"):
                raise bad(f"{where}.result.value.selected", f"expected 'left' or 'right', got {selected!r}")
            extra: dict[str, Any] = {"shown": shown, "source": "labelstudio"}
            comments = [t for r in result if r.get("type") == "textarea" and isinstance(r.get("value"), dict)
                        for t in _as_list(r["value"].get("text")) if isinstance(t, str) and t.strip()]
            if comments:
                extra["comment"] = "\n".join(comments)
            when = annotation.get("updated_at") or annotation.get("created_at")
            if isinstance(when, str):
                extra["time"] = when
            annotator = _labelstudio_user(annotation.get("completed_by"))
            if annotator is None:
                raise bad(f"{where}.completed_by", f"expected a user id or object, got "
                                                   f"{annotation.get('completed_by')!r}")
            label = shown[0] if selected == "left" else shown[1]
            answers.append(Answer(position, f"{where}.result", "data.pair_id", pid, label, annotator, extra))
    return answers


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def _labelstudio_user(user: Any) -> str | None:
    if user is None:
        return "labelstudio"
    if isinstance(user, dict):
        user = user.get("email") or user.get("id")
    if isinstance(user, bool) or not isinstance(user, (int, str)) or user == "":
        return None
    return f"labelstudio:{user}"


# --- Argilla --------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _offline_argilla() -> Iterator[Any]:
    """The argilla module with a default client that never connects.

    The SDK's ``Settings`` objects take a client even to be serialised; an export runs where no Argilla server
    is (the team loads the folder into theirs), so the client skips the connection check, is never asked
    anything, and the previous default comes back afterwards.
    """
    try:
        import argilla as rg
    except ImportError:
        raise ImportError("the Argilla exchange needs the argilla SDK: pip install 'rlthf[argilla]'") from None

    class OfflineArgilla(rg.Argilla):
        def _validate_connection(self) -> None:
            pass

    previous = rg.Argilla._default_client
    rg.Argilla._default_client = OfflineArgilla(api_url="http://127.0.0.1:9", api_key="rlthf-offline")
    try:
        yield rg
    finally:
        rg.Argilla._default_client = previous


def argilla_settings(rg: Any, *, min_submitted: int = 1) -> Any:
    """The dataset settings: the dialogue, two responses, which is better, an optional comment."""
    return rg.Settings(
        guidelines="Read the dialogue, then choose the better of the two responses (more helpful and harmless).",
        fields=[rg.TextField(name="prompt", title="The dialogue so far"),
                rg.TextField(name="response_1", title="Response 1"),
                rg.TextField(name="response_2", title="Response 2")],
        questions=[rg.LabelQuestion(name="preference", title="Which response is better?",
                                    labels={"response_1": "Response 1", "response_2": "Response 2"}),
                   rg.TextQuestion(name="comment", title="Comment (optional)", required=False)],
        metadata=[rg.TermsMetadataProperty(name="shown", options=list(SHOWN_ORDERS), visible_for_annotators=False),
                  rg.IntegerMetadataProperty(name="iteration", visible_for_annotators=False)],
        distribution=rg.TaskDistribution(min_submitted=min_submitted))


def export_argilla(pairs: list[dict], shown: dict[str, str], iteration: int, out: str | Path, *,
                   min_submitted: int = 1) -> list[str]:
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; Argilla's folder layout needs a new one")
    with _offline_argilla() as rg:
        settings = argilla_settings(rg, min_submitted=min_submitted)
        records = []
        for pair in pairs:
            first, second = _ordered(pair, shown[pair["id"]])
            prompt = "\n\n".join(f"{speaker}: {text}" if speaker else text
                                 for speaker, text in dialogue_turns(pair["prompt"]))
            records.append(rg.Record(id=pair["id"], fields={"prompt": prompt, "response_1": first,
                                                            "response_2": second},
                                     metadata={"shown": shown[pair["id"]], "iteration": iteration}))
        (out / ".argilla").mkdir(parents=True, exist_ok=True)
        settings.to_json(out / ".argilla/settings.json")
        # what Dataset.to_disk writes, without a server to create the dataset on first
        atomic_write_json(out / ".argilla/dataset.json", {"name": f"rlthf-iteration-{iteration}"})
        atomic_write_text(out / "records.json", json.dumps([r.to_dict() for r in records]))
    return [f"{out}: {len(records)} Argilla records of iteration {iteration} with their settings; load with "
            f"rg.Dataset.from_disk({str(out)!r}, client=client)"]


def read_argilla_answers(path: str | Path) -> list[Answer]:
    """The answers in an Argilla export: the folder of ``Dataset.to_disk`` or its ``records.json``.

    Each record's ``preference`` responses are answers, one per user (``argilla:<user id>``); a response without
    a value (a draft or a discarded record) is none. The record id is the pair id.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "records.json"
    with _offline_argilla() as rg:
        from argilla._exceptions import ArgillaError

        answers = []
        for position, data, bad in _json_objects(path, "record"):
            for key in ("fields", "metadata", "responses"):
                if not isinstance(data.get(key, {}), dict):
                    raise bad(key, f"expected an object, got {type(data[key]).__name__}")
            try:
                record = rg.Record.from_dict(data)
            except (TypeError, ValueError, ArgillaError) as err:  # the SDK's own checks, e.g. one user twice
                raise bad("responses", f"not an Argilla record ({err})") from None
            pid = record.id
            if not isinstance(pid, str) or not pid:
                raise bad("id", "missing" if pid is None else f"expected a pair id, got {pid!r}")
            shown = record.metadata.get("shown")
            if shown not in SHOWN_ORDERS:
                raise bad("metadata.shown", f"expected 'ab' or 'ba' (the order rlthf exported), got {shown!r}")
            responses = record.responses
            comments = {str(r.user_id): r.value for r in (responses["comment"] if "comment" in data["responses"]
                                                           else []) if isinstance(r.value, str) and r.value.strip()}
            for j, response in enumerate(responses["preference"] if "preference" in data.get("responses", {})
                                         else []):
                if response.value is None:
                    continue
                if response.value not in ("response_1", "response_2"):
                    raise bad(f"responses.preference[{j}].value",
                              f"expected 'response_1' or 'response_2', got {response.value!r}")
                label = shown[0] if response.value == "response_1" else shown[1]
                extra: dict[str, Any] = {"shown": shown, "source": "argilla"}
                if str(response.user_id) in comments:
                    extra["comment"] = comments[str(response.user_id)]
                answers.append(Answer(position, f"responses.preference[{j}]", "id", pid, label,
                                      f"argilla:{response.user_id}", extra))
    return answers


def _json_objects(path: str | Path, what: str) -> Iterator[tuple[int, dict, Callable[[str, str], InvalidAnswer]]]:
    """Each object of a JSON list file, with its 1-based position and an error maker that names that position."""
    items = _load_json(path)
    if not isinstance(items, list):
        raise InvalidAnswer(path, 1, "json", f"expected a JSON list of {what}s, got {type(items).__name__}", "record")
    for position, item in enumerate(items, 1):
        def bad(field: str, reason: str, position: int = position) -> InvalidAnswer:
            return InvalidAnswer(path, position, field, reason, "record")

        if not isinstance(item, dict):
            raise bad(what, f"expected a JSON object, got {type(item).__name__}")
        yield position, item, bad


def _load_json(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InvalidAnswer(path, err.lineno, "json", f"not valid JSON ({err.msg} at column {err.colno})") from None
