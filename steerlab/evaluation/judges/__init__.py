"""Judges of open-ended answers: the protocol they share, the reference-similarity and LLM
judges, head-to-head verdicts and ratings, blinded human rating."""
