"""Clusters: group a layer's channels by where they fire, pick clusters to bend."""

from __future__ import annotations

from typing import Any

import gradio as gr

from studio import clustering
from studio import session as S
from studio.jobs import LANE, progress_fn
from studio.limits import LIMITS
from studio.session import Session
from studio.tabs.explore import cancel_job
from studio.ui import (
    UI,
    Page,
    bind,
    cancel_button,
    capped_slider,
    job_errors,
    layer_update,
    need,
    user_errors,
    with_cancel,
)

GALLERY_COLUMNS = 4     # cluster tiles per row (each ~150 px wide at 1280 px)
TILE_ROW_PX = 170       # gallery height per row of tiles

LABEL, ID = "Clusters", "clusters"  # the tab's title and id (its element: tab-clusters)


def layout(ui: UI) -> None:
    with gr.Row():
        ui.cl_layer = gr.Dropdown([], label="Layer", elem_id="cl-layer")
        ui.cl_k = gr.Slider(2, max(2, LIMITS.cluster_k), min(6, LIMITS.cluster_k), step=1,
                            label="Clusters k", elem_id="cl-k")
        ui.cl_samples = capped_slider(16, LIMITS.cluster_samples, 64, step=16,
                                      label="Samples (latents)")
    with gr.Row():
        ui.cl_suggest = gr.Button("Suggest k (and compute)")
        ui.cl_compute = gr.Button("Compute clusters", variant="primary", elem_id="cl-compute")
        ui.cl_cancel = cancel_button(elem_id="cl-cancel")
    ui.cl_status = gr.Markdown("")
    gr.Markdown("Each tile shows where a cluster's channels fire on the current image. Click "
                "tiles to select clusters for bending (orange frame); click again to drop one.")
    ui.cl_gallery = gr.Gallery(show_label=False, columns=GALLERY_COLUMNS, height=TILE_ROW_PX,
                               allow_preview=False, elem_id="cl-gallery", format="png",
                               object_fit="contain", interactive=False)
    ui.cl_selected = gr.CheckboxGroup([], label="Selected clusters", elem_id="cl-selected")
    ui.cl_ablation = gr.Image(label="Ablation preview (last clicked)", type="pil",
                              format="png", interactive=False, elem_classes="pixelated",
                              height=200)


