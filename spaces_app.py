"""Entry point for a Hugging Face Space (`app_file`) and for local use.

    python spaces_app.py            # http://127.0.0.1:7860, the embedded default model

Host and port follow Gradio's GRADIO_SERVER_NAME / GRADIO_SERVER_PORT; STUDIO_MODEL picks
the model a session opens on (catalogue id, hf://... or a local checkpoint path). The
STUDIO_MAX_* limits are in engine/base/limits.py and README.md. With persistent storage (/data on
a Space, or STUDIO_DATA_DIR) the caches and outputs live there: studio/storage.py.
"""

from __future__ import annotations

import os

from starlette.middleware import Middleware

from studio import storage

# Before anything reads HF_HOME, STUDIO_OUTPUT_DIR or ACTIVATION_STUDIO_CACHE.
storage.configure()

from studio import live  # noqa: E402
from studio.app import CSS, JS, build_app  # noqa: E402
from studio.limits import LIMITS  # noqa: E402
from studio.page_title import StaticTitle  # noqa: E402

demo = build_app(os.environ.get("STUDIO_MODEL") or None)

if __name__ == "__main__":
    from studio import files

    files.start_sweeper()  # the output and upload folders' byte ceilings, between requests
    from studio import osc
    osc.start()  # OSC over UDP into the live channel (STUDIO_OSC; off on a Space)
    demo.queue(default_concurrency_limit=LIMITS.concurrency, max_size=LIMITS.queue_size).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        # Gradio refuses larger uploads while they stream in, before they reach the disk.
        max_file_size=max(LIMITS.checkpoint_bytes, LIMITS.upload_bytes),
        css=CSS, js=JS, footer_links=["api"],
        app_kwargs={
            # The live channel's WebSocket route on the page's own server (studio/live.py).
            **({"routes": live.routes()} if live.available() else {}),
            "middleware": [Middleware(StaticTitle)],  # <title> in the served HTML itself
        })
