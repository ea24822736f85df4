"""Results of a recipe run: :class:`TestReport` writes ``test_results.csv``,
:func:`read_test_results` reads it; :func:`load_result_folder` and
:func:`load_benchmark` read an output folder and a benchmark JSON.
"""

import csv
import json
import math
import os
import re

from hyperpyyaml import load_hyperpyyaml
from ruamel.yaml import YAML, YAMLError
from speechbrain.utils.logger import get_logger

from speechbrain_s4m.config import count_parameters
from speechbrain_s4m.metrics import average_scores, score_columns
from speechbrain_s4m.training_curve import parse_train_log

logger = get_logger(__name__)


#: Benchmark duration (seconds of audio) used by default.
DEFAULT_BENCH_SECONDS = 4.0
#: The results file of a recipe run, in its ``output_folder``.
RESULTS_FILE = "test_results.csv"
#: The last column of the results file: why cells of a row are empty.
NOTES_COLUMN = "notes"


class ResultsError(ValueError):
    """A result folder, results file or benchmark JSON that does not read."""


class TestReport:
    """The scores of a test run and their file, ``test_results.csv``.

    Columns: ``snt_id``, :func:`score_columns` and ``notes`` (why cells are
    empty); a row per utterance, then ``avg`` (each score where defined).
    SpeechBrain's recipes write it without ``notes`` (nor empty cells).

    Arguments
    ---------
    extra_metrics : tuple of str
        As in :func:`extra_metric_names`.
    """

    __test__ = False  # not a pytest test class despite its name

    def __init__(self, extra_metrics=()):
        self.extra_metrics = tuple(extra_metrics)
        self.scores = score_columns(self.extra_metrics)
        self.utterances = []

    @property
    def incomplete(self):
        """Ids of the utterances with an undefined metric."""
        return [u.snt_id for u in self.utterances if not u.complete]

    def add(self, utterances):
        """Adds :func:`score_test_batch`'s utterances (warns if incomplete)."""
        for utt in utterances:
            self.utterances.append(utt)
            if not utt.complete:
                logger.warning(
                    "Test utterance %s: some metrics are undefined (%s); "
                    "its row of %s has empty cells there.",
                    utt.snt_id,
                    "; ".join(utt.problems) or "non-finite value",
                    RESULTS_FILE,
                )

    def summary(self):
        """The ``avg`` row (NaN where unscored), ``n``, ``n_incomplete``."""
        avg, _ = average_scores(self.utterances, self.scores)
        out = {k: math.nan if avg[k] is None else avg[k] for k in self.scores}
        out.update(n=len(self.utterances), n_incomplete=len(self.incomplete))
        return out

    def write(self, path):
        """Writes the file, logs the averages, returns :meth:`summary`."""
        rows = [
            {**u.row(), NOTES_COLUMN: "; ".join(u.problems)}
            for u in self.utterances
        ]
        avg, n_scored = average_scores(self.utterances, self.scores)
        n, incomplete = len(self.utterances), self.incomplete
        note = "mean over the utterances where each metric is defined"
        if incomplete:
            note += f"; {len(incomplete)} of {n} utterances not fully scored"
        with open(path, "w", newline="", encoding="utf-8") as f:
            columns = ["snt_id", *self.scores, NOTES_COLUMN]
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows + [{**avg, NOTES_COLUMN: note}])
        logger.info("Test results written to %s", path)

        def fmt(key, unit=" dB"):
            value = avg.get(key)
            return "n/a" if value is None else f"{value:.2f}{unit}"

        text = (
            f"SI-SNR {fmt('si-snr')}, SI-SNRi {fmt('si-snr_i')}, "
            f"SDR {fmt('sdr')}, SDRi {fmt('sdr_i')}"
        )
        for name in self.extra_metrics:
            text += f", {name.upper()} {fmt(name, '')}"
            text += f" ({name.upper()}i {fmt(name + '_i', '')})"
        logger.info("Test (%d utterances): %s", n, text)
        if incomplete:
            more = len(incomplete) - 10
            logger.warning(
                "%d of %d test utterances could not be scored on every "
                "metric (%s%s): their empty cells are left out of the "
                "averages (scored per metric: %s).",
                len(incomplete),
                n,
                ", ".join(incomplete[:10]),
                f" and {more} more" if more > 0 else "",
                ", ".join(f"{k} {v}" for k, v in n_scored.items()),
            )
        return self.summary()


