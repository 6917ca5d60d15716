"""Handing a merchant over to a person.

`action_handoff` runs when a merchant asks for a person (转人工) and after the third wrong phone
tail. On a WeChat account with transfer on (WECHAT_HANDOFF=1), within the service hours, it
pauses the conversation (`ConversationPaused`): the WeChat channel answers with WeChat's
`transfer_customer_service` reply and the 公众号's agents take over (lakala_server/handoff.py).
Anywhere else, or outside the hours, it offers a callback: `callback_form` asks for the topic,
explicit consent to be called, then the mobile number, and the ticket is created when the
number is given (actions/tickets.py), so that the number itself never stays in the
conversation: the slot keeps it masked. The support team hears of a new ticket on its WeCom
group (actions/notify.py).

The bot never promises a time: it says the service hours and, outside them, when they begin.
"""
from __future__ import annotations

import datetime as dt
import logging
import re
import time
from typing import Any, Dict, List, Optional

from rasa_sdk import Action, FormValidationAction, Tracker
from rasa_sdk.events import ConversationPaused, EventType, FollowupAction, SlotSet
from rasa_sdk.executor import CollectingDispatcher
from rasa_sdk.types import DomainDict

from actions import notify
from actions.backend import BackendFailure, registry_call
from actions.config import get_settings
from actions.tickets import Ticket, TicketStore, find_mobile, mask_phone, normalize_mobile
from actions.verification import verified_terminal
from lakala_common.service_hours import ServiceHours, ServiceHoursError, wechat_handoff_enabled
from lakala_common.text import normalized

logger = logging.getLogger(__name__)

WECHAT = "wechat"
HANDOFF_AT = "handoff_at"
CALLBACK_SLOTS = ("callback_topic", "callback_consent", "callback_phone")
CALLBACK_TICKET = "callback_ticket"
TOPIC_MIN_CHARS = 2
TOPIC_MAX_CHARS = 200
# Messages that answer "what is it about" with no topic at all.
NOT_A_TOPIC_INTENTS = {"greet", "thank", "affirm", "request_human", "bot_challenge"}
CANCEL_INTENTS = {"deny", "goodbye"}
FAILED = "failed"  # callback_consent after the ticket store failed: the form ends, the apology was said
YES = re.compile(r"^(?:好|好的|行|可以|同意|我同意|是|是的|对|嗯|嗯嗯|ok|okay|没问题|打吧|可以打)[啊吧呀的了！!。.~]*$")
NO = re.compile(r"(?:不同意|不要|不用|别打|不行|不可以|算了|不需要|不方便|拒绝)")


def service_hours() -> ServiceHours:
    try:
        return ServiceHours.from_env()
    except ServiceHoursError as error:
        logger.error("%s; using the default service hours", error)
        return ServiceHours.parse()


def time_texts(domain: DomainDict, hours: ServiceHours, now: Optional[dt.datetime] = None) -> Dict[str, str]:
    """{hours} and {next_open} in the words of domain.yml's utter_service_time."""
    words = domain["responses"]["utter_service_time"][0]["custom"]
    opening = hours.next_open(now)
    return {
        "hours": words["hours"].format(days=words[hours.days], opens=hours.opens_text, closes=hours.closes_text),
        "next_open": words["moment"].format(month=opening.month, day=opening.day, time=opening.strftime("%H:%M")),
    }


def utter_backend_failed(dispatcher: CollectingDispatcher, error: Exception) -> None:
    logger.warning("callback tickets unavailable: %s", error)
    dispatcher.utter_message(response="utter_backend_failed")


def utter_ticket(dispatcher: CollectingDispatcher, response: str, ticket: Ticket, texts: Dict[str, str]) -> None:
    dispatcher.utter_message(response=response, ticket_id=ticket.ticket_id, phone=ticket.phone_masked, **texts)


def hand_over_after_lockout(dispatcher: CollectingDispatcher) -> List[EventType]:
    """Too many wrong phone tails: say so, then hand over (a transfer or a callback offer)."""
    dispatcher.utter_message(response="utter_verification_locked")
    return [FollowupAction("action_handoff")]


