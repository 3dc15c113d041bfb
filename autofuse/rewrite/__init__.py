"""Graph rewriting: declarative rules in named rule sets, applied to a fixed point."""
from autofuse.rewrite.engine import Replacement, RewriteResult, Rule, RuleSet, View, rewrite

__all__ = ["Replacement", "RewriteResult", "Rule", "RuleSet", "View", "rewrite"]
