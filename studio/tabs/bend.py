"""Bend: a stack of operations on layers' channels, weight edits, and parameter sweeps."""

from __future__ import annotations

from typing import Any

import gradio as gr

from engine.base.errors import StudioError
from engine.tools.bending import OPERATIONS, WEIGHT_OPERATIONS, WeightEdit, undone_by_demodulation
from studio import files, live, render, videos
from studio import session as S
from studio.jobs import frames_job
from studio.limits import LIMITS
from studio.live import PLAY_HTML
from studio.session import Session, bend_label
from studio.tabs import music
from studio.tabs.explore import cancel_job
from studio.ui import (
    LIVE,
    UI,
    Page,
    bind,
    cancel_button,
    capped_slider,
    job_errors,
    layer_update,
    live_pictures,
    need,
    pictures,
    user_errors,
    with_cancel,
)

WHERE_CHOICES = ["selected clusters", "all channels", "random fraction"]
KINDS = S.PARAM_KINDS  # the editor's control kinds and the parameter types each shows

LABEL, ID = "Bend", "bend"  # the tab's title and id (its element: tab-bend)


def _most(kinds: tuple[str, ...]) -> int:
    """The most parameters of these types any bending operation has: one control each."""
    return max(sum(p.type in kinds for p in op.params) for op in OPERATIONS.values())


N_SLIDERS = _most(KINDS["float"])   # generic parameter sliders in the bend editor
N_CHOICES = _most(KINDS["choice"])  # generic dropdowns (rotate: fill, interpolation, pivot)
N_CHECKS = _most(KINDS["bool"])     # generic checkboxes


def layout(ui: UI) -> None:
    with gr.Row():
        ui.add_op = gr.Dropdown([(o.title, o.name) for o in OPERATIONS.values()],
                                value="rotate", label="Operation", elem_id="add-op")
        ui.add_layer = gr.Dropdown([], label="Layer", elem_id="add-layer")
        ui.add_where = gr.Radio(WHERE_CHOICES, value="all channels", label="Channels",
                                elem_id="add-where")
    with gr.Row():
        ui.add_fraction = gr.Slider(0.05, 1, 0.5, step=0.05, visible=False,
                                    label="Random fraction")
        ui.add_btn = gr.Button("Add bend", variant="primary", elem_id="add-bend")
    ui.stack = gr.Radio([], type="index", label="Bend stack (click to edit)", elem_id="stack")
    # Greyed out until a bend is picked: they act on the picked bend (editor()).
    with gr.Row():
        ui.bend_enabled = gr.Checkbox(True, label="Enabled", elem_id="bend-enabled",
                                      interactive=False)
        ui.up_btn = gr.Button("Move up", size="sm", elem_id="bend-up", interactive=False)
        ui.down_btn = gr.Button("Move down", size="sm", elem_id="bend-down",
                                interactive=False)
        ui.remove_btn = gr.Button("Remove", size="sm", variant="stop", elem_id="bend-remove",
                                  interactive=False)
    ui.bend_help = gr.Markdown("")
    ui.p_sliders = [gr.Slider(0, 1, 0, label=f"param {i}", visible=False,
                              elem_id=f"p-slider-{i}") for i in range(N_SLIDERS)]
    ui.p_choices = [gr.Dropdown([], label=f"choice {i}", visible=False)
                    for i in range(N_CHOICES)]
    ui.p_checks = [gr.Checkbox(False, label=f"flag {i}", visible=False)
                   for i in range(N_CHECKS)]
    _weights_layout(ui)
    _sweep_layout(ui)
    music.layout(ui)
    # API-only: set one parameter of one bend by name (gradio_client).
    ui.api_index = gr.Number(0, precision=0, visible=False)
    ui.api_name_box = gr.Textbox("", visible=False)
    ui.api_value = gr.Textbox("", visible=False)
    ui.api_btn = gr.Button(visible=False)


