"""Serving workloads (decode and prefill): the batch they put through the engine, the KV cache they
hold, and the rules a serving scenario obeys. Pure functions of the scenario.

decode: each GPU holds `batch_per_gpu` sequences. A step runs one forward pass over 1 +
mtp_draft_tokens new tokens of each (the next token and the multi-token-prediction drafts it
verifies); the MoE layers see batch x (1 + drafts) tokens per GPU. With two-batch overlap the batch
runs as two micro-batches of half the sequences, whose chains share the GPU's streams as the
engine's micro-batches always do: one's attention and shared experts run while the other's
dispatch or combine is in flight (SGLang TBO, DeepSeek's decode schedule). Without it one
micro-batch holds the whole batch.

Attention layout: parallel.tp_size = 1 is DP-attention (each GPU attends over its own sequences,
SGLang's --enable-dp-attention); tp_size = t > 1 is TP-attention: a TP group of t GPUs serves t x
batch_per_gpu sequences with 1/t of the heads on each GPU, sequence-parallel (each GPU routes its
own batch_per_gpu sequences' tokens to the experts). MLA's latent KV has no head dimension, so every
GPU of the TP group holds and reads the latents of all t x batch sequences; GQA splits its KV heads.

prefill (serving): a forward pass over tokens_per_gpu tokens per micro-batch of prompts seq_len
long; with chunked_prefill_tokens a pass takes that many tokens per GPU and a longer prompt needs
ceil(seq_len / chunk) passes (its time to first token).
"""
from __future__ import annotations

import math

from simulator.errors import ScenarioError

DECODE_KEYS = ("batch_per_gpu", "context_len", "context_len_distribution", "kv_cache_dtype", "mtp_draft_tokens",
               "accepted_tokens_per_step")
KV_BYTES = {"bf16": 2, "fp8": 1}


def tokens_per_sequence(w) -> int:
    """Tokens of each sequence a decode step puts through the model: the next one and the MTP drafts."""
    return 1 + w.mtp_draft_tokens


def derive_serving(sections: dict, workload_data: dict, pipeline_data: dict):
    """The workload and pipeline sections a serving scenario runs: decode's micro-batches and
    tokens per GPU from batch_per_gpu (and two-batch overlap); prefill's from
    chunked_prefill_tokens and two-batch overlap. Training keeps its sections."""
    w, pipe = sections["workload"], sections["pipeline"]
    written = set(workload_data)
    if w.mode == "train":
        for key in (*DECODE_KEYS, "two_batch_overlap", "chunked_prefill_tokens"):
            if key in written:
                raise ScenarioError(f"workload.{key}", workload_data[key],
                                    "applies to serving (workload.mode decode or prefill), not train")
        return w, pipe
    if w.mode == "prefill":
        for key in DECODE_KEYS:
            if key in written:
                raise ScenarioError(f"workload.{key}", workload_data[key], "applies to workload.mode=decode")
        update = {}
        if w.two_batch_overlap:
            if "micro_batches" in written and w.micro_batches != 2:
                raise ScenarioError("workload.micro_batches", w.micro_batches,
                                    "two-batch overlap runs two micro-batches; give one or the other")
            update["micro_batches"] = 2
        if w.chunked_prefill_tokens is not None:
            if "tokens_per_gpu" in written:
                raise ScenarioError("workload.tokens_per_gpu", w.tokens_per_gpu,
                                    "is derived from workload.chunked_prefill_tokens; give one or the other")
            mbs = update.get("micro_batches", w.micro_batches)
            if w.chunked_prefill_tokens % mbs:
                raise ScenarioError("workload.chunked_prefill_tokens", w.chunked_prefill_tokens,
                                    f"a pass's tokens split over the {mbs} micro-batches: must be a multiple of {mbs}")
            update["tokens_per_gpu"] = w.chunked_prefill_tokens // mbs
        return (w.model_copy(update=update) if update else w), pipe
    # decode
    if "chunked_prefill_tokens" in written:
        raise ScenarioError("workload.chunked_prefill_tokens", w.chunked_prefill_tokens,
                            "applies to workload.mode=prefill")
    for key in ("tokens_per_gpu", "micro_batches"):
        if key in written:
            raise ScenarioError(f"workload.{key}", workload_data[key], "is derived in decode from "
                                "workload.batch_per_gpu (and two_batch_overlap); give batch_per_gpu")
    if w.accepted_tokens_per_step > tokens_per_sequence(w):
        raise ScenarioError("workload.accepted_tokens_per_step", w.accepted_tokens_per_step,
                            f"a step keeps at most the 1 + mtp_draft_tokens={w.mtp_draft_tokens} tokens it verifies")
    mbs = 2 if w.two_batch_overlap else 1
    if w.batch_per_gpu % mbs:
        raise ScenarioError("workload.batch_per_gpu", w.batch_per_gpu,
                            "two-batch overlap splits the batch into two equal micro-batches: must be even")
    tokens = w.batch_per_gpu // mbs * tokens_per_sequence(w)
    # DeepEP's low-latency kernels send a micro-batch in one call: one chunk unless the user asks for more
    pipe = pipe if "chunks" in pipeline_data else pipe.model_copy(update={"chunks": 1})
    return w.model_copy(update={"micro_batches": mbs, "tokens_per_gpu": tokens}), pipe


