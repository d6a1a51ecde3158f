"""Tests of ``kvplan optimize --objective`` and ``kvplan plot``: the Pareto table, JSON
and CSV, and plots rendered to PNG and HTML and read back."""

from __future__ import annotations

import csv
import html.parser
import io
import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest

from kvplan.cli import main

REPO_ROOT = Path(__file__).resolve().parents[2]
PLAN_32B = "examples/h200-reasoning/qwen-32b-8xh200.yaml"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
OBJECTIVE_ARGS = ["--objective", "output_tokens_per_s_per_gpu", "--objective", "ttft_p99"]


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)


@pytest.fixture(scope="module")
def front_json(tmp_path_factory) -> Path:
    """A Pareto result of the 32B plan written by ``kvplan optimize --output``."""
    path = tmp_path_factory.mktemp("front") / "front.json"
    assert main(["optimize", str(REPO_ROOT / PLAN_32B), *OBJECTIVE_ARGS, "--trials", "60", "--format", "json",
                 "--output", str(path)]) == 0
    return path


def test_optimize_objectives_table(capsys):
    assert main(["optimize", PLAN_32B, *OBJECTIVE_ARGS, "--trials", "40"]) == 0
    out = capsys.readouterr().out
    assert "Objectives: maximize output tokens/s per GPU, minimize TTFT p99" in out
    assert "on the Pareto front" in out
    header = next(line for line in out.splitlines() if line.startswith("#"))
    assert header.split()[6:8] == ["tok/s/GPU", "TTFT"]


def test_optimize_objectives_csv_rows_are_front(capsys):
    assert main(["optimize", PLAN_32B, *OBJECTIVE_ARGS, "--trials", "40", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert rows
    assert {row["on_front"] for row in rows} == {"True"}
    throughputs = [float(row["objective.output_tokens_per_s_per_gpu"]) for row in rows]
    assert throughputs == sorted(throughputs, reverse=True)


def test_optimize_objectives_all_lists_every_point(capsys):
    assert main(["optimize", PLAN_32B, *OBJECTIVE_ARGS, "--trials", "40", "--all", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {row["on_front"] for row in rows} == {"True", "False"}
    assert any(row["sla_met"] == "False" for row in rows)


def test_optimize_output_file_is_json(front_json):
    document = json.loads(front_json.read_text())
    assert document["search"]["front_size"] == len(document["front"]) > 0
    assert all(entry["sla_met"] for entry in document["front"])


@pytest.mark.parametrize("arguments, message", [
    (["--objective", "ttft_p999", "--objective", "throughput"], "did you mean ttft_p99"),
    (["--objective", "ttft_p99"], "two or three metrics"),
    (["--objective", "ttft_p99", "--objective", "a", "--objective", "b", "--objective", "c"], "unknown objective"),
])
def test_optimize_objective_usage_errors(capsys, arguments, message):
    assert main(["optimize", PLAN_32B, *arguments]) == 2
    assert message in capsys.readouterr().err


def test_optimize_objective_undefined_for_plan(capsys):
    # The 32B node has no price, so the cost objective is undefined.
    assert main(["optimize", PLAN_32B, "--objective", "cost", "--objective", "ttft_p99"]) == 1
    assert "needs a price" in capsys.readouterr().err


class _Page(html.parser.HTMLParser):
    """Collect the tags and table rows of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.rows: dict[str, int] = {}
        self._table: str | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "table":
            self._table = dict(attrs).get("id")
            self.rows[self._table] = 0
        if tag == "tr" and self._table is not None:
            self.rows[self._table] += 1

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None


def test_plot_png_reads_back(front_json, tmp_path, capsys):
    output = tmp_path / "front.png"
    assert main(["plot", str(front_json), "--output", str(output)]) == 0
    data = output.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    image = matplotlib.image.imread(output)
    height, width = image.shape[:2]
    assert width > 1000
    assert height > 400
    # A blank canvas would be one colour; the plot has markers and lines in several.
    assert len({tuple(pixel) for pixel in image[::7, ::7].reshape(-1, image.shape[2])}) > 20
    assert "on the front" in capsys.readouterr().err


def test_plot_html_parses(front_json, tmp_path):
    output = tmp_path / "front.html"
    assert main(["plot", str(front_json), "--output", str(output)]) == 0
    page = _Page()
    page.feed(output.read_text())
    assert "svg" in page.tags
    # Nothing is loaded from elsewhere.
    assert "script" not in page.tags
    assert "img" not in page.tags
    document = json.loads(front_json.read_text())
    # Header row plus one per front point in throughput and TTFT p99, the result's objectives.
    assert page.rows["front"] == 1 + document["search"]["front_size"]
    assert page.rows["curve"] > 5


def test_plot_single_objective_result(tmp_path):
    result = tmp_path / "ranked.json"
    assert main(["optimize", PLAN_32B, "--trials", "30", "--all", "--format", "json", "--output", str(result)]) == 0
    output = tmp_path / "ranked.png"
    assert main(["plot", str(result), "--output", str(output), "--latency", "tpot_p50"]) == 0
    assert output.read_bytes().startswith(PNG_SIGNATURE)


def test_plot_rate_plan_curve(rate_plan, tmp_path):
    from kvplan.commands.plot import PlotPoint, load_curve

    best = PlotPoint({"dp": 1, "tp": 1, "pp": 1, "max_num_seqs": 256, "max_num_batched_tokens": 8192,
                      "gpu_memory_utilization": 0.9}, True, True, (), {})
    curve, note = load_curve(rate_plan, best, "ttft_p99")
    assert note.startswith("arrival rate")
    loads = [point.load for point in curve]
    assert loads == sorted(loads)
    assert all(point.keeps_up for point in curve)
    throughputs = [point.throughput_per_gpu for point in curve]
    # Below saturation a deployment delivers what arrives, so throughput grows with the rate.
    assert throughputs == sorted(throughputs)


@pytest.mark.parametrize("arguments, code, message", [
    (["--output", "plot.svg"], 2, "must end in .png or .html"),
    (["--output", "/nonexistent-folder/plot.png"], 1, "cannot write"),
])
def test_plot_output_errors(front_json, capsys, arguments, code, message):
    assert main(["plot", str(front_json), *arguments]) == code
    assert message in capsys.readouterr().err


def test_plot_rejects_other_documents(tmp_path, capsys):
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({"schema_version": 1, "command": "sweep", "plan": {}, "points": []}))
    # A sweep document has "points" of another shape; the plot must not take it for a front.
    assert main(["plot", str(path), "--output", str(tmp_path / "x.png")]) == 1
    assert "kvplan plot:" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_plot_missing_file(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "missing.json"), "--output", str(tmp_path / "x.png")]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_plot_from_sqlite_study(tmp_path):
    import kvplan

    database = tmp_path / "study.db"
    plan = kvplan.load_plan(REPO_ROOT / PLAN_32B)
    kvplan.optimize(plan, trials=30, storage=f"sqlite:///{database}")
    output = tmp_path / "study.png"
    assert main(["plot", f"sqlite:///{database}", "--output", str(output)]) == 0
    assert output.read_bytes().startswith(PNG_SIGNATURE)
    # A plain path to the SQLite file works too.
    assert main(["plot", str(database), "--output", str(tmp_path / "study.html")]) == 0


def test_plot_command_subprocess(front_json, tmp_path):
    output = tmp_path / "cli.png"
    completed = subprocess.run([sys.executable, "-m", "kvplan.cli", "plot", str(front_json), "--output", str(output)],
                               cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == ""
    assert output.read_bytes().startswith(PNG_SIGNATURE)