def _weights_layout(ui: UI) -> None:
    with gr.Accordion("Weight edits", open=False):
        with gr.Row():
            ui.w_op = gr.Dropdown([(o.title, o.name) for o in WEIGHT_OPERATIONS.values()],
                                  value="scale", label="Weight edit")
            ui.w_layer = gr.Dropdown([], label="Layer")
            ui.w_axis = gr.Radio(["out", "in"], value="in", label="Channels axis")
        with gr.Row():
            ui.w_amount = gr.Slider(-10, 10, 2, step=0.05, label="Factor / noise std",
                                    elem_id="w-amount")
            ui.w_where = gr.Radio(WHERE_CHOICES, value="random fraction", label="Channels")
            ui.w_fraction = gr.Slider(0.05, 1, 0.5, step=0.05, label="Random fraction",
                                      elem_id="w-fraction")
        with gr.Row():
            ui.w_add = gr.Button("Add weight edit")
            ui.w_clear = gr.Button("Remove all weight edits")
        ui.w_list = gr.Radio([], type="index", elem_id="w-list",
                             label="Weight edits (click one: the slider above changes it)")
        ui.w_remove = gr.Button("Remove this weight edit", size="sm", variant="stop")


def _sweep_layout(ui: UI) -> None:
    with gr.Accordion("Parameter sweep to video", open=False):
        with gr.Row():
            ui.sw_param = gr.Dropdown([], label="Parameter of this bend", elem_id="sw-param")
            ui.sw_from = gr.Number(0, label="From", elem_id="sw-from")
            ui.sw_to = gr.Number(360, label="To", elem_id="sw-to")
        with gr.Row():
            ui.sw_frames = capped_slider(2, LIMITS.video_frames, 48, label="Frames",
                                         elem_id="sw-frames")
            ui.sw_fps = capped_slider(1, LIMITS.video_fps, 24, label="fps", elem_id="sw-fps")
            ui.sw_size = gr.Dropdown([("model size", "0"), ("256 px", "256"), ("512 px", "512")],
                                     value="256", label="Video size")
            ui.sw_btn = gr.Button("Render sweep")
            ui.sw_cancel = cancel_button(elem_id="sw-cancel")
        gr.HTML(PLAY_HTML.format(what="sweep"), padding=False)


# ----------------------------------------------------------------------------------------
# What the tab shows.

def stack_labels(ui: UI, sess: Session) -> dict[Any, Any]:
    bends = sess.recipe.bends
    labels = [(bend_label(i, b), i) for i, b in enumerate(bends)]
    return {ui.stack: gr.update(choices=labels, value=sess.current)}


def editor(ui: UI, sess: Session) -> dict[Any, Any]:
    """Stack list + the pool of generic controls relabelled for the current bend."""
    out = stack_labels(ui, sess)
    cur = sess.current
    b = sess.recipe.bends[cur] if cur is not None else None
    op = OPERATIONS[b.op] if b is not None else None
    pools = {"float": ui.p_sliders, "choice": ui.p_choices, "bool": ui.p_checks}
    used = {kind: 0 for kind in pools}
    numeric = []
    for spec in op.params if op else []:
        kind = next(k for k, types in KINDS.items() if spec.type in types)
        comp = pools[kind][used[kind]]
        used[kind] += 1
        out[comp] = _control(spec, b.params.get(spec.name, spec.default))
        if kind == "float":
            numeric.append(spec.name)
    for kind, comps in pools.items():
        for comp in comps[used[kind]:]:
            out[comp] = gr.update(visible=False)
    picked = b is not None
    out[ui.bend_enabled] = gr.update(value=b.enabled if picked else True, interactive=picked)
    for btn in (ui.up_btn, ui.down_btn, ui.remove_btn):
        out[btn] = gr.update(interactive=picked)
    out[ui.bend_help] = (f"**{op.title}** — {op.help}" if op.help else f"**{op.title}**") \
        if op else ""
    out[ui.sw_param] = gr.update(choices=numeric, value=numeric[0] if numeric else None)
    return out


