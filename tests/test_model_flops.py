"""The FLOP count behind MFU, checked against closed forms written out by hand.

Every expected number here is built from the published architecture numbers, written as literals,
following simulator.model.FLOP_CONVENTION (multiply-add = 2 FLOP; attention projections 2 x their
weights; causal core over the mean context (seq_len + 1) / 2; router 2*H*E; SwiGLU experts 6*H*I
per expert per token; dense FFN 6*H*I_dense; training = 3 x forward; no embedding / LM head).
None of them calls the model's own FLOP methods.
"""
import pytest

from simulator.engine import simulate
from simulator.metrics import TRAIN_FLOP_FACTOR, step_flop, summarize
from tests.conftest import make_scenario

BIG_HBM = {"hbm_gb": 100000}  # lets a full 671B model pass the static-memory rule on 8 GPUs


def deepseek_v3():
    return make_scenario(model={"preset": "deepseek-v3"}, hardware=BIG_HBM).model


def mixtral():
    return make_scenario(model={"preset": "mixtral-8x7b"}, hardware=BIG_HBM).model


# --- DeepSeek-V3 (deepseek-ai/DeepSeek-V3 config_671B.json; DeepSeek-V3 technical report) --------
DS_H = 7168
DS_LAYERS = 61
DS_DENSE_LAYERS = 3
DS_MOE_LAYERS = 61 - 3
DS_DENSE_I = 18432
DS_EXPERTS = 256
DS_TOP_K = 8
DS_SHARED = 1
DS_MOE_I = 2048
DS_HEADS = 128
DS_Q_LORA = 1536
DS_KV_LORA = 512
DS_NOPE = 128
DS_ROPE = 64
DS_V = 128


def ds_attention_weights():
    """MLA projection weights of one layer."""
    q_down = DS_H * DS_Q_LORA                                # 7168 x 1536
    q_up = DS_Q_LORA * DS_HEADS * (DS_NOPE + DS_ROPE)        # 1536 x 128*192
    kv_down = DS_H * (DS_KV_LORA + DS_ROPE)                  # 7168 x (512 + 64), shared rope key included
    kv_up = DS_KV_LORA * DS_HEADS * (DS_NOPE + DS_V)         # 512 x 128*(128 + 128)
    out = DS_HEADS * DS_V * DS_H                             # 128*128 x 7168
    return q_down + q_up + kv_down + kv_up + out


def ds_attention_core_flop(seq_len):
    ctx = (seq_len + 1) / 2
    scores = 2 * DS_HEADS * (DS_NOPE + DS_ROPE) * ctx        # q . k over 192 dims
    weighted_v = 2 * DS_HEADS * DS_V * ctx                   # p . v over 128 dims
    return scores + weighted_v


def ds_moe_block_flop():
    router = 2 * DS_H * DS_EXPERTS
    routed = DS_TOP_K * 6 * DS_H * DS_MOE_I
    shared = DS_SHARED * 6 * DS_H * DS_MOE_I
    return router + routed + shared


def ds_forward_flop(seq_len):
    attention = DS_LAYERS * (2 * ds_attention_weights() + ds_attention_core_flop(seq_len))
    dense = DS_DENSE_LAYERS * 6 * DS_H * DS_DENSE_I
    moe = DS_MOE_LAYERS * ds_moe_block_flop()
    return attention + dense + moe


def ds_active_params():
    """Parameters one token touches in the 61 layers: no embedding, no LM head, no norms."""
    attention = DS_LAYERS * ds_attention_weights()
    dense = DS_DENSE_LAYERS * 3 * DS_H * DS_DENSE_I
    per_moe_layer = DS_H * DS_EXPERTS + DS_SHARED * 3 * DS_H * DS_MOE_I + DS_TOP_K * 3 * DS_H * DS_MOE_I
    return attention + dense + DS_MOE_LAYERS * per_moe_layer


# --- Mixtral-8x7B (mistralai/Mixtral-8x7B-v0.1 config.json) -----------------------------------
MX_H = 4096
MX_LAYERS = 32
MX_EXPERTS = 8
MX_TOP_K = 2
MX_I = 14336
MX_HEADS = 32
MX_KV_HEADS = 8
MX_HEAD_DIM = 128


def mx_attention_weights():
    q = MX_H * MX_HEADS * MX_HEAD_DIM
    k = MX_H * MX_KV_HEADS * MX_HEAD_DIM
    v = MX_H * MX_KV_HEADS * MX_HEAD_DIM
    o = MX_HEADS * MX_HEAD_DIM * MX_H
    return q + k + v + o


