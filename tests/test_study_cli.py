"""Acceptance tests of stored studies on the command line: ``optimize --storage``, ``kvplan
study list|show|export``, Ctrl-C during a search and the progress bar.

Commands that only read a study run in this process; Ctrl-C and the progress bar need a
real process, a signal and a terminal, so those tests start ``kvplan`` in a subprocess.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import fcntl
import io
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import optuna
import pytest

import kvplan
from kvplan.cli import main
from kvplan.commands import _progress
from kvplan.optimizer import studies

REPO_ROOT = Path(__file__).resolve().parents[1]
PLAN_32B = REPO_ROOT / "examples" / "h200-reasoning" / "qwen-32b-8xh200.yaml"
PLAN_NAME = "qwen-32b-8xh200"
KVPLAN = [sys.executable, "-m", "kvplan.cli"]

# Seconds a subprocess test waits for kvplan to start, search and stop, on a busy machine.
PROCESS_TIMEOUT_S = 300


@dataclasses.dataclass(frozen=True)
class CliRun:
    exit_code: int
    stdout: str
    stderr: str


def run_cli(*args: object) -> CliRun:
    """Run ``kvplan ARGS...`` in this process and capture its output."""
    stdout = io.StringIO()
    stderr = io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            exit_code = main([str(arg) for arg in args])
        except SystemExit as error:  # argparse exits on usage errors
            exit_code = error.code
    return CliRun(exit_code, stdout.getvalue(), stderr.getvalue())


@pytest.fixture(scope="module")
def study_file(tmp_path_factory) -> Path:
    """A SQLite file with one study of the 32B plan, 30 sampled trials and the polish's."""
    path = tmp_path_factory.mktemp("study") / "study.db"
    result = run_cli("optimize", PLAN_32B, "--storage", f"sqlite:///{path}", "--trials", "30", "--format", "json")
    assert result.exit_code == 0, result.stderr
    return path


def stored_trials(storage: str, name: str) -> list[optuna.trial.FrozenTrial]:
    with studies.opened_storage(storage) as opened:
        return optuna.load_study(study_name=name, storage=opened).get_trials()


def stored_best(storage: str, name: str) -> kvplan.RankedDeployment:
    with studies.opened_storage(storage) as opened:
        return studies.result_of_study(optuna.load_study(study_name=name, storage=opened)).best


def best_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.startswith("Best: ")]
    assert len(lines) == 1, text
    return lines[0]


def describe(ranked: kvplan.RankedDeployment) -> str:
    config = ranked.evaluation.config
    return (f"Best: dp={config.dp} tp={config.tp} pp={config.pp} max_num_seqs={config.max_num_seqs} "
            f"max_num_batched_tokens={config.max_num_batched_tokens} "
            f"gpu_memory_utilization={config.gpu_memory_utilization:g};")


# optimize --storage


