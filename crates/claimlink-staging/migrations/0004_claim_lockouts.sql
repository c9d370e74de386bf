-- Claims a stranger cannot steal or block (issue 10). Wrong claim codes lock out the claimer
-- (an OEM's claim-thing, a portal user, a source address), not the device: a growing lockout
-- per claimer, and per device only a high ceiling per day (failures_since starts its window).
-- Refused claims are counted in aggregate, one row per claimer, device (empty when staging
-- does not know it), reason and hour, instead of a claim row per junk attempt. A device is in
-- at most one portal user's list.
CREATE TABLE claim_lockouts (
    claimer TEXT PRIMARY KEY,
    failed BIGINT NOT NULL,
    locked_until BIGINT NOT NULL,
    last_failure BIGINT NOT NULL
);
ALTER TABLE staging_devices ADD COLUMN failures_since BIGINT NOT NULL DEFAULT 0;
CREATE TABLE claim_refusals (
    claimer TEXT NOT NULL,
    thing_name TEXT NOT NULL,
    reason TEXT NOT NULL,
    window_start BIGINT NOT NULL,
    attempts BIGINT NOT NULL,
    first_at BIGINT NOT NULL,
    last_at BIGINT NOT NULL,
    PRIMARY KEY (claimer, thing_name, reason, window_start)
);
CREATE INDEX claim_refusals_by_thing ON claim_refusals (thing_name, window_start);
DROP INDEX portal_devices_by_thing;
CREATE UNIQUE INDEX portal_devices_one_holder ON portal_devices (thing_name);
