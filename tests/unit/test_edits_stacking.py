"""Weight edits stack: several edits of the same matrix in place together keep every change,
and undoing them gives back the original bytes (issue 15)."""

from __future__ import annotations

import pytest
import torch

from loudfacts.editing import EditRequest, WeightEdit, compose, get_editor

REQS = [
    EditRequest("{} is located in the city of", "The Louvre", "Rome", "Paris"),
    EditRequest("{} is located in the city of", "The Colosseum", "Paris", "Rome"),
    EditRequest("{} is in", "The Space Needle", "France", "Seattle"),
]
LAYER = 1


def _path(model):
    return model.arch.mlp_out.format(LAYER)


def _weight(model):
    return model.module(_path(model)).weight


def _random_edit(model, seed, req=REQS[0], scale=1e-2):
    """A WeightEdit built by hand from a full new matrix (as ROME and FT build theirs)."""
    w = _weight(model).detach()
    g = torch.Generator().manual_seed(seed)
    new = w + scale * torch.randn(w.shape, generator=g)
    return WeightEdit(model, {_path(model): new}, req, "test")


def test_one_edit_writes_exactly_the_new_weights(tiny_llama):
    w0 = _weight(tiny_llama).detach().clone()
    g = torch.Generator().manual_seed(3)
    new = w0 + 1e-2 * torch.randn(w0.shape, generator=g)
    edit = WeightEdit(tiny_llama, {_path(tiny_llama): new}, REQS[0], "test")
    with edit.applied():
        assert torch.equal(_weight(tiny_llama), new)  # bit for bit, as copying would
    assert torch.equal(_weight(tiny_llama), w0)


def test_nested_edits_of_one_matrix_keep_both_and_restore_bit_exactly(tiny_llama):
    digest = tiny_llama.weight_digest()
    w0 = _weight(tiny_llama).detach().clone()
    a, b = _random_edit(tiny_llama, 1), _random_edit(tiny_llama, 2, REQS[1])
    da, db = a.deltas()[_path(tiny_llama)], b.deltas()[_path(tiny_llama)]
    assert not torch.allclose(da, db)
    with a.applied():
        w_a = _weight(tiny_llama).detach().clone()
        with b.applied():
            both = _weight(tiny_llama).detach().double()
            # each change is there: W0 + dA + dB (up to float32 rounding of each step)
            torch.testing.assert_close(both, w0.double() + da + db, rtol=0, atol=1e-6)
            assert not torch.allclose(both, w0.double() + db, rtol=0, atol=1e-4)  # A kept
        assert torch.equal(_weight(tiny_llama), w_a)  # inner restored to exactly A's bytes
    assert torch.equal(_weight(tiny_llama), w0)
    assert tiny_llama.weight_digest() == digest


def test_compose_of_two_edits_equals_applying_the_summed_delta(tiny_llama):
    digest = tiny_llama.weight_digest()
    a, b = _random_edit(tiny_llama, 4), _random_edit(tiny_llama, 5, REQS[1])
    total = {p: a.deltas()[p] + b.deltas()[p] for p in a.deltas()}
    summed = WeightEdit.from_deltas(tiny_llama, total, REQS[:2], "test")
    ids = tiny_llama.to_tensor(REQS[0].text)
    with torch.no_grad():
        with compose([a, b]).applied():
            w_ab = _weight(tiny_llama).detach().clone()
            logits_ab = tiny_llama.hf(ids).logits
        with summed.applied():
            logits_sum = tiny_llama.hf(ids).logits
            torch.testing.assert_close(w_ab, _weight(tiny_llama), rtol=0, atol=1e-6)
    torch.testing.assert_close(logits_ab, logits_sum, rtol=1e-5, atol=1e-5)
    assert tiny_llama.weight_digest() == digest


def test_exception_inside_nested_edits_restores_bit_exactly(tiny_gpt2):
    digest = tiny_gpt2.weight_digest()
    a, b = _random_edit(tiny_gpt2, 6), _random_edit(tiny_gpt2, 7, REQS[1])
    with pytest.raises(RuntimeError, match="boom"), a.applied(), b.applied():
        raise RuntimeError("boom")
    assert tiny_gpt2.weight_digest() == digest
    with pytest.raises(RuntimeError, match="boom"), compose([a, b]).applied():
        raise RuntimeError("boom")
    assert tiny_gpt2.weight_digest() == digest


def test_edit_sequence_keeps_every_edit(tiny_llama):
    """Three sequential FT edits of one layer: each is computed on the model with the earlier
    ones applied, and applying the sequence adds every one of their deltas."""
    digest = tiny_llama.weight_digest()
    w0 = _weight(tiny_llama).detach().clone()
    editor = get_editor("ft", tiny_llama, layer=LAYER, lr=5e-2, steps=3, stop_prob=1.0)
    seq = editor.edit_sequence(REQS)
    assert tiny_llama.weight_digest() == digest, "edit_sequence must leave the model unedited"
    assert len(seq.edits) == 3
    deltas = [e.deltas()[_path(tiny_llama)] for e in seq.edits]
    assert all(float(d.abs().max()) > 1e-3 for d in deltas)
    with seq.applied():
        w = _weight(tiny_llama).detach().double()
        torch.testing.assert_close(w, w0.double() + sum(deltas), rtol=0, atol=1e-6)
        for i in range(3):  # leaving any one delta out is visibly wrong
            rest = sum(d for j, d in enumerate(deltas) if j != i)
            assert not torch.allclose(w, w0.double() + rest, rtol=0, atol=1e-4)
        # the last edit was trained on top of the first two: its loss holds exactly here
        from loudfacts.scoring import target_nll

        last = float(target_nll(tiny_llama, [REQS[2].text], [REQS[2].target_new])[0])
        assert abs(last - seq.edits[2].info["loss_final"]) < 1e-4
    assert tiny_llama.weight_digest() == digest
    with pytest.raises(RuntimeError, match="boom"), seq.applied():
        raise RuntimeError("boom")
    assert torch.equal(_weight(tiny_llama), w0)


def test_from_deltas_and_new_weights(tiny_llama):
    w0 = _weight(tiny_llama).detach().clone()
    d = torch.full(w0.shape, 0.25, dtype=torch.float64)
    edit = WeightEdit.from_deltas(tiny_llama, {_path(tiny_llama): d}, REQS[0], "test")
    torch.testing.assert_close(edit.new_weights[_path(tiny_llama)], (w0.double() + 0.25).float())
    with edit.applied():
        torch.testing.assert_close(_weight(tiny_llama), (w0.double() + 0.25).float())
        # while applied, new_weights are still those the edit wrote (not written twice)
        torch.testing.assert_close(edit.new_weights[_path(tiny_llama)], _weight(tiny_llama))
    assert torch.equal(_weight(tiny_llama), w0)
