"""One edit case: an `EditRequest` plus named probe sets, built from a CounterFact record, a line
of `data/probes/implications.jsonl` or a short hand-written dict, and `score`, the one function
that scores probes (batched, teacher-forced, ROME's exp(-mean token NLL)).

A probe is a full prompt with the object the edit writes (`new`) and, where one exists, the object
it competes with (`true`). Its `role` says what it tests:

* `rewrite`: the edited prompt itself (efficacy);
* `paraphrase`: the edited fact in other words;
* `neighbourhood`: another subject whose true object is the record's (must not move);
* `counterfact+`: a neighbourhood prompt after the edit statement (Specificity+);
* `tangential`: a neighbourhood prompt after "{subject} is cool. " (the seed report's variant);
* `ladder`: an unrelated prompt after one rung of mentions of the subject (`kind` = the rung);
* `unrelated`: a prompt about something else, with no mention;
* `implication`: a fact the edit implies (`new` = the implied new object, `true` = the old
  one), with `kind` (symmetric / transitive / inverse) and `family` (`IMPLICATION_FAMILIES`).

A probe may also carry a `phrasing` label (how an implication or paraphrase is worded, or which
neighbour it asks about), kept in the scores for grouping.

    case = Case.from_dict({"prompt": "{} is located in the city of", "subject": "The Louvre",
                           "target_new": "Rome", "target_true": "Paris",
                           "probes": {"paraphrase": ["The Louvre can be visited in the city of"]}})
    before = score(model, case.probes)
    with editor.edit(case.request).applied():
        after = score(model, case.probes)
    table = score_edits(model, {"rome": edit}, case.probes)   # unedited, then each edit
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from loudfacts.editing.base import EditRequest
from loudfacts.probes import (
    UNRELATED_PROMPTS,
    cool_prefix,
    ladder_prefixes,
    pair_probs,
    statement_prefix,
)
from loudfacts.tokens import fill

ROLES = ("rewrite", "paraphrase", "neighbourhood", "counterfact+", "tangential", "ladder",
         "unrelated", "implication")
# kinds of a CounterFact paraphrase probe: the relation rephrased, or one of CounterFact's
# generation prompts that the flattened layout holds as `rephrase_prompt`
TRUE_PARAPHRASE, GENERATION_STYLE = "true paraphrase", "generation-style"
SCORE_COLUMNS = ["probe", "role", "kind", "family", "phrasing", "prompt", "new", "true",
                 "p_new", "p_true", "new_wins"]
# other wordings of an implication case's rewrite template (`Case.from_implication(...,
# paraphrases=True)`): the subject and the relation in other words
TEMPLATE_PARAPHRASES = {
    "{} is located in the city of": [
        "{} can be found in the city of",
        "Where is {}? It is in the city of",
    ],
    "The opposite of {} is": ["The antonym of {} is", "What is the opposite of {}? It is"],
}


class CaseError(ValueError):
    """A case or probe that cannot be built; the message names the input."""


@dataclass(frozen=True)
class Probe:
    """One prompt to score: P(new | prompt) and, when `true` is set, P(true | prompt)."""

    prompt: str
    role: str
    new: str
    true: str | None = None
    kind: str | None = None
    family: str | None = None
    phrasing: str | None = None

    def __post_init__(self):
        if self.role not in ROLES:
            raise CaseError(f"probe {self.prompt!r}: role={self.role!r} must be one of {ROLES}")
        for name in ("prompt", "new"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise CaseError(f"probe of role {self.role!r}: {name}={value!r} must be a "
                                "non-empty string")
        if self.true is not None and (not isinstance(self.true, str) or not self.true.strip()):
            raise CaseError(f"probe {self.prompt!r}: true={self.true!r} must be a non-empty "
                            "string or None")


@dataclass
class Case:
    """An edit and the probes that judge it."""

    request: EditRequest
    probes: list[Probe] = field(default_factory=list)
    id: str | int | None = None
    source: str = ""

    def of_role(self, role: str) -> list[Probe]:
        if role not in ROLES:
            raise CaseError(f"role={role!r} must be one of {ROLES}")
        return [p for p in self.probes if p.role == role]

    @property
    def roles(self) -> list[str]:
        return list(dict.fromkeys(p.role for p in self.probes))

    # -- constructors ----------------------------------------------------------------------
    @classmethod
    def from_counterfact(cls, record, neighbours: Sequence[tuple[str, str]] | None = None,
                         unrelated: Sequence[str] = UNRELATED_PROMPTS,
                         ladder: bool = True) -> Case:
        """A CounterFact record's case: its rewrite and paraphrase prompts (`kind` says which
        paraphrases are true ones, `CounterFactRecord.true_paraphrase_prompts`); the neighbourhood
        prompts (`neighbours`, as `probes.build_neighbourhoods` gives them, else the record's
        own), each bare, after the edit statement and after "{subject} is cool. "; and, with
        `ladder`, every rung of the loud-fact ladder on the `unrelated` prompts that do not
        already answer with the new object."""
        req = EditRequest(record.prompt, record.subject, record.target_new, record.target_true)
        new, true = req.target_new, req.target_true
        probes = [Probe(req.text, "rewrite", new, true)]
        true_para = set(record.true_paraphrase_prompts)
        probes += [Probe(p, "paraphrase", new, true,
                         kind=TRUE_PARAPHRASE if p in true_para else GENERATION_STYLE)
                   for p in record.paraphrase_prompts]
        if neighbours is None:
            neighbours = list(zip(record.neighborhood_prompts,
                                  record.neighborhood_true
                                  or [true] * len(record.neighborhood_prompts)))
        for role, prefix in (("neighbourhood", ""), ("counterfact+", statement_prefix(req)),
                             ("tangential", cool_prefix(req))):
            probes += [Probe(prefix + p, role, new, t) for p, t in neighbours]
        if ladder:
            probes += ladder_probes(req, unrelated)
        return cls(req, probes, id=record.case_id, source="counterfact")

    @classmethod
    def from_implication(cls, line: Mapping, *, paraphrases: bool = False,
                         neighbours_from: Sequence[Mapping] = (), n_neighbours: int = 3,
                         unrelated: Sequence[str] = ()) -> Case:
        """A case of `data/probes/implications.jsonl`: the rewrite probe and one implication
        probe per implied fact (kind and family from the line; phrasing from each probe).

        Optional probe sets, in this order between the two (notebook 04 asks for all three):
        `paraphrases` adds `TEMPLATE_PARAPHRASES` of the rewrite template; `neighbours_from`
        (other lines of the file) adds, as neighbourhood probes, up to `n_neighbours` other
        subjects under the same template, each with its own true object (skipping lines whose
        true object is this edit's new one); `unrelated` adds the ladder's tangential rung
        ("{subject} is cool. " + each prompt that does not already name the new object)."""
        from loudfacts.implications import implication_family

        try:
            edit = line["edit"]
            req = EditRequest(**{k: edit[k] for k in ("prompt", "subject", "target_new",
                                                      "target_true")})
            implied = list(line["probes"])
            ids = [(o.get("id"), o["edit"]["prompt"], o["edit"]["subject"],
                    o["edit"]["target_true"]) for o in neighbours_from]
        except (KeyError, TypeError) as e:
            raise CaseError(f"implication case {dict(line).get('id')!r} (or a line of "
                            f"neighbours_from) lacks {e}: it needs edit {{prompt, subject, "
                            "target_new, target_true}} and probes") from e
        family = implication_family(line)
        new, true = req.target_new, req.target_true
        probes = [Probe(req.text, "rewrite", new, true, phrasing="rewrite")]
        if paraphrases:
            probes += [Probe(fill(t, req.subject), "paraphrase", new, true, phrasing=t)
                       for t in TEMPLATE_PARAPHRASES.get(req.prompt, [])]
        others = [(s, t) for i, prompt, s, t in ids
                  if prompt == req.prompt and i != line.get("id") and s != req.subject
                  and t != new]
        probes += [Probe(fill(req.prompt, s), "neighbourhood", new, t, phrasing=s)
                   for s, t in others[:n_neighbours]]
        if unrelated:
            prefix = ladder_prefixes(req)["tangential"]
            probes += [Probe(prefix + u, "ladder", new, None, kind="tangential", phrasing=u)
                       for u in unrelated if new.lower() not in u.lower()]
        probes += [Probe(p["prompt"], "implication", p["new"], p["old"], kind=line["kind"],
                         family=family, phrasing=p.get("phrasing", "")) for p in implied]
        return cls(req, probes, id=line.get("id"), source="implications")

    @classmethod
    def from_dict(cls, d: Mapping) -> Case:
        """A hand-written case: {"prompt" (template with {}), "subject", "target_new",
        "target_true", "probes": {role: [prompt, ...]}, "id"}. The rewrite probe is added; a
        probe is a full prompt (a "{}" in it is filled with the subject) scored for the new and
        the true object; a (prompt, true) pair gives another true object (a neighbour's own);
        "ladder" adds the loud-fact ladder on `UNRELATED_PROMPTS` ("ladder": True) or on the
        prompts given."""
        missing = [k for k in ("prompt", "subject", "target_new", "target_true") if k not in d]
        if missing:
            raise CaseError(f"case {d.get('id', d.get('subject'))!r} lacks {missing}")
        req = EditRequest(d["prompt"], d["subject"], d["target_new"], d["target_true"])
        probes = [Probe(req.text, "rewrite", req.target_new, req.target_true)]
        for role, items in dict(d.get("probes", {})).items():
            if role == "rewrite":
                continue
            if role == "ladder":
                probes += ladder_probes(req, UNRELATED_PROMPTS if items is True else items)
                continue
            if isinstance(items, str):
                raise CaseError(f"case {d.get('id', req.subject)!r}: probes[{role!r}] must be "
                                "a list of prompts, not one string")
            for item in items:
                prompt, true = (item, req.target_true) if isinstance(item, str) else item
                probes.append(Probe(fill(prompt, req.subject) if "{}" in prompt else prompt,
                                    role, req.target_new, true))
        return cls(req, probes, id=d.get("id"), source="hand-written")


def ladder_probes(request: EditRequest, unrelated: Iterable[str] = UNRELATED_PROMPTS
                  ) -> list[Probe]:
    """Every rung of the loud-fact ladder (`probes.ladder_prefixes`: none, statement, mention,
    tangential, unrelated) before every unrelated prompt whose answer is not the new object."""
    new = request.target_new
    prompts = [p for p in unrelated if new.lower() not in p.lower()]
    return [Probe(pre + p, "ladder", new, None, kind=rung)
            for rung, pre in ladder_prefixes(request).items() for p in prompts]


def score(model, probes: Sequence[Probe], batch_size: int = 32, next_token_of: Sequence[str] = ()):
    """P(new) and P(true) of every probe on the model as it is now (apply an edit around the
    call to score the edited model).

    Scores with `probes.pair_probs`: a one-token object is read off the prompt's next-token
    distribution (prompts shared by several objects run once), a longer one teacher-forced as
    exp(-mean token NLL), ROME's convention.

    Returns:
        DataFrame with `SCORE_COLUMNS`, one row per probe in order: p_true is NaN and new_wins
        is None where a probe has no true object. `attrs["next_token"]` holds {prompt: (vocab,)
        next-token log-probs} for the prompts of `next_token_of` (from the same forward passes;
        the runner's NKL).
    """
    import numpy as np
    import pandas as pd

    probes = list(probes)
    bad = [p for p in probes if not isinstance(p, Probe)]
    if bad:
        raise CaseError(f"score() takes Probe objects (Case.probes); got {bad[0]!r}")
    pairs = [(p.prompt, p.new) for p in probes]
    with_true = [i for i, p in enumerate(probes) if p.true is not None]
    pairs += [(probes[i].prompt, probes[i].true) for i in with_true]
    next_token_of = list(next_token_of)
    if not pairs and not next_token_of:
        df = pd.DataFrame(columns=SCORE_COLUMNS)
        df.attrs["next_token"] = {}
        return df
    probs, rows = pair_probs(model, pairs, batch_size, extra_prompts=next_token_of)
    probs = probs.numpy()
    p_new = probs[:len(probes)]
    p_true = np.full(len(probes), np.nan)
    p_true[with_true] = probs[len(probes):]
    df = pd.DataFrame({
        "probe": range(len(probes)), "role": [p.role for p in probes], "kind": [p.kind for p in probes],
        "family": [p.family for p in probes], "phrasing": [p.phrasing for p in probes],
        "prompt": [p.prompt for p in probes],
        "new": [p.new for p in probes], "true": [p.true for p in probes],
        "p_new": p_new, "p_true": p_true})
    df["new_wins"] = [None if p.true is None else bool(a > b)
                      for p, a, b in zip(probes, p_new, p_true)]
    df.attrs["next_token"] = {p: rows[p] for p in next_token_of}
    return df


def score_edits(model, edits: Mapping, probes: Sequence[Probe], batch_size: int = 32):
    """`score` on the unedited model (editor "unedited") and under each edit of {label: Edit},
    applied one at a time and undone: one long table with an `editor` column first (`probe` is
    the probe's index, the same under every editor; `paired` puts each edit beside the
    unedited row)."""
    import pandas as pd

    frames = [score(model, probes, batch_size).assign(editor="unedited")]
    for label, edit in edits.items():
        with edit.applied():
            frames.append(score(model, probes, batch_size).assign(editor=label))
    df = pd.concat(frames, ignore_index=True)
    return df[["editor", *SCORE_COLUMNS]]


def paired(table):
    """`score_edits`'s long table as one row per (edit, probe): the probe's columns, then
    p_new_pre / p_true_pre (unedited) and p_new_post / p_true_post (under the edit), so every
    effect is edited minus unedited on the same probe. Extra columns of the table (a `case`
    id, say) are kept and join the pairing."""
    if "editor" not in table or "unedited" not in set(table["editor"]):
        raise CaseError("paired() needs a score_edits table with the unedited rows "
                        "(editor == 'unedited')")
    keys = [c for c in table.columns if c not in ("editor", "p_new", "p_true", "new_wins")]
    pre = table[table.editor == "unedited"][keys + ["p_new", "p_true"]]
    post = table[table.editor != "unedited"]
    key_cols = [c for c in keys if c in ("probe", "case")]
    out = post.merge(pre[key_cols + ["p_new", "p_true"]], on=key_cols, how="left",
                     suffixes=("_post", "_pre"), validate="many_to_one")
    if out["p_new_pre"].isna().any():
        raise CaseError("paired(): some edited probes have no unedited row")
    cols = ["editor", *keys, "p_new_pre", "p_true_pre", "p_new_post", "p_true_post"]
    return out[cols]
