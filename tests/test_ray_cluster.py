"""`ray job submit` against a real Ray head on loopback: the demo run succeeds, a bad config fails the job.

The head is started here with its own temp dir and ports (`ray start --head`), and stopped by killing exactly its
processes: other Ray sessions on the same machine are left alone, which a bare `ray stop` would not do. One node
only: the demo's embedding actors take 2 CPUs, all this machine has.

The commands are the README's ("Running on a Ray cluster"), with the paths made absolute and the run made small.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import psutil
import pytest

from tests.conftest import REPO, TEST_API_KEY_ENV
from tests.judge_servers import free_ports

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).with_name("ray"))
# What `--working-dir .` must not upload (Ray also honours .gitignore); the README uses the same list.
EXCLUDES = [".git", ".venv", "runs", "rlthf.egg-info", "**/__pycache__", "*.png"]
# Not secrets: runtime_env env_vars are recorded by the job server, so an API key never goes here.
JOB_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


class LoopbackCluster:
    """A one-node Ray cluster on 127.0.0.1, its processes found by its own temp dir."""

    def __init__(self) -> None:
        self.temp_dir = tempfile.mkdtemp(prefix="rl-", dir="/tmp")  # short: Ray's socket paths have a length limit
        self.port, self.dashboard_port, *self.component_ports = free_ports(7)
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        self.env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        # Ray's token authentication, with this cluster's own token: `ray start`, `ray job submit` and the job
        # client below all read it from the environment, and no other session's token (~/.ray) is touched.
        self.token = secrets.token_hex(32)
        self.env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}
        self.env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{self.env.get('PATH', '')}"  # jobs' python

    def start(self) -> None:
        names = ("ray-client-server-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                 "metrics-export-port", "runtime-env-agent-port")
        ports = {f"--{name}": str(port) for name, port in zip(names, self.component_ports)}
        # Workers' ports: below the kernel's ephemeral range (where the ports above, and any port Ray picks
        # itself, come from; `ray start` refuses a worker range that holds one of them) and above the
        # session Ray's default 10002-19999.
        min_worker_port = 20000 + secrets.randbelow(9000)
        ports |= {"--min-worker-port": str(min_worker_port), "--max-worker-port": str(min_worker_port + 200)}
        command = [RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={self.port}",
                   "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}", "--include-dashboard=true",
                   "--num-cpus=2", "--num-gpus=0", "--object-store-memory=200000000", f"--temp-dir={self.temp_dir}",
                   *[f"{k}={v}" for k, v in ports.items()]]
        started = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=180)
        if started.returncode != 0:
            raise RuntimeError(f"ray start failed:\n{started.stdout[-3000:]}\n{started.stderr[-3000:]}")
        deadline = time.monotonic() + 120
        while True:  # the job server answers a little after `ray start` returns
            try:
                with urllib.request.urlopen(f"{self.address}/api/version", timeout=5):
                    return
            except urllib.error.HTTPError:  # it answers: 401 while Ray's token authentication is on
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

    def processes(self) -> list[psutil.Process]:
        """The head's processes (their command lines name its temp dir) and everything they started."""
        own = []
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if proc.pid != os.getpid() and any(self.temp_dir in part for part in proc.info["cmdline"] or ()):
                    own.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        found = {p.pid: p for p in own}
        for proc in own:
            try:
                found.update({c.pid: c for c in proc.children(recursive=True)})
            except psutil.NoSuchProcess:
                continue
        return list(found.values())

    def stop(self) -> None:
        procs = self.processes()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for proc in procs:
                try:
                    proc.send_signal(sig)
                except psutil.NoSuchProcess:
                    pass
            _, procs = psutil.wait_procs(procs, timeout=10)
            if not procs:
                break
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def submit(self, *entrypoint: str, submission_id: str, working_dir: bool = True) -> subprocess.CompletedProcess:
        """`ray job submit`: uploads the working dir, streams the job's logs until it ends, exits 1 if it failed."""
        runtime_env = {"env_vars": JOB_ENV} | ({"excludes": EXCLUDES} if working_dir else {})
        command = [RAY, "job", "submit", "--address", self.address, f"--submission-id={submission_id}",
                   *(["--working-dir", str(REPO)] if working_dir else []),
                   "--runtime-env-json", json.dumps(runtime_env), "--", *entrypoint]
        return subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=900, cwd=REPO)

    def job_info(self, submission_id: str):
        from ray.job_submission import JobSubmissionClient

        client = JobSubmissionClient(self.address, headers={"Authorization": f"Bearer {self.token}"})
        return client.get_job_info(submission_id)


@pytest.fixture(scope="module")
def cluster():
    head = LoopbackCluster()
    try:
        head.start()
        yield head
    finally:
        head.stop()
    assert not head.processes(), "a process of the loopback cluster outlived it"


