"""Layout planner: parameters, memory, bubble and predicted throughput of a TP/PP/EP/DP layout."""

from moetrain.planner.layouts import Layout, validate
from moetrain.planner.memory import Setup, StageMemory, memory_per_stage
from moetrain.planner.plan import Plan, make_plan, plan_with_suggestions
from moetrain.planner.report import format_plan, plan_to_dict

__all__ = [
    "Layout", "Plan", "Setup", "StageMemory", "format_plan", "make_plan", "memory_per_stage",
    "plan_to_dict", "plan_with_suggestions", "validate",
]
