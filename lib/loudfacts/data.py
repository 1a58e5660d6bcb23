"""Data: CounterFact (both layouts), known facts, text corpora, reference numbers.

Where files are looked for, in order: `$LOUDFACTS_DATA`, the repo's `data/`, and the project's
read-only `../shared/data` (beside the repo). When a file is in none of them and
`LOUDFACTS_ONLINE=1` (Colab), canonical files are downloaded once into `data/cache/downloads`.
Otherwise a `DataNotFoundError` names every place searched.

CounterFact comes in two layouts, both normalised to `CounterFactRecord`:

* ROME's full layout (`counterfact.json`): `requested_rewrite` with a `{}` prompt template,
  `target_true`/`target_new` dicts, 2 paraphrases, ~10 neighbourhood prompts, attribute and
  generation prompts, and a `relation_id`.
* The flattened KnowEdit/MEND layout in `../shared/data/counterfact`: one filled `prompt`,
  `ground_truth`, `target_new`, one `rephrase_prompt` and one `locality_prompt` with its
  `locality_ground_truth`. It has no relation id; the relation is recovered as the prompt
  template (the prompt with the subject replaced by `{}`).

Malformed records (subject not in the prompt, empty targets, a new target equal to the true
one) are dropped, and the count is printed, never silently. A field of the wrong type (an
integer subject, a target without its `str`, a prompt list holding a number) means the file is
not CounterFact: it raises a `ValueError` naming the record's case id and the field. A records
file that is not JSON, holds no usable record, or repeats a case id raises `RecordsFileError`
naming the file (and the line and column of a JSON error).
"""

from __future__ import annotations

import bz2
import functools
import json
import os
import re
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from loudfacts.digests import digest_file
from loudfacts.atomic import atomic_path
from loudfacts.paths import REPO_ROOT, cache_dir

SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# Files by short name: relative path in the shared data layout, and a canonical URL if any.
COUNTERFACT_SPLITS = {
    "edit-1k": "counterfact/counterfact-edit-1k.json",
    "edit": "counterfact/counterfact-edit.json",
    "train": "counterfact/counterfact-train.json",
    "full": "counterfact/counterfact.json",
}
CANONICAL_URLS = {
    "counterfact/counterfact.json": "https://rome.baulab.info/data/dsets/counterfact.json",
    "known/known_1000.json": "https://rome.baulab.info/data/dsets/known_1000.json",
}
TEXTS = {
    "wikitext": "text/wikitext-2-raw_wiki.test.raw",
    "wiki-xml": "text/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
    "lee": "text/lee_background.cor",
}


class DataNotFoundError(FileNotFoundError):
    """A data file is in none of the places searched."""


class RecordsFileError(ValueError):
    """A records file that cannot be used (not JSON, no usable record, ...); names the file."""


def data_roots() -> list[Path]:
    roots = []
    if os.environ.get("LOUDFACTS_DATA"):
        roots.append(Path(os.environ["LOUDFACTS_DATA"]))
    roots += [REPO_ROOT / "data", SHARED_DATA]
    return roots


def data_path(rel: str) -> Path:
    """Find `rel` (e.g. "counterfact/counterfact-edit-1k.json") in the data roots.

    Raises:
        DataNotFoundError: naming every place searched (and how to get the file online).
    """
    searched = []
    for root in data_roots():
        p = root / rel
        searched.append(str(p))
        if p.exists():
            return p
    if rel in CANONICAL_URLS and os.environ.get("LOUDFACTS_ONLINE", "0") not in ("0", ""):
        return _download(rel)
    hint = (
        f" Online (LOUDFACTS_ONLINE=1) it is fetched from {CANONICAL_URLS[rel]}."
        if rel in CANONICAL_URLS
        else ""
    )
    raise DataNotFoundError(f"data file {rel!r} not found; searched: {', '.join(searched)}.{hint}")


def _download(rel: str) -> Path:
    target = cache_dir("downloads") / rel
    if target.exists():
        return target
    with atomic_path(target, suffix=".part") as tmp:
        urllib.request.urlretrieve(CANONICAL_URLS[rel], tmp)
    return target


def file_digest(path: Path) -> str:
    """The first 16 hex digits of `digests.digest_file(path)` (names of caches built from a
    data file)."""
    return digest_file(path, 16)


