"""Who answers which pair of the open batch: the annotation page's leases, kept in memory, with no web server in
sight (the page calls them under its lock, with the answer log it decides on; :mod:`rlthf.annotation.page`)."""
from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Callable, Mapping

from rlthf.annotation.store import SHOWN_ORDERS


@dataclass
class Lease:
    annotator: str
    shown: str  # the order the pair is shown in, kept so a reload shows it the same way
    expires: float


class Leases:
    """The pairs of one batch on loan to people.

    A pair shown to someone is theirs for ``lease_seconds``, and nobody else is shown it meanwhile unless it
    needs more answers than people hold it (an overlap pair goes to two). Each person holds one pair at a time:
    being shown another releases the one they held. A pair they skip comes back to them after all the others.
    Leases and skips belong to one batch; :meth:`start_batch` with another iteration forgets them.

    Not thread-safe: the caller holds one lock across reading the answer log and asking for a pair, so that
    the answers it passes in are the ones standing when the lease is made.

    Parameters
    ----------
    lease_seconds : float, default=900
        How long a pair stays with the person it was shown to.
    seed : int or None, default=None
        Seeds the shown orders (tests); by default they are random.
    clock : callable, default=time.monotonic
        Seconds, for lease expiry (tests pass a fake one).
    """

    def __init__(self, *, lease_seconds: float = 900.0, seed: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be > 0; got {lease_seconds}")
        self.lease_seconds, self.clock, self.rng = lease_seconds, clock, random.Random(seed)
        self.iteration = -1
        self._leases: dict[str, list[Lease]] = {}  # pair id -> who holds it now
        self._skipped: dict[str, list[str]] = {}  # annotator -> pair ids, oldest skip first

    def start_batch(self, iteration: int) -> None:
        """Serve ``iteration``: a new batch starts with no leases and no skips."""
        if iteration != self.iteration:
            self.iteration, self._leases, self._skipped = iteration, {}, {}

    def holders(self, pid: str) -> list[str]:
        """Who holds ``pid`` now (expired leases dropped)."""
        return [lease.annotator for lease in self._live(pid)]

    def next_pair(self, who: str, needed: Mapping[str, int],
                  standing: Mapping[str, list[dict]]) -> tuple[str, str] | None:
        """The pair ``who`` answers next and the order to show it in, leased to them; None when none is left.

        ``needed``: pair id to how many answers it takes, in the order pairs are offered; ``standing``: pair id
        to the answers standing in the log (dicts with ``annotator``). The pair ``who`` holds comes first, if it
        still needs them; then the first pair that needs an answer from them and is not held by as many others
        as it still needs; the pairs they skipped last, oldest skip first.
        """
        for pid in needed:
            mine = [lease for lease in self._live(pid) if lease.annotator == who]
            if mine and self._open_to(who, pid, needed, standing):
                return pid, mine[0].shown
        skipped = self._skipped.get(who, [])
        candidates = [pid for pid in needed if pid not in skipped] + [pid for pid in skipped if pid in needed]
        for pid in candidates:
            if self._open_to(who, pid, needed, standing):
                return pid, self.lease(pid, who)
        return None

    def lease(self, pid: str, who: str, shown: str | None = None) -> str:
        """Lease ``pid`` to ``who`` (releasing what they held), shown in ``shown`` or a random order; returns it."""
        if shown not in SHOWN_ORDERS:
            shown = self.rng.choice(SHOWN_ORDERS)
        for held in self._leases:
            self.release(held, who)
        self._leases.setdefault(pid, []).append(Lease(who, shown, self.clock() + self.lease_seconds))
        return shown

    def release(self, pid: str, who: str) -> None:
        """``who`` answered ``pid`` or let it go: it is free for the others."""
        self._leases[pid] = [lease for lease in self._leases.get(pid, []) if lease.annotator != who]

    def skip(self, pid: str, who: str) -> None:
        """Release ``pid`` and offer it to ``who`` again only after every other pair."""
        self.release(pid, who)
        skipped = self._skipped.setdefault(who, [])
        if pid in skipped:
            skipped.remove(pid)
        skipped.append(pid)

    def _live(self, pid: str) -> list[Lease]:
        now = self.clock()
        self._leases[pid] = [lease for lease in self._leases.get(pid, []) if lease.expires > now]
        return self._leases[pid]

    def _open_to(self, who: str, pid: str, needed: Mapping[str, int], standing: Mapping[str, list[dict]]) -> bool:
        """Whether ``pid`` still takes an answer from ``who``: not answered by them, and its answers plus the
        other people holding it fall short of what it needs."""
        answers = standing.get(pid, [])
        others = [lease for lease in self._live(pid) if lease.annotator != who]
        return all(a["annotator"] != who for a in answers) and len(answers) + len(others) < needed[pid]
