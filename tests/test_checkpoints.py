"""Corrupt checkpoints and a missing device: one line, non-zero exit.

A truncated or overwritten file in a ``CKPT+*`` folder is named (with what
to do) when a training run resumes, when the Brain recovers by itself, and
when ``s4m-export`` reads it; ``--device cuda`` without CUDA stops before
any work.
"""

import shutil
from pathlib import Path

import pytest
import torch
from conftest import recipe_args
from test_brain import fit, items, make_brain
from test_inference import make_recipe_folder

from speechbrain_s4m.checkpoints import (
    CorruptCheckpointError,
    check_checkpoint_files,
    latest_checkpoint,
)
from speechbrain_s4m.cli import export_main
from speechbrain_s4m.recipe import main


def truncate(path):
    """Cuts ``path`` in half (a copy or a write that stopped)."""
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def garble(path):
    """Overwrites ``path`` with bytes that are neither torch nor text."""
    path.write_bytes(bytes(range(256)) * 4)


CORRUPTIONS = {
    "masknet-truncated": ("masknet.ckpt", truncate),
    "optimizer-garbage": ("optimizer.ckpt", garble),
    "brain-empty": ("brain.ckpt", lambda p: p.write_bytes(b"")),
}


@pytest.mark.parametrize("case", CORRUPTIONS)
def test_resume_from_a_corrupt_checkpoint_is_one_line(
    case, tiny_recipe_output, tiny_datasets, tmp_path, capsys
):
    out = tmp_path / "out"
    shutil.copytree(tiny_recipe_output, out)
    ckpt = Path(latest_checkpoint(out / "save"))
    name, corrupt = CORRUPTIONS[case]
    corrupt(ckpt / name)
    args = recipe_args(
        "WSJ0Mix", "s4m_tiny", tiny_datasets["wsj0mix"], out, "--N_epochs", "2"
    )
    with pytest.raises(SystemExit) as exc:
        main(argv=args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(
        f"error: {ckpt / name}: corrupt checkpoint file ("
    ), lines
    assert "delete that checkpoint folder" in lines[0]


def test_brain_names_the_corrupt_file_of_the_checkpoint_it_resumes(tmp_path):
    """The Brain used without the recipe runner: its own check, before
    SpeechBrain's recovery (``fit``) and before evaluation."""
    from speechbrain.utils.checkpoints import Checkpointer

    def brain():
        b = make_brain(tmp_path, epochs=2)
        b.checkpointer = Checkpointer(
            tmp_path / "save",
            recoverables={
                **b.modules,
                "brain": b,
                "counter": b.hparams.epoch_counter,
            },
        )
        return b

    first = brain()
    first.hparams.epoch_counter.limit = 1
    fit(first, items(2))
    ckpt = first.checkpointer.find_checkpoint().path
    truncate(ckpt / "optimizer.ckpt")
    with pytest.raises(CorruptCheckpointError, match="optimizer.ckpt"):
        fit(brain(), items(2))
    with pytest.raises(CorruptCheckpointError, match="optimizer.ckpt"):
        brain().evaluate(
            [], min_key="si-snr", test_loader_kwargs={"batch_size": 1}
        )


def test_export_of_a_corrupt_checkpoint_names_the_file(tmp_path, capsys):
    recipe = make_recipe_folder(tmp_path / "recipe")
    ckpt = sorted((recipe / "save").glob("CKPT+*"))[0]
    garble(ckpt / "masknet.ckpt")
    target = tmp_path / "model"
    rc = export_main([str(recipe), str(target), "--checkpoint", str(ckpt)])
    assert rc == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert f"{ckpt / 'masknet.ckpt'}: corrupt checkpoint file (" in err
    assert "export another checkpoint" in err
    assert not target.exists()


def test_readable_checkpoint_files_pass(tmp_path):
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "m.ckpt")
    torch.save({"state": {}, "param_groups": []}, tmp_path / "o.ckpt")
    (tmp_path / "brain.ckpt").write_text("step: 3\navg_train_loss: 0.5\n")
    (tmp_path / "dataloader-TRAIN.ckpt").write_text("None")
    (tmp_path / "CKPT.yaml").write_text("end-of-epoch: false\n")
    check_checkpoint_files(tmp_path)
    with pytest.raises(CorruptCheckpointError, match="x.ckpt: .*missing"):
        check_checkpoint_files(tmp_path, ["m", "x"])


def test_cuda_without_cuda_is_one_line_before_any_work(
    tiny_datasets, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "out"
    args = recipe_args(
        "WSJ0Mix", "s4m_tiny", tiny_datasets["wsj0mix"], out, "--device", "cuda"
    )
    with pytest.raises(SystemExit) as exc:
        main(argv=args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --device cuda: no CUDA device is available")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "use --device cpu" in err
    assert not out.exists()


def test_latest_checkpoint_of_an_empty_folder_is_none(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    assert latest_checkpoint(tmp_path / "none") is None
