"""The studio on a GPU: device settings, the fp32 policy, and every GPU path run under the
`spaces` package's own CPU emulation of ZeroGPU (tests/zerogpu.py).

Under the emulation `.to("cuda")` gives stand-in tensors computed on the CPU, so a render on
"CUDA" must equal the CPU render bit for bit, and any op that mixes a CPU tensor into device
work raises, as a real GPU would. GPU calls run as a ZeroGPU worker runs them: their
arguments and results cross by pickle, and the main process has no CUDA.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.base import devices
from engine.base.errors import StudioError
from engine.models import zoo
from engine.recipes import recipe
from engine.tools import bending, clusters, latents, projector, translator
from engine.tools.bending import OPERATIONS, WEIGHT_OPERATIONS, Bend, ChannelSelection, WeightEdit
from engine.tools.latents import DirectionEdit, LatentSpec, LayerEdit
from studio import files
from tests.conftest import make_tiny_generator
from tests.zerogpu import ForkedZeroGPU, ZeroGPU, in_thread

pytest.importorskip("spaces")

LAYER = "b16.conv1"


@pytest.fixture(scope="module")
def G():
    return make_tiny_generator(0)


def _zero_settings(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    monkeypatch.setenv("STUDIO_DEVICE", "auto")  # CUDA "exists": inside GPU calls only
    monkeypatch.setenv("STUDIO_CPU_MAX_RESOLUTION", "0")  # every model takes the GPU path
    monkeypatch.setenv("ACTIVATION_STUDIO_CACHE", str(tmp_path / "cache"))
    zoo.clear_cache()
    devices.clear_seeded()
    clusters.clear_memory_cache()  # forked workers inherit this process's clusterings


def _zero_teardown() -> None:
    zoo.clear_cache()
    devices.clear_seeded()
    clusters.clear_memory_cache()
    reset_accelerate()


@pytest.fixture
def zero(monkeypatch, tmp_path):
    """The emulation on, the studio told it runs on ZeroGPU, GPU calls run as `spaces` runs
    them: forked workers, reused while the emulated GPU is idle (tests/zerogpu.py)."""
    _zero_settings(monkeypatch, tmp_path)
    with ForkedZeroGPU(tmp_path / "workers") as zg:
        try:
            yield zg
        finally:
            _zero_teardown()


def reset_accelerate() -> None:
    """accelerate keeps one process-wide state (its device); a ZeroGPU worker is a process
    of its own, but here a training on the emulated CUDA shares this one."""
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(True)


def on_cuda(zg: ZeroGPU, G: torch.nn.Module, fn):
    """fn(copy of G on the emulated CUDA) in an emulated GPU call; its result back here."""
    def work():
        Gc = copy.deepcopy(G).to("cuda").requires_grad_(False)  # frozen, as zoo loads them
        assert next(Gc.parameters()).device.type == "cuda"
        return devices.to_host(fn(Gc))
    return zg.gpu_call(work)


def same(a, b) -> None:
    a = a.detach().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = b.detach().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    assert a.shape == b.shape and np.array_equal(a, b)


def close_floats(a, b) -> None:
    """Where the CPU picks another algorithm than a GPU for the same maths (3x3 convs over
    few pixels run as one matrix product on the CPU, engine.gan.ops.conv3x3): float sums differ
    in the last bits, and a few optimisation steps carry that a little."""
    a = a.detach().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = b.detach().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    assert a.shape == b.shape and np.allclose(a, b, rtol=1e-5, atol=1e-6), np.abs(a - b).max()


def same_weights(got: torch.nn.Module, want: torch.nn.Module) -> None:
    """Trained weights: batched steps run as grouped convs on a GPU, so float sums differ in
    the last bits and training carries that a little further."""
    a, b = got.state_dict(), want.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].device.type == "cpu"
        assert torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-5), k


def within_one_level(a, b) -> None:
    """The stated policy where the device picks another algorithm (batched renders run as
    one grouped conv on a GPU, per-sample convs on the CPU): pixels differ by one level at
    most, and few do."""
    a, b = np.asarray(a, dtype=np.int16), np.asarray(b, dtype=np.int16)
    assert a.shape == b.shape
    diff = np.abs(a - b)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.05, (diff.max(), (diff > 0).mean())


# ----------------------------------------------------------------------------------------
# Settings: device names, the default device, the precision policy, seeded draws.


def test_cuda_and_cuda0_are_one_name(monkeypatch):
    assert devices.canonical("cuda") == devices.canonical("cuda:0") == torch.device("cuda", 0)
    assert zoo._device("cuda") == zoo._device("cuda:0") == "cuda:0"
    assert zoo._device(torch.device("cpu")) == "cpu"
    with pytest.raises(StudioError, match="not a device name"):
        devices.canonical("gpu please")


def test_default_device_follows_the_setting(monkeypatch):
    monkeypatch.setenv("STUDIO_DEVICE", "cpu")
    assert devices.default_device() == torch.device("cpu")
    assert zoo._device(None) == "cpu"
    monkeypatch.setenv("STUDIO_DEVICE", "auto")
    assert devices.default_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        monkeypatch.setenv("STUDIO_DEVICE", "cuda")
        with pytest.raises(StudioError, match="no CUDA device"):
            devices.default_device()
    # On ZeroGPU models are kept on the CPU, whatever the device setting.
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    assert devices.storage_device() == torch.device("cpu")


def test_precision_policy_is_ieee_unless_tf32_is_asked_for(monkeypatch):
    before = devices.precision_mode()
    try:
        monkeypatch.delenv("STUDIO_TF32", raising=False)
        assert devices.apply_precision_policy() == "ieee"
        assert devices.precision_mode() == ("ieee", "ieee")
        monkeypatch.setenv("STUDIO_TF32", "1")
        assert devices.apply_precision_policy() == "tf32"
        assert devices.precision_mode() == ("tf32", "tf32")
    finally:
        torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision \
            = before


def test_seeded_draws_are_the_cpu_generators_and_kept():
    devices.clear_seeded()
    a = devices.seeded("normal", (2, 3), 7, "cpu")
    assert torch.equal(a, torch.randn(2, 3, generator=torch.Generator().manual_seed(7)))
    assert devices.seeded("normal", (2, 3), 7, "cpu") is a  # no second draw
    u = devices.seeded("uniform", (4,), 7, "cpu", torch.float64)
    assert u.dtype == torch.float64 and (u >= 0).all() and (u < 1).all()


@dataclasses.dataclass
class Box:
    t: torch.Tensor
    items: list


def test_to_host_lets_a_result_with_cuda_tensors_come_back():
    def result():
        return Box(torch.ones(2).to("cuda"), [torch.nn.Linear(2, 2).to("cuda"),
                                              (torch.zeros(1).to("cuda"), "x")])
    with ZeroGPU() as zg:
        with pytest.raises((AssertionError, RuntimeError)):
            zg.gpu_call(result)
        out = zg.gpu_call(lambda: devices.to_host(result()))
    assert out.t.device.type == "cpu" and torch.equal(out.t, torch.ones(2))
    assert next(out.items[0].parameters()).device.type == "cpu" and out.items[1][1] == "x"


# ----------------------------------------------------------------------------------------
# The emulation itself: what it catches.


def test_emulation_catches_mixing_and_cuda_outside_gpu_calls(G):
    with ZeroGPU() as zg:
        def mixes():
            Gc = copy.deepcopy(G).to("cuda")
            return Gc(torch.zeros(1, G.cfg.z_dim))  # z left on the CPU
        with pytest.raises(RuntimeError, match="same device"):
            zg.gpu_call(mixes)
        # A worker thread outside a GPU call has no CUDA, as on a Space.
        with pytest.raises((AssertionError, RuntimeError)):
            in_thread(lambda: torch.zeros(1).to("cuda"))
        # A CUDA tensor in a result cannot come back to the main process.
        with pytest.raises((AssertionError, RuntimeError)):
            zg.gpu_call(lambda: torch.ones(2).to("cuda"))
        # As strict as a GPU: no numpy view of device memory; .to(tensor) moves.
        with pytest.raises(TypeError, match="numpy"):
            zg.gpu_call(lambda: torch.ones(2).to("cuda").numpy())
        assert zg.gpu_call(lambda: torch.ones(2).to(torch.ones(1).to("cuda")).device.type
                           ) == "cuda"
        # ... and as lenient: a 0-dim CPU tensor is a scalar to CUDA work.
        got = zg.gpu_call(lambda: (torch.ones(2).to("cuda") * torch.tensor(3.0)).cpu())
        assert torch.equal(got, torch.full((2,), 3.0))
        # accelerate finds the device inside GPU calls, as on a Space.
        from accelerate import Accelerator
        reset_accelerate()
        assert zg.gpu_call(lambda: str(Accelerator().device)).startswith("cuda")
        reset_accelerate()


# ----------------------------------------------------------------------------------------
# Device mixing over every engine path: the emulated CUDA result equals the CPU result.


def _choices(op) -> list[dict]:
    """The op's defaults, plus one variant per value of each choice parameter."""
    variants = [{}]
    for spec in op.params:
        if spec.type == "choice":
            variants += [{spec.name: c} for c in spec.choices if c != spec.default]
        elif spec.type in ("float", "int") and spec.name in ("seed", "amount", "std"):
            variants.append({spec.name: spec.default + (3 if spec.name == "seed" else 1)})
    return variants


