-- A request is recorded as asked, even a price no bigint holds (refused as
-- invalid_request): the insert failed instead, and the request was dead-lettered.
ALTER TABLE purchases ALTER COLUMN price_minor TYPE numeric;
