"""Explore's "Teach a direction by example" and "Blend with another model" panels.

Layout and wiring; the logic is in studio.teach (label book, sample pages, training) and
studio.session (the blend edit). `explore.layout` / `explore.wire` call `layout` / `wire`
here. A trained boundary becomes Explore's boundary direction: the method switches to
"Boundary file" and the first direction slider moves along it.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from engine.tools.blend import describe
from studio import files, models, teach, uploads
from studio import session as S
from studio.limits import LIMITS
from studio.session import Session
from studio.ui import LIVE, UI, bind, checked_file, job_errors, need, pictures, user_errors

DEFAULT_PAGE = 12
GRID_COLUMNS = 6


def layout(ui: UI) -> None:
    _teach_layout(ui)
    _blend_layout(ui)


def _teach_layout(ui: UI) -> None:
    with gr.Accordion("Teach a direction by example", open=False, elem_id="teach"):
        gr.Markdown("Mark samples that have an attribute and samples that do not (click a "
                    "sample to cycle it: has it, does not, unmarked); a linear SVM on their "
                    "w finds the direction between them (InterFaceGAN). More marks give a "
                    "better direction; the cross-validated accuracy says how well it "
                    "separates samples it did not see.")
        ui.teach_book = gr.State(teach.LabelBook())
        ui.teach_shown = gr.State([])
        ui.teach_trained = gr.State({})      # {name: boundary path} of this model
        with gr.Row():
            ui.teach_first = gr.Number(0, precision=0, minimum=0, label="First seed",
                                       elem_id="teach-first")
            ui.teach_count = gr.Slider(4, teach.MAX_PAGE, DEFAULT_PAGE, step=1,
                                       label="Samples", elem_id="teach-count")
            ui.teach_show = gr.Button("Show samples", elem_id="teach-show")
            ui.teach_next = gr.Button("Next page", elem_id="teach-next")
        ui.teach_grid = gr.Gallery(label="Samples", columns=GRID_COLUMNS, height="auto",
                                   allow_preview=False, elem_id="teach-grid",
                                   elem_classes="pixelated")
        with gr.Row():
            ui.teach_yes = gr.CheckboxGroup([], label="Has it", elem_id="teach-yes")
            ui.teach_no = gr.CheckboxGroup([], label="Does not", elem_id="teach-no")
        ui.teach_status = gr.Markdown("", elem_id="teach-status")
        with gr.Row():
            ui.teach_name = gr.Textbox("", label="Name", placeholder="smile",
                                       elem_id="teach-name")
            ui.teach_hold = gr.Dropdown([], value=[], multiselect=True, elem_id="teach-hold",
                                        label="Hold fixed (conditional boundary)")
            ui.teach_train = gr.Button("Train boundary", variant="primary",
                                       elem_id="teach-train")
        ui.teach_result = gr.Markdown("", elem_id="teach-result")
        with gr.Row():
            ui.teach_file = gr.File(label="Boundary (.npy, InterFaceGAN format)",
                                    interactive=False, height=80, elem_id="teach-file")
            ui.teach_labels = gr.File(label="Your labels (seed,label CSV)", interactive=False,
                                      height=80, elem_id="teach-labels")


def _blend_layout(ui: UI) -> None:
    with gr.Accordion("Blend with another model", open=False, elem_id="blend"):
        gr.Markdown("Mix this model (A) with another of the same architecture (B), such as "
                    "a fine-tuned copy: swap layers at a resolution (A up to it, B after) or "
                    "interpolate the weights.")
        with gr.Row():
            ui.blend_on = gr.Checkbox(False, label="Blend", elem_id="blend-on")
            ui.blend_model = gr.Textbox("", label="Model B (id, hf://..., or upload)",
                                        elem_id="blend-model")
            ui.blend_upload = checked_file(gr.UploadButton(
                "Upload B", file_types=list(models.CHECKPOINT_TYPES), size="sm",
                elem_id="blend-upload"))
        with gr.Row():
            ui.blend_mode = gr.Radio([("Layer swap", "swap"), ("Interpolate", "interpolate")],
                                     value="swap", label="How", elem_id="blend-mode")
            ui.blend_res = gr.Dropdown([], label="A up to block", elem_id="blend-res")
            ui.blend_alpha = gr.Slider(0, 1, 0.5, step=0.01, label="Weight of B (interpolate)",
                                       elem_id="blend-alpha")
            ui.blend_mapping = gr.Radio([("A", "a"), ("B", "b")], value="a",
                                        label="Mapping from", elem_id="blend-mapping")
        ui.blend_alphas = gr.Textbox("", label="Per-block weights of B (interpolate; b4 first, "
                                     "overrides the slider; Enter applies)",
                                     placeholder="0, 0, 0.5, 1, 1", elem_id="blend-alphas")
        ui.blend_note = gr.Markdown("", elem_id="blend-note")


# ----------------------------------------------------------------------------------------
# What the panels show for a session (model switch, loaded recipe, undo, redo).

def _blocks(sess: Session) -> list[str]:
    """The model's blocks (StyleGAN2); none for StyleGAN3, which blending does not cover."""
    synthesis = models.generator(sess.model).synthesis
    return [f"b{r}" for r in getattr(synthesis, "block_resolutions", [])]


