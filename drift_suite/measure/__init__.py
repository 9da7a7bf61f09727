"""Stage 1, measure: load a model (``models``, ``placement``), build the conversations (``personas``,
``conversations``), generate and capture in one pass (``decode``, ``extract``), reduce per persona and cache
(``measurement``, ``cache``), gather across processes (``distributed``). Imports only ``common``."""
