"""Batched target probabilities agree with one-at-a-time forwards."""

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
