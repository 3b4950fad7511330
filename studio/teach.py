"""Teach a direction by example, and blend two models: the Explore tab's logic, Gradio-free.

The page shows a page of samples; the user marks some as having an attribute and some as
not; marks are kept across pages in a `LabelBook`. Training calls the engine's InterFaceGAN
SVM on those seeds' w and writes the boundary into the studio's output folder, where the
direction controls (and recipes) use it like an uploaded boundary file. No model maths here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from engine.base.errors import StudioError
from engine.tools import boundaries, latents
from engine.tools.blend import BLEND_MODES, MAPPING_SOURCES, BlendSpec
from studio import files, models

MAX_PAGE = 24          # samples on one page of the label grid
MAX_CONDITIONS = 4     # boundaries held fixed at once
MAX_MARKED = 1000      # labelled samples per boundary on the page and its API (the CLI takes
                       # up to engine.tools.boundaries.MAX_LABELLED): keeps one fit to seconds


@dataclass
class LabelBook:
    """The marks a user has made, across pages: seed -> 1 (has it) or 0 (does not)."""
    marks: dict[int, int] = field(default_factory=dict)

    def mark(self, shown: list[int], yes: list[int], no: list[int]) -> None:
        """Record the marks of the page showing `shown`; unmarked seeds there are forgotten."""
        both = sorted(set(yes) & set(no))
        if both:
            raise StudioError(f"Seed {both[0]} is marked both 'has it' and 'does not'; "
                              f"untick one.")
        for s in shown:
            self.marks.pop(int(s), None)
        self.marks.update({int(s): 1 for s in yes})
        self.marks.update({int(s): 0 for s in no})
        if len(self.marks) > MAX_MARKED:
            raise StudioError(f"More than {MAX_MARKED} samples are marked; the command line "
                              f"(python -m engine boundary) takes more.")

    def counts(self) -> tuple[int, int]:
        yes = sum(self.marks.values())
        return yes, len(self.marks) - yes

    def on_page(self, shown: list[int]) -> tuple[list[int], list[int]]:
        """(yes, no) seeds of a page, to tick the boxes again when it comes back."""
        return ([s for s in shown if self.marks.get(s) == 1],
                [s for s in shown if self.marks.get(s) == 0])

    def to_csv(self) -> str:
        """The marks in the CLI's labels format (`python -m engine boundary --labels`)."""
        rows = [f"{s},{'yes' if v else 'no'}" for s, v in sorted(self.marks.items())]
        return "seed,label\n" + "\n".join(rows) + "\n"

    def status(self) -> str:
        yes, no = self.counts()
        return f"{yes} marked 'has it', {no} marked 'does not'."


def page_seeds(first_seed: int, count: int) -> list[int]:
    """The seeds of a label page: `count` consecutive seeds from `first_seed`."""
    count = int(count)
    first = int(first_seed)
    if not 1 <= count <= MAX_PAGE:
        raise StudioError(f"Show from 1 to {MAX_PAGE} samples on a page (asked for {count}).")
    if not 0 <= first <= latents.MAX_SEED - count:
        raise StudioError(f"The first seed must be from 0 to {latents.MAX_SEED - count}.")
    return list(range(first, first + count))


def sample_page(model: str, seeds: list[int], psi: float) -> list[tuple[Image.Image, str]]:
    """The samples of a label page, plain (no bends or directions), captioned by seed."""
    import torch

    G = models.generator(model)
    ws = torch.cat([latents.seed_to_ws(G, s, psi) for s in seeds])
    images = latents.render_ws(G, ws)
    return [(Image.fromarray(im), f"seed {s}") for s, im in zip(seeds, images)]


def _slug(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", name.strip())[:40].strip("-")
    return slug or "boundary"


@dataclass
class TrainedBoundary:
    name: str                   # what the user called it
    path: str                   # the .npy in the studio's output folder
    summary: str                # counts and cross-validated accuracy, one line


def train(model: str, book: LabelBook, psi: float, name: str = "",
          conditions: list[str] | None = None, owner: Any = None) -> TrainedBoundary:
    """Fit the boundary of the marked seeds, holding `conditions` (boundary files) fixed;
    the file goes to the folder of the session `owner` (a studio.session.Session)."""
    conditions = list(conditions or [])
    if len(conditions) > MAX_CONDITIONS:
        raise StudioError(f"Hold at most {MAX_CONDITIONS} boundaries fixed at once.")
    G = models.generator(model)
    held = []
    for path in conditions:
        files.check_server_file(path)
        held.append(latents.load_boundary(path, G))
    seeds = sorted(book.marks)
    fit = boundaries.boundary_from_seeds(G, seeds, [book.marks[s] for s in seeds], psi=psi,
                                         conditions=held)
    path = files.new_output_path(owner.token if owner is not None else None,
                                 f"boundary-{_slug(name)}", ".npy")
    boundaries.save_boundary(path, fit.boundary, G)
    return TrainedBoundary(name=name.strip() or Path(path).stem, path=str(path),
                           summary=fit.summary())


def train_from_labels(model: str, labels_text: str, psi: float = 1.0, name: str = "",
                      conditions: list[str] | None = None, owner: Any = None
                      ) -> TrainedBoundary:
    """The API's form: `seed,label` lines in, a boundary file and its accuracy out."""
    seeds, labels = boundaries.parse_labels(labels_text)
    if any(s != int(s) for s in seeds):
        raise StudioError("Label whole seeds here (the page samples whole seeds).")
    book = LabelBook()
    book.mark([], yes=[int(s) for s, v in zip(seeds, labels) if v],
              no=[int(s) for s, v in zip(seeds, labels) if not v])
    return train(model, book, psi, name, conditions, owner=owner)


def blend_spec(enabled: bool, other: str, mode: str, swap_res: Any, alpha: float,
               mapping: str, alphas: str = "") -> BlendSpec | None:
    """The recipe's blend from the Explore controls (None when blending is off); `alphas`
    is an optional comma list of B's weight per block, b4 first (interpolation)."""
    if not enabled:
        return None
    other = (other or "").strip()
    if not other:
        raise StudioError("Name model B to blend with (an id, hf://..., or upload one).")
    if mode not in BLEND_MODES or mapping not in MAPPING_SOURCES:
        raise StudioError("Choose how to blend (swap or interpolate) and which mapping to use.")
    if models.is_path_spec(other):
        files.check_server_file(other)
    res = int(str(swap_res).lstrip("b")) if swap_res not in (None, "") else 16
    per_block = None
    if (alphas or "").strip():
        try:
            per_block = [float(a) for a in alphas.replace(";", ",").split(",") if a.strip()]
        except ValueError as exc:
            raise StudioError("Per-block weights are numbers from 0 to 1 separated by commas, "
                              "b4 first, like 0, 0, 0.5, 1, 1.") from exc
        if len(per_block) > 16:  # more blocks than any model has; keeps the list short
            raise StudioError("Give one weight per block (at most 16).")
    return BlendSpec(model=other, mode=mode, swap_res=res, alpha=float(alpha),
                     alphas=per_block, mapping=mapping)
