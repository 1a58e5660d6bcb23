"""The evaluation API in one namespace for notebooks (`import loudfacts.evaluation as ev`): re-exports
of `metrics`, `probes`, `runner`, `ladder`, `implications` and the evaluation figures of
`plotting`.

Did the edit work, and what else did it change? Each concept lives in its own module:

* `loudfacts.metrics`: the CounterFact and Specificity+ metrics (ES, PS, NS, NS+, NS+cool, NKL,
  GE, Score), pure functions of probabilities, and `summarize` / `headline_table`;
* `loudfacts.probes`: the prompts of a record (neighbourhoods, prefixes, generation prompts)
  and scoring them;
* `loudfacts.runner`: `evaluate`, the study's committed rows (`study`, `read_study`,
  `study_effects`, `all_records`), results files with resume, shards and merge;
* `loudfacts.ladder`: the loud-fact ladder;
* `loudfacts.implications`: logical implications, and editors compared on the same cases;
* `loudfacts.plotting`: the figures (`plot_ns_vs_nsplus`, `plot_ladder`, ...).
"""

from loudfacts.metrics import (  # noqa: F401
    BOOK, COLUMNS, HEADLINE_EXCLUDED, METRICS, METRICS_VERSION, bootstrap_ci,
    compare_with_reference, harmonic_mean, headline_table, kl_divergences, record_metrics,
    population_rows, success_magnitude, summarize, wide_table,
)
from loudfacts.probes import (  # noqa: F401
    NEIGHBOUR_TOP_UPS, UNEDITED, UNRELATED_PROMPTS, UNRELATED_SENTENCE, UneditedCache,
    build_neighbourhoods, cool_prefix, generation_entropy, generation_prompts_for, greedy_generate,
    ladder_prefixes, pair_probs, statement_prefix,
)
from loudfacts.runner import (  # noqa: F401
    NEIGHBOUR_POOLS, POPULATIONS, RESULTS_FORMAT, ResultsFileError, STUDY_EFFECT_METRICS,
    EDIT_BATCH, all_records, batched_edits, case_key, evaluate, evaluate_in_workers, fresh_requested, merge, merge_rows, open_for_resume,
    open_row_store,
    parse_shard, plan_run, read_results, read_results_file, read_study, record_content,
    results_path, row_digest, run_key, run_settings, settings_diff, shard_path, variant_path,
    variant_study, variant_tag,
    shard_records, split_label, store_path, study, study_effects, study_effects_sentence, to_frame,
    write_results,
)
from loudfacts.ladder import (  # noqa: F401
    LADDER_VERSION, ladder_for_editors, ladder_pass, ladder_row_digest, ladder_settings,
    ladder_store_path, ladder_summary, ladder_texts, loud_fact_ladder,
)
from loudfacts.implications import (  # noqa: F401
    IMPLICATION_FAMILIES, IMPLICATION_KINDS, LEAK_THRESHOLD, PROBE_SETS, implication_checks,
    implication_family, implication_summary, implication_verdict, implications_path,
    load_implications, outcome_summary, probe_outcomes, score_implications, verify_implications,
)
from loudfacts.plotting import (  # noqa: F401
    editor_order, editor_palette, plot_implications, plot_ladder, plot_nkl, plot_ns_vs_nsplus,
    pd_categorical,
)