# -- CounterFact -------------------------------------------------------------------------------
@dataclass
class CounterFactRecord:
    """One counterfactual edit with its evaluation prompts (full texts, subject filled in).

    Attributes:
        case_id: CounterFact case id.
        subject: "Danielle Darrieux".
        prompt: rewrite template with `{}`: "{}, speaker of".
        target_true / target_new: objects without leading space: "French" / "English".
        relation: ROME's relation id ("P37") or, in the flattened layout, the template.
        paraphrase_prompts: rewrite paraphrases (subject included).
        neighborhood_prompts: prompts about *other* subjects whose true object is
            `neighborhood_true[i]` (in ROME's layout always target_true).
        generation_prompts / attribute_prompts: where the layout has them (else []).
        layout: "rome" or "flat".
    """

    case_id: int
    subject: str
    prompt: str
    target_true: str
    target_new: str
    relation: str
    paraphrase_prompts: list[str] = field(default_factory=list)
    neighborhood_prompts: list[str] = field(default_factory=list)
    neighborhood_true: list[str] = field(default_factory=list)
    generation_prompts: list[str] = field(default_factory=list)
    attribute_prompts: list[str] = field(default_factory=list)
    layout: str = "flat"

    @property
    def text(self) -> str:
        return self.prompt.replace("{}", self.subject)

    @property
    def true_paraphrase_prompts(self) -> list[str]:
        """The paraphrase prompts that are CounterFact paraphrases (`is_true_paraphrase`): all
        of them in ROME's layout; in the flattened one, those built like ROME's."""
        if self.layout == "rome":
            return list(self.paraphrase_prompts)
        return [p for p in self.paraphrase_prompts if is_true_paraphrase(p, self.subject)]

    def to_dict(self) -> dict:
        return asdict(self)


# A sentence end or a line break: CounterFact builds each paraphrase prompt as a stretch of
# unrelated text followed by the relation rephrased ("Shayna does this and Yossel goes still
# and dies. Danielle Darrieux, a native"); its generation prompts start the sentence that names
# the subject ("Danielle Darrieux's mother tongue is", "Where X is from, people speak").
_SENTENCE_BREAK = re.compile(r"[.!?]['\")\]]*\s|\n")


def is_true_paraphrase(prompt: str, subject: str) -> bool:
    """Whether a flattened record's `rephrase_prompt` is one of CounterFact's paraphrase
    prompts rather than one of its generation prompts, which the flattened layout mixes into
    the same field ("David Robinson's greatest weakness is").

    The rule is CounterFact's construction: a paraphrase prompt has a sentence of unrelated text
    before the sentence that names the subject, so the text before the subject holds a
    sentence end or a line break. Some generation prompts also query the relation ("Kad
    Merad's mother tongue is"); the rule counts them as generation-style, by origin.
    """
    i = prompt.find(subject.strip())
    return i > 0 and bool(_SENTENCE_BREAK.search(prompt[:i]))


def _clean(s) -> str:
    return s.strip() if isinstance(s, str) else ""


def _case_id(raw: dict) -> int:
    """The record's integer case id (an int, or a string of digits)."""
    cid = raw["case_id"]
    if isinstance(cid, bool) or not isinstance(cid, (int, str)) or (
            isinstance(cid, str) and not re.fullmatch(r"\s*-?\d+\s*", cid)):
        raise ValueError(f"record with case_id {cid!r}: field 'case_id' must be an integer, "
                         f"got {type(cid).__name__}")
    return int(cid)


def _text(case_id, name: str, value, optional: bool = False) -> str:
    """`value` if it is a string; None for an absent optional field; else a ValueError
    naming the record and the field."""
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"record case_id {case_id}: field {name!r} must be a string, got "
                         f"{type(value).__name__} {value!r:.60}")
    return value


