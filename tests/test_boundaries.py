"""Boundaries from labels: SVM recovery, conditional projection, files, labels CSV, CLI."""

from __future__ import annotations

import numpy as np
import pytest

from engine.base.errors import StudioError
from engine.tools.boundaries import (
    MAX_LABELLED,
    MAX_LABELS_FILE_BYTES,
    boundary_from_seeds,
    condition_boundary,
    parse_labels,
    read_labels_csv,
    save_boundary,
    seeds_to_w,
    train_boundary,
)
from engine.tools.latents import (
    DirectionEdit,
    LatentSpec,
    compute_ws,
    load_boundary,
    sample_w,
    validate_latent,
)
from tests.conftest import make_tiny_generator


@pytest.fixture(scope="module")
def G():
    return make_tiny_generator(0)


def _known_direction(w_dim: int, seed: int = 7) -> np.ndarray:
    d = np.random.RandomState(seed).randn(w_dim)
    return d / np.linalg.norm(d)


@pytest.mark.parametrize("method", ["svc", "linear_svc"])
def test_svm_recovers_a_known_direction(G, method):
    # 1000 samples in 32 dimensions: the max-margin normal is within a few degrees of the
    # truth (400 samples leave it at |cos| ~0.95-0.96).
    w = sample_w(G, 1000, seed=3).astype(np.float64)
    truth = _known_direction(w.shape[1])
    labels = (w - w.mean(axis=0)) @ truth > 0
    fit = train_boundary(w, labels, method=method)
    cos = float(fit.boundary[0] @ truth)
    assert cos >= 0.95, cos  # signed: the boundary points towards the "yes" samples
    assert fit.boundary.shape == (1, 32) and fit.boundary.dtype == np.float64
    assert np.isclose(np.linalg.norm(fit.boundary), 1.0)
    assert fit.folds == 5 and fit.cv_accuracy > 0.9
    assert fit.positives + fit.negatives == 1000


def test_cv_accuracy_is_chance_on_random_labels(G):
    w = sample_w(G, 200, seed=4).astype(np.float64)
    labels = np.random.RandomState(0).rand(200) > 0.5
    fit = train_boundary(w, labels)
    assert fit.cv_accuracy < 0.7  # held-out folds see no structure that is not there
    assert fit.train_accuracy > fit.cv_accuracy


def test_boundary_from_labelled_seeds_moves_the_attribute(G):
    seeds = list(range(800))
    w = seeds_to_w(G, seeds)
    truth = _known_direction(32, seed=11)
    labels = [int(x) for x in (w - w.mean(axis=0)) @ truth > 0]
    fit = boundary_from_seeds(G, seeds, labels, folds=4)
    assert fit.folds == 4 and float(fit.boundary[0] @ truth) >= 0.95
    with pytest.raises(StudioError, match="one label per seed"):
        boundary_from_seeds(G, seeds, labels[:-1])


def test_conditional_boundary_matches_interfacegan_projection():
    rng = np.random.RandomState(0)
    p, c1, c2 = (v / np.linalg.norm(v) for v in rng.randn(3, 1, 16))
    one = condition_boundary(p, [c1])
    expected = p - (p @ c1.T) * c1  # InterFaceGAN's project_boundary with one condition
    assert np.allclose(one, expected / np.linalg.norm(expected))
    two = condition_boundary(p, [c1, c2])
    assert np.isclose(np.linalg.norm(two), 1.0)
    assert abs((two @ c1.T).item()) < 1e-10 and abs((two @ c2.T).item()) < 1e-10
    assert (two @ p.T).item() > 0  # still the primal attribute, not its opposite
    with pytest.raises(StudioError, match="span of its conditions"):
        condition_boundary(0.6 * c1 + 0.8 * c2, [c1, c2])


def test_train_with_condition_is_orthogonal_to_it(G):
    w = sample_w(G, 300, seed=5).astype(np.float64)
    truth, glasses = _known_direction(32, 1), _known_direction(32, 2)
    fit = train_boundary(w, (w - w.mean(0)) @ truth > 0, conditions=[glasses[None]])
    assert fit.conditions == 1 and abs(float(fit.boundary[0] @ glasses)) < 1e-10


def test_too_few_or_bad_labels_are_refused_in_one_sentence(G):
    w = sample_w(G, 6, seed=6)
    with pytest.raises(StudioError, match=r"at least 2 samples yes .* \(got 1 yes, 5 no\)"):
        train_boundary(w, [1, 0, 0, 0, 0, 0])
    # The page's "Train boundary" before any mark sends no samples at all.
    with pytest.raises(StudioError, match=r"at least 2 samples yes .* \(got none\)"):
        train_boundary(np.zeros((0, w.shape[1])), [])
    with pytest.raises(StudioError, match="yes/no"):
        train_boundary(w, [1, 0, 2, 0, 1, 0])
    with pytest.raises(StudioError, match="one label per sample"):
        train_boundary(w, [1, 0])
    bad = w.copy()
    bad[0, 0] = np.nan
    with pytest.raises(StudioError, match="NaN"):
        train_boundary(bad, [1, 1, 1, 0, 0, 0])


