"""Human feedback: the labeling web app (``palate label``), agreement statistics and simulated panels.

Nothing in this package imports torch: the server must start in about a second on a machine without
a GPU stack. Modules: ``db`` (schema, engine, migrations), ``auth`` (hashing, sessions, CSRF),
``importing`` (projects from prompt/candidate files), ``assignment`` (who labels what next),
``app`` (FastAPI routes), ``export`` (Preference/Ranking/Rating JSONL, CSV), ``agreement`` (κ, α,
Dawid–Skene), ``stats`` (dashboard numbers), ``simulate`` (rubric-driven simulated labelers).
"""
