"""DICOMweb archives: QIDO-RS polling, WADO-RS images and priors, STOW-RS write-back (on ``dicomweb-client``)."""
