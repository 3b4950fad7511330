"""The Space deploys as-is: its front matter, its pinned versions, persistent storage, and the
app started the way a Space starts it (SPACE_ID set, 0.0.0.0, a read-only checkout).

The front matter is the configuration a Hugging Face Space reads from README.md (the Spaces
configuration reference): the Gradio it installs (`sdk_version`), the Python
(`python_version`), what it downloads at build time (`preload_from_hub`). These tests keep it
in agreement with what the tests themselves ran on and with engine/catalogue.json.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from PIL import Image

from engine.models import zoo
from studio import storage
from tests.helpers.browser import free_port, stop_process, studio_client

REPO = Path(__file__).resolve().parents[1]
SHORT_DESCRIPTION_MAX = 60  # characters the Hub shows on a Space's card


def front_matter() -> dict:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n"), "README.md must open with the Space's YAML front matter"
    return yaml.safe_load(text[4:text.index("\n---\n", 4)])


def requirements(name: str) -> Requirement:
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-") and Requirement(line).name == name:
            return Requirement(line)
    raise AssertionError(f"requirements.txt does not list {name}")


# ----------------------------------------------------------------------------------------
# Front matter.


def test_front_matter_names_every_required_field():
    fm = front_matter()
    for key in ("title", "sdk", "sdk_version", "python_version", "app_file",
                "suggested_hardware", "short_description", "tags", "models",
                "preload_from_hub", "license"):
        assert fm.get(key), f"front matter lacks {key}"
    assert fm["sdk"] == "gradio"
    assert (REPO / fm["app_file"]).is_file()
    assert len(fm["short_description"]) <= SHORT_DESCRIPTION_MAX
    from huggingface_hub import SpaceHardware

    assert fm["suggested_hardware"] in {h.value for h in SpaceHardware}


def test_sdk_version_is_the_tested_gradio_and_requirements_allow_it():
    from importlib.metadata import version

    import gradio

    fm = front_matter()
    assert str(fm["sdk_version"]) == gradio.__version__, \
        "the Space would run another Gradio than the one these tests ran on"
    assert requirements("gradio").specifier.contains(gradio.__version__)
    # The ZeroGPU client is pinned to the version whose CPU emulation the tests use.
    assert requirements("spaces").specifier.contains(version("spaces"))


def test_python_version_agrees_with_pyproject_and_the_tests():
    fm = front_matter()
    py = str(fm["python_version"])
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert SpecifierSet(project["project"]["requires-python"]).contains(py + ".0")
    assert project["tool"]["ruff"]["target-version"] == "py" + py.replace(".", "")
    assert py == f"{sys.version_info.major}.{sys.version_info.minor}", \
        "the tests run on another Python than the Space"


def _requirement_lines(name: str) -> list[Requirement]:
    lines = (REPO / name).read_text().splitlines()
    return [Requirement(line.split("#")[0].strip()) for line in lines
            if line.split("#")[0].strip() and not line.startswith("-")]


# Declared though nothing imports them, each for a reason a reader can check.
NOT_IMPORTED = {
    "websockets": "uvicorn serves the live channel's WebSocket with it",
    "pytest-timeout": "a pytest plugin (pyproject's timeout)",
    "pytest-randomly": "a pytest plugin (-p randomly)",
    "ruff": "the linter, a command",
}


# Imported only by benchmarks that compare against another tool, which the benchmark asks
# the user to install beside it (never a requirement of the studio or its tests).
REFERENCE_TOOLS = {
    "cv2": "bench_bend_sources.py: Broad's operations against OpenCV",
    "dnnlib": "bench_generator.py: NVlabs' own generator, from a checkout given by path",
    "training": "bench_generator.py: NVlabs' own generator, from a checkout given by path",
}


def _imported_distributions(folders: list[str]) -> set[str]:
    """Distributions whose top-level modules the Python files under `folders` import."""
    import ast
    from importlib.metadata import packages_distributions

    from packaging.utils import canonicalize_name

    by_module = packages_distributions()
    local = {"engine", "studio", "tests", "benchmarks", "spaces_app"}
    found: set[str] = set()
    for folder in folders:
        path = REPO / folder
        for file in [path] if path.is_file() else sorted(path.rglob("*.py")):
            for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module] if isinstance(node, ast.ImportFrom) and node.module and \
                    not node.level else []
                for name in names:
                    top = name.split(".")[0]
                    mine = (file.parent / f"{top}.py").exists() or (file.parent / top).is_dir()
                    if top in sys.stdlib_module_names or top in local or mine or \
                            top in REFERENCE_TOOLS and folder == "benchmarks":
                        continue
                    assert top in by_module, f"{file.name} imports {top}, which is not installed"
                    found.update(canonicalize_name(d) for d in by_module[top])
    return found


def test_every_requirement_is_pinned_to_the_version_installed_here():
    from importlib.metadata import version

    for name in ("requirements.txt", "requirements-dev.txt"):
        for req in _requirement_lines(name):
            assert len(req.specifier) == 1 and next(iter(req.specifier)).operator == "==", \
                f"{name}: {req} is not pinned to one version"
            assert req.specifier.contains(version(req.name), prereleases=True), \
                f"{name} pins {req} but the suite runs on {version(req.name)}"


def test_requirements_declare_what_the_code_imports_and_nothing_more():
    from importlib.metadata import requires

    from packaging.utils import canonicalize_name

    runtime = {canonicalize_name(r.name) for r in _requirement_lines("requirements.txt")}
    dev = {canonicalize_name(r.name) for r in _requirement_lines("requirements-dev.txt")}
    used = _imported_distributions(["engine", "studio", "spaces_app.py"])
    assert used <= runtime, f"imported but not in requirements.txt: {sorted(used - runtime)}"
    # Tests and benchmarks may also use what a declared package pins itself (gradio_client).
    pinned_by_declared = {canonicalize_name(Requirement(r).name) for d in runtime | dev
                          for r in requires(d) or [] if "extra ==" not in r}
    used_dev = _imported_distributions(["tests", "benchmarks"])
    missing = used_dev - runtime - dev - pinned_by_declared
    assert not missing, f"tests or benchmarks import undeclared packages: {sorted(missing)}"
    unused = (runtime | dev) - used - used_dev - set(NOT_IMPORTED)
    assert not unused, f"declared but never imported: {sorted(unused)}"


def test_models_and_preloads_match_the_catalogue():
    fm = front_matter()
    entries = zoo.catalogue()
    assert set(fm["models"]) == {e.repo_id for e in entries if e.repo_id}
    picks = [e for e in entries if e.preload]
    assert picks, "the catalogue marks no model for a Space to preload"
    wanted: dict[str, list[str]] = {}
    for e in picks:
        assert e.repo_id and e.verified and not e.revision
        wanted.setdefault(e.repo_id, []).append(e.filename)
    # Each line: "<repo> <file>,<file>" (the reference's form for some files of a repo).
    got = {}
    for line in fm["preload_from_hub"]:
        repo, files = line.split()
        got[repo] = files.split(",")
    assert got == wanted


# ----------------------------------------------------------------------------------------
# Persistent storage.


def test_storage_moves_caches_and_outputs_to_the_data_folder(tmp_path):
    env = {"HOME": str(tmp_path / "home"), "STUDIO_DATA_DIR": str(tmp_path / "data")}
    changed = storage.configure(env)
    data = tmp_path / "data"
    assert env["HF_HOME"] == str(data / "huggingface")
    assert env["STUDIO_OUTPUT_DIR"] == str(data / "outputs")
    assert env["ACTIVATION_STUDIO_CACHE"] == str(data / "cache")
    assert all(Path(env[k]).is_dir() for k in ("HF_HOME", "STUDIO_OUTPUT_DIR"))
    # Build-time preloads stay readable in the image's own cache.
    assert env[zoo.ENV_PRELOAD_CACHE] == str(Path("~/.cache/huggingface/hub").expanduser())
    assert set(changed) == {"HF_HOME", "STUDIO_OUTPUT_DIR", "ACTIVATION_STUDIO_CACHE",
                            zoo.ENV_PRELOAD_CACHE}


def test_storage_keeps_explicit_settings_and_needs_a_data_folder(tmp_path):
    env = {"STUDIO_DATA_DIR": str(tmp_path / "data"), "HF_HOME": str(tmp_path / "mine")}
    storage.configure(env)
    assert env["HF_HOME"] == str(tmp_path / "mine") and zoo.ENV_PRELOAD_CACHE not in env
    assert env["STUDIO_OUTPUT_DIR"] == str(tmp_path / "data" / "outputs")
    # No STUDIO_DATA_DIR and no /data: nothing moves.
    bare: dict[str, str] = {}
    assert storage.configure(bare, space_storage=tmp_path / "absent") == {} and bare == {}
    # A Space's /data (here a stand-in folder) is used when it exists.
    mount = tmp_path / "mnt"
    mount.mkdir()
    assert storage.data_dir({}, space_storage=mount) == mount


# ----------------------------------------------------------------------------------------
# The app, started as a Space starts it.


def _read_only_copy(dest: Path) -> Path:
    app = dest / "app"
    shutil.copytree(REPO, app, ignore=shutil.ignore_patterns(
        ".git", "__pycache__", ".pytest_cache", ".ruff_cache", "*.log"))
    for root, _dirs, files in os.walk(app):
        for name in files:
            os.chmod(os.path.join(root, name), 0o444)
        os.chmod(root, 0o555)
    return app


def _listing(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in folder.rglob("*")}


def _make_writable(folder: Path) -> None:
    for root, _, files in os.walk(folder):
        os.chmod(root, 0o755)
        for name in files:
            p = os.path.join(root, name)
            os.chmod(p, os.stat(p).st_mode | stat.S_IWUSR)


def _unprivileged() -> list[str]:
    """A command prefix under which file permissions bind: root ignores them unless its
    capabilities to override them are dropped (a Space runs as an ordinary user)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: a read-only checkout cannot be enforced")
    caps = "-dac_override,-dac_read_search,-fowner"
    return ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"]


