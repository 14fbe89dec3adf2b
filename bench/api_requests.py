"""API requests per agent and hour, by what they cost the API server, in steady state and after a restart.

Each simulated agent runs the three list-watches a node's agent runs (its VMIs by label selector, its
Node by field selector, the KubeVirt CR) against the fake API server, which records every list and
watch by cost: ``consistent_list`` (read from etcd), ``cached_list`` (answered from the watch cache),
``watch``. Time is compressed by ``--scale`` (watch timeouts, bookmarks, silence timeout and relist
spread all divided by it), so one scaled hour takes 3600/scale seconds; counts are per real hour.

The baseline is the same loop with the list shape the agent used before: every list a consistent,
paginated read (no resourceVersion). Run: ``python -m bench.api_requests``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.common import table
from otel_vmi_hv.config import load_settings
from otel_vmi_hv.sources.list_watch import ListWatch, ListWatchOptions, Resource
from tests.fakes.kube_apiserver import CACHED_LIST, CONSISTENT_LIST, WATCH, FakeKubeAPIServer
from tests.fakes.kubevirt_objects import make_kubevirt, make_node, make_vmi

KINDS = (CONSISTENT_LIST, CACHED_LIST, WATCH)
BOOKMARK_INTERVAL = 60.0  # the real API server sends a bookmark about every minute


class Discard:
    """A ListWatchHandler that keeps nothing: the benchmark counts requests, not objects."""

    def relist_started(self) -> None:
        pass

    def listed(self, obj: Mapping[str, Any]) -> None:
        pass

    def relist_done(self) -> None:
        pass

    def changed(self, event_type: str, obj: Mapping[str, Any]) -> None:
        pass

    def watching(self) -> None:
        pass

    def failed(self, status: int | None, reason: str) -> None:
        pass


class ConsistentListWatch(ListWatch):
    """The previous list shape: every list a quorum read from etcd, paginated."""

    def _list_params(self) -> dict[str, Any]:
        params = super()._list_params()
        for key in ("resource_version", "resource_version_match"):
            params.pop(key, None)
        params["limit"] = self._options.page_size
        return params


def agent_watches(node: str, client: Any, options: ListWatchOptions, cls: type[ListWatch]) -> list[ListWatch]:
    return [
        cls(
            Resource("virtualmachineinstances", "kubevirt.io"),
            Discard(),
            lambda: client,
            replace(options, label_selector=f"kubevirt.io/nodeName={node}"),
        ),
        cls(
            Resource("nodes"),
            Discard(),
            lambda: client,
            replace(options, field_selector=f"metadata.name={node}"),
        ),
        cls(Resource("kubevirts", "kubevirt.io"), Discard(), lambda: client, options),
    ]


def counts(api: FakeKubeAPIServer, since: int) -> dict[str, int]:
    out = dict.fromkeys(KINDS, 0)
    for request in api.requests[since:]:
        if request.kind in out:
            out[request.kind] += 1
    return out


def measure(
    cls: type[ListWatch], agents: int, scale: float, after_minutes: float
) -> dict[str, dict[str, float]]:
    from kubernetes import config

    defaults = load_settings({"OTEL_VMI_HV_SOURCE": "libvirt"})  # the documented defaults
    low, high = ListWatchOptions(0, 0).watch_timeout_range
    options = ListWatchOptions(
        relist_spread=defaults.relist_spread / scale,
        silence_timeout=defaults.watch_silence_timeout / scale,
        watch_timeout_range=(max(1, round(low / scale)), max(2, round(high / scale))),
    )
    with (
        tempfile.TemporaryDirectory() as tmp,
        FakeKubeAPIServer(bookmark_interval=BOOKMARK_INTERVAL / scale, request_log_size=1_000_000) as api,
    ):
        api.create(make_kubevirt(True))
        for index in range(agents):
            api.create(make_node(f"node-{index}", "1k"))
            api.create(make_vmi("bench", f"vm-{index}", f"node-{index}"))
        client = config.new_client_from_config(
            config_file=str(api.write_kubeconfig(Path(tmp) / "kubeconfig"))
        )
        watches = [w for index in range(agents) for w in agent_watches(f"node-{index}", client, options, cls)]
        for watch in watches:
            watch.start()
        try:
            api.wait_for_watches(len(watches), timeout=60)
            start = len(api.requests)  # the start-up lists are not steady state
            hour = 3600 / scale
            time.sleep(hour)
            steady = counts(api, start)
            api.stop()  # the API server restarts; meanwhile the cluster moves on
            api.create(make_vmi("bench", "moved-on", "node-x"))
            mark = len(api.requests)
            api.restart()
            window = after_minutes * 60 / scale
            time.sleep(window)
            after = counts(api, mark)
        finally:
            for watch in watches:
                watch.stop()
    per_hour = {kind: steady[kind] / agents for kind in KINDS}
    per_agent_after = {kind: after[kind] / agents for kind in KINDS}
    return {"steady": per_hour, "after": per_agent_after}


def run(agents: int = 10, scale: float = 120.0, after_minutes: float = 10.0) -> str:
    results = {
        "consistent lists (before)": measure(ConsistentListWatch, agents, scale, after_minutes),
        "watch-cache lists (now)": measure(ListWatch, agents, scale, after_minutes),
    }
    rows = []
    base = results["consistent lists (before)"]
    for name, result in results.items():
        for phase, label in (
            ("steady", "steady state, per hour"),
            ("after", f"{after_minutes:.0f} min after a restart"),
        ):
            values = result[phase]
            etcd = values[CONSISTENT_LIST]
            ratio = (
                "-"
                if name == "consistent lists (before)"
                else (
                    f"{etcd / base[phase][CONSISTENT_LIST]:.2f}x" if base[phase][CONSISTENT_LIST] else "n/a"
                )
            )
            rows.append([name, label, *(f"{values[kind]:.1f}" for kind in KINDS), ratio])
    return (
        f"API requests per agent (3 list-watches: VMIs, its Node, the KubeVirt CR), {agents} agents, "
        f"time compressed {scale:g}x\n\n"
        + table(["list shape", "phase", CONSISTENT_LIST, CACHED_LIST, WATCH, "etcd reads vs before"], rows)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--agents", type=int, default=10)
    parser.add_argument(
        "--scale", type=float, default=120.0, help="time compression (1 h takes 3600/scale s)"
    )
    parser.add_argument("--after-minutes", type=float, default=10.0, help="window counted after the restart")
    args = parser.parse_args()
    print(run(args.agents, args.scale, args.after_minutes))


if __name__ == "__main__":
    main()
