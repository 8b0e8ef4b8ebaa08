-- A request is recorded as asked, even an absurd amount (refused as invalid_request):
-- bigint could not hold every integer JSON allows, and the insert failed instead.
ALTER TABLE payouts ALTER COLUMN diamonds TYPE numeric;
