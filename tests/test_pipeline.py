"""Pipeline parallelism: schedules, the bubble against its closed forms, p2p over the network,
stage memory, and a single-stage layout reproducing today's predictions."""
import pytest

from simulator.engine import Run, simulate
from simulator.errors import ScenarioError
from simulator.metrics import summarize
from simulator.scenario import build_scenario
from simulator.scenario.memory import memory_per_gpu
from simulator.stages import BWD, FWD, Task, interleaved, one_f_one_b, rank_layers, schedule, split_layers
from tests.conftest import make_scenario, tiny_dict


# -- schedules (pure) -----------------------------------------------------------------------------
def test_1f1b_warms_up_p_minus_rank_minus_one_forwards_then_alternates():
    assert one_f_one_b(4, 6, 1, 0) == [Task(FWD, 0, 0), Task(FWD, 1, 0), Task(FWD, 2, 0),
                                       Task(FWD, 3, 0), Task(BWD, 0, 0), Task(FWD, 4, 0), Task(BWD, 1, 0),
                                       Task(FWD, 5, 0), Task(BWD, 2, 0), Task(BWD, 3, 0), Task(BWD, 4, 0),
                                       Task(BWD, 5, 0)]
    last = one_f_one_b(4, 6, 1, 3)
    assert last[:4] == [Task(FWD, 0, 0), Task(BWD, 0, 0), Task(FWD, 1, 0), Task(BWD, 1, 0)]


@pytest.mark.parametrize("name, p, m, v", [("1f1b", 4, 8, 1), ("gpipe", 4, 8, 1), ("interleaved", 4, 8, 2),
                                           ("interleaved", 2, 6, 3)])
def test_every_schedule_runs_each_task_once_and_a_backward_after_its_forward(name, p, m, v):
    for rank in range(p):
        tasks = schedule(name, p, m, v, rank)
        assert sorted(tasks) == sorted(Task(ph, mb, c) for ph in (FWD, BWD) for mb in range(m) for c in range(v))
        for t in tasks:
            if t.phase == BWD:
                assert tasks.index(Task(FWD, t.micro_batch, t.chunk)) < tasks.index(t)


def test_interleaved_visits_chunks_in_groups_of_p_micro_batches():
    # Megatron-Core: forwards k = 0.. map to (chunk (k // p) % v, micro-batch (k // pv) p + k % p)
    order = [t for t in interleaved(2, 4, 2, 1) if t.phase == FWD]
    assert [(t.micro_batch, t.chunk) for t in order] == [(0, 0), (1, 0), (0, 1), (1, 1), (2, 0), (3, 0), (2, 1),
                                                          (3, 1)]


def test_layers_split_evenly_with_the_remainder_on_the_first_stages():
    assert [list(r) for r in split_layers(10, 4)] == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
    assert [list(r) for r in rank_layers(8, 2, 2, 1)] == [[2, 3], [6, 7]]  # virtual stages 1 and 3


# -- the engine -------------------------------------------------------------------------------------
FREE_COMM = {"nvlink_gb_per_s": 1e9, "nvlink_latency_us": 0.0, "kernel_launch_us": 0.0, "nccl_sms": 0,
             "ib_latency_us": 0.0, "ib_cross_leaf_latency_us": 0.0}


def free_comm_pipeline(p, m, v=1, name="1f1b"):
    """8 identical MoE layers, EP 1 (no all-to-all bytes), free links: only compute takes time."""
    return make_scenario(hardware={"nodes": 1, "gpus_per_node": p, **FREE_COMM},
                         model={"num_layers": 8, "num_dense_layers": 0},
                         parallel={"ep_size": 1, "pp_size": p, "vpp_size": v, "pp_schedule": name},
                         workload={"tokens_per_gpu": 256, "micro_batches": m},
                         routing={"distribution": "balanced"},
                         network={"all_to_all": "direct", "comm_sms": 0}, pipeline={"chunks": 1})


def stage_seconds(run: Run, gpu: int) -> tuple[float, float]:
    """Forward and backward seconds of one micro-batch through the GPU's layers."""
    program = run.programs[gpu]
    def total(ops):
        kernels = [op.side_kernel() if op.collective else op for op in ops if not op.collective or op.overlapped]
        return sum(run.work_s(op, 0, 0, 0, 0) for op in kernels)
    return total(program.phases[0]), total(program.phases[1])


