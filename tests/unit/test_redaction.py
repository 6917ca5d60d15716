"""Phone tails typed to verify a terminal never reach the conversation store in clear."""
import asyncio
from pathlib import Path

import sqlalchemy as sa
from rasa.shared.core.domain import Domain
from rasa.shared.core.events import ActionExecuted, SlotSet, UserUttered
from rasa.shared.core.trackers import DialogueStateTracker

from lakala_server.redaction import MASK, redact_event_dict
from lakala_server.tracker_store import UrlSQLTrackerStore

ROOT = Path(__file__).resolve().parents[2]


def _tail_turn():
    tail_entity = {"entity": "phone_tail", "value": "0839", "start": 2, "end": 6}
    return [
        ActionExecuted("terminal_status_form"),
        SlotSet("requested_slot", "phone_tail"),
        UserUttered("尾号0839", {"name": "inform", "confidence": 0.9}, [tail_entity]),
        SlotSet("phone_tail", "0839"),
        SlotSet("phone_tail", "verified"),
        UserUttered("终端30091254", {"name": "inform", "confidence": 0.9}, []),
    ]


def test_stored_events_hold_no_phone_tail(tmp_path, monkeypatch):
    db = tmp_path / "tracker.db"
    monkeypatch.setenv("TRACKER_DB_URL", f"sqlite:///{db}")
    domain = Domain.load(str(ROOT / "domain.yml"))
    tracker = DialogueStateTracker.from_events("merchant", _tail_turn(), domain.slots)
    asyncio.run(UrlSQLTrackerStore(domain=domain).save(tracker))

    raw = " ".join(row[0] for row in sa.create_engine(f"sqlite:///{db}").execute(sa.text("SELECT data FROM events")))
    assert "0839" not in raw
    assert MASK in raw
    assert "30091254" in raw  # terminal numbers are not secret and stay readable

    restored = asyncio.run(UrlSQLTrackerStore(domain=domain).retrieve("merchant"))
    assert restored.get_slot("phone_tail") == "verified"
    assert [e.text for e in restored.events if isinstance(e, UserUttered)] == [f"尾号{MASK}", "终端30091254"]


def test_digits_typed_while_the_tail_is_asked_are_masked_even_without_an_entity():
    event = UserUttered("是1456吧", {"name": "inform", "confidence": 0.5}, []).as_dict()
    assert redact_event_dict(event, "phone_tail")["text"] == f"是{MASK}吧"
    assert redact_event_dict(event, None)["text"] == "是1456吧"


def user(text):
    return UserUttered(text, {"name": "inform", "confidence": 0.5}, []).as_dict()


def test_tails_typed_with_spaces_or_full_width_digits_are_masked():
    for typed in ("67 21", "６７２１", "尾号 ６７ ２１ 谢谢"):
        assert "67" not in redact_event_dict(user(typed), "phone_tail")["text"].replace("６７", "67"), typed
    slot = SlotSet("phone_tail", "６７２１").as_dict()
    assert redact_event_dict(slot, None)["value"] == MASK


def test_whole_phone_numbers_are_masked_in_any_turn():
    for typed in ("我手机13800006721", "手机 138 0000 6721", "138-0000-6721", "１３８００００６７２１",
                  "+86 13800006721", "电话+86 138 0000 6721", "008613800006721"):
        masked = redact_event_dict(user(typed), None)["text"]
        assert "6721" not in masked and "６７２１" not in masked and MASK in masked, typed


def test_a_tail_typed_when_the_terminal_number_is_asked_is_masked_in_text_and_slot():
    assert redact_event_dict(user("6721"), "terminal_id")["text"] == MASK
    assert redact_event_dict(user("30091254"), "terminal_id")["text"] == "30091254"
    assert redact_event_dict(SlotSet("terminal_id", "6721").as_dict(), None)["value"] == MASK
    assert redact_event_dict(SlotSet("terminal_id", "K730-6118").as_dict(), None)["value"] == "K730-6118"


def test_masking_leaves_the_conversation_in_memory_as_it_was(tmp_path, monkeypatch):
    """The running conversation keeps what the merchant typed; only the stored copy is masked."""
    monkeypatch.setenv("TRACKER_DB_URL", f"sqlite:///{tmp_path / 'tracker.db'}")
    domain = Domain.load(str(ROOT / "domain.yml"))
    tracker = DialogueStateTracker.from_events("merchant", _tail_turn(), domain.slots)
    before = [event.as_dict() for event in tracker.events]
    asyncio.run(UrlSQLTrackerStore(domain=domain).save(tracker))
    assert [event.as_dict() for event in tracker.events] == before
    assert tracker.events[2].parse_data["entities"][0]["value"] == "0839"


def test_a_phone_number_in_a_free_text_slot_is_masked_and_the_rest_kept():
    slot = SlotSet("callback_topic", "押金退款的事 我的手机138 0000 6721").as_dict()
    assert redact_event_dict(slot, None)["value"] == "押金退款的事 我的手机" + MASK


def _marker_with_a_phone_like_run(monkeypatch):
    """A real verified-terminal marker whose MAC holds 11 digits starting with 1, as about one
    marker in 500 does; the search over conversations is deterministic with a fixed secret."""
    from actions import verification

    monkeypatch.setenv("VERIFICATION_SECRET", "a-fixed-secret-for-this-test")
    for n in range(100_000):
        sender = f"wechat:user{n}"
        marker = verification.sign("30091254", sender, now=1_800_000_000)
        if redact_event_dict({"event": "user", "text": marker})["text"] != marker:
            return sender, marker
    raise AssertionError("no marker with a phone-like run found")


def test_a_verified_terminal_marker_is_stored_as_it_was_signed(tmp_path, monkeypatch):
    """Masking a digit run inside the marker's MAC made a fresh verification read as expired
    on the next turn (seen in CI: "身份核实已过期" right after the lookup)."""
    from actions import verification

    sender, marker = _marker_with_a_phone_like_run(monkeypatch)
    monkeypatch.setenv("TRACKER_DB_URL", f"sqlite:///{tmp_path / 'tracker.db'}")
    domain = Domain.load(str(ROOT / "domain.yml"))
    events = _tail_turn() + [SlotSet("verified_terminal", marker)]
    asyncio.run(UrlSQLTrackerStore(domain=domain).save(DialogueStateTracker.from_events(sender, events, domain.slots)))

    restored = asyncio.run(UrlSQLTrackerStore(domain=domain).retrieve(sender))
    assert restored.get_slot("verified_terminal") == marker
    proved = verification.verified_terminal(restored.get_slot("verified_terminal"), sender, now=1_800_000_001)
    assert proved == "30091254"
    assert redact_event_dict(SlotSet("verified_terminal", marker).as_dict(), None)["value"] == marker
