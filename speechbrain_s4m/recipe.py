"""The recipe runner: everything a recipe's ``train.py`` does.

:func:`run_recipe` parses the command line, loads the hparams (the yaml
names the dataset), prepares the data, builds the datasets (static or
dynamic mixing), trains the :class:`~speechbrain_s4m.separation.Separation`
Brain, evaluates the best checkpoint and plots the training curve, so that
the recipes stay a few lines long; :func:`main` is its command-line entry.
Data flows one way: ``train.py`` -> this runner -> the Brain -> the
separator -> the loss.

Authors
 * speechbrain-s4m contributors 2026
"""

import os
import sys

import speechbrain as sb
import torch
from speechbrain.utils.distributed import (
    if_main_process,
    is_distributed_initialized,
    run_on_main,
)
from speechbrain.utils.logger import get_logger

from speechbrain_s4m.config import load_hparams
from speechbrain_s4m.separation import NoCheckpointError, Separation
from speechbrain_s4m.training_curve import plot_training_curve

logger = get_logger(__name__)

__all__ = [
    "PREPARE_KEYS",
    "dynamic_mixing_train_set",
    "main",
    "prepare_data",
    "run_recipe",
]

#: hparams passed to each dataset's preparation function (when present).
PREPARE_KEYS = {
    "wsj0mix": ("num_spks", "sample_rate", "mode"),
    "librimix": ("num_spks", "sample_rate", "mode", "mixture", "train_set"),
    "wham": ("num_spks", "sample_rate", "mode", "mixture"),
}


def prepare_data(hparams, dataset=None):
    """Checks ``data_folder`` and writes the manifests (main process only).

    Arguments
    ---------
    hparams : dict
        The recipe's hyperparameters (``data_folder``, ``save_folder``,
        ``skip_prep`` and the dataset's options).
    dataset : str, None
        ``wsj0mix``, ``librimix`` or ``wham``; default: the hparams key
        ``dataset``.
    """
    from speechbrain_s4m.data import prepare_dataset

    if hparams.get("skip_prep", False):
        return
    dataset = dataset or hparams["dataset"]
    kwargs = {k: hparams[k] for k in PREPARE_KEYS[dataset] if k in hparams}
    run_on_main(
        prepare_dataset,
        args=[dataset, hparams["data_folder"], hparams["save_folder"]],
        kwargs=kwargs,
    )


def _dataset_of(hparams, hparams_file, dataset=None):
    """The dataset the hparams file names (its ``dataset`` key).

    ``dataset``, from callers written when recipes also named it, must
    agree with the file.
    """
    named = hparams.get("dataset")
    if named not in PREPARE_KEYS:
        raise ValueError(
            f"{hparams_file} must name its dataset (key 'dataset', got "
            f"{named!r}); choose one of " + ", ".join(PREPARE_KEYS)
        )
    if dataset is not None and dataset != named:
        raise ValueError(
            f"{hparams_file} is for dataset {named!r}, but this recipe is "
            f"for {dataset!r}: use the hparams of this recipe."
        )
    return named