@pytest.mark.parametrize("p, m", [(2, 4), (4, 4), (4, 8)])
def test_1f1b_bubble_is_p_minus_1_forward_backward_pairs_with_free_communication(p, m):
    run = Run(free_comm_pipeline(p, m))
    record = run.simulate()
    t_f, t_b = stage_seconds(run, 0)
    summary = summarize(record)
    end = max(e for spans in record.task_spans for _, e in spans)
    assert end == pytest.approx((m + p - 1) * (t_f + t_b), rel=1e-6)
    assert summary["pipeline_bubble_s"] == pytest.approx([(p - 1) * (t_f + t_b)] * p, rel=1e-6)
    # the closed form (p - 1) / (m + p - 1) of the pipeline's span
    assert summary["pipeline_bubble_s"][0] / end == pytest.approx((p - 1) / (m + p - 1), rel=1e-6)


def test_interleaving_divides_the_bubble_by_the_number_of_model_chunks():
    p, m, v = 4, 8, 2
    run = Run(free_comm_pipeline(p, m, v, "interleaved"))
    record = run.simulate()
    t_f, t_b = stage_seconds(run, 0)  # the rank's v chunks together
    end = max(e for spans in record.task_spans for _, e in spans)
    assert end == pytest.approx(m * (t_f + t_b) + (p - 1) * (t_f + t_b) / v, rel=1e-6)
    bubble = summarize(record)["pipeline_bubble_s"][0]
    assert bubble / end == pytest.approx((p - 1) / (v * m + p - 1), rel=1e-6)


def test_gpipe_holds_every_micro_batch_and_1f1b_at_most_p_on_the_first_stage():
    one = memory_per_gpu(free_comm_pipeline(4, 8)).activations
    gpipe = memory_per_gpu(free_comm_pipeline(4, 8, name="gpipe")).activations
    assert gpipe == pytest.approx(2 * one)  # 8 micro-batches in flight against 4


def test_stage_sends_activations_over_the_nic_between_nodes():
    s = make_scenario(hardware={"nodes": 2, "gpus_per_node": 4}, model={"num_layers": 4},
                      parallel={"ep_size": 4, "pp_size": 2}, workload={"micro_batches": 4})
    summary = summarize(simulate(s))
    send, recv = summary["collectives"]["pp_send"], summary["collectives"]["pp_recv"]
    one = s.workload.tokens_per_gpu * s.model.hidden_size * 2  # BF16 activations of a micro-batch
    assert send["mean_ib_bytes_per_gpu"] == pytest.approx(one) and send["mean_nvlink_bytes_per_gpu"] == 0
    assert send["count"] == recv["count"] == 4  # stage 0 sends 4 forwards, stage 1 4 backwards
    assert 0 < summary["pipeline_bubble_fraction"] < 1


def test_a_pipeline_counts_each_micro_batch_once_in_the_tokens():
    s = free_comm_pipeline(4, 8)
    summary = summarize(simulate(s))
    assert summary["tokens_per_s"] * summary["step_time_s"] == pytest.approx(256 * 8 * 4 / 4)


def test_pipeline_rules_name_their_keys():
    with pytest.raises(ScenarioError, match="parallel.vpp_size"):
        make_scenario(parallel={"ep_size": 4, "pp_size": 2, "vpp_size": 2})  # needs interleaved
    with pytest.raises(ScenarioError, match="workload.micro_batches"):
        make_scenario(parallel={"ep_size": 4, "pp_size": 2, "vpp_size": 2, "pp_schedule": "interleaved"},
                      model={"num_layers": 4}, workload={"micro_batches": 3})
    with pytest.raises(ScenarioError, match="parallel.ep_size"):
        make_scenario(parallel={"ep_size": 8, "pp_size": 2})  # EP 8 does not fit a 4-GPU stage


def test_global_batch_size_derives_micro_batches_and_tokens_as_megatron_does():
    data = tiny_dict(parallel={"ep_size": 4, "pp_size": 2}, model={"num_layers": 4},
                     training={"global_batch_size": 32, "micro_batch_size": 2})
    data["workload"] = {"mode": "train", "seq_len": 128}
    s = build_scenario(data)
    # dense DP = 8 GPUs / PP 2 = 4; 32 sequences / (2 x 4) = 4 micro-batches of 2 x 128 tokens
    assert (s.workload.micro_batches, s.workload.tokens_per_gpu) == (4, 256)
    with pytest.raises(ScenarioError, match="workload.micro_batches"):
        make_scenario(training={"global_batch_size": 32}, workload={"micro_batches": 2})


