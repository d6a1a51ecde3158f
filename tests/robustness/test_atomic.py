"""Atomic output files: a failed or interrupted write leaves the previous file whole."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

import kvplan.atomic
from kvplan.atomic import write_text_atomic
from kvplan.validation import __main__ as validation_main


def leftover_temporary_files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.endswith(".tmp"))


def fail_on_fsync(monkeypatch: pytest.MonkeyPatch, error: BaseException, *, after: int = 0) -> None:
    """Make the ``after``-th and later fsync calls in kvplan.atomic raise ``error``, as a full disk or Ctrl-C would."""
    calls = []
    real_fsync = os.fsync

    def fsync(descriptor: int) -> None:
        calls.append(descriptor)
        if len(calls) > after:
            raise error
        real_fsync(descriptor)

    monkeypatch.setattr(kvplan.atomic.os, "fsync", fsync)


def test_new_file_written(tmp_path: Path) -> None:
    target = tmp_path / "report.md"

    write_text_atomic(target, "line 1\nline 2\n")

    assert target.read_text(encoding="utf-8") == "line 1\nline 2\n"
    assert leftover_temporary_files(tmp_path) == []


def test_new_file_mode_follows_umask(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "report.md", "text")
    finally:
        os.umask(umask)

    assert stat.S_IMODE((tmp_path / "report.md").stat().st_mode) == 0o644


def test_existing_file_replaced_keeps_mode(tmp_path: Path) -> None:
    target = tmp_path / "report.md"
    target.write_text("old", encoding="utf-8")
    target.chmod(0o640)

    write_text_atomic(target, "new")

    assert target.read_text(encoding="utf-8") == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


def test_failed_write_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "report.md"
    target.write_text("old report\n", encoding="utf-8")
    fail_on_fsync(monkeypatch, OSError(28, "No space left on device"))

    with pytest.raises(OSError, match="No space left on device"):
        write_text_atomic(target, "new report\n" * 1000)

    assert target.read_text(encoding="utf-8") == "old report\n"
    assert leftover_temporary_files(tmp_path) == []


def test_interrupted_write_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "report.md"
    target.write_text("old report\n", encoding="utf-8")
    fail_on_fsync(monkeypatch, KeyboardInterrupt())

    with pytest.raises(KeyboardInterrupt):
        write_text_atomic(target, "new report\n")

    assert target.read_text(encoding="utf-8") == "old report\n"
    assert leftover_temporary_files(tmp_path) == []


def test_unencodable_text_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "report.md"
    target.write_text("old report\n", encoding="utf-8")

    # A lone surrogate cannot be encoded, so the write fails halfway through the text.
    with pytest.raises(UnicodeEncodeError):
        write_text_atomic(target, "a" * 100_000 + "\udc80")

    assert target.read_text(encoding="utf-8") == "old report\n"
    assert leftover_temporary_files(tmp_path) == []


def test_missing_folder_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_text_atomic(tmp_path / "absent" / "report.md", "text")

    assert list(tmp_path.iterdir()) == []


def test_symbolic_link_replaced_not_followed(tmp_path: Path) -> None:
    linked = tmp_path / "elsewhere.md"
    linked.write_text("elsewhere", encoding="utf-8")
    target = tmp_path / "report.md"
    target.symlink_to(linked)

    write_text_atomic(target, "new")

    assert not target.is_symlink()
    assert target.read_text(encoding="utf-8") == "new"
    assert linked.read_text(encoding="utf-8") == "elsewhere"


def test_schema_output_failure_keeps_old_files(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    output = tmp_path / "schemas"
    output.mkdir()
    for name in ("model.json", "node.json", "workload.json", "plan.json"):
        (output / name).write_text("old\n", encoding="utf-8")
    # The first schema is written, and the second write fails.
    fail_on_fsync(monkeypatch, OSError(28, "No space left on device"), after=1)

    result = cli("schema", "--output", output)

    assert result.code == 1, result.output
    assert f"kvplan schema: cannot write the schemas to {output}: [Errno 28] No space left on device" in result.stderr
    assert json.loads((output / "model.json").read_text(encoding="utf-8"))["$id"].endswith("model.json")
    for name in ("node.json", "workload.json", "plan.json"):
        assert (output / name).read_text(encoding="utf-8") == "old\n"
    assert leftover_temporary_files(output) == []


def test_validation_report_failure_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    report = tmp_path / "validation.md"
    report.write_text("old report\n", encoding="utf-8")
    # The report's content does not matter here, only how it is written.
    monkeypatch.setattr(validation_main, "run_cases", lambda examples: [])
    monkeypatch.setattr(validation_main, "render_markdown", lambda results: "new report\n" * 1000)
    fail_on_fsync(monkeypatch, OSError(28, "No space left on device"))

    code = validation_main.main(["--output", str(report)])

    assert code == 1
    assert f"cannot write {report}: No space left on device" in capsys.readouterr().err
    assert report.read_text(encoding="utf-8") == "old report\n"
    assert leftover_temporary_files(tmp_path) == []


def test_validation_report_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report = tmp_path / "validation.md"
    monkeypatch.setattr(validation_main, "run_cases", lambda examples: [])
    monkeypatch.setattr(validation_main, "render_markdown", lambda results: "new report\n")

    code = validation_main.main(["--output", str(report)])

    assert code == 0
    assert report.read_text(encoding="utf-8") == "new report\n"


def test_missing_folder_names_target(tmp_path) -> None:
    from kvplan.atomic import check_output_folder, write_text_atomic

    target = tmp_path / "missing" / "r.md"

    with pytest.raises(FileNotFoundError) as checked:
        check_output_folder(target)
    with pytest.raises(FileNotFoundError) as written:
        write_text_atomic(target, "text")

    assert checked.value.filename == str(target)
    assert f"folder {tmp_path / 'missing'} does not exist" in str(checked.value)
    # The temporary file's name, .r.md.*.tmp, is not what the caller asked for.
    assert written.value.filename == str(target)