class ActionHandoff(Action):
    """A transfer to WeChat's agents, or the offer of a callback."""

    def name(self) -> str:
        return "action_handoff"

    async def run(
        self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> List[EventType]:
        hours = service_hours()
        texts = time_texts(domain, hours)
        is_open = hours.is_open()
        if tracker.get_latest_input_channel() == WECHAT and wechat_handoff_enabled() and is_open:
            dispatcher.utter_message(response="utter_handoff_transfer")
            return [ConversationPaused(), SlotSet(HANDOFF_AT, time.time()), SlotSet(CALLBACK_TICKET, None)]
        try:
            ticket = await registry_call(TicketStore().open_for, tracker.sender_id)
        except BackendFailure as error:
            utter_backend_failed(dispatcher, error)
            return []
        if ticket is not None:
            utter_ticket(dispatcher, "utter_callback_exists", ticket, texts)
            # Remembered for the form, should the merchant say yes anyway: it asks nothing then.
            return [SlotSet(CALLBACK_TICKET, ticket.ticket_id)]
        dispatcher.utter_message(response="utter_handoff_offer" if is_open else "utter_handoff_offer_closed", **texts)
        return [SlotSet(CALLBACK_TICKET, None)]


def _intent(tracker: Tracker) -> Optional[str]:
    return (tracker.latest_message.get("intent") or {}).get("name")


class ValidateCallbackForm(FormValidationAction):
    """Topic, consent, then the number; the ticket is made when the number is given."""

    def name(self) -> str:
        return "validate_callback_form"

    async def required_slots(
        self,
        domain_slots: List[str],
        dispatcher: CollectingDispatcher,
        tracker: Tracker,
        domain: DomainDict,
    ) -> List[str]:
        # Also called before validation, with the slots as extracted (the consent as typed).
        consent = tracker.get_slot("callback_consent")
        # The form runs right after action_handoff, which set callback_ticket to an open ticket
        # it found, or to None.
        if consent is False or consent == FAILED or tracker.get_slot(CALLBACK_TICKET):
            return []  # declined, failed, an open ticket already, or the ticket is made
        return domain_slots

    async def validate_callback_topic(
        self, value: Any, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> Dict[str, Any]:
        intent = _intent(tracker)
        text = " ".join(str(value or "").split())
        if intent in CANCEL_INTENTS and len(normalized(text)) <= 12:
            return {"callback_topic": None, "callback_consent": False}
        if intent in NOT_A_TOPIC_INTENTS or len(normalized(text)) < TOPIC_MIN_CHARS or text.startswith("/"):
            dispatcher.utter_message(response="utter_callback_topic_invalid")
            return {"callback_topic": None}
        return {"callback_topic": text[:TOPIC_MAX_CHARS]}

    async def validate_callback_consent(
        self, value: Any, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> Dict[str, Any]:
        answer = normalized(str(value or "")).lower()
        intent = _intent(tracker)
        if NO.search(answer) or (intent in CANCEL_INTENTS and not YES.match(answer)):
            return {"callback_consent": False}
        if YES.match(answer) or (intent == "affirm" and "不" not in answer):
            return {"callback_consent": True}
        dispatcher.utter_message(response="utter_callback_consent_unclear")
        return {"callback_consent": None}

    async def validate_callback_phone(
        self, value: Any, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> Dict[str, Any]:
        phone = normalize_mobile(str(value or "")) or find_mobile(str(value or ""))
        if phone is None:
            if _intent(tracker) in CANCEL_INTENTS and len(normalized(str(value or ""))) <= 12:
                return {"callback_phone": None, "callback_consent": False}
            dispatcher.utter_message(response="utter_callback_phone_invalid")
            return {"callback_phone": None}
        if tracker.get_slot("callback_consent") is not True:  # never stored without consent
            return {"callback_phone": None, "callback_consent": False}
        terminal = verified_terminal(tracker.get_slot("verified_terminal"), tracker.sender_id)
        try:
            ticket, created = await registry_call(
                TicketStore().open_ticket,
                tracker.sender_id,
                tracker.get_latest_input_channel() or "unknown",
                tracker.get_slot("callback_topic") or "",
                phone,
                terminal,
            )
        except (BackendFailure, ValueError) as error:
            utter_backend_failed(dispatcher, error)
            return {"callback_phone": None, "callback_consent": FAILED}
        if created:
            notify.kick()
        logger.info("callback ticket %s %s for %s", ticket.ticket_id, "created" if created else "kept",
                    tracker.sender_id)
        return {"callback_phone": mask_phone(phone), CALLBACK_TICKET: ticket.ticket_id}


class ActionAskCallbackConsent(Action):
    """Asks for consent, saying how long the number is kept."""

    def name(self) -> str:
        return "action_ask_callback_consent"

    async def run(
        self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> List[EventType]:
        days = get_settings().ticket_phone_retention_days
        dispatcher.utter_message(response="utter_ask_callback_consent", retention_days=f"{days:g}")
        return []


class ActionSubmitCallback(Action):
    """Says how the callback request ended: a ticket, one already open, or none."""

    def name(self) -> str:
        return "action_submit_callback"

    async def run(
        self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> List[EventType]:
        reset = [SlotSet(name, None) for name in CALLBACK_SLOTS + (CALLBACK_TICKET,)]
        consent = tracker.get_slot("callback_consent")
        if consent == FAILED:
            return reset
        if consent is False:
            dispatcher.utter_message(response="utter_callback_declined")
            return reset
        hours = service_hours()
        texts = time_texts(domain, hours)
        ticket_id, phone = tracker.get_slot(CALLBACK_TICKET), tracker.get_slot("callback_phone")
        if ticket_id and phone:  # made when the number was given: the slots hold all it says
            response = "utter_callback_created" if hours.is_open() else "utter_callback_created_closed"
            dispatcher.utter_message(response=response, ticket_id=ticket_id, phone=phone, **texts)
            return reset
        try:  # an open ticket from before, which action_handoff found
            ticket = await registry_call(TicketStore().open_for, tracker.sender_id)
        except BackendFailure as error:
            utter_backend_failed(dispatcher, error)
            return reset
        if ticket is None:
            utter_backend_failed(dispatcher, RuntimeError("the callback form ended without a ticket"))
        else:
            utter_ticket(dispatcher, "utter_callback_exists", ticket, texts)
        return reset
