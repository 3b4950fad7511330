"""Recipes as files for the studio: the server paths a recipe may name, and bundles (a
recipe zipped with the files it names). Gradio-free; the bundle format is engine.recipes.bundle.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from engine.base.errors import StudioError
from engine.models import zoo
from engine.recipes import bundle, recipe
from studio import files
from studio.limits import SERVER_FILES
from studio.models import is_path_spec
from studio.session import Session


def check_recipe_files(sess: Session, r: recipe.Recipe) -> None:
    """Every server path a recipe names must be the session's own, shipped, or uploaded by
    it; a recipe never makes the server show a picture this session was not given."""
    def mine(path: str) -> None:
        files.check_session_file(path, sess.token, sess.uploads)

    if is_path_spec(r.model):
        mine(r.model)
    if r.translator is not None and r.translator.encoder and \
            not r.translator.encoder.startswith(zoo.HF_PREFIX):
        mine(r.translator.encoder)
    if r.translator is not None and r.translator.image:
        if SERVER_FILES == "any" and not files.is_output(r.translator.image):
            raise StudioError("this recipe translates a picture that was not uploaded to "
                              "this studio; upload the picture on the Translate tab and "
                              "translate it there.")
        mine(r.translator.image)
    for d in r.latent.directions:
        if getattr(d, "path", None):
            mine(d.path)
    if r.blend is not None and is_path_spec(r.blend.model):
        mine(r.blend.model)


def save_bundle(sess: Session) -> Path:
    """The session's recipe with its files, as a zip in the session's folder."""
    return bundle.save_bundle(sess.recipe, files.new_output_path(sess.token, "bundle", ".zip"))


def open_bundle(sess: Session, path: Path) -> recipe.Recipe:
    """An uploaded bundle's recipe, its files unpacked into the session's folder (so the
    session may open them, and nobody else)."""
    files.make_room()
    return bundle.read_bundle(path, files.session_dir(sess.token) / "bundles" / uuid.uuid4().hex)