def _bend_cases() -> list[tuple[str, dict]]:
    return [(name, v) for name, op in OPERATIONS.items() for v in _choices(op)]


def _weight_cases() -> list[tuple[str, dict]]:
    return [(name, v) for name, op in WEIGHT_OPERATIONS.items() for v in _choices(op)]


def _render(Gx, bends=(), edits=(), spec=LatentSpec(seed=3)):
    taps, wtaps = bending.make_taps(Gx, list(bends), list(edits))
    ws = latents.compute_ws(Gx, spec)
    gen = latents.noise_generator(spec)
    return latents.to_uint8(Gx.synthesis(ws, noise_mode=spec.noise_mode, taps=taps,
                                         weight_taps=wtaps, noise_generator=gen))


def test_every_bend_and_weight_edit_on_emulated_cuda_equals_the_cpu(G, zero):
    """Each operation (every choice value) on a layer's activations and weights, the channel
    selection resolved as make_taps resolves it; whole renders are in the recipe test."""
    sel = ChannelSelection(mode="random", fraction=0.5, seed=1)
    bends = [Bend(layer=LAYER, op=name, params=params, channels=sel)
             for name, params in _bend_cases()]
    edits = [WeightEdit(layer=LAYER, op=name, params=params, channels=sel)
             for name, params in _weight_cases()]
    assert len(bends) + len(edits) > len(OPERATIONS) + len(WEIGHT_OPERATIONS)

    def run(Gx):
        dev = next(Gx.parameters()).device
        acts = torch.randn(2, 32, 16, 16, generator=torch.Generator().manual_seed(0)).to(dev)
        weight = Gx.synthesis.b16.conv1.weight
        keep = lambda x: x  # noqa: E731 - identity has no tap
        outs = [bending.make_taps(Gx, [b])[0].get(LAYER, keep)(acts) for b in bends]
        return outs + [bending.make_taps(Gx, [], [e])[1].get(LAYER, keep)(weight)
                       for e in edits]
    for got, want in zip(on_cuda(zero, G, run), run(G), strict=True):
        same(got, want)


