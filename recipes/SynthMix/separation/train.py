#!/usr/bin/env python3
"""Recipe: S4M (or SepFormer) on SynthMix, a small synthetic dataset.

The "main job" that runs anywhere, on a CPU, without downloading anything::

    python recipes/SynthMix/separation/train.py \\
        recipes/SynthMix/separation/hparams/s4m_tiny.yaml

It first writes a small two-speaker dataset of procedural speech-like voices
in the WSJ0-2mix layout (``<data_folder>/wav8k/min/{tr,cv,tt}/{mix,s1,s2}``,
skipped when already written with the same options), then runs the WSJ0-2mix
recipe on it: training, evaluation on the test split (``test_results.csv``,
SI-SNRi in the log) and the training curve (``training_curve.png``).
"""

import json
from pathlib import Path

from speechbrain_s4m.data.synthetic import write_wsj0mix
from speechbrain_s4m.recipe import main


def write_synthmix(hparams):
    """Writes the synthetic dataset into ``data_folder`` unless it is there."""
    options = {
        "num_spks": hparams["num_spks"],
        "sample_rate": hparams["sample_rate"],
        "mode": hparams["mode"],
        "sizes": dict(hparams["synth_sizes"]),
        "duration": list(hparams["synth_duration"]),
        "num_speakers": hparams["synth_num_speakers"],
        "seed": hparams["synth_seed"],
    }
    marker = Path(hparams["data_folder"]) / "synthmix.json"
    if marker.is_file() and json.loads(marker.read_text()) == options:
        return
    write_wsj0mix(hparams["data_folder"], **options)
    marker.write_text(json.dumps(options, indent=2))


if __name__ == "__main__":
    main(before_prepare=write_synthmix)
