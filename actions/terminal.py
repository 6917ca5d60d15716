"""Terminal lookup and deregistration: the forms' validation, status answers,
follow-up questions about the verified terminal, and deregistration requests.

The actions only translate between the conversation and the registry; every
sentence is a response in domain.yml.
"""
import datetime as dt
import logging
import re
from abc import ABC, abstractmethod
from typing import Any, Callable, Dict, List, Optional, TypeVar

from rasa_sdk import Action, FormValidationAction, Tracker
from rasa_sdk.events import EventType, SlotSet
from rasa_sdk.executor import CollectingDispatcher
from rasa_sdk.types import DomainDict

from actions import backend, policy
from actions.backend import BackendFailure
from actions.handoff import hand_over_after_lockout
from actions.registry import (
    AlreadyDeregistered,
    TerminalNotFound,
    TerminalStatus,
    get_registry,
    normalize_phone_tail,
    normalize_terminal_id,
)
from actions.verification import sign, verified_terminal
from lakala_common.text import normalized

logger = logging.getLogger(__name__)

MAX_VERIFY_FAILURES = 3
# Stored in the phone_tail slot once checked, so the digits never stay in the tracker.
VERIFIED = "verified"
T = TypeVar("T")

# A typed answer to "确认要注销吗？" that the classifier may read as another intent (先不注销
# looks like the ask_need_deregister question 不注销会怎么样). Read only at that question,
# only short statements; a question about it (any question word) is left to the FAQ answers.
DECISION_MAX_CHARS = 12
QUESTION = re.compile(r"[吗么嘛呢?]|怎|会不会|能不能|可不可以|是不是|要不要|需不需要|行不行|多少|多久|影响|后果")
ACTION = r"(?:注销|办理?|申请|提交|弄)"
DECLINE = re.compile(r"(?:不|别|暂不|先不|不要|不用|不想|不打算)(?:再|先|去|急着|着急)?" + ACTION)
CONFIRM = re.compile(r"^(?:(?:对|是的?|好的?|行|嗯|可以|确认|确定|同意|没问题)[,，、 ]*)?"
                     r"(?:就|请|帮我|马上|现在|立即|确认|确定|我要|要)*" + ACTION + r"(?:吧|了|啊|呀|掉|掉吧)?$")
NEGATION = re.compile(r"[不别没]")


def confirmation_decision(text: str) -> Optional[bool]:
    """True or False when `text` plainly confirms or declines the deregistration, else None."""
    answer = re.sub(r"[。.!~～]+", "", normalized(text))
    if not answer or len(answer) > DECISION_MAX_CHARS or QUESTION.search(answer):
        return None
    if DECLINE.search(answer):
        return False
    if not NEGATION.search(answer) and CONFIRM.match(answer):
        return True
    return None

STATE_RESPONSES = {
    policy.TerminalState.ACTIVE: "utter_status_active",
    policy.TerminalState.DORMANT: "utter_status_dormant",
    policy.TerminalState.AUTO_DEREGISTERED: "utter_status_auto_deregistered",
    policy.TerminalState.DEREGISTRATION_IN_PROGRESS: "utter_status_in_progress",
    policy.TerminalState.DEREGISTERED: "utter_status_deregistered",
}


async def registry_call(function: Callable[..., T], *args: Any) -> T:
    """A registry call whose not-found and already-deregistered answers reach the action."""
    return await backend.registry_call(function, *args, passthrough=(TerminalNotFound, AlreadyDeregistered))


def day(value: Optional[dt.date]) -> str:
    return value.isoformat() if value else ""


def status_values(status: TerminalStatus) -> Dict[str, Any]:
    """The values every terminal response may fill in."""
    return {
        "terminal_id": status.terminal_id,
        "merchant": status.merchant_name,
        "device": status.device_type,
        "last_tx": day(status.last_transaction_on),
        "dormant_date": day(status.dormant_on),
        "auto_date": day(status.auto_deregister_on),
        "days_left": status.days_until_auto_deregistration,
        "contract_end": day(status.contract_ends_on),
        "fee": status.termination_fee_due,
        "deposit": status.deposit.amount,
        "request_id": status.request_id or "",
        "requested_on": day(status.requested_on),
        "completes_on": day(status.completes_on),
    }


