"""Multi-process (DDP) training: replicas must stay identical.

SpeechBrain's own separation recipes call the unwrapped modules
(``self.hparams.MaskNet``), so under ``torchrun`` each replica trains alone
and the copies drift apart. Here two CPU processes (gloo backend) train the
WSJ0-2mix recipe on different halves of the data; after every training
epoch each rank saves its parameters, and the test checks that the ranks
hold identical parameters which differ from the initial ones.
"""

import json
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
    from speechbrain_s4m.separation import Separation

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
        cmd, env=env, capture_output=True, text=True, cwd=tmp_path, timeout=600
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]

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
