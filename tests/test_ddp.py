"""Multi-process (DDP) training: replicas must stay identical.

SpeechBrain's own separation recipes call the unwrapped modules
(``self.hparams.MaskNet``), so under ``torchrun`` each replica trains alone
and the copies drift apart. Here two CPU processes (gloo backend) train the
WSJ0-2mix recipe on different halves of the data; after every training
epoch each rank saves its parameters, and the test checks that the ranks
hold identical parameters which differ from the initial ones.
"""

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import recipe_args

DRIVER = textwrap.dedent(
    """
    import json, os, sys
    import torch
    import speechbrain as sb
    from torch.nn.parallel import DistributedDataParallel as DDP
    from speechbrain_s4m.recipe import run_recipe
    from speechbrain_s4m.brain import Separation

    OUT = os.environ["S4M_TEST_DDP_OUT"]
    RANK = int(os.environ["RANK"])

    def dump(brain, tag):
        state = {
            k: v.detach().double().cpu().clone()
            for k, v in brain.modules.state_dict().items()
        }
        torch.save(state, os.path.join(OUT, f"{tag}_rank{RANK}.pt"))

    class Recorder(Separation):
        seen_ids = []

        def on_fit_start(self):
            super().on_fit_start()
            assert all(isinstance(m, DDP) for m in self.modules.values())
            dump(self, "init")

        def fit_batch(self, batch):
            # the forward runs through the DDP-wrapped modules
            sep = self.separator
            assert all(
                getattr(sep, k) is self.modules[k] and isinstance(
                    getattr(sep, k), DDP
                )
                for k in ("encoder", "masknet", "decoder")
            )
            self.seen_ids.extend(batch.id)
            return super().fit_batch(batch)

        def on_stage_end(self, stage, stage_loss, epoch=None):
            if stage == sb.Stage.TRAIN:
                dump(self, f"epoch{epoch}")
            super().on_stage_end(stage, stage_loss, epoch)

    brain = run_recipe(sys.argv[1:], brain_class=Recorder)
    with open(os.path.join(OUT, f"ids_rank{RANK}.json"), "w") as f:
        json.dump(brain.seen_ids, f)
    """
)


def _torchrun_two_ranks(driver, args, dumps, cwd):
    """Runs ``driver`` with ``args`` on 2 gloo ranks (torchrun); the driver
    writes its records to ``dumps``. Fails the test on a non-zero exit."""
    env = dict(os.environ, S4M_TEST_DDP_OUT=str(dumps), OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(driver),
        *args,
    ]
    proc = subprocess.run(
        cmd, env=env, capture_output=True, text=True, cwd=cwd, timeout=600
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]


