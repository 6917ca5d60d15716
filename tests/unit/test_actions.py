"""Custom actions with rasa_sdk's real Tracker and CollectingDispatcher, against a real terminal registry.

The module-level default registry (actions.registry.get_registry) is pointed at a temporary SQLite file
through TERMINAL_DB_URL; the failure tests point it at an unreachable server and at the local PostgreSQL
with the terminals table locked. The actions read today's date from the clock (there is no setting to pin
it), and the registry seeds the demo terminals relative to the day of first use: expected dates are
today plus or minus whole days, and working days are counted with the hand-typed official holiday schedule
(tests/support/holidays.py), never with the code under test (actions/policy.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import sqlalchemy as sa
import yaml
from rasa_sdk import Action, Tracker
from rasa_sdk.executor import CollectingDispatcher

from actions import registry as reg
from actions.config import REPO_ROOT
from actions.terminal import (
    ActionAskDeregistrationConfirmed,
    ActionSubmitDeregistration,
    ActionTerminalFollowup,
    ActionTerminalStatus,
    ValidateDeregistrationForm,
    ValidateTerminalStatusForm,
    confirmation_decision,
)
from actions.verification import sign, verified_terminal
from tests.postgres import Relay, postgres_schema
from tests.support import holidays

DOMAIN: dict[str, Any] = yaml.safe_load((REPO_ROOT / "domain.yml").read_text(encoding="utf-8"))
UNREACHABLE_POSTGRES_URL = "postgresql://postgres@127.0.0.1:1/nope"
UNREACHABLE_SQLITE_URL = "sqlite:////proc/lakala-missing/terminals.db"
# Keys every CollectingDispatcher message has; anything else is a value passed to the response.
MESSAGE_KEYS = {"text", "buttons", "elements", "custom", "template", "response", "image", "attachment"}
STATUS_FORM_SLOTS = ["terminal_id", "phone_tail"]
DEREGISTRATION_FORM_SLOTS = ["terminal_id", "phone_tail", "deregistration_confirmed"]
DEMO = {demo.terminal_id: demo for demo in reg.DEMO_TERMINALS}
PLACEHOLDER = re.compile(r"{([^\n{}]+?)}")


# --- PostgreSQL (as in test_registry.py) ----------------------------------------------------------------


# --- the default registry ---------------------------------------------------------------------------------


@pytest.fixture()
def use_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., reg.Registry]]:
    """Points the process-wide registry at a URL (and timeout), as the action server would read them."""
    created: list[reg.Registry] = []

    def configure(url: str, timeout: float | None = None) -> reg.Registry:
        monkeypatch.setenv("TERMINAL_DB_URL", url)
        monkeypatch.setenv("SEED_DEMO_TERMINALS", "1")
        if timeout is None:
            monkeypatch.delenv("DB_TIMEOUT_SECONDS", raising=False)
        else:
            monkeypatch.setenv("DB_TIMEOUT_SECONDS", str(timeout))
        reg.get_registry.cache_clear()
        registry = reg.get_registry()
        created.append(registry)
        return registry

    yield configure
    for registry in created:
        registry.close()
    reg.get_registry.cache_clear()


@pytest.fixture()
def registry(use_registry: Callable[..., reg.Registry], tmp_path: Path) -> reg.Registry:
    db_file = tmp_path / "terminals.db"
    registry = use_registry(f"sqlite:///{db_file}")
    assert registry.find("30091254") is not None  # first use creates and seeds the tmp file
    assert db_file.exists()
    return registry


@pytest.fixture()
def today(registry: reg.Registry) -> dt.date:
    return dt.date.today()


def request_rows(registry: reg.Registry, terminal_id: str) -> list[Any]:
    query = sa.select(reg.deregistration_requests).where(reg.deregistration_requests.c.terminal_id == terminal_id)
    with registry.engine.connect() as conn:
        return list(conn.execute(query))


# --- trackers, running actions, reading replies ---------------------------------------------------------


SENDER = "merchant-1"


def make_tracker(
    slots: dict[str, Any] | None = None,
    *,
    candidates: dict[str, Any] | None = None,
    intent: str | None = None,
    form: str | None = None,
    sender: str = SENDER,
) -> Tracker:
    """A tracker with the domain's initial slot values; candidates are slots just extracted from the user."""
    values: dict[str, Any] = {name: spec.get("initial_value") for name, spec in DOMAIN["slots"].items()}
    values["requested_slot"] = None
    values.update(slots or {})
    latest = {
        "text": "",
        "intent": {"name": intent, "confidence": 1.0} if intent else {},
        "entities": [],
    }
    events: list[dict[str, Any]] = [
        {"event": "action", "name": "action_listen"},
        {"event": "user", "text": "", "parse_data": latest},
    ]
    for name, value in (candidates or {}).items():
        values[name] = value
        events.append({"event": "slot", "name": name, "value": value})
    active_loop = {"name": form} if form else {}
    return Tracker(sender, values, latest, events, False, None, active_loop, "action_listen")


def marker(terminal_id: str, sender: str = SENDER) -> str:
    """The signed verified-terminal marker the action server gives a conversation."""
    return sign(terminal_id, sender)


def proves(value: Any, sender: str = SENDER) -> Any:
    """The terminal a marker proves for the conversation, or None."""
    return verified_terminal(value, sender)


