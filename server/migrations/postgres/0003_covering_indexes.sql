-- The value indexes end in `rid`, so that finding the resources with a value reads the index
-- alone: a search that starts from a value never visits the index table's rows.
-- (server/src/search/sql.rs relies on the column order of each.)
DROP INDEX search_token_code;
CREATE INDEX search_token_code ON search_token (resource_type, param, code, system, rid);
DROP INDEX search_string_value;
CREATE INDEX search_string_value ON search_string (resource_type, param, normalized, rid);
DROP INDEX search_date_low;
CREATE INDEX search_date_low ON search_date (resource_type, param, low, high, rid);
DROP INDEX search_date_high;
CREATE INDEX search_date_high ON search_date (resource_type, param, high, rid);
-- References lead with the referring type, like every value index, so that a test of one
-- resource's references (`x.rid = r.rid`, which names no type) can only use `(rid, param)`.
DROP INDEX search_reference_target;
CREATE INDEX search_reference_target
    ON search_reference (resource_type, target_type, target_id, param, rid);
DROP INDEX search_number_value;
CREATE INDEX search_number_value ON search_number (resource_type, param, low, rid);
DROP INDEX search_quantity_value;
CREATE INDEX search_quantity_value ON search_quantity (resource_type, param, code, low, rid);
DROP INDEX search_uri_value;
CREATE INDEX search_uri_value ON search_uri (resource_type, param, uri, rid);
DROP INDEX search_position_value;
CREATE INDEX search_position_value ON search_position (resource_type, param, latitude, rid);

-- The `(rid, param)` indexes carry the values a search compares, so that testing whether one
-- resource matches (the probe of a search that walks a type in order, or a chain followed
-- from each candidate) reads one index entry and not the table row as well.
DROP INDEX search_token_rid;
CREATE INDEX search_token_rid ON search_token (rid, param, code, system);
DROP INDEX search_string_rid;
CREATE INDEX search_string_rid ON search_string (rid, param, normalized);
DROP INDEX search_date_rid;
CREATE INDEX search_date_rid ON search_date (rid, param, low, high);
DROP INDEX search_reference_rid;
CREATE INDEX search_reference_rid ON search_reference (rid, param, target_type, target_id);
DROP INDEX search_number_rid;
CREATE INDEX search_number_rid ON search_number (rid, param, low, high);
DROP INDEX search_quantity_rid;
CREATE INDEX search_quantity_rid ON search_quantity (rid, param, low, high, code, system);
DROP INDEX search_uri_rid;
CREATE INDEX search_uri_rid ON search_uri (rid, param, uri);
DROP INDEX search_position_rid;
CREATE INDEX search_position_rid ON search_position (rid, param, latitude, longitude);

-- The live resources of a type in `rid` order, the walk of a search that tests each one.
DROP INDEX resources_type_rid;
CREATE INDEX resources_type_live ON resources (resource_type, deleted, rid);
