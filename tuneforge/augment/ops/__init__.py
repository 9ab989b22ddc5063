"""The operators, by the name a recipe step gives in `op:`."""

from __future__ import annotations

from tuneforge.augment.ops.answer import Answer
from tuneforge.augment.ops.base import Operator, OpParams
from tuneforge.augment.ops.extend_turns import ExtendTurns
from tuneforge.augment.ops.judge_filter import JudgeFilter
from tuneforge.augment.ops.kb_queries import KBQueries
from tuneforge.augment.ops.preference import Preference
from tuneforge.augment.ops.question_from_passage import QuestionFromPassage
from tuneforge.augment.ops.rewrite import Rewrite

OPERATORS: dict[str, Operator] = {op.name: op for op in (
    QuestionFromPassage(), Answer(), Rewrite(), ExtendTurns(), KBQueries(), Preference(), JudgeFilter())}


def params_model(op: str) -> type[OpParams]:
    return OPERATORS[op].Params
