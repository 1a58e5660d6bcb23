"""Partial forwards: stored keys/values of unchanged positions reproduce the full run."""

from __future__ import annotations

import pytest
import torch

from loudfacts.forward import (
    KVPrefix,
    KVRecorder,
    SuffixBatch,
    prefix_causal_mask,
    run_with_prefix,
    suffix_final_normalized,
    suffix_setup,
    supports_kv_prefix,
)


def test_prefix_mask_is_causal_after_the_prefix_and_hides_padding():
    m = prefix_causal_mask(3, 2)
    assert m.shape == (1, 1, 3, 5)
    allowed = m[0, 0] == 0
    assert allowed.tolist() == [[True, True, True, False, False],
                                [True, True, True, True, False],
                                [True, True, True, True, True]]
    valid = torch.tensor([[False, True, True, True, False]])
    allowed = prefix_causal_mask(3, 2, key_valid=valid)[0, 0] == 0
    assert not allowed[:, 0].any()  # a padding key is never seen ...
    assert allowed[2, 4]  # ... except by itself (no query row is left empty)
    assert not allowed[1, 4]


def test_suffix_batch_aligns_rows_on_their_anchor():
    b = SuffixBatch([[5, 6, 7, 8], [9, 10]], anchors=[2, 0], pad_id=0)
    assert b.n_prefix == 2 and b.n_suffix == 2
    assert b.ids.tolist() == [[5, 6, 7, 8], [0, 0, 9, 10]]
    assert b.positions.tolist() == [[0, 1, 2, 3], [0, 0, 0, 1]]
    assert b.valid.tolist() == [[True, True, True, True], [False, False, True, True]]
    assert b.suffix_column(0, 3) == 1 and b.suffix_column(1, 0) == 0
    with pytest.raises(ValueError, match="not in the suffix"):
        b.suffix_column(0, 1)
    with pytest.raises(ValueError, match="anchor"):
        SuffixBatch([[1, 2]], anchors=[2], pad_id=0)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_suffix_run_equals_full_run(fixture, request):
    model = request.getfixturevalue(fixture)
    assert supports_kv_prefix(model)
    ids = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        rec = KVRecorder()
        full = run_with_prefix(model, ids, rec, torch.arange(9)[None])
        t = 4
        pre = KVPrefix({i: k[:, :, :t] for i, k in rec.keys.items()},
                       {i: v[:, :, :t] for i, v in rec.values.items()})
        part = run_with_prefix(model, ids[:, t:], pre, torch.arange(t, 9)[None])
    torch.testing.assert_close(part, full[:, t:], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_suffix_blocks_from_a_middle_layer_on_ragged_rows(fixture, request):
    """Rows of different lengths, aligned on an anchor: running blocks 1.. on the suffix with
    stored keys/values gives each row's own final residual (as a forward of that row alone)."""
    model = request.getfixturevalue(fixture)
    g = torch.Generator().manual_seed(1)
    rows = [torch.randint(0, 100, (n,), generator=g).tolist() for n in (7, 4, 9)]
    anchors = [3, 1, 5]
    batch = SuffixBatch(rows, anchors, pad_id=0)
    prefix, base = suffix_setup(model, batch, layer=0)
    out = suffix_final_normalized(model, batch, prefix, base, start_layer=1)
    for r, (row, a) in enumerate(zip(rows, anchors)):
        with torch.no_grad():
            store = {}
            with model.bridge.hooks(fwd_hooks=[("ln_final.hook_out",
                                                lambda act, hook, s=store: s.update(x=act))]):
                model.bridge(torch.tensor([row]))
        want = store["x"][0, a:]
        got = out[r, : len(row) - a]
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_kv_prefix_check_is_not_remembered_while_a_weight_is_broken(broken_weight):
    """With non-finite logits there is nothing to compare: False now, asked again later."""
    from loudfacts import forward
    from loudfacts.models import tiny_model

    m = tiny_model("llama", seed=6)
    with broken_weight(m.hf.model.layers[0].mlp.down_proj.weight):
        assert not forward.supports_kv_prefix(m)
        assert id(m.bridge) not in forward._KV_SUPPORT
    assert forward.supports_kv_prefix(m)
