#!/usr/bin/env python3
"""Recipe: S4M or SepFormer separation on Libri2Mix / Libri3Mix.

Noisy (``--mixture both``, default), clean or single-speaker mixtures.

The model is chosen by the hparams file (one flag apart)::

    python train.py hparams/s4m_tiny.yaml --data_folder /yourpath/Libri2Mix
    python train.py hparams/s4m.yaml --data_folder /yourpath/Libri2Mix
    python train.py hparams/sepformer.yaml --data_folder /yourpath/Libri2Mix

Multi-GPU (DDP): ``torchrun --nproc_per_node=4 train.py hparams/s4m.yaml
--data_folder ...``. Evaluate a trained experiment again: add ``--test_only``.
The shared logic (data preparation, training, evaluation) is
:func:`speechbrain_s4m.recipe.run_recipe`; the dataset is the one the
hparams file names (its ``dataset`` key).
"""

from speechbrain_s4m.recipe import main

if __name__ == "__main__":
    main()
