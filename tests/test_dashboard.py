"""The Dask dashboard is served only when asked for; runs side by side do not compete for port 8787."""

import urllib.error
import urllib.request
import warnings

from pipeline.executor import ExecOptions, dask_client


def status_page(port: int) -> int:
    """The HTTP status of a scheduler's dashboard page (every scheduler runs an HTTP server, dashboard or not)."""
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=10).status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_two_local_clusters_start_no_dashboard_and_one_serves_it_when_asked():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with dask_client(ExecOptions(workers=1)) as first, dask_client(ExecOptions(workers=1)) as second:
            servers = [client.cluster.scheduler.http_server for client in (first, second)]
            ports = [client.scheduler_info()["services"]["dashboard"] for client in (first, second)]
            assert [status_page(port) for port in ports] == [404, 404]  # no dashboard routes
            assert {server.address for server in servers} == {"127.0.0.1"} and 8787 not in {s.port for s in servers}
            assert first.submit(sum, [1, 2]).result() == 3
    assert not [w for w in caught if "already in use" in str(w.message)], [str(w.message) for w in caught]
    with dask_client(ExecOptions(workers=1, dashboard="127.0.0.1:0")) as client:
        assert status_page(client.scheduler_info()["services"]["dashboard"]) == 200 and client.dashboard_link.endswith("/status")


def test_batch_job_and_gpu_clusters_start_no_dashboard_unless_asked():
    from pipeline.cluster import ClusterSpec, job_cluster
    from pipeline.executor import gpu_cluster

    for dashboard, page in ((None, 404), ("127.0.0.1:0", 200)):
        for cluster in (job_cluster(ClusterSpec(kind="slurm"), dashboard=dashboard, adapt=False),  # no job submitted
                        gpu_cluster(("0",), dashboard=dashboard)):  # a worker process that is told GPU 0
            with cluster:
                server = cluster.scheduler.http_server
                assert status_page(server.port) == page and server.address == "127.0.0.1", type(cluster)
