"""The per-client token buckets in front of the channels."""
from types import SimpleNamespace

from lakala_server.ratelimit import TokenBuckets, client_of


def test_a_burst_then_one_message_per_refill():
    buckets = TokenBuckets(30)
    assert all(buckets.allow("a", now=0.0) for _ in range(30))
    assert not buckets.allow("a", now=0.0)
    assert not buckets.allow("a", now=1.9)
    assert buckets.allow("a", now=2.1)  # 30 a minute: one every 2 s
    assert buckets.allow("b", now=0.0)  # another client has its own bucket


def test_the_buckets_stay_bounded():
    buckets = TokenBuckets(1, max_keys=100)
    for n in range(1000):
        buckets.allow(f"client-{n}", now=0.0)
    assert len(buckets._buckets) == 100


def request(ip, forwarded=None):
    return SimpleNamespace(ip=ip, headers={"X-Forwarded-For": forwarded} if forwarded else {})


def test_who_the_client_is():
    assert client_of(request("203.0.113.5")) == "203.0.113.5"
    assert client_of(request("203.0.113.5", "10.0.0.1")) == "203.0.113.5"  # a stranger's header is ignored
    assert client_of(request("127.0.0.1", "198.51.100.1, 203.0.113.7")) == "203.0.113.7"  # our proxy's hop
    assert client_of(request("127.0.0.1")) is None  # this machine's own tools
