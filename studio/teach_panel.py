"""Explore's "Teach a direction by example" and "Blend with another model" panels.

Layout and wiring only; the logic is in studio.teach (Gradio-free). `build_teach` and
`build_blend` are called inside the Explore tab; each returns its components, and `wire_*`
connects them to the session and to the direction and output controls the tab owns. A
trained boundary becomes the tab's boundary direction: the method switches to "Boundary
file" and the first direction slider moves along it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from engine.errors import StudioError
from studio import backend, teach

DEFAULT_PAGE = 12
GRID_COLUMNS = 6


@dataclass
class TeachPanel:
    book: gr.State          # teach.LabelBook
    shown: gr.State         # seeds on the page now
    trained: gr.State       # {name: path} of this session's boundaries
    first: gr.Number
    count: gr.Slider
    show: gr.Button
    next_page: gr.Button
    grid: gr.Gallery
    yes: gr.CheckboxGroup
    no: gr.CheckboxGroup
    status: gr.Markdown
    name: gr.Textbox
    hold: gr.Dropdown
    train: gr.Button
    result: gr.Markdown
    file: gr.File
    labels_csv: gr.File


def build_teach() -> TeachPanel:
    with gr.Accordion("Teach a direction by example", open=False, elem_id="teach"):
        gr.Markdown("Mark samples that have an attribute and samples that do not (click a "
                    "sample to cycle it: has it, does not, unmarked); a linear "
                    "SVM on their w finds the direction between them (InterFaceGAN). More "
                    "marks give a better direction; the cross-validated accuracy says how "
                    "well it separates samples it did not see.")
        with gr.Row():
            first = gr.Number(0, precision=0, minimum=0, label="First seed",
                              elem_id="teach-first")
            count = gr.Slider(4, teach.MAX_PAGE, DEFAULT_PAGE, step=1, label="Samples",
                              elem_id="teach-count")
            show = gr.Button("Show samples", elem_id="teach-show")
            next_page = gr.Button("Next page", elem_id="teach-next")
        grid = gr.Gallery(label="Samples", columns=GRID_COLUMNS, height="auto",
                          allow_preview=False, elem_id="teach-grid", elem_classes="pixelated")
        with gr.Row():
            yes = gr.CheckboxGroup([], label="Has it", elem_id="teach-yes")
            no = gr.CheckboxGroup([], label="Does not", elem_id="teach-no")
        status = gr.Markdown("", elem_id="teach-status")
        with gr.Row():
            name = gr.Textbox("", label="Name", placeholder="smile", elem_id="teach-name")
            hold = gr.Dropdown([], value=[], multiselect=True, elem_id="teach-hold",
                               label="Hold fixed (conditional boundary)")
            train = gr.Button("Train boundary", variant="primary", elem_id="teach-train")
        result = gr.Markdown("", elem_id="teach-result")
        with gr.Row():
            file = gr.File(label="Boundary (.npy, InterFaceGAN format)", interactive=False,
                           height=80, elem_id="teach-file")
            labels_csv = gr.File(label="Your labels (seed,label CSV)", interactive=False,
                                 height=80, elem_id="teach-labels")
    return TeachPanel(gr.State(teach.LabelBook()), gr.State([]), gr.State({}), first, count,
                      show, next_page, grid, yes, no, status, name, hold, train, result,
                      file, labels_csv)


def _labels_file(book: teach.LabelBook) -> str | None:
    if not book.marks:
        return None
    path = backend.new_output_path("labels", ".csv")
    path.write_text(book.to_csv(), encoding="utf-8")
    return str(path)


def wire_teach(p: TeachPanel, session: gr.State, psi: gr.Slider, dir_method: gr.Radio,
               boundary: gr.File, first_slider: gr.Slider, errors: Callable,
               then: Callable[[Any], Any], job: dict) -> None:
    """Connect the panel; `then(event)` chains the tab's re-render after a new direction."""

    @errors
    def show_page(sess: Any, book: teach.LabelBook, shown: list[int], yes: list[int],
                  no: list[int], first: float, count: float, psi_v: float,
                  advance: bool = False) -> dict:
        if sess is None:
            raise StudioError("The page is still loading its model; wait a moment.")
        book.mark(shown, yes or [], no or [])
        start = int(first or 0) + (len(shown) if advance and shown else 0)
        seeds = teach.page_seeds(start, int(count))
        page_yes, page_no = book.on_page(seeds)
        choices = [(f"seed {s}", s) for s in seeds]
        return {p.book: book, p.shown: seeds, p.first: start,
                p.grid: teach.sample_page(sess.model, seeds, float(psi_v)),
                p.yes: gr.update(choices=choices, value=page_yes),
                p.no: gr.update(choices=choices, value=page_no),
                p.status: book.status(), p.labels_csv: _labels_file(book)}

    def next_page(*args: Any) -> dict:
        return show_page(*args, advance=True)

    page_in = [session, p.book, p.shown, p.yes, p.no, p.first, p.count, psi]
    page_out = [p.book, p.shown, p.first, p.grid, p.yes, p.no, p.status, p.labels_csv]
    p.show.click(show_page, page_in, page_out, api_name="teach_samples", **job)
    p.next_page.click(errors(next_page), page_in, page_out, api_name="teach_next_page",
                      **job)

    @errors
    def mark(book: teach.LabelBook, shown: list[int], yes: list[int], no: list[int]) -> dict:
        book.mark(shown, yes or [], no or [])
        return {p.book: book, p.status: book.status()}

    for group in (p.yes, p.no):
        # The last tick carries every mark of the page, so ticks that arrive while one is
        # being recorded can be skipped ("once", the default, would drop the last one too).
        group.input(mark, [p.book, p.shown, p.yes, p.no], [p.book, p.status], api_name=False,
                    show_progress="hidden", trigger_mode="always_last")

    @errors
    def click_sample(book: teach.LabelBook, shown: list[int], yes: list[int], no: list[int],
                     evt: gr.SelectData) -> dict:
        """Clicking a sample cycles it: unmarked -> has it -> does not -> unmarked."""
        seed = shown[evt.index]
        yes, no = list(yes or []), list(no or [])
        if seed in yes:
            yes.remove(seed)
            no.append(seed)
        elif seed in no:
            no.remove(seed)
        else:
            yes.append(seed)
        book.mark(shown, yes, no)
        return {p.book: book, p.yes: yes, p.no: no, p.status: book.status()}

    p.grid.select(click_sample, [p.book, p.shown, p.yes, p.no],
                  [p.book, p.yes, p.no, p.status], api_name=False, show_progress="hidden",
                  trigger_mode="multiple")  # every click counts

    @errors
    def train(sess: Any, book: teach.LabelBook, shown: list[int], yes: list[int],
              no: list[int], trained: dict, name: str, hold: list[str], psi_v: float) -> dict:
        if sess is None:
            raise StudioError("The page is still loading its model; wait a moment.")
        book.mark(shown, yes or [], no or [])
        conditions = [trained[h] for h in (hold or []) if h in trained]
        tb = teach.train(sess.model, book, float(psi_v), name or "", conditions)
        label = tb.name if tb.name not in trained else f"{tb.name} ({len(trained) + 1})"
        trained = {**trained, label: tb.path}
        return {p.book: book, p.trained: trained, p.result: f"**{label}**: {tb.summary}. "
                f"It now drives the first direction slider.",
                p.file: tb.path, p.labels_csv: _labels_file(book),
                p.hold: gr.update(choices=list(trained), value=[]),
                dir_method: "file", boundary: gr.update(value=tb.path, visible=True),
                first_slider: 0.0}

    event = p.train.click(train, [session, p.book, p.shown, p.yes, p.no, p.trained, p.name,
                                  p.hold, psi],
                          [p.book, p.trained, p.result, p.file, p.labels_csv, p.hold,
                           dir_method, boundary, first_slider], api_name="teach_train", **job)
    then(event)

    @errors
    def from_labels(sess: Any, labels_text: str, psi_v: float, name: str) -> tuple[str, str]:
        """API: `seed,label` lines in; the boundary .npy and its accuracy out."""
        if sess is None:
            raise StudioError("The page is still loading its model; wait a moment.")
        tb = teach.train_from_labels(sess.model, labels_text or "", float(psi_v), name or "")
        return tb.path, tb.summary

    hidden_text = gr.Textbox(visible=False)
    hidden_name = gr.Textbox(visible=False)
    gr.Button(visible=False).click(from_labels, [session, hidden_text, psi, hidden_name],
                                   [p.file, p.result], api_name="boundary_from_labels", **job)


