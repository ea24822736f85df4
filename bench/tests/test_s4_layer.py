"""Tests of the one-S4-layer benchmark (``bench/s4_layer.py``)."""

import json

import pytest
import s4_layer
import torch


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs no CUDA")
def test_cuda_without_cuda_is_a_clear_error(capsys):
    assert s4_layer.main(["--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_tiny_case_runs_in_a_worker_process(tmp_path, capsys):
    out = tmp_path / "s4.json"
    argv = ["--modes", "s4d", "--lengths", "64", "--d-model", "4"]
    assert s4_layer.main(argv + ["--threads", "1", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["results"]
    assert row["mode"] == "s4d" and row["fwd_ms"] > 0 and row["allocator"]
    assert "| s4d | fp32 | 64 |" in capsys.readouterr().out
