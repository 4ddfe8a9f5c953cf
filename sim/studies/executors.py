"""Run independent study points on a local process pool or a Ray cluster.

Both executors call the same pure function on the same picklable task and return
results in task order, so a study's rows are identical whichever runs it. A
point that raises is turned into a result by the task function itself (an error
row); a worker that dies is reported the same way here, and the sweep goes on.
``on_result(index, result)`` is called as each point finishes (progress bar,
cache writes).
"""

from __future__ import annotations

import concurrent.futures as cf
import importlib.util
import socket
from collections.abc import Callable, Sequence
from typing import Any

from xpusim.sim.errors import InputError

EXECUTORS = ("local", "ray")

Result = dict[str, Any]  # one point's row, or {"error": ...}
TaskFn = Callable[[Any], Result]
OnResult = Callable[[int, Result], None]


def error_result(exc: BaseException) -> Result:
    return {"error": f"{type(exc).__name__}: {exc}"}


def run_local(
    fn: TaskFn,
    tasks: Sequence[Any],
    jobs: int,
    on_result: OnResult | None = None,
) -> list[Result]:
    """``jobs`` processes (in this process when jobs == 1, which is easier to debug)."""
    results: dict[int, Result] = {}

    def done(i: int, result: Result) -> None:
        results[i] = result
        if on_result:
            on_result(i, result)

    if jobs <= 1 or len(tasks) <= 1:
        for i, task in enumerate(tasks):
            try:
                done(i, fn(task))
            except Exception as exc:  # noqa: BLE001 - one bad point must not stop the sweep
                done(i, error_result(exc))
        return [results[i] for i in range(len(tasks))]
    with cf.ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(fn, task): i for i, task in enumerate(tasks)}
        for fut in cf.as_completed(futures):
            try:
                done(futures[fut], fut.result())
            except Exception as exc:  # noqa: BLE001 - includes BrokenProcessPool
                done(futures[fut], error_result(exc))
    return [results[i] for i in range(len(tasks))]


def ray_available() -> bool:
    return importlib.util.find_spec("ray") is not None


def run_ray(
    fn: TaskFn,
    tasks: Sequence[Any],
    jobs: int,
    address: str | None,
    on_result: OnResult | None = None,
) -> list[Result]:
    """Ray tasks; ``address`` None starts a local Ray with ``jobs`` CPUs, else connects
    (``auto`` or ``HOST:PORT``) to a running cluster."""
    if not ray_available():
        raise InputError("--executor ray needs the ray package: pip install 'xpusim[ray]'")
    import ray  # optional dependency: imported only when asked for

    started = not ray.is_initialized()
    if started:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=max(1, jobs), include_dashboard=False, log_to_driver=False)
    try:
        remote = ray.remote(fn)
        refs = [remote.remote(task) for task in tasks]
        index = {ref: i for i, ref in enumerate(refs)}
        results: dict[int, Result] = {}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                i = index[ref]
                try:
                    result: Result = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a failed task is an error row
                    result = error_result(exc)
                results[i] = result
                if on_result:
                    on_result(i, result)
        return [results[i] for i in range(len(tasks))]
    finally:
        if started:
            ray.shutdown()


def check_executor(executor: str, address: str | None) -> None:
    """The executor and, for Ray, the cluster address, before any work."""
    if executor not in EXECUTORS:
        raise InputError(f"--executor {executor!r}: choose one of {', '.join(EXECUTORS)}")
    if address and executor != "ray":  # was ignored: the points ran locally
        raise InputError(f"--address {address} is a Ray cluster: add --executor ray or drop it")
    if address:
        check_ray_address(address)


def check_ray_address(address: str) -> None:
    """``auto``, ``ray://HOST:PORT`` or ``HOST:PORT`` with a port number and a host that
    resolves: ray.init retries an unknown host for minutes (``--address nope:1``)."""
    if address == "auto":
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"--address {address}: expected auto or HOST:PORT, e.g. 10.0.0.1:6379")
    try:
        socket.getaddrinfo(host, int(port))
    except (OSError, UnicodeError) as exc:
        raise InputError(f"--address {address}: cannot resolve host '{host}' ({exc})") from None


def run_tasks(
    fn: TaskFn,
    tasks: Sequence[Any],
    executor: str = "local",
    jobs: int = 1,
    address: str | None = None,
    on_result: OnResult | None = None,
) -> list[Result]:
    if jobs < 1:
        raise InputError(f"--jobs must be >= 1, got {jobs}")
    check_executor(executor, address)
    if not tasks:
        return []
    if executor == "ray":
        return run_ray(fn, tasks, jobs, address, on_result)
    return run_local(fn, tasks, jobs, on_result)