def run_recipe(argv=None, dataset=None, before_prepare=None, brain_class=None):
    """Runs a separation recipe: what every recipe's ``train.py`` does.

    1. parse ``argv`` (``hparams.yaml --key value ...`` plus SpeechBrain's
       run options: ``--device``, ``--precision``, ``--test_only``,
       ``--distributed_backend``, ``--debug`` ...) and load the hparams
       (override keys are checked, also inside included model fragments);
    2. initialise DDP when launched with ``torchrun``;
    3. create the output folder (``hyperparams.yaml``, ``log.txt``);
    4. check the dataset folder and write the manifests (main process);
    5. build the datasets (static or dynamic mixing);
    6. train (unless ``--test_only``), resuming from the last checkpoint;
    7. evaluate the best checkpoint (``min_key="si-snr"``) on the test set,
       writing ``test_results.csv``, and plot ``training_curve.png``;
    8. under DDP, end the process group (all ranks together).

    Arguments
    ---------
    argv : list of str, None
        Command-line arguments (default ``sys.argv[1:]``).
    dataset : str, None
        Kept for callers that name the dataset: the hparams key
        ``dataset`` names it, and a different value here is an error.
    before_prepare : callable, None
        Called as ``before_prepare(hparams)`` on the main process before
        data preparation (the SynthMix recipe writes its data there).
    brain_class : type, None
        A subclass of :class:`Separation` to use instead.

    Returns
    -------
    Separation
        The brain, with ``test_summary`` (the ``avg`` row of the results)
        and ``datasets`` (``{"train": ..., "valid": ..., "test": ...}``).
    """
    from speechbrain_s4m.data.dataio import datasets_from_hparams

    argv = sys.argv[1:] if argv is None else list(argv)
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    hparams = load_hparams(hparams_file, overrides)
    dataset = _dataset_of(hparams, hparams_file, dataset)

    sb.utils.distributed.ddp_init_group(run_opts)
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    _resolve_precision(hparams, run_opts)

    if hparams.get("dynamic_mixing", False):
        _check_dynamic_mixing_folders(hparams)

    if before_prepare is not None:
        run_on_main(before_prepare, args=[hparams])
    prepare_data(hparams, dataset)
    train_data, valid_data, test_data = datasets_from_hparams(hparams)
    if hparams.get("dynamic_mixing", False):
        train_data = dynamic_mixing_train_set(hparams, dataset, len(train_data))

    brain = (brain_class or Separation)(
        modules=hparams["modules"],
        opt_class=hparams["optimizer"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    brain.datasets = {
        "train": train_data,
        "valid": valid_data,
        "test": test_data,
    }
    loader_opts = dict(hparams["dataloader_opts"])
    train_opts = dict(loader_opts)
    if hparams.get("sorting", "random") == "random" and not isinstance(
        train_data, torch.utils.data.IterableDataset
    ):
        train_opts["shuffle"] = True
    brain.fit(
        brain.hparams.epoch_counter,
        train_data,
        valid_data,
        train_loader_kwargs=train_opts,
        valid_loader_kwargs=loader_opts,
    )
    test_opts = dict(hparams.get("test_dataloader_opts", loader_opts))
    brain.evaluate(test_data, min_key="si-snr", test_loader_kwargs=test_opts)

    if if_main_process():
        png = plot_training_curve(
            hparams["train_log"],
            os.path.join(hparams["output_folder"], "training_curve.png"),
            title=hparams.get("experiment_name"),
        )
        if png:
            logger.info("Training curve: %s", png)
    if is_distributed_initialized():
        # Leave together; exiting with a live gloo group can abort a rank
        sb.utils.distributed.ddp_barrier()
        torch.distributed.destroy_process_group()
    return brain


def _noisy(hparams):
    """Whether the mixtures hold noise (WHAM!/LibriMix ``both``/``single``)."""
    return hparams.get("mixture") in ("both", "single")


def _check_dynamic_mixing_folders(hparams):
    """Fails before any work if a dynamic-mixing folder is missing."""
    from speechbrain_s4m.data import DatasetLayoutError

    needed = {"base_folder_dm": "the single-speaker source folder"}
    if _noisy(hparams):
        needed["noise_folder_dm"] = "the noise folder (noisy mixtures)"
    for key, what in needed.items():
        folder = hparams.get(key)
        if not folder or not os.path.isdir(folder):
            raise DatasetLayoutError(
                f"--dynamic_mixing needs --{key} pointing at {what}; got "
                f"{folder!r}, which is not a folder."
            )


def dynamic_mixing_train_set(hparams, dataset=None, num_mixtures=None):
    """The training set of dynamic mixing: new mixtures every epoch from the
    single-speaker sources in ``base_folder_dm`` (wsj0 ``si_tr_s`` for
    WSJ0-mix and WHAM!, LibriSpeech for LibriMix), plus noise from
    ``noise_folder_dm`` for noisy mixtures.

    Arguments
    ---------
    hparams : dict
        The recipe's hyperparameters.
    dataset : str, None
        ``wsj0mix``, ``librimix`` or ``wham``; default: the hparams key
        ``dataset``.
    num_mixtures : int, None
        Mixtures per epoch (the size of the static training set); None:
        number of source utterances // ``num_spks``.

    Returns
    -------
    DynamicItemDataset
        Items ``{"id", "mix_sig", "s1_sig", ...[, "noise_sig"]}``, cropped
        as the static training set (``training_signal_len``).
    """
    from speechbrain_s4m.data.dataio import (
        dynamic_mixing_dataset,
        training_crop_len,
    )

    dataset = dataset or hparams["dataset"]
    return dynamic_mixing_dataset(
        hparams["base_folder_dm"],
        num_spks=hparams["num_spks"],
        sample_rate=hparams["sample_rate"],
        training_signal_len=training_crop_len(hparams),
        source_format="librispeech" if dataset == "librimix" else "wsj0",
        noise_folder=hparams.get("noise_folder_dm")
        if _noisy(hparams)
        else None,
        num_mixtures=num_mixtures,
    )


def main(dataset=None, argv=None, before_prepare=None, brain_class=None):
    """Command-line entry of the recipes: :func:`run_recipe`, with a one-line
    error (exit status 2) for a wrong dataset folder or a missing
    checkpoint instead of a traceback.

    Arguments
    ---------
    dataset : str, None
        See :func:`run_recipe` (the hparams file names the dataset).
    argv : list of str, None
        See :func:`run_recipe`.
    before_prepare : callable, None
        See :func:`run_recipe`.
    brain_class : type, None
        See :func:`run_recipe`.

    Returns
    -------
    Separation
        The brain.
    """
    from speechbrain_s4m.data import DatasetLayoutError

    try:
        return run_recipe(argv, dataset, before_prepare, brain_class)
    except (DatasetLayoutError, NoCheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def _resolve_precision(hparams, run_opts):
    """fp16 on a CPU becomes bf16 (as in SpeechBrain's recipes)."""
    device = run_opts.get("device") or sb.utils.distributed.infer_device()
    on_cli = "precision" in run_opts.overridden_args
    precision = run_opts.precision if on_cli else hparams.get("precision")
    if str(device).startswith("cpu") and precision == "fp16":
        logger.warning("fp16 is not supported on CPU: using bf16 instead.")
        hparams["precision"] = "bf16"
        if on_cli:
            run_opts.precision = "bf16"
