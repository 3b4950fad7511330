"""Per-user session state: what one browser tab is working on.

A Session lives in a gr.State, so every user has their own; nothing here is global. It holds
the parts of a recipe being edited (latent, bends, weight edits, translator input) plus UI
bookkeeping (clusters on screen, selected cluster ids, the bend being edited). Editing
helpers are plain data manipulation: no model maths.
"""

from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass, field
from typing import Any

from engine.bending import OPERATIONS, Bend, ChannelSelection
from engine.clusters import ClusterResult
from engine.latents import LatentSpec
from engine.recipe import Recipe
from studio.jobs import Jobs


@dataclass
class Session:
    """Everything one user is editing: a Recipe plus what is on screen."""
    recipe: Recipe                                  # model, latent, bends, weight edits, ...
    clusters: ClusterResult | None = None          # the clustering on screen
    selected: list[int] = field(default_factory=list)  # chosen cluster ids of `clusters`
    current: int | None = None                      # index of the bend being edited
    projected: list[list[float]] | None = None      # last projection's W+ (not yet sent)
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    jobs: Jobs = field(default_factory=Jobs)
    live: Any = None                                # (key, Translator) for webcam frames
    uploads: set[str] = field(default_factory=set)  # upload paths this session's events got

    def __deepcopy__(self, memo: dict) -> Session:
        # Gradio copies only a State's initial value; a copy drops the cached translator.
        return Session(recipe=copy.deepcopy(self.recipe, memo),
                       clusters=copy.deepcopy(self.clusters, memo),
                       selected=list(self.selected), current=self.current,
                       projected=copy.deepcopy(self.projected, memo))

    def snapshot(self) -> dict[str, Any]:
        """What an edit may change, copied, so a failed edit can be undone exactly."""
        return {"recipe": copy.deepcopy(self.recipe), "clusters": self.clusters,
                "selected": list(self.selected), "current": self.current,
                "projected": self.projected, "uploads": set(self.uploads)}

    def restore(self, snap: dict[str, Any]) -> None:
        for name, value in snap.items():
            setattr(self, name, value)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["live"] = None  # a loaded Translator does not travel between processes
        return state

    @property
    def model(self) -> str:
        return self.recipe.model


def new_session(model: str) -> Session:
    """A fresh session on `model`: seed 0, psi 0.7, no bends."""
    return Session(recipe=Recipe(model=model, latent=LatentSpec(seed=0.0, psi=0.7)))


def successor(old: Session | None, model: str) -> Session:
    """A fresh session on `model` that keeps what belongs to the visitor, not to the model:
    its token (hence its folder and encoders), its uploads and its running job."""
    new = new_session(model)
    if old is not None:
        new.token, new.uploads, new.jobs = old.token, set(old.uploads), old.jobs
    return new


def selection_for(sess: Session, layer: str, mode: str, fraction: float = 0.5,
                  seed: int = 0) -> ChannelSelection:
    """The channel selection a new bend on `layer` gets from the UI choice `mode`."""
    if mode == "selected clusters":
        c = sess.clusters
        if c is None or not sess.selected:
            from engine.errors import StudioError
            raise StudioError("no clusters are selected; compute clusters on the Clusters tab "
                              "and click the tiles you want, or choose 'all channels'.")
        return ChannelSelection(mode="clusters", layer=c.layer, k=c.k, ids=sorted(sess.selected),
                                samples=c.samples, cluster_seed=c.seed)
    if mode == "random fraction":
        return ChannelSelection(mode="random", fraction=float(fraction), seed=int(seed))
    return ChannelSelection(mode="all")


def default_params(op: str) -> dict[str, Any]:
    return {p.name: p.default for p in OPERATIONS[op].params}


def bend_label(i: int, b: Bend) -> str:
    """One line naming a bend in the stack list."""
    op = OPERATIONS.get(b.op)
    title = op.title if op else b.op
    sel = b.channels
    if sel.mode == "clusters":
        where = f"clusters {','.join(map(str, sel.ids))} (k={sel.k})"
    elif sel.mode == "random":
        where = f"{sel.fraction:.0%} random channels"
    elif sel.mode == "indices":
        where = f"{len(sel.indices)} channels"
    else:
        where = "all channels"
    vals = ", ".join(f"{k}={_short(v)}" for k, v in b.params.items())
    state = "on" if b.enabled else "off"
    return f"{i + 1}. [{state}] {title} @ {b.layer} · {where}" + (f" · {vals}" if vals else "")


def _short(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def move(items: list, i: int, delta: int) -> int:
    """Move items[i] by delta places (clamped); returns its new index."""
    j = max(0, min(len(items) - 1, i + delta))
    items.insert(j, items.pop(i))
    return j
