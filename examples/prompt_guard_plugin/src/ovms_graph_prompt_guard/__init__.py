"""ovms-graph-prompt-guard: an example ovms-graph plugin.

It registers PromptGuardCalculator through the ``ovms_graph.calculators`` entry point. The calculator
refuses prompts that contain blocked words and can append a style to every prompt. See
docs/calculator-guide.md in the ovms-graph repository for a walk-through.
"""
