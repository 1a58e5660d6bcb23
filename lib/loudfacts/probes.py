"""The prompts a CounterFact record is probed with (neighbourhoods, the CounterFact+ and
tangential prefixes, generation prompts), and `pair_probs`, the batched probability pass under
`cases.score`.

The unedited model's numbers for a prompt are computed once and cached (`UNEDITED`, keyed by
the weights' digest), so evaluating seven editors on the same records pays for the baseline
once.

The flattened CounterFact layout has a single neighbourhood prompt per record, so
`build_neighbourhoods` adds prompts from other records with the same relation and the same true
object (their own rewrite prompts and neighbourhood prompts); `n_neighbours` says how many each
record got, and `top_up` fills rare ones up from two wider tiers (counted per row).
"""

from __future__ import annotations


import torch

from loudfacts.digests import weight_digest
from loudfacts.editing.base import EditRequest
from loudfacts.scoring import next_token_logprobs, prompt_scores, target_probs
from loudfacts.tokens import fill, target_ids

UNRELATED_PROMPTS = [
    "Barack Obama is from",
    "The capital of Japan is",
    "Michael Jordan plays the sport of",
    "The Eiffel Tower is located in the city of",
    "Apple was founded by",
    "The official language of Brazil is",
]
UNRELATED_SENTENCE = "The weather was pleasant yesterday. "


# -- prompts -----------------------------------------------------------------------------------
def statement_prefix(request: EditRequest) -> str:
    """CounterFact+ prefix as published: `"{rewrite prompt} {target_new}. "`."""
    return request.statement + " "


def cool_prefix(request: EditRequest) -> str:
    """The seed report's tangential prefix: `"{subject} is cool. "`."""
    return f"{request.subject.strip()} is cool. "


def ladder_prefixes(request: EditRequest) -> dict[str, str]:
    """The loud-fact ladder, from loudest to quietest mention of the edited subject."""
    s = request.subject.strip()
    return {
        "none": "",
        "statement": statement_prefix(request),
        "mention": f"{s}. ",
        "tangential": f"{s} is cool. ",
        "unrelated": UNRELATED_SENTENCE,
    }


def generation_prompts_for(record, n: int) -> list[str]:
    """The record's generation prompts, or "{subject}"-led ones when the layout has none."""
    prompts = list(getattr(record, "generation_prompts", []) or [])
    if not prompts:
        s = record.subject.strip()
        prompts = [f"{s} is", f"{s} was known for", f"The story of {s}"]
    return prompts[:n]


NEIGHBOUR_TOP_UPS = ("none", "object-then-relation")


def build_neighbourhoods(records, pool=None, n_neighbours: int = 10, top_up: str = "none",
                         tiers: dict | None = None) -> dict:
    """Neighbourhood prompts per record: its own, then more from records sharing its relation
    (prompt template) and true object (their rewrite prompts, and their neighbourhood prompts
    with that object).

    CounterFact's neighbourhood prompts are prompts about other subjects of the same relation
    whose true object is the record's. The flattened layout keeps one per record, and some
    (relation, true object) pairs are rare, so a record can end up with 1 or 3 prompts even
    when borrowing from all of CounterFact. `top_up="object-then-relation"` tops such records up
    to `n_neighbours` in two further tiers:

    2. prompts whose true object is the record's under another template (the NS question is
       unchanged: the right answer is still the record's true object, which the edit must not
       displace; the relation may be another one that has that object);
    3. prompts of the same template about subjects with another true object, each scored
       against its own true object (never one whose true object is the record's new one): the
       edit must not make them say the new object.

    Args:
        records: the records to evaluate.
        pool: records to draw extra prompts from (default `records`); give the full record set
            when evaluating a shard so every shard sees the same neighbourhoods.
        n_neighbours: at most this many prompts per record.
        top_up: "none" (tier 1 only: the default, CounterFact's definition) or
            "object-then-relation" (tiers 2 and 3 after it).
        tiers: if a dict is given, it receives {case_id: [tier of each chosen prompt]}.

    Returns:
        {case_id: [(prompt, true_object), ...]} (no prompt mentions the record's subject).
    """
    if top_up not in NEIGHBOUR_TOP_UPS:
        raise ValueError(f"top_up={top_up!r} must be one of {NEIGHBOUR_TOP_UPS}")
    pool = list(records if pool is None else pool)
    by_key: dict[tuple, list] = {}
    by_obj: dict[str, list] = {}
    by_rel: dict[str, list] = {}
    for r in pool:
        by_key.setdefault((r.relation, r.target_true), []).append(r)
        if top_up != "none":
            by_obj.setdefault(r.target_true, []).append(r)
            by_rel.setdefault(r.relation, []).append(r)

    def prompts_of(other, obj):
        """`other`'s rewrite prompt (true object `obj`) and its neighbourhood prompts whose
        true object is `obj`."""
        return [(fill(other.prompt, other.subject), obj)] + [
            (p, t) for p, t in zip(other.neighborhood_prompts, other.neighborhood_true)
            if t == obj]

    out = {}
    for rec in records:
        subj = rec.subject.strip()
        cands = [(p, t, 1) for p, t in zip(
            rec.neighborhood_prompts,
            rec.neighborhood_true or [rec.target_true] * len(rec.neighborhood_prompts))]
        for other in by_key.get((rec.relation, rec.target_true), []):
            if other is not rec and other.subject.strip() != subj:
                cands += [(p, t, 1) for p, t in prompts_of(other, rec.target_true)]
        if top_up != "none":
            for other in by_obj.get(rec.target_true, []):
                if (other is not rec and other.relation != rec.relation
                        and other.subject.strip() != subj):
                    cands += [(p, t, 2) for p, t in prompts_of(other, rec.target_true)]
            for other in by_rel.get(rec.relation, []):
                if (other is not rec and other.subject.strip() != subj
                        and other.target_true not in (rec.target_true, rec.target_new)):
                    cands += [(p, t, 3) for p, t in prompts_of(other, other.target_true)]
        seen, chosen, tier = set(), [], []
        for p, t, k in cands:
            if len(chosen) >= n_neighbours:
                break
            if p in seen or subj in p:
                continue
            seen.add(p)
            chosen.append((p, t))
            tier.append(k)
        out[rec.case_id] = chosen
        if tiers is not None:
            tiers[rec.case_id] = tier
    return out


