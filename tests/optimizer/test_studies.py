"""Tests of searches kept in Optuna studies: storage URLs, resuming, and workers sharing a study.

The multi-worker tests check Optuna's trial numbers and counts after several processes
searched one study in SQLite, a journal file and PostgreSQL. The PostgreSQL fixture
starts a throwaway server on loopback from Debian's postgresql package.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pytest

import kvplan
from kvplan.optimizer import studies
from kvplan.optimizer.pareto import rank_points
from kvplan.optimizer.studies import SOURCE_POLISH, SOURCE_TPE
from kvplan.spec.errors import KvplanError

REPO_ROOT = Path(__file__).resolve().parents[2]
PLAN_32B = REPO_ROOT / "examples" / "h200-reasoning" / "qwen-32b-8xh200.yaml"
KVPLAN = [sys.executable, "-m", "kvplan.cli"]


@pytest.fixture(scope="module")
def plan() -> kvplan.Plan:
    """The 32B plan: 200 deployments of 8 GPUs, so TPE has layouts and settings to choose from."""
    return kvplan.load_plan(PLAN_32B)


def stored_trials(storage: str, name: str) -> list[optuna.trial.FrozenTrial]:
    """Return the trials of a stored study, closing the storage's connections afterwards."""
    with studies.opened_storage(storage) as opened:
        return optuna.load_study(study_name=name, storage=opened).get_trials()


def stored_evaluations(storage: str, name: str) -> dict:
    with studies.opened_storage(storage) as opened:
        return studies.evaluations_in_study(optuna.load_study(study_name=name, storage=opened))


def trials_by_source(trials: list[optuna.trial.FrozenTrial]) -> dict[str | None, list[optuna.trial.FrozenTrial]]:
    grouped: dict[str | None, list[optuna.trial.FrozenTrial]] = collections.defaultdict(list)
    for trial in trials:
        grouped[studies.trial_source(trial)].append(trial)
    return grouped


def assert_one_complete_study(trials: list[optuna.trial.FrozenTrial], sampled: int) -> None:
    """Check that a study's trials hold ``sampled`` TPE trials, no lost, duplicated or unfinished trial."""
    numbers = [trial.number for trial in trials]
    assert sorted(numbers) == list(range(len(trials))), "trial numbers are not 0..n-1 without gaps"
    states = collections.Counter(trial.state.name for trial in trials)
    assert states == {"COMPLETE": len(trials)}, states
    by_source = trials_by_source(trials)
    assert len(by_source[SOURCE_TPE]) == sampled
    assert set(by_source) <= {SOURCE_TPE, SOURCE_POLISH}
    for trial in trials:
        assert trial.user_attrs[studies.CONFIG_ATTR] == studies.trial_evaluation(trial).config.to_dict()
        assert studies.CONSTRAINT_NAME in trial.constraints


# Storage URLs


@pytest.mark.parametrize(
    ("text", "kind", "path"),
    [
        ("sqlite:///study.db", "sqlite", "study.db"),
        ("sqlite:////var/lib/kvplan/study.db", "sqlite", "/var/lib/kvplan/study.db"),
        ("journal:///runs/study.log", "journal", "runs/study.log"),
        ("journal:////tmp/study.log", "journal", "/tmp/study.log"),
        ("postgresql://kvplan:secret@db.example:5432/plans", "rdb", None),
        ("postgresql+psycopg://kvplan@127.0.0.1/plans", "rdb", None),
        ("mysql+pymysql://kvplan:secret@127.0.0.1/plans", "rdb", None),
    ],
)
def test_storage_url_parsed(text, kind, path):
    parsed = studies.parse_storage_url(text)
    assert parsed.kind == kind
    assert parsed.path == path


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("study.log", "journal:///study.log"),
        ("study.db", "sqlite:///study.db"),
        ("sqlite://", "in-memory SQLite"),
        ("sqlite:///:memory:", "in-memory SQLite"),
        ("journal:///", "names no file"),
        ("redis://127.0.0.1", "sqlite:///FILE"),
    ],
)
def test_storage_url_rejected(text, hint):
    with pytest.raises(ValueError) as raised:
        studies.parse_storage_url(text)
    assert hint in str(raised.value)


