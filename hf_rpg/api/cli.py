"""The ``hf-rpg`` command: demo, sweep, info, merge, push."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import RPGError
from ..format.report import all_parameters, percent, size_ratio, trainable_percent
from ..format.ring_storage import storage_summary
from ..version import __version__

DOF_HELP = "ring size (an int such as 18116), fraction (0.25) or percentage (25%%) of the generated elements"


def parse_dof(text: str) -> float | int:
    """``--dof`` of the command line and the examples, in forms that cannot be misread.

    ``25%`` and ``0.25`` are fractions of the generated (targeted) elements; ``18116`` (an
    integer, ``_`` allowed) is a ring of that many entries; ``1.0`` and ``100%`` are full DoF.
    ``1`` alone is refused: it would be a ring of one entry, which is almost never meant.
    """
    value = text.strip().replace("_", "")
    try:
        if value.endswith("%"):
            percent = float(value[:-1])
            if not 0.0 < percent <= 100.0:
                raise argparse.ArgumentTypeError(f"--dof as a percentage must be in (0%, 100%], got {text!r}")
            return percent / 100.0
        if any(c in value for c in ".eE"):
            return float(value)
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--dof must be a ring size (an int such as 18116), a fraction (0.25) or a percentage (25%), got {text!r}"
        ) from None
    if number == 1:
        raise argparse.ArgumentTypeError(
            "--dof 1 would be a ring of one entry; write 1.0 or 100% for full DoF (or a ring size >= 2)"
        )
    return number


def _quiet_progress_bars() -> None:
    """transformers and huggingface_hub draw a bar per saved or loaded shard."""
    import huggingface_hub.utils
    import transformers

    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()


def _studies(name: str) -> Any:
    """``hf_rpg_studies.<name>``: the study code behind ``hf-rpg demo`` and ``hf-rpg sweep``,
    kept out of the library's wheel: the distribution in the checkout's ``studies/``."""
    try:
        return importlib.import_module(f"hf_rpg_studies.{name}")
    except ImportError as err:
        raise RPGError(
            f"this command runs hf_rpg's study code (hf_rpg_studies.{name}), a distribution of its own in the "
            f'checkout\'s studies/ folder: pip install -e ".[examples]" -e ./studies ({err})'
        ) from None


def _cmd_demo(args: argparse.Namespace) -> int:
    run_digits_demo = _studies("demo").run_digits_demo
    use_threads = _studies("threads").use_threads

    _quiet_progress_bars()
    print(use_threads(args.threads), flush=True)
    result = run_digits_demo(
        model=args.model, dof=args.dof, epochs=args.epochs, lr=args.lr, seed=args.seed, output_dir=args.output_dir
    )
    print(result.table())
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    sweep = _studies("sweep")
    _quiet_progress_bars()
    result = sweep.run_sweep(sweep.config_from_args(args), args.output_dir)
    sweep.print_summary(result)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from ..format.files import CONFIG_NAME, WEIGHTS_NAME
    from ..format.hub_resolve import resolve_checkpoint_files
    from ..format.metadata import read_metadata

    files = resolve_checkpoint_files(args.checkpoint, revision=args.revision)
    meta = read_metadata(files[CONFIG_NAME])
    if args.json:
        print(json.dumps(meta, indent=2))
        return 0
    manifest, base, dof = meta["manifest"], meta.get("base_model") or {}, meta.get("dof") or {}
    # ring sizes and generated elements come from the manifest; the DoF report is optional
    ring_dof = sum(r["size"] for r in manifest["rings"])
    generated = sum(r["elements"] for r in manifest["rings"])
    weights_bytes = files[WEIGHTS_NAME].stat().st_size
    full_report = {"trainable", "model_parameters", "ring_fraction"} <= set(dof)
    total = all_parameters(dof["model_parameters"], ring_dof, meta["config"]["mode"]) if full_report else 0
    of_model = f", {percent(ring_dof / max(1, total))} of all {total:,} parameters" if full_report else ""
    lines = [
        f"checkpoint: {args.checkpoint}",
        f"mode: {meta['config']['mode']}    generator: {meta['generator']}    hf_rpg: {meta.get('hf_rpg_version')}",
        f"architecture: {base.get('class') or 'unknown'}"
        + (f"    base model: {base['name_or_path']}" if base.get("name_or_path") else ""),
        f"ring DoF: {ring_dof:,} ({percent(ring_dof / max(1, generated))} of the generated elements"
        f"{of_model})    rings: " + ", ".join(f"{r['name']}={r['size']:,}" for r in manifest["rings"]),
        f"targets: {len(manifest['targets'])} tensors, {generated:,} generated elements",
        f"weights file: {weights_bytes:,} bytes",
    ]
    storage = meta.get("ring_storage") or {}
    lines += [f"ring storage: {r['name']}: {storage_summary(storage.get(r['name']))}" for r in manifest["rings"]]
    if full_report:
        dense_bytes = 4 * dof["model_parameters"]
        if meta["config"]["mode"] == "delta":
            versus = "an update: loading also needs the base model"
        else:
            versus = f"weights file {size_ratio(max(1, weights_bytes), max(1, dense_bytes))} the dense fp32 weights"
        lines += [
            f"trainable: {dof['trainable']:,} ({trainable_percent(dof['trainable'] / max(1, total))}%)    "
            f"dense model: {dof['model_parameters']:,} parameters "
            f"({dense_bytes:,} bytes in fp32)    {versus}"
        ]
    if args.targets:
        lines += [
            f"  {t['name']} {t['shape']} ring={t['ring']} gain={t['gain']:.4g}"
            + (f" rank={t['rank']} ({t['update']})" if "rank" in t else "")
            for t in manifest["targets"]
        ]
    print("\n".join(lines))
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    from .model import RPGModel

    _quiet_progress_bars()
    model = RPGModel.from_pretrained(args.checkpoint, revision=args.revision)
    dense = model.merge_and_unload()
    if not hasattr(dense, "save_pretrained"):
        raise RPGError(f"the merged model ({type(dense).__name__}) has no save_pretrained")
    dense.save_pretrained(args.output)
    print(f"wrote a dense {type(dense).__name__} to {args.output}")
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    from .hub import upload_checkpoint

    info = upload_checkpoint(args.checkpoint, args.repo_id, private=args.private or None, commit_message=args.message)
    print(f"pushed {args.checkpoint} to {getattr(info, 'commit_url', args.repo_id)}")
    return 0


class _OneLineParser(argparse.ArgumentParser):
    """A bad argument is one line on stderr (no usage block) and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``hf-rpg`` and its five subcommands."""
    parser = _OneLineParser(prog="hf-rpg", description="Recurrent Parameter Generators for HF models.")
    parser.add_argument("--version", action="version", version=f"hf_rpg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train a tiny model on digits, dense vs RPG (offline, < 2 min)")
    demo.add_argument("--model", choices=("resnet", "vit"), default="resnet")
    demo.add_argument("--dof", type=parse_dof, default=0.25, help=DOF_HELP + ", default 0.25")
    demo.add_argument("--epochs", type=int, default=15)
    demo.add_argument("--lr", type=float, default=1e-2)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--output-dir", type=Path, default=None, help="keep both checkpoints here")
    demo.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: $OMP_NUM_THREADS, else the idle cores, <= 4)"
    )
    demo.set_defaults(func=_cmd_demo)

    sweep = sub.add_parser("sweep", help="accuracy against DoF: RPG, dense, equal-DoF narrow dense, ablations; plots")
    try:  # datasets and matplotlib load only when a sweep runs
        _studies("sweep").add_sweep_arguments(sweep, parse_dof)
    except RPGError:  # without the study code the command takes any options and says what to install
        sweep.set_defaults(any_options=True)
    sweep.set_defaults(func=_cmd_sweep)

    info = sub.add_parser("info", help="DoF, sizes, generator version, targets and mode of a checkpoint")
    info.add_argument("checkpoint", help="checkpoint directory or Hub repo id")
    info.add_argument("--revision", default=None)
    info.add_argument("--targets", action="store_true", help="list every generated tensor")
    info.add_argument("--json", action="store_true", help="print rpg_config.json")
    info.set_defaults(func=_cmd_info)

    merge = sub.add_parser("merge", help="write a dense transformers checkpoint")
    merge.add_argument("checkpoint", help="checkpoint directory or Hub repo id")
    merge.add_argument("output", type=Path, help="directory for the dense model")
    merge.add_argument("--revision", default=None)
    merge.set_defaults(func=_cmd_merge)

    push = sub.add_parser("push", help="upload a checkpoint directory to the Hub")
    push.add_argument("checkpoint", type=Path)
    push.add_argument("repo_id")
    push.add_argument("--private", action="store_true")
    push.add_argument("--message", default=None, help="commit message")
    push.set_defaults(func=_cmd_push)
    return parser


# What the extra "examples" installs (pyproject.toml): demo and sweep need it, the core does not.
EXAMPLES_EXTRA_MODULES = frozenset({"datasets", "evaluate", "sklearn", "matplotlib", "tqdm", "pyarrow"})


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``hf-rpg``: errors are one line on stderr and exit status 1."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "any_options", False):
        parser.parse_args(argv)  # the usual one-line error naming the unknown option
    try:
        return args.func(args)
    except ModuleNotFoundError as err:
        if (err.name or "").partition(".")[0] not in EXAMPLES_EXTRA_MODULES:
            raise
        print(
            f"hf-rpg {args.command}: error: {err.name} is not installed: hf-rpg {args.command} needs the examples "
            "extra and the study code (pip install -e '.[examples]' -e ./studies in a checkout)",
            file=sys.stderr,
        )
        return 1
    except (RPGError, OSError, ValueError) as err:
        print(f"hf-rpg {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