def mx_attention_core_flop(seq_len):
    ctx = (seq_len + 1) / 2
    scores = 2 * MX_HEADS * MX_HEAD_DIM * ctx
    weighted_v = 2 * MX_HEADS * MX_HEAD_DIM * ctx
    return scores + weighted_v


def mx_moe_block_flop():
    router = 2 * MX_H * MX_EXPERTS
    routed = MX_TOP_K * 6 * MX_H * MX_I
    return router + routed  # no shared experts


def mx_forward_flop(seq_len):
    # every layer is MoE: no dense FFN layers
    return MX_LAYERS * (2 * mx_attention_weights() + mx_attention_core_flop(seq_len) + mx_moe_block_flop())


def mx_active_params():
    per_layer = mx_attention_weights() + MX_H * MX_EXPERTS + MX_TOP_K * 3 * MX_H * MX_I
    return MX_LAYERS * per_layer


# --- forward FLOP per token, whole model --------------------------------------------------------

@pytest.mark.parametrize("seq_len", [4096, 32768])
def test_deepseek_v3_forward_flop_per_token_matches_hand_count(seq_len):
    assert deepseek_v3().forward_flop_per_token(seq_len, "model") == pytest.approx(ds_forward_flop(seq_len), rel=1e-12)


@pytest.mark.parametrize("seq_len", [4096, 32768])
def test_mixtral_forward_flop_per_token_matches_hand_count(seq_len):
    assert mixtral().forward_flop_per_token(seq_len, "model") == pytest.approx(mx_forward_flop(seq_len), rel=1e-12)


def test_deepseek_v3_forward_flop_at_4096_is_the_written_out_number():
    # The per-term arithmetic at seq_len 4096, as plain numbers:
    # MLA weights/layer 11,010,048 + 37,748,736 + 4,128,768 + 16,777,216 + 117,440,512 = 187,105,280
    # core/layer 2*128*192*2048.5 + 2*128*128*2048.5 = 167,813,120
    # dense/layer 6*7168*18432 = 792,723,456; MoE block/layer 3,670,016 + 704,643,072 + 88,080,384
    expected = (61 * (2 * 187_105_280 + 167_813_120) + 3 * 792_723_456
                + 58 * (3_670_016 + 704_643_072 + 88_080_384))
    assert ds_forward_flop(4096) == expected  # the helper above and this line agree
    assert deepseek_v3().forward_flop_per_token(4096, "model") == pytest.approx(expected, rel=1e-12)


def test_longer_context_adds_only_the_causal_attention_core():
    m = deepseek_v3()
    extra = m.forward_flop_per_token(8193, "model") - m.forward_flop_per_token(4097, "model")
    # mean context grows by (8193 - 4097) / 2 = 2048 positions, over 61 layers
    assert extra == pytest.approx(61 * (2 * 128 * 192 + 2 * 128 * 128) * 2048, rel=1e-12)


# --- scope: moe_layer = router + routed + shared of one layer -----------------------------------

@pytest.mark.parametrize("seq_len", [4096, 1])
def test_deepseek_v3_moe_layer_scope_counts_router_routed_and_shared_only(seq_len):
    expected = 2 * 7168 * 256 + 8 * 6 * 7168 * 2048 + 1 * 6 * 7168 * 2048
    assert ds_moe_block_flop() == expected
    assert deepseek_v3().forward_flop_per_token(seq_len, "moe_layer") == pytest.approx(expected, rel=1e-12)


def test_mixtral_moe_layer_scope_has_no_shared_expert_term():
    expected = 2 * 4096 * 8 + 2 * 6 * 4096 * 14336
    assert mx_moe_block_flop() == expected
    assert mixtral().forward_flop_per_token(4096, "moe_layer") == pytest.approx(expected, rel=1e-12)


# --- anchors: activated parameters per token against the published totals -----------------------

def test_deepseek_v3_activated_params_are_37b_minus_embedding_and_head():
    # DeepSeek-V3 Technical Report (arXiv 2412.19437), abstract: 671B total, 37B activated per token,
    # which counts the embedding and the LM head, each vocab 129280 x hidden 7168 = 0.927e9.
    embedding = 129280 * 7168
    assert embedding == pytest.approx(0.927e9, rel=1e-3)
    anchor = 37e9 - 2 * embedding
    assert ds_active_params() == pytest.approx(anchor, rel=0.03)