def show(ui: UI, sess: Session) -> dict[Any, Any]:
    """The blend controls set to the session's blend (the label book is page state)."""
    blocks = _blocks(sess)
    spec = sess.recipe.blend
    if not blocks:
        return {ui.blend_on: False, ui.blend_res: gr.update(choices=[], value=None),
                ui.blend_note: "Blending by block works on StyleGAN2 models."}
    if spec is None:
        res = "b16" if "b16" in blocks else blocks[len(blocks) // 2]
        return {ui.blend_on: False, ui.blend_res: gr.update(choices=blocks, value=res),
                ui.blend_note: ""}
    return {ui.blend_on: True, ui.blend_model: spec.model, ui.blend_mode: spec.mode,
            ui.blend_res: gr.update(choices=blocks, value=f"b{spec.swap_res}"),
            ui.blend_alpha: spec.alpha, ui.blend_mapping: spec.mapping,
            ui.blend_alphas: ", ".join(f"{a:g}" for a in spec.alphas or []),
            ui.blend_note: describe(spec, models.generator(sess.model))}


def reset(ui: UI, sess: Session) -> dict[Any, Any]:
    """A new model: marks and boundaries belong to the old model's W."""
    empty = gr.update(choices=[], value=[])
    return {ui.teach_book: teach.LabelBook(), ui.teach_shown: [], ui.teach_trained: {},
            ui.teach_grid: [], ui.teach_yes: empty, ui.teach_no: empty, ui.teach_status: "",
            ui.teach_result: "", ui.teach_file: None, ui.teach_labels: None,
            ui.teach_hold: empty}


def outputs(ui: UI) -> list[Any]:
    """Every component show() and reset() change."""
    return [ui.blend_on, ui.blend_model, ui.blend_mode, ui.blend_res, ui.blend_alpha,
            ui.blend_mapping, ui.blend_alphas, ui.blend_note, ui.teach_book,
            ui.teach_shown, ui.teach_trained, ui.teach_grid, ui.teach_yes,
            ui.teach_no, ui.teach_status, ui.teach_result, ui.teach_file, ui.teach_labels,
            ui.teach_hold]


# ----------------------------------------------------------------------------------------
# Handlers: teaching.

def _labels_file(sess: Session, book: teach.LabelBook) -> str | None:
    if not book.marks:
        return None
    path = files.new_output_path(sess.token, "labels", ".csv")
    path.write_text(book.to_csv(), encoding="utf-8")
    return str(path)


@job_errors
def show_page(ui: UI, sess: Session | None, book: teach.LabelBook, page: list[int],
              yes: list[int], no: list[int], first: float, count: float, psi: float,
              advance: bool = False) -> dict[Any, Any]:
    """A page of samples to mark (the marks of the page on screen are kept)."""
    sess = need(sess)
    book.mark(page, yes or [], no or [])
    start = int(first or 0) + (len(page) if advance and page else 0)
    seeds = teach.page_seeds(start, int(count))
    page_yes, page_no = book.on_page(seeds)
    choices = [(f"seed {s}", s) for s in seeds]
    return {ui.teach_book: book, ui.teach_shown: seeds, ui.teach_first: start,
            ui.teach_grid: teach.sample_page(sess.model, seeds, float(psi)),
            ui.teach_yes: gr.update(choices=choices, value=page_yes),
            ui.teach_no: gr.update(choices=choices, value=page_no),
            ui.teach_status: book.status(), ui.teach_labels: _labels_file(sess, book)}


def next_page(ui: UI, *args: Any) -> dict[Any, Any]:
    """The next page of samples (the marks of this one are kept)."""
    return show_page(ui, *args, advance=True)


@job_errors
def mark(ui: UI, book: teach.LabelBook, page: list[int], yes: list[int],
         no: list[int]) -> dict[Any, Any]:
    book.mark(page, yes or [], no or [])
    return {ui.teach_book: book, ui.teach_status: book.status()}


@job_errors
def click_sample(ui: UI, book: teach.LabelBook, page: list[int], yes: list[int],
                 no: list[int], evt: gr.SelectData) -> dict[Any, Any]:
    """Clicking a sample cycles it: unmarked -> has it -> does not -> unmarked."""
    seed = page[evt.index]
    yes, no = list(yes or []), list(no or [])
    if seed in yes:
        yes.remove(seed)
        no.append(seed)
    elif seed in no:
        no.remove(seed)
    else:
        yes.append(seed)
    book.mark(page, yes, no)
    return {ui.teach_book: book, ui.teach_yes: yes, ui.teach_no: no,
            ui.teach_status: book.status()}


@job_errors
def train(ui: UI, sess: Session | None, book: teach.LabelBook, page: list[int],
          yes: list[int], no: list[int], trained: dict[str, str], name: str,
          hold: list[str], psi: float) -> dict[Any, Any]:
    """Fit the boundary of the marked samples; it then drives the first direction slider."""
    sess = need(sess)
    book.mark(page, yes or [], no or [])
    conditions = [trained[h] for h in (hold or []) if h in trained]
    for path in conditions:
        files.check_session_file(path, sess.token, sess.uploads)
    tb = teach.train(sess.model, book, float(psi), name or "", conditions, owner=sess)
    label = tb.name if tb.name not in trained else f"{tb.name} ({len(trained) + 1})"
    trained = {**trained, label: tb.path}
    out = {ui.teach_book: book, ui.teach_trained: trained,
           ui.teach_result: f"**{label}**: {tb.summary}. It now drives the first direction "
                            f"slider." + _replaced_note(sess) + _few_marks_note(book),
           ui.teach_file: tb.path, ui.teach_labels: _labels_file(sess, book),
           ui.teach_hold: gr.update(choices=list(trained), value=[]),
           ui.dir_method: "file", ui.boundary: gr.update(value=tb.path, visible=True)}
    for i, slider in enumerate(ui.dir_sliders):
        out[slider] = gr.update(value=0.0, visible=i == 0)
    return out


# Fewer marks of either kind than this and the cross-validated accuracy is mostly chance.
ENOUGH_MARKS = 10


def _replaced_note(sess: Session) -> str:
    """The direction amounts the new boundary replaces (the sliders then drive it alone)."""
    names = {"sefa": "SeFa", "ganspace": "GANSpace", "file": "boundary"}
    used = [f"{names.get(d.method, d.method)} direction {d.index} at {d.amount:g}"
            for d in sess.recipe.latent.directions if d.amount]
    if not used:
        return ""
    return (f" The directions in use ({', '.join(used)}) are set to 0; Ctrl+Z brings them "
            f"back.")


def _few_marks_note(book: teach.LabelBook) -> str:
    yes = sum(bool(v) for v in book.marks.values())
    no = len(book.marks) - yes
    if min(yes, no) >= ENOUGH_MARKS:
        return ""
    return (f" With {yes} marked yes and {no} no this is a rough guess: mark at least "
            f"{ENOUGH_MARKS} of each (Next page shows more samples).")


@job_errors
def boundary_from_labels(ui: UI, sess: Session | None, labels: str, psi: float,
                         name: str) -> tuple[str, str]:
    """API: `seed,label` lines (label yes/no) in; the boundary .npy and its accuracy out."""
    sess = need(sess)
    tb = teach.train_from_labels(sess.model, labels or "", float(psi), name or "",
                                 owner=sess)
    return files.served(tb.path), tb.summary


# ----------------------------------------------------------------------------------------
# Handlers: blending.

@user_errors
def set_blend(ui: UI, sess: Session, on: bool, other: str, mode: str, res: str,
              alpha: float, mapping: str, alphas: str,
              progress: gr.Progress = gr.Progress()) -> dict[Any, Any]:
    """Blend the model with model B (or stop); the canvas shows the blend."""
    sess = need(sess)
    spec = teach.blend_spec(on, other, mode, res, alpha, mapping, alphas)
    if spec is not None:
        if models.is_path_spec(spec.model):
            files.check_session_file(spec.model, sess.token, sess.uploads)
        models.load(spec.model, lambda f, m: progress(f, desc=m))
    S.set_blend(sess, spec)
    note = "" if spec is None else describe(spec, models.generator(sess.model))
    return {**pictures(ui, sess), ui.blend_note: note}


@job_errors
def upload_b(ui: UI, sess: Session | None, file: Any) -> dict[Any, Any]:
    sess = need(sess)
    path = str(uploads.upload_path(file, "checkpoint", limit=LIMITS.checkpoint_bytes))
    sess.uploads.add(path)
    return {ui.blend_model: path, ui.blend_on: True}


def wire(ui: UI, rerender: Any) -> None:
    """The panels' events; `rerender(event)` chains Explore's set_latent after an event."""
    page_in = [ui.session, ui.teach_book, ui.teach_shown, ui.teach_yes, ui.teach_no,
               ui.teach_first, ui.teach_count, ui.psi]
    page_out = [ui.teach_book, ui.teach_shown, ui.teach_first, ui.teach_grid, ui.teach_yes,
                ui.teach_no, ui.teach_status, ui.teach_labels]
    ui.teach_show.click(bind(show_page, ui), page_in, page_out, api_name="teach_samples",
                        **ui.job())
    ui.teach_next.click(bind(next_page, ui), page_in, page_out, api_name="teach_next_page",
                        **ui.job())
    marks_in = [ui.teach_book, ui.teach_shown, ui.teach_yes, ui.teach_no]
    for group in (ui.teach_yes, ui.teach_no):
        # The last tick carries every mark of the page, so ticks that arrive while one is
        # recorded may be skipped ("once", the default, would drop the last one too).
        group.input(bind(mark, ui), marks_in, [ui.teach_book, ui.teach_status],
                    api_name=False, show_progress="hidden", trigger_mode="always_last")
    ui.teach_grid.select(bind(click_sample, ui), marks_in,
                         [ui.teach_book, ui.teach_yes, ui.teach_no, ui.teach_status],
                         api_name=False, show_progress="hidden", trigger_mode="multiple")
    trained = ui.teach_train.click(
        bind(train, ui), [ui.session, *marks_in, ui.teach_trained, ui.teach_name,
                          ui.teach_hold, ui.psi],
        [ui.teach_book, ui.teach_trained, ui.teach_result, ui.teach_file, ui.teach_labels,
         ui.teach_hold, ui.dir_method, ui.boundary, *ui.dir_sliders],
        api_name="teach_train", **ui.job())
    rerender(trained)
    labels_text, name = gr.Textbox(visible=False), gr.Textbox(visible=False)
    gr.Button(visible=False).click(bind(boundary_from_labels, ui),
                                   [ui.session, labels_text, ui.psi, name],
                                   [ui.teach_file, ui.teach_result],
                                   api_name="boundary_from_labels", **ui.job())

    blend_in = [ui.session, ui.blend_on, ui.blend_model, ui.blend_mode, ui.blend_res,
                ui.blend_alpha, ui.blend_mapping, ui.blend_alphas]
    blend_out = [ui.session, ui.output, ui.before, ui.blend_note]
    setter = bind(set_blend, ui)
    for comp in (ui.blend_on, ui.blend_mode, ui.blend_res, ui.blend_mapping):
        comp.input(setter, blend_in, blend_out, api_name=False, **ui.job())
    for box in (ui.blend_model, ui.blend_alphas):
        box.submit(setter, blend_in, blend_out, api_name=False, **ui.job())
    ui.blend_alpha.input(setter, blend_in, blend_out, api_name=False, **LIVE)
    gr.Button(visible=False).click(setter, blend_in, blend_out, api_name="set_blend",
                                   **ui.job())
    ui.blend_upload.upload(bind(upload_b, ui), [ui.session, ui.blend_upload],
                           [ui.blend_model, ui.blend_on], api_name=False).then(
        setter, blend_in, blend_out, api_name=False, **ui.job())
