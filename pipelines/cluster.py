"""Connecting to Ray, and refusing resource requests the cluster cannot meet.

Local runs start a private Ray instance (``ray.init``); with ``RAY_ADDRESS`` set (or on a cluster
node started by ``ray start``) trainlab connects to that cluster instead. Every run checks its
resource request against the cluster's *total* resources before a worker starts, so an impossible
request fails in milliseconds with a message instead of waiting forever for a placement group.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import ray

log = logging.getLogger(__name__)


class ResourceError(ValueError):
    """The cluster cannot host the requested workers; raised before any worker starts."""


class ClusterAuthError(ValueError):
    """Ray's token authentication is on and this process has no (valid) token; raised before any worker starts."""


def _auth_error(e: Exception, address: str | None) -> ClusterAuthError:
    where = f"the cluster at {address}" if address else "a local Ray instance"
    if "invalid or incorrect" in str(e) or ("missing or incorrect" in str(e) and _token_present()):
        return ClusterAuthError(
            f"RAY_AUTH_TOKEN: {where} refused this process's auth token; use the cluster's own (`ray get-auth-token` on its head, "
            "then RAY_AUTH_TOKEN=... or a file named by RAY_AUTH_TOKEN_PATH)")
    return ClusterAuthError(
        f"RAY_AUTH_MODE=token but no Ray auth token was found (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or "
        f"~/.ray/auth_token) to reach {where}: make one with `ray get-auth-token --generate`, or for a remote "
        "cluster copy its token (`ray get-auth-token` on the head)")


def init_ray(num_cpus: int | None = None, address: str | None = None) -> dict:
    """Start (or connect to) Ray once per process and return the cluster's total resources.

    ``num_cpus`` sets the *logical* CPU count of a new local instance (default: the machine's
    cores, or ``TRAINLAB_RAY_CPUS``). It is ignored when connecting to an existing cluster.
    """
    from ray.exceptions import AuthenticationError

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        try:
            if address:
                _probe_token(address)
                ray.init(address=address, log_to_driver=True)
            else:
                _refuse_a_second_local_instance()
                if num_cpus is None and os.environ.get("TRAINLAB_RAY_CPUS"):
                    num_cpus = int(os.environ["TRAINLAB_RAY_CPUS"])
                ray.init(num_cpus=num_cpus, log_to_driver=True, dashboard_host="127.0.0.1",
                         configure_logging=True, logging_level=logging.WARNING)
        except AuthenticationError as e:
            raise _auth_error(e, address) from None
        except ConnectionError:
            if not address:
                raise
            # Ray reports a token the head refuses as a failure to connect (after its retries), like a head that
            # is down: say both, and how to get the right token.
            token = (" or it refused this process's auth token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token; "
                     "the head's is printed by `ray get-auth-token` there)")
            if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
                token += "; if the head uses token auth, also set RAY_AUTH_MODE=token"
            raise ClusterAuthError(f"RAY_ADDRESS: could not connect to the Ray cluster at {address}: no head is "
                                   f"running there{token}") from None
    _quiet_ray_data()
    return dict(ray.cluster_resources())


def _probe_token(address: str, wait_s: float = 5.0) -> None:
    """One GCS handshake before ``ray.init``: a head that refuses this process's token says so at once here,
    whereas ``ray.init`` retries the handshake for ~20 s and then reports a failure to connect. Only for a
    plain ``host:port`` (not ``auto`` or ``ray://``). The handshake runs in a thread and is waited on for
    ``wait_s``: a head that is down or slow (whose handshake times out after ~40 s) is left to ``ray.init``."""
    import threading

    from ray.exceptions import AuthenticationError

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        return
    # only with a token in hand: without one ray.init says so itself (and Ray's C++ client aborts the process)
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token" or not _token_present():
        return
    refused: list[Exception] = []

    def handshake():
        try:
            from ray._raylet import GcsClient  # Ray's own client: ray.init's first step makes one the same way

            GcsClient(address=address)
        except AuthenticationError as e:
            refused.append(e)
        except Exception:  # noqa: BLE001 - unreachable, timed out: ray.init decides and reports
            pass

    t = threading.Thread(target=handshake, name="trainlab-token-probe", daemon=True)
    t.start()
    t.join(wait_s)
    if refused:
        raise refused[0]


