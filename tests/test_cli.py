"""The ``rlthf`` command in-process: exit status 2 and a message naming the key, line or field for bad input,
without starting Ray or loading a model; and the Ray job entry point as a subprocess."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

import rlthf.run.driver
import rlthf.run.steps
from rlthf.cli import EXIT_BAD_INPUT, main
from tests.conftest import REPO

GOOD = {"chosen": "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?",
        "rejected": "\n\nHuman: Hi there\n\nAssistant: Go away."}
OTHER = {"chosen": "\n\nHuman: Thanks\n\nAssistant: You're welcome.",
         "rejected": "\n\nHuman: Thanks\n\nAssistant: Whatever."}
# The dialogue before the last assistant turn differs between chosen and rejected.
MISMATCHED = {"chosen": "\n\nHuman: What time is it?\n\nAssistant: Noon.",
              "rejected": "\n\nHuman: What day is it?\n\nAssistant: Monday."}


@pytest.fixture
def no_ray(monkeypatch):
    """Replace the loop's Ray start-up by a recorder: these tests must fail before Ray could matter."""
    calls = []
    for module in (rlthf.run.driver, rlthf.run.steps):
        monkeypatch.setattr(module, "init_ray", lambda config: calls.append(config))
    return calls


def write_jsonl(path, records) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))


def write_config(tmp_path, data_path, on_invalid="error"):
    path = tmp_path / "config.yaml"
    path.write_text(f"output_dir: {tmp_path / 'run'}\n"
                    f"data:\n  path: {data_path}\n  on_invalid: {on_invalid}\n  ground_truth: raw\n"
                    f"reward:\n  cache_dir: {tmp_path / 'cache'}\n")
    return path


def ray_running() -> bool:
    import ray

    return ray.is_initialized()


# rlthf run

def test_unknown_config_key_exits_2(tmp_path, capsys, no_ray):
    path = tmp_path / "config.yaml"
    path.write_text(f"output_dir: {tmp_path / 'run'}\nreward:\n  learning_rat: 0.1\n")
    assert main(["run", "--config", str(path)]) == EXIT_BAD_INPUT == 2
    err = capsys.readouterr().err
    assert err == "rlthf: error: reward.learning_rat: unknown key (did you mean reward.learning_rate?)\n"
    assert no_ray == [] and not (tmp_path / "run").exists()


def test_bad_override_exits_2(tmp_path, capsys, no_ray):
    path = tmp_path / "config.yaml"
    path.write_text(f"output_dir: {tmp_path / 'run'}\n")
    assert main(["run", "--config", str(path), "--set", "selection.backoff=[0.5, 1.0]"]) == 2
    assert capsys.readouterr().err == ("rlthf: error: selection.backoff: must be a non-empty list of numbers in "
                                       "[0, 1)\n")
    assert main(["run", "--config", str(path), "--set", "reward.epochs"]) == 2
    assert "reward.epochs: an override is KEY=VALUE" in capsys.readouterr().err