def verified(terminal_id: str, **slots: Any) -> dict[str, Any]:
    return {"terminal_id": terminal_id, "phone_tail": "verified", "verified_terminal": marker(terminal_id), **slots}


def run(action: Action, tracker: Tracker) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    dispatcher = CollectingDispatcher()
    events = asyncio.run(action.run(dispatcher, tracker, DOMAIN))
    json.dumps([dispatcher.messages, events])  # both go back to Rasa as JSON
    for message in dispatcher.messages:
        render(message, tracker)
    return dispatcher.messages, events


def validate(
    form: Action, slots: dict[str, Any], candidates: dict[str, Any]
) -> tuple[list[dict[str, Any]], dict[str, Any], Tracker]:
    """Runs the form's validation action for freshly extracted slots; (messages, slots set, tracker)."""
    tracker = make_tracker(slots, candidates=candidates, form=form.name().replace("validate_", "", 1))
    messages, events = run(form, tracker)
    assert all(event["event"] == "slot" for event in events), events
    return messages, {event["name"]: event["value"] for event in events}, tracker


def required_slots(form: ValidateDeregistrationForm | ValidateTerminalStatusForm, tracker: Tracker) -> list[str]:
    dispatcher = CollectingDispatcher()
    slots = asyncio.run(form.required_slots(form.domain_slots(DOMAIN), dispatcher, tracker, DOMAIN))
    assert dispatcher.messages == []
    return slots


def names(messages: list[dict[str, Any]]) -> list[str]:
    return [message["response"] for message in messages]


def values(message: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in message.items() if key not in MESSAGE_KEYS}


def render(message: dict[str, Any], tracker: Tracker) -> str:
    """Fills the response like Rasa does (slots, then the message's values); every placeholder must be known."""
    name = message["response"]
    assert name in DOMAIN["responses"], f"{name} is not a response in domain.yml"
    text = DOMAIN["responses"][name][0].get("text", "")
    known = {**tracker.slots, **values(message)}
    missing = [key for key in PLACEHOLDER.findall(text) if known.get(key) in (None, "")]
    assert not missing, f"{name} needs {missing}, got {values(message)}"
    return PLACEHOLDER.sub(lambda match: str(known[match.group(1)]), text)


def iso(day: dt.date) -> str:
    return day.isoformat()


def days(today: dt.date, n: int) -> str:
    return iso(today + dt.timedelta(days=n))


# --- validate_terminal_id ------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", [ValidateTerminalStatusForm(), ValidateDeregistrationForm()], ids=lambda f: f.name())
@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("k730-6118", "K7306118"),
        (" K730 6118 ", "K7306118"),
        ("Ｋ７３０６１１８", "K7306118"),
        ("3009 1254", "30091254"),
    ],
)
def test_terminal_id_is_normalised(registry: reg.Registry, form: Action, typed: str, expected: str) -> None:
    messages, slots, _ = validate(form, {}, {"terminal_id": typed})
    assert messages == []
    assert slots["terminal_id"] == expected
    assert slots["phone_tail"] is None and slots["verified_terminal"] is None
    assert slots.get("requested_slot") is None  # Rasa asks the next slot itself


@pytest.mark.parametrize("typed", ["K730611", "K73061189", "K730611*", "你好", ""])
def test_malformed_terminal_id(registry: reg.Registry, typed: str) -> None:
    messages, slots, _ = validate(ValidateTerminalStatusForm(), {}, {"terminal_id": typed})
    assert names(messages) == ["utter_terminal_id_malformed"]
    assert values(messages[0]) == {}
    assert slots["terminal_id"] is None


def test_unknown_terminal_id(registry: reg.Registry) -> None:
    messages, slots, tracker = validate(ValidateTerminalStatusForm(), {}, {"terminal_id": "zzzz-0000"})
    assert names(messages) == ["utter_terminal_not_found"]
    assert values(messages[0]) == {"terminal_id": "ZZZZ0000"}
    assert "ZZZZ0000" in render(messages[0], tracker)
    assert slots["terminal_id"] is None


def test_changing_terminal_resets_the_verification(registry: reg.Registry) -> None:
    messages, slots, _ = validate(ValidateTerminalStatusForm(), verified("30091254"), {"terminal_id": "K7306118"})
    assert messages == []
    assert slots == {"terminal_id": "K7306118", "phone_tail": None, "verified_terminal": None}


def test_same_terminal_again_keeps_the_verification(registry: reg.Registry) -> None:
    messages, slots, _ = validate(ValidateTerminalStatusForm(), verified("K7306118"), {"terminal_id": "k7306118"})
    assert messages == []
    assert slots == {"terminal_id": "K7306118"}


# --- validate_phone_tail -------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", [ValidateTerminalStatusForm(), ValidateDeregistrationForm()], ids=lambda f: f.name())
@pytest.mark.parametrize("terminal_id", sorted(DEMO))
def test_right_phone_tail_verifies(registry: reg.Registry, form: Action, terminal_id: str) -> None:
    tail = DEMO[terminal_id].phone_tail
    messages, slots, _ = validate(
        form, {"terminal_id": terminal_id, "verify_failures": 2.0}, {"phone_tail": f" {tail} "}
    )
    assert messages == []
    assert slots["phone_tail"] == "verified"
    assert proves(slots["verified_terminal"]) == terminal_id
    assert slots["verify_failures"] == 0
    assert tail not in json.dumps(slots)  # the digits are kept in no slot


