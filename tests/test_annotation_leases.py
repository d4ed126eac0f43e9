"""The page's leases without Flask: who gets which pair, expiry, skips, overlap, and a long random session that
checks no pair is ever held by more people than it still needs."""
from __future__ import annotations

import random

import pytest

from rlthf.annotation.leases import Leases

PAIRS = {f"p{i}": 1 for i in range(5)}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def answered(*records: tuple[str, str]) -> dict[str, list[dict]]:
    """The standing answers of a log: (pair id, annotator) records."""
    standing: dict[str, list[dict]] = {}
    for pid, who in records:
        standing.setdefault(pid, []).append({"id": pid, "annotator": who, "label": "a"})
    return standing


def test_two_people_get_different_pairs_and_a_reload_shows_the_same_one():
    leases = Leases(seed=0)
    ann, shown = leases.next_pair("ann", PAIRS, {})
    bob, _ = leases.next_pair("bob", PAIRS, {})
    assert (ann, bob) == ("p0", "p1")
    assert leases.next_pair("ann", PAIRS, {}) == (ann, shown)  # a reload: same pair, same order
    assert leases.holders("p0") == ["ann"] and leases.holders("p1") == ["bob"]


def test_answered_pairs_are_not_offered_and_none_is_left_at_the_end():
    leases = Leases(seed=0)
    standing = answered(*[(pid, "bob") for pid in PAIRS if pid != "p3"])
    assert leases.next_pair("ann", PAIRS, standing)[0] == "p3"
    assert leases.next_pair("carl", PAIRS, standing) is None  # p3 is with ann, the rest are answered
    leases.release("p3", "ann")
    assert leases.next_pair("carl", PAIRS, standing)[0] == "p3"


def test_a_lease_expires_and_the_pair_goes_to_someone_else():
    clock = FakeClock()
    leases = Leases(lease_seconds=60, seed=0, clock=clock)
    one = {"p0": 1}
    assert leases.next_pair("ann", one, {})[0] == "p0"
    clock.now += 59
    assert leases.next_pair("bob", one, {}) is None
    clock.now += 2
    assert leases.next_pair("bob", one, {})[0] == "p0"
    assert leases.holders("p0") == ["bob"]
    assert leases.next_pair("ann", one, {}) is None  # ann's lease lapsed; she cannot take it back from bob


def test_each_person_holds_one_pair_at_a_time():
    leases = Leases(seed=0)
    leases.next_pair("ann", PAIRS, {})
    leases.lease("p4", "ann")  # an undo leases the undone pair back: the one held before is released
    assert leases.holders("p0") == [] and leases.holders("p4") == ["ann"]
    assert leases.next_pair("bob", PAIRS, {})[0] == "p0"


def test_skipped_pairs_come_back_last_oldest_skip_first():
    leases = Leases(seed=0)
    standing: dict[str, list[dict]] = {}
    leases.next_pair("ann", PAIRS, standing)
    leases.skip("p0", "ann")
    assert leases.next_pair("ann", PAIRS, standing)[0] == "p1"
    leases.skip("p1", "ann")
    order = []
    while (picked := leases.next_pair("ann", PAIRS, standing)) is not None:
        order.append(picked[0])
        standing = answered(*[(pid, "ann") for pid in order])
        leases.release(picked[0], "ann")
    assert order == ["p2", "p3", "p4", "p0", "p1"]
    assert leases.next_pair("bob", {"p0": 1, "p1": 1}, {})[0] == "p0"  # ann's skips do not reorder bob's pairs


def test_an_overlap_pair_goes_to_two_people_and_never_twice_to_one():
    leases = Leases(seed=0)
    needed = {"p0": 2, "p1": 1}
    assert leases.next_pair("ann", needed, {})[0] == "p0"
    assert leases.next_pair("bob", needed, {})[0] == "p0"
    assert leases.next_pair("carl", needed, {})[0] == "p1"
    leases.release("p0", "ann")
    standing = answered(("p0", "ann"))
    assert leases.next_pair("ann", needed, standing) is None  # she answered p0; p1 is with carl
    assert leases.next_pair("dora", needed, standing) is None  # p0: one answer and bob's lease make two


def test_a_new_batch_forgets_leases_and_skips_but_the_same_one_keeps_them():
    leases = Leases(seed=0)
    leases.start_batch(1)
    leases.next_pair("ann", PAIRS, {})
    leases.skip("p0", "ann")
    leases.next_pair("ann", PAIRS, {})
    leases.start_batch(1)
    assert leases.holders("p1") == ["ann"]
    leases.start_batch(2)
    assert leases.holders("p1") == [] and leases.next_pair("ann", PAIRS, {})[0] == "p0"


def test_shown_orders_are_seeded_and_an_explicit_one_is_kept():
    def orders(seed):
        leases = Leases(seed=seed)
        return [leases.next_pair(f"person{i}", {f"p{i}": 1 for i in range(20)}, {})[1] for i in range(20)]

    assert orders(3) == orders(3) and set(orders(3)) == {"ab", "ba"}
    leases = Leases(seed=0)
    assert leases.lease("p0", "ann", "ba") == "ba" and leases.next_pair("ann", PAIRS, {}) == ("p0", "ba")
    assert leases.lease("p0", "ann", "xx") in ("ab", "ba")  # an unknown order (an old log) takes a random one
    with pytest.raises(ValueError, match="lease_seconds"):
        Leases(lease_seconds=0)


@pytest.mark.parametrize("seed", range(5))
def test_random_sessions_never_lease_a_pair_beyond_what_it_needs(seed):
    """Eight people answer, skip and come back in a random order while leases expire; at every step no pair is
    held by more people than its missing answers, and nobody answers a pair twice."""
    rng, clock = random.Random(seed), FakeClock()
    needed = {f"p{i}": 2 if i % 4 == 0 else 1 for i in range(30)}
    leases, standing = Leases(lease_seconds=30, seed=seed, clock=clock), {}
    people = [f"person{i}" for i in range(8)]
    for _ in range(2000):
        who = rng.choice(people)
        picked = leases.next_pair(who, needed, standing)
        for pid, n in needed.items():
            answers = standing.get(pid, [])
            assert len(answers) + len(leases.holders(pid)) <= n, (pid, answers, leases.holders(pid))
            assert len({a["annotator"] for a in answers}) == len(answers)
        clock.now += rng.uniform(0, 3)
        if picked is None:
            continue
        action = rng.random()
        if action < 0.6:
            standing.setdefault(picked[0], []).append({"annotator": who})
            leases.release(picked[0], who)
        elif action < 0.75:
            leases.skip(picked[0], who)
        # else: they leave the tab open and the lease runs out
    assert all(len(standing.get(pid, [])) == n for pid, n in needed.items())  # and everything got answered