def test_latent_tools_on_emulated_cuda_equal_the_cpu(G, zero, tmp_path):
    specs = [
        LatentSpec(seed=2.5, psi=0.7, noise_mode="random", noise_seed=4),
        LatentSpec(seed=1, mix_seed=9, mix_start=2, mix_end=4, noise_mode="none"),
        LatentSpec(seed=1, directions=[DirectionEdit(method="sefa", index=1, amount=3.0),
                                       DirectionEdit(method="ganspace", index=0, amount=-2.0)]),
        LatentSpec(seed=1, layer_edits=[LayerEdit(op="swap", w_index=1, seed=5),
                                        LayerEdit(op="random", w_index=3, seed=6),
                                        LayerEdit(op="negate", w_index=4)]),
    ]
    for spec in specs:
        same(on_cuda(zero, G, lambda Gc, s=spec: latents.render_spec(Gc, s)),
             latents.render_spec(G, spec))
    # Batched renders: the GPU path is a grouped conv, so the policy's one level applies.
    within_one_level(on_cuda(zero, G, lambda Gc: latents.psi_grid(Gc, [1, 2], [0.5, 1.0])),
                     latents.psi_grid(G, [1, 2], [0.5, 1.0]))
    within_one_level(on_cuda(zero, G, lambda Gc: latents.mix_grid(Gc, [1, 2], 5)),
                     latents.mix_grid(G, [1, 2], 5))

    def frames(Gx):
        ws = latents.interpolate_ws(Gx, [1, 4], 4)
        return np.stack(list(latents.render_frames(Gx, ws, noise_mode="random",
                                                   noise_seed=2)))
    within_one_level(on_cuda(zero, G, frames), frames(G))
    path = on_cuda(zero, G, lambda Gc: latents.write_walk(Gc, [1, 2], 4, tmp_path / "w.mp4"))
    assert path.stat().st_size > 0


def test_clustering_on_emulated_cuda_equals_the_cpu(G, zero, tmp_path):
    def run(Gx, where):
        r = clusters.compute_clusters(Gx, LAYER, 3, samples=8, cache_dir=tmp_path / where,
                                      model_key="tiny-" + where)
        ws = latents.compute_ws(Gx, LatentSpec(seed=1))
        return (r.labels, clusters.cluster_overlays(Gx, r, ws[0], tile=32),
                clusters.ablation_preview(Gx, r, 0, ws[0]))
    on_gpu, on_cpu = on_cuda(zero, G, lambda Gc: run(Gc, "gpu")), run(G, "cpu")
    for a, b in zip(on_gpu, on_cpu):
        same(a, b)


def test_translator_and_its_training_on_emulated_cuda_equal_the_cpu(G, zero, tmp_path):
    settings = dict(layer=LAYER, steps=3, batch=2, seed=1, stat_samples=8, eval_seeds=[0],
                    width=8, max_width=16, preview_every=0, checkpoint_every=0)

    def train(Gx, where):
        r = translator.train_encoder(Gx, out_dir=tmp_path / where, **settings)
        tr = translator.Translator.load(r.path.parent, Gx)
        pic = np.asarray(Image.new("RGB", (40, 30), (200, 40, 90)))
        out = tr.translate(pic, 3)
        tr.set_latent(LatentSpec(seed=2))
        return r, out, tr.translate_frame(pic)

    (r_gpu, out_gpu, frame_gpu) = on_cuda(zero, G, lambda Gc: train(Gc, "gpu"))
    reset_accelerate()
    (r_cpu, out_cpu, frame_cpu) = train(G, "cpu")
    # The trained encoder comes back as a CPU module with the CPU run's weights.
    assert next(r_gpu.encoder.parameters()).device.type == "cpu"
    same_weights(r_gpu.encoder, r_cpu.encoder)
    within_one_level(out_gpu, out_cpu)
    within_one_level(frame_gpu, frame_cpu)


def test_photo_augmented_training_on_emulated_cuda_equals_the_cpu(G, zero, tmp_path):
    """Issue 31.2: how the shipped encoders were trained (`--augment photo`); the colour
    jitter's factors were drawn on the CPU and multiplied into device images."""
    settings = dict(layer=LAYER, steps=2, batch=2, seed=1, stat_samples=8, eval_seeds=[0],
                    width=8, max_width=16, preview_every=0, checkpoint_every=0,
                    augment={**translator.PHOTO_AUGMENTATIONS, "p": 1.0})

    def train(Gx, where):
        assert devices.module_device(Gx).type == ("cuda" if where == "gpu" else "cpu")
        return translator.train_encoder(Gx, out_dir=tmp_path / where, **settings).encoder
    reset_accelerate()
    on_gpu = on_cuda(zero, G, lambda Gc: train(Gc, "gpu"))
    reset_accelerate()
    same_weights(on_gpu, train(G, "cpu"))


def test_projection_on_emulated_cuda_equals_the_cpu(G, zero):
    target = latents.render_spec(G, LatentSpec(seed=8))
    run = lambda Gx: projector.project(Gx, target, steps=4, w_plus=True)  # noqa: E731
    a, b = on_cuda(zero, G, run), run(G)
    close_floats(a.w, b.w)
    within_one_level(a.image, b.image)


def test_a_deep_copy_of_a_model_used_on_the_cpu_renders_the_same_on_emulated_cuda(
        zero, tmp_path):
    """Issue 28: the caches a CPU render leaves on a model (a layer's square sums and conv
    layouts, a translator's webcam state) must not travel with a deep copy moved to a GPU.
    Everything is used on the CPU first, then copied and moved inside a GPU call."""
    G = make_tiny_generator(1)  # this test's own: its caches are filled here
    encoder = translator.make_encoder(G, LAYER, width=8, max_width=16,
                                      generator=torch.Generator().manual_seed(0))
    tr = translator.Translator(G, encoder)
    pic = np.asarray(Image.new("RGB", (40, 30), (200, 40, 90)))
    target = latents.render_spec(G, LatentSpec(seed=8))
    spec = LatentSpec(seed=2, noise_mode="random", noise_seed=3)

    def use(Gx, tx, where):
        tx.set_latent(LatentSpec(seed=2))
        r = clusters.compute_clusters(Gx, LAYER, 3, samples=8, cache_dir=tmp_path / where,
                                      model_key="tiny1-" + where)  # G(1), not G(0)'s key
        ws = latents.compute_ws(Gx, LatentSpec(seed=1))
        return (latents.render_spec(Gx, spec), tx.translate(pic, 3), tx.translate_frame(pic),
                r.labels, clusters.cluster_overlays(Gx, r, ws[0], tile=32),
                projector.project(Gx, target, steps=3, w_plus=True).w)
    on_cpu = use(G, tr, "cpu")
    assert len(G.synthesis.b16.conv1.derived) > 0  # the CPU render left its caches

    def moved():
        tc = copy.deepcopy(tr).to("cuda")
        assert tc.G is not G and tc.device.type == "cuda"
        assert next(tc.encoder.parameters()).device.type == "cuda"
        assert not cpu_tensors_in_caches(tc.G), "the copy kept tensors made on the CPU"
        tc = copy.deepcopy(tc)  # a copy of a device model (blends, training) works too
        return devices.to_host(use(tc.G, tc, "gpu"))
    on_gpu = zero.gpu_call(moved)
    for got, want in zip(on_gpu[:-1], on_cpu[:-1], strict=True):
        same(got, want)
    close_floats(on_gpu[-1], on_cpu[-1])
    # The original still renders on the CPU as before.
    same(latents.render_spec(G, spec), on_cpu[0])


