-- Public addresses given automatically (EC2's "auto-assign public IP" of
-- a default subnet): an external network marked `auto_assign` gives each
-- instance launched on its project's default network a floating IP of
-- its own, marked `auto`. Such an address is the instance's, not the
-- project's: it counts against no quota and goes back to the pool when
-- the instance is terminated or the address disassociated. At most one
-- network assigns automatically (the partial unique index).

ALTER TABLE networks ADD COLUMN auto_assign BIGINT NOT NULL DEFAULT 0;
ALTER TABLE floating_ips ADD COLUMN auto BIGINT NOT NULL DEFAULT 0;
CREATE UNIQUE INDEX networks_one_auto_assign ON networks(auto_assign) WHERE auto_assign = 1;