def test_mixtral_activated_params_are_12_9b_minus_embedding_and_head():
    # Mistral AI, "Mixtral of experts" announcement (Dec 2023): 46.7B total, 12.9B used per token,
    # including the embedding and the LM head, each vocab 32000 x hidden 4096 = 0.131e9.
    embedding = 32000 * 4096
    assert embedding == pytest.approx(0.131e9, rel=1e-2)
    anchor = 12.9e9 - 2 * embedding
    assert mx_active_params() == pytest.approx(anchor, rel=0.03)


@pytest.mark.parametrize("which", ["deepseek-v3", "mixtral"])
def test_matmul_flop_is_twice_the_activated_params(which):
    # Everything but the attention core is a matmul: 2 FLOP per activated weight per token, so the
    # model's count ties to the anchored parameter count above.
    if which == "deepseek-v3":
        m, core, active = deepseek_v3(), DS_LAYERS * ds_attention_core_flop(4096), ds_active_params()
    else:
        m, core, active = mixtral(), MX_LAYERS * mx_attention_core_flop(4096), mx_active_params()
    assert m.forward_flop_per_token(4096, "model") - core == pytest.approx(2 * active, rel=1e-12)
    # the model's own weight bookkeeping agrees: replicated weights + top_k routed experts per layer
    model_active = m.replicated_params("model") + m.num_moe_layers * m.top_k * m.expert_params
    assert model_active == active


# --- step FLOP and MFU of a simulated run (the tiny scenario) -----------------------------------
# tiny-moe.yaml: hidden 256, moe intermediate 512, 16 experts top-2, 1 shared, 2 layers (no dense),
# GQA 4 heads / 2 KV heads / head_dim 64; the base scenario runs 8 GPUs x 256 tokens x 2 micro-batches
# at the default seq_len 4096.
TINY_TOKENS_PER_STEP = 256 * 2 * 8
TINY_MOE_BLOCK = 2 * 256 * 16 + 2 * 6 * 256 * 512 + 1 * 6 * 256 * 512
TINY_ATTENTION = (2 * (256 * 4 * 64 + 2 * 256 * 2 * 64 + 4 * 64 * 256)
                  + 4 * 4 * 64 * (4096 + 1) / 2)
TINY_FORWARD = 2 * (TINY_ATTENTION + TINY_MOE_BLOCK)


def test_train_step_flop_is_tokens_times_forward_times_three():
    s = make_scenario()
    assert (s.workload.mode, s.workload.scope, s.workload.seq_len) == ("train", "model", 4096)
    record = simulate(s)
    summary = summarize(record)
    expected = TINY_TOKENS_PER_STEP * TINY_FORWARD * 3
    assert TRAIN_FLOP_FACTOR == 3.0
    assert summary["model_flop_per_token_forward"] == pytest.approx(TINY_FORWARD, rel=1e-12)
    assert step_flop(record) == pytest.approx(expected, rel=1e-12)
    assert summary["model_flop_per_step"] == pytest.approx(expected, rel=1e-12)
    # MFU divides that by step time x GPUs x the H100's dense BF16 peak (989 TFLOPS)
    assert summary["mfu"] == pytest.approx(expected / (summary["step_time_s"] * 8 * 989e12), rel=1e-12)


def test_prefill_step_flop_is_tokens_times_forward_once():
    summary = summarize(simulate(make_scenario(workload={"mode": "prefill"})))
    assert summary["model_flop_per_step"] == pytest.approx(TINY_TOKENS_PER_STEP * TINY_FORWARD, rel=1e-12)


def test_moe_layer_scope_step_flop_counts_one_moe_block_forward_per_token_even_in_training():
    # CONTRACT.md: scope moe_layer is one MoE layer's forward, in train mode too (no backward x2)
    summary = summarize(simulate(make_scenario(workload={"scope": "moe_layer"})))
    assert summary["model_flop_per_token_forward"] == pytest.approx(TINY_MOE_BLOCK, rel=1e-12)
    assert summary["model_flop_per_step"] == pytest.approx(TINY_TOKENS_PER_STEP * TINY_MOE_BLOCK, rel=1e-12)
    assert set(summary["collectives"]) == {"dispatch", "combine"}  # no backward all-to-alls, no gradient sync


def test_seq_len_reaches_the_step_flop_through_the_attention_core():
    short = summarize(simulate(make_scenario(workload={"mode": "prefill", "seq_len": 1024})))
    # 2 layers x 4*4*64 FLOP per context position; mean context drops by (4096 - 1024) / 2
    delta = TINY_TOKENS_PER_STEP * 2 * 4 * 4 * 64 * (4096 - 1024) / 2
    assert short["model_flop_per_step"] == pytest.approx(TINY_TOKENS_PER_STEP * TINY_FORWARD - delta, rel=1e-12)
