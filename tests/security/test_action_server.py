"""Attacks on the action server, sent by a stranger who can reach its port.

Each test sends the request an attacker would send to the real action server (started
as `make run` starts it) and shows it refused: no token, a made-up tracker that claims
a verified terminal, a deflate bomb, an oversized body, a crash that would echo the
request, and a listening address other hosts can reach.
"""
import datetime as dt
import http.client
import json
import urllib.error
import urllib.request
import uuid
import zlib
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import pytest
import sqlalchemy as sa

from actions.registry import Registry, hash_phone_tail, terminals
from tests.support.servers import DOMAIN

TODAY = dt.date.today()
MERCHANT = "安全测试店"


def call(bot, body: bytes, token: Optional[str], headers: Optional[Dict[str, str]] = None,
         path: str = "/webhook") -> Tuple[int, str]:
    query = f"?token={token}" if token is not None else ""
    request = urllib.request.Request(
        f"http://127.0.0.1:{bot.action_port}{path}{query}", data=body,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("utf-8", "replace")


def action_call(action: str, slots: Dict[str, Any], intent: str = "check_terminal_status",
                sender: Optional[str] = None) -> bytes:
    """The body Rasa sends to run `action`, with a tracker the attacker wrote."""
    latest = {"text": "", "intent": {"name": intent, "confidence": 1.0}, "entities": []}
    tracker = {
        "sender_id": sender or f"attacker-{uuid.uuid4().hex[:8]}",
        "slots": slots,
        "latest_message": latest,
        "events": [{"event": "user", "text": "", "parse_data": latest}],
        "paused": False,
        "followup_action": None,
        "active_loop": {},
        "latest_action_name": "action_listen",
    }
    domain = {"slots": {name: {} for name in DOMAIN["slots"]}, "responses": {}}
    return json.dumps({"next_action": action, "sender_id": tracker["sender_id"], "tracker": tracker,
                       "domain": domain, "version": "3.6.21"}).encode()


@pytest.fixture(scope="module")
def target(bot) -> str:
    """A terminal of the test's own, so a filed request does not change the demo ones."""
    registry = Registry(f"sqlite:///{bot.terminal_db}", auto_seed=False)
    with registry.engine.begin() as connection:
        connection.execute(terminals.insert().values(
            terminal_id="SEC00001", merchant_name=MERCHANT, device_type="电签POS",
            phone_tail_hash=hash_phone_tail("SEC00001", "4321"),
            last_transaction_on=TODAY - dt.timedelta(days=1),
            contract_ends_on=TODAY + dt.timedelta(days=30),
            deposit_amount=199, deposit_refunded=False, termination_fee=0,
        ))
    return "SEC00001"


def requests_filed(bot, terminal_id: str) -> int:
    engine = sa.create_engine(f"sqlite:///{bot.terminal_db}")
    try:
        with engine.connect() as connection:
            return connection.execute(sa.text(
                "SELECT count(*) FROM deregistration_requests WHERE terminal_id = :t"), {"t": terminal_id}).scalar()
    finally:
        engine.dispose()


CLAIMED = {"terminal_id": "SEC00001", "phone_tail": "verified", "verified_terminal": "SEC00001",
           "deregistration_confirmed": True, "verify_failures": 0}


@pytest.mark.parametrize("token", [None, "", "guess", "x" * 64], ids=["no token", "empty", "guess", "long guess"])
@pytest.mark.parametrize("action", ["action_terminal_status", "action_submit_deregistration"])
def test_a_call_without_the_token_is_refused(bot, target, token, action):
    status, text = call(bot, action_call(action, CLAIMED), token)
    assert status == 401
    assert MERCHANT not in text and "SEC00001" not in text
    assert requests_filed(bot, target) == 0


def test_listing_the_actions_needs_the_token_too(bot):
    request = urllib.request.Request(f"http://127.0.0.1:{bot.action_port}/actions")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401


def test_a_claimed_verification_reveals_and_files_nothing_even_with_the_token(bot, target):
    """Defence in depth: a caller that has the token still cannot assert a verification."""
    for action in ("action_terminal_status", "action_terminal_followup"):
        status, text = call(bot, action_call(action, CLAIMED, intent="ask_deposit"), bot.action_token)
        assert status == 200
        assert MERCHANT not in text and "199" not in text
    status, _ = call(bot, action_call("action_submit_deregistration", CLAIMED), bot.action_token)
    assert status == 200
    assert requests_filed(bot, target) == 0


def test_a_deflate_bomb_is_refused_before_it_is_inflated(bot):
    bomb = zlib.compress(b"{" + b" " * 200_000_000 + b"}", 9)  # 200 MB of JSON in ~200 KB
    status, _ = call(bot, bomb, bot.action_token, {"Content-Encoding": "deflate"})
    assert status == 413
    status, _ = call(bot, bomb, None, {"Content-Encoding": "deflate"})
    assert status == 401
    assert rss_mb(bot.actions.proc.pid) < 400
    with urllib.request.urlopen(f"http://127.0.0.1:{bot.action_port}/health", timeout=10) as health:
        assert health.status == 200


def test_an_oversized_body_is_refused_before_it_is_read(bot):
    connection = http.client.HTTPConnection("127.0.0.1", bot.action_port, timeout=10)
    connection.putrequest("POST", f"/webhook?token={bot.action_token}")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(100 * 1024 * 1024))
    connection.endheaders()  # announces 100 MB and sends none of it
    assert connection.getresponse().status == 413
    connection.close()


def test_an_error_reply_does_not_echo_the_request(bot):
    body = json.dumps({"next_action": "action_terminal_status", "tracker": "手机13800006721"}).encode()
    status, text = call(bot, body, bot.action_token)
    assert status == 500
    assert "13800006721" not in text and "6721" not in text


def test_it_listens_on_the_loopback_address_only(bot):
    port = f"{bot.action_port:04X}"
    listening = [
        line.split()[1] for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
        if line.split()[1].endswith(f":{port}") and line.split()[3] == "0A"
    ]
    assert listening == [f"0100007F:{port}"]
    assert not any(
        line.split()[1].endswith(f":{port}") and line.split()[3] == "0A"
        for line in Path("/proc/net/tcp6").read_text().splitlines()[1:]
    )


def test_rasa_still_reaches_it_and_a_real_verification_works(bot, target):
    sender = f"sec-{uuid.uuid4().hex[:8]}"
    bot.texts(sender, "帮我查一下终端状态")
    bot.texts(sender, "SEC00001")
    texts = bot.texts(sender, "4321")
    assert any(MERCHANT in text for text in texts), texts


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_the_servers_database_files_are_private(bot, target):
    bot.texts(f"sec-{uuid.uuid4().hex[:8]}", "你好")  # the tracker store has written
    for path in (bot.terminal_db, bot.workdir / "tracker.db"):
        assert path.exists(), path
        assert path.stat().st_mode & 0o077 == 0, f"{path.name} is readable by others"
