"""Stage 3, outputs of a verdict: the HTML report (``report``, ``report_data``, ``plots``, templates/), the
results JSON (``results``, schemas/), the markdown summary and annotations (``ci_summary``), the history
page (``history``), ``drift-suite compare`` (``diff``) and the CI outputs of one run (``publish``). Imports
``gate``, ``measure`` and ``common``; nothing of ``train``."""