def verified(tracker: Tracker) -> Optional[str]:
    """The terminal this conversation has verified, from its signed marker (see actions/verification.py)."""
    return verified_terminal(tracker.get_slot("verified_terminal"), tracker.sender_id)


def is_locked(tracker: Tracker) -> bool:
    return int(tracker.get_slot("verify_failures") or 0) >= MAX_VERIFY_FAILURES


def is_gone(status: TerminalStatus) -> bool:
    return status.state in (
        policy.TerminalState.AUTO_DEREGISTERED,
        policy.TerminalState.DEREGISTERED,
        policy.TerminalState.DEREGISTRATION_IN_PROGRESS,
    )


def utter_state(dispatcher: CollectingDispatcher, status: TerminalStatus) -> None:
    response = STATE_RESPONSES[status.state]
    if status.state is policy.TerminalState.DEREGISTRATION_IN_PROGRESS and (
        status.completion_is_estimate
    ):
        response = "utter_status_in_progress_estimate"
    dispatcher.utter_message(response=response, **status_values(status))


def utter_deposit(dispatcher: CollectingDispatcher, status: TerminalStatus) -> None:
    deposit = status.deposit
    if deposit.amount <= 0:
        response = "utter_deposit_none"
    elif deposit.refunded:
        response = "utter_deposit_refunded"
    elif deposit.refundable_now:
        response = "utter_deposit_refundable_now"
    elif status.state is policy.TerminalState.DEREGISTRATION_IN_PROGRESS:
        response = "utter_deposit_after_completion"
    else:
        response = "utter_deposit_after_deregistration"
    dispatcher.utter_message(response=response, **status_values(status))


def utter_fee(dispatcher: CollectingDispatcher, status: TerminalStatus) -> None:
    if is_gone(status):
        response = "utter_fee_not_applicable"
    elif status.termination_fee_due > 0:
        response = "utter_fee_due"
    else:
        response = "utter_fee_none"
    dispatcher.utter_message(response=response, **status_values(status))


def utter_dormancy(dispatcher: CollectingDispatcher, status: TerminalStatus) -> None:
    if is_gone(status):
        dispatcher.utter_message(response="utter_dormancy_not_applicable", **status_values(status))
    elif status.state is policy.TerminalState.DORMANT:
        utter_state(dispatcher, status)
    else:
        dispatcher.utter_message(response="utter_dormancy_schedule", **status_values(status))


def utter_backend_failed(dispatcher: CollectingDispatcher, error: Exception) -> None:
    logger.error("terminal registry unavailable: %s", error)
    dispatcher.utter_message(response="utter_backend_failed")


async def fetch_status(dispatcher: CollectingDispatcher, terminal_id: str) -> Optional[TerminalStatus]:
    """The terminal's status, or None once the user has been told the backend failed."""
    try:
        return await registry_call(get_registry().status, terminal_id)
    except (BackendFailure, TerminalNotFound) as error:
        utter_backend_failed(dispatcher, error)
        return None


