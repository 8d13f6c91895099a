"""The agent's forwarding of workload requests (``dsm/agent/forwarding.py``), one class's logic:
a lock release answered at once when the agent knows the thread holds the lock and the release
went out, and every other release left to the directory. (tests/test_sync.py runs the locks
with real processes.)"""

from __future__ import annotations

import pytest

from dsm import local
from dsm import protocol as p
from dsm.agent.forwarding import Forwarder

pytestmark = pytest.mark.timeout(30)

PID, TID = 4242, 7


class Client:
    """A workload's connection (unhashable, as the agent's are)."""

    __hash__ = None  # type: ignore[assignment]


class Agent:
    """What the forwarder talks to: the directory's pipe, the clients, the release path."""

    def __init__(self, released_at_once: bool = True):
        self.sent: list[p.Message] = []
        self.replies: list[tuple[Client, local.LocalMessage]] = []
        self.released_at_once = released_at_once
        self.forwarder = Forwarder("a", self.sent.append, lambda c, m: self.replies.append((c, m)),
                                   lambda pid: None, release=self.sent.append,
                                   release_sent=lambda: self.released_at_once)

    def lock(self, client: Client, req: int, name: str = "lk") -> None:
        self.forwarder.forward(client, local.LockRequest(req, PID, TID, name, -1, []))

    def unlock(self, client: Client, req: int, name: str = "lk") -> None:
        self.forwarder.forward(client, local.UnlockRequest(req, PID, TID, name))

    def directory_answers(self, status: p.SyncStatus) -> bool:
        return self.forwarder.answer(p.SyncReply(self.sent[-1].req, status, ""))


def granted(agent: Agent, client: Client) -> None:
    agent.lock(client, 1)
    assert agent.directory_answers(p.SyncStatus.GRANTED)
    assert agent.replies.pop() == (client, local.SyncAnswer(1, p.SyncStatus.GRANTED, ""))


def test_a_release_of_a_granted_lock_is_answered_at_once_and_says_so_to_the_directory():
    agent, client = Agent(), Client()
    granted(agent, client)
    agent.unlock(client, 2)
    assert isinstance(agent.sent[-1], p.LockRelease) and agent.sent[-1].holder == f"a:{PID}:{TID}"
    assert agent.sent[-1].answered  # the directory answers only a failure
    assert agent.replies == [(client, local.SyncAnswer(2, p.SyncStatus.RELEASED, ""))]
    assert not agent.directory_answers(p.SyncStatus.RELEASED)  # nobody waits for one
    assert len(agent.replies) == 1
    # released: a second release is the directory's to refuse, and the thread waits for it
    agent.unlock(client, 3)
    assert len(agent.replies) == 1
    assert agent.forwarder.answer(p.Error(agent.sent[-1].req, "does not hold it"))
    assert agent.replies[-1] == (client, local.ErrorAnswer(3, "does not hold it"))


def test_an_error_answering_a_release_answered_already_is_reported_not_routed():
    agent, client = Agent(), Client()
    granted(agent, client)
    agent.unlock(client, 2)
    assert not agent.forwarder.answer(p.Error(agent.sent[-1].req, "refused"))  # the agent logs it
    assert len(agent.replies) == 1


@pytest.mark.parametrize("status", [p.SyncStatus.TIMEOUT])
def test_a_release_of_a_lock_never_granted_waits_for_the_directory(status):
    agent, client = Agent(), Client()
    agent.lock(client, 1)
    agent.directory_answers(status)
    agent.replies.clear()
    agent.unlock(client, 2)
    assert agent.replies == []
    assert agent.directory_answers(p.SyncStatus.RELEASED)
    assert agent.replies == [(client, local.SyncAnswer(2, p.SyncStatus.RELEASED, ""))]


def test_a_release_held_back_behind_diffs_waits_for_the_directory():
    agent, client = Agent(released_at_once=False), Client()
    granted(agent, client)
    agent.unlock(client, 2)
    assert agent.replies == []
    assert agent.directory_answers(p.SyncStatus.RELEASED)
    assert agent.replies == [(client, local.SyncAnswer(2, p.SyncStatus.RELEASED, ""))]


def test_another_client_or_a_forgotten_one_does_not_release_at_once():
    agent, client, other = Agent(), Client(), Client()
    granted(agent, client)
    agent.unlock(other, 2)  # the same pid and thread, but another connection
    assert agent.replies == []
    agent.forwarder.forget_client(client)
    agent.unlock(client, 3)
    assert agent.replies == []
