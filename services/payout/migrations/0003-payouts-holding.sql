-- Payouts whose hold the wallet has not answered yet, by age: the saga watch counts
-- those waiting too long (services/payout/watch.py) without scanning every payout.
CREATE INDEX payouts_holding ON payouts (updated_at) WHERE status = 'holding';
