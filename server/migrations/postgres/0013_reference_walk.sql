-- The references of one type through one parameter, in the order of the resources holding
-- them, with where each leads: a chained search's first page walks them in that order and
-- tests where they lead, reading its candidates from this index alone rather than probing
-- each candidate's references (see `reference_walk` in `search/sql.rs`).
CREATE INDEX search_reference_walk
    ON search_reference (resource_type, param, rid) INCLUDE (target_type, target_rid);