def cpu_tensors_in_caches(G: torch.nn.Module) -> list[str]:
    """Names of the layers whose derived-tensor caches hold CPU tensors."""
    return [name for name, m in G.named_modules() if hasattr(m, "derived")
            and any(v.device.type == "cpu" for _, v in m.derived._entries.values())]


def test_derived_tensors_follow_the_module_not_its_copies():
    G = make_tiny_generator(2)
    layer = G.synthesis.b16.conv1
    before = latents.render_spec(G, LatentSpec(seed=4))
    assert len(layer.derived) > 0
    assert len(copy.deepcopy(layer).derived) == 0  # a copy starts empty
    assert len(pickle.loads(pickle.dumps(layer)).derived) == 0
    G.double()  # a move or a cast drops them: nothing is left on the old device or dtype
    assert len(layer.derived) == 0
    G.float()
    same(latents.render_spec(G, LatentSpec(seed=4)), before)
    # New weights loaded in place: the caches are recomputed, not served stale.
    other = make_tiny_generator(3)
    G.load_state_dict(other.state_dict())
    same(latents.render_spec(G, LatentSpec(seed=4)), latents.render_spec(other,
                                                                         LatentSpec(seed=4)))


def test_weight_caches_follow_weights_loaded_in_place(monkeypatch):
    """The model's hash (which encoders it accepts) and its anchor bank are remembered per
    model: new weights loaded into the same module must not be answered from the old ones."""
    from engine.tools import anchors

    monkeypatch.setattr(anchors, "BUILD_RANGE", (8, 8))
    G, other = make_tiny_generator(4), make_tiny_generator(5)
    first, bank = translator.weights_sha256(G), anchors.bank_for(G)
    assert anchors.bank_for(G) is bank  # kept while the weights stay
    G.load_state_dict(other.state_dict())
    assert translator.weights_sha256(G) == translator.weights_sha256(other) != first
    assert anchors.bank_for(G).weights_sha256 == translator.weights_sha256(other)


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_webcam_frames_with_random_noise_equal_the_recipe_render(zero, tmp_path, strength):
    """Issue 31.3: a frame's random noise is the recipe's noise_seed, on the CPU and in a
    GPU call alike (at strength 1 it came from the device's global RNG, below 1 from seed
    0), so a frame equals engine.render of the same recipe."""
    model = zoo.load("default", device="cpu")
    shipped = Path(zoo.__file__).parent / "default_model" / "encoder_b16"
    pic = Image.fromarray(latents.render_spec(model.G, LatentSpec(seed=30)))
    pic.save(tmp_path / "pic.png")
    r = recipe.Recipe(model="default")
    r.latent = LatentSpec(seed=5, noise_mode="random", noise_seed=11)
    # The latent anchor: a still's "match" anchor is fitted to the picture (c2b190d) and a
    # frame's is the bank's, so only the latent anchor is the same recipe in both.
    r.translator = recipe.TranslatorSpec(encoder=str(shipped / "encoder.safetensors"),
                                         image=str(tmp_path / "pic.png"), strength=strength,
                                         anchor="latent")
    want = np.asarray(recipe.render(r, model))

    def frame(G):
        tr = translator.Translator.load(shipped / "encoder.safetensors", G)
        tr.set_latent(r.latent, noise_mode="random", strength=strength, anchor="latent")
        torch.manual_seed(123)  # the global RNG must not matter
        return tr.translate_frame(np.asarray(pic))
    same(frame(model.G), want)
    # The device may sum in another order (batched anchor renders): the stated policy.
    within_one_level(zero.gpu_call(lambda: frame(zoo.load("default", device="cuda").G)), want)


def test_recipe_replays_the_same_on_emulated_cuda(zero, tmp_path):
    """One recipe touching every random draw: the CPU and the emulated GPU give one image."""
    r = recipe.Recipe(model="default")
    r.latent = LatentSpec(seed=5, psi=0.8, noise_mode="random", noise_seed=11,
                          directions=[DirectionEdit(method="sefa", index=0, amount=2.0)])
    r.bends = [Bend(layer=LAYER, op="jitter", params={"amount": 1.5, "seed": 2}),
               Bend(layer="b32.conv0", op="gaussian_noise", params={"std": 0.3, "seed": 4},
                    channels=ChannelSelection(mode="random", fraction=0.3))]
    r.weight_edits = [WeightEdit(layer="b8.conv1", op="noise", params={"std": 0.2})]
    cpu = np.asarray(recipe.render(r, zoo.load("default", device="cpu")))

    def on_gpu():
        model = zoo.load("default", device="cuda")  # a copy of the CPU model, no disk read
        assert model.device == "cuda:0" and model.G is not zoo.load("default", device="cpu").G
        return recipe.render(r, model)
    same(np.asarray(zero.gpu_call(on_gpu)), cpu)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a real CUDA device")
