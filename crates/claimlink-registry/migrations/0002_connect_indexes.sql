-- Covering indexes for the queries every CONNECT makes: the policies attached to one
-- certificate, and the groups of one thing. Without them SQLite scanned every attachment of a
-- policy (one row per device) on each connection.
DROP INDEX policy_attachments_by_target;
CREATE INDEX policy_attachments_by_target ON policy_attachments (account_id, target_type, target, policy_name);
DROP INDEX thing_group_members_by_thing;
CREATE INDEX thing_group_members_by_thing ON thing_group_members (account_id, thing_name, group_name);