def test_storage_url_hides_password():
    parsed = studies.parse_storage_url("postgresql://kvplan:secret@127.0.0.1:5432/plans")
    assert "secret" not in parsed.display
    assert "kvplan:***@127.0.0.1:5432/plans" in parsed.display


def test_missing_storage_file_reported(tmp_path):
    with pytest.raises(KvplanError, match="not found"):
        studies.open_storage(f"sqlite:///{tmp_path}/missing.db", must_exist=True)
    assert not (tmp_path / "missing.db").exists()


# The plan record


def test_plan_document_round_trip(example_plans):
    for name, plan in example_plans.items():
        rebuilt = studies.plan_from_document(studies.plan_document(plan))
        assert rebuilt == plan, name


def test_plan_sha256_ignores_name_and_source(plan):
    renamed = dataclasses.replace(plan, name="other", source="elsewhere.yaml")
    assert studies.plan_sha256(renamed) == studies.plan_sha256(plan)
    stricter = dataclasses.replace(plan, sla=(dataclasses.replace(plan.sla[0], max_s=1.0),))
    assert studies.plan_sha256(stricter) != studies.plan_sha256(plan)


# Resuming


def test_resumed_sqlite_study_continues(plan, tmp_path):
    storage = f"sqlite:///{tmp_path}/study.db"
    first = kvplan.optimize(plan, trials=30, seed=0, storage=storage)
    after_first = stored_trials(storage, plan.name)
    assert_one_complete_study(after_first, sampled=30)
    first_numbers = {trial.number for trial in after_first}
    first_sampled = [trial.params for trial in trials_by_source(after_first)[SOURCE_TPE]]

    second = kvplan.optimize(plan, trials=30, seed=0, storage=storage)
    after_second = stored_trials(storage, plan.name)
    assert_one_complete_study(after_second, sampled=60)
    new_trials = [trial for trial in after_second if trial.number not in first_numbers]
    assert min(trial.number for trial in new_trials) == len(first_numbers)

    # Same seed: a sampler that ignored the stored trials would repeat the first run.
    resumed_sampled = [trial.params for trial in new_trials if studies.trial_source(trial) == SOURCE_TPE]
    assert resumed_sampled != first_sampled

    # The second result ranks the deployments of both runs.
    first_configs = {ranked.evaluation.config for ranked in first.results}
    second_configs = {ranked.evaluation.config for ranked in second.results}
    assert first_configs <= second_configs
    assert second.best.objective_value <= first.best.objective_value


def test_stored_study_ranks_like_its_search(plan, tmp_path):
    storage = f"sqlite:///{tmp_path}/study.db"
    searched = kvplan.optimize(plan, trials=30, seed=1, storage=storage, study_name="ranked")
    with studies.opened_storage(storage) as opened:
        stored = studies.result_of_study(optuna.load_study(study_name="ranked", storage=opened))
    assert stored.plan == plan
    assert stored.evaluated == searched.evaluated
    assert [r.evaluation.config for r in stored.results] == [r.evaluation.config for r in searched.results]
    assert [r.objective_value for r in stored.results] == [r.objective_value for r in searched.results]
    assert [r.violations for r in stored.results] == [r.violations for r in searched.results]


def test_in_memory_search_matches_stored_search(plan, tmp_path):
    in_memory = kvplan.optimize(plan, trials=30, seed=2)
    stored = kvplan.optimize(plan, trials=30, seed=2, storage=f"journal:///{tmp_path}/study.log")
    assert [r.evaluation.config for r in in_memory.results] == [r.evaluation.config for r in stored.results]