def test_full_width_phone_tail_verifies(registry: reg.Registry) -> None:
    _, slots, _ = validate(ValidateTerminalStatusForm(), {"terminal_id": "K7306118"}, {"phone_tail": "０８３９"})
    assert (slots["phone_tail"], proves(slots["verified_terminal"])) == ("verified", "K7306118")


def test_already_verified_marker_is_accepted_only_for_the_verified_terminal(registry: reg.Registry) -> None:
    messages, slots, _ = validate(ValidateTerminalStatusForm(), verified("K7306118"), {"phone_tail": "verified"})
    assert messages == [] and slots["phone_tail"] == "verified"
    messages, slots, _ = validate(
        ValidateTerminalStatusForm(),
        {"terminal_id": "K7306118", "verified_terminal": marker("30091254")},
        {"phone_tail": "verified"},
    )
    assert names(messages) == ["utter_phone_tail_malformed"] and slots["phone_tail"] is None


@pytest.mark.parametrize("typed", ["839", "08390", "abcd", ""])
def test_malformed_phone_tail_is_not_a_failed_try(registry: reg.Registry, typed: str) -> None:
    messages, slots, _ = validate(ValidateTerminalStatusForm(), {"terminal_id": "K7306118"}, {"phone_tail": typed})
    assert names(messages) == ["utter_phone_tail_malformed"]
    assert slots["phone_tail"] is None
    assert "verify_failures" not in slots


def terminal_secrets(terminal_id: str, today: dt.date) -> list[str]:
    """Strings that would reveal the terminal's details: names, money, dates."""
    demo = DEMO[terminal_id]
    status = reg.get_registry().status(terminal_id)
    found = [demo.merchant_name, demo.device_type, demo.phone_tail]
    found += [str(amount) for amount in (demo.deposit_amount, demo.termination_fee) if amount]
    for day in (
        status.last_transaction_on,
        status.contract_ends_on,
        status.dormant_on,
        status.auto_deregister_on,
        status.requested_on,
        status.completes_on,
    ):
        if day is not None:
            found += [iso(day), f"{day:%Y%m%d}"]
    return found


@pytest.mark.parametrize("terminal_id", ["30091254", "K7306118", "A0012345"])
def test_wrong_phone_tail_reveals_nothing(registry: reg.Registry, today: dt.date, terminal_id: str) -> None:
    wrong = "0000" if DEMO[terminal_id].phone_tail != "0000" else "1111"
    secrets_ = terminal_secrets(terminal_id, today)
    failures = 0.0
    for tries_left in (2, 1):
        messages, slots, _ = validate(
            ValidateTerminalStatusForm(),
            {"terminal_id": terminal_id, "verify_failures": failures},
            {"phone_tail": wrong},
        )
        assert names(messages) == ["utter_phone_tail_wrong"]
        assert values(messages[0]) == {"tries_left": tries_left}
        assert slots["phone_tail"] is None and slots["verified_terminal"] is None
        assert slots["verify_failures"] == 3 - tries_left
        reply = json.dumps([messages, slots], ensure_ascii=False)
        leaked = [secret for secret in secrets_ if secret in reply]
        assert not leaked, leaked
        failures = slots["verify_failures"]


@pytest.mark.parametrize("form", [ValidateTerminalStatusForm(), ValidateDeregistrationForm()], ids=lambda f: f.name())
def test_third_wrong_phone_tail_locks(registry: reg.Registry, form: Action) -> None:
    messages, slots, tracker = validate(
        form, {"terminal_id": "30091254", "verify_failures": 2.0}, {"phone_tail": "1111"}
    )
    assert messages == []  # the action after the form says it is locked
    assert slots["verify_failures"] == 3
    assert slots["phone_tail"] is None and slots["verified_terminal"] is None
    assert "requested_slot" in slots and slots["requested_slot"] is None  # the form stops asking

    locked = make_tracker({"terminal_id": "30091254", "verify_failures": 3.0})
    assert required_slots(ValidateTerminalStatusForm(), locked) == []
    assert required_slots(ValidateDeregistrationForm(), locked) == []
    messages, events = run(ActionTerminalStatus(), locked)
    assert names(messages) == ["utter_verification_locked"]
    assert values(messages[0]) == {}
    assert [(e["event"], e["name"]) for e in events] == [("followup", "action_handoff")]  # then a person
    messages, events = run(ActionSubmitDeregistration(), make_tracker({**verified("30091254"), "verify_failures": 3.0}))
    assert names(messages) == ["utter_verification_locked"]
    assert any(event.get("event") == "followup" and event.get("name") == "action_handoff" for event in events)
    assert request_rows(registry, "30091254") == []


def test_a_locked_conversation_no_longer_checks_tails(registry: reg.Registry) -> None:
    messages, slots, _ = validate(
        ValidateTerminalStatusForm(),
        {"terminal_id": "30091254", "verify_failures": 3.0},
        {"phone_tail": DEMO["30091254"].phone_tail},
    )
    assert messages == []
    assert slots.get("verified_terminal") is None and slots.get("phone_tail") != "verified"
    assert slots["requested_slot"] is None


