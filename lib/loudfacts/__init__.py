"""loudfacts: locate, edit and stress-test facts stored in language models.

Modules: `models` (loading), `data` (CounterFact, known facts, text), `tokens` (subject spans),
`tracing` (causal tracing), `stats` (MLP key statistics), `editing` (ROME, fine-tuning,
path-patching edits under one contract), `evaluation` (CounterFact, Specificity+, loud facts,
implications), `plotting` and `report`.
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
