"""Idle-series eviction under a pre-fork server: the merged scrape's counters never go backwards.

A worker that evicts a series stops reporting it; the holder folds what the worker last reported into the
retired totals, so the service's counter keeps its value while other workers (or the same one, later)
record the series again. Series idle across the whole service leave the retired totals too.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_series_eviction import TIMEOUT_S, Recording, values

from chat_turbo_metrics import MetricsSnapshot
from chat_turbo_metrics.multiprocess._directory import PrivateDirectory
from chat_turbo_metrics.multiprocess._group import Group, group_for
from chat_turbo_metrics.multiprocess._ledger import GroupFiles
from chat_turbo_metrics.multiprocess._merge import EVICTING_SCOPE, fold_vanished, merge, prune, retire
from chat_turbo_metrics.multiprocess._session import Session

MINUTE_NS = 60 * 10**9


def _state(*points: list[Any], scope: str = EVICTING_SCOPE) -> dict[str, Any]:
    entry = {"scope": [scope, ""], "name": "jobs", "description": "", "unit": "", "type": "sum", "monotonic": True}
    return {"resource": {}, "metrics": [{**entry, "points": list(points)}]}


def _total(retired: dict[str, Any] | None, *live: dict[str, Any]) -> list[Any]:
    merged = merge([(f"{n}-x", state) for n, state in enumerate(live)], retired, lambda name: "sum")
    return [(r["attributes"], r["value"]) for r in MetricsSnapshot(merged).records()]


def test_a_series_a_worker_evicted_stays_in_the_service_total() -> None:
    before = _state([{"q": "a"}, 1, 10, 5], [{"q": "b"}, 1, 10, 3])
    after = _state([{"q": "b"}, 1, 20, 4])  # the worker evicted q=a
    other = _state([{"q": "a"}, 2, 20, 7])  # another worker still records it
    retired, folded = fold_vanished(None, before, after)
    assert folded
    assert _total(retired, after, other) == [({"q": "a"}, 12), ({"q": "b"}, 4)]


def test_a_series_evicted_and_recorded_again_between_two_scrapes_is_folded() -> None:
    before = _state([{"q": "a"}, 1, 10, 5])
    after = _state([{"q": "a"}, 15, 20, 1])  # a new stream: another start time, counting from zero
    retired, folded = fold_vanished(None, before, after)
    assert folded
    assert _total(retired, after) == [({"q": "a"}, 6)]


def test_series_missing_outside_our_scope_are_not_folded() -> None:
    # An observable callback of another library may skip a cycle and come back with the same total.
    before = _state([{"q": "a"}, 1, 10, 5], scope="opentelemetry.instrumentation.system_metrics")
    assert fold_vanished(None, before, _state()) == (None, False)


def test_retired_series_idle_across_the_service_leave_after_the_timeout() -> None:
    retired = retire(None, _state([{"q": "a"}, 1, MINUTE_NS, 5], [{"q": "b"}, 1, MINUTE_NS, 3]))
    live = [("1-x", _state([{"q": "b"}, 1, 3 * MINUTE_NS, 1]))]
    kept, pruned = prune(retired, live, now_ns=MINUTE_NS + MINUTE_NS - 1, idle_ns=MINUTE_NS)
    assert (kept, pruned) == (retired, False)  # not idle long enough yet
    kept, pruned = prune(retired, live, now_ns=2 * MINUTE_NS, idle_ns=MINUTE_NS)
    assert pruned
    assert _total(kept) == [({"q": "b"}, 3)]  # q=b is still reported by a live worker: kept


class _Service:
    """A holder and a member of one Prometheus endpoint in this process, talking over the real unix socket."""

    def __init__(self, directory: Path) -> None:
        self.holder = Recording(multiprocess_dir=str(directory))
        self.member = Recording(multiprocess_dir=str(directory))
        group = group_for("eviction")
        self.holder_session = Session(self.holder.pipeline, None, group, _files(directory, group), {})
        self.member_session = Session(self.member.pipeline, None, group, _files(directory, group), {})
        self.holder_session.become_holder()
        self.member_session.become_member()

    def scrape(self, after_s: float = 0) -> dict[Any, Any]:
        self.holder.clock.advance(after_s)
        self.member.clock.advance(after_s)
        return values(MetricsSnapshot(self.holder_session.collect()), "jobs")

    def close(self) -> None:
        for session in (self.member_session, self.holder_session):
            session.close()
        for recording in (self.member, self.holder):
            recording.pipeline.shutdown()


def _files(directory: Path, group: Group) -> GroupFiles:
    base = PrivateDirectory.open(str(directory))
    try:
        return GroupFiles(base.child(group.directory_name("127.0.0.1", 1)), group.key)
    finally:
        base.close()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[_Service]:
    made = _Service(tmp_path / "endpoint")
    yield made
    made.close()


def test_merged_counter_does_not_go_backwards_when_a_worker_evicts_its_series(service: _Service) -> None:
    service.holder.recorder.increment_counter("jobs", {"q": "a"}, 2)
    service.member.recorder.increment_counter("jobs", {"q": "a"}, 5)
    seen = [service.scrape()[(("q", "a"),)]]
    for _ in range(3):  # the member stops recording q=a and evicts it; the holder goes on
        service.holder.recorder.increment_counter("jobs", {"q": "a"})
        seen.append(service.scrape(after_s=TIMEOUT_S)[(("q", "a"),)])
    assert len(service.member.series("jobs")) == 0  # evicted in the member
    service.member.recorder.increment_counter("jobs", {"q": "a"})  # back in the member, from zero
    seen.append(service.scrape()[(("q", "a"),)])
    assert seen == [7, 8, 9, 10, 11]
