"""The Activation Studio page: a model bar, five tabs, one large output canvas.

`build_app()` returns the gr.Blocks; `spaces_app.py` launches it. Per-user state lives in a
gr.State holding a session dict (model spec + recipe + clusters); callbacks edit that and
ask studio.backend (hence engine) for pictures.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import gradio as gr

from engine.errors import StudioError
from studio import backend

CSS = """
#canvas img { image-rendering: pixelated; }
#model-card { font-size: 0.9em; }
"""


def user_errors(fn: Callable) -> Callable:
    """Show engine's one-sentence StudioError as a toast instead of a traceback."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except StudioError as exc:
            raise gr.Error(str(exc), print_exception=False) from exc
    return wrapper


def new_session(spec: str) -> dict[str, Any]:
    return {"model": spec, "latent": {"seed": 0, "psi": 0.7}}


def _card(info: backend.ModelInfo) -> str:
    chans = ", ".join(f"{k} {v}" for k, v in info.channels.items() if not k.endswith("torgb"))
    return (f"**{info.title}** · {info.resolution}x{info.resolution} px · "
            f"{len(info.layers)} layers · {info.num_ws} ws of {info.w_dim}  \n"
            f"channels: {chans}")


def build_app(default_model: str | None = None) -> gr.Blocks:
    """The whole page; `default_model` is the spec loaded when a session opens."""
    default_model = default_model or backend.DEFAULT_MODEL

    with gr.Blocks(title="Activation Studio") as demo:
        session = gr.State(None)
        with gr.Row(elem_id="model-bar"):
            model_box = gr.Dropdown(choices=[default_model], value=default_model,
                                    allow_custom_value=True, label="Model",
                                    info="catalogue id, hf://owner/repo/file or a path",
                                    scale=3)
            load_btn = gr.Button("Load model", scale=1)
            model_card = gr.Markdown(elem_id="model-card")
        with gr.Row():
            with gr.Column(scale=3):
                with gr.Tabs():
                    with gr.Tab("Explore", id="explore"):
                        seed = gr.Slider(0, 10000, value=0, step=1, label="Seed")
                        psi = gr.Slider(-1, 2, value=0.7, step=0.01, label="Truncation psi")
                    with gr.Tab("Clusters", id="clusters"):
                        gr.Markdown("Coming soon.")
                    with gr.Tab("Bend", id="bend"):
                        gr.Markdown("Coming soon.")
                    with gr.Tab("Translate", id="translate"):
                        gr.Markdown("Coming soon.")
                    with gr.Tab("Project", id="project"):
                        gr.Markdown("Coming soon.")
            with gr.Column(scale=2):
                output = gr.Image(label="Output", type="pil", format="png", height=420,
                                  interactive=False, elem_id="canvas")

        @user_errors
        def load(spec: str, progress: gr.Progress = gr.Progress()) -> tuple:
            info = backend.model_info(spec)
            sess = new_session(spec)
            return sess, _card(info), backend.render(spec, sess["latent"])

        @user_errors
        def set_latent(sess: dict, seed_v: float, psi_v: float) -> tuple:
            sess = sess or new_session(default_model)
            sess["latent"].update(seed=seed_v, psi=psi_v)
            return sess, backend.render(sess["model"], sess["latent"])

        load_btn.click(load, [model_box], [session, model_card, output], api_name="load_model")
        demo.load(load, [model_box], [session, model_card, output], api_name=False)
        for comp in (seed, psi):
            comp.input(set_latent, [session, seed, psi], [session, output],
                       api_name=False, trigger_mode="always_last", show_progress="hidden")
    return demo
