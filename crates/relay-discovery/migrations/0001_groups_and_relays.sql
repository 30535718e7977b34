-- Discovery's shared state (relay-discovery, docs/operations.md "Scale-out").
-- Groups are keyed by (tenant, ID); `body` is the group's Disco JSON; a group is live
-- while last_updated + COALESCE(ttl_secs, <the relay's --group-ttl>) > now.
CREATE TABLE relay_discovery_groups (
    tenant       text   NOT NULL,
    id           text   NOT NULL,
    owner        text,
    last_updated bigint NOT NULL,
    ttl_secs     bigint,
    body         text   NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX relay_discovery_groups_owner ON relay_discovery_groups (tenant, owner);

-- The relay registry: one row per announced URL.
CREATE TABLE relay_discovery_relays (
    url               text   PRIMARY KEY,
    room_id_prefix    text,
    registered_at     bigint NOT NULL,
    last_announced_at bigint NOT NULL,
    expires_at        bigint NOT NULL,
    ttl_secs          bigint NOT NULL
);
CREATE INDEX relay_discovery_relays_expires_at ON relay_discovery_relays (expires_at);
