"""A real multi-node Ray cluster on this machine for tests/test_ray_cluster.py, run in a process of its
own so the test process never holds Ray state: `python tests/ray_local_cluster.py N` starts a head and
N - 1 more nodes, prints the head's address and keeps them until its stdin closes. Token
authentication, when wanted, comes from RAY_AUTH_MODE / RAY_AUTH_TOKEN in its environment."""
import sys

from ray.cluster_utils import Cluster

# 1 CPU each on a 2-core box; Ray's floor for the object store is 75 MiB
NODE = {"num_cpus": 1, "object_store_memory": 80 * 2**20}


def main(num_nodes: int) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
    try:
        for _ in range(num_nodes - 1):
            cluster.add_node(**NODE)
        cluster.wait_for_nodes()
        print(cluster.address, flush=True)
        sys.stdin.read()
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]))
