"""The reconciliation across services (`coinstream reconcile`): an operator's read-only
check that each service's records match the others' (checks.py: one class per check,
in a registry), that our purchases and payouts match the providers' books
(providers.py), with a report (report.py) and a watch mode exporting Prometheus gauges
(watch.py). It reads the four schemas with the read-only role and imports no service.
"""