def _control(spec: Any, value: Any) -> Any:
    label, info = spec.name.replace("_", " "), spec.help or None
    if spec.type in KINDS["float"]:
        step = spec.step or (1 if spec.type == "int" else 0.01)
        return gr.update(visible=True, label=label, info=info, minimum=spec.min,
                         maximum=spec.max, step=step, value=value)
    if spec.type == "choice":
        return gr.update(visible=True, label=label, info=info, choices=list(spec.choices),
                         value=value)
    return gr.update(visible=True, label=label, info=info, value=bool(value))


def editor_outputs(ui: UI) -> list[Any]:
    return [ui.stack, ui.bend_enabled, ui.up_btn, ui.down_btn, ui.remove_btn, ui.bend_help,
            *ui.p_sliders, *ui.p_choices, *ui.p_checks, ui.sw_param]


def weight_list(ui: UI, sess: Session, selected: int | None = None) -> dict[Any, Any]:
    edits = sess.recipe.weight_edits
    labels = [(f"{i + 1}. {WEIGHT_OPERATIONS[e.op].title} @ {e.layer} "
               f"({e.params.get('axis', 'out')}, {e.channels.mode})"
               + "".join(f", {k}={v:g}" if isinstance(v, float) else f", {k}={v}"
                         for k, v in (e.params or {}).items() if k != "axis"), i)
              for i, e in enumerate(edits)]
    if selected is not None and not 0 <= selected < len(edits):
        selected = None
    return {ui.w_list: gr.update(choices=labels, value=selected)}


def show(ui: UI, sess: Session) -> dict[Any, Any]:
    return {**editor(ui, sess), **weight_list(ui, sess)}


def reset(ui: UI, sess: Session) -> dict[Any, Any]:
    """A new model: its layers in both layer lists."""
    return {ui.add_layer: layer_update(sess), ui.w_layer: layer_update(sess)}


def outputs(ui: UI) -> list[Any]:
    """Every component show() and reset() change."""
    return [*editor_outputs(ui), ui.w_list, ui.add_layer, ui.w_layer]


# ----------------------------------------------------------------------------------------
# Bend handlers.

@user_errors
def add_bend(ui: UI, sess: Session, op: str, layer: str, where: str,
             fraction: float) -> dict[Any, Any]:
    """Append a bend (operation on a layer's selected channels) and edit it."""
    sess = need(sess)
    S.add_bend(sess, layer, op, S.selection_for(sess, where, fraction))
    render.check_bend(sess, sess.recipe.bends[-1])
    return {**pictures(ui, sess), **editor(ui, sess)}


@user_errors
def pick_bend(ui: UI, sess: Session, index: int | None) -> dict[Any, Any]:
    sess = need(sess)
    sess.current = index
    return {ui.session: sess, **editor(ui, sess)}


def _current(sess: Session) -> int:
    if sess.current is None:
        raise StudioError("click a bend in the stack first.")
    return sess.current


@user_errors
def bend_up(ui: UI, sess: Session) -> dict[Any, Any]:
    sess = need(sess)
    S.move(sess, "bend", _current(sess), -1)
    return {**pictures(ui, sess), **editor(ui, sess)}


@user_errors
def bend_down(ui: UI, sess: Session) -> dict[Any, Any]:
    sess = need(sess)
    S.move(sess, "bend", _current(sess), +1)
    return {**pictures(ui, sess), **editor(ui, sess)}


@user_errors
def remove_bend(ui: UI, sess: Session) -> dict[Any, Any]:
    sess = need(sess)
    S.remove(sess, "bend", _current(sess))
    return {**pictures(ui, sess), **editor(ui, sess)}


@user_errors
def toggle_bend(ui: UI, sess: Session, on: bool) -> dict[Any, Any]:
    """Enable or disable the bend being edited."""
    sess = need(sess)
    S.toggle(sess, "bend", _current(sess), on)
    return {**pictures(ui, sess), **stack_labels(ui, sess)}


def _set_param(sess: Session, index: int, name: str, value: Any) -> None:
    S.set_bend_param(sess, index, name, value)
    render.check_bend(sess, sess.recipe.bends[index])


