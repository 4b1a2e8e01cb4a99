"""``palate serve``: an OpenAI-compatible chat endpoint for any model palate loads (see :mod:`.app`)."""
