"""The model organism: its training recipe and stages, and the evaluation set it is studied on."""
