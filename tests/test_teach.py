"""The Explore tab's teach-by-example and blend logic, without Gradio."""

from __future__ import annotations

import numpy as np
import pytest

from engine.base.errors import StudioError
from engine.tools.latents import load_boundary
from studio import files, models, teach


def _truth(w_dim: int) -> np.ndarray:
    d = np.random.RandomState(5).randn(w_dim)
    return d / np.linalg.norm(d)


def test_label_book_keeps_marks_across_pages():
    book = teach.LabelBook()
    book.mark([0, 1, 2, 3], yes=[0, 2], no=[1])
    book.mark([4, 5, 6, 7], yes=[5], no=[4, 7])
    assert book.counts() == (3, 3)
    assert book.on_page([0, 1, 2, 3]) == ([0, 2], [1])
    book.mark([0, 1, 2, 3], yes=[3], no=[])  # the page again, marked differently
    assert book.marks == {3: 1, 4: 0, 5: 1, 7: 0}
    assert book.to_csv() == "seed,label\n3,yes\n4,no\n5,yes\n7,no\n"
    with pytest.raises(StudioError, match="Seed 5 is marked both"):
        book.mark([4, 5], yes=[5], no=[5])
    with pytest.raises(StudioError, match="More than 1000 samples"):
        book.mark([], yes=list(range(600)), no=list(range(600, 1200)))


def test_page_seeds_and_samples():
    assert teach.page_seeds(10, 4) == [10, 11, 12, 13]
    with pytest.raises(StudioError, match="from 1 to 24 samples"):
        teach.page_seeds(0, 100)
    page = teach.sample_page("default", [0, 1, 2], 0.7)
    assert [c for _, c in page] == ["seed 0", "seed 1", "seed 2"]
    assert page[0][0].size == (64, 64)


def test_train_writes_a_boundary_that_the_directions_use():
    from engine.tools.boundaries import seeds_to_w

    G = models.generator("default")
    seeds = list(range(300))
    truth = _truth(G.cfg.w_dim)
    w = seeds_to_w(G, seeds)
    yes = (w - w.mean(0)) @ truth > 0
    book = teach.LabelBook()
    book.mark(seeds, yes=[s for s, y in zip(seeds, yes) if y],
              no=[s for s, y in zip(seeds, yes) if not y])
    trained = teach.train("default", book, 1.0, name="my attribute!")
    assert files.is_output(trained.path) and "boundary-my-attribute" in trained.path
    b = load_boundary(trained.path, G)
    assert float(b[0] @ truth) > 0.6 and "cross-validated accuracy" in trained.summary
    other = teach.LabelBook()
    second = (w - w.mean(0)) @ np.roll(truth, 1) > 0
    other.mark(seeds, yes=[s for s, y in zip(seeds, second) if y],
               no=[s for s, y in zip(seeds, second) if not y])
    held = teach.train("default", other, 1.0, name="held", conditions=[trained.path])
    assert "1 condition(s) projected out" in held.summary
    assert abs(float(load_boundary(held.path, G)[0] @ b[0])) < 1e-5
    with pytest.raises(StudioError, match="span of its conditions"):
        teach.train("default", book, 1.0, conditions=[trained.path])
    via_api = teach.train_from_labels("default", book.to_csv(), name="api")
    assert np.allclose(load_boundary(via_api.path, G), b, atol=1e-6)
    with pytest.raises(StudioError, match="at least 2 samples yes"):
        teach.train_from_labels("default", "0,yes\n1,no\n2,no")


def test_blend_spec_from_controls():
    assert teach.blend_spec(False, "x", "swap", "b16", 0.5, "a") is None
    spec = teach.blend_spec(True, " other.pkl ", "swap", "b32", 0.25, "b")
    assert (spec.model, spec.swap_res, spec.alpha, spec.mapping) == ("other.pkl", 32, 0.25, "b")
    with pytest.raises(StudioError, match="Name model B"):
        teach.blend_spec(True, "  ", "swap", "b16", 0.5, "a")
    per = teach.blend_spec(True, "b.pkl", "interpolate", "b16", 0.5, "a", "0; 0, 0.5,1, 1")
    assert per.alphas == [0.0, 0.0, 0.5, 1.0, 1.0]
    with pytest.raises(StudioError, match="b4 first"):
        teach.blend_spec(True, "b.pkl", "interpolate", "b16", 0.5, "a", "0, half")


def test_blend_is_an_undoable_session_edit():
    from studio import session as S

    sess = S.new_session("default")
    spec = teach.blend_spec(True, "tuned.pkl", "interpolate", "b16", 0.3, "b")
    with S.edit(sess):
        S.set_blend(sess, spec)
    assert sess.recipe.blend == spec and sess.recipe.blend is not spec
    assert S.undo(sess) and sess.recipe.blend is None
    assert S.redo(sess) and sess.recipe.blend == spec
