"""Stage 2, gate: thresholds and sides (``config``), the stored reference (``baseline``), the checks
against it (``compare``) and the run over a checkpoint or a run dir (``runner``). Imports ``measure`` and
``common``."""
