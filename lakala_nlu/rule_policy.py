"""Rasa's RulePolicy, finding the rules that apply with less work per prediction.

Every prediction checks each learned rule against the conversation's states, turn by
turn. Rasa re-reverses every rule's states and turns its lists back into tuples on
every check: a noticeable share of each message's time with this bot's many rules.
Here each rule's reversed states, with tuples, are prepared once, and the
search stops as soon as no rule is left. For the latest turn, which every rule is
checked against, the rules are also indexed by the previous action and the intent
they require, so only those that can match are checked. The rules and the
predictions are Rasa's.
"""
import functools
from collections import defaultdict
from typing import Any, Dict, List, Optional, Set, Tuple

from rasa.core.policies.rule_policy import RulePolicy
from rasa.engine.recipes.default_recipe import DefaultV1Recipe
from rasa.shared.core.constants import PREVIOUS_ACTION, SHOULD_NOT_BE_SET, USER
from rasa.shared.nlu.constants import ACTION_NAME, INTENT

State = Dict[str, Dict[str, Any]]


@functools.lru_cache(maxsize=4096)
def reversed_rule_states(rule_key: str) -> List[State]:
    """A rule's states, latest first, with JSON lists as the tuples Rasa compares them as."""
    return [
        {kind: {key: tuple(value) if isinstance(value, list) else value for key, value in sub.items()}
         for kind, sub in state.items()}
        for state in reversed(RulePolicy._rule_key_to_state(rule_key))
    ]


def required_name(sub_state: Optional[Dict[str, Any]], key: str) -> Optional[str]:
    """The value a rule requires for `key`, or None if it requires none (Rasa's
    `_does_rule_match_state` only compares values that are set and not SHOULD_NOT_BE_SET)."""
    value = (sub_state or {}).get(key)
    return value if isinstance(value, str) and value and value != SHOULD_NOT_BE_SET else None


def latest_turn_key(state: State) -> Tuple[Optional[str], Optional[str]]:
    """(previous action name, intent) a rule's latest state requires. A rule whose latest
    state has no previous action matches any conversation start, whatever the intent."""
    previous_action = state.get(PREVIOUS_ACTION)
    if not previous_action:
        return None, None
    return required_name(previous_action, ACTION_NAME), required_name(state.get(USER), INTENT)


@DefaultV1Recipe.register(DefaultV1Recipe.ComponentType.POLICY_WITHOUT_END_TO_END_SUPPORT, is_trainable=True)
class FastRulePolicy(RulePolicy):
    """RulePolicy with the rule check of Rasa 3.6's `_is_rule_applicable` on prepared states."""

    def _is_rule_applicable(self, rule_key: str, turn_index: int, conversation_state: State) -> bool:
        rule_states = reversed_rule_states(rule_key)
        if turn_index >= len(rule_states):
            return True  # the conversation goes back further than the rule
        current_previous_action = conversation_state.get(PREVIOUS_ACTION)
        rule_previous_action = rule_states[turn_index].get(PREVIOUS_ACTION)
        if not rule_previous_action and not current_previous_action:
            return True  # both are conversation starts
        if not rule_previous_action or not current_previous_action:
            return False  # only one of them is
        return self._does_rule_match_state(rule_states[turn_index], conversation_state)

    def _latest_turn_index(self, lookup: Dict[str, str]) -> Dict[Tuple[Optional[str], Optional[str]], List[str]]:
        """The lookup's rule keys grouped by `latest_turn_key`; built once per lookup."""
        indexes = self.__dict__.setdefault("_lakala_latest_turn_indexes", {})
        cached = indexes.get(id(lookup))
        if cached is None or cached[0] is not lookup or cached[1] != len(lookup):
            index: Dict[Tuple[Optional[str], Optional[str]], List[str]] = defaultdict(list)
            for key in lookup:
                index[latest_turn_key(reversed_rule_states(key)[0])].append(key)
            cached = indexes[id(lookup)] = (lookup, len(lookup), dict(index))
        return cached[2]

    def _candidates(self, lookup: Dict[str, str], state: State) -> List[str]:
        """The rules that can match the conversation's latest state: those requiring its
        previous action and intent, either of them, or neither. A rule requiring another
        action or intent fails Rasa's check anyway."""
        index = self._latest_turn_index(lookup)
        name = (state.get(PREVIOUS_ACTION) or {}).get(ACTION_NAME)
        intent = (state.get(USER) or {}).get(INTENT)
        groups = {(name, intent), (name, None), (None, intent), (None, None)}
        return [key for group in groups for key in index.get(group, ())]

    def _get_possible_keys(self, lookup: Dict[str, str], states: List[State]) -> Set[str]:
        possible_keys = list(lookup)
        for turn_index, state in enumerate(reversed(states)):
            if turn_index == 0:
                possible_keys = self._candidates(lookup, state)
            if not possible_keys:
                break
            possible_keys = [key for key in possible_keys if self._is_rule_applicable(key, turn_index, state)]
        return set(possible_keys)
