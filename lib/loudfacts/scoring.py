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


def logits_at(model, seqs: Sequence[Sequence[int]], rows, positions) -> torch.Tensor:
    """Logits at chosen (row, position) pairs of a right-padded batch of `seqs`.

    One forward of the HF base model (the TransformerLens bridge wraps its modules in place,
    so applied hook edits take effect), then the unembedding of just the requested positions:
    for a small model the (batch, pos, d_vocab) unembedding of every position costs about as
    much as the transformer itself.

    Returns:
        Float tensor (len(rows), d_vocab).
    """
    pad = model.tokenizer.pad_token_id or 0
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for j, s in enumerate(seqs):
        ids[j, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[j, : len(s)] = 1
    ids, mask = ids.to(model.device), mask.to(model.device)
    rows = torch.as_tensor(rows, dtype=torch.long, device=model.device)
    positions = torch.as_tensor(positions, dtype=torch.long, device=model.device)
    if _output_hooks_attached(model):
        # a hook on the unembedding sees (batch, pos, ...) tensors: give it every position
        return model.hf(ids, attention_mask=mask).logits[rows, positions]
    hidden = model.hf.base_model(ids, attention_mask=mask).last_hidden_state
    return model.hf.get_output_embeddings()(hidden[rows, positions])


def _output_hooks_attached(model) -> bool:
    """Whether a hook sits on the unembedding (TransformerLens `unembed.*`)."""
    unembed = getattr(model.bridge, "unembed", None)
    if unembed is None:
        return False
    return any(m._forward_hooks or m._forward_pre_hooks for m in unembed.modules())


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
    for idx in _batches(len(rows), batch_size):
        seqs = [rows[i][0] + rows[i][1][:-1] for i in idx]
        # positions that predict each target token, and the token they should predict
        r_of, pos, tok, first = [], [], [], []
        for j, i in enumerate(idx):
            p_ids, t_ids = rows[i]
            first.append(len(pos))
            for k, t in enumerate(t_ids):
                r_of.append(j)
                pos.append(len(p_ids) - 1 + k)
                tok.append(t)
        logp = torch.log_softmax(logits_at(model, seqs, r_of, pos).float(), dim=-1).cpu()
        tok_nll = -logp[torch.arange(len(tok)), torch.tensor(tok)]
        for j, i in enumerate(idx):
            n_t = len(rows[i][1])
            a = first[j]
            out[i] = tok_nll[a:a + n_t].mean()
            top1[i] = bool(logp[a].argmax() == rows[i][1][0])
    return out, top1


def target_probs(model, prompts, targets, batch_size: int = 32) -> torch.Tensor:
    """exp(-mean NLL) of each target after its prompt; shape (n_pairs,)."""
    return torch.exp(-target_nll(model, prompts, targets, batch_size=batch_size))


@torch.no_grad()
def next_token_logprobs(model, prompts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
    """Log-softmax over the vocabulary for the token after each prompt; (n, d_vocab), float32."""
    out = []
    enc = [model.encode(p) for p in prompts]
    for p, e in zip(prompts, enc):
        if not e:
            raise ValueError(f"prompt {p!r} is empty")
        check_context(model, len(e), p)
    for idx in _batches(len(enc), batch_size):
        seqs = [enc[i] for i in idx]
        logits = logits_at(model, seqs, range(len(seqs)), [len(q) - 1 for q in seqs])
        out.append(torch.log_softmax(logits.float(), dim=-1).cpu())
    return torch.cat(out) if out else torch.empty(0, model.d_vocab)


def top1_matches(model, prompts, targets, batch_size: int = 32) -> torch.Tensor:
    """Whether the greedy next token after each prompt is the first token of its target."""
    logp = next_token_logprobs(model, prompts, batch_size=batch_size)
    first = torch.tensor([target_ids(model, t)[0] for t in targets])
    return logp.argmax(-1) == first
