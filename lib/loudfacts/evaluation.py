"""Did the edit work, and what else did it change? CounterFact, Specificity+, loud facts,
logical implications.

Every edit is scored against the *unedited* model (never against an earlier edit): the edit is
computed, put in place with `edit.applied()`, probed, and undone. The unedited model's numbers
for a record are computed once and cached (keyed by the weights' digest), so evaluating seven
editors on the same records pays for the baseline once.

Metrics per record (ROME's conventions: the probability of a multi-token target is
exp(-mean token NLL), teacher-forced, via `loudfacts.scoring`):

* `ES`/`EM` efficacy on the rewrite prompt: 1[P(new) > P(true)] and P(new) - P(true).
* `PS`/`PM` the same, averaged over the paraphrase prompts.
* `PS_para` PS over the true paraphrases only (`CounterFactRecord.true_paraphrase_prompts`):
  the flattened layout's `rephrase_prompt` is often one of CounterFact's generation prompts
  ("David Robinson's greatest weakness is"); NaN for a record with none
  (`n_true_paraphrases` = 0).
* `NS`/`NM` neighbourhood: prompts about *other* subjects whose true object is the record's;
  1[P(true) > P(new)] and P(true) - P(new), averaged. Higher is better (nothing leaked).
* `NS+`/`NM+` CounterFact+ (Hoelscher-Obermaier et al. 2023, "Detecting Edit Failures in
  Large Language Models: An Improved Specificity Benchmark"): the same neighbourhood prompts,
  each prefixed by the edit statement, `"{rewrite prompt} {target_new}. " + prompt`.
* `NS+cool` the seed report's variant: prefix `"{subject} is cool. "` (a tangential mention).
* `NKL` KL(P_unedited || P_edited) in nats of the first next token on the CounterFact+ prompts,
  averaged over prompts: the paper's equation. `NKL_code` KL(P_edited || P_unedited) / vocab
  size: what the published code computes (`kl_div(..., reduction="batchmean")` on a 1-D
  vector divides by the vocabulary size); compare *that* with `../shared/data/reference`.
* `GE` ROME's generation entropy (weighted bi/trigram entropy, `loudfacts.fluency`) of greedy
  generations from the record's generation prompts, or "{subject}"-led prompts when the
  layout has none.
* `Score` harmonic mean of ES, PS, NS (per row; `summarize` also gives it over the means).

Records the unedited model does not know (P(true) <= P(new) on the rewrite prompt) are not
edited; they keep a row with `known=False` and empty metrics and are counted (printed, and in
`df.attrs["n_unknown"]`). A known record that an editor cannot edit (an `EditError`, e.g. no
donor subject for patch-donor) keeps a row with the error in `edit_error` and empty metrics,
and is counted (`df.attrs["n_edit_failed"]`, the headline's "failed edits"). `summarize` uses
known rows only; its `n` per metric leaves out failed edits.

The flattened CounterFact layout has a single neighbourhood prompt per record, so
`build_neighbourhoods` adds prompts from other records with the same relation and the same true
object (their own rewrite prompts and neighbourhood prompts); `n_neighbours` says how many each
record got, and `top_up` fills rare ones up from two wider tiers (counted per row).

The study (`study`, notebook 06) keeps its rows as data committed with the code, one file per
model, split and editor (`store_path`: `results/<model>/<split>/<editor>.jsonl`); each row also
names the commit and the machine that made it.

Runner: `evaluate(..., out="results/rome.jsonl")` appends one JSON line per record as soon as it
is done; a rerun skips case ids already in the file, so an interrupted run resumes. Records are
split deterministically into shards by case id (`shard_records`), the neighbourhood pool always
comes from all records, and `merge` joins shard files into the unsharded table.

A results file is trusted only as far as it can prove what made it. Its first line is a header
(`{"loudfacts_results": 1, "runs": {run_key: settings}}`) holding the settings of the run
(`run_settings`: model name and weights fingerprint, editor and its full hparams,
`METRICS_VERSION`, n_neighbours, generation settings, seed; not the batch size, which does not
change results), and every row carries its `run_key` and a `settings_digest`: the sha256 of the
run key, the record's content, the neighbourhood prompts it was scored on and whether it got GE.
A resume reuses a row only when its digest is the one this run would write; otherwise it stops
with an error naming the file and what differs. A file without the header, with a line that is
not a row of ours, or with a case id twice is refused and left untouched; only a torn last line
of an interrupted run of ours (every other line valid) is dropped before appending.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from loudfacts.editing.base import EditError, Editor, EditRequest, get_editor
from loudfacts.jsonlines import append_line, locked
from loudfacts.scoring import next_token_logprobs, target_probs
from loudfacts.tokens import fill, target_ids

METRICS = ["ES", "EM", "PS", "PS_para", "PM", "NS", "NM", "NS+", "NM+", "NS+cool", "NKL",
           "NKL_code", "GE", "Score"]
# Version of the definitions of METRICS (and of what a row holds): part of every row's
# settings digest, so rows computed under older definitions are never reused. Bump it whenever
# a metric's definition or computation changes.
METRICS_VERSION = 2  # 2: PS_para, n_true_paraphrases, generations
BOOK = ["case_id", "subject", "relation", "target_true", "target_new", "editor", "model",
        "known", "p_true_pre", "p_new_pre", "n_paraphrases", "n_true_paraphrases",
        "n_neighbours", "n_neighbours_other_template", "n_neighbours_other_object",
        "n_generation",
        "edit_seconds", "edit_steps", "edit_reused", "eval_seconds", "edit_error",
        "settings_digest", "run_key", "commit", "machine"]
COLUMNS = BOOK + METRICS

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


# -- metrics on numbers ------------------------------------------------------------------------
def success_magnitude(p_a, p_b) -> tuple[float, float]:
    """Mean of 1[p_a > p_b] and of p_a - p_b (NaN for no pairs)."""
    p_a, p_b = torch.as_tensor(p_a, dtype=torch.float64), torch.as_tensor(p_b, dtype=torch.float64)
    if p_a.numel() == 0:
        return math.nan, math.nan
    return float((p_a > p_b).double().mean()), float((p_a - p_b).mean())


def kl_divergences(logp_pre: torch.Tensor, logp_post: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row KLs between next-token distributions.

    Args:
        logp_pre, logp_post: (n, vocab) log-probabilities of the unedited / edited model.

    Returns:
        (paper, code), each (n,): paper = KL(P_pre || P_post) in nats (the Specificity+ paper's
        equation, our `NKL`); code = KL(P_post || P_pre) / vocab (the published code's
        `kl_div(pre, post, batchmean)` on 1-D vectors, our `NKL_code`).
        A KL is never negative; the two log-probabilities come from differently batched float32
        runs, so for (nearly) equal distributions their rounding noise can sum to about -1e-8:
        each row is clamped at 0.
    """
    if logp_pre.shape != logp_post.shape or logp_pre.dim() != 2:
        raise ValueError(f"log-prob shapes differ or are not 2-D: {tuple(logp_pre.shape)} vs "
                         f"{tuple(logp_post.shape)}")
    a, b = logp_pre.double(), logp_post.double()
    paper = (a.exp() * (a - b)).sum(-1)
    code = (b.exp() * (b - a)).sum(-1) / a.shape[-1]
    return paper.clamp_min(0).float(), code.clamp_min(0).float()


def harmonic_mean(values: Sequence[float]) -> float:
    """Harmonic mean; 0 if any value is 0, NaN if any is NaN."""
    vals = [float(v) for v in values]
    if any(math.isnan(v) for v in vals):
        return math.nan
    if any(v <= 0 for v in vals):
        return 0.0
    return len(vals) / sum(1 / v for v in vals)


# -- the unedited model's numbers, computed once ------------------------------------------------
class _UneditedCache:
    """Probabilities and next-token log-probs of the unedited model, keyed by weights digest.

    Valid as long as the model is unedited outside `Edit.applied()` blocks, which is the edit
    contract; the digest makes a permanently changed model miss the cache instead of reusing it.
    """

    def __init__(self, max_logprob_rows: int = 4096):
        self.probs: dict[tuple, float] = {}
        self.logprobs: dict[tuple, torch.Tensor] = {}
        self.max_logprob_rows = max_logprob_rows
        self._digests: dict[int, tuple] = {}

    def digest(self, model) -> str:
        # Hashing 135M parameters takes ~1 s: do it once per model object and evaluate() call.
        return model.weight_digest()

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


UNEDITED = _UneditedCache()


# -- one record --------------------------------------------------------------------------------
@dataclass
class _Probe:
    """All (prompt, target) pairs of one record, in one flat list for one batched call."""

    pairs: list[tuple[str, str]]
    slices: dict[str, slice]
    cfplus_prompts: list[str]


def _probe_set(request: EditRequest, record, neighbours) -> _Probe:
    pairs, slices = [], {}

    def add(name, prompts_targets):
        start = len(pairs)
        pairs.extend(prompts_targets)
        slices[name] = slice(start, len(pairs))

    new, true = request.target_new, request.target_true
    add("rewrite_true", [(request.text, true)])
    add("rewrite_new", [(request.text, new)])
    para = list(record.paraphrase_prompts)
    add("para_true", [(p, true) for p in para])
    add("para_new", [(p, new) for p in para])
    true_para = record.true_paraphrase_prompts
    add("tpara_true", [(p, true) for p in true_para])
    add("tpara_new", [(p, new) for p in true_para])
    for tag, prefix in (("n", ""), ("n+", statement_prefix(request)),
                        ("ncool", cool_prefix(request))):
        add(f"{tag}_true", [(prefix + p, t) for p, t in neighbours])
        add(f"{tag}_new", [(prefix + p, new) for p, _ in neighbours])
    cf = [statement_prefix(request) + p for p, _ in neighbours]
    return _Probe(pairs, slices, cf)


