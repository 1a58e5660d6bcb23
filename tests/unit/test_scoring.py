"""Batched target probabilities agree with one-at-a-time forwards."""

import pytest
import torch

from loudfacts.scoring import next_token_logprobs, target_nll, target_probs, top1_matches
from loudfacts.tokens import target_ids


def _nll_unbatched(m, prompt, target):
    p, t = m.encode(prompt), target_ids(m, target)
    ids = torch.tensor([p + t])
    logp = torch.log_softmax(m.hf(ids).logits[0].float(), -1)
    return float(-torch.stack([logp[len(p) - 1 + i, tok] for i, tok in enumerate(t)]).mean())


def test_batched_nll_matches_unbatched_with_padding(tiny_llama):
    prompts = ["The Louvre is located in the city of", "Miles Davis plays the", "The"]
    targets = ["Paris", "trumpet", "Space Needle"]
    got = target_nll(tiny_llama, prompts, targets, batch_size=3)
    want = torch.tensor([_nll_unbatched(tiny_llama, p, t) for p, t in zip(prompts, targets)])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    probs = target_probs(tiny_llama, prompts, targets, batch_size=2)
    torch.testing.assert_close(probs, torch.exp(-want), atol=1e-5, rtol=1e-5)


def test_next_token_logprobs_and_top1(tiny_gpt2):
    prompts = ["The Louvre is", "Italy borders France. The"]
    logp = next_token_logprobs(tiny_gpt2, prompts)
    assert logp.shape == (2, tiny_gpt2.d_vocab)
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(2))
    greedy = [tiny_gpt2.decode([int(i)]) for i in logp.argmax(-1)]
    assert top1_matches(tiny_gpt2, prompts, greedy).all()


def test_score_targets_top1_agrees_with_greedy_decoding(tiny_llama):
    from loudfacts.scoring import score_targets

    prompts = ["The Louvre is located in the city of", "Miles Davis plays the", "Italy borders"]
    greedy = [tiny_llama.decode([int(i)]) for i in next_token_logprobs(tiny_llama, prompts).argmax(-1)]
    targets = [greedy[0], "Space Needle", greedy[2]]
    nll, top1 = score_targets(tiny_llama, prompts, targets)
    torch.testing.assert_close(nll, target_nll(tiny_llama, prompts, targets))
    assert top1.tolist() == top1_matches(tiny_llama, prompts, targets).tolist()


# -- packed forwards (prefix trees) against padded batches and single sequences -----------------
_SHARED = ["The Louvre is located in the city of", "The Louvre is located in the country of",
           "Miles Davis plays the", "The", "The Louvre is located in the city of Rome. Miles Davis",
           "The Louvre is located in the city of Rome. Paris is", "Miles Davis plays the"]


def _all_positions(seqs):
    rows = [j for j, s in enumerate(seqs) for _ in s]
    return rows, [q for s in seqs for q in range(len(s))]


def test_a_prefix_pack_stores_a_shared_start_once_and_each_position_sees_only_its_path():
    from loudfacts.scoring import PrefixPack

    p = PrefixPack()
    assert p.new_positions([1, 2, 3]) == 3
    p.add([1, 2, 3])
    assert p.new_positions([1, 2, 4, 5]) == 2 and p.new_positions([1, 2]) == 0
    p.add([1, 2, 4, 5])
    p.add([1, 2])  # already there: no new position
    p.add([7])
    assert p.ids == [1, 2, 3, 4, 5, 7] and p.depth == [0, 1, 2, 2, 3, 0]
    assert p.paths == [[0, 1, 2], [0, 1, 3, 4], [0, 1], [5]]
    anc = p.ancestors()
    assert anc[4].nonzero().flatten().tolist() == [0, 1, 3, 4]  # not its sibling at position 2
    assert anc[2].nonzero().flatten().tolist() == [0, 1, 2]
    assert anc[5].nonzero().flatten().tolist() == [5]  # another tree: sees nothing shared


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_packed_logits_equal_single_sequence_forwards(arch, monkeypatch):
    """Every position of every sequence, packed (also split over several trees and forwards,
    with small limits), equals the sequence's own unbatched forward."""
    from loudfacts import scoring
    from loudfacts.models import tiny_model

    m = tiny_model(arch)
    seqs = [m.encode(p) for p in _SHARED]
    rows, positions = _all_positions(seqs)
    want = torch.cat([m.hf(torch.tensor([s])).logits[0].float() for s in seqs])
    assert scoring.supports_packing(m)
    got = scoring.packed_logits_at(m, seqs, rows, positions)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    monkeypatch.setattr(scoring, "PACK_TOKENS", 12)
    monkeypatch.setattr(scoring, "PACK_ROWS", 2)
    packs = scoring.pack_sequences(seqs)
    assert len(packs) > 2  # several trees, and more than one forward
    got = scoring.packed_logits_at(m, seqs, rows, positions)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_packing_computes_a_shared_start_once(tiny_llama):
    from loudfacts.scoring import pack_sequences

    seqs = [tiny_llama.encode(p) for p in _SHARED]
    (pack, members), = pack_sequences(seqs)
    assert members == list(range(len(seqs)))
    assert len(pack) < sum(map(len, seqs)) - len(seqs[0])  # the repeat and the shared starts