def _texts(case_id, name: str, value) -> list[str]:
    """A list of strings (absent: empty); else a ValueError naming the record and field."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"record case_id {case_id}: field {name!r} must be a list of "
                         f"strings, got {type(value).__name__}")
    for i, v in enumerate(value):
        _text(case_id, f"{name}[{i}]", v)
    return list(value)


def _target(case_id, rw: dict, name: str) -> str:
    t = rw[name]
    if not isinstance(t, dict):
        raise ValueError(f"record case_id {case_id}: field 'requested_rewrite.{name}' must be "
                         f"an object with a 'str', got {type(t).__name__}")
    return _text(case_id, f"requested_rewrite.{name}.str", t["str"]).strip()


def _from_rome(raw: dict) -> CounterFactRecord:
    cid = _case_id(raw)
    rw = raw["requested_rewrite"]
    if not isinstance(rw, dict):
        raise ValueError(f"record case_id {cid}: field 'requested_rewrite' must be an object, "
                         f"got {type(rw).__name__}")
    true = _target(cid, rw, "target_true")
    prompt = _text(cid, "requested_rewrite.prompt", rw["prompt"])
    relation = _text(cid, "requested_rewrite.relation_id", rw.get("relation_id"), optional=True)
    neighbours = _texts(cid, "neighborhood_prompts", raw.get("neighborhood_prompts"))
    return CounterFactRecord(
        case_id=cid,
        subject=_text(cid, "requested_rewrite.subject", rw["subject"]),
        prompt=prompt,
        target_true=true,
        target_new=_target(cid, rw, "target_new"),
        relation=relation or prompt,
        paraphrase_prompts=_texts(cid, "paraphrase_prompts", raw.get("paraphrase_prompts")),
        neighborhood_prompts=neighbours,
        neighborhood_true=[true] * len(neighbours),
        generation_prompts=_texts(cid, "generation_prompts", raw.get("generation_prompts")),
        attribute_prompts=_texts(cid, "attribute_prompts", raw.get("attribute_prompts")),
        layout="rome",
    )


def _from_flat(raw: dict) -> CounterFactRecord:
    cid = _case_id(raw)
    subject = _text(cid, "subject", raw["subject"])
    filled = _text(cid, "prompt", raw["prompt"])
    if "{}" in filled:
        template = filled
    else:
        at = filled.find(subject)
        if at < 0:
            raise _Dropped("subject not in prompt")
        template = filled[:at] + "{}" + filled[at + len(subject):]
    loc = _text(cid, "locality_prompt", raw.get("locality_prompt"), optional=True).strip()
    loc_true = _text(cid, "locality_ground_truth", raw.get("locality_ground_truth"),
                     optional=True).strip()
    rephrase = _text(cid, "rephrase_prompt", raw.get("rephrase_prompt"), optional=True).strip()
    return CounterFactRecord(
        case_id=cid,
        subject=subject,
        prompt=template,
        target_true=_text(cid, "ground_truth", raw["ground_truth"]).strip(),
        target_new=_text(cid, "target_new", raw["target_new"]).strip(),
        relation=template,
        paraphrase_prompts=[rephrase] if rephrase else [],
        neighborhood_prompts=[loc] if loc and loc_true else [],
        neighborhood_true=[loc_true] if loc and loc_true else [],
        layout="flat",
    )


class _Dropped(Exception):
    """A record that is CounterFact but cannot be used: dropped and counted."""


def _problem(rec: CounterFactRecord) -> str | None:
    if not rec.subject.strip():
        return "empty subject"
    if rec.prompt.count("{}") != 1:
        return "prompt template without exactly one {}"
    if not rec.target_true or not rec.target_new:
        return "empty target"
    if rec.target_true == rec.target_new:
        return "target_new equals target_true"
    return None


def normalize_counterfact(raw_records, verbose: bool = True) -> list[CounterFactRecord]:
    """Raw CounterFact JSON records of either layout -> `CounterFactRecord`s.

    Records that cannot be used are dropped and counted (printed when `verbose`, and stored in
    `normalize_counterfact.last_dropped` as {reason: count}).

    Raises:
        ValueError: a field of the wrong type (e.g. an integer subject), naming the record's
            case id and the field.
    """
    if isinstance(raw_records, dict):
        raw_records = [raw_records]
    out, dropped = [], {}
    for raw in raw_records:
        try:
            if not isinstance(raw, dict):
                raise _Dropped(f"not a JSON object: {type(raw).__name__}")
            rec = _from_rome(raw) if "requested_rewrite" in raw else _from_flat(raw)
            reason = _problem(rec)
        except KeyError as e:
            reason = f"missing field {e}"
        except _Dropped as e:
            reason = str(e)
        if reason:
            dropped[reason] = dropped.get(reason, 0) + 1
            continue
        out.append(rec)
    normalize_counterfact.last_dropped = dropped
    if verbose and dropped:
        total = sum(dropped.values())
        print(f"normalize_counterfact: dropped {total} of {len(raw_records)} records: {dropped}")
    return out


normalize_counterfact.last_dropped = {}


NEIGHBOUR_POOL_SPLITS = ("edit", "train")


@functools.lru_cache(maxsize=1)
def neighbour_pool() -> tuple:
    """Every record of both 10k CounterFact splits (`NEIGHBOUR_POOL_SPLITS`, about 20k), read
    once per process: where the evaluation borrows neighbourhood prompts from (records sharing
    a relation and true object), as the published runs draw from all of CounterFact."""
    out = []
    for split in NEIGHBOUR_POOL_SPLITS:
        out += load_counterfact(split, verbose=False)
    return tuple(out)


def load_counterfact(split: str = "edit-1k", n: int | None = None, verbose: bool = True):
    """CounterFact records.

    Args:
        split: "edit-1k" (default, 1,000 records), "edit", "train" (10,000 each, flattened
            layout), "full" (ROME's counterfact.json; offline only if placed in a data root),
            or a path to a JSON file of either layout.
        n: keep the first n records after normalisation: a positive int, or None for all.

    Raises:
        RecordsFileError: an unknown split, or a file that is not JSON (with the line and
            column), holds a record with a field of the wrong type, repeats a case id, or
            holds no usable record; the message names the file.
    """
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"n must be a positive number of records or None (all), got {n!r}")
    if split in COUNTERFACT_SPLITS:
        path = data_path(COUNTERFACT_SPLITS[split])
    elif Path(split).is_file():
        path = Path(split)
    else:
        raise RecordsFileError(
            f"CounterFact split {split!r} is not one of {sorted(COUNTERFACT_SPLITS)} nor a file"
        )
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise RecordsFileError(f"{path}: not a JSON file of CounterFact records: {e.msg} at "
                               f"line {e.lineno}, column {e.colno}") from None
    except UnicodeDecodeError as e:
        raise RecordsFileError(f"{path}: not a UTF-8 JSON file ({e})") from None
    if not isinstance(raw, (list, dict)):
        raise RecordsFileError(f"{path}: expected a JSON list of CounterFact records, got "
                               f"{type(raw).__name__}")
    try:
        records = normalize_counterfact(raw, verbose=verbose)
    except ValueError as e:
        raise RecordsFileError(f"{path}: {e}") from None
    if not records:
        dropped = normalize_counterfact.last_dropped
        raise RecordsFileError(
            f"{path}: no usable CounterFact records"
            + (f" ({sum(dropped.values())} dropped: {dropped})" if dropped else " (it is empty)"))
    seen = set()
    for r in records:
        if r.case_id in seen:
            raise RecordsFileError(f"{path}: case_id {r.case_id} appears more than once")
        seen.add(r.case_id)
    if n is not None and n > len(records) and verbose:
        print(f"load_counterfact: asked for {n} records, {path} has {len(records)} usable ones")
    return records[:n] if n is not None else records


# -- known facts -------------------------------------------------------------------------------
@dataclass
class KnownFact:
    """A fact from ROME's known_1000 set: `text` (the prompt) should continue with `attribute`."""

    known_id: int
    subject: str
    prompt: str  # template with {}
    text: str
    attribute: str
    relation: str

    def to_dict(self) -> dict:
        return asdict(self)


def load_known_facts(n: int | None = None) -> list[KnownFact]:
    """ROME's known_1000 facts (1,209 records), normalised; malformed ones dropped and counted."""
    with open(data_path("known/known_1000.json")) as f:
        raw = json.load(f)
    out, dropped = [], 0
    for r in raw:
        template = r.get("template", "")
        if not template.count("{}") == 1 or not r.get("subject") or not r.get("attribute"):
            dropped += 1
            continue
        text = r.get("prompt") or template.format(r["subject"])
        if r["subject"] not in text:
            dropped += 1
            continue
        # The stored template is sometimes shorter than the prompt ("... the continent" vs
        # "... the continent of"); the prompt is what was scored, so derive the template from it.
        at = text.find(r["subject"])
        out.append(
            KnownFact(
                known_id=int(r["known_id"]),
                subject=r["subject"],
                prompt=text[:at] + "{}" + text[at + len(r["subject"]):],
                text=text,
                attribute=r["attribute"].strip(),
                relation=r.get("relation_id", template),
            )
        )
    if dropped:
        print(f"load_known_facts: dropped {dropped} malformed records")
    return out[:n] if n is not None else out


# -- text for statistics -----------------------------------------------------------------------
_WIKI_MARKUP = [
    (re.compile(r"<ref[^>]*?/>", re.DOTALL), " "),
    (re.compile(r"<ref.*?</ref>", re.DOTALL), " "),
    (re.compile(r"<!--.*?-->", re.DOTALL), " "),
    (re.compile(r"\{\|.*?\|\}", re.DOTALL), " "),  # tables
    (re.compile(r"\[\[(?:File|Image|Category):[^\]]*\]\]"), " "),
    (re.compile(r"\[\[(?:[^\]|]*\|)?([^\]]*)\]\]"), r"\1"),  # [[target|label]] -> label
    (re.compile(r"\[https?://\S+ ([^\]]*)\]"), r"\1"),
    (re.compile(r"'{2,}"), ""),
    (re.compile(r"^=+\s*(.*?)\s*=+\s*$", re.MULTILINE), r"\1"),
    (re.compile(r"<[^>]+>"), " "),
    (re.compile(r"&[a-z]+;"), " "),
]


def strip_wiki_markup(text: str) -> str:
    """Plain prose from MediaWiki markup (templates, refs, links, tables, tags removed)."""
    # Templates nest, so remove innermost {{...}} repeatedly.
    prev = None
    while prev != text:
        prev = text
        text = re.sub(r"\{\{[^{}]*\}\}", " ", text)
    for pattern, repl in _WIKI_MARKUP:
        text = pattern.sub(repl, text)
    # Whatever markup survives (unbalanced templates, table rows, redirects) is not prose.
    text = "\n".join(
        line for line in text.splitlines()
        if not re.search(r"\{\{|\}\}|^\s*[|!]|^#REDIRECT", line)
    )
    text = re.sub(r"[ \t]+", " ", text)
    return re.sub(r"\n\s*\n+", "\n\n", text).strip()


def _wiki_xml_text(path: Path) -> str:
    raw = bz2.open(path, "rt", encoding="utf-8").read()
    pages = re.findall(r"<text[^>]*>(.*?)</text>", raw, re.DOTALL)
    import html

    return "\n\n".join(strip_wiki_markup(html.unescape(p)) for p in pages)


def load_text(name: str = "wikitext") -> str:
    """A text corpus for MLP key statistics or perplexity.

    Args:
        name: "wikitext" (WikiText-2 raw test split), "wiki-xml" (106 Wikipedia articles,
            markup stripped), or "lee" (Lee background news corpus).
    """
    if name not in TEXTS:
        raise ValueError(f"text corpus {name!r} is not one of {sorted(TEXTS)}")
    path = data_path(TEXTS[name])
    if name == "wiki-xml":
        return _wiki_xml_text(path)
    text = path.read_text(encoding="utf-8")
    if name == "wikitext":
        # WikiText's tokenisation artefacts: " @-@ " -> "-", " , " -> ", "
        text = text.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")
        text = re.sub(r" ([,.;:!?)'])", r"\1", text).replace("( ", "(")
    return text


def text_digest(name: str) -> str:
    """Digest of a corpus file (cache keys for statistics)."""
    return file_digest(data_path(TEXTS[name]))


# -- reference numbers -------------------------------------------------------------------------
def load_reference(model: str = "gpt2-xl"):
    """Published Specificity+ numbers (mean.csv of apartresearch/specificityplus) as a tidy
    DataFrame with columns algorithm, prompt_type (N or N+), metric (S, M, KL), value."""
    import pandas as pd

    path = data_path(f"reference/specificityplus/{model}/mean.csv")
    raw = pd.read_csv(path, header=None)
    prompt_types, metrics = list(raw.iloc[0, 1:]), list(raw.iloc[1, 1:])
    rows = []
    for _, r in raw.iloc[3:].iterrows():
        for pt, me, v in zip(prompt_types, metrics, r.iloc[1:]):
            rows.append({"algorithm": r.iloc[0], "prompt_type": pt, "metric": me,
                         "value": float(v)})
    return pd.DataFrame(rows)