def test_study_of_changed_plan_rejected(plan, tmp_path):
    storage = f"sqlite:///{tmp_path}/study.db"
    kvplan.optimize(plan, trials=5, seed=0, storage=storage)
    stricter = dataclasses.replace(plan, sla=(dataclasses.replace(plan.sla[0], max_s=60.0),))
    with pytest.raises(KvplanError, match="another version of the plan") as raised:
        kvplan.optimize(stricter, trials=5, seed=0, storage=storage)
    assert "differ in sla" in str(raised.value)


def test_resume_warns_on_model_change(plan, tmp_path, caplog):
    storage = f"sqlite:///{tmp_path}/study.db"
    kvplan.optimize(plan, trials=5, seed=0, storage=storage)
    with caplog.at_level("WARNING", logger="kvplan"):
        kvplan.optimize(plan, trials=5, seed=0, storage=storage)
    assert "another version of kvplan's cost model" not in caplog.text

    with studies.opened_storage(storage) as opened:
        optuna.load_study(study_name=plan.name, storage=opened).set_user_attr(studies.MODEL_SHA256_ATTR, "0" * 64)
    with caplog.at_level("WARNING", logger="kvplan"):
        kvplan.optimize(plan, trials=5, seed=0, storage=storage)
    assert "another version of kvplan's cost model" in caplog.text
    assert "--study-name" in caplog.text


def test_study_resumes_with_config_at_another_path(plan, tmp_path):
    # Hosts of one study, or one host run from another folder, see the model's
    # config.json at another path; its content, not its path, must match.
    storage = f"sqlite:///{tmp_path}/study.db"
    kvplan.optimize(plan, trials=5, seed=0, storage=storage)
    before = len(stored_trials(storage, plan.name))
    moved = dataclasses.replace(plan, model=dataclasses.replace(plan.model, config_path="/elsewhere/config.json"))
    kvplan.optimize(moved, trials=5, seed=0, storage=storage)
    assert len(stored_trials(storage, plan.name)) >= before + 5


def test_foreign_study_rejected(plan, tmp_path):
    storage = f"sqlite:///{tmp_path}/study.db"
    with studies.opened_storage(storage) as opened:
        foreign = optuna.create_study(study_name=plan.name, storage=opened)
        foreign.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    with pytest.raises(KvplanError, match="not made by kvplan"):
        kvplan.optimize(plan, trials=5, seed=0, storage=storage)


def test_exhaustive_with_storage_rejected(plan, tmp_path):
    with pytest.raises(KvplanError, match="--exhaustive"):
        kvplan.optimize(plan, exhaustive=True, storage=f"sqlite:///{tmp_path}/study.db")


# Workers sharing one study


def test_trial_shares_sum_to_trials():
    assert studies.trial_shares(50, 2) == [25, 25]
    assert studies.trial_shares(51, 2) == [26, 25]
    assert studies.trial_shares(3, 8) == [1, 1, 1]


def test_two_workers_share_sqlite_study(plan, tmp_path):
    storage = f"sqlite:///{tmp_path}/study.db"
    result = kvplan.optimize(plan, trials=40, seed=0, storage=storage, n_jobs=2)
    assert_one_complete_study(stored_trials(storage, plan.name), sampled=40)
    assert result.evaluated == len(stored_evaluations(storage, plan.name))


def test_two_processes_share_journal_study(tmp_path):
    """Two kvplan commands, as on two hosts, add their trials to one journal study."""
    storage = f"journal:///{tmp_path}/study.log"
    commands = [[*KVPLAN, "optimize", str(PLAN_32B), "--storage", storage, "--trials", "25", "--seed", str(seed),
                 "--format", "json"] for seed in (0, 1)]
    processes = [subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for command in commands]
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
    assert_one_complete_study(stored_trials(storage, "qwen-32b-8xh200"), sampled=50)