def test_a_hook_on_the_model_keeps_the_padded_path_and_its_effect(tiny_llama, monkeypatch):
    """Hooks read positions as (row, position) of separate prompts: with one attached,
    `logits_at` does not pack, and the hook's change shows in the result."""
    from loudfacts import scoring

    seqs = [tiny_llama.encode(p) for p in _SHARED[:3]]
    rows, positions = [0, 1, 2], [len(s) - 1 for s in seqs]
    plain = scoring.logits_at(tiny_llama, seqs, rows, positions)
    assert not scoring._any_hooks(tiny_llama)

    def refuse(*a, **k):
        raise AssertionError("packed with a hook attached")

    monkeypatch.setattr(scoring, "packed_logits_at", refuse)
    with tiny_llama.bridge.hooks(fwd_hooks=[("blocks.0.hook_resid_post", lambda a, hook: a * 2)]):
        assert scoring._any_hooks(tiny_llama)
        hooked = scoring.logits_at(tiny_llama, seqs, rows, positions)
    assert (hooked - plain).abs().max() > 1e-3
    monkeypatch.undo()
    handle = tiny_llama.hf.model.layers[0].mlp.register_forward_hook(lambda *a: None)
    try:  # a plain torch hook on an HF module counts too
        assert scoring._any_hooks(tiny_llama)
    finally:
        handle.remove()
    assert not scoring._any_hooks(tiny_llama)


def test_packing_off_gives_the_padded_numbers_and_is_restored(monkeypatch):
    from loudfacts import scoring
    from loudfacts.models import tiny_model

    tiny_llama = tiny_model("llama")  # its own: no hook or state left by other tests
    assert not scoring._any_hooks(tiny_llama) and scoring.supports_packing(tiny_llama)
    calls = []
    real = scoring.packed_logits_at
    monkeypatch.setattr(scoring, "packed_logits_at", lambda *a: calls.append(1) or real(*a))
    prompts, targets = _SHARED[:3], ["Paris", "France", "trumpet"]
    with scoring.packing(False):
        off = target_nll(tiny_llama, prompts, targets)
    assert not calls
    on = target_nll(tiny_llama, prompts, targets)
    assert calls
    torch.testing.assert_close(on, off, atol=1e-5, rtol=1e-5)



def test_a_model_broken_for_a_while_packs_again_once_restored(broken_weight):
    """With non-finite logits the packing check has nothing to compare against: it says no
    without remembering it, and the same model object packs once its weights are back."""
    from loudfacts import scoring
    from loudfacts.models import tiny_model

    m = tiny_model("llama")
    with broken_weight(m.hf.model.layers[0].mlp.down_proj.weight):
        assert not scoring.supports_packing(m)
        assert m.bridge not in scoring._PACK_SUPPORT  # not remembered
    assert scoring.supports_packing(m)
    assert scoring._PACK_SUPPORT[m.bridge] is True


