"""Command line: `python -m engine render` (a recipe, a bundle or an imported bending file
to an image) and `python -m engine sweep` (a numeric recipe field animated into a video)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from engine.base.errors import StudioError
from engine.recipes import bundle
from engine.recipes.bend_import import load_recipe_file
from engine.recipes.recipe import Recipe, render, sweep


def _cmd_render(args: argparse.Namespace) -> None:
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as unpacked:
        if bundle.is_bundle(args.recipe):  # a recipe with its files (engine/recipes/bundle.py)
            recipe, warnings = bundle.read_bundle(args.recipe, unpacked), []
        else:  # imported files are checked against the model they will render with
            recipe, warnings = load_recipe_file(args.recipe, cluster_dict=args.clusters,
                                                model=args.model or "default")
        for line in warnings:
            print(f"note: {line}", file=sys.stderr)
        if args.model:
            recipe.model = args.model
        if args.size:
            recipe.output_size = args.size
        if args.input:
            if recipe.translator is None:
                raise StudioError("--input is the picture a translator reads, and this "
                                  "recipe has no translator.")
            recipe.translator.image = args.input
        img = render(recipe)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)
    print(f"wrote {out} ({img.size[0]}x{img.size[1]})")


def _cmd_sweep(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    recipe = Recipe.load(args.recipe)
    if args.model:
        recipe.model = args.model
    if args.size:
        recipe.output_size = args.size
    with tqdm(total=args.frames, unit="frame", desc="sweep") as bar:
        out = sweep(recipe, args.param, args.start, args.stop, args.frames, args.out,
                    fps=args.fps, progress=lambda i: bar.update(1))
    print(f"wrote {out} ({args.frames} frames, {args.param} {args.start} -> {args.stop})")


def add_cli(sub: Any) -> None:
    p = sub.add_parser("render", help="render a recipe JSON, a network-bending YAML or a "
                                      "seed template to an image")
    p.add_argument("recipe", help="recipe .json, a recipe bundle .zip, Broad's "
                                  "network-bending .yaml or the seed notebooks' template "
                                  "(.py / .json / .yaml)")
    p.add_argument("--input", help="the picture the recipe's translator reads (instead of "
                                   "the one it names)")
    p.add_argument("--clusters", help="Broad's cluster dict .yaml for a network-bending YAML")
    p.add_argument("--out", required=True, help="output image (.png, .jpg, ...)")
    p.add_argument("--model", help="override the recipe's model spec")
    p.add_argument("--size", type=int, help="override the output size in pixels")
    p.set_defaults(func=_cmd_render)

    s = sub.add_parser("sweep", help="animate a numeric recipe field into a video")
    s.add_argument("recipe", help="recipe .json")
    s.add_argument("--param", required=True,
                   help="field path, e.g. bends.0.params.angle or latent.seed")
    s.add_argument("--from", dest="start", type=float, required=True, help="first value")
    s.add_argument("--to", dest="stop", type=float, required=True, help="last value")
    s.add_argument("--frames", type=int, default=60, help="number of frames")
    s.add_argument("--fps", type=float, default=30, help="frames per second")
    s.add_argument("--out", required=True, help="output video (.mp4 or .gif)")
    s.add_argument("--model", help="override the recipe's model spec")
    s.add_argument("--size", type=int, help="override the output size in pixels")
    s.set_defaults(func=_cmd_sweep)