@pytest.mark.slow
def test_app_starts_like_a_space_from_a_read_only_checkout(tmp_path):
    app = _read_only_copy(tmp_path)
    data, home = tmp_path / "data", tmp_path / "home"
    data.mkdir()
    home.mkdir()
    port = free_port()
    keep = {k: v for k, v in os.environ.items()
            if not k.startswith(("HF_", "STUDIO_", "ACTIVATION_STUDIO_", "GRADIO_", "SPACE"))}
    env = {**keep, "SPACE_ID": "someone/activation-studio", "SPACE_HOST": "localhost",
           "GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": str(port),
           "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "HOME": str(home),
           "STUDIO_DATA_DIR": str(data), "PYTHONDONTWRITEBYTECODE": "1",
           # the render below is compared bit for bit with one made here, on this device
           "STUDIO_DEVICE": os.environ.get("STUDIO_DEVICE", "cpu"),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    before = _listing(app)
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([*_unprivileged(), sys.executable, "spaces_app.py"], cwd=app,
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, "the Space exited:\n" + log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    page = r.read().decode("utf-8", "replace")
                    break
            except OSError:
                assert time.monotonic() < deadline, "no page:\n" + log.read_text()[-3000:]
                time.sleep(0.5)
        assert "<title>Activation Studio</title>" in page  # before any script runs
        client = studio_client(url)
        shown = client.predict("default", api_name="/load_model")[1]
        pixels = np.asarray(Image.open(shown).convert("RGB"))
        assert pixels.shape == (64, 64, 3) and pixels.std() > 10
        # The picture is the engine's render of the page's own recipe, and the recipe file
        # was written to persistent storage.
        path, text = client.predict(api_name="/save_recipe")
        from engine.recipes import recipe

        again = np.asarray(recipe.render(recipe.Recipe.from_json(text), zoo.load("default")))
        assert np.array_equal(again, pixels)
        saved = json.loads(Path(path).read_text())
        assert saved["model"] == "default"
        assert any((data / "outputs").rglob("recipe*")), "the recipe is not under /data"
    finally:
        stop_process(proc)
        after = _listing(app)
        _make_writable(app)
    assert after == before, "the app wrote into its own checkout"
    assert "Permission denied" not in log.read_text()


def test_every_file_output_downloads_with_a_data_folder(tmp_path):
    """Issue 30 item 5: with STUDIO_DATA_DIR (or a Space's /data) outside the temp folder,
    every file output failed with Gradio's InvalidPathError. Each is downloaded here through
    a real server whose outputs live in the data folder, and that folder stays closed to a
    client that names one of its files by path."""
    import zipfile
    from urllib.error import HTTPError

    from tests.helpers.browser import studio_server, tiny_model_file

    data = tmp_path / "data"
    temp = tmp_path / "server-tmp"  # the server's temp folder: the data folder is outside it
    temp.mkdir()
    model = tiny_model_file(tmp_path)
    env = {"STUDIO_DATA_DIR": str(data), "TMPDIR": str(temp),
           "GRADIO_TEMP_DIR": str(temp / "gradio"), "STUDIO_SERVER_FILES": "studio"}
    with studio_server(model, env=env) as url:
        client = studio_client(url)
        client.predict(model, api_name="/load_model")
        got = {
            "recipe": client.predict(api_name="/save_recipe")[0],
            "bundle": client.predict(api_name="/save_bundle")[0],
            "walk": client.predict("0, 1", 2, 8, False, "w", api_name="/render_walk"),
            "boundary": client.predict("".join(f"{s},{'yes' if s % 3 else 'no'}\n"
                                               for s in range(30)), 1.0, "deploy",
                                       api_name="/boundary_from_labels")[0],
            "encoder preview": client.predict("b8.conv1", 10, 2,
                                              api_name="/train_encoder")[3],
        }
        paths = {k: Path(v["video"] if isinstance(v, dict) else v) for k, v in got.items()}
        assert all(p.is_file() and p.stat().st_size > 0 for p in paths.values()), paths
        assert json.loads(paths["recipe"].read_text())["model"] == model
        assert "recipe.json" in zipfile.ZipFile(paths["bundle"]).namelist()
        assert np.load(paths["boundary"]).shape[0] == 1
        written = [p for p in (data / "outputs").rglob("*") if p.is_file()]
        assert any(p.suffix == ".json" and p.name.startswith("recipe") for p in written)
        for original in written[:5]:  # the data folder itself is not served
            with pytest.raises(HTTPError):
                urllib.request.urlopen(f"{url.rstrip('/')}/gradio_api/file={original}",
                                       timeout=30)
