"""Command line: `python -m engine <verb> ...`; each verb lives beside the code it drives."""

from __future__ import annotations

import argparse
import importlib
import sys

from engine.base.errors import StudioError

# Modules that register verbs through add_cli(subparsers). Imported lazily per verb so that
# `python -m engine info` does not pay for gradio, accelerate or scikit-learn.
VERB_MODULES = {
    "train-gan": "engine.training.train_gan",
    "zoo": "engine.tools.cli_models",
    "info": "engine.tools.cli_models",
    "generate": "engine.tools.cli_models",
    "cluster": "engine.tools.clusters",
    "render": "engine.recipes.cli",
    "music-video": "engine.recipes.music",
    "sweep": "engine.recipes.cli",
    "project": "engine.tools.projector",
    "train-latent-encoder": "engine.tools.projector",
    "interpolate": "engine.tools.latents",
    "directions": "engine.tools.latents",
    "boundary": "engine.tools.boundaries",
    "blend": "engine.tools.blend",
    "train-encoder": "engine.tools.translator",
    "translate": "engine.tools.translator",
    "push-encoder": "engine.tools.translator",
}


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine",
                                     description="Activation Studio engine command line.")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    modules = sorted(set(VERB_MODULES.values())) if verb not in VERB_MODULES else [
        VERB_MODULES[verb]]
    for name in modules:
        importlib.import_module(name).add_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verb = argv[0] if argv and not argv[0].startswith("-") else None
    args = build_parser(verb).parse_args(argv)
    try:
        args.func(args)
    except StudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