def test_optimize_rerun_adds_trials(tmp_path):
    storage = f"sqlite:///{tmp_path}/study.db"
    for _ in range(2):
        result = run_cli("optimize", PLAN_32B, "--storage", storage, "--study-name", "twice", "--trials", "25",
                         "--seed", "3", "--format", "json")
        assert result.exit_code == 0, result.stderr
    listing = json.loads(run_cli("study", "list", storage, "--format", "json").stdout)
    (entry,) = listing["studies"]
    assert entry["study"] == "twice"
    assert entry["trials"]["sampled"] == 50
    assert entry["trials"]["complete"] == entry["trials"]["sampled"] + entry["trials"]["polish"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--storage", "study.db"], "for a SQLite file write sqlite:///study.db"),
        (["--storage", "sqlite:///x.db", "--exhaustive"], "--exhaustive"),
        (["--n-jobs", "0"], "--n-jobs must be at least 1, but got 0"),
        (["--study-name", " ", "--storage", "sqlite:///x.db"], "--study-name is empty"),
    ],
)
def test_optimize_study_usage_errors(args, message, tmp_path):
    result = run_cli("optimize", PLAN_32B, *args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert not (tmp_path / "x.db").exists()


def test_optimize_missing_storage_folder_reported(tmp_path):
    result = run_cli("optimize", PLAN_32B, "--storage", f"sqlite:///{tmp_path}/missing/study.db")
    assert result.exit_code == 1
    assert "missing not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_sweep_keeps_one_study_per_point(tmp_path):
    storage = f"sqlite:///{tmp_path}/sweep.db"
    result = run_cli("sweep", PLAN_32B, "--set", "sla.ttft.p99=600s,900s", "--trials", "25", "--storage", storage,
                     "--study-name", "ttft")
    assert result.exit_code == 0, result.stderr
    listing = json.loads(run_cli("study", "list", storage, "--format", "json").stdout)
    names = [entry["study"] for entry in listing["studies"]]
    assert names == ["ttft [sla.ttft.p99=600s]", "ttft [sla.ttft.p99=900s]"]
    for entry in listing["studies"]:
        assert entry["trials"]["sampled"] == 25


# kvplan study


def test_study_list_table(study_file):
    result = run_cli("study", "list", f"sqlite:///{study_file}")
    assert result.exit_code == 0, result.stderr
    assert f"Studies in sqlite:///{study_file}:" in result.stdout
    row = next(line for line in result.stdout.splitlines() if line.startswith(PLAN_NAME))
    assert "makespan_s" in row
    best = stored_best(f"sqlite:///{study_file}", PLAN_NAME)
    assert f"dp={best.evaluation.config.dp} tp={best.evaluation.config.tp}" in row


def test_study_list_json_counts(study_file):
    result = run_cli("study", "list", f"sqlite:///{study_file}", "--format", "json")
    (entry,) = json.loads(result.stdout)["studies"]
    trials = stored_trials(f"sqlite:///{study_file}", PLAN_NAME)
    assert entry["trials"]["complete"] == len(trials)
    assert entry["trials"]["sampled"] == 30
    assert entry["trials"]["running"] == 0
    assert entry["plan"] == PLAN_NAME
    assert entry["best"]["config"] == stored_best(f"sqlite:///{study_file}", PLAN_NAME).evaluation.config.to_dict()


def test_study_show_matches_optimize_table(study_file):
    result = run_cli("study", "show", f"sqlite:///{study_file}")
    assert result.exit_code == 0, result.stderr
    first_line = result.stdout.splitlines()[0]
    assert re.fullmatch(rf"Study {PLAN_NAME} in sqlite:///\S+: \d+ completed trials \(30 sampled, \d+ from the "
                        r"polish\)", first_line), first_line
    assert f"Plan {PLAN_NAME}:" in result.stdout
    assert best_line(result.stdout).startswith(describe(stored_best(f"sqlite:///{study_file}", PLAN_NAME)))


def test_study_show_json(study_file):
    result = run_cli("study", "show", f"sqlite:///{study_file}", "--study-name", PLAN_NAME, "--format", "json",
                     "--top", "3")
    document = json.loads(result.stdout)
    assert document["study"]["name"] == PLAN_NAME
    assert document["study"]["trials"]["sampled"] == 30
    assert len(document["results"]) == 3
    assert [row["rank"] for row in document["results"]] == [1, 2, 3]
    best = stored_best(f"sqlite:///{study_file}", PLAN_NAME)
    assert document["results"][0]["config"] == best.evaluation.config.to_dict()


def test_study_export_csv_file(study_file, tmp_path):
    output = tmp_path / "trials.csv"
    result = run_cli("study", "export", f"sqlite:///{study_file}", "--output", output)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    rows = list(csv.DictReader(io.StringIO(output.read_text())))
    trials = stored_trials(f"sqlite:///{study_file}", PLAN_NAME)
    assert [int(row["trial"]) for row in rows] == [trial.number for trial in trials]
    assert {row["source"] for row in rows} == {"tpe", "polish"}
    assert all(row["state"] == "COMPLETE" for row in rows)
    feasible = [row for row in rows if row["feasible"] == "True"]
    assert feasible and all(float(row["makespan_s"]) > 0 for row in feasible)
    assert os.listdir(tmp_path) == ["trials.csv"]


def test_study_export_json_from_extension(study_file, tmp_path):
    output = tmp_path / "trials.json"
    assert run_cli("study", "export", f"sqlite:///{study_file}", "--output", output).exit_code == 0
    document = json.loads(output.read_text())
    assert document["command"] == "study export"
    assert document["directions"] == ["minimize"]
    assert document["objective"] == "makespan_s"
    numbers = [trial["trial"] for trial in document["trials"]]
    assert numbers == sorted(set(numbers))
    sampled = [trial for trial in document["trials"] if trial["source"] == "tpe"]
    assert len(sampled) == 30
    assert all(trial["config"]["dp"] >= 1 for trial in sampled)


def test_study_commands_read_journal_file(tmp_path):
    storage = f"journal:///{tmp_path}/study.log"
    assert run_cli("optimize", PLAN_32B, "--storage", storage, "--trials", "25").exit_code == 0
    result = run_cli("study", "show", storage, "--top", "1")
    assert result.exit_code == 0, result.stderr
    assert f"Study {PLAN_NAME} in {storage}" in result.stdout


@pytest.mark.parametrize(
    ("args", "exit_code", "message"),
    [
        (["list", "sqlite:///{tmp}/missing.db"], 1, "missing.db not found"),
        (["show", "journal:///{tmp}/missing.log"], 1, "missing.log not found"),
        (["show", "{tmp}/study.log"], 2, "journal:///"),
        (["show", "sqlite:///{study}", "--study-name", "other"], 1, "study 'other' not found"),
        (["show", "sqlite:///{study}", "--top", "0"], 2, "--top must be at least 1"),
        (["export", "sqlite:///{study}", "--format", "xml"], 2, "invalid choice"),
        (["export", "sqlite:///{study}", "--output", "{tmp}/missing/trials.csv"], 1, "cannot write"),
    ],
)
def test_study_command_errors(args, exit_code, message, study_file, tmp_path):
    filled = [arg.format(tmp=tmp_path, study=study_file) for arg in args]
    result = run_cli("study", *filled)
    assert result.exit_code == exit_code, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "missing.db").exists()