@dataclass
class BlendPanel:
    on: gr.Checkbox
    other: gr.Textbox
    upload: gr.UploadButton
    mode: gr.Radio
    swap_res: gr.Dropdown
    alpha: gr.Slider
    mapping: gr.Radio
    note: gr.Markdown


def build_blend() -> BlendPanel:
    with gr.Accordion("Blend with another model", open=False, elem_id="blend"):
        gr.Markdown("Mix this model (A) with another of the same architecture (B), such as "
                    "a fine-tuned copy: swap layers at a resolution (A up to it, B after) or "
                    "interpolate the weights.")
        with gr.Row():
            on = gr.Checkbox(False, label="Blend", elem_id="blend-on")
            other = gr.Textbox("", label="Model B (id, hf://..., or upload)",
                               elem_id="blend-model")
            upload = gr.UploadButton("Upload B", file_types=[".pkl", ".pt", ".safetensors"],
                                     size="sm", elem_id="blend-upload")
        with gr.Row():
            mode = gr.Radio([("Layer swap", "swap"), ("Interpolate", "interpolate")],
                            value="swap", label="How", elem_id="blend-mode")
            swap_res = gr.Dropdown([], label="A up to block", elem_id="blend-res")
            alpha = gr.Slider(0, 1, 0.5, step=0.01, label="Weight of B (interpolate)",
                              elem_id="blend-alpha")
            mapping = gr.Radio([("A", "a"), ("B", "b")], value="a", label="Mapping from",
                               elem_id="blend-mapping")
        note = gr.Markdown("", elem_id="blend-note")
    return BlendPanel(on, other, upload, mode, swap_res, alpha, mapping, note)