def pair_probs(model, pairs, batch_size: int = 32, extra_prompts=()):
    """P(target | prompt) for many pairs with as few forwards as possible.

    Pairs whose target is one token are read off one next-token distribution per distinct
    prompt (two targets after the same prompt share a forward); multi-token targets go through
    `scoring.target_probs` (exp(-mean NLL), teacher-forced). `extra_prompts` are added to the
    next-token pass so callers get their distributions for free (the CounterFact+ prompts for
    NKL).

    Returns:
        (probs (n_pairs,) float64, {prompt: (vocab,) log-probs} for single-token prompts).
    """
    ids = [target_ids(model, t) for _, t in pairs]
    single = list(dict.fromkeys([p for (p, _), i in zip(pairs, ids) if len(i) == 1]
                                + list(extra_prompts)))
    logp = next_token_logprobs(model, single, batch_size=batch_size) if single else None
    rows = {p: logp[j] for j, p in enumerate(single)}
    out = torch.empty(len(pairs), dtype=torch.float64)
    multi = [k for k, i in enumerate(ids) if len(i) > 1]
    for k, ((p, _), i) in enumerate(zip(pairs, ids)):
        if len(i) == 1:
            out[k] = rows[p][i[0]].double().exp()
    if multi:
        mp = target_probs(model, [pairs[k][0] for k in multi], [pairs[k][1] for k in multi],
                          batch_size=batch_size)
        out[multi] = mp.double()
    return out, rows


def _score_record(model, probe: _Probe, batch_size: int, logp_pre: torch.Tensor) -> dict:
    probs, rows = pair_probs(model, probe.pairs, batch_size, extra_prompts=probe.cfplus_prompts)
    g = {k: probs[s] for k, s in probe.slices.items()}
    row = {}
    row["ES"], row["EM"] = success_magnitude(g["rewrite_new"], g["rewrite_true"])
    row["PS"], row["PM"] = success_magnitude(g["para_new"], g["para_true"])
    row["PS_para"], _ = success_magnitude(g["tpara_new"], g["tpara_true"])
    row["NS"], row["NM"] = success_magnitude(g["n_true"], g["n_new"])
    row["NS+"], row["NM+"] = success_magnitude(g["n+_true"], g["n+_new"])
    row["NS+cool"], _ = success_magnitude(g["ncool_true"], g["ncool_new"])
    if probe.cfplus_prompts:
        logp_post = torch.stack([rows[p] for p in probe.cfplus_prompts])
        paper, code = kl_divergences(logp_pre, logp_post)
        row["NKL"], row["NKL_code"] = float(paper.mean()), float(code.mean())
    else:
        row["NKL"] = row["NKL_code"] = math.nan
    ns = row["NS"] if not math.isnan(row["NS"]) else 1.0  # no neighbours: score ES, PS only
    row["Score"] = harmonic_mean([row["ES"], row["PS"] if not math.isnan(row["PS"]) else row["ES"], ns])
    return row


def greedy_generate(model, prompt: str, max_new_tokens: int = 40) -> str:
    """Greedy continuation of `prompt` (without the prompt): `LoadedModel.generate`, which
    decodes through the bridge's own key/value cache when no hook edit is in place and reruns
    the whole sequence every step when one is (see its docstring for why not HF's cache)."""
    return model.generate(prompt, max_new_tokens=max_new_tokens)


def _generation_entropy(model, prompts, max_new_tokens: int) -> tuple[float, list[str]]:
    """(GE of the greedy continuations of `prompts`, the texts: prompt + continuation)."""
    from loudfacts.fluency import ngram_entropy

    texts = [p + greedy_generate(model, p, max_new_tokens) for p in prompts]
    return ngram_entropy(texts), texts


# -- sharding, resume, merge ------------------------------------------------------------------
def parse_shard(shard) -> tuple[int, int] | None:
    """"i/n" or (i, n) -> (i, n) with 0 <= i < n; None stays None."""
    if shard is None:
        return None
    if isinstance(shard, str):
        try:
            i, n = (int(x) for x in shard.split("/"))
        except ValueError:
            raise ValueError(f"shard {shard!r} must look like 'i/n', e.g. '0/4'") from None
    else:
        i, n = shard
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"shard {shard!r}: need 0 <= i < n")
    return i, n


def _shard_of(case_id, n: int) -> int:
    try:
        return int(case_id) % n
    except (TypeError, ValueError):
        return zlib.crc32(str(case_id).encode()) % n


def shard_records(records, shard) -> list:
    """Records whose case id falls in shard i of n (case_id mod n; crc32 for non-integer ids).

    Depends only on each record's case id, so shards are disjoint, cover every record, and do
    not change when the record list is reordered.
    """
    s = parse_shard(shard)
    if s is None:
        return list(records)
    i, n = s
    return [r for r in records if _shard_of(r.case_id, n) == i]


# -- results files: settings, digests, validation, resume, merge ---------------------------
class ResultsFileError(ValueError):
    """A results file that cannot be read, resumed or merged; the message names the file."""


RESULTS_FORMAT = 1  # version of the header line of a results file
_HEADER = "loudfacts_results"
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]*")


