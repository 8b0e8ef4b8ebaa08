"""`make chaos`: a seeded, bounded fault-injection run against a local stack instance.

A paced mix of purchases, gifts, payouts, chargebacks, duplicates and a few malformed
messages runs while each round injects one fault (a service replica SIGKILLed, the
Kafka broker SIGKILLed, PostgreSQL stopped immediately, a replica added or removed).
Then a checker that shares no code with the services proves from outside, from the
topics, the wallet's HTTP answers and the ledger audit, that nothing was lost, doubled
or mis-booked (see docs/reliability.md).
"""
