-- Load balancers on a private network: the balancer's own address and
-- MAC there (taken from the network's range like an instance's NIC), and
-- the floating IP it listens on (floating_ips.lb_id, instead of an
-- instance). The port it listens on is its guest port.

ALTER TABLE load_balancers ADD COLUMN network_id TEXT;
ALTER TABLE load_balancers ADD COLUMN address TEXT;
ALTER TABLE load_balancers ADD COLUMN mac TEXT;
ALTER TABLE floating_ips ADD COLUMN lb_id TEXT;
CREATE UNIQUE INDEX load_balancers_address ON load_balancers(network_id, address);
