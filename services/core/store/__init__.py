"""All of the core service's SQL, one module per resource; every function takes a connection, so the caller owns
the transaction, and returns frozen rows.

    bank_lines   lines (insert, COPY, keyset pages, the internal summary), the cursor key
    cycles       BAS cycles and the sums their obligations are computed from
    accounts     designated accounts, their transfers and accepted sources
    alerts       alerts raised by writes, and their resolution
    plans        payment plans
    orgs         an org's export and deletion, and its tombstone

The bank-line names are also importable from the package itself, where they lived before it was split.
"""

from services.core.store.bank_lines import *  # noqa: F403
from services.core.store.bank_lines import __all__ as __all__
