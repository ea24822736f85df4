"""The recipe runner: everything a recipe's ``train.py`` does
(:func:`run_recipe`; :func:`main` is its command-line entry)."""

import dataclasses
import math
import os
import shlex
import signal
import sys

import speechbrain as sb
import torch
from speechbrain.utils.distributed import (
    if_main_process,
    is_distributed_initialized,
    run_on_main,
)
from speechbrain.utils.logger import get_logger

from speechbrain_s4m.brain import NoCheckpointError, Separation
from speechbrain_s4m.checkpoints import (
    CheckpointMismatchError,
    CorruptCheckpointError,
    check_checkpoint_files,
    check_model_matches_checkpoint,
    latest_checkpoint,
)
from speechbrain_s4m.config import (
    GluedValueError,
    UnknownOverrideError,
    check_glued_values,
    load_hparams,
)
from speechbrain_s4m.nnet.schedulers import WarmupDecayScheduler
from speechbrain_s4m.training.signals import TrainingInterrupted
from speechbrain_s4m.training_curve import plot_training_curve

logger = get_logger(__name__)


class DeviceUnavailableError(ValueError):
    """The ``--device`` asked for does not exist on this machine."""


#: hparams passed to each dataset's preparation function (when present).
PREPARE_KEYS = {
    "wsj0mix": ("num_spks", "sample_rate", "mode"),
    "librimix": ("num_spks", "sample_rate", "mode", "mixture", "train_set"),
    "wham": ("num_spks", "sample_rate", "mode", "mixture"),
}


def prepare_data(hparams):
    """Checks ``data_folder`` and writes the manifests of the hparams'
    ``dataset`` (main process only; nothing with ``skip_prep``)."""
    from speechbrain_s4m.data import prepare_dataset

    if hparams.get("skip_prep", False):
        return
    dataset = hparams["dataset"]
    kwargs = {k: hparams[k] for k in PREPARE_KEYS[dataset] if k in hparams}
    run_on_main(
        prepare_dataset,
        args=[dataset, hparams["data_folder"], hparams["save_folder"]],
        kwargs=kwargs,
    )