def test_a_refused_packing_check_is_not_remembered(monkeypatch):
    """A pack-aware hook that refuses the check's tree (`PackingRefused`) says nothing about the
    architecture: the check says no this time and asks again next time."""
    from loudfacts import scoring
    from loudfacts.models import tiny_model

    m = tiny_model("llama", seed=5)
    real = scoring.packed_logits_at

    def refuse(*a, **k):
        raise scoring.PackingRefused("a hook could not follow this tree")

    monkeypatch.setattr(scoring, "packed_logits_at", refuse)
    assert not scoring.supports_packing(m)
    assert m.bridge not in scoring._PACK_SUPPORT
    monkeypatch.setattr(scoring, "packed_logits_at", real)
    assert scoring.supports_packing(m) and scoring._PACK_SUPPORT[m.bridge] is True


# -- next-token and teacher-forced reads from the same forwards (`prompt_scores`) ----------------
@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("batch_size", [1, 2, 32])
def test_prompt_scores_equal_the_two_separate_passes(tiny_llama, packed, batch_size):
    from loudfacts.scoring import packing, prompt_scores

    next_of = ["The Louvre is located in the city of", "Miles Davis plays the",
               "The Louvre is located in the city of", "Italy borders"]
    prompts = ["The Louvre is located in the city of", "The", "Miles Davis plays the", "The",
               "The Louvre is located in the city of"]
    targets = ["Space Needle", "New York City", "trumpet", "x", "Space Needle"]
    with packing(packed):
        logp, nll = prompt_scores(tiny_llama, next_of, prompts, targets, batch_size=batch_size)
    assert logp.shape == (4, tiny_llama.d_vocab) and nll.shape == (5,)
    torch.testing.assert_close(logp, next_token_logprobs(tiny_llama, next_of), atol=1e-5,
                               rtol=1e-5)
    torch.testing.assert_close(nll, target_nll(tiny_llama, prompts, targets), atol=1e-5,
                               rtol=1e-5)


def test_prompt_scores_run_a_prompt_and_its_continuations_in_one_forward(tiny_llama, monkeypatch):
    from loudfacts import scoring

    calls = []
    real = scoring.logits_at
    monkeypatch.setattr(scoring, "logits_at", lambda m, seqs, *a: calls.append(len(seqs))
                        or real(m, seqs, *a))
    p = "The Louvre is located in the city of"
    scoring.prompt_scores(tiny_llama, [p], [p, p], ["Space Needle", "New York City"])
    assert calls == [3]  # the prompt and its two continuations, one call
    calls.clear()
    with scoring.packing(False):
        scoring.prompt_scores(tiny_llama, [p, "The"], [p], ["Space Needle"], batch_size=1)
    assert calls == [2, 1]  # padded: batch_size counts prompts, each with its continuations
    calls.clear()
    scoring.prompt_scores(tiny_llama, [p, "The"], [p], ["Space Needle"], batch_size=1)
    assert calls == [3]  # packed: up to PACK_CHUNK x batch_size prompts in one call


def test_a_packed_call_is_cut_by_tokens_and_items_a_padded_one_by_batch_size(tiny_llama):
    from loudfacts import scoring

    chunks = lambda sizes, b: [list(r) for r in scoring._chunks(tiny_llama, sizes, b)]  # noqa: E731
    assert scoring.packs_now(tiny_llama)
    cap = scoring.PACK_ROWS * scoring.PACK_TOKENS
    assert chunks([10] * 9, 2) == [list(range(8)), [8]]  # PACK_CHUNK x batch_size items
    assert chunks([cap // 2, cap // 2, 1, cap + 5, 3], 32) == [[0, 1], [2], [3], [4]]
    assert chunks([], 32) == []
    with scoring.packing(False):
        assert not scoring.packs_now(tiny_llama)
        assert chunks([10] * 5, 2) == [[0, 1], [2, 3], [4]]
    for bad in (0, -1, 2.5, True, None):
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            chunks([1], bad)
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            scoring.next_token_logprobs(tiny_llama, ["The"], batch_size=bad)


def test_prompt_scores_name_bad_input(tiny_llama):
    from loudfacts.scoring import prompt_scores

    with pytest.raises(ValueError, match="2 prompts but 1 targets"):
        prompt_scores(tiny_llama, [], ["a", "b"], ["x"])
    with pytest.raises(ValueError, match="prompt '' is empty"):
        prompt_scores(tiny_llama, [""], [], [])
    logp, nll = prompt_scores(tiny_llama, [], [], [])
    assert logp.shape == (0, tiny_llama.d_vocab) and nll.shape == (0,)
