"""Mention phrases: what counts as a mention of each observation, and what does not.

Every pattern is a regular expression matched against the *lower-cased* report (same length as the original, so
spans map back onto it). Each :class:`Phrase` names the finding it stands for (``finding``), may carry an
intrinsic label (``label``: e.g. "costophrenic angle blunting" is uncertain for effusion, "lungs are clear" is
negative for opacity) and may be *neutral* (``neutral``: an anatomical mention such as "heart size" whose label
comes from its predicate: "is normal" → 0, "is enlarged" / no predicate → 1, "is stable" → -1, as in CheXpert).

Within one observation the alternatives are tried in list order at each position, so longer / more specific
phrases come first. Different observations may overlap ("nodular opacity" is a Lung Lesion *and* a Lung Opacity
mention, "hydropneumothorax" a Pneumothorax *and* a Pleural Effusion mention), as in the CheXpert labeler.

``OTHER`` findings are not among the 14 observations but, when positive or uncertain, block "No Finding", as the
CheXpert labeler's ``no_finding`` phrase list does (emphysema, granuloma, scoliosis, degenerative change, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

OTHER = "Other"
"""Observation name given to mentions of findings outside the 14 (they only block "No Finding")."""


@dataclass(frozen=True)
class Phrase:
    """One mention pattern.

    Parameters
    ----------
    finding
        Canonical name of the finding (``"pleural effusion"``, ``"endotracheal tube"``).
    pattern
        Regular expression over lower-cased text; use ``\\b`` boundaries.
    label
        Intrinsic label applied when no negation / uncertainty rule fires: ``None`` = positive, ``-1`` = uncertain
        (negation still wins), ``0`` = always negative (a normal statement; no rule applies).
    neutral
        Anatomical mention whose label depends on its predicate; "stable / unchanged / similar" make it uncertain
        (CheXpert's rule for the cardiac and mediastinal silhouettes).
    """

    finding: str
    pattern: str
    label: int | None = None
    neutral: bool = False


def _p(finding: str, pattern: str, label: int | None = None, neutral: bool = False) -> Phrase:
    return Phrase(finding, pattern, label, neutral)


# Small shared pieces.
_S = r"[\s-]+"  # one or more spaces / hyphens
_COP = r"(?:is|are|was|were|appears?|remains?|seems?|looks?)"
_SIDE = r"(?:(?:left|right|bilateral|both)\s+)?"

MENTIONS: dict[str, list[Phrase]] = {
    "Enlarged Cardiomediastinum": [
        _p("widened mediastinum", r"\bwiden(?:ed|ing)\s+(?:of\s+)?(?:the\s+)?(?:superior\s+|upper\s+)?(?:cardio)?mediastin(?:um|al\s+(?:silhouette|contours?))\b"),
        _p("widened mediastinum", r"\b(?:superior\s+)?mediastinal\s+(?:widening|enlargement)\b"),
        _p("widened mediastinum", r"\benlarged\s+(?:cardio)?mediastin(?:um|al\s+(?:silhouette|contours?))\b"),
        _p("cardiomediastinal silhouette", r"\bcardio[\s-]?mediastin(?:al|um)(?:\s+(?:silhouette|contours?|size|shadow|structures?|outlines?))?\b", neutral=True),
        _p("mediastinal contour", r"\b(?:mediastinal\s*(?:,|and|/)\s*hilar|hilar\s*(?:,|and|/)\s*mediastinal)\s+(?:contours?|silhouettes?|structures?|shadows?)\b", neutral=True),
        _p("mediastinal contour", r"\bmediastinal\s+(?:contours?|silhouettes?|width|configuration|structures?|shadow|outlines?|borders?)\b", neutral=True),
        _p("mediastinum", r"\b(?:superior\s+)?mediastinum\b", neutral=True),
        _p("pericardial silhouette", r"\bpericardial\s+silhouette\b", neutral=True),
    ],
    "Cardiomegaly": [
        _p("cardiomegaly", r"\bcardiomegaly\b"),
        _p("cardiomegaly", r"\b(?:cardiac|heart)\s+enlargement\b"),
        _p("cardiomegaly", r"\benlarge(?:d|ment\s+of)\s+(?:the\s+)?(?:heart|cardiac\s+(?:silhouette|shadow|contour|size))\b"),
        _p("heart size", r"\b(?:heart|cardiac)\s+(?:and|,)\s+mediastinal\s+(?:contours?|silhouettes?|outlines?|shadows?)\b", neutral=True),
        _p("heart size", r"\b(?:heart|cardiac)\s+(?:size|silhouette|shadow|contours?|diameter|dimensions?)\b", neutral=True),
        _p("heart size", r"\bsize\s+of\s+the\s+(?:heart|cardiac\s+silhouette)\b", neutral=True),
        _p("heart size", r"\bcardiothoracic\s+ratio\b", neutral=True),
        _p("heart size", r"\bheart\b(?![\s-]+(?:failure|border|valve|disease))", neutral=True),
    ],
    "Lung Lesion": [
        _p("nodule", r"\bnodular\s+(?:densit(?:y|ies)|opacit(?:y|ies)|opacification|lesions?)\b"),
        _p("nodule", r"\b(?:micro)?nodules?\b"),
        _p("mass", r"\bmass(?:es)?\b"),
        _p("mass", r"\blump\b"),
        _p("lung lesion", r"\b(?:cavitary|cavitating|spiculated|pulmonary|lung|parenchymal|space[\s-]occupying|coin)\s+lesions?\b"),
        _p("cavity", r"\bcavit(?:y|ies|ation)\b"),
        _p("neoplasm", r"\b(?:carcinoma|neoplasms?|neoplastic|tumou?rs?|malignan(?:cy|cies|t)|cancer)\b"),
        _p("metastasis", r"\bmetasta(?:sis|ses|tic\s+disease)\b"),
    ],
    "Lung Opacity": [
        _p("lungs clear",
           r"\b(?:both\s+)?(?:lungs?|lung\s+(?:fields?|bases|apices|parenchyma|zones)|bases)(?:\s*:)?\s+"
           r"(?:" + _COP + r"\s+)?"
           r"(?:(?:now|otherwise|essentially|grossly|well|expanded|aerated|inflated|well[\s-]expanded|hyperinflated|hyperexpanded|"
           r"low[\s-]volume|and|but|both|again|relatively|radiographically|remarkably|fully|entirely|still)\s+){0,4}"
           r"clear\b", label=0),
        _p("lungs clear", r"\bclear\s+(?:lungs?|lung\s+fields)\b", label=0),
        _p("opacity", r"\bopaci(?:ty|ties|fication|fications|fied)\b"),
        _p("opacity", r"\bair[\s-]?space\s+(?:disease|process|filling|opacit(?:y|ies))\b"),
        _p("opacity", r"\binfiltrat(?:e|es|ion|ions|ive)\b"),
        _p("opacity", r"\bincreased\s+(?:densit(?:y|ies)|markings)\b"),
        _p("opacity", r"\bdecreased\s+(?:translucency|lucency)\b"),
        _p("opacity", r"\bground[\s-]glass\b"),
        _p("opacity", r"\binterstitial\s+(?:markings?|pattern|opacit(?:y|ies)|lung\s+disease|disease|abnormalit(?:y|ies)|prominence|changes?)\b"),
        _p("opacity", r"\breticul(?:ar|ation|ations|onodular)\b"),
        _p("scarring", r"\b(?:parenchymal\s+)?scar(?:ring|s)?\b"),
        _p("opacity", r"\b(?:peribronchial|bronchial\s+wall|airway\s+wall)\s+(?:thickening|cuffing)\b"),
        _p("opacity", r"\bhaz(?:e|iness|y)\b"),
        _p("opacity", r"\bdensit(?:y|ies)\b"),
        _p("opacity", r"\bwhite[\s-]?out\b"),
        _p("opacity", r"\bshadowing\b|\b(?:air[\s-]?space|alveolar|patchy|nodular|reticular)\s+shadows?\b"),
    ],
    "Edema": [
        _p("heart failure", r"\b(?:congestive\s+)?(?:heart|cardiac|left\s+ventricular)\s+failure\b|\blvf\b"),
        _p("heart failure", r"\bchf\b"),
        _p("edema", r"\b(?:pulmonary\s+|interstitial\s+|alveolar\s+|perihilar\s+)?o?edema(?:tous)?\b"),
        _p("vascular congestion", r"\b(?:pulmonary\s+)?(?:vascular|venous)\s+(?:congestion|engorgement|prominence|redistribution|plethora)\b", label=-1),
        _p("vascular congestion", r"\b(?:pulmonary\s+|central\s+)?congestion\b", label=-1),
        _p("vascular congestion", r"\b(?:(?:vascular|hilar|perihilar|vessel)\s+)?indistinctness\b", label=-1),
        _p("vascular congestion", r"\bcephali[sz]ation\b", label=-1),
        _p("vascular congestion", r"\b(?:upper\s+lobe\s+)?(?:venous|blood|vascular)\s+diversion\b", label=-1),
        _p("vascular congestion", r"\b(?:fluid|volume)\s+overload\b", label=-1),
        _p("edema", r"\bkerley\s+(?:b\s+)?lines\b"),
    ],
    "Consolidation": [
        _p("consolidation", r"\bconsolidat(?:ion|ions|ive|ed|ing)\b"),
        _p("consolidation", r"\bair\s+bronchograms?\b"),
    ],
    "Pneumonia": [
        _p("pneumonia", r"\b(?:broncho)?pneumonias?\b"),
        _p("pneumonia", r"\bpna\b"),
        _p("pneumonia", r"\binfect(?:ion|ions|ious|ive)(?:\s+(?:process|change|changes))?\b"),
    ],
    "Atelectasis": [
        _p("atelectasis", r"\batelecta(?:sis|ses|tic)\b"),
        _p("atelectasis", r"\bcollaps(?:e|ed)\b"),
    ],
    "Pneumothorax": [
        _p("pneumothorax", r"\b(?:hydro|hemo|haemo)?pneumothora(?:x|xes|ces)\b"),
        _p("pneumothorax", r"\bptx\b"),
    ],
    "Pleural Effusion": [
        _p("costophrenic angle blunting", r"\bblunt(?:ing|ed)?\s+(?:of\s+)?(?:the\s+)?" + _SIDE + r"(?:lateral\s+|posterior\s+)?costophrenic\s+(?:angles?|sulc(?:us|i)|recess(?:es)?)\b", label=-1),
        _p("costophrenic angle blunting", r"\bcostophrenic\s+(?:angles?|sulc(?:us|i)|recess(?:es)?)\s+(?:" + _COP + r"\s+)?(?:(?:mildly|slightly|minimally|again|now|still|newly)\s+)?(?:blunted|blunting|obscured)\b", label=-1),
        _p("costophrenic angle blunting", r"\bcostophrenic\s+(?:angle\s+)?blunting\b", label=-1),
        _p("costophrenic angles sharp", r"\b(?:sharp|clear|preserved|normal)\s+costophrenic\s+(?:angles?|sulc(?:us|i))\b", label=0),
        _p("costophrenic angles sharp", r"\bcostophrenic\s+(?:angles?|sulc(?:us|i))\s+(?:" + _COP + r"\s+)?(?:(?:well|now|again)\s+)?(?:sharp(?:ly\s+defined)?|clear|preserved|normal)\b", label=0),
        _p("pleural effusion", r"\b(?:hydro|hemo|haemo)pneumothora(?:x|xes|ces)\b"),
        _p("pleural effusion", r"\beffusions?\b"),
        _p("pleural effusion", r"\bpleural\s+fluid\b"),
        _p("pleural effusion", r"\bfluid\s+(?:in|within)\s+the\s+" + _SIDE + r"(?:pleural\s+(?:space|cavity)|(?:major|minor|horizontal|oblique)\s+fissures?|fissures?)\b"),
        _p("pleural effusion", r"\b(?:fissural|subpulmonic|layering|loculated)\s+(?:pleural\s+)?fluid\b"),
        _p("pleural effusion", r"\b(?:hydro|hemo|haemo)thorax\b"),
        _p("pleural effusion", r"\bempyemas?\b"),
    ],
    "Pleural Other": [
        _p("pleural thickening", r"\bpleural\s+(?:thickening|plaques?|calcifications?|scar(?:ring|s)?|abnormalit(?:y|ies)|mass(?:es)?|based\s+(?:opacity|mass|thickening))\b"),
        _p("pleural thickening", r"\bpleur(?:o|al)[\s-]?parenchymal\s+(?:scar(?:ring|s)?|thickening|opacit(?:y|ies)|changes?)\b"),
        _p("pleural thickening", r"\bapical\s+(?:pleural\s+)?(?:thickening|capping|caps?)\b"),
        _p("fibrothorax", r"\bfibrothorax\b"),
        _p("fibrosis", r"\bfibros(?:is|ing)\b|\bfibrotic\b"),
        _p("mesothelioma", r"\bmesothelioma\b"),
    ],
    "Fracture": [
        _p("fracture", r"\bfractur(?:e|es|ed)\b"),
        _p("fracture", r"\bfxs?\b"),
        _p("fracture", r"\bcallus\b"),
    ],
    "Support Devices": [
        _p("lines and tubes", r"\b(?:lines?\s*(?:and|/|,)\s*tubes?|tubes?\s*(?:and|/|,)\s*lines?)\b"),
        _p("endotracheal tube", r"\b(?:endotracheal|ett|e\.t\.|et)(?:" + _S + r"tubes?)\b|\bendotracheal\b|\bett\b"),
        _p("tracheostomy tube", r"\btrach(?:eostomy|eotomy)?(?:" + _S + r"tubes?)?\b"),
        _p("enteric tube", r"\b(?:nasogastric|orogastric|ng|og|enteric|feeding|gastric|dobhoff|dubhoff|nasoenteric|nasojejunal|nj|gastrostomy|g|peg|j)(?:" + _S + r"tubes?)\b|\b(?:dobhoff|ngt|ogt|ngts)\b"),
        _p("chest tube", r"\b(?:chest|thoracostomy|pleural|pigtail|mediastinal|pericardial|surgical)" + _S + r"(?:tubes?|drains?|catheters?)\b"),
        _p("tube", r"\btubes?\b"),
        _p("central venous catheter",
           r"\b(?:central(?:\s+venous)?|picc|(?:internal\s+)?jugular|ij|subclavian|femoral|venous|arterial|dialysis|"
           r"hemodialysis|tunnel(?:l)?ed|swan[\s-]?ganz|pa|pulmonary\s+artery|triple[\s-]lumen|double[\s-]lumen|port)"
           + _S + r"(?:venous\s+)?(?:lines?|catheters?|caths?)\b"),
        _p("central venous catheter", r"\b(?:picc|cvc|cvl|swan[\s-]?ganz|port[\s-]?a[\s-]?cath|portacath|mediport|power[\s-]?port)s?\b"),
        _p("catheter", r"\bcatheters?\b"),
        _p("line", r"\blines?(?=\s+(?:tip|terminat|ends?\b|projects?|overl|courses?|extends?|(?:is\s+|lies\s+)?(?:in|at)\s+(?:the\s+)?(?:svc|superior\s+vena|right\s+atri|cavoatrial|brachiocephalic)))"),
        _p("line", r"\btip\s+of\s+the\s+(?:\w+\s+){0,2}line\b"),
        _p("pacemaker", r"\b(?:(?:dual|single|biventricular)[\s-]chamber\s+)?(?:pacemaker|pacer|aicd|icd|defibrillator)(?:" + _S + r"(?:leads?|wires?|generator|device))?s?\b"),
        _p("pacemaker", r"\b(?:pacing|transvenous|epicardial|ecg|ekg|monitoring|telemetry)\s+(?:leads?|wires?|pads?)\b"),
        _p("pacemaker", r"\bleads\b(?!\s+to\b)"),
        _p("pacemaker", r"\bloop\s+recorder\b"),
        _p("valve replacement", r"\b(?:prosthetic|mechanical|bioprosthetic|replacement)\s+(?:\w+\s+)?valves?\b|\bvalve\s+(?:replacement|prosthesis)\b|\b(?:tavr|tavi|avr|mvr)\b"),
        _p("sternotomy wires", r"\b(?:sternotomy|sternal|cerclage)\s+(?:wires?|sutures?)\b"),
        _p("hardware", r"\b(?:(?:surgical|orthopedic|orthopaedic|fixation|spinal|fusion)\s+)?hardware\b|\bscrews?\b|\bplates?\b(?![\s-]*like)|\b(?:arthroplast(?:y|ies)|joint\s+replacement|shoulder\s+replacement|prosthesis)\b"),
        _p("port", r"\bport\b"),
        _p("assist device", r"\b(?:iabp|intra[\s-]?aortic\s+balloon(?:\s+pump)?|impella|lvad|(?:left\s+)?ventricular\s+assist\s+device|ecmo(?:\s+cannulae?)?)\b"),
        _p("cannula", r"\bcannula(?:e|s)?\b"),
        _p("clips", r"\b(?:surgical|vascular|cholecystectomy|mediastinal|axillary|sternal|aneurysm)\s+clips?\b|\bclips\b"),
        _p("stent", r"\bstents?\b|\b(?:embolization\s+)?coils?\b"),
        _p("drain", r"\bdrains?\b"),
        _p("device", r"\b(?:support|monitoring|medical|implanted|cardiac)\s+devices?\b|\bdevices?\b|\bapparatus\b|\bequipment\b"),
    ],
}

UNMENTIONS: dict[str, list[str]] = {
    # A mention overlapping one of these is not a mention of that observation.
    "Enlarged Cardiomediastinum": [
        r"\b(?:over|overlying|projecting\s+over|projects\s+over|into|in|within|through|to|across)\s+the\s+(?:\w+\s+)?mediastinum\b",
        r"\bmediastinal\s+shift\b",
    ],
    "Cardiomegaly": [
        r"\b(?:over|overlying|behind|projecting\s+over|projects\s+over|through|posterior\s+to|anterior\s+to|along|obscuring|silhouetting|at|near)\s+the\s+(?:left\s+|right\s+)?(?:heart|cardiac\s+(?:silhouette|shadow|contour))\b",
    ],
    "Lung Lesion": [
        r"\bcalcified\s+(?:granulomas?|(?:micro)?nodules?)\b",
        r"\bmass\s+effect\b",
        r"\bnipple\s+shadows?\b",
    ],
    "Lung Opacity": [
        r"\bpleur(?:al|o)(?:[\s-]?parenchymal)?\s+scar(?:ring|s)?\b",
        r"\bbone\s+densit(?:y|ies)\b|\bsoft[\s-]tissue\s+densit(?:y|ies)\b|\bmetallic\s+densit(?:y|ies)\b",
    ],
    "Edema": [
        r"\b(?:soft[\s-]tissue|subcutaneous|chest\s+wall|extremity|peripheral|anasarca)\s+o?edema\b",
        r"\bnasal\s+congestion\b",
    ],
    "Atelectasis": [
        r"\b(?:vertebral|vertebra|compression)\s+(?:body\s+)?collaps(?:e|ed)\b",
        r"\bcollaps(?:e|ed)\s+(?:of\s+)?(?:the\s+)?(?:[tl]\d+|vertebra|vertebral)",
    ],
    "Pleural Effusion": [
        r"\bpericardial\s+effusions?\b",
        r"\b(?:joint|knee|shoulder|glenohumeral)\s+effusions?\b",
    ],
    "Support Devices": [
        r"\b(?:bronchial|eustachian|fallopian)\s+tubes?\b",
        r"\bet\s+al\b",
        r"\bend[\s-]?plates?\b",
        r"\b(?:pleural|skin|fold|fissural|septal|paraspinal|paratracheal|azygo\w*|junction|kerley\s+(?:b\s+)?)\s*lines?\b",
    ],
}

# Findings outside the 14 that, positive or uncertain, mean the study has a finding (CheXpert's "no_finding"
# phrase list, extended with a few spellings).
OTHER_FINDINGS: list[Phrase] = [
    _p("emphysema", r"\bemphysema(?:tous)?\b"),
    _p("copd", r"\bcopd\b|\bchronic\s+obstructive\s+(?:pulmonary|lung)\s+disease\b"),
    _p("hyperinflation", r"\bhyper[\s-]?(?:inflat(?:ion|ed)|expan(?:sion|ded)|lucen(?:cy|t))\b"),
    _p("bullae", r"\bbull(?:a|ae|ous)\b|\bblebs?\b"),
    _p("scoliosis", r"\bscoliosis\b|\bscoliotic\b"),
    _p("kyphosis", r"\bkyphos(?:is|es)\b|\bkyphotic\b"),
    _p("degenerative change", r"\bdegenerat(?:ive|ion)\b|\bspondylo(?:sis|tic)\b|\bosteophyt(?:es?|osis)\b|\bosteoarthrit(?:is|ic)\b|\barthropathy\b|\barthritis\b|\bdisc\s+space\s+narrowing\b"),
    _p("osteopenia", r"\bosteop(?:enia|enic|orosis|orotic)\b|\bdemineraliz(?:ation|ed)\b"),
    _p("calcification", r"\bcalcifi(?:ed|cations?|c)\b"),
    _p("atherosclerosis", r"\batheroscleros(?:is|tic)\b|\bathero(?:matous)?\b"),
    _p("granuloma", r"\bgranulom(?:a|as|ata|atous)\b"),
    _p("hernia", r"\bhernia(?:tion)?s?\b"),
    _p("elevation", r"\belevat(?:ion|ed)\b"),
    _p("eventration", r"\beventration\b"),
    _p("plaque", r"\bplaques?\b"),
    _p("bronchitis", r"\bbronch(?:itis|iolitis|ospasm)\b|\bairways?\s+disease\b|\basthma\b|\breactive\s+airways\b"),
    _p("bronchiectasis", r"\bbronchiecta(?:sis|tic)\b"),
    _p("thickening", r"\bthicken(?:ing|ed)\b"),
    _p("aspiration", r"\baspirat(?:ion|ed)\b|\bpneumonitis\b"),
    _p("contusion", r"\bcontusions?\b"),
    _p("pneumomediastinum", r"\bpneumomediastinum\b|\bpneumopericardium\b"),
    _p("pneumoperitoneum", r"\bpneumoperitoneum\b|\bfree\s+(?:intraperitoneal\s+|subdiaphragmatic\s+)?air\b"),
    _p("subcutaneous air", r"\bsubcutaneous\s+(?:air|gas)\b"),
    _p("cuffing", r"\bcuffing\b"),
    _p("lucency", r"\blucenc(?:y|ies)\b"),
    _p("inflammation", r"\binflammat(?:ion|ory)\b"),
    _p("pulmonary hypertension", r"\b(?:pulmonary\s+(?:arterial\s+)?|venous\s+)hypertension\b"),
    _p("prominence", r"\bprominen(?:t|ce)\b"),
    _p("deformity", r"\bdeformit(?:y|ies)\b|\bpectus\b"),
    _p("hemorrhage", r"\bhemorrhag(?:e|ic)\b|\bhaemorrhag(?:e|ic)\b|\bhematoma\b|\bhaematoma\b"),
    _p("volume loss", r"\bvolume\s+loss\b"),
    _p("foreign body", r"\bforeign\s+bod(?:y|ies)\b|\bradio[\s-]?opaque\b|\bbullet\b"),
    _p("lymphadenopathy", r"\b(?:lymph)?adenopathy\b|\blymph\s+node\s+enlargement\b|\benlarged\s+(?:lymph\s+)?nodes\b"),
    _p("hilar enlargement", r"\b(?:hilar|hila|hilum)\s+(?:enlargement|fullness)\b|\benlarged\s+hil(?:a|um|ar)\b"),
    _p("septal thickening", r"\bseptal\s+lines\b"),
    _p("bone lesion", r"\b(?:lytic|sclerotic|blastic|osseous|bony)\s+(?:lesions?|metastas(?:is|es))\b"),
    _p("thoracentesis", r"\bthoracentesis\b"),
    _p("pericardial effusion", r"\bpericardial\s+effusions?\b"),
    _p("ards", r"\bards\b|\bacute\s+respiratory\s+distress\s+syndrome\b"),
]
