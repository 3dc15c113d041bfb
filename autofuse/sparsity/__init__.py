"""Balanced and N:M weight sparsity: prune, correct, compress, run fast, check the budget.

    result = prune_model(model, parse_pattern("balanced:4/16"), calib=inputs, correct=True)
    sparse = to_sparse_ops(result).model          # SparseMatMul ops, native kernel on CPU
    verdict = check_budget(model, sparse, inputs, max_rel_error=0.05)
"""
from autofuse.sparsity.budget import BudgetVerdict, check_budget
from autofuse.sparsity.compressed import Compressed, compress, decompress
from autofuse.sparsity.matmul import sparse_matmul
from autofuse.sparsity.patterns import Pattern, bank_mask, is_balanced, parse_pattern
from autofuse.sparsity.prune import PruneResult, prune_model
from autofuse.sparsity.rewrite import SparseModel, to_sparse_ops

__all__ = [
    "BudgetVerdict", "Compressed", "Pattern", "PruneResult", "SparseModel", "bank_mask", "check_budget",
    "compress", "decompress", "is_balanced", "parse_pattern", "prune_model", "sparse_matmul", "to_sparse_ops",
]
