"""Stage two: tables, statistics in words, plots and reports recomputed from records alone."""