# -- the unedited model's numbers, computed once ------------------------------------------------
class UneditedCache:
    """Probabilities and next-token log-probs of the unedited model, keyed by weights digest.

    Valid as long as the model is unedited outside `Edit.applied()` blocks, which is the edit
    contract; the digest makes a permanently changed model miss the cache instead of reusing it.
    """

    def __init__(self, max_logprob_rows: int = 4096):
        self.probs: dict[tuple, float] = {}
        self.logprobs: dict[tuple, torch.Tensor] = {}
        self.max_logprob_rows = max_logprob_rows

    def digest(self, model) -> str:
        # hashed once while the weights are untouched (`digests.weight_digest`)
        return weight_digest(model)

    def target_probs(self, model, key, prompts, targets, batch_size) -> list[float]:
        missing = [(p, t) for p, t in zip(prompts, targets) if (key, p, t) not in self.probs]
        missing = list(dict.fromkeys(missing))
        if missing:
            ps = target_probs(model, [m[0] for m in missing], [m[1] for m in missing], batch_size)
            for (p, t), v in zip(missing, ps.tolist()):
                self.probs[(key, p, t)] = v
        return [self.probs[(key, p, t)] for p, t in zip(prompts, targets)]

    def next_logprobs(self, model, key, prompts, batch_size) -> torch.Tensor:
        missing = list(dict.fromkeys(p for p in prompts if (key, p) not in self.logprobs))
        if missing:
            if len(self.logprobs) + len(missing) > self.max_logprob_rows:
                self.logprobs.clear()  # a full vocab row is ~200 kB; keep memory bounded
            lp = next_token_logprobs(model, missing, batch_size=batch_size)
            for p, row in zip(missing, lp):
                self.logprobs[(key, p)] = row.clone()
        if not prompts:
            return torch.empty(0, model.d_vocab)
        return torch.stack([self.logprobs[(key, p)] for p in prompts])


UNEDITED = UneditedCache()


# -- scoring ---------------------------------------------------------------------------------
def pair_probs(model, pairs, batch_size: int = 32, extra_prompts=()):
    """P(target | prompt) for many pairs with as few forwards as possible.

    Pairs whose target is one token are read off one next-token distribution per distinct
    prompt (two targets after the same prompt share a forward); multi-token targets are
    teacher-forced (exp(-mean NLL), as `scoring.target_probs`) in the same forwards as their
    prompt (`scoring.prompt_scores`). `extra_prompts` are added to the next-token pass so
    callers get their distributions for free (the CounterFact+ prompts for NKL).

    Returns:
        (probs (n_pairs,) float64, {prompt: (vocab,) log-probs} for single-token prompts).
    """
    ids = [target_ids(model, t) for _, t in pairs]
    single = list(dict.fromkeys([p for (p, _), i in zip(pairs, ids) if len(i) == 1]
                                + list(extra_prompts)))
    multi = [k for k, i in enumerate(ids) if len(i) > 1]
    # one pass: a multi-token target's continuation shares its prompt's forward
    logp, nll = prompt_scores(model, single, [pairs[k][0] for k in multi],
                              [pairs[k][1] for k in multi], batch_size=batch_size)
    rows = {p: logp[j] for j, p in enumerate(single)}
    out = torch.empty(len(pairs), dtype=torch.float64)
    for k, ((p, _), i) in enumerate(zip(pairs, ids)):
        if len(i) == 1:
            out[k] = rows[p][i[0]].double().exp()
    if multi:
        out[multi] = torch.exp(-nll).double()
    return out, rows


def greedy_generate(model, prompt: str, max_new_tokens: int = 40) -> str:
    """Greedy continuation of `prompt` (without the prompt): `LoadedModel.generate`, which
    decodes through the bridge's own key/value cache when no hook edit is in place and reruns
    the whole sequence every step when one is (see its docstring for why not HF's cache)."""
    return model.generate(prompt, max_new_tokens=max_new_tokens)


def generation_entropy(model, prompts, max_new_tokens: int) -> tuple[float, list[str]]:
    """(GE of the greedy continuations of `prompts`, the texts: prompt + continuation)."""
    from loudfacts.fluency import ngram_entropy

    texts = [p + greedy_generate(model, p, max_new_tokens) for p in prompts]
    return ngram_entropy(texts), texts