def test_verified_status_lookup_locked_even_if_verified_earlier(registry: reg.Registry) -> None:
    messages, _ = run(ActionTerminalStatus(), make_tracker({**verified("30091254"), "verify_failures": 3.0}))
    assert names(messages) == ["utter_verification_locked"]


# --- action_terminal_status -------------------------------------------------------------------------------------


def status_replies(terminal_id: str, today: dt.date) -> list[tuple[str, dict[str, Any]]]:
    """The contract's replies for each demo terminal: (response, values it must carry)."""
    if terminal_id == "30091254":
        return [
            ("utter_status_active", {"merchant": "张记便利店", "device": "电签POS", "last_tx": days(today, -2)}),
            ("utter_deposit_after_deregistration", {"deposit": 299}),
            ("utter_fee_due", {"fee": 200, "contract_end": days(today, 200)}),
        ]
    if terminal_id == "K7306118":
        return [
            (
                "utter_status_dormant",
                {
                    "merchant": "李记水果店",
                    "device": "手机POS",
                    "last_tx": days(today, -100),
                    "dormant_date": days(today, -10),
                    "auto_date": days(today, 80),
                    "days_left": 80,
                },
            ),
            ("utter_deposit_after_deregistration", {"deposit": 99}),
            ("utter_fee_none", {"fee": 0, "contract_end": days(today, -30)}),
        ]
    if terminal_id == "88004521":
        return [
            ("utter_status_auto_deregistered", {"merchant": "王家小馆", "auto_date": days(today, -20)}),
            ("utter_deposit_refundable_now", {"deposit": 199}),
        ]
    if terminal_id == "A0012345":
        requested = holidays.working_days_before(today, 3).date
        completion = holidays.completes_on(requested)
        response = "utter_status_in_progress_estimate" if completion.is_estimate else "utter_status_in_progress"
        return [
            (response, {"merchant": "赵氏五金", "requested_on": iso(requested), "completes_on": iso(completion.date)}),
            ("utter_deposit_none", {"deposit": 0}),
        ]
    if terminal_id == "55550001":
        requested = today - dt.timedelta(days=400 - 20)
        return [
            (
                "utter_status_deregistered",
                {"merchant": "孙家超市", "completes_on": iso(holidays.completes_on(requested).date)},
            ),
            ("utter_deposit_refunded", {"deposit": 299}),
        ]
    raise AssertionError(terminal_id)


@pytest.mark.parametrize("terminal_id", sorted(DEMO))
def test_terminal_status(registry: reg.Registry, today: dt.date, terminal_id: str) -> None:
    tracker = make_tracker(verified(terminal_id))
    messages, events = run(ActionTerminalStatus(), tracker)
    expected = status_replies(terminal_id, today)
    assert names(messages) == [name for name, _ in expected]
    for message, (name, wanted) in zip(messages, expected, strict=True):
        got = values(message)
        assert got["terminal_id"] == terminal_id
        assert {key: got.get(key) for key in wanted} == wanted, name
    assert events == []
    text = render(messages[0], tracker)
    assert DEMO[terminal_id].merchant_name in text and terminal_id in text


def test_pending_request_id_is_reported(registry: reg.Registry, today: dt.date) -> None:
    messages, _ = run(ActionTerminalStatus(), make_tracker(verified("A0012345")))
    requested = holidays.working_days_before(today, 3).date
    request_id = values(messages[0])["request_id"]
    assert re.fullmatch(rf"ZX{requested:%Y%m%d}[0-9A-Z]{{6}}", request_id), request_id
    assert [row.request_id for row in request_rows(registry, "A0012345")] == [request_id]


@pytest.mark.parametrize(
    "slots",
    [{"terminal_id": "30091254"}, {"terminal_id": "30091254", "verified_terminal": marker("K7306118")}, {}],
    ids=["unverified", "verified-another-terminal", "nothing"],
)
def test_terminal_status_without_verification_tells_nothing(registry: reg.Registry, slots: dict[str, Any]) -> None:
    messages, events = run(ActionTerminalStatus(), make_tracker(slots))
    assert messages == [] and events == []


# --- action_terminal_followup ---------------------------------------------------------------------------------------


def followup_cases(today: dt.date) -> dict[tuple[str, str], tuple[str, dict[str, Any]]]:
    return {
        ("ask_deposit", "30091254"): ("utter_deposit_after_deregistration", {"deposit": 299}),
        ("ask_deposit", "K7306118"): ("utter_deposit_after_deregistration", {"deposit": 99}),
        ("ask_deposit", "88004521"): ("utter_deposit_refundable_now", {"deposit": 199}),
        ("ask_deposit", "A0012345"): ("utter_deposit_none", {"deposit": 0}),
        ("ask_deposit", "55550001"): ("utter_deposit_refunded", {"deposit": 299}),
        ("ask_termination_fee", "30091254"): ("utter_fee_due", {"fee": 200, "contract_end": days(today, 200)}),
        ("ask_termination_fee", "K7306118"): ("utter_fee_none", {"fee": 0, "contract_end": days(today, -30)}),
        ("ask_termination_fee", "88004521"): ("utter_fee_not_applicable", {}),
        ("ask_termination_fee", "A0012345"): ("utter_fee_not_applicable", {}),
        ("ask_dormancy", "30091254"): (
            "utter_dormancy_schedule",
            {"last_tx": days(today, -2), "dormant_date": days(today, 88), "auto_date": days(today, 178)},
        ),
        ("ask_dormancy", "K7306118"): ("utter_status_dormant", {"auto_date": days(today, 80), "days_left": 80}),
        ("ask_dormancy", "88004521"): ("utter_dormancy_not_applicable", {}),
        ("ask_dormancy", "55550001"): ("utter_dormancy_not_applicable", {}),
    }


