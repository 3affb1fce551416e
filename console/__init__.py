"""The operator console: the Django admin of the recovery cases, the ledger behind them, connections and keys.

It reads through its own ``console.selectors`` and writes through the services of ``cases`` (and its own, ``console.services``,
for the changes that need a reason); ``cases`` imports nothing of it.
"""
