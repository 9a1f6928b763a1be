"""The data layer: preference pairs and multiple-choice items read from files, the registry of
named datasets, and the one data choice (DataSpec)."""