def test_recipe_replays_within_one_level_on_real_cuda():
    """The stated policy on a real GPU: IEEE fp32, every pixel within one level of the CPU."""
    r = recipe.Recipe(model="default")
    r.latent = LatentSpec(seed=5, noise_mode="random", noise_seed=11)
    r.bends = [Bend(layer=LAYER, op="gaussian_noise", params={"std": 0.3, "seed": 4})]
    cpu = np.asarray(recipe.render(r, zoo.load("default", device="cpu")), dtype=int)
    gpu = np.asarray(recipe.render(r, zoo.load("default", device="cuda")), dtype=int)
    assert devices.precision_mode() == ("ieee", "ieee")
    assert np.abs(cpu - gpu).max() <= 1


# ----------------------------------------------------------------------------------------
# The studio's GPU paths under the emulation.


def _session(model: str = "default"):
    from studio.session import new_session
    return new_session(model)


def test_studio_loads_models_and_finds_encoders_outside_gpu_calls(zero, tmp_path):
    from studio import models, translation
    from tests.helpers.browser import tiny_model_file

    other = tiny_model_file(tmp_path)
    # Gradio runs handlers in worker threads: no CUDA there, and no stand-ins to misread.
    info = in_thread(lambda: models.model_info(other))
    assert info.resolution == 32
    assert all(m.device == "cpu" for m in zoo.loaded_models())
    found = in_thread(lambda: translation.encoder_choices(None, "default"))
    assert any("encoder_b16" in p for p in found), "the shipped encoder was refused"
    assert translation.encoder_choices(None, "default") == found  # the main thread agrees


def test_studio_renders_translates_and_makes_videos_in_gpu_calls(zero, tmp_path):
    from studio import render, translation, videos
    from studio import session as S

    sess = _session()
    calls = zero.calls
    plain = in_thread(lambda: render.render(sess))
    assert zero.calls == calls + 1  # a GPU call, not a render here
    # The GPU copy lived in the worker: this process, like a Space's, keeps CPU models only.
    assert {m.device for m in zoo.loaded_models()} == {"cpu"}
    cpu = recipe.render(sess.recipe, zoo.load("default", device="cpu"))
    same(np.asarray(plain), np.asarray(cpu))
    # Translating with the shipped encoder, its picture uploaded as the page does.
    encoder = translation.encoder_choices(sess, "default")[0]
    pic = Image.fromarray(latents.render_spec(zoo.load("default", device="cpu").G,
                                              LatentSpec(seed=30)))
    path, _ = translation.save_input_image(sess, pic)
    S.set_translator(sess, encoder, path)
    # The latent anchor: the default "match" anchor is fitted by 20 Adam steps, an
    # optimisation whose float sums differ by device as a projection's do.
    sess.recipe.translator.anchor = "latent"
    same(np.asarray(in_thread(lambda: render.render(sess))),
         np.asarray(recipe.render(sess.recipe, zoo.load("default", device="cpu"))))
    frame = translation.translate_frame(sess, encoder, np.asarray(pic))
    assert frame.shape == (64, 64, 3)
    video = in_thread(lambda: videos.walk_video(sess, [1, 2], 4, False, "z", 10))
    assert video.endswith(".mp4")


def test_psi_and_mix_grids_draw_their_noise_from_the_noise_seed(zero):
    """Issue 31.3: the grids' random noise is the session's noise_seed, in a GPU call too."""
    from studio import render

    sess = _session()
    sess.recipe.latent = dataclasses.replace(sess.recipe.latent, noise_mode="random")
    grids = {}
    for noise_seed in (3, 4):
        sess.recipe.latent = dataclasses.replace(sess.recipe.latent, noise_seed=noise_seed)
        psi = np.asarray(in_thread(lambda: render.psi_grid(sess, [1, 2], [0.5, 1.0])))
        mix = np.asarray(in_thread(lambda: render.mix_grid(sess, [1], 5)))
        grids[noise_seed] = psi, mix
    assert not np.array_equal(grids[3][0], grids[4][0])
    assert not np.array_equal(grids[3][1], grids[4][1])


def test_small_models_render_here_without_booking_a_gpu(zero, monkeypatch):
    from studio import render

    monkeypatch.setenv("STUDIO_CPU_MAX_RESOLUTION", "64")
    calls = zero.calls
    render.render(_session())
    assert zero.calls == calls


@pytest.fixture
def tiny_spec(tmp_path):
    from tests.helpers.browser import tiny_model_file
    return tiny_model_file(tmp_path)


def test_training_in_time_boxed_calls_equals_one_run(zero, monkeypatch, tmp_path, tiny_spec):
    from studio import translation
    from studio.jobs import Jobs

    monkeypatch.setattr(files, "OUT_DIR", tmp_path / "out")
    monkeypatch.setenv("STUDIO_GPU_CHUNK_SECONDS", "0.05")  # several calls for a few steps
    sess = _session(tiny_spec)
    seen: list[tuple] = []
    steps: list[tuple[int, float]] = []
    calls = zero.calls
    result = in_thread(lambda: translation.train_encoder(
        sess, LAYER, 4, 2, progress=lambda *a: seen.append(a), cancel=Jobs().cancel,
        on_metrics=lambda step, m: steps.append((step, m["loss"]))))
    assert zero.calls - calls >= 2, "the run was not split into calls"
    # Every step's metrics crossed from the workers, once each, in order.
    assert [s for s, _ in steps] == [1, 2, 3, 4]
    assert result.metrics["final_loss"] == pytest.approx(np.mean([v for _, v in steps]),
                                                         abs=1e-6)
    assert next(result.encoder.parameters()).device.type == "cpu"
    assert result.path is not None and result.path.is_file()
    # The same training in one go on the CPU gives the same weights.
    reset_accelerate()
    monkeypatch.setenv("SPACES_ZERO_GPU", "")
    m = zoo.load(tiny_spec, device="cpu")
    once = translator.train_encoder(m.G, layer=LAYER, steps=4, batch=2,
                                    out_dir=tmp_path / "once", preview_every=10,
                                    checkpoint_every=10, eval_seeds=range(4))
    same_weights(result.encoder, once.encoder)


