"""The engine: submit, watch, run, resume and cancel as a library API, the run folder and its record."""
