"""Turn raw photos + FLAME fits of the MICA source datasets into the training layout
(``python -m datasets.creation.generate``; see ``pipeline.py`` and ``readers.py``)."""
