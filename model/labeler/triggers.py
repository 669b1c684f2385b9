"""Negation and uncertainty triggers, their scopes, and the words that end a scope.

A trigger is a regular expression over the lower-cased report and a *window*: how many words may lie between the
trigger and the mention it governs. *Forward* triggers precede the mention ("no ___", "possible ___"); *backward*
triggers follow it ("___ is not seen", "___ cannot be excluded").

Rule classes, tried in CheXpert's order (first class that fires decides the mention's label):

1. ``PRE_NEGATION_UNCERTAINTY``: uncertainty that must win over a negation it contains ("cannot exclude",
   "not ruled out", "no new" — CheXpert labels "no new consolidation" uncertain).
2. ``NEGATION``: "no", "without", "negative for", "free of", "resolved", "removal of", "is normal", ...
3. ``UNCERTAINTY`` (post-negation): "possible", "may represent", "suspicious for", "versus", ...

Scope (forward triggers): the trigger and the mention must lie in the same clause (clauses end at ``;`` ``:``
"but", "however", "except", "which", ...) and within the window. A list continues the scope ("no effusion,
pneumothorax, or consolidation"); a later list item that reads like a new statement ends it ("no pneumothorax,
small left effusion": ``SCOPE_BREAK`` words such as "small", "is", "there" after a comma or "and"), except that
size words (``MODIFIER_BREAK``) do not when the list has an "or" (``OR_LIST``): "no consolidation,
pneumothorax, or large effusion".

Scope (backward triggers): the trigger must be the *first predicate* after the mention ("heart size and
mediastinal contours are normal" negates both; "heart size is enlarged, mediastinum normal" negates only the
mediastinum). ``PREDICATE`` lists the words that start a predicate.

``PSEUDO_NEGATIONS`` ("no change", "no interval increase", "not only", "partially resolved") are masked so the
negation triggers inside them do not fire.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Trigger:
    """A negation / uncertainty cue: ``name`` (reported in ``Mention.rule``), ``pattern``, ``window`` in words."""

    name: str
    pattern: str
    window: int = 8


_COP = r"\b(?:(?:is|are|was|were|has\s+been|have\s+been|had\s+been|appears?|appeared|remains?|remained|seems?|looks?)\s+)?"
_CANNOT = r"(?:can\s*not|can't|could\s+not|cannot)"

PRE_NEGATION_UNCERTAINTY_FWD = [
    Trigger("cannot exclude", _CANNOT + r"\s+(?:be\s+)?(?:entirely\s+|completely\s+|definitely\s+|totally\s+|fully\s+)?(?:exclude[d]?|rule[d]?\s+out|r/o)\b", 10),
    Trigger("no evidence to rule out", r"\bno\s+evidence\s+to\s+rule\s+out\b", 10),
    Trigger("no new", r"\bno\s+(?:(?:definite|definitive|significant|convincing|obvious|other|focal)\s+){0,2}new\b", 6),
    Trigger("not excluded", r"\bnot\s+(?:be\s+)?(?:entirely\s+|completely\s+)?(?:excluded|ruled\s+out)\b", 6),
]
PRE_NEGATION_UNCERTAINTY_BWD = [
    Trigger("cannot be excluded", _COP + r"(?:" + _CANNOT + r"|may\s+not|not)\s+(?:be\s+)?(?:entirely\s+|completely\s+|definitely\s+|totally\s+|fully\s+)?(?:excluded|ruled\s+out)\b", 10),
]

NEGATION_FWD = [
    Trigger("no evidence of", r"\b(?:no|without)\s+(?:(?:radiographic|definite|convincing|obvious|other|further|additional|new\s+or\s+\w+)\s+)?(?:evidence|signs?|findings?|features?)\s+(?:of|for|to\s+suggest|suggest\w*)\b", 12),
    Trigger("no longer", r"\bno\s+longer\b", 4),
    Trigger("no", r"\bno\b", 12),
    Trigger("without", r"\bwithout\b", 12),
    Trigger("negative for", r"\bnegative\s+for\b", 12),
    Trigger("free of", r"\b(?:free|clear)\s+of\b", 12),
    Trigger("absence of", r"\babsen(?:ce\s+of|t)\b", 10),
    Trigger("neither/nor", r"\b(?:neither|nor)\b", 8),
    Trigger("not", r"\bnot\b", 3),
    Trigger("resolved", r"\b(?:interval\s+)?(?:resolved|resolution\s+of|clearing\s+of|disappearance\s+of|cleared)\b", 6),
    Trigger("removed", r"\b(?:interval\s+)?(?:removal\s+of|removed|extubat(?:ed|ion))\b", 6),
    Trigger("rule out", r"\b(?:to\s+)?(?:rule\s+out|r/o|exclude)\b", 8),
    Trigger("history of", r"\bhistory\s+of\b", 6),
    Trigger("normal size of", r"\b(?:normal|unremarkable)\s+(?:size|appearances?|configuration|contours?|outlines?|width)"
            r"(?:\s*(?:,|and)\s*(?:size|appearances?|configuration|contours?|outlines?|shape))*\s+of\b", 3),
    Trigger("normal", r"\b(?:normal|nml|unremarkable)\b", 3),
]
NEGATION_BWD = [
    Trigger("not seen", _COP + r"(?:not|no\s+longer)\s+"
            r"(?:(?:definitely|convincingly|currently|again|otherwise|now|radiographically)\s+)?"
            r"(?:seen|identified|present|visuali[sz]ed|demonstrated|appreciated|evident|noted|detected|visible|"
            r"apparent|enlarged|widened|dilated|shown|observed|found|enlarging)\b", 10),
    Trigger("resolved", _COP + r"(?:(?:now|completely|entirely|fully|since|interval)\s+)?(?:absent|resolved|removed|cleared|gone)\b", 10),
    Trigger("resolved", r"\b(?:has|have|had)\s+(?:(?:since|now|completely|entirely|fully)\s+)?(?:been\s+)?(?:resolved|cleared|removed)\b", 10),
    Trigger("normal", _COP + r"(?:(?:now|otherwise|again|still|grossly|overall|essentially|also|stable|unchanged|and|in|at|the|upper|limits?|of|top|high|within|radiographically|relatively|largely)[\s-]+){0,5}?(?:normal|nml|unremarkable)\b", 10),
    Trigger("midline", _COP + r"midline\b", 8),
    Trigger("removed", _COP + r"(?:now\s+)?out\b", 4),
    Trigger("negative", _COP + r"negative\b", 4),
]

UNCERTAINTY_FWD = [
    Trigger("possible", r"\b(?:possib(?:le|ly)|poss|probabl[ey]|presum(?:ed|ably|ptive)|questionabl[ey]|equivocal|suspect(?:ed)?)\b", 8),
    Trigger("question of",
            r"\b(?:question(?:ed)?\s+(?:of|for)|suggestion\s+of|suspicio(?:us|n)\s+(?:for|of)|concern(?:ing)?\s+for|"
            r"worrisome\s+for|differential\s+(?:diagnosis\s+)?(?:includes?|considerations?(?:\s+includes?)?)|"
            r"considerations?\s+includes?|consider(?:ed)?|favou?r(?:ed|ing|s)?)\b", 10),
    Trigger("may represent", r"\b(?:may|might|could|would|can)(?:\s+(?:also|possibly|potentially|perhaps))?\s+(?:be|represent|reflect|indicate|include|suggest|relate\w*|signify|account\s+for|have|due|reflecting|representing)\b", 10),
    Trigger("may", r"\b(?:(?<!\d\s)may(?!\s+\d)|might|could|perhaps|maybe)\b", 6),  # not "6 May 2021"
    Trigger("less likely", r"\b(?:less\s+likely|unlikely|not\s+likely)\b", 6),
    Trigger("correlate for", r"\b(?:correlat\w+|clinical\s+correlation)\s+(?:clinically\s+)?(?:for|to\s+(?:exclude|evaluate|assess))\b", 10),
    Trigger("limited evaluation", r"\b(?:limited|difficult|suboptimal)\s+(?:evaluation|assessment|to\s+(?:assess|evaluate|exclude))\s*(?:of|for)?\b", 8),
    Trigger("obscured", r"\bobscur(?:e|es|ed|ing)\b", 4),
    Trigger("borderline", r"\bborderline\b", 3),
    Trigger("?", r"\?", 5),
]
UNCERTAINTY_BWD = [
    Trigger("possible", _COP + r"(?:(?:also|again|still|now)\s+)?(?:possible|suspected|questioned|questionable|favou?red|considered|less\s+likely|unlikely|not\s+likely|equivocal|borderline)\b", 10),
    Trigger("could be present", r"\b(?:could|may|might|can)\s+(?:also\s+)?(?:be|have\s+been)\s+(?:present|seen|considered)\b", 10),
    Trigger("not well seen", _COP + r"(?:obscured|"
            r"not\s+(?:well|clearly|fully)\s+(?:seen|visuali[sz]ed|evaluated|assessed|delineated|demonstrated)|"
            r"poorly\s+(?:seen|evaluated|visuali[sz]ed|assessed)|incompletely\s+(?:evaluated|assessed|visuali[sz]ed)|"
            r"difficult\s+to\s+(?:assess|evaluate)|limited\s+(?:in\s+evaluation|for\s+evaluation)|"
            r"(?:cannot|can\s+not|could\s+not)\s+be\s+(?:assessed|evaluated))\b", 10),
]
NEUTRAL_UNCERTAINTY_FWD = [
    # CheXpert: a stable / unchanged cardiac or mediastinal silhouette is uncertain (enlarged or not is unsaid).
    Trigger("stable silhouette", r"\b(?:stable|unchanged|similar)(?:\s+appearance\s+of)?\b", 3),
    Trigger("stable silhouette", r"\bno\s+(?:significant\s+|interval\s+|appreciable\s+)?change\s+in\b", 4),
]
NEUTRAL_UNCERTAINTY_BWD = [
    Trigger("stable silhouette", _COP + r"(?:(?:grossly|overall|essentially|again|also|otherwise)\s+)?(?:stable|unchanged|similar|not\s+(?:significantly\s+)?changed|without\s+(?:significant\s+|interval\s+)?change)\b", 10),
]

# Words that make a neutral anatomical mention explicitly abnormal ("heart size is enlarged but stable" is
# positive, not uncertain).
ABNORMAL_WORDS = r"\b(?:enlarg\w*|cardiomegaly|widen\w*|large|prominent|increased|dilat\w*)\b"

PSEUDO_NEGATIONS = [
    r"\bno\s+(?:significant\s+|substantial\s+|appreciable\s+|definite\s+|interval\s+|other\s+|major\s+|further\s+|acute\s+)*(?:change|increase|decrease|worsening|improvement|progression|difference)\b",
    r"\bwithout\s+(?:significant\s+|substantial\s+|appreciable\s+|interval\s+)*(?:change|increase|decrease|worsening|progression)\b",
    r"\bnot\s+(?:only|necessarily|significantly\s+changed|changed|certain|clear\s+whether)\b",
    r"\b(?:partially|nearly|mostly|almost|largely|incompletely|slowly|partly|not\s+completely|not\s+fully|not\s+entirely)\s+(?:resolv\w+|clear\w*|removed)\b",
    r"\bgram[\s-]negative\b",
    r"\bno\s+(?:radiographic\s+)?change\b",
]

# Clause terminators: no scope crosses these. A clause ends where a terminator starts, so a terminator that is
# itself a cue ("concerning for", "may represent") still governs the clause it opens.
TERMINATORS = (
    r";|:|\s-\s|\b(?:but|however|although|though|except|apart\s+from|aside\s+from|whereas|while|which|yet|"
    r"with\s+the\s+exception\s+of|other\s+than|nevertheless|concerning\s+for|worrisome\s+for|suspicious\s+for|"
    r"compatible\s+with|consistent\s+with|likely\s+(?:representing|reflecting|due\s+to)|"
    r"may\s+(?:represent|reflect|be\s+due\s+to)|could\s+(?:represent|reflect)|as\s+well\s+as\s+(?:a|an)\s+new)\b"
)

# Separators of list items inside a forward scope, and words that mark an item as a new statement.
LIST_SEPARATOR = r",|\band\b(?!/)|\bwith\b|\bplus\b"
SCOPE_BREAK = (
    r"\b(?:is|are|was|were|has|have|had|there|remains?|persists?|demonstrates?|shows?|noted|seen|present|"
    r"small|mild(?:ly)?|moderate(?:ly)?|large|severe(?:ly)?|trace|tiny|minimal|minor|slight(?:ly)?|extensive|"
    r"increas\w*|decreas\w*|improv\w*|worsen\w*|enlarged|unchanged|stable|again|persistent|residual|"
    r"possible|possibly|likely|probable|suspected|subtle|patchy|focal\s+(?:area|region))\b"
)
# In a list ending in "or" / "nor" ("no consolidation, pneumothorax, or large effusion") an item that is only a
# size or extent word plus the finding is still negated; other break words still end the scope.
OR_LIST = r"(?:,\s*|\s)(?:or|nor)\s"
MODIFIER_BREAK = (
    r"\b(?:small|mild(?:ly)?|moderate(?:ly)?|large|severe(?:ly)?|trace|tiny|minimal|minor|slight(?:ly)?|extensive|"
    r"subtle|patchy|focal\s+(?:area|region))\b"
)
# A "new statement" test only applies after a separator; words inside the first item are part of the negated
# phrase ("no large effusion").

# Words that start a predicate after a mention (for the first-predicate rule of backward triggers).
PREDICATE = (
    r"\b(?:is|are|was|were|be|been|being|appears?|appeared|remains?|remained|seems?|looks?|has|have|had|"
    r"demonstrates?|shows?|noted|seen|identified|present|absent|not|no|resolved|removed|"
    r"cleared|normal|nml|unremarkable|within|stable|unchanged|similar|obscured|possible|suspected|questioned|"
    r"borderline|less|unlikely|midline|could|may|might|can|cannot|enlarged|widened|demonstrated|negative|"
    r"increased|decreased|improved|worsened|persists?|persistent)\b"
)

# Two mentions joined by these are each uncertain ("atelectasis or pneumonia", "effusion versus thickening").
OR_LINK = r"^[\s,]*(?:(?:and\s*/\s*or|or|versus|vs\.?|v\.?s\.?)\s+)(?:[\w-]+\s+){0,3}$"
# Mentions joined only by a comma continue an or-chain ("atelectasis, scarring, or pneumonia").
COMMA_LINK = r"^[\s,]*,[\s,]*(?:[\w-]+\s+){0,2}$"
