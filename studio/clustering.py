"""Clusters for the studio: group a layer's channels (k-means over their activations),
suggest a k, and the per-cluster tiles and ablation preview the Clusters tab shows.

Gradio-free (the tab is studio/tabs/clusters.py); each function forwards to
engine.tools.clusters on the device studio.gpu chooses. No model maths here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PIL import Image, ImageOps

from engine.tools import clusters, latents
from studio.gpu import gpu, gpu_job
from studio.jobs import interactive
from studio.models import generator, image_seconds, model_key, small
from studio.render import pil
from studio.session import Session

SELECTED_FRAME = (255, 124, 0)  # the page's accent orange


@gpu_job(lambda sess, samples, **_: image_seconds(sess.model, samples),
         cpu_if=lambda sess, **_: small(sess.model))
def compute_clusters(sess: Session, layer: str, k: int, samples: int,
                     progress: Callable[[float, str], None] | None = None, cancel: Any = None
                     ) -> clusters.ClusterResult:
    G = generator(sess.model)
    return clusters.compute_clusters(G, layer, int(k), samples=int(samples), seed=0,
                                     model_key=model_key(sess.model), progress=progress,
                                     cancel=cancel)


@gpu_job(lambda sess, samples, **_: image_seconds(sess.model, samples),
         cpu_if=lambda sess, **_: small(sess.model))
def suggest_k(sess: Session, layer: str, samples: int,
              progress: Callable[[float, str], None] | None = None, cancel: Any = None) -> int:
    G = generator(sess.model)
    best, _ = clusters.suggest_k(G, layer, samples=int(samples), progress=progress,
                                 cancel=cancel)
    return best


@interactive
@gpu(lambda sess, **_: image_seconds(sess.model, 2 + (sess.clusters.k if sess.clusters else 0)),
     cpu_if=lambda sess, **_: small(sess.model))
def overlay_tiles(sess: Session) -> list[tuple[Image.Image, str]]:
    """(tile, caption) per cluster of the session's clustering, for the current latent."""
    c = sess.clusters
    if c is None:
        return []
    G = generator(sess.model)
    ws = latents.compute_ws(G, sess.recipe.latent)
    tiles = []
    for cid, part in enumerate(clusters.cluster_tiles(G, c, ws[0], tile=clusters.MIN_TILE)[1:]):
        chosen = cid in sess.selected
        # The selection is drawn into the tile (an orange frame), not left to the gallery's
        # own highlight, which marks the last tile clicked even when that click deselected.
        framed = ImageOps.expand(pil(part), border=4,
                                 fill=SELECTED_FRAME if chosen else (255, 255, 255))
        tiles.append((framed, f"#{cid} · {c.sizes[cid]} ch" + (" ✓" if chosen else "")))
    return tiles


@interactive
@gpu(lambda sess, **_: image_seconds(sess.model, 2),
     cpu_if=lambda sess, **_: small(sess.model))
def ablation(sess: Session, cluster_id: int) -> Image.Image:
    G = generator(sess.model)
    ws = latents.compute_ws(G, sess.recipe.latent)
    return pil(clusters.ablation_preview(G, sess.clusters, int(cluster_id), ws[0]))
