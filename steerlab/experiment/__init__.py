"""Experiments: the YAML config of `steerlab run`, its runner (stage one), run directories,
compute accounting, the experiment report, the demo."""