def test_projection_in_time_boxed_calls_equals_one_run(zero, monkeypatch, tmp_path,
                                                      tiny_spec):
    from studio import projection

    monkeypatch.setattr(files, "OUT_DIR", tmp_path / "out")
    monkeypatch.setenv("STUDIO_GPU_CHUNK_SECONDS", "0.05")
    m = zoo.load(tiny_spec, device="cpu")
    photo = Image.fromarray(latents.render_spec(m.G, LatentSpec(seed=12)))
    calls = zero.calls
    res = in_thread(lambda: projection.project(_session(tiny_spec), photo, 6, True))
    assert zero.calls - calls >= 3, "fewer than 3 time-boxed calls"
    assert len(zero.api.worker_pids()) == 1  # spaces reused its worker for each chunk
    once = projector.project(m.G, np.asarray(photo), steps=6, w_plus=True,
                             frame_every=1)
    close_floats(res.w, once.w)


def test_cancel_reaches_the_worker(zero, monkeypatch, tmp_path, tiny_spec):
    from studio import translation

    monkeypatch.setattr(files, "OUT_DIR", tmp_path / "out")
    with pytest.raises(translator.TrainingCancelled, match="resume"):
        translation.train_encoder(_session(tiny_spec), LAYER, 500, 2, cancel=lambda: True)


def test_a_spaces_worker_forked_during_a_load_renders(zero, monkeypatch, tiny_spec):
    """Issue 31.4 through spaces' own workers: while a thread of the main process loads a
    model (held mid-load), a GPU call forks a fresh worker that needs that model; the worker
    loads it for itself and renders instead of waiting for the parent's load."""
    import os
    import threading

    parent, started, release = os.getpid(), threading.Event(), threading.Event()
    real_load = zoo._load_uncached

    def slow_load(*args, **kwargs):
        if os.getpid() == parent:  # the main process's load is held until after the call
            started.set()
            release.wait()
        return real_load(*args, **kwargs)
    monkeypatch.setattr(zoo, "_load_uncached", slow_load)
    loader = threading.Thread(target=zoo.load, args=(tiny_spec,), kwargs={"device": "cpu"})
    loader.start()
    box: dict = {}
    try:
        assert started.wait(60)

        def work():
            return latents.render_spec(zoo.load(tiny_spec, device="cpu").G,
                                       LatentSpec(seed=3))
        call = threading.Thread(target=lambda: box.update(pic=zero.gpu_call(work)))
        call.start()
        call.join(300)  # a hung worker: the fixture's teardown ends it, the test fails here
        assert "pic" in box, "the worker forked during a load did not answer"
    finally:
        release.set()
        loader.join()
    same(box["pic"], latents.render_spec(zoo.load(tiny_spec, device="cpu").G,
                                         LatentSpec(seed=3)))


def test_a_worker_forked_during_a_load_loads_for_itself(monkeypatch, tmp_path, tiny_spec):
    """Issue 31.4: a ZeroGPU worker is forked from the main process at any moment. Forked
    while another thread loads a model (and holds the kernel and cluster locks), it must
    load that model itself, not wait for a load that never runs in it."""
    import os
    import signal
    import threading

    from engine.gan import ops

    monkeypatch.setenv("ACTIVATION_STUDIO_CACHE", str(tmp_path / "cache"))
    zoo.clear_cache()
    parent, started, release = os.getpid(), threading.Event(), threading.Event()
    real_load = zoo._load_uncached

    def slow_load(*args, **kwargs):
        if os.getpid() == parent:  # the main process's load is held until after the fork
            started.set()
            release.wait()
        return real_load(*args, **kwargs)
    monkeypatch.setattr(zoo, "_load_uncached", slow_load)
    loader = threading.Thread(target=zoo.load, args=(tiny_spec,), kwargs={"device": "cpu"})
    loader.start()
    try:
        assert started.wait(60)
        with ops._kernels.lock, clusters._memory_lock:
            pid = os.fork()
            if pid == 0:  # the worker: a hang ends by the alarm, with a failing status
                signal.signal(signal.SIGALRM, signal.SIG_DFL)  # even when stuck in C
                signal.alarm(60)
                torch.set_num_threads(1)  # OpenMP's pool does not survive a fork
                try:
                    G = zoo.load(tiny_spec, device="cpu").G
                    latents.render_spec(G, LatentSpec(seed=1))  # kernels (ops' lock)
                    clusters.clear_memory_cache()
                    os._exit(0)
                except BaseException:
                    os._exit(3)
    finally:
        release.set()
        loader.join()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the forked worker hung or failed"
    zoo.clear_cache()