def sequences_per_micro_batch(s) -> int:
    """Decode: the sequences one micro-batch holds on a GPU (its own, before TP)."""
    return s.workload.batch_per_gpu // s.workload.micro_batches


def kv_layer_tokens(s) -> float:
    """KV tokens one sequence of mean length holds, summed over the model's layers in scope (a
    sliding-window layer keeps at most its window; one MoE layer alone has no attention)."""
    m, c = s.model, s.workload.context_len
    if s.workload.scope == "moe_layer":
        return 0.0
    w = m.attention.sliding_window
    return float(sum(min(c, w) if m.is_sliding(layer) else c for layer in range(m.num_layers)))


def kv_bytes_per_token_layer(s) -> float:
    """KV-cache bytes one token of one layer takes on a GPU: MLA's latent and rotary key (whole on
    every TP rank); GQA's keys and values of this rank's KV heads."""
    a, nbytes, t = s.model.attention, KV_BYTES[s.workload.kv_cache_dtype], s.parallel.tp_size
    if a.kind == "mla":
        return (a.kv_lora_rank + a.qk_rope_head_dim) * nbytes
    return 2 * (a.num_kv_heads // t) * a.head_dim * nbytes


def kv_cache_bytes_per_sequence(s) -> float:
    """KV bytes one more sequence of the GPU's batch adds on the GPU (with TP-attention and MLA,
    each of the t ranks holds the latents of t sequences per batch_per_gpu)."""
    return s.parallel.tp_size * kv_layer_tokens(s) * kv_bytes_per_token_layer(s)


def kv_cache_bytes(s, batch_per_gpu: int | None = None) -> float:
    """The KV cache a serving GPU holds. Decode: its sequences at the mean context length (SGLang
    sizes its token pool by total tokens, so a uniform spread of lengths needs the mean's worth).
    Prefill: the KV its pass writes for every layer, or with chunked prefill the whole prompt's
    so far (max(tokens per pass, seq_len) tokens)."""
    w = s.workload
    if w.mode == "prefill":
        layers = 0 if w.scope == "moe_layer" else s.model.num_layers
        tokens = max(w.tokens_per_gpu * w.micro_batches, w.seq_len if w.chunked_prefill_tokens else 0)
        return s.parallel.tp_size * tokens * layers * kv_bytes_per_token_layer(s)
    if w.mode != "decode":
        return 0.0
    b = w.batch_per_gpu if batch_per_gpu is None else batch_per_gpu
    return b * kv_cache_bytes_per_sequence(s)


def prefill_passes(s) -> int:
    """Forward passes one prompt of seq_len tokens needs when a pass takes tokens_per_gpu x
    micro_batches tokens per GPU (chunked prefill); 1 when whole prompts fit a pass."""
    per_pass = s.workload.tokens_per_gpu * s.workload.micro_batches
    return max(1, math.ceil(s.workload.seq_len / per_pass))


def check_serving(s) -> None:
    """Layout rules of serving scenarios."""
    w, par = s.workload, s.parallel
    if w.mode == "train":
        return
    if par.pp_size > 1 and w.mode == "decode":
        raise ScenarioError("parallel.pp_size", par.pp_size, "decode is simulated with DP- or TP-attention and EP "
                            "(the large-EP serving layouts); pipeline-parallel decode is not simulated")
