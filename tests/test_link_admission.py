"""Admission of agents in a reconnect storm: who is let in, and when the others are asked back."""

from __future__ import annotations

import math

import pytest

from relay.link import admission
from relay.link.admission import Admission


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(admission.time, "monotonic", clock)
    monkeypatch.setattr(admission.random, "uniform", lambda low, high: 1.0)
    return clock


def test_the_floor_is_let_in_and_the_rest_get_successive_appointments(clock: Clock):
    gate = Admission(floor=1000, target_wait=1.0)  # at most 1000 waiting for their welcomes
    assert all(gate.enter() for _ in range(1000))
    assert not gate.enter() and gate.refused == 1
    rate = admission.MIN_RATE * admission.PROBE  # nothing welcomed yet: the assumed rate
    waits = [gate.retry_after() for _ in range(1500)]
    assert waits == sorted(waits)  # later refusals, later appointments
    assert waits[0] == math.ceil(1001 / rate)  # after the 1000 let in
    assert waits[-1] == min(admission.MAX_RETRY_AFTER, math.ceil(2500 / rate))


def test_an_appointment_that_came_due_no_longer_pushes_the_others_back(clock: Clock):
    gate = Admission(floor=1)
    assert gate.enter()
    first = [gate.retry_after() for _ in range(300)]
    clock.now += 60  # every appointment is due: those agents came back (or will get new ones)
    assert gate.retry_after() == first[0]


def test_the_rate_follows_the_welcomes_and_a_busy_relay_lets_in_fewer(clock: Clock):
    gate = Admission(floor=10, target_wait=5.0)
    for _ in range(3000):  # 1000 welcomes a second for the last 3 s
        gate.pending += 1
        gate.leave(welcomed=True)
        clock.now += 0.001
    assert gate.rate() == pytest.approx(1000 * admission.PROBE, rel=0.01)
    assert gate.capacity() == pytest.approx(5000 * admission.PROBE, rel=0.01)
    clock.now += admission.WINDOW + 1  # then none: the measure is forgotten, the floor remains
    assert gate.capacity() == 10
    assert gate.retry_after() >= 1