def slot_handler(kind: str, slot: int) -> Any:
    """The handler of one generic control: it sets the slot-th parameter of its kind."""
    @user_errors
    def handler(ui: UI, sess: Session, value: Any) -> dict[Any, Any]:
        sess = need(sess)
        # Nothing to set (no bend picked, or a slot this op does not use: a late event after
        # Remove). Not {}: Gradio reads an empty dict as one output value and fails.
        if S.slot_param(sess, kind, slot) is None:
            return {ui.session: sess}
        params = dict(sess.recipe.bends[sess.current].params)
        S.set_bend_slot(sess, kind, slot, value)
        render.check_bend(sess, sess.recipe.bends[sess.current])
        # The stack's labels come back with each image, so the list never shows an older
        # value than the picture does. A value the live channel already applied (and
        # showed) needs no render here.
        same = live.is_active(sess) and sess.recipe.bends[sess.current].params == params
        shown = {} if same else {ui.output: render.render(sess)}
        return {ui.session: sess, **shown, **stack_labels(ui, sess)}
    handler.__name__ = f"bend_{kind}_{slot}"
    return handler


@user_errors
def set_bend_param(ui: UI, sess: Session, index: float, name: str,
                   value: str) -> dict[Any, Any]:
    """Scripting: set parameter `name` of bend `index` (0-based) and render."""
    sess = need(sess)
    _set_param(sess, int(index), name, value)
    return {ui.session: sess, ui.output: render.render(sess)}


# ----------------------------------------------------------------------------------------
# Weight edits.

def _weight_params(op: str, axis: str, amount: float) -> dict[str, Any]:
    """The operation's axis and its first numeric parameter, from the two controls."""
    params: dict[str, Any] = {}
    for p in WEIGHT_OPERATIONS[op].params:
        if p.name == "axis":
            params["axis"] = axis
        elif p.type == "float" and not any(k != "axis" for k in params):
            params[p.name] = float(amount)
    return params


@user_errors
def add_weight_edit(ui: UI, sess: Session, op: str, layer: str, axis: str, amount: float,
                    where: str, fraction: float = 0.5) -> dict[Any, Any]:
    """Append a weight edit (conv weights changed per call, before modulation)."""
    sess = need(sess)
    edit = WeightEdit(layer=layer, op=op, params=_weight_params(op, axis, amount),
                      channels=S.selection_for(sess, where, fraction))
    if undone_by_demodulation(edit):
        raise StudioError("weight demodulation divides this scale back out, so it would "
                          "change nothing; scale some input channels (axis 'in' with a "
                          "random fraction or clusters) or use the Multiply bend.")
    index = S.add_weight_edit(sess, edit)
    render.check_weight_edit(sess, edit)
    return {**pictures(ui, sess), **weight_list(ui, sess, index)}


@user_errors
def change_weight_edit(ui: UI, sess: Session, index: int | None,
                       amount: float) -> dict[Any, Any]:
    """The amount slider changes the weight edit picked in the list."""
    sess = need(sess)
    if index is None:  # the slider moved before any edit was added: it only sets the amount
        return {ui.session: sess}
    e = sess.recipe.weight_edits[int(index)]
    params = dict(e.params)
    if not S.set_weight_amount(sess, int(index), amount):
        return {ui.session: sess}
    render.check_weight_edit(sess, e)
    return {**live_pictures(ui, sess, e.params != params), **weight_list(ui, sess, int(index))}


@user_errors
def remove_weight_edit(ui: UI, sess: Session, index: int | None) -> dict[Any, Any]:
    sess = need(sess)
    if index is None:
        raise StudioError("click a weight edit in the list first.")
    S.remove(sess, "weight edit", int(index))
    return {**pictures(ui, sess), **weight_list(ui, sess)}


@user_errors
def clear_weight_edits(ui: UI, sess: Session) -> dict[Any, Any]:
    sess = need(sess)
    S.remove(sess, "weight edit", None)
    return {**pictures(ui, sess), **weight_list(ui, sess)}