class TerminalVerification(FormValidationAction, ABC):
    """Shared checks of the terminal number and the phone tail (abstract: not registered)."""

    @abstractmethod
    def name(self) -> str:
        """The form's validation action name."""

    async def required_slots(
        self,
        domain_slots: List[str],
        dispatcher: CollectingDispatcher,
        tracker: Tracker,
        domain: DomainDict,
    ) -> List[str]:
        if is_locked(tracker):
            return []
        return domain_slots

    async def validate_terminal_id(
        self,
        value: Any,
        dispatcher: CollectingDispatcher,
        tracker: Tracker,
        domain: DomainDict,
    ) -> Dict[str, Any]:
        terminal_id = normalize_terminal_id(str(value or ""))
        if terminal_id is None:
            dispatcher.utter_message(response="utter_terminal_id_malformed")
            return {"terminal_id": None}
        try:
            record = await registry_call(get_registry().find, terminal_id)
        except BackendFailure as error:
            utter_backend_failed(dispatcher, error)
            return {"terminal_id": None, "requested_slot": None}
        if record is None:
            dispatcher.utter_message(response="utter_terminal_not_found", terminal_id=terminal_id)
            return {"terminal_id": None}
        slots: Dict[str, Any] = {"terminal_id": terminal_id}
        if verified(tracker) != terminal_id:
            slots.update(phone_tail=None, verified_terminal=None)
        return slots

    async def validate_phone_tail(
        self,
        value: Any,
        dispatcher: CollectingDispatcher,
        tracker: Tracker,
        domain: DomainDict,
    ) -> Dict[str, Any]:
        terminal_id = tracker.get_slot("terminal_id")
        if value == VERIFIED and terminal_id and verified(tracker) == terminal_id:
            return {"phone_tail": VERIFIED}
        tail = normalize_phone_tail(str(value or ""))
        if tail is None or not terminal_id:
            dispatcher.utter_message(response="utter_phone_tail_malformed")
            return {"phone_tail": None}
        try:
            check = await registry_call(get_registry().check_phone_tail, terminal_id, tail)
        except BackendFailure as error:
            utter_backend_failed(dispatcher, error)
            return {"phone_tail": None, "requested_slot": None}
        if check.locked:
            # Too many wrong tails for this terminal, from any conversation: nothing is checked.
            dispatcher.utter_message(response="utter_terminal_locked")
            return {"phone_tail": None, "verified_terminal": None, "requested_slot": None}
        if check.verified:
            return {
                "phone_tail": VERIFIED,
                "verified_terminal": sign(terminal_id, tracker.sender_id),
                "verify_failures": 0,
            }
        failures = int(tracker.get_slot("verify_failures") or 0) + 1
        if failures < MAX_VERIFY_FAILURES:
            dispatcher.utter_message(
                response="utter_phone_tail_wrong", tries_left=MAX_VERIFY_FAILURES - failures
            )
        return {"phone_tail": None, "verified_terminal": None, "verify_failures": failures}


class ValidateTerminalStatusForm(TerminalVerification):
    """Checks the terminal number and phone tail before a status lookup."""

    def name(self) -> str:
        return "validate_terminal_status_form"


class ValidateDeregistrationForm(TerminalVerification):
    """Checks the terminal and skips the confirmation when there is nothing to confirm."""

    def name(self) -> str:
        return "validate_deregistration_form"

    async def required_slots(
        self,
        domain_slots: List[str],
        dispatcher: CollectingDispatcher,
        tracker: Tracker,
        domain: DomainDict,
    ) -> List[str]:
        slots = await super().required_slots(domain_slots, dispatcher, tracker, domain)
        terminal_id = verified(tracker)
        if not slots or not terminal_id or terminal_id != tracker.get_slot("terminal_id"):
            return slots
        try:
            status = await registry_call(get_registry().status, terminal_id)
        except (BackendFailure, TerminalNotFound):
            return slots
        if is_gone(status):
            # Already deregistered or pending: the submit step answers without asking.
            return [slot for slot in slots if slot != "deregistration_confirmed"]
        return slots

    async def extract_deregistration_confirmed(
        self,
        dispatcher: CollectingDispatcher,
        tracker: Tracker,
        domain: DomainDict,
    ) -> Dict[str, Any]:
        """A typed yes or no to the confirmation question the intent mappings did not catch."""
        if tracker.get_slot("requested_slot") != "deregistration_confirmed":
            return {}
        if (tracker.latest_message.get("intent") or {}).get("name") in ("affirm", "deny"):
            return {}  # the slot's from_intent mappings already answered
        decision = confirmation_decision(tracker.latest_message.get("text") or "")
        return {} if decision is None else {"deregistration_confirmed": decision}


