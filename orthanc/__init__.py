"""Files Orthanc reads, shipped as package data: ``unirg_plugin.py`` (the Python plugin's entry
script, run by Orthanc's embedded interpreter, never imported here) and ``orthanc.json.template``.
Find them with ``unirg.plugin.home.orthanc_file(name)``."""