@job_errors
def render_sweep(ui: UI, sess: Session, param: str, start: float, stop: float, frames: float,
                 fps: float, size: str = "256", progress: gr.Progress = gr.Progress()) -> str:
    """Animate one parameter of the current bend from `start` to `stop` (mp4)."""
    sess = need(sess)
    if sess.current is None or not param:
        raise StudioError("click a bend with a numeric parameter first.")
    return files.served(frames_job(
        sess.jobs, "a sweep video", int(frames), progress, size,
        lambda **job: videos.sweep_video(sess, f"bends.{sess.current}.params.{param}",
                                          float(start), float(stop), int(frames), float(fps),
                                          **job)))


def wire(ui: UI, page: Page) -> None:
    _wire_bends(ui)
    _wire_weights(ui)
    with_cancel(ui.sw_btn.click, ui.sw_cancel, bind(render_sweep, ui),
                [ui.session, ui.sw_param, ui.sw_from, ui.sw_to, ui.sw_frames, ui.sw_fps,
                 ui.sw_size], [ui.video], api_name="render_sweep", **ui.heavy())
    ui.sw_cancel.click(cancel_job, [ui.session], None, api_name="cancel_sweep")
    music.wire(ui)


def _wire_bends(ui: UI) -> None:
    outs = [ui.session, ui.output, ui.before, *editor_outputs(ui)]
    ui.add_where.change(lambda where: gr.update(visible=where == "random fraction"),
                        ui.add_where, ui.add_fraction, api_name=False, show_progress="hidden")
    ui.add_btn.click(bind(add_bend, ui), [ui.session, ui.add_op, ui.add_layer, ui.add_where,
                                          ui.add_fraction], outs, api_name="add_bend",
                     **ui.job())
    ui.stack.input(bind(pick_bend, ui), [ui.session, ui.stack],
                   [ui.session, *editor_outputs(ui)], api_name="pick_bend",
                   show_progress="hidden")
    for btn, fn, name in ((ui.up_btn, bend_up, "bend_up"), (ui.down_btn, bend_down,
                                                              "bend_down"),
                          (ui.remove_btn, remove_bend, "remove_bend")):
        btn.click(bind(fn, ui), [ui.session], outs, api_name=name, **ui.job())
    ui.bend_enabled.input(bind(toggle_bend, ui), [ui.session, ui.bend_enabled],
                          [ui.session, ui.output, ui.before, ui.stack], api_name="toggle_bend",
                          show_progress="hidden")
    for kind, comps in (("float", ui.p_sliders), ("choice", ui.p_choices),
                        ("bool", ui.p_checks)):
        prefix = {"float": "slider", "choice": "choice", "bool": "check"}[kind]
        for i, comp in enumerate(comps):
            # The float sliders travel over the live channel, which applies each value:
            # their event fires when the drag ends (on every move on the fallback).
            event = comp.release if kind == "float" else comp.input
            event(bind(slot_handler(kind, i), ui), [ui.session, comp],
                  [ui.session, ui.output, ui.stack], api_name=f"bend_{prefix}_{i}", **LIVE)
    ui.api_btn.click(bind(set_bend_param, ui),
                     [ui.session, ui.api_index, ui.api_name_box, ui.api_value],
                     [ui.session, ui.output], api_name="set_bend_param", **LIVE)


def _wire_weights(ui: UI) -> None:
    outs = [ui.session, ui.output, ui.before, ui.w_list]
    ui.w_where.change(lambda where: gr.update(visible=where == "random fraction"),
                      ui.w_where, ui.w_fraction, api_name=False, show_progress="hidden")
    ui.w_add.click(bind(add_weight_edit, ui),
                   [ui.session, ui.w_op, ui.w_layer, ui.w_axis, ui.w_amount, ui.w_where,
                    ui.w_fraction], outs, api_name="add_weight_edit", **ui.job())
    ui.w_amount.release(bind(change_weight_edit, ui), [ui.session, ui.w_list, ui.w_amount],
                        outs, api_name="change_weight_edit", **LIVE)  # as the bend sliders
    ui.w_remove.click(bind(remove_weight_edit, ui), [ui.session, ui.w_list], outs,
                      api_name="remove_weight_edit", **ui.job())
    ui.w_clear.click(bind(clear_weight_edits, ui), [ui.session], outs,
                     api_name="clear_weight_edits", **ui.job())