def test_study_show_needs_name_with_several_studies(tmp_path):
    storage = f"sqlite:///{tmp_path}/two.db"
    for name in ("a", "b"):
        assert run_cli("optimize", PLAN_32B, "--storage", storage, "--study-name", name, "--trials", "5").exit_code == 0
    result = run_cli("study", "show", storage)
    assert result.exit_code == 1
    assert "contains 2 studies (a, b); choose one with --study-name" in result.stderr


def test_study_list_marks_foreign_study(tmp_path):
    storage = f"sqlite:///{tmp_path}/foreign.db"
    with studies.opened_storage(storage) as opened:
        optuna.create_study(study_name="not-kvplan", storage=opened).optimize(
            lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    result = run_cli("study", "list", storage)
    assert result.exit_code == 0
    assert "not made by kvplan" in result.stdout
    shown = run_cli("study", "show", storage)
    assert shown.exit_code == 1
    assert "was not made by kvplan" in shown.stderr


# Ctrl-C


def wait_for_complete_trials(storage: str, name: str, count: int, process: subprocess.Popen) -> int:
    deadline = time.monotonic() + PROCESS_TIMEOUT_S
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            complete = [t for t in stored_trials(storage, name) if t.state == optuna.trial.TrialState.COMPLETE]
        except (KeyError, kvplan.KvplanError):
            complete = []  # The study is not created yet.
        if len(complete) >= count:
            return len(complete)
        time.sleep(0.5)
    pytest.fail(f"kvplan completed fewer than {count} trials in {PROCESS_TIMEOUT_S} s")


def interrupt_search(args: list[str], storage: str):
    """Run kvplan with ``args``, send Ctrl-C once 50 trials are stored, and return
    (process, trials seen before the signal, stdout, stderr)."""
    # The process group gets the signal, as from a terminal, so workers see it too.
    process = subprocess.Popen([*KVPLAN, *args], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        seen = wait_for_complete_trials(storage, PLAN_NAME, 50, process)
        os.killpg(process.pid, signal.SIGINT)
        stdout, stderr = process.communicate(timeout=PROCESS_TIMEOUT_S)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    return process, seen, stdout, stderr


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_ctrl_c_keeps_trials_and_prints_best(n_jobs, tmp_path):
    storage = f"sqlite:///{tmp_path}/study.db"
    process, seen, stdout, stderr = interrupt_search(
        ["optimize", str(PLAN_32B), "--storage", storage, "--trials", "100000", "--n-jobs", str(n_jobs)], storage)
    assert process.returncode == 130, stderr
    assert "interrupted by Ctrl-C" in stderr
    assert f"kept in study '{PLAN_NAME}' in {storage}" in stderr
    assert "Traceback" not in stderr

    trials = stored_trials(storage, PLAN_NAME)
    assert len(trials) >= seen
    assert {trial.state.name for trial in trials} == {"COMPLETE"}
    assert sorted(trial.number for trial in trials) == list(range(len(trials)))
    assert best_line(stdout).startswith(describe(stored_best(storage, PLAN_NAME)))


# Progress bar


def run_on_terminal(args: list[str]) -> tuple[int, str, str]:
    """Run kvplan with stderr on a pseudo-terminal 120 columns wide; return exit code, stdout, terminal text."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    process = subprocess.Popen([*KVPLAN, *args], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=terminal)
    os.close(terminal)
    chunks = []
    deadline = time.monotonic() + PROCESS_TIMEOUT_S
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 0.5)
        if not ready:
            if process.poll() is not None:
                break
            continue
        try:
            data = os.read(controller, 4096)
        except OSError:  # EIO: every process closed the terminal.
            break
        if not data:
            break
        chunks.append(data)
    os.close(controller)
    stdout = process.communicate(timeout=PROCESS_TIMEOUT_S)[0].decode()
    return process.returncode, stdout, b"".join(chunks).decode(errors="replace")


def test_progress_bar_drawn_on_terminal(tmp_path):
    # SQLite storage makes the search last several seconds, past the bar's delay.
    exit_code, stdout, terminal = run_on_terminal(
        ["optimize", str(PLAN_32B), "--storage", f"sqlite:///{tmp_path}/study.db", "--trials", "100"])
    assert exit_code == 0, terminal
    assert re.search(r"search: +\d+%\|.*\| \d+/100 \[.*trial/s, best makespan \d+ s\]", terminal), terminal
    assert "\r" not in stdout
    assert best_line(stdout)


def test_progress_bar_silent_without_terminal():
    result = run_cli("optimize", PLAN_32B, "--trials", "50")
    assert result.exit_code == 0
    assert result.stderr == ""


def test_progress_bar_silent_with_quiet(monkeypatch):
    monkeypatch.setattr(_progress, "stderr_is_terminal", lambda: True)
    assert _progress.search_progress("makespan_s", quiet=True).enabled is False
    assert _progress.search_progress("makespan_s", quiet=False).enabled is True


def test_progress_bar_reports_trials_and_best(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(_progress, "SHOW_AFTER_S", 0.0)
    with _progress.search_progress("output_tokens_per_s_per_gpu", quiet=False) as progress:
        progress(0, 200, None)
        # tqdm redraws at most every 0.1 s.
        time.sleep(0.2)
        progress(100, 200, 1943.2)
    assert "100/200" in terminal.getvalue()
    assert "best 1,943 tok/s/GPU" in terminal.getvalue()


# Multi-objective studies

OBJECTIVE_ARGS = ["--objective", "output_tokens_per_s_per_gpu", "--objective", "ttft_p99"]


@pytest.fixture(scope="module")
def front_study_file(tmp_path_factory) -> Path:
    """A SQLite file with one multi-objective study of the 32B plan, 30 sampled trials and the polish's."""
    path = tmp_path_factory.mktemp("front") / "front.db"
    result = run_cli("optimize", PLAN_32B, *OBJECTIVE_ARGS, "--storage", f"sqlite:///{path}", "--trials", "30",
                     "--format", "json")
    assert result.exit_code == 0, result.stderr
    return path


def stored_front(storage: str, name: str) -> kvplan.ParetoResult:
    with studies.opened_storage(storage) as opened:
        result = studies.result_of_study(optuna.load_study(study_name=name, storage=opened))
    assert isinstance(result, kvplan.ParetoResult)
    return result


def test_optimize_objectives_rerun_adds_trials(tmp_path):
    storage = f"sqlite:///{tmp_path}/front.db"
    for _ in range(2):
        result = run_cli("optimize", PLAN_32B, *OBJECTIVE_ARGS, "--storage", storage, "--trials", "25",
                         "--format", "json")
        assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["search"]["front_size"] == len(stored_front(storage, PLAN_NAME).front)
    (entry,) = json.loads(run_cli("study", "list", storage, "--format", "json").stdout)["studies"]
    assert entry["trials"]["sampled"] == 50


@pytest.mark.parametrize(
    ("first", "second", "message"),
    [
        (OBJECTIVE_ARGS, ["--objective", "throughput", "--objective", "ttft_p99"],
         "pass --objective output_tokens_per_s_per_gpu --objective ttft_p99 to resume it"),
        (OBJECTIVE_ARGS, [], "pass --objective output_tokens_per_s_per_gpu --objective ttft_p99 to resume it"),
        ([], OBJECTIVE_ARGS, "drop the --objective options to resume it"),
    ],
)
def test_optimize_other_objectives_exit_1(first, second, message, tmp_path):
    storage = f"sqlite:///{tmp_path}/study.db"
    assert run_cli("optimize", PLAN_32B, *first, "--storage", storage, "--trials", "5").exit_code == 0
    result = run_cli("optimize", PLAN_32B, *second, "--storage", storage, "--trials", "5")
    assert result.exit_code == 1
    assert f"study '{PLAN_NAME}' in {storage}" in result.stderr
    assert message in result.stderr
    assert "choose another --study-name" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_optimize_objectives_exhaustive_storage_usage_error(tmp_path):
    result = run_cli("optimize", PLAN_32B, *OBJECTIVE_ARGS, "--exhaustive", "--storage",
                     f"sqlite:///{tmp_path}/x.db")
    assert result.exit_code == 2
    assert "--exhaustive" in result.stderr
    assert not (tmp_path / "x.db").exists()


def test_study_list_shows_objectives(front_study_file):
    storage = f"sqlite:///{front_study_file}"
    front = stored_front(storage, PLAN_NAME)
    result = run_cli("study", "list", storage)
    assert result.exit_code == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith(PLAN_NAME))
    assert "output_tokens_per_s_per_gpu, ttft_p99" in row
    assert f"front of {len(front.front)}" in row
    config = front.best.evaluation.config
    assert f"dp={config.dp} tp={config.tp} pp={config.pp} max_num_seqs={config.max_num_seqs}" in row

    (entry,) = json.loads(run_cli("study", "list", storage, "--format", "json").stdout)["studies"]
    assert entry["objective"] is None
    assert entry["objectives"] == ["output_tokens_per_s_per_gpu", "ttft_p99"]
    assert entry["front_size"] == len(front.front)
    assert entry["best"]["config"] == config.to_dict()
    assert entry["best"]["objective_values"]["ttft_p99"] == front.best.values[1]


def test_study_show_prints_front(front_study_file):
    storage = f"sqlite:///{front_study_file}"
    front = stored_front(storage, PLAN_NAME)
    result = run_cli("study", "show", storage)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert re.fullmatch(rf"Study {PLAN_NAME} in sqlite:///\S+: \d+ completed trials \(30 sampled, \d+ from the "
                        r"polish\)", lines[0]), lines[0]
    assert f"{len(front.front)} on the Pareto front" in result.stdout
    rows = [line for line in lines if re.match(r"\d+ +\d+ +\d+ +\d+ ", line)]
    assert len(rows) == len(front.front)

    document = json.loads(run_cli("study", "show", storage, "--format", "json").stdout)
    assert document["study"]["trials"]["sampled"] == 30
    assert [entry["config"] for entry in document["front"]] == [p.evaluation.config.to_dict() for p in front.front]

    every = run_cli("study", "show", storage, "--all", "--format", "csv")
    assert len(list(csv.DictReader(io.StringIO(every.stdout)))) == front.evaluated


def test_study_export_marks_front(front_study_file, tmp_path):
    storage = f"sqlite:///{front_study_file}"
    front = {tuple(point.evaluation.config.to_dict().items()) for point in stored_front(storage, PLAN_NAME).front}
    output = tmp_path / "trials.csv"
    assert run_cli("study", "export", storage, "--output", output).exit_code == 0
    rows = list(csv.DictReader(io.StringIO(output.read_text())))
    assert "value" not in rows[0]
    for row in rows:
        if row["feasible"] == "True":
            assert float(row["value.output_tokens_per_s_per_gpu"]) == float(row["output_tokens_per_s_per_gpu"])
        assert row["on_front"] in ("True", "False")
    assert {row["on_front"] for row in rows} == {"True", "False"}
    document = json.loads(run_cli("study", "export", storage, "--format", "json").stdout)
    assert document["objectives"] == ["output_tokens_per_s_per_gpu", "ttft_p99"]
    assert document["directions"] == ["maximize", "minimize"]
    marked = {tuple(trial["config"].items()) for trial in document["trials"] if trial["on_front"]}
    assert marked == front
    assert all(len(trial["value"]) == 2 for trial in document["trials"])


def test_plot_reads_study_objectives(tmp_path):
    storage = f"sqlite:///{tmp_path}/front.db"
    assert run_cli("optimize", PLAN_32B, "--objective", "throughput_per_gpu", "--objective", "tpot_p50",
                   "--storage", storage, "--trials", "25").exit_code == 0
    result = run_cli("plot", storage, "--output", tmp_path / "front.png")
    assert result.exit_code == 0, result.stderr
    front = stored_front(storage, PLAN_NAME)
    # The latency axis defaults to the study's latency objective, so the drawn front is the study's.
    assert f"{front.evaluated} deployments, {len(front.front)} on the front of output tokens/s per GPU and " \
           "TPOT p50" in result.stderr


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_ctrl_c_keeps_pareto_trials_and_prints_front(n_jobs, tmp_path):
    storage = f"sqlite:///{tmp_path}/front.db"
    process, seen, stdout, stderr = interrupt_search(
        ["optimize", str(PLAN_32B), *OBJECTIVE_ARGS, "--storage", storage, "--trials", "100000",
         "--n-jobs", str(n_jobs), "--format", "json"], storage)
    assert process.returncode == 130, stderr
    assert "interrupted by Ctrl-C; the output shows the Pareto front of the" in stderr
    assert f"kept in study '{PLAN_NAME}' in {storage}" in stderr
    assert "Traceback" not in stderr

    trials = stored_trials(storage, PLAN_NAME)
    assert len(trials) >= seen
    assert {trial.state.name for trial in trials} == {"COMPLETE"}
    assert sorted(trial.number for trial in trials) == list(range(len(trials)))
    document = json.loads(stdout)
    stored = stored_front(storage, PLAN_NAME)
    assert document["search"]["evaluated"] == stored.evaluated
    assert [entry["config"] for entry in document["front"]] == [p.evaluation.config.to_dict() for p in stored.front]


def test_progress_bar_reports_front_size(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(_progress, "SHOW_AFTER_S", 0.0)
    with _progress.search_progress("makespan_s", quiet=False, pareto=True) as progress:
        progress(0, 200, 0)
        time.sleep(0.2)
        progress(100, 200, 13)
    assert "100/200" in terminal.getvalue()
    assert "front size 13" in terminal.getvalue()
    assert "makespan" not in terminal.getvalue()


def test_progress_bar_shows_front_on_terminal(tmp_path):
    exit_code, stdout, terminal = run_on_terminal(
        ["optimize", str(PLAN_32B), *OBJECTIVE_ARGS, "--storage", f"sqlite:///{tmp_path}/front.db",
         "--trials", "100"])
    assert exit_code == 0, terminal
    assert re.search(r"search: +\d+%\|.*\| \d+/100 \[.*trial/s, front size \d+\]", terminal), terminal
    assert "Pareto front" in stdout
