"""BERT: separate q/k/v Linears; the MLM decoder is tied to the word embeddings."""
from typing import Any, cast

import torch

from .base import Architecture, QuerySlices

# `attn` and `config` are transformers modules and configs whose attributes are set per model class: typed `Any`.


def _query_slices(attn: Any) -> QuerySlices:
    return [(attn.query.weight, slice(None))] + ([(attn.query.bias, slice(None))] if attn.query.bias is not None else [])


def _query_key(attn: Any, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return attn.query.forward(hidden), attn.key.forward(hidden)  # `.forward`: no hooks fire


def _intermediate_size(config: Any) -> int:
    return cast(int, config.intermediate_size)


BERT = Architecture(
    model_type="bert",
    model_classes=("BertForMaskedLM", "BertModel", "BertForSequenceClassification"),
    intermediate_size=_intermediate_size,
    intermediate_size_attr="intermediate_size",
    attention_classes=("BertSelfAttention", "BertCrossAttention"),
    query_slices=_query_slices,
    query_key=_query_key,
    tied_readout_norms={"BertForMaskedLM": "cls.predictions.transform.LayerNorm"},
    embeddings_feed_norm=True,
    blocks="layer",
    residual_outputs=("attention.output.dense", "crossattention.output.dense", "output.dense"),  # before the add+norm
    pre_norm=False,
)
