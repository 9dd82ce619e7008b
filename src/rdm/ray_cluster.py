"""The Ray cluster a stage runs on (`embed.executor: ray`, `prepare.executor: ray`): the one
`RAY_ADDRESS` names (`ray start --head` on a machine, a KubeRay cluster), else a Ray started in this
process on this machine's cores.

Every node needs this package installed and the project's data at the same absolute path (a shared
filesystem), as Ray runs the work where it schedules it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from rdm.errors import UserError


@dataclass(frozen=True)
class Cluster:
    """The Ray cluster a job ran on, for the stage's report."""

    address: str
    nodes: int
    cpus: float
    gpus: float

    def describe(self) -> str:
        return (
            f"the Ray cluster at {self.address} ({self.nodes} nodes, {self.cpus:g} CPUs, {self.gpus:g} GPUs)"
        )


@contextmanager
def connected(setting: str) -> Iterator[Cluster]:
    """A Ray connection: the cluster `RAY_ADDRESS` names, else a Ray started in this process (and
    stopped after). An already open connection is used as it is. `setting` names the parameter that
    asked for Ray, for the error of a cluster that does not answer."""
    import ray

    if ray.is_initialized():
        yield _cluster()
        return
    address = os.environ.get("RAY_ADDRESS") or None
    try:
        if address:
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        else:
            # "local": a new Ray here, never a cluster some earlier `ray start` left its address for
            ray.init(
                address="local",
                _node_ip_address="127.0.0.1",
                include_dashboard=False,
                logging_level=logging.ERROR,
                log_to_driver=False,
            )
    except (ConnectionError, RuntimeError) as error:
        raise UserError(
            f"{setting} is ray but no Ray cluster answers at RAY_ADDRESS={address!r} ({error}); "
            "start one (`ray start --head`) or unset RAY_ADDRESS to run Ray in this process"
        ) from error
    try:
        yield _cluster()
    finally:
        ray.shutdown()


def _cluster() -> Cluster:
    import ray

    resources = ray.cluster_resources()
    return Cluster(
        address=os.environ.get("RAY_ADDRESS") or ray.get_runtime_context().gcs_address,
        nodes=sum(1 for node in ray.nodes() if node["Alive"]),
        cpus=resources.get("CPU", 0.0),
        gpus=resources.get("GPU", 0.0),
    )
