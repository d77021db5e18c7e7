-- Every text column that an index orders by compares byte by byte. The value columns already
-- did; the keys (types, ids, parameter codes, reference targets) took the database's collation,
-- and with anything but "C" each index comparison goes through the locale (strcoll): most of
-- PostgreSQL's time while ingesting was spent there. Byte order is also what the keys mean —
-- they are codes and ids, not words — and what SQLite does.
ALTER TABLE resource_versions
    ALTER COLUMN resource_type TYPE TEXT COLLATE "C",
    ALTER COLUMN id TYPE TEXT COLLATE "C";
ALTER TABLE resources
    ALTER COLUMN resource_type TYPE TEXT COLLATE "C",
    ALTER COLUMN id TYPE TEXT COLLATE "C";
ALTER TABLE search_reference
    ALTER COLUMN resource_type TYPE TEXT COLLATE "C",
    ALTER COLUMN param TYPE TEXT COLLATE "C",
    ALTER COLUMN target_type TYPE TEXT COLLATE "C",
    ALTER COLUMN target_id TYPE TEXT COLLATE "C";
ALTER TABLE search_token
    ALTER COLUMN resource_type TYPE TEXT COLLATE "C",
    ALTER COLUMN param TYPE TEXT COLLATE "C";
ALTER TABLE search_string
    ALTER COLUMN resource_type TYPE TEXT COLLATE "C",
    ALTER COLUMN param TYPE TEXT COLLATE "C";
ALTER TABLE search_date
    ALTER COLUMN resource_type TYPE TEXT COLLATE "C",
    ALTER COLUMN param TYPE TEXT COLLATE "C";
ALTER TABLE search_number
    ALTER COLUMN resource_type TYPE TEXT COLLATE "C",
    ALTER COLUMN param TYPE TEXT COLLATE "C";
ALTER TABLE search_quantity
    ALTER COLUMN resource_type TYPE TEXT COLLATE "C",
    ALTER COLUMN param TYPE TEXT COLLATE "C";
ALTER TABLE search_uri
    ALTER COLUMN resource_type TYPE TEXT COLLATE "C",
    ALTER COLUMN param TYPE TEXT COLLATE "C";
ALTER TABLE search_position
    ALTER COLUMN resource_type TYPE TEXT COLLATE "C",
    ALTER COLUMN param TYPE TEXT COLLATE "C";