def read_test_results(path):
    """``(ids, columns)`` of a ``test_results.csv`` (ours or SpeechBrain's):
    the utterance ids (without ``avg``) and column -> floats (NaN: empty;
    text columns left out). :class:`ResultsError` if it is not one.
    """
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        rows = [r for r in reader if r.get("snt_id") != "avg"]
    if "snt_id" not in fields or "si-snr_i" not in fields:
        raise ResultsError(
            f"{path}: not a {RESULTS_FILE} (needs the columns snt_id and "
            f"si-snr_i; has {', '.join(fields) or 'none'})"
        )
    if not rows:
        raise ResultsError(f"{path}: no test utterance (only a header)")
    ids = [r["snt_id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise ResultsError(f"{path}: repeated utterance ids")
    columns = {}
    for key in fields:
        if key in ("snt_id", NOTES_COLUMN):
            continue
        try:  # an empty cell (unscored) is NaN
            columns[key] = [
                float((r.get(key) or "").strip() or "nan") for r in rows
            ]
        except ValueError:
            continue  # another text column
    return ids, columns


def read_train_log(path):
    """``{"epoch", "valid_si_snr" (dB), "time"}`` of a ``train_log.txt``."""
    curve = parse_train_log(path)
    return {
        "epoch": curve["epoch"],
        "valid_si_snr": [-v for v in curve["valid"]],
        "time": curve["time"],
    }


def model_description(hparams_text):
    """``{"hparams", "masknet", "experiment_name"}`` of a saved
    ``hyperparams.yaml`` text (None where not found)."""
    m = re.search(
        r"^# Generated .* from:\s*\n#\s*(\S+\.ya?ml)", hparams_text, re.M
    )
    stem = os.path.splitext(os.path.basename(m.group(1)))[0] if m else None
    try:
        hparams = YAML().load(hparams_text) or {}
    except YAMLError:
        hparams = {}
    if not hasattr(hparams, "get"):
        hparams = {}
    tag = getattr(getattr(hparams.get("MaskNet"), "tag", None), "value", "")
    name = hparams.get("experiment_name")
    return {
        "hparams": stem,
        "masknet": tag.rsplit(".", 1)[-1] if tag else None,
        "experiment_name": None if name is None else str(name),
    }


def hparams_parameters(hparams_file):
    """Parameters of the ``modules`` (or ``Encoder``, ``MaskNet``,
    ``Decoder``) of a saved ``hyperparams.yaml`` (without the checkpointer
    and train logger, which would touch their folders)."""
    with open(hparams_file, encoding="utf-8") as f:
        hparams = load_hyperpyyaml(
            f,
            {"checkpointer": None, "train_logger": None},
            overrides_must_match=False,
        )
    modules = hparams.get("modules") or {
        k: hparams[k] for k in ("Encoder", "MaskNet", "Decoder") if k in hparams
    }
    return count_parameters(*modules.values())


def _recorded_parameters(folder):
    """The (rounded) parameter count logged in ``log.txt``, or None."""
    path = os.path.join(folder, "log.txt")
    if not os.path.isfile(path):
        return None
    scale = {"": 1, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "B": 1e9}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = re.search(
                r"Total Number of Parameters: ([0-9.]+)\s*([kKMGB]?)", line
            )
            if m:
                return int(round(float(m.group(1)) * scale[m.group(2)]))
    return None


def load_result_folder(folder):
    """A recipe output folder as ``{folder, ids, scores,`` those of
    :func:`model_description`, ``log`` (or None), ``hparams_file}``;
    :class:`ResultsError` where a file is missing or malformed."""
    if not os.path.isdir(folder):
        raise ResultsError(f"{folder}: not a folder")
    results = os.path.join(folder, "test_results.csv")
    hparams_file = os.path.join(folder, "hyperparams.yaml")
    for path in (results, hparams_file):
        if not os.path.isfile(path):
            raise ResultsError(
                f"{folder}: no {os.path.basename(path)} (expected a recipe "
                "output folder: hyperparams.yaml, test_results.csv, "
                "train_log.txt)"
            )
    try:
        ids, scores = read_test_results(results)
    except ResultsError:
        raise  # names the file already
    except (ValueError, csv.Error) as err:
        raise ResultsError(f"{results}: {err}") from err
    with open(hparams_file, encoding="utf-8") as f:
        info = model_description(f.read())
    log = os.path.join(folder, "train_log.txt")
    return {
        "folder": folder,
        "ids": ids,
        "scores": scores,
        **info,
        "log": log if os.path.isfile(log) else None,
        "hparams_file": hparams_file,
    }


def add_parameters(result):
    """Sets ``params`` / ``params_source`` of a :func:`load_result_folder`
    result."""
    try:
        result["params"] = hparams_parameters(result["hparams_file"])
        result["params_source"] = "hyperparams.yaml"
    except Exception as err:  # any failure to build the model
        result["params"] = _recorded_parameters(result["folder"])
        result["params_source"] = (
            "log.txt (rounded)"
            if result["params"] is not None
            else f"n/a ({type(err).__name__})"
        )


def load_benchmark(path, seconds=DEFAULT_BENCH_SECONDS):
    """``{model: {"params", "gmac_per_s", "infer_s", "seconds", "device",
    "threads"}}`` (NaN where not measured) of a benchmark JSON, at the
    duration nearest to ``seconds``."""
    try:
        with open(path, encoding="utf-8") as f:
            bench = json.load(f)
        models = bench["models"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ResultsError(
            f"{path}: not a benchmark JSON ({type(err).__name__}: {err})"
        ) from err
    config = bench.get("config", {})
    out = {}
    for name, entry in models.items():
        macs, infer = entry.get("macs", {}), entry.get("infer", {})
        durations = set(macs) | set(infer)
        d = min(durations, key=lambda d: abs(float(d) - seconds), default=None)
        if d is None:
            continue
        total = macs.get(d, {}).get("total")
        median = infer.get(d, {}).get("median")
        out[name] = {
            "params": entry.get("params"),
            "seconds": float(d),
            "gmac_per_s": total / float(d) / 1e9 if total else math.nan,
            "infer_s": float(median) if median is not None else math.nan,
            "device": config.get("device"),
            "threads": config.get("threads"),
        }
    return out
