"""unirg's Orthanc plugin (Debian's Orthanc 1.10 + orthanc-python 4.0): registration and dispatch only.

RESEARCH ONLY - NOT FOR CLINICAL USE. Callbacks only note and enqueue; drafts are made by unirg's
worker process (``unirg orthanc``, or ``unirg orthanc --worker-only`` next to an existing Orthanc).

Orthanc configuration (``unirg orthanc`` writes it; see orthanc/orthanc.json.template)::

    "Plugins"      : [".../libOrthancPython.so", ".../libOrthancDicomWeb.so"],
    "PythonScript" : "/path/to/unirg/orthanc/unirg_plugin.py",      (plugin 4.0 syntax)
    "Unirg"        : {"ConfigFile": "/etc/unirg/unirg.toml",          (optional)
                      "Settings": {"listener": {"data_dir": "..."}},  (optional, applied last)
                      "SitePackages": ["/path/to/unirg/.venv/lib/python3.11/site-packages"]}

The logic lives in ``unirg.plugin.orthanc`` (``events``, ``recorder``, ``rest``, ``routes``), which never
imports ``orthanc``.
"""

import json
import os
import site
import sys

import orthanc

_CONFIGURATION = json.loads(orthanc.GetConfiguration())
_UNIRG = _CONFIGURATION.get("Unirg") or {}


def _prepend_site_packages():
    """The one sys.path change: unirg's venv before Debian's packages (.pth files processed, so the
    editable install's finder works). Default: the .venv next to this checkout's orthanc/ folder."""
    here = os.path.dirname(os.path.abspath(__file__))
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    folders = _UNIRG.get("SitePackages") or [os.path.join(here, "..", ".venv", "lib", version, "site-packages")]
    before = list(sys.path)
    for folder in folders:
        site.addsitedir(os.path.abspath(folder))
    sys.path[:] = [p for p in sys.path if p not in before] + before


_prepend_site_packages()

from unirg.plugin.orthanc.events import OrthancPlugin  # noqa: E402
from unirg.plugin.orthanc.rest import OrthancLogHandler, PluginRest  # noqa: E402
from unirg.plugin.orthanc.routes import PATTERNS, Routes  # noqa: E402

plugin = OrthancPlugin.from_orthanc_configuration(_CONFIGURATION, PluginRest(orthanc))
# POST routes (rerun) refuse to work unless Orthanc authenticates HTTP requests.
routes = Routes(plugin, authentication=bool(_CONFIGURATION.get("AuthenticationEnabled")))
OrthancLogHandler.install(orthanc, plugin.config.logging.level)
_CHANGE_NAMES = {int(getattr(orthanc.ChangeType, n)): n for n in dir(orthanc.ChangeType) if n.isupper()}


def on_stored_instance(dicom, instance_id):
    plugin.on_stored_instance(instance_id, dicom.GetInstanceRemoteAet())


def on_change(change_type, level, resource_id):
    plugin.on_change(_CHANGE_NAMES.get(int(change_type), ""), resource_id)


def on_rest(output, uri, **request):
    answer = routes.handle(request.get("method", "GET"), uri, request.get("get"), request.get("body") or b"",
                           request.get("headers"))
    if answer.status == 200:
        output.AnswerBuffer(answer.body, answer.content_type)
    elif answer.status == 405:
        output.SendMethodNotAllowed(answer.allow or "GET")
    else:
        output.SetHttpHeader("Content-Type", answer.content_type)
        output.SendHttpStatus(answer.status, answer.body.decode("utf-8"), len(answer.body))  # (int, str, size)


orthanc.RegisterOnStoredInstanceCallback(on_stored_instance)
orthanc.RegisterOnChangeCallback(on_change)
for _pattern in PATTERNS:
    orthanc.RegisterRestCallback(_pattern, on_rest)
