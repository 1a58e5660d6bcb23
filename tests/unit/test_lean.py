"""The lean route of a Llama model's upper blocks (`loudfacts.lean`): same numbers as the
bridge's suffix run, used by ROME's v* only where it is checked and no hook is set."""

import pytest
import torch

from loudfacts import lean
from loudfacts.editing import EditRequest, get_editor
from loudfacts.editing.rome import clear_components_memo
from loudfacts.forward import SuffixBatch, suffix_final_normalized, suffix_setup
from loudfacts.models import tiny_model

FAST = {"layer": 0, "prefix_recipe": [[3, 2]], "v_num_grad_steps": 5,
        "mom2_n_tokens": 512, "mom2_seq_len": 64, "mom2_ridge": 1e-3}
REQ = EditRequest("{} is located in the city of", "The Louvre", "Rome", "Paris")


@pytest.fixture(autouse=True)
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOUDFACTS_CACHE", str(tmp_path))


def _batch(model, seed=0):
    """Three rows of unequal length, anchors at different places (left and right padding)."""
    gen = torch.Generator().manual_seed(seed)
    rows = [torch.randint(5, 200, (n,), generator=gen).tolist() for n in (9, 6, 11)]
    return SuffixBatch(rows, [4, 2, 4], model.tokenizer.pad_token_id or 0)


def _both_routes(model, start, seed=0):
    batch = _batch(model, seed)
    prefix, base = suffix_setup(model, batch, start - 1)
    delta = torch.randn(model.d_model, generator=torch.Generator().manual_seed(seed)) * 0.5
    out = {}
    for name in ("bridge", "lean"):
        d = delta.clone().requires_grad_(True)
        resid = base + d
        if name == "lean":
            final = lean.LeanSuffix(model, batch, prefix, start)(resid)
        else:
            final = suffix_final_normalized(model, batch, prefix, resid, start)
        real = batch.valid[:, batch.n_prefix:]
        (grad,) = torch.autograd.grad(final[real].pow(2).sum(), [d])
        out[name] = (final.detach()[real], grad)
    return out


