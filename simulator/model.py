"""The model being trained or served, and its FLOP count (FLOP_CONVENTION, quoted in summary.json)."""
from __future__ import annotations

from dataclasses import dataclass

# Provenance text: summary.json's provenance.flop_convention is this, whitespace collapsed.
FLOP_CONVENTION = """The model being trained or served, and its FLOP count.

FLOP convention (stated in summary.json's provenance and the README): a multiply-add is 2 FLOP;
per token and layer, forward:
  attention projections  2 x (their weight count)
      MLA: H*q_lora + q_lora*heads*(nope+rope) + H*(kv_lora+rope) + kv_lora*heads*(nope+v) + heads*v*H
      GQA: H*heads*d + 2*H*kv_heads*d + heads*d*H
  attention core         causal, mean context c = (seq_len+1)/2 (sliding-window layers: the mean
                         of min(position, window)); decode: c = the KV length, context_len
                         (capped at the window):
      MLA: 2*heads*(nope+rope)*c + 2*heads*v*c;   GQA: 4*heads*d*c
  router                 2*H*E
  routed experts         top_k * 6*H*I   (SwiGLU: gate, up, down)
  shared experts         num_shared * 6*H*I
  dense FFN layers       6*H*I_dense (instead of router and experts)
Training counts 3x the forward (backward = 2x). Embedding and LM head are outside the layers in
scope (a pipeline stage) and are not counted, unless workload.embedding_and_head adds them: the
LM head then counts 2*H*vocab (the embedding lookup is no FLOP).
"""