@pytest.mark.parametrize(("intent", "terminal_id"), list(followup_cases(dt.date.today())), ids=lambda value: str(value))
def test_followup(registry: reg.Registry, today: dt.date, intent: str, terminal_id: str) -> None:
    name, wanted = followup_cases(today)[(intent, terminal_id)]
    tracker = make_tracker(verified(terminal_id), intent=intent)
    messages, events = run(ActionTerminalFollowup(), tracker)
    assert names(messages) == [name]
    got = values(messages[0])
    assert got["terminal_id"] == terminal_id
    assert {key: got.get(key) for key in wanted} == wanted
    assert events == []


def test_followup_on_another_intent_repeats_the_state(registry: reg.Registry) -> None:
    messages, _ = run(ActionTerminalFollowup(), make_tracker(verified("K7306118"), intent="check_terminal_status"))
    assert names(messages) == ["utter_status_dormant"]


def forged_markers() -> dict[str, str]:
    """Markers a caller of the action server might send in place of a real verification."""
    good = marker("30091254")
    terminal, expires, mac = good.split(".")
    return {
        "bare terminal number": "30091254",
        "from another conversation": marker("30091254", sender="someone-else"),
        "terminal swapped": f"88004521.{expires}.{mac}",
        "expiry extended": f"{terminal}.{int(expires) + 86400}.{mac}",
        "mac edited": f"{terminal}.{expires}.{'0' * len(mac)}",
        "expired": sign("30091254", SENDER, now=time.time() - 31 * 60),
    }


@pytest.mark.parametrize("kind", list(forged_markers()))
def test_forged_or_expired_marker_reveals_and_changes_nothing(registry: reg.Registry, kind: str) -> None:
    slots = {"terminal_id": "30091254", "phone_tail": "verified", "verified_terminal": forged_markers()[kind]}
    messages, _ = run(ActionTerminalStatus(), make_tracker(slots))
    assert messages == []
    messages, events = run(ActionTerminalFollowup(), make_tracker(slots, intent="ask_deposit"))
    assert names(messages) == ["utter_deposit", "utter_verification_expired"]  # the general answer only
    assert {"event": "slot", "name": "verified_terminal", "value": None} in [
        {key: event.get(key) for key in ("event", "name", "value")} for event in events
    ]
    messages, _ = run(ActionSubmitDeregistration(), make_tracker({**slots, "deregistration_confirmed": True}))
    assert messages == [] and request_rows(registry, "30091254") == []
    _, slots_after, _ = validate(ValidateTerminalStatusForm(), slots, {"phone_tail": "verified"})
    assert slots_after["phone_tail"] is None


def test_marker_proves_its_terminal_for_its_conversation_until_it_expires() -> None:
    now = time.time()
    value = sign("K7306118", SENDER, now=now)
    assert verified_terminal(value, SENDER, now=now + 29 * 60) == "K7306118"
    assert verified_terminal(value, SENDER, now=now + 30 * 60) is None
    assert verified_terminal(value, "merchant-2", now=now) is None


# --- deregistration ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("terminal_id", "expected"),
    [
        ("30091254", DEREGISTRATION_FORM_SLOTS),
        ("K7306118", DEREGISTRATION_FORM_SLOTS),
        ("A0012345", STATUS_FORM_SLOTS),
        ("88004521", STATUS_FORM_SLOTS),
        ("55550001", STATUS_FORM_SLOTS),
    ],
)
def test_deregistration_form_skips_the_question_when_nothing_to_confirm(
    registry: reg.Registry, terminal_id: str, expected: list[str]
) -> None:
    assert required_slots(ValidateDeregistrationForm(), make_tracker(verified(terminal_id))) == expected
    # Not yet verified (or verified for another number): nothing is looked up, the form asks everything.
    assert required_slots(ValidateDeregistrationForm(), make_tracker({"terminal_id": terminal_id})) == (
        DEREGISTRATION_FORM_SLOTS
    )
    another = "30091254" if terminal_id != "30091254" else "K7306118"
    other = {"terminal_id": terminal_id, "verified_terminal": marker(another)}
    assert required_slots(ValidateDeregistrationForm(), make_tracker(other)) == DEREGISTRATION_FORM_SLOTS


