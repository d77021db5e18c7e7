-- A reference row carries the rid of the resource it refers to (`target_rid`), so that a chain
-- (`subject:Patient.general-practitioner…`), a `_has` and a compartment's includes go from
-- one resource's rows to the next by integer key, without looking the target up by type and
-- id at every link. It is NULL while no resource of that type and id exists (a reference to
-- another server, or to one not created yet); creating the resource fills it in, through the
-- small partial index of such rows.
ALTER TABLE search_reference ADD COLUMN target_rid INTEGER;
UPDATE search_reference SET target_rid = (
    SELECT r.rid FROM resources r
    WHERE r.resource_type = search_reference.target_type AND r.id = search_reference.target_id
) WHERE target_id IS NOT NULL;
-- The resources that refer to one resource, by parameter and referring type.
CREATE INDEX search_reference_target_rid
    ON search_reference (target_rid, param, resource_type, rid);
CREATE INDEX search_reference_unresolved ON search_reference (target_type, target_id)
    WHERE target_rid IS NULL AND target_id IS NOT NULL;
-- A resource's references, read from the index alone, now with where they lead.
DROP INDEX search_reference_rid;
CREATE INDEX search_reference_rid
    ON search_reference (rid, param, target_type, target_id, target_rid);