def test_missing_config_file_exits_2(tmp_path, capsys):
    assert main(["run", "--config", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlthf: error: ") and "missing.yaml" in err


def test_invalid_record_with_on_invalid_error_exits_2(tmp_path, capsys, no_ray):
    data = tmp_path / "data.jsonl"
    write_jsonl(data, [GOOD, MISMATCHED, GOOD])
    ray_before = ray_running()  # another test module may have started the session's Ray already
    assert main(["run", "--config", str(write_config(tmp_path, data))]) == 2
    err = capsys.readouterr().err
    assert err == ("rlthf: error: data.jsonl:2: field 'rejected': the dialogue before the last assistant turn "
                   "differs from chosen's\n")
    assert ray_running() == ray_before  # nothing reached Ray Data (no Ray start-up of its own either)
    assert not (tmp_path / "run" / "data" / "pairs.parquet").exists()
    assert not (tmp_path / "run" / "steps.json").exists()  # no step finished


def test_invalid_json_line_exits_2(tmp_path, capsys, no_ray):
    data = tmp_path / "data.jsonl"
    write_jsonl(data, [GOOD, OTHER, '{"chosen": "x"'])
    assert main(["run", "--config", str(write_config(tmp_path, data))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlthf: error: data.jsonl:3: field 'json': not valid JSON")


def test_bad_data_fails_before_ray_starts(tmp_path, capsys, no_ray):
    data = tmp_path / "data.jsonl"
    write_jsonl(data, [GOOD, MISMATCHED])
    assert main(["run", "--config", str(write_config(tmp_path, data))]) == 2
    assert no_ray == []


class ReachedPrepare(Exception):
    pass


def test_config_can_change_after_a_run_that_did_nothing(tmp_path, capsys, no_ray, monkeypatch):
    data = tmp_path / "data.jsonl"
    write_jsonl(data, [GOOD, MISMATCHED])
    config = str(write_config(tmp_path, data))
    assert main(["run", "--config", config]) == 2
    capsys.readouterr()

    def prepare(*args, **kwargs):
        raise ReachedPrepare

    monkeypatch.setattr(rlthf.run.driver, "prepare", prepare)
    with pytest.raises(ReachedPrepare):
        main(["run", "--config", config, "--set", "data.on_invalid=skip"])


# rlthf annotate import

IDS = ["p0", "p1", "p2"]


@pytest.fixture
def open_request(tmp_path):
    run_dir = tmp_path / "run"
    folder = run_dir / "annotations" / "iter_1"
    folder.mkdir(parents=True)
    write_jsonl(folder / "request.jsonl",
                [{"id": i, "prompt": "P", "response_a": f"A{i}", "response_b": f"B{i}"} for i in IDS])
    return run_dir


@pytest.mark.parametrize("lines, line, field", [
    ([{"id": "p0", "label": "a"}, "{not json"], 2, "json"),
    ([{"id": "p0", "label": "a"}, "", "[1, 2]"], 3, "json"),
    ([{"id": "p0", "label": "c"}], 1, "label"),
    ([{"id": "p0"}], 1, "label"),
    ([{"label": "a"}], 1, "id"),
    ([{"id": "p0", "label": "a"}, {"id": "zz", "label": "b"}], 2, "id"),
    ([{"id": "p0", "label": "a"}, {"id": "p1", "label": "b"}, {"id": "p0", "label": "b"}], 3, "id"),
])
def test_import_malformed_answers_exits_2(open_request, tmp_path, capsys, lines, line, field):
    answers = tmp_path / "answers.jsonl"
    write_jsonl(answers, lines)
    assert main(["annotate", "import", "--run", str(open_request), str(answers)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"rlthf: error: {answers}:{line}: field '{field}': ")
    assert captured.out == ""
    assert not (open_request / "annotations" / "iter_1" / "answers.jsonl").exists()  # a bad file writes nothing


def test_import_good_answers(open_request, tmp_path, capsys):
    answers = tmp_path / "answers.jsonl"
    write_jsonl(answers, [{"id": "p0", "label": "A"}, {"id": "p2", "label": " b "}])
    assert main(["annotate", "import", "--run", str(open_request), str(answers)]) == 0
    assert capsys.readouterr().out.startswith("imported 2 answers for iteration 1; ")
    saved = [json.loads(x) for x in (open_request / "annotations/iter_1/answers.jsonl").read_text().splitlines()]
    assert [(r["id"], r["label"]) for r in saved] == [("p0", "a"), ("p2", "b")]
    # Importing them again: already answered.
    assert main(["annotate", "import", "--run", str(open_request), str(answers)]) == 2
    assert "field 'id': 'p0' is already answered" in capsys.readouterr().err


def test_import_missing_answers_file_exits_2(open_request, tmp_path, capsys):
    assert main(["annotate", "import", "--run", str(open_request), str(tmp_path / "nope.jsonl")]) == 2
    assert "nope.jsonl" in capsys.readouterr().err


@pytest.mark.parametrize("state", ["no_annotations", "all_answered"])
def test_import_when_nothing_is_open_exits_2(tmp_path, capsys, state):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    if state == "all_answered":
        folder = run_dir / "annotations" / "iter_1"
        folder.mkdir(parents=True)
        write_jsonl(folder / "request.jsonl", [{"id": "p0", "prompt": "P", "response_a": "A", "response_b": "B"}])
        write_jsonl(folder / "answers.jsonl", [{"id": "p0", "label": "a"}])
    answers = tmp_path / "answers.jsonl"
    write_jsonl(answers, [{"id": "p0", "label": "a"}])
    assert main(["annotate", "import", "--run", str(run_dir), str(answers)]) == 2
    assert "no annotation request is waiting" in capsys.readouterr().err


# --help and argument errors

@pytest.mark.parametrize("argv, words", [
    (["--help"], ["run", "annotate"]),
    (["run", "--help"], ["--config", "--set", "KEY=VALUE"]),
    (["annotate", "import", "--help"], ["--run", "answers"]),
])
def test_help(capsys, argv, words):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: rlthf")
    assert all(w in out for w in words)


@pytest.mark.parametrize("argv", [[], ["label"], ["run", "--bogus"], ["annotate", "import", "answers.jsonl"], ["bogus"]])
def test_usage_errors_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert "usage: rlthf" in capsys.readouterr().err


# The Ray job entry point

def run_job(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "ray_jobs/run_rlthf.py", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60)


def test_ray_job_with_missing_config():
    result = run_job("--config", "/nonexistent.yaml")
    assert result.returncode == 2
    assert result.stderr.strip() == "rlthf: error: [Errno 2] No such file or directory: '/nonexistent.yaml'"
    assert result.stdout == ""


def test_ray_job_with_unknown_key(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("selection:\n  iteration: 3\n")
    result = run_job("--config", str(path))
    assert result.returncode == 2
    assert result.stderr.strip() == ("rlthf: error: selection.iteration: unknown key "
                                     "(did you mean selection.iterations?)")