def test_every_collective_kind_of_a_tp_pp_dp_layout_conserves_bytes_and_the_run_is_deterministic():
    from pathlib import Path

    from simulator.results import summary_json
    from simulator.scenario import load_scenario
    path = Path(__file__).parents[1] / "scenarios" / "mixtral-8x7b-tp2-pp2.yaml"
    short = [("training.global_batch_size", 16)]  # 4 micro-batches per replica
    run = Run(load_scenario(path, short), keep_paths=True)
    record = run.simulate()
    topo = run.topology
    g = topo.num_gpus
    kinds = set()
    for cid, coll in run.collectives.items():
        kinds.add(cid.kind)
        ports, nbytes = coll._paths.entry_port, coll._paths.entry_bytes
        out_bytes = nbytes[topo.is_gpu_egress(ports)].sum()
        in_bytes = nbytes[((ports >= g) & (ports < 2 * g)) | ((ports >= 3 * g) & (ports < 4 * g))].sum()
        assert out_bytes == pytest.approx(in_bytes, rel=1e-12), cid
    assert kinds >= {"dispatch", "combine_bwd", "tp_allgather", "tp_reducescatter", "pp_send",
                     "grad_reducescatter", "expert_grad_reducescatter", "param_allgather"}
    again = summary_json(summarize(Run(load_scenario(path, short)).simulate()))
    assert summary_json(summarize(record)) == again


