"""unirg inside and beside Orthanc: the plugin's recorder and routes, the REST source, the server launcher."""
