"""The evaluation layer: likelihood tasks, side effects, open-ended generation, refusal, dataset
inspection, and judges."""