def test_latent_encoder_training_honours_studio_device(G, zero, monkeypatch, tmp_path):
    """Issue 31: accelerate picked CUDA whenever it existed, whatever STUDIO_DEVICE said."""
    import accelerate

    used = []

    class Spy(accelerate.Accelerator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            used.append(self.device.type)
    monkeypatch.setattr(accelerate, "Accelerator", Spy)
    monkeypatch.setenv("STUDIO_DEVICE", "cpu")
    reset_accelerate()
    path = projector.train_latent_encoder(G, steps=1, batch=2, out_dir=tmp_path / "enc",
                                          checkpoint_every=0)
    reset_accelerate()
    assert used == ["cpu"] and Path(path).is_file()


def test_threads_started_for_jobs_keep_the_request_context():
    import contextvars

    from studio import gpu

    request = contextvars.ContextVar("request", default=None)
    request.set("visitor-1")
    seen = []
    gpu.start_thread(lambda: seen.append(request.get())).join()
    assert seen == ["visitor-1"]


def test_durations_grow_with_the_job_and_stay_bookable(zero, monkeypatch):
    from studio import gpu, render, videos

    sess = _session()
    small = videos.walk_video.seconds(sess, [1, 2], 4, False, "z", 10)
    big = videos.walk_video.seconds(sess, [1, 2], 10_000_000, False, "z", 10)
    assert 5 <= small < big == gpu.max_call_seconds()
    monkeypatch.setenv("STUDIO_GPU_MAX_SECONDS", "30")
    assert render.render_recipe.seconds(sess.recipe) <= 30


def test_an_evicted_model_is_not_kept_by_cached_translators(monkeypatch):
    import gc
    import weakref

    zoo.clear_cache()
    r = recipe.Recipe(model="default")
    repo = Path(__file__).resolve().parents[1]
    shipped = repo / "engine" / "models" / "default_model" / "encoder_b16" / "encoder.safetensors"
    r.translator = recipe.TranslatorSpec(encoder=str(shipped),
                                         image=str(repo / "docs" / "screenshot-explore.png"))
    model = zoo.load("default", device="cpu")
    recipe.render(r, model)  # caches a Translator holding the model's generator
    alive = weakref.ref(model.G)
    del model
    zoo.clear_cache()
    gc.collect()
    assert alive() is None, "a cached translator kept the evicted model in memory"


# ----------------------------------------------------------------------------------------
# spaces' worker pool: one entry point, reused workers and fresh ones.


def test_a_sessions_different_gpu_calls_reuse_one_worker(zero):
    """Issue 31: spaces.GPU keeps a worker pool per decorated function, and the studio had
    one per function (8 workers for one visitor, each with its own model copies). All go
    through one entry point now: renders, grids, overlays of one session share one worker."""
    from studio import render

    sess = _session()
    renders = [in_thread(lambda: render.render(sess)),
               in_thread(lambda: render.psi_grid(sess, [1, 2], [0.5, 1.0])),
               in_thread(lambda: render.mix_grid(sess, [1], 5)),
               in_thread(lambda: render.render(sess, with_bends=False))]
    assert zero.calls == 4 and all(r is not None for r in renders)
    assert len(zero.api.worker_pids()) == 1, "each kind of call forked its own worker"
    assert len({s["task_id"] for s in zero.api.schedules}) == 1


def test_fresh_workers_give_the_same_pictures_as_a_reused_one(zero):
    """A GPU that was not idle gets a freshly forked worker (its caches and cuDNN state
    new): the pictures are the same."""
    from studio import render

    sess = _session()
    reused = [np.asarray(in_thread(lambda: render.render(sess))) for _ in range(2)]
    zero.api.reuse = False
    fresh = [np.asarray(in_thread(lambda: render.render(sess))) for _ in range(2)]
    assert len(zero.api.worker_pids()) == 3  # one reused twice, then one per call
    for pic in reused[1:] + fresh:
        same(pic, reused[0])
    same(reused[0], np.asarray(recipe.render(sess.recipe, zoo.load("default", device="cpu"))))


# ----------------------------------------------------------------------------------------
# Durations booked from the job's size.


def test_time_boxed_calls_book_durations_from_the_jobs_size(zero, monkeypatch, tmp_path,
                                                            tiny_spec):
    """Issue 31: training and projection chunks booked the longest call (120 s) whatever
    their size. A short projection books a short call; a long job's chunks book the most."""
    from studio import gpu, models, projection, translation

    monkeypatch.setattr(files, "OUT_DIR", tmp_path / "out")
    m = zoo.load(tiny_spec, device="cpu")
    photo = Image.fromarray(latents.render_spec(m.G, LatentSpec(seed=12)))
    in_thread(lambda: projection.project(_session(tiny_spec), photo, 3, True))
    booked = [s["duration"] for s in zero.api.schedules]
    assert booked and all(5 <= d < gpu.max_call_seconds() for d in booked), booked
    # The booked duration is the call's time box plus its setup, so the box fits inside it.
    short = gpu.chunk_box(models.image_seconds(tiny_spec, 3 * 3))
    assert booked[0] == gpu.capped(short + gpu.SETUP_S)
    # Long jobs: each call books the longest, and its box leaves the setup time.
    long_train = gpu.chunk_box(translation.train_seconds(tiny_spec, 10**6, 8))
    assert long_train == gpu.chunk_seconds()
    chunk = gpu._resumable_chunk.seconds
    assert chunk(None, (), StudioError, gpu.Relay(tmp_path, long_train)) \
        == gpu.max_call_seconds()
    small = gpu.Relay(tmp_path, gpu.chunk_box(translation.train_seconds(tiny_spec, 4, 2)))
    assert 5 <= chunk(None, (), StudioError, small) < gpu.max_call_seconds()


# ----------------------------------------------------------------------------------------
# cuDNN: one algorithm per shape in every process.


def test_cudnn_choice_is_fixed_and_deterministic_unless_autotuning_is_asked_for(
        G, monkeypatch):
    """Issue 31: stylegan2 turned cuDNN's autotuner on for every CUDA model, and its pick
    (per process, timed) may differ between ZeroGPU workers, so a replay need not equal
    itself. Settled from PyTorch's reproducibility notes (no GPU was lent to measure)."""
    from engine.gan.stylegan2 import prepare_for_device

    before = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    try:
        monkeypatch.delenv("STUDIO_CUDNN_BENCHMARK", raising=False)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = True, False
        with ZeroGPU() as zg:
            flags = zg.gpu_call(lambda: (
                prepare_for_device(copy.deepcopy(G).to("cuda")) is not None,
                torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic))
        assert flags == (True, False, True)
        monkeypatch.setenv("STUDIO_CUDNN_BENCHMARK", "1")
        assert devices.apply_cudnn_policy() is True
        assert (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic) \
            == (True, False)
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before


# ----------------------------------------------------------------------------------------
# Locks and a fork: studio's module locks are fresh in a forked worker.


def test_a_worker_forked_while_studio_locks_are_held_proceeds():
    """Issue 31: a ZeroGPU worker is a fork taken at any moment; a lock another thread held
    then stays held in the child for ever (files' sweep, finetune's speeds, the live
    channel's keys and settle condition, the job lane)."""
    import os
    import signal

    from studio import files as studio_files
    from studio import finetune, jobs, live

    sess = _session()
    held = [studio_files._sweep_lock, finetune._speeds_lock, live._lock, live._settled,
            jobs.LANE._cond]
    for lock in held:
        lock.acquire()
    try:
        pid = os.fork()
        if pid == 0:  # the worker: a hang ends by the alarm, with a failing status
            signal.signal(signal.SIGALRM, signal.SIG_DFL)  # even when stuck in C
            signal.alarm(30)
            try:
                studio_files.make_room()
                assert finetune.speed(None, "m", 1, "none", measure=False) is None
                assert live.session_for(live.key_for(sess)) is sess
                assert live.settle(sess, timeout=0.01)
                with jobs.LANE.interactive():
                    pass
                os._exit(0)
            except BaseException:
                os._exit(3)
    finally:
        for lock in held:
            lock.release()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the forked worker hung or failed"


# ----------------------------------------------------------------------------------------
# The live channel on ZeroGPU: one held call, the visitor's token (issue 34, issue 31).


class DragSocket:
    """A page on the live channel: its key (and ZeroGPU headers), a first canvas value and
    webcam frame (the worker's start), then a drag of the psi slider for `seconds`, a value
    every 20 ms and a webcam frame every 4th message; counts the frames that come back."""

    def __init__(self, sess, seconds: float, token: str | None = None,
                 jpeg: bytes | None = None) -> None:
        from studio import live
        self.live, self.key = live, live.key_for(sess)
        self.headers = {"host": "studio", "x-ip-token": "handshake.e30.sig"}
        self.token, self.seconds, self.jpeg = token, seconds, jpeg
        self.frames: list[tuple[float, int, int]] = []   # (time, kind, seq)
        self.errors: list[str] = []
        self.texts: list[dict] = []
        self.seq, self.drag_from, self.drag_seqs = 0, None, []

    async def accept(self) -> None:
        pass

    async def receive_text(self) -> str:
        return json.dumps({"key": self.key, "headers": {"x-ip-token": self.token}})

    async def receive(self) -> dict:
        import asyncio
        import struct
        import time

        if self.seq == 0:
            self.seq = 1
            return {"type": "websocket.receive", "text": json.dumps({"kind": "cam"})}
        warm_up = 3 if self.jpeg is not None else 2   # a canvas frame and a webcam frame
        if self.seq == warm_up:  # the worker's start (fork, model and encoder) is not the drag
            while {f[1] for f in self.frames} != ({0, 1} if self.jpeg is not None else {0}):
                await asyncio.sleep(0.01)
            self.drag_from = time.monotonic()
        if self.drag_from is not None and time.monotonic() - self.drag_from > self.seconds:
            while not any(f[2] >= self.drag_seqs[-1] for f in self.frames):
                await asyncio.sleep(0.01)         # the last value's frame, then the page goes
            return {"type": "websocket.disconnect"}
        await asyncio.sleep(0.02 if self.seq > warm_up else 0)  # the drag: a value each 20 ms
        self.seq += 1
        self.drag_seqs.append(self.seq)
        if self.jpeg is not None and self.seq % 4 == 3:
            return {"type": "websocket.receive",
                    "bytes": bytes([self.live.KIND_CAM]) + struct.pack(">I", self.seq) + self.jpeg}
        psi = 0.5 + 0.4 * (self.seq % 20) / 20
        return {"type": "websocket.receive", "text": json.dumps(
            {"kind": "latent", "seq": self.seq, "g": 1, "values": {"psi": psi}})}

    async def send_text(self, text: str) -> None:
        msg = json.loads(text)
        self.texts.append(msg)
        if "error" in msg:
            self.errors.append(msg["error"])

    async def send_bytes(self, data: bytes) -> None:
        import time
        kind, seq, _, _ = self.live.HEADER.unpack(data[:self.live.HEADER.size])
        self.frames.append((time.monotonic(), kind, seq))

    async def close(self, code: int) -> None:
        pass


def _run_live(sock: DragSocket) -> None:
    import asyncio
    import concurrent.futures

    from studio import live
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, live.endpoint(sock)).result(timeout=600)


