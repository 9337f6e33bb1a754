"""The seed's bandwidth formula (section 5.2), each term defined from the simulated run:

    required_bandwidth = tokens_per_second x token_size x EP_size x routing_factor
    utilization        = actual_bandwidth / required_bandwidth

for one EP group's all-to-all (dispatch and combine, and their backward in training):

  tokens_per_second  tokens one GPU feeds through its layers per second: tokens_per_gpu x
                     micro_batches / step_time_s (= tokens_per_s_per_gpu x pp_size)
  token_size         wire bytes of one token copy over the step: per MoE layer on the GPU's stage
                     (num_moe_layers / pp_size; 1 with scope moe_layer), one dispatch in
                     dispatch_dtype plus one combine in combine_dtype, twice in training (backward)
  EP_size            parallel.ep_size: the GPUs whose all-to-all this is
  routing_factor     copies of a token the router makes: model.top_k
  actual_bandwidth   bytes the group's all-to-alls put on links / step_time_s: every GPU's NVLink
                     and NIC egress, each hop counted (a copy that DeepEP's hierarchical dispatch
                     sends over IB and then forwards over NVLink counts twice), local copies not

So utilization is the simulated all-to-all's link bytes per byte of the formula's traffic (every
copy of every token sent once): just under 1 for the direct all-to-all ((EP-1)/EP: the copies
to a GPU's own experts stay home); the other algorithms differ from it both ways, copies shared
per destination GPU or node lowering it, forwarding hops and headers raising it (on 2 nodes of 4,
DeepEP-style hierarchical moves ~1.5x direct's bytes). It is not the link utilization
(bandwidth_utilization: bytes carried / (busy time x peak)), which summary.json reports beside it.
"""
from __future__ import annotations

from simulator.wire import token_bytes

ALL_TO_ALL_KINDS = ("dispatch", "combine", "dispatch_bwd", "combine_bwd")


def seed_bandwidth(s, summary: dict) -> dict:
    """The terms, required and actual bandwidth (bytes/s, whole EP group) and their ratio."""
    step = summary["step_time_s"]
    w, m, ep = s.workload, s.model, s.parallel.ep_size
    tokens_per_s = w.tokens_per_gpu * w.micro_batches / step
    layers = 1.0 if w.scope == "moe_layer" else m.num_moe_layers / s.parallel.pp_size
    passes = 2 if s.backward else 1
    hidden, a2a = m.hidden_size, s.network.all_to_all
    copy_bytes = token_bytes(s.network.dispatch_dtype, hidden, a2a) + token_bytes(s.network.combine_dtype, hidden, a2a)
    token_size = layers * passes * copy_bytes
    required = tokens_per_s * token_size * ep * m.top_k
    colls = summary["collectives"]
    carried_per_gpu = sum(colls[k]["count"] * colls[k]["mean_bytes_per_gpu"] for k in ALL_TO_ALL_KINDS if k in colls)
    actual = carried_per_gpu * ep / step
    return {"tokens_per_second": tokens_per_s, "token_size_bytes": token_size, "ep_size": ep,
            "routing_factor": m.top_k, "required_bytes_per_s": required, "actual_bytes_per_s": actual,
            "utilization": actual / required if required else 0.0}
