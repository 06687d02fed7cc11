-- Every ingress instance ran each retention sweep every 5 minutes: with n instances, n passes looked for the same rows
-- (and deleted them side by side, each waiting on the rows the other held). One pass an interval now does it, by
-- whichever instance claims it first here.
CREATE TABLE sweep_passes (
    name        text PRIMARY KEY,  -- which sweep
    started_at  timestamptz NOT NULL  -- when its latest pass was claimed
);
-- the files' sweep finds the expired ones here, as it finds those past retention in files_tenant_created
CREATE INDEX files_expires ON files (expires_at) WHERE expires_at IS NOT NULL;
