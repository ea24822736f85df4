"""Command-line tools: ``s4m-separate`` and ``s4m-export``.

``s4m-separate`` separates files (or every audio file of a folder) with a
pretrained model folder or hub id and writes ``<name>_s1.wav``,
``<name>_s2.wav``, ... Long files are streamed chunk by chunk. The output
folder, the inputs (never overwritten) and existing outputs (replaced only
with ``--overwrite``) are checked before any file is separated. With
``--stream`` a causal model separates each file hop by hop through
:class:`~speechbrain_s4m.inference.S4MStreamer` (docs/streaming.md).
``s4m-export`` turns a recipe output folder into a pretrained folder.

Both print one line per problem (no traceback) and return a non-zero exit
code: 1 when some input failed, 2 for bad arguments or an unusable model.
``python -m speechbrain_s4m.cli {separate,export} ...`` works as well.

Authors
 * speechbrain-s4m contributors 2026
"""

import argparse
import pathlib
import sys
import traceback
import warnings

EXIT_OK, EXIT_INPUT, EXIT_USAGE = 0, 1, 2


def _one_line(err):
    """A one-line message for an exception."""
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, (KeyError, RuntimeError, TypeError, AttributeError)):
        text = f"{type(err).__name__}: {text}"
    return text


def _error(prog, message):
    print(f"{prog}: error: {message}", file=sys.stderr)


def _report(prog, err, show_traceback):
    """Prints ``err`` in one line (after its traceback if asked)."""
    if show_traceback:
        traceback.print_exc()
    _error(prog, _one_line(err))


def _add_traceback_option(parser):
    parser.add_argument(
        "--traceback",
        action="store_true",
        help="print full tracebacks (for bug reports)",
    )


def collect_inputs(paths, recursive=False):
    """Expands files and folders into a sorted list of audio files.

    Hidden files (``.name``, such as the temporary ``.part.wav`` files of an
    interrupted run) in folders are skipped.

    Arguments
    ---------
    paths : list of str
        Files and/or folders.
    recursive : bool
        Also search sub-folders of the folders.

    Returns
    -------
    files : list of pathlib.Path
    problems : list of str
        One message per path that does not exist or holds no audio.
    """
    from speechbrain_s4m.audio import AUDIO_EXTENSIONS, is_audio_file

    files, problems = [], []
    for given in paths:
        path = pathlib.Path(given).expanduser()
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            found = sorted(
                p
                for p in path.glob(pattern)
                if p.is_file()
                and is_audio_file(p)
                and not p.name.startswith(".")  # e.g. our .part.wav files
            )
            if not found:
                problems.append(
                    f"{given}: folder holds no audio files "
                    f"({', '.join(AUDIO_EXTENSIONS)})"
                )
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            problems.append(f"{given}: no such file or folder")
    return files, problems


def _rate_arg(value):
    if value in ("input", "model"):
        return value
    try:
        rate = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'input', 'model' or a rate in Hz, got {value!r}"
        ) from None
    if rate <= 0:
        raise argparse.ArgumentTypeError(f"rate must be positive: {value}")
    return rate


def _positive_float(value):
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return number


