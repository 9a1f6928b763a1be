"""Serving a steered model: the OpenAI-compatible server, its generation worker, and the chat
session."""
