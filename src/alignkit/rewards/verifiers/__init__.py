"""Verifiers: reward functions that check a completion against a gold answer (``math``) or unit tests (``code``)."""
