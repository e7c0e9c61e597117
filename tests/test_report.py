"""Run reports from synthetic metrics.jsonl files: plots, report.md, report.html, comparisons, errors."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

import scratchlm.report as report
from scratchlm.errors import UserError
from scratchlm.report import compare_runs, plots, write_report
from scratchlm.report_command import report_command

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXPECTED_SIZE = (round(report.PLOT_SIZE_IN[0] * report.PLOT_DPI), round(report.PLOT_SIZE_IN[1] * report.PLOT_DPI))


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def pretrain_metrics(steps: int = 20, eval_every: int = 5, scale: float = 1.0) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for step in range(1, steps + 1):
        tokens = step * 4096
        records.append({"step": step, "tokens": tokens, "loss": scale * (6.0 - 0.1 * step), "lr": 1e-3 * min(1.0, step / 5), "grad_norm": 1.0 + 0.01 * step,
                        "tokens_per_s": 1000.0 if step == 1 else 2000.0, "mfu": 0.1 if step == 1 else 0.25, "elapsed_s": 0.5 * step, "train_s": 0.4 * step})
        if step % eval_every == 0:
            val = scale * (6.1 - 0.1 * step)
            records.append({"step": step, "tokens": tokens, "val_loss": val, "val_perplexity": 2.718281828**val, "val_bpb": val / 3, "eval_s": 0.1, "elapsed_s": 0.5 * step + 0.1, "train_s": 0.4 * step})
    return records


def make_run(directory: Path, records: list[dict[str, Any]], run_config: dict[str, Any] | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if run_config is not None:
        for step in (10, 20):
            checkpoint = directory / "checkpoints" / f"step_{step:07d}"
            checkpoint.mkdir(parents=True)
            config = json.loads(json.dumps(run_config))
            config["train"]["max_steps"] = step * 100  # tells the newest checkpoint from the older one
            (checkpoint / "meta.json").write_text(json.dumps({"format": "scratchlm-checkpoint", "version": 2, "step": step, "run_config": config}))
    return directory


RUN_CONFIG = {"model": {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 256, "vocab_size": 2048}, "optim": {"lr": 0.001, "warmup_steps": 5}, "train": {"batch_tokens": 4096, "max_steps": 20, "seed": 7}, "data": {"shards": "runs/shards"}}


def test_plots_are_pngs_of_the_expected_size(tmp_path: Path) -> None:
    written = plots(pretrain_metrics(), tmp_path / "plots")
    assert [p.name for p in written] == ["losses.png", "learning_rate.png", "throughput.png", "grad_norm.png"]
    for path in written:
        assert png_size(path) == EXPECTED_SIZE


def test_plots_skip_absent_series(tmp_path: Path) -> None:
    train_only = [{"step": s, "tokens": s * 10, "loss": 3.0 - 0.1 * s} for s in range(1, 6)]
    written = plots(train_only, tmp_path)
    assert [p.name for p in written] == ["losses.png"]
    import matplotlib.image

    assert matplotlib.image.imread(written[0]).shape[:2] == (EXPECTED_SIZE[1], EXPECTED_SIZE[0])


def test_report_md_has_the_figures_and_settings(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", pretrain_metrics(), RUN_CONFIG)
    path = write_report(run, extra={"note": "synthetic", "parameters": 1234567})
    assert path == run / "report.md"
    text = path.read_text()
    assert "| steps | 20 |" in text
    assert "| tokens | 81,920 |" in text
    assert "| final train loss | 4.0000 |" in text
    assert "| best validation loss | 4.1000 |" in text
    assert "| final validation loss | 4.1000 |" in text
    assert "| validation perplexity | 60.34 |" in text
    assert "| validation bits per byte | 1.3667 |" in text
    assert "| mean tokens/s | 2,000 |" in text  # the first (warm-up) window is left out
    assert "| mean MFU | 25.0% |" in text
    assert "| wall time | 10.1 s |" in text
    assert "| note | synthetic |" in text and "| parameters | 1,234,567 |" in text
    # The newest checkpoint's settings.
    assert "step_0000020" in text and "| train.max_steps | 2000 |" in text and "| model.n_layer | 4 |" in text
    for name in ("losses.png", "learning_rate.png", "throughput.png", "grad_norm.png"):
        assert f"]({name})" in text
        assert png_size(run / name) == EXPECTED_SIZE


def test_report_html_is_self_contained(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", pretrain_metrics(), RUN_CONFIG)
    html = (write_report(run).parent / "report.html").read_text()
    assert "http://" not in html and "https://" not in html
    assert html.count("data:image/png;base64,") == 4
    assert "<style>" in html and "<link" not in html and "<script" not in html
    assert "<td>final train loss</td><td>4.0000</td>" in html


def test_report_without_val_or_checkpoints(tmp_path: Path) -> None:
    records = [r for r in pretrain_metrics() if "loss" in r]
    run = make_run(tmp_path / "run", records)
    text = write_report(run, out_dir=tmp_path / "out").read_text()
    assert "validation" not in text and "Settings" not in text
    assert (tmp_path / "out" / "report.html").is_file() and not (run / "report.md").exists()


def test_finetune_val_figures_are_reported(tmp_path: Path) -> None:
    records = [{"step": 1, "tokens": 100, "loss": 0.7, "lr": 1e-4}, {"step": 1, "tokens": 100, "val_loss": 0.6, "val_accuracy": 0.75, "val_macro_f1": 0.7}]
    text = write_report(make_run(tmp_path / "run", records)).read_text()
    assert "| validation accuracy | 0.7500 |" in text and "| validation macro f1 | 0.7000 |" in text


def test_compare_two_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = make_run(tmp_path / "small", pretrain_metrics())
    b = make_run(tmp_path / "large", pretrain_metrics(steps=10, scale=0.9))
    legends: dict[str, list[str]] = {}
    save = report._save

    def recording_save(figure: Any, path: Path) -> Path:
        legends[path.name] = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
        return save(figure, path)

    monkeypatch.setattr(report, "_save", recording_save)
    path = compare_runs([a, b], tmp_path / "compare")
    assert legends == {"compare_train_loss.png": ["small", "large"], "compare_val_loss.png": ["small", "large"]}
    for name in legends:
        assert png_size(tmp_path / "compare" / name) == EXPECTED_SIZE
    text = path.read_text()
    assert "|  | small | large |" in text
    assert "| steps | 20 | 10 |" in text
    assert "| final train loss | 4.0000 | 4.5000 |" in text
    html = (path.parent / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and "https://" not in html


def test_compare_labels_tell_same_named_runs_apart(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a" / "train", pretrain_metrics())
    b = make_run(tmp_path / "b" / "train", pretrain_metrics())
    assert report.run_labels([a, b]) == ["a/train", "b/train"]


def test_run_without_metrics(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    with pytest.raises(UserError, match=r"has no metrics.jsonl"):
        write_report(tmp_path / "run")
    with pytest.raises(UserError, match=r"is not a directory"):
        write_report(tmp_path / "missing")


def test_empty_metrics(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("\n")
    with pytest.raises(UserError, match=r"metrics.jsonl is empty"):
        write_report(run)


def test_corrupt_metrics_names_the_line(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", pretrain_metrics(steps=2))
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "loss": 1.0\n')
    with pytest.raises(UserError, match=r"metrics.jsonl line 3 is not valid JSON"):
        write_report(run)
    (run / "metrics.jsonl").write_text('{"step": 1}\n[1, 2]\n')
    with pytest.raises(UserError, match=r"line 2 is not a metrics record"):
        compare_runs([run], tmp_path / "out")


def test_out_dir_that_is_a_file(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", pretrain_metrics(steps=2))
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=r"is a file, not a directory"):
        write_report(run, out_dir=tmp_path / "file")
    with pytest.raises(UserError, match=r"is a file, not a directory"):
        compare_runs([run, run], tmp_path / "file")


def test_errors_are_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(UserError) as caught:
        write_report(tmp_path / "missing")
    message = str(caught.value)
    assert "\n" not in message and message.endswith(".") and message.count(". ") == 0


def test_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = typer.Typer()
    app.command()(report_command)
    runner = CliRunner()
    a = make_run(tmp_path / "a", pretrain_metrics())
    make_run(tmp_path / "b", pretrain_metrics(steps=10))
    result = runner.invoke(app, [str(a)])
    assert result.exit_code == 0, result.output
    assert result.output.split() == [str(a / "report.md"), str(a / "report.html")]
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["a", "b"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "runs" / "compare" / "report.html").is_file()
    result = runner.invoke(app, ["--help"])
    assert "Examples" in result.output