def view(ui: UI, sess: Session) -> dict[Any, Any]:
    """The tiles (selection drawn into them) and the checkbox list of the clustering."""
    tiles = [tile for tile, _ in clustering.overlay_tiles(sess)]
    c = sess.clusters
    choices = [(f"#{i} ({c.sizes[i]} ch)", i) for i in range(c.k)] if c else []
    rows = -(-len(tiles) // GALLERY_COLUMNS) if tiles else 1
    return {ui.cl_gallery: gr.update(value=tiles, selected_index=None,
                                     height=24 + TILE_ROW_PX * rows),
            ui.cl_selected: gr.update(choices=choices, value=sorted(sess.selected))}


def show(ui: UI, sess: Session) -> dict[Any, Any]:
    """After undo or a recipe: the tiles follow the latent."""
    return view(ui, sess)


def reset(ui: UI, sess: Session) -> dict[Any, Any]:
    """A new model: its layers, and nothing left of the old model's clustering."""
    return {ui.cl_layer: layer_update(sess), ui.cl_status: "", ui.cl_ablation: None}


def outputs(ui: UI) -> list[Any]:
    """Every component show() and reset() change."""
    return [ui.cl_gallery, ui.cl_selected, ui.cl_layer, ui.cl_status, ui.cl_ablation]


@job_errors
def compute_clusters(ui: UI, sess: Session, layer: str, k: float, samples: float,
                     progress: gr.Progress = gr.Progress()) -> dict[Any, Any]:
    """Cluster a layer's channels (cached), then show one overlay tile per cluster."""
    sess = need(sess)
    report = progress_fn(progress)
    with LANE.heavy(sess.jobs, "a clustering", report) as cancel:
        result = clustering.compute_clusters(sess, layer, int(k), int(samples), progress=report,
                                          cancel=cancel)
    S.set_clusters(sess, result)
    msg = (f"{result.k} clusters of {result.num_channels} channels on **{result.layer}** "
           f"from {result.samples} latents; click tiles to select.")
    return {ui.session: sess, ui.cl_status: msg, **view(ui, sess),
            ui.add_layer: gr.update(value=result.layer), ui.cl_ablation: None}


@job_errors
def suggest(ui: UI, sess: Session, layer: str, samples: float,
            progress: gr.Progress = gr.Progress()) -> dict[Any, Any]:
    """Pick k by silhouette score; the clusters are then computed at that k."""
    sess = need(sess)
    report = progress_fn(progress)
    with LANE.heavy(sess.jobs, "a search for k", report) as cancel:
        best = clustering.suggest_k(sess, layer, int(samples), progress=report, cancel=cancel)
    return {ui.cl_k: best, ui.cl_status: f"Suggested k = **{best}** (best silhouette "
                                         f"score); computing its clusters…"}


@user_errors
def click_tile(ui: UI, sess: Session, evt: gr.SelectData) -> dict[Any, Any]:
    sess = need(sess)
    cid = int(evt.index)
    S.toggle_cluster(sess, cid)
    return {ui.session: sess, **view(ui, sess), ui.cl_ablation: clustering.ablation(sess, cid),
            **_where_after_selection(ui, sess)}


@user_errors
def select_clusters(ui: UI, sess: Session, ids: list[int]) -> dict[Any, Any]:
    """Set the selected cluster ids (what 'selected clusters' bends act on)."""
    sess = need(sess)
    added = S.select_clusters(sess, ids)
    out = {ui.session: sess, **view(ui, sess), **_where_after_selection(ui, sess)}
    if added:
        out[ui.cl_ablation] = clustering.ablation(sess, added[-1])
    return out


def _where_after_selection(ui: UI, sess: Session) -> dict[Any, Any]:
    # Selecting clusters is a choice of channels: new bends use them from then on.
    return {ui.add_where: gr.update(value="selected clusters")} if sess.selected else {}


def wire(ui: UI, page: Page) -> None:
    compute_in = [ui.session, ui.cl_layer, ui.cl_k, ui.cl_samples]
    compute_out = [ui.session, ui.cl_status, ui.cl_gallery, ui.cl_selected, ui.add_layer,
                   ui.cl_ablation]
    with_cancel(ui.cl_compute.click, ui.cl_cancel, bind(compute_clusters, ui), compute_in,
                compute_out, api_name="compute_clusters", **ui.heavy())
    # Suggest, then cluster with the k found: Cancel stays live through both.
    found = ui.cl_suggest.click(lambda: gr.update(interactive=True, variant="stop"), None,
                                [ui.cl_cancel], api_name=False, show_progress="hidden",
                                queue=False).then(
        bind(suggest, ui), [ui.session, ui.cl_layer, ui.cl_samples], [ui.cl_k, ui.cl_status],
        api_name="suggest_k", **ui.heavy())
    computed = found.success(bind(compute_clusters, ui), compute_in, compute_out,
                             api_name=False, **ui.heavy())
    idle = dict(fn=lambda: gr.update(interactive=False, variant="secondary"), inputs=None,
                outputs=[ui.cl_cancel], api_name=False, show_progress="hidden", queue=False)
    found.failure(**idle)
    computed.then(**idle)
    ui.cl_cancel.click(cancel_job, [ui.session], None, api_name="cancel_clusters")
    select_out = [ui.session, ui.cl_gallery, ui.cl_selected, ui.cl_ablation, ui.add_where]
    ui.cl_gallery.select(bind(click_tile, ui), [ui.session], select_out, api_name=False,
                         **ui.job())
    ui.cl_selected.input(bind(select_clusters, ui), [ui.session, ui.cl_selected], select_out,
                         api_name="select_clusters", show_progress="hidden")
