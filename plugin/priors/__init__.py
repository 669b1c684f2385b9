"""Prior studies: one core (:mod:`.core`) and an adapter per source (:mod:`.dimse` Q/R, :mod:`.orthanc` REST).

The prior-report policy is :mod:`unirg.plugin.prior_policy`. The adapters are imported from their modules
(``unirg.plugin.priors.dimse``, ``unirg.plugin.priors.orthanc``); the core's names are here.
"""

from unirg.plugin.prior_policy import choose_report
from unirg.plugin.priors.core import PriorSource, PriorStudy, PriorsResult, PriorsUnavailable, current_patient

__all__ = ["PriorSource", "PriorStudy", "PriorsResult", "PriorsUnavailable", "current_patient", "choose_report"]