def test_verifying_a_pending_terminal_ends_the_deregistration_form(registry: reg.Registry) -> None:
    messages, slots, _ = validate(ValidateDeregistrationForm(), {"terminal_id": "A0012345"}, {"phone_tail": "2290"})
    assert messages == []
    assert proves(slots["verified_terminal"]) == "A0012345"
    assert "requested_slot" in slots and slots["requested_slot"] is None
    messages, slots, _ = validate(ValidateDeregistrationForm(), {"terminal_id": "30091254"}, {"phone_tail": "6721"})
    assert proves(slots["verified_terminal"]) == "30091254"
    assert "requested_slot" not in slots  # Rasa goes on to ask for the confirmation


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        *[(text, False) for text in ["不注销了", "暂时先不注销", "还是不要注销了", "先不办了", "别注销", "我决定不注销",
                                     "算了，不注销了", "不用注销了 。"]],
        *[(text, True) for text in ["对，注销吧", "确定要注销", "可以，帮我办吧", "好的，提交吧", "就注销吧",
                                    "注销吧！", "要注销"]],
        # Questions (answered by the FAQ, then the question is asked again) and anything unclear.
        *[(text, None) for text in ["不注销会怎么样", "不注销可以吗", "可以注销吗", "注销要多久", "违约金多少",
                                    "确认一下违约金多少", "不确定", "注销账户", "我再想想", "你好", "",
                                    "好的，我马上注销但是想先问一下押金的事情"]],
    ],
)
def test_typed_decision_at_the_confirmation(typed: str, expected: bool | None) -> None:
    assert confirmation_decision(typed) is expected


def confirmation_reply(registry: reg.Registry, text: str, intent: str, requested: str) -> dict[str, Any]:
    """Slots the deregistration form's validation sets for `text` when `requested` was asked."""
    tracker = make_tracker(verified("30091254", requested_slot=requested), intent=intent,
                           form="deregistration_form")
    tracker.latest_message["text"] = text
    messages, events = run(ValidateDeregistrationForm(), tracker)
    assert messages == []
    return {event["name"]: event["value"] for event in events}


def test_the_form_reads_typed_decisions_the_classifier_missed(registry: reg.Registry) -> None:
    asked = "deregistration_confirmed"
    assert confirmation_reply(registry, "不注销了", "ask_need_deregister", asked) == {asked: False}
    assert confirmation_reply(registry, "可以注销", "ask_need_deregister", asked) == {asked: True}
    # A question is left alone, so Rasa rejects the form and the FAQ rule answers it.
    assert confirmation_reply(registry, "不注销会怎么样", "ask_need_deregister", asked) == {}
    # Only at the confirmation question, and never against what the intent mappings decided.
    assert confirmation_reply(registry, "不注销了", "ask_need_deregister", "terminal_id") == {}
    assert confirmation_reply(registry, "可以注销", "deny", asked) == {}


@pytest.mark.parametrize(
    ("terminal_id", "fee_response", "fee_values", "deposit"),
    [
        ("30091254", "utter_deregistration_fee_warning", {"fee": 200, "merchant": "张记便利店"}, 299),
        ("K7306118", "utter_deregistration_no_fee", {"fee": 0, "merchant": "李记水果店"}, 99),
    ],
)
def test_ask_deregistration_confirmed(
    registry: reg.Registry,
    today: dt.date,
    terminal_id: str,
    fee_response: str,
    fee_values: dict[str, Any],
    deposit: int,
) -> None:
    tracker = make_tracker(verified(terminal_id, requested_slot="deregistration_confirmed"), form="deregistration_form")
    messages, events = run(ActionAskDeregistrationConfirmed(), tracker)
    completion = holidays.completes_on(today)
    ask = (
        "utter_ask_deregistration_confirmed_estimate"
        if completion.is_estimate
        else "utter_ask_deregistration_confirmed"
    )
    assert names(messages) == [fee_response, "utter_deposit_after_deregistration", ask]
    fee_message = values(messages[0])
    assert {key: fee_message[key] for key in fee_values} == fee_values
    assert fee_message["terminal_id"] == terminal_id
    if fee_values["fee"]:
        assert fee_message["contract_end"] == days(today, 200)
        assert "200" in render(messages[0], tracker)
    assert values(messages[1])["deposit"] == deposit
    assert values(messages[2]) == {"completes_on": iso(completion.date)}
    assert events == []
    assert request_rows(registry, terminal_id) == []  # asking records nothing


def test_submit_confirmed_creates_one_request(registry: reg.Registry, today: dt.date) -> None:
    tracker = make_tracker(verified("30091254", deregistration_confirmed=True))
    messages, events = run(ActionSubmitDeregistration(), tracker)
    completion = holidays.completes_on(today)
    submitted = (
        "utter_deregistration_submitted_estimate" if completion.is_estimate else "utter_deregistration_submitted"
    )
    assert names(messages) == [submitted]
    first = values(messages[0])
    assert re.fullmatch(rf"ZX{today:%Y%m%d}[0-9A-Z]{{6}}", first["request_id"]), first
    assert first == {"terminal_id": "30091254", "request_id": first["request_id"], "completes_on": iso(completion.date)}
    assert events == [{"event": "slot", "timestamp": None, "name": "deregistration_confirmed", "value": None}]
    rows = request_rows(registry, "30091254")
    assert [(row.request_id, row.status, row.source, row.requested_on) for row in rows] == [
        (first["request_id"], "pending", "merchant", today)
    ]
    assert rows[0].completes_on == completion.date

    messages, _ = run(ActionSubmitDeregistration(), tracker)
    assert names(messages) == ["utter_deregistration_exists"]
    again = values(messages[0])
    assert (again["request_id"], again["completes_on"]) == (first["request_id"], iso(completion.date))
    assert len(request_rows(registry, "30091254")) == 1

    messages, _ = run(ActionTerminalStatus(), make_tracker(verified("30091254")))
    assert names(messages)[0].startswith("utter_status_in_progress")
    assert values(messages[0])["request_id"] == first["request_id"]


