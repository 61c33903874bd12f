"""The internal API between services: the bodies one service answers and another reads, and the rules their
fields obey. Services never import each other (SPEC section 1); what two of them must agree on lives here, so
that changing a body is visibly a change of the contract, covered by the tests of both sides.

    shared.contracts.core         core's /internal/orgs/{org_id}/... answers (report inputs, alerts, bank-line
                                  summary) and the field rules they share with core's own routes
    shared.contracts.compliance   compliance's /internal/orgs/{org_id}/... answers (report, evidence, snapshots)

A model here carries fields and pure methods only. How a service builds one from its own rows stays in that
service (`services.core.alerts.alert_view`, `services.compliance.evidence.pack_view`, ...).
"""

from shared.contracts import compliance, core

__all__ = ["compliance", "core"]
