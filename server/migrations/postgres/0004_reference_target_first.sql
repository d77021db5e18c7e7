-- PostgreSQL flattens a probe's EXISTS into a join it may plan from the inside out: from a
-- chained link's targets back to the resources that refer to them. That plan needs references
-- found by their target alone, whatever the referring type, as `$everything` and `_revinclude`
-- do too. So lead the target index with the target; a search by one type's references still
-- names every column up to `resource_type`.
DROP INDEX search_reference_target;
CREATE INDEX search_reference_target
    ON search_reference (target_type, target_id, param, resource_type, rid);
