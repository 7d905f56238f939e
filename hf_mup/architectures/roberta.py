"""RoBERTa: BERT's encoder (the same attention modules), its MLM decoder `lm_head.decoder` tied to the word embeddings
and fed by `lm_head.layer_norm`; the classifier's readout is `classifier.out_proj`."""
from dataclasses import replace

from .bert import BERT

ROBERTA = replace(
    BERT,
    model_type="roberta",
    model_classes=("RobertaForMaskedLM", "RobertaModel", "RobertaForSequenceClassification"),
    attention_classes=("RobertaSelfAttention", "RobertaCrossAttention"),
    tied_readout_norms={"RobertaForMaskedLM": "lm_head.layer_norm"},
)