@pytest.mark.parametrize("start", [1, 2])
def test_lean_run_equals_the_bridge_run_values_and_gradients(tiny3, start):
    assert lean.lean_supported(tiny3)
    out = _both_routes(tiny3, start)
    torch.testing.assert_close(out["lean"][0], out["bridge"][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["lean"][1], out["bridge"][1], rtol=1e-4, atol=1e-5)


def test_lean_run_equals_the_bridge_run_on_the_embedded_model(model):
    assert lean.lean_supported(model)
    out = _both_routes(model, 6, seed=3)
    torch.testing.assert_close(out["lean"][0], out["bridge"][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["lean"][1], out["bridge"][1], rtol=1e-4, atol=1e-4)


def test_lean_run_reads_the_weights_as_they_are_when_built(tiny3):
    """An edit in place (a stacked edit, say) is what the lean run computes with."""
    clear_components_memo()
    edit = get_editor("rome", tiny3, **{**FAST, "layer": 1}).edit(REQ)
    before = _both_routes(tiny3, 1)
    with edit.applied():
        during = _both_routes(tiny3, 1)
    torch.testing.assert_close(during["lean"][0], during["bridge"][0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(during["lean"][0], before["lean"][0], atol=1e-4)


def test_a_wrong_lean_block_is_caught_by_the_check(monkeypatch):
    fresh = tiny_model("llama", seed=7, n_layers=3)  # unchecked so far
    monkeypatch.setattr(lean.LeanSuffix, "_mlp", lambda self, x, blk: 0.0 * x)
    assert not lean.lean_supported(fresh)
    assert not lean.can_use(fresh)


def test_other_families_and_other_llama_blocks_are_not_run_lean(tiny_gpt2, tiny3, monkeypatch):
    assert not lean.lean_supported(tiny_gpt2)
    assert lean._config_fits(tiny3)
    monkeypatch.setattr(tiny3.hf.config, "attention_bias", True, raising=False)
    assert not lean._config_fits(tiny3)


def test_no_lean_route_while_hooks_are_set_or_when_switched_off(tiny3):
    assert lean.can_use(tiny3)
    with tiny3.bridge.hooks(fwd_hooks=[("blocks.2.hook_mlp_out", lambda a, hook: a)]):
        assert not lean.can_use(tiny3)
    with lean.lean_route(False):
        assert not lean.can_use(tiny3)
    assert lean.can_use(tiny3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not lean.can_use(tiny3)


def test_start_layer_outside_the_upper_blocks_is_refused(tiny3):
    batch = _batch(tiny3)
    prefix, _ = suffix_setup(tiny3, batch, 0)
    for bad in (0, 3):
        with pytest.raises(ValueError, match=f"start_layer {bad}"):
            lean.LeanSuffix(tiny3, batch, prefix, bad)


def test_rome_uses_the_lean_route_and_gets_the_bridge_delta(tiny3, monkeypatch):
    calls = {"lean": 0, "bridge": 0}
    real_lean, real_bridge = lean.LeanSuffix.__call__, suffix_final_normalized

    def counting_lean(self, resid):
        calls["lean"] += 1
        return real_lean(self, resid)

    def counting_bridge(*a, **k):
        calls["bridge"] += 1
        return real_bridge(*a, **k)

    import loudfacts.editing.rome as rome

    monkeypatch.setattr(lean.LeanSuffix, "__call__", counting_lean)
    monkeypatch.setattr(rome, "suffix_final_normalized", counting_bridge)
    hp = {**FAST, "layer": 1}
    clear_components_memo()
    fast = get_editor("rome", tiny3, **hp).components(REQ)
    assert calls["lean"] == len(fast["v_history"]) and calls["bridge"] == 0
    clear_components_memo()
    with lean.lean_route(False):
        slow = get_editor("rome", tiny3, **hp).components(REQ)
    assert calls["bridge"] == len(slow["v_history"])
    assert [h["loss"] for h in fast["v_history"]] == pytest.approx(
        [h["loss"] for h in slow["v_history"]], rel=1e-5)
    torch.testing.assert_close(fast["delta"], slow["delta"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("editor", ["ft", "ft-l"])
@pytest.mark.parametrize("module", ["mlp_out", "mlp"])
def test_finetuning_runs_lean_and_trains_the_same_weights(tiny3, editor, module, monkeypatch):
    """FT's loss through the lean route (stored residual below the trained MLP, blocks above
    run lean) is the loss through the HF forward, step for step, so the trained weights agree."""
    import loudfacts.editing.finetune as ft

    calls = {"lean": 0}
    real = lean.LeanSuffix.__call__

    def counting(self, resid):
        calls["lean"] += 1
        return real(self, resid)

    monkeypatch.setattr(lean.LeanSuffix, "__call__", counting)
    hp = {"layer": 1, "module": module, "steps": 6, "lr": 1e-2, "stop_prob": 1.0}
    if editor == "ft-l":
        hp["eps"] = 5e-3
    fast = get_editor(editor, tiny3, **hp).edit(REQ)
    assert calls["lean"] == len(fast.info["losses"]) + 1  # every step, and the final loss
    with lean.lean_route(False):
        slow = get_editor(editor, tiny3, **hp).edit(REQ)
    assert calls["lean"] == len(fast.info["losses"]) + 1
    assert fast.info["losses"] == pytest.approx(slow.info["losses"], rel=1e-5)
    a, b = fast.deltas(), slow.deltas()
    assert set(a) == set(b) == set(ft.trained_paths(tiny3, 1, module))
    for path in b:
        torch.testing.assert_close(a[path], b[path], rtol=1e-4, atol=1e-6)


def test_finetuning_lean_loss_is_the_hf_loss_and_closed_where_it_cannot_run(tiny3, tiny_gpt2):
    import loudfacts.editing.finetune as ft

    ids, pos, tgt = ft._training_batch(tiny3, REQ)
    paths = ft.trained_paths(tiny3, 0, "mlp")
    nll = ft._lean_target_nll(tiny3, ids, pos, tgt, 0, paths)
    assert nll is not None
    with torch.no_grad():
        assert float(nll()) == pytest.approx(float(ft._target_nll(tiny3, ids, pos, tgt)),
                                             rel=1e-5)
    # the last layer (nothing above to run lean), a hook set, another family: the HF forward
    last = tiny3.n_layers - 1
    assert ft._lean_target_nll(tiny3, ids, pos, tgt, last,
                               ft.trained_paths(tiny3, last, "mlp_out")) is None
    with tiny3.bridge.hooks(fwd_hooks=[("blocks.2.hook_mlp_out", lambda a, hook: a)]):
        assert ft._lean_target_nll(tiny3, ids, pos, tgt, 0, paths) is None
    g_ids, g_pos, g_tgt = ft._training_batch(tiny_gpt2, REQ)
    assert ft._lean_target_nll(tiny_gpt2, g_ids, g_pos, g_tgt, 0,
                               ft.trained_paths(tiny_gpt2, 0, "mlp_out")) is None
    # weights outside the layer's MLP: not this route's business
    assert ft._lean_target_nll(tiny3, ids, pos, tgt, 0,
                               [tiny3.arch.mlp_out.format(1)]) is None


def test_the_lean_check_is_not_remembered_while_broken_or_hooked(broken_weight):
    """A broken weight (non-finite outputs) or a hook set: False now, checked again later."""
    fresh = tiny_model("llama", seed=9, n_layers=3)
    with broken_weight(fresh.hf.model.layers[2].mlp.down_proj.weight):
        assert not lean.lean_supported(fresh)
        assert fresh.bridge not in lean._SUPPORT
    with fresh.bridge.hooks(fwd_hooks=[("blocks.2.hook_mlp_out", lambda a, hook: a)]):
        assert not lean.lean_supported(fresh)
    assert fresh.bridge not in lean._SUPPORT
    assert lean.lean_supported(fresh) and lean._SUPPORT[fresh.bridge] is True


# -- packed scoring forwards (`scoring._packed_forward` through `lean.LeanPacked`) -------------
def _packs(model, seed=0):
    """Prefix trees of random sequences: two sharing a start, one alone, one a prefix."""
    from loudfacts.scoring import pack_sequences

    gen = torch.Generator().manual_seed(seed)
    stem = torch.randint(5, 200, (6,), generator=gen).tolist()
    seqs = [stem + torch.randint(5, 200, (n,), generator=gen).tolist() for n in (5, 3)]
    seqs += [torch.randint(5, 200, (7,), generator=gen).tolist(), stem[:4]]
    return seqs, [p for p, _ in pack_sequences(seqs, max_tokens=16)]


def _compare_packed(model, packs, tol=1e-5):
    from loudfacts.scoring import _packed_forward

    got, want = (_packed_forward(model, packs, lean=flag) for flag in (True, False))
    for r, p in enumerate(packs):
        torch.testing.assert_close(got[r, :len(p)], want[r, :len(p)], rtol=tol, atol=tol)


def test_packed_scoring_runs_lean_and_gives_the_bridge_numbers(tiny3, monkeypatch):
    from loudfacts import scoring

    seqs, packs = _packs(tiny3)
    assert len(packs) == 2  # two rows of different widths: padding in the second
    assert scoring.lean_packing(tiny3)
    _compare_packed(tiny3, packs)
    calls = []
    real = lean.LeanPacked.__call__
    monkeypatch.setattr(lean.LeanPacked, "__call__",
                        lambda self, ids: calls.append(ids.shape) or real(self, ids))
    rows = [j for j, s in enumerate(seqs) for _ in s]
    positions = [q for s in seqs for q in range(len(s))]
    got = scoring.logits_at(tiny3, seqs, rows, positions)
    assert calls  # the lean route ran
    want = scoring.padded_logits_at(tiny3, seqs, rows, positions).float()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_packed_scoring_lean_on_the_embedded_model(model):
    from loudfacts import scoring

    assert scoring.lean_packing(model)
    _compare_packed(model, _packs(model, seed=1)[1], tol=1e-4)


def test_no_lean_packing_with_a_hook_or_switched_off_and_a_wrong_one_is_caught(monkeypatch):
    from loudfacts import scoring

    fresh = tiny_model("llama", seed=11, n_layers=3)
    assert scoring.lean_packing(fresh)
    with fresh.bridge.hooks(fwd_hooks=[("blocks.1.hook_mlp_out", lambda a, hook: a)]):
        assert not scoring.lean_packing(fresh)
    with lean.lean_route(False):
        assert not scoring.lean_packing(fresh)
    other = tiny_model("llama", seed=12, n_layers=3)  # unchecked so far
    monkeypatch.setattr(lean.LeanPacked, "_mlp", lambda self, x, blk: 0.0 * x)
    assert lean.can_use(other) and not scoring.lean_packing(other)
    seqs, _ = _packs(other)
    rows, positions = list(range(len(seqs))), [len(s) - 1 for s in seqs]
    torch.testing.assert_close(scoring.logits_at(other, seqs, rows, positions),
                               scoring.padded_logits_at(other, seqs, rows, positions).float(),
                               rtol=1e-5, atol=1e-5)


def test_the_lean_packing_check_is_not_remembered_while_broken(broken_weight):
    from loudfacts import scoring

    fresh = tiny_model("llama", seed=13, n_layers=3)
    assert lean.lean_supported(fresh)
    with broken_weight(fresh.hf.model.layers[2].mlp.down_proj.weight):
        assert not scoring.lean_packing(fresh)
        assert fresh.bridge not in scoring._LEAN_PACK
    assert scoring.lean_packing(fresh) and scoring._LEAN_PACK[fresh.bridge] is True
