"""Probabilities of targets after prompts: ROME's convention, batched.

The probability of a (possibly multi-token) target after a prompt is exp(-mean token NLL) of the
target's tokens, teacher-forced: P("New York" | prompt) = exp(-(nll(" New") + nll(" York")) / 2).
For single-token targets that is the plain next-token probability.

`target_probs(model, prompts, targets)` scores many (prompt, target) pairs in padded batches
(right padding, an attention mask, one forward per batch), so evaluation is a handful of forward
passes rather than one per pair. Forwards go through `model.hf`; since the TransformerLens
bridge wraps that module in place, hook edits that are applied take effect here too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from loudfacts.tokens import check_context, target_ids


def _batches(n: int, size: int):
    for i in range(0, n, size):
        yield range(i, min(n, i + size))


def target_nll(
    model,
    prompts: Sequence[str],
    targets: Sequence[str],
    batch_size: int = 32,
) -> torch.Tensor:
    """Mean per-token negative log-likelihood (nats) of each target after its prompt.

    Args:
        prompts: full prompt texts (subject filled in), one per pair.
        targets: objects ("Rome"), scored with a leading space (see `tokens.target_ids`).

    Returns:
        Float tensor of shape (n_pairs,).
    """
    return score_targets(model, prompts, targets, batch_size)[0]


@torch.no_grad()
def score_targets(
    model,
    prompts: Sequence[str],
    targets: Sequence[str],
    batch_size: int = 32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batched pass giving, per (prompt, target) pair, the target's mean token NLL and
    whether the greedy next token after the prompt is the target's first token.

    Returns:
        (nll, top1): float tensor and bool tensor, both of shape (n_pairs,).
    """
    if len(prompts) != len(targets):
        raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
    rows = []
    for p, t in zip(prompts, targets):
        p_ids, t_ids = model.encode(p), target_ids(model, t)
        if not p_ids:
            raise ValueError(f"prompt {p!r} is empty")
        check_context(model, len(p_ids) + len(t_ids), p)
        rows.append((p_ids, t_ids))
    out = torch.empty(len(rows))
    top1 = torch.zeros(len(rows), dtype=torch.bool)
    pad = model.tokenizer.pad_token_id or 0
    for idx in _batches(len(rows), batch_size):
        seqs = [rows[i][0] + rows[i][1][:-1] for i in idx]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for j, s in enumerate(seqs):
            ids[j, : len(s)] = torch.tensor(s)
            mask[j, : len(s)] = 1
        logits = model.hf(ids.to(model.device), attention_mask=mask.to(model.device)).logits
        logp = torch.log_softmax(logits.float(), dim=-1)
        for j, i in enumerate(idx):
            p_ids, t_ids = rows[i]
            pos = torch.arange(len(p_ids) - 1, len(p_ids) - 1 + len(t_ids))
            nll = -logp[j, pos, torch.tensor(t_ids)]
            out[i] = nll.mean().cpu()
            top1[i] = bool(logp[j, len(p_ids) - 1].argmax() == t_ids[0])
    return out, top1


def target_probs(model, prompts, targets, batch_size: int = 32) -> torch.Tensor:
    """exp(-mean NLL) of each target after its prompt; shape (n_pairs,)."""
    return torch.exp(-target_nll(model, prompts, targets, batch_size=batch_size))


@torch.no_grad()
def next_token_logprobs(model, prompts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
    """Log-softmax over the vocabulary for the token after each prompt; (n, d_vocab), float32."""
    out = []
    pad = model.tokenizer.pad_token_id or 0
    enc = [model.encode(p) for p in prompts]
    for p, e in zip(prompts, enc):
        if not e:
            raise ValueError(f"prompt {p!r} is empty")
        check_context(model, len(e), p)
    for idx in _batches(len(enc), batch_size):
        seqs = [enc[i] for i in idx]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for j, s in enumerate(seqs):
            ids[j, : len(s)] = torch.tensor(s)
            mask[j, : len(s)] = 1
        logits = model.hf(ids.to(model.device), attention_mask=mask.to(model.device)).logits
        last = torch.tensor([len(s) - 1 for s in seqs], device=logits.device)
        rows = logits[torch.arange(len(seqs), device=logits.device), last]
        out.append(torch.log_softmax(rows.float(), dim=-1).cpu())
    return torch.cat(out) if out else torch.empty(0, model.d_vocab)


def top1_matches(model, prompts, targets, batch_size: int = 32) -> torch.Tensor:
    """Whether the greedy next token after each prompt is the first token of its target."""
    logp = next_token_logprobs(model, prompts, batch_size=batch_size)
    first = torch.tensor([target_ids(model, t)[0] for t in targets])
    return logp.argmax(-1) == first