@dataclass(frozen=True, slots=True)
class AttentionSpec:
    kind: str  # "mla" | "gqa"
    num_heads: int
    num_kv_heads: int = 0
    head_dim: int = 0
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    sliding_window: int = 0  # tokens a sliding-window layer attends to; 0: every layer is full
    full_attention_interval: int = 1  # with a window: layer l is full when (l + 1) % interval == 0

    def projection_params(self, hidden: int) -> int:
        if self.kind == "mla":
            qk = self.qk_nope_head_dim + self.qk_rope_head_dim
            q = (hidden * self.q_lora_rank + self.q_lora_rank * self.num_heads * qk
                 if self.q_lora_rank else hidden * self.num_heads * qk)
            kv = (hidden * (self.kv_lora_rank + self.qk_rope_head_dim)
                  + self.kv_lora_rank * self.num_heads * (self.qk_nope_head_dim + self.v_head_dim))
            return q + kv + self.num_heads * self.v_head_dim * hidden
        d = self.head_dim
        return hidden * self.num_heads * d + 2 * hidden * self.num_kv_heads * d + self.num_heads * d * hidden

    def projection_params_per_rank(self, hidden: int, tp: int) -> int:
        """Projection weights on one of `tp` tensor-parallel ranks: heads are split; MLA's
        down-projections (hidden -> latents) are duplicated on every rank."""
        if tp == 1:
            return self.projection_params(hidden)
        if self.kind == "mla":
            down = hidden * (self.q_lora_rank + self.kv_lora_rank + self.qk_rope_head_dim)
            return down + (self.projection_params(hidden) - down) // tp
        return self.projection_params(hidden) // tp

    def mean_context(self, seq_len: int, sliding: bool = False) -> float:
        """Keys a query attends to, averaged over the causal sequence (capped at the window)."""
        w = self.sliding_window if sliding else 0
        if w <= 0 or w >= seq_len:
            return (seq_len + 1) / 2.0
        return (w * (w + 1) / 2.0 + (seq_len - w) * w) / seq_len

    def core_flop_per_token(self, seq_len: int, sliding: bool = False, context: float | None = None) -> float:
        """Per query token; `context`: the keys it attends to (decode), else the causal mean."""
        if context is None:
            ctx = self.mean_context(seq_len, sliding)
        else:
            ctx = min(context, self.sliding_window) if sliding and self.sliding_window > 0 else context
        if self.kind == "mla":
            qk = self.qk_nope_head_dim + self.qk_rope_head_dim
            return 2.0 * self.num_heads * qk * ctx + 2.0 * self.num_heads * self.v_head_dim * ctx
        return 4.0 * self.num_heads * self.head_dim * ctx

    def core_bytes_per_token(self) -> float:
        """HBM bytes per token of the fused attention kernel: Q, K, V read and O written in BF16."""
        if self.kind == "mla":
            qk = self.qk_nope_head_dim + self.qk_rope_head_dim
            return 2.0 * self.num_heads * (2 * qk + 2 * self.v_head_dim)
        return 2.0 * (2 * self.num_heads + 2 * self.num_kv_heads) * self.head_dim


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    hidden_size: int
    moe_intermediate_size: int
    num_experts: int
    top_k: int
    num_shared_experts: int
    num_layers: int
    num_dense_layers: int
    dense_intermediate_size: int
    vocab_size: int
    attention: AttentionSpec
    num_expert_groups: int = 1  # group-limited routing: experts in equal groups (HF n_group)
    num_groups_per_token: int = 1  # a token's experts lie in at most this many groups (HF topk_group)

    @property
    def num_moe_layers(self) -> int:
        return self.num_layers - self.num_dense_layers

    @property
    def expert_params(self) -> int:
        return 3 * self.hidden_size * self.moe_intermediate_size

    def attention_flop_per_token(self, seq_len: int, sliding: bool = False, context: float | None = None) -> float:
        return (2.0 * self.attention.projection_params(self.hidden_size)
                + self.attention.core_flop_per_token(seq_len, sliding, context))

    def is_sliding(self, layer: int) -> bool:
        a = self.attention
        return a.sliding_window > 0 and (layer + 1) % a.full_attention_interval != 0

    @property
    def num_sliding_layers(self) -> int:
        return sum(self.is_sliding(layer) for layer in range(self.num_layers))

    def router_flop_per_token(self) -> float:
        return 2.0 * self.hidden_size * self.num_experts

    def routed_flop_per_token(self) -> float:
        return self.top_k * 2.0 * self.expert_params

    def shared_flop_per_token(self) -> float:
        return self.num_shared_experts * 2.0 * self.expert_params

    def dense_ffn_flop_per_token(self) -> float:
        return 6.0 * self.hidden_size * self.dense_intermediate_size

    def moe_block_flop_per_token(self) -> float:
        """Router + routed experts + shared experts of one MoE layer, forward."""
        return self.router_flop_per_token() + self.routed_flop_per_token() + self.shared_flop_per_token()

    def vocab_params(self, tp: int = 1) -> int:
        """The embedding table, or the (untied) LM head, on one of `tp` vocab-parallel ranks."""
        return self.vocab_size * self.hidden_size // tp

    def lm_head_flop_per_token(self) -> float:
        return 2.0 * self.hidden_size * self.vocab_size

    def forward_flop_per_token(self, seq_len: int, scope: str, head: bool = False,
                               context: float | None = None) -> float:
        """context: decode's KV length (each new token attends to all of it); None: causal over seq_len."""
        if scope == "moe_layer":
            return self.moe_block_flop_per_token()
        if head:
            return self.forward_flop_per_token(seq_len, scope, context=context) + self.lm_head_flop_per_token()
        attention = self.num_layers * self.attention_flop_per_token(seq_len, context=context)
        if self.num_sliding_layers:
            sliding = self.num_sliding_layers
            attention = ((self.num_layers - sliding) * self.attention_flop_per_token(seq_len, context=context)
                         + sliding * self.attention_flop_per_token(seq_len, sliding=True, context=context))
        return (attention + self.num_dense_layers * self.dense_ffn_flop_per_token()
                + self.num_moe_layers * self.moe_block_flop_per_token())

    def dense_layer_params(self, moe: bool, attention: bool = True, tp: int = 1) -> int:
        """Dense (non-expert) parameters of one layer on one of `tp` tensor-parallel ranks:
        attention projections (heads split), and the router and shared experts of an MoE layer
        (replicated) or the FFN of a dense one (split). Norms are not counted."""
        h = self.hidden_size
        attn = self.attention.projection_params_per_rank(h, tp) if attention else 0
        if moe:
            return attn + h * self.num_experts + self.num_shared_experts * self.expert_params
        return attn + 3 * h * self.dense_intermediate_size // tp

    def replicated_params(self, scope: str) -> int:
        """Parameters every GPU of an EP group holds: attention, dense FFN, router, shared experts."""
        if scope == "moe_layer":
            return self.dense_layer_params(moe=True, attention=False)
        return (self.num_dense_layers * self.dense_layer_params(moe=False)
                + self.num_moe_layers * self.dense_layer_params(moe=True))
