"""Generation engines beside transformers: vLLM with per-request steering.

:mod:`~steerlab.engine.requests` is the steering a request carries (JSON terms, resolved into
edit groups), :mod:`~steerlab.engine.graph_edits` holds every request's edits in static tables
that a compiled forward pass reads, each token taking its own request's (plain torch, no vLLM),
and the ``vllm_*`` modules bind those to vLLM through its own extension points (the worker
class, a logits-processor plugin that checks requests up front) and drive it from steerlab.
Only those modules import vLLM.
"""
