"""The feedback loop's capture: a signed final report meets unirg's draft of the same study.

* :mod:`.capture` - which SR is the final (the prior-report policy), which job is the draft, the pending
  table the intakes note report arrivals in, and :class:`~.capture.FeedbackPairer`, which the workers run;
* :mod:`.summary` - pure arithmetic over the pairs (``unirg feedback``, the status page);
* :mod:`.dicomweb` - the DICOMweb watcher's part (a drafted study that shows a new SR series).

The pairs themselves live in ``unirg.model.feedback`` (the table the trainer's export reads).
"""