def test_a_five_second_live_drag_with_the_webcam_is_at_most_two_gpu_calls(zero, tmp_path):
    """Issue 34: on ZeroGPU every live frame and webcam frame was a GPU call of its own (a
    booking, a worker hand-over, the model copied to the GPU). A gesture now holds one call:
    the worker takes each newest value as it comes and sends frames back as they are made."""
    import io

    sess = _session()
    pic = Image.fromarray(latents.render_spec(zoo.load("default", device="cpu").G,
                                              LatentSpec(seed=30)))
    jpeg = io.BytesIO()
    pic.save(jpeg, format="JPEG")
    sock = DragSocket(sess, 5.0, token="visitor.e30.sig", jpeg=jpeg.getvalue())
    _run_live(sock)
    assert not sock.errors, sock.errors
    assert 1 <= zero.calls <= 2, f"{zero.calls} GPU calls for one drag"
    # Frames keep coming while the values do, in each half of the drag (the emulated GPU
    # runs torch through spaces' Python function mode: ~1 s a 64 px frame under load here).
    during = [f for f in sock.frames if f[0] <= sock.drag_from + sock.seconds]
    half = sock.drag_from + sock.seconds / 2
    halves = sum(f[0] < half for f in during), sum(f[0] >= half for f in during)
    assert min(halves) >= 1 and sum(halves) >= 3, (halves, len(sock.frames), sock.seq)
    assert {f[1] for f in sock.frames} == {0, 1}, "canvas and webcam frames both come"


def test_live_channel_gpu_calls_carry_the_visitors_token(zero):
    """Issue 31: the live channel booked GPU calls with no Gradio request, so ZeroGPU saw no
    visitor's quota token. The page's token (sent with its key: a browser cannot add
    headers to a WebSocket) reaches spaces' schedule call; a handshake header too."""
    sess = _session()
    _run_live(DragSocket(sess, 0.1, token="visitor.e30.sig"))
    assert zero.calls >= 1
    assert {s["token"] for s in zero.api.schedules} == {"visitor.e30.sig"}
    zero.api.schedules.clear()
    _run_live(DragSocket(sess, 0.1, token=None))   # no page token: the handshake's
    assert {s["token"] for s in zero.api.schedules} == {"handshake.e30.sig"}