def _token_present() -> bool:
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    return bool(os.environ.get("RAY_AUTH_TOKEN")) or (os.path.isfile(path) and os.path.getsize(path) > 0)


def _refuse_a_second_local_instance() -> None:
    """Two private Ray instances on one machine break Ray Train V2 (its placement-group cleaner finds "multiple
    active Ray instances", and stopped trials' workers are never cleaned up: sweeps deadlock). So a second
    trainlab command that would start its own instance next to a running one stops here, saying how to share."""
    from ray._private.services import find_gcs_addresses

    running = sorted(find_gcs_addresses())
    if running:
        raise ResourceError(
            f"a local Ray instance is already running ({', '.join(running)}: another trainlab command, a benchmark "
            "or `ray start`); a second private instance on this machine breaks Ray Train. Wait for it to finish, "
            "or share one: `ray start --head --num-cpus N --dashboard-host 127.0.0.1` once, then "
            "`export RAY_ADDRESS=auto` for every trainlab command.")


def _quiet_ray_data() -> None:
    """Ray Data's per-dataset progress bars and "Starting execution" lines drown the epoch lines in a
    terminal (every split is read once per worker); ``TRAINLAB_DATA_PROGRESS=1`` brings them back.
    The DataContext travels with each dataset to the workers that execute it."""
    if os.environ.get("TRAINLAB_DATA_PROGRESS") == "1":
        return
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


@dataclass(frozen=True)
class ResourceRequest:
    """What one training run asks of the cluster."""

    num_workers: int
    cpus_per_worker: float
    use_gpu: bool
    data_cpus: float  # CPUs left free for Ray Data's read/transform tasks (never 0)

    @property
    def cpus(self) -> float:
        return self.num_workers * self.cpus_per_worker + self.data_cpus

    @property
    def gpus(self) -> int:
        return self.num_workers if self.use_gpu else 0


def check_resources(req: ResourceRequest, concurrent: int = 1, resources: dict | None = None) -> None:
    """Raise :class:`ResourceError` when ``concurrent`` copies of ``req`` cannot fit the cluster."""
    res = resources if resources is not None else dict(ray.cluster_resources())
    have_cpu = float(res.get("CPU", 0))
    have_gpu = float(res.get("GPU", 0))
    need_cpu = req.cpus * concurrent
    what = f"{concurrent} concurrent trial(s) × " if concurrent > 1 else ""
    if req.use_gpu and have_gpu < 1:
        raise ResourceError(
            "--gpu: the Ray cluster has no GPU (cluster resources: "
            f"{have_cpu:g} CPU, 0 GPU); drop --gpu or connect to a cluster with GPUs (RAY_ADDRESS)."
        )
    if req.gpus * concurrent > have_gpu:
        raise ResourceError(
            f"num_workers: {what}{req.num_workers} GPU worker(s) need {req.gpus * concurrent} GPUs "
            f"but the cluster has {have_gpu:g}; allowed: num_workers <= {int(have_gpu // concurrent)}."
        )
    if need_cpu > have_cpu + 1e-9:
        max_workers = int((have_cpu / concurrent - req.data_cpus) // req.cpus_per_worker)
        raise ResourceError(
            f"num_workers: {what}{req.num_workers} worker(s) × {req.cpus_per_worker:g} CPU + "
            f"{req.data_cpus:g} spare CPU for Ray Data = {need_cpu:g} CPUs, but the cluster has "
            f"{have_cpu:g}; allowed: num_workers <= {max(max_workers, 0)} "
            "(or lower cpus_per_worker / max_concurrent, or set TRAINLAB_RAY_CPUS for a local "
            "instance with more logical CPUs)."
        )
