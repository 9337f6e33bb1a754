"""Wire bytes per token and the all-to-all algorithms' setup terms, against closed forms."""
import pytest

from simulator.engine.paths import ROUTES
from simulator.wire import ALL_TO_ALL, algorithm, token_bytes
from tests.conftest import make_scenario


def fp8_bytes(hidden):
    """1 B per value + one FP32 scale per 128 values."""
    return hidden + hidden / 128 * 4


EXPECTED_HEADER = {"direct": 0, "hierarchical": 0, "low_latency": 16}


def test_the_algorithms_are_direct_hierarchical_and_low_latency():
    assert set(ALL_TO_ALL) == set(EXPECTED_HEADER)


# --- token_bytes ------------------------------------------------------------------------------

@pytest.mark.parametrize("hidden", [7168, 4096, 256])
@pytest.mark.parametrize("dtype", ["fp8", "bf16"])
@pytest.mark.parametrize("name", list(ALL_TO_ALL))
def test_token_bytes_follow_the_closed_form_per_dtype_and_algorithm(name, dtype, hidden):
    if dtype == "bf16":
        expected = 2 * hidden  # no scales, no header, whatever the algorithm
    else:
        expected = fp8_bytes(hidden) + EXPECTED_HEADER[name]
    assert token_bytes(dtype, hidden, name) == expected


def test_fp8_low_latency_message_is_7408_bytes_for_hidden_7168():
    # DeepEP README (low-latency kernels): 7168 FP8 values + 56 FP32 scales + a 16 B header
    assert token_bytes("fp8", 7168, "low_latency") == 7408


@pytest.mark.parametrize("name", ["direct", "hierarchical"])
def test_fp8_normal_token_is_7392_bytes_for_hidden_7168(name):
    assert token_bytes("fp8", 7168, name) == 7168 + 56 * 4 == 7392


@pytest.mark.parametrize("name", list(ALL_TO_ALL))
def test_bf16_combine_token_is_14336_bytes_for_hidden_7168(name):
    assert token_bytes("bf16", 7168, name) == 14336


def test_fp8_is_about_half_of_bf16_on_the_wire():
    ratio = token_bytes("fp8", 7168, "hierarchical") / token_bytes("bf16", 7168, "hierarchical")
    assert ratio == pytest.approx(0.5 + 4 / 128 / 2)


@pytest.mark.parametrize("dtype", ["fp16", "FP8", "int8", ""])
def test_unknown_wire_dtype_raises_key_error_listing_fp8_and_bf16(dtype):
    with pytest.raises(KeyError) as err:
        token_bytes(dtype, 7168, "hierarchical")
    message = str(err.value)
    assert repr(dtype) in message
    assert "fp8" in message and "bf16" in message


def test_unknown_algorithm_raises_key_error_listing_every_algorithm():
    for call in (lambda: token_bytes("fp8", 7168, "ring"), lambda: token_bytes("bf16", 7168, "ring"),
                 lambda: algorithm("ring")):
        with pytest.raises(KeyError) as err:
            call()
        message = str(err.value)
        assert "'ring'" in message
        for name in ALL_TO_ALL:
            assert name in message


@pytest.mark.parametrize("name", list(ALL_TO_ALL))
def test_algorithm_looks_up_the_table_entry_by_name(name):
    assert algorithm(name) is ALL_TO_ALL[name]
    assert ALL_TO_ALL[name].name == name


# --- the table's facts ------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(ALL_TO_ALL))
def test_every_algorithm_route_has_a_path_builder(name):
    assert ALL_TO_ALL[name].route in ROUTES


def test_low_latency_goes_over_own_links_and_hierarchical_over_the_rail():
    assert ALL_TO_ALL["low_latency"].route == "direct"
    assert ALL_TO_ALL["direct"].route == "direct"
    assert ALL_TO_ALL["hierarchical"].route == "hierarchical"


# --- setup_s and efficiency on the tiny scenario's cluster (h100-sxm, 2 nodes x 4 GPUs) ----------

@pytest.fixture
def cluster():
    c = make_scenario().cluster
    # the terms below must differ, or a test could pass with the wrong one
    terms = [c.ll_kernel_overhead_s, c.ib.latency_s, c.ib_cross_rail_latency_s, c.nvlink.latency_s]
    assert len(set(terms)) == len(terms) and all(t > 0 for t in terms) and c.gpu.kernel_launch_s > 0
    return c


@pytest.mark.parametrize("spans_nodes", [True, False])
def test_low_latency_setup_is_launch_plus_fitted_call_overhead_without_notify(cluster, spans_nodes):
    expected = cluster.gpu.kernel_launch_s + cluster.ll_kernel_overhead_s
    assert ALL_TO_ALL["low_latency"].setup_s(cluster, spans_nodes) == pytest.approx(expected, rel=1e-12)


def test_hierarchical_setup_across_nodes_is_launch_plus_same_rail_ib_latency(cluster):
    expected = cluster.gpu.kernel_launch_s + cluster.ib.latency_s
    assert ALL_TO_ALL["hierarchical"].setup_s(cluster, True) == pytest.approx(expected, rel=1e-12)


def test_direct_setup_across_nodes_is_launch_plus_cross_rail_latency(cluster):
    expected = cluster.gpu.kernel_launch_s + cluster.ib_cross_rail_latency_s
    assert ALL_TO_ALL["direct"].setup_s(cluster, True) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("name", ["direct", "hierarchical"])
def test_setup_within_one_node_is_launch_plus_nvlink_latency(cluster, name):
    expected = cluster.gpu.kernel_launch_s + cluster.nvlink.latency_s
    assert ALL_TO_ALL[name].setup_s(cluster, False) == pytest.approx(expected, rel=1e-12)


def test_setup_values_in_microseconds_for_h100_sxm(cluster):
    # h100-sxm.yaml: launch 4.0, LL overhead 25.8, IB 2.8, cross-leaf 3.7, NVLink 3.33 (us)
    us = 1e-6
    assert ALL_TO_ALL["low_latency"].setup_s(cluster, True) == pytest.approx(29.8 * us, rel=1e-12)
    assert ALL_TO_ALL["hierarchical"].setup_s(cluster, True) == pytest.approx(6.8 * us, rel=1e-12)
    assert ALL_TO_ALL["direct"].setup_s(cluster, True) == pytest.approx(7.7 * us, rel=1e-12)
    assert ALL_TO_ALL["direct"].setup_s(cluster, False) == pytest.approx(7.33 * us, rel=1e-12)


def test_direct_efficiency_is_the_clusters_fitted_nccl_alltoall_efficiency(cluster):
    assert cluster.direct_alltoall_efficiency == 0.869  # h100-sxm.yaml, fitted; not the 1.0 default
    assert ALL_TO_ALL["direct"].efficiency(cluster) == cluster.direct_alltoall_efficiency


@pytest.mark.parametrize("name", ["hierarchical", "low_latency"])
def test_deepep_algorithms_run_at_full_link_efficiency(cluster, name):
    assert ALL_TO_ALL[name].efficiency(cluster) == 1.0