def test_submit_racing_another_conversation_reports_the_winner(registry: reg.Registry, tmp_path: Path) -> None:
    """Another chat submits between this one's status check and its request: no second request, same id.

    Both are the real registry on the same SQLite file; the other chat (another action server
    process) files its request the moment this one's status read hands its connection back."""
    other_process = reg.Registry(f"sqlite:///{tmp_path / 'terminals.db'}", auto_seed=False)
    winner: list[tuple[reg.DeregistrationRequest, bool]] = []

    def other_chat_submits(*_: Any) -> None:
        if not winner:
            winner.append(other_process.request_deregistration("K7306118"))

    sa.event.listen(registry.engine, "checkin", other_chat_submits)
    try:
        messages, _ = run(
            ActionSubmitDeregistration(), make_tracker(verified("K7306118", deregistration_confirmed=True))
        )
    finally:
        sa.event.remove(registry.engine, "checkin", other_chat_submits)
        other_process.close()
    (request, created), = winner
    assert created
    assert names(messages) == ["utter_deregistration_exists"]
    assert values(messages[0])["request_id"] == request.request_id
    assert [row.request_id for row in request_rows(registry, "K7306118")] == [request.request_id]


@pytest.mark.parametrize("confirmed", [False, None])
def test_submit_not_confirmed_records_nothing(registry: reg.Registry, confirmed: bool | None) -> None:
    messages, events = run(
        ActionSubmitDeregistration(), make_tracker(verified("K7306118", deregistration_confirmed=confirmed))
    )
    assert names(messages) == ["utter_deregistration_cancelled"]
    assert values(messages[0]) == {"terminal_id": "K7306118"}
    assert request_rows(registry, "K7306118") == []
    assert events[0]["name"] == "deregistration_confirmed" and events[0]["value"] is None


def test_submit_for_a_pending_terminal_returns_its_request(registry: reg.Registry) -> None:
    (existing,) = request_rows(registry, "A0012345")
    messages, _ = run(ActionSubmitDeregistration(), make_tracker(verified("A0012345", deregistration_confirmed=True)))
    assert names(messages) == ["utter_deregistration_exists"]
    assert values(messages[0])["request_id"] == existing.request_id
    assert values(messages[0])["completes_on"] == iso(existing.completes_on)
    assert len(request_rows(registry, "A0012345")) == 1


@pytest.mark.parametrize("terminal_id", ["88004521", "55550001"])
def test_submit_for_a_deregistered_terminal(registry: reg.Registry, terminal_id: str) -> None:
    before = len(request_rows(registry, terminal_id))
    messages, _ = run(ActionSubmitDeregistration(), make_tracker(verified(terminal_id, deregistration_confirmed=True)))
    assert names(messages) == ["utter_already_deregistered"]
    assert values(messages[0]) == {"terminal_id": terminal_id}
    assert len(request_rows(registry, terminal_id)) == before


def test_submit_without_verification_records_nothing(registry: reg.Registry) -> None:
    messages, _ = run(
        ActionSubmitDeregistration(), make_tracker({"terminal_id": "K7306118", "deregistration_confirmed": True})
    )
    assert messages == []
    assert request_rows(registry, "K7306118") == []


# --- failures ---------------------------------------------------------------------------------------------------------


def failing_calls() -> dict[str, Callable[[], tuple[Action, Tracker]]]:
    """Every action that talks to the registry, at the point where it does."""
    return {
        "validate_terminal_id": lambda: (
            ValidateTerminalStatusForm(),
            make_tracker(candidates={"terminal_id": "K7306118"}, form="terminal_status_form"),
        ),
        "validate_phone_tail": lambda: (
            ValidateTerminalStatusForm(),
            make_tracker({"terminal_id": "K7306118"}, candidates={"phone_tail": "0839"}, form="terminal_status_form"),
        ),
        "validate_deregistration_phone_tail": lambda: (
            ValidateDeregistrationForm(),
            make_tracker({"terminal_id": "K7306118"}, candidates={"phone_tail": "0839"}, form="deregistration_form"),
        ),
        "action_terminal_status": lambda: (ActionTerminalStatus(), make_tracker(verified("K7306118"))),
        "action_terminal_followup": lambda: (
            ActionTerminalFollowup(),
            make_tracker(verified("K7306118"), intent="ask_deposit"),
        ),
        "action_ask_deregistration_confirmed": lambda: (
            ActionAskDeregistrationConfirmed(),
            make_tracker(verified("K7306118", requested_slot="deregistration_confirmed"), form="deregistration_form"),
        ),
        "action_submit_deregistration": lambda: (
            ActionSubmitDeregistration(),
            make_tracker(verified("K7306118", deregistration_confirmed=True)),
        ),
    }