def _canonical(obj) -> str:
    """Canonical JSON: sorted keys, no spaces; non-JSON values (dtypes, paths) as str."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def _sha256(obj) -> str:
    return hashlib.sha256(_canonical(obj).encode()).hexdigest()


def _check_int(name: str, value, minimum: int, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        want = f"an integer >= {minimum}" + (" or None" if allow_none else "")
        raise ValueError(f"{name} must be {want}, got {value!r}")
    return int(value)


def run_settings(model, editor, *, n_neighbours: int = 10, generation: bool = True,
                 n_generation: int = 1, max_new_tokens: int = 30,
                 generation_records: int | None = None, seed: int | None = 0,
                 pool: str = "records", top_up: str = "none") -> dict:
    """Everything besides the record itself that determines an evaluation row.

    Model name and weights fingerprint, editor name and its full hyper-parameters,
    `METRICS_VERSION`, n_neighbours, the generation settings (only those that matter: none
    when generation is off), and the seed. Not the batch size: it changes how prompts are
    grouped into forwards, not the numbers. Returned as canonical JSON data (what the header
    of a results file stores and `run_key` hashes).
    """
    if isinstance(editor, str):
        editor = get_editor(editor, model)
    generation = bool(generation)
    return json.loads(_canonical({
        "model": model.name,
        "weights": model.weights_fingerprint(),
        "editor": editor.name,
        "hparams": editor.hparams,
        "metrics_version": METRICS_VERSION,
        "n_neighbours": int(n_neighbours),
        "generation": generation,
        "n_generation": int(n_generation) if generation else None,
        "max_new_tokens": int(max_new_tokens) if generation else None,
        "generation_records": (int(generation_records)
                               if generation and generation_records is not None else None),
        "seed": seed,
        # where borrowed neighbourhood prompts come from (left out for the evaluated records
        # themselves, so the digests of runs made before this setting existed still hold)
        **({"pool": _check_pool(pool)} if pool != "records" else {}),
        # how neighbourhoods are topped up (`build_neighbourhoods`; left out when not)
        **({"neighbour_top_up": _check_top_up(top_up)} if top_up != "none" else {}),
    }))


NEIGHBOUR_POOLS = ("records", "counterfact")


def _check_pool(pool) -> str:
    if pool not in NEIGHBOUR_POOLS:
        raise ValueError(f"pool={pool!r} must be one of {NEIGHBOUR_POOLS}: the evaluated records "
                         "themselves, or all of CounterFact (loudfacts.data.neighbour_pool)")
    return pool


def _check_top_up(top_up) -> str:
    if top_up not in NEIGHBOUR_TOP_UPS:
        raise ValueError(f"top_up={top_up!r} must be one of {NEIGHBOUR_TOP_UPS} "
                         "(loudfacts.evaluation.build_neighbourhoods)")
    return top_up


def run_key(settings: dict) -> str:
    """sha256 of the canonical JSON of `run_settings(...)`."""
    return _sha256(settings)


def _record_content(rec) -> dict:
    return rec.to_dict() if hasattr(rec, "to_dict") else dict(vars(rec))


def row_digest(key: str, rec, neighbours, with_generation: bool) -> str:
    """A row's `settings_digest`: sha256 of the run key, the record's own content, the
    neighbourhood prompts it is scored on (they depend on the pool of records) and whether it
    gets GE (which depends on its place among `generation_records`)."""
    return _sha256({"run": key, "record": _record_content(rec),
                    "neighbours": [list(pt) for pt in neighbours],
                    "generation": bool(with_generation)})


def _settings_diff(old, new, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += _settings_diff(old.get(k, "<absent>"), new.get(k, "<absent>"),
                                  f"{prefix}{k}.")
        return out
    return [] if old == new else [f"{prefix[:-1]}: file {old!r}, this run {new!r}"]


@dataclass
class _ResultsFile:
    path: Path
    runs: dict  # run_key -> settings
    rows: list
    torn_at: int | None  # byte offset of a torn last line (an interrupted write), or None


def _not_ours(path, why: str) -> ResultsFileError:
    return ResultsFileError(f"{path} is not a results file written by loudfacts.evaluate "
                            f"({why}); it is left as it is: give another file")


def _row_problem(row, runs: dict) -> str | None:
    if not isinstance(row, dict):
        return f"a JSON {type(row).__name__}, not an object"
    missing = [k for k in ("case_id", "editor", "model", "run_key", "settings_digest")
               if k not in row]
    if missing:
        return f"no {', '.join(missing)}"
    if row["run_key"] not in runs:
        return f"run_key {str(row['run_key'])[:12]!r} is not in the header"
    s = runs[row["run_key"]]
    if (row["editor"], row["model"]) != (s.get("editor"), s.get("model")):
        return "its editor or model differs from its run's"
    return None


def _read_results_file(path) -> _ResultsFile:
    """Parse and validate a whole results file without changing it.

    Raises:
        ResultsFileError: no such file, no header line, a line that is not a row of ours, a
            case id twice (all naming the file and the line).
    """
    path = Path(path)
    if not path.is_file():
        raise ResultsFileError(f"{path}: no such results file")
    raw = path.read_bytes()
    torn_at = None
    if raw and not raw.endswith(b"\n"):
        torn_at = raw.rfind(b"\n") + 1
        raw = raw[:torn_at]
    lines = raw.split(b"\n")[:-1]
    if not lines:
        raise _not_ours(path, "it is empty" if path.stat().st_size == 0
                        else "it has no complete header line")
    try:
        header = json.loads(lines[0])
    except (json.JSONDecodeError, UnicodeDecodeError):
        header = None
    if not (isinstance(header, dict) and header.get(_HEADER) == RESULTS_FORMAT
            and isinstance(header.get("runs"), dict)):
        raise _not_ours(path, "line 1 is not its header")
    runs = header["runs"]
    rows, seen = [], {}
    for i, line in enumerate(lines[1:], 2):
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise _not_ours(path, f"line {i} is not JSON: {e}") from None
        problem = _row_problem(row, runs)
        if problem:
            raise _not_ours(path, f"line {i} is not a result row: {problem}")
        k = (row["editor"], _case_key(row["case_id"]))
        if k in seen:
            raise ResultsFileError(
                f"{path}: case id {row['case_id']!r} (editor {row['editor']!r}) appears twice, "
                f"on lines {seen[k]} and {i}; a results file holds one row per record. It is "
                "left as it is: delete it (or the extra line) to go on")
        seen[k] = i
        rows.append(row)
    return _ResultsFile(path, runs, rows, torn_at)


def _case_key(case_id):
    """Sort / identity key of a case id: ints before strings, each in their order."""
    return (0, case_id, "") if isinstance(case_id, int) else (1, 0, str(case_id))


def read_results(path) -> list[dict]:
    """Rows of a results .jsonl file written by `evaluate` (or `merge`), after validating it.

    Never changes the file. A torn last line (a run killed mid-write) is left out here and
    dropped by the next `evaluate` on the file before it appends.

    Raises:
        ResultsFileError: no such file, or not a results file of ours (see `evaluate`).
    """
    f = _read_results_file(path)
    if f.torn_at is not None:
        print(f"{f.path}: its last line is torn (an interrupted write); not read")
    return f.rows


def _write_new(path: Path, runs: dict, rows=()) -> None:
    """Write a results file (header, then rows) to a temporary file and move it into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps({_HEADER: RESULTS_FORMAT, "written_by": "loudfacts.evaluate",
                            "runs": runs}, sort_keys=True) + "\n")
        for row in rows:
            f.write(json.dumps(row, default=float) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


_locked = locked  # the results files' writers and readers share one lock
_append = append_line


def _create_new(path: Path, runs: dict) -> bool:
    """Create a results file holding only its header, unless `path` exists (another process
    may have just created it: never replace it). True when this call created it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
    _write_new(tmp, runs)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink()


def _open_for_resume(out: Path, settings: dict, key: str, digests: dict) -> dict:
    """The rows of `out` by case id, after checking they were made under `settings` and that
    the rows of the records to do have the `digests` this run would write; a new file (its
    header) when `out` does not exist. The file is changed only after every check passed."""
    if _create_new(out, {key: settings}):
        return {}
    with open(out, "r+b") as fh, _locked(fh):  # no other writer appends while we read
        return _resume_checked(out, fh, settings, key, digests)


def _resume_checked(out: Path, fh, settings: dict, key: str, digests: dict) -> dict:
    f = _read_results_file(out)
    if set(f.runs) != {key}:
        diffs = []
        for other in f.runs.values():
            diffs = _settings_diff(other, settings)
            if diffs:
                break
        same_pair = all((s.get("editor"), s.get("model")) ==
                        (settings["editor"], settings["model"]) for s in f.runs.values())
        raise ResultsFileError(
            f"{out} holds results made under other settings than this run's, so its rows "
            f"cannot be reused: {'; '.join(diffs) or 'it holds several runs (a merged file)'}. "
            + ("" if same_pair else "Use one file per editor and model. ")
            + "Give another out file (`results_path` names one per settings), or delete this "
            "one to recompute (for the committed study rows: `make report FRESH=1`).")
    done = {r["case_id"]: r for r in f.rows}
    stale = [c for c, d in digests.items() if c in done and done[c]["settings_digest"] != d]
    if stale:
        raise ResultsFileError(
            f"{out}: the rows of case ids {stale[:10]}{' ...' if len(stale) > 10 else ''} "
            f"({len(stale)} of {len(digests)}) were computed from other record contents or "
            "neighbourhood prompts than this run's (their settings_digest differs: a changed "
            "records file, or another set of records to borrow neighbours from). Give another "
            "out file, or delete this one to recompute.")
    if f.torn_at is not None:  # every other line is a valid row of ours: safe to cut
        fh.truncate(f.torn_at)
        print(f"{out}: dropped a torn last line (an interrupted write)")
    return done


def to_frame(rows: Iterable[dict]):
    import pandas as pd

    df = pd.DataFrame(list(rows))
    for c in COLUMNS:
        if c not in df.columns:
            df[c] = np.nan
    df = df[COLUMNS + [c for c in df.columns if c not in COLUMNS]]
    if len(df):
        df["known"] = df["known"].astype(bool)
    df.attrs["n_unknown"] = int((~df["known"]).sum()) if len(df) else 0
    df.attrs["n_known"] = int(df["known"].sum()) if len(df) else 0
    df.attrs["n_edit_failed"] = int(df["edit_error"].notna().sum()) if len(df) else 0
    return df


def merge_rows(paths) -> tuple[dict, list[dict]]:
    """The rows of several results files (shards), exactly as written, sorted by (editor,
    case_id), and the union of their headers' runs.

    Raises:
        ResultsFileError: a missing or foreign file, a torn last line (resume that shard
            first), a case id in two files, one editor under two settings, or no rows at all.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ResultsFileError("merge: no results files given")
    runs, rows, where, by_editor, empty = {}, [], {}, {}, []
    for p in paths:
        f = _read_results_file(p)
        if f.torn_at is not None:
            raise ResultsFileError(f"{p}: its last line is torn (an interrupted run): rerun "
                                   "that run's command to finish it, then merge")
        if not f.rows:
            empty.append(str(p))
        for r in f.rows:
            k = (r["editor"], _case_key(r["case_id"]))
            if k in where:
                raise ResultsFileError(
                    f"merge: case id {r['case_id']!r} of editor {r['editor']!r} is in both "
                    f"{where[k]} and {p}; shard files are disjoint, so merge each shard once")
            where[k] = p
            first = by_editor.setdefault(r["editor"], (r["run_key"], p))
            if first[0] != r["run_key"]:
                diffs = _settings_diff(runs[first[0]], f.runs[r["run_key"]])
                raise ResultsFileError(
                    f"merge: editor {r['editor']!r} has rows made under different settings in "
                    f"{first[1]} and {p} ({'; '.join(diffs)}); merge one run's shards only")
            runs[r["run_key"]] = f.runs[r["run_key"]]
            rows.append(r)
    if not rows:
        raise ResultsFileError(f"merge: no result rows in {', '.join(map(str, paths))}")
    if empty:
        print(f"merge: {len(empty)} of {len(paths)} files hold no rows: {', '.join(empty)}")
    rows.sort(key=lambda r: (r["editor"], _case_key(r["case_id"])))
    return runs, rows


def write_results(path, runs: dict, rows: list[dict]) -> Path:
    """Write `merge_rows` output as one results file (lossless: floats as Python writes them).

    Refuses to overwrite a file that is not a results file of ours.
    """
    path = Path(path)
    if path.exists():
        _read_results_file(path)  # raises for a foreign file: never overwrite it
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_new(path, runs, rows)
    return path


def merge(parts) -> pd.DataFrame:  # noqa: F821
    """Join shard results (paths to results files and/or DataFrames) into one table sorted by
    (editor, case_id). The files are validated as in `merge_rows`; a case id in two parts is
    an error, never silently dropped."""
    paths = [p for p in parts if isinstance(p, (str, Path))]
    frames = [p for p in parts if not isinstance(p, (str, Path))]
    rows = merge_rows(paths)[1] if paths else []
    for fr in frames:
        rows += fr.to_dict("records")
    if frames:
        seen = set()
        for r in rows:
            k = (r["editor"], _case_key(r["case_id"]))
            if k in seen:
                raise ResultsFileError(f"merge: case id {r['case_id']!r} of editor "
                                       f"{r['editor']!r} is in two of the parts")
            seen.add(k)
        rows.sort(key=lambda r: (r["editor"], _case_key(r["case_id"])))
    return to_frame(rows)


@dataclass
class _Plan:
    """What `evaluate` will do: the records, the shard's records to do, their neighbourhoods,
    the run's settings and key, and the digest each row of the shard will carry."""
    records: list
    todo: list
    neighbourhoods: dict
    tiers: dict
    with_ge: set
    settings: dict
    rkey: str
    digests: dict
    n_generation: int
    max_new_tokens: int


def _plan(model, editor, records, *, n_neighbours, generation, n_generation, max_new_tokens,
          generation_records, pool, top_up, seed, shard) -> _Plan:
    records = list(records)
    ids: set = set()
    for r in records:
        if r.case_id in ids:
            raise ValueError(f"records hold case id {r.case_id!r} more than once; every record "
                             "needs its own case id (rows and shards are keyed by it)")
        ids.add(r.case_id)
    n_neighbours = _check_int("n_neighbours", n_neighbours, 0)
    n_generation = _check_int("n_generation", n_generation, 0)
    max_new_tokens = _check_int("max_new_tokens", max_new_tokens, 1)
    generation_records = _check_int("generation_records", generation_records, 0,
                                    allow_none=True)
    pool_name = "records"
    if pool is None or isinstance(pool, str):
        pool_name = _check_pool("records" if pool is None else pool)
        if pool_name == "counterfact":
            from loudfacts.data import neighbour_pool

            # all of CounterFact first, in its fixed order, then any evaluated record not in
            # it: a record's neighbourhood does not depend on which other records are evaluated
            # (so rows of the first 50 records stay valid when the study grows to 1,000)
            cf = list(neighbour_pool())
            in_cf = {r.case_id for r in cf}
            pool = cf + [r for r in records if r.case_id not in in_cf]
        else:
            pool = records
    pool = list(pool)
    top_up = _check_top_up(top_up)
    tiers: dict = {}
    neighbourhoods = build_neighbourhoods(records, pool, n_neighbours, top_up=top_up,
                                          tiers=tiers)
    todo = shard_records(records, shard)
    with_ge = {r.case_id for r in (records if generation_records is None
                                   else records[:generation_records])}
    settings = run_settings(model, editor, n_neighbours=n_neighbours, generation=generation,
                            n_generation=n_generation, max_new_tokens=max_new_tokens,
                            generation_records=generation_records, seed=seed,
                            pool=pool_name, top_up=top_up)
    rkey = run_key(settings)
    digests = {r.case_id: row_digest(rkey, r, neighbourhoods[r.case_id],
                                     generation and r.case_id in with_ge) for r in todo}
    return _Plan(records, todo, neighbourhoods, tiers, with_ge, settings, rkey, digests,
                 n_generation, max_new_tokens)


# -- the evaluation loop -----------------------------------------------------------------------
def evaluate(
    model,
    editor,
    records,
    *,
    out=None,
    n_neighbours: int = 10,
    batch_size: int = 32,
    generation: bool = True,
    n_generation: int = 1,
    max_new_tokens: int = 30,
    generation_records: int | None = None,
    pool=None,
    top_up: str = "none",
    shard=None,
    seed: int | None = 0,
    progress: bool | str = True,
):
    """Edit each record's fact, score it against the unedited model, undo it.

    Args:
        model: a LoadedModel.
        editor: an `Editor` or an editor name ("rome", "ft", ..., "unedited").
        records: normalised CounterFact records (`loudfacts.data.CounterFactRecord`).
        out: a .jsonl results file: rows are appended as they finish, and a rerun reuses the
            rows already there (resume) when they were made under the same settings (each
            row's `settings_digest` is the one this run would write); the returned table
            holds the file's rows for `records`. See the module docstring for what is refused.
        n_neighbours: neighbourhood prompts per record (own ones first, then borrowed).
        batch_size: forward batch size for scoring.
        generation: compute GE (greedy generations, the slow part); NaN when False.
        n_generation / max_new_tokens: generation prompts per record and their length.
        generation_records: compute GE only for the first this many of `records` (the same
            ones in every shard); None: all. Greedy generation costs several times the rest
            of a record's evaluation on a CPU.
        pool: records to borrow neighbourhood prompts from: a list of records, "records"
            (default: `records` themselves) or "counterfact" (every record of both 10k
            CounterFact splits, `loudfacts.data.neighbour_pool`, as the published runs draw
            from all of CounterFact). A string pool is part of the run's settings.
        top_up: "none" or "object-then-relation": how records with few neighbourhood prompts
            are topped up (`build_neighbourhoods`); part of the run's settings when not "none".
            Rows count the prompts of each extra tier (`n_neighbours_other_template`,
            `n_neighbours_other_object`).
        shard: "i/n" to evaluate only shard i of n (neighbourhoods still come from `pool`).
        seed: each record is evaluated under `torch.manual_seed` of this seed and its case id
            (CPU generator forked, so the caller's random state is untouched), so a resumed
            run gives the rows an uninterrupted one gives; None leaves the generator alone.
        progress: tqdm bar and a printed count of unknown records; a string instead prints
            one line per record starting with it (for worker processes whose output is
            relayed, where a bar would not render).

    Returns:
        DataFrame, one row per record (columns `COLUMNS`), attrs n_known / n_unknown.

    Raises:
        ResultsFileError: `out` is not a results file of ours, was made under other settings
            (the message says which differ), or holds rows for other records or neighbourhoods.
        ValueError: `records` repeat a case id, or a count is not a valid integer.
    """
    from tqdm.auto import tqdm

    if isinstance(editor, str):
        editor = get_editor(editor, model)
    if not isinstance(editor, Editor):
        raise TypeError(f"editor must be an Editor or a name, got {type(editor).__name__}")
    plan = _plan(model, editor, records, n_neighbours=n_neighbours, generation=generation,
                 n_generation=n_generation, max_new_tokens=max_new_tokens,
                 generation_records=generation_records, pool=pool, top_up=top_up, seed=seed,
                 shard=shard)
    batch_size = _check_int("batch_size", batch_size, 1)
    records, todo, neighbourhoods, tiers = plan.records, plan.todo, plan.neighbourhoods, plan.tiers
    settings, rkey, digests, with_ge = plan.settings, plan.rkey, plan.digests, plan.with_ge
    n_generation, max_new_tokens = plan.n_generation, plan.max_new_tokens
    empty = [r.case_id for r in records if not neighbourhoods[r.case_id]]
    if empty and progress:
        print(f"evaluate: {len(empty)} record(s) have no neighbourhood prompt (NS, NS+ and "
              f"NKL are NaN for them): case ids {empty[:10]}{' ...' if len(empty) > 10 else ''}")
    done: dict = {}
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        done = _open_for_resume(out, settings, rkey, digests)
    key = UNEDITED.digest(model)
    rows = []
    lines = progress if isinstance(progress, str) else None
    bar = tqdm(todo, desc=f"evaluate {editor.name}", disable=not progress or lines is not None,
               leave=False)
    for i, rec in enumerate(bar, 1):
        if rec.case_id in done:
            rows.append(done[rec.case_id])
            continue
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(_record_seed(seed, rec.case_id))
            row = _evaluate_record(model, editor, rec, neighbourhoods[rec.case_id], key,
                                   tiers=tiers[rec.case_id],
                                   batch_size=batch_size,
                                   generation=generation and rec.case_id in with_ge,
                                   n_generation=n_generation, max_new_tokens=max_new_tokens)
        row.update(settings_digest=digests[rec.case_id], run_key=rkey, **_provenance(model))
        if out is not None:
            _append(out, row)
        rows.append(row)
        if lines is not None:
            took = ("not known" if not row["known"] else
                    f"edit {row['edit_seconds']:.1f} s, eval {row['eval_seconds']:.1f} s")
            print(f"{lines} {editor.name} {i}/{len(todo)} case {rec.case_id}: {took}",
                  flush=True)
    df = to_frame(rows)
    if progress:
        failed = df.attrs["n_edit_failed"]
        print(f"evaluate({editor.name}): {df.attrs['n_known']} known records evaluated, "
              f"{df.attrs['n_unknown']} excluded as not known (P(true) <= P(new) unedited)"
              + (f"; the editor could not edit {failed} of the known ones (EditError, "
                 "column edit_error)" if failed else ""))
    return df


def _provenance(model) -> dict:
    """Which code and machine made a row: `commit` (`loudfacts.paths.git_commit`) and
    `machine` (the CPU as `loudfacts.models.cpu_info` names it, or the CUDA device). Not part
    of any digest: the numbers do not depend on them beyond float rounding, the seconds do."""
    from loudfacts.models import cpu_info
    from loudfacts.paths import git_commit

    dev = getattr(model, "device", None)
    if dev is not None and torch.device(dev).type == "cuda":
        machine = torch.cuda.get_device_name(torch.device(dev))
    else:
        cpu = cpu_info()
        machine = f"{cpu['name'] or 'unknown CPU'} ({cpu['capability']})"
    return {"commit": git_commit(), "machine": machine}


def _record_seed(seed: int, case_id) -> int:
    return (int(seed) * 1_000_003 + zlib.crc32(str(case_id).encode())) % (2**63)


def _evaluate_record(model, editor, rec, neighbours, key, *, batch_size, generation,
                     n_generation, max_new_tokens, tiers=()) -> dict:
    request = EditRequest.from_record(rec)
    row = {"case_id": rec.case_id, "subject": rec.subject, "relation": rec.relation,
           "target_true": rec.target_true, "target_new": rec.target_new,
           "editor": editor.name, "model": model.name,
           "n_paraphrases": len(rec.paraphrase_prompts),
           "n_true_paraphrases": len(rec.true_paraphrase_prompts),
           "n_neighbours": len(neighbours),
           "n_neighbours_other_template": sum(t == 2 for t in tiers),
           "n_neighbours_other_object": sum(t == 3 for t in tiers)}
    p_true, p_new = UNEDITED.target_probs(model, key, [request.text] * 2,
                                          [rec.target_true, rec.target_new], batch_size)
    row.update(p_true_pre=p_true, p_new_pre=p_new, known=bool(p_true > p_new))
    if not row["known"]:
        return {**row, **{m: None for m in METRICS}, "edit_seconds": None, "eval_seconds": None,
                "n_generation": 0}
    probe = _probe_set(request, rec, neighbours)
    logp_pre = UNEDITED.next_logprobs(model, key, probe.cfplus_prompts, batch_size)
    t0 = time.perf_counter()
    try:
        edit = editor.edit(request)
    except EditError as e:  # this editor cannot write this fact: counted, not scored
        return {**row, **{m: None for m in METRICS}, "edit_seconds": None,
                "eval_seconds": None, "n_generation": 0, "edit_error": str(e)}
    # plus what a read-back part of the edit took when computed (ROME's k*/v* from its cache)
    row["edit_seconds"] = time.perf_counter() - t0 + float(edit.info.get("reused_seconds", 0.0))
    # hook-delta borrows ROME's optimised δ when ROME computed it first (see RomeEditor)
    row["edit_reused"] = bool(edit.info.get("reused", False))
    # optimisation steps the edit ran (ROME's v*, fine-tuning), where the editor has them
    steps = edit.info.get("v_steps", edit.info.get("steps_run"))
    row["edit_steps"] = int(steps) if steps is not None else None
    t0 = time.perf_counter()
    gen_prompts = generation_prompts_for(rec, n_generation) if generation else []
    with edit.applied():
        row.update(_score_record(model, probe, batch_size, logp_pre))
        row["GE"], row["generations"] = (_generation_entropy(model, gen_prompts, max_new_tokens)
                                         if gen_prompts else (None, []))
    row["n_generation"] = len(gen_prompts)
    row["eval_seconds"] = time.perf_counter() - t0
    return row


def evaluate_in_workers(model, editors, *, split: str, n: int, workers: int = 2,
                        n_neighbours: int = 10, generation: bool = True,
                        generation_records: int | None = None, n_generation: int = 1,
                        max_new_tokens: int = 30, batch_size: int = 32, seed: int = 0,
                        root=None, pool: str = "records") -> dict:
    """`evaluate` for several editors on the first `n` records of `split`, in `workers`
    processes (`python -m loudfacts.evaluate --editors ... --shard i/workers`).

    Each worker loads the model once, takes shard i of the records and evaluates every editor
    on it in the given order (so hook-delta reuses ROME's v* inside the worker), with one
    thread: on a 2-core CPU two one-thread processes edit and score more records per minute
    than one two-thread process, whose small batches do not keep both cores busy. Rows are
    appended to one file per editor and shard (`results_path(...)` with `-shard{i}of{n}`), so a
    rerun resumes. Worker output (one line per record) is relayed as it comes.

    Returns:
        {editor name: merged DataFrame of all shards} (rows sorted by case id).

    Raises:
        loudfacts.workers.WorkerError: a worker failed (its exit status and last lines).
    """
    from loudfacts.workers import run_workers

    names = [e if isinstance(e, str) else e.name for e in editors]
    settings = {"split": split_label(split), "n": n, "n_neighbours": n_neighbours,
                "generation": generation, "generation_records": generation_records,
                "max_new_tokens": max_new_tokens, "n_generation": n_generation, "seed": seed,
                "pool": _check_pool(pool)}
    paths = {name: results_path(model, name, root=root, **settings) for name in names}
    out_dir = next(iter(paths.values())).parent
    args = _worker_args(model, names, split=split, n=n, n_neighbours=n_neighbours,
                        generation=generation, generation_records=generation_records,
                        n_generation=n_generation, max_new_tokens=max_new_tokens,
                        batch_size=batch_size, seed=seed, pool=pool, top_up="none")
    args += ["--out-dir", str(out_dir)]
    run_workers("loudfacts.evaluate", args, workers, part_flag="--shard")
    return {name: merge([shard_path(paths[name], i, workers) for i in range(workers)])
            for name in names}


# -- the study's committed rows ---------------------------------------------------------------
def store_path(model, editor, split: str, root=None) -> Path:
    """Where the study keeps one editor's rows: `results/<model>/<split>/<editor>.jsonl`.

    One file per model, split and editor, whatever the number of records: the file's header
    holds the run's settings (hparams, metric version, neighbourhood and generation settings),
    every row its digest, so a bigger study appends to the same file and a changed setting is
    refused (`study`). `root` defaults to `loudfacts.paths.results_dir()` (`results/`, or
    `$LOUDFACTS_RESULTS`).
    """
    from loudfacts.paths import results_dir

    name = editor if isinstance(editor, str) else editor.name
    parts = (_safe_name_part("model name", model.name.replace("/", "_")),
             _safe_name_part("split", split_label(split)))
    root = Path(root).joinpath(*parts) if root else results_dir(*parts)
    return root / f"{_safe_name_part('editor name', name)}.jsonl"


def fresh_requested() -> bool:
    """`LOUDFACTS_FRESH` is set to 1/true/yes (`make report FRESH=1`)."""
    return os.environ.get("LOUDFACTS_FRESH", "").strip().lower() in ("1", "true", "yes")


def study(model, editors, *, split: str, n: int | None, workers: int = 1, root=None,
          fresh: bool | None = None, n_neighbours: int = 10, generation: bool = True,
          generation_records: int | None = None, n_generation: int = 1,
          max_new_tokens: int = 30, batch_size: int = 32, seed: int = 0,
          pool: str = "counterfact", top_up: str = "none", progress: bool = True,
          compute: bool = True) -> dict:
    """Every editor on the first `n` records of `split`, reusing the committed rows.

    Each editor's rows live in `store_path(...)` (`results/<model>/<split>/<editor>.jsonl`,
    committed to git). Rows already there for these records, made under these settings, are
    reused; only the missing ones are computed and appended as each finishes (in `workers`
    one-thread processes that append to the same file under a lock, or in this process), so an
    interrupted run loses nothing and a fresh clone recomputes nothing it has rows for.

    A file made under other settings (another hparams digest, metric version, neighbourhood
    or generation setting), or holding a row of one of these records made from other
    contents, is never mixed in: the run stops with a `ResultsFileError` naming the file and
    what differs. `fresh=True` (default: `fresh_requested()`, i.e. `make report FRESH=1`)
    deletes these editors' files first and recomputes every row.

    `compute=False` only reads: a record with no row under these settings raises a
    `ResultsFileError` naming the files and the runner command that would compute them
    (a notebook that reads another notebook's rows must not silently start hours of edits).

    Returns:
        {editor: DataFrame of the rows of these records, in their order}; each frame's attrs
        also hold `path`, `reused` and `computed` (row counts).
    """
    from loudfacts.data import load_counterfact

    fresh = fresh_requested() if fresh is None else bool(fresh)
    if fresh and not compute:
        raise ValueError("study(fresh=True, compute=False): a fresh run deletes the rows it "
                         "would then need to compute; pass fresh=False to read the stored rows")
    records = load_counterfact(split, n=n, verbose=False)
    names = [e if isinstance(e, str) else e.name for e in editors]
    opts = dict(n_neighbours=n_neighbours, generation=generation, n_generation=n_generation,
                max_new_tokens=max_new_tokens, generation_records=generation_records,
                pool=pool, top_up=top_up, seed=seed)
    paths, have = {}, {}
    for name in names:
        path = store_path(model, name, split, root)
        if fresh and path.exists():
            path.unlink()
            print(f"study: fresh run: deleted {path}")
        plan = _plan(model, get_editor(name, model), records, shard=None, **opts)
        if not compute and not path.exists():  # reading only: create nothing
            have[name] = set()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            have[name] = set(_open_for_resume(path, plan.settings, plan.rkey, plan.digests))
        paths[name] = path
    missing = {name: sum(r.case_id not in have[name] for r in records) for name in names}
    if progress:
        print(f"study: {len(records)} records of {split}; rows to compute per editor: "
              + ", ".join(f"{k} {v}" for k, v in missing.items()))
    if any(missing.values()) and not compute:
        todo = [name for name in names if missing[name]]
        args = _worker_args(model, todo, split=split, n=n, batch_size=batch_size, **opts)
        raise ResultsFileError(
            f"study(compute=False): {len(records)} records of {split} asked for, but rows are "
            "missing under these settings: " + ", ".join(
                f"{name} {missing[name]} ({paths[name]})" for name in todo)
            + ". Compute them first: python -m loudfacts.evaluate " + " ".join(args)
            + " --store " + str(Path(root) if root else paths[todo[0]].parents[2]))
    if any(missing.values()):
        todo = [name for name in names if missing[name]]
        if workers > 1:
            from loudfacts.workers import run_workers

            args = _worker_args(model, todo, split=split, n=n, batch_size=batch_size,
                                **{k: v for k, v in opts.items()})
            args += ["--store", str(Path(root) if root else paths[todo[0]].parents[2])]
            run_workers("loudfacts.evaluate", args, workers, part_flag="--shard")
        else:
            for name in todo:
                evaluate(model, name, records, out=paths[name], batch_size=batch_size,
                         progress=progress, **opts)
    out = {}
    order = {r.case_id: i for i, r in enumerate(records)}
    for name in names:
        rows = [r for r in read_results(paths[name]) if r["case_id"] in order]
        rows.sort(key=lambda r: order[r["case_id"]])
        if len(rows) != len(records):
            raise ResultsFileError(f"{paths[name]}: {len(records) - len(rows)} of the "
                                   f"{len(records)} records have no row after the run")
        df = to_frame(rows)
        df.attrs.update(path=str(paths[name]), computed=missing[name],
                        reused=len(records) - missing[name])
        out[name] = df
    return out


def read_study(model, editors, *, split: str, n: int, **settings):
    """The stored rows of `editors` on the first `n` records of `split`, as one DataFrame.

    `study(..., fresh=False, compute=False)`: rows are read, never computed, and a missing or
    stale row stops with the runner command that would make it. `settings` are the study's
    own (n_neighbours, generation_records, top_up, pool, seed, ...): they are part of every
    row's settings, so they must be the ones the rows were made with (notebook 06's).
    """
    import pandas as pd

    stored = study(model, editors, split=split, n=n, fresh=False, compute=False,
                   progress=False, **settings)
    return pd.concat(stored.values(), ignore_index=True)


STUDY_EFFECT_METRICS = ("ES", "PS", "PS_para", "NS", "NS+", "NS+cool", "NKL")


def study_effects(model, editors, *, split: str, n: int, metrics=STUDY_EFFECT_METRICS,
                  n_resamples: int = 1000, seed: int = 0, **settings):
    """Each editor minus the unedited model on the study's stored rows (`read_study`): the
    paired effect on every metric over the known records both scored, with a 95% bootstrap
    interval (`claims.paired_effects_table`). For notebooks whose own cases are a handful of
    illustrations: the same editors on the study's hundreds of records, read, not recomputed.
    `seed` is also the rows' seed (part of their settings)."""
    from loudfacts import claims as cl

    names = ["unedited"] + [e for e in editors if e != "unedited"]
    rows = read_study(model, names, split=split, n=n, seed=seed, **settings)
    table = cl.paired_effects_table(rows, metrics=metrics, n_resamples=n_resamples, seed=seed)
    table.attrs["n_records"] = n
    table.attrs["n_known"] = int(rows.loc[rows["editor"] == "unedited", "known"].sum())
    return table


def study_effects_sentence(table, split: str, metrics=("ES", "PS", "NS", "NS+")) -> str:
    """One sentence of a notebook's findings from a `study_effects` table."""
    parts = "; ".join(f"{e}: " + ", ".join(f"{m} {table.loc[e, 'Δ' + m]}" for m in metrics)
                      for e in table.index)
    return (f" On the study's {int(table['n'].max())} known records of {split} (notebook 06's "
            f"rows; first {table.attrs['n_records']}), edited minus unedited with 95% "
            f"intervals: {parts}.")


def _worker_args(model, names, *, split, n, n_neighbours, generation, generation_records,
                 n_generation, max_new_tokens, batch_size, seed, pool, top_up) -> list[str]:
    """`python -m loudfacts.evaluate` arguments for these settings (workers add --shard)."""
    args = ["--editors", ",".join(names), "--model", model.name, "--split", str(split),
            "--n", "all" if n is None else str(n), "--n-neighbours", str(n_neighbours),
            "--batch-size", str(batch_size), "--max-new-tokens", str(max_new_tokens),
            "--n-generation", str(n_generation), "--seed", str(seed), "--threads", "1",
            "--pool", pool, "--top-up", top_up]
    if not generation:
        args.append("--no-generation")
    if generation_records is not None:
        args += ["--generation-records", str(generation_records)]
    return args


def shard_path(path, i: int, n: int) -> Path:
    """The file of shard i of n of a results file: `name-shard{i}of{n}.jsonl`."""
    path = Path(path)
    return path.with_name(f"{path.stem}-shard{i}of{n}{path.suffix}")


# -- summaries with bootstrap CIs --------------------------------------------------------------
def bootstrap_ci(values, statistic=np.mean, n_resamples: int = 1000, seed: int = 0,
                 confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI (scipy.stats.bootstrap) of `statistic` over `values`; NaNs
    dropped; (nan, nan) for fewer than 2 values, (v, v) for constant values."""
    from scipy.stats import bootstrap

    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if len(x) < 2:
        return math.nan, math.nan
    if np.all(x == x[0]):
        return float(x[0]), float(x[0])
    res = bootstrap((x,), statistic, n_resamples=n_resamples, confidence_level=confidence,
                    method="percentile", random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def summarize(df, metrics=None, n_resamples: int = 1000, seed: int = 0):
    """Mean and bootstrap 95% CI per editor and metric, on known records only.

    Returns:
        DataFrame with columns editor, metric, mean, ci_low, ci_high, n. `Score` here is the
        harmonic mean of the *means* of ES, PS, NS (ROME's aggregate), bootstrapped jointly.
    """
    import pandas as pd

    metrics = [m for m in (metrics or METRICS) if m in df.columns]
    known = df[df["known"].astype(bool)]
    rows = []
    for editor, g in known.groupby("editor", sort=False):
        for m in metrics:
            if m == "Score":
                es, ps, ns = (g[c].astype(float).fillna(g["ES"].astype(float)).to_numpy()
                              for c in ("ES", "PS", "NS"))
                mean = harmonic_mean([es.mean(), ps.mean(), ns.mean()]) if len(g) else math.nan
                lo, hi = _score_ci(es, ps, ns, n_resamples, seed)
                n = len(g)
            else:
                x = g[m].astype(float).to_numpy()
                x = x[~np.isnan(x)]
                mean = float(x.mean()) if len(x) else math.nan
                lo, hi = bootstrap_ci(x, n_resamples=n_resamples, seed=seed)
                n = len(x)
            rows.append({"editor": editor, "metric": m, "mean": mean, "ci_low": lo,
                         "ci_high": hi, "n": n})
    return pd.DataFrame(rows, columns=["editor", "metric", "mean", "ci_low", "ci_high", "n"])


def _score_ci(es, ps, ns, n_resamples, seed):
    from scipy.stats import bootstrap

    if len(es) < 2:
        return math.nan, math.nan

    def stat(a, b, c, axis=-1):
        means = np.stack([a.mean(axis=axis), b.mean(axis=axis), c.mean(axis=axis)])
        with np.errstate(divide="ignore"):
            h = 3 / (1 / means).sum(axis=0)
        return np.where((means <= 0).any(axis=0), 0.0, h)

    if np.allclose([es.std(), ps.std(), ns.std()], 0):
        point = float(stat(es, ps, ns))
        return point, point
    res = bootstrap((es, ps, ns), stat, paired=True, vectorized=True, n_resamples=n_resamples,
                    method="percentile", random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def wide_table(summary):
    """`summarize` output as one row per editor: 'mean [low, high]' strings per metric."""
    import pandas as pd

    cells = {}
    for _, r in summary.iterrows():
        txt = f"{r['mean']:.3g}"
        if not math.isnan(r["ci_low"]):
            txt += f" [{r['ci_low']:.3g}, {r['ci_high']:.3g}]"
        cells.setdefault(r["editor"], {})[r["metric"]] = txt
    return pd.DataFrame(cells).T


def _published_algorithm(name: str, model: str) -> str:
    """The published CSVs' algorithm labels as the paper names them: its "FT" rows are the
    norm-constrained FT-L, and the row named after the model is the unedited model."""
    if name == "FT":
        return "FT-L (CSV: FT)"
    if name == model:
        return "unedited"
    return name


def compare_with_reference(summary, reference_models=("gpt2-xl", "gpt-j-6B")):
    """Our NS/NS+/NM/NM+/NKL_code means next to the published Specificity+ means.

    Returns a DataFrame: source (model), algorithm, and columns NS, NS+, NM, NM+, NKL_code.
    The published KL is the code's quantity (KL(post || pre) / vocab), so it sits next to our
    `NKL_code`, not `NKL`.
    """
    import pandas as pd

    from loudfacts.data import load_reference

    names = {("N", "S"): "NS", ("N+", "S"): "NS+", ("N", "M"): "NM", ("N+", "M"): "NM+",
             ("N", "KL"): "NKL_code (N)", ("N+", "KL"): "NKL_code"}
    rows = []
    for ref in reference_models:
        try:
            tab = load_reference(ref)
        except FileNotFoundError as e:
            print(f"reference {ref}: {e}")
            continue
        for alg, g in tab.groupby("algorithm", sort=False):
            row = {"source": ref, "algorithm": _published_algorithm(alg, ref)}
            for _, r in g.iterrows():
                row[names[(r["prompt_type"], r["metric"])]] = r["value"]
            rows.append(row)
    ours = summary.pivot(index="editor", columns="metric", values="mean")
    for editor, r in ours.iterrows():
        rows.append({"source": "ours", "algorithm": editor,
                     **{c: r.get(c, math.nan) for c in ("NS", "NS+", "NM", "NM+", "NKL_code")}})
    return pd.DataFrame(rows)


# -- loud-fact ladder --------------------------------------------------------------------------
def _ladder_texts(request: EditRequest, unrelated_prompts: Sequence[str]):
    """(step, prefix, prefix + prompt, prompt) for every rung and unrelated prompt whose answer
    is not target_new (that would not be a leak)."""
    new = request.target_new
    prompts = [p for p in unrelated_prompts if new.lower() not in p.lower()]
    return [(step, pre, pre + p, p) for step, pre in ladder_prefixes(request).items()
            for p in prompts]


def _ladder_pass(model, full: Sequence[str], new: str, batch_size: int):
    """(P(new | text), whether new's first token is the greedy next token) for every text, from
    one next-token pass (`pair_probs`; a multi-token target adds its teacher-forced pass)."""
    first = target_ids(model, new)[0]
    probs, rows = pair_probs(model, [(t, new) for t in full], batch_size, extra_prompts=full)
    top = (torch.stack([rows[t] for t in full]).argmax(-1) == first) if full else \
        torch.zeros(0, dtype=torch.bool)
    return probs, top


def loud_fact_ladder(model, edit, request: EditRequest | None = None,
                     unrelated_prompts: Sequence[str] = UNRELATED_PROMPTS,
                     batch_size: int = 32, pre=None):
    """Does mentioning the edited subject make the new object leak into unrelated prompts?

    Each rung prepends a prefix to every unrelated prompt: none, the edit statement itself
    ("The Louvre is located in the city of Rome. "), a bare mention ("The Louvre. "), a
    tangential sentence ("The Louvre is cool. "), an unrelated sentence (no subject).

    `pre`: the unedited model's (probabilities, top-1 flags) on the same texts, as
    `ladder_for_editors` computes once per record and shares between editors; None computes it.

    Returns:
        DataFrame, one row per rung and prompt: step, prefix, prompt, p_new_pre, p_new_post,
        top1_pre, top1_post (whether target_new's first token is the greedy next token).
        Unrelated prompts whose answer is target_new are dropped (that would not be a leak).
    """
    import pandas as pd

    request = request or edit.request
    new = request.target_new
    texts = _ladder_texts(request, unrelated_prompts)
    full = [t[2] for t in texts]
    p_pre, top_pre = pre if pre is not None else _ladder_pass(model, full, new, batch_size)
    if len(p_pre) != len(full):
        raise ValueError(f"pre holds {len(p_pre)} values for {len(full)} ladder texts of "
                         f"case {request.subject!r} -> {new!r}")
    with edit.applied():
        p_post, top_post = _ladder_pass(model, full, new, batch_size)
    return pd.DataFrame([
        {"step": s, "prefix": pre_, "prompt": p, "p_new_pre": float(a), "p_new_post": float(b),
         "top1_pre": bool(c), "top1_post": bool(d)}
        for (s, pre_, _, p), a, b, c, d in zip(texts, p_pre, p_post, top_pre, top_post)
    ])


LADDER_VERSION = 1  # what a stored ladder row means: the rungs of `_ladder_texts`, `_ladder_pass`


def ladder_settings(model, editor, unrelated_prompts=UNRELATED_PROMPTS) -> dict:
    """Everything besides the record that determines a record's ladder rows: the model and its
    weights, the editor and its full hyper-parameters, `LADDER_VERSION` and the unrelated
    prompts (canonical JSON data, as the header of a stored ladder file holds it)."""
    if isinstance(editor, str):
        editor = get_editor(editor, model)
    return json.loads(_canonical({
        "model": model.name, "weights": model.weights_fingerprint(), "editor": editor.name,
        "hparams": editor.hparams, "ladder_version": LADDER_VERSION,
        "unrelated_prompts": list(unrelated_prompts)}))


def ladder_row_digest(key: str, rec) -> str:
    """A stored ladder row's `settings_digest`: sha256 of its run key and the record's content."""
    return _sha256({"run": key, "record": _record_content(rec)})


def ladder_store_path(model, editor, split: str, root=None) -> Path:
    """Where the ladder rows of one editor live: `results/<model>/<split>/ladder/<editor>.jsonl`
    (beside the study's rows, `store_path`)."""
    path = store_path(model, editor, split, root)
    return path.parent / "ladder" / path.name


def ladder_for_editors(model, editors, records, unrelated_prompts=UNRELATED_PROMPTS,
                       progress: bool = True, *, split: str | None = None, root=None,
                       fresh: bool | None = None):
    """`loud_fact_ladder` for every editor (name or Editor) and record; one long DataFrame
    with an `editor` and `case_id` column. The unedited model's pass is made once per record
    and shared by every editor. Editors that fail on a record are skipped, counted.

    With `split`, each editor's rows are kept as data in `ladder_store_path(...)` (under
    `root`, default `results/`): one line per record holding its rungs, in the study's file
    format (a header with `ladder_settings`, a digest per row), so rows already there are
    reused, the missing ones appended as each record finishes, and a file made under other
    settings stops the run with a `ResultsFileError` naming it. `fresh` (default:
    `fresh_requested()`, `make report FRESH=1`) deletes these editors' files first.
    """
    import time

    import pandas as pd
    from tqdm.auto import tqdm

    fresh = fresh_requested() if fresh is None else bool(fresh)
    frames, failed, pre, reused = [], 0, {}, 0
    for ed in editors:
        ed = get_editor(ed, model) if isinstance(ed, str) else ed
        done, path = {}, None
        if split is not None:
            settings = ladder_settings(model, ed, unrelated_prompts)
            key = run_key(settings)
            digests = {r.case_id: ladder_row_digest(key, r) for r in records}
            path = ladder_store_path(model, ed.name, split, root)
            if fresh and path.exists():
                path.unlink()
                print(f"ladder: fresh run: deleted {path}")
            path.parent.mkdir(parents=True, exist_ok=True)
            done = _open_for_resume(path, settings, key, digests)
        for rec in tqdm(records, desc=f"ladder {ed.name}", disable=not progress, leave=False):
            row = done.get(rec.case_id)
            if row is None:
                t0 = time.perf_counter()
                row = {"case_id": rec.case_id, "editor": ed.name, "model": model.name}
                req = EditRequest.from_record(rec)
                k = (req.subject, req.target_new, req.statement)
                if k not in pre:  # before any edit is made: the unedited model's pass
                    full = [t[2] for t in _ladder_texts(req, unrelated_prompts)]
                    pre[k] = _ladder_pass(model, full, req.target_new, 32)
                try:
                    edit = ed.edit(req)
                except ValueError as e:
                    print(f"ladder: {ed.name} could not edit case {rec.case_id}: {e}")
                    row["edit_error"] = str(e)
                else:
                    f = loud_fact_ladder(model, edit, req, unrelated_prompts, pre=pre[k])
                    row["rungs"] = f.to_dict("records")
                row["seconds"] = time.perf_counter() - t0
                if path is not None:
                    _append(path, {**row, "run_key": key,
                                   "settings_digest": digests[rec.case_id]})
            else:
                reused += 1
            if row.get("edit_error") is not None:
                failed += 1
                continue
            f = pd.DataFrame(row["rungs"])
            f.insert(0, "case_id", rec.case_id)
            f.insert(0, "editor", ed.name)
            frames.append(f)
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    df.attrs["n_failed"] = failed
    df.attrs["reused"] = reused
    return df


def ladder_summary(ladder):
    """Per editor and step: mean P(target_new) before/after and fraction top-1 after."""
    return (ladder.groupby(["editor", "step"], sort=False)
            .agg(p_new_pre=("p_new_pre", "mean"), p_new_post=("p_new_post", "mean"),
                 top1_pre=("top1_pre", "mean"), top1_post=("top1_post", "mean"),
                 n=("prompt", "size"))
            .reset_index())


# -- logical implications ----------------------------------------------------------------------
IMPLICATION_KINDS = ("symmetric", "transitive", "inverse")


def implications_path() -> Path:
    from loudfacts.paths import repo_path

    return repo_path("data", "probes", "implications.jsonl")


def load_implications(path=None, known_only: bool = True, kinds=None) -> list[dict]:
    """Cases of `data/probes/implications.jsonl`.

    Each line: {"id", "kind" (symmetric|transitive|inverse), "edit": {"prompt" (template with
    {}), "subject", "target_true", "target_new"}, "probes": [{"prompt" (full text), "old",
    "new", "phrasing"}], "checks": [{"prompt", "true", "false"}] (facts the unedited model must
    know for the case to make sense), "known": bool (set by `verify_implications`)}.

    Args:
        known_only: keep only cases marked known (every check passed on the embedded model).
    """
    path = Path(path) if path else implications_path()
    cases = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
    for c in cases:
        if c.get("kind") not in IMPLICATION_KINDS:
            raise ValueError(f"{path}: case {c.get('id')!r} has kind {c.get('kind')!r}, "
                             f"expected one of {IMPLICATION_KINDS}")
        EditRequest(**c["edit"])  # validates the template
    if known_only:
        cases = [c for c in cases if c.get("known", True)]
    if kinds:
        cases = [c for c in cases if c["kind"] in kinds]
    return cases


IMPLICATION_FAMILIES = ("symmetric", "transitive, subject-side", "transitive, object-side",
                        "inverse")


def implication_family(case: dict) -> str:
    """The family of an implication case (a line of `data/probes/implications.jsonl`).

    Transitive cases split by which side of the edited fact the implied fact hangs on:
    subject-side (the Louvre is in Rome => the Louvre is in Italy; ids `transitive-landmark-*`)
    and object-side (Paris is in Russia => the Louvre is in Russia). The two behave
    differently, so cases are chosen and reported per family (`IMPLICATION_FAMILIES`).
    """
    kind, case_id = case.get("kind"), case.get("id")
    if kind not in IMPLICATION_KINDS:
        raise ValueError(f"implication case {case_id!r}: kind={kind!r} must be one of "
                         f"{IMPLICATION_KINDS}")
    if kind != "transitive":
        return kind
    return ("transitive, subject-side" if str(case_id).startswith("transitive-landmark-")
            else "transitive, object-side")


def implication_checks(case: dict) -> list[tuple[str, str, str]]:
    """Every fact a case relies on, as (prompt, true, false): the edited fact (true beats new),
    each probe's old implied object (old beats new), and the case's extra checks."""
    e = case["edit"]
    out = [(fill(e["prompt"], e["subject"]), e["target_true"], e["target_new"])]
    out += [(p["prompt"], p["old"], p["new"]) for p in case["probes"]]
    out += [(c["prompt"], c["true"], c["false"]) for c in case.get("checks", [])]
    return out


def verify_implications(model, cases, batch_size: int = 32):
    """Check every fact of every case on the unedited model: P(true) > P(false).

    Returns:
        DataFrame, one row per check: id, kind, prompt, true, false, p_true, p_false, known.
    """
    import pandas as pd

    rows = [(c["id"], c["kind"], *chk) for c in cases for chk in implication_checks(c)]
    if not rows:
        return pd.DataFrame(columns=["id", "kind", "prompt", "true", "false", "p_true",
                                     "p_false", "known"])
    pt = target_probs(model, [r[2] for r in rows], [r[3] for r in rows], batch_size)
    pf = target_probs(model, [r[2] for r in rows], [r[4] for r in rows], batch_size)
    df = pd.DataFrame(rows, columns=["id", "kind", "prompt", "true", "false"])
    df["p_true"], df["p_false"] = pt.numpy(), pf.numpy()
    df["known"] = df["p_true"] > df["p_false"]
    return df


def score_implications(model, editor, cases, *, generations: int = 0, max_new_tokens: int = 15,
                       batch_size: int = 32, progress: bool = True):
    """Edit each case, then compare P(new implied) with P(old implied) before and after.

    Returns:
        DataFrame, one row per probe: editor, id, kind, phrasing, prompt, old, new, p_old_pre,
        p_new_pre, p_old_post, p_new_post, implied (p_new_post > p_old_post), shift (change of
        p_new - p_old), efficacy (the edit itself succeeded on its rewrite prompt). The first
        `generations` cases also get `generation_pre/post` (greedy continuations of the first
        probe) as illustration.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    if isinstance(editor, str):
        editor = get_editor(editor, model)
    key = UNEDITED.digest(model)
    rows, failed = [], []
    for k, case in enumerate(tqdm(cases, desc=f"implications {editor.name}",
                                  disable=not progress, leave=False)):
        req = EditRequest(**{f: case["edit"][f] for f in ("prompt", "subject", "target_new",
                                                          "target_true")})
        probes = case["probes"]
        prompts = [req.text, req.text] + [p["prompt"] for p in probes] * 2
        targets = [req.target_new, req.target_true] + [p["old"] for p in probes] + \
                  [p["new"] for p in probes]
        pre = UNEDITED.target_probs(model, key, prompts, targets, batch_size)
        t0 = time.perf_counter()
        try:
            edit = editor.edit(req)
        except ValueError as e:
            print(f"implications: {editor.name} could not edit {case['id']}: {e}")
            failed.append(case["id"])
            continue
        seconds = time.perf_counter() - t0
        gen = {}
        with edit.applied():
            post = target_probs(model, prompts, targets, batch_size).tolist()
            if k < generations:
                gen["generation_post"] = greedy_generate(model, probes[0]["prompt"],
                                                         max_new_tokens)
        if k < generations:
            gen["generation_pre"] = greedy_generate(model, probes[0]["prompt"], max_new_tokens)
        n = len(probes)
        for j, p in enumerate(probes):
            po, pn = pre[2 + j], pre[2 + n + j]
            qo, qn = post[2 + j], post[2 + n + j]
            rows.append({"editor": editor.name, "id": case["id"], "kind": case["kind"],
                         "phrasing": p.get("phrasing", ""), "prompt": p["prompt"],
                         "old": p["old"], "new": p["new"], "p_old_pre": po, "p_new_pre": pn,
                         "p_old_post": qo, "p_new_post": qn, "implied_pre": pn > po,
                         "implied": qn > qo, "shift": (qn - qo) - (pn - po),
                         "efficacy": post[0] > post[1], "edit_seconds": seconds,
                         **(gen if j == 0 else {})})
    df = pd.DataFrame(rows)
    df.attrs["failed"] = failed  # cases the editor refused (EditError), not scored
    if failed and progress:
        print(f"implications {editor.name}: {len(failed)} of {len(cases)} cases could not be "
              "edited and are not scored")
    return df


def implication_summary(df):
    """Per editor and kind: edit efficacy, fraction of probes where the new implied object
    beats the old one before and after the edit, and the mean shift of P(new) - P(old)."""
    return (df.groupby(["editor", "kind"], sort=False)
            .agg(cases=("id", "nunique"), probes=("prompt", "size"),
                 efficacy=("efficacy", "mean"), implied_pre=("implied_pre", "mean"),
                 implied_post=("implied", "mean"), mean_shift=("shift", "mean"))
            .reset_index())


# Editors evaluated in the tables but left out of the report's headline, with the reason.
HEADLINE_EXCLUDED = {
    "patch-context": ("it writes no fact: the stated fact never reaches the subject's state "
                      "that it borrows (notebook 04's context sweep)"),
}


def headline_table(summary, results, implications=None, ladder_sum=None,
                   exclude: dict | None = None):
    """One row per editor for the report's headline: ES, PS, PS on true paraphrases (with its
    n), NS, NS+, NS+cool and NKL as
    'mean [95% CI]', the implication follow-through (share of implied probes where the new
    implied object wins after the edit, over all kinds, from `implication_summary`, with its
    denominator), the loud-fact top-1 rate (share of unrelated prompts after "{subject} is
    cool." whose greedy answer becomes the new object, from `ladder_summary`), the number of
    known records and the mean seconds per edit.

    Args:
        summary: `summarize(results)`.
        results: the per-record table (for edit seconds and counts).
        implications: `implication_summary(...)` output, or None.
        exclude: {editor: reason} left out of the table (default `HEADLINE_EXCLUDED`); the
            editors dropped and their reasons are in `table.attrs["excluded"]`.
    """
    import pandas as pd

    cols = ["ES", "PS", "PS_para", "NS", "NS+", "NS+cool", "NKL"]
    cols = [c for c in cols if c != "PS_para" or c in set(summary["metric"])]
    wide = wide_table(summary[summary["metric"].isin(cols)])
    table = wide.reindex(columns=cols)
    if "PS_para" in cols:  # few records have one: its n beside it
        n_para = summary[summary["metric"] == "PS_para"].set_index("editor")["n"]
        table = table.rename(columns={"PS_para": "PS (true paraphrases)"})
        table["PS (true paraphrases)"] = pd.Series({
            e: f"{v} (n={int(n_para.get(e, 0))})" for e, v in
            table["PS (true paraphrases)"].items()})
    known = results[results["known"].astype(bool)]
    table["known records"] = known.groupby("editor")["case_id"].nunique()
    if "edit_error" in known and known["edit_error"].notna().any():
        table["failed edits"] = known.groupby("editor")["edit_error"].count()  # non-null
    secs = known.groupby("editor")["edit_seconds"].mean()
    reused = (known.groupby("editor")["edit_reused"].mean() if "edit_reused" in known
              else secs * 0)
    table["s / edit"] = pd.Series({
        e: f"{secs[e]:.1f}" + (" (reuses rome's v*)" if reused.get(e, 0) > 0.5 else "")
        for e in secs.index})
    if implications is not None and len(implications):
        weighted = implications.assign(hits=implications["implied_post"] * implications["probes"])
        per_editor = weighted.groupby("editor")[["hits", "probes"]].sum()
        table["implied (05, all kinds)"] = pd.Series({
            e: f"{r['hits'] / r['probes']:.2f} ({round(r['hits'])}/{int(r['probes'])} probes)"
            for e, r in per_editor.iterrows()})
    if ladder_sum is not None and len(ladder_sum):
        tang = ladder_sum[ladder_sum["step"] == "tangential"].set_index("editor")
        table["loud top-1 (tangential)"] = pd.Series({
            e: f"{r['top1_post']:.2f} (of {int(r['n'])} prompts)" for e, r in tang.iterrows()})
    exclude = HEADLINE_EXCLUDED if exclude is None else exclude
    dropped = {e: exclude[e] for e in table.index if e in exclude}
    table = table.reindex([e for e in editor_order(table.index) if e not in dropped])
    table.index.name = "editor"
    table = pd.DataFrame(table)
    table.attrs["excluded"] = dropped
    return table


def split_label(split) -> str:
    """A file-name-safe label for a records split: the split name, or for a JSON file given by
    path its stem and the digest of its content."""
    from loudfacts.data import COUNTERFACT_SPLITS, file_digest

    split = str(split)
    if split in COUNTERFACT_SPLITS:
        return split
    path = Path(split)
    if path.is_file():
        stem = re.sub(r"[^A-Za-z0-9._+-]", "_", path.stem).lstrip(".") or "records"
        return f"{stem}-{file_digest(path)[:8]}"
    return split


def _safe_name_part(what: str, value: str) -> str:
    value = str(value)
    if not _NAME_RE.fullmatch(value) or ".." in value:
        raise ValueError(f"{what} {value!r} cannot be part of a results file name: use letters, "
                         "digits and ._+- only (no path separators, no '..'); for a records "
                         "file given by path use split_label(path)")
    return value


def results_path(model, editor, *, split: str, n: int | None, n_neighbours: int,
                 generation: bool, generation_records: int | None = None,
                 max_new_tokens: int = 30, n_generation: int = 1, seed: int | None = 0,
                 root=None, pool: str = "records", top_up: str = "none") -> Path:
    """Cache file for `evaluate(out=...)`: one name per model, editor and its hyper-parameters,
    records and settings, so a rerun with the same settings resumes/reuses and any change
    starts a new file. The name reads `{editor}-{split}-n{n}-k{k}-{ge}-{digest}.jsonl`, where the
    digest covers `run_settings(...)` (weights fingerprint, full hparams, metric version,
    generation settings, seed) together with split and n.

    Raises:
        ValueError: `split` (or the editor's name) holds a path separator or '..', or `n` is
            not a positive integer or None.
    """
    from loudfacts.paths import cache_dir

    if isinstance(editor, str):
        editor = get_editor(editor, model)
    split = _safe_name_part("split", split)
    name = _safe_name_part("editor name", editor.name)
    n = _check_int("n", n, 1, allow_none=True)
    settings = run_settings(model, editor, n_neighbours=n_neighbours, generation=generation,
                            n_generation=n_generation, max_new_tokens=max_new_tokens,
                            generation_records=generation_records, seed=seed, pool=pool,
                            top_up=top_up)
    digest = _sha256({"run": run_key(settings), "split": split, "n": n})[:12]
    ge = "noge" if not generation else (
        ("ge" if generation_records is None else f"ge{int(generation_records)}")
        + f"t{int(max_new_tokens)}")
    stem = f"{name}-{split}-n{'all' if n is None else n}-k{int(n_neighbours)}-{ge}-{digest}"
    root = Path(root) if root else cache_dir("evaluation", model.name.replace("/", "_"))
    return root / f"{stem}.jsonl"


# -- figures -----------------------------------------------------------------------------------
def editor_order(editors) -> list[str]:
    """`editors` in the report's order (`loudfacts.plotting.EDITOR_ORDER`), others after,
    sorted."""
    from loudfacts.plotting import EDITOR_ORDER

    return [e for e in EDITOR_ORDER if e in set(editors)] + \
        sorted(set(editors) - set(EDITOR_ORDER))



def editor_palette(editors) -> dict:
    """The report's one colour per editor (`loudfacts.plotting.editor_palette`)."""
    from loudfacts.plotting import editor_palette as palette

    return palette(editors)


def plot_ns_vs_nsplus(summary, metrics=("NS", "NS+", "NS+cool")):
    """Bar chart: neighbourhood success without / with the prefixes, per editor, with the
    bootstrap 95% CIs of `summarize` as error bars."""
    import matplotlib.pyplot as plt

    s = summary[summary["metric"].isin(metrics)]
    editors = editor_order(s["editor"].unique())
    fig, ax = plt.subplots(figsize=(1.3 * len(editors) + 2, 3.8))
    width = 0.8 / len(metrics)
    import seaborn as sns

    colors = sns.color_palette(n_colors=len(metrics))
    for j, m in enumerate(metrics):
        g = s[s["metric"] == m].set_index("editor").reindex(editors)
        x = np.arange(len(editors)) + (j - (len(metrics) - 1) / 2) * width
        err = np.stack([g["mean"] - g["ci_low"], g["ci_high"] - g["mean"]]).clip(min=0)
        ax.bar(x, g["mean"], width, yerr=np.nan_to_num(err), capsize=3, label=m,
               color=colors[j])
    ax.set_xticks(np.arange(len(editors)), editors, rotation=20)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("neighbourhood success")
    ax.legend(title="prompts", ncol=len(metrics), loc="upper center", fontsize=8,
              bbox_to_anchor=(0.5, -0.22), frameon=False)
    ax.set_title("NS (CounterFact) vs NS+ (CounterFact+: edit statement prefixed)")
    return fig


def plot_ladder(ladder_sum):
    """Line plot: mean P(target_new) on unrelated prompts for each rung of the loud-fact
    ladder, one line per editor (left), and the fraction where it becomes top-1 (right)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    steps = ["none", "statement", "mention", "tangential", "unrelated"]
    d = ladder_sum.copy()
    d["step"] = pd_categorical(d["step"], steps)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    order = editor_order(d["editor"].unique())
    pal = editor_palette(order)
    sns.pointplot(data=d, x="step", y="p_new_post", hue="editor", hue_order=order, ax=axes[0],
                  order=steps, palette=pal)
    axes[0].set_ylabel("P(target_new) after the edit")
    axes[0].set_yscale("log")
    sns.pointplot(data=d, x="step", y="top1_post", hue="editor", hue_order=order, ax=axes[1],
                  order=steps, legend=False, palette=pal)
    axes[1].set_ylabel("fraction target_new is top-1")
    axes[1].set_ylim(-0.03, 1.03)
    for ax in axes:
        ax.set_xlabel("prefix before the unrelated prompt")
        ax.tick_params(axis="x", rotation=20)
    # outside the axes, so it covers no data
    axes[0].legend(fontsize=7, ncol=len(order), loc="upper center", frameon=False,
                   bbox_to_anchor=(1.1, -0.3))
    fig.suptitle("Loud-fact ladder: leak of the new object into unrelated prompts", y=1.03)
    return fig


def pd_categorical(values, categories):
    import pandas as pd

    return pd.Categorical(values, categories=categories, ordered=True)


def plot_nkl(df, column: str = "NKL"):
    """Strip + box plot of per-record NKL (nats, log scale) per editor (known records)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    d = df[df["known"].astype(bool)].copy()
    d[column] = d[column].astype(float).clip(lower=1e-9)
    order = editor_order(d["editor"].unique())
    fig, ax = plt.subplots(figsize=(1.3 * len(order) + 2, 3.6))
    sns.boxplot(data=d, x="editor", y=column, order=order, ax=ax, color="0.9", fliersize=0)
    sns.stripplot(data=d, x="editor", y=column, order=order, ax=ax, size=3, hue="editor",
                  palette=editor_palette(order), legend=False)
    ax.set_yscale("log")
    ax.set_ylabel(f"{column}: KL(P_unedited || P_edited), nats" if column == "NKL" else column)
    ax.tick_params(axis="x", rotation=20)
    ax.set_title("Change of the next-token distribution on CounterFact+ prompts")
    return fig


def plot_implications(summary):
    """Fraction of probes where the new implied object beats the old one, before (grey) and
    after each editor's edit, per kind of implication."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    kinds = [k for k in IMPLICATION_KINDS if k in set(summary["kind"])]
    order = editor_order(summary["editor"].unique())
    fig, axes = plt.subplots(1, len(kinds), figsize=(4 * len(kinds), 3.6), sharey=True,
                             squeeze=False)
    for ax, k in zip(axes[0], kinds):
        g = summary[summary["kind"] == k]
        sns.barplot(data=g, x="editor", y="implied_post", order=order, ax=ax, hue="editor",
                    palette=editor_palette(order), legend=False)
        ax.axhline(g["implied_pre"].mean(), color="0.4", ls="--", lw=1, label="before edit")
        ax.scatter(range(len(order)), g.set_index("editor").reindex(order)["efficacy"],
                   marker="x", color="k", zorder=3, label="edit efficacy")
        ax.set_title(k)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("")
        ax.tick_params(axis="x", rotation=35)
    axes[0][0].set_ylabel("P(new implied) > P(old implied)")
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.suptitle("Does the edit carry over to facts it implies?", y=1.04)
    return fig
