-- A project's default network (made on first use, like EC2's default
-- VPC) is marked, not found by its name: a user's own network called
-- "default" is not it. The partial unique index is the guard when two
-- launches make the default network at once: the second insert fails
-- and that launch reads the first one's network.
--
-- `has_subnet`: the network's one EC2 subnet (same range) exists. A
-- network made through REST or the CLI has it; one made by EC2's
-- CreateVpc gets it with CreateSubnet, and loses it with DeleteSubnet.

ALTER TABLE networks ADD COLUMN is_default BIGINT NOT NULL DEFAULT 0;
ALTER TABLE networks ADD COLUMN has_subnet BIGINT NOT NULL DEFAULT 1;
CREATE UNIQUE INDEX networks_one_default ON networks(project_id) WHERE is_default = 1;