def blend_resolutions(spec: str) -> Any:
    """The swap dropdown for a model: its blocks, b16 (or the middle one) chosen."""
    G = backend.generator(spec)
    blocks = [f"b{r}" for r in G.synthesis.block_resolutions]
    value = "b16" if "b16" in blocks else blocks[len(blocks) // 2]
    return gr.update(choices=blocks, value=value)


def wire_blend(p: BlendPanel, session: gr.State, output: gr.Image, errors: Callable,
               then: Callable[[Any], Any], job: dict, live: dict) -> None:
    """Connect the panel: every change re-blends (cached) and re-renders the output."""
    from engine.blend import describe
    from studio import uploads
    from studio.limits import LIMITS

    @errors
    def set_blend(sess: Any, on: bool, other: str, mode: str, res: str, alpha: float,
                  mapping: str, progress: gr.Progress = gr.Progress()) -> dict:
        if sess is None:
            raise StudioError("The page is still loading its model; wait a moment.")
        spec = teach.blend_spec(on, other, mode, res, alpha, mapping)
        if spec is not None:
            backend.load(spec.model, lambda f, m: progress(f, desc=m))
        old = sess.recipe.blend
        sess.recipe.blend = spec
        try:
            image = backend.render(sess)
        except Exception:
            sess.recipe.blend = old  # a blend that cannot render leaves the session as it was
            raise
        note = "" if spec is None else describe(spec, backend.generator(sess.model))
        return {session: sess, output: image, p.note: note}

    inputs = [session, p.on, p.other, p.mode, p.swap_res, p.alpha, p.mapping]
    outputs = [session, output, p.note]
    for comp in (p.on, p.mode, p.swap_res, p.mapping):
        then(comp.input(set_blend, inputs, outputs, api_name=False, **job))
    then(p.other.submit(set_blend, inputs, outputs, api_name=False, **job))
    then(p.alpha.input(set_blend, inputs, outputs, api_name=False, **live))
    then(gr.Button(visible=False).click(set_blend, inputs, outputs, api_name="set_blend",
                                        **job))

    @errors
    def upload_b(file: Any) -> dict:
        path = str(uploads.upload_path(file, "checkpoint", limit=LIMITS.checkpoint_bytes))
        return {p.other: path, p.on: True}

    then(p.upload.upload(upload_b, [p.upload], [p.other, p.on], api_name=False).then(
        set_blend, inputs, outputs, api_name=False, **job))


def reset_for_model(t: TeachPanel, b: BlendPanel) -> tuple[Callable[[Any], dict], list]:
    """(fn, outputs) clearing both panels after a model loads: marks and boundaries belong
    to one model's W, and the swap choices are its blocks."""

    def reset(sess: Any) -> dict:
        out: dict = {t.book: teach.LabelBook(), t.shown: [], t.trained: {}, t.grid: [],
                     t.yes: gr.update(choices=[], value=[]),
                     t.no: gr.update(choices=[], value=[]), t.status: "", t.result: "",
                     t.file: None, t.labels_csv: None,
                     t.hold: gr.update(choices=[], value=[]), b.on: False, b.note: ""}
        if sess is not None:
            try:
                out[b.swap_res] = blend_resolutions(sess.model)
            except StudioError:
                pass
        return out

    outputs = [t.book, t.shown, t.trained, t.grid, t.yes, t.no, t.status, t.result, t.file,
               t.labels_csv, t.hold, b.on, b.note, b.swap_res]
    return reset, outputs
