"""The injected sidecar's memory: its containers' limits and the request bodies Tollway may hold.

The sidecar containers' memory limits (pod annotations). The defaults hold two requests of the
largest body Tollway reads (64 MiB) at once, and a third refused meanwhile: measured with three
(tests/e2e/test_sidecar_memory_e2e.py), Tollway peaks at 590-664 MiB and Envoy at 280-315 MiB,
453 MiB once on a loaded machine. Each such request in flight takes about 260 MiB of Tollway's and
up to 130 MiB of Envoy's: Envoy holds a streamed body twice while Tollway reads it (its queue of
chunks awaiting Tollway's answer, and their copy on the way to Tollway), and it reads one more body
than Tollway keeps: the one Tollway refuses, read before Tollway can refuse it when Tollway's
workers are slow (453 MiB: three bodies held twice). Past its limit the kernel kills the
container, and every request it holds fails: so Tollway gets a --body-memory the limits hold
(body_memory), and refuses a body past it with a 503 the SDKs retry. Each worker always reads one
body alone, whatever its share of --body-memory: with more workers than the defaults hold bodies,
the defaults grow to one body per worker (default_memory_limits); limits a pod's annotations set
are kept, said if smaller.
"""

from __future__ import annotations

from collections.abc import Mapping

from ext_proc.k8s.quantity import quantity

TOLLWAY_MEMORY, ENVOY_MEMORY = "tollway.dev/tollway-memory", "tollway.dev/envoy-memory"
MEMORY_LIMITS = {TOLLWAY_MEMORY: "1Gi", ENVOY_MEMORY: "512Mi"}
# MiB at rest, and MiB per largest body (64 MiB) in flight, measured as above; Envoy holds one body
# more than Tollway keeps (the one being refused).
_TOLLWAY_BASE, _TOLLWAY_PER_BODY, _ENVOY_BASE, _ENVOY_PER_BODY = 140, 260, 70, 130


def _tollway_needs(bodies: int) -> int:
    return _TOLLWAY_BASE + _TOLLWAY_PER_BODY * bodies


def _envoy_needs(bodies: int) -> int:
    return _ENVOY_BASE + _ENVOY_PER_BODY * (bodies + 1)


def default_memory_limits(workers: int) -> dict[str, str]:
    """The sidecar containers' default memory limits for Tollway's ``workers``: :data:`MEMORY_LIMITS`
    (two 64 MiB bodies at once, Envoy a third being refused), grown to hold one body per worker
    (each worker always reads one body alone, whatever its share of ``--body-memory``)."""
    workers = max(1, workers)
    tollway, envoy = _tollway_needs(workers), _envoy_needs(workers)
    return {TOLLWAY_MEMORY: MEMORY_LIMITS[TOLLWAY_MEMORY] if tollway <= _mib(MEMORY_LIMITS[TOLLWAY_MEMORY])
            else f"{tollway}Mi",
            ENVOY_MEMORY: MEMORY_LIMITS[ENVOY_MEMORY] if envoy <= _mib(MEMORY_LIMITS[ENVOY_MEMORY]) else f"{envoy}Mi"}


def mib(text: str) -> float | None:
    """A Kubernetes memory quantity (``1Gi``, ``512Mi``, ``2147483648``, ``0.75Gi``, ``1e9``) in MiB; None if it
    is none (:func:`~ext_proc.k8s.quantity.quantity`)."""
    value = quantity(text)
    return None if value is None else float(value / 2**20)


def _mib(quantity: str) -> float:
    value = mib(quantity)
    assert value is not None  # memory_limits checked it
    return value


def bodies_held(memory: Mapping[str, str]) -> int:
    """How many of the largest bodies (64 MiB) both containers hold at once (at least one), Envoy
    one more (the body being refused)."""
    bodies = min((_mib(memory[TOLLWAY_MEMORY]) - _TOLLWAY_BASE) // _TOLLWAY_PER_BODY,
                 (_mib(memory[ENVOY_MEMORY]) - _ENVOY_BASE) // _ENVOY_PER_BODY - 1)
    return int(max(1, bodies))


def body_memory(memory: Mapping[str, str], workers: int) -> int:
    """Tollway's ``--body-memory`` (MiB per worker) for these containers' memory limits: as many of the
    largest bodies (64 MiB) at once as both containers hold, shared by the workers, at least one body
    each (a worker always reads one alone). The defaults hold two: 128 MiB."""
    return max(64, bodies_held(memory) * 64 // max(1, workers))


def memory_warning(memory: Mapping[str, str], workers: int) -> str | None:
    """What to tell about limits (a pod's annotations) that hold fewer 64 MiB bodies than Tollway
    has workers, each of which always reads one alone; None when they hold one per worker."""
    held = bodies_held(memory)
    if held >= workers:
        return None
    return (f"memory limits {memory[TOLLWAY_MEMORY]}/{memory[ENVOY_MEMORY]} (tollway/envoy) hold {held} of the "
            f"largest bodies (64 MiB) at once, not one per worker ({workers}): a container may be killed; set at "
            f"least {_tollway_needs(workers)}Mi/{_envoy_needs(workers)}Mi")
