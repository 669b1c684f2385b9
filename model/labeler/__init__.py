"""Rule-based CheXpert-14 labeler for chest X-ray reports (offline, no model).

``label_report(text)`` gives the 14 CheXpert labels of a report (``unirg.model.chexpert.OBSERVATIONS``:
1 positive, 0 negative, -1 uncertain, ``None`` not mentioned); ``extract_mentions(text)`` gives every mention
with its label, laterality and sentence span (used by the entity-overlap reward).

How it works (a regular-expression re-implementation of the Stanford CheXpert labeler's three stages; the
original needs a dependency parser and is not installable offline):

1. **Mention extraction** (``phrases.py``): phrase lists per observation with synonyms and abbreviations
   ("PTX", "ETT", "CHF", "fluid in the pleural space", "enlarged cardiac silhouette", "pulmonary vascular
   congestion", nodule/mass → Lung Lesion, ...), minus *unmentions* ("pericardial effusion" is not a pleural
   effusion, "opacity over the heart" not a heart mention, "calcified nodule" is a granuloma).
2. **Classification** (``triggers.py``): per mention, in CheXpert's order, pre-negation uncertainty ("cannot
   exclude", "no new"), then negation ("no", "without", "negative for", "free of", "resolved", "removal of",
   "is normal", "is not seen"), then uncertainty ("possible", "may represent", "suspicious for", "A or B",
   "A versus B", "question of", "borderline"). NegEx-style scopes bounded by clauses; pseudo-negations ("no
   change", "no interval increase", "not only", "partially resolved") do not negate.
3. **Aggregation** (``engine.aggregate``): positive > uncertain > negative per observation; "No Finding" = 1 when
   no mention other than Support Devices (mentions of findings outside the 14 included) is positive or
   uncertain, else ``None``; "CHF" / "heart failure" (positive or uncertain) adds an uncertain Cardiomegaly.

Decisions (CheXpert's where it has one):

- **No parent propagation**: Pneumonia / Consolidation / Edema / Atelectasis / Lung Lesion do not set Lung
  Opacity, Cardiomegaly does not set Enlarged Cardiomediastinum (the CheXpert labeler does not either).
- **"likely X" is positive** (CheXpert has no rule for it); "less likely" / "unlikely" are uncertain.
  "suggestive of" / "consistent with" / "compatible with" are positive; "suggestion of" is uncertain.
- **Comparison language**: "unchanged small left effusion" is positive; "resolved pneumothorax" /
  "interval removal of the ETT" / "has been removed" are negative; "no new consolidation" is *uncertain*
  (CheXpert's pre-negation rule); a *stable / unchanged cardiac or mediastinal silhouette* is uncertain
  (CheXpert's rule), unless the same statement calls it enlarged.
- **Neutral anatomical mentions** ("heart size", "cardiac silhouette", "mediastinal contours") take their label
  from their predicate: "is normal" / "within normal limits" / "top normal" → 0, "enlarged" or nothing → 1.
  The cardiomediastinal silhouette is an Enlarged Cardiomediastinum mention only (as in CheXpert).
- Beyond CheXpert's lists: "lungs are clear" → Lung Opacity 0; "sharp costophrenic angles" → Pleural Effusion
  0; "blunting of the costophrenic angle" → Pleural Effusion -1; "vascular congestion" / "cephalization" /
  "fluid overload" → Edema -1 (CheXpert: congestion and vascular prominence); metastases → Lung Lesion;
  sternotomy wires, stents, tracheostomy, surgical clips and a "line" named by its tip or position ("the line
  terminates in the SVC") → Support Devices; a device followed by "placement" / "insertion" is positive even
  under a negation ("no pneumothorax after chest tube placement"). "fibrosis" → Pleural Other (CheXpert's list).
  British wording: "shadowing" → Lung Opacity, "infective" → Pneumonia, "cardiac failure" → heart failure,
  "upper lobe (venous) diversion" → Edema -1.
- A negation carries across an "or" list whose items carry a size word ("no consolidation, pneumothorax, or
  large effusion"); without "or" a size word starts a new statement ("no pneumothorax, small left effusion").
  "Normal size and configuration of the cardiac silhouette" is negative.
- A blank text gets ``None`` for all 14 (not "No Finding" = 1): an empty completion must not look normal.
- Laterality: "left" / "right" / "bilateral" from the words before the mention (up to 6, back to the previous
  mention), else after it up to the next comma or mention ("opacity in the left lower lobe"); "bibasilar",
  "both", "left and right" → bilateral, "retrocardiac", "lingular" → left; none for Cardiomegaly / Enlarged
  Cardiomediastinum, words before only for Support Devices.

CheXpert labels only the impression; here any text is labeled (``report_text`` joins findings and impression
of a sectioned report).
"""

from unirg.model.labeler.engine import (
    LATERALITIES,
    Mention,
    aggregate,
    extract_mentions,
    label_report,
    label_reports,
    report_text,
)
from unirg.model.labeler.phrases import OTHER

__all__ = [
    "LATERALITIES",
    "OTHER",
    "Mention",
    "aggregate",
    "extract_mentions",
    "label_report",
    "label_reports",
    "report_text",
]
