"""Command-line tools: ``s4m-separate`` and ``s4m-export``.

Inputs, output folder and existing outputs are checked before any file is
separated. Problems are printed one per line, without traceback; exit code
1 when an input failed, 2 for bad arguments or an unusable model.
"""

import argparse
import pathlib
import sys
import traceback
import warnings

EXIT_OK, EXIT_INPUT, EXIT_USAGE = 0, 1, 2


def _one_line(err):
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, (KeyError, RuntimeError, TypeError, AttributeError)):
        text = f"{type(err).__name__}: {text}"
    return text


def _error(prog, problem, show_traceback=False):
    """Prints ``problem``: a message as given (it may name a path whose
    spaces matter), an exception in one line after its traceback if asked."""
    if show_traceback:
        traceback.print_exc()
    if isinstance(problem, BaseException):
        problem = _one_line(problem)
    print(f"{prog}: error: {problem}", file=sys.stderr)


def collect_inputs(paths, recursive=False):
    """Expands files and folders (sub-folders too if ``recursive``; hidden
    files skipped) into ``(audio files, one problem line per path that
    does not exist or holds no audio)``."""
    from speechbrain_s4m.audio import AUDIO_EXTENSIONS, is_audio_file

    files, problems = [], []
    for given in paths:
        path = pathlib.Path(given).expanduser()
        if path.is_dir():
            found = sorted(
                p
                for p in path.glob("**/*" if recursive else "*")
                if p.is_file()
                and is_audio_file(p)
                and not p.name.startswith(".")
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
    """``--output-rate``: 'input', 'model' or a positive rate in Hz."""
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
    add = parser.add_argument
    add("inputs", nargs="+", help="audio files and/or folders of audio files")
    add(
        "--model",
        required=True,
        help="pretrained model folder (from s4m-export) or hub id owner/name",
    )
    add(
        "--output-folder",
        default="separated",
        help="where to write the separated sources (default: ./separated)",
    )
    add(
        "--device",
        help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if "
        "available, else cpu)",
    )
    add(
        "--chunk-seconds",
        type=_positive_float,
        help="files longer than this are separated chunk by chunk "
        "(default: 30)",
    )
    add(
        "--overlap-seconds",
        type=_positive_float,
        help="overlap between chunks, used to keep the speaker order and "
        "cross-faded (default: 2)",
    )
    add(
        "--output-rate",
        type=_rate_arg,
        default="input",
        help="sample rate of the outputs: 'input' (default), 'model' or Hz",
    )
    add(
        "--scale",
        choices=["mixture", "none"],
        help="output scale: 'mixture' (default) scales each source so that "
        "the sources sum to the mixture (least squares, per chunk); 'none' "
        "keeps the model's own scale, which SI-SNR training leaves "
        "arbitrary (the only choice with --stream: per-chunk gains would "
        "need future samples)",
    )
    add(
        "--stream",
        action="store_true",
        help="separate through the live streamer (causal models only): "
        "the file is fed hop by hop, memory is constant, and the output "
        "equals the causal model on the whole file; prints the latency "
        "and the real-time factor",
    )
    add(
        "--hop-ms",
        type=_positive_float,
        default=16.0,
        help="with --stream: milliseconds of audio per streamer call "
        "(default: 16)",
    )
    add(
        "--normalize",
        action="store_true",
        help="peak-normalise each output to 1 (like SpeechBrain)",
    )
    add(
        "--subtype",
        default="FLOAT",
        choices=["FLOAT", "PCM_16", "PCM_24", "PCM_32"],
        help="WAV sample format (default: FLOAT, values kept as they are). "
        "Never clipped: with PCM_*, sources beyond full scale are scaled "
        "down by one factor per file, with a warning",
    )
    add(
        "--overwrite",
        action="store_true",
        help="replace existing outputs (without it, existing outputs are "
        "named and nothing is done); inputs are never overwritten",
    )
    add(
        "--recursive",
        action="store_true",
        help="search input folders recursively",
    )
    add("--savedir", help="where to keep files fetched for a hub model")
    add("--quiet", action="store_true", help="no progress bar")
    add(
        "--traceback",
        action="store_true",
        help="print full tracebacks (for bug reports)",
    )
    return parser


def separate_main(argv=None):
    """Entry point of ``s4m-separate`` (``argv`` default ``sys.argv[1:]``);
    returns 0, 1 if some input failed, 2 for usage/model errors."""
    prog = "s4m-separate"
    try:
        args = separate_parser(prog).parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)

    files, problems = collect_inputs(args.inputs, args.recursive)
    for problem in problems:
        _error(prog, problem)
    if problems:
        return EXIT_USAGE
    seen = {}
    for path in files:
        if path.stem in seen:
            _error(
                prog,
                f"{seen[path.stem]} and {path} would write the same outputs "
                f"({path.stem}_s1.wav, ...); separate them in two runs",
            )
            return EXIT_USAGE
        seen[path.stem] = path

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
        _error(prog, err)
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
        streamer = _FileStreamer(model, args.hop_ms) if args.stream else None
    except Exception as err:
        _error(prog, err, args.traceback)
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
            for w in caught:
                if issubclass(w.category, OutputScaleWarning):
                    message = f"{prog}: warning: {_one_line(w.message)}"
                    tqdm.write(message, file=sys.stderr)
                else:
                    warnings.showwarning(
                        w.message, w.category, w.filename, w.lineno
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
            if full and left:  # every later file would fail the same way
                failed += left
                message += f" (stopped: {left} more file(s) not separated)"
            tqdm.write(f"{prog}: error: {message}", file=sys.stderr)
            if full:
                break
    progress.close()
    if not args.quiet:
        print(
            f"{prog}: separated {len(files) - failed}/{len(files)} file(s) "
            f"into {args.output_folder}",
            file=sys.stderr,
        )
    if streamer is not None and streamer.seconds > 0:  # something streamed
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
    """Makes ``model.separate_file_to_folder`` go through an
    ``S4MStreamer`` (replacing ``model._stream_file``); sums the timings."""

    def __init__(self, model, hop_ms):
        from speechbrain_s4m.inference import S4MStreamer

        self.model, self.hop_ms = model, hop_ms
        self.streamer = S4MStreamer(model)
        self.hop = max(1, round(hop_ms * self.streamer.sample_rate / 1000))
        self.seconds, self.compute, self.calls = 0.0, 0.0, 0

    def use_for(self, path):
        from speechbrain_s4m.inference.streamer import stream_file_blocks

        def blocks(path, chunk_seconds, overlap_seconds, out_rate, scale):
            st = self.streamer
            yield from stream_file_blocks(st, path, out_rate, self.hop)
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


def export_parser(prog="s4m-export"):
    """The argument parser of ``s4m-export``."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Export the best checkpoint of a recipe output folder "
        "as a pretrained model folder (hyperparams.yaml, encoder/masknet/"
        "decoder.ckpt, README.md model card).",
    )
    add = parser.add_argument
    add(
        "recipe_output_folder",
        help="the recipe's output folder (hyperparams.yaml, save/, ...)",
    )
    add("target_folder", help="the folder to create")
    add(
        "--checkpoint", help="export this CKPT+* folder instead of the best one"
    )
    add(
        "--min-key",
        default="si-snr",
        help="checkpoint meta key to minimise (default: si-snr, the "
        "negative validation SI-SNR)",
    )
    add("--overwrite", action="store_true", help="replace target_folder")
    add(
        "--traceback",
        action="store_true",
        help="print full tracebacks (for bug reports)",
    )
    return parser


def export_main(argv=None):
    """Entry point of ``s4m-export`` (``argv`` default ``sys.argv[1:]``);
    returns 0, or 1 on failure (one-line reason on stderr)."""
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
        _error(prog, err, args.traceback)
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