def assert_backend_failed(call: str, messages: list[dict[str, Any]], events: list[dict[str, Any]]) -> None:
    assert names(messages) == ["utter_backend_failed"], call
    set_slots = {event["name"]: event["value"] for event in events}
    if call.startswith("validate_"):
        # The form stops (no further questions into a broken backend) and keeps nothing unverified.
        assert "requested_slot" in set_slots and set_slots["requested_slot"] is None, set_slots
        assert set_slots.get("verified_terminal") is None and set_slots.get("phone_tail") != "verified"
    if call == "action_ask_deregistration_confirmed":
        assert set_slots == {"requested_slot": None}


@pytest.mark.parametrize("url", [UNREACHABLE_POSTGRES_URL, UNREACHABLE_SQLITE_URL], ids=["postgresql", "sqlite"])
@pytest.mark.parametrize("call", list(failing_calls()))
def test_unreachable_database_answers_backend_failed(
    use_registry: Callable[..., reg.Registry], url: str, call: str
) -> None:
    use_registry(url)
    action, tracker = failing_calls()[call]()
    started = time.monotonic()
    messages, events = run(action, tracker)  # never raises
    assert time.monotonic() - started < 4
    assert_backend_failed(call, messages, events)


def test_unreachable_database_keeps_the_deregistration_question(use_registry: Callable[..., reg.Registry]) -> None:
    use_registry(UNREACHABLE_POSTGRES_URL)
    # The slot list cannot be trimmed; the confirmation question then reports the failure (tested above).
    assert required_slots(ValidateDeregistrationForm(), make_tracker(verified("A0012345"))) == (
        DEREGISTRATION_FORM_SLOTS
    )


def test_a_hanging_registry_call_is_cut_off(use_registry: Callable[..., reg.Registry], postgres_base_url: str) -> None:
    """Whatever the driver does, the action answers within the timeout (plus one second) of DB_TIMEOUT_SECONDS.

    Here the line to the real PostgreSQL server goes silent mid-conversation (a network partition):
    the query is sent and no answer, not even the server's own statement timeout, ever comes back."""
    with postgres_schema(postgres_base_url, "test_actions") as (_, url), Relay(url) as relay:
        registry = use_registry(relay.url, timeout=0.5)
        assert registry.find("K7306118") is not None  # connected (and seeded) through the relay
        relay.freeze()
        dispatcher = CollectingDispatcher()
        tracker = make_tracker(verified("K7306118"))

        async def answer() -> float:
            started = time.monotonic()
            try:
                await ActionTerminalStatus().run(dispatcher, tracker, DOMAIN)
                return time.monotonic() - started
            finally:
                relay.close()  # let the abandoned thread end, so asyncio.run can shut down

        answered_after = asyncio.run(answer())
        registry.close()
    assert 1.4 <= answered_after < 2.5, answered_after
    assert names(dispatcher.messages) == ["utter_backend_failed"]


@contextmanager
def terminals_locked(url: str) -> Iterator[None]:
    """Holds ACCESS EXCLUSIVE on the terminals table from another connection until the block ends."""
    engine = sa.create_engine(url, future=True)
    try:
        with engine.connect() as conn:
            transaction = conn.begin()
            conn.execute(sa.text("LOCK TABLE terminals IN ACCESS EXCLUSIVE MODE"))
            try:
                yield
            finally:
                transaction.rollback()
    finally:
        engine.dispose()


@pytest.mark.parametrize("call", ["validate_terminal_id", "action_terminal_status", "action_submit_deregistration"])
def test_slow_database_answers_backend_failed_in_time(
    use_registry: Callable[..., reg.Registry], postgres_base_url: str, call: str
) -> None:
    with postgres_schema(postgres_base_url, "test_actions") as (_, url):
        registry = use_registry(url, timeout=1)
        # Before the lock: the same action works on PostgreSQL.
        action, tracker = failing_calls()["action_terminal_status"]()
        messages, _ = run(action, tracker)
        assert names(messages)[0] == "utter_status_dormant"

        outcome: dict[str, Any] = {}

        def worker() -> None:
            action, tracker = failing_calls()[call]()
            dispatcher = CollectingDispatcher()

            async def answer() -> list[dict[str, Any]]:
                events = await action.run(dispatcher, tracker, DOMAIN)
                outcome["answered_after"] = time.monotonic() - started
                return events

            started = time.monotonic()
            try:
                outcome["result"] = (dispatcher.messages, asyncio.run(answer()))
            except BaseException as error:  # reported by the test below
                outcome["error"] = error

        with terminals_locked(url):
            thread = threading.Thread(target=worker, daemon=True)
            thread.start()
            thread.join(timeout=10)
            answered_while_locked = not thread.is_alive()
        thread.join(timeout=10)

        assert "error" not in outcome, outcome.get("error")
        # It did wait on the lock (so the test is about a slow query), then gave up in time.
        answered_after = outcome.get("answered_after", float("inf"))
        assert 0.9 <= answered_after < 3, answered_after
        # The database call itself was cancelled too: no worker thread left stuck behind the lock.
        assert answered_while_locked, "the registry call stayed blocked until the lock was released"
        assert_backend_failed(call, *outcome["result"])
        assert request_rows(registry, "K7306118") == []

        # Once the lock is gone, the next question is answered normally.
        messages, _ = run(*failing_calls()["action_terminal_status"]())
        assert names(messages)[0] == "utter_status_dormant"