def test_save_and_load_interfacegan_format(G, tmp_path):
    b = _known_direction(32)[None] * 3.0
    path = save_boundary(tmp_path / "smile.npy", b, G)
    raw = np.load(path)
    assert raw.shape == (1, 32) and raw.dtype == np.float64
    assert np.isclose(np.linalg.norm(raw), 1.0)
    assert np.allclose(load_boundary(path, G), raw, atol=1e-7)
    spec = LatentSpec(seed=1, directions=[DirectionEdit("file", amount=2.0, path=str(path))])
    assert validate_latent(spec, G) == []
    moved = compute_ws(G, spec) - compute_ws(G, LatentSpec(seed=1))
    assert np.allclose(moved[0].numpy(), 2.0 * raw.astype(np.float32), atol=1e-5)
    with pytest.raises(StudioError, match="all zeros"):
        save_boundary(tmp_path / "zero.npy", np.zeros((1, 32)))


def test_published_512_boundary_loads_on_512_model_and_is_refused_elsewhere(G, tmp_path):
    # InterFaceGAN's published StyleGAN boundaries are [1, 512] float64 files.
    published = tmp_path / "stylegan_ffhq_smile_w_boundary.npy"
    np.save(published, _known_direction(512)[None])
    G512 = make_tiny_generator(0, z_dim=16, w_dim=512)
    assert load_boundary(published, G512).shape == (1, 512)
    with pytest.raises(StudioError) as err:
        load_boundary(published, G)
    message = str(err.value)
    assert message.count(".") <= 2 and "[1, 512]" in message and "[1, 32]" in message


def test_read_labels_csv(tmp_path):
    f = tmp_path / "labels.csv"
    f.write_text("seed,label\n# a comment\n0,yes\n1, no\n\n2,1\n3,FALSE\n4.5,y\n")
    assert read_labels_csv(f) == ([0.0, 1.0, 2.0, 3.0, 4.5], [1, 0, 1, 0, 1])
    f.write_text("seed,label\n0,yes\n1,maybe\n")
    with pytest.raises(StudioError, match="line 3"):
        read_labels_csv(f)
    f.write_text("0,yes\n5,no\n5,yes\n")
    with pytest.raises(StudioError, match="seed 5 is labelled both yes and no"):
        read_labels_csv(f)
    f.write_text("0,yes\n-1,no\n")
    with pytest.raises(StudioError, match="out of range"):
        read_labels_csv(f)
    f.write_text("seed,label\n")
    with pytest.raises(StudioError, match="no samples"):
        read_labels_csv(f)
    f.write_bytes(b"0,yes\n" * (MAX_LABELS_FILE_BYTES // 6 + 1))
    with pytest.raises(StudioError, match="bytes"):
        read_labels_csv(f)
    assert parse_labels("7;no\n8\tyes") == ([7.0, 8.0], [0, 1])
    with pytest.raises(StudioError, match="^The labels line 1: expected"):
        parse_labels("7,yes,extra")
    many = "".join(f"{i},{i % 2}\n" for i in range(MAX_LABELLED + 1))
    with pytest.raises(StudioError, match="more than 5000 samples"):
        parse_labels(many)


def test_cli_boundary_writes_a_boundary(tmp_path, capsys):
    from engine.__main__ import main
    from engine.models import zoo
    G_default = zoo.load("default").G
    seeds = list(range(600))
    w = seeds_to_w(G_default, seeds)
    truth = _known_direction(w.shape[1], seed=3)
    yes = (w - w.mean(0)) @ truth > 0
    labels = tmp_path / "labels.csv"
    labels.write_text("seed,label\n" + "".join(
        f"{s},{'yes' if y else 'no'}\n" for s, y in zip(seeds, yes)))
    out = tmp_path / "b.npy"
    assert main(["boundary", "--labels", str(labels), "--out", str(out)]) == 0
    saved = np.load(out)
    assert saved.shape == (1, G_default.cfg.w_dim) and saved.dtype == np.float64
    assert float(saved[0] @ truth) > 0.75  # 600 samples in 128 dimensions: 0.83 measured
    assert "cross-validated accuracy" in capsys.readouterr().out
    labels.write_text("0,yes\n1,no\n")
    assert main(["boundary", "--labels", str(labels), "--out", str(out)]) == 2
    assert "at least 2 samples yes" in capsys.readouterr().err
