"""PoS-BERT: a ``transformers`` BERT encoder with an MLM head on gathered masked positions and an NSP head.

A plain ``nn.Module`` (no Lightning, no Hydra). The MLM head is applied only to the hidden states of the
masked positions (``masked_positions`` are flat indices into ``batch * seq_len``), so vocabulary logits are
never computed for unmasked tokens; ``transformers.BertForPreTraining`` computes them at every position.
The decoder of the MLM head is tied to the word embeddings (``F.linear`` with the embedding matrix).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertModel
from transformers.models.bert.modeling_bert import BertPredictionHeadTransform

from models.compile import compile_in_place


class PosBert(nn.Module):
    """BERT encoder (``transformers.BertModel``, SDPA attention) + MLM head + NSP head.

    Args mirror ``transformers.BertConfig``; ``compile=True`` compiles the encoder (``self.bert``) in place with
    ``torch.compile`` (see :func:`compile_in_place`). ``vocab_size=None`` sizes the vocabulary to the tokenizer: the
    model starts with a placeholder and the pre-training module calls :meth:`resize_token_embeddings` with
    the tokenizer's length once the data is set up (``size_to_tokenizer``), so no output row lacks a target.
    """

    def __init__(
        self,
        vocab_size: int | None = None,
        hidden_size: int = 128,
        num_hidden_layers: int = 2,
        num_attention_heads: int = 2,
        intermediate_size: int = 512,
        max_position_embeddings: int = 128,
        type_vocab_size: int = 2,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.1,
        initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-12,
        pad_token_id: int = 0,
        attn_implementation: str = "sdpa",
        compile: bool = False,
    ):
        super().__init__()
        self.size_to_tokenizer = vocab_size is None
        vocab_size = 8 if vocab_size is None else int(vocab_size)
        self.config = BertConfig(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            num_hidden_layers=num_hidden_layers,
            num_attention_heads=num_attention_heads,
            intermediate_size=intermediate_size,
            max_position_embeddings=max_position_embeddings,
            type_vocab_size=type_vocab_size,
            hidden_act=hidden_act,
            hidden_dropout_prob=hidden_dropout_prob,
            attention_probs_dropout_prob=attention_probs_dropout_prob,
            initializer_range=initializer_range,
            layer_norm_eps=layer_norm_eps,
            pad_token_id=pad_token_id,
            attn_implementation=attn_implementation,
        )
        self.bert = BertModel(self.config, add_pooling_layer=True)
        self.mlm_transform = BertPredictionHeadTransform(self.config)
        self.mlm_bias = nn.Parameter(torch.zeros(vocab_size))
        self.nsp_head = nn.Linear(hidden_size, 2)
        for module in (self.mlm_transform.dense, self.nsp_head):
            nn.init.normal_(module.weight, std=initializer_range)
            nn.init.zeros_(module.bias)
        self.compiled = bool(compile)
        if self.compiled:
            compile_in_place(self.bert)

    @property
    def max_positions(self) -> int:
        return self.config.max_position_embeddings

    @property
    def vocab_size(self) -> int:
        return self.bert.embeddings.word_embeddings.num_embeddings

    def resize_token_embeddings(self, vocab_size: int) -> None:
        """Resize the word embeddings (and the tied MLM decoder) to ``vocab_size`` rows."""
        if vocab_size == self.vocab_size:
            return
        self.bert.resize_token_embeddings(vocab_size, mean_resizing=False)
        bias = torch.zeros(vocab_size, dtype=self.mlm_bias.dtype, device=self.mlm_bias.device)
        n = min(vocab_size, self.mlm_bias.numel())
        bias[:n] = self.mlm_bias.data[:n]
        self.mlm_bias = nn.Parameter(bias)
        self.config.vocab_size = vocab_size

    def last_shared_layer(self) -> nn.Module:
        """The last encoder layer: the shared parameters gradient-based balancers differentiate."""
        return self.bert.encoder.layer[-1]

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits of already-gathered hidden states ``(M, H) -> (M, V)``."""
        h = self.mlm_transform(hidden)
        return F.linear(h, self.bert.embeddings.word_embeddings.weight, self.mlm_bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        masked_positions: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Encode once; return ``sequence`` (B, L, H), ``pooled`` (B, H), ``nsp_logits`` (B, 2) and, when
        ``masked_positions`` (flat indices into B*L) is given, ``mlm_logits`` (M, V) of those positions and
        ``rows`` (M + B, H): the hidden states the heads read, the M masked positions then the B [CLS]
        positions. The MLM head reads ``rows[:M]`` and the pooler ``rows[M:]``, each row alone, so the
        gradient of a loss w.r.t. ``rows`` is each masked word's (and NSP's) own, row by row."""
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        seq = out.last_hidden_state
        result = {"sequence": seq}
        if masked_positions is None:
            cls = seq[:, 0]
        else:
            b, length, width = seq.shape
            starts = torch.arange(b, device=seq.device) * length
            rows = seq.reshape(-1, width).index_select(0, torch.cat([masked_positions, starts]))
            cls = rows[masked_positions.numel() :]
            result["rows"] = rows
            result["mlm_logits"] = self.mlm_logits(rows[: masked_positions.numel()])
        pooled = self.bert.pooler(cls[:, None])  # BertPooler reads position 0: the same as out.pooler_output
        result["pooled"] = pooled
        result["nsp_logits"] = self.nsp_head(pooled)
        return result
