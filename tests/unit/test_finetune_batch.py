"""FT and FT+L edits computed several at a time (`finetune.finetune_weights_batch`,
`Editor.edit_many`): each request's edit is the one-at-a-time edit up to float rounding, with
its own stop, its own errors, and the model untouched."""

import math

import pytest
import torch

from loudfacts import lean
from loudfacts.editing import EditError, EditRequest, get_editor
from loudfacts.editing import finetune as ft

# prompts and targets of different token lengths, so the batch is right-padded
REQUESTS = [
    EditRequest("{} is located in the city of", "The Louvre", "Rome", "Paris"),
    EditRequest("{} plays", "Bob", "the violin", "golf"),
    EditRequest("The home country of {} is", "Ferrari", "Japan", "Italy"),
    EditRequest("{} was written in", "The Iliad", "modern Ancient Greek", "Greek"),
]
HP = {"layer": 1, "steps": 8, "lr": 1e-2}


@pytest.fixture(autouse=True)
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOUDFACTS_CACHE", str(tmp_path))


def _weights(model) -> dict:
    return {n: p.detach().clone() for n, p in model.hf.named_parameters()}


def _stop_between(model, name, hp) -> float:
    """A stop probability that the request whose P(target) climbs highest reaches mid-way and
    no other request ever reaches (so the batch loses a member while the others go on)."""
    ed = get_editor(name, model, **hp, stop_prob=1.0)
    runs = [[math.exp(-x) for x in ed.edit(r).info["losses"]] for r in REQUESTS]
    best = max(range(len(runs)), key=lambda i: max(runs[i]))
    others = max(max(run) for i, run in enumerate(runs) if i != best)
    p = runs[best]
    step = next(i for i in range(1, len(p)) if p[i] > others * 1.002 and p[i] > p[i - 1])
    low = max(others, max(p[:step]))
    stop = (low + p[step]) / 2
    assert step < hp["steps"] - 1 and stop - low > 1e-4 * stop and p[step] - stop > 1e-4 * stop
    return stop


@pytest.mark.parametrize("name", ["ft", "ft-l"])
def test_batched_edits_equal_one_at_a_time(tiny3, name):
    hp = {**HP, **({"eps": 2e-2} if name == "ft-l" else {})}
    stop = _stop_between(tiny3, name, hp)
    ed = get_editor(name, tiny3, **hp, stop_prob=stop)
    before = _weights(tiny3)
    batched = ed.edit_many(REQUESTS)
    assert all(torch.equal(p, before[n]) for n, p in tiny3.hf.named_parameters())
    singles = [ed.edit(r) for r in REQUESTS]
    stops = [e.info["stopped_by"] for e in singles]
    assert "stop_prob" in stops and "steps" in stops  # the batch lost a member mid-way
    for b, s in zip(batched, singles):
        assert b.info["batched"]["requests"] == len(REQUESTS)
        assert b.info["stopped_by"] == s.info["stopped_by"]
        assert b.info["steps_run"] == s.info["steps_run"]
        assert b.info["losses"] == pytest.approx(s.info["losses"], rel=1e-5)
        assert b.info["loss_final"] == pytest.approx(s.info["loss_final"], rel=1e-5)
        db, ds = b.deltas(), s.deltas()
        assert set(db) == set(ds) == set(ft.trained_paths(tiny3, 1, "mlp_out"))
        for path in ds:
            torch.testing.assert_close(db[path], ds[path], rtol=1e-3, atol=1e-5)
        if name == "ft-l":
            assert b.info["max_abs_delta"] <= hp["eps"]


def test_a_batch_of_one_is_the_single_edit_to_rounding(tiny3):
    """Nothing padded, nothing stopped: only the products' summation order differs."""
    ed = get_editor("ft", tiny3, **HP)
    (b,) = ed.edit_many(REQUESTS[:1])
    s = ed.edit(REQUESTS[0])
    assert b.info["losses"] == pytest.approx(s.info["losses"], rel=1e-6)
    for path, d in s.deltas().items():
        torch.testing.assert_close(b.deltas()[path], d, rtol=1e-4, atol=1e-6)


def test_each_request_keeps_its_own_error(tiny3):
    ed = get_editor("ft", tiny3, **HP)
    too_long = EditRequest("{} is" + " very" * (tiny3.n_ctx + 10), "Bob", "Rome", "Paris")
    long_target = EditRequest("{} lives in", "Bob", " ".join(["Rome"] * 80), "Paris")
    got = ed.edit_many([REQUESTS[0], too_long, long_target, REQUESTS[1]])
    assert isinstance(got[1], EditError) and isinstance(got[2], EditError)
    for single, res in ((REQUESTS[0], got[0]), (REQUESTS[1], got[3])):
        want = ed.edit(single)
        assert res.requests[0] == single
        assert res.info["losses"] == pytest.approx(want.info["losses"], rel=1e-5)
    with pytest.raises(EditError):
        ed.edit(too_long)


def test_a_non_finite_loss_fails_that_request_alone(tiny3, monkeypatch):
    """A request whose loss turns non-finite gets the EditError `finetune_weights` raises;
    the others finish as they would have."""
    real = torch.nn.functional.cross_entropy
    state = {"calls": 0}

    def poisoned(logits, target, reduction="mean", **kw):
        out = real(logits, target, reduction=reduction, **kw)
        state["calls"] += 1
        if reduction == "none" and state["calls"] == 3:  # the third step: row 0's tokens
            out = out.clone()
            out[0] = float("nan")
        return out

    ed = get_editor("ft", tiny3, **HP, stop_prob=1.0)
    want = [ed.edit(r) for r in REQUESTS[1:]]
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", poisoned)
    got = ed.edit_many(REQUESTS)
    assert isinstance(got[0], EditError) and "loss became nan" in str(got[0])
    for g, w in zip(got[1:], want):
        assert g.info["losses"] == pytest.approx(w.info["losses"], rel=1e-5)


def test_closed_route_edits_one_at_a_time(tiny3, tiny_gpt2):
    """No lean route (switched off, another family, every MLP matrix trained): the batch
    function declines and `edit_many` returns exactly the one-at-a-time edits."""
    hp = dict(HP)
    with lean.lean_route(False):
        assert ft.finetune_weights_batch(tiny3, REQUESTS, get_editor("ft", tiny3, **hp).hparams,
                                         "ft") is None
        ed = get_editor("ft", tiny3, **hp)
        got, want = ed.edit_many(REQUESTS[:2]), [ed.edit(r) for r in REQUESTS[:2]]
        assert all("batched" not in g.info for g in got)
        assert [g.info["losses"] for g in got] == [w.info["losses"] for w in want]
    whole = get_editor("ft", tiny3, **hp, module="mlp")
    assert ft.finetune_weights_batch(tiny3, REQUESTS, whole.hparams, "ft") is None
    gpt = get_editor("ft", tiny_gpt2, steps=3, layer=0)
    assert ft.finetune_weights_batch(tiny_gpt2, REQUESTS, gpt.hparams, "ft") is None
    assert len(gpt.edit_many(REQUESTS[:2])) == 2