def separate_parser(prog="s4m-separate"):
    """The argument parser of ``s4m-separate``."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Separate the speakers of audio mixtures with a "
        "pretrained model; writes <name>_s1.wav, <name>_s2.wav, ...",
    )
    parser.add_argument(
        "inputs", nargs="+", help="audio files and/or folders of audio files"
    )
    parser.add_argument(
        "--model",
        required=True,
        help="pretrained model folder (from s4m-export) or hub id owner/name",
    )
    parser.add_argument(
        "--output-folder",
        default="separated",
        help="where to write the separated sources (default: ./separated)",
    )
    parser.add_argument(
        "--device",
        default=None,
        help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if "
        "available, else cpu)",
    )
    parser.add_argument(
        "--chunk-seconds",
        type=_positive_float,
        default=None,
        help="files longer than this are separated chunk by chunk "
        "(default: 30)",
    )
    parser.add_argument(
        "--overlap-seconds",
        type=_positive_float,
        default=None,
        help="overlap between chunks, used to keep the speaker order and "
        "cross-faded (default: 2)",
    )
    parser.add_argument(
        "--output-rate",
        type=_rate_arg,
        default="input",
        help="sample rate of the outputs: 'input' (default), 'model' or Hz",
    )
    parser.add_argument(
        "--scale",
        default=None,
        choices=["mixture", "none"],
        help="output scale: 'mixture' (default) scales each source so that "
        "the sources sum to the mixture (least squares, per chunk); 'none' "
        "keeps the model's own scale, which SI-SNR training leaves "
        "arbitrary (the only choice with --stream: per-chunk gains would "
        "need future samples)",
    )
    parser.add_argument(
        "--stream",
        action="store_true",
        help="separate through the live streamer (causal models only): "
        "the file is fed hop by hop, memory is constant, and the output "
        "equals the causal model on the whole file; prints the latency "
        "and the real-time factor",
    )
    parser.add_argument(
        "--hop-ms",
        type=_positive_float,
        default=16.0,
        help="with --stream: milliseconds of audio per streamer call "
        "(default: 16)",
    )
    parser.add_argument(
        "--normalize",
        action="store_true",
        help="peak-normalise each output to 1 (like SpeechBrain)",
    )
    parser.add_argument(
        "--subtype",
        default="FLOAT",
        choices=["FLOAT", "PCM_16", "PCM_24", "PCM_32"],
        help="WAV sample format (default: FLOAT, values kept as they are). "
        "Never clipped: with PCM_*, sources beyond full scale are scaled "
        "down by one factor per file, with a warning",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing outputs (without it, existing outputs are "
        "named and nothing is done); inputs are never overwritten",
    )
    parser.add_argument(
        "--recursive",
        action="store_true",
        help="search input folders recursively",
    )
    parser.add_argument(
        "--savedir",
        default=None,
        help="where to keep files fetched for a hub model",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_traceback_option(parser)
    return parser


def separate_main(argv=None):
    """Entry point of ``s4m-separate``; returns the exit code.

    Arguments
    ---------
    argv : list of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success, 1 if some input failed, 2 for usage/model errors.
    """
    prog = "s4m-separate"
    parser = separate_parser(prog)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)

    files, problems = collect_inputs(args.inputs, args.recursive)
    for problem in problems:
        _error(prog, problem)
    if problems:
        return EXIT_USAGE
    names = {}
    for path in files:
        if path.stem in names:
            _error(
                prog,
                f"{names[path.stem]} and {path} would write the same outputs "
                f"({path.stem}_s1.wav, ...); separate them in two runs",
            )
            return EXIT_USAGE
        names[path.stem] = path

    import torch
    from tqdm import tqdm

    from speechbrain_s4m.inference import S4MSeparation
    from speechbrain_s4m.inference.interface import OutputScaleWarning
    from speechbrain_s4m.inference.outputs import (
        NO_SPACE,
        OutputFolderError,
        OutputWriteError,
        check_output_folder,
        planned_outputs_problem,
    )

    try:
        check_output_folder(args.output_folder)
    except OutputFolderError as err:
        _error(prog, _one_line(err))
        return EXIT_USAGE

    problem = _stream_arguments_problem(args)
    if problem:
        _error(prog, problem)
        return EXIT_USAGE
    if args.scale is None:
        args.scale = "none" if args.stream else "mixture"

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model = S4MSeparation.from_hparams(
            source=args.model,
            savedir=args.savedir,
            run_opts={"device": device},
        )
        model.chunk_sizes(args.chunk_seconds, args.overlap_seconds)
        streamer = _streamer(model, args.hop_ms) if args.stream else None
    except Exception as err:
        _report(prog, err, args.traceback)
        return EXIT_USAGE

    plan = [(p, model.output_paths(args.output_folder, p.stem)) for p in files]
    problem = planned_outputs_problem(plan, args.overwrite)
    if problem:
        _error(prog, problem)
        return EXIT_USAGE

    failed = 0
    progress = tqdm(
        files,
        unit="file",
        disable=args.quiet or len(files) < 2,
        file=sys.stderr,
    )
    for done_count, path in enumerate(progress):
        progress.set_postfix_str(path.name, refresh=False)
        if streamer is not None:
            streamer.use_for(path)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", OutputScaleWarning)
                model.separate_file_to_folder(
                    str(path),
                    args.output_folder,
                    output_sample_rate=args.output_rate,
                    normalize=args.normalize,
                    chunk_seconds=args.chunk_seconds,
                    overlap_seconds=args.overlap_seconds,
                    subtype=args.subtype,
                    overwrite=args.overwrite,
                    scale=args.scale,
                )
            for warning in caught:
                if issubclass(warning.category, OutputScaleWarning):
                    tqdm.write(
                        f"{prog}: warning: {_one_line(warning.message)}",
                        file=sys.stderr,
                    )
                else:
                    warnings.showwarning(
                        warning.message,
                        warning.category,
                        warning.filename,
                        warning.lineno,
                    )
        except KeyboardInterrupt:
            _error(prog, "interrupted")
            return 130
        except Exception as err:
            failed += 1
            if args.traceback:
                traceback.print_exc()
            message = _one_line(err)
            if str(path) not in message:
                message = f"{path}: {message}"
            left = len(files) - done_count - 1
            full = isinstance(err, OutputWriteError) and err.errno in NO_SPACE
            if full and left:
                # every later file would fail the same way
                failed += left
                message += f" (stopped: {left} more file(s) not separated)"
            tqdm.write(f"{prog}: error: {message}", file=sys.stderr)
            if full:
                break
    progress.close()
    done = len(files) - failed
    if not args.quiet:
        print(
            f"{prog}: separated {done}/{len(files)} file(s) into "
            f"{args.output_folder}",
            file=sys.stderr,
        )
    if streamer is not None and streamer.seconds > 0:
        # nothing streamed (every file refused): no timing to report
        print(f"{prog}: {streamer.summary()}", file=sys.stderr)
    return EXIT_INPUT if failed else EXIT_OK


def _stream_arguments_problem(args):
    """One line if the options do not fit ``--stream``; None otherwise."""
    if not args.stream:
        return None
    if args.scale == "mixture":
        return (
            "--scale mixture needs future samples (least-squares gains per "
            "chunk) and cannot stream; with --stream the outputs keep the "
            "model's own scale (--scale none)"
        )
    if args.chunk_seconds is not None or args.overlap_seconds is not None:
        return (
            "--chunk-seconds/--overlap-seconds do not apply to --stream "
            "(the streamer has no chunks)"
        )
    return None


class _FileStreamer:
    """Feeds files to ``S4MSeparation.separate_file_to_folder`` through an
    :class:`~speechbrain_s4m.inference.S4MStreamer` (its block source,
    ``_stream_file``, replaced on the instance) and sums the timings."""

    def __init__(self, model, streamer, hop_ms):
        self.model, self.streamer, self.hop_ms = model, streamer, hop_ms
        self.hop = max(1, round(hop_ms * streamer.sample_rate / 1000))
        self.seconds, self.compute, self.calls = 0.0, 0.0, 0

    def use_for(self, path):
        from speechbrain_s4m.inference.streamer import stream_file_blocks

        def blocks(path, chunk_seconds, overlap_seconds, out_rate, scale):
            yield from stream_file_blocks(
                self.streamer, path, out_rate, self.hop
            )
            st = self.streamer
            self.seconds += st.samples_in / st.sample_rate
            self.compute += st.compute_seconds
            self.calls += st.calls

        self.model._stream_file = blocks

    def summary(self):
        st = self.streamer
        rtf = self.compute / self.seconds if self.seconds else float("nan")
        per_hop = 1000 * self.compute / max(self.calls, 1)
        return (
            f"streamed {self.seconds:.1f} s in {self.hop_ms:g} ms hops: "
            f"algorithmic latency {st.latency_ms:.1f} ms "
            f"({st.latency_samples} samples) + {self.hop_ms:g} ms hop; "
            f"compute {per_hop:.1f} ms per hop on average, "
            f"real-time factor {rtf:.2f}"
        )


def _streamer(model, hop_ms):
    """A :class:`_FileStreamer` for ``model`` (ValueError if not causal)."""
    from speechbrain_s4m.inference import S4MStreamer

    return _FileStreamer(model, S4MStreamer(model), hop_ms)


def export_parser(prog="s4m-export"):
    """The argument parser of ``s4m-export``."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Export the best checkpoint of a recipe output folder "
        "as a pretrained model folder (hyperparams.yaml, encoder/masknet/"
        "decoder.ckpt, README.md model card).",
    )
    parser.add_argument(
        "recipe_output_folder",
        help="the recipe's output folder (hyperparams.yaml, save/, ...)",
    )
    parser.add_argument("target_folder", help="the folder to create")
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="export this CKPT+* folder instead of the best one",
    )
    parser.add_argument(
        "--min-key",
        default="si-snr",
        help="checkpoint meta key to minimise (default: si-snr, the "
        "negative validation SI-SNR)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace target_folder"
    )
    _add_traceback_option(parser)
    return parser


def export_main(argv=None):
    """Entry point of ``s4m-export``; returns the exit code.

    Arguments
    ---------
    argv : list of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success, 1 on failure (one-line reason on stderr).
    """
    prog = "s4m-export"
    try:
        args = export_parser(prog).parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    from speechbrain_s4m.export import export_pretrained

    try:
        target = export_pretrained(
            args.recipe_output_folder,
            args.target_folder,
            checkpoint=args.checkpoint,
            min_key=args.min_key,
            overwrite=args.overwrite,
        )
    except Exception as err:
        _report(prog, err, args.traceback)
        return EXIT_INPUT
    print(f"{prog}: exported {args.recipe_output_folder} -> {target}")
    return EXIT_OK


def main(argv=None):
    """``python -m speechbrain_s4m.cli {separate,export} ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"separate": separate_main, "export": export_main}
    if not argv or argv[0] not in commands:
        print(
            "usage: python -m speechbrain_s4m.cli {separate,export} ...",
            file=sys.stderr,
        )
        return EXIT_USAGE
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
