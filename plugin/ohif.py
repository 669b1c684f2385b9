"""What the OHIF app of ``unirg viewer`` is told: its ``app-config.js`` (one same-origin DICOMweb source,
the draft-review hanging protocols, a few CSS rules) and the links that open a draft in it.

Pure data and string building; the server that serves it is :mod:`unirg.plugin.viewer`.
"""

from __future__ import annotations

import json
import urllib.parse

__all__ = ["OHIF_PACKAGE", "OHIF_VERSION", "DICOMWEB_PREFIX", "WADO_PREFIX", "DRAFT_PROTOCOL",
           "DRAFT_PRIOR_PROTOCOL", "DRAFT_MATCH", "VIEWER_CSS", "draft_hanging_protocols", "build_app_config",
           "study_viewer_url"]

OHIF_PACKAGE = "@ohif/app"
OHIF_VERSION = "3.13.2"
DICOMWEB_PREFIX = "/dicom-web"
WADO_PREFIX = "/wado"


# -- the draft-review layout ---------------------------------------------------------------------
#: Hanging protocols the generated app-config registers (through a small inline extension) and
#: the links select with ``hangingProtocolId``: the current frontal radiograph left, the draft right;
#: with a prior, the prior frontal under the current one.
DRAFT_PROTOCOL = "@unirg/draft-review"
DRAFT_PRIOR_PROTOCOL = "@unirg/draft-review-prior"
#: What the draft viewport matches: an SR series whose description starts so (every unirg draft).
DRAFT_MATCH = "AI DRAFT"

_STUDY = {  # position of the study in the link's StudyInstanceUIDs: 0 current, 1 prior
    i: {"attribute": "studyInstanceUIDsIndex", "from": "options", "required": True,
        "constraint": {"equals": {"value": i}}}
    for i in (0, 1)
}
_FRONTAL_RULES = [
    {"attribute": "Modality", "required": True, "constraint": {"startsWith": ["DX", "CR"]}},
    {"attribute": "numImageFrames", "required": True, "constraint": {"greaterThan": {"value": 0}}},
    {"attribute": "ViewPosition", "weight": 10, "constraint": {"startsWith": ["PA", "AP"]}},
]
_DRAFT_RULES = [
    {"attribute": "Modality", "required": True, "constraint": {"equals": "SR"}},
    {"attribute": "SeriesDescription", "required": True, "constraint": {"startsWith": DRAFT_MATCH}},
    # The draft named in the link (initialSeriesInstanceUID) first, when a study has several.
    {"attribute": "isDisplaySetFromUrl", "weight": 20, "constraint": {"equals": True}},
]


def _viewport(viewport_id: str, selector: str, viewport_type: str = "stack") -> dict:
    return {
        "viewportOptions": {"viewportId": viewport_id, "viewportType": viewport_type,
                            "toolGroupId": "default", "allowUnmatchedView": True},
        "displaySets": [{"id": selector}],
    }


def draft_hanging_protocols() -> list[dict]:
    """The two OHIF 3.13 hanging protocols of the draft-review layout (plain JSON data)."""
    selectors = {
        "currentFrontal": {"studyMatchingRules": [_STUDY[0]], "seriesMatchingRules": _FRONTAL_RULES},
        "priorFrontal": {"studyMatchingRules": [_STUDY[1]], "seriesMatchingRules": _FRONTAL_RULES},
        "draft": {"studyMatchingRules": [_STUDY[0]], "seriesMatchingRules": _DRAFT_RULES},
    }
    current, prior = _viewport("unirg-current", "currentFrontal"), _viewport("unirg-prior", "priorFrontal")
    draft = _viewport("unirg-draft", "draft")
    # With a prior the radiographs are half as high: a 2/5 column shows them as large (square
    # images, landscape screens) and leaves the draft's text more width.
    left, half = 2 / 5, 1 / 2

    def protocol(pid: str, name: str, priors: int, structure: dict, viewports: list[dict]) -> dict:
        return {
            "id": pid, "name": name, "locked": True, "protocolMatchingRules": [],
            "numberOfPriorsReferenced": priors, "toolGroupIds": ["default"],
            "displaySetSelectors": {k: selectors[k] for k in ("currentFrontal", "priorFrontal", "draft")
                                    if priors or k != "priorFrontal"},
            "defaultViewport": {"viewportOptions": {"viewportType": "stack", "toolGroupId": "default",
                                                    "allowUnmatchedView": True},
                                "displaySets": [{"id": "currentFrontal", "matchedDisplaySetsIndex": -1}]},
            "stages": [{"id": "review", "name": name,
                        "viewportStructure": {"layoutType": "grid", "properties": structure},
                        "viewports": viewports}],
        }

    return [
        protocol(DRAFT_PROTOCOL, "unirg draft review: radiograph | AI draft", 0,
                 {"rows": 1, "columns": 2}, [current, draft]),
        protocol(DRAFT_PRIOR_PROTOCOL, "unirg draft review: radiograph over prior | AI draft", 1,
                 {"rows": 2, "columns": 2, "layoutOptions": [
                     {"x": 0, "y": 0, "width": left, "height": half},
                     {"x": 0, "y": half, "width": left, "height": half},
                     {"x": left, "y": 0, "width": 1 - left, "height": 1}]},
                 [current, prior, draft]),
    ]


