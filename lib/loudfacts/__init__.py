"""loudfacts: locate, edit and stress-test facts stored in language models.

Modules, one concept each:

* `paths` (folders), `atomic` (atomic writes), `digests` (the one content digest behind every
  key and cache name), `jsonlines` (appending rows under a lock);
* `models` (loading), `data` (CounterFact, known facts, text), `tokens` (subject spans),
  `scoring` (teacher-forced probabilities), `knowledge` (which facts the model knows; fact
  selection);
* `tracing` (the causal trace of one fact), `averages` (traces averaged over many facts, kept
  as data), `trace_worker` (their worker processes);
* `stats` (MLP key statistics), `editing` (ROME, fine-tuning, path-patching edits under one
  contract: editors only);
* `cases` (one edit case: an EditRequest and its probes by role, and `score`, the one probe
  scorer), `metrics` (CounterFact and Specificity+ metrics and their summaries), `probes` (a
  record's prompts: neighbourhoods, prefixes, generation prompts), `runner` (evaluation rows,
  resume, shards, the study's committed files), `ladder` (the loud-fact ladder),
  `implications` (logical implications, and editors compared on them), `evaluation` (those
  five in one namespace for notebooks), `bricking` (what FT targets and hyper-parameters do to
  fluency), `leak` (where a leak travels, notebook 07);
* `plotting` (figures), `claims` (paired effects and verdicts) and `report`.
"""

import os as _os

# Offline by default: nothing in this package should reach the Hub unless asked to (Colab sets
# LOUDFACTS_ONLINE=1 in its setup cell).
if _os.environ.get("LOUDFACTS_ONLINE", "0") in ("0", ""):
    _os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
_os.environ.setdefault("WANDB_MODE", "disabled")
_os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

__version__ = "0.1.0"
