-- A date search with `ge` starts from the range of `high` and tests `low` as well
-- (`high >= a AND (high > b OR low >= a …)`). The index on `high` now carries `low`, so that
-- such a search reads the index alone, as one starting from `low` (`le`, `lt`, `eq`) already
-- did. Without it PostgreSQL took the `low` index, which it could read alone, and scanned
-- every earlier date on the way to the later ones: 8 ms to count a month of appointments.
DROP INDEX search_date_high;
CREATE INDEX search_date_high ON search_date (resource_type, param, high, low, rid);
