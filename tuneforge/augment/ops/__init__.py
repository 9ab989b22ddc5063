"""The operators, by the name a recipe step gives in `op:`; the names come from `params.PARAMS`."""

from __future__ import annotations

from tuneforge.augment.ops.answer import Answer
from tuneforge.augment.ops.base import Operator
from tuneforge.augment.ops.extend_turns import ExtendTurns
from tuneforge.augment.ops.judge_filter import JudgeFilter
from tuneforge.augment.ops.kb_queries import KBQueries
from tuneforge.augment.ops.preference import Preference
from tuneforge.augment.ops.question_from_passage import QuestionFromPassage
from tuneforge.augment.ops.rewrite import Rewrite
from tuneforge.augment.params import PARAMS

_BY_PARAMS = {cls.Params: cls for cls in (
    QuestionFromPassage, Answer, Rewrite, ExtendTurns, KBQueries, Preference, JudgeFilter)}


def _registry() -> dict[str, Operator]:
    ops: dict[str, Operator] = {}
    for name, params in PARAMS.items():
        op = _BY_PARAMS[params]()  # a KeyError here: an op in params.PARAMS without an implementation
        op.name = name
        ops[name] = op
    return ops


OPERATORS: dict[str, Operator] = _registry()