def test_dualpipe_runs_each_direction_once_per_micro_batch_backward_after_forward():
    from simulator.stages import dualpipe_slots
    p, m = 4, 8
    for rank in range(p):
        order = [t for slot in dualpipe_slots(p, m, rank) for t in slot]
        # half the micro-batches on direction 0 (from rank 0), half on direction 1 (from rank p-1)
        assert sorted(order) == sorted(Task(ph, mb, mb // (m // 2)) for ph in (FWD, BWD) for mb in range(m))
        for t in order:
            if t.phase == BWD:
                assert order.index(Task(FWD, t.micro_batch, t.chunk)) < order.index(t)
    # the main step pairs a forward with a backward in one slot (DeepSeek's F&B overlap)
    assert any(len(slot) == 2 for slot in dualpipe_slots(p, m, 0))


def test_dualpipe_holds_two_stages_per_rank_and_shrinks_the_1f1b_bubble():
    one = free_comm_pipeline(4, 8)
    dual = free_comm_pipeline(4, 8, name="dualpipe")
    assert memory_per_gpu(dual).weights == pytest.approx(2 * memory_per_gpu(one).weights)
    assert [list(r) for r in rank_layers(8, 4, 1, 0, "dualpipe")] == [[0, 1], [6, 7]]
    b1 = summarize(Run(one).simulate())["pipeline_bubble_s"]
    b2 = summarize(Run(dual).simulate())["pipeline_bubble_s"]
    assert max(b2) < min(b1)
    with pytest.raises(ScenarioError, match="dualpipe"):
        free_comm_pipeline(4, 6, name="dualpipe")  # needs micro-batches >= 2 x pp_size


def test_the_first_stage_embeds_the_last_runs_the_lm_head_and_the_flops_count_it():
    sections = dict(model={"num_layers": 4}, parallel={"ep_size": 4, "pp_size": 2}, workload={"micro_batches": 4})
    plain = make_scenario(**sections)
    whole = make_scenario(**{**sections, "workload": {"micro_batches": 4, "embedding_and_head": True}})
    run = Run(whole)
    first, last = run.programs[0], run.programs[4]  # PP rank 0 (GPUs 0-3) and 1 (GPUs 4-7)
    assert first.phases[0][0].op == "embedding" and first.phases[1][-1].name == "embedding_bwd"
    assert last.phases[0][-1].op == "lm_head" and last.phases[1][0].name == "lm_head_bwd"
    assert "lm_head" not in {op.op for op in first.ops} and "embedding" not in {op.op for op in last.ops}
    m = whole.model
    a, b = summarize(Run(plain).simulate()), summarize(run.simulate())
    assert b["model_flop_per_token_forward"] - a["model_flop_per_token_forward"] == pytest.approx(
        2 * m.hidden_size * m.vocab_size)
    # the embedding table on the first stage, the (untied) head on the last
    assert b["parameters_per_gpu"]["dense"] - a["parameters_per_gpu"]["dense"] == m.vocab_size * m.hidden_size


def test_every_schedule_finishes_with_the_gradient_sync_and_the_optimizer_on_every_gpu():
    for name in ("1f1b", "dualpipe", "interleaved"):
        s = make_scenario(hardware={"nodes": 2, "gpus_per_node": 4}, model={"num_layers": 4},
                          parallel={"ep_size": 2, "pp_size": 2, "vpp_size": 2 if name == "interleaved" else 1,
                                    "pp_schedule": name},
                          workload={"micro_batches": 4}, pipeline={"chunks": 1})
        record = Run(s).simulate()
        kinds = {cid.kind for cid in record.collectives}
        assert {"grad_allreduce", "expert_grad_allreduce"} <= kinds, name  # dense DP 4, expert DP 2
        for intervals in record.intervals:
            assert [iv.op.op for iv in intervals].count("optimizer") == 1, name


def test_dualpipe_sums_the_gradients_of_a_stages_two_copies_between_mirror_ranks():
    run = Run(free_comm_pipeline(4, 8, name="dualpipe"))
    record = run.simulate()
    mirror = [c for c in record.collectives.values() if c.kind == "mirror_grad_allreduce"]
    assert sorted(c.gpus.tolist() for c in mirror) == [[0, 3], [1, 2]]  # rank r with rank p-1-r
    params = sum(b.num_params for b in run.programs[0].buckets)
    # a ring of two: each GPU sends its whole FP32 gradient once
    assert mirror[0].nvlink_bytes_per_gpu.tolist() == pytest.approx([params * 4] * 2)


def test_with_zero1_dualpipe_mirrors_only_the_shard_each_gpu_updates():
    s = make_scenario(hardware={"nodes": 2, "gpus_per_node": 4}, model={"num_layers": 4},
                      parallel={"ep_size": 2, "pp_size": 2, "pp_schedule": "dualpipe"},
                      training={"distributed_optimizer": True}, workload={"micro_batches": 4}, pipeline={"chunks": 1})
    run = Run(s)
    record = run.simulate()
    mirror = [c for c in record.collectives.values() if c.kind == "mirror_grad_allreduce"]
    buckets = run.programs[0].buckets
    shard = sum(b.num_params / {"dense": 4, "expert": 2}[b.family] for b in buckets)  # dense DP 4, expert DP 2
    sent = mirror[0].nvlink_bytes_per_gpu + mirror[0].ib_bytes_per_gpu
    assert sent.tolist() == pytest.approx([shard * 4] * 2)
    assert shard < sum(b.num_params for b in buckets) / 2


def test_a_pipeline_stage_split_unevenly_over_nodes_is_rejected():
    """Found by tests/test_fuzz.py: 12 GPUs on nodes of 4 at PP 2 put a 6-GPU stage's data-parallel
    ring on 2 GPUs of one node and 4 of the next, which no ring layout serves."""
    with pytest.raises(ScenarioError) as exc:
        make_scenario(hardware={"nodes": 3, "gpus_per_node": 4}, parallel={"ep_size": 1, "pp_size": 2})
    assert exc.value.key == "parallel.pp_size" and "whole nodes" in exc.value.rule


# -- 1F1B with the EP all-to-all overlap (Megatron-Core's combined 1F1B) ---------------------------
@pytest.mark.parametrize("name, p, m, v", [("interleaved", 4, 8, 2), ("interleaved", 8, 16, 4), ("interleaved", 2, 6, 3)])
def test_paired_1f1b_keeps_the_order_and_pairs_only_independent_forward_backward(name, p, m, v):
    from simulator.stages import slots
    for rank in range(p):
        paired = slots(name, p, m, v, rank, paired=True)
        assert [t for slot in paired for t in slot] == schedule(name, p, m, v, rank)
        for slot in paired:
            if len(slot) == 2:  # one forward, one backward, of different (micro-batch, chunk)
                assert {slot[0].phase, slot[1].phase} == {FWD, BWD}
                assert (slot[0].micro_batch, slot[0].chunk) != (slot[1].micro_batch, slot[1].chunk)
        if m > p:  # the steady state pairs
            assert any(len(slot) == 2 for slot in paired)


def test_paired_1f1b_hides_the_all_to_all_behind_the_other_micro_batch():
    base = dict(hardware={"nodes": 2, "gpus_per_node": 4}, model={"num_layers": 8},
                parallel={"ep_size": 4, "pp_size": 2, "vpp_size": 2, "pp_schedule": "interleaved"},
                workload={"micro_batches": 8}, pipeline={"chunks": 1})
    lock = make_scenario(**base)
    assert lock.pipeline.schedule == "lockstep"  # Megatron's default: no overlap
    pair = make_scenario(**{**base, "pipeline": {"chunks": 1, "schedule": "dualpipe"}})
    a, b = summarize(simulate(lock)), summarize(simulate(pair))
    assert b["step_time_s"] < a["step_time_s"]
    assert b["breakdown_s"]["exposed_comm"] < a["breakdown_s"]["exposed_comm"]
    assert b["model_flop_per_step"] == a["model_flop_per_step"]


@pytest.mark.parametrize("pp_schedule", ["1f1b", "gpipe"])
def test_paired_needs_the_interleaved_schedule(pp_schedule):
    with pytest.raises(ScenarioError, match="pipeline.schedule"):
        make_scenario(hardware={"nodes": 2, "gpus_per_node": 4}, model={"num_layers": 8},
                      parallel={"ep_size": 4, "pp_size": 2, "pp_schedule": pp_schedule}, workload={"micro_batches": 4},
                      pipeline={"schedule": "dualpipe"})
