"""The workload <-> agent messages (``dsm.local``): every one round-trips, a malformed one is a
ProtocolError that names what was wrong, and, property-based, nothing else ever comes out."""


import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsm import local
from dsm.errors import ProtocolError
from dsm.schema import field_names
from tests.strategies import any_value, valid_value

#: examples per property (the local socket's dozen request types, many times each)
EXAMPLES = 120
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
CLASSES = list(local.LOCAL_MESSAGE_CLASSES)
TO_AGENT, TO_WORKLOAD = local.Direction.TO_AGENT, local.Direction.TO_WORKLOAD


@st.composite
def valid_local(draw, cls):
    from typing import get_type_hints
    hints = get_type_hints(cls, include_extras=True)
    return cls(**{name: draw(valid_value(hints[name])) for name in field_names(cls)})


@FUZZ
@given(st.data())
def test_every_message_round_trips(data):
    cls = data.draw(st.sampled_from(CLASSES))
    msg = data.draw(valid_local(cls))
    assert local.decode(local.encode(msg), cls.FDS, cls.DIRECTION) == msg


@pytest.mark.parametrize("body,to,nfds,complaint", [
    ({"type": "stats", "req": 1, "pid": 5}, TO_AGENT, 0, "StatsRequest lacks field 'tid'"),
    ({"type": "stats", "req": 1, "pid": 5, "tid": 1, "x": 2}, TO_AGENT, 0,
     "StatsRequest has no field 'x'"),
    ({"type": "stats", "req": 1, "pid": 0, "tid": 1}, TO_AGENT, 0,
     "StatsRequest.pid 0 is outside 1..4194304"),
    ({"type": "stats", "req": 1, "pid": 1 << 40, "tid": 1}, TO_AGENT, 0, "StatsRequest.pid"),
    ({"type": "stats", "req": 1, "pid": 5, "tid": 1}, TO_AGENT, 1,
     "StatsRequest carries 0 file descriptors, got 1"),
    ({"type": "register", "pid": 5}, TO_AGENT, 0, "Register carries 1 file descriptors, got 0"),
    ({"type": "layout", "base": 0, "size": 1, "page_size": 1, "node": "n"}, TO_AGENT, 1,
     "Greeting travels agent -> workload: it is not received workload -> agent"),
    ({"type": "nope"}, TO_AGENT, 0, "unknown local message type 'nope'"),
    ({"kind": "stats"}, TO_AGENT, 0, "must have a string 'type'"),
    ([1, 2], TO_AGENT, 0, "must be a map, got list"),
    ({"type": "lock_info", "req": 1, "holder": "a", "waiting": ["b", 1]}, TO_WORKLOAD, 0,
     r"LockStatusAnswer.waiting\[1\] must be str, got int"),
])
def test_malformed_local_messages_name_the_problem(body, to, nfds, complaint):
    with pytest.raises(ProtocolError, match=complaint):
        local.decode(msgpack.packb(body), nfds, to)


@FUZZ
@given(st.data())
def test_random_fields_are_refused_or_valid(data):
    cls = data.draw(st.sampled_from(CLASSES))
    body = {local.TAG_KEY: cls.TAG}
    for name in field_names(cls):
        if data.draw(st.integers(0, 9)):  # now and then a field is missing
            body[name] = data.draw(st.one_of(any_value(), valid_value(int)))
    if data.draw(st.integers(0, 9)) == 0:
        body[data.draw(st.text(max_size=4))] = data.draw(any_value())
    nfds = data.draw(st.sampled_from([cls.FDS, cls.FDS, 0, 1, 3]))
    to = data.draw(st.sampled_from([TO_AGENT, TO_WORKLOAD]))
    try:
        msg = local.decode(msgpack.packb(body), nfds, to)
    except ProtocolError as exc:
        assert str(exc)
        return
    assert local.decode(local.encode(msg), nfds, to) == msg


@FUZZ
@given(st.one_of(st.binary(max_size=128), any_value().map(msgpack.packb)))
def test_random_bytes_and_documents(data):
    for to in (TO_AGENT, TO_WORKLOAD):
        try:
            local.decode(data, 0, to)
        except ProtocolError:
            pass