@pytest.mark.parametrize("model", ["s4m_tiny", "sepformer"])
def test_ddp_replicas_stay_identical(model, tmp_path):
    from speechbrain_s4m.data.synthetic import write_wsj0mix

    data = write_wsj0mix(
        tmp_path / "2speakers",
        sizes={"tr": 4, "cv": 2, "tt": 2},
        duration=(0.5, 0.5),
    )
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    args = recipe_args(
        "WSJ0Mix",
        model,
        data,
        tmp_path / "out",
        "--N_epochs",
        "2",
        "--distributed_backend",
        "gloo",
        # no loss thresholding: every batch must update the weights
        "--threshold_byloss",
        "False",
    )
    _torchrun_two_ranks(driver, args, dumps, tmp_path)

    # The two ranks trained on different mixtures (DistributedSampler) ...
    ids = [
        json.loads((dumps / f"ids_rank{r}.json").read_text()) for r in (0, 1)
    ]
    assert len(ids[0]) == len(ids[1]) == 4  # 2 batches x 2 epochs each
    assert set(ids[0][:2]).isdisjoint(ids[1][:2])

    # ... yet hold identical parameters after each epoch, which moved away
    # from the (identical) initial ones
    init = [torch.load(dumps / f"init_rank{r}.pt") for r in (0, 1)]
    for key in init[0]:
        assert torch.equal(init[0][key], init[1][key]), key
    for epoch in (1, 2):
        states = [
            torch.load(dumps / f"epoch{epoch}_rank{r}.pt") for r in (0, 1)
        ]
        assert states[0].keys() == init[0].keys()
        for key in states[0]:
            assert torch.equal(states[0][key], states[1][key]), (epoch, key)
        moved = [
            not torch.equal(states[0][k], init[0][k])
            for k in states[0]
            if states[0][k].is_floating_point()
        ]
        assert sum(moved) > len(moved) // 2

    # The main process wrote the results; the run finished normally
    rows = (tmp_path / "out" / "test_results.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[-1].startswith("avg,")


ACCUMULATION_DRIVER = textwrap.dedent(
    """
    import json, os, sys
    import torch
    import speechbrain as sb
    from speechbrain_s4m.recipe import run_recipe
    from speechbrain_s4m.brain import Separation

    OUT = os.environ["S4M_TEST_DDP_OUT"]
    RANK = int(os.environ["RANK"])

    def grads(brain):
        return {
            n: p.grad.detach().double().cpu().clone()
            for n, p in brain.modules.named_parameters()
            if p.grad is not None
        }

    def params(brain):
        return {
            n: p.detach().double().cpu().clone()
            for n, p in brain.modules.named_parameters()
        }

    class ForcedSkip(Separation):
        '''Rank 1 gets a non-finite loss on micro-batch 2 (the one that
        steps, with accumulation 2); rank 0 must skip it too.'''

        record = {"skipped": [], "steps": 0}

        def on_fit_start(self):
            super().on_fit_start()
            torch.save(params(self), os.path.join(OUT, f"init{RANK}.pt"))

        def fit_batch(self, batch):
            self._force = RANK == 1 and self.step == 2
            if self.step == 2:  # local gradients of micro-batch 1 (no_sync)
                torch.save(grads(self), os.path.join(OUT, f"local{RANK}.pt"))
            out = super().fit_batch(batch)
            self._force = False
            self.record["skipped"].append(self.skipped_batches)
            return out

        def compute_objectives(self, predictions, targets, lengths=None):
            loss = super().compute_objectives(predictions, targets, lengths)
            if getattr(self, "_force", False):
                loss = loss + float("nan")
            return loss

        def _optimizer_step(self):
            torch.save(grads(self), os.path.join(OUT, f"stepgrad{RANK}.pt"))
            self.record["steps"] += 1
            return super()._optimizer_step()

        def on_stage_end(self, stage, stage_loss, epoch=None):
            if stage == sb.Stage.TRAIN:
                torch.save(params(self), os.path.join(OUT, f"after{RANK}.pt"))
                self.record["train_loss"] = stage_loss
            super().on_stage_end(stage, stage_loss, epoch)

    brain = run_recipe(sys.argv[1:], brain_class=ForcedSkip)
    with open(os.path.join(OUT, f"record{RANK}.json"), "w") as f:
        json.dump(brain.record, f)
    """
)


def test_ddp_accumulation_with_skipped_stepping_batch(tmp_path):
    """Accumulation 2, thresholding on, a non-finite loss on one replica's
    stepping micro-batch: both replicas skip it (``_any_replica`` under a
    real process group), the gradients accumulated under ``no_sync`` are
    averaged over the replicas, and the replicas stay bit-identical."""
    from speechbrain_s4m.data.synthetic import write_wsj0mix

    data = write_wsj0mix(
        tmp_path / "2speakers",
        sizes={"tr": 4, "cv": 1, "tt": 1},
        duration=(0.5, 0.5),
    )
    driver = tmp_path / "driver.py"
    driver.write_text(ACCUMULATION_DRIVER)
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    args = recipe_args(
        "WSJ0Mix",
        "s4m_tiny",
        data,
        tmp_path / "out",
        "--distributed_backend",
        "gloo",
        "--grad_accumulation_factor",
        "2",
        "--threshold_byloss",
        "True",
        "--save_audio",
        "False",
    )
    _torchrun_two_ranks(driver, args, dumps, tmp_path)

    records = [
        json.loads((dumps / f"record{r}.json").read_text()) for r in (0, 1)
    ]
    # Both replicas skipped micro-batch 2 (rank 0 because rank 1 did), and
    # the train loss is the one of micro-batch 1, not halved by the skip
    for rec in records:
        assert rec["skipped"] == [0, 1]
        assert rec["steps"] == 1
        assert math.isfinite(rec["train_loss"])

    # The step used the replicas' mean of the accumulated gradients
    local = [torch.load(dumps / f"local{r}.pt") for r in (0, 1)]
    step = [torch.load(dumps / f"stepgrad{r}.pt") for r in (0, 1)]
    assert local[0].keys() == step[0].keys() == step[1].keys()
    differ = 0
    for key in local[0]:
        assert torch.equal(step[0][key], step[1][key]), key
        mean = (local[0][key] + local[1][key]) / 2
        torch.testing.assert_close(step[0][key], mean, rtol=1e-6, atol=1e-9)
        differ += not torch.equal(local[0][key], local[1][key])
    assert differ > len(local[0]) // 2  # the replicas saw different data

    # ... so the replicas hold bit-identical parameters, which moved
    init = torch.load(dumps / "init0.pt")
    after = [torch.load(dumps / f"after{r}.pt") for r in (0, 1)]
    for key in after[0]:
        assert torch.equal(after[0][key], after[1][key]), key
    assert sum(not torch.equal(after[0][k], init[k]) for k in init) > 0


SIGNAL_DRIVER = textwrap.dedent(
    """
    import os, sys
    from speechbrain_s4m.recipe import main

    dumps = os.environ["S4M_TEST_DDP_OUT"]
    with open(os.path.join(dumps, "pid" + os.environ["RANK"]), "w") as f:
        f.write(str(os.getpid()))
    main(argv=sys.argv[1:])
    """
)


def test_ddp_signal_on_one_rank_stops_every_rank_at_the_same_update(tmp_path):
    """SIGTERM to rank 1 only (a node preempted): both ranks finish the same
    update (the stop is all-reduced at every update boundary), rank 0 saves
    the checkpoint and prints the resume line, and nothing deadlocks."""
    import signal
    import time

    from conftest import REPO

    from speechbrain_s4m.data.synthetic import write_wsj0mix

    data = write_wsj0mix(
        tmp_path / "2speakers",
        sizes={"tr": 12, "cv": 2, "tt": 2},
        duration=(0.5, 0.5),
    )
    driver = tmp_path / "driver.py"
    driver.write_text(SIGNAL_DRIVER)
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    count_file = tmp_path / "calls.txt"
    out = tmp_path / "out"
    args = recipe_args(
        "WSJ0Mix",
        "s4m_tiny",
        data,
        out,
        "--distributed_backend",
        "gloo",
        "--loss",
        "!name:conftest.counting_loss",
    )
    env = dict(
        os.environ,
        S4M_TEST_DDP_OUT=str(dumps),
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(
            [str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]
        ),
        S4M_TEST_COUNT_FILE=str(count_file),
        S4M_TEST_SLEEP_S="0.3",
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(driver),
        *args,
    ]
    log = tmp_path / "log.txt"
    with open(log, "w") as flog:
        proc = subprocess.Popen(
            cmd, env=env, stdout=flog, stderr=subprocess.STDOUT, cwd=tmp_path
        )
        deadline = time.monotonic() + 300
        count = 0
        while count < 4 and proc.poll() is None:  # 2 batches per rank
            assert time.monotonic() < deadline, "training never started"
            time.sleep(0.05)
            if count_file.exists():
                count = len(count_file.read_text().split())
        os.kill(int((dumps / "pid1").read_text()), signal.SIGTERM)
        proc.wait(timeout=300)  # no deadlock
    text = log.read_text()
    assert proc.returncode != 0
    calls = len(count_file.read_text().split())
    assert calls % 2 == 0, "the ranks stopped after different updates"
    lines = [line for line in text.splitlines() if "rerun the same" in line]
    assert len(lines) == 1, text[-4000:]  # rank 0 only
    assert lines[0].startswith(
        f"stopped by SIGTERM at epoch 1, batch {calls // 2}/6: checkpoint "
        f"saved in {out / 'save' / 'CKPT+'}"
    ), lines
    assert (
        "; rerun the same command to resume from it: torchrun <its "
        in (lines[0])
    )
    saved = list((out / "save").glob("CKPT+*"))
    assert len(saved) == 1
    assert f"step: {calls // 2}\n" in (saved[0] / "brain.ckpt").read_text()
