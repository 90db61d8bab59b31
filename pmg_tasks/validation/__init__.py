"""Stage 2, validate: row rules quarantine bad events, a Great Expectations suite reports on them, and the
run stops when too many are bad. See stage.py for the outputs; rules.py for the rules."""

from pmg_tasks.validation.rules import RULE_NAMES, RULES, Rule
from pmg_tasks.validation.stage import BadDataError, validate_events

__all__ = ["RULES", "RULE_NAMES", "BadDataError", "Rule", "validate_events"]