def demo_job(hh_rlhf_path, embedding_cache, output_dir, *extra: str) -> list[str]:
    return ["python", "ray_jobs/run_rlthf.py", "--config", "configs/demo.yaml",
            "--set", f"data.path={hh_rlhf_path}", "--set", "data.max_pairs=500",
            "--set", f"reward.cache_dir={embedding_cache}", "--set", "selection.iterations=1",
            "--set", f"output_dir={output_dir}", *extra]


def test_the_demo_runs_as_a_ray_job(cluster, hh_rlhf_path, embedding_cache, tmp_path):
    run_dir = tmp_path / "run"
    done = cluster.submit(*demo_job(hh_rlhf_path, embedding_cache, run_dir), submission_id="rlthf-demo")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "Job 'rlthf-demo' succeeded" in done.stdout
    assert "curated" in done.stdout  # the run's own summary, streamed back from the job's driver
    info = cluster.job_info("rlthf-demo")
    assert info.status == "SUCCEEDED" and info.driver_exit_code == 0

    steps = json.loads((run_dir / "steps.json").read_text())
    assert {"prepare", "iter_0/train", "iter_1/train", "final/curate"} <= set(steps)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["iteration"] for row in metrics] == [0, 1]
    curated = pd.read_parquet(run_dir / "curated.parquet")
    pairs = pd.read_parquet(run_dir / "data/pairs.parquet")
    assert curated["id"].is_unique and set(curated["id"]) == set(pairs.loc[pairs["split"] == "train", "id"])

    # The cluster's environment reaches the job; the key itself is in no log, record or output.
    secret = os.environ[TEST_API_KEY_ENV]
    probe = cluster.submit("python", "-c", f"import os; print('key set:', bool(os.environ.get('{TEST_API_KEY_ENV}')))",
                           submission_id="rlthf-env-probe", working_dir=False)
    assert probe.returncode == 0 and "key set: True" in probe.stdout
    assert secret not in done.stdout + done.stderr + probe.stdout
    assert secret not in json.dumps(cluster.job_info("rlthf-demo").runtime_env)
    for path in run_dir.rglob("*"):
        if path.is_file() and path.suffix in {".json", ".jsonl", ".yaml", ".md", ".txt"}:
            assert secret not in path.read_text(errors="replace"), path


def test_a_bad_config_fails_the_job_with_its_key(cluster, hh_rlhf_path, embedding_cache, tmp_path):
    done = cluster.submit(*demo_job(hh_rlhf_path, embedding_cache, tmp_path / "bad", "--set", "reward.epochs=0"),
                          submission_id="rlthf-bad-config")
    assert done.returncode != 0
    assert "reward.epochs: must be >= 1" in done.stdout + done.stderr
    info = cluster.job_info("rlthf-bad-config")
    assert info.status == "FAILED" and info.driver_exit_code == 2  # rlthf's exit status for a bad config
    assert not (tmp_path / "bad").exists()  # it failed at load, before anything was written


def test_each_stage_runs_as_a_job_over_parquet(cluster, hh_rlhf_path, embedding_cache, tmp_path):
    """train_rm -> score -> select_pairs, each its own `ray job submit`, handing Parquet from one to the next."""
    from tests.test_reward_lora import synthetic_pairs

    labelled = synthetic_pairs(hh_rlhf_path, 120)
    labelled.to_parquet(tmp_path / "labelled.parquet")
    config = ["--config", "configs/demo.yaml", "--set", f"reward.cache_dir={embedding_cache}",
              "--set", "reward.cpus_per_worker=1"]
    stages = {
        "train_rm": ["--input", tmp_path / "labelled.parquet", "--output", tmp_path / "rm"],
        "score": ["--checkpoint", tmp_path / "rm", "--input", tmp_path / "labelled.parquet",
                  "--output", tmp_path / "scored"],
        "select_pairs": ["--input", tmp_path / "scored", "--iteration", "1", "--output", tmp_path / "selection"],
    }
    for stage, args in stages.items():
        done = cluster.submit("python", f"ray_jobs/{stage}.py", *config, *map(str, args),
                              submission_id=f"rlthf-stage-{stage}")
        assert done.returncode == 0, f"{stage}:\n{done.stdout[-3000:]}\n{done.stderr[-2000:]}"

    scored = pd.read_parquet(tmp_path / "scored")
    assert sorted(scored["id"]) == sorted(labelled["id"])  # every pair exactly once
    assert ((scored["reward_a"] > scored["reward_b"]) == (scored["label"] == "a")).mean() > 0.9
    selection = pd.read_parquet(tmp_path / "selection")
    assert sorted(selection["id"]) == sorted(labelled["id"])
    assert selection["annotate"].sum() == 5  # round(0.038 * 120), configs/demo.yaml's annotation_fraction
    assert {"flip", "train_copies"} <= set(selection.columns)