#: CSS the app-config adds to OHIF's page. OHIF 3.13's SR viewport renders the (121071, DCM,
#: "Finding") TEXT item in a bare <pre> (white-space: pre, monospace): the findings ran on one
#: unwrapped line past the viewport's edge. Long UIDs wrap too. The study browser's SR rows cut the
#: series description to one 160 px line: there it wraps, so the whole research label shows.
VIEWER_CSS = """\
[data-cy="viewport-pane"] { overflow-wrap: anywhere; }
[data-cy="viewport-pane"] pre { white-space: pre-wrap !important; font-family: inherit !important;
  font-size: inherit !important; margin: 0; }
[data-cy="study-browser-thumbnail-no-image"], [data-cy="study-browser-thumbnail-no-image"] div {
  height: auto !important; }
[data-cy="study-browser-thumbnail-no-image"] .min-w-\\[4px\\] { align-self: stretch; min-height: 32px; }
[data-cy="study-browser-thumbnail-no-image"] [data-cy="series-description-label"] {
  white-space: normal !important; max-width: none !important; }
"""


def build_app_config(
    *,
    dicomweb_root: str = DICOMWEB_PREFIX,
    wado_uri_root: str = WADO_PREFIX,
    friendly_name: str = "Orthanc (unirg research viewer)",
) -> str:
    """The OHIF 3.13 ``app-config.js`` text: one DICOMweb data source, roots on the same origin.

    ``wadoUriRoot`` is only used by OHIF for ``imageRendering: 'wadouri'`` (it appends
    ``?requestType=WADO&...``, Orthanc's ``/wado`` endpoint); images and SRs load via WADO-RS.
    """
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "orthanc",
        "configuration": {
            "friendlyName": friendly_name,
            "name": "orthanc",
            "qidoRoot": dicomweb_root,
            "wadoRoot": dicomweb_root,
            "wadoUriRoot": wado_uri_root,
            "qidoSupportsIncludeField": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "staticWado": False,
            "dicomUploadEnabled": False,
            "singlepart": "bulkdata,video",
            "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
            "omitQuotationForMultipartRequest": True,
        },
    }
    config = {
        "name": "unirg",
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        # No onboarding tour: on a fresh profile it dims the viewport over the draft's text.
        "customizationService": {"ohif.tours": {"$set": []}},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 3,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "groupEnabledModesFirst": True,
        "maxNumRequests": {"interaction": 100, "thumbnail": 25, "prefetch": 25},
        "showErrorDetails": "always",
        # OHIF's own "for investigational use only" notice stays on: unirg's drafts are research only.
        "investigationalUseDialog": {"option": "always"},
        "defaultDataSourceName": "orthanc",
        "dataSources": [source],
    }
    # OHIF's loader takes extension objects as they are (strings are module names): this one only
    # registers the draft-review hanging protocols.
    return (
        "/** Generated by `unirg viewer` (unirg.plugin.viewer.build_app_config); replaces the\n"
        f" * app-config.js of {OHIF_PACKAGE}@{OHIF_VERSION}. RESEARCH ONLY - NOT FOR CLINICAL USE. */\n"
        f"window.config = {json.dumps(config, indent=2)};\n"
        f"const unirgProtocols = {json.dumps(draft_hanging_protocols(), indent=2)};\n"
        "window.config.extensions.push({\n"
        '  id: "@unirg/extension-draft-review",\n'
        "  getHangingProtocolModule: () => unirgProtocols.map(p => ({ name: p.id, protocol: p })),\n"
        "});\n"
        "(() => {\n"
        '  const style = document.createElement("style");\n'
        '  style.id = "unirg-viewer-css";\n'
        f"  style.textContent = {json.dumps(VIEWER_CSS)};\n"
        "  document.head.appendChild(style);\n"
        "})();\n"
    )


def study_viewer_url(
    base: str, study_uid: str, sr_series_uid: str | None = None, *,
    prior_study_uid: str | None = None, whole_study: bool = True,
) -> str:
    """The OHIF link that opens ``study_uid`` on its draft SR series ``sr_series_uid``.

    By default the draft-review layout: the study's frontal radiograph left and the draft right
    (``hangingProtocolId``), the whole study in OHIF's study browser; with ``prior_study_uid`` that
    study loads too and its frontal radiograph goes under the current one. ``whole_study=False``
    loads the draft's series only (``SeriesInstanceUIDs``), in OHIF's default layout.

    >>> study_viewer_url("http://127.0.0.1:3000/", "1.2.3", "1.2.3.4", whole_study=False)
    'http://127.0.0.1:3000/viewer?StudyInstanceUIDs=1.2.3&SeriesInstanceUIDs=1.2.3.4'
    >>> study_viewer_url("h:1", "1.2", "1.2.4", prior_study_uid="1.1")
    'h:1/viewer?StudyInstanceUIDs=1.2,1.1&initialSeriesInstanceUID=1.2.4&hangingProtocolId=@unirg/draft-review-prior'
    """
    params = {"StudyInstanceUIDs": study_uid}
    if sr_series_uid and not whole_study:
        params["SeriesInstanceUIDs"] = sr_series_uid
    elif sr_series_uid:
        if prior_study_uid and prior_study_uid != study_uid:
            params["StudyInstanceUIDs"] = f"{study_uid},{prior_study_uid}"  # OHIF's order: current first
        params["initialSeriesInstanceUID"] = sr_series_uid
        params["hangingProtocolId"] = DRAFT_PRIOR_PROTOCOL if "," in params["StudyInstanceUIDs"] else DRAFT_PROTOCOL
    return f"{base.rstrip('/')}/viewer?{urllib.parse.urlencode(params, safe=',@/')}"