class ActionAskDeregistrationConfirmed(Action):
    """Shows what deregistering costs and returns, then asks the user to confirm."""

    def name(self) -> str:
        return "action_ask_deregistration_confirmed"

    async def run(
        self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> List[EventType]:
        terminal_id = verified(tracker)
        if terminal_id is None:
            dispatcher.utter_message(response="utter_verification_expired")
            return [SlotSet("requested_slot", None), SlotSet("verified_terminal", None), SlotSet("phone_tail", None)]
        status = await fetch_status(dispatcher, terminal_id)
        if status is None:
            return [SlotSet("requested_slot", None)]
        values = status_values(status)
        fee_response = (
            "utter_deregistration_fee_warning"
            if status.termination_fee_due > 0
            else "utter_deregistration_no_fee"
        )
        dispatcher.utter_message(response=fee_response, **values)
        utter_deposit(dispatcher, status)
        completion = policy.completion_date(status.today)
        ask = (
            "utter_ask_deregistration_confirmed_estimate"
            if completion.is_estimate
            else "utter_ask_deregistration_confirmed"
        )
        dispatcher.utter_message(response=ask, completes_on=day(completion.date))
        return []


class ActionTerminalStatus(Action):
    """Tells the verified user their terminal's state, deposit and fee."""

    def name(self) -> str:
        return "action_terminal_status"

    async def run(
        self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> List[EventType]:
        if is_locked(tracker):
            return hand_over_after_lockout(dispatcher)
        terminal_id = verified(tracker)
        if not terminal_id or terminal_id != tracker.get_slot("terminal_id"):
            return []  # the form stopped early and already said why
        status = await fetch_status(dispatcher, terminal_id)
        if status is None:
            return []
        utter_state(dispatcher, status)
        utter_deposit(dispatcher, status)
        if not is_gone(status):
            utter_fee(dispatcher, status)
        return []


class ActionTerminalFollowup(Action):
    """Answers deposit, fee and dormancy questions for the terminal verified earlier."""

    def name(self) -> str:
        return "action_terminal_followup"

    async def run(
        self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> List[EventType]:
        intent = (tracker.latest_message.get("intent") or {}).get("name")
        terminal_id = verified(tracker)
        if terminal_id is None:
            # The marker expired, or was never signed here: answer in general, forget the terminal.
            general = {
                "ask_deposit": "utter_deposit",
                "ask_termination_fee": "utter_termination_fee",
                "ask_dormancy": "utter_dormancy",
            }.get(intent)
            if general:
                dispatcher.utter_message(response=general)
            dispatcher.utter_message(response="utter_verification_expired")
            return [SlotSet("verified_terminal", None), SlotSet("phone_tail", None)]
        status = await fetch_status(dispatcher, terminal_id)
        if status is None:
            return []
        answer = {
            "ask_deposit": utter_deposit,
            "ask_termination_fee": utter_fee,
            "ask_dormancy": utter_dormancy,
        }.get(intent, utter_state)
        answer(dispatcher, status)
        return []


class ActionSubmitDeregistration(Action):
    """Records the confirmed deregistration request, once per terminal."""

    def name(self) -> str:
        return "action_submit_deregistration"

    async def run(
        self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> List[EventType]:
        reset = [SlotSet("deregistration_confirmed", None)]
        if is_locked(tracker):
            return reset + hand_over_after_lockout(dispatcher)
        terminal_id = verified(tracker)
        if not terminal_id or terminal_id != tracker.get_slot("terminal_id"):
            return reset
        try:
            status = await registry_call(get_registry().status, terminal_id)
            if status.state is policy.TerminalState.DEREGISTRATION_IN_PROGRESS:
                dispatcher.utter_message(response="utter_deregistration_exists", **status_values(status))
                return reset
            if is_gone(status):
                dispatcher.utter_message(response="utter_already_deregistered", terminal_id=terminal_id)
                return reset
            if tracker.get_slot("deregistration_confirmed") is not True:
                dispatcher.utter_message(response="utter_deregistration_cancelled", terminal_id=terminal_id)
                return reset
            request, created = await registry_call(
                get_registry().request_deregistration, terminal_id
            )
        except AlreadyDeregistered:
            dispatcher.utter_message(response="utter_already_deregistered", terminal_id=terminal_id)
            return reset
        except (BackendFailure, TerminalNotFound) as error:
            utter_backend_failed(dispatcher, error)
            return reset
        values = {
            "terminal_id": terminal_id,
            "request_id": request.request_id,
            "completes_on": day(request.completes_on),
        }
        if not created:
            response = "utter_deregistration_exists"
        elif request.completion_is_estimate:
            response = "utter_deregistration_submitted_estimate"
        else:
            response = "utter_deregistration_submitted"
        dispatcher.utter_message(response=response, **values)
        return reset