def test_workers_without_storage_share_temporary_journal(plan, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    result = kvplan.optimize(plan, trials=30, seed=0, n_jobs=2)
    assert result.best is not None
    assert result.evaluated >= 20
    assert list(tmp_path.iterdir()) == []


# PostgreSQL


def _postgres_bin_dir() -> Path | None:
    """Return the folder of initdb and pg_ctl: Debian's newest /usr/lib/postgresql/*/bin, else PATH."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                        key=lambda path: int(path.parts[-3]) if path.parts[-3].isdigit() else 0)
    if candidates:
        return candidates[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _server_user_prefix(folder: Path) -> list[str]:
    """Return the command prefix that runs PostgreSQL's tools as a user they accept.

    initdb and postgres refuse to run as root, so as root they run as the postgres
    user (or nobody) through runuser, and that user gets the folder.
    """
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.skip("running as root without runuser, so no PostgreSQL server can be started "
                    "(initdb refuses root)")
    for user in ("postgres", "nobody"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            continue
        shutil.chown(folder, user)
        return [runuser, "-u", user, "--"]
    pytest.skip("running as root with neither a postgres nor a nobody user to run PostgreSQL as")


@pytest.fixture(scope="module")
def postgres_url():
    """Start a throwaway PostgreSQL server on a free loopback port; yield its URL."""
    pytest.importorskip("psycopg", reason="psycopg is not installed; pip install 'kvplan[postgres]'")
    bin_dir = _postgres_bin_dir()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server can be started: initdb not found in /usr/lib/postgresql/*/bin or "
                    "on PATH (install Debian's postgresql package)")
    folder = Path(tempfile.mkdtemp(prefix="kvplan-postgres-"))
    data = folder / "data"
    prefix = _server_user_prefix(folder)
    port = _free_loopback_port()
    initdb = subprocess.run([*prefix, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "kvplan",
                             "-E", "UTF8", "--no-sync"], capture_output=True, text=True, timeout=120)
    if initdb.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"no PostgreSQL server can be started: initdb failed: {initdb.stderr.strip()[-500:]}")
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off"
    pg_ctl = [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data)]
    start = subprocess.run([*pg_ctl, "-l", str(folder / "server.log"), "-o", options, "-w", "-t", "60", "start"],
                           capture_output=True, text=True, timeout=120)
    if start.returncode != 0:
        log = (folder / "server.log").read_text(errors="replace") if (folder / "server.log").exists() else ""
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"no PostgreSQL server can be started: pg_ctl start failed: {start.stderr.strip()} "
                    f"{log.strip()[-500:]}")
    try:
        yield f"postgresql://kvplan@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


def test_two_workers_share_postgresql_study(plan, postgres_url):
    result = kvplan.optimize(plan, trials=40, seed=0, storage=postgres_url, study_name="shared", n_jobs=2)
    assert_one_complete_study(stored_trials(postgres_url, "shared"), sampled=40)
    assert result.evaluated == len(stored_evaluations(postgres_url, "shared"))

    resumed = kvplan.optimize(plan, trials=20, seed=5, storage=postgres_url, study_name="shared")
    assert_one_complete_study(stored_trials(postgres_url, "shared"), sampled=60)
    assert resumed.evaluated >= result.evaluated


# Multi-objective studies


THROUGHPUT_AND_TTFT = ["output_tokens_per_s_per_gpu", "ttft_p99"]


def front_values(result) -> dict:
    return {point.evaluation.config: point.values for point in result.front}


def dominates_or_equals(better: tuple, worse: tuple, directions: list[str]) -> bool:
    """Return whether ``better`` is at least as good as ``worse`` in every objective."""
    for good, bad, direction in zip(better, worse, directions):
        if (good > bad) if direction == "minimize" else (good < bad):
            return False
    return True


def assert_front_kept_or_improved(before, after) -> None:
    """Check that every point of the earlier front is on the later one or beaten by one of its points."""
    directions = [objective.direction for objective in after.objectives]
    later = front_values(after)
    for config, values in front_values(before).items():
        if config in later:
            continue
        assert any(dominates_or_equals(other, values, directions) for other in later.values()), config


def test_resumed_pareto_study_continues(plan, tmp_path):
    storage = f"sqlite:///{tmp_path}/front.db"
    first = kvplan.optimize(plan, trials=30, seed=0, objectives=THROUGHPUT_AND_TTFT, storage=storage)
    after_first = stored_trials(storage, plan.name)
    assert_one_complete_study(after_first, sampled=30)
    assert first.evaluated == len(stored_evaluations(storage, plan.name))

    second = kvplan.optimize(plan, trials=30, seed=0, objectives=THROUGHPUT_AND_TTFT, storage=storage)
    after_second = stored_trials(storage, plan.name)
    assert_one_complete_study(after_second, sampled=60)
    assert len(after_second) > len(after_first)
    new_numbers = sorted(trial.number for trial in after_second[len(after_first):])
    assert new_numbers[0] == len(after_first)

    # The resumed sampler read the stored trials, so the same seed requests other deployments.
    first_sampled = [trial.params for trial in trials_by_source(after_first)[SOURCE_TPE]]
    resumed_sampled = [trial.params for trial in trials_by_source(after_second)[SOURCE_TPE]][30:]
    assert resumed_sampled != first_sampled

    first_configs = {point.evaluation.config for point in first.points}
    second_configs = {point.evaluation.config for point in second.points}
    assert first_configs <= second_configs
    assert second.front
    assert_front_kept_or_improved(first, second)


def test_pareto_study_records_objectives(plan, tmp_path):
    storage = f"sqlite:///{tmp_path}/front.db"
    searched = kvplan.optimize(plan, trials=30, seed=1, objectives=["ttft_p99", "throughput_per_gpu"],
                               storage=storage, study_name="front")
    with studies.opened_storage(storage) as opened:
        study = optuna.load_study(study_name="front", storage=opened)
        assert studies.study_objectives(study) == ("ttft_p99", "output_tokens_per_s_per_gpu")
        assert [direction.name for direction in study.directions] == ["MINIMIZE", "MAXIMIZE"]
        assert studies.OBJECTIVE_ATTR not in study.user_attrs
        stored = studies.result_of_study(study)
    assert isinstance(stored, kvplan.ParetoResult)
    assert front_values(stored) == front_values(searched)
    assert [point.evaluation.config for point in stored.front] == [point.evaluation.config for point in searched.front]


def test_pareto_polish_recorded_in_study(plan, tmp_path):
    storage = f"sqlite:///{tmp_path}/front.db"
    result = kvplan.optimize(plan, trials=30, seed=0, objectives=THROUGHPUT_AND_TTFT, storage=storage)
    by_source = trials_by_source(stored_trials(storage, plan.name))
    sampled_configs = {studies.trial_evaluation(trial).config for trial in by_source[SOURCE_TPE]}
    polished_configs = {studies.trial_evaluation(trial).config for trial in by_source[SOURCE_POLISH]}
    assert polished_configs
    # The polish evaluates only deployments the sampler did not, each once.
    assert not polished_configs & sampled_configs
    assert len(polished_configs) == len(by_source[SOURCE_POLISH])
    assert len(sampled_configs | polished_configs) == result.evaluated
    for trial in by_source[SOURCE_POLISH]:
        assert len(trial.values) == 2


@pytest.mark.parametrize("scheme", ["sqlite", "journal"])
def test_two_workers_share_pareto_study(plan, tmp_path, scheme):
    storage = f"{scheme}:///{tmp_path}/front.{scheme}"
    result = kvplan.optimize(plan, trials=40, seed=0, objectives=THROUGHPUT_AND_TTFT, storage=storage, n_jobs=2)
    assert isinstance(result, kvplan.ParetoResult)
    assert_one_complete_study(stored_trials(storage, plan.name), sampled=40)
    assert result.evaluated == len(stored_evaluations(storage, plan.name))
    assert result.front


def test_pareto_workers_report_front_size(plan, tmp_path):
    reports = []
    result = kvplan.optimize(plan, trials=40, seed=0, objectives=THROUGHPUT_AND_TTFT, n_jobs=2,
                             storage=f"sqlite:///{tmp_path}/front.db",
                             progress=lambda done, total, front_size: reports.append((done, total, front_size)))
    assert reports[0] == (0, 40, 0)
    assert reports[-1][:2] == (40, 40)
    # The last report merges the workers' fronts before the polish, so it counts the
    # front of the sampled trials.
    sampled = [studies.trial_evaluation(trial)
               for trial in trials_by_source(stored_trials(f"sqlite:///{tmp_path}/front.db", plan.name))[SOURCE_TPE]]
    sampled_front = rank_points(plan, result.objectives, {e.config: e for e in sampled}.values())
    assert reports[-1][2] == sum(point.on_front for point in sampled_front) > 0


@pytest.mark.parametrize(
    ("first", "second", "message"),
    [
        (THROUGHPUT_AND_TTFT, ["output_tokens_per_s_per_gpu", "tpot_p50"],
         "is a multi-objective study of output_tokens_per_s_per_gpu, ttft_p99, not of "
         "output_tokens_per_s_per_gpu, tpot_p50; pass --objective output_tokens_per_s_per_gpu "
         "--objective ttft_p99 to resume it"),
        (THROUGHPUT_AND_TTFT, None, "so a search of the plan's single objective makespan_s cannot add to it"),
        (None, THROUGHPUT_AND_TTFT, "is a single-objective study of the plan's objective makespan_s, so a "
                                    "multi-objective search of output_tokens_per_s_per_gpu, ttft_p99 cannot add "
                                    "to it; drop the --objective options"),
    ],
)
def test_study_of_other_objectives_rejected(plan, tmp_path, first, second, message):
    storage = f"sqlite:///{tmp_path}/study.db"
    kvplan.optimize(plan, trials=5, seed=0, objectives=first, storage=storage, study_name="kept")
    trials_before = len(stored_trials(storage, "kept"))
    with pytest.raises(KvplanError) as raised:
        kvplan.optimize(plan, trials=5, seed=0, objectives=second, storage=storage, study_name="kept")
    assert f"study 'kept' in {storage}" in str(raised.value)
    assert message in str(raised.value)
    assert "choose another --study-name" in str(raised.value)
    assert len(stored_trials(storage, "kept")) == trials_before


def test_pareto_exhaustive_with_storage_rejected(plan, tmp_path):
    with pytest.raises(KvplanError, match="--exhaustive"):
        kvplan.optimize(plan, exhaustive=True, objectives=THROUGHPUT_AND_TTFT, storage=f"sqlite:///{tmp_path}/x.db")
    assert not (tmp_path / "x.db").exists()


def test_two_workers_share_postgresql_pareto_study(plan, postgres_url):
    result = kvplan.optimize(plan, trials=40, seed=0, objectives=THROUGHPUT_AND_TTFT, storage=postgres_url,
                             study_name="shared-front", n_jobs=2)
    assert_one_complete_study(stored_trials(postgres_url, "shared-front"), sampled=40)
    assert result.evaluated == len(stored_evaluations(postgres_url, "shared-front"))

    resumed = kvplan.optimize(plan, trials=20, seed=5, objectives=THROUGHPUT_AND_TTFT, storage=postgres_url,
                              study_name="shared-front")
    assert_one_complete_study(stored_trials(postgres_url, "shared-front"), sampled=60)
    assert resumed.evaluated >= result.evaluated
    assert_front_kept_or_improved(result, resumed)