def run_recipe(argv=None, before_prepare=None, brain_class=None):
    """Runs a separation recipe: parses and checks ``argv``, initialises
    DDP under ``torchrun``, checks a trained run's checkpoints (keeping its
    ``hyperparams.yaml``), prepares the data, trains (resuming; not with
    ``--test_only``), evaluates the best checkpoint, plots the curve.

    Arguments
    ---------
    argv : list of str, None
        Command-line arguments (default ``sys.argv[1:]``).
    before_prepare : callable, None
        ``before_prepare(hparams)``, on the main process before preparation.
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
    check_glued_values(argv)
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    check_device(run_opts["device"])
    hparams = load_hparams(hparams_file, overrides)
    dataset = hparams.get("dataset")
    if dataset not in PREPARE_KEYS:
        raise ValueError(
            f"{hparams_file} must name its dataset (key 'dataset', got "
            f"{dataset!r}); choose one of " + ", ".join(PREPARE_KEYS)
        )
    _one_checkpoint_interval(hparams, run_opts)

    sb.utils.distributed.ddp_init_group(run_opts)
    # A trained (or resumed) run in this folder: its files must read, its
    # model must be this one, and its record (hyperparams.yaml) stays
    ckpt = latest_checkpoint(hparams["save_folder"])
    record = os.path.join(hparams["output_folder"], "hyperparams.yaml")
    if ckpt is not None:
        check_checkpoint_files(ckpt)
        check_model_matches_checkpoint(hparams, ckpt, record)
    elif _run_option(hparams, run_opts, "test_only"):
        raise NoCheckpointError(
            f"No checkpoint to evaluate in '{hparams['save_folder']}': "
            "train first (without --test_only), or point --output_folder "
            "at a trained experiment."
        )
    keep_record = ckpt is not None and os.path.isfile(record)
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=None if keep_record else hparams_file,
        overrides=overrides,
    )
    if keep_record:
        logger.info(
            "Trained run found (%s): keeping its record %s; this run's "
            "overrides: %s",
            ckpt,
            record,
            " ".join(overrides.split("\n")) if overrides else "none",
        )
    run_opts = _resolve_precision(hparams, run_opts)

    if hparams.get("dynamic_mixing", False):
        _check_dynamic_mixing_folders(hparams)
    if before_prepare is not None:
        run_on_main(before_prepare, args=[hparams])
    prepare_data(hparams)
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
    brain.validates = valid_data is not None
    brain.batches_per_epoch = math.ceil(
        len(train_data)
        / loader_opts.get("batch_size", 1)
        / max(1, int(os.environ.get("WORLD_SIZE", "1")))
    )
    _set_schedule_length(brain, hparams)
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
    _leave_process_group()
    return brain


def _set_schedule_length(brain, hparams):
    """A per-update schedule without ``total_updates`` ends at this run's
    last update: epochs x optimizer updates per epoch."""
    scheduler = hparams.get("lr_scheduler")
    if not isinstance(scheduler, WarmupDecayScheduler):
        return
    if scheduler.total_updates is None:
        per_epoch = math.ceil(
            brain.batches_per_epoch / brain.grad_accumulation_factor
        )
        scheduler.set_total_updates(per_epoch * hparams["epoch_counter"].limit)
    logger.info(
        "Learning rate: %s, %d warm-up updates, %s decay to %g of the peak "
        "at update %d",
        type(scheduler).__name__,
        scheduler.warmup_updates,
        scheduler.decay,
        scheduler.final_factor,
        scheduler.total_updates,
    )


def _check_dynamic_mixing_folders(hparams):
    """Fails before any work if a dynamic-mixing folder is missing."""
    from speechbrain_s4m.data import DatasetLayoutError

    needed = {"base_folder_dm": "the single-speaker source folder"}
    if hparams.get("mixture") in ("both", "single"):  # noisy mixtures
        needed["noise_folder_dm"] = "the noise folder (noisy mixtures)"
    for key, what in needed.items():
        folder = hparams.get(key)
        if not folder or not os.path.isdir(folder):
            raise DatasetLayoutError(
                f"--dynamic_mixing needs --{key} pointing at {what}; got "
                f"{folder!r}, which is not a folder."
            )


def dynamic_mixing_train_set(hparams, dataset=None, num_mixtures=None):
    """The dynamic-mixing training set: new mixtures of the sources in
    ``base_folder_dm`` (+ ``noise_folder_dm``) every epoch, ``num_mixtures``
    of them (None: source utterances // ``num_spks``)."""
    from speechbrain_s4m.data.dataio import training_crop_len
    from speechbrain_s4m.data.dynamic_mixing import dynamic_mixing_dataset

    dataset = dataset or hparams["dataset"]
    noisy = hparams.get("mixture") in ("both", "single")
    return dynamic_mixing_dataset(
        hparams["base_folder_dm"],
        num_spks=hparams["num_spks"],
        sample_rate=hparams["sample_rate"],
        training_signal_len=training_crop_len(hparams),
        source_format="librispeech" if dataset == "librimix" else "wsj0",
        noise_folder=hparams.get("noise_folder_dm") if noisy else None,
        num_mixtures=num_mixtures,
    )


def main(argv=None, before_prepare=None, brain_class=None):
    """Command-line entry: :func:`run_recipe`, with one-line errors (exit
    status 2) for the user's mistakes; a signal exits with ``128 + signal``
    and says how to resume."""
    from speechbrain_s4m.data import DatasetLayoutError

    try:
        return run_recipe(argv, before_prepare, brain_class)
    except (
        DatasetLayoutError,
        NoCheckpointError,
        UnknownOverrideError,
        CheckpointMismatchError,
        CorruptCheckpointError,
        DeviceUnavailableError,
        GluedValueError,
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except TrainingInterrupted as e:
        # Printed before leaving the group: torchrun ends the other ranks
        # as soon as one exits, and rank 0 must have said how to resume
        if if_main_process():
            what = "it" if e.checkpoint else "the last checkpoint (if any)"
            print(
                f"stopped by {e}; rerun the same command to resume from "
                f"{what}: {_command(argv)}",
                file=sys.stderr,
            )
        _leave_process_group()
        sys.exit(e.exit_status)
    except KeyboardInterrupt:
        # Ctrl-C outside training (preparation, test): nothing to save
        print(
            "stopped (SIGINT) outside training; rerun the same command to "
            f"continue: {_command(argv)}",
            file=sys.stderr,
        )
        sys.exit(128 + signal.SIGINT)


def _command(argv):
    """The command line that ran this recipe (to rerun it)."""
    words = sys.argv if argv is None else [sys.argv[0], *argv]
    # Under torchrun each rank only sees its script's arguments
    launcher = (
        "torchrun <its options> "
        if "TORCHELASTIC_RUN_ID" in os.environ
        else "python "
    )
    return launcher + shlex.join(str(w) for w in words)


def _leave_process_group():
    """Ends DDP's process group, all ranks together (a live gloo group at
    exit can abort a rank)."""
    if is_distributed_initialized():
        sb.utils.distributed.ddp_barrier()
        torch.distributed.destroy_process_group()


def check_device(device):
    """Raises :class:`DeviceUnavailableError` (one line) if ``device``
    (``cpu``, ``cuda``, ``cuda:N``) is not on this machine."""
    device = str(device or "cpu")
    if not device.startswith("cuda"):
        return
    if not torch.cuda.is_available():
        build = torch.version.cuda
        raise DeviceUnavailableError(
            f"--device {device}: no CUDA device is available here (PyTorch "
            + (f"built for CUDA {build}" if build else "built without CUDA")
            + "); use --device cpu, or run on a machine with a GPU."
        )
    index = device.partition(":")[2]
    count = torch.cuda.device_count()
    if index and (not index.isdigit() or int(index) >= count):
        raise DeviceUnavailableError(
            f"--device {device}: this machine has {count} CUDA device(s) "
            f"(cuda:0 to cuda:{count - 1})."
        )


def _run_option(hparams, run_opts, key):
    """A run option as the Brain sees it: command line > hparams > default."""
    if key in run_opts.overridden_args:
        return run_opts[key]
    return hparams.get(key, run_opts.get(key))


def _one_checkpoint_interval(hparams, run_opts):
    """``--ckpt_interval_steps`` alone on the command line replaces the
    yaml's ``ckpt_interval_minutes``, and vice versa (SpeechBrain accepts
    only one of the two)."""
    keys = ("ckpt_interval_minutes", "ckpt_interval_steps")
    given = [k for k in keys if k in run_opts.overridden_args]
    if len(given) != 1 or not run_opts[given[0]] > 0:
        return
    other = keys[1 - keys.index(given[0])]
    if hparams.get(other, 0) > 0:
        logger.info(
            "--%s %s given: the hparams' %s (%s) is not used.",
            given[0],
            run_opts[given[0]],
            other,
            hparams[other],
        )
    hparams[other] = 0


def cpu_has_native_bf16(cpuinfo="/proc/cpuinfo"):
    """Whether ``cpuinfo`` lists native bf16 (x86 ``avx512_bf16`` /
    ``amx_bf16``, Arm ``bf16``); unreadable (macOS): False."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            flags.update(value.split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def cpu_precision(requested, native_bf16):
    """``(precision, reason)`` to train with on a CPU for the ``requested``
    one: fp16 / bf16 become bf16 with ``native_bf16``, else fp32 (fp16
    autocast does not run on CPUs; emulated bf16 is slow); ``reason`` says
    why it changed (None if it did not)."""
    if requested not in ("fp16", "bf16"):
        return requested, None
    if native_bf16:
        return "bf16", None if requested == "bf16" else (
            "fp16 requested on a CPU: fp16 autocast does not run on "
            "CPUs; using bf16 (this CPU has native bf16)."
        )
    return "fp32", (
        f"{requested} requested on a CPU without native bf16 (no "
        "avx512_bf16/amx_bf16): using fp32, as emulated bf16 matmuls run "
        "several times slower than fp32."
    )


def _resolve_precision(hparams, run_opts):
    """Applies :func:`cpu_precision` on a CPU (with a warning); returns the
    run options (a new object when changed: SpeechBrain's are frozen)."""
    device = run_opts.get("device") or sb.utils.distributed.infer_device()
    if not str(device).startswith("cpu"):
        return run_opts
    native = None
    for key in ("precision", "eval_precision"):
        on_cli = key in run_opts.overridden_args
        requested = run_opts[key] if on_cli else hparams.get(key)
        if requested not in ("fp16", "bf16"):
            continue
        if native is None:
            native = cpu_has_native_bf16()
        chosen, reason = cpu_precision(requested, native)
        if reason:
            logger.warning("--%s: %s", key, reason)
        hparams[key] = chosen
        if on_cli:
            run_opts = dataclasses.replace(run_opts, **{key: chosen})
    return run_opts
