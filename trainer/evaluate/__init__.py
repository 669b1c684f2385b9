"""ReXrank-style evaluation of report generators, with bootstrap confidence intervals.

:func:`evaluate` scores predicted reports against the references of a list of
:class:`~unirg.trainer.data.Sample` and returns an :class:`EvalResult`: every metric overall and by
institution, sex, age band and with / without a prior study, each with a bootstrap CI. ``result.save(dir)``
writes ``eval.json``, ``eval.md`` and ``eval.png``. :func:`compare` puts several runs side by side (e.g. SFT
vs SFT+RL) with *paired* bootstrap CIs of the differences.

Modules: ``metrics`` (predictions, metric table, per-report scores), ``bootstrap`` (grouping, bootstrap CIs,
:func:`evaluate`, :func:`compare`), ``reporting`` (:class:`EvalResult`, :class:`Comparison`, markdown, figures).

Metrics (``higher`` is better unless marked ↓):

==========================  ====================================================================  ==========
key                         what                                                                  real?
==========================  ====================================================================  ==========
``bleu2``                   sentence BLEU-2 (sacrebleu), mean over reports                        real
``rouge_l``                 ROUGE-L F (rouge-score), mean over reports                            real
``semantic``                BERTScore F1 with a local model when given, else the cosine of        BERTScore: real;
                            all-MiniLM-L6-v2 sentence embeddings ("Embedding cosine")              cosine: substitute
``semb``                    SembScore substitute: cosine of the labeler's 14-label vectors        substitute
``radgraph``                RadGraph-F1 substitute: labeler entity / laterality overlap F1        substitute
``radcliq_v1`` ↓            RadCliQ-v1: published scaler + coefficients on (RadGraph, BERTScore,  as its parts
                            SembScore, BLEU-2) per report, mean over reports
``inv_radcliq_v1``          1 / RadCliQ-v1 (ReXrank's column); undefined when RadCliQ-v1 <= 0
``chexpert_micro_f1_14``    CheXpert-14 F1 over the whole set: TP / FP / FN summed over reports   rule-based
``chexpert_macro_f1_14``    and observations (micro), or per observation then averaged (macro);   labeler
``chexpert_micro_f1_5``     ``_5``: Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural      (not CheXbert)
``chexpert_macro_f1_5``     Effusion. Uncertain counts as positive (ReXrank's convention).
``judge_errors`` ↓          clinically significant errors per report (LLM judge, when given)
``judge_ge4`` ↓             share of reports with >= 4 significant errors
``judge_insignificant`` ↓   clinically insignificant errors per report
==========================  ====================================================================  ==========

The substitutes (model-free, from :mod:`unirg.trainer.rewards.clinical`) stand in for scorers whose models
(CheXbert, RadGraph) cannot be downloaded here; pass ``EvalConfig(semb_scorer=..., radgraph_scorer=...)``
to plug in real ones. They are not comparable with published numbers, and neither is a RadCliQ-v1 computed
from them: its label then says "(substitute components)". Macro F1 averages the observations that occur
(TP + FP + FN > 0) in the set; observations absent from both predictions and references are left out
(sklearn would count them as 0).

Confidence intervals: percentile bootstrap, ``n_boot`` resamples (default 1000), seeded. By default whole
**patients** are resampled (all of a patient's reports together, since they are correlated); ``resample=
"report"`` resamples reports. Set-level metrics (CheXpert F1, RadCliQ-v1's mean) are recomputed on every
resample, not averaged per pair.
"""

from unirg.trainer.evaluate.bootstrap import (
    bootstrap_weights,
    compare,
    evaluate,
    statistics,
    summarize,
)
from unirg.trainer.evaluate.metrics import (
    DEFAULT_GROUPS,
    GROUPS,
    RADCLIQ_V1_COEF,
    RADCLIQ_V1_COMPONENTS,
    RADCLIQ_V1_INTERCEPT,
    RADCLIQ_V1_MEAN,
    RADCLIQ_V1_SCALE,
    SECTIONS,
    TOP5,
    generate_predictions,
    radcliq_v1,
    read_predictions,
    score_reports,
    split_report,
    write_predictions,
    EvalConfig,
    Metric,
    PairScorer,
    Prediction,
    ReportScores,
)
from unirg.trainer.evaluate.reporting import (
    FIGURE_METRICS,
    plot_comparison,
    plot_result,
    render_markdown,
    Comparison,
    EvalResult,
)

__all__ = [
    "DEFAULT_GROUPS",
    "FIGURE_METRICS",
    "GROUPS",
    "RADCLIQ_V1_COEF",
    "RADCLIQ_V1_COMPONENTS",
    "RADCLIQ_V1_INTERCEPT",
    "RADCLIQ_V1_MEAN",
    "RADCLIQ_V1_SCALE",
    "SECTIONS",
    "TOP5",
    "bootstrap_weights",
    "compare",
    "evaluate",
    "generate_predictions",
    "plot_comparison",
    "plot_result",
    "radcliq_v1",
    "read_predictions",
    "render_markdown",
    "score_reports",
    "split_report",
    "statistics",
    "summarize",
    "write_predictions",
    "Comparison",
    "EvalConfig",
    "EvalResult",
    "Metric",
    "PairScorer",
    "Prediction",
    "ReportScores",
]
